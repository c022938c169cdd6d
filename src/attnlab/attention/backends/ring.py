"""Ring attention: exact attention over a sequence split across the ranks of a process group.

Context parallelism (Liu, Zaharia & Abbeel 2023, "Ring Attention with Blockwise Transformers for
Near-Infinite Context"): each of the W ranks of a group holds a shard of the queries and of the
keys/values of one long sequence. The key/value blocks travel around the ring of ranks (each
rank sends its current block to the next rank and receives one from the previous rank, while it
computes on the block it holds), so after W steps every query shard has seen every key. The
partial results of the blocks are merged by their log-sum-exp, the online softmax of
FlashAttention (Milakov & Gimelshein 2018; Dao et al. 2022).

The backward pass is a ring too (FlashAttention-2, Dao 2023): each block's probabilities are
recomputed from the saved global log-sum-exp; dQ accumulates on the rank that owns the queries,
while the dK/dV accumulators of a block travel around the ring with it and come back to the
rank that owns those keys. Every block is computed by the chunked backend's tile loops
(:mod:`attnlab.attention.backends.chunked`), which skip the tiles a mask rules out. For
half-precision inputs the blocks' outputs are merged, and the dK/dV accumulators travel, in
float32; each block's dK/dV comes back from the chunked backward in the input dtype.

Masks and biases are those of the whole sequence: a block of local queries against another
rank's keys sees ``mask.at_positions(q_positions, k_positions_of_that_rank, T, T)``, so causal,
sliding-window, document, padding and prefix-LM masks, ALiBi, tensor and T5 biases stay exact
whatever the layout (contiguous or load-balanced zigzag, see :mod:`attnlab.distributed.cp`).
The gradient of a learnable bias on a rank is the part its queries contribute: like every
replicated parameter under context parallelism, it is summed (or averaged) over the group.

Two ways in: :func:`ring_attention` with explicit positions, or the ``"ring"`` backend, which
``attend(..., backend="ring")`` runs inside :func:`ring_context` (the group and this rank's
positions): a model calls ``attend`` on its local tokens and its masks mean the whole sequence.
"auto" never picks it. Every rank must make the same calls with the same local lengths, and
non-finite q, k or v on any rank raise a ValueError on every rank (a rank-local re-run, as
:mod:`attnlab.attention.nonfinite` does for other backends, would leave the others waiting).

Shapes: B batch, H heads, Hkv kv heads, T length (whole sequence), Tl local length, D head dim,
Dv value head dim, W ranks in the group.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from attnlab.attention import bias as bias_lib
from attnlab.attention import masks as mask_lib
from attnlab.attention.backends.base import Backend, Capabilities
from attnlab.attention.backends.chunked import _backward, _forward, _plan, _Spec, default_tile
from attnlab.attention.bias import Bias
from attnlab.attention.call import AttentionCall, accumulation_dtype, make_call
from attnlab.attention.masks import Mask

# Message tags: key/value blocks and their gradient accumulators travel the ring side by side.
_KV, _GRAD = 1, 2


# -- the context: group and positions ------------------------------------------------------------
class RingContext:
    """A process group and where this rank's queries and keys sit in the whole sequence.

    Args:
        group: the context-parallel process group (None: the default group).
        q_positions: (Tl,) global positions of this rank's queries.
        k_positions: (Tl,) global positions of this rank's keys; default ``q_positions``.
        total_len: T, the length of the whole sequence.
    """

    def __init__(
        self,
        group: dist.ProcessGroup | None,
        q_positions: Tensor,
        k_positions: Tensor | None = None,
        *,
        total_len: int,
    ) -> None:
        if k_positions is None:
            k_positions = q_positions
        if isinstance(total_len, bool) or not isinstance(total_len, int) or total_len < 1:
            raise ValueError(f"total_len: expected a positive int, got {total_len!r}")
        self.q_positions, self.k_positions = mask_lib.check_positions(
            q_positions, k_positions, total_len, total_len
        )
        self.group = group
        self.total_len = total_len
        self._key_table: Tensor | None = None  # (W, Tl) every rank's key positions, gathered once

    def world(self) -> tuple[int, int]:
        """(this rank in the group, ranks in the group); ValueError without torch.distributed."""
        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError(
                "group: ring attention needs torch.distributed initialised "
                "(dist.init_process_group), got none"
            )
        rank = dist.get_rank(self.group)
        if rank < 0:
            raise ValueError("group: expected a group this process belongs to, got one without it")
        return rank, dist.get_world_size(self.group)

    def key_table(self, world: int) -> Tensor:
        """(W, Tl) the key positions of every rank of the group (a collective, once)."""
        if self._key_table is None:
            parts = [torch.empty_like(self.k_positions) for _ in range(world)]
            dist.all_gather(parts, self.k_positions, group=self.group)
            self._key_table = torch.stack(parts)
        return self._key_table


_CONTEXT: contextvars.ContextVar[RingContext | None] = contextvars.ContextVar(
    "attnlab_ring_context", default=None
)


@contextlib.contextmanager
def ring_context(
    group: dist.ProcessGroup | None,
    q_positions: Tensor,
    k_positions: Tensor | None = None,
    *,
    total_len: int,
) -> Iterator[RingContext]:
    """Within this block, ``attend(..., backend="ring")`` runs ring attention over ``group`` with
    this rank's queries at ``q_positions`` and keys at ``k_positions`` (default the same) of a
    sequence of ``total_len`` tokens (see :class:`RingContext`). Contexts nest; the backward
    pass needs no context (it keeps what its forward pass saw)."""
    token = _CONTEXT.set(RingContext(group, q_positions, k_positions, total_len=total_len))
    try:
        yield _CONTEXT.get()
    finally:
        _CONTEXT.reset(token)


def current_ring_context() -> RingContext | None:
    """The innermost active :func:`ring_context`, or None."""
    return _CONTEXT.get()


@contextlib.contextmanager
def reentered(context: RingContext) -> Iterator[RingContext]:
    """``context`` active again: for a forward pass re-run during the backward pass
    (activation checkpointing's ``context_fn``), with the positions its first run saw."""
    token = _CONTEXT.set(context)
    try:
        yield context
    finally:
        _CONTEXT.reset(token)


# -- one call -----------------------------------------------------------------------------------
def ring_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    q_positions: Tensor,
    k_positions: Tensor | None = None,
    total_len: int,
    group: dist.ProcessGroup | None = None,
    mask: Mask | Tensor | None = None,
    bias: Bias | Tensor | None = None,
    scale: float | None = None,
    softcap: float | None = None,
    sinks: Tensor | None = None,
) -> Tensor:
    """Exact softmax attention of this rank's queries over the keys of every rank of ``group``.

    Args:
        q: this rank's queries (B, H, Tl, D), at global positions ``q_positions`` (Tl,).
        k, v: this rank's keys (B, Hkv, Tl, D) and values (B, Hkv, Tl, Dv), at global positions
            ``k_positions`` (Tl,), default ``q_positions``; H a multiple of Hkv.
        total_len: T, the length of the whole sequence; every rank holds Tl of its tokens.
        group: the process group (None: the default group); every rank calls this together.
        mask, bias: over the whole (T, T) score matrix, as for :func:`attnlab.attention.attend`
            (boolean/float tensors broadcastable to (B, H, T, T) included).
        scale, softcap, sinks: as for :func:`attnlab.attention.attend`.

    Returns:
        This rank's output rows (B, H, Tl, Dv), equal to rows ``q_positions`` of attention over
        the whole sequence; differentiable in q, k, v, sinks and learnable biases.
    """
    ctx = RingContext(group, q_positions, k_positions, total_len=total_len)
    if isinstance(mask, Tensor):
        mask = mask_lib.from_tensor(mask)
    if isinstance(bias, Tensor):
        bias = bias_lib.from_tensor(bias)
    # The local call sees the views at this rank's positions: make_call then checks the mask
    # and bias against the whole sequence's shape, and every argument as attend() does.
    call = make_call(
        q,
        k,
        v,
        mask=_view(mask, ctx.q_positions, ctx.k_positions, total_len),
        bias=_view(bias, ctx.q_positions, ctx.k_positions, total_len),
        scale=scale,
        dropout_p=0.0,
        return_weights=False,
        softcap=softcap,
        sinks=sinks,
    )
    return _run(dataclasses.replace(call, mask=mask, bias=bias), ctx)


