"""Multi-head latent attention, MLA (DeepSeek-AI 2024, "DeepSeek-V2", arXiv:2405.04434, §2.1).

MLA caches, per token and layer, one compressed latent instead of every head's keys and values.
Keys and values are a low-rank up-projection of that latent, so the cache holds

    c_kv (Rkv numbers, after its RMSNorm) + k_pe (Dr numbers, after RoPE)

per token, shared by all heads, where a full KV cache holds H * (Dn + Dr + Dv). For DeepSeek-V3
(Rkv 512, Dr 64, H 128, Dn 128, Dv 128) that is 576 numbers instead of 40,960, 71 times less.

Rotating keys made from the latent would put a position-dependent rotation between W_UK and
the query, which rules out folding W_UK into the query (below), so MLA keeps positions in a
few extra "decoupled" channels: queries carry a per-head rotary part q_pe, and keys one rotary
part k_pe shared by all heads, computed from the token directly and cached already rotated
(paper §2.1.3). Per head::

    q = [q_nope | q_pe]                   from x, through a low-rank bottleneck when Rq is set
    k = [k_nope | k_pe]   v               k_nope and v from kv_up(c_kv); k_pe broadcast to heads
    out = out_proj(concat_h softmax(q k^T * scale) v)

Decoding re-expands every cached latent through ``kv_up`` each step: simple and exact. The
paper's faster path absorbs the up-projections instead: q_nope . (W_UK c) = (W_UK^T q_nope) . c,
so the query can be mapped into the latent space once and the scores computed against the
cached c_kv directly (attention as multi-query attention with one key/value "head" of width
Rkv + Dr), and W_UV folds into the output projection; it is not implemented here.

Parameters and their Hugging Face ``DeepseekV3Attention`` (and V2) names:

    q_down.weight (Rq, C)            q_a_proj.weight (+ .bias with bias=True)
    q_norm.weight (Rq,)              q_a_layernorm.weight
    q_up.weight (H*(Dn+Dr), Rq)      q_b_proj.weight
    q_proj.weight (H*(Dn+Dr), C)     q_proj.weight (when q_lora_rank is None)
    kv_down.weight (Rkv+Dr, C)       kv_a_proj_with_mqa.weight (+ .bias with bias=True)
    kv_norm.weight (Rkv,)            kv_a_layernorm.weight
    kv_up.weight (H*(Dn+Dv), Rkv)    kv_b_proj.weight
    out_proj.weight (C, H*Dv)        o_proj.weight (+ .bias with bias=True)

Checkpoints with ``rope_interleave`` (DeepSeek's own layout, the default of DeepseekV3Config)
store each rotary part as interleaved pairs; :func:`deinterleave_rope` reorders the rows of
``q_up`` / ``q_proj`` and ``kv_down`` into this module's rotate-half layout once, at load time,
after which the outputs are the same (the rotary channels come out in the order transformers'
interleaved rotation writes them too).

Shapes: B batch, T query length, S key slots, C model width, H heads, Dn non-rotary query/key
head dim (qk_nope_head_dim), Dr rotary head dim (qk_rope_head_dim), Dv value head dim,
Rq query rank (q_lora_rank), Rkv key/value rank (kv_lora_rank), L cache length.
"""

from __future__ import annotations

import math
from numbers import Real

import torch
from torch import Tensor, nn

from attnlab.attention import masks as mask_lib
from attnlab.attention.api import attend
from attnlab.attention.caches import BoundCache
from attnlab.attention.masks import Mask
from attnlab.attention.points import make_points
from attnlab.attention.static_cache import StaticKVCache, check_count
from attnlab.attention.weights import PatternSource
from attnlab.position.rope import RotaryEmbedding, YarnScaling

__all__ = [
    "LatentAttention",
    "LatentCache",
    "deinterleave_rope",
    "full_kv_bytes_per_token",
]


