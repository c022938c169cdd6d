"""``attnlab info``: parameters by module, FLOPs per token and KV-cache bytes per token of a
model preset, a Hugging Face checkpoint directory or a GGUF file."""

from __future__ import annotations

from pathlib import Path

import click
from torch import nn

from attnlab.models import from_preset, preset_names


def load_model(source: str) -> nn.Module:
    """A model from a preset name (random weights), a checkpoint directory or a .gguf file."""
    if source in preset_names():
        return from_preset(source)
    path = Path(source)
    if path.suffix == ".gguf":
        from attnlab.convert import load_gguf

        return load_gguf(path)
    if path.is_dir():
        from attnlab.convert import load_hf

        return load_hf(path)
    from attnlab.models.presets import closest

    raise ValueError(
        f"source: expected a model preset ({', '.join(preset_names())}), a checkpoint directory "
        f"or a .gguf file, got {source!r}{closest(source, preset_names())}"
    )


@click.command()
@click.argument("source")
@click.option("--context", type=click.IntRange(min=1), default=None, help="T for attention FLOPs.")
def info(source: str, context: int | None) -> None:
    """Parameters, FLOPs per token and KV-cache size of SOURCE: a model preset (e.g. gpt2,
    llama-small, bert-base, transformer-base, vit-tiny), a Hugging Face checkpoint directory
    or a GGUF file."""
    from attnlab.models.info import model_info

    click.echo(model_info(load_model(source), context).format())