def _view(m, q_pos: Tensor, k_pos: Tensor, total: int):
    return None if m is None else m.at_positions(q_pos, k_pos, total, total)


def _run(call: AttentionCall, ctx: RingContext) -> Tensor:
    """Ring attention of ``call``'s local q, k, v with its mask and bias over the whole
    sequence; (B, H, Tl, Dv) in q's dtype."""
    if ctx.q_positions.device != call.device:
        raise ValueError(
            f"q_positions: expected device {call.device} like q, got {ctx.q_positions.device}"
        )
    rank, world = ctx.world()
    _agree(call, ctx, world)
    table = ctx.key_table(world)  # (W, Tl)
    total = ctx.total_len
    if call.mask is not None:
        mask_lib.check_mask(call.mask, call.batch, call.heads, total, total)
    if call.bias is not None:
        bias_lib.check_bias(call.bias, call.batch, call.heads, total, total)
    tile = default_tile(call.device)
    specs = [
        _Spec.of_call(
            call,
            _view(call.mask, ctx.q_positions, table[owner], total),
            _view(call.bias, ctx.q_positions, table[owner], total),
            tile,
            tile,
        )
        for owner in range(world)
    ]
    ring = _Ring(ctx.group, rank, world, specs, call.sinks is not None)
    params = call.bias.params() if call.bias is not None else ()
    sinks = (call.sinks,) if call.sinks is not None else ()
    return _RingFunction.apply(ring, call.q, call.k, call.v, *sinks, *params)


