"""A preallocated key/value cache for decoding one token (or one chunk) at a time.

Keys and values of past positions are written once into buffers of the maximum length, so a
decode step costs one slice write instead of a concatenation that copies the whole history
(gpt-fast's ``KVCache``). ``update`` returns views of everything cached so far; attention then
sees Tq new queries against Tk = length keys, and position masks align to the bottom right.

Shapes: B batch, Hkv key/value heads, L max length, D key head dim, Dv value head dim.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def check_kv(k: Tensor, v: Tensor, keys: Tensor, values: Tensor) -> None:
    """Check new k (B, Hkv, T, D) and v (B, Hkv, T, Dv) against a cache's buffers ``keys``
    (B, Hkv, L, D) and ``values`` (B, Hkv, L, Dv); errors name the argument."""
    for name, t in (("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if t.device != keys.device:
            raise ValueError(f"{name}: expected device {keys.device}, got {t.device}")
    want = (keys.shape[0], keys.shape[1], keys.shape[3])
    if k.dim() != 4 or (k.shape[0], k.shape[1], k.shape[3]) != want:
        raise ValueError(
            f"k: expected shape (B, Hkv, T, D) with (B, Hkv, D) = {want}, got {tuple(k.shape)}"
        )
    if v.dim() != 4 or v.shape[:3] != k.shape[:3] or v.shape[3] != values.shape[3]:
        raise ValueError(
            f"v: expected shape {(*k.shape[:3], values.shape[3])}, got {tuple(v.shape)}"
        )


class KVCache(nn.Module):
    """Cache of keys (B, Hkv, L, D) and values (B, Hkv, L, Dv) with a fill ``length``."""

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
    ) -> None:
        super().__init__()
        for name, value in (("batch", batch), ("kv_heads", kv_heads), ("max_len", max_len)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        v_head_dim = head_dim if v_head_dim is None else v_head_dim
        shape = (batch, kv_heads, max_len)
        self.register_buffer(
            "k", torch.zeros(*shape, head_dim, dtype=dtype, device=device), persistent=False
        )
        self.register_buffer(
            "v", torch.zeros(*shape, v_head_dim, dtype=dtype, device=device), persistent=False
        )
        self.length = 0

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def positions(self, t: int) -> Tensor:
        """Absolute positions (t,) of the next ``t`` tokens to be written."""
        return torch.arange(self.length, self.length + t, device=self.k.device)

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append k (B, Hkv, T, D) and v (B, Hkv, T, Dv); return all keys and values so far."""
        check_kv(k, v, self.k, self.v)
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(
                f"cache: {end} positions would exceed max_len={self.max_len} "
                f"(holding {start}, adding {k.shape[2]})"
            )
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]

    def reset(self) -> None:
        """Forget every cached position (buffers are kept for reuse)."""
        self.length = 0

    def extra_repr(self) -> str:
        b, h, n, d = self.k.shape
        return f"batch={b}, kv_heads={h}, max_len={n}, head_dim={d}, length={self.length}"
