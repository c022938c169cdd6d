"""Normalisation layers by name: LayerNorm (Ba et al. 2016, bias optional) and RMSNorm
(Zhang & Sennrich 2019). Both are PyTorch's own modules; this file only chooses between them."""

from __future__ import annotations

from torch import nn

NORMS = ("layernorm", "rmsnorm")


def make_norm(kind: str, dim: int, *, eps: float = 1e-5, bias: bool = True) -> nn.Module:
    """``"layernorm"`` (with or without bias) or ``"rmsnorm"`` over the last ``dim`` features."""
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=eps, bias=bias)
    if kind == "rmsnorm":
        return nn.RMSNorm(dim, eps=eps)
    raise ValueError(f"norm: expected one of {', '.join(NORMS)}, got {kind!r}")
