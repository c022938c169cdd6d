"""Choosing a backend: by name, or "auto" — the fastest one that supports the call.

"auto" walks a priority list and takes the first backend with no reason to refuse. The list
depends on the device and on how sparse the mask is: a block-sparse mask (a sliding window much
shorter than the sequence, many packed documents) favours backends that skip masked tiles,
while dense and causal attention favour PyTorch's fused SDPA kernels. When no backend can run
the call, one ValueError lists every backend's reasons.
"""

from __future__ import annotations

import functools

from attnlab.attention.backends.base import Backend, backend_names, get_backend
from attnlab.attention.call import AttentionCall

# A mask allowing at most this fraction of the scores, over at least SPARSE_MIN_KEYS keys,
# counts as block-sparse.
SPARSE_DENSITY = 0.25
SPARSE_MIN_KEYS = 1024

# Priority lists per device type and sparsity. FlexAttention compiles for seconds on first use
# and on CPU only runs inference, so on CPU the chunked backend comes first for sparse masks.
_PRIORITY = {
    ("cuda", False): ("sdpa", "flex", "chunked", "reference"),
    ("cuda", True): ("flex", "chunked", "sdpa", "reference"),
    ("cpu", False): ("sdpa", "chunked", "flex", "reference"),
    ("cpu", True): ("chunked", "flex", "sdpa", "reference"),
}


def is_sparse(call: AttentionCall) -> bool:
    """True when the call's mask allows few enough scores for tile skipping to pay off."""
    return (
        call.mask is not None
        and call.tk >= SPARSE_MIN_KEYS
        and call.mask.density(call.tq, call.tk) <= SPARSE_DENSITY
    )


def priority(call: AttentionCall) -> tuple[str, ...]:
    """Backend names in the order "auto" tries them for ``call``."""
    device = "cuda" if call.device.type == "cuda" else "cpu"
    return _ordered(device, is_sparse(call), tuple(backend_names()))


@functools.lru_cache(maxsize=32)
def _ordered(device: str, sparse: bool, registered: tuple[str, ...]) -> tuple[str, ...]:
    # Cached: dispatch runs on every attention call, and this list only changes when the
    # registry does (the registered names are part of the key).
    order = [n for n in _PRIORITY[(device, sparse)] if n in registered]
    return (*order, *(n for n in registered if n not in order))


def explain(call: AttentionCall) -> dict[str, list[str]]:
    """Every registered backend's reasons to refuse ``call`` (empty list: it can run it)."""
    return {name: get_backend(name).not_supported_reasons(call) for name in priority(call)}


def select_backend(call: AttentionCall, backend: str = "auto") -> Backend:
    """The backend that will run ``call``; ValueError explaining why when none can."""
    if backend != "auto":
        chosen = get_backend(backend)
        reasons = chosen.not_supported_reasons(call)
        if reasons:
            raise ValueError(f"backend: {backend!r} cannot run this call: " + "; ".join(reasons))
        return chosen
    refusals = []
    for name in priority(call):
        candidate = get_backend(name)
        reasons = candidate.not_supported_reasons(call)
        if not reasons:
            return candidate
        refusals.append(f"{name}: " + "; ".join(reasons))
    raise ValueError("backend: no attention backend supports this call — " + " | ".join(refusals))
