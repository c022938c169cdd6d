"""Attention: one ``attend()`` call over every backend, masks, biases and attention modules."""

from attnlab.attention import bias, kinds, masks
from attnlab.attention.api import attend, explain
from attnlab.attention.backends import (
    Backend,
    Capabilities,
    backend_names,
    get_backend,
    register_backend,
)
from attnlab.attention.bias import ALiBi, Bias, RelativePositionBias, alibi
from attnlab.attention.kv_cache import KVCache
from attnlab.attention.latent import LatentAttention, LatentCache
from attnlab.attention.linear import LinearAttention, PerformerAttention, linear_attention
from attnlab.attention.local import local_attention
from attnlab.attention.lowrank import LinformerAttention
from attnlab.attention.masks import Mask
from attnlab.attention.multihead import MultiHeadAttention
from attnlab.attention.scores import make_score, register_score
from attnlab.attention.state_cache import StateCache

__all__ = [
    "ALiBi",
    "Backend",
    "Bias",
    "Capabilities",
    "KVCache",
    "LatentAttention",
    "LatentCache",
    "LinearAttention",
    "LinformerAttention",
    "Mask",
    "MultiHeadAttention",
    "PerformerAttention",
    "RelativePositionBias",
    "StateCache",
    "alibi",
    "attend",
    "backend_names",
    "bias",
    "explain",
    "get_backend",
    "kinds",
    "linear_attention",
    "local_attention",
    "make_score",
    "masks",
    "register_backend",
    "register_score",
]
