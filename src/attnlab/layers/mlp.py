"""Position-wise feed-forward layers: the GELU MLP (GPT-2, BERT) and SwiGLU (Shazeer 2020,
"GLU Variants Improve Transformer"; Llama). Shapes: (B, T, C) in and out, hidden width F."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

MLPS = ("gelu", "gelu_tanh", "swiglu")


class MLP(nn.Module):
    """Linear C -> F, GELU, linear F -> C. ``approximate="tanh"`` is GPT-2's GELU."""

    def __init__(self, dim: int, hidden: int, *, bias: bool = True, approximate: str = "none"):
        super().__init__()
        self.up = nn.Linear(dim, hidden, bias=bias)
        self.down = nn.Linear(hidden, dim, bias=bias)
        self.approximate = approximate

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.gelu(self.up(x), approximate=self.approximate))


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)): a gated MLP with two input projections."""

    def __init__(self, dim: int, hidden: int, *, bias: bool = False):
        super().__init__()
        self.gate = nn.Linear(dim, hidden, bias=bias)
        self.up = nn.Linear(dim, hidden, bias=bias)
        self.down = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


def make_mlp(kind: str, dim: int, hidden: int, *, bias: bool) -> nn.Module:
    """An MLP by name: ``"gelu"``, ``"gelu_tanh"`` or ``"swiglu"``."""
    if kind == "gelu":
        return MLP(dim, hidden, bias=bias)
    if kind == "gelu_tanh":
        return MLP(dim, hidden, bias=bias, approximate="tanh")
    if kind == "swiglu":
        return SwiGLU(dim, hidden, bias=bias)
    raise ValueError(f"mlp: expected one of {', '.join(MLPS)}, got {kind!r}")
