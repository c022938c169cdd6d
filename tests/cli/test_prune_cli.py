"""``attnlab prune`` and ``attnlab heads``: pruned runs that load and score as reported, the
per-head table, and one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

import attnlab
from attnlab.cli.main import cli
from attnlab.data.chars import CharTokenizer
from attnlab.inspect import ablate_heads
from attnlab.loader import save_run
from attnlab.models import GPT, EncoderDecoder, GPTConfig, TransformerConfig, ViT, ViTConfig
from tests.cli_helpers import one_line_error

LINES = [f"line {i}: the quick brown fox jumps over the lazy dog {i % 7}." for i in range(300)]


def _invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(LINES))
    return path


@pytest.fixture
def gpt_run(tmp_path):
    """A run with no training settings of its own: scored with the lm task on --corpus."""
    torch.manual_seed(0)
    chars = CharTokenizer.from_text("\n".join(LINES))
    model = GPT(GPTConfig(vocab_size=chars.vocab_size, max_len=32, n_layer=2, n_head=4, dim=32))
    return save_run(model.eval(), chars, tmp_path / "run")


def lm_settings(corpus, tmp_path) -> list[str]:
    return [f"corpus={corpus}", f"cache_dir={tmp_path / 'cache'}", "block_size=16", "batch_size=4"]


# -- attnlab prune ------------------------------------------------------------------------------


def test_prune_writes_a_run_that_loads_and_scores_as_reported(gpt_run, corpus, tmp_path):
    out = tmp_path / "pruned"
    settings = lm_settings(corpus, tmp_path)
    result = _invoke(
        "prune", gpt_run, *settings, "--fraction", "0.5", "--out", out, "--eval", "2",
        "--batches", "2", "--step", "0.25",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "val_ppl" in result.output and "4/8" in result.output
    assert "pruned 4 of 8 heads by importance" in result.output

    report = json.loads((out / "prune_report.json").read_text())
    assert report["task"] == "lm" and report["metric"] == "val_ppl"
    assert [row["heads_pruned"] for row in report["curve"]] == [0, 2, 4]
    assert report["params_after"] < report["params_before"]
    assert (out / "prune_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The run holds the pruned model: the original with the reported heads zero-ablated.
    original = attnlab.load(gpt_run).model
    loaded = attnlab.load(out)
    assert sum(m.n_heads for m in attnlab.inspect.attention_modules(loaded.model).values()) == 4
    assert loaded.tokenizer is not None and loaded.train["corpus"] == str(corpus)
    x = torch.tensor([loaded.tokenizer.encode("the lazy dog")])
    with torch.no_grad(), ablate_heads(original, report["pruned"]):
        torch.testing.assert_close(loaded.model(x).logits, original(x).logits, atol=1e-6, rtol=0)

    # attnlab eval scores it with the saved settings to the curve's last point.
    scored = _invoke("eval", "--checkpoint", out)
    assert scored.exit_code == 0, scored.output
    last = report["curve"][-1]
    assert json.loads(scored.output)["val_loss"] == pytest.approx(last["val_loss"], abs=1e-6)


def test_a_trained_run_is_pruned_on_its_own_task_and_data(tmp_path):
    from attnlab.train.config import TrainConfig
    from attnlab.train.tasks import make_task
    from attnlab.train.trainer import Trainer

    data = tmp_path / "topics"
    for label, word in (("animals", "cat dog"), ("food", "bread soup"), ("sport", "ball goal")):
        (data / label).mkdir(parents=True)
        for i in range(6):
            (data / label / f"{i}.txt").write_text(f"{word} {word} number {i}")
    config = TrainConfig(
        task="classify", model="bert-base", dataset=str(data), tokenizer="minilm",
        model_overrides={"n_layer": 2, "n_head": 4, "dim": 32, "hidden": 64},
        block_size=16, batch_size=4, max_steps=2, warmup_steps=1, eval_every=2,
        out_dir=str(tmp_path / "run"), device="cpu",
    )  # fmt: skip
    Trainer(config, make_task(config), progress=False, echo=lambda *_: None).fit()
    out = tmp_path / "pruned"
    result = _invoke(
        "prune", tmp_path / "run", "--by", "entropy", "--fraction", "0.25", "--out", out,
        "--batches", "1", "--step", "0.25",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((out / "prune_report.json").read_text())
    assert report["task"] == "classify" and report["metric"] == "accuracy"
    assert [row["heads"] for row in report["curve"]] == [8, 6]
    assert all(0 <= row["accuracy"] <= 1 for row in report["curve"])
    pruned = attnlab.load(out)
    assert pruned.train["dataset"] == str(data) and pruned.config.labels == [
        "animals",
        "food",
        "sport",
    ]


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--fraction", "1.5"], ["--fraction: expected a number between 0 and 1", "'1.5'"]),
        (["--fraction", "half"], ["--fraction: expected a number between 0 and 1"]),
        (["--fraction", "0.9"], ["--fraction: 0.9 of 8 heads is 7", "at most 6"]),
        (["--by", "size"], ["--by: expected one of importance, entropy, random, got 'size'"]),
        (["--batches", "0"], ["--batches: expected an integer >= 1, got '0'"]),
        (["--eval", "-1"], ["--eval: expected an integer >= 0"]),
        (["model.n_layer=1"], ["model.*: the model is read from SOURCE"]),
    ],
)
def test_bad_prune_options_are_one_line_errors(gpt_run, corpus, tmp_path, args, needles):
    out = tmp_path / "out"
    result = _invoke("prune", gpt_run, *lm_settings(corpus, tmp_path), "--out", out, *args)
    one_line_error(result, *needles)
    assert not out.exists()


def test_prune_refuses_an_unknown_source_and_a_full_out_directory(gpt_run, corpus, tmp_path):
    one_line_error(_invoke("prune", tmp_path / "nothing", "--out", tmp_path / "o"), "nothing")
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    settings = lm_settings(corpus, tmp_path)
    result = _invoke("prune", gpt_run, *settings, "--out", full, "--batches", "1", "--eval", "1")
    one_line_error(result, "--out: expected a new or empty directory")
    assert [p.name for p in full.iterdir()] == ["keep.txt"]


# -- attnlab heads ------------------------------------------------------------------------------


def _table(output: str) -> tuple[list[str], list[list[str]]]:
    header, _, *rows = output.strip().splitlines()
    return header.split(), [r.split() for r in rows]


def test_heads_prints_one_row_per_head_sorted_on_request(gpt_run):
    result = _invoke("heads", gpt_run, "--text", "the quick brown fox", "--sort", "entropy")
    assert result.exit_code == 0, result.output
    header, rows = _table(result.output)
    assert header[:6] == ["layer", "head", "entropy", "distance", "sink", "previous"]
    assert len(rows) == 8 and {(r[0], r[1]) for r in rows} == {
        (str(i), str(h)) for i in range(2) for h in range(4)
    }
    entropy = [float(r[2]) for r in rows]
    assert entropy == sorted(entropy, reverse=True)
    # The statistics are head_stats'.
    model, tok = attnlab.load(gpt_run)
    stats = attnlab.inspect.head_stats(model, torch.tensor([tok.encode("the quick brown fox")]))
    row = next(r for r in rows if r[:2] == ["1", "2"])
    assert float(row[2]) == pytest.approx(float(stats[1].entropy[0, 2]), abs=5e-4)
    try:
        from attnlab.inspect.analysis import detect_heads  # noqa: F401
    except ImportError:
        return
    assert header[6:] == ["previous_token", "first_token", "duplicate_token", "induction"]


def test_heads_of_chosen_layers_including_a_cross_attention(tmp_path):
    torch.manual_seed(0)
    chars = CharTokenizer.from_text("abcdefgh \n.")
    config = TransformerConfig(
        vocab_size=chars.vocab_size, max_len=32, n_layer=1, n_head=2, dim=16, hidden=32
    )
    run = save_run(EncoderDecoder(config).eval(), chars, tmp_path / "run")
    result = _invoke(
        "heads",
        run,
        "--text",
        "bad cafe",
        "--layers",
        "decoder.blocks.0.cross,encoder.blocks.0.attn",
    )
    assert result.exit_code == 0, result.output
    _, rows = _table(result.output)
    assert [r[:2] for r in rows] == [  # in the order the model runs them
        ["encoder.blocks.0.attn", "0"],
        ["encoder.blocks.0.attn", "1"],
        ["decoder.blocks.0.cross", "0"],
        ["decoder.blocks.0.cross", "1"],
    ]
    if len(rows[0]) > 6:  # detector scores: self-attention only
        assert rows[0][6] != "-" and rows[2][6:] == ["-"] * 4


def test_bad_heads_requests_are_one_line_errors(gpt_run, tmp_path):
    too_long = "the quick brown fox jumps over the lazy dog"
    one_line_error(
        _invoke("heads", gpt_run, "--text", too_long),
        "--text: 43 tokens exceed the model's context of 32 tokens",
    )
    one_line_error(_invoke("heads", gpt_run, "--text", "ab", "--layers", "7"), "--layers: layer 7")
    one_line_error(_invoke("heads", gpt_run, "--text", "ab", "--layers", "x"), "--layers: unknown")
    one_line_error(
        _invoke("heads", gpt_run, "--text", "ab", "--sort", "size"),
        "--sort: expected one of entropy, distance, sink, previous",
    )
    one_line_error(_invoke("heads", tmp_path / "nothing", "--text", "ab"), "nothing")
    config = ViTConfig(image_size=8, patch_size=4, channels=1, num_labels=3, n_layer=1,
                       n_head=2, dim=16, hidden=32)  # fmt: skip
    vit_run = save_run(ViT(config).eval(), None, tmp_path / "vit")
    one_line_error(_invoke("heads", vit_run, "--text", "ab"), "has no tokenizer")
