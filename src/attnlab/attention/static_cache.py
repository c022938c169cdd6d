"""Key/value caches written at tensor positions, for decoding steps that compile once.

:class:`attnlab.attention.KVCache` keeps its fill level as a Python int and returns a slice that
grows each step, so a compiled decode step would see a new shape (and a new constant) every
token. The caches here follow gpt-fast's ``KVCache.update(input_pos, k, v)`` instead: buffers of
a fixed size, written with ``index_copy_`` / ``scatter_`` at the positions given as a tensor, and
returned whole. Which slots a query may see is data, not shape: each slot records the absolute
position of the token it holds (-1 for empty or padding), and :func:`position_mask` turns slot
and query positions into a boolean mask. A decode step thus has the same shapes and the same
code every token, the property a compiled step needs to be replayed (transformers'
``StaticCache``).

* :class:`StaticKVCache` holds positions 0 .. max_len-1, position p in slot p. It serves
  batches of left-padded prompts (padding is written but marked never to be attended, so every
  row equals its prompt decoded alone), rollback for speculative decoding (:meth:`truncate`,
  per row too) and beam search (:meth:`reorder`).
* :class:`RingKVCache` is for sliding-window attention: memory is bounded by the window, and
  position p lives in slot p % window (transformers' ``SlidingWindowCache``, Mistral's rolling
  buffer, Jiang et al. 2023).

Positions here are cache positions (where a token is stored). Rotary positions of left-padded
rows count real tokens only and are the model's business; within a row the two differ by a
constant, so causal and window masks mean the same in either.

Checks that read tensor values (positions in range, indices in range) run in eager mode only:
under ``torch.compile`` they would break the graph, and on a GPU they wait for the device, so
they can also be switched off with ``check_values=False``.

Shapes: B batch, Hkv key/value heads, L max length, W window, S slots (L or W), T tokens in
this call, D key head dim, Dv value head dim.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from attnlab.attention import masks as mask_lib
from attnlab.attention.kv_cache import check_kv
from attnlab.attention.masks import Mask


class CacheView(NamedTuple):
    """What one attention call over a cache needs: keys, values, the mask relating them to
    the queries, and the keys' absolute positions (for position biases such as ALiBi)."""

    k: Tensor  # (B, Hkv, S', D)
    v: Tensor  # (B, Hkv, S', Dv)
    mask: Mask  # (B, 1, T, S') boolean, True = attend
    key_positions: Tensor  # (B, S') long, -1 where no real token is


def position_mask(
    key_positions: Tensor,
    query_positions: Tensor,
    *,
    window: int | None = None,
    sink_tokens: int = 0,
) -> Mask:
    """Mask (B, 1, T, S) letting query position p see the key in slot j of row b iff that key
    holds a real token (``key_positions[b, j] >= 0``) at a position <= p, and, with a window,
    > p - window (the query's own position included, as in ``masks.sliding_window``) or among
    the first ``sink_tokens`` positions.

    Args:
        key_positions: (B, S) long, the absolute position of each slot's key, -1 for none.
        query_positions: (T,) or (B, T) long, the absolute position of each query.
        window: keys at most ``window - 1`` positions back are visible; None for no limit.
        sink_tokens: keys at positions below it stay visible whatever the window.
    """
    if key_positions.dim() != 2:
        raise ValueError(f"key_positions: expected (B, S), got shape {tuple(key_positions.shape)}")
    qp = _positions(query_positions, "query_positions", key_positions.shape[0])
    if qp.device != key_positions.device:
        raise ValueError(
            f"query_positions: expected device {key_positions.device}, got {qp.device}"
        )
    kp = key_positions[:, None, :]  # (B, S) -> (B, 1, S)
    qp = qp[..., None]  # (B or 1, T) -> (B or 1, T, 1)
    allowed = (kp >= 0) & (kp <= qp)  # (B, T, S)
    if window is not None:
        check_count(window, "window")
        allowed = allowed & ((qp - kp < window) | (kp < sink_tokens))
    return mask_lib.from_tensor(allowed[:, None])  # (B, T, S) -> (B, 1, T, S)


