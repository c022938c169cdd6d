"""``attnlab convert``: Hugging Face directories and GGUF files into attnlab runs, attnlab runs
into Hugging Face directories, and GGUF files straight to Hugging Face."""

from __future__ import annotations

import click


@click.command()
@click.argument("source")
@click.argument("destination")
@click.option(
    "--to",
    type=click.Choice(["run", "hf"]),
    default=None,
    help="Output format (default: hf for an attnlab run or checkpoint, run otherwise).",
)
def convert(source, destination, to) -> None:
    """Convert SOURCE into DESTINATION (a new or empty directory). A Hugging Face directory or a
    .gguf file becomes an attnlab run directory (a checkpoint plus the tokenizer) that every
    attnlab command reads; an attnlab run or checkpoint becomes a Hugging Face directory
    (config.json, model.safetensors, tokenizer.json) that transformers loads; --to hf turns a
    .gguf file into a Hugging Face directory in one step."""
    from attnlab.loader import convert as convert_source

    path, written = convert_source(source, destination, to=to)
    what = "Hugging Face checkpoint" if written == "hf" else "attnlab run"
    click.echo(f"wrote {what} {path}")
