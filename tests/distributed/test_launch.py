"""``torchrun ... -m attnlab train``: a run on 2 ranks, one of them killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TEXT = "".join(f"line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(400))


def _ranks_of(launcher: int) -> dict[int, int]:
    """rank -> pid of the workers ``launcher`` (torchrun's pid) started."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid != launcher:
            continue
        for item in env:
            if item.startswith(b"RANK="):
                found[int(item[5:])] = int(entry.name)
    return found


@pytest.mark.slow
def test_a_killed_rank_stops_the_run_and_leaves_a_loadable_checkpoint(tmp_path):
    import attnlab

    (tmp_path / "corpus.txt").write_text(TEXT)
    run = tmp_path / "run"
    torchrun = Path(sys.executable).parent / "torchrun"
    args = [
        str(torchrun), "--nproc-per-node", "2", "-m", "attnlab", "train",
        "--preset", "shakespeare-char", "parallel=ddp", f"corpus={tmp_path / 'corpus.txt'}",
        f"cache_dir={tmp_path / 'cache'}", "model.n_layer=1", "model.dim=32", "model.n_head=2",
        "max_steps=100000", "eval_every=3", "eval_batches=1", "sample_length=0",
        "dist_timeout=30", "--out", str(run), "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    try:
        deadline = time.monotonic() + 120
        while not list((run / "checkpoints").glob("step-*")):
            assert launcher.poll() is None, launcher.stdout.read()
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.2)
        os.kill(_ranks_of(launcher.pid)[1], signal.SIGKILL)
        killed = time.monotonic()
        output, _ = launcher.communicate(timeout=60)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    # Well within the 30 s a collective may wait: the launcher sees the dead worker at once.
    assert time.monotonic() - killed < 30
    assert launcher.returncode != 0
    assert "rank      : 1" in output and "SIGKILL" in output  # the launcher names the rank
    assert "rank 0: interrupted" in output
    assert "the last checkpoint is step-" in output
    # The last complete checkpoint loads, in one process, as any run does.
    loaded = attnlab.load(run)
    assert loaded.model.config.n_layer == 1
    for ckpt in (run / "checkpoints").glob("step-*"):  # complete, or not under this name
        assert {"meta.json", "state.pt", "rank-0.pt", "rank-1.pt"} <= {
            p.name for p in ckpt.iterdir()
        }
        assert (ckpt / "dcp" / ".metadata").is_file()
