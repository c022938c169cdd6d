"""``attnlab compare``: train the same model once per choice (``--vary FIELD=V1,V2,...``, the
Cartesian product of every field's values) and report the runs side by side
(:mod:`attnlab.train.compare`)."""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from attnlab.train.config import PRESETS


class _CompareCommand(click.Command):
    """``--vary`` takes every ``FIELD=VALUES`` that follows it, up to the next option."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        expanded: list[str] = []
        following = False  # the words after --vary, until the next option
        for arg in args:
            if arg == "--vary":
                following = None  # the first word is --vary's own value
                continue
            if arg.startswith("-"):
                following = False
            elif following is None:
                following = True
                expanded += ["--vary", arg]
                continue
            elif following:
                expanded += ["--vary", arg]
                continue
            expanded.append(arg)
        if following is None:
            raise ValueError("--vary: expected FIELD=V1,V2,... after it (attention=softmax,linear)")
        return super().parse_args(ctx, expanded)


@click.command(cls=_CompareCommand)
@click.option(
    "--preset",
    "preset_name",
    default="shakespeare-char",
    show_default=True,
    help=f"Training preset of every run: {', '.join(PRESETS)} (a language model).",
)
@click.option(
    "--vary",
    multiple=True,
    metavar="FIELD=V1,V2,...",
    help="A model field (attention, position, window, ...) or training setting (lr) and the "
    "values to try; every FIELD=VALUES after --vary up to the next option is varied.",
)
@click.argument("overrides", nargs=-1)
@click.option("--time-budget", type=float, default=None, help="Seconds of training per run.")
@click.option("--steps", type=int, default=None, help="Optimiser steps per run.")
@click.option("--out", "out_dir", required=True, help="Report directory (new or empty).")
@click.option(
    "--measure-max-len",
    type=int,
    default=1024,
    show_default=True,
    help="Longest sequence at which one training step is measured (64, 128, ... up to it).",
)
@click.option(
    "--measure-batch", type=int, default=1, show_default=True, help="Sequences per measured step."
)
@click.option(
    "--eval-windows",
    type=int,
    default=16,
    show_default=True,
    help="Windows of 8x the training context scored by the extrapolation test.",
)
def compare(
    preset_name,
    vary,
    overrides,
    time_budget,
    steps,
    out_dir,
    measure_max_len,
    measure_batch,
    eval_windows,
) -> None:
    """Train the model of a preset once per combination of the --vary values, with the same
    budget, seed and data, and write a report (table, plots, length extrapolation) to --out.
    OVERRIDES are KEY=VALUE settings of every run, as for `attnlab train`."""
    from attnlab.train.compare import (
        format_extrapolation,
        format_results,
        plan_study,
        run_study,
        sequence_lengths,
    )

    sequence_lengths(measure_max_len)  # checked before anything is trained
    study = plan_study(
        preset_name, vary, overrides, time_budget=time_budget, steps=steps
    )  # every mistake is an error here, before any training
    command = _command_line(
        preset_name, vary, overrides, time_budget, steps, out_dir,
        measure_max_len, measure_batch, eval_windows,
    )  # fmt: skip
    results = run_study(
        study,
        Path(out_dir),
        measure_max_len=measure_max_len,
        measure_batch=measure_batch,
        eval_windows=eval_windows,
        command=command,
        echo=click.echo,
    )
    click.echo("")
    click.echo(format_results(study, results))
    click.echo("")
    click.echo("Validation loss (perplexity) at 1x, 2x, 4x, 8x the training context:")
    click.echo(format_extrapolation(study, results))
    click.echo(f"\nreport: {Path(out_dir) / 'report.md'} (figures and results.json beside it)")


def _command_line(
    preset_name, vary, overrides, time_budget, steps, out_dir, max_len, batch, windows
) -> str:
    """The command that repeats this study, for the report."""
    words = ["attnlab", "compare", "--preset", preset_name, *overrides, "--vary", *vary]
    for option, value, default in (
        ("--time-budget", time_budget, None),
        ("--steps", steps, None),
        ("--measure-max-len", max_len, 1024),
        ("--measure-batch", batch, 1),
        ("--eval-windows", windows, 16),
    ):
        if value != default:
            words += [option, f"{value:g}" if isinstance(value, float) else str(value)]
    return shlex.join([*words, "--out", str(out_dir)])