class _SlotCache(nn.Module):
    """Buffers shared by the caches: keys, values, each slot's position, each row's length."""

    def __init__(
        self,
        batch: int,
        kv_heads: int,
        slots: int,
        head_dim: int,
        *,
        slots_name: str,
        v_head_dim: int | None,
        dtype: torch.dtype,
        device: torch.device | str | None,
        check_values: bool,
    ) -> None:
        super().__init__()
        v_head_dim = head_dim if v_head_dim is None else v_head_dim
        for name, value in (
            ("batch", batch),
            ("kv_heads", kv_heads),
            (slots_name, slots),
            ("head_dim", head_dim),
            ("v_head_dim", v_head_dim),
        ):
            check_count(value, name)
        if not isinstance(dtype, torch.dtype) or not (dtype.is_floating_point or dtype == INT8):
            raise TypeError(
                f"dtype: expected a floating-point torch.dtype or torch.int8, got {dtype!r}"
            )
        self.check_values = check_values
        shape = (batch, kv_heads, slots)
        # int8: each key and value vector is stored as int8 codes and one fp32 scale (absmax
        # / 127), and dequantized when read, in the dtype it was written in.
        self.quantized = dtype == INT8
        self.out_dtype = torch.float32
        if self.quantized:
            for name in ("k_scale", "v_scale"):
                self.register_buffer(
                    name,
                    torch.ones(*shape, 1, dtype=torch.float32, device=device),
                    persistent=False,
                )
        # Non-persistent: a cache is scratch space, never part of a checkpoint.
        self.register_buffer(
            "k", torch.zeros(*shape, head_dim, dtype=dtype, device=device), persistent=False
        )
        self.register_buffer(
            "v", torch.zeros(*shape, v_head_dim, dtype=dtype, device=device), persistent=False
        )
        # Absolute position of the real token in each slot; -1 for empty slots and padding.
        self.register_buffer(
            "slot_positions",
            torch.full((batch, slots), -1, dtype=torch.long, device=device),
            persistent=False,
        )
        # One past the last position written in each row (padding included): where the row's
        # next token goes (:meth:`next_positions`).
        self.register_buffer(
            "lengths", torch.zeros(batch, dtype=torch.long, device=device), persistent=False
        )

    @property
    def batch(self) -> int:
        return self.k.shape[0]

    @property
    def slots(self) -> int:
        return self.k.shape[2]

    # -- checks ---------------------------------------------------------------------------------
    def _check_positions(self, positions: Tensor, t: int) -> Tensor:
        """``positions`` as (1 or B, T) long, checked for shape (and values in eager mode)."""
        pos = _positions(positions, "positions", self.batch)
        if pos.shape[1] != t or pos.device != self.k.device:
            raise ValueError(
                f"positions: expected (T,) or (B, T) with T = {t} on device {self.k.device}, got "
                f"shape {tuple(positions.shape)} on {positions.device}"
            )
        if self._eager_checks() and pos.numel() and bool(pos.min() < 0):
            raise ValueError(f"positions: expected values >= 0, got {positions.tolist()}")
        return pos

    def _check_valid(self, valid: Tensor | None, t: int) -> Tensor | None:
        if valid is None:
            return None
        if not isinstance(valid, Tensor) or valid.dtype != torch.bool:
            got = valid.dtype if isinstance(valid, Tensor) else type(valid).__name__
            raise TypeError(
                f"valid: expected a boolean tensor (B, T), True = real token, got {got}"
            )
        if valid.shape != (self.batch, t) or valid.device != self.k.device:
            raise ValueError(
                f"valid: expected shape (B, T) = {(self.batch, t)} on device {self.k.device}, got "
                f"{tuple(valid.shape)} on {valid.device}"
            )
        return valid

    def _eager_checks(self) -> bool:
        return self.check_values and not torch.compiler.is_compiling()

    # -- writing --------------------------------------------------------------------------------
    def _write(self, k: Tensor, v: Tensor, slots: Tensor, stored: Tensor, ends: Tensor) -> None:
        """Write k (B, Hkv, T, D), v at ``slots`` (1 or B, T); record ``stored`` (B, T) as the
        slots' positions and raise ``lengths`` to ``ends`` (B,)."""
        pairs = [(self.k, k), (self.v, v)]
        if self.quantized:
            self.out_dtype = k.dtype
            (k, k_scale), (v, v_scale) = _quantize(k), _quantize(v)
            pairs = [(self.k, k), (self.v, v), (self.k_scale, k_scale), (self.v_scale, v_scale)]
        if slots.shape[0] == 1:  # the same slots in every row: one indexed copy
            index = slots[0]
            for buf, new in pairs:
                buf.index_copy_(2, index, new.to(buf.dtype))  # the cache keeps its own dtype
            self.slot_positions.index_copy_(1, index, stored)
        else:  # per-row slots
            b, h, t = k.shape[:3]
            for buf, new in pairs:
                index = slots[:, None, :, None].expand(b, h, t, new.shape[3])
                buf.scatter_(2, index, new.to(buf.dtype))
            self.slot_positions.scatter_(1, slots, stored)
        self.lengths.copy_(torch.maximum(self.lengths, ends))

    def _stored(self, pos: Tensor, valid: Tensor | None) -> tuple[Tensor, Tensor]:
        """Positions to record per slot (B, T), -1 for padding, and each row's end (B,)."""
        pos = pos.expand(self.batch, -1)
        stored = pos if valid is None else pos.masked_fill(~valid, -1)
        ends = (pos + 1).amax(-1) if pos.shape[1] else self.lengths
        return stored, ends

    # -- batch and lifetime ---------------------------------------------------------------------
    @torch.no_grad()
    def reorder(self, indices: Tensor) -> None:
        """Row i becomes the old row ``indices[i]`` (beam search keeps its best beams), in place.

        indices: (B,) long, values in [0, B).
        """
        if not isinstance(indices, Tensor) or indices.dtype.is_floating_point:
            raise TypeError(f"indices: expected an integer tensor (B,), got {indices!r}")
        if indices.shape != (self.batch,) or indices.device != self.k.device:
            raise ValueError(
                f"indices: expected shape (B,) = ({self.batch},) on device {self.k.device}, got "
                f"{tuple(indices.shape)} on {indices.device}"
            )
        if self._eager_checks() and bool(((indices < 0) | (indices >= self.batch)).any()):
            raise ValueError(
                f"indices: expected values in [0, {self.batch}), got {indices.tolist()}"
            )
        # index_select makes new rows; copying them back keeps the buffers (and their addresses).
        scales = (self.k_scale, self.v_scale) if self.quantized else ()
        for buf in (self.k, self.v, *scales, self.slot_positions, self.lengths):
            buf.copy_(buf.index_select(0, indices))

    @torch.no_grad()
    def reset(self) -> None:
        """Forget every position (the buffers are kept for reuse)."""
        self.slot_positions.fill_(-1)
        self.lengths.zero_()

    def next_positions(self, t: int = 1) -> Tensor:
        """Positions (B, t) continuing each row: ``lengths[:, None] + arange(t)``, a new tensor.

        Use it rather than a view of ``lengths``, which the next write changes in place."""
        check_count(t, "t")
        return self.lengths[:, None] + torch.arange(t, device=self.lengths.device)

    def keys_values(self) -> tuple[Tensor, Tensor]:
        """The whole buffers (B, Hkv, S, D), (B, Hkv, S, Dv); an int8 cache dequantizes them."""
        if not self.quantized:
            return self.k, self.v
        return (
            (self.k * self.k_scale).to(self.out_dtype),
            (self.v * self.v_scale).to(self.out_dtype),
        )

    def extra_repr(self) -> str:
        b, h, s, d = self.k.shape
        return f"batch={b}, kv_heads={h}, slots={s}, head_dim={d}, dtype={self.k.dtype}"


