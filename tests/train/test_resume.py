"""Exact resume: a run killed with SIGKILL part-way and resumed ends with the same weights as a
run never stopped; a half-written checkpoint is never loaded; Ctrl-C saves and exits cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from attnlab.train import checkpoint

CLI = [sys.executable, "-m", "attnlab.cli.main"]


def _train(args: list[str], out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, "train", "--preset", "shakespeare-char", *args, f"out_dir={out}", *extra],
        capture_output=True,
        text=True,
        timeout=300,
    )


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(checkpoint.latest(run) / "model.safetensors")


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_sigkill_then_resume_equals_uninterrupted(tiny_lm, tmp_path):
    # Dropout on, so the RNG state must be restored too, not only the data position.
    args = [*tiny_lm, "max_steps=60", "eval_every=20", "dropout=0.1", "sample_length=0"]
    whole = tmp_path / "whole"
    done = _train(args, whole)
    assert done.returncode == 0, done.stderr

    broken = tmp_path / "broken"
    process = subprocess.Popen(
        [*CLI, "train", "--preset", "shakespeare-char", *args, f"out_dir={broken}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for(broken / "checkpoints" / "step-0000020", process)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    assert checkpoint.latest(broken).name in ("step-0000020", "step-0000040")
    # What a kill during a save leaves behind: a temporary directory with a torn file.
    torn = broken / "checkpoints" / ".tmp-torn"
    torn.mkdir()
    (torn / "model.safetensors").write_bytes(b"\x00" * 10)

    resumed = _train(args, broken, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout
    assert not torn.exists()
    a, b = _weights(whole), _weights(broken)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    steps = [
        line for line in (broken / "metrics.jsonl").read_text().splitlines() if '"val"' in line
    ]
    assert len(steps) == 3  # one validation line per evaluation, none duplicated by the resume


def test_ctrl_c_saves_the_last_step_and_exits_cleanly(tiny_lm, tmp_path):
    run = tmp_path / "run"
    process = subprocess.Popen(
        [*CLI, "train", "--preset", "shakespeare-char", *tiny_lm, "max_steps=100000",
         "eval_every=20", f"out_dir={run}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A suite started in the background inherits SIGINT ignored (as `nohup` and `cmd &` set
        # it); the run under test gets the default, as in a terminal.
        preexec_fn=_default_sigint,
    )  # fmt: skip
    _wait_for(run / "checkpoints" / "step-0000020", process)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    assert "saved" in out and "--resume" in out
    last = checkpoint.latest(run)
    assert int(last.name.removeprefix("step-")) >= 20
    assert (last / "model.safetensors").stat().st_size > 0
    resumed = _train([*tiny_lm, "max_steps=2", "eval_every=20"], run, "--resume")
    assert resumed.returncode == 0, resumed.stderr  # already past max_steps: evaluates, stops


def test_full_disk_keeps_earlier_checkpoints(tiny_lm, tmp_path, monkeypatch):
    """ENOSPC while writing a checkpoint: one clear line, exit 2, earlier checkpoint intact."""
    from click.testing import CliRunner

    from attnlab.cli.main import cli

    run = tmp_path / "run"
    calls = {"n": 0}
    real = checkpoint.save_model

    def flaky(model, filename, metadata=None):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, os.strerror(28))
        return real(model, filename, metadata=metadata)

    monkeypatch.setattr(checkpoint, "save_model", flaky)
    result = CliRunner().invoke(
        cli,
        ["train", "--preset", "shakespeare-char", *tiny_lm, "max_steps=40", "eval_every=10",
         f"out_dir={run}", "--no-progress"],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "checkpoint: cannot write" in result.output
    assert "No space left on device" in result.output and "Traceback" not in result.output
    kept = checkpoint.list_checkpoints(run)
    assert [p.name for p in kept] == ["step-0000010"]
    assert not list((run / "checkpoints").glob(".tmp-*"))
    load_file(kept[0] / "model.safetensors")  # complete and readable
