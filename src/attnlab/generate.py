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
) -> Iterator[Tensor]:
    """Yield each new token (B, 1) as soon as it is sampled; ``prompt`` is (B, T) ids.

    Stops after ``max_new_tokens`` or once every row has produced ``eos_id``. The total length
    is limited by the model's ``max_len`` when it has learned positions; longer generations
    keep the most recent ``max_len`` tokens (re-running the window without a cache)."""
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens: expected an int >= 0, got {max_new_tokens!r}")
    if prompt.dim() != 2 or prompt.shape[1] == 0:
        raise ValueError(f"prompt: expected ids (B, T) with T >= 1, got {tuple(prompt.shape)}")
    model.eval()
    limit = model.config.max_len
    b = prompt.shape[0]
    weight = model.head.weight
    window = prompt[:, -limit:]
    caches = model.make_caches(b, limit, dtype=weight.dtype, device=weight.device)
    logits = model(window, caches=caches).logits[:, -1]
    done = torch.zeros(b, dtype=torch.bool, device=prompt.device)
    sample = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "generator": generator}
    for _ in range(max_new_tokens):
        token = next_token(logits, **sample)
        yield token
        if eos_id is not None:
            done |= token[:, 0] == eos_id
            if bool(done.all()):
                return
        window = torch.cat([window, token], dim=1)
        if caches[0].length < limit:
            logits = model(token, caches=caches).logits[:, -1]
        else:  # the cache is full: slide the window and start a fresh cache
            window = window[:, -limit:]
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
