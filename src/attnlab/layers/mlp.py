"""Position-wise feed-forward layers: the ReLU MLP (Vaswani et al. 2017), the GELU MLP (GPT-2,
BERT) and SwiGLU (Shazeer 2020,
"GLU Variants Improve Transformer"; Llama). Shapes: (B, T, C) in and out, hidden width F."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

MLPS = ("gelu", "gelu_tanh", "relu", "swiglu")

_ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),  # GPT-2's GELU
    "relu": F.relu,
}


class MLP(nn.Module):
    """Linear C -> F, activation ("gelu", "gelu_tanh" or "relu"), linear F -> C."""

    def __init__(self, dim: int, hidden: int, *, bias: bool = True, activation: str = "gelu"):
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"activation: expected one of {', '.join(_ACTIVATIONS)}, got {activation!r}"
            )
        self.up = nn.Linear(dim, hidden, bias=bias)
        self.down = nn.Linear(hidden, dim, bias=bias)
        self.activation = activation
        self._act = _ACTIVATIONS[activation]

    def forward(self, x: Tensor) -> Tensor:
        return self.down(self._act(self.up(x)))

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"


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
    """An MLP by name: ``"gelu"``, ``"gelu_tanh"``, ``"relu"`` or ``"swiglu"``."""
    if kind in _ACTIVATIONS:
        return MLP(dim, hidden, bias=bias, activation=kind)
    if kind == "swiglu":
        return SwiGLU(dim, hidden, bias=bias)
    raise ValueError(f"mlp: expected one of {', '.join(MLPS)}, got {kind!r}")
