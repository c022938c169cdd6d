"""``attnlab compare``: one study end to end on tiny settings, its measurements, and the
one-line errors for a bad study, before anything is trained."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from cli_helpers import one_line_error
from click.testing import CliRunner

import attnlab
from attnlab.cli.main import cli
from attnlab.models import from_preset
from attnlab.train import compare
from attnlab.train.compare import (
    EXTRAPOLATION_FACTORS,
    format_results,
    plan_study,
    saved_tensor_bytes,
    step_costs,
    train_variant,
)

TINY = [
    "model.n_layer=1",
    "model.n_head=2",
    "model.dim=32",
    "block_size=16",
    "batch_size=4",
    "eval_batches=2",
    "sample_length=0",
    "threads=1",  # two threads on two busy cores are many times slower than one
]
PNGS = ("val_loss_time.png", "val_loss_steps.png", "step_memory.png", "step_time.png")


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def tiny_settings(tmp_path_factory):
    """A tiny corpus (about 3,800 validation characters: 29 windows of 8 x 16) and its cache."""
    root = tmp_path_factory.mktemp("compare-data")
    corpus = root / "corpus.txt"
    lines = [f"line {i}: the quick brown fox jumps over the lazy dog {i % 7}." for i in range(700)]
    corpus.write_text("\n".join(lines))
    return [*TINY, f"corpus={corpus}", f"cache_dir={root / 'cache'}"]


@pytest.fixture(scope="module")
def study(tiny_settings, tmp_path_factory):
    """One study through the command line: 2 x 2 combinations, 3 steps each; linear + ALiBi is
    refused by the model config, the other three are trained in child processes."""
    out = tmp_path_factory.mktemp("compare") / "report"
    result = invoke(
        "compare", "--preset", "shakespeare-char", *tiny_settings,
        "--vary", "attention=softmax,linear", "position=rope,alibi",
        "--steps", 3, "--out", out, "--measure-max-len", 256, "--eval-windows", 2,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads((out / "results.json").read_text())
    runs = {(r["values"]["attention"], r["values"]["position"]): r for r in data["runs"]}
    return out, result.output, data, runs


def test_study_writes_report_results_and_figures(study):
    out, output, data, _ = study
    for name in ("report.md", "results.json", "extrapolation.png", *PNGS):
        assert (out / name).is_file(), name
    for name in ("extrapolation.png", *PNGS):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"]({name})" in (out / "report.md").read_text(), name  # embedded
    assert data["complete"] and data["measure_lengths"] == [64, 128, 256]
    assert [a["name"] for a in data["axes"]] == ["attention", "position"]
    report = (out / "report.md").read_text()
    assert "saved_tensors_hooks" in report  # says how memory is measured
    assert "| attention | position | status | val loss |" in output  # the table, printed too


def test_every_trained_run_is_a_run_directory_with_its_figures(study):
    out, _, _, runs = study
    trained = [key for key, run in runs.items() if run["status"] == "ok"]
    assert sorted(trained) == [("linear", "rope"), ("softmax", "alibi"), ("softmax", "rope")]
    for key in trained:
        run = runs[key]
        loaded = attnlab.load(out / run["run_dir"])
        assert loaded.config.attention == key[0] and loaded.config.position == key[1]
        # Learned or not, the positions reach 8 x block_size for the extrapolation test.
        assert loaded.config.max_len == 8 * 16
        assert run["steps"] == 3 and run["history"][-1]["step"] == 3
        assert run["val_loss"] == pytest.approx(run["history"][-1]["val_loss"])
        assert run["tokens_per_s"] > 0 and run["peak_rss_mib"] > 50  # torch alone is more
        assert run["parameters"] == sum(p.numel() for p in loaded.model.parameters())
        assert (out / run["log"]).is_file()


def test_refused_combination_is_listed_with_its_reason(study):
    out, _, _, runs = study
    refused = runs[("linear", "alibi")]
    assert refused["status"] == "not run" and refused["val_loss"] is None
    assert "'alibi' adds a bias to attention scores" in refused["reason"]
    assert not (out / "runs" / "attention-linear__position-alibi").exists()
    row = next(
        line
        for line in (out / "report.md").read_text().splitlines()
        if line.startswith("| linear | alibi |")
    )
    assert "not run: position: 'alibi' adds a bias" in row


def test_extrapolation_has_every_length_on_the_same_tokens(study):
    out, _, _, runs = study
    for run in runs.values():
        if run["status"] != "ok":
            continue
        cells = run["extrapolation"]
        assert sorted(int(f) for f in cells) == list(EXTRAPOLATION_FACTORS)
        tokens = {cell["tokens"] for cell in cells.values()}
        assert tokens == {2 * 8 * 16}  # 2 windows of 8x, scored at every length
        for cell in cells.values():
            assert cell["ppl"] == pytest.approx(torch.tensor(cell["loss"]).exp().item())
    header = next(line for line in (out / "report.md").read_text().splitlines() if "| 8x |" in line)
    assert all(f"| {f}x |" in header for f in EXTRAPOLATION_FACTORS)


def test_saved_memory_grows_with_length_for_softmax_and_is_counted_for_linear(study):
    _, _, _, runs = study
    softmax = {c["seq_len"]: c for c in runs[("softmax", "rope")]["step_costs"]}
    assert softmax[64]["saved_bytes"] < softmax[128]["saved_bytes"] < softmax[256]["saved_bytes"]
    linear = runs[("linear", "rope")]["step_costs"]
    assert [c["seq_len"] for c in linear] == [64, 128, 256]
    assert all(c["saved_bytes"] > 0 and c["time_s"] > 0 for c in linear)


def test_saved_tensor_bytes_counts_each_storage_once_and_skips_excluded():
    x = torch.randn(100, requires_grad=True)
    w = torch.randn(100, requires_grad=True)
    out, n = saved_tensor_bytes(lambda: (x * x).exp().sum())
    # x * x saves x twice (one storage), exp saves its output: two storages of 100 floats.
    assert n == 2 * 100 * 4
    out.backward()
    _, n = saved_tensor_bytes(lambda: (x * w).sum(), exclude=[w])
    assert n == 100 * 4  # w (a "parameter") left out, x counted
    _, n = saved_tensor_bytes(lambda: x[:50].exp().sum())
    assert n == 50 * 4  # the saved output, a new storage of 50 floats


def test_step_costs_report_an_error_where_the_model_cannot_run():
    torch.manual_seed(0)
    model = from_preset("gpt2", n_layer=1, n_head=2, dim=16, vocab_size=11, max_len=64)
    costs = step_costs(model, [64, 128], repeats=1)
    assert costs[0]["seq_len"] == 64 and costs[0]["saved_bytes"] > 0
    assert costs[1]["seq_len"] == 128 and "max_len" in costs[1]["error"]  # learned table of 64


@pytest.mark.parametrize(
    ("child", "needles"),
    [
        (
            "print('attnlab: error: lr: out of range'); sys.exit(2)",
            ["lr: out of range", "exit status 2"],
        ),
        ("os.kill(os.getpid(), signal.SIGKILL)", ["killed by SIGKILL"]),
    ],
)
def test_a_crashing_run_is_a_failed_row(child, needles, tiny_settings, tmp_path, monkeypatch):
    """A run whose process fails is a row with its last error line, not the end of the study;
    its peak memory is still the child's."""
    study = plan_study("shakespeare-char", ["attention=softmax,linear"], tiny_settings, steps=3)
    script = f"import os, signal, sys; x = bytearray(64 << 20); {child}"
    monkeypatch.setattr(compare, "train_command", lambda *a: [sys.executable, "-c", script])
    result = train_variant(study, study.variants[0], tmp_path)
    assert result.status == "failed" and result.val_loss is None and result.steps is None
    for needle in needles:
        assert needle in result.reason, result.reason
    assert result.peak_rss_mib >= 64  # the child's 64 MiB, read from its resource usage
    assert (tmp_path / result.log).is_file()
    results = [result, compare.RunResult("attention-linear", {"attention": "linear"}, "ok")]
    table = format_results(study, results)
    assert f"| softmax | failed: {needles[0]}" in table


