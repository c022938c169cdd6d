"""Every training command on tiny settings, and the one-line errors for bad input."""

from __future__ import annotations

import json

import pytest
import torch
from cli_helpers import one_line_error as _one_line_error
from click.testing import CliRunner

from attnlab.cli.main import cli
from attnlab.train import checkpoint
from attnlab.train.config import PRESETS, TASK_SETTINGS, preset


def invoke(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture
def lm_run(tiny_lm, tmp_path):
    run = tmp_path / "run"
    result = invoke(
        "train", "--preset", "shakespeare-char", *tiny_lm, "max_steps=12", "eval_every=6",
        "model.bias=true", "model.mlp=gelu_tanh", "--out", run, "--no-progress",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return run


def test_train_leaves_checkpoint_metrics_plot_and_sample(lm_run):
    for name in (
        "config.json",
        "metrics.jsonl",
        "loss.png",
        "sample.txt",
        "tokenizer/char_tokenizer.json",
    ):
        assert (lm_run / name).is_file(), name
    assert (lm_run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = [json.loads(line) for line in (lm_run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    val = [r for r in records if r["split"] == "val"]
    assert [r["step"] for r in val] == [6, 12] and train[-1]["tokens_per_s"] > 0
    assert train[-1]["loss"] < train[0]["loss"]
    assert [p.name for p in checkpoint.list_checkpoints(lm_run)] == ["step-0000006", "step-0000012"]
    assert len((lm_run / "sample.txt").read_text()) == 20


def test_sample_eval_and_convert(lm_run, tmp_path):
    out = invoke("sample", "--checkpoint", lm_run, "--prompt", "line 1", "--max-new-tokens", 15)
    assert out.exit_code == 0, out.output
    assert out.output.startswith("line 1") and len(out.output.rstrip("\n")) == len("line 1") + 15
    again = invoke("sample", "--checkpoint", lm_run, "--prompt", "line 1", "--max-new-tokens", 15)
    assert again.output == out.output  # the seed fixes the sample

    scored = invoke("eval", "--checkpoint", lm_run, "eval_batches=1")
    assert scored.exit_code == 0, scored.output
    metrics = json.loads(scored.output)
    assert metrics["step"] == 12 and metrics["val_loss"] > 0

    hf = tmp_path / "hf"
    assert invoke("convert", lm_run, hf).exit_code == 0
    from transformers import GPT2LMHeadModel

    theirs = GPT2LMHeadModel.from_pretrained(hf).eval()
    ours = checkpoint.load_model(lm_run)
    ids = torch.randint(0, ours.config.vocab_size, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(
            theirs(ids).logits, ours(ids).logits, atol=1e-5, rtol=0
        )  # fmt: skip
    from transformers import AutoTokenizer

    import attnlab

    chars = attnlab.load(lm_run).tokenizer
    text = "line 12: the lazy fox\n"
    assert AutoTokenizer.from_pretrained(hf)(text)["input_ids"] == chars.encode(text)
    back = tmp_path / "back"
    converted = invoke("convert", hf, back)
    assert converted.exit_code == 0, converted.output
    assert torch.equal(checkpoint.load_model(back)(ids).logits, ours(ids).logits)
    _one_line_error(invoke("convert", hf, back), "destination: expected a new or empty directory")


def test_resume_takes_the_runs_saved_settings(lm_run):
    """Only --out and a longer max_steps: the tiny model, corpus and cache come from the run."""
    result = invoke("train", "--resume", "--out", lm_run, "max_steps=16", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "resumed from" in result.output and "step 16" in result.output
    assert checkpoint.latest(lm_run).name == "step-0000016"
    assert checkpoint.load_model(lm_run).config.dim == 32


def test_bad_input_is_one_line_and_exit_2(tiny_lm, tmp_path):
    run = tmp_path / "run"
    base = ["train", "--preset", "shakespeare-char", *tiny_lm, "max_steps=4", "--out", run]
    _one_line_error(
        invoke("train", "--preset", "shakespear-char"), "did you mean 'shakespeare-char'"
    )
    _one_line_error(invoke(*base, "lrr=1e-3"), "lrr: not a training setting", "did you mean 'lr'")
    _one_line_error(invoke(*base, "lr=fast"), "lr: expected a float, got 'fast'")
    _one_line_error(invoke(*base, "model.n_layr=2"), "did you mean 'n_layer'")
    _one_line_error(invoke(*base, "n_layer=2"), "did you mean 'model.n_layer'")
    _one_line_error(invoke(*base, f"corpus={tmp_path / 'missing.txt'}"), "corpus")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    _one_line_error(invoke(*base, f"corpus={empty}"), "corpus", "empty")
    _one_line_error(invoke(*base, "--resume"), "resume: no checkpoint in")
    assert invoke(*base, "eval_every=2").exit_code == 0
    _one_line_error(invoke(*base), "already holds checkpoints", "--resume")
    # A checkpoint of another model: the architecture differs from the run's.
    _one_line_error(invoke(*base, "model.dim=48", "--resume"), "does not match", "dim")
    _one_line_error(invoke("sample", "--checkpoint", tmp_path / "nowhere"), "nowhere")
    _one_line_error(invoke("eval", "--checkpoint", tmp_path), "checkpoint")


@pytest.fixture
def documents(tmp_path):
    rng = torch.Generator().manual_seed(0)
    words = [
        "the",
        "king",
        "said",
        "unto",
        "them",
        "go",
        "and",
        "see",
        "what",
        "the",
        "lord",
        "hath",
        "done",
        "this",
        "day",
    ]
    docs = []
    for _ in range(12):
        lines = [
            " ".join(words[i] for i in torch.randint(0, len(words), (8,), generator=rng))
            for _ in range(6)
        ]
        docs.append("\n".join(lines))
    path = tmp_path / "docs.txt"
    path.write_text("\n\n".join(docs))
    return path


def _smoke(tmp_path, name: str, *overrides: str):
    out = tmp_path / name
    task = PRESETS[name]["task"]
    short_eval = ["eval_batches=1"] if "eval_batches" in TASK_SETTINGS[task] else []
    result = invoke(
        "train", "--preset", name, "max_steps=3", "eval_every=3", "batch_size=2", *short_eval,
        "--out", out, "--no-progress", f"cache_dir={tmp_path / 'cache'}", *overrides,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out, result


def test_every_preset_is_valid():
    for name in PRESETS:
        preset(name)


def test_bert_pretrain_smoke(tmp_path, documents):
    out, result = _smoke(
        tmp_path, "bert-pretrain", f"corpus={documents}", "block_size=32", "model.n_layer=1",
        "model.dim=32", "model.n_head=2", "model.hidden=64",
    )  # fmt: skip
    assert "nsp_accuracy" in result.output
    assert checkpoint.load_model(out).config.head == "pretrain"


def test_news_classify_smoke(tmp_path):
    out, result = _smoke(tmp_path, "news-classify", "block_size=16")
    model = checkpoint.load_model(out)
    assert model.config.head == "classify" and model.config.num_labels == 5
    assert "accuracy" in result.output


def test_translate_smoke(tmp_path):
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("".join(f"moni {i}\thello {i}\n" for i in range(60)))
    _, result = _smoke(
        tmp_path, "translate", f"dataset={tsv}", "vocab_size=300", "val_fraction=0.1",
        "block_size=8", "model.n_layer=1", "model.dim=32", "model.n_head=2", "model.hidden=64",
    )  # fmt: skip
    assert "bleu" in result.output and "bleu_greedy" in result.output


def test_vit_digits_smoke(tmp_path):
    out, result = _smoke(tmp_path, "vit-digits", "model.n_layer=1")
    assert "accuracy" in result.output
    assert checkpoint.load_model(out).config.num_labels == 10