class LatentCache(StaticKVCache):
    """The latent KV cache of one MLA layer: per token only ``c_kv`` (Rkv numbers, after the
    norm) and ``k_pe`` (Dr numbers, after RoPE), shared by all heads.

    A :class:`~attnlab.attention.StaticKVCache` with one "head" whose keys are ``c_kv`` and
    whose values are ``k_pe``: fixed buffers written at tensor positions (position p in slot
    p), per-row ``lengths``, ``valid`` for left-padded batches, :meth:`reorder` (beam search),
    :meth:`reset`, :meth:`truncate` (rollback), :meth:`next_positions`, and views
    (:meth:`attention_inputs`) that an attention module binds through
    :class:`~attnlab.attention.caches.BoundCache` like any slotted cache.

    Args:
        batch: B rows.
        max_len: L positions.
        kv_lora_rank: Rkv, the width of the compressed latent ``c_kv``.
        qk_rope_head_dim: Dr, the width of the shared rotary key ``k_pe``.
        dtype: the cache's dtype (inputs are cast on write); ``torch.int8`` stores codes and
            one fp32 scale per vector, as in StaticKVCache.
        device: where the buffers live.
        check_values: check position values in eager mode (never under ``torch.compile``).
    """

    def __init__(
        self,
        batch: int,
        max_len: int,
        kv_lora_rank: int,
        qk_rope_head_dim: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        check_values: bool = True,
    ) -> None:
        # Checked here first, so that errors name these arguments, not StaticKVCache's.
        for name, value in (
            ("batch", batch),
            ("max_len", max_len),
            ("kv_lora_rank", kv_lora_rank),
            ("qk_rope_head_dim", qk_rope_head_dim),
        ):
            check_count(value, name)
        super().__init__(
            batch,
            1,  # one latent per token, shared by every head
            max_len,
            kv_lora_rank,
            v_head_dim=qk_rope_head_dim,
            dtype=dtype,
            device=device,
            check_values=check_values,
        )

    @property
    def c_kv(self) -> Tensor:
        """The compressed latents (B, 1, L, Rkv), after the norm (int8 codes in an int8 cache)."""
        return self.k

    @property
    def k_pe(self) -> Tensor:
        """The shared rotary keys (B, 1, L, Dr), after RoPE (int8 codes in an int8 cache)."""
        return self.v

    @property
    def kv_lora_rank(self) -> int:
        return self.k.shape[-1]

    @property
    def qk_rope_head_dim(self) -> int:
        return self.v.shape[-1]

    @property
    def bytes_per_token(self) -> int:
        """Bytes one token's contents take in this layer's cache: (Rkv + Dr) numbers of the
        cache's dtype (plus one fp32 scale for each of the two vectors in an int8 cache). The
        slot's position (bookkeeping that every slotted cache keeps) is not counted."""
        buffers = [self.k, self.v]
        if self.quantized:
            buffers += [self.k_scale, self.v_scale]
        return sum(buf.shape[-1] * buf.element_size() for buf in buffers)

    def extra_repr(self) -> str:
        return (
            f"batch={self.batch}, max_len={self.max_len}, kv_lora_rank={self.kv_lora_rank}, "
            f"qk_rope_head_dim={self.qk_rope_head_dim}, dtype={self.k.dtype}"
        )


def full_kv_bytes_per_token(
    n_heads: int,
    qk_head_dim: int,
    v_head_dim: int,
    *,
    dtype: torch.dtype = torch.float32,
) -> int:
    """Bytes one token would take per layer in a full KV cache of the same attention: every
    head's key (``qk_head_dim`` = Dn + Dr) and value (Dv), H * (Dn + Dr + Dv) numbers. Compare
    with :attr:`LatentCache.bytes_per_token`."""
    for name, value in (
        ("n_heads", n_heads),
        ("qk_head_dim", qk_head_dim),
        ("v_head_dim", v_head_dim),
    ):
        check_count(value, name)
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype: expected a torch.dtype, got {dtype!r}")
    return n_heads * (qk_head_dim + v_head_dim) * dtype.itemsize


