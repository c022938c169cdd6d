"""Shared by the checkpoint tests."""

from __future__ import annotations

import torch
from torch import nn


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter random, norm weights around 1: with a library's small initial weights a
    swapped query and key, or a dropped tensor left at 0 or 1, would change the outputs too
    little to notice. Norm layers are found by type (LayerNorm, RMSNorm and look-alikes)."""
    g = torch.Generator().manual_seed(seed)
    norms = {
        id(m.weight)
        for m in model.modules()
        if "norm" in type(m).__name__.lower()
        and isinstance(getattr(m, "weight", None), nn.Parameter)
    }
    with torch.no_grad():
        for p in model.parameters():
            base = 1.0 if id(p) in norms else 0.0
            p.copy_(base + 0.2 * torch.randn(p.shape, generator=g))
    return model.eval()
