"""``attnlab train``: train or fine-tune a model from a named preset, with ``key=value``
overrides, a time budget and exact resume. ``--help`` lists every setting (from
:func:`attnlab.train.config.setting_groups`)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from attnlab.train.config import PRESETS


class _TrainCommand(click.Command):
    """The command whose help ends with the KEY=VALUE settings, grouped, with their types,
    defaults and meaning (built when help is asked for, not at every start)."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        from attnlab.train.config import setting_groups

        formatter.write_paragraph()
        formatter.write_text(
            "Settings, as KEY=VALUE (none for an empty optional value); a field of the "
            "model's config is set as model.KEY=VALUE (model.n_layer=6)."
        )
        for group, rows in setting_groups():
            with formatter.section(group[:1].upper() + group[1:]):
                formatter.write_dl(rows)
        super().format_epilog(ctx, formatter)


@click.command(cls=_TrainCommand, context_settings={"ignore_unknown_options": False})
@click.option(
    "--preset",
    "preset_name",
    default="shakespeare-char",
    show_default=True,
    help=f"Training preset: {', '.join(PRESETS)}.",
)
@click.argument("overrides", nargs=-1)
@click.option(
    "--time-budget",
    type=float,
    default=None,
    help="Seconds for training and its evaluations (time_budget=).",
)
@click.option("--out", "out_dir", default=None, help="Run directory (default runs/PRESET).")
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the run in the run directory exactly, with its saved settings.",
)
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a TTY).")
def train(preset_name, overrides, time_budget, out_dir, resume, progress) -> None:
    """Train the model of a preset on its data; OVERRIDES are KEY=VALUE settings
    (lr=3e-3, max_steps=500, model.n_layer=6, device=cuda, ...), listed below."""
    from attnlab.files import reason

    try:
        _train(preset_name, overrides, time_budget, out_dir, resume, progress)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError | IsADirectoryError):
            raise  # one line from the command group already
        # Whatever the library did not name itself (a full disk, a permission): one line.
        where = f"{exc.filename}: " if exc.filename else ""
        raise ValueError(f"{where}{reason(exc)}") from None


def _train(preset_name, overrides, time_budget, out_dir, resume, progress) -> None:
    from attnlab.distributed.world import launched
    from attnlab.files import lock_dir
    from attnlab.models import config_class
    from attnlab.train.config import apply_overrides, preset, split_override
    from attnlab.train.tasks import make_task
    from attnlab.train.trainer import Trainer, check_run_dir, resolve_device

    config = preset(preset_name)
    extra = list(overrides)
    if resume:  # continue with the run's own settings; overrides still apply on top
        named = [text for key, text in map(split_override, extra) if key == "out_dir"]
        run_dir = Path(out_dir or (named[-1] if named else config.out_dir))
        config = _saved_settings(run_dir, config)
    if time_budget is not None:
        extra.append(f"time_budget={time_budget}")
    if out_dir is not None:
        extra.append(f"out_dir={out_dir}")
    # Files the settings name are stored as absolute paths: the run works from any directory.
    config = apply_overrides(config, extra, config_class(config.model)).with_absolute_paths()
    # Refused before the data and the model are built: an unusable device, a run directory
    # in use, not a run, or without a checkpoint to resume (the trainer checks again).
    resolve_device(config.device)
    ranks = launched()
    if not ranks:  # with several ranks, rank 0 makes these checks for all (the trainer)
        with lock_dir(config.out_dir, "train", argument="out_dir", echo=click.echo):
            check_run_dir(Path(config.out_dir), resume)
    if config.threads:
        import torch

        torch.set_num_threads(config.threads)
    task = make_task(config)
    # Counted before the plan shards it (FSDP and TP keep 1/N of the parameters per rank).
    n, name = sum(p.numel() for p in task.model.parameters()), type(task.model).__name__
    trainer = Trainer(config, task, progress=progress)
    say = click.echo if trainer.world.is_main else (lambda text: None)
    what = f"resuming {config.task}" if resume else preset_name
    on = f" on {trainer.world.size} ranks ({config.parallel})" if trainer.world.distributed else ""
    say(f"{what}: {name} with {n:,} parameters{on} -> {config.out_dir}")
    if task.summary:
        say(task.summary)
    result = trainer.fit(resume=resume)
    shown = ", ".join(f"{k} {v:.4g}" for k, v in result.metrics.items())
    say(f"done: step {result.step} in {result.elapsed:.0f} s; {shown}")
    if result.sample is not None:
        click.echo("--- sample ---")
        click.echo(result.sample)


def _saved_settings(run_dir: Path, fallback):
    """The settings of the run in ``run_dir`` to resume (its config.json, checked), or
    ``fallback`` when it has none; ValueError when there is no checkpoint to resume from,
    before anything is built or written."""
    from attnlab.train import checkpoint
    from attnlab.train.config import TrainConfig

    if checkpoint.latest(run_dir) is None:
        raise ValueError(f"resume: no checkpoint in {run_dir} to resume from")
    saved = run_dir / "config.json"
    if not saved.is_file():
        return fallback
    try:
        data = json.loads(saved.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{saved}: expected JSON ({exc})") from None
    if not isinstance(data, dict) or "train" not in data:
        raise ValueError(f'{saved}: expected the settings of an attnlab run (a "train" object)')
    return TrainConfig.from_dict(data["train"], source=f"{saved} (train)")
