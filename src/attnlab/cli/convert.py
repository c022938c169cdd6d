"""``attnlab convert``: Hugging Face directories and GGUF files into attnlab runs, attnlab runs
into Hugging Face directories, and GGUF files straight to Hugging Face; ``--quantize`` writes a
run with weight-only quantized layers."""

from __future__ import annotations

import click


@click.command()
@click.argument("source")
@click.argument("destination")
@click.option(
    "--to",
    type=click.Choice(["run", "hf"]),
    default=None,
    help="Output format (default: hf for an attnlab run or checkpoint, run otherwise; run with "
    "--quantize).",
)
@click.option(
    "--quantize",
    type=click.Choice(["int8", "int4", "gguf"]),
    default=None,
    help="Write the Linear layers weight-only quantized (an attnlab run only). A .gguf file's "
    "Q8_0 (int8) or Q4_0/Q4_1 (int4) blocks are kept exactly; gguf keeps every layer as the "
    "file stores it.",
)
@click.option(
    "--group-size",
    type=int,
    default=None,
    help="Input columns sharing a scale, with --quantize int8/int4 (default: per output "
    "channel for int8, 128 for int4; a .gguf file's blocks are 32).",
)
def convert(source, destination, to, quantize, group_size) -> None:
    """Convert SOURCE into DESTINATION (a new or empty directory). A Hugging Face directory or a
    .gguf file becomes an attnlab run directory (a checkpoint plus the tokenizer) that every
    attnlab command reads; an attnlab run or checkpoint becomes a Hugging Face directory
    (config.json, model.safetensors, tokenizer.json) that transformers loads; --to hf turns a
    .gguf file into a Hugging Face directory in one step. With --quantize the result is an
    attnlab run that loads back quantized (Hugging Face checkpoints hold floating-point
    weights only)."""
    from attnlab.loader import convert as convert_source

    path, written = convert_source(
        source, destination, to=to, quantize=quantize, group_size=group_size
    )
    what = "Hugging Face checkpoint" if written == "hf" else "attnlab run"
    how = f" ({quantize})" if quantize else ""
    click.echo(f"wrote {what} {path}{how}")
