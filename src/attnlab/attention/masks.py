"""Attention masks as small composable objects.

A mask says which (query, key) pairs may attend. Each mask is defined once, as a predicate over
index tensors, and that one definition serves every backend:

* ``mask.dense(...)`` evaluates it on broadcast index grids: a boolean tensor for SDPA and the
  eager reference;
* ``mask.mask_mod(tq, tk)`` is the same predicate in FlexAttention's ``mask_mod`` signature;
* ``mask.block(...)`` evaluates it on one tile, for the chunked backend.

Masks combine with ``&`` (both allow), ``|`` (either allows) and ``~``.

``mask.at_positions(q_pos, k_pos, tq_total, tk_total)`` views a mask of a long sequence at the
global positions of some of its queries and keys (a rank's shard in context parallelism): the
view's local query ``i`` and key ``j`` are the global ones ``q_pos[i]`` and ``k_pos[j]``.

Alignment: when there are fewer queries than keys (decoding with a KV cache) the queries are the
*last* ``Tq`` positions, so position-based masks align to the bottom right: query ``i`` sits at
absolute position ``i + Tk - Tq``. With ``Tq > Tk`` the offset is negative and early query rows
of a causal mask see no key at all; backends return zeros for such rows.

Shapes: B batch, H heads, Tq queries, Tk keys. Dense masks are (B or 1, 1, Tq, Tk), True = attend.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

# A predicate over broadcastable index tensors (b, h, q_idx, kv_idx) -> bool tensor.
Predicate = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]


class Mask:
    """Base class: subclasses implement :meth:`predicate`."""

    # True only for the plain causal mask, so backends can use their built-in causal fast path.
    is_causal: bool = False

    def predicate(self, offset: int) -> Predicate:
        """The mask as a function of (b, h, q_idx, kv_idx); ``offset = Tk - Tq`` aligns queries."""
        raise NotImplementedError

    def density(self, tq: int, tk: int) -> float:
        """Rough fraction of (query, key) pairs allowed; used to prefer block-sparse backends."""
        return 1.0

    def batch_size(self) -> int | None:
        """Batch size the mask was built for, or None when it does not depend on the batch."""
        return None

    def to(self, device: torch.device) -> Mask:
        """The same mask with its tensors on ``device``."""
        return self

    def at_positions(
        self, q_positions: Tensor, k_positions: Tensor, tq_total: int, tk_total: int
    ) -> Mask:
        """This mask over a (``tq_total``, ``tk_total``) score matrix, seen at some of its rows
        and columns: the returned mask's query ``i`` and key ``j`` are the global query
        ``q_positions[i]`` and key ``k_positions[j]``, aligned by the global offset
        ``tk_total - tq_total`` whatever the local shapes. Works for every mask and
        combination; ``q_positions`` (tq,) and ``k_positions`` (tk,) are 1-D integer tensors.
        """
        q_pos, k_pos = check_positions(q_positions, k_positions, tq_total, tk_total)
        return _AtPositions(self, q_pos, k_pos, tq_total, tk_total)

    # -- evaluation -------------------------------------------------------------------------
    def mask_mod(self, tq: int, tk: int) -> Predicate:
        """FlexAttention ``mask_mod(b, h, q_idx, kv_idx)`` for ``tq`` queries and ``tk`` keys."""
        return self.predicate(tk - tq)

    def block(self, batch: int, q_idx: Tensor, kv_idx: Tensor, offset: int) -> Tensor:
        """Evaluate on the tile ``q_idx x kv_idx`` (1-D index tensors): (B or 1, 1, tq, tk)."""
        device = q_idx.device
        b = torch.arange(batch if self.batch_size() is not None else 1, device=device)
        out = self.predicate(offset)(
            b[:, None, None, None],
            torch.zeros(1, 1, 1, 1, dtype=torch.long, device=device),
            q_idx[None, None, :, None],
            kv_idx[None, None, None, :],
        )
        return out.expand(b.numel(), 1, q_idx.numel(), kv_idx.numel())

    def dense(self, batch: int, tq: int, tk: int, device: torch.device | str = "cpu") -> Tensor:
        """Boolean mask (B or 1, 1, Tq, Tk); True where a query may attend to a key."""
        device = torch.device(device)
        return self.block(
            batch,
            torch.arange(tq, device=device),
            torch.arange(tk, device=device),
            tk - tq,
        )

    # -- composition ------------------------------------------------------------------------
    def __and__(self, other: Mask) -> Mask:
        return _Combined(self, _as_mask(other, "other"), "&")

    def __or__(self, other: Mask) -> Mask:
        return _Combined(self, _as_mask(other, "other"), "|")

    def __invert__(self) -> Mask:
        return _Not(self)


def broadcast_lookup(t: Tensor) -> Predicate:
    """Index a 4-D tensor broadcastable to (B, H, Tq, Tk) with (b, h, q_idx, kv_idx)."""
    sb, sh, sq, sk = (int(s > 1) for s in t.shape)
    # Multiplying an index by 0 picks entry 0 of a broadcast (size-1) dimension.
    return lambda b, h, q, k: t[b * sb, h * sh, q * sq, k * sk]


def broadcast_tile(t: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
    """The tile q_idx x kv_idx of a 4-D tensor broadcastable to (B, H, Tq, Tk)."""
    rows = t[:, :, q_idx] if t.shape[2] > 1 else t
    tile = rows[..., kv_idx] if t.shape[3] > 1 else rows
    return tile.expand(t.shape[0], t.shape[1], q_idx.numel(), kv_idx.numel())


def as_4d(t: Tensor, name: str) -> Tensor:
    """Prepend size-1 dims up to 4; ValueError naming ``name`` for more than 4 dims."""
    if t.dim() > 4:
        raise ValueError(
            f"{name}: expected at most 4 dims broadcastable to (B, H, Tq, Tk), "
            f"got shape {tuple(t.shape)}"
        )
    return t.reshape((1,) * (4 - t.dim()) + tuple(t.shape))


def check_broadcast(t: Tensor, name: str, want: tuple[int, int, int, int]) -> None:
    """ValueError naming ``name`` unless the 4-D ``t`` broadcasts to ``want``."""
    if any(s not in (1, w) for s, w in zip(t.shape, want, strict=True)):
        raise ValueError(
            f"{name}: expected a shape broadcastable to (B, H, Tq, Tk) = {want}, "
            f"got {tuple(t.shape)}"
        )


def check_positions(
    q_positions: object, k_positions: object, tq_total: object, tk_total: object
) -> tuple[Tensor, Tensor]:
    """``(q_positions, k_positions)`` as LongTensors after checking them: 1-D integer tensors
    on one device, within ``[0, tq_total)`` and ``[0, tk_total)``; ValueError/TypeError naming
    the argument otherwise."""
    for name, total in (("tq_total", tq_total), ("tk_total", tk_total)):
        if isinstance(total, bool) or not isinstance(total, int) or total < 0:
            raise ValueError(f"{name}: expected an int >= 0, got {total!r}")
    out = []
    for name, pos, total in (
        ("q_positions", q_positions, tq_total),
        ("k_positions", k_positions, tk_total),
    ):
        if not isinstance(pos, Tensor):
            raise TypeError(f"{name}: expected a 1-D integer tensor, got {type(pos).__name__}")
        if pos.dim() != 1 or pos.dtype.is_floating_point or pos.dtype == torch.bool:
            raise ValueError(
                f"{name}: expected a 1-D integer tensor, "
                f"got dtype {pos.dtype} and shape {tuple(pos.shape)}"
            )
        if pos.numel() and (int(pos.min()) < 0 or int(pos.max()) >= total):
            raise ValueError(
                f"{name}: expected positions in [0, {total}), "
                f"got values from {int(pos.min())} to {int(pos.max())}"
            )
        out.append(pos.long())
    if out[0].device != out[1].device:
        raise ValueError(
            f"k_positions: expected device {out[0].device} like q_positions, got {out[1].device}"
        )
    return out[0], out[1]


def _as_mask(m: object, name: str) -> Mask:
    if not isinstance(m, Mask):
        raise TypeError(f"{name}: expected an attnlab Mask, got {type(m).__name__}")
    return m


def _long_vector(x: object, name: str) -> Tensor:
    t = torch.as_tensor(x)
    if t.dim() != 1 or t.dtype.is_floating_point or t.dtype == torch.bool:
        raise ValueError(
            f"{name}: expected a 1-D integer tensor of shape (B,), "
            f"got dtype {t.dtype} and shape {tuple(t.shape)}"
        )
    return t.long()


def _batch_of(*masks: Mask) -> int | None:
    sizes = {m.batch_size() for m in masks} - {None}
    if len(sizes) > 1:
        raise ValueError(f"mask: combined masks disagree on the batch size: {sorted(sizes)}")
    return sizes.pop() if sizes else None


# -- position masks ------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Causal(Mask):
    is_causal = True

    def predicate(self, offset: int) -> Predicate:
        return lambda b, h, q, k: q + offset >= k

    def density(self, tq: int, tk: int) -> float:
        return 0.5 if tq > 1 else 1.0


@dataclass(frozen=True)
class _SlidingWindow(Mask):
    size: int
    causal: bool = True

    def predicate(self, offset: int) -> Predicate:
        size = self.size
        if self.causal:
            return lambda b, h, q, k: (q + offset >= k) & (q + offset - k < size)
        return lambda b, h, q, k: (q + offset - k < size) & (k - q - offset < size)

    def density(self, tq: int, tk: int) -> float:
        width = self.size if self.causal else 2 * self.size - 1
        return min(1.0, width / max(tk, 1))


@dataclass(frozen=True, eq=False)
class _Padding(Mask):
    lengths: Tensor

    def predicate(self, offset: int) -> Predicate:
        lengths = self.lengths
        return lambda b, h, q, k: k < lengths[b]

    def batch_size(self) -> int:
        return self.lengths.shape[0]

    def to(self, device: torch.device) -> Mask:
        return _Padding(self.lengths.to(device))


@dataclass(frozen=True, eq=False)
class _PrefixLM(Mask):
    prefix_lengths: Tensor

    def predicate(self, offset: int) -> Predicate:
        prefix = self.prefix_lengths
        return lambda b, h, q, k: (k < prefix[b]) | (q + offset >= k)

    def density(self, tq: int, tk: int) -> float:
        return 0.5

    def batch_size(self) -> int:
        return self.prefix_lengths.shape[0]

    def to(self, device: torch.device) -> Mask:
        return _PrefixLM(self.prefix_lengths.to(device))


@dataclass(frozen=True, eq=False)
class _Document(Mask):
    q_doc_ids: Tensor
    kv_doc_ids: Tensor
    causal: bool

    def predicate(self, offset: int) -> Predicate:
        qd, kd, causal = self.q_doc_ids, self.kv_doc_ids, self.causal
        # Self-attention over packed sequences: query ids are the last Tq entries of the key ids.
        shift = offset if qd is kd else 0

        def same_doc(b: Tensor, h: Tensor, q: Tensor, k: Tensor) -> Tensor:
            allowed = qd[b, q + shift] == kd[b, k]
            return allowed & (q + offset >= k) if causal else allowed

        return same_doc

    def density(self, tq: int, tk: int) -> float:
        n_docs = int(self.kv_doc_ids[0].unique().numel()) if self.kv_doc_ids.numel() else 1
        return (0.5 if self.causal else 1.0) / max(n_docs, 1)

    def batch_size(self) -> int:
        return self.kv_doc_ids.shape[0]

    def to(self, device: torch.device) -> Mask:
        same = self.q_doc_ids is self.kv_doc_ids
        kd = self.kv_doc_ids.to(device)
        return _Document(kd if same else self.q_doc_ids.to(device), kd, self.causal)


@dataclass(frozen=True, eq=False)
class _FromTensor(Mask):
    """A user's boolean tensor broadcastable to (B, H, Tq, Tk)."""

    tensor: Tensor  # 4-D, True = attend

    def predicate(self, offset: int) -> Predicate:
        return broadcast_lookup(self.tensor)

    def block(self, batch: int, q_idx: Tensor, kv_idx: Tensor, offset: int) -> Tensor:
        return broadcast_tile(self.tensor, q_idx, kv_idx)

    def batch_size(self) -> int | None:
        return self.tensor.shape[0] if self.tensor.shape[0] > 1 else None

    def to(self, device: torch.device) -> Mask:
        return _FromTensor(self.tensor.to(device))


