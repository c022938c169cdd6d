"""``attnlab eval``: the evaluation metrics of a model on its task's data: a trained run's
checkpoint on the data it was trained on, or any other model on data named by settings."""

from __future__ import annotations

import json

import click


@click.command(name="eval")
@click.option(
    "--checkpoint", "source", required=True, help="Run dir, checkpoint, HF dir or GGUF file."
)
@click.argument("overrides", nargs=-1)
@click.option("--which", type=click.Choice(["best", "latest"]), default="best", show_default=True)
def evaluate(source, overrides, which) -> None:
    """Evaluate a model (loss, perplexity, accuracy or BLEU, by task). A run is scored with its
    own settings and data; any other model with its family's task (lm for GPT, mlm or classify
    for BERT, translate, vit) on the default data. OVERRIDES are KEY=VALUE settings such as
    eval_batches=0 (all), corpus=my.txt, dataset=my.csv or device=cuda."""
    import torch

    import attnlab
    from attnlab.train.config import TrainConfig, apply_overrides
    from attnlab.train.tasks import default_task, make_task
    from attnlab.train.trainer import autocast_for, resolve_device

    loaded = attnlab.load(source, which=which)
    if loaded.train is not None:
        config = TrainConfig.from_dict(loaded.train, source=loaded.path / "meta.json")
    else:
        config = TrainConfig(task=default_task(loaded.model))
    if any(item.startswith("model.") for item in overrides):
        raise ValueError(
            f"model.*: the model is read from {source}; its configuration cannot be overridden "
            "when evaluating"
        )
    config = apply_overrides(config, list(overrides))
    device = resolve_device(config.device)
    task = make_task(config, model=loaded.model, tokenizer=loaded.tokenizer)
    model = task.model.to(device).eval()
    with torch.no_grad(), autocast_for(config, device)():
        metrics = task.evaluate(model, device)
    step = None if loaded.kind not in ("run", "checkpoint") else _step(loaded.path)
    click.echo(json.dumps({"checkpoint": str(loaded.path), "step": step, **metrics}))


def _step(path) -> int | None:
    from attnlab.train import checkpoint

    return checkpoint.read_meta(path).get("step")