def _agree(call: AttentionCall, ctx: RingContext, world: int) -> None:
    """Check with every rank that all hold the same shapes and finite inputs; the same
    ValueError on every rank otherwise (no rank goes on into the ring alone)."""
    finite = all(bool(torch.isfinite(x).all()) for x in (call.q, call.k, call.v))
    mine = torch.tensor(
        [call.tq, call.tk, ctx.total_len, int(not finite)], device=ctx.k_positions.device
    )
    parts = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(parts, mine, group=ctx.group)
    table = torch.stack(parts).tolist()
    shapes = {tuple(row[:3]) for row in table}
    if len(shapes) > 1:
        raise ValueError(
            "q: ring attention expects the same (local queries, local keys, total_len) on every "
            f"rank of the group, got {[tuple(row[:3]) for row in table]} by rank"
        )
    bad = [r for r, row in enumerate(table) if row[3]]
    if bad:
        raise ValueError(
            f"q, k, v: ring attention expects finite values; ranks {bad} of the group hold "
            "NaN or inf"
        )


# -- the ring -----------------------------------------------------------------------------------
class _Pending:
    """Messages in flight: :meth:`wait` gives the received tensors."""

    def __init__(self, works: list, received: list[Tensor]) -> None:
        self.works, self.received = works, received

    def wait(self) -> list[Tensor]:
        for w in self.works:
            w.wait()
        return self.received


@dataclass(eq=False)
class _Ring:
    """One ring attention call: the group, and a block spec per rank whose keys it holds."""

    group: dist.ProcessGroup | None
    rank: int
    world: int
    specs: list[_Spec]  # specs[owner]: local queries against the keys of rank ``owner``
    sinks: bool  # sinks join the softmax once: with the rank's own block

    def __post_init__(self) -> None:
        self.plans: list | None = None

    def shift(self, tensors: list[Tensor], tag: int) -> _Pending:
        """Send ``tensors`` to the next rank; receive as many, of the same shapes, from the
        previous one."""
        nxt, prev = (self.rank + 1) % self.world, (self.rank - 1) % self.world
        received = [torch.empty_like(t) for t in tensors]
        ops = [
            dist.P2POp(dist.isend, t, group=self.group, group_peer=nxt, tag=tag) for t in tensors
        ]
        ops += [
            dist.P2POp(dist.irecv, t, group=self.group, group_peer=prev, tag=tag) for t in received
        ]
        return _Pending(dist.batch_isend_irecv(ops), received)

    def owner(self, step: int) -> int:
        """The rank whose keys this rank holds at ``step``: blocks move one rank on per step."""
        return (self.rank - step) % self.world

    def forward(
        self, q: Tensor, k: Tensor, v: Tensor, sinks: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """Output (B, H, Tl, Dv) and log-sum-exp (B, H, Tl, 1), at accumulation precision."""
        kv = [k.contiguous(), v.contiguous()]
        self.plans = [None] * self.world
        out = lse = None
        for step in range(self.world):
            pending = self.shift(kv, _KV) if step < self.world - 1 else None
            owner = self.owner(step)
            spec = self.specs[owner]
            self.plans[owner] = plan = _plan(spec, q.device)
            own_sinks = sinks if owner == self.rank else None
            out_b, lse_b = _forward(spec, q, kv[0], kv[1], plan, own_sinks)
            out, lse = _merge(out, lse, out_b, lse_b)
            if pending is not None:
                kv = pending.wait()
        # Rows that saw no key: lse = +inf, so the backward's exp(s - lse) is exactly 0 (as in
        # the chunked backend).
        return out, lse.masked_fill(lse == float("-inf"), float("inf"))

    def backward(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        out: Tensor,
        lse: Tensor,
        dout: Tensor,
        sinks: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor, list[Tensor | None], Tensor | None]:
        """dq, dk, dv in the inputs' dtypes, the bias parameters' gradients from this rank's
        queries, and the sinks' gradient."""
        acc = accumulation_dtype(q.dtype)
        dq = torch.zeros(q.shape, dtype=acc, device=q.device)
        n_params = len(self.specs[0].bias.params()) if self.specs[0].bias is not None else 0
        bias_grads: list[Tensor | None] = [None] * n_params
        dsinks = None
        kv = [k.contiguous(), v.contiguous()]
        arriving = None  # the accumulated dk, dv of the block this rank holds next
        for step in range(self.world):
            pending = self.shift(kv, _KV) if step < self.world - 1 else None
            owner = self.owner(step)
            own_sinks = sinks if owner == self.rank else None
            dq_b, dk_b, dv_b, grads_b, ds_b = _backward(
                self.specs[owner], q, kv[0], kv[1], out, lse, dout, self.plans[owner], own_sinks
            )
            dq += dq_b
            bias_grads = [
                g if a is None else a + g for a, g in zip(bias_grads, grads_b, strict=True)
            ]
            dsinks = ds_b if ds_b is not None else dsinks
            dkv = [dk_b.to(acc), dv_b.to(acc)]
            if arriving is not None:  # what the ranks before added to this block
                before = arriving.wait()
                dkv = [dkv[0] + before[0], dkv[1] + before[1]]
            if self.world > 1:
                # On, with the block; after the last step this hop brings each rank its own.
                arriving = self.shift(dkv, _GRAD)
            if pending is not None:
                kv = pending.wait()
        dk, dv = arriving.wait() if arriving is not None else dkv
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), bias_grads, dsinks


