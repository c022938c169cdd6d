"""The residual Transformer block, pre-norm (GPT-2, Llama) or post-norm (Vaswani et al. 2017,
BERT), with optional cross-attention for decoders. Shapes: x (B, T, C), context (B, S, C)."""

from __future__ import annotations

from torch import Tensor, nn

from attnlab.attention.kv_cache import KVCache
from attnlab.attention.masks import Mask
from attnlab.attention.multihead import MultiHeadAttention


class Block(nn.Module):
    """x + attn(norm(x)), then x + mlp(norm(x)) (pre-norm); or norm(x + attn(x)), ... (post-norm).

    Args:
        attn: self-attention module.
        mlp: feed-forward module.
        make_norm: a function giving a fresh norm layer (one per sub-layer).
        prenorm: pre-norm (True) or post-norm (False) residual form.
        dropout: dropout on each sub-layer's output before the residual add.
        cross: optional cross-attention module (encoder-decoder).
    """

    def __init__(
        self,
        attn: MultiHeadAttention,
        mlp: nn.Module,
        make_norm,
        *,
        prenorm: bool = True,
        dropout: float = 0.0,
        cross: MultiHeadAttention | None = None,
    ) -> None:
        super().__init__()
        self.attn, self.mlp, self.cross = attn, mlp, cross
        self.attn_norm, self.mlp_norm = make_norm(), make_norm()
        self.cross_norm = make_norm() if cross is not None else None
        self.prenorm = prenorm
        self.drop = nn.Dropout(dropout)

    def _residual(self, x: Tensor, norm: nn.Module, fn) -> tuple[Tensor, Tensor | None]:
        """Apply one sub-layer ``fn`` (returning (output, weights or None)) with its residual."""
        if self.prenorm:
            out, weights = fn(norm(x))
            return x + self.drop(out), weights
        out, weights = fn(x)
        return norm(x + self.drop(out)), weights

    def forward(
        self,
        x: Tensor,
        *,
        mask: Mask | Tensor | None = None,
        cache: KVCache | None = None,
        positions: Tensor | None = None,
        context: Tensor | None = None,
        context_mask: Mask | Tensor | None = None,
        cross_cache: KVCache | None = None,
        need_weights: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor, Tensor | None]:
        """x (B, T, C) -> (B, T, C); with ``need_weights`` also the self-attention weights
        (B, H, T, S) and the cross-attention weights (B, H, T, S_ctx) or None.

        ``cross_cache`` holds the context's keys/values, computed on the first call only."""

        def attend(h):
            return _pair(
                self.attn(h, mask=mask, cache=cache, positions=positions, need_weights=need_weights)
            )

        x, weights = self._residual(x, self.attn_norm, attend)
        cross_weights = None
        if self.cross is not None:
            if context is None:
                raise ValueError("context: this block has cross-attention; expected a tensor")

            def cross(h):
                return _pair(
                    self.cross(
                        h, context, mask=context_mask, cache=cross_cache, need_weights=need_weights
                    )
                )

            x, cross_weights = self._residual(x, self.cross_norm, cross)
        x, _ = self._residual(x, self.mlp_norm, lambda h: (self.mlp(h), None))
        return (x, weights, cross_weights) if need_weights else x


def _pair(result) -> tuple[Tensor, Tensor | None]:
    return result if isinstance(result, tuple) else (result, None)
