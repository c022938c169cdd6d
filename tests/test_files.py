"""Atomic writes: the old file survives a failed write, no temporary file is left, and the
file gets the umask's permissions; write errors name the file; one writer per directory."""

from __future__ import annotations

import json
import os
import socket
import stat

import pytest

from attnlab import files


def test_atomic_write_replaces_and_creates_parents(tmp_path):
    target = tmp_path / "a" / "b" / "out.json"
    files.atomic_write_text(target, "one")
    files.atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["out.json"]


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "out.txt"
    target.write_text("old")

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        files.atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


@pytest.fixture
def umask_027():
    previous = os.umask(0o027)
    yield
    os.umask(previous)


def test_written_files_follow_the_umask(tmp_path, umask_027):
    """Not the 0o600 of the temporary file they were written as."""
    target = files.atomic_write_text(tmp_path / "out.json", "{}")
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert files.current_umask() == 0o027


def test_write_errors_name_the_file_and_the_reason(tmp_path):
    expected = r"^metrics: cannot write /x/m\.jsonl \(No space left on device\)$"
    with pytest.raises(files.WriteError, match=expected), files.writing("metrics", "/x/m.jsonl"):
        raise OSError(28, os.strerror(28), "/x/.m.jsonl.tmp")
    assert issubclass(files.WriteError, ValueError)  # the command line prints it as one line


# -- lock_dir ------------------------------------------------------------------------------------


def _lock(path, purpose="train", **kwargs):
    """Take and release ``lock_dir(path, purpose)``."""
    with files.lock_dir(path, purpose, **kwargs):
        return path


def test_lock_dir_keeps_a_second_writer_out(tmp_path, holder):
    run = tmp_path / "runs" / "x"
    other = holder(run)
    owner = json.loads((run / files.LOCK_NAME).read_text())
    assert owner["pid"] == other.pid and owner["purpose"] == "train"
    expected = rf"^out_dir: {run} is in use by attnlab train \(pid {other.pid} on .*\); wait"
    with pytest.raises(ValueError, match=expected):
        _lock(run, argument="out_dir")
    other.stdin.close()  # the owner finishes: its lock file goes with it
    assert other.wait(timeout=30) == 0
    assert not (run / files.LOCK_NAME).exists()
    with files.lock_dir(run, "convert") as path:
        assert path == run and (run / files.LOCK_NAME).exists()


def test_lock_dir_takes_over_the_lock_of_a_killed_owner(tmp_path, holder):
    run = tmp_path / "run"
    other = holder(run)
    other.kill()  # SIGKILL: no clean-up; the kernel drops its flock
    other.wait(timeout=30)
    assert (run / files.LOCK_NAME).exists()
    notes = []
    with files.lock_dir(run, "train", argument="out_dir", echo=notes.append):
        owner = json.loads((run / files.LOCK_NAME).read_text())
        assert owner["pid"] == os.getpid()
    assert len(notes) == 1 and f"pid {other.pid} on" in notes[0]
    assert "no longer running; taking it over" in notes[0]


def test_lock_dir_in_one_process_twice(tmp_path):
    expected = rf"in use by attnlab train \(pid {os.getpid()} "
    with files.lock_dir(tmp_path, "train"), pytest.raises(ValueError, match=expected):
        _lock(tmp_path)


def test_a_live_owner_without_its_flock_is_not_taken_over(tmp_path):
    """A lock file naming a running process whose flock is free (a file system where flock
    does nothing) is left to the user."""
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "purpose": "train"}
    (tmp_path / files.LOCK_NAME).write_text(json.dumps(owner))
    with pytest.raises(ValueError, match=rf"in use by .*remove {tmp_path / files.LOCK_NAME}"):
        _lock(tmp_path)


def test_lock_dir_removes_a_directory_it_made_and_left_empty(tmp_path):
    made = tmp_path / "a" / "b"
    with files.lock_dir(made, "train"):
        assert made.is_dir()
    assert not made.exists() and (tmp_path / "a").is_dir()
    with files.lock_dir(made, "train"):
        (made / "kept.txt").write_text("x")
    assert [p.name for p in made.iterdir()] == ["kept.txt"]
    with pytest.raises(RuntimeError), files.lock_dir(tmp_path / "c", "train"):
        raise RuntimeError("failed before writing")
    assert not (tmp_path / "c").exists()


def test_lock_dir_on_a_file(tmp_path):
    file = tmp_path / "f"
    file.write_text("x")
    with pytest.raises(files.WriteError, match=rf"^out_dir: {file} is a file, expected a dir"):
        _lock(file, argument="out_dir")
    with pytest.raises(files.WriteError, match=r"cannot create .* \(Not a directory\)"):
        _lock(file / "sub", argument="out_dir")
