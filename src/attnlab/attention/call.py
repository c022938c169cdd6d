"""One attention call, checked and normalised: what every backend receives.

``attend()`` turns its arguments into an :class:`AttentionCall` once; backends then read shapes
and options from it instead of re-deriving them, and dispatch reasons about it as data.

Shapes: B batch, H query heads, Hkv key/value heads (H = G * Hkv, G query heads per key/value
head), Tq queries, Tk keys, D query/key head dim, Dv value head dim.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from attnlab.attention import bias as bias_lib
from attnlab.attention import masks as mask_lib
from attnlab.attention.bias import Bias
from attnlab.attention.masks import Mask


@dataclass(frozen=True, eq=False)
class AttentionCall:
    q: Tensor  # (B, H, Tq, D)
    k: Tensor  # (B, Hkv, Tk, D)
    v: Tensor  # (B, Hkv, Tk, Dv)
    mask: Mask | None
    bias: Bias | None
    scale: float
    dropout_p: float
    return_weights: bool
    softcap: float | None = None  # scores become softcap * tanh(scores / softcap) (Gemma 2)
    sinks: Tensor | None = None  # (H,) a learned logit per head in every softmax (gpt-oss)

    @property
    def batch(self) -> int:
        return self.q.shape[0]

    @property
    def heads(self) -> int:
        return self.q.shape[1]

    @property
    def kv_heads(self) -> int:
        return self.k.shape[1]

    @property
    def groups(self) -> int:
        return self.heads // self.kv_heads

    @property
    def tq(self) -> int:
        return self.q.shape[2]

    @property
    def tk(self) -> int:
        return self.k.shape[2]

    @property
    def offset(self) -> int:
        """Absolute position of query 0: queries are the last Tq of the Tk positions."""
        return self.tk - self.tq

    @property
    def device(self) -> torch.device:
        return self.q.device

    @property
    def dtype(self) -> torch.dtype:
        return self.q.dtype

    @property
    def needs_grad(self) -> bool:
        """True when autograd will want gradients from this call."""
        return torch.is_grad_enabled() and (
            self.q.requires_grad
            or self.k.requires_grad
            or self.v.requires_grad
            or (self.bias is not None and self.bias.requires_grad)
            or (self.sinks is not None and self.sinks.requires_grad)
        )

    @property
    def bias_needs_grad(self) -> bool:
        return torch.is_grad_enabled() and self.bias is not None and self.bias.requires_grad

    @property
    def plain_causal(self) -> bool:
        """Only a causal mask with square scores, so built-in causal kernels apply directly."""
        return (
            self.bias is None
            and self.mask is not None
            and self.mask.is_causal
            and self.tq == self.tk
        )

    def dense_mask(self) -> Tensor | None:
        """Boolean (B or 1, H or 1, Tq, Tk), True = attend; None without a mask."""
        if self.mask is None:
            return None
        return self.mask.dense(self.batch, self.tq, self.tk, self.device)

    def dense_bias(self) -> Tensor | None:
        """Float32 (B or 1, H or 1, Tq, Tk); None without a bias. Differentiable."""
        if self.bias is None:
            return None
        return self.bias.dense(self.batch, self.heads, self.tq, self.tk, self.device)


def make_call(
    q: object,
    k: object,
    v: object,
    *,
    mask: Mask | Tensor | None,
    bias: Bias | Tensor | None,
    scale: float | None,
    dropout_p: float,
    return_weights: bool,
    softcap: float | None = None,
    sinks: Tensor | None = None,
) -> AttentionCall:
    """Check every argument of ``attend`` and build the call; errors name the argument."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(
                f"{name}: expected 4 dims (B, H, T, D), got {t.dim()} dims with shape "
                f"{tuple(t.shape)}"
            )
        if not t.dtype.is_floating_point:
            raise TypeError(f"{name}: expected a floating-point tensor, got {t.dtype}")
    for name, t in (("k", k), ("v", v)):
        if t.device != q.device:
            raise ValueError(f"{name}: expected device {q.device} like q, got {t.device}")
        if t.dtype != q.dtype:
            raise TypeError(f"{name}: expected dtype {q.dtype} like q, got {t.dtype}")
    b, h, _, d = q.shape
    if d == 0:
        # No default scale (1 / sqrt(0)) and no scores: an empty head dim is a mistake.
        raise ValueError(f"q: expected head dim D >= 1, got shape {tuple(q.shape)}")
    for name, t in (("k", k), ("v", v)):
        if t.shape[0] != b:
            raise ValueError(f"{name}: expected batch size {b} like q, got {t.shape[0]}")
    if k.shape[3] != d:
        raise ValueError(f"k: expected head dim {d} like q, got {k.shape[3]}")
    if v.shape[1] != k.shape[1] or v.shape[2] != k.shape[2]:
        raise ValueError(
            f"v: expected (B, Hkv, Tk) = {tuple(k.shape[:3])} like k, got {tuple(v.shape[:3])}"
        )
    hkv = k.shape[1]
    if hkv == 0 or h % hkv:
        raise ValueError(
            f"k: query heads H={h} must be a multiple of key/value heads Hkv={hkv} "
            f"(grouped-query attention)"
        )

    if isinstance(mask, Tensor):
        mask = mask_lib.from_tensor(mask)
    elif mask is not None and not isinstance(mask, Mask):
        raise TypeError(
            f"mask: expected an attnlab Mask, a boolean tensor or None, got {type(mask).__name__}"
        )
    if isinstance(bias, Tensor):
        bias = bias_lib.from_tensor(bias)
    elif bias is not None and not isinstance(bias, Bias):
        raise TypeError(
            f"bias: expected an attnlab Bias, a float tensor or None, got {type(bias).__name__}"
        )
    tq, tk = q.shape[2], k.shape[2]
    if mask is not None:
        mask_lib.check_mask(mask, b, h, tq, tk)
        _check_devices("mask", mask_lib.tensors_of(mask), q.device)
    if bias is not None:
        bias_lib.check_bias(bias, b, h, tq, tk)
        _check_devices("bias", bias_lib.tensors_of(bias), q.device)

    if scale is None:
        scale = 1.0 / math.sqrt(d)
    elif (
        isinstance(scale, bool)
        or not isinstance(scale, (int, float))
        or not 0 < scale < math.inf  # also refuses NaN
    ):
        raise ValueError(f"scale: expected a positive finite float or None, got {scale!r}")
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)):
        raise TypeError(f"dropout_p: expected a float in [0, 1), got {dropout_p!r}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p: expected a float in [0, 1), got {dropout_p!r}")
    if softcap is not None and (
        isinstance(softcap, bool)
        or not isinstance(softcap, (int, float))
        or not 0 < softcap < math.inf
    ):
        raise ValueError(f"softcap: expected a positive finite float or None, got {softcap!r}")
    if sinks is not None:
        if not isinstance(sinks, Tensor) or not sinks.dtype.is_floating_point:
            got = sinks.dtype if isinstance(sinks, Tensor) else type(sinks).__name__
            raise TypeError(f"sinks: expected a floating-point tensor (H,), got {got}")
        if sinks.shape != (h,):
            raise ValueError(
                f"sinks: expected one logit per query head, shape ({h},), got {tuple(sinks.shape)}"
            )
        _check_devices("sinks", [sinks], q.device)
    return AttentionCall(
        q,
        k,
        v,
        mask,
        bias,
        float(scale),
        float(dropout_p),
        bool(return_weights),
        None if softcap is None else float(softcap),
        sinks,
    )


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Sums over keys (scores, softmax statistics, running sums, gradients) are computed in at
    least float32; float64 stays float64."""
    return torch.promote_types(dtype, torch.float32)


def _check_devices(name: str, tensors: list[Tensor], device: torch.device) -> None:
    for t in tensors:
        if t.device != device:
            raise ValueError(
                f"{name}: expected its tensors on device {device} like q, got {t.device}"
            )
