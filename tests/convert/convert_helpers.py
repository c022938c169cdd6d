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


def assert_greedy_equals_transformers(ours: nn.Module, hf: nn.Module, vocab: int) -> None:
    """Ten greedy tokens after a 6-token prompt, one row left-padded: attnlab's ``generate``
    gives transformers' ``generate`` token for token."""
    from attnlab.generate import generate

    ids = torch.randint(3, vocab, (2, 6), generator=torch.Generator().manual_seed(2))
    mask = torch.tensor([[1] * 6, [0, 0, 1, 1, 1, 1]])
    with torch.no_grad():
        want = hf.generate(
            ids, attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=0
        )
    got = generate(ours, ids, 10, attention_mask=mask)
    assert got.shape == (2, 16)
    assert torch.equal(got, want)


def assert_same_tensors(a, b) -> None:
    """The ``model.safetensors`` of directories ``a`` and ``b`` hold the same names and values."""
    from safetensors.torch import load_file

    mine, theirs = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
