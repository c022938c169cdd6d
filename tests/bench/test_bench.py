"""Benchmark helpers and the attention benchmark, on tiny cases only."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from attnlab.bench import machine_info, peak_memory, run_isolated, time_fn
from attnlab.bench.attention import (
    bench_case,
    estimate_sweep_seconds,
    format_goals,
    format_rows,
    goals,
    run_sweep,
    time_pair,
)
from attnlab.cli.main import cli

ROW_KEYS = {"backend", "T", "mode", "mask", "seconds", "peak_mb", "device", "dtype"}
REPO = Path(__file__).resolve().parents[2]
linux_only = pytest.mark.skipif(
    not Path("/proc/self/clear_refs").exists(), reason="CPU peak memory needs Linux /proc"
)


# -- harness ------------------------------------------------------------------------------------
def test_time_fn_returns_positive_consistent_numbers():
    calls = []
    timing = time_fn(lambda: calls.append(sum(range(10_000))), repeats=4, warmup=2)
    assert len(calls) == 6  # warm-up calls run but are not timed
    assert timing.repeats == 4 and len(timing.samples) == 4
    assert 0 < timing.min_s <= timing.median_s
    assert timing.min_s <= timing.mean_s <= max(timing.samples)


def test_time_fn_repeats_short_calls_up_to_min_total():
    timing = time_fn(lambda: time.sleep(0.005), repeats=2, min_total_s=0.06, max_repeats=50)
    assert 10 <= timing.repeats < 50 and len(timing.samples) == timing.repeats
    assert sum(timing.samples) >= 0.06
    capped = time_fn(lambda: time.sleep(0.005), repeats=2, min_total_s=10.0, max_repeats=4)
    assert capped.repeats == 4


@pytest.mark.parametrize("kwargs", [{"repeats": 0}, {"warmup": -1}, {"repeats": 1.5}])
def test_time_fn_rejects_bad_counts(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        time_fn(lambda: None, **kwargs)


@linux_only
def test_peak_memory_sees_a_200_mb_allocation_on_cpu():
    # torch.ones touches every page, so all 200 MiB become resident.
    peak = peak_memory(lambda: torch.ones(50 * 2**20), "cpu")  # 50 Mi float32 = 200 MiB
    assert 180 * 2**20 < peak < 300 * 2**20


@linux_only
def test_peak_memory_does_not_count_what_existed_before():
    kept = torch.ones(50 * 2**20)
    assert peak_memory(lambda: kept.sum(), "cpu") < 50 * 2**20


def test_run_isolated_returns_the_childs_json_result():
    info = run_isolated("attnlab.bench.harness:machine_info", {})
    assert info["torch"] == torch.__version__
    assert info["cores"] >= 1


def test_run_isolated_failure_names_the_call_and_shows_stderr():
    with pytest.raises(RuntimeError, match="exited with status") as err:
        run_isolated(
            "attnlab.bench.attention:bench_case", {"backend": "nope", "T": 8, "mode": "fwd"}
        )
    assert "backend: expected one of" in str(err.value)  # the child's traceback tail


def test_run_isolated_rejects_a_bad_target():
    with pytest.raises(ValueError, match="module_function"):
        run_isolated("attnlab.bench.harness.machine_info", {})


def test_machine_info_describes_the_machine():
    info = machine_info()
    assert {"cpu", "cores", "torch", "torch_threads", "device"} <= set(info)
    assert info["torch_threads"] == torch.get_num_threads()


# -- one case -----------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["reference", "sdpa", "chunked", "auto", "torch-sdpa"])
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
def test_bench_case_row(backend, mode):
    row = bench_case(backend, 64, mode=mode, mask="window256", repeats=1)
    assert set(row) >= ROW_KEYS
    assert (row["backend"], row["T"], row["mode"], row["mask"]) == (backend, 64, mode, "window256")
    assert row["seconds"] > 0
    assert row["chosen"] == ("sdpa" if backend == "auto" else backend)
    if Path("/proc/self/clear_refs").exists():
        assert row["peak_mb"] >= 0


@pytest.mark.slow
def test_bench_case_flex_forward():
    # FlexAttention compiles on first use (seconds); inference runs on CPU.
    from attnlab.attention.backends.flex import _forward_probe

    row = bench_case("flex", 64, mode="fwd", repeats=1, measure="time")
    if _forward_probe("cpu"):  # this CPU's compiled kernel is wrong: a skipped row says so
        assert row["seconds"] is None and "compiled kernel" in row["skipped"]
        return
    assert row["seconds"] > 0 and row["peak_mb"] is None


def test_refused_case_becomes_a_skipped_row():
    row = bench_case("flex", 64, mode="fwd+bwd", repeats=1)
    assert set(row) >= ROW_KEYS
    assert row["seconds"] is None and row["peak_mb"] is None
    assert "backward" in row["skipped"]


def test_reference_is_skipped_where_it_cannot_fit():
    row = bench_case("reference", 16384, mode="fwd+bwd")  # 8 GiB per score copy: never built
    assert row["seconds"] is None
    assert "GiB" in row["skipped"]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"backend": "nope"}, "backend"),
        ({"mode": "bwd"}, "mode"),
        ({"mask": "window"}, "mask"),
        ({"T": 0}, "T"),
        ({"dtype": "int8"}, "dtype"),
        ({"repeats": 0}, "repeats"),
        ({"measure": "speed"}, "measure"),
    ],
)
def test_bench_case_bad_arguments_name_the_argument(kwargs, name):
    args = {"backend": "sdpa", "T": 16, "mode": "fwd", **kwargs}
    with pytest.raises(ValueError, match=f"^{name}: expected"):
        bench_case(**args)


# -- sweep and reporting ------------------------------------------------------------------------
def test_run_sweep_measures_in_fresh_processes_and_skips_without_one(capsys):
    rows = run_sweep(["sdpa", "flex"], [32], ["fwd+bwd"], ["causal"], repeats=1)
    sdpa, flex = rows
    assert sdpa["seconds"] > 0 and sdpa["chosen"] == "sdpa"
    if Path("/proc/self/clear_refs").exists():
        assert sdpa["peak_mb"] is not None
    assert flex["seconds"] is None and "backward" in flex["skipped"]
    progress = capsys.readouterr().err.splitlines()
    assert len(progress) == 2 and progress[0].startswith("[1/2")


def test_estimate_is_positive():
    assert estimate_sweep_seconds(["sdpa"], [32, 64], ["fwd"], ["causal"], repeats=1) > 0


def _row(backend, T, mode, mask, seconds, **extra):
    return {
        "backend": backend,
        "T": T,
        "mode": mode,
        "mask": mask,
        "seconds": seconds,
        "peak_mb": None if seconds is None else 10.0,
        "device": "cpu",
        "dtype": "float32",
        **extra,
    }


HAND_MADE = [
    _row("auto", 512, "fwd", "causal", 0.0102, chosen="sdpa"),
    _row("torch-sdpa", 512, "fwd", "causal", 0.0100),
    _row("auto", 4096, "fwd", "causal", 0.55, chosen="sdpa"),
    _row("torch-sdpa", 4096, "fwd", "causal", 0.50),
    _row("auto", 4096, "fwd", "window256", 0.10, chosen="chunked"),
    _row("torch-sdpa", 4096, "fwd", "window256", 0.30),
    _row("chunked", 4096, "fwd+bwd", "causal", 3.0),
    _row("torch-sdpa", 4096, "fwd+bwd", "causal", 2.0),
    _row("flex", 4096, "fwd+bwd", "causal", None, skipped="no backward on cpu"),
]


def test_goals_are_the_right_ratios():
    by_name = {g["name"]: g for g in goals(HAND_MADE)}
    assert len(by_name) == 4
    a512 = by_name["auto / torch-sdpa fwd, causal, T=512"]
    assert a512["value"] == pytest.approx(1.02) and a512["met"] and a512["goal"] == "<= 1.05"
    a4096 = by_name["auto / torch-sdpa fwd, causal, T=4096"]
    assert a4096["value"] == pytest.approx(1.1) and not a4096["met"]
    window = by_name["torch-sdpa (dense mask) / auto fwd, window 256, T=4096"]
    assert window["value"] == pytest.approx(3.0) and window["met"] and window["goal"] == ">= 2.0"
    train = by_name["chunked / torch-sdpa fwd+bwd, causal, T=4096"]
    assert train["value"] == pytest.approx(1.5) and train["met"]


def test_goals_missing_times_are_not_met():
    rows = [r for r in HAND_MADE if r["backend"] != "chunked"]
    train = goals(rows)[-1]
    assert train["value"] is None and train["met"] is False
    assert "not measured" in format_goals([train])


def test_goals_refuse_rows_from_two_sweeps():
    with pytest.raises(ValueError, match="rows"):
        goals(HAND_MADE + HAND_MADE[:1])


def test_format_rows_table():
    text = format_rows(HAND_MADE)
    header, rule, *lines = text.splitlines()
    columns = ["mask", "T", "backend", "fwd ms", "fwd+bwd ms", "peak MB fwd", "peak MB fwd+bwd"]
    assert re.split(r"\s{2,}", header.strip()) == columns
    assert set(rule) <= {"-", " "}
    assert any("auto (chunked)" in line and "100.0" in line for line in lines)
    flex = next(line for line in lines if " flex " in line)
    assert "skip" in flex
    assert "skipped: no backward on cpu [flex fwd+bwd causal T=4096]" in text


# -- the command line and the script --------------------------------------------------------------
def test_cli_bench_prints_a_table(tmp_path):
    out = tmp_path / "rows.json"
    result = CliRunner().invoke(cli, ["bench", "--lengths", "64", "--repeats", "1", "--json", out])
    assert result.exit_code == 0, result.output
    assert "fwd+bwd ms" in result.output
    for name in ("auto (sdpa)", "sdpa", "chunked", "torch-sdpa"):
        assert f" {name} " in result.output
    assert len(json.loads(out.read_text())) == 4


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--lengths", "12,abc"], "--lengths"),
        (["--backends", "auto,nope"], "--backends"),
        (["--mask", "none"], "--mask"),
        (["--mode", "bwd"], "--mode"),
        (["--repeats", "0"], "--repeats"),
    ],
)
def test_cli_bench_bad_values_exit_2_with_one_line(args, option):
    result = CliRunner().invoke(cli, ["bench", *args])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and option in lines[0], result.stderr


@pytest.mark.slow
def test_benchmark_script_runs_a_tiny_sweep(tmp_path):
    out = tmp_path / "result.json"
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "attention.py"),
            *("--lengths", "32", "--backends", "auto,torch-sdpa", "--modes", "fwd"),
            *("--masks", "causal", "--repeats", "1", "--out", str(out)),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "expected duration" in done.stdout and "auto / torch-sdpa fwd" in done.stdout
    record = json.loads(out.read_text())
    assert {"rows", "goals", "machine", "config"} <= set(record)
    assert len(record["rows"]) == 2


def test_time_pair_times_both_backends_alternately():
    a, b = time_pair(
        "auto",
        "torch-sdpa",
        64,
        mode="fwd",
        mask="causal",
        min_total_s=0.0,
        min_rounds=3,
        H=2,
        D=16,
    )
    assert a > 0 and b > 0
    with pytest.raises(ValueError, match="'flex' cannot run this call"):
        time_pair("flex", "torch-sdpa", 64, mode="fwd+bwd", mask="causal", H=2, D=16)