# -- combinations --------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class _Combined(Mask):
    """``a & b`` (both allow) or ``a | b`` (either allows)."""

    a: Mask
    b: Mask
    op: str  # "&" or "|"

    def __post_init__(self) -> None:
        _batch_of(self.a, self.b)

    def _join(self, x: Tensor, y: Tensor) -> Tensor:
        return x & y if self.op == "&" else x | y

    def predicate(self, offset: int) -> Predicate:
        pa, pb = self.a.predicate(offset), self.b.predicate(offset)
        return lambda b, h, q, k: self._join(pa(b, h, q, k), pb(b, h, q, k))

    def density(self, tq: int, tk: int) -> float:
        da, db = self.a.density(tq, tk), self.b.density(tq, tk)
        return min(da, db) if self.op == "&" else min(1.0, da + db)

    def batch_size(self) -> int | None:
        return _batch_of(self.a, self.b)

    def block(self, batch: int, q_idx: Tensor, kv_idx: Tensor, offset: int) -> Tensor:
        return self._join(
            self.a.block(batch, q_idx, kv_idx, offset), self.b.block(batch, q_idx, kv_idx, offset)
        )

    def to(self, device: torch.device) -> Mask:
        return _Combined(self.a.to(device), self.b.to(device), self.op)


@dataclass(frozen=True, eq=False)
class _Not(Mask):
    a: Mask

    def predicate(self, offset: int) -> Predicate:
        pa = self.a.predicate(offset)
        return lambda b, h, q, k: ~pa(b, h, q, k)

    def batch_size(self) -> int | None:
        return self.a.batch_size()

    def block(self, batch: int, q_idx: Tensor, kv_idx: Tensor, offset: int) -> Tensor:
        return ~self.a.block(batch, q_idx, kv_idx, offset)

    def to(self, device: torch.device) -> Mask:
        return _Not(self.a.to(device))


