"""What every model returns: one output object, so code for one family reads the same for all."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class ModelOutput:
    """logits (B, T, V) or (B, classes); hidden_states: the input of every block and the final
    normalised output, each (B, T, C), when asked for; loss when labels were given."""

    logits: Tensor
    hidden_states: tuple[Tensor, ...] | None = None
    loss: Tensor | None = None
