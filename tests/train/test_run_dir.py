"""`attnlab train` and its run directory: one writer at a time, never another program's files,
write faults as one line with earlier checkpoints intact, nothing half-made left behind, files
with the usual permissions, hand-edited settings and unknown names explained."""

from __future__ import annotations

import json
import os
import signal
import stat
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors import SafetensorError
from safetensors.torch import load_file

from attnlab import files
from attnlab.cli.main import cli
from attnlab.train import checkpoint, runlog, trainer


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _fails(result, *needles: str) -> str:
    """Exit 2 with exactly one line on stderr, holding ``needles``, and no traceback."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("attnlab: error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _listing(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def train(tiny_lm):
    """``train(out, *extra)``: a tiny character-level run into ``out``."""

    def run(out, *extra):
        return invoke(
            "train", "--preset", "shakespeare-char", *tiny_lm, "max_steps=20", "eval_every=10",
            "sample_length=0", "--out", out, "--no-progress", *extra,
        )  # fmt: skip

    return run


# -- one writer per run directory ------------------------------------------------------------------


def test_a_run_directory_in_use_is_refused_and_left_alone(train, holder, tmp_path):
    run = tmp_path / "run"
    assert train(run, "max_steps=10").exit_code == 0
    before = _listing(run)
    other = holder(run)
    line = _fails(train(run, "--resume"), f"out_dir: {run} is in use by attnlab train")
    assert f"(pid {other.pid} on " in line
    _fails(train(tmp_path / "run"), "is in use by attnlab train")
    lock = run / files.LOCK_NAME
    assert {k: v for k, v in _listing(run).items() if k != lock.name} == before

    # The owner killed (SIGKILL: no clean-up), its lock file stays; the next run takes it over.
    other.send_signal(signal.SIGKILL)
    other.wait(timeout=30)
    assert lock.exists()
    resumed = train(run, "--resume", "max_steps=20")
    assert resumed.exit_code == 0, resumed.output
    assert f"locked by attnlab train (pid {other.pid}" in resumed.output
    assert "no longer running; taking it over" in resumed.output
    assert checkpoint.latest(run).name == "step-0000020" and not lock.exists()


# -- directories that are not attnlab runs -------------------------------------------------------


def test_a_hugging_face_directory_is_never_overwritten(train, tmp_path):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 12}))
    (hf / "model.safetensors").write_bytes(b"weights")
    before = _listing(hf)
    _fails(train(hf), f"out_dir: {hf} is not empty and not an attnlab run", "config.json")
    _fails(train(hf, "--resume"), "resume: no checkpoint in")
    assert _listing(hf) == before and sorted(p.name for p in hf.iterdir()) == sorted(before)


def test_an_empty_directory_or_a_run_without_checkpoints_is_fine(train, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert train(empty, "max_steps=5", "eval_every=5").exit_code == 0
    assert checkpoint.latest(empty).name == "step-0000005"


# -- faults while writing --------------------------------------------------------------------------


def test_an_output_path_that_is_a_file_or_under_one(train, tmp_path):
    file = tmp_path / "notes.txt"
    file.write_text("mine")
    _fails(train(file), f"out_dir: {file} is a file, expected a directory")
    _fails(train(file / "run"), f"out_dir: cannot create {file / 'run'} (Not a directory)")
    assert file.read_text() == "mine"


def test_a_read_only_directory(train, tmp_path, monkeypatch):
    """As root, permissions do not stop writes, so the directory's refusal is simulated at the
    system call every write here starts with (creating a file in it)."""
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    real = os.open

    def refuse(path, flags, *args, **kwargs):
        if str(path).startswith(str(readonly)) and flags & os.O_CREAT:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse)
    _fails(train(readonly), f"out_dir: cannot lock {readonly} (Permission denied)")
    _fails(train(readonly / "run"), "Permission denied")
    monkeypatch.undo()
    assert list(readonly.iterdir()) == []


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(SafetensorError("Error while serializing: I/O error"), id="safetensors"),
        pytest.param(RuntimeError("PytorchStreamWriter failed writing file"), id="torch"),
        pytest.param(OSError(28, os.strerror(28)), id="enospc"),
    ],
)
def test_a_failed_checkpoint_keeps_the_earlier_ones(train, tmp_path, monkeypatch, fault):
    """The second checkpoint fails the way each writer reports a full disk."""
    run = tmp_path / "run"
    calls = {"n": 0}
    real = torch.save

    def save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise fault
        return real(obj, f, *args, **kwargs)

    if isinstance(fault, SafetensorError):
        real_model = checkpoint.save_model

        def save_model(model, filename, metadata=None):
            calls["n"] += 1
            if calls["n"] == 2:
                raise fault
            return real_model(model, filename, metadata=metadata)

        monkeypatch.setattr(checkpoint, "save_model", save_model)
    else:
        monkeypatch.setattr(checkpoint.torch, "save", save)
    _fails(train(run), f"checkpoint: cannot write {run / 'checkpoints' / 'step-0000020'}")
    kept = checkpoint.list_checkpoints(run)
    assert [p.name for p in kept] == ["step-0000010"]
    assert not list((run / "checkpoints").glob(".tmp-*"))
    load_file(kept[0] / "model.safetensors")


def test_a_full_disk_while_logging(train, tmp_path, monkeypatch):
    """metrics.jsonl cannot grow after the first checkpoint: one line naming it."""
    run = tmp_path / "run"
    calls = {"n": 0}

    def full(path, mode="r", *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 3:  # lines at steps 5 and 10, the evaluation at step 10, then no more
            raise OSError(28, os.strerror(28), str(path))
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(runlog, "open", full, raising=False)
    _fails(train(run), f"metrics: cannot write {run / 'metrics.jsonl'} (No space left on device)")
    assert [p.name for p in checkpoint.list_checkpoints(run)] == ["step-0000010"]


def test_a_run_that_fails_before_its_first_checkpoint_leaves_nothing(train, tmp_path, monkeypatch):
    def full(path, text):
        raise OSError(28, os.strerror(28))

    monkeypatch.setattr(trainer, "atomic_write_text", full)
    run = tmp_path / "runs" / "new"
    _fails(train(run), f"config: cannot write {run / 'config.json'} (No space left on device)")
    assert not run.exists()
    empty = tmp_path / "empty"  # a directory given empty stays, empty
    empty.mkdir()
    _fails(train(empty), "config: cannot write")
    assert list(empty.iterdir()) == []


# -- refused before anything is built or written -------------------------------------------------


def test_a_failed_resume_leaves_no_directory(train, tmp_path):
    run = tmp_path / "never"
    _fails(train(run, "--resume"), f"resume: no checkpoint in {run}")
    assert not run.exists()


def test_the_device_is_checked_before_the_model_is_built(train, tmp_path):
    run = tmp_path / "run"
    result = train(run, "device=tpu")
    _fails(result, "device: expected auto, cpu or cuda")
    assert "parameters" not in result.output and not run.exists()


def test_a_setting_the_task_does_not_read_is_refused(tmp_path):
    run = tmp_path / "vit"
    result = invoke("train", "--preset", "vit-digits", "dataset=sentiment", "--out", run)
    _fails(result, "dataset: not used by task 'vit'")
    _fails(invoke("train", "--preset", "vit-digits", "corpus=kjv", "--out", run), "corpus")
    assert not run.exists()


# -- hand-edited settings ------------------------------------------------------------------------


def test_a_hand_edited_config_json_is_explained(train, tmp_path):
    run = tmp_path / "run"
    assert train(run, "max_steps=10").exit_code == 0
    saved = run / "config.json"
    original = json.loads(saved.read_text())

    def edit(**changes):
        config = json.loads(json.dumps(original))
        config["train"].update(changes)
        saved.write_text(json.dumps(config))
        return train(run, "--resume", "max_steps=12")

    line = _fails(edit(learning_rate=1e-3), f"{saved} (train): learning_rate: not a training")
    assert "(did you mean 'lr'?)" in line
    _fails(edit(max_steps="12"), f"{saved} (train): max_steps: expected an int, got '12' (string)")
    _fails(edit(lr=None), "lr: expected a float, got None (null)")
    _fails(edit(model_overrides={"n_layr": 1}), "model_overrides: n_layr", "'n_layer'")
    _fails(edit(warmup_steps=-1), f"{saved} (train): warmup_steps: expected an int >= 0")
    saved.write_text("{not json")
    _fails(train(run, "--resume"), f"{saved}: expected JSON")
    saved.write_text(json.dumps(original))
    assert train(run, "--resume", "max_steps=12").exit_code == 0


# -- the settings in --help, and the names people try --------------------------------------------


def test_help_lists_the_settings_grouped_with_types_and_defaults():
    result = invoke("train", "--help")
    assert result.exit_code == 0
    text = " ".join(result.output.split())  # help text is wrapped to the terminal
    for needle in (
        "Optimisation:",
        "lr=FLOAT peak learning rate [default: 0.001]",
        "time_budget=FLOAT|none",
        "compile=BOOL torch.compile the model [default: false]",
        "Evaluation, checkpoints, logging:",
        "model.KEY=VALUE",
    ):
        assert needle in text, needle


@pytest.mark.parametrize(
    ("given", "meant"),
    [
        ("learning_rate", "lr"),
        ("epochs", "max_steps"),
        ("bs", "batch_size"),
        ("batch", "batch_size"),
        ("warmup", "warmup_steps"),
        ("output_dir", "out_dir"),
        ("lrr", "lr"),
    ],
)
def test_an_unknown_setting_names_the_one_meant(given, meant):
    _fails(
        invoke("train", f"{given}=1"), f"{given}: not a training setting (did you mean {meant!r}?)"
    )


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_run_files_follow_the_umask(clocked_trainer, umask_022):
    """Not the private modes of the temporary files and directories they were written as."""
    run = clocked_trainer(max_steps=10, eval_every=5, log_every=5).fit().run_dir
    for name in ("config.json", "metrics.jsonl", "loss.png", "checkpoints/best.json"):
        assert stat.S_IMODE((run / name).stat().st_mode) == 0o644, name
    for path in checkpoint.list_checkpoints(run):
        assert stat.S_IMODE(path.stat().st_mode) == 0o755, path
        assert stat.S_IMODE((path / "model.safetensors").stat().st_mode) == 0o644