# -- a mask seen at global positions ------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class _AtPositions(Mask):
    """``mask`` of a (tq_total, tk_total) score matrix at the rows ``q_positions`` and the
    columns ``k_positions``: local indices are mapped to global positions before the mask's own
    definition is evaluated, so position masks (causal, windows, prefix-LM), id masks
    (document, padding) and tensors stay exact on any shard. The local offset a backend passes
    is ignored: the global alignment ``tk_total - tq_total`` applies."""

    mask: Mask
    q_positions: Tensor  # (tq,) global position of each local query
    k_positions: Tensor  # (tk,) global position of each local key
    tq_total: int
    tk_total: int

    @property
    def global_offset(self) -> int:
        return self.tk_total - self.tq_total

    def predicate(self, offset: int) -> Predicate:
        inner, qp, kp = self.mask.predicate(self.global_offset), self.q_positions, self.k_positions
        return lambda b, h, q, k: inner(b, h, qp[q], kp[k])

    def block(self, batch: int, q_idx: Tensor, kv_idx: Tensor, offset: int) -> Tensor:
        return self.mask.block(
            batch, self.q_positions[q_idx], self.k_positions[kv_idx], self.global_offset
        )

    def density(self, tq: int, tk: int) -> float:
        return self.mask.density(self.tq_total, self.tk_total)

    def batch_size(self) -> int | None:
        return self.mask.batch_size()

    def to(self, device: torch.device) -> Mask:
        return _AtPositions(
            self.mask.to(device),
            self.q_positions.to(device),
            self.k_positions.to(device),
            self.tq_total,
            self.tk_total,
        )


