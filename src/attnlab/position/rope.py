"""Rotary position embedding, RoPE (Su et al. 2021, "RoFormer", arXiv:2104.09864).

Shapes:
    B  batch
    H  heads
    T  sequence length
    D  head dim
    R  rotary dims (the first R of the D channels rotate; R = D unless partial rotary is asked)

RoPE rotates each 2-D pair of query/key channels by an angle proportional to the token's position,
with one frequency per pair: theta_j = base^(-2j / R), j = 0 .. R/2 - 1. Because rotations compose,
<rot(q, m), rot(k, n)> depends only on m - n: attention scores see relative positions even though
each vector is rotated by its absolute position (RoFormer §3.4.2).

Layout: "rotate half", as in GPT-NeoX and Hugging Face Llama. Channel j pairs with channel j + R/2
(not with j + 1 as in the paper's interleaved form). Both are the same rotation up to a fixed
permutation of channels, which the learned projections absorb, but weights trained in one layout
only work in that layout.
"""

from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["LinearScaling", "NTKScaling", "RotaryEmbedding", "apply_rotary"]


@dataclass(frozen=True)
class LinearScaling:
    """Position interpolation (Chen et al. 2023, arXiv:2306.15595): use position / factor.

    Squeezes ``factor`` times more positions into the angle range seen in training.
    """

    factor: float

    def __post_init__(self) -> None:
        if not self.factor > 0:
            raise ValueError(f"LinearScaling.factor must be > 0; got {self.factor}")


@dataclass(frozen=True)
class NTKScaling:
    """NTK-aware scaling (bloc97, 2023): base *= factor ** (R / (R - 2)).

    The exponent is chosen so that the lowest frequency is divided by exactly ``factor`` (like
    position interpolation) while the highest frequency (j = 0) is unchanged, keeping the
    fine-grained resolution between neighbouring tokens.
    """

    factor: float

    def __post_init__(self) -> None:
        if not self.factor > 0:
            raise ValueError(f"NTKScaling.factor must be > 0; got {self.factor}")


