"""``attnlab sample``: generate text from a trained run, a Hugging Face directory or a GGUF
file, printing tokens as they are sampled."""

from __future__ import annotations

import sys
from pathlib import Path

import click
import torch

from attnlab.cli.options import encode_text, parse_device


def read_prompt(prompt: str | None, prompt_file: str | None) -> str:
    """The prompt text from ``--prompt`` or ``--prompt-file`` (``-`` is standard input)."""
    if prompt is not None and prompt_file is not None:
        raise ValueError("--prompt, --prompt-file: expected one of them, got both")
    if prompt_file is None:
        return "\n" if prompt is None else prompt
    if prompt_file == "-":
        return sys.stdin.read()
    path = Path(prompt_file)
    if not path.is_file():
        raise ValueError(f"--prompt-file: expected a text file, got {path}, which is not a file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"--prompt-file: {path} is not UTF-8 text ({exc})") from None


@click.command()
@click.option("--checkpoint", "source", required=True, help="Run dir, checkpoint, HF dir or GGUF.")
@click.option("--prompt", default=None, help="Text to continue (default: a newline).")
@click.option(
    "--prompt-file", default=None, help="Read the prompt from this file ('-': standard input)."
)
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=500, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0), default=0.8, show_default=True)
@click.option("--top-k", type=click.IntRange(min=1), default=None, help="Keep the k likeliest.")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=None, help="Nucleus.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True)
def sample(
    source, prompt, prompt_file, max_new_tokens, temperature, top_k, top_p, seed, device
) -> None:
    """Continue a prompt with a language model, streaming the text as it is generated
    (temperature 0 = greedy). A prompt longer than the model's context keeps its end, and
    says so on standard error."""
    import attnlab
    from attnlab.generate import prompt_overflow, stream
    from attnlab.models import GPT

    device = parse_device(device)
    text = read_prompt(prompt, prompt_file)
    loaded = attnlab.load(source)
    model, tokenizer = loaded
    if not isinstance(model, GPT):
        raise ValueError(
            f"--checkpoint: expected a language model (GPT), got {type(model).__name__} "
            f"from {source}"
        )
    ids = encode_text(tokenizer, text, "--prompt", source, "--checkpoint")
    context = model.config.max_len
    dropped = prompt_overflow(len(ids), context)
    if dropped:
        click.echo(
            f"attnlab: note: the prompt has {len(ids):,} tokens, more than the model's context "
            f"of {context:,}; its first {dropped:,} tokens are dropped",
            err=True,
        )
    model.to(device)
    prompt_ids = torch.tensor([ids], device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    decoder = tokenizer.decoder()
    sys.stdout.write(text)
    for token in stream(
        model,
        prompt_ids,
        max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        generator=generator,
        eos_id=tokenizer.eos_id,
        vocab_size=tokenizer.vocab_size,
        truncate=True,
    ):
        piece = decoder.push(int(token[0, 0]))
        if piece:
            sys.stdout.write(piece)
            sys.stdout.flush()
    rest = decoder.flush()
    sys.stdout.write(rest if rest.endswith("\n") else rest + "\n")
