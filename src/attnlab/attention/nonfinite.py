"""NaN and inf in q, k, v: one rule for every backend, kept in one place.

The rule: a NaN reaches exactly the output rows that see it.

* A NaN in query row i makes output row i NaN, and no other row.
* A NaN in a key or value that row i attends to makes row i NaN.
* A key or value that row i does not attend to (masked for it) has no effect on row i, whatever
  it holds, NaN or inf included: padding may hold garbage.
* A row that attends to no key is zeros, as always.

An inf in a masked key or value is ignored like a NaN. An attended inf follows IEEE arithmetic:
the row may come out inf or NaN, and a key whose scores become -inf simply drops out.

Fast kernels break the third point on their own: a masked value is weighted by an exact 0, and
0 * NaN = NaN (every backend), and SDPA adds a boolean mask as -inf to the scores, so a NaN
score under the mask stays NaN. Only a call with a mask can break it, and it can only add NaN
where the rule puts none, so :func:`contain` checks the output of such a call (one sum over it;
for a plain causal mask one sum over the last query row, which sees every key; on a GPU the
check waits for the kernel; under ``torch.compile`` it is skipped) and only when it finds NaN
recomputes the call exactly: with every
non-finite entry of q, k and v set to 0, and NaN written back into the rows that see one.
Training calls with other masks also sum k and v, since a masked NaN there can leave the output
clean and still reach the gradients. After an exact recomputation the gradients that flow
through rows seeing no NaN are exact, and rows that see one pass no gradient back.

Shapes: B batch, H query heads, Hkv key/value heads (G = H / Hkv), Tq queries, Tk keys,
D head dim, Dv value head dim.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import Tensor

from attnlab.attention.call import AttentionCall

Forward = Callable[[AttentionCall], tuple[Tensor, Tensor | None]]

# Rows of (B, H, rows, Tk) booleans evaluated at once when finding the rows that see a
# non-finite key: bounds that scratch memory to about 16 MB whatever the sequence length.
_SCRATCH_ELEMENTS = 1 << 24


def contain(call: AttentionCall, forward: Forward) -> tuple[Tensor, Tensor | None]:
    """Run ``forward(call)`` under the rule above: (output, weights or None)."""
    if call.mask is None or call.tq == 0 or call.tk == 0:
        # Every row sees every key (or there is nothing to see): NaN spreads as the rule says.
        return forward(call)
    if torch.compiler.is_compiling():
        # A compiled step (decoding over a static cache) cannot branch on tensor values without
        # breaking its graph at every layer. The caches it reads start zeroed and only ever
        # hold keys and values the model computed, so a masked slot is finite unless the model
        # itself produced a non-finite key, and then the eager path is the one to debug with.
        return forward(call)
    if call.plain_causal:
        # The hot path. The last query row attends to every key, so a non-finite key or value
        # anywhere shows in it, and a NaN query row cannot spread to other output rows: checking
        # that one row (B * H * Dv numbers) finds every masked key or value that could.
        out, weights = forward(call)
        if not _finite(out[:, :, -1]):
            return _exact(call, forward)
        return out, weights
    if call.needs_grad and not (_finite(call.k) and _finite(call.v)):
        # A masked non-finite key or value can leave the output clean and still reach the
        # gradients (their backward multiplies it by an exact 0 too).
        return _exact(call, forward)
    out, weights = forward(call)
    if _sum(out).isnan():
        return _exact(call, forward)
    return out, weights


def _sum(x: Tensor) -> Tensor:
    # In float32 at least, so that half-precision sums do not overflow.
    return x.sum(dtype=torch.promote_types(x.dtype, torch.float32))


def _finite(x: Tensor) -> bool:
    # One summing pass, about 10x faster than isfinite().all() on the CPU. The sum is finite
    # only if every entry is; it may overflow (or give NaN from inf - inf), and then the exact
    # path merely runs for nothing.
    return bool(_sum(x).isfinite())


def _exact(call: AttentionCall, forward: Forward) -> tuple[Tensor, Tensor | None]:
    q_rows, kv_rows, v_rows = _rows_seeing_nonfinite(call)
    clean = dataclasses.replace(
        call, q=_zero_nonfinite(call.q), k=_zero_nonfinite(call.k), v=_zero_nonfinite(call.v)
    )
    out, weights = forward(clean)
    nan = float("nan")
    # masked_fill, not arithmetic: rows that see no NaN keep their exact values and gradients.
    out = out.masked_fill((q_rows | kv_rows | v_rows)[..., None], nan)
    if weights is not None:
        # Weights depend on q and k only: a non-finite value leaves them as they are.
        weights = weights.masked_fill((q_rows | kv_rows)[..., None], nan)
    return out, weights


def _zero_nonfinite(x: Tensor) -> Tensor:
    return torch.where(torch.isfinite(x), x, 0.0)


def _rows_seeing_nonfinite(call: AttentionCall) -> tuple[Tensor, Tensor, Tensor]:
    """Three (B, H, Tq) boolean tensors: rows that attend to at least one key and have a
    non-finite query; rows that attend to a key with a non-finite entry; the same for values."""
    g = call.groups
    bad_q = ~torch.isfinite(call.q).all(-1)  # (B, H, Tq)
    # (B, H, 1, Tk): each key/value head serves G consecutive query heads.
    bad_k = (~torch.isfinite(call.k).all(-1)).repeat_interleave(g, 1)[:, :, None]
    bad_v = (~torch.isfinite(call.v).all(-1)).repeat_interleave(g, 1)[:, :, None]
    shape = (call.batch, call.heads, call.tq)
    has_key, sees_k, sees_v = (
        torch.zeros(shape, dtype=torch.bool, device=call.device) for _ in range(3)
    )
    k_idx = torch.arange(call.tk, device=call.device)
    step = max(1, _SCRATCH_ELEMENTS // max(1, call.batch * call.heads * call.tk))
    for start in range(0, call.tq, step):
        q_idx = torch.arange(start, min(start + step, call.tq), device=call.device)
        allowed = call.mask.block(call.batch, q_idx, k_idx, call.offset)  # (B|1, H|1, r, Tk)
        rows = slice(start, start + q_idx.numel())
        has_key[:, :, rows] = allowed.any(-1)
        sees_k[:, :, rows] = (allowed & bad_k).any(-1)
        sees_v[:, :, rows] = (allowed & bad_v).any(-1)
    return bad_q & has_key, sees_k, sees_v
