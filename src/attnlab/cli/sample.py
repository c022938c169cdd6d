"""``attnlab sample``: generate text from a trained run, a Hugging Face directory or a GGUF
file, printing tokens as they are sampled."""

from __future__ import annotations

import sys
from pathlib import Path

import click
import torch

from attnlab.cli.options import parse_device


def load_with_tokenizer(source: str):
    """(model, tokenizer) from an attnlab run or checkpoint, a Hugging Face checkpoint
    directory or a GGUF file."""
    from attnlab import tokenizers
    from attnlab.train import checkpoint
    from attnlab.train.tasks import load_run_tokenizer

    path = Path(source)
    if path.suffix == ".gguf":
        from attnlab.convert import load_gguf

        return load_gguf(path), tokenizers.load(path)
    is_run = (path / "checkpoints").is_dir() and (path / "config.json").is_file()
    if is_run or (path / "meta.json").is_file():
        ckpt = checkpoint.resolve(path)
        return checkpoint.load_model(ckpt), load_run_tokenizer(checkpoint.run_dir_of(ckpt))
    if (path / "config.json").is_file():
        from attnlab.convert import load_hf

        names = ("tokenizer.json", "vocab.txt", "vocab.json")
        has_tokenizer = any((path / name).is_file() for name in names)
        return load_hf(path), tokenizers.load(path) if has_tokenizer else None
    if not path.exists():
        raise FileNotFoundError(f"checkpoint: {path} does not exist")
    raise ValueError(
        f"checkpoint: expected an attnlab run or checkpoint, a Hugging Face directory or a .gguf "
        f"file, got {source!r}"
    )


@click.command()
@click.option("--checkpoint", "source", required=True, help="Run dir, checkpoint, HF dir or GGUF.")
@click.option("--prompt", default="\n", show_default=repr("\n"), help="Text to continue.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=500, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0), default=0.8, show_default=True)
@click.option("--top-k", type=click.IntRange(min=1), default=None, help="Keep the k likeliest.")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=None, help="Nucleus.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True)
def sample(source, prompt, max_new_tokens, temperature, top_k, top_p, seed, device) -> None:
    """Continue PROMPT with a language model, streaming the text as it is generated
    (temperature 0 = greedy)."""
    from attnlab.generate import stream
    from attnlab.models import GPT

    device = parse_device(device)
    model, tokenizer = load_with_tokenizer(source)
    if not isinstance(model, GPT):
        raise ValueError(f"checkpoint: expected a language model (GPT), got {type(model).__name__}")
    if tokenizer is None:
        raise ValueError(f"checkpoint: {source} has no tokenizer to turn text into ids")
    model.to(device)
    ids = tokenizer.encode(prompt)
    if not ids:
        raise ValueError("prompt: expected text that gives at least one token, got nothing")
    prompt_ids = torch.tensor([ids], device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    new: list[int] = []
    shown = ""
    sys.stdout.write(prompt)
    for token in stream(
        model,
        prompt_ids,
        max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        generator=generator,
        eos_id=tokenizer.eos_id,
    ):
        new.append(int(token[0, 0]))
        text = tokenizer.decode(new)
        if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            sys.stdout.write(text[len(shown) :])
            sys.stdout.flush()
            shown = text
    sys.stdout.write(tokenizer.decode(new)[len(shown) :] + "\n")
