"""Normalisation layers by name: LayerNorm (Ba et al. 2016, bias optional) and RMSNorm
(Zhang & Sennrich 2019), both PyTorch's own modules, and Gemma's RMSNorm, whose weight is stored
as an offset from 1."""

from __future__ import annotations

import torch
from torch import Tensor, nn

NORMS = ("layernorm", "rmsnorm", "rmsnorm_offset")


class OffsetRMSNorm(nn.Module):
    """RMSNorm scaling by ``1 + weight`` (Gemma): the weight starts at 0, the identity scale.
    The norm is computed in float32 and cast back, as Gemma's reference code does, so that
    half-precision models normalise as their checkpoints were trained."""

    def __init__(self, dim: int, *, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return (h * (1.0 + self.weight.float())).type_as(x)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def make_norm(kind: str, dim: int, *, eps: float = 1e-5, bias: bool = True) -> nn.Module:
    """``"layernorm"`` (with or without bias), ``"rmsnorm"`` or ``"rmsnorm_offset"`` (Gemma's
    ``1 + weight`` scale, never a bias) over the last ``dim`` features."""
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=eps, bias=bias)
    if kind == "rmsnorm":
        return nn.RMSNorm(dim, eps=eps)
    if kind == "rmsnorm_offset":
        return OffsetRMSNorm(dim, eps=eps)
    raise ValueError(f"norm: expected one of {', '.join(NORMS)}, got {kind!r}")
