"""Memory-efficient attention in pure PyTorch: online softmax over tiles, forward and backward.

The forward pass walks query tiles and, for each, the key tiles it may see, keeping a running
row maximum ``m``, normaliser ``l`` and output accumulator (Milakov & Gimelshein 2018 "Online
normalizer calculation for softmax"; Rabe & Staats 2021 "Self-attention does not need O(n^2)
memory"; Dao et al. 2022 FlashAttention). Only the output and the log-sum-exp per row are kept.
The backward pass recomputes each tile's probabilities from the saved log-sum-exp
(FlashAttention-2, Dao 2023), so extra memory is O(tile) rather than O(Tq * Tk).

Tiles whose every entry is masked are skipped, and tiles whose every entry is allowed skip the
masking, so causal attention does about half the work and a sliding window of width w about
w / Tk of it. Masks and biases are evaluated per tile from their index-function definitions,
so nothing of size Tq * Tk is ever built. Learnable biases get their gradients tile by tile.

Precision: float16 and bfloat16 inputs are upcast once per call and every tile product,
softmax statistic and gradient is computed in float32, like the reference: a float16 score
q · k overflows above 65504, and a bfloat16 score keeps 8 bits, so large logits would give NaN
or errors far beyond the reference's. The backward pass uses the float32 output for its
correction term rowsum(dO * O). The cost is O(T * D) memory for the float32 copies.

Layout: grouped-query heads are folded into the rows of each tile, so one batched matmul per
tile serves all G query heads of a key/value head and sums their key/value gradients for free.

Shapes: B batch, H query heads, Hkv key/value heads, G = H / Hkv, Tq queries, Tk keys,
D head dim, Dv value head dim, bq / bk query / key tile lengths, R = G * bq tile rows.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from attnlab.attention.backends.base import Backend, Capabilities
from attnlab.attention.bias import Bias
from attnlab.attention.call import AttentionCall, accumulation_dtype
from attnlab.attention.masks import Mask, value_key

FULL, PARTIAL = 1, 0

# Tile length for queries and keys, per device type. On 2 CPU cores 128 x 128 tiles measured
# fastest for causal fwd+bwd at T = 1024 and within 3% of the best at T = 4096, and small tiles
# waste the least work at the edges of a sliding window. On a GPU every tile costs a dozen kernel
# launches, so tiles must be large enough for the launches to stay hidden behind the math.
TILES = {"cpu": 128, "cuda": 1024}
DEFAULT_TILE = 512


def default_tile(device: torch.device) -> int:
    return TILES.get(device.type, DEFAULT_TILE)


@dataclass(frozen=True, eq=False)
class _Spec:
    """Everything about a call except the tensors autograd tracks."""

    mask: Mask | None
    bias: Bias | None
    scale: float
    batch: int
    heads: int
    kv_heads: int
    tq: int
    tk: int
    q_block: int
    kv_block: int
    softcap: float | None = None  # scores soft-capped before the bias (Gemma 2)
    sinks: bool = False  # a sink logit per head joins each row's softmax (passed as a tensor)

    @classmethod
    def of_call(
        cls,
        call: AttentionCall,
        mask: Mask | None,
        bias: Bias | None,
        q_block: int,
        kv_block: int,
        sinks: bool = False,
    ) -> _Spec:
        """The spec of ``call``'s shapes, scale and softcap with this ``mask`` and ``bias``."""
        return cls(
            mask,
            bias,
            call.scale,
            call.batch,
            call.heads,
            call.kv_heads,
            call.tq,
            call.tk,
            q_block,
            kv_block,
            call.softcap,
            sinks,
        )

    @property
    def groups(self) -> int:
        return self.heads // self.kv_heads

    @property
    def offset(self) -> int:
        return self.tk - self.tq

    def rows(self, i: int) -> slice:
        return slice(i * self.q_block, min((i + 1) * self.q_block, self.tq))

    def cols(self, j: int) -> slice:
        return slice(j * self.kv_block, min((j + 1) * self.kv_block, self.tk))

    def n_q_blocks(self) -> int:
        return -(-self.tq // self.q_block)

    def n_kv_blocks(self) -> int:
        return -(-self.tk // self.kv_block)


def _fold(x: Tensor, groups: int) -> Tensor:
    """(B or 1, H or 1, bq, X) -> (B or 1, Hkv or 1, G * bq, X): heads of a group become rows."""
    b, h, bq, n = x.shape
    if h == 1:
        return x.expand(b, groups, bq, n).reshape(b, 1, groups * bq, n) if groups > 1 else x
    return x.reshape(b, h // groups, groups * bq, n)


def _unfold(x: Tensor, groups: int) -> Tensor:
    """(B, Hkv, G * bq, X) -> (B, H, bq, X)."""
    b, hkv, r, n = x.shape
    return x.reshape(b, hkv * groups, r // groups, n)


def _tile_rows(x: Tensor, rows: slice, groups: int) -> Tensor:
    """Rows ``rows`` of a (B, H, T, X) tensor in folded layout (B, Hkv, G * bq, X)."""
    b, h, _, n = x.shape
    # Explicit sizes (no -1): a reshape cannot infer a dimension of an empty (B = 0) tensor.
    return x[:, :, rows].reshape(b, h // groups, groups * (rows.stop - rows.start), n)


def _acc(x: Tensor) -> Tensor:
    return x.to(accumulation_dtype(x.dtype))


def _plan(spec: _Spec, device: torch.device) -> list[list[tuple[int, int]]]:
    """For each query tile, the key tiles to visit with FULL or PARTIAL masking."""
    key = value_key(spec.mask) if spec.mask is not None else None
    if key is None:
        return _build_plan(spec, device)
    return _cached_plan(key, spec.tq, spec.tk, spec.q_block, spec.kv_block, device)


@functools.lru_cache(maxsize=64)
def _cached_plan(mask: Mask, tq: int, tk: int, q_block: int, kv_block: int, device: torch.device):
    # Position-only masks (causal, sliding window) give the same plan for every call of a shape,
    # so training steps and repeated calls skip re-evaluating the mask.
    spec = _Spec(mask, None, 1.0, 1, 1, 1, tq, tk, q_block, kv_block)
    return _build_plan(spec, device)


def _build_plan(spec: _Spec, device: torch.device) -> list[list[tuple[int, int]]]:
    nq, nk = spec.n_q_blocks(), spec.n_kv_blocks()
    if spec.mask is None:
        return [[(j, FULL) for j in range(nk)] for _ in range(nq)]
    plan = []
    k_idx = torch.arange(spec.tk, device=device)
    pad = nk * spec.kv_block - spec.tk
    for i in range(nq):
        rows = spec.rows(i)
        q_idx = torch.arange(rows.start, rows.stop, device=device)
        row = spec.mask.block(spec.batch, q_idx, k_idx, spec.offset)  # (B|1, H|1, bq, Tk)
        # Pad keys to whole tiles, then ask per tile: any entry allowed? every entry allowed?
        tiles = F.pad(row, (0, pad), value=False).unflatten(-1, (nk, spec.kv_block))
        any_ = tiles.any(-1).flatten(0, 2).any(0).tolist()
        full = F.pad(row, (0, pad), value=True).unflatten(-1, (nk, spec.kv_block))
        all_ = full.all(-1).flatten(0, 2).all(0).tolist()
        plan.append([(j, FULL if all_[j] else PARTIAL) for j in range(nk) if any_[j]])
    return plan


def _scores(
    spec: _Spec, qi: Tensor, kj: Tensor, i: int, j: int, kind: int, device: torch.device
) -> tuple[Tensor, Tensor | None]:
    """Tile scores (B, Hkv, R, bk), soft-capped, biased, masked entries at -inf; and with
    soft-capping the derivative of the capped scores by the raw ones (else None).

    ``qi`` is already scaled and, like ``kj``, at accumulation precision, so the product never
    rounds to half precision (fp16 overflows above 65504; bf16 keeps 8 bits of a logit)."""
    s = qi @ kj.transpose(-2, -1)
    slope = None
    if spec.softcap is not None:
        t = torch.tanh(s / spec.softcap)
        s, slope = spec.softcap * t, 1 - t * t
    if spec.bias is None and kind == FULL:
        return s, slope
    q_idx = torch.arange(spec.rows(i).start, spec.rows(i).stop, device=device)
    k_idx = torch.arange(spec.cols(j).start, spec.cols(j).stop, device=device)
    if spec.bias is not None:
        tile = spec.bias.block(spec.batch, spec.heads, q_idx, k_idx, spec.offset)
        s = s + _fold(tile, spec.groups)
    if kind == PARTIAL:
        allowed = _fold(spec.mask.block(spec.batch, q_idx, k_idx, spec.offset), spec.groups)
        s = s.masked_fill(~allowed, float("-inf"))
    return s, slope


def _sink_rows(sinks: Tensor, batch: int, spec: _Spec, rows: slice, dtype) -> Tensor:
    """The sink logit of every row of a tile in folded layout: (B, Hkv, G * R, 1)."""
    r = rows.stop - rows.start
    full = sinks.to(dtype).view(1, spec.heads, 1, 1).expand(batch, spec.heads, r, 1)
    return full.reshape(batch, spec.kv_heads, spec.groups * r, 1)


def _upcast(spec: _Spec, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """q already scaled, k and v, at accumulation precision (no copy for float32 k and v).

    Half-precision inputs are upcast once per call, O(T * D) memory, so that every tile product
    is exact to float32 like the reference's, instead of rounding scores to half precision."""
    return _acc(q) * spec.scale, _acc(k), _acc(v)


def _forward(
    spec: _Spec, q: Tensor, k: Tensor, v: Tensor, plan: list, sinks: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Output (B, H, Tq, Dv) and log-sum-exp (B, H, Tq, 1) of the scores (and the sinks),
    both at accumulation precision."""
    g, device = spec.groups, q.device
    b, dv = q.shape[0], v.shape[-1]
    acc_dtype = accumulation_dtype(q.dtype)
    out = torch.empty(b, spec.heads, spec.tq, dv, dtype=acc_dtype, device=device)
    lse = torch.empty(b, spec.heads, spec.tq, 1, dtype=acc_dtype, device=device)
    q, k, v = _upcast(spec, q, k, v)
    for i, tiles in enumerate(plan):
        rows = spec.rows(i)
        qi = _tile_rows(q, rows, g)  # (B, Hkv, R, D)
        r = qi.shape[2]
        if sinks is None:
            m = torch.full((b, spec.kv_heads, r, 1), float("-inf"), dtype=acc_dtype, device=device)
            l = torch.zeros(b, spec.kv_heads, r, 1, dtype=acc_dtype, device=device)
        else:  # the sink is one more column of every row: start the online softmax with it
            m = _sink_rows(sinks, b, spec, rows, acc_dtype)
            l = torch.ones(b, spec.kv_heads, r, 1, dtype=acc_dtype, device=device)
        acc = torch.zeros(b, spec.kv_heads, r, dv, dtype=acc_dtype, device=device)
        for j, kind in tiles:
            cols = spec.cols(j)
            s, _ = _scores(spec, qi, k[:, :, cols], i, j, kind, device)  # (B, Hkv, R, bk)
            m_new = torch.maximum(m, s.amax(-1, keepdim=True))
            # Rows with nothing allowed so far keep m = -inf; use 0 there to avoid inf - inf.
            m_safe = m_new.masked_fill(m_new == float("-inf"), 0.0)
            p = torch.exp(s - m_safe)
            alpha = torch.exp(m - m_safe)
            l = l * alpha + p.sum(-1, keepdim=True)
            acc = acc * alpha + p @ v[:, :, cols]
            m = m_new
        empty = l == 0
        out[:, :, rows] = _unfold(acc / l.masked_fill(empty, 1.0), g)
        # Empty rows get lse = +inf, so recomputed probabilities exp(s - lse) are exactly 0.
        lse[:, :, rows] = _unfold((m + torch.log(l)).masked_fill(empty, float("inf")), g)
    return out, lse


def _backward(
    spec: _Spec,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    dout: Tensor,
    plan: list,
    sinks: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, list[Tensor | None], Tensor | None]:
    g, device = spec.groups, q.device
    dtypes = q.dtype, k.dtype, v.dtype
    acc_dtype = accumulation_dtype(q.dtype)
    dq = torch.zeros(q.shape, dtype=acc_dtype, device=device)
    dk = torch.zeros(k.shape, dtype=acc_dtype, device=device)
    dv = torch.zeros(v.shape, dtype=acc_dtype, device=device)
    bias_params = spec.bias.params() if spec.bias is not None else ()
    bias_grads: list[Tensor | None] = [None] * len(bias_params)
    dout = _acc(dout)
    # D_i = rowsum(dO_i * O_i): the softmax backward's correction term, one per query row. O is
    # the unrounded output: with peaked softmax rows dP - D cancels, and a half-precision O
    # would leave mostly its rounding error in the gradients of q and k.
    delta = (dout * out).sum(-1, keepdim=True)  # (B, H, Tq, 1)
    # The same scaled, upcast q, k, v as the forward pass, so recomputed scores match it exactly.
    q, k, v = _upcast(spec, q, k, v)
    for i, tiles in enumerate(plan):
        rows = spec.rows(i)
        qi = _tile_rows(q, rows, g)  # (B, Hkv, R, D)
        doi = _tile_rows(dout, rows, g)  # (B, Hkv, R, Dv)
        lse_i = _tile_rows(lse, rows, g)  # (B, Hkv, R, 1)
        delta_i = _tile_rows(delta, rows, g)  # (B, Hkv, R, 1)
        dqi = torch.zeros(qi.shape, dtype=acc_dtype, device=device)
        for j, kind in tiles:
            cols = spec.cols(j)
            kj, vj = k[:, :, cols], v[:, :, cols]
            s, slope = _scores(spec, qi, kj, i, j, kind, device)
            p = torch.exp(s - lse_i)  # (B, Hkv, R, bk)
            dv[:, :, cols] += p.transpose(-2, -1) @ doi
            dp = doi @ vj.transpose(-2, -1)  # (B, Hkv, R, bk)
            ds = p * (dp - delta_i)  # d(loss)/d(biased scores)
            if spec.bias is not None and bias_grads:
                q_idx = torch.arange(rows.start, rows.stop, device=device)
                k_idx = torch.arange(cols.start, cols.stop, device=device)
                spec.bias.accumulate_grad(
                    bias_grads,
                    spec.batch,
                    spec.heads,
                    q_idx,
                    k_idx,
                    spec.offset,
                    _unfold(ds, g),
                )
            if slope is not None:  # through the soft cap to the raw scores
                ds = ds * slope
            dqi += ds @ kj
            # qi holds q * scale, so this is already d(loss)/dk = scale * dsᵀ q.
            dk[:, :, cols] += ds.transpose(-2, -1) @ qi
        dq[:, :, rows] = _unfold(dqi, g)
    # A parameter no visited tile touched still gets a (zero) gradient, as autograd would give.
    bias_grads = [
        torch.zeros_like(p) if g is None and p.requires_grad else g
        for p, g in zip(bias_params, bias_grads, strict=True)
    ]
    dsinks = None
    if sinks is not None and sinks.requires_grad:
        # The sink's probability p_s = exp(sink - lse) with a zero value: d(loss)/d(sink) is
        # p_s * (0 - D) for each row, summed over rows.
        p_sink = torch.exp(sinks.to(acc_dtype).view(1, -1, 1, 1) - lse)  # (B, H, Tq, 1)
        dsinks = -(p_sink * delta).sum(dim=(0, 2, 3)).to(sinks.dtype)
    return (
        (dq * spec.scale).to(dtypes[0]),
        dk.to(dtypes[1]),
        dv.to(dtypes[2]),
        bias_grads,
        dsinks,
    )


class _ChunkedFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec: _Spec, q: Tensor, k: Tensor, v: Tensor, *extra: Tensor):
        # extra: the sinks (H,) when spec.sinks, then the bias's parameters.
        sinks = extra[0] if spec.sinks else None
        plan = _plan(spec, q.device)
        out, lse = _forward(spec, q, k, v, plan, sinks)
        ctx.save_for_backward(q, k, v, out, lse, *([sinks] if spec.sinks else []))
        ctx.spec, ctx.plan = spec, plan
        return out.to(q.dtype)  # the same tensor for float32 and float64 inputs

    @staticmethod
    def backward(ctx, dout: Tensor):
        q, k, v, out, lse, *rest = ctx.saved_tensors
        sinks = rest[0] if rest else None
        dq, dk, dv, bias_grads, dsinks = _backward(
            ctx.spec, q, k, v, out, lse, dout.contiguous(), ctx.plan, sinks
        )
        return None, dq, dk, dv, *([dsinks] if ctx.spec.sinks else []), *bias_grads


def chunked_attention(
    call: AttentionCall, *, q_block: int | None = None, kv_block: int | None = None
) -> Tensor:
    """Tile-by-tile exact attention for ``call``; (B, H, Tq, Dv) in q's dtype.

    Tile lengths default to :func:`default_tile` for the call's device.
    """
    q_block = q_block or default_tile(call.device)
    kv_block = kv_block or default_tile(call.device)
    spec = _Spec.of_call(call, call.mask, call.bias, q_block, kv_block, call.sinks is not None)
    params = call.bias.params() if call.bias is not None else ()
    sinks = (call.sinks,) if call.sinks is not None else ()
    return _ChunkedFunction.apply(spec, call.q, call.k, call.v, *sinks, *params)


class ChunkedBackend(Backend):
    name = "chunked"
    description = "pure-PyTorch online-softmax tiles, fwd+bwd; skips masked tiles; O(T) memory"
    capabilities = Capabilities(
        devices=frozenset({"cpu", "cuda"}),
        softcap=True,
        sinks=True,
        notes=("every mask and bias, learnable biases included",),
    )

    def __init__(self, q_block: int | None = None, kv_block: int | None = None) -> None:
        self.q_block, self.kv_block = q_block, kv_block

    def forward(self, call: AttentionCall) -> tuple[Tensor, Tensor | None]:
        return chunked_attention(call, q_block=self.q_block, kv_block=self.kv_block), None
