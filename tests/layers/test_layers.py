"""Norms, MLPs and the residual block against their formulas."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnlab.attention.multihead import MultiHeadAttention
from attnlab.layers import MLP, Block, SwiGLU, make_mlp, make_norm


def test_swiglu_and_gelu_mlp_formulas():
    x = torch.randn(2, 3, 8)
    s = SwiGLU(8, 12)
    want = s.down(F.silu(s.gate(x)) * s.up(x))
    torch.testing.assert_close(s(x), want)
    m = MLP(8, 12, activation="gelu_tanh")
    torch.testing.assert_close(m(x), m.down(F.gelu(m.up(x), approximate="tanh")))
    assert isinstance(make_mlp("swiglu", 8, 12, bias=False), SwiGLU)


def test_norm_factory():
    assert make_norm("layernorm", 8, bias=False).bias is None
    assert isinstance(make_norm("rmsnorm", 8), nn.RMSNorm)
    with pytest.raises(
        ValueError, match="norm: expected one of layernorm, rmsnorm, rmsnorm_offset, got 'batch'"
    ):
        make_norm("batch", 8)
    relu = make_mlp("relu", 8, 8, bias=True)
    x = torch.randn(3, 8)
    torch.testing.assert_close(relu(x), relu.down(F.relu(relu.up(x))))
    with pytest.raises(ValueError, match="mlp: expected one of gelu, gelu_tanh, relu, swiglu"):
        make_mlp("tanh", 8, 8, bias=True)


@pytest.mark.parametrize("prenorm", [True, False])
def test_block_residual_forms(prenorm):
    torch.manual_seed(0)
    attn, mlp = MultiHeadAttention(8, 2), MLP(8, 16)
    block = Block(attn, mlp, lambda: nn.LayerNorm(8), prenorm=prenorm).eval()
    x = torch.randn(2, 5, 8)
    if prenorm:
        h = x + attn(block.attn_norm(x))
        want = h + mlp(block.mlp_norm(h))
    else:
        h = block.attn_norm(x + attn(x))
        want = block.mlp_norm(h + mlp(h))
    torch.testing.assert_close(block(x), want)


def test_block_with_cross_attention_needs_context():
    block = Block(
        MultiHeadAttention(8, 2),
        MLP(8, 16),
        lambda: nn.LayerNorm(8),
        cross=MultiHeadAttention(8, 2),
    )
    x, ctx = torch.randn(1, 4, 8), torch.randn(1, 6, 8)
    assert block(x, context=ctx).shape == (1, 4, 8)
    with pytest.raises(ValueError, match="context: this block has cross-attention"):
        block(x)