# -- public constructors -------------------------------------------------------------------------
def causal() -> Mask:
    """Each query attends to keys at its own position and before (bottom-right aligned)."""
    return _Causal()


def sliding_window(size: int, *, causal: bool = True) -> Mask:
    """Causal local attention over the last ``size`` keys (the query's own position included).

    With ``causal=False`` the window is symmetric: keys less than ``size`` positions away on
    either side (Longformer-style local attention).
    """
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"size: expected a positive int, got {size!r}")
    return _SlidingWindow(size, causal)


def padding(lengths: Tensor | list[int]) -> Mask:
    """Keys at positions ``>= lengths[b]`` are padding and never attended to. lengths: (B,)."""
    return _Padding(_long_vector(lengths, "lengths"))


def prefix_lm(prefix_lengths: Tensor | list[int]) -> Mask:
    """Prefix-LM (Raffel et al. 2020): keys in the prefix are visible to all, the rest causally."""
    return _PrefixLM(_long_vector(prefix_lengths, "prefix_lengths"))


def document(doc_ids: Tensor, *, kv_doc_ids: Tensor | None = None, causal: bool = False) -> Mask:
    """Block-diagonal mask for packed sequences: attend only within the same document.

    ``doc_ids`` is (B, T) with a document id per position. For self-attention with a KV cache
    give ids for all Tk positions; the queries use the last Tq of them. For cross-attention give
    the query ids as ``doc_ids`` and the key ids as ``kv_doc_ids``.
    """
    q_ids = _doc_ids(doc_ids, "doc_ids")
    kv_ids = q_ids if kv_doc_ids is None else _doc_ids(kv_doc_ids, "kv_doc_ids")
    if kv_ids.shape[0] != q_ids.shape[0]:
        raise ValueError(
            f"kv_doc_ids: expected batch size {q_ids.shape[0]} like doc_ids, got {kv_ids.shape[0]}"
        )
    return _Document(q_ids, kv_ids, causal)


