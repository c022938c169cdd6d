"""The residual Transformer block, pre-norm (GPT-2, Llama) or post-norm (Vaswani et al. 2017,
BERT), with optional cross-attention for decoders. Shapes: x (B, T, C), context (B, S, C)."""

from __future__ import annotations

from torch import Tensor, nn

from attnlab.attention.kv_cache import KVCache
from attnlab.attention.masks import Mask
from attnlab.attention.multihead import MultiHeadAttention
from attnlab.attention.points import make_points


class Block(nn.Module):
    """x + attn(norm(x)), then x + mlp(norm(x)) (pre-norm); or norm(x + attn(x)), ... (post-norm);
    or x + norm(attn(norm(x))), ... (sandwich).

    Args:
        attn: self-attention module.
        mlp: feed-forward module.
        make_norm: a function giving a fresh norm layer (one per sub-layer).
        prenorm: pre-norm (True) or post-norm (False) residual form.
        sandwich: pre-norm only: also normalise each sub-layer's output before the residual
            add, x + norm2(fn(norm1(x))) (Gemma 2's post-attention and post-feed-forward norms;
            modules ``attn_post_norm``, ``mlp_post_norm``).
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
        sandwich: bool = False,
        dropout: float = 0.0,
        cross: MultiHeadAttention | None = None,
    ) -> None:
        super().__init__()
        if sandwich and (not prenorm or cross is not None):
            raise ValueError(
                "sandwich: output norms need a pre-norm block without cross-attention, got "
                f"prenorm={prenorm!r}, cross={'a module' if cross is not None else None}"
            )
        self.attn, self.mlp, self.cross = attn, mlp, cross
        self.attn_norm, self.mlp_norm = make_norm(), make_norm()
        # Only sandwich blocks have these modules: other blocks' state dicts stay as they were.
        if sandwich:
            self.attn_post_norm, self.mlp_post_norm = make_norm(), make_norm()
        else:
            self.attn_post_norm = self.mlp_post_norm = None
        self.cross_norm = make_norm() if cross is not None else None
        self.prenorm = prenorm
        self.drop = nn.Dropout(dropout)
        self.POINTS = ("resid_pre", "resid_mid", "mlp_out", "resid_post")
        if cross is not None:
            self.POINTS = ("resid_pre", "resid_mid", "resid_cross", "mlp_out", "resid_post")
        make_points(self, self.POINTS)

    def _residual(self, x: Tensor, norm: nn.Module, fn, post: nn.Module | None = None) -> Tensor:
        """Apply one sub-layer ``fn`` with its residual connection (``post``: its output norm)."""
        if self.prenorm:
            out = fn(norm(x))
            return x + self.drop(out if post is None else post(out))
        return norm(x + self.drop(fn(x)))

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
    ) -> Tensor:
        """x (B, T, C) -> (B, T, C); ``cross_cache`` holds the context's keys/values, computed
        on the first call only.

        Hook points (B, T, C): ``resid_pre`` (the input), ``resid_mid`` (after self-attention),
        ``resid_cross`` (after cross-attention, decoder blocks only), ``mlp_out`` (the MLP's
        output before any sandwich norm and the residual add) and ``resid_post`` (the output)."""
        x = self.hook_resid_pre(x)
        x = self._residual(
            x,
            self.attn_norm,
            lambda h: self.attn(h, mask=mask, cache=cache, positions=positions),
            self.attn_post_norm,
        )
        x = self.hook_resid_mid(x)
        if self.cross is not None:
            if context is None:
                raise ValueError("context: this block has cross-attention; expected a tensor")
            x = self._residual(
                x,
                self.cross_norm,
                lambda h: self.cross(h, context, mask=context_mask, cache=cross_cache),
            )
            x = self.hook_resid_cross(x)
        x = self._residual(
            x, self.mlp_norm, lambda h: self.hook_mlp_out(self.mlp(h)), self.mlp_post_norm
        )
        return self.hook_resid_post(x)
