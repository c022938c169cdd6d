"""The decode loop: prefill once, then one token per step over a static KV cache.

``stream`` yields each step's tokens (B, 1) as they are chosen; ``generate`` collects them.
Rows are prompts of different lengths, left-padded (``attention_mask`` 0 on the padding), and
each is generated exactly as it would be alone. A row stops at one of its ``eos_id`` tokens or
when a ``stop`` string appears in its text; from then on it yields ``pad_id``. The loop ends when
every row has stopped or after ``max_new_tokens``. (A stopped row still rides along in the
batch: decoding one token is bound by reading the weights, which every row shares.)

The step has the same shapes every token (a static cache written at tensor positions), so
``compile=True`` compiles it once with ``torch.compile`` (CUDA graphs on a GPU) and replays
it; where compiling fails the engine warns and decodes eagerly.

Shapes: B rows, T prompt tokens, V vocabulary, n new tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from attnlab.attention.caches import Caches
from attnlab.generate.drivers import driver_for
from attnlab.generate.packing import packed_linears
from attnlab.generate.sampling import Sampling, choose
from attnlab.memory import release_freed_memory
from attnlab.stops import StopStrings


def fit_prompt(prompt: Tensor, context: int, max_new_tokens: int, truncate: bool) -> Tensor:
    """``prompt`` (B, T) checked against the model's ``context``: a prompt that leaves no room
    for a new token is a ValueError, or with ``truncate=True`` keeps its last ``context - 1``
    tokens (the caller says so: :func:`prompt_overflow`)."""
    if prompt.shape[1] + min(max_new_tokens, 1) <= context:
        return prompt
    if not truncate:
        raise ValueError(
            f"prompt: {prompt.shape[1]:,} tokens do not fit the model's context of {context:,} "
            "with room for a new token; shorten it or pass truncate=True to keep its end"
        )
    return prompt[:, -(context - 1) :] if context > 1 else prompt[:, -1:]


def prompt_overflow(prompt_tokens: int, context: int) -> int:
    """How many tokens :func:`fit_prompt` drops from the front of a prompt of ``prompt_tokens``."""
    return max(0, prompt_tokens - max(1, context - 1))


def eos_ids(eos_id: int | Sequence[int] | None) -> tuple[int, ...]:
    """``eos_id`` (None, an int or several) as a tuple of ints."""
    if eos_id is None:
        return ()
    ids = (eos_id,) if isinstance(eos_id, int) else tuple(eos_id)
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise ValueError(f"eos_id: expected an int >= 0 or a list of them, got {eos_id!r}")
    return ids


def check_count(value: object, name: str, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
    return value


class Rows:
    """Which rows have stopped, by EOS id or stop string."""

    def __init__(self, batch, device, eos, stop, tokenizer) -> None:
        self.done = torch.zeros(batch, dtype=torch.bool, device=device)
        self.eos = torch.tensor(eos, dtype=torch.long, device=device) if eos else None
        self.stops = None
        if stop is not None:
            if tokenizer is None:
                raise ValueError("tokenizer: stop strings are matched in text; pass tokenizer=")
            self.stops = [StopStrings(tokenizer, stop) for _ in range(batch)]

    def update(self, token: Tensor) -> bool:
        """Record the step's tokens (B, 1); True when every row has stopped."""
        if self.eos is not None:
            self.done |= torch.isin(token[:, 0], self.eos)
        if self.stops is not None:
            ids = token[:, 0].tolist()
            for i, stops in enumerate(self.stops):
                if not bool(self.done[i]) and stops.push(ids[i]):
                    self.done[i] = True
        return bool(self.done.all())