def _doc_ids(x: Tensor, name: str) -> Tensor:
    t = torch.as_tensor(x)
    if t.dim() != 2 or t.dtype.is_floating_point or t.dtype == torch.bool:
        raise ValueError(
            f"{name}: expected a 2-D integer tensor (B, T), "
            f"got dtype {t.dtype} and shape {tuple(t.shape)}"
        )
    return t.long()


def from_tensor(mask: Tensor) -> Mask:
    """Wrap a boolean tensor broadcastable to (B, H, Tq, Tk); True = attend."""
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
        raise TypeError(f"mask: expected a boolean tensor (True = attend), got {got}")
    return _FromTensor(as_4d(mask, "mask"))


def check_mask(mask: Mask, batch: int, heads: int, tq: int, tk: int) -> None:
    """Raise ValueError when ``mask`` cannot apply to a (B, H, Tq, Tk) score matrix."""
    n = mask.batch_size()
    if n is not None and n != batch:
        raise ValueError(f"mask: built for batch size {n}, but q has batch size {batch}")
    for m in _leaves(mask):
        if isinstance(m, _FromTensor):
            check_broadcast(m.tensor, "mask", (batch, heads, tq, tk))
        elif isinstance(m, _AtPositions):
            check_position_counts("mask", m.q_positions, m.k_positions, tq, tk)
            check_mask(m.mask, batch, heads, m.tq_total, m.tk_total)
        elif isinstance(m, _Document):
            if m.q_doc_ids is m.kv_doc_ids and tq > tk:
                raise ValueError(
                    f"mask: document ids of self-attention cover the Tk={tk} key positions and "
                    f"queries take the last Tq of them, so Tq={tq} must be <= Tk; for "
                    "cross-attention pass kv_doc_ids"
                )
            for ids, name, t in ((m.q_doc_ids, "doc_ids", tq), (m.kv_doc_ids, "kv_doc_ids", tk)):
                if m.q_doc_ids is m.kv_doc_ids and name == "doc_ids":
                    continue
                if ids.shape[1] != t:
                    raise ValueError(f"mask: {name} has length {ids.shape[1]}, expected {t}")


def check_position_counts(name: str, q_pos: Tensor, k_pos: Tensor, tq: int, tk: int) -> None:
    """ValueError naming ``name`` unless a view at positions has one per query and key."""
    if q_pos.numel() != tq or k_pos.numel() != tk:
        raise ValueError(
            f"{name}: viewed at {q_pos.numel()} query and {k_pos.numel()} key positions, "
            f"expected Tq={tq} and Tk={tk} like q and k"
        )


def _leaves(mask: Mask) -> list[Mask]:
    if isinstance(mask, _Combined):
        return _leaves(mask.a) + _leaves(mask.b)
    if isinstance(mask, _Not):
        return _leaves(mask.a)
    return [mask]


