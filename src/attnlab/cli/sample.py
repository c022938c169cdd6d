"""``attnlab sample``: generate text from a trained run, a Hugging Face directory or a GGUF
file, printing tokens as they are sampled; greedy, sampling, beam search, speculative decoding,
a chat template, quantized weights and a compiled decode step."""

from __future__ import annotations

import dataclasses
import functools
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


def generation_options(fn):
    """The options that load a model for generation and choose its tokens (sample and chat)."""
    options = [
        click.option(
            "--max-new-tokens", type=click.IntRange(min=1), default=500, show_default=True
        ),
        click.option(
            "--temperature",
            type=click.FloatRange(min=0),
            default=None,
            help="0 = greedy.  [default: 0.8]",
        ),
        click.option(
            "--top-k", type=click.IntRange(min=1), default=None, help="Keep the k likeliest."
        ),
        click.option(
            "--top-p", type=click.FloatRange(0, 1, min_open=True), default=None, help="Nucleus."
        ),
        click.option(
            "--min-p",
            type=click.FloatRange(0, 1),
            default=None,
            help="Keep tokens at least this fraction as likely as the likeliest.",
        ),
        click.option(
            "--repetition-penalty",
            type=click.FloatRange(min=0, min_open=True),
            default=1.0,
            show_default=True,
            help="> 1 discourages tokens already present.",
        ),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--device", default="cpu", show_default=True),
        click.option(
            "--dtype",
            default="auto",
            show_default=True,
            help="Weights and activations: fp32, bf16, or auto (bf16 where this machine runs "
            "it faster; see attnlab backends).",
        ),
        click.option(
            "--quantize",
            type=click.Choice(["int8", "int4"]),
            default=None,
            help="Weight-only quantized linear layers (GGUF blocks load directly where exact).",
        ),
        click.option("--group-size", type=click.IntRange(min=1), default=None),
        click.option(
            "--compile",
            "compile_step",
            is_flag=True,
            help="Compile the decode step (torch.compile).",
        ),
        click.option(
            "--kv-cache",
            type=click.Choice(["fp32", "bf16", "int8"]),
            default=None,
            help="The KV cache's dtype (default the weights'); int8 takes about a quarter of fp32.",
        ),
    ]

    @functools.wraps(fn)
    def collect(*args, **kwargs):
        fields = {f.name: kwargs.pop(f.name) for f in dataclasses.fields(Generation)}
        return fn(*args, gen=Generation(**fields), **kwargs)

    return functools.reduce(lambda f, option: option(f), reversed(options), collect)


KV_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.int8}


@dataclasses.dataclass
class Generation:
    """What :func:`generation_options` parsed: how to load the model and choose tokens."""

    max_new_tokens: int
    temperature: float | None
    top_k: int | None
    top_p: float | None
    min_p: float | None
    repetition_penalty: float
    seed: int
    device: str
    dtype: str
    quantize: str | None
    group_size: int | None
    compile_step: bool
    kv_cache: str | None

    def load(self, source: str):
        """(model, tokenizer) of ``source``, ready to generate."""
        return load_for_generation(source, self.device, self.dtype, self.quantize, self.group_size)

    def sampling(self, repetition: bool = True) -> dict:
        """Keyword arguments of :func:`attnlab.generate.stream` for choosing tokens."""
        return {
            "temperature": 0.8 if self.temperature is None else self.temperature,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "min_p": self.min_p,
            "seed": self.seed,
            **({"repetition_penalty": self.repetition_penalty} if repetition else {}),
        }

    def engine(self) -> dict:
        """Keyword arguments of :func:`attnlab.generate.stream` for the decode loop."""
        return {"compile": self.compile_step, "cache_dtype": KV_DTYPES.get(self.kv_cache)}


def load_for_generation(source: str, device: str, dtype: str, quantize, group_size):
    """(model, tokenizer) of ``source`` ready to generate: on ``device``, in ``dtype``,
    quantized when asked; ValueError naming the option for a model that does not generate."""
    import attnlab
    from attnlab.models import GPT
    from attnlab.precision import resolve_dtype

    device = parse_device(device)
    try:
        want = resolve_dtype(dtype, device)
    except ValueError as exc:
        raise ValueError(f"--dtype: {str(exc).removeprefix('dtype: ')}") from None
    try:
        model, tokenizer = attnlab.load(source, quantize=quantize, group_size=group_size)
    except ValueError as exc:
        message = str(exc)
        for name in ("quantize", "group_size"):
            if message.startswith(f"{name}:"):
                message = f"--{name.replace('_', '-')}{message[len(name) :]}"
        raise ValueError(message) from None
    if not isinstance(model, GPT):
        raise ValueError(
            f"SOURCE: expected a language model (GPT), got {type(model).__name__} from {source}"
        )
    model.to(device)
    if want != torch.float32:
        model.to(want)
    return model.eval(), tokenizer