def deinterleave_rope(t: Tensor, *, group: int, rope_dim: int) -> Tensor:
    """Reorder the output rows of a projection from interleaved rotary pairs to rotate-half.

    ``t`` is a weight (N, in) or a bias (N,) whose N output rows form N / ``group`` groups (one
    per head) of ``group`` rows, the last ``rope_dim`` of each being rotary channels stored as
    pairs (x0, x1), (x2, x3), ... (DeepSeek's layout). Returns a new tensor with those channels
    as (x0, x2, ..., x1, x3, ...), the layout of :class:`RotaryEmbedding`: rotating them there
    gives the same numbers, in the same order, as transformers' interleaved rotation writes.

    For :class:`LatentAttention`: ``q_up`` / ``q_proj`` rows with group Dn + Dr, and
    ``kv_down`` rows (weight and bias) with group Rkv + Dr.
    """
    if not isinstance(t, Tensor) or t.dim() not in (1, 2):
        got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
        raise TypeError(f"t: expected a weight (N, in) or a bias (N,) tensor, got {got}")
    check_count(group, "group")
    check_count(rope_dim, "rope_dim")
    if rope_dim % 2 or rope_dim > group:
        raise ValueError(f"rope_dim: expected an even number <= group={group}, got {rope_dim}")
    if t.shape[0] % group:
        raise ValueError(f"group: expected a divisor of the {t.shape[0]} rows of t, got {group}")
    index = torch.arange(t.shape[0], device=t.device).view(-1, group)  # (heads, group)
    rope = index[:, group - rope_dim :]  # (heads, rope_dim): pairs (even, odd)
    index = torch.cat([index[:, : group - rope_dim], rope[:, 0::2], rope[:, 1::2]], dim=1)
    return t.index_select(0, index.reshape(-1))