def tensors_of(mask: Mask) -> list[Tensor]:
    """Every tensor a mask holds (lengths, ids, user tensors, positions of a view)."""
    out = []
    for m in _leaves(mask):
        for v in vars(m).values():
            if isinstance(v, Tensor):
                out.append(v)
            elif isinstance(v, Mask):  # the mask a view at positions looks at
                out += tensors_of(v)
    return out


def value_key(mask: Mask) -> Mask | None:
    """``mask`` itself when it is a pure function of positions that compares by value (causal,
    sliding window), so results computed from it can be cached per shape; None otherwise."""
    by_value = type(mask).__eq__ is not object.__eq__ and type(mask).__hash__ is not None
    return mask if by_value and not tensors_of(mask) else None


def head_dependent(mask: Mask) -> bool:
    """True when some part of the mask varies across heads (a user tensor with H > 1)."""
    return any(
        (isinstance(m, _FromTensor) and m.tensor.shape[1] > 1)
        or (isinstance(m, _AtPositions) and head_dependent(m.mask))
        for m in _leaves(mask)
    )


# -- masks as a prefix sum sees them -------------------------------------------------------------
def _describe(mask: Mask) -> str:
    names = {
        _SlidingWindow: "a sliding window",
        _PrefixLM: "a prefix-LM mask",
        _Document: "a document mask",
        _Not: "a negated mask",
        _AtPositions: "a mask viewed at global positions",
    }
    if isinstance(mask, _Combined) and mask.op == "|":
        return "a union of masks (a | b)"
    if isinstance(mask, _FromTensor):
        return (
            f"a boolean tensor of shape {tuple(mask.tensor.shape)}, not (B or 1, 1, 1, Tk) "
            "(it may vary along heads or queries),"
        )
    return names.get(type(mask), type(mask).__name__)


def _causal_and_key_leaves(mask: Mask) -> tuple[bool, list[Mask], list[Mask]]:
    """Split an ``&``-combination into (causal?, key-only leaves, leaves of any other form)."""
    if isinstance(mask, _Combined) and mask.op == "&":
        ca, ka, ba = _causal_and_key_leaves(mask.a)
        cb, kb, bb = _causal_and_key_leaves(mask.b)
        return ca or cb, ka + kb, ba + bb
    if isinstance(mask, _Causal):
        return True, [], []
    if isinstance(mask, _Padding):
        return False, [mask], []
    if isinstance(mask, _FromTensor) and mask.tensor.shape[1] == mask.tensor.shape[2] == 1:
        return False, [mask], []  # (B or 1, 1, 1, Tk): which keys exist, the same for all rows
    return False, [], [mask]


def causal_and_keys_reasons(mask: Mask | None) -> list[str]:
    """Why ``mask`` is not "causal (or not) & which keys exist": the only masks a prefix sum over
    keys can honour (linear attention, Performer). Empty when it is of that form."""
    if mask is None:
        return []
    _, _, other = _causal_and_key_leaves(mask)
    return [
        f"{_describe(m)} is not supported: a running sum over keys honours only a causal mask "
        "and masks of which keys exist (padding), combined with &"
        for m in other
    ]


def includes_causal(mask: Mask | None) -> bool:
    """True when ``mask`` is the causal mask or an ``&``-combination that includes it."""
    return mask is not None and _causal_and_key_leaves(mask)[0]


def causal_and_keys(
    mask: Mask | None, batch: int, tk: int, device: torch.device | str
) -> tuple[bool, Tensor | None]:
    """``mask`` as (causal, valid keys (B, Tk) bool or None when all are valid); ValueError with
    the reason when it is not of that form (see :func:`causal_and_keys_reasons`)."""
    if mask is None:
        return False, None
    reasons = causal_and_keys_reasons(mask)
    if reasons:
        raise ValueError("mask: " + "; ".join(reasons))
    is_causal, keys, _ = _causal_and_key_leaves(mask)
    valid = None
    zero = torch.zeros(1, dtype=torch.long, device=device)
    kv_idx = torch.arange(tk, device=device)
    for m in keys:
        # One query row of the tile is enough: these masks do not depend on the query.
        row = m.block(batch, zero, kv_idx, tk - 1)[:, 0, 0, :].expand(batch, tk)  # (B, Tk)
        valid = row if valid is None else valid & row
    return is_causal, valid