class StaticKVCache(_SlotCache):
    """Keys (B, Hkv, L, D) and values (B, Hkv, L, Dv) at fixed addresses; position p in slot p.

    Args:
        batch, kv_heads, max_len, head_dim: buffer sizes B, Hkv, L, D.
        v_head_dim: value head dim Dv; default D.
        dtype: the cache's own dtype: inputs are cast on write (a bf16 cache for an fp32 model
            halves its memory; values are rounded to bf16). ``torch.int8`` stores each key and
            value vector as int8 codes with one fp32 scale (absmax / 127; about a quarter of
            fp32's memory) and dequantizes on read, to the dtype written.
        device: where the buffers live.
        check_values: check position values in eager mode (never under ``torch.compile``).

    A decode step, compiled or not::

        pos = cache.next_positions()                 # (B, 1): each row's next position
        k_all, v_all = cache.update(k, v, pos)        # (B, Hkv, L, D), the same tensors each step
        out = attend(q, k_all, v_all, mask=cache.mask(pos))
    """

    def __init__(
        self,
        batch: int,
        kv_heads: int,
        max_len: int,
        head_dim: int,
        *,
        v_head_dim: int | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        check_values: bool = True,
    ) -> None:
        super().__init__(
            batch,
            kv_heads,
            max_len,
            head_dim,
            slots_name="max_len",
            v_head_dim=v_head_dim,
            dtype=dtype,
            device=device,
            check_values=check_values,
        )

    @property
    def max_len(self) -> int:
        return self.slots

    def update(
        self, k: Tensor, v: Tensor, positions: Tensor, *, valid: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Write k (B, Hkv, T, D) and v (B, Hkv, T, Dv) at ``positions`` and return the whole
        buffers (B, Hkv, L, D), (B, Hkv, L, Dv): the same tensors on every call; unwritten
        slots hold stale values that :meth:`mask` hides.

        Args:
            positions: (T,) long, the same in every row, or (B, T), per row; values in [0, L).
                Positions must not repeat within a row in one call.
            valid: (B, T) bool, False for padding tokens: written (so every row keeps one
                layout) but never attended. Default: every token is real.
        """
        check_kv(k, v, self.k, self.v)
        pos = self._check_positions(positions, k.shape[2])
        valid = self._check_valid(valid, k.shape[2])
        if self._eager_checks() and pos.numel() and bool(pos.max() >= self.max_len):
            raise ValueError(
                f"positions: expected values < max_len={self.max_len}, got {positions.tolist()}"
            )
        stored, ends = self._stored(pos, valid)
        self._write(k, v, pos, stored, ends)
        return self.keys_values()

    def mask(self, query_positions: Tensor, *, window: int | None = None) -> Mask:
        """Mask (B, 1, T, L) for queries at ``query_positions`` ((T,) or (B, T)) over the
        buffers: slot j is visible iff j <= p and it holds a real token (and, with ``window``,
        p - j < window). Call it after :meth:`update` has written the queries' own keys."""
        return position_mask(self.slot_positions, query_positions, window=window)

    def attention_inputs(
        self, k: Tensor, v: Tensor, positions: Tensor, *, valid: Tensor | None = None
    ) -> CacheView:
        """:meth:`update` then :meth:`mask` for queries at the same positions: one call for an
        attention module, the same for every cache here."""
        # Positions may be a view of ``lengths``, which the write changes in place.
        positions = positions.clone() if isinstance(positions, Tensor) else positions
        k_all, v_all = self.update(k, v, positions, valid=valid)
        return CacheView(k_all, v_all, self.mask(positions), self.slot_positions)

    @torch.no_grad()
    def truncate(self, n: int | Tensor) -> None:
        """Forget positions >= n (rollback of rejected speculative tokens); later writes there
        behave as if the forgotten tokens were never written.

        n: an int for every row, or a (B,) long tensor per row; values >= 0.
        """
        if isinstance(n, Tensor):
            if n.dtype.is_floating_point or n.dtype == torch.bool:
                raise TypeError(f"n: expected an int or an integer tensor (B,), got {n.dtype}")
            if n.shape != (self.batch,) or n.device != self.k.device:
                raise ValueError(
                    f"n: expected an int or shape (B,) = ({self.batch},) on device "
                    f"{self.k.device}, got {tuple(n.shape)} on {n.device}"
                )
            if self._eager_checks() and bool((n < 0).any()):
                raise ValueError(f"n: expected values >= 0, got {n.tolist()}")
            limit = n.long()
        else:
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise ValueError(f"n: expected an int >= 0 or a tensor (B,), got {n!r}")
            limit = torch.full_like(self.lengths, n)
        self.slot_positions.masked_fill_(self.slot_positions >= limit[:, None], -1)
        self.lengths.copy_(torch.minimum(self.lengths, limit))


class RingKVCache(_SlotCache):
    """Keys (B, Hkv, W, D) and values (B, Hkv, W, Dv) of the last W positions, for attention
    over a causal sliding window of W keys (the query's own position included, as
    ``masks.sliding_window(W)``). Position p lives in slot p % W.

    One new token per call overwrites in place the only key that leaves its window, so a decode
    step returns the buffers themselves. A call with T > 1 tokens (a prefill, T > W included)
    cannot: its later tokens would overwrite keys its earlier queries still see. Such a call
    returns the W cached keys followed by its own T keys (S' = W + T), the mask picks each
    query's window out of them, and only the last min(T, W) new tokens are then stored.

    With ``sink_tokens`` S > 0 the first S positions are kept too, in S more slots, and stay
    visible to every query: StreamingLLM's attention sinks and window (Xiao et al. 2024), whose
    softmax keeps the initial tokens it leans on. Keys keep their absolute positions (RoPE
    already applied), where StreamingLLM re-rotates them to their places in the cache.

    Args as for :class:`StaticKVCache`, with ``window`` W in place of ``max_len``, and
    ``sink_tokens`` S.
    """

    def __init__(
        self,
        batch: int,
        kv_heads: int,
        window: int,
        head_dim: int,
        *,
        v_head_dim: int | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        check_values: bool = True,
        sink_tokens: int = 0,
    ) -> None:
        if isinstance(sink_tokens, bool) or not isinstance(sink_tokens, int) or sink_tokens < 0:
            raise ValueError(f"sink_tokens: expected an int >= 0, got {sink_tokens!r}")
        check_count(window, "window")
        self.sink_tokens = sink_tokens
        super().__init__(
            batch,
            kv_heads,
            sink_tokens + window,
            head_dim,
            slots_name="window",
            v_head_dim=v_head_dim,
            dtype=dtype,
            device=device,
            check_values=check_values,
        )

    @property
    def window(self) -> int:
        return self.slots - self.sink_tokens

    def _slots_of(self, pos: Tensor) -> Tensor:
        """Position p's slot: p itself among the sinks, else one of the W window slots."""
        s = self.sink_tokens
        ring = s + (pos - s) % self.window
        return ring if s == 0 else torch.where(pos < s, pos, ring)

    def update(
        self, k: Tensor, v: Tensor, positions: Tensor, *, valid: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Write k (B, Hkv, T, D) and v (B, Hkv, T, Dv) at ``positions``; return keys, values
        and their absolute positions (B, S') to attend over (-1 = none there).

        With T <= 1 these are the buffers themselves (S' = W); with T > 1 the cached keys
        before this call followed by this call's (S' = W + T), new tensors.

        Args:
            positions: (T,) or (B, T) long, >= 0, consecutive within a call and increasing
                from call to call.
            valid: (B, T) bool, False for padding tokens (never attended).
        """
        check_kv(k, v, self.k, self.v)
        t = k.shape[2]
        pos = self._check_positions(positions, t)
        valid = self._check_valid(valid, t)
        if self._eager_checks() and t > 1 and not bool((pos.diff(dim=1) == 1).all()):
            raise ValueError(
                f"positions: expected consecutive positions within one call, "
                f"got {positions.tolist()}"
            )
        stored, ends = self._stored(pos, valid)
        w = self.window
        if t <= 1:
            self._write(k, v, self._slots_of(pos), stored, ends)
            return (*self.keys_values(), self.slot_positions)
        # Every key a query of this call can see is either cached already or in this call.
        cached_k, cached_v = self.keys_values()
        if not self.quantized:
            k, v = k.to(self.k.dtype), v.to(self.v.dtype)
        view_k = torch.cat([cached_k.to(k.dtype), k], dim=2)  # (B, Hkv, W + T, D)
        view_v = torch.cat([cached_v.to(v.dtype), v], dim=2)  # (B, Hkv, W + T, Dv)
        view_pos = torch.cat([self.slot_positions, stored], dim=1)  # (B, W + T)
        m = min(t, w)  # the tokens still inside the window after this call
        self._write(
            k[:, :, -m:], v[:, :, -m:], self._slots_of(pos[:, -m:]), stored[:, -m:], ends
        )  # consecutive positions: m <= W tokens land in distinct slots
        if self.sink_tokens and t > m:  # earlier tokens of this call may be sinks
            if pos.shape[0] != 1 and not bool((pos == pos[:1]).all()):
                raise ValueError(
                    "positions: a ring cache with sink_tokens takes the same positions in "
                    "every row for a call of several tokens, got rows that differ"
                )
            n = int((pos[0, : t - m] < self.sink_tokens).sum())  # consecutive: the first n
            if n:
                self._write(k[:, :, :n], v[:, :, :n], pos[:1, :n], stored[:, :n], ends)
        return view_k, view_v, view_pos

    def mask(self, query_positions: Tensor, key_positions: Tensor | None = None) -> Mask:
        """Mask (B, 1, T, S') for queries at ``query_positions`` over keys at ``key_positions``
        (from :meth:`update`; default the buffers' slots), limited to the window."""
        keys = self.slot_positions if key_positions is None else key_positions
        return position_mask(
            keys, query_positions, window=self.window, sink_tokens=self.sink_tokens
        )

    def attention_inputs(
        self, k: Tensor, v: Tensor, positions: Tensor, *, valid: Tensor | None = None
    ) -> CacheView:
        """:meth:`update` then :meth:`mask` for queries at the same positions."""
        # Positions may be a view of ``lengths``, which the write changes in place.
        positions = positions.clone() if isinstance(positions, Tensor) else positions
        k_all, v_all, key_positions = self.update(k, v, positions, valid=valid)
        return CacheView(k_all, v_all, self.mask(positions, key_positions), key_positions)


INT8 = torch.int8


def _quantize(x: Tensor) -> tuple[Tensor, Tensor]:
    """x (..., D) as int8 codes (..., D) and fp32 scales (..., 1), absmax per vector."""
    scale = x.float().abs().amax(-1, keepdim=True).clamp(min=1e-12) / 127.0
    return (x.float() / scale).round().clamp(-127, 127).to(INT8), scale


def check_count(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")


def _positions(positions: object, name: str, batch: int) -> Tensor:
    """``positions`` (T,) or (B, T) as a (1 or B, T) integer tensor; ValueError otherwise."""
    if not isinstance(positions, Tensor):
        raise TypeError(f"{name}: expected an integer tensor (T,) or (B, T), got {positions!r}")
    if positions.dtype.is_floating_point or positions.dtype == torch.bool:
        raise TypeError(f"{name}: expected an integer tensor (T,) or (B, T), got {positions.dtype}")
    if positions.dim() == 1:
        positions = positions[None]  # (T,) -> (1, T)
    if positions.dim() != 2 or positions.shape[0] not in (1, batch):
        raise ValueError(
            f"{name}: expected shape (T,) or (B, T) with B = {batch}, got {tuple(positions.shape)}"
        )
    return positions.long()
