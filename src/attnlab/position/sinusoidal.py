"""Fixed sinusoidal position embeddings (Vaswani et al. 2017, "Attention Is All You Need", §3.5).

    PE[pos, 2i]     = sin(pos / base^(2i / dim))
    PE[pos, 2i + 1] = cos(pos / base^(2i / dim))

The table is a fixed function of the position, so the module has no length limit: asking for a
position past the current table simply grows it.
"""

import torch
from torch import Tensor, nn

__all__ = ["SinusoidalPositionalEmbedding", "sinusoidal_table"]


def sinusoidal_table(
    length: int,
    dim: int,
    *,
    base: float = 10000.0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Return the (length, dim) sinusoidal table; row ``pos`` is the embedding of position ``pos``.

    Even channels hold the sines and odd channels the cosines, as in the paper.
    ``dim`` must be even so that every frequency gets its sine/cosine pair.
    """
    if length < 0:
        raise ValueError(f"length must be >= 0; got {length}")
    if dim <= 0 or dim % 2:
        raise ValueError(f"dim must be a positive even number (sin/cos pairs); got {dim}")
    if base <= 0:
        raise ValueError(f"base must be > 0; got {base}")
    # Computed in float64 on the CPU and cast at the end: angles reach `length` radians, where
    # float32 (and certainly bf16) would already round them visibly. The table is built rarely.
    pos = torch.arange(length, dtype=torch.float64)[:, None]  # (length, 1)
    exponent = torch.arange(0, dim, 2, dtype=torch.float64) / dim  # 2i / dim, (dim/2,)
    angles = pos / base**exponent  # (length, dim/2)
    # Interleave so that channel 2i is sin and channel 2i+1 is cos of the same angle.
    table = torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)  # (length, dim)
    return table.to(device=device, dtype=dtype)


def _is_integer(dtype: torch.dtype) -> bool:
    return not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)


def _check_positions(positions: Tensor) -> None:
    if not isinstance(positions, Tensor):
        raise TypeError(f"positions must be a torch.Tensor; got {type(positions).__name__}")
    if not _is_integer(positions.dtype):
        raise TypeError(f"positions must be an integer tensor; got dtype {positions.dtype}")
    if positions.ndim not in (1, 2):
        raise ValueError(
            f"positions must have shape (T,) or (B, T); got shape {tuple(positions.shape)}"
        )


class SinusoidalPositionalEmbedding(nn.Module):
    """Look up fixed sinusoidal embeddings by position.

    Args:
        dim: embedding size (even).
        max_len: rows precomputed up front; later positions grow the table on demand.
        base: the wavelength base (10000 in the paper).
        scale: multiplies every embedding. The paper adds the table to token embeddings
            scaled up by sqrt(C); a model whose token embeddings start small (GPT-2's N(0,
            0.02²)) scales the table down instead, so positions do not drown the tokens.

    ``forward(positions)`` maps an integer tensor of shape (T,) or (B, T) to (T, dim) or
    (B, T, dim), in the dtype and on the device of the table (follow the module's ``.to``).
    """

    table: Tensor

    def __init__(
        self, dim: int, max_len: int = 2048, base: float = 10000.0, *, scale: float = 1.0
    ) -> None:
        super().__init__()
        self.scale = scale
        if max_len < 0:
            raise ValueError(f"max_len must be >= 0; got {max_len}")
        self.dim = dim
        self.base = base
        # Non-persistent: the table is a pure function of (dim, base), so it does not belong in
        # checkpoints, and a checkpoint does not pin its length.
        self.register_buffer("table", sinusoidal_table(max_len, dim, base=base), persistent=False)

    @property
    def max_len(self) -> int:
        """Number of rows currently in the table (grows when longer positions are requested)."""
        return self.table.shape[0]

    def forward(self, positions: Tensor) -> Tensor:
        _check_positions(positions)
        if positions.numel() == 0:
            return self.table.new_empty((*positions.shape, self.dim))
        if torch.compiler.is_compiling():
            # Reading values would break the graph: a compiled decode step stays within the
            # rows its eager prefill already grew the table to.
            return self._lookup(positions)
        lowest, highest = int(positions.min()), int(positions.max())
        if lowest < 0:
            raise ValueError(f"positions must be >= 0; got {lowest}")
        if highest >= self.max_len:
            # Grow at least geometrically so that a sequence decoded one token at a time past
            # max_len rebuilds the table O(log n) times, not once per token.
            self._grow(max(highest + 1, 2 * self.max_len))
        return self._lookup(positions)

    def _lookup(self, positions: Tensor) -> Tensor:
        rows = self.table[positions]
        return rows if self.scale == 1.0 else rows * self.scale

    def _grow(self, length: int) -> None:
        self.table = sinusoidal_table(
            length, self.dim, base=self.base, dtype=self.table.dtype, device=self.table.device
        )

    def extra_repr(self) -> str:
        scale = f", scale={self.scale}" if self.scale != 1.0 else ""
        return f"dim={self.dim}, max_len={self.max_len}, base={self.base}{scale}"