def _merge(
    out: Tensor | None, lse: Tensor | None, out_b: Tensor, lse_b: Tensor
) -> tuple[Tensor, Tensor]:
    """Combine two partial softmax results by their log-sum-exp (B, H, Tl, 1): each output is
    weighted by its share of the total normaliser."""
    # The chunked backend marks rows with no allowed key by lse = +inf; here they weigh nothing.
    lse_b = lse_b.masked_fill(lse_b == float("inf"), float("-inf"))
    if out is None:
        return out_b, lse_b
    new = torch.logaddexp(lse, lse_b)
    safe = new.masked_fill(new == float("-inf"), 0.0)  # no key so far: avoid -inf - (-inf)
    return out * torch.exp(lse - safe) + out_b * torch.exp(lse_b - safe), new


class _RingFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ring: _Ring, q: Tensor, k: Tensor, v: Tensor, *extra: Tensor):
        # extra: the sinks (H,) when ring.sinks, then the bias's parameters.
        sinks = extra[0] if ring.sinks else None
        out, lse = ring.forward(q, k, v, sinks)
        ctx.save_for_backward(q, k, v, out, lse, *([sinks] if ring.sinks else []))
        ctx.ring = ring
        return out.to(q.dtype)

    @staticmethod
    def backward(ctx, dout: Tensor):
        q, k, v, out, lse, *rest = ctx.saved_tensors
        ring = ctx.ring
        sinks = rest[0] if rest else None
        dq, dk, dv, bias_grads, dsinks = ring.backward(q, k, v, out, lse, dout.contiguous(), sinks)
        return None, dq, dk, dv, *([dsinks] if ring.sinks else []), *bias_grads


# -- the backend --------------------------------------------------------------------------------
class RingBackend(Backend):
    """``attend(..., backend="ring")`` inside :func:`ring_context`: the call's q, k, v are this
    rank's shard, its mask and bias cover the whole sequence."""

    name = "ring"
    description = "context parallel: ring attention over a process group (ring_context); fwd+bwd"
    capabilities = Capabilities(
        devices=frozenset({"cpu", "cuda"}),
        softcap=True,
        sinks=True,
        collective=True,
        notes=(
            "only inside ring_context(group, positions, total_len=T), never chosen by auto; "
            "masks and biases mean the whole sequence",
        ),
    )

    def extra_reasons(self, call: AttentionCall) -> list[str]:
        ctx = current_ring_context()
        if ctx is None:
            return ["no context-parallel group is active (run inside ring_context(...))"]
        reasons = []
        if not (dist.is_available() and dist.is_initialized()):
            reasons.append("torch.distributed is not initialised")
        for what, n, pos in (("q", call.tq, ctx.q_positions), ("k", call.tk, ctx.k_positions)):
            if n != pos.numel():
                reasons.append(
                    f"{what} holds {n} local positions, but the ring context has {pos.numel()}"
                )
        if ctx.q_positions.device != call.device:
            reasons.append(
                f"the ring context's positions are on {ctx.q_positions.device}, q on {call.device}"
            )
        return reasons

    def forward(self, call: AttentionCall) -> tuple[Tensor, Tensor | None]:
        return _run(call, current_ring_context()), None
