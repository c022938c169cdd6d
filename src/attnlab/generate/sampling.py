"""Choosing the next token from a step's logits.

The logits of each row pass, in this order (transformers' order, so settings mean the same):
the repetition penalty (Keskar et al. 2019: a logit of a token already in the row is divided by
the penalty when positive, multiplied when negative), the temperature, top-k, top-p (nucleus
sampling, Holtzman et al. 2020: the smallest set of tokens whose probability reaches p) and
min-p (tokens at least ``min_p`` times as likely as the likeliest one; Nguyen et al. 2024).
Sampling draws from an explicit ``torch.Generator``, so a seed reproduces a sample exactly.
``temperature=0`` is greedy decoding (the penalty still applies; the filters do not matter).

Shapes: B rows, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Sampling:
    """How a row's next token is chosen; checked on construction."""

    temperature: float = 0.0  # 0 = greedy (the default); > 1 flattens, < 1 sharpens
    top_k: int | None = None  # keep the k likeliest tokens
    top_p: float | None = None  # keep the smallest set reaching this probability, in (0, 1]
    min_p: float | None = None  # keep tokens >= min_p x the likeliest one's probability, [0, 1]
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in the row

    def __post_init__(self) -> None:
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, int | float) or not t >= 0:
            raise ValueError(f"temperature: expected a float >= 0, got {t!r}")
        k = self.top_k
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ValueError(f"top_k: expected a positive int, got {k!r}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p: expected a float in (0, 1], got {self.top_p!r}")
        if self.min_p is not None and not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p: expected a float in [0, 1], got {self.min_p!r}")
        r = self.repetition_penalty
        if isinstance(r, bool) or not isinstance(r, int | float) or not r > 0:
            raise ValueError(f"repetition_penalty: expected a float > 0, got {r!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def filters(self) -> bool:
        """True when top-k, top-p or min-p would change a sample."""
        return self.top_k is not None or self.top_p is not None or self.min_p is not None


def penalize(logits: Tensor, seen: Tensor, penalty: float) -> Tensor:
    """Logits (B, V) with the repetition penalty applied to the tokens ``seen`` (B, V) bool."""
    if penalty == 1.0:
        return logits
    scaled = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, scaled, logits)


def filter_logits(
    logits: Tensor,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
) -> Tensor:
    """Logits (B, V) with everything outside the top-k / top-p / min-p set at -inf."""
    Sampling(top_k=top_k, top_p=top_p, min_p=min_p)  # ValueError naming a bad argument
    if top_k is not None:
        k = min(top_k, logits.shape[-1])
        kth = torch.topk(logits, k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the tokens before it already reach top_p (the top one always stays).
        drop = probs.cumsum(-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.empty_like(logits).scatter_(-1, order, sorted_logits)
    if min_p is not None and min_p > 0:
        probs = logits.softmax(-1)
        keep = probs >= min_p * probs.amax(-1, keepdim=True)
        logits = logits.masked_fill(~keep, float("-inf"))
    return logits


def choose(
    logits: Tensor,
    sampling: Sampling,
    *,
    seen: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One token id per row (B, 1) from the last-position logits (B, V) under ``sampling``;
    ``seen`` (B, V) bool marks each row's tokens so far (for the repetition penalty)."""
    logits = logits.float()
    if seen is not None:
        logits = penalize(logits, seen, sampling.repetition_penalty)
    if sampling.greedy:
        return logits.argmax(-1, keepdim=True)
    logits = logits / sampling.temperature
    if sampling.filters:
        logits = filter_logits(logits, sampling.top_k, sampling.top_p, sampling.min_p)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)


def next_token(
    logits: Tensor,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One token id per row (B, 1) from the last-position logits (B, V)."""
    sampling = Sampling(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    return choose(logits, sampling, generator=generator)
