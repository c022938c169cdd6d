"""Scoring functions: how a query and a key become an attention score.

Every score here except additive is rewritten as a dot product of transformed queries and keys,
so it runs on every backend (SDPA, FlexAttention, chunked) through :func:`attend`:

* ``dot``: scaled dot product, q·k / sqrt(D) (Vaswani et al. 2017).
* ``general``: multiplicative, qᵀ W k (Luong et al. 2015), as q·(W k) with W per key/value head.
* ``cosine``: cos(q, k) times a learnable temperature (Luong's "cosine"; Swin-v2 style scale).
* ``euclidean``: -|q - k|² · scale. Since -|q-k|² = 2 q·k - |k|² - |q|² and the last term is
  constant along a softmax row, it equals a dot product of [q, 1] with [2k, -|k|²].
* ``additive``: vᵀ tanh(W_q q + W_k k) (Bahdanau et al. 2015). It is not a dot product, so it
  builds (B, H, Tq, Tk, A) hidden activations and runs eagerly: O(Tq · Tk · A) memory per head.

Each score is an ``nn.Module`` called like :func:`attend` minus ``scale`` (which it owns), with
``prepare(q, k)`` (the queries, keys and scale the kernel sees) and ``logits`` (the scores of a
tile, for recomputing weights without the kernel);
:func:`make_score` builds one by name, and :func:`register_score` adds new ones.

Shapes: B batch, H query heads, Hkv key/value heads, Tq queries, Tk keys, D head dim,
A additive hidden size.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.attention.api import attend
from attnlab.attention.call import make_call
from attnlab.attention.reference import softmax_attention
from attnlab.attention.weights import dot_logits
from attnlab.names import unknown


class DotProductScore(nn.Module):
    """q·k / sqrt(D): the Transformer's scaled dot product.

    Every dot-product-family score is this class with another :meth:`prepare`: the transform
    of queries and keys that turns the score into a plain scaled dot product, so the same
    prepared tensors feed the kernel and any recomputation of the weights
    (:class:`attnlab.attention.weights.PatternSource`)."""

    def prepare(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor, float | None]:
        """(queries, keys, scale) for the kernel; a None scale means 1 / sqrt(D)."""
        return q, k, None

    def logits(self, q: Tensor, k: Tensor, scale: float) -> Tensor:
        """Scores of prepared q (B, h, r, D) against prepared k (B, h, Tk, D), float32."""
        return dot_logits(q, k, scale)

    def run(self, q: Tensor, k: Tensor, v: Tensor, *, scale: float | None, **kwargs) -> Tensor:
        """Attention over prepared queries and keys (the output of :meth:`prepare`)."""
        return attend(q, k, v, scale=scale, **kwargs)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, **kwargs) -> Tensor:
        q, k, scale = self.prepare(q, k)
        return self.run(q, k, v, scale=scale, **kwargs)


class GeneralScore(DotProductScore):
    """Luong's multiplicative score qᵀ W k / sqrt(D); W starts as the identity (= dot)."""

    def __init__(self, head_dim: int, n_kv_heads: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.eye(head_dim).repeat(n_kv_heads, 1, 1))  # (Hkv, D, D)

    def prepare(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor, float | None]:
        k = torch.einsum("bhtd,hed->bhte", k, self.weight)  # W k for every key: (B, Hkv, Tk, D)
        return q, k, None


class CosineScore(DotProductScore):
    """cos(q, k) · tau with a learnable temperature tau (kept as log tau, capped at 100)."""

    def __init__(self, init_temperature: float = 10.0, max_temperature: float = 100.0) -> None:
        super().__init__()
        self.log_temperature = nn.Parameter(torch.tensor(math.log(init_temperature)))
        self.max_log = math.log(max_temperature)

    def prepare(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor, float | None]:
        tau = self.log_temperature.clamp(max=self.max_log).exp()
        # The temperature multiplies q, so gradients reach it through any backend.
        return F.normalize(q, dim=-1) * tau.to(q.dtype), F.normalize(k, dim=-1), 1.0


class EuclideanScore(DotProductScore):
    """-|q - k|² / sqrt(D): closer keys score higher (L2 attention, Kim et al. 2021)."""

    def prepare(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor, float | None]:
        scale = 1.0 / math.sqrt(q.shape[-1])
        q_aug = torch.cat([q, torch.ones_like(q[..., :1])], dim=-1)  # (B, H, Tq, D + 1)
        k_aug = torch.cat([2 * k, -k.square().sum(-1, keepdim=True)], dim=-1)  # (B, Hkv, Tk, D+1)
        return q_aug, k_aug, scale


class AdditiveScore(nn.Module):
    """Bahdanau's additive score vᵀ tanh(W_q q + W_k k); eager, O(Tq · Tk · A) memory."""

    def __init__(self, head_dim: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or head_dim
        self.w_q = nn.Linear(head_dim, hidden, bias=False)
        self.w_k = nn.Linear(head_dim, hidden, bias=True)
        self.v = nn.Linear(hidden, 1, bias=False)

    def prepare(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor, float | None]:
        return q, k, 1.0

    def logits(self, q: Tensor, k: Tensor, scale: float = 1.0) -> Tensor:
        """Scores of q (B, h, r, D) against k (B, h, Tk, D): (B, h, r, Tk)."""
        hq = self.w_q(q)[:, :, :, None, :]  # (B, h, r, 1, A)
        hk = self.w_k(k)[:, :, None, :, :]  # (B, h, 1, Tk, A)
        return self.v(torch.tanh(hq + hk)).squeeze(-1) * scale

    def forward(self, q: Tensor, k: Tensor, v: Tensor, **kwargs) -> Tensor:
        return self.run(q, k, v, scale=1.0, **kwargs)

    def run(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        *,
        scale: float | None = 1.0,
        mask=None,
        bias=None,
        dropout_p: float = 0.0,
        backend: str = "auto",
        softcap: float | None = None,
        sinks: Tensor | None = None,
    ) -> Tensor:
        if backend not in ("auto", "reference"):
            raise ValueError(
                f"backend: additive scores run eagerly; expected 'auto' or 'reference', "
                f"got {backend!r}"
            )
        call = make_call(
            q, k, v, mask=mask, bias=bias, scale=None, dropout_p=dropout_p, return_weights=False,
            softcap=softcap, sinks=sinks,
        )  # fmt: skip
        g = call.groups
        scores = self.logits(q, k.repeat_interleave(g, dim=1), scale or 1.0)  # (B, H, Tq, Tk)
        out, _ = softmax_attention(scores, v.repeat_interleave(g, dim=1), call)
        return out


ScoreFactory = Callable[..., nn.Module]

SCORES: dict[str, ScoreFactory] = {
    "dot": lambda head_dim, n_kv_heads: DotProductScore(),
    "general": lambda head_dim, n_kv_heads: GeneralScore(head_dim, n_kv_heads),
    "cosine": lambda head_dim, n_kv_heads: CosineScore(),
    "euclidean": lambda head_dim, n_kv_heads: EuclideanScore(),
    "additive": lambda head_dim, n_kv_heads: AdditiveScore(head_dim),
}


def register_score(name: str, factory: ScoreFactory) -> None:
    """Add a score: ``factory(head_dim=..., n_kv_heads=...)`` returns the module."""
    SCORES[name] = factory


def make_score(name: str, *, head_dim: int, n_kv_heads: int) -> nn.Module:
    """Build the score module called ``name`` for heads of size ``head_dim``."""
    if name not in SCORES:
        raise unknown("score", "score", name, SCORES)
    return SCORES[name](head_dim=head_dim, n_kv_heads=n_kv_heads)
