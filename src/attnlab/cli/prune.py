"""``attnlab prune``: remove the least useful attention heads of a model, and report what each
fraction of heads pruned costs on the model's task."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import click

# Columns of a curve row besides the task's metrics.
CURVE_KEYS = ("fraction", "heads_pruned", "heads", "params")


def parse_number(text: str, option: str, *, low: float, high: float, integer: bool = False):
    """``text`` as a number in [low, high] (an int with ``integer``); ValueError naming
    ``option`` otherwise."""
    kind = "an integer" if integer else "a number"
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or not low <= value <= high:
        upper = "" if math.isinf(high) else f" and <= {high:g}"
        raise ValueError(f"{option}: expected {kind} >= {low:g}{upper}, got {text!r}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < 1:
        raise ValueError(f"--fraction: expected a number between 0 and 1 (exclusive), got {text!r}")
    return value


def _settings(loaded, overrides: tuple[str, ...], eval_batches: int | None, out: Path):
    """The training settings that say how the model is scored: a run's own (its task and
    data), else its family's default task, with OVERRIDES and --eval applied."""
    from attnlab.train.config import TrainConfig, apply_overrides
    from attnlab.train.tasks import default_task

    if loaded.train is not None:
        config = TrainConfig.from_dict(loaded.train, source=loaded.path / "meta.json")
    else:
        config = TrainConfig(task=default_task(loaded.model))
    if any(item.startswith("model.") for item in overrides):
        raise ValueError("model.*: the model is read from SOURCE; its configuration cannot be set")
    config = apply_overrides(config, list(overrides))
    if eval_batches is not None:
        if config.task == "vit":
            raise ValueError("--eval: the vit task always scores its whole test split")
        config = dataclasses.replace(config, eval_batches=eval_batches)
    return dataclasses.replace(config, out_dir=str(out.resolve()))


