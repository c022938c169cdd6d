"""The key/value caches of a whole model: one object, one interface, for every family.

A model's ``make_caches(batch, max_len, kind=...)`` returns :class:`Caches`: one layer cache
per self-attention module, plus, for encoder-decoders, one per cross-attention module (the
source's keys and values, computed on the first call and reused). ``model(..., caches=c)``
then continues from what the caches hold.

Kinds (the registry ``CACHE_KINDS``):

* ``"dynamic"``: :class:`attnlab.attention.KVCache`, a fill level kept as a Python int. Simple
  and exact; the shapes grow each step, so a decode step cannot be compiled once.
* ``"static"``: :class:`attnlab.attention.StaticKVCache`, buffers of a fixed size written at
  tensor positions; a left-padded batch, rollback (``truncate``) and beam reordering
  (``reorder``); the decode step has the same shapes every token.
* ``"ring"``: :class:`attnlab.attention.RingKVCache`, the last ``window`` positions only:
  memory bounded by the window, attention limited to it (a sliding window of ``window`` keys,
  the query's own included); with ``sink_tokens=S`` the first S positions stay too
  (StreamingLLM's sinks and window).

Kernel attention (linear, Performer) keeps a running state instead of keys and values
(:class:`attnlab.attention.state_cache.StateCache`, kind ``"state"``), whatever kind is asked
for: it is bound like a slotted cache.

Slotted caches (static, ring) need to know where each new token goes: the model asks
:meth:`Caches.bind` for per-layer views carrying this call's cache positions and which tokens
are real, and each attention module calls ``attention_inputs(k, v)`` on its view, which writes
and returns the keys, values and mask to attend with.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from attnlab.attention.kv_cache import KVCache
from attnlab.attention.state_cache import StateCache
from attnlab.attention.static_cache import CacheView, RingKVCache, StaticKVCache

SlotCache = StaticKVCache | RingKVCache | StateCache


class BoundCache:
    """A slotted layer cache with this call's cache ``positions`` ((1 or B, T) long) and
    ``valid`` ((B, T) bool or None): what an attention module writes through."""

    __slots__ = ("cache", "positions", "valid")

    def __init__(self, cache: SlotCache, positions: Tensor, valid: Tensor | None) -> None:
        self.cache, self.positions, self.valid = cache, positions, valid

    def attention_inputs(self, k: Tensor, v: Tensor) -> CacheView:
        """Write k (B, Hkv, T, D), v (B, Hkv, T, Dv) and return what to attend over."""
        return self.cache.attention_inputs(k, v, self.positions, valid=self.valid)

    @property
    def recurrent(self) -> bool:
        """True for a running state (kernel attention): :meth:`step`, not attention inputs."""
        return isinstance(self.cache, StateCache)

    def step(self, kernel: nn.Module, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Kernel attention of this call's tokens over the running state (which they join)."""
        return self.cache.step(kernel, q, k, v, self.positions, self.valid)


def _dynamic(batch: int, kv_heads: int, max_len: int, head_dim: int, *, window, **kw) -> KVCache:
    if window is not None:
        raise ValueError("window: a dynamic cache keeps every position; use kind='ring'")
    kw.pop("check_values", None)
    if kw.get("dtype") == torch.int8:
        raise ValueError("dtype: an int8 cache needs kind='static' or 'ring'")
    return KVCache(batch, kv_heads, max_len, head_dim, **kw)


def _static(batch, kv_heads, max_len, head_dim, *, window, **kw) -> StaticKVCache:
    if window is not None:
        raise ValueError("window: a static cache keeps every position; use kind='ring'")
    return StaticKVCache(batch, kv_heads, max_len, head_dim, **kw)


def _ring(batch, kv_heads, max_len, head_dim, *, window, **kw) -> RingKVCache:
    if window is None:
        raise ValueError("window: expected a positive int for kind='ring', got None")
    return RingKVCache(batch, kv_heads, min(window, max_len), head_dim, **kw)


# kind -> factory(batch, kv_heads, max_len, head_dim, *, window, v_head_dim, dtype, device,
# check_values) giving one layer's cache.
CACHE_KINDS: dict[str, Callable[..., nn.Module]] = {
    "dynamic": _dynamic,
    "static": _static,
    "ring": _ring,
}


