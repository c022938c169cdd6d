"""``attnlab convert``: Hugging Face directories and GGUF files into attnlab runs, and attnlab
runs back into Hugging Face directories."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("source")
@click.argument("destination")
def convert(source, destination) -> None:
    """Convert SOURCE into DESTINATION. A Hugging Face directory or a .gguf file becomes an
    attnlab run directory (a checkpoint plus the tokenizer) that `attnlab sample` and
    `attnlab eval` read; an attnlab run or checkpoint becomes a Hugging Face directory
    (config.json, model.safetensors, tokenizer.json) that transformers loads."""
    from attnlab.cli.sample import load_with_tokenizer
    from attnlab.train import checkpoint
    from attnlab.train.tasks import save_tokenizer

    src, dst = Path(source), Path(destination)
    if dst.exists() and any(dst.iterdir()):
        raise ValueError(f"destination: expected a new or empty directory, got {dst}")
    model, tokenizer = load_with_tokenizer(source)
    is_attnlab = (src / "meta.json").is_file() or (src / "checkpoints").is_dir()
    if is_attnlab:
        from attnlab.convert import save_hf

        save_hf(model, dst)
        if tokenizer is not None:
            if not hasattr(tokenizer, "backend"):  # a character vocabulary
                tokenizer = tokenizer.to_tokenizer()
            tokenizer.save(dst)
        click.echo(f"wrote Hugging Face checkpoint {dst}")
        return
    dst.mkdir(parents=True, exist_ok=True)
    meta = {"source": str(src), "tokenizer": None}
    if tokenizer is not None:
        meta["tokenizer"] = save_tokenizer(tokenizer, dst)
    path = checkpoint.save(dst, 0, model, {}, meta)
    click.echo(f"wrote attnlab checkpoint {path}")
