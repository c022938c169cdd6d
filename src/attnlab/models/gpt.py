"""GPT: a decoder-only language model in two flavours chosen by configuration.

* GPT-2 (Radford et al. 2019): learned absolute positions, LayerNorm, tanh-GELU MLP, multi-head
  attention with biases, output head tied to the token embedding.
* Llama (Touvron et al. 2023): rotary positions, RMSNorm, SwiGLU MLP, grouped-query attention,
  no biases, untied head.

Options beyond both give Gemma 2 (Gemma Team 2024): a ``1 + weight`` RMSNorm, sandwich norms,
a tanh-GeGLU MLP, scaled embeddings, a score scale of its own, soft-capped attention scores and
logits, and sliding-window layers alternating with global ones (``layer_windows``).

Both are pre-norm stacks of :class:`attnlab.layers.Block`; attention runs through
:func:`attnlab.attention.attend` with the backend named in the config.

Shapes: B batch, T tokens in this call, S tokens cached plus new, C width, V vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.attention import kinds, masks
from attnlab.attention.caches import Caches
from attnlab.layers import Block, make_mlp, make_norm
from attnlab.layers.mlp import GATED, MLPS
from attnlab.layers.norms import NORMS
from attnlab.models import presets
from attnlab.models.checks import check_choice, check_flags, check_numbers, check_sizes
from attnlab.models.heads import apply_layer_heads, attention_names, check_layer_heads
from attnlab.models.output import ModelOutput, check_input_ids, run_blocks
from attnlab.models.positions import PositionArgs, make_positions
from attnlab.models.variants import check_variants, self_attention
from attnlab.position import LearnedPositionalEmbedding, scaling_from_dict


@dataclass
class GPTConfig:
    vocab_size: int = 50257  # tokens in the vocabulary
    max_len: int = 1024  # longest sequence (learned positions, cache size by default)
    n_layer: int = 12  # Transformer blocks
    n_head: int = 12  # query heads
    n_kv_head: int | None = None  # key/value heads (grouped-query); None = n_head
    dim: int = 768  # model width C
    head_dim: int | None = None  # per-head width Dh; None = dim // n_head
    hidden: int | None = None  # MLP width; None = 4C (GELU) or Llama's 8C/3 rounded (gated)
    hidden_multiple_of: int = 256  # a gated MLP's default hidden width is rounded up to this
    norm: str = "layernorm"  # "layernorm", "rmsnorm" or "rmsnorm_offset" (Gemma: 1 + weight)
    norm_eps: float = 1e-5  # epsilon of every norm
    mlp: str = "gelu_tanh"  # "gelu", "gelu_tanh", "swiglu" or "geglu_tanh" (Gemma)
    position: str = "learned"  # none, learned, sinusoidal, rope, alibi or t5
    rope_base: float = 10000.0  # RoPE base (theta)
    rope_scaling: dict | None = None  # {"kind": "yarn"|"llama3"|"dynamic"|"linear"|"ntk", ...}
    attention: str = "softmax"  # softmax, local, linear or performer (attnlab.attention.kinds)
    window: int | None = None  # local attention: the most recent keys each query sees
    layer_windows: list[int | None] | None = None  # per layer: local window or None (global)
    n_features: int | None = None  # performer: random features (None: D ln D)
    rank: int | None = None  # linformer: projected key/value rows (encoders only)
    score: str = "dot"  # softmax scoring: dot, general, cosine, euclidean or additive
    bias: bool = True  # biases in linear layers and LayerNorm
    qkv_bias: bool | None = None  # biases on the query/key/value projections; None = bias
    out_bias: bool | None = None  # bias on the attention output projection; None = bias
    tie_embeddings: bool = True  # output head shares the token embedding matrix
    qk_norm: bool = False  # RMSNorm on query/key heads
    qk_norm_eps: float = 1e-6  # epsilon of the query/key RMSNorm
    softcap: float | None = None  # attention scores soft-capped at this value (Gemma 2: 50)
    attn_scale: float | None = None  # dot-product score scale; None = head_dim ** -0.5
    sandwich_norm: bool = False  # also norm each sub-layer's output before the residual add
    scale_embeddings: bool = False  # token embeddings times sqrt(dim), in their dtype (Gemma)
    logit_softcap: float | None = None  # logits soft-capped: c * tanh(logits / c) (Gemma 2: 30)
    sinks: bool = False  # a learned attention sink logit per head (gpt-oss)
    dropout: float = 0.0  # dropout on embeddings, attention probabilities and residuals
    backend: str = "auto"  # attention backend name
    layer_heads: dict[str, dict] | None = None  # pruned attention modules -> heads kept, kv heads

    def __post_init__(self) -> None:
        check_sizes(self, "vocab_size", "max_len", "n_layer", "n_head", "dim")
        check_sizes(self, "n_kv_head", "head_dim", "hidden", "hidden_multiple_of")
        check_choice(self, "norm", NORMS)
        check_choice(self, "mlp", MLPS)
        check_numbers(self, "norm_eps", "qk_norm_eps")
        check_numbers(self, "rope_base", positive=True)
        check_numbers(self, "dropout", high=1.0)
        check_flags(self, "bias", "tie_embeddings", "qk_norm", "sinks")
        check_flags(self, "sandwich_norm", "scale_embeddings")
        for name in ("softcap", "attn_scale", "logit_softcap"):
            if getattr(self, name) is not None:
                check_numbers(self, name, positive=True)
        if self.qkv_bias is None:
            self.qkv_bias = self.bias
        if self.out_bias is None:
            self.out_bias = self.bias
        check_flags(self, "qkv_bias", "out_bias")
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.n_head % self.n_kv_head:
            raise ValueError(
                f"n_kv_head: expected a divisor of n_head={self.n_head}, got {self.n_kv_head}"
            )
        if self.head_dim is None:  # an explicit head_dim frees dim from n_head (Qwen3)
            if self.dim % self.n_head:
                raise ValueError(
                    f"dim: expected a multiple of n_head={self.n_head}, got {self.dim}"
                )
            self.head_dim = self.dim // self.n_head
        check_variants(self, causal=True, family="a decoder-only model")
        self._check_layer_windows()
        if self.attn_scale is not None and (
            self.score != "dot" or not kinds.get_kind(self.attention).scores
        ):
            raise ValueError(
                "attn_scale: scales dot-product softmax scores; this config has "
                f"attention={self.attention!r}, score={self.score!r}"
            )
        if self.rope_scaling is not None and self.position != "rope":
            raise ValueError(
                f"rope_scaling: scales rotary positions; this config has position={self.position!r}"
            )
        scaling_from_dict(self.rope_scaling)  # checked here, built with the model
        if self.hidden is None:
            if self.mlp in GATED:  # Llama: 2/3 of 4C, rounded up to a multiple
                m = self.hidden_multiple_of
                self.hidden = m * math.ceil(int(8 * self.dim / 3) / m)
            else:
                self.hidden = 4 * self.dim
        check_layer_heads(self, attention_names(("", self.n_layer, ["attn"])))

    def _check_layer_windows(self) -> None:
        """``layer_windows``: one entry per layer, each a window (a positive int) or None, on
        softmax attention (windowed layers become local attention, the others stay softmax)."""
        lw = self.layer_windows
        if lw is None:
            return
        if not isinstance(lw, list | tuple) or len(lw) != self.n_layer:
            raise ValueError(
                f"layer_windows: expected a list of n_layer={self.n_layer} entries (a window or "
                f"None each), got {lw!r:.120}"
            )
        for w in lw:
            if w is not None and (not isinstance(w, int) or isinstance(w, bool) or w < 1):
                raise ValueError(
                    f"layer_windows: expected each entry a positive int or None, got {w!r:.40}"
                )
        if self.attention != "softmax":
            raise ValueError(
                "layer_windows: gives some layers local attention and leaves the others softmax; "
                f"expected attention='softmax', got {self.attention!r}"
            )
        self.layer_windows = list(lw)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> GPTConfig:
        """A named configuration (see ``PRESETS``) with fields overridden by keyword."""
        return presets.build(cls, PRESETS, name, overrides)


PRESETS: dict[str, dict] = {
    "gpt2": {},  # 124M
    "gpt2-medium": {"n_layer": 24, "n_head": 16, "dim": 1024},  # 355M
    "llama-small": {
        "vocab_size": 32000,
        "max_len": 2048,
        "n_layer": 12,
        "n_head": 12,
        "n_kv_head": 4,
        "dim": 768,
        "norm": "rmsnorm",
        "mlp": "swiglu",
        "position": "rope",
        "bias": False,
        "tie_embeddings": False,
    },
}


class GPT(nn.Module):
    """Decoder-only language model; ``GPT.from_preset("gpt2")`` or ``GPT(GPTConfig(...))``."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = c = config
        self.tok = nn.Embedding(c.vocab_size, c.dim)
        # One position module for the stack: an absolute table, or what every layer shares.
        pos = make_positions(
            c.position,
            PositionArgs(
                c.dim, c.head_dim, c.n_head, c.max_len, causal=True, rope_base=c.rope_base,
                rope_scaling=scaling_from_dict(c.rope_scaling),
                embedding_scale=0.02,  # the token embeddings' init std (see _init_weights)
            ),
        )  # fmt: skip
        self.pos = pos.embedding
        self.drop = nn.Dropout(c.dropout)
        windows = c.layer_windows or [None] * c.n_layer
        self.blocks = nn.ModuleList(
            Block(
                self_attention(
                    c,
                    pos.attention,
                    causal=True,
                    layer_window=window,
                    n_kv_heads=c.n_kv_head,
                    head_dim=c.head_dim,
                    bias=c.qkv_bias,
                    out_bias=c.out_bias,
                    qk_norm=c.qk_norm,
                    qk_norm_eps=c.qk_norm_eps,
                    softcap=c.softcap,
                    sinks=c.sinks,
                    scale=c.attn_scale,
                ),
                make_mlp(c.mlp, c.dim, c.hidden, bias=c.bias),
                lambda: make_norm(c.norm, c.dim, eps=c.norm_eps, bias=c.bias),
                sandwich=c.sandwich_norm,
                dropout=c.dropout,
            )
            for window in windows
        )
        self.norm = make_norm(c.norm, c.dim, eps=c.norm_eps, bias=c.bias)
        self.head = nn.Linear(c.dim, c.vocab_size, bias=False)
        self.apply(self._init_weights)
        if c.tie_embeddings:
            self.head.weight = self.tok.weight
        # GPT-2: scale the projections that write into the residual stream by 1/sqrt(2 L).
        for name, p in self.named_parameters():
            if name.endswith(("out_proj.weight", "mlp.down.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * c.n_layer))
        apply_layer_heads(self)  # pruned layers: their own heads

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> GPT:
        return cls(GPTConfig.from_preset(name, **overrides))

    def make_caches(
        self, batch: int, max_len: int | None = None, *, kind: str = "dynamic", **kwargs
    ) -> Caches:
        """Preallocated key/value caches for decoding, one per block: ``kind`` "dynamic",
        "static" or "ring" (with ``window=``), see :mod:`attnlab.attention.caches`; ``dtype``,
        ``device`` default to the weights'."""
        n = max_len or self.config.max_len
        return Caches(
            [block.attn.make_cache(batch, n, kind=kind, **kwargs) for block in self.blocks]
        )

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        *,
        caches: Caches | None = None,
        positions: Tensor | None = None,
        cache_positions: Tensor | None = None,
        labels: Tensor | None = None,
        logits_to_keep: int = 0,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> ModelOutput:
        """Logits for every position of ``input_ids`` (B, T).

        Args:
            attention_mask: (B, S) with 1 for real tokens and 0 for padding, covering cached
                and new tokens (Hugging Face convention; with a static or ring cache its last T
                columns are enough); positions then count real tokens only, so left-padded
                rows see the same positions as unpadded ones.
            caches: from :meth:`make_caches`; new keys/values are appended.
            positions: absolute positions (B, T) or (T,); default from ``attention_mask`` or
                from the cache length.
            cache_positions: with a static or ring cache, where this call's tokens are stored,
                (T,) or (B, T); default each row's next free position.
            labels: token ids (B, T) for the next-token loss (see :func:`lm_loss`).
            logits_to_keep: logits of the last this many positions only (B, n, V); 0 = all.
                A prompt's prefill needs one: the vocabulary projection of the others is
                wasted work (a third of GPT-2's forward at 512 tokens).
            output_hidden_states, output_attentions: also return every block's input (and the
                final normalised output) and every block's attention weights (B, H, T, S).
        """
        check_input_ids(input_ids)
        t = input_ids.shape[1]
        if isinstance(caches, list | tuple):  # layer caches made one by one
            caches = Caches(list(caches))
        if caches is not None and caches.slotted:
            layer_caches, mask, positions = self._slotted(
                caches, t, attention_mask, positions, cache_positions
            )
        else:
            layer_caches = caches
            mask, positions = self._dynamic(input_ids, caches, attention_mask, positions)

        x = self.tok(input_ids)  # (B, T, C)
        if self.config.scale_embeddings:  # the factor rounded to the weights' dtype, as Gemma's
            x = x * torch.tensor(self.config.dim**0.5, dtype=x.dtype, device=x.device)
        if self.pos is not None:
            x = x + self.pos(positions)
        stack = run_blocks(
            self.blocks,
            self.drop(x),
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            caches=layer_caches,
            mask=mask,
            positions=positions,
        )
        x = self.norm(stack.x)
        if (
            isinstance(logits_to_keep, bool)
            or not isinstance(logits_to_keep, int)
            or logits_to_keep < 0
        ):
            raise ValueError(f"logits_to_keep: expected an int >= 0, got {logits_to_keep!r}")
        if logits_to_keep and labels is not None:
            raise ValueError("logits_to_keep: the loss needs every position's logits")
        logits = self.head(x[:, -logits_to_keep:] if logits_to_keep else x)  # (B, T or n, V)
        cap = self.config.logit_softcap
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return ModelOutput(
            logits,
            hidden_states=(*stack.hidden_states, x) if output_hidden_states else None,
            attentions=stack.attentions,
            loss=lm_loss(logits, labels, attention_mask) if labels is not None else None,
        )

    def _dynamic(self, input_ids, caches, attention_mask, positions):
        """Mask and positions of a call without a cache or with a dynamic one."""
        b, t = input_ids.shape
        past = caches.length if caches is not None else 0
        if past + t > self.config.max_len and isinstance(self.pos, LearnedPositionalEmbedding):
            raise ValueError(
                f"input_ids: {past + t} positions exceed max_len={self.config.max_len}"
            )
        mask = masks.causal()
        if attention_mask is not None:
            if attention_mask.shape != (b, past + t):
                raise ValueError(
                    f"attention_mask: expected shape (B, cached + new) = {(b, past + t)}, "
                    f"got {tuple(attention_mask.shape)}"
                )
            keep = attention_mask.bool()
            mask = mask & masks.from_tensor(keep[:, None, None, :])
            if positions is None:
                positions = (keep.long().cumsum(-1) - 1).clamp(min=0)[:, past:]
        if positions is None:
            positions = torch.arange(past, past + t, device=input_ids.device)
        return mask, positions

    def _slotted(self, caches, t, attention_mask, positions, cache_positions):
        """Per-layer cache views, no model mask (the caches supply it), and positions of a
        call over a static or ring cache."""
        if cache_positions is None:
            cache_positions = caches.next_positions(t)
        valid = None
        if attention_mask is not None:
            if attention_mask.dim() != 2 or attention_mask.shape[1] < t:
                raise ValueError(
                    f"attention_mask: expected (B, S) with S >= {t} new tokens, got "
                    f"{tuple(attention_mask.shape)}"
                )
            keep = attention_mask.bool()
            valid = keep[:, -t:]
            if positions is None:
                positions = (keep.long().cumsum(-1) - 1).clamp(min=0)[:, -t:]
        if positions is None:
            positions = cache_positions
        return caches.bind(cache_positions, valid), None, positions


def lm_loss(logits: Tensor, labels: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """Mean next-token cross-entropy: position t predicts labels[t + 1]; padded targets (mask 0,
    using the last T columns of ``attention_mask``) and labels equal to -100 are ignored."""
    if labels.dim() != 2 or labels.shape[1] < 2:
        raise ValueError(f"labels: expected (B, T) with T >= 2, got shape {tuple(labels.shape)}")
    targets = labels[:, 1:].clone()
    if attention_mask is not None:
        targets[attention_mask[:, -labels.shape[1] + 1 :] == 0] = -100
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100
    )
