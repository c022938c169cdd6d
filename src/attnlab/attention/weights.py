"""Attention weights recomputed from a call's queries and keys, tile by tile, for any backend.

Fused kernels (SDPA, FlexAttention, the chunked backend) never hold the (Tq, Tk) probability
matrix, which is why they are fast and why they cannot return it. The weights are a function
of the call alone: softmax(score(q, k) + bias, masked). So instead of switching the kernel, a
:class:`PatternSource` keeps the call's prepared queries and keys (after projections, positions
and the score's own transform), its mask and bias, and recomputes the weights of just the
requested heads and query rows, a tile of rows at a time: memory grows with what is asked
(B * h * rows * Tk for the result, one tile of scratch), not with the model or Tq * Tk.

The arithmetic is the reference backend's (float32 scores, the most negative float for masked
entries, zeros for rows with no allowed key), so recomputed weights equal the reference's.

Shapes: B batch, H query heads, Hkv key/value heads (G = H / Hkv), h selected heads, Tq
queries, r selected rows, Tk keys, D head dim.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor

from attnlab.attention.bias import Bias
from attnlab.attention.masks import Mask
from attnlab.attention.reference import masked_softmax, softcapped

# Scores evaluated at once per tile: 4M float32 numbers (16 MB) bounds the scratch memory of a
# tile whatever the batch, heads and sequence length.
TILE_ELEMENTS = 1 << 22

Logits = Callable[[Tensor, Tensor, float], Tensor]
Normalize = Callable[[Tensor, Tensor | None], Tensor]
Selection = int | Sequence[int] | slice | range | Tensor | None


def dot_logits(q: Tensor, k: Tensor, scale: float) -> Tensor:
    """Scaled dot-product scores in float32: q (B, h, r, D), k (B, h, Tk, D) -> (B, h, r, Tk)."""
    dtype = torch.promote_types(q.dtype, torch.float32)
    return (q.to(dtype) @ k.to(dtype).transpose(-2, -1)) * scale


class PatternSource:
    """Everything needed to recompute one attention call's weights, without the kernel.

    Args:
        q: prepared queries (B, H, Tq, D): what the kernel multiplies with the keys.
        k: prepared keys (B, Hkv, Tk, D).
        mask: the call's mask (None = every key allowed); positions align bottom-right.
        bias: the call's score bias, or None.
        scale: the score multiplier.
        logits: the score function on a tile, ``logits(q (B, h, r, D), k (B, h, Tk, D),
            scale) -> (B, h, r, Tk)`` float32; default the scaled dot product.
        offset: the position of query row 0 counted like the keys' positions (see
            :attr:`offset`); default Tk - Tq, right for self-attention, where the queries are
            the last Tq of the Tk positions. Cross-attention passes 0: its queries and keys
            are two sequences, each counted from its own start.
        normalize: scores of a tile (B, h, r, Tk) and its allowed keys (B|1, 1, r, Tk) bool or
            None -> weights; default the masked softmax. Kernel attention (linear, Performer)
            passes its feature products as ``logits`` and divides them by their row sums.
        softcap, sinks: the call's soft-capping of scores and sink logits (H,), as in
            :func:`attnlab.attention.attend`.
    """

    def __init__(
        self,
        q: Tensor,
        k: Tensor,
        *,
        mask: Mask | None,
        bias: Bias | None,
        scale: float,
        logits: Logits = dot_logits,
        offset: int | None = None,
        normalize: Normalize = masked_softmax,
        softcap: float | None = None,
        sinks: Tensor | None = None,
    ) -> None:
        self.q, self.k, self.mask, self.bias, self.scale = q, k, mask, bias, scale
        self.logits, self.normalize = logits, normalize
        self.softcap, self.sinks = softcap, sinks
        self._offset = offset

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(B, H, Tq, Tk) of the full pattern."""
        b, h, tq, _ = self.q.shape
        return b, h, tq, self.k.shape[2]

    @property
    def groups(self) -> int:
        return self.q.shape[1] // self.k.shape[1]

    @property
    def offset(self) -> int:
        """Position of query row 0, counted like the keys' positions (key j is at j): Tk - Tq
        in self-attention (queries are the last Tq of Tk positions), 0 in cross-attention.
        Statistics that relate query and key positions (distance, previous token) use it."""
        return self.k.shape[2] - self.q.shape[2] if self._offset is None else self._offset

    def head_index(self, heads: Selection = None) -> Tensor:
        """The selected heads as a long tensor, checked against H (ValueError names ``heads``)."""
        return select(heads, self.q.shape[1], "heads", self.q.device)

    def row_index(self, rows: Selection = None) -> Tensor:
        """The selected query rows as a long tensor, checked against Tq."""
        return select(rows, self.q.shape[2], "rows", self.q.device)

    def nbytes(self, heads: Selection = None, rows: Selection = None) -> int:
        """Bytes of :meth:`weights` for this selection (float32)."""
        b, _, _, tk = self.shape
        return 4 * b * self.head_index(heads).numel() * self.row_index(rows).numel() * tk

    def tiles(
        self, heads: Selection = None, rows: Selection = None, *, max_elements: int = TILE_ELEMENTS
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield ``(row_index (r,), weights (B, h, r, Tk) float32)`` over the selected rows, a
        tile of rows at a time, each tile at most ``max_elements`` scores."""
        b, _, _, tk = self.shape
        head_idx, row_idx = self.head_index(heads), self.row_index(rows)
        h = head_idx.numel()
        q = self.q.index_select(1, head_idx)  # (B, h, Tq, D)
        k = self.k.index_select(1, head_idx // self.groups)  # (B, h, Tk, D): each head's keys
        kv_idx = torch.arange(tk, device=self.q.device)
        # Masks and biases align the queries bottom-right, as every backend does (attend()).
        align = tk - self.q.shape[2]
        step = max(1, max_elements // max(1, b * h * tk))
        for start in range(0, row_idx.numel(), step):
            idx = row_idx[start : start + step]
            scores = self.logits(q.index_select(2, idx), k, self.scale)  # (B, h, r, Tk)
            scores = softcapped(scores, self.softcap)
            if self.bias is not None:
                tile = self.bias.block(b, self.q.shape[1], idx, kv_idx, align)
                if tile.shape[1] > 1:  # per-head bias (ALiBi, T5): the selected heads
                    tile = tile.index_select(1, head_idx)
                scores = scores + tile
            allowed = None
            if self.mask is not None:
                allowed = self.mask.block(b, idx, kv_idx, align)  # (B|1, 1, r, Tk)
            if self.sinks is None:
                yield idx, self.normalize(scores, allowed)
            else:
                sinks = self.sinks.detach().float().index_select(0, head_idx).view(1, h, 1, 1)
                yield idx, masked_softmax(scores, allowed, sinks)

    def weights(self, heads: Selection = None, rows: Selection = None) -> Tensor:
        """The weights (B, h, r, Tk) of the selected heads and query rows, in q's dtype."""
        b, _, _, tk = self.shape
        h, r = self.head_index(heads).numel(), self.row_index(rows).numel()
        out = self.q.new_empty(b, h, r, tk)
        done = 0
        for idx, probs in self.tiles(heads, rows):
            out[:, :, done : done + idx.numel()] = probs
            done += idx.numel()
        return out


def select(sel: Selection, n: int, name: str, device) -> Tensor:
    """An int, a sequence of ints, a slice/range or a 1-D tensor of indices into ``n`` items as a
    long tensor; ValueError naming ``name`` when an index is out of range."""
    if sel is None:
        return torch.arange(n, device=device)
    if isinstance(sel, slice):
        return torch.arange(n, device=device)[sel]
    if isinstance(sel, bool):
        raise TypeError(f"{name}: expected an int, a list of ints, a slice or None, got a bool")
    if isinstance(sel, int):
        sel = [sel]
    if isinstance(sel, Tensor):
        if sel.dtype.is_floating_point or sel.dim() > 1:
            raise TypeError(f"{name}: expected a 1-D integer tensor, got {sel.dtype} {sel.dim()}-D")
        idx = sel.to(device=device, dtype=torch.long).reshape(-1)
    else:
        items = list(sel)
        for i in items:
            if isinstance(i, bool) or not isinstance(i, int):
                raise TypeError(
                    f"{name}: expected ints, got {type(i).__name__} {i!r} in {list(items)!r}"
                )
        idx = torch.tensor(items, dtype=torch.long, device=device)
    bad = idx[(idx < -n) | (idx >= n)]
    if bad.numel():
        item = {"heads": "head", "rows": "row"}.get(name, "index")
        raise ValueError(
            f"{name}: {item} {int(bad[0])} is out of range; expected 0 <= {item} < {n}"
        )
    return idx % n if n else idx
