"""Position-wise feed-forward layers: the ReLU MLP (Vaswani et al. 2017), the GELU MLP (GPT-2,
BERT), SwiGLU (Shazeer 2020, "GLU Variants Improve Transformer"; Llama) and GeGLU with the tanh
GELU (Gemma). Shapes: (B, T, C) in and out, hidden width F."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

MLPS = ("gelu", "gelu_tanh", "relu", "swiglu", "geglu_tanh")
# the gated kinds: two input projections (gate, up), hidden width rounded as Llama's
GATED = ("swiglu", "geglu_tanh")

_ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),  # GPT-2's GELU
    "relu": F.relu,
}
_GATES = {"silu": F.silu, "gelu_tanh": _ACTIVATIONS["gelu_tanh"]}


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
    """down(act(gate(x)) * up(x)): a gated MLP with two input projections; ``activation``
    "silu" (SwiGLU, the default) or "gelu_tanh" (GeGLU with the tanh GELU, Gemma)."""

    def __init__(self, dim: int, hidden: int, *, bias: bool = False, activation: str = "silu"):
        super().__init__()
        if activation not in _GATES:
            raise ValueError(f"activation: expected one of {', '.join(_GATES)}, got {activation!r}")
        self.gate = nn.Linear(dim, hidden, bias=bias)
        self.up = nn.Linear(dim, hidden, bias=bias)
        self.down = nn.Linear(hidden, dim, bias=bias)
        self.activation = activation
        self._act = _GATES[activation]

    def forward(self, x: Tensor) -> Tensor:
        return self.down(self._act(self.gate(x)) * self.up(x))

    def extra_repr(self) -> str:
        return "" if self.activation == "silu" else f"activation={self.activation!r}"


def make_mlp(kind: str, dim: int, hidden: int, *, bias: bool) -> nn.Module:
    """An MLP by name: ``"gelu"``, ``"gelu_tanh"``, ``"relu"``, ``"swiglu"`` or ``"geglu_tanh"``."""
    if kind in _ACTIVATIONS:
        return MLP(dim, hidden, bias=bias, activation=kind)
    if kind == "swiglu":
        return SwiGLU(dim, hidden, bias=bias)
    if kind == "geglu_tanh":
        return SwiGLU(dim, hidden, bias=bias, activation="gelu_tanh")
    raise ValueError(f"mlp: expected one of {', '.join(MLPS)}, got {kind!r}")
