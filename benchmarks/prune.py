"""Head pruning on a real classifier: accuracy of MiniLM fine-tuned on BBC News as heads go.

1. Train: the packaged all-MiniLM-L6-v2 (6 layers x 12 heads = 72 heads) fine-tuned on BBC News
   with ``attnlab train --preset news-classify`` (about 7 minutes on 2 cores; ``--steps`` and
   ``--time-budget`` shorten it), unless ``--run`` names a run trained before.
2. Prune: ``attnlab prune RUN --by METHOD`` for each method, one-shot: heads are scored once on
   ``--batches`` training batches, by importance (Michel et al. 2019, |d loss / d head mask|),
   by attention entropy and at random (the baseline, same seed for every fraction), and the
   model is evaluated on the whole held-out split (444 articles) with 0, 10, 20, ... % of its
   heads removed, up to ``--fraction`` (75 %).
3. Report: a markdown table (accuracy per method and fraction, with parameters), a PNG of the
   curves and the reports as JSON in ``--out`` (default ``benchmarks/results/prune``).

Run: ``.venv/bin/python benchmarks/prune.py`` (train, then prune; 9 evaluations of the held-out
split per method, each about half a minute on 2 cores: roughly 7 + 3 x 5 minutes), or
``--run runs/news-classify`` to reuse a trained run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from attnlab.bench.harness import machine_info
from attnlab.inspect.prune import plot_curve

METHODS = ("importance", "entropy", "random")


def cpu_flags() -> str:
    """The CPU's bfloat16 and AMX flags from /proc/cpuinfo (they change what is fast)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    lines = [line for line in text.splitlines() if line.startswith("flags")]
    flags = lines[0].split(":", 1)[1].split() if lines else []
    return " ".join(sorted(f for f in flags if f in ("amx_bf16", "amx_tile", "avx512_bf16")))


def attnlab(*args: str) -> None:
    """Run one attnlab command in a fresh process (its output passes through)."""
    command = [sys.executable, "-m", "attnlab.cli.main", *map(str, args)]
    print("$ attnlab " + " ".join(map(str, args)), file=sys.stderr, flush=True)
    subprocess.run(command, check=True)


def train(out: Path, steps: int | None, time_budget: float | None, threads: int) -> Path:
    run = out / "run"
    args = ["train", "--preset", "news-classify", "--out", run, "--no-progress"]
    if steps is not None:
        args.append(f"max_steps={steps}")
    if time_budget is not None:
        args += ["--time-budget", time_budget]
    if threads:
        args.append(f"threads={threads}")
    attnlab(*args)
    return run


def prune(run: Path, method: str, args: argparse.Namespace) -> dict:
    out = args.out / f"pruned-{method}"
    start = time.perf_counter()
    attnlab(
        "prune", run, "--by", method, "--fraction", args.fraction, "--step", args.step,
        "--out", out, "--eval", args.eval, "--batches", args.batches,
    )  # fmt: skip
    report = json.loads((out / "prune_report.json").read_text())
    report["seconds"] = time.perf_counter() - start
    return report


def table(reports: dict[str, dict]) -> str:
    """Markdown: one row per number of heads pruned, accuracy per method."""
    first = next(iter(reports.values()))
    metric = first["metric"]
    lines = [
        "| heads pruned | fraction | parameters | "
        + " | ".join(f"{metric} ({m})" for m in reports)
        + " |",
        "|---:|---:|---:|" + "---:|" * len(reports),
    ]
    by_count = {m: {row["heads_pruned"]: row for row in r["curve"]} for m, r in reports.items()}
    for row in first["curve"]:
        n = row["heads_pruned"]
        cells = [f"{by_count[m][n][metric]:.4f}" if n in by_count[m] else "-" for m in reports]
        lines.append(
            f"| {n}/{first['heads_before']} | {row['fraction']:.3f} | {row['params']:,} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--run", type=Path, default=None, help="a trained news-classify run (skips training)")
    add("--steps", type=int, default=None, help="training steps (preset: 300)")
    add("--time-budget", type=float, default=None, help="training seconds")
    add("--fraction", type=float, default=0.75, help="largest share of heads pruned")
    add("--step", type=float, default=0.1, help="share of heads between curve points")
    add("--batches", type=int, default=8, help="training batches the heads are scored on")
    add("--eval", type=int, default=0, help="evaluation batches per point (0: all 444 articles)")
    add("--methods", default=",".join(METHODS), help="comma-separated: " + ", ".join(METHODS))
    add("--threads", type=int, default=0, help="torch threads for training (0: torch's)")
    add("--out", type=Path, default=Path("benchmarks/results/prune"), help="output folder")
    args = parser.parse_args()
    methods = [m.strip() for m in args.methods.split(",")]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"--methods: unknown {', '.join(unknown)}; expected names from {METHODS}")
    args.out.mkdir(parents=True, exist_ok=True)
    for method in methods:
        if (args.out / f"pruned-{method}").exists():
            parser.error(f"--out: {args.out / f'pruned-{method}'} exists; choose another --out")

    run = args.run or train(args.out, args.steps, args.time_budget, args.threads)
    reports = {method: prune(run, method, args) for method in methods}
    first = next(iter(reports.values()))
    png = plot_curve(
        {m: r["curve"] for m, r in reports.items()},
        first["metric"],
        args.out / "prune.png",
        "MiniLM on BBC News: heads pruned (one-shot)",
    )
    machine = {**machine_info(), "flags": cpu_flags()}
    summary = {"run": str(run), "machine": machine, "reports": reports}
    (args.out / "prune.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(table(reports))
    print(
        f"\nMiniLM ({first['heads_before']} heads, {first['params_before']:,} parameters) from "
        f"{run}; scores from {args.batches} training batches; {machine['device']} "
        f"({machine['flags'] or 'no bf16/AMX flags'}), {machine['torch_threads']} threads; "
        "pruning took "
        + ", ".join(f"{m} {r['seconds']:.0f} s" for m, r in reports.items())
        + f". Wrote {png} and {args.out / 'prune.json'}."
    )


if __name__ == "__main__":
    main()
