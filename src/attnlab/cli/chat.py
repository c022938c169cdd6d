"""``attnlab chat``: talk with a chat model in the terminal, the reply streamed as it is
generated; earlier turns stay in the KV cache, so each turn encodes only its own tokens."""

from __future__ import annotations

import sys

import click

from attnlab.cli.sample import generation_options

COMMANDS = "/reset forgets the conversation, /exit (or end of input) leaves"


@click.command()
@click.argument("source")
@click.option("--system", default=None, help="A system message for the whole conversation.")
@generation_options
def chat(
    source,
    system,
    gen,
) -> None:
    """Chat with the model at SOURCE (run dir, checkpoint, HF dir or GGUF with a chat template).

    Reads one message per line from standard input; /reset forgets the conversation, /exit
    or the end of input leaves."""
    from attnlab.generate.conversation import Conversation

    model, tokenizer = gen.load(source)
    if tokenizer is None or tokenizer.chat_template is None:
        raise ValueError(f"SOURCE: {source} has no chat template to talk through")
    conversation = Conversation(
        model,
        tokenizer,
        system=system,
        max_new_tokens=min(gen.max_new_tokens, model.config.max_len - 1),
        **gen.engine(),
        **gen.sampling(),
    )
    interactive = sys.stdin.isatty()
    if interactive:
        click.echo(f"attnlab chat: {source} ({COMMANDS})", err=True)
    while True:
        if interactive:
            click.echo("> ", nl=False, err=True)
        line = sys.stdin.readline()
        if not line or line.strip() in ("/exit", "/quit"):
            break
        message = line.rstrip("\n")
        if not message.strip():
            continue
        if message.strip() == "/reset":
            conversation.reset()
            continue
        try:
            for piece in conversation.send(message):
                sys.stdout.write(piece)
                sys.stdout.flush()
        except ValueError as exc:  # a message too long for the context: say so, go on
            click.echo(f"attnlab: {exc}", err=True)
            continue
        sys.stdout.write("\n")
        sys.stdout.flush()