@torch.no_grad()
def stream(
    model: nn.Module,
    input_ids: Tensor,
    max_new_tokens: int,
    *,
    attention_mask: Tensor | None = None,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    repetition_penalty: float = 1.0,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    eos_id: int | Sequence[int] | None = None,
    pad_id: int | None = None,
    stop: str | Sequence[str] | None = None,
    tokenizer=None,
    vocab_size: int | None = None,
    truncate: bool = False,
    cache: str = "static",
    cache_dtype: torch.dtype | None = None,
    window: int | None = None,
    sink_tokens: int = 0,
    compile: bool = False,
    compile_mode: str | None = None,
    caches: Caches | None = None,
    reuse: int = 0,
) -> Iterator[Tensor]:
    """Yield each step's new tokens (B, 1) as soon as they are chosen.

    Args:
        input_ids: (B, T) prompts, left-padded; for an encoder-decoder, the source (the target
            starts with ``bos_id``).
        attention_mask: (B, T), 1 = real token, 0 = padding (left only).
        temperature, top_k, top_p, min_p, repetition_penalty: see :class:`Sampling`.
        generator, seed: the random generator of sampling, or a seed to make one.
        eos_id: token id(s) that end a row; pad_id: what a stopped row yields (default the
            first ``eos_id``, else 0).
        stop: string(s) ending a row when they appear in its text (needs ``tokenizer``).
        vocab_size: sample only ids below it (an embedding padded past its tokenizer).
        truncate: keep the end of a prompt longer than the context instead of raising.
        cache: "static" (default), "ring" (attention limited to the last ``window`` tokens,
            memory bounded by it; with ``sink_tokens`` S, the first S tokens stay in view too:
            StreamingLLM) or "dynamic" (the simple reference path; no compile).
        cache_dtype: the KV cache's own dtype (default the weights').
        compile, compile_mode: compile the decode step with ``torch.compile`` (mode e.g.
            "reduce-overhead" for CUDA graphs).
        caches, reuse: static caches to decode into (from ``model.make_caches(...,
            kind="static")``) whose first ``reuse`` positions already hold the first ``reuse``
            tokens of ``input_ids``: only the rest is encoded (a conversation's earlier turns).

    A decoder-only model may generate past its context: when the cache is full, the oldest
    half of the window drops out of view and the rest is encoded again, so the cost per token
    stays bounded.
    """
    check_count(max_new_tokens, "max_new_tokens")
    if input_ids.dim() != 2 or input_ids.shape[1] == 0 or input_ids.dtype.is_floating_point:
        raise ValueError(
            f"input_ids: expected integer ids (B, T) with T >= 1, got {input_ids.dtype} "
            f"{tuple(input_ids.shape)}"
        )
    sampling = Sampling(temperature, top_k, top_p, min_p, repetition_penalty)
    if seed is not None:
        generator = torch.Generator(device=input_ids.device).manual_seed(seed)
    eos = eos_ids(eos_id)
    pad = pad_id if pad_id is not None else (eos[0] if eos else 0)
    model.eval()
    driver = driver_for(model, input_ids, attention_mask)
    ids, mask = driver.prompt, driver.prompt_mask
    if not driver.seq2seq:
        ids = fit_prompt(ids, driver.context, max_new_tokens, truncate)
        mask = mask[:, -ids.shape[1] :]
    elif max_new_tokens >= driver.context:
        raise ValueError(
            f"max_new_tokens: expected fewer than the decoder's context of {driver.context}, "
            f"got {max_new_tokens}"
        )
    b, t = ids.shape
    rows = Rows(b, ids.device, eos, stop, tokenizer)
    if max_new_tokens == 0:
        return
    if caches is None:
        size = min(driver.context, t + max_new_tokens)
        weight = next(model.parameters())
        caches = driver.make_caches(
            b,
            size,
            kind=cache,
            window=window,
            dtype=cache_dtype or weight.dtype,
            device=ids.device,
            **({"sink_tokens": sink_tokens} if sink_tokens else {}),
        )
        reuse = 0
    else:
        size = _check_reuse(caches, reuse, b, t, driver)
    if cache == "dynamic" and compile:
        raise ValueError("compile: a dynamic cache changes shape every step; use cache='static'")
    step = driver.compiled_step(compile_mode) if compile else driver.step
    seen = None
    if sampling.repetition_penalty != 1.0:
        seen = torch.zeros(b, driver.vocab, dtype=torch.bool, device=ids.device)
        seen.scatter_(1, ids, mask.bool())  # the prompt's real tokens

    # Several rows multiply each weight faster packed (attnlab.generate.packing).
    with packed_linears(model, b):
        if reuse:
            caches.truncate(reuse)  # what follows the shared prefix is forgotten
            logits, positions = driver.prefill(ids[:, reuse:], mask, caches)
        else:
            caches.reset()
            logits, positions = driver.prefill(ids, mask, caches)
        # The prompt's activations and attention scores (a few MiB a layer for a long one)
        # are freed now, but glibc would keep them resident for the whole decode.
        release_freed_memory()
        filled = t  # cache columns written (the same in every row: left padding)
        keep = max(1, driver.context // 2)
        for i in range(max_new_tokens):
            if vocab_size is not None and vocab_size < logits.shape[-1]:
                logits = logits.clone()
                logits[:, vocab_size:] = float("-inf")
            token = choose(logits, sampling, seen=seen, generator=generator)
            token = token.masked_fill(rows.done[:, None], pad)
            yield token
            if rows.update(token) or i == max_new_tokens - 1:
                return
            if seen is not None:
                seen.scatter_(1, token, True)
            if not driver.seq2seq:
                ids = torch.cat([ids, token], dim=1)
                mask = torch.cat([mask, torch.ones_like(token)], dim=1)
            if filled < size:
                cache_pos = torch.full((1,), filled, dtype=torch.long, device=ids.device)
                logits = step(token, positions, cache_pos, caches)
                positions = positions + 1
                filled += 1
            else:  # the cache is full: keep the newest half of the window and encode it again
                ids, mask = ids[:, -keep:], mask[:, -keep:]
                caches.reset()
                logits, positions = driver.prefill(ids, mask, caches)
                filled = ids.shape[1]


def _check_reuse(caches: Caches, reuse: int, b: int, t: int, driver) -> int:
    """The size of caches passed to :func:`stream`, checked against its other arguments."""
    if not isinstance(caches, Caches) or caches.kind != "static":
        raise TypeError(f"caches: expected static Caches from make_caches, got {caches!r:.80}")
    if caches.batch != b:
        raise ValueError(f"caches: expected a batch of {b} rows, got {caches.batch}")
    if driver.seq2seq:
        raise ValueError("caches: reusing caches is for decoder-only models")
    check_count(reuse, "reuse")
    if reuse >= t:
        raise ValueError(f"reuse: expected fewer than the prompt's {t} tokens, got {reuse}")
    if t >= caches.max_len:
        raise ValueError(
            f"input_ids: {t} tokens do not fit caches of {caches.max_len} positions with room "
            "for a new token"
        )
    return caches.max_len


def generate(
    model: nn.Module,
    input_ids: Tensor,
    max_new_tokens: int,
    *,
    attention_mask: Tensor | None = None,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
    draft_model: nn.Module | None = None,
    on_token: Callable[[Tensor], None] | None = None,
    **options,
) -> Tensor:
    """Generated ids: for a decoder-only model the prompt followed by up to ``max_new_tokens``
    tokens (B, T + n); for an encoder-decoder the target, ``bos_id`` first (B, 1 + n). Rows
    that stopped early are padded with ``pad_id``.

    ``num_beams > 1`` runs beam search (:func:`attnlab.generate.beam.beam_search`, the best
    beam per row); ``draft_model`` runs speculative decoding
    (:func:`attnlab.generate.speculative.speculative`). ``on_token`` is called with each new
    token (B, 1) while sampling. Other keyword arguments as for :func:`stream`.
    """
    check_count(num_beams, "num_beams", 1)
    if num_beams > 1:
        from attnlab.generate.beam import beam_search

        if draft_model is not None:
            raise ValueError(
                "draft_model: speculative decoding does not combine with num_beams > 1"
            )
        return beam_search(
            model,
            input_ids,
            max_new_tokens,
            attention_mask=attention_mask,
            num_beams=num_beams,
            length_penalty=length_penalty,
            early_stopping=early_stopping,
            **options,
        )
    if draft_model is not None:
        from attnlab.generate.speculative import speculative

        return speculative(
            model, draft_model, input_ids, max_new_tokens, attention_mask=attention_mask, **options
        )
    driver = driver_for(model, input_ids, attention_mask)
    start = driver.prompt
    if not driver.seq2seq:
        truncate = options.get("truncate", False)
        start = fit_prompt(start, driver.context, max_new_tokens, truncate)
    tokens = []
    for token in stream(model, input_ids, max_new_tokens, attention_mask=attention_mask, **options):
        tokens.append(token)
        if on_token is not None:
            on_token(token)
    return torch.cat([start, *tokens], dim=1)