def _rotate_half(x: Tensor) -> Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dim: a 90 degree turn of every pair."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the first R = cos.shape[-1] channels of ``x``; the remaining channels pass through.

    ``cos`` and ``sin`` are (..., R) in the rotate-half layout (as from
    :meth:`RotaryEmbedding.cos_sin`) and must broadcast against ``x[..., :R]``. The arithmetic
    runs in the promoted dtype of the inputs; casting is left to the caller.
    """
    if cos.shape != sin.shape:
        raise ValueError(
            f"cos and sin must have the same shape; got {tuple(cos.shape)} and {tuple(sin.shape)}"
        )
    r = cos.shape[-1]
    if r % 2 or r > x.shape[-1]:
        raise ValueError(
            f"cos.shape[-1] (rotary dims) must be even and <= x.shape[-1]={x.shape[-1]}; got {r}"
        )
    x_rot, x_pass = x[..., :r], x[..., r:]
    # Per pair (a, b) at angle t: (a cos t - b sin t, b cos t + a sin t), i.e. (a + ib) * e^(it).
    rotated = x_rot * cos + _rotate_half(x_rot) * sin
    if x_pass.shape[-1] == 0:
        return rotated
    return torch.cat((rotated, x_pass.to(rotated.dtype)), dim=-1)


def _is_integer(dtype: torch.dtype) -> bool:
    return not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)


def _check_positions_dtype(positions: Tensor, name: str) -> None:
    if not isinstance(positions, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(positions).__name__}")
    if not _is_integer(positions.dtype):
        raise TypeError(f"{name} must be an integer tensor; got dtype {positions.dtype}")


class RotaryEmbedding(nn.Module):
    """Rotary position embedding for queries and keys of shape (B, H, T, D).

    Args:
        head_dim: D, the last dim of the inputs.
        base: frequency base (10000 in RoFormer; Llama 3 uses 500000).
        rotary_dim: R, how many leading channels rotate (even, <= head_dim; default head_dim).
            GPT-NeoX rotates only the first 25% of each head ("partial rotary").
        scaling: ``None``, :class:`LinearScaling` or :class:`NTKScaling`, for running past the
            trained context length.

    Positions are integer tensors of shape (T,), shared by the batch, or (B, T), one row per
    sequence (cached decoding with per-row offsets, left padding).
    """

    inv_freq: Tensor

    def __init__(
        self,
        head_dim: int,
        *,
        base: float = 10000.0,
        rotary_dim: int | None = None,
        scaling: LinearScaling | NTKScaling | None = None,
    ) -> None:
        super().__init__()
        rotary_dim = head_dim if rotary_dim is None else rotary_dim
        if head_dim <= 0:
            raise ValueError(f"head_dim must be > 0; got {head_dim}")
        if rotary_dim <= 0 or rotary_dim % 2 or rotary_dim > head_dim:
            raise ValueError(
                f"rotary_dim must be even and in (0, head_dim={head_dim}]; got {rotary_dim}"
            )
        if not base > 0:
            raise ValueError(f"base must be > 0; got {base}")
        if scaling is not None and not isinstance(scaling, LinearScaling | NTKScaling):
            kind = type(scaling).__name__
            raise TypeError(f"scaling must be None, LinearScaling or NTKScaling; got {kind}")
        effective_base = base
        if isinstance(scaling, NTKScaling):
            if rotary_dim == 2:
                raise ValueError(
                    "NTKScaling needs rotary_dim > 2 (its exponent is R / (R - 2)); got 2"
                )
            effective_base = base * scaling.factor ** (rotary_dim / (rotary_dim - 2))
        self.head_dim = head_dim
        self.rotary_dim = rotary_dim
        self.base = base
        self.effective_base = effective_base  # the base the frequencies use, after NTK scaling
        self.scaling = scaling
        # Non-persistent: a function of the config, so it stays out of checkpoints (and a
        # checkpoint cannot silently override a changed base).
        self.register_buffer("inv_freq", self._compute_inv_freq(), persistent=False)

    def _compute_inv_freq(self, device: torch.device | None = None) -> Tensor:
        # theta_j = base^(-2j / R), RoFormer eq. 15.
        exponent = torch.arange(0, self.rotary_dim, 2, dtype=torch.float64, device=device)
        return (1.0 / self.effective_base ** (exponent / self.rotary_dim)).float()

    def _inv_freq_f32(self) -> Tensor:
        # `module.to(torch.bfloat16)` also casts floating buffers. bf16 frequencies are off by up to
        # ~0.4%, which is radians of error a few hundred tokens in, so rebuild them instead.
        if self.inv_freq.dtype == torch.float32:
            return self.inv_freq
        return self._compute_inv_freq(self.inv_freq.device)

    def cos_sin(self, positions: Tensor, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
        """Return (cos, sin), each (..., T, R) for positions (..., T), in the rotate-half layout.

        Angles are computed in float32 (positions times frequencies lose too much in bf16/fp16)
        and the results are then cast to ``dtype`` (default float32).
        """
        _check_positions_dtype(positions, "positions")
        pos = positions.to(device=self.inv_freq.device, dtype=torch.float32)
        if isinstance(self.scaling, LinearScaling):
            pos = pos / self.scaling.factor
        angles = pos[..., None] * self._inv_freq_f32()  # (..., T, R/2)
        # Both halves share the angles: channel j and channel j + R/2 form one rotating pair.
        angles = torch.cat((angles, angles), dim=-1)  # (..., T, R)
        dtype = torch.float32 if dtype is None else dtype
        return angles.cos().to(dtype), angles.sin().to(dtype)

    def rotate(self, x: Tensor, positions: Tensor) -> Tensor:
        """Rotate x (B, H, T, D) by positions (T,) or (B, T); returns x's shape and dtype."""
        return self._rotate(x, positions, "x", "positions")

    def forward(
        self, q: Tensor, k: Tensor, q_positions: Tensor, k_positions: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Rotate queries and keys; ``k_positions`` defaults to ``q_positions``.

        q and k may differ in heads (grouped-query attention) and in length (a key cache longer
        than the new queries), in which case give ``k_positions`` explicitly.
        """
        if k_positions is None:
            k_positions = q_positions
            k_pos_name = "k_positions (defaulted to q_positions)"
        else:
            k_pos_name = "k_positions"
        q_rot = self._rotate(q, q_positions, "q", "q_positions")
        k_rot = self._rotate(k, k_positions, "k", k_pos_name)
        return q_rot, k_rot

    def _rotate(self, x: Tensor, positions: Tensor, x_name: str, pos_name: str) -> Tensor:
        self._check_x(x, x_name)
        b, _, t, _ = x.shape
        _check_positions_dtype(positions, pos_name)
        expected = {1: (t,), 2: (b, t)}.get(positions.ndim)
        if tuple(positions.shape) != expected:
            raise ValueError(
                f"{pos_name} must have shape (T,) = ({t},) or (B, T) = ({b}, {t}) to match "
                f"{x_name} of shape {tuple(x.shape)}; got {tuple(positions.shape)}"
            )
        # Low-precision inputs are rotated in float32 and cast back once, so the rounding error
        # is one bf16/fp16 rounding of the result rather than one per multiply-add.
        compute_dtype = torch.promote_types(x.dtype, torch.float32)
        cos, sin = self.cos_sin(positions, dtype=compute_dtype)  # (T, R) or (B, T, R)
        if positions.ndim == 2:
            cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, R): broadcast over heads
        return apply_rotary(x.to(compute_dtype), cos, sin).to(x.dtype)

    def _check_x(self, x: Tensor, name: str) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
        if not x.dtype.is_floating_point:
            raise TypeError(f"{name} must be a floating-point tensor; got dtype {x.dtype}")
        if x.ndim != 4:
            raise ValueError(
                f"{name} must be 4-D (B, H, T, D); got {x.ndim}-D shape {tuple(x.shape)}"
            )
        if x.shape[-1] != self.head_dim:
            raise ValueError(
                f"{name}.shape[-1] must equal head_dim={self.head_dim}; "
                f"got {x.shape[-1]} (shape {tuple(x.shape)})"
            )

    def extra_repr(self) -> str:
        return (
            f"head_dim={self.head_dim}, rotary_dim={self.rotary_dim}, base={self.base}, "
            f"scaling={self.scaling}"
        )