@pytest.mark.parametrize(
    ("vary", "needles"),
    [
        (["attention"], ["--vary: expected FIELD=V1,V2,...", "'attention'"]),
        (["attnetion=softmax,linear"], ["--vary: attnetion", "did you mean 'attention'?"]),
        (["model.posiiton=rope"], ["--vary: model.posiiton", "did you mean 'position'?"]),
        (["attention=softmax,sofmax"], ["attention=sofmax", "did you mean 'softmax'?"]),
        (["attention=softmax,,linear"], ["--vary: attention: expected values separated"]),
        (["lr=1e-3,fast"], ["--vary: lr=fast", "expected a float"]),
        (["out_dir=a,b"], ["--vary: out_dir: cannot be varied"]),
        (["attention=linear", "position=alibi"], ["no combination can be run"]),
    ],
)
def test_bad_study_is_one_line_and_exit_2_before_training(vary, needles, tmp_path):
    out = tmp_path / "report"
    result = invoke("compare", *TINY, "--vary", *vary, "--steps", 1, "--out", out)
    one_line_error(result, *needles)
    assert not out.exists()  # refused before anything is written


def test_vary_needs_a_value_and_settings_keep_their_checks(tmp_path):
    out = tmp_path / "report"
    one_line_error(invoke("compare", "--vary", "--steps", 1, "--out", out), "--vary: expected")
    one_line_error(
        invoke("compare", "lrr=1", "--vary", "attention=softmax", "--steps", 1, "--out", out),
        "lrr: not a training setting",
        "did you mean 'lr'?",
    )
    one_line_error(
        invoke("compare", "model.attention=linear", "--vary", "attention=softmax,linear",
               "--steps", 1, "--out", out),
        "--vary: attention: also set",
    )  # fmt: skip
    assert not out.exists()
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    one_line_error(
        invoke("compare", "--vary", "attention=softmax", "--steps", 1, "--out", out),
        "--out:",
        "not an empty directory",
    )
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_a_value_refused_only_beside_the_settings_is_not_run():
    # ALiBi is fine for the preset's softmax attention, so beside a linear attention set for
    # every run it is a combination not run, not a mistake; a typo stays a mistake.
    study = plan_study(
        "shakespeare-char", ["position=rope,alibi"], ["model.attention=linear"], steps=1
    )
    assert [v.reason is None for v in study.variants] == [True, False]
    assert "'alibi' adds a bias" in study.variants[1].reason
    with pytest.raises(ValueError, match=r"--vary: position=alibu: .*did you mean 'alibi'"):
        plan_study("shakespeare-char", ["position=rope,alibu"], ["model.attention=linear"])


def test_bare_model_fields_and_training_settings_resolve(tiny_settings):
    study = plan_study(
        "shakespeare-char", ["model.window=4,8", "lr=1e-3", "attention=local"], tiny_settings,
        time_budget=5,
    )  # fmt: skip
    assert [(a.name, a.key) for a in study.axes] == [
        ("window", "model.window"), ("lr", "lr"), ("attention", "model.attention"),
    ]  # fmt: skip
    assert [v.name for v in study.runnable] == [
        "window-4__lr-1e-3__attention-local", "window-8__lr-1e-3__attention-local",
    ]  # fmt: skip
    config = study.runnable[0].config
    assert config.model_overrides["window"] == 4 and config.lr == 1e-3
    # A budget alone ends each run by the clock, not by the preset's step count.
    assert config.time_budget == 5 and config.max_steps > 10**5
