"""``attnlab eval``: the evaluation metrics of a trained run's checkpoint on its task's data."""

from __future__ import annotations

import json

import click


@click.command(name="eval")
@click.option("--checkpoint", "source", required=True, help="Run directory or checkpoint.")
@click.argument("overrides", nargs=-1)
@click.option("--which", type=click.Choice(["best", "latest"]), default="best", show_default=True)
def evaluate(source, overrides, which) -> None:
    """Evaluate a run's checkpoint (loss, perplexity, accuracy or BLEU, by task); OVERRIDES are
    KEY=VALUE settings such as eval_batches=0 (all) or device=cuda."""
    import torch

    from attnlab.models import config_class
    from attnlab.train import checkpoint
    from attnlab.train.config import TrainConfig, apply_overrides
    from attnlab.train.tasks import make_task
    from attnlab.train.trainer import autocast_for, resolve_device

    path = checkpoint.resolve(source, which)
    meta = checkpoint.read_meta(path)
    if "train" not in meta:
        raise ValueError(f"checkpoint: {path} was not written by attnlab train (no settings)")
    config = TrainConfig(**meta["train"])
    config = apply_overrides(config, list(overrides), config_class(config.model))
    task = make_task(config)
    checkpoint.load_weights(task.model, path)
    device = resolve_device(config.device)
    model = task.model.to(device).eval()
    with torch.no_grad(), autocast_for(config, device)():
        metrics = task.evaluate(model, device)
    click.echo(json.dumps({"checkpoint": str(path), "step": meta.get("step"), **metrics}))