@click.command()
@click.argument("source")
@click.argument("overrides", nargs=-1)
@click.option(
    "--by", default="importance", show_default=True, help="importance, entropy or random."
)
@click.option("--fraction", default="0.5", show_default=True, help="Share of all heads to prune.")
@click.option("--out", "out", required=True, help="Directory for the pruned run (new or empty).")
@click.option(
    "--eval",
    "eval_batches",
    default=None,
    help="Batches per evaluation (0: the whole held-out split; default: the run's setting).",
)
@click.option(
    "--batches", default="8", show_default=True, help="Training batches the heads are scored on."
)
@click.option("--step", default="0.1", show_default=True, help="Fractions between curve points.")
@click.option("--which", type=click.Choice(["best", "latest"]), default="best", show_default=True)
def prune(source, overrides, by, fraction, out, eval_batches, batches, step, which) -> None:
    """Prune the --fraction of all attention heads of SOURCE (a run, a checkpoint, a Hugging Face
    directory or a GGUF file) that score lowest, ranked across layers (each layer keeps a head),
    and write the pruned model to --out as a run that every command loads.

    Heads are scored once, on --batches training batches of the model's task: by importance
    (Michel et al. 2019: |d loss / d head mask|), by attention entropy (most spread-out first)
    or at random. The model is evaluated pruned at 0, --step, 2 --step, ... and --fraction;
    the table is printed and written, with the scores, to --out/prune_report.json, and drawn
    in --out/prune_curve.png. A run is scored with its own task and data; any other model with
    its family's default task. OVERRIDES are KEY=VALUE settings, as for attnlab eval."""
    import torch

    import attnlab
    from attnlab.cli.backends import format_table
    from attnlab.files import atomic_directory
    from attnlab.inspect import attention_modules
    from attnlab.inspect.prune import (
        METHODS,
        count_heads,
        curve_fractions,
        curve_metric,
        plot_curve,
        prune_heads,
        pruning_curve,
        score_heads,
        select_heads,
    )
    from attnlab.train.tasks import make_task
    from attnlab.train.trainer import autocast_for, resolve_device

    if by not in METHODS:
        raise ValueError(f"--by: expected one of {', '.join(METHODS)}, got {by!r}")
    share = _fraction(fraction)
    n_batches = parse_number(batches, "--batches", low=1, high=math.inf, integer=True)
    step = parse_number(step, "--step", low=0.01, high=1)
    if eval_batches is not None:
        eval_batches = parse_number(eval_batches, "--eval", low=0, high=math.inf, integer=True)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):  # before any work
        raise ValueError(f"--out: expected a new or empty directory, got {out}")

    loaded = attnlab.load(source, which=which)
    config = _settings(loaded, overrides, eval_batches, out)
    device = resolve_device(config.device)
    task = make_task(config, model=loaded.model, tokenizer=loaded.tokenizer)
    model = task.model.to(device).eval()
    try:  # refused before any scoring: more heads than the layers can give
        select_heads(
            {n: torch.zeros(m.n_heads) for n, m in attention_modules(model).items()}, share
        )
    except ValueError as exc:
        raise ValueError(f"--{exc}") from None

    generator = torch.Generator().manual_seed(config.seed)
    data = [_to(task.train_batch(generator), device) for _ in range(n_batches)]
    scores = score_heads(model, by, data, loss=task.loss, seed=config.seed)
    autocast = autocast_for(config, device)

    def evaluate(pruned) -> dict[str, float]:
        with torch.no_grad(), autocast():
            return task.evaluate(pruned.eval(), device)

    params_before = sum(p.numel() for p in model.parameters())
    heads_before = count_heads(model)
    curve = pruning_curve(model, scores, curve_fractions(share, step), evaluate)
    chosen = select_heads(scores, share)
    pruned = prune_heads(model, chosen)
    metric = curve_metric(curve[0])
    report = {
        "source": str(source),
        "task": config.task,
        "by": by,
        "fraction": share,
        "batches": n_batches,
        "metric": metric,
        "heads_before": heads_before,
        "heads_after": count_heads(pruned),
        "params_before": params_before,
        "params_after": sum(p.numel() for p in pruned.parameters()),
        "pruned": chosen,
        "scores": {name: s.tolist() for name, s in scores.items()},
        "curve": curve,
    }
    with atomic_directory(out, purpose="prune", argument="--out") as tmp:
        _write_run(pruned, loaded, config, report, tmp)
        title = f"{Path(str(source)).name}: heads pruned by {by}"
        plot_curve({by: curve}, metric, tmp / "prune_curve.png", title)

    shown = [
        {
            "fraction": f"{row['fraction']:.3f}",
            "heads": f"{row['heads']}/{heads_before}",
            "params": f"{row['params']:,}",
        }
        | {k: f"{v:.4g}" for k, v in row.items() if k not in CURVE_KEYS}
        for row in curve
    ]
    click.echo(format_table(shown))
    click.echo(
        f"pruned {report['heads_before'] - report['heads_after']} of {heads_before} heads by "
        f"{by}: {params_before:,} -> {report['params_after']:,} parameters; wrote the run {out} "
        f"with prune_report.json and prune_curve.png"
    )


def _to(batch: dict, device) -> dict:
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}


def _write_run(model, loaded, config, report: dict, directory: Path) -> None:
    """The pruned model as a run: one checkpoint (the source's step), the tokenizer, the
    settings it is scored with (so ``attnlab eval`` and a further prune use the same task and
    data), and the report."""
    from attnlab.files import atomic_write_text
    from attnlab.train import checkpoint

    step = 0
    if loaded.kind in ("run", "checkpoint"):
        step = int(checkpoint.read_meta(loaded.path).get("step") or 0)
    meta = {"source": report["source"], "tokenizer": None, "train": config.to_dict()}
    if loaded.tokenizer is not None:
        loaded.tokenizer.save(directory / "tokenizer")
        meta["tokenizer"] = "tokenizer"
    meta["metrics"] = {k: v for k, v in report["curve"][-1].items() if k not in CURVE_KEYS}
    checkpoint.save(directory, step, model.cpu(), {}, meta, is_best=True)
    settings = {"train": config.to_dict(), **checkpoint.model_meta(model), "source": meta["source"]}
    atomic_write_text(directory / "config.json", json.dumps(settings, indent=2) + "\n")
    atomic_write_text(directory / "prune_report.json", json.dumps(report, indent=2) + "\n")
