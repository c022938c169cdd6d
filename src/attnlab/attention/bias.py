"""Additive score biases: ALiBi, T5 relative position buckets, and any tensor.

A bias adds a value to each attention score before the softmax. Like masks (see ``masks.py``),
each bias is defined once, as a function of (b, h, q_idx, kv_idx) index tensors, and that one
definition gives FlexAttention's ``score_mod``, the dense tensor SDPA needs, and the tiles the
chunked backend evaluates block by block (so a T5 bias at T=16k never exists as a T x T tensor).

Learnable biases (T5) expose their parameters through :meth:`Bias.params` so that backends with
a hand-written backward pass can return their gradients.

``bias.at_positions(q_pos, k_pos, tq_total, tk_total)`` views the bias of a long sequence at
the global positions of some of its queries and keys (a rank's shard in context parallelism),
learnable biases included: their gradients flow through the view.

Shapes: B batch, H heads, Tq queries, Tk keys. Dense biases are (B or 1, H or 1, Tq, Tk).
Query ``i`` sits at absolute position ``i + Tk - Tq`` (bottom-right alignment, as in masks).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from attnlab.attention.masks import (
    as_4d,
    broadcast_lookup,
    broadcast_tile,
    check_broadcast,
    check_position_counts,
    check_positions,
)

# A value function over broadcastable index tensors (b, h, q_idx, kv_idx) -> float tensor.
ValueFn = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]


class Bias:
    """Base class: subclasses implement :meth:`value` (and :meth:`params` when learnable)."""

    def value(self, offset: int) -> ValueFn:
        """Bias as a function of (b, h, q_idx, kv_idx); ``offset = Tk - Tq`` aligns queries."""
        raise NotImplementedError

    def params(self) -> tuple[Tensor, ...]:
        """Tensors the bias is computed from that may require gradients."""
        return ()

    def batch_size(self) -> int | None:
        """Batch size the bias was built for, or None when it does not depend on the batch."""
        return None

    def heads(self) -> int | None:
        """Number of heads the bias was built for, or None when shared by all heads."""
        return None

    @property
    def requires_grad(self) -> bool:
        return any(p.requires_grad for p in self.params())

    # -- evaluation -------------------------------------------------------------------------
    def score_mod(self, tq: int, tk: int) -> Callable[..., Tensor]:
        """FlexAttention ``score_mod(score, b, h, q_idx, kv_idx)``."""
        fn = self.value(tk - tq)
        return lambda score, b, h, q, k: score + fn(b, h, q, k)

    def block(self, batch: int, heads: int, q_idx: Tensor, kv_idx: Tensor, offset: int) -> Tensor:
        """Evaluate on the tile ``q_idx x kv_idx``: (B or 1, H or 1, tq, tk), float32."""
        device = q_idx.device
        nb = batch if self.batch_size() is not None else 1
        nh = heads if self.heads() is not None else 1
        out = self.value(offset)(
            torch.arange(nb, device=device)[:, None, None, None],
            torch.arange(nh, device=device)[None, :, None, None],
            q_idx[None, None, :, None],
            kv_idx[None, None, None, :],
        )
        return out.float().expand(nb, nh, q_idx.numel(), kv_idx.numel())

    def between(self, heads: int, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        """The bias (B, H or 1, T, S) of queries at absolute positions ``q_pos`` (1 or B, T)
        against keys at ``k_pos`` (B, S): for keys in cache slots rather than in sequence
        order (:mod:`attnlab.attention.static_cache`). Entries at negative key positions (no
        token there) are meaningless and must be masked."""
        if self.batch_size() is not None:
            raise TypeError(
                f"bias: a {type(self).__name__} depends on the batch layout and cannot follow "
                "cache positions"
            )
        device = k_pos.device
        nh = heads if self.heads() is not None else 1
        out = self.value(0)(
            torch.zeros(1, 1, 1, 1, dtype=torch.long, device=device),
            torch.arange(nh, device=device)[None, :, None, None],
            q_pos[:, None, :, None],
            k_pos[:, None, None, :],
        )
        return out.float().expand(k_pos.shape[0], nh, q_pos.shape[-1], k_pos.shape[-1])

    def dense(
        self, batch: int, heads: int, tq: int, tk: int, device: torch.device | str = "cpu"
    ) -> Tensor:
        """The bias as a float32 tensor (B or 1, H or 1, Tq, Tk)."""
        device = torch.device(device)
        return self.block(
            batch, heads, torch.arange(tq, device=device), torch.arange(tk, device=device), tk - tq
        )

    def accumulate_grad(
        self,
        grads: list[Tensor | None],
        batch: int,
        heads: int,
        q_idx: Tensor,
        kv_idx: Tensor,
        offset: int,
        grad_tile: Tensor,
    ) -> None:
        """Add d(loss)/d(params) for one tile, given d(loss)/d(bias tile) (B, H, tq, tk)."""
        params = self.params()
        needed = [p for p in params if p.requires_grad]
        if not needed:
            return
        with torch.enable_grad():
            tile = self.block(batch, heads, q_idx, kv_idx, offset)
            got = torch.autograd.grad(tile, needed, _reduce_to(grad_tile, tile.shape))
        it = iter(got)
        for i, p in enumerate(params):
            if p.requires_grad:
                g = next(it)
                grads[i] = g if grads[i] is None else grads[i] + g

    def __add__(self, other: Bias) -> Bias:
        if not isinstance(other, Bias):
            return NotImplemented
        return _Sum(self, other)

    def to(self, device: torch.device) -> Bias:
        """The same bias with its tensors on ``device``."""
        return self

    def at_positions(
        self, q_positions: Tensor, k_positions: Tensor, tq_total: int, tk_total: int
    ) -> Bias:
        """This bias over a (``tq_total``, ``tk_total``) score matrix, seen at some of its rows
        and columns: the returned bias's query ``i`` and key ``j`` are the global query
        ``q_positions[i]`` and key ``k_positions[j]``, aligned by the global offset
        ``tk_total - tq_total``. Learnable biases keep their parameters (and gradients).
        """
        q_pos, k_pos = check_positions(q_positions, k_positions, tq_total, tk_total)
        return _AtPositions(self, q_pos, k_pos, tq_total, tk_total)


def _reduce_to(grad: Tensor, shape: torch.Size) -> Tensor:
    """Sum a gradient over the dimensions that were broadcast from size 1."""
    dims = [i for i, (g, s) in enumerate(zip(grad.shape, shape, strict=True)) if s == 1 and g > 1]
    return grad.sum(dims, keepdim=True) if dims else grad


# -- tensor --------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class TensorBias(Bias):
    """Any additive tensor broadcastable to (B, H, Tq, Tk); may require gradients."""

    tensor: Tensor

    def value(self, offset: int) -> ValueFn:
        return broadcast_lookup(self.tensor)

    def params(self) -> tuple[Tensor, ...]:
        return (self.tensor,)

    def batch_size(self) -> int | None:
        return self.tensor.shape[0] if self.tensor.shape[0] > 1 else None

    def heads(self) -> int | None:
        return self.tensor.shape[1] if self.tensor.shape[1] > 1 else None

    def block(self, batch: int, heads: int, q_idx: Tensor, kv_idx: Tensor, offset: int) -> Tensor:
        return broadcast_tile(self.tensor, q_idx, kv_idx).float()

    def accumulate_grad(self, grads, batch, heads, q_idx, kv_idx, offset, grad_tile) -> None:
        # Add the tile's gradient at its entries instead of autograd's full-size zeros per tile.
        # The indices need not be contiguous (a view at positions maps a tile to any rows and
        # columns), so they are scattered with index_put_, accumulating repeats.
        t = self.tensor
        if not t.requires_grad:
            return
        if grads[0] is None:
            grads[0] = torch.zeros_like(t)
        g = _reduce_to(grad_tile, torch.Size((t.shape[0], t.shape[1], *grad_tile.shape[2:])))
        if t.shape[2] == 1:
            g, q_idx = g.sum(2, keepdim=True), q_idx.new_zeros(1)
        if t.shape[3] == 1:
            g, kv_idx = g.sum(3, keepdim=True), kv_idx.new_zeros(1)
        device = q_idx.device
        index = (
            torch.arange(t.shape[0], device=device)[:, None, None, None],
            torch.arange(t.shape[1], device=device)[None, :, None, None],
            q_idx[None, None, :, None],
            kv_idx[None, None, None, :],
        )
        grads[0].index_put_(index, g.to(t.dtype), accumulate=True)

    def to(self, device: torch.device) -> Bias:
        return TensorBias(self.tensor.to(device))


def from_tensor(bias: Tensor) -> TensorBias:
    """Wrap a floating tensor broadcastable to (B, H, Tq, Tk)."""
    if not isinstance(bias, Tensor) or not bias.dtype.is_floating_point:
        got = bias.dtype if isinstance(bias, Tensor) else type(bias).__name__
        raise TypeError(f"bias: expected a floating-point tensor, got {got}")
    return TensorBias(as_4d(bias, "bias"))


# -- ALiBi ---------------------------------------------------------------------------------------
def alibi_slopes(n_heads: int) -> Tensor:
    """Head slopes of ALiBi (Press et al. 2022, "Train Short, Test Long").

    For a power of two n the slopes are the geometric sequence 2^(-8/n), 2^(-16/n), ...; otherwise
    the paper takes the slopes of the closest smaller power of two and fills the remaining heads
    with every other slope of the next power of two.
    """
    if not isinstance(n_heads, int) or n_heads < 1:
        raise ValueError(f"n_heads: expected a positive int, got {n_heads!r}")

    def powers(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    closest = 2 ** math.floor(math.log2(n_heads))
    slopes = powers(closest)
    if closest < n_heads:
        slopes += powers(2 * closest)[0::2][: n_heads - closest]
    return torch.tensor(slopes, dtype=torch.float32)


@dataclass(frozen=True, eq=False)
class ALiBi(Bias):
    """Linear distance penalty ``-slope_h * |i - j|`` per head; no parameters.

    For causal attention this equals the paper's ``slope_h * (j - i)``; the absolute value
    gives the symmetric form used by bidirectional encoders.
    """

    slopes: Tensor  # (H,)

    def value(self, offset: int) -> ValueFn:
        slopes = self.slopes
        return lambda b, h, q, k: -slopes[h] * (q + offset - k).abs()

    def heads(self) -> int:
        return self.slopes.shape[0]

    def to(self, device: torch.device) -> Bias:
        return ALiBi(self.slopes.to(device))


def alibi(n_heads: int) -> ALiBi:
    """ALiBi bias for ``n_heads`` heads with the paper's slopes."""
    return ALiBi(alibi_slopes(n_heads))


