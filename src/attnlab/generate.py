"""Sampling from decoder-only language models with a KV cache.

The prompt runs through the model once (prefill), then one token per step reuses the cached
keys and values. Each step's logits are divided by the temperature, cut to the ``top_k`` most
likely tokens and to the smallest set whose probability reaches ``top_p`` (nucleus sampling,
Holtzman et al. 2020), and sampled with an explicit ``torch.Generator``, so a seed reproduces a
sample exactly. ``temperature=0`` is greedy decoding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from attnlab.models.gpt import GPT


def filter_logits(logits: Tensor, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """Logits (B, V) with everything outside the top-k / top-p set at -inf."""
    if top_k is not None:
        if not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k: expected a positive int, got {top_k!r}")
        k = min(top_k, logits.shape[-1])
        kth = torch.topk(logits, k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p: expected a float in (0, 1], got {top_p!r}")
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the tokens before it already reach top_p (the top one always stays).
        drop = probs.cumsum(-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.empty_like(logits).scatter_(-1, order, sorted_logits)
    return logits


def next_token(
    logits: Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One token id per row (B, 1) from the last-position logits (B, V)."""
    if temperature < 0:
        raise ValueError(f"temperature: expected a float >= 0, got {temperature!r}")
    if temperature == 0:
        return logits.argmax(-1, keepdim=True)
    logits = filter_logits(logits.float() / temperature, top_k, top_p)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)


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


@torch.no_grad()
def stream(
    model: GPT,
    prompt: Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    eos_id: int | None = None,
    vocab_size: int | None = None,
    truncate: bool = False,
) -> Iterator[Tensor]:
    """Yield each new token (B, 1) as soon as it is sampled; ``prompt`` is (B, T) ids.

    Stops after ``max_new_tokens`` or once every row has produced ``eos_id``. ``vocab_size``
    limits sampling to the ids a tokenizer can decode (a model's embedding is often padded past
    its tokenizer). A prompt longer than the model's context (``config.max_len``) is an error
    unless ``truncate=True``, which keeps its end. Generation may run past the context: when
    the cache is full the oldest half of the window drops out of view and the rest is encoded
    again, so the cost per token stays bounded (one re-encoding every ``max_len / 2`` tokens).
    The KV cache holds at most the prompt plus ``max_new_tokens``, never more than the context.
    """
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens: expected an int >= 0, got {max_new_tokens!r}")
    if prompt.dim() != 2 or prompt.shape[1] == 0:
        raise ValueError(f"prompt: expected ids (B, T) with T >= 1, got {tuple(prompt.shape)}")
    model.eval()
    limit = model.config.max_len
    window = fit_prompt(prompt, limit, max_new_tokens, truncate)
    b = prompt.shape[0]
    weight = model.head.weight
    size = min(limit, window.shape[1] + max_new_tokens)
    caches = model.make_caches(b, size, dtype=weight.dtype, device=weight.device)
    logits = model(window, caches=caches).logits[:, -1]
    done = torch.zeros(b, dtype=torch.bool, device=prompt.device)
    sample = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "generator": generator}
    keep = max(1, limit // 2)
    for _ in range(max_new_tokens):
        if vocab_size is not None and vocab_size < logits.shape[-1]:
            logits = logits.clone()
            logits[:, vocab_size:] = float("-inf")
        token = next_token(logits, **sample)
        yield token
        if eos_id is not None:
            done |= token[:, 0] == eos_id
            if bool(done.all()):
                return
        window = torch.cat([window, token], dim=1)
        if caches[0].length < size:
            logits = model(token, caches=caches).logits[:, -1]
        else:  # the cache is full: keep the newest half of the window and encode it again
            window = window[:, -keep:]
            for cache in caches:
                cache.reset()
            logits = model(window, caches=caches).logits[:, -1]


def generate(
    model: GPT,
    prompt: Tensor,
    max_new_tokens: int,
    *,
    on_token: Callable[[Tensor], None] | None = None,
    **sampling,
) -> Tensor:
    """The prompt followed by up to ``max_new_tokens`` sampled ids (B, T + n); ``on_token`` is
    called with each new token (B, 1). Keyword arguments as for :func:`stream`."""
    tokens = []
    for token in stream(model, prompt, max_new_tokens, **sampling):
        tokens.append(token)
        if on_token is not None:
            on_token(token)
    return torch.cat([prompt, *tokens], dim=1)