def make_layer_cache(kind: str, batch: int, kv_heads: int, max_len: int, head_dim: int, **kw):
    """One layer's cache of ``kind`` (see ``CACHE_KINDS``); ValueError naming ``kind``."""
    if kind not in CACHE_KINDS:
        raise ValueError(f"kind: expected one of {', '.join(CACHE_KINDS)}, got {kind!r}")
    if kw.get("sink_tokens") and kind != "ring":
        raise ValueError(
            f"sink_tokens: keeps the first tokens beside a ring cache's window; use "
            f"kind='ring', got kind={kind!r}"
        )
    if not kw.get("sink_tokens"):
        kw.pop("sink_tokens", None)
    return CACHE_KINDS[kind](batch, kv_heads, max_len, head_dim, **kw)


class Caches(nn.Module):
    """Per-layer self-attention caches of one model (and, for encoder-decoders, the cross-
    attention caches of the source). Indexing, ``len`` and iteration see the self-attention
    caches."""

    def __init__(self, layers: Sequence[nn.Module], cross: Sequence[KVCache] | None = None):
        super().__init__()
        if not layers:
            raise ValueError("layers: expected at least one layer cache, got none")
        kinds = {type(c) for c in layers}
        if len(kinds) != 1:
            raise TypeError(
                f"layers: expected caches of one kind, got {sorted(k.__name__ for k in kinds)}"
            )
        self.layers = nn.ModuleList(layers)
        self.cross = nn.ModuleList(cross) if cross is not None else None

    @property
    def slotted(self) -> bool:
        """True for caches written at tensor positions (static, ring)."""
        return not isinstance(self.layers[0], KVCache)

    @property
    def kind(self) -> str:
        first = self.layers[0]
        if isinstance(first, StateCache):
            return "state"
        if isinstance(first, RingKVCache):
            return "ring"
        return "static" if isinstance(first, StaticKVCache) else "dynamic"

    @property
    def batch(self) -> int:
        return self.layers[0].lengths.shape[0] if self.slotted else self.layers[0].k.shape[0]

    @property
    def max_len(self) -> int:
        """Positions the caches can hold (the window for a ring cache)."""
        first = self.layers[0]
        return first.max_len if isinstance(first, StateCache) else first.k.shape[2]

    def __getitem__(self, i: int) -> nn.Module:
        return self.layers[i]

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[nn.Module]:
        return iter(self.layers)

    # -- dynamic --------------------------------------------------------------------------------
    @property
    def length(self) -> int:
        """Tokens held (dynamic caches, a Python int). Slotted caches keep per-row lengths as a
        tensor: :attr:`lengths`."""
        if self.slotted:
            raise TypeError(
                f"length: a {self.kind} cache keeps per-row lengths as a tensor; use .lengths"
            )
        return self.layers[0].length

    # -- slotted --------------------------------------------------------------------------------
    @property
    def lengths(self) -> Tensor:
        """(B,) long: one past the last position written in each row (slotted caches)."""
        self._need_slots("lengths")
        return self.layers[0].lengths

    def next_positions(self, t: int = 1) -> Tensor:
        """(B, t) cache positions continuing each row (slotted caches)."""
        self._need_slots("next_positions")
        return self.layers[0].next_positions(t)

    def bind(self, positions: Tensor, valid: Tensor | None = None) -> list[BoundCache]:
        """Per-layer views writing this call's tokens at cache ``positions`` ((T,) or (B, T));
        ``valid`` (B, T) bool marks real tokens (False = padding, never attended)."""
        self._need_slots("bind")
        return [BoundCache(c, positions, valid) for c in self.layers]

    @torch.no_grad()
    def truncate(self, n: int | Tensor) -> None:
        """Forget positions >= n (an int or (B,) per row) in every layer (static caches)."""
        for cache in self.layers:
            if isinstance(cache, StateCache):
                cache.truncate(n)  # explains why it cannot
            if not isinstance(cache, StaticKVCache):
                raise TypeError(f"truncate: expected a static cache, this one is {self.kind}")
            cache.truncate(n)

    @torch.no_grad()
    def reorder(self, indices: Tensor) -> None:
        """Row i of every cache becomes old row ``indices[i]`` (beam search)."""
        self._need_slots("reorder")
        for cache in self.layers:
            cache.reorder(indices)
        for cache in self.cross or ():
            if cache.length:
                cache.k.copy_(cache.k.index_select(0, indices))
                cache.v.copy_(cache.v.index_select(0, indices))

    def reset(self) -> None:
        """Forget every position of every cache (buffers are kept)."""
        for cache in (*self.layers, *(self.cross or ())):
            cache.reset()

    def _need_slots(self, what: str) -> None:
        if not self.slotted:
            raise TypeError(f"{what}: needs a static or ring cache, this one is dynamic")

    def extra_repr(self) -> str:
        return f"kind={self.kind}, layers={len(self.layers)}, cross={self.cross is not None}"