def _yarn_mscale(factor: float, mscale: float) -> float:
    """YaRN's temperature term m(s, k) = 0.1 k ln(s) + 1 (1 for s <= 1), as DeepSeek uses it."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def _check_positions(positions: object, b: int, t: int) -> None:
    """RoPE positions for x (B, T, C): an integer tensor (T,) or (B, T)."""
    integer = isinstance(positions, Tensor) and not (
        positions.dtype.is_floating_point or positions.dtype == torch.bool
    )
    if not integer:
        got = positions.dtype if isinstance(positions, Tensor) else type(positions).__name__
        raise TypeError(f"positions: expected an integer tensor (T,) or (B, T), got {got}")
    if tuple(positions.shape) not in ((t,), (b, t)):
        raise ValueError(
            f"positions: expected shape (T,) = ({t},) or (B, T) = ({b}, {t}), "
            f"got {tuple(positions.shape)}"
        )


class LatentAttention(nn.Module):
    """Multi-head latent attention (DeepSeek-V2/V3): self-attention over a compressed latent.

    Args:
        dim: model width C of the input (and output).
        n_heads: heads H.
        q_lora_rank: Rq, the query bottleneck (q_down -> RMSNorm -> q_up); None for a plain
            query projection ``q_proj`` (DeepSeek-V2-Lite).
        kv_lora_rank: Rkv, the width of the cached latent c_kv.
        qk_nope_head_dim: Dn, each head's query/key channels without positions.
        qk_rope_head_dim: Dr, each head's rotary query channels and the shared rotary key.
        v_head_dim: Dv, each head's value width.
        rope: a :class:`RotaryEmbedding` over Dr channels (with its scaling, e.g. YaRN).
        norm_eps: epsilon of the two RMSNorms (transformers builds them with 1e-6 whatever the
            config's ``rms_norm_eps``).
        bias: biases on ``q_down``, ``kv_down`` and ``out_proj`` (transformers'
            ``attention_bias``; the up-projections and ``q_proj`` never have one).
        backend: attention backend name, or "auto".
        scale: the softmax scale; default as transformers computes it: 1 / sqrt(Dn + Dr),
            times m(s, mscale_all_dim)^2 under a YaRN scaling with ``mscale_all_dim`` (see
            :meth:`default_scale`).

    Parameter names and their Hugging Face counterparts: see the module docstring.
    """

    POINTS = ("q", "k", "v", "pattern", "z", "out")

    def __init__(
        self,
        dim: int,
        n_heads: int,
        *,
        q_lora_rank: int | None,
        kv_lora_rank: int,
        qk_nope_head_dim: int,
        qk_rope_head_dim: int,
        v_head_dim: int,
        rope: RotaryEmbedding,
        norm_eps: float = 1e-6,
        bias: bool = False,
        backend: str = "auto",
        scale: float | None = None,
    ) -> None:
        super().__init__()
        for name, value in (
            ("dim", dim),
            ("n_heads", n_heads),
            ("kv_lora_rank", kv_lora_rank),
            ("qk_nope_head_dim", qk_nope_head_dim),
            ("qk_rope_head_dim", qk_rope_head_dim),
            ("v_head_dim", v_head_dim),
        ):
            check_count(value, name)
        if q_lora_rank is not None:
            check_count(q_lora_rank, "q_lora_rank")
        if not isinstance(rope, RotaryEmbedding):
            raise TypeError(
                f"rope: expected a RotaryEmbedding over qk_rope_head_dim={qk_rope_head_dim} "
                f"channels, got {type(rope).__name__}"
            )
        if rope.head_dim != qk_rope_head_dim:
            raise ValueError(
                f"rope: expected a RotaryEmbedding with head_dim = qk_rope_head_dim = "
                f"{qk_rope_head_dim}, got head_dim={rope.head_dim}"
            )
        if isinstance(norm_eps, bool) or not isinstance(norm_eps, Real) or not norm_eps > 0:
            raise ValueError(f"norm_eps: expected a positive number, got {norm_eps!r}")
        if not isinstance(bias, bool):
            raise TypeError(f"bias: expected a bool, got {bias!r}")
        if not isinstance(backend, str):
            raise TypeError(f"backend: expected a backend name or 'auto', got {backend!r}")
        if scale is not None and (
            isinstance(scale, bool) or not isinstance(scale, Real) or not scale > 0
        ):
            raise ValueError(f"scale: expected a positive number or None, got {scale!r}")
        self.dim, self.n_heads = dim, n_heads
        self.q_lora_rank, self.kv_lora_rank = q_lora_rank, kv_lora_rank
        self.qk_nope_head_dim, self.qk_rope_head_dim = qk_nope_head_dim, qk_rope_head_dim
        self.qk_head_dim = qk_nope_head_dim + qk_rope_head_dim
        self.v_head_dim, self.backend = v_head_dim, backend
        q_width = n_heads * self.qk_head_dim
        if q_lora_rank is None:
            self.q_proj = nn.Linear(dim, q_width, bias=False)
        else:  # W_DQ, then W_UQ and W_QR together (paper §2.1.2-2.1.3)
            self.q_down = nn.Linear(dim, q_lora_rank, bias=bias)
            self.q_norm = nn.RMSNorm(q_lora_rank, eps=norm_eps)
            self.q_up = nn.Linear(q_lora_rank, q_width, bias=False)
        # W_DKV and W_KR together: the latent and the shared rotary key.
        self.kv_down = nn.Linear(dim, kv_lora_rank + qk_rope_head_dim, bias=bias)
        self.kv_norm = nn.RMSNorm(kv_lora_rank, eps=norm_eps)
        # W_UK and W_UV together: per head [k_nope | v].
        self.kv_up = nn.Linear(kv_lora_rank, n_heads * (qk_nope_head_dim + v_head_dim), bias=False)
        self.out_proj = nn.Linear(n_heads * v_head_dim, dim, bias=bias)
        self.rope = rope
        self.scale = self.default_scale(qk_nope_head_dim, qk_rope_head_dim, rope)
        if scale is not None:
            self.scale = float(scale)
        make_points(self, self.POINTS)

    @staticmethod
    def default_scale(qk_nope_head_dim: int, qk_rope_head_dim: int, rope: RotaryEmbedding) -> float:
        """The softmax scale transformers uses: 1 / sqrt(Dn + Dr), times m(s, mscale_all_dim)^2
        under YaRN with ``mscale_all_dim`` set.

        DeepSeek's YaRN applies its temperature to the whole score, the non-rotary channels
        included: cos/sin scale the rotary part by m(s, mscale) / m(s, mscale_all_dim) per
        side, and this scale multiplies every channel by m(s, mscale_all_dim)^2."""
        scale = (qk_nope_head_dim + qk_rope_head_dim) ** -0.5
        scaling = rope.scaling
        if isinstance(scaling, YarnScaling) and scaling.mscale_all_dim:
            scale *= _yarn_mscale(scaling.factor, scaling.mscale_all_dim) ** 2
        return scale

    # -- projections ----------------------------------------------------------------------------
    def _queries(self, x: Tensor) -> Tensor:
        """x (B, T, C) -> queries (B, H, T, Dn + Dr), before RoPE."""
        b, t, _ = x.shape
        low_rank = self.q_lora_rank is not None  # through (B, T, Rq) when set
        q = self.q_up(self.q_norm(self.q_down(x))) if low_rank else self.q_proj(x)
        # q: (B, T, H*(Dn+Dr)) -> (B, H, T, Dn+Dr)
        return q.view(b, t, self.n_heads, self.qk_head_dim).transpose(1, 2)

    def _latents(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, T, C) -> c_kv (B, 1, T, Rkv) after the norm, k_pe (B, 1, T, Dr) before RoPE."""
        c_kv, k_pe = self.kv_down(x).split([self.kv_lora_rank, self.qk_rope_head_dim], dim=-1)
        return self.kv_norm(c_kv)[:, None], k_pe[:, None]  # (B, T, n) -> (B, 1, T, n)

    def expand(self, c_kv: Tensor, k_pe: Tensor) -> tuple[Tensor, Tensor]:
        """Latents c_kv (B, 1, S, Rkv) and rotated k_pe (B, 1, S, Dr) -> every head's keys
        (B, H, S, Dn + Dr) and values (B, H, S, Dv)."""
        b, _, s, _ = c_kv.shape
        kv = self.kv_up(c_kv[:, 0])  # (B, S, H*(Dn+Dv))
        kv = kv.view(b, s, self.n_heads, -1).transpose(1, 2)  # (B, H, S, Dn+Dv)
        k_nope, v = kv.split([self.qk_nope_head_dim, self.v_head_dim], dim=-1)
        k_pe = k_pe.expand(-1, self.n_heads, -1, -1)  # (B, 1, S, Dr) -> (B, H, S, Dr)
        return torch.cat([k_nope, k_pe.to(k_nope.dtype)], dim=-1), v

    # -- forward --------------------------------------------------------------------------------
    def forward(
        self,
        x: Tensor,
        *,
        mask: Mask | Tensor | None = None,
        cache: LatentCache | BoundCache | None = None,
        positions: Tensor | None = None,
    ) -> Tensor:
        """Attend from ``x`` (B, T, C) to itself and what ``cache`` holds: (B, T, C).

        Args:
            mask: an attnlab mask or boolean tensor (True = attend) over (B, H, T, S); without
                a cache, pass ``masks.causal()`` for a decoder (nothing is implied).
            cache: a :class:`LatentCache`, written at ``cache.next_positions(T)`` (every token
                real), or a :class:`~attnlab.attention.caches.BoundCache` over one (from
                ``Caches.bind``: its positions and ``valid`` for padded rows). This call's
                latents are written, and all cached ones expanded and attended to, under the
                cache's causal mask over its slots, combined with ``mask``.
            positions: rotary positions of the queries, (T,) or (B, T); default the cache
                positions (or 0..T-1 without a cache). Left-padded rows count real tokens only,
                so pass them then.

        Hook points (see :mod:`attnlab.inspect`): ``q`` (B, H, T, Dn + Dr) after RoPE; ``k``
        (B, H, S, Dn + Dr) and ``v`` (B, H, S, Dv), expanded from the latents attended over
        (this call's alone without a cache, every slot with one; a replacement changes this
        call only, as the cache holds latents); ``pattern`` (B, H, T, S; computed only when
        hooked); ``z`` (B, H, T, Dv, each head's output before the output projection) and
        ``out`` (B, T, C).
        """
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != self.dim:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x: expected shape (B, T, C) with C = {self.dim}, got {got}")
        bound = self._bind(cache, x.shape[1])
        if isinstance(mask, Tensor):
            mask = mask_lib.from_tensor(mask)
        elif mask is not None and not isinstance(mask, Mask):
            raise TypeError(
                f"mask: expected an attnlab Mask, a boolean tensor or None, got {mask!r}"
            )
        if positions is not None:
            _check_positions(positions, x.shape[0], x.shape[1])
        q = self._queries(x)  # (B, H, T, Dn + Dr)
        c_kv, k_pe = self._latents(x)  # (B, 1, T, Rkv), (B, 1, T, Dr)
        if positions is None and bound is not None:
            positions = bound.positions  # where the tokens are stored: (1 or B, T)
            if positions.dim() == 2 and positions.shape[0] == 1:
                positions = positions[0]  # the same for every row
        elif positions is None:
            positions = torch.arange(x.shape[1], device=x.device)
        q_nope, q_pe = q.split([self.qk_nope_head_dim, self.qk_rope_head_dim], dim=-1)
        q_pe, k_pe = self.rope(q_pe, k_pe, positions)  # k_pe: one rotary key for all heads
        q = torch.cat([q_nope, q_pe], dim=-1)  # (B, H, T, Dn + Dr)
        if bound is not None:
            # The cache stores and returns the latents only; every head's keys and values
            # are re-expanded from them below.
            view = bound.attention_inputs(c_kv, k_pe)
            c_kv, k_pe = view.k.to(c_kv.dtype), view.v.to(k_pe.dtype)  # (B, 1, L, Rkv/Dr)
            mask = view.mask if mask is None else view.mask & mask  # (B, 1, T, L)
        k, v = self.expand(c_kv, k_pe)  # (B, H, S, Dn + Dr), (B, H, S, Dv)
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        pattern = None
        if self.hook_pattern.active:
            source = PatternSource(q, k, mask=mask, bias=None, scale=self.scale)
            pattern = self.hook_pattern.fire(source)
        if pattern is None:
            out = attend(q, k, v, mask=mask, scale=self.scale, backend=self.backend)
        else:  # a hook replaced the pattern: weigh the values eagerly, so gradients reach it
            out = pattern.to(v.dtype) @ v  # (B, H, T, Dv)
        z = self.hook_z(out)  # (B, H, T, Dv)
        b, _, t, _ = z.shape
        out = self.out_proj(z.transpose(1, 2).reshape(b, t, -1))  # (B, H, T, Dv) -> (B, T, C)
        return self.hook_out(out)

    def _bind(self, cache: object, t: int) -> BoundCache | None:
        """The cache as a bound view over a LatentCache sized for this module (or None)."""
        if cache is None:
            return None
        if isinstance(cache, LatentCache):
            cache = BoundCache(cache, cache.next_positions(t), None)
        if not isinstance(cache, BoundCache) or not isinstance(cache.cache, LatentCache):
            inner = cache.cache if isinstance(cache, BoundCache) else cache
            raise TypeError(
                "cache: expected a LatentCache (or a BoundCache over one, from Caches.bind), "
                f"got {type(inner).__name__}"
            )
        held = (cache.cache.kv_lora_rank, cache.cache.qk_rope_head_dim)
        if held != (self.kv_lora_rank, self.qk_rope_head_dim):
            raise ValueError(
                f"cache: expected a LatentCache of (kv_lora_rank, qk_rope_head_dim) = "
                f"{(self.kv_lora_rank, self.qk_rope_head_dim)}, got {held}"
            )
        return cache

    def make_cache(
        self,
        batch: int,
        max_len: int,
        *,
        dtype: torch.dtype | None = None,
        device=None,
        check_values: bool = True,
    ) -> LatentCache:
        """A :class:`LatentCache` for this layer; dtype and device default to the weights'."""
        weight = self.kv_down.weight
        return LatentCache(
            batch,
            max_len,
            self.kv_lora_rank,
            self.qk_rope_head_dim,
            dtype=dtype or weight.dtype,
            device=device or weight.device,
            check_values=check_values,
        )

    def extra_repr(self) -> str:
        return (
            f"n_heads={self.n_heads}, q_lora_rank={self.q_lora_rank}, "
            f"kv_lora_rank={self.kv_lora_rank}, qk_nope_head_dim={self.qk_nope_head_dim}, "
            f"qk_rope_head_dim={self.qk_rope_head_dim}, v_head_dim={self.v_head_dim}, "
            f"scale={self.scale:.6g}, backend={self.backend!r}"
        )
