"""Attention: one ``attend()`` call over every backend, masks, biases and attention modules."""

from attnlab.attention import bias, masks
from attnlab.attention.api import attend, explain
from attnlab.attention.backends import (
    Backend,
    Capabilities,
    backend_names,
    get_backend,
    register_backend,
)
from attnlab.attention.bias import ALiBi, RelativePositionBias, alibi
from attnlab.attention.masks import Mask

__all__ = [
    "ALiBi",
    "Backend",
    "Capabilities",
    "Mask",
    "RelativePositionBias",
    "alibi",
    "attend",
    "backend_names",
    "bias",
    "explain",
    "get_backend",
    "masks",
    "register_backend",
]
