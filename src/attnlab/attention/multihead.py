"""Multi-head attention: projections, positions and caching around one ``attend`` call.

This module builds queries, keys and values, applies positions (RoPE rotates q and k; ALiBi and
T5 add a score bias), keeps the KV cache, and hands the kernel work to a score function, which
for every score but ``additive`` is :func:`attnlab.attention.attend` with a backend by name.

Self-attention: ``mha(x)``. Cross-attention: ``mha(x, context)``, keys and values from
``context`` (of width ``kv_dim``). Grouped-query attention: ``n_kv_heads`` < ``n_heads``
(multi-query with 1).

Shapes: B batch, T query length, S key length, C model width, H heads, Hkv key/value heads,
Dh head dim.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.attention import bias as bias_lib
from attnlab.attention import kinds
from attnlab.attention import masks as mask_lib
from attnlab.attention.bias import Bias, RelativePositionBias
from attnlab.attention.caches import BoundCache, make_layer_cache
from attnlab.attention.kv_cache import KVCache
from attnlab.attention.masks import Mask
from attnlab.attention.points import make_points
from attnlab.attention.scores import make_score
from attnlab.attention.state_cache import StateCache
from attnlab.attention.static_cache import position_mask
from attnlab.attention.weights import PatternSource
from attnlab.position.rope import RotaryEmbedding

Position = RotaryEmbedding | RelativePositionBias | Bias | None


class MultiHeadAttention(nn.Module):
    """Multi-head, grouped-query and multi-query attention, self or cross.

    Args:
        dim: model width C of the input (and output).
        n_heads: query heads H.
        n_kv_heads: key/value heads Hkv (H must be a multiple); default H.
        head_dim: per-head width Dh; default C // H.
        kv_dim: width of the cross-attention context; default C.
        bias: biases on the q/k/v projections (and the output projection, unless
            ``out_bias`` says otherwise).
        out_bias: a bias on the output projection; default ``bias`` (Qwen2 has biases on
            q/k/v only).
        qk_norm: RMSNorm on each query and key head before attention (stabilises training of
            large models; Dehghani et al. 2023, Wortsman et al. 2023).
        qk_norm_eps: the epsilon of those norms.
        dropout: dropout on attention probabilities while training.
        position: a ``RotaryEmbedding`` (rotates q and k), a ``RelativePositionBias`` (T5, a
            learned bias, trained with this module) or a fixed ``Bias`` such as ``alibi(H)``;
            applied in self-attention only (cross-attention spans two sequences).
        score: scoring function name: "dot", "general", "cosine", "euclidean", "additive".
        backend: attention backend name, or "auto".
        attention: the kind of attention (:mod:`attnlab.attention.kinds`): "softmax",
            "local", "linear", "performer", "linformer"; it applies to self-attention
            (cross-attention relates two sequences and stays softmax).
        options: what the kind reads: ``window`` (local), ``n_features`` (performer),
            ``rank`` and ``max_len`` (linformer), ``causal`` (local: a causal window, default
            True; False for encoders).
        softcap: soft-cap self-attention scores at this value, c · tanh(s / c) (Gemma 2).
        sinks: a learned sink logit per head in every softmax row (gpt-oss; parameter
            ``sinks`` (H,), starting at 0).
        scale: the score scale of the dot product (default 1 / sqrt(Dh); Gemma 2 uses
            query_pre_attn_scalar ** -0.5).
    """

    POINTS = ("q", "k", "v", "pattern", "z", "out")

    def __init__(
        self,
        dim: int,
        n_heads: int,
        n_kv_heads: int | None = None,
        *,
        head_dim: int | None = None,
        kv_dim: int | None = None,
        bias: bool = True,
        out_bias: bool | None = None,
        qk_norm: bool = False,
        qk_norm_eps: float = 1e-6,
        dropout: float = 0.0,
        position: Position = None,
        score: str = "dot",
        backend: str = "auto",
        attention: str = "softmax",
        options: dict | None = None,
        softcap: float | None = None,
        sinks: bool = False,
        scale: float | None = None,
    ) -> None:
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if n_kv_heads < 1 or n_heads % n_kv_heads:
            raise ValueError(
                f"n_kv_heads: expected a divisor of n_heads={n_heads}, got {n_kv_heads}"
            )
        if head_dim is None:
            if dim % n_heads:
                raise ValueError(
                    f"dim: expected a multiple of n_heads={n_heads} (or pass head_dim), got {dim}"
                )
            head_dim = dim // n_heads
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout: expected a float in [0, 1), got {dropout}")
        kv_dim = dim if kv_dim is None else kv_dim
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.dropout, self.backend = dropout, backend
        self.q_proj = nn.Linear(dim, n_heads * head_dim, bias=bias)
        self.k_proj = nn.Linear(kv_dim, n_kv_heads * head_dim, bias=bias)
        self.v_proj = nn.Linear(kv_dim, n_kv_heads * head_dim, bias=bias)
        out_bias = bias if out_bias is None else out_bias
        self.out_proj = nn.Linear(n_heads * head_dim, dim, bias=out_bias)
        self.q_norm = nn.RMSNorm(head_dim, eps=qk_norm_eps) if qk_norm else None
        self.k_norm = nn.RMSNorm(head_dim, eps=qk_norm_eps) if qk_norm else None
        if position is not None and not isinstance(
            position, (RotaryEmbedding, RelativePositionBias, Bias)
        ):
            raise TypeError(
                "position: expected a RotaryEmbedding, RelativePositionBias, Bias or None, "
                f"got {type(position).__name__}"
            )
        self.position = position
        self.score = make_score(score, head_dim=head_dim, n_kv_heads=n_kv_heads)
        self.kind = kinds.get_kind(attention)
        if not self.kind.scores and (
            score != "dot" or isinstance(position, Bias | RelativePositionBias)
        ):
            raise ValueError(
                f"attention: {attention!r} has no scores for a score function or a position "
                "bias to act on; expected score='dot' and no ALiBi or T5 position"
            )
        self.args = kinds.KindArgs(head_dim, n_heads, n_kv_heads, **(options or {}))
        # The module that runs a non-softmax kind (its parameters and buffers, if any, are
        # this module's); None for softmax and local attention.
        self.kernel = self.kind.build(self.args)
        if (softcap is not None or sinks or scale is not None) and not self.kind.scores:
            raise ValueError(
                f"attention: {attention!r} has no softmax scores to soft-cap, scale or add sinks to"
            )
        if scale is not None and score != "dot":
            raise ValueError(f"scale: a dot-product scale; score={score!r} owns its scale")
        self.softcap, self.scale = softcap, scale
        self.sinks = nn.Parameter(torch.zeros(n_heads)) if sinks else None
        make_points(self, self.POINTS)

    def _heads(self, x: Tensor) -> Tensor:
        # The head count comes from the tensor: under tensor parallelism the projections give
        # this rank's heads only.
        b, t, _ = x.shape
        return x.view(b, t, -1, self.head_dim).transpose(1, 2)  # (B, T, n*Dh) -> (B, n, T, Dh)

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        *,
        mask: Mask | Tensor | None = None,
        cache: KVCache | BoundCache | None = None,
        positions: Tensor | None = None,
    ) -> Tensor:
        """Attend from ``x`` (B, T, C) to itself, or to ``context`` (B, S, kv_dim): (B, T, C).

        Args:
            mask: an attnlab mask or boolean tensor (True = attend) over (B, H, T, S).
            cache: a KV cache. In self-attention new keys/values are appended and all cached
                ones attended to, so decoding token by token equals the full forward. In
                cross-attention the cache is filled from ``context`` on the first call and
                reused afterwards (the context's keys/values are computed once per sequence).
                A slotted cache (a :class:`~attnlab.attention.caches.BoundCache` from
                ``Caches.bind``) writes at its tensor positions and supplies the mask over its
                slots, combined with ``mask`` (the model then passes none).
            positions: absolute positions of the queries, (T,) or (B, T), for RoPE; default
                continues the cache (or 0..T-1 without one); a slotted cache's positions.

        Hook points (see :mod:`attnlab.inspect`): ``q`` (B, H, T, Dh), ``k`` and ``v``
        (B, Hkv, T, Dh) after projections and positions (this call's keys, before the cache),
        ``pattern`` (B, H, T, S; computed only when hooked), ``z`` (B, H, T, Dh, each head's
        output before the output projection) and ``out`` (B, T, C).
        """
        if x.dim() != 3:
            raise ValueError(f"x: expected 3 dims (B, T, C), got shape {tuple(x.shape)}")
        source = x if context is None else context
        q = self._heads(self.q_proj(x))  # (B, H, T, Dh)
        if self.q_norm is not None:
            q = self.q_norm(q)
        slotted = isinstance(cache, BoundCache)
        if slotted and context is not None:
            raise TypeError("cache: cross-attention keeps the source in a dynamic KVCache")
        reuse = context is not None and cache is not None and cache.length
        if reuse:
            k, v = cache.k[:, :, : cache.length], cache.v[:, :, : cache.length]  # reused
        else:
            k = self._heads(self.k_proj(source))  # (B, Hkv, S, Dh)
            v = self._heads(self.v_proj(source))  # (B, Hkv, S, Dh)
            if self.k_norm is not None:
                k = self.k_norm(k)

        if positions is None and slotted:
            positions = cache.positions  # where the tokens are stored: (1 or B, T)
            if positions.dim() == 2 and positions.shape[0] == 1:
                positions = positions[0]  # the same for every row
        elif positions is None:
            start = cache.length if cache is not None else 0
            positions = torch.arange(start, start + x.shape[1], device=x.device)
        bias = None
        # Positions relate tokens of one sequence; in cross-attention queries and keys come from
        # different sequences, so (as in T5 and the original Transformer) none are applied.
        if context is None:
            if isinstance(self.position, RotaryEmbedding):
                q, k = self.position(q, k, positions)
            elif isinstance(self.position, RelativePositionBias):
                bias = self.position()
            elif isinstance(self.position, Bias):
                bias = self.position
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        if isinstance(mask, Tensor):
            mask = mask_lib.from_tensor(mask)
        own = context is None  # this module's kind applies to self-attention
        window = self.args.window if own and "window" in self.kind.options else None
        if slotted and cache.recurrent:
            if self.kernel is None or not own:
                raise TypeError("cache: a running state serves kernel attention only")
            out = cache.step(self.kernel, q, k, v)  # (B, H, T, Dh); the state has no pattern
            return self._output(out)
        if slotted:
            view = cache.attention_inputs(k, v)  # (B, Hkv, S, Dh) each, mask (B, 1, T, S)
            k, v = view.k, view.v
            mask = view.mask if mask is None else view.mask & mask
            if window is not None:  # keys sit in slots: the window follows their positions
                mask = mask & position_mask(view.key_positions, cache.positions, window=window)
            if bias is not None:  # keys sit in slots: the bias follows their positions
                q_pos = cache.positions if cache.positions.dim() == 2 else cache.positions[None]
                bias = bias_lib.from_tensor(
                    bias.between(q.shape[1], q_pos, view.key_positions)
                )  # (B, H, T, S)
        else:
            if cache is not None and not reuse:
                k, v = cache.update(k, v)
            if window is not None:
                band = mask_lib.sliding_window(window, causal=self.args.causal)
                mask = band if mask is None else band & mask
        dropout_p = self.dropout if self.training else 0.0
        if self.kernel is not None and own:
            return self._output(self._kernel_attention(q, k, v, mask))
        q, k, scale = self.score.prepare(q, k)
        if self.scale is not None:
            scale = self.scale
        # Soft-capping and sinks belong to this module's self-attention scores.
        softcap = self.softcap if own else None
        sinks = self.sinks if own else None
        pattern = None
        if self.hook_pattern.active:
            source = PatternSource(
                q,
                k,
                mask=mask,
                bias=bias,
                scale=scale if scale is not None else 1.0 / math.sqrt(q.shape[-1]),
                logits=self.score.logits,
                offset=0 if context is not None else None,
                softcap=softcap,
                sinks=sinks,
            )
            pattern = self.hook_pattern.fire(source)
        if pattern is None:
            out = self.score.run(
                q, k, v, scale=scale, mask=mask, bias=bias, dropout_p=dropout_p,
                backend=self.backend, softcap=softcap, sinks=sinks,
            )  # fmt: skip
        else:
            out = self._replaced(pattern, v, dropout_p)
        return self._output(out)

    def _replaced(self, pattern: Tensor, v: Tensor, dropout_p: float) -> Tensor:
        """The output of a pattern a hook replaced: its weighted sum of values, eagerly, so
        that gradients reach the replacement (attribution, patching)."""
        g = pattern.shape[1] // v.shape[1]  # query heads per key/value head
        weights = F.dropout(pattern, dropout_p) if dropout_p else pattern
        return weights.to(v.dtype) @ v.repeat_interleave(g, dim=1)  # (B, H, T, Dh)

    def _kernel_attention(self, q: Tensor, k: Tensor, v: Tensor, mask) -> Tensor:
        """A non-softmax kind over all keys: (B, H, T, Dh). Attention-probability dropout
        does not apply (there are no probabilities)."""
        pattern = None
        if self.hook_pattern.active and hasattr(self.kernel, "pattern_source"):
            pattern = self.hook_pattern.fire(self.kernel.pattern_source(q, k, mask))
        if pattern is not None:
            return self._replaced(pattern, v, 0.0)
        return self.kernel(q, k, v, mask)

    def _output(self, out: Tensor) -> Tensor:
        """Heads' outputs (B, H, T, Dh) through the hook points and the output projection."""
        z = self.hook_z(out)  # (B, H, T, Dh)
        b, _, t, _ = z.shape
        out = self.out_proj(z.transpose(1, 2).reshape(b, t, -1))  # (B, H, T, Dh) -> (B, T, C)
        return self.hook_out(out)

    def make_cache(
        self,
        batch: int,
        max_len: int,
        *,
        kind: str = "dynamic",
        window: int | None = None,
        dtype: torch.dtype | None = None,
        device=None,
        check_values: bool = True,
        sink_tokens: int = 0,
    ) -> nn.Module:
        """A KV cache of ``kind`` ("dynamic", "static", "ring"; see
        :mod:`attnlab.attention.caches`) sized for this module's key/value heads; its dtype
        defaults to the weights'. Kernel attention (linear, performer) gets its running state
        (:class:`~attnlab.attention.state_cache.StateCache`) whatever the kind."""
        weight = self.k_proj.weight
        if kinds.is_kernel(self.kernel):
            return StateCache(
                batch,
                self.n_kv_heads,
                self.kernel.feature_dim(self.head_dim),
                self.head_dim,
                max_len=max_len,
                dtype=dtype or weight.dtype,
                device=device or weight.device,
            )
        return make_layer_cache(
            kind,
            batch,
            self.n_kv_heads,
            max_len,
            self.head_dim,
            window=window,
            dtype=dtype or weight.dtype,
            device=device or weight.device,
            check_values=check_values,
            sink_tokens=sink_tokens,
        )
