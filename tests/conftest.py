"""Shared test settings: deterministic seeds, a fast hypothesis profile, GPU marker handling."""

import os
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "default",
    max_examples=int(os.environ.get("ATTNLAB_HYPOTHESIS_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
settings.load_profile("default")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


HOLD_LOCK = """
import sys
from attnlab.files import lock_dir
with lock_dir(sys.argv[1], "train", argument="out_dir"):
    print("locked", flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def holder():
    """``hold(directory)``: another process holding ``lock_dir(directory, "train")`` until the
    test ends (or until killed: ``process.kill()``)."""
    processes = []

    def hold(directory):
        process = subprocess.Popen(
            [sys.executable, "-c", HOLD_LOCK, str(directory)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        processes.append(process)
        assert process.stdout.readline() == "locked\n"
        return process

    yield hold
    for process in processes:
        if process.poll() is None:
            process.stdin.close()
            process.wait(timeout=30)