@click.command()
@click.option("--checkpoint", "source", required=True, help="Run dir, checkpoint, HF dir or GGUF.")
@click.option("--prompt", default=None, help="Text to continue (default: a newline).")
@click.option(
    "--prompt-file", default=None, help="Read the prompt from this file ('-': standard input)."
)
@click.option(
    "--chat", is_flag=True, help="Treat the prompt as a user message in the chat template."
)
@click.option("--system", default=None, help="With --chat: a system message.")
@click.option("--stop", multiple=True, help="End the text before this string (repeatable).")
@click.option("--num-beams", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--length-penalty", type=float, default=1.0, show_default=True)
@click.option("--draft", default=None, help="A smaller model proposing tokens (speculative).")
@click.option("--num-draft", type=click.IntRange(min=1), default=4, show_default=True)
@generation_options
def sample(
    source,
    prompt,
    prompt_file,
    chat,
    system,
    stop,
    num_beams,
    length_penalty,
    draft,
    num_draft,
    gen,
) -> None:
    """Continue a prompt with a language model, streaming the text as it is generated
    (temperature 0 = greedy). A prompt longer than the model's context keeps its end, and
    says so on standard error. --num-beams > 1 (beam search) and --draft (speculative
    decoding) print the text when it is complete."""
    from attnlab.generate import generate, prompt_overflow, stream
    from attnlab.stops import StopStrings

    text = read_prompt(prompt, prompt_file)
    if system is not None and not chat:
        raise ValueError("--system: a system message needs --chat")
    if num_beams > 1 and draft is not None:
        raise ValueError("--draft: speculative decoding does not combine with --num-beams > 1")
    if num_beams > 1:
        given = [
            name
            for name, value in (
                ("--temperature", gen.temperature),
                ("--top-k", gen.top_k),
                ("--top-p", gen.top_p),
                ("--min-p", gen.min_p),
            )
            if value is not None and not (name == "--temperature" and value == 0)
        ]  # --temperature 0 (greedy) agrees with beam search
        if given:
            raise ValueError(
                f"--num-beams: beam search keeps the likeliest beams; drop {', '.join(given)}"
            )
    if draft is not None and gen.repetition_penalty != 1.0:
        raise ValueError("--repetition-penalty: not supported with --draft")
    model, tokenizer = gen.load(source)
    if chat:
        if tokenizer is None or tokenizer.chat_template is None:
            raise ValueError(f"--chat: {source} has no chat template")
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": text})
        rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        ids = tokenizer.encode(rendered, add_special_tokens=False)
    else:
        ids = encode_text(tokenizer, text, "--prompt", source, "--checkpoint")
    context = model.config.max_len
    dropped = prompt_overflow(len(ids), context)
    if dropped:
        click.echo(
            f"attnlab: note: the prompt has {len(ids):,} tokens, more than the model's context "
            f"of {context:,}; its first {dropped:,} tokens are dropped",
            err=True,
        )
    device = str(next(model.parameters()).device)
    prompt_ids = torch.tensor([ids], device=device)
    common = {"eos_id": tokenizer.eos_id, "vocab_size": tokenizer.vocab_size}
    stops = StopStrings(tokenizer, list(stop)) if stop else None
    if not chat:
        sys.stdout.write(text)
    if num_beams > 1 or draft is not None:
        if num_beams > 1:
            options = {"num_beams": num_beams, "length_penalty": length_penalty, "truncate": True}
            used = min(len(ids), context - gen.max_new_tokens)  # beams keep the prompt's end
        else:
            draft_model, _ = gen.load(draft)
            options = {
                "draft_model": draft_model,
                "num_draft": num_draft,
                **gen.sampling(repetition=False),
            }
            common.pop("vocab_size")
            used = len(ids)
        out = generate(model, prompt_ids, gen.max_new_tokens, **options, **common)
        _write_all(tokenizer, out[0, used:].tolist(), stops)
        return
    pieces = stream(
        model,
        prompt_ids,
        gen.max_new_tokens,
        truncate=True,
        **gen.engine(),
        **gen.sampling(),
        **common,
    )
    decoder = stops or tokenizer.decoder()
    for token in pieces:
        tid = int(token[0, 0])
        if tid == tokenizer.eos_id:
            break
        if stops is not None:
            stopped = stops.push(tid)
            piece = stops.release()
        else:
            stopped, piece = False, decoder.push(tid)
        if piece:
            sys.stdout.write(piece)
            sys.stdout.flush()
        if stopped:
            break
    rest = stops.finish() if stops is not None else decoder.flush()
    sys.stdout.write(rest if rest.endswith("\n") else rest + "\n")


def _write_all(tokenizer, ids: list[int], stops) -> None:
    """Write generated ``ids`` (cut at EOS and at a stop string) and a final newline."""
    if tokenizer.eos_id is not None and tokenizer.eos_id in ids:
        ids = ids[: ids.index(tokenizer.eos_id)]
    if stops is not None:
        stops.push(ids)
        text = stops.text if stops.stopped else stops.text + stops.finish()
    else:
        text = tokenizer.decode(ids)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
