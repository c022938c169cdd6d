"""The cache of kernel attention (linear, Performer): a running state, not keys and values.

Causal linear attention is a recurrent network (Katharopoulos et al. 2020, §3.4): everything a
query needs from the past is S = sum_j phi(k_j) v_jᵀ (F, Dv) and z = sum_j phi(k_j) (F,) per
key/value head. So a decoding model keeps those, O(F · Dv) per layer and head whatever the
length, where a key/value cache grows by O(D + Dv) every token.

:class:`StateCache` follows the slotted caches' interface (``lengths``, ``next_positions``,
``reorder``, ``reset``; :class:`attnlab.attention.caches.Caches` binds it like a static cache)
so the generation engine drives it unchanged; it cannot forget positions (``truncate``: a sum
cannot be taken apart), which speculative decoding and prompt reuse need.

Shapes: B batch, Hkv key/value heads, F features, Dv value head dim, T new tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from attnlab.attention.linear import KernelAttention, LinearState
from attnlab.attention.static_cache import check_count


class StateCache(nn.Module):
    """Running sums S (B, Hkv, F, Dv) and z (B, Hkv, F) of one kernel-attention layer, in
    float32 (at least), the log-scale c (B, Hkv) they are divided by (FAVOR+ stabilises its
    features by the largest key so far; -inf before any key), and each row's length.

    Args:
        max_len: the positions a row may reach (positions are still counted for RoPE; the
            state itself does not grow).
    """

    def __init__(
        self,
        batch: int,
        kv_heads: int,
        features: int,
        v_head_dim: int,
        *,
        max_len: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        for name, value in (
            ("batch", batch),
            ("kv_heads", kv_heads),
            ("features", features),
            ("v_head_dim", v_head_dim),
            ("max_len", max_len),
        ):
            check_count(value, name)
        dtype = torch.promote_types(dtype, torch.float32) if dtype.is_floating_point else None
        if dtype is None:
            raise TypeError("dtype: a running state is summed in floating point; got an integer")
        self._max_len = max_len
        self.register_buffer(
            "S",
            torch.zeros(batch, kv_heads, features, v_head_dim, dtype=dtype, device=device),
            persistent=False,
        )
        self.register_buffer(
            "z",
            torch.zeros(batch, kv_heads, features, dtype=dtype, device=device),
            persistent=False,
        )
        self.register_buffer(
            "c",
            torch.full((batch, kv_heads), -torch.inf, dtype=dtype, device=device),
            persistent=False,
        )
        self.register_buffer(
            "lengths", torch.zeros(batch, dtype=torch.long, device=device), persistent=False
        )

    @property
    def batch(self) -> int:
        return self.S.shape[0]

    @property
    def max_len(self) -> int:
        return self._max_len

    @property
    def nbytes(self) -> int:
        """Bytes the state holds: the same after one token or a million."""
        return sum(t.numel() * t.element_size() for t in (self.S, self.z, self.c))

    def step(
        self,
        kernel: KernelAttention,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        positions: Tensor,
        valid: Tensor | None,
    ) -> Tensor:
        """Attend from T new queries (B, H, T, D) over every earlier key and the new keys
        (B, Hkv, T, D) causally, add the new keys and values (B, Hkv, T, Dv) to the state and
        return the output (B, H, T, Dv). ``positions`` (1 or B, T) count the new tokens (the
        rows' lengths follow them); ``valid`` (B, T) marks real tokens (padding is not added)."""
        if not isinstance(kernel, KernelAttention):
            raise TypeError(
                f"kernel: a running state serves kernel attention, got {type(kernel).__name__}"
            )
        out, state = kernel.recurrent(q, k, v, LinearState(self.S, self.z, self.c), valid)
        with torch.no_grad():
            self.S.copy_(state.S)
            self.z.copy_(state.z)
            if state.c is not None:
                self.c.copy_(state.c)
            if positions.shape[-1]:
                ends = (positions + 1).amax(-1).expand(self.batch)
                self.lengths.copy_(torch.maximum(self.lengths, ends))
        return out

    def next_positions(self, t: int = 1) -> Tensor:
        """Positions (B, t) continuing each row."""
        check_count(t, "t")
        return self.lengths[:, None] + torch.arange(t, device=self.lengths.device)

    @torch.no_grad()
    def reorder(self, indices: Tensor) -> None:
        """Row i becomes the old row ``indices[i]`` (beam search), in place."""
        if not isinstance(indices, Tensor) or indices.dtype.is_floating_point:
            raise TypeError(f"indices: expected an integer tensor (B,), got {indices!r}")
        if indices.shape != (self.batch,):
            raise ValueError(
                f"indices: expected shape (B,) = ({self.batch},), got {tuple(indices.shape)}"
            )
        for buf in (self.S, self.z, self.c, self.lengths):
            buf.copy_(buf.index_select(0, indices.to(buf.device)))

    @torch.no_grad()
    def reset(self) -> None:
        """Forget every position."""
        self.S.zero_()
        self.z.zero_()
        self.c.fill_(-torch.inf)
        self.lengths.zero_()

    def truncate(self, n: int | Tensor) -> None:
        """Refused with TypeError: speculative decoding and prompt reuse need a cache that can
        drop its last positions, and a running sum cannot give them back."""
        raise TypeError(
            "truncate: a running state cannot forget positions (a sum cannot be taken apart); "
            "kernel attention decodes forward only"
        )

    def extra_repr(self) -> str:
        b, h, f, dv = self.S.shape
        return f"batch={b}, kv_heads={h}, features={f}, v_head_dim={dv}, max_len={self.max_len}"
