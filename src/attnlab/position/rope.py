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

Longer contexts than the model was trained on ("original context", L positions) need the angles
kept in the range training saw. The scalings, each a frozen dataclass passed as ``scaling=``:

- :class:`LinearScaling`: position interpolation, every frequency divided by the factor.
- :class:`NTKScaling`: a larger base, fixed in advance.
- :class:`DynamicNTKScaling`: a larger base that grows with the current length once it passes L.
- :class:`YarnScaling`: per-pair blend of interpolation and extrapolation, plus a cos/sin scale.
- :class:`Llama3Scaling`: Llama 3.1's per-wavelength blend.

Hugging Face configs name them with ``rope_scaling`` dicts: see :mod:`attnlab.position.rope_hf`.
"""

import dataclasses
import math
from dataclasses import dataclass
from numbers import Real

import torch
from torch import Tensor, nn

from attnlab.names import closest, unknown

__all__ = [
    "DynamicNTKScaling",
    "LinearScaling",
    "Llama3Scaling",
    "NTKScaling",
    "RopeScaling",
    "RotaryEmbedding",
    "YarnScaling",
    "apply_rotary",
]


def _check_positive(owner: object, field: str, value: object) -> None:
    name = f"{type(owner).__name__}.{field}"
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a number; got {type(value).__name__} {value!r}")
    if not value > 0:
        raise ValueError(f"{name} must be > 0; got {value!r}")


def _check_length(owner: object, field: str, value: object) -> None:
    name = f"{type(owner).__name__}.{field}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int (a number of positions); got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1; got {value!r}")


def _plain_inv_freq(base: float, rotary_dim: int, device: torch.device | None = None) -> Tensor:
    """theta_j = base^(-2j / R), j = 0 .. R/2 - 1 (RoFormer eq. 15), in float64."""
    exponent = torch.arange(0, rotary_dim, 2, dtype=torch.float64, device=device)
    return 1.0 / base ** (exponent / rotary_dim)


@dataclass(frozen=True)
class LinearScaling:
    """Position interpolation (Chen et al. 2023, arXiv:2306.15595): use position / factor.

    Squeezes ``factor`` times more positions into the angle range seen in training. Applied, as
    the same thing, by dividing every frequency by ``factor``.
    """

    factor: float

    def __post_init__(self) -> None:
        _check_positive(self, "factor", self.factor)

    def scale_frequencies(self, inv_freq: Tensor, *, base: float, rotary_dim: int) -> Tensor:
        """The plain frequencies ``inv_freq`` (R/2,) divided by ``factor``."""
        # (position / factor) * theta = position * (theta / factor), with one rounding less.
        return inv_freq / self.factor


@dataclass(frozen=True)
class NTKScaling:
    """NTK-aware scaling (bloc97, 2023): base *= factor ** (R / (R - 2)).

    The exponent is chosen so that the lowest frequency is divided by exactly ``factor`` (like
    position interpolation) while the highest frequency (j = 0) is unchanged, keeping the
    fine-grained resolution between neighbouring tokens.
    """

    factor: float

    def __post_init__(self) -> None:
        _check_positive(self, "factor", self.factor)


@dataclass(frozen=True)
class DynamicNTKScaling:
    """Dynamic NTK scaling (emozilla, 2023; Hugging Face rope_type "dynamic").

    NTK-aware scaling whose strength follows the current length n instead of being fixed: while
    n <= ``original_max_len`` the frequencies are plain RoPE's, exactly; beyond it the base is

        base * (factor * n / original_max_len - (factor - 1)) ** (R / (R - 2)),

    unchanged at n = original_max_len and growing from there. Short sequences so keep the trained
    angles, and long ones get only as much scaling as their length needs.

    n is the largest position being rotated + 1 (over the whole batch), read from the positions
    tensor on its device, so no host sync. Unlike transformers, which keeps the largest n seen so
    far in module state, the frequencies depend only on the positions of the current call; in
    incremental decoding n grows with every step, and both give the same result.
    """

    factor: float
    original_max_len: int

    def __post_init__(self) -> None:
        _check_positive(self, "factor", self.factor)
        _check_length(self, "original_max_len", self.original_max_len)


@dataclass(frozen=True)
class YarnScaling:
    """YaRN (Peng et al. 2023, arXiv:2309.00071, "YaRN: Efficient Context Window Extension").

    Each rotating pair j is judged by how many full turns r_j = original_max_len * theta_j / 2 pi
    it makes over the original context. Pairs that turn more than ``beta_fast`` times already saw
    every angle in training and keep their frequency (extrapolation); pairs that turn fewer than
    ``beta_slow`` times are interpolated (frequency / factor); in between, a linear ramp over the
    pair index blends the two (paper §3.2, "NTK-by-parts"). The ramp bounds are the pair indices
    where r_j equals beta_fast and beta_slow, rounded outwards to whole pairs when ``truncate``.

    cos and sin are multiplied by an attention factor, so q.k logits scale by its square (paper
    §3.4, "sqrt(1/t) = 0.1 ln(s) + 1"). It is ``attention_factor`` when given; else, when both
    ``mscale`` and ``mscale_all_dim`` are given (DeepSeek-V2/V3 configs),
    m(factor, mscale) / m(factor, mscale_all_dim) with m(s, k) = 0.1 k ln(s) + 1 (1 for s <= 1);
    else m(factor, 1). See :attr:`effective_attention_factor`.

    Args:
        factor: s, the context extension ratio.
        original_max_len: L, the context length the model was trained with.
        beta_fast: turns above which a pair is extrapolated (the paper's beta, 32 for Llama).
        beta_slow: turns below which a pair is interpolated (the paper's alpha, 1 for Llama).
        attention_factor: explicit cos/sin scale; ``None`` derives it as above.
        mscale, mscale_all_dim: DeepSeek's variant of the derived scale; used only both together.
        truncate: round the ramp bounds to whole pairs (the reference implementation does; some
            models, such as gpt-oss, set it to False).
    """

    factor: float
    original_max_len: int
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attention_factor: float | None = None
    mscale: float | None = None
    mscale_all_dim: float | None = None
    truncate: bool = True

    def __post_init__(self) -> None:
        _check_positive(self, "factor", self.factor)
        _check_length(self, "original_max_len", self.original_max_len)
        _check_positive(self, "beta_fast", self.beta_fast)
        _check_positive(self, "beta_slow", self.beta_slow)
        if self.beta_fast < self.beta_slow:
            raise ValueError(
                f"YarnScaling.beta_fast must be >= beta_slow={self.beta_slow}; got {self.beta_fast}"
            )
        for field in ("attention_factor", "mscale", "mscale_all_dim"):
            if getattr(self, field) is not None:
                _check_positive(self, field, getattr(self, field))
        if not isinstance(self.truncate, bool):
            raise TypeError(f"YarnScaling.truncate must be a bool; got {self.truncate!r}")

    @property
    def effective_attention_factor(self) -> float:
        """The scale applied to cos and sin (see the class docstring)."""
        if self.attention_factor is not None:
            return float(self.attention_factor)

        def m(scale: float, k: float = 1.0) -> float:
            return 1.0 if scale <= 1 else 0.1 * k * math.log(scale) + 1.0

        if self.mscale is not None and self.mscale_all_dim is not None:
            return m(self.factor, self.mscale) / m(self.factor, self.mscale_all_dim)
        return m(self.factor)

    def scale_frequencies(self, inv_freq: Tensor, *, base: float, rotary_dim: int) -> Tensor:
        """YaRN frequencies from the plain ones ``inv_freq`` (R/2,) of ``base`` and R."""
        if base == 1:
            raise ValueError("YarnScaling needs base != 1 (its ramp bounds divide by ln(base))")

        def pair_with_turns(turns: float) -> float:
            # Solve original_max_len * base^(-2j/R) / (2 pi) = turns for j.
            ratio = self.original_max_len / (turns * 2 * math.pi)
            return rotary_dim * math.log(ratio) / (2 * math.log(base))

        low, high = pair_with_turns(self.beta_fast), pair_with_turns(self.beta_slow)
        if self.truncate:
            low, high = math.floor(low), math.ceil(high)
        # Clamped to R - 1, not R/2 - 1: the reference implementation's bound, kept because it
        # sets the ramp's slope when the upper bound falls past the last pair.
        low, high = max(low, 0), min(high, rotary_dim - 1)
        if low == high:
            high += 0.001  # a step instead of a ramp, without dividing by zero
        j = torch.arange(inv_freq.shape[-1], dtype=inv_freq.dtype, device=inv_freq.device)
        interpolate = ((j - low) / (high - low)).clamp(0, 1)  # 0: keep, 1: divide by factor
        return inv_freq * (1 - interpolate) + inv_freq / self.factor * interpolate


@dataclass(frozen=True)
class Llama3Scaling:
    """Llama 3.1's frequency scaling (Hugging Face rope_type "llama3").

    Judged by wavelength 2 pi / theta_j against the original context L = ``original_max_len``:
    wavelengths shorter than L / ``high_freq_factor`` are kept, longer than L / ``low_freq_factor``
    are interpolated (divided by ``factor``), and in between the two are blended with weight
    (L / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor) on the kept one.
    Llama 3.1 uses factor 8, low 1, high 4, L 8192.
    """

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_len: int

    def __post_init__(self) -> None:
        _check_positive(self, "factor", self.factor)
        _check_positive(self, "low_freq_factor", self.low_freq_factor)
        _check_positive(self, "high_freq_factor", self.high_freq_factor)
        if not self.high_freq_factor > self.low_freq_factor:
            raise ValueError(
                f"Llama3Scaling.high_freq_factor must be > low_freq_factor="
                f"{self.low_freq_factor}; got {self.high_freq_factor}"
            )
        _check_length(self, "original_max_len", self.original_max_len)

    def scale_frequencies(self, inv_freq: Tensor, *, base: float, rotary_dim: int) -> Tensor:
        """Llama 3.1 frequencies from the plain ones ``inv_freq`` (R/2,)."""
        wavelen = 2 * math.pi / inv_freq
        turns = self.original_max_len / wavelen  # full turns over the original context
        keep = (turns - self.low_freq_factor) / (self.high_freq_factor - self.low_freq_factor)
        blended = (1 - keep) * inv_freq / self.factor + keep * inv_freq
        long_wave = wavelen > self.original_max_len / self.low_freq_factor
        short_wave = wavelen < self.original_max_len / self.high_freq_factor
        scaled = torch.where(long_wave, inv_freq / self.factor, blended)
        return torch.where(short_wave, inv_freq, scaled)


RopeScaling = LinearScaling | NTKScaling | DynamicNTKScaling | YarnScaling | Llama3Scaling
_SCALINGS = (LinearScaling, NTKScaling, DynamicNTKScaling, YarnScaling, Llama3Scaling)
# A scaling's name in a config's plain dict (``{"kind": "yarn", "factor": 4.0, ...}``).
SCALING_KINDS: dict[str, type] = {
    "linear": LinearScaling,
    "ntk": NTKScaling,
    "dynamic": DynamicNTKScaling,
    "yarn": YarnScaling,
    "llama3": Llama3Scaling,
}


def scaling_from_dict(spec: dict | None, field: str = "rope_scaling") -> RopeScaling | None:
    """The scaling a config describes as ``{"kind": name, **fields}`` (None: plain RoPE);
    errors name ``field`` and the key."""
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise ValueError(f"{field}: expected a dict such as {{'kind': 'yarn', ...}} or None")
    kind = spec.get("kind")
    if kind not in SCALING_KINDS:
        raise unknown(f"{field}.kind", "RoPE scaling", kind, SCALING_KINDS)
    cls = SCALING_KINDS[kind]
    names = [f.name for f in dataclasses.fields(cls)]
    args = {k: v for k, v in spec.items() if k != "kind"}
    for key in args:
        if key not in names:
            raise ValueError(
                f"{field}.{key}: not a field of {kind!r} scaling{closest(key, names)}; "
                f"expected some of {', '.join(names)}"
            )
    try:
        return cls(**args)
    except (TypeError, ValueError) as exc:  # a required field missing, a value out of range
        raise ValueError(f"{field}: {kind!r} scaling: {exc}") from None


def scaling_to_dict(scaling: RopeScaling | None) -> dict | None:
    """The inverse of :func:`scaling_from_dict` (JSON-ready)."""
    if scaling is None:
        return None
    kind = next(k for k, cls in SCALING_KINDS.items() if type(scaling) is cls)
    return {"kind": kind, **dataclasses.asdict(scaling)}


# Scalings that fix the frequencies once, through their scale_frequencies method.
_STATIC_SCALINGS = (LinearScaling, YarnScaling, Llama3Scaling)


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
        scaling: ``None`` or one of :class:`LinearScaling`, :class:`NTKScaling`,
            :class:`DynamicNTKScaling`, :class:`YarnScaling`, :class:`Llama3Scaling`, for running
            past the trained context length.

    Positions are integer tensors of shape (T,), shared by the batch, or (B, T), one row per
    sequence (cached decoding with per-row offsets, left padding).

    Attributes:
        inv_freq: the float32 frequencies (R/2,), after any static scaling (under
            :class:`DynamicNTKScaling`, the plain ones used up to the original context).
        attention_factor: the scale on cos and sin (YaRN's; 1.0 for the other scalings).
    """

    inv_freq: Tensor

    def __init__(
        self,
        head_dim: int,
        *,
        base: float = 10000.0,
        rotary_dim: int | None = None,
        scaling: RopeScaling | None = None,
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
        if scaling is not None and not isinstance(scaling, _SCALINGS):
            raise TypeError(
                "scaling must be None, LinearScaling or NTKScaling, or DynamicNTKScaling, "
                f"YarnScaling or Llama3Scaling; got {type(scaling).__name__}"
            )
        effective_base = base
        if isinstance(scaling, NTKScaling | DynamicNTKScaling) and rotary_dim == 2:
            kind = type(scaling).__name__
            raise ValueError(f"{kind} needs rotary_dim > 2 (its exponent is R / (R - 2)); got 2")
        if isinstance(scaling, NTKScaling):
            effective_base = base * scaling.factor ** (rotary_dim / (rotary_dim - 2))
        self.head_dim = head_dim
        self.rotary_dim = rotary_dim
        self.base = base
        self.effective_base = effective_base  # the base the frequencies use, after NTK scaling
        self.scaling = scaling
        self.attention_factor = (
            scaling.effective_attention_factor if isinstance(scaling, YarnScaling) else 1.0
        )
        # Non-persistent: a function of the config, so it stays out of checkpoints (and a
        # checkpoint cannot silently override a changed base).
        self.register_buffer("inv_freq", self._compute_inv_freq(), persistent=False)

    def _compute_inv_freq(self, device: torch.device | None = None) -> Tensor:
        # Worked out in float64 and rounded once: float32 powers of the base are off by a few
        # units in the last place, which grows into visible angle error at large positions.
        inv_freq = _plain_inv_freq(self.effective_base, self.rotary_dim, device)
        if isinstance(self.scaling, _STATIC_SCALINGS):
            inv_freq = self.scaling.scale_frequencies(
                inv_freq, base=self.base, rotary_dim=self.rotary_dim
            )
        return inv_freq.float()

    def _inv_freq_f32(self) -> Tensor:
        # `module.to(torch.bfloat16)` also casts floating buffers. bf16 frequencies are off by up to
        # ~0.4%, which is radians of error a few hundred tokens in, so rebuild them instead.
        if self.inv_freq.dtype == torch.float32:
            return self.inv_freq
        return self._compute_inv_freq(self.inv_freq.device)

    def frequencies(self, *positions: Tensor) -> Tensor:
        """The float32 inverse frequencies (R/2,) used to rotate ``positions``.

        They depend on the positions only under :class:`DynamicNTKScaling`, through the largest
        position among all the given tensors; without positions, they are :attr:`inv_freq`.
        """
        for i, pos in enumerate(positions):
            _check_positions_dtype(pos, f"positions[{i}]")
        return self._frequencies(positions)

    def _frequencies(self, positions: tuple[Tensor, ...]) -> Tensor:
        inv_freq = self._inv_freq_f32()
        if not isinstance(self.scaling, DynamicNTKScaling):
            return inv_freq
        device = inv_freq.device
        # Shapes, not values, decide this branch, so a compiled decode step keeps one graph.
        maxima = [p.to(device).amax() for p in positions if p.numel() > 0]
        if not maxima:
            return inv_freq
        last = maxima[0]
        for m in maxima[1:]:
            last = torch.maximum(last, m)
        return self._dynamic_inv_freq(inv_freq, last + 1)

    def _dynamic_inv_freq(self, inv_freq: Tensor, seq_len: Tensor) -> Tensor:
        # Everything below is tensor arithmetic on the device, chosen by torch.where: no .item(),
        # no Python branch on the length, so no host sync and nothing for torch.compile to break
        # or specialise on. float64 keeps the base's large power exact enough (MPS has none).
        scaling = self.scaling
        assert isinstance(scaling, DynamicNTKScaling)
        r, original = self.rotary_dim, scaling.original_max_len
        wide = torch.float32 if inv_freq.device.type == "mps" else torch.float64
        n = seq_len.to(wide).clamp(min=original)  # the formula is only used past `original`
        growth = scaling.factor * n / original - (scaling.factor - 1)  # >= 1
        log_base = math.log(self.base) + growth.log() * (r / (r - 2))
        exponent = torch.arange(0, r, 2, dtype=wide, device=inv_freq.device) / r
        grown = torch.exp(-exponent * log_base).float()  # base'^(-2j / R)
        # Up to the original length, exactly the plain frequencies.
        return torch.where(seq_len > original, grown, inv_freq)

    def cos_sin(self, positions: Tensor, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
        """Return (cos, sin), each (..., T, R) for positions (..., T), in the rotate-half layout.

        Angles are computed in float32 (positions times frequencies lose too much in bf16/fp16)
        and the results are then cast to ``dtype`` (default float32). Both are multiplied by
        :attr:`attention_factor` (YaRN's scale; otherwise 1).
        """
        _check_positions_dtype(positions, "positions")
        return self._cos_sin(positions, self._frequencies((positions,)), dtype)

    def _cos_sin(
        self, positions: Tensor, inv_freq: Tensor, dtype: torch.dtype | None
    ) -> tuple[Tensor, Tensor]:
        pos = positions.to(device=inv_freq.device, dtype=torch.float32)
        angles = pos[..., None] * inv_freq  # (..., T, R/2)
        # Both halves share the angles: channel j and channel j + R/2 form one rotating pair.
        angles = torch.cat((angles, angles), dim=-1)  # (..., T, R)
        cos, sin = angles.cos(), angles.sin()
        if self.attention_factor != 1.0:
            cos, sin = cos * self.attention_factor, sin * self.attention_factor
        dtype = torch.float32 if dtype is None else dtype
        return cos.to(dtype), sin.to(dtype)

    def rotate(self, x: Tensor, positions: Tensor) -> Tensor:
        """Rotate x (B, H, T, D) by positions (T,) or (B, T); returns x's shape and dtype."""
        return self._rotate(x, positions, "x", "positions")

    def forward(
        self, q: Tensor, k: Tensor, q_positions: Tensor, k_positions: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Rotate queries and keys; ``k_positions`` defaults to ``q_positions``.

        q and k may differ in heads (grouped-query attention) and in length (a key cache longer
        than the new queries), in which case give ``k_positions`` explicitly. Under
        :class:`DynamicNTKScaling` both use the frequencies of the largest position among them,
        so their dot products still depend only on the position difference.
        """
        if k_positions is None:
            k_positions = q_positions
            k_pos_name = "k_positions (defaulted to q_positions)"
        else:
            k_pos_name = "k_positions"
        _check_positions_dtype(q_positions, "q_positions")
        _check_positions_dtype(k_positions, k_pos_name)
        both = (q_positions,) if k_positions is q_positions else (q_positions, k_positions)
        inv_freq = self._frequencies(both)
        q_rot = self._rotate(q, q_positions, "q", "q_positions", inv_freq)
        k_rot = self._rotate(k, k_positions, "k", k_pos_name, inv_freq)
        return q_rot, k_rot

    def _rotate(
        self,
        x: Tensor,
        positions: Tensor,
        x_name: str,
        pos_name: str,
        inv_freq: Tensor | None = None,
    ) -> Tensor:
        self._check_x(x, x_name)
        b, _, t, _ = x.shape
        _check_positions_dtype(positions, pos_name)
        expected = {1: (t,), 2: (b, t)}.get(positions.ndim)
        if tuple(positions.shape) != expected:
            raise ValueError(
                f"{pos_name} must have shape (T,) = ({t},) or (B, T) = ({b}, {t}) to match "
                f"{x_name} of shape {tuple(x.shape)}; got {tuple(positions.shape)}"
            )
        if inv_freq is None:
            inv_freq = self._frequencies((positions,))
        # Low-precision inputs are rotated in float32 and cast back once, so the rounding error
        # is one bf16/fp16 rounding of the result rather than one per multiply-add.
        compute_dtype = torch.promote_types(x.dtype, torch.float32)
        cos, sin = self._cos_sin(positions, inv_freq, compute_dtype)  # (T, R) or (B, T, R)
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