# -- T5 relative position buckets ----------------------------------------------------------------
def t5_bucket(
    relative_position: Tensor, *, bidirectional: bool, num_buckets: int, max_distance: int
) -> Tensor:
    """Map ``key_pos - query_pos`` to a bucket (Raffel et al. 2020, T5).

    Half the buckets hold exact small distances; the rest grow logarithmically up to
    ``max_distance``, beyond which all distances share the last bucket. Bidirectional buckets
    spend half the range on each direction; causal ones clamp future positions to distance 0.
    """
    bucket = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        bucket = bucket + (relative_position > 0).long() * num_buckets
        n = relative_position.abs()
    else:
        n = (-relative_position).clamp(min=0)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    # Clamp to 1 first: log(0) is -inf, and those entries take the exact branch anyway.
    log_ratio = torch.log(n.float().clamp(min=1) / max_exact) / math.log(max_distance / max_exact)
    large = max_exact + (log_ratio * (num_buckets - max_exact)).long()
    large = large.clamp(max=num_buckets - 1)
    return bucket + torch.where(is_small, n, large)


@dataclass(frozen=True, eq=False)
class T5Bias(Bias):
    """A learned scalar per (relative-position bucket, head); see :class:`RelativePositionBias`."""

    weight: Tensor  # (num_buckets, H)
    bidirectional: bool
    num_buckets: int
    max_distance: int

    def value(self, offset: int) -> ValueFn:
        w, kw = self.weight, self._bucket_kwargs()

        def fn(b: Tensor, h: Tensor, q: Tensor, k: Tensor) -> Tensor:
            return w[t5_bucket(k - q - offset, **kw), h]

        return fn

    def _bucket_kwargs(self) -> dict:
        return {
            "bidirectional": self.bidirectional,
            "num_buckets": self.num_buckets,
            "max_distance": self.max_distance,
        }

    def block(self, batch: int, heads: int, q_idx: Tensor, kv_idx: Tensor, offset: int) -> Tensor:
        # Look up buckets once per tile and gather all heads: (tq, tk, H) -> (1, H, tq, tk).
        rel = kv_idx[None, :] - q_idx[:, None] - offset
        bucket = t5_bucket(rel, **self._bucket_kwargs())
        return self.weight[bucket].permute(2, 0, 1).unsqueeze(0).float()

    def params(self) -> tuple[Tensor, ...]:
        return (self.weight,)

    def heads(self) -> int:
        return self.weight.shape[1]

    def to(self, device: torch.device) -> Bias:
        return T5Bias(self.weight.to(device), **self._bucket_kwargs())


