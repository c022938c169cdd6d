"""Learned absolute position embeddings: one trainable vector per position (as in BERT and GPT-2).

Unlike the sinusoidal table, a learned table has nothing to say about positions it was never
trained on, so a position outside [0, max_len) is an error rather than something to extrapolate.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LearnedPositionalEmbedding"]


class LearnedPositionalEmbedding(nn.Module):
    """A trainable (max_len, dim) table indexed by position.

    The table lives in ``weight`` (an ``nn.Parameter``, the same name and shape an ``nn.Embedding``
    uses, so checkpoints of either load into the other), initialised from N(0, 0.02^2) as in GPT-2.

    ``forward(positions)`` maps an integer tensor of shape (T,) or (B, T) to (T, dim) or
    (B, T, dim); any position outside [0, max_len) raises ``ValueError``.
    """

    def __init__(self, max_len: int, dim: int) -> None:
        super().__init__()
        if max_len <= 0:
            raise ValueError(f"max_len must be > 0; got {max_len}")
        if dim <= 0:
            raise ValueError(f"dim must be > 0; got {dim}")
        self.max_len = max_len
        self.dim = dim
        self.weight = nn.Parameter(torch.empty(max_len, dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # std 0.02 (GPT-2) rather than nn.Embedding's N(0, 1): unit-scale position vectors would
        # swamp token embeddings that are themselves initialised at 0.02.
        nn.init.normal_(self.weight, mean=0.0, std=0.02)

    def forward(self, positions: Tensor) -> Tensor:
        if not isinstance(positions, Tensor):
            raise TypeError(f"positions must be a torch.Tensor; got {type(positions).__name__}")
        dtype = positions.dtype
        if dtype.is_floating_point or dtype.is_complex or dtype == torch.bool:
            raise TypeError(f"positions must be an integer tensor; got dtype {positions.dtype}")
        if positions.ndim not in (1, 2):
            raise ValueError(
                f"positions must have shape (T,) or (B, T); got shape {tuple(positions.shape)}"
            )
        if positions.numel() > 0 and not torch.compiler.is_compiling():
            # Checked here, not left to the index kernel: out-of-range indices give an opaque
            # IndexError on CPU and a device-side assert on CUDA. (Not while compiling: reading
            # values would break the graph; the generation engine computes the positions.)
            lowest, highest = int(positions.min()), int(positions.max())
            if lowest < 0 or highest >= self.max_len:
                bad = lowest if lowest < 0 else highest
                raise ValueError(f"positions must lie in [0, max_len={self.max_len}); got {bad}")
        return F.embedding(positions, self.weight)

    def extra_repr(self) -> str:
        return f"max_len={self.max_len}, dim={self.dim}"
