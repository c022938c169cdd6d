"""The eager reference: attention written out as plain tensor math, the oracle for every test.

It materialises the (B, H, Tq, Tk) score matrix, so it costs O(Tq * Tk) memory per head; use it
to check fast backends and to read attention weights, not for long sequences.

Shapes: B batch, H query heads, Hkv key/value heads (G = H / Hkv), Tq queries, Tk keys,
D head dim, Dv value head dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from attnlab.attention.call import AttentionCall


def softcapped(scores: Tensor, softcap: float | None) -> Tensor:
    """softcap · tanh(scores / softcap) (Gemma 2's logit soft-capping); the scores as they are
    for None."""
    return scores if softcap is None else softcap * torch.tanh(scores / softcap)


def masked_softmax(scores: Tensor, allowed: Tensor | None, sinks: Tensor | None = None) -> Tensor:
    """Softmax over the last dim where ``allowed``; rows with nothing allowed give all zeros.

    Masked scores are set to the most negative finite value rather than -inf so that a row with
    no allowed key yields a uniform distribution instead of NaN, and the final fill zeroes it
    (and its gradient) exactly.

    ``sinks`` (broadcastable to (B, H, Tq, 1)): a logit per row that joins the softmax as one
    more, always allowed column and is then dropped, so a row's weights sum to less than one.
    """
    if sinks is not None:
        sink = sinks.to(scores.dtype).expand(*scores.shape[:-1], 1)
        if allowed is not None:
            allowed = torch.cat(
                [allowed.expand(*scores.shape), torch.ones_like(sink, dtype=torch.bool)], -1
            )
        return masked_softmax(torch.cat([scores, sink], -1), allowed)[..., :-1]
    if allowed is None:
        return scores.softmax(-1)
    lowest = torch.finfo(scores.dtype).min
    return scores.masked_fill(~allowed, lowest).softmax(-1).masked_fill(~allowed, 0.0)


def softmax_attention(scores: Tensor, v: Tensor, call: AttentionCall) -> tuple[Tensor, Tensor]:
    """Finish attention from raw scores (B, H, Tq, Tk): soft-cap, add the call's bias, mask,
    softmax (with the call's sinks), dropout, weigh v (B, H, Tk, Dv). Returns (output
    (B, H, Tq, Dv), weights before dropout)."""
    scores = softcapped(scores, call.softcap)
    bias = call.dense_bias()
    if bias is not None:
        scores = scores + bias
    sinks = call.sinks.view(1, -1, 1, 1) if call.sinks is not None else None
    weights = masked_softmax(scores, call.dense_mask(), sinks)
    dropped = F.dropout(weights, call.dropout_p) if call.dropout_p > 0 else weights
    return dropped @ v, weights


def reference_attention(call: AttentionCall) -> tuple[Tensor, Tensor]:
    """Eager attention: (output (B, H, Tq, Dv), weights (B, H, Tq, Tk)) in q's dtype.

    Half-precision inputs are computed in float32, so the oracle is never the weak link.
    """
    dtype = torch.promote_types(call.dtype, torch.float32)
    q, k, v = call.q.to(dtype), call.k.to(dtype), call.v.to(dtype)
    # Grouped-query attention: each key/value head serves G consecutive query heads.
    k = k.repeat_interleave(call.groups, dim=1)  # (B, H, Tk, D)
    v = v.repeat_interleave(call.groups, dim=1)  # (B, H, Tk, Dv)
    scores = (q @ k.transpose(-2, -1)) * call.scale  # (B, H, Tq, Tk)
    out, weights = softmax_attention(scores, v, call)
    return out.to(call.dtype), weights.to(call.dtype)