class RelativePositionBias(nn.Module):
    """T5's learned relative position bias; ``module()`` gives the :class:`Bias` to attend with.

    Args:
        n_heads: number of attention heads (one learned scalar per bucket and head).
        num_buckets: number of relative position buckets (T5 uses 32).
        max_distance: distances at or beyond this share the last bucket (T5 uses 128).
        bidirectional: encoder-style buckets for both directions; False for causal decoders.
    """

    def __init__(
        self,
        n_heads: int,
        *,
        num_buckets: int = 32,
        max_distance: int = 128,
        bidirectional: bool = True,
    ) -> None:
        super().__init__()
        if num_buckets < 4:
            raise ValueError(f"num_buckets: expected at least 4, got {num_buckets}")
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.bidirectional = bidirectional
        self.weight = nn.Parameter(torch.empty(num_buckets, n_heads))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self) -> T5Bias:
        return T5Bias(self.weight, self.bidirectional, self.num_buckets, self.max_distance)


# -- sums ----------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class _Sum(Bias):
    a: Bias
    b: Bias

    def value(self, offset: int) -> ValueFn:
        fa, fb = self.a.value(offset), self.b.value(offset)
        return lambda b, h, q, k: fa(b, h, q, k) + fb(b, h, q, k)

    def block(self, batch: int, heads: int, q_idx: Tensor, kv_idx: Tensor, offset: int) -> Tensor:
        return self.a.block(batch, heads, q_idx, kv_idx, offset) + self.b.block(
            batch, heads, q_idx, kv_idx, offset
        )

    def params(self) -> tuple[Tensor, ...]:
        return self.a.params() + self.b.params()

    def batch_size(self) -> int | None:
        return self.a.batch_size() or self.b.batch_size()

    def heads(self) -> int | None:
        return self.a.heads() or self.b.heads()

    def accumulate_grad(self, grads, batch, heads, q_idx, kv_idx, offset, grad_tile) -> None:
        na = len(self.a.params())
        ga, gb = grads[:na], grads[na:]
        self.a.accumulate_grad(ga, batch, heads, q_idx, kv_idx, offset, grad_tile)
        self.b.accumulate_grad(gb, batch, heads, q_idx, kv_idx, offset, grad_tile)
        grads[:] = ga + gb

    def to(self, device: torch.device) -> Bias:
        return _Sum(self.a.to(device), self.b.to(device))


