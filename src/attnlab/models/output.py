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


def check_input_ids(input_ids: Tensor) -> None:
    """ValueError unless ``input_ids`` holds integer token ids of shape (B, T)."""
    if input_ids.dim() != 2 or input_ids.dtype.is_floating_point:
        raise ValueError(
            f"input_ids: expected integer ids (B, T), got dtype {input_ids.dtype} and shape "
            f"{tuple(input_ids.shape)}"
        )
