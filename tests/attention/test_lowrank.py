"""Linformer (Wang et al. 2020): low-rank projection of keys/values along the sequence axis.

Shapes: B batch, H heads, Hkv key/value heads, T length, D head dim, Dv value dim, r rank.
"""

import pytest
import torch
import torch.nn.functional as F

from attnlab.attention.lowrank import LinformerAttention


def _qkv(B, H, Hkv, Tq, Tk, D, Dv, *, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Tq, D, generator=g)
    k = torch.randn(B, Hkv, Tk, D, generator=g)
    v = torch.randn(B, Hkv, Tk, Dv, generator=g)
    return q, k, v


def _exact(q, k, v):
    G = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(G, dim=1), v.repeat_interleave(G, dim=1)
    return F.scaled_dot_product_attention(q, k, v)


@pytest.mark.parametrize("n_heads", [None, 2])
@pytest.mark.parametrize("share_kv", [False, True])
def test_identity_projection_is_exact_softmax_attention(n_heads, share_kv):
    B, Hkv, G, Tq, Tk, D, Dv, max_len = 2, 2, 3, 5, 7, 4, 6, 10
    attn = LinformerAttention(max_len, Tk, n_heads=n_heads, share_kv=share_kv)
    with torch.no_grad():
        for p in attn.parameters():
            p.copy_(torch.eye(Tk, max_len).expand_as(p))  # identity on the first Tk positions
    q, k, v = _qkv(B, Hkv * G, Hkv, Tq, Tk, D, Dv)
    out = attn(q, k, v)
    assert out.shape == (B, Hkv * G, Tq, Dv)
    torch.testing.assert_close(out, _exact(q, k, v), atol=1e-6, rtol=1e-6)


def test_random_projection_is_an_approximation():
    attn = LinformerAttention(16, 4)
    q, k, v = _qkv(1, 2, 2, 8, 16, 4, 4)
    assert not torch.allclose(attn(q, k, v), _exact(q, k, v), atol=1e-2)


def test_per_head_projections_differ_between_heads():
    attn = LinformerAttention(8, 3, n_heads=2)
    assert attn.E.shape == (2, 3, 8) and attn.F.shape == (2, 3, 8)
    q, k, v = _qkv(1, 2, 2, 4, 8, 4, 4)
    # Same keys/values/queries in both heads: different projections must give different outputs.
    q, k, v = q[:, :1].expand_as(q), k[:, :1].expand_as(k), v[:, :1].expand_as(v)
    out = attn(q, k, v)
    assert not torch.allclose(out[:, 0], out[:, 1])


def test_share_kv_has_one_matrix():
    attn = LinformerAttention(8, 3, share_kv=True)
    assert attn.F is None
    assert [name for name, _ in attn.named_parameters()] == ["E"]
    assert len(list(LinformerAttention(8, 3).parameters())) == 2


def test_init_scale():
    # N(0, 1/rank): the Johnson-Lindenstrauss scaling of the paper's analysis.
    attn = LinformerAttention(4096, 64)
    assert abs(attn.E.std().item() / 64**-0.5 - 1) < 0.02


def test_gradients_reach_projections():
    attn = LinformerAttention(12, 4)
    q, k, v = (t.requires_grad_(True) for t in _qkv(2, 4, 2, 5, 9, 4, 3))
    out = attn(q, k, v)
    (out * torch.randn_like(out)).sum().backward()
    for name in ("E", "F"):
        grad = getattr(attn, name).grad
        assert grad is not None and grad[:, :9].abs().sum() > 0, name
        # Columns past Tk were not used.
        assert torch.equal(grad[:, 9:], torch.zeros_like(grad[:, 9:])), name
    for t in (q, k, v):
        assert t.grad is not None and t.grad.abs().sum() > 0


def test_key_lengths_zero_padding_before_projection():
    B, H, T, D, Dv = 2, 2, 6, 4, 3
    attn = LinformerAttention(8, 4)
    q, k, v = _qkv(B, H, H, T, T, D, Dv)
    lengths = torch.tensor([6, 3])
    pad = torch.arange(T)[None, None, :, None] >= lengths[:, None, None, None]
    zeroed = attn(q, k.masked_fill(pad, 0), v.masked_fill(pad, 0))
    out = attn(q, k, v, key_lengths=lengths)
    torch.testing.assert_close(out, zeroed)
    assert not torch.allclose(out[1], attn(q, k, v)[1])
    nan_k = k.masked_fill(pad, float("nan"))
    torch.testing.assert_close(attn(q, nan_k, v * 7, key_lengths=lengths)[1], (out * 7)[1])


def test_causal_raises():
    with pytest.raises(ValueError, match=r"causal=True.*expected causal=False.*future"):
        LinformerAttention(8, 4, causal=True)


def test_too_long_keys_raise_naming_max_len():
    attn = LinformerAttention(8, 4)
    with pytest.raises(ValueError, match=r"max_len.*Tk <= max_len = 8.*Tk=9"):
        attn(*_qkv(1, 2, 2, 9, 9, 4, 4))
    attn(*_qkv(1, 2, 2, 9, 8, 4, 4))  # Tq is free, Tk = max_len is fine


@pytest.mark.parametrize(
    ("shapes", "kw", "match"),
    [
        (((2, 4, 5), (2, 2, 5, 4), (2, 2, 5, 3)), {}, r"q must be a 4-D.*\(2, 4, 5\)"),
        (((2, 4, 5, 4), (2, 2, 5), (2, 2, 5, 3)), {}, r"k must be a 4-D.*\(2, 2, 5\)"),
        (((2, 3, 5, 4), (2, 2, 5, 4), (2, 2, 5, 3)), {}, r"multiple.*Hkv=2.*H=3"),
        (((2, 4, 5, 4), (2, 2, 5, 6), (2, 2, 5, 3)), {}, r"expected k.shape\[3\] == 4, got 6"),
        (
            ((2, 4, 5, 4), (2, 2, 5, 4), (2, 2, 5, 3)),
            {"key_lengths": torch.tensor([1, 9])},
            r"key_lengths.*\[0, 5\].*max 9",
        ),
    ],
)
def test_bad_inputs_raise(shapes, kw, match):
    attn = LinformerAttention(8, 4)
    q, k, v = (torch.randn(s) for s in shapes)
    with pytest.raises(ValueError, match=match):
        attn(q, k, v, **kw)


def test_bad_construction_raises():
    with pytest.raises(ValueError, match=r"rank must be a positive int; got 0"):
        LinformerAttention(8, 0)
    with pytest.raises(ValueError, match=r"max_len must be a positive int; got -1"):
        LinformerAttention(-1, 4)
    attn = LinformerAttention(8, 4, n_heads=3)
    with pytest.raises(ValueError, match=r"n_heads=3.*expected Hkv == 3, got Hkv=2"):
        attn(*_qkv(1, 2, 2, 5, 5, 4, 4))
