"""The full attention benchmark: every backend, lengths 512 to 16384, causal and sliding window.

Usage: ``python benchmarks/attention.py`` (``make bench``); ``-h`` lists the options. Each case
runs in fresh processes (see :func:`attnlab.bench.attention.run_sweep`); progress goes to stderr.
The table and the goals are printed; rows, goals and a description of the machine are written as
JSON to ``--out``. See benchmarks/README.md for what the columns mean.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from attnlab.bench import machine_info
from attnlab.bench.attention import (
    DTYPES,
    MASKS,
    MODES,
    estimate_sweep_seconds,
    format_goals,
    format_rows,
    goals,
    interleaved_goals,
    run_sweep,
    sweep_cases,
)
from attnlab.files import atomic_write_text

BACKENDS = "reference,sdpa,flex,chunked,auto,torch-sdpa"
LENGTHS = "512,1024,2048,4096,8192,16384"
RESULTS = Path(__file__).parent / "results"


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _lengths(text: str) -> list[int]:
    try:
        lengths = [int(part) for part in _names(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers, got {text!r}"
        ) from None
    if not lengths or min(lengths) < 1:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers, got {text!r}"
        )
    return lengths


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Benchmark attnlab's attention backends against plain PyTorch SDPA."
    )
    add = parser.add_argument
    add("--backends", default=BACKENDS, help="comma-separated backend names [%(default)s]")
    add("--lengths", type=_lengths, default=LENGTHS, help="sequence lengths [%(default)s]")
    add("--modes", default=",".join(MODES), help="fwd and/or fwd+bwd [%(default)s]")
    add("--masks", default="causal,window256", help=f"from {', '.join(MASKS)} [%(default)s]")
    add("--device", default="cpu", help="torch device [%(default)s]")
    add("--dtype", default="float32", help="float32, float16 or bfloat16 [%(default)s]")
    add(
        "--repeats", type=int, default=3, help="timed calls per case at least, median [%(default)s]"
    )
    add("--out", type=Path, help="JSON output [benchmarks/results/attention-DEVICE.json]")
    add(
        "--goals",
        action="store_true",
        help="only the goals, each pair of backends timed alternately in one process "
        "(--lengths sets the causal lengths of goal (a)); a few minutes",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    sweep = {
        "backends": _names(args.backends),
        "lengths": args.lengths,
        "modes": _names(args.modes),
        "masks": _names(args.masks),
    }
    # Check every value before the long run starts; errors name the option.
    try:
        sweep_cases(**sweep)
    except ValueError as exc:  # "backends: expected ..., got ..."
        parser.error(f"--{exc}")
    try:
        device = str(torch.device(args.device))
    except RuntimeError:
        parser.error(f"--device: expected a torch device such as cpu or cuda, got {args.device!r}")
    if args.dtype not in DTYPES:
        parser.error(f"--dtype: expected one of {', '.join(DTYPES)}, got {args.dtype!r}")
    if args.repeats < 1:
        parser.error(f"--repeats: expected a positive integer, got {args.repeats}")
    out = args.out or RESULTS / f"attention-{device.replace(':', '')}.json"
    case_kwargs = {"B": 1, "H": 8, "D": 64, "dtype": args.dtype, "device": device}

    info = machine_info(device)
    print(
        f"attention benchmark on {info['device']} ({info['usable_cores']} cores, "
        f"{info['torch_threads']} torch threads, torch {info['torch']}), "
        f"B=1 H=8 D=64 {args.dtype}, median of at least {args.repeats} calls and 0.5 s per case",
        flush=True,
    )
    if args.goals:
        return _goals_only(args.lengths, out, info, case_kwargs)
    print("estimating the duration (a few seconds of calibration) ...", flush=True)
    estimate = estimate_sweep_seconds(**sweep, repeats=args.repeats, **case_kwargs)
    print(f"expected duration: about {estimate / 60:.0f} min (rough)", flush=True)

    start = time.perf_counter()
    rows = run_sweep(**sweep, repeats=args.repeats, **case_kwargs)
    elapsed = time.perf_counter() - start
    goal_rows = goals(rows)

    print(f"\nfinished in {elapsed / 60:.1f} min\n")
    print(format_rows(rows))
    print("\ngoals (ratios of times from this sweep):")
    print(format_goals(goal_rows))

    record = {
        "config": {**sweep, **case_kwargs, "repeats": args.repeats},
        "machine": info,
        "seconds_total": elapsed,
        "rows": rows,
        "goals": goal_rows,
    }
    atomic_write_text(out, json.dumps(record, indent=1) + "\n")
    print(f"\nwrote {out}")
    return 0


def _goals_only(lengths: list[int], out: Path, info: dict, case_kwargs: dict) -> int:
    start = time.perf_counter()
    goal_rows = interleaved_goals(lengths, **case_kwargs)
    print("\ngoals (each pair of backends timed alternately in one process):")
    print(format_goals(goal_rows))
    out = out.with_name(out.stem + "-goals.json")
    record = {
        "config": {"lengths": lengths, **case_kwargs},
        "machine": info,
        "seconds_total": time.perf_counter() - start,
        "goals": goal_rows,
    }
    atomic_write_text(out, json.dumps(record, indent=1) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
