"""Linformer (Wang et al. 2020): low-rank projection of keys/values along the sequence axis.

Shapes: B batch, H heads, Hkv key/value heads, T length, D head dim, Dv value dim, r rank.
"""

import pytest
import torch
import torch.nn.functional as F

from attnlab.attention import attend, masks
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


def _identity(attn, Tk):
    with torch.no_grad():
        for p in attn.parameters():
            p.copy_(torch.eye(Tk, attn.max_len).expand_as(p))  # identity on the first Tk positions
    return attn


@pytest.mark.parametrize("n_heads", [None, 2])
@pytest.mark.parametrize("share_kv", [False, True])
def test_identity_projection_is_exact_softmax_attention(n_heads, share_kv):
    B, Hkv, G, Tq, Tk, D, Dv, max_len = 2, 2, 3, 5, 7, 4, 6, 10
    attn = _identity(LinformerAttention(max_len, Tk, n_heads=n_heads, share_kv=share_kv), Tk)
    q, k, v = _qkv(B, Hkv * G, Hkv, Tq, Tk, D, Dv)
    out = attn(q, k, v)
    assert out.shape == (B, Hkv * G, Tq, Dv)
    torch.testing.assert_close(out, _exact(q, k, v), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out, attend(q, k, v), atol=1e-6, rtol=1e-6)


def test_identity_projection_with_padding_is_attend_with_padding_over_the_same_rows():
    # Padded keys are zeroed before the projection: they are still projected rows (zero keys
    # that get softmax weight, zero values), so with the identity this is attend() over keys
    # whose padded entries are zero, not attend() with those keys masked.
    B, H, T, D, Dv = 2, 2, 6, 4, 3
    attn = _identity(LinformerAttention(8, T), T)
    q, k, v = _qkv(B, H, H, T, T, D, Dv)
    lengths = torch.tensor([6, 2])
    pad = torch.arange(T)[None, None, :, None] >= lengths[:, None, None, None]
    want = attend(q, k.masked_fill(pad, 0), v.masked_fill(pad, 0))
    torch.testing.assert_close(attn(q, k, v, masks.padding(lengths)), want, atol=1e-6, rtol=1e-6)


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


def test_gqa_equals_repeated_kv_heads():
    attn = LinformerAttention(8, 3)
    q, k, v = _qkv(2, 6, 2, 5, 7, 4, 3)
    want = attn(q, k.repeat_interleave(3, dim=1), v.repeat_interleave(3, dim=1))
    torch.testing.assert_close(attn(q, k, v), want, atol=1e-6, rtol=1e-6)


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


def test_padding_mask_zeroes_keys_before_projection():
    B, H, T, D, Dv = 2, 2, 6, 4, 3
    attn = LinformerAttention(8, 4)
    q, k, v = _qkv(B, H, H, T, T, D, Dv)
    lengths = torch.tensor([6, 3])
    pad = torch.arange(T)[None, None, :, None] >= lengths[:, None, None, None]
    zeroed = attn(q, k.masked_fill(pad, 0), v.masked_fill(pad, 0))
    out = attn(q, k, v, masks.padding(lengths))
    torch.testing.assert_close(out, zeroed)
    assert not torch.allclose(out[1], attn(q, k, v)[1])
    # Padded content, even nan/inf, has no effect on values or gradients.
    k_bad = k.masked_fill(pad, float("nan")).requires_grad_(True)
    v_bad = v.masked_fill(pad, float("inf")).requires_grad_(True)
    bad = attn(q, k_bad, v_bad, masks.padding(lengths))
    torch.testing.assert_close(bad, out)
    bad.sum().backward()
    assert torch.equal(k_bad.grad[pad.expand_as(k)], torch.zeros(int(pad.expand_as(k).sum())))
    assert torch.isfinite(v_bad.grad).all()
    # A boolean key tensor is the same mask.
    keys = torch.arange(T)[None, None, None, :] < lengths[:, None, None, None]  # (B, 1, 1, T)
    torch.testing.assert_close(attn(q, k, v, keys), out)


def test_causal_mask_raises():
    attn = LinformerAttention(8, 4)
    q, k, v = _qkv(1, 2, 2, 5, 5, 4, 4)
    for mask in (masks.causal(), masks.causal() & masks.padding([3])):
        with pytest.raises(ValueError, match=r"^mask: Linformer cannot be causal: .*future"):
            attn(q, k, v, mask)
    with pytest.raises(TypeError):  # no causal= flag any more: a causal mask says it
        LinformerAttention(8, 4, causal=False)


@pytest.mark.parametrize(
    "mask",
    [
        masks.sliding_window(2),
        masks.prefix_lm([2]),
        masks.document(torch.tensor([[0, 0, 1, 1, 1]])),
        masks.padding([3]) | masks.padding([4]),
        ~masks.padding([3]),
        torch.ones(1, 1, 5, 5, dtype=torch.bool).tril(),
    ],
    ids=["window", "prefix_lm", "document", "or", "not", "query_tensor"],
)
def test_masks_a_projection_cannot_honour_raise(mask):
    attn = LinformerAttention(8, 4)
    with pytest.raises(ValueError, match=r"^mask: .* is not supported: a running sum over keys"):
        attn(*_qkv(1, 2, 2, 5, 5, 4, 4), mask)


def test_too_long_keys_raise_naming_max_len():
    attn = LinformerAttention(8, 4)
    with pytest.raises(ValueError, match=r"k: expected at most max_len = 8 keys, got Tk=9"):
        attn(*_qkv(1, 2, 2, 9, 9, 4, 4))
    attn(*_qkv(1, 2, 2, 9, 8, 4, 4))  # Tq is free, Tk = max_len is fine


@pytest.mark.parametrize(
    ("shapes", "match"),
    [
        (((2, 4, 5), (2, 2, 5, 4), (2, 2, 5, 3)), r"q: expected 4 dims.*\(2, 4, 5\)"),
        (((2, 4, 5, 4), (2, 2, 5), (2, 2, 5, 3)), r"k: expected 4 dims.*\(2, 2, 5\)"),
        (((2, 3, 5, 4), (2, 2, 5, 4), (2, 2, 5, 3)), r"k: query heads H=3.*Hkv=2"),
        (((2, 4, 5, 4), (2, 2, 5, 6), (2, 2, 5, 3)), r"k: expected head dim 4 like q, got 6"),
    ],
)
def test_bad_inputs_raise(shapes, match):
    attn = LinformerAttention(8, 4)
    q, k, v = (torch.randn(s) for s in shapes)
    with pytest.raises(ValueError, match=match):
        attn(q, k, v)
    with pytest.raises(ValueError, match=match):  # the same words as attend()
        attend(q, k, v)


def test_bad_construction_raises():
    with pytest.raises(ValueError, match=r"rank: expected a positive int, got 0"):
        LinformerAttention(8, 0)
    with pytest.raises(ValueError, match=r"max_len: expected a positive int, got -1"):
        LinformerAttention(-1, 4)
    with pytest.raises(ValueError, match=r"n_heads: expected None or a positive int, got 0"):
        LinformerAttention(8, 4, n_heads=0)
    attn = LinformerAttention(8, 4, n_heads=3)
    with pytest.raises(ValueError, match=r"k: n_heads=3.*expected Hkv == 3, got Hkv=2"):
        attn(*_qkv(1, 2, 2, 5, 5, 4, 4))
