"""`attnlab backends` and the CLI's error contract (one line on stderr, exit code 2)."""

from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

from attnlab.cli.main import cli


def test_backends_table_lists_every_backend_and_auto_order():
    result = CliRunner().invoke(cli, ["backends"])
    assert result.exit_code == 0, result.output
    for name in ("reference", "sdpa", "flex", "chunked"):
        assert f"\n{name} " in result.output
    assert "auto tries, causal T=4096:          sdpa > chunked > flex > reference" in result.output
    assert "sliding window 256/4096: chunked > flex > sdpa > reference" in result.output
    flex_row = next(line for line in result.output.splitlines() if line.startswith("flex "))
    assert " - " in flex_row  # cannot train on CPU with torch 2.13


def test_unknown_command_exits_2_with_one_line():
    done = subprocess.run(
        [sys.executable, "-m", "attnlab.cli.main", "bakends"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert "No such command 'bakends'" in done.stderr
    assert "Traceback" not in done.stderr


def test_bad_device_exits_2_without_traceback():
    done = subprocess.run(
        [sys.executable, "-m", "attnlab.cli.main", "backends", "--device", "nonsense"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("attnlab: error:")
    assert len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr
