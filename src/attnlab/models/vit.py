"""Vision Transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words").

The image is cut into non-overlapping P x P patches, each linearly embedded (a strided
convolution), a learned [CLS] vector is prepended and learned positions added; a pre-norm
encoder follows, and the classifier reads the final normalised [CLS] vector (or the mean over
patches with ``pool="mean"``).

Shapes: B batch, Ch image channels, H x W image, N = (H/P)(W/P) patches, C width, L classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from attnlab.layers import MLP, Block, make_norm
from attnlab.models import presets
from attnlab.models.checks import check_numbers, check_sizes
from attnlab.models.heads import apply_layer_heads, attention_names, check_layer_heads
from attnlab.models.output import (
    ModelOutput,
    classification_loss,
    key_padding_mask,
    mean_pool,
    run_blocks,
)
from attnlab.models.positions import PositionArgs, make_positions
from attnlab.models.variants import check_variants, self_attention

POOLS = ("cls", "mean")


@dataclass
class ViTConfig:
    image_size: int = 224  # height and width of the (square) input image
    patch_size: int = 16  # side P of each square patch
    channels: int = 3  # image channels Ch
    num_labels: int = 1000  # classifier outputs L
    n_layer: int = 12  # encoder blocks
    n_head: int = 3  # attention heads
    dim: int = 192  # width C
    hidden: int = 768  # MLP width
    norm_eps: float = 1e-6  # LayerNorm epsilon
    dropout: float = 0.0  # embeddings, attention probabilities, residual branches
    pool: str = "cls"  # classifier input: the [CLS] vector ("cls") or the mean of patches
    backend: str = "auto"  # attention backend name
    layer_heads: dict[str, dict] | None = None  # pruned attention modules -> heads kept, kv heads
    position: str = "learned"  # over [CLS] + patches in raster order: none, learned, sinusoidal,
    # rope, alibi or t5
    attention: str = "softmax"  # softmax, local, linear, performer or linformer
    window: int | None = None  # local attention: patches less than this many positions away
    n_features: int | None = None  # performer: random features (None: D ln D)
    rank: int | None = None  # linformer: projected key/value rows (None: 64)
    score: str = "dot"  # softmax scoring: dot, general, cosine, euclidean or additive

    def __post_init__(self) -> None:
        check_sizes(self, "image_size", "patch_size", "channels", "num_labels", "n_layer", "dim")
        check_sizes(self, "n_head", "hidden")
        check_numbers(self, "norm_eps")
        check_numbers(self, "dropout", high=1.0)
        if self.image_size % self.patch_size:
            raise ValueError(
                f"patch_size: expected a divisor of image_size={self.image_size}, "
                f"got {self.patch_size}"
            )
        if self.dim % self.n_head:
            raise ValueError(f"dim: expected a multiple of n_head={self.n_head}, got {self.dim}")
        if self.pool not in POOLS:
            raise ValueError(f"pool: expected one of {', '.join(POOLS)}, got {self.pool!r}")
        check_variants(self, causal=False, family="ViT")
        check_layer_heads(self, attention_names(("", self.n_layer, ["attn"])))

    @property
    def max_len(self) -> int:
        """Positions: [CLS] and the patches."""
        return self.n_patches + 1

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @classmethod
    def from_preset(cls, name: str, **overrides) -> ViTConfig:
        return presets.build(cls, PRESETS, name, overrides)


PRESETS: dict[str, dict] = {
    "vit-tiny": {},  # ViT-Ti/16 (DeiT): 5.7M parameters
    "vit-small": {"n_head": 6, "dim": 384, "hidden": 1536},  # ViT-S/16: 22M
    "vit-base": {"n_head": 12, "dim": 768, "hidden": 3072},  # ViT-B/16: 86M
    # 8 x 8 one-channel digits (scikit-learn), 4 x 4 patches: a model that trains in seconds.
    "vit-digits": {
        "image_size": 8,
        "patch_size": 4,
        "channels": 1,
        "num_labels": 10,
        "n_layer": 4,
        "n_head": 4,
        "dim": 64,
        "hidden": 128,
        "dropout": 0.1,
    },
}


class ViT(nn.Module):
    """Image classifier; ``ViT.from_preset("vit-tiny")``; ``model(images).logits`` is (B, L)."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = c = config
        p = c.patch_size
        self.patch = nn.Conv2d(c.channels, c.dim, kernel_size=p, stride=p)
        self.cls = nn.Parameter(torch.zeros(1, 1, c.dim))
        pos = make_positions(
            c.position,
            PositionArgs(
                c.dim, c.dim // c.n_head, c.n_head, c.max_len, False, embedding_scale=0.02
            ),
        )
        self.pos = pos.embedding  # an absolute table, or None (relative positions: in attention)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(
            Block(
                self_attention(c, pos.attention, causal=False),
                MLP(c.dim, c.hidden),
                lambda: make_norm("layernorm", c.dim, eps=c.norm_eps),
                dropout=c.dropout,
            )
            for _ in range(c.n_layer)
        )
        self.norm = make_norm("layernorm", c.dim, eps=c.norm_eps)
        self.head = nn.Linear(c.dim, c.num_labels)
        self.apply(_init)
        nn.init.normal_(self.cls, std=0.02)
        apply_layer_heads(self)  # pruned layers: their own heads

    @classmethod
    def from_preset(cls, name: str, **overrides) -> ViT:
        return cls(ViTConfig.from_preset(name, **overrides))

    def embed(self, images: Tensor) -> Tensor:
        """Patch embeddings with [CLS] first and positions added: (B, 1 + N, C)."""
        c = self.config
        if images.dim() != 4 or images.shape[1:] != (c.channels, c.image_size, c.image_size):
            raise ValueError(
                f"images: expected (B, {c.channels}, {c.image_size}, {c.image_size}), "
                f"got shape {tuple(images.shape)}"
            )
        if not images.dtype.is_floating_point:
            raise ValueError(f"images: expected a floating-point tensor, got {images.dtype}")
        x = self.patch(images).flatten(2).transpose(1, 2)  # (B, C, H/P, W/P) -> (B, N, C)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
        if self.pos is not None:
            x = x + self.pos(torch.arange(x.shape[1], device=x.device))
        return self.drop(x)

    def forward(
        self,
        images: Tensor,
        attention_mask: Tensor | None = None,
        *,
        labels: Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> ModelOutput:
        """Class logits (B, L) for ``images`` (B, Ch, H, W).

        Args:
            attention_mask: optional (B, 1 + N), 0 for tokens ([CLS] first, then patches in
                row-major order) that no token may attend to.
            labels: classes (B,) for the cross-entropy loss.
        """
        x = self.embed(images)
        b, n, _ = x.shape
        stack = run_blocks(
            self.blocks,
            x,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            mask=key_padding_mask(attention_mask, b, n),
        )
        x = self.norm(stack.x)
        if self.config.pool == "cls":
            pooled = x[:, 0]
        else:
            patches = attention_mask[:, 1:] if attention_mask is not None else None
            pooled = mean_pool(x[:, 1:], patches)
        logits = self.head(pooled)
        return ModelOutput(
            logits,
            hidden_states=(*stack.hidden_states, x) if output_hidden_states else None,
            attentions=stack.attentions,
            loss=classification_loss(logits, labels) if labels is not None else None,
        )


def _init(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
