"""Attention kernels, registered by name. Import order is registration order."""

from attnlab.attention.backends.base import (
    Backend,
    Capabilities,
    backend_names,
    get_backend,
    register_backend,
)
from attnlab.attention.backends.chunked import ChunkedBackend, chunked_attention
from attnlab.attention.backends.flex import FlexBackend
from attnlab.attention.backends.reference import ReferenceBackend
from attnlab.attention.backends.ring import RingBackend, ring_attention, ring_context
from attnlab.attention.backends.sdpa import SDPABackend

register_backend(ReferenceBackend())
register_backend(SDPABackend())
register_backend(FlexBackend())
register_backend(ChunkedBackend())
register_backend(RingBackend())

__all__ = [
    "Backend",
    "Capabilities",
    "ChunkedBackend",
    "FlexBackend",
    "ReferenceBackend",
    "RingBackend",
    "SDPABackend",
    "backend_names",
    "chunked_attention",
    "get_backend",
    "register_backend",
    "ring_attention",
    "ring_context",
]
