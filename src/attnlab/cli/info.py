"""``attnlab info``: parameters by module, FLOPs per token and KV-cache bytes per token of a
model preset, a Hugging Face checkpoint directory or a GGUF file."""

from __future__ import annotations

from pathlib import Path

import click
from torch import nn

from attnlab.models import from_preset, preset_names


def load_model(source: str) -> nn.Module:
    """A model from a preset name (random weights), or any source :func:`attnlab.load` reads,
    built on the meta device from its configuration alone (no weights are read)."""
    if source in preset_names():
        return from_preset(source)
    import attnlab
    from attnlab.models.presets import closest

    path = Path(source)
    if not path.exists() and not path.suffix and "/" not in source:
        raise ValueError(
            f"source: expected a model preset ({', '.join(preset_names())}), a run directory, "
            f"a checkpoint, a Hugging Face directory or a .gguf file, got {source!r}"
            f"{closest(source, preset_names())}"
        )
    return attnlab.load(path, device="meta").model


@click.command()
@click.argument("source")
@click.option("--context", type=click.IntRange(min=1), default=None, help="T for attention FLOPs.")
def info(source: str, context: int | None) -> None:
    """Parameters, FLOPs per token and KV-cache size of SOURCE: a model preset (e.g. gpt2,
    llama-small, bert-base, transformer-base, vit-tiny), an attnlab run or checkpoint, a
    Hugging Face checkpoint directory or a GGUF file (read from its metadata alone)."""
    from attnlab.models.info import model_info

    click.echo(model_info(load_model(source), context).format())
