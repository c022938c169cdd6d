"""The eager reference as a backend: the oracle, and the only one that returns weights."""

from __future__ import annotations

from torch import Tensor

from attnlab.attention.backends.base import Backend, Capabilities
from attnlab.attention.call import AttentionCall
from attnlab.attention.reference import reference_attention


class ReferenceBackend(Backend):
    name = "reference"
    description = "eager math (half precision upcast); the oracle; returns weights; O(T^2) memory"
    capabilities = Capabilities(
        devices=frozenset({"cpu", "cuda"}),
        dropout=True,
        weights=True,
        softcap=True,
        sinks=True,
    )

    def forward(self, call: AttentionCall) -> tuple[Tensor, Tensor | None]:
        out, weights = reference_attention(call)
        return out, weights if call.return_weights else None
