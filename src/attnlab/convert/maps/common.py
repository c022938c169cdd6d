"""Helpers the key maps share."""

from __future__ import annotations


def linear_keys(ours: str, theirs: str) -> dict[str, str]:
    """Weight and bias names of one module (Linear, LayerNorm or Conv2d): attnlab -> theirs."""
    return {f"{ours}.weight": f"{theirs}.weight", f"{ours}.bias": f"{theirs}.bias"}
