"""``attnlab train``: train or fine-tune a model from a named preset, with ``key=value``
overrides, a time budget and exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import click

from attnlab.train.config import PRESETS


@click.command(context_settings={"ignore_unknown_options": False})
@click.option(
    "--preset",
    "preset_name",
    default="shakespeare-char",
    show_default=True,
    help=f"Training preset: {', '.join(PRESETS)}.",
)
@click.argument("overrides", nargs=-1)
@click.option("--time-budget", type=float, default=None, help="Seconds of training at most.")
@click.option("--out", "out_dir", default=None, help="Run directory (default runs/PRESET).")
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the run in the run directory exactly, with its saved settings.",
)
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a TTY).")
def train(preset_name, overrides, time_budget, out_dir, resume, progress) -> None:
    """Train the model of a preset on its data; OVERRIDES are KEY=VALUE settings
    (lr=3e-3, max_steps=500, model.n_layer=6, device=cuda, ...)."""
    from attnlab.models import config_class
    from attnlab.train.config import TrainConfig, apply_overrides, preset
    from attnlab.train.tasks import make_task
    from attnlab.train.trainer import Trainer

    config = preset(preset_name)
    if resume:  # continue with the run's own settings; overrides still apply on top
        saved = Path(out_dir or config.out_dir) / "config.json"
        if saved.is_file():
            config = TrainConfig(**json.loads(saved.read_text())["train"])
    extra = list(overrides)
    if time_budget is not None:
        extra.append(f"time_budget={time_budget}")
    if out_dir is not None:
        extra.append(f"out_dir={out_dir}")
    config = apply_overrides(config, extra, config_class(config.model))
    if config.threads:
        import torch

        torch.set_num_threads(config.threads)
    task = make_task(config)
    n = sum(p.numel() for p in task.model.parameters())
    what = f"resuming {config.task}" if resume else preset_name
    click.echo(f"{what}: {type(task.model).__name__} with {n:,} parameters -> {config.out_dir}")
    result = Trainer(config, task, progress=progress).fit(resume=resume)
    shown = ", ".join(f"{k} {v:.4g}" for k, v in result.metrics.items())
    click.echo(f"done: step {result.step} in {result.elapsed:.0f} s; {shown}")
    if result.sample is not None:
        click.echo("--- sample ---")
        click.echo(result.sample)