# -- a bias seen at global positions ------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class _AtPositions(Bias):
    """``bias`` of a (tq_total, tk_total) score matrix at the rows ``q_positions`` and the
    columns ``k_positions`` (see :meth:`Bias.at_positions`). Tiles and gradients are computed by
    the viewed bias at the global positions; the local offset a backend passes is ignored."""

    bias: Bias
    q_positions: Tensor  # (tq,) global position of each local query
    k_positions: Tensor  # (tk,) global position of each local key
    tq_total: int
    tk_total: int

    @property
    def global_offset(self) -> int:
        return self.tk_total - self.tq_total

    def value(self, offset: int) -> ValueFn:
        inner, qp, kp = self.bias.value(self.global_offset), self.q_positions, self.k_positions
        return lambda b, h, q, k: inner(b, h, qp[q], kp[k])

    def block(self, batch: int, heads: int, q_idx: Tensor, kv_idx: Tensor, offset: int) -> Tensor:
        q_pos, k_pos = self.q_positions[q_idx], self.k_positions[kv_idx]
        return self.bias.block(batch, heads, q_pos, k_pos, self.global_offset)

    def params(self) -> tuple[Tensor, ...]:
        return self.bias.params()

    def batch_size(self) -> int | None:
        return self.bias.batch_size()

    def heads(self) -> int | None:
        return self.bias.heads()

    def accumulate_grad(self, grads, batch, heads, q_idx, kv_idx, offset, grad_tile) -> None:
        q_pos, k_pos = self.q_positions[q_idx], self.k_positions[kv_idx]
        self.bias.accumulate_grad(grads, batch, heads, q_pos, k_pos, self.global_offset, grad_tile)

    def to(self, device: torch.device) -> Bias:
        return _AtPositions(
            self.bias.to(device),
            self.q_positions.to(device),
            self.k_positions.to(device),
            self.tq_total,
            self.tk_total,
        )


def check_bias(bias: Bias, batch: int, heads: int, tq: int, tk: int) -> None:
    """Raise ValueError when ``bias`` cannot apply to a (B, H, Tq, Tk) score matrix."""
    n, h = bias.batch_size(), bias.heads()
    if n is not None and n != batch:
        raise ValueError(f"bias: built for batch size {n}, but q has batch size {batch}")
    if h is not None and h != heads:
        raise ValueError(f"bias: built for {h} heads, but q has {heads} heads")
    for leaf in _leaves(bias):
        if isinstance(leaf, TensorBias):
            check_broadcast(leaf.tensor, "bias", (batch, heads, tq, tk))
        elif isinstance(leaf, _AtPositions):
            check_position_counts("bias", leaf.q_positions, leaf.k_positions, tq, tk)
            check_bias(leaf.bias, batch, heads, leaf.tq_total, leaf.tk_total)


def _leaves(bias: Bias) -> list[Bias]:
    if isinstance(bias, _Sum):
        return _leaves(bias.a) + _leaves(bias.b)
    return [bias]


def tensors_of(bias: Bias) -> list[Tensor]:
    """Every tensor a bias holds (slopes, tables, user tensors, positions of a view)."""
    out = []
    for leaf in _leaves(bias):
        for v in vars(leaf).values():
            if isinstance(v, Tensor):
                out.append(v)
            elif isinstance(v, Bias):  # the bias a view at positions looks at
                out += tensors_of(v)
    return out
