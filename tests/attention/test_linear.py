"""Linear attention (Katharopoulos et al. 2020) and Performer FAVOR+ (Choromanski et al. 2021).

Shapes: B batch, H heads, Hkv key/value heads, T length, D head dim, Dv value dim, m features.
"""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st

from attnlab.attention import attend, masks
from attnlab.attention.linear import (
    LinearAttention,
    PerformerAttention,
    favor_features,
    linear_attention,
    linear_attention_explicit,
    orthogonal_gaussian,
)
from attnlab.attention.lowrank import LinformerAttention


def _qkv(B, H, Hkv, Tq, Tk, D, Dv, *, seed=0, dtype=torch.float32, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Tq, D, generator=g, dtype=dtype) * scale
    k = torch.randn(B, Hkv, Tk, D, generator=g, dtype=dtype) * scale
    v = torch.randn(B, Hkv, Tk, Dv, generator=g, dtype=dtype)
    return q, k, v


def _grads(fn, q, k, v, upstream, **kw):
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    out = fn(q, k, v, **kw)
    (out * upstream).sum().backward()
    return out.detach(), q.grad, k.grad, v.grad


def _causal_mask(lengths=None):
    return masks.causal() if lengths is None else masks.causal() & masks.padding(lengths)


# --------------------------------------------------------------------------------------------
# Linear attention: the O(T) forms equal the explicit O(T²) oracle
# --------------------------------------------------------------------------------------------


@settings(max_examples=10, deadline=None)
@given(
    B=st.integers(1, 2),
    Hkv=st.integers(1, 2),
    G=st.integers(1, 3),
    T=st.integers(1, 40),
    D=st.integers(1, 8),
    Dv=st.integers(1, 8),
    chunk_size=st.sampled_from([1, 3, 8, 64]),
    use_lengths=st.booleans(),
    seed=st.integers(0, 2**16),
)
@example(B=1, Hkv=1, G=1, T=1, D=1, Dv=1, chunk_size=64, use_lengths=False, seed=0)
@example(B=2, Hkv=2, G=2, T=67, D=5, Dv=3, chunk_size=64, use_lengths=True, seed=1)
@example(B=1, Hkv=1, G=3, T=64, D=4, Dv=7, chunk_size=64, use_lengths=False, seed=2)
def test_causal_chunked_matches_explicit(B, Hkv, G, T, D, Dv, chunk_size, use_lengths, seed):
    H = Hkv * G
    q, k, v = _qkv(B, H, Hkv, T, T, D, Dv, seed=seed)
    lengths = None
    if use_lengths:
        lengths = torch.randint(0, T + 1, (B,), generator=torch.Generator().manual_seed(seed))
    mask = _causal_mask(lengths)
    upstream = torch.randn(B, H, T, Dv, generator=torch.Generator().manual_seed(seed + 1))
    got = _grads(linear_attention, q, k, v, upstream, mask=mask, chunk_size=chunk_size)
    want = _grads(linear_attention_explicit, q, k, v, upstream, mask=mask)
    assert got[0].shape == (B, H, T, Dv)
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5)
    for name, a, b in zip("qkv", got[1:], want[1:], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=lambda m, n=name: f"d{n}: {m}")


def test_causal_first_query_sees_only_first_key():
    q, k, v = _qkv(1, 1, 1, 5, 5, 4, 3)
    out = linear_attention(q, k, v, mask=masks.causal(), chunk_size=2)
    # With a single visible key the normalised weight is phi·phi / (phi·phi + eps) ~ 1.
    torch.testing.assert_close(out[0, 0, 0], v[0, 0, 0], atol=1e-5, rtol=1e-5)
    # Future keys have no effect on earlier queries.
    k2, v2 = k.clone(), v.clone()
    k2[..., 3:, :] += 5
    v2[..., 3:, :] -= 7
    out2 = linear_attention(q, k2, v2, mask=masks.causal(), chunk_size=2)
    torch.testing.assert_close(out2[..., :3, :], out[..., :3, :])
    assert not torch.allclose(out2[..., 3:, :], out[..., 3:, :])


@pytest.mark.parametrize(("Tq", "Tk"), [(1, 1), (7, 13), (13, 7)])
def test_noncausal_matches_explicit(Tq, Tk):
    q, k, v = _qkv(2, 4, 2, Tq, Tk, 6, 5, seed=3)
    upstream = torch.randn(2, 4, Tq, 5)
    got = _grads(linear_attention, q, k, v, upstream)
    want = _grads(linear_attention_explicit, q, k, v, upstream)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("Tq", "Tk"), [(3, 11), (1, 9), (11, 4), (5, 0)])
def test_causal_bottom_right_matches_explicit(Tq, Tk):
    # Fewer queries than keys (decoding against cached keys) and more (the first rows see no
    # key): the chunked prefix sums and the explicit form align the queries alike.
    q, k, v = _qkv(2, 4, 2, Tq, Tk, 5, 3, seed=13)
    mask = masks.causal() & masks.padding([Tk, max(Tk - 2, 0)])
    upstream = torch.randn(2, 4, Tq, 3)
    got = _grads(linear_attention, q, k, v, upstream, mask=mask, chunk_size=3)
    want = _grads(linear_attention_explicit, q, k, v, upstream, mask=mask)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_noncausal_matches_formula():
    # out_i = phi(q_i)ᵀ (Σ_j phi(k_j) v_jᵀ) / (phi(q_i)ᵀ Σ_j phi(k_j) + eps), written out by hand.
    q, k, v = _qkv(1, 1, 1, 4, 6, 3, 2, seed=4, dtype=torch.float64)
    pq, pk = F.elu(q[0, 0]) + 1, F.elu(k[0, 0]) + 1
    want = (pq @ (pk.T @ v[0, 0])) / (pq @ pk.sum(0) + 1e-6)[:, None]
    torch.testing.assert_close(linear_attention(q, k, v)[0, 0], want)
    torch.testing.assert_close(LinearAttention()(q, k, v)[0, 0], want)


@pytest.mark.parametrize("causal", [False, True])
def test_padding_mask_matches_explicit_and_ignores_padding(causal):
    B, H, Hkv, T, D, Dv = 3, 2, 1, 11, 4, 3
    q, k, v = _qkv(B, H, Hkv, T, T, D, Dv, seed=5)
    lengths = torch.tensor([11, 4, 0])
    mask = _causal_mask(lengths) if causal else masks.padding(lengths)
    upstream = torch.randn(B, H, T, Dv)
    got = _grads(linear_attention, q, k, v, upstream, mask=mask, chunk_size=4)
    want = _grads(linear_attention_explicit, q, k, v, upstream, mask=mask)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # The explicit masked form, by hand: drop padded keys entirely (row 1 keeps 4 keys).
    sub = linear_attention_explicit(q[1:2], k[1:2, :, :4], v[1:2, :, :4])
    if not causal:
        torch.testing.assert_close(got[0][1:2], sub, atol=1e-6, rtol=1e-6)
    # No valid key: numerator 0, so the output is 0.
    assert torch.equal(got[0][2], torch.zeros_like(got[0][2]))
    # Padded content, even inf/nan, changes nothing and gets zero gradient.
    pad = torch.arange(T)[None, None, :, None] >= lengths[:, None, None, None]
    k_bad = torch.where(pad, torch.full_like(k, float("nan")), k)
    v_bad = torch.where(pad, torch.full_like(v, float("inf")), v)
    for fn in (linear_attention, LinearAttention(chunk_size=4)):
        bad = _grads(fn, q, k_bad, v_bad, upstream, mask=mask)
        for a, b in zip(bad, got, strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
        assert torch.all(bad[2][pad.expand_as(k)] == 0)
        assert torch.all(bad[3][pad.expand_as(v)] == 0)


@pytest.mark.parametrize("causal", [False, True])
def test_gqa_equals_repeated_kv_heads(causal):
    B, Hkv, G, T, D, Dv = 2, 2, 3, 9, 4, 5
    q, k, v = _qkv(B, Hkv * G, Hkv, T, T, D, Dv, seed=6)
    mask = masks.causal() if causal else None
    k_rep, v_rep = k.repeat_interleave(G, dim=1), v.repeat_interleave(G, dim=1)
    got = linear_attention(q, k, v, mask=mask, chunk_size=4)
    torch.testing.assert_close(got, linear_attention(q, k_rep, v_rep, mask=mask))
    perf = PerformerAttention(D, 32, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(perf(q, k, v, mask), perf(q, k_rep, v_rep, mask))


def test_custom_feature_map_and_half_precision():
    q, k, v = _qkv(1, 2, 2, 6, 6, 4, 4, seed=7)

    def relu_sq(x):  # a different non-negative map, F = 2D
        return torch.cat([F.relu(x), F.relu(-x)], dim=-1) ** 2

    for mask in (None, masks.causal()):
        kw = {"mask": mask, "feature_map": relu_sq}
        torch.testing.assert_close(
            linear_attention(q, k, v, chunk_size=4, **kw), linear_attention_explicit(q, k, v, **kw)
        )
        module = LinearAttention(relu_sq, chunk_size=4)
        torch.testing.assert_close(module(q, k, v, mask), linear_attention_explicit(q, k, v, **kw))
    assert LinearAttention(relu_sq).feature_dim(4) == 8
    out16 = linear_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), mask=masks.causal())
    assert out16.dtype == torch.bfloat16
    torch.testing.assert_close(
        out16.float(), linear_attention(q, k, v, mask=masks.causal()), atol=3e-2, rtol=3e-2
    )
    perf = PerformerAttention(4, 32, generator=torch.Generator().manual_seed(0))
    p16 = perf(q.bfloat16(), k.bfloat16(), v.bfloat16(), masks.causal())
    assert p16.dtype == torch.bfloat16
    torch.testing.assert_close(p16.float(), perf(q, k, v, masks.causal()), atol=3e-2, rtol=3e-2)


def test_bad_feature_maps_raise():
    q, k, v = _qkv(1, 1, 1, 3, 5, 4, 2)

    def length_features(x):  # F = T: 3 for the queries, 5 for the keys
        return x.new_ones(*x.shape[:-1], x.shape[-2])

    with pytest.raises(ValueError, match=r"feature_map.*same feature dim F.*F=3 for q.*F=5 for k"):
        linear_attention(q, k, v, feature_map=length_features)
    with pytest.raises(ValueError, match=r"feature_map must map q of shape \(1, 1, 3, 4\)"):
        linear_attention(q, k, v, feature_map=lambda x: x.sum(-1))


# --------------------------------------------------------------------------------------------
# Performer FAVOR+
# --------------------------------------------------------------------------------------------


def _performer_error(m: int, causal: bool, seed: int) -> float:
    B, H, T, D, Dv = 2, 2, 24, 8, 8
    q, k, v = _qkv(B, H, H, T, T, D, Dv, seed=100 + seed, dtype=torch.float64, scale=0.7)
    attn = PerformerAttention(D, m, generator=torch.Generator().manual_seed(seed))
    exact = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return (attn(q, k, v, masks.causal() if causal else None) - exact).abs().mean().item()


@pytest.mark.parametrize("causal", [False, True])
def test_performer_error_decreases_with_features(causal):
    ms = [16, 128, 1024]
    errors = [sum(_performer_error(m, causal, s) for s in range(4)) / 4 for m in ms]
    assert all(a > b for a, b in itertools.pairwise(errors)), errors
    # Monte Carlo error ~ 1/sqrt(m) would give 8x less error for 64x the features; at m = 16 the
    # error is already capped (outputs are convex combinations of v), so ask for 3x.
    assert errors[-1] < errors[0] / 3, errors


def test_causal_performer_row_is_the_noncausal_call_on_its_prefix():
    # Query i of a causal call sees keys 0..i, and its result must be what a call over exactly
    # those keys gives (its stabiliser is theirs, not one that later keys set). At D = 64 with
    # m = 256 (a model's default size) a stabiliser fixed by the projection alone leaves every
    # key feature ~e^-45 and eps = 1e-6 wipes the output out.
    B, H, T, D, Dv, m = 1, 1, 8, 64, 4, 256
    q, k, v = _qkv(B, H, H, T, T, D, Dv, seed=21)
    k = k * torch.linspace(0.5, 2.0, T)[:, None]  # growing key norms: the largest key moves
    attn = PerformerAttention(D, m, generator=torch.Generator().manual_seed(3))
    causal = attn(q, k, v, masks.causal())
    rows = [attn(q[:, :, i : i + 1], k[:, :, : i + 1], v[:, :, : i + 1]) for i in range(T)]
    torch.testing.assert_close(causal, torch.cat(rows, dim=2), atol=1e-5, rtol=1e-4)
    # Outputs are weighted means of v: their weights sum to 1 but for eps's share (a few percent
    # at this size; with every key feature ~e^-45 eps took all of it).
    assert attn.weights(q, k, masks.causal()).sum(-1).min() > 0.9


@pytest.mark.parametrize("causal", [False, True])
def test_performer_stabiliser_cancels(causal):
    # Unstabilised features, by hand: phi(x) = exp(w·x' - |x'|²/2) / sqrt(m), x' = x D^(-1/4).
    B, H, Hkv, T, D, Dv, m = 2, 2, 1, 10, 4, 3, 64
    q, k, v = _qkv(B, H, Hkv, T, T, D, Dv, seed=8, dtype=torch.float64)
    lengths = torch.tensor([10, 6])
    attn = PerformerAttention(D, m, eps=0.0, chunk_size=4).double()
    w = attn.projection

    def phi(x):
        x = x * D**-0.25
        return torch.exp(x @ w.T - (x * x).sum(-1, keepdim=True) / 2) / math.sqrt(m)

    A = phi(q) @ phi(k).transpose(-1, -2)  # (B, H, T, T) (Hkv = 1 broadcasts)
    keep = torch.arange(T)[None, None, None, :] < lengths[:, None, None, None]
    if causal:
        keep = keep & torch.ones(T, T, dtype=torch.bool).tril()
    A = A * keep
    want = (A @ v) / A.sum(-1, keepdim=True)
    mask = _causal_mask(lengths) if causal else masks.padding(lengths)
    torch.testing.assert_close(attn(q, k, v, mask), want)


def test_favor_features_nonnegative_and_finite_for_large_norms():
    D, m = 16, 128
    w = orthogonal_gaussian(m, D, generator=torch.Generator().manual_seed(0))
    for scale in (1.0, 30.0, 1000.0):
        x = torch.randn(2, 3, 20, D) * scale  # (B, H, T, D)
        pq = favor_features(x, w, is_query=True)
        pk = favor_features(x, w, is_query=False)
        for phi in (pq, pk):
            assert phi.shape == (2, 3, 20, m)
            assert torch.isfinite(phi).all() and (phi >= 0).all()
        # The largest feature is pinned to 1/sqrt(m): per query row, per (B, H) for keys.
        torch.testing.assert_close(pq.amax(-1), torch.full((2, 3, 20), m**-0.5))
        torch.testing.assert_close(pk.amax((-2, -1)), torch.full((2, 3), m**-0.5))
    # At moderate norms every feature is strictly positive.
    assert (favor_features(torch.randn(4, D), w) > 0).all()
    attn = PerformerAttention(D, m)
    x = torch.randn(1, 2, 8, D) * 100
    for mask in (None, masks.causal()):
        assert torch.isfinite(attn(x, x, torch.randn(1, 2, 8, 4), mask)).all()


def test_favor_key_features_ignore_invalid_keys():
    D, m = 4, 16
    w = orthogonal_gaussian(m, D, generator=torch.Generator().manual_seed(0))
    x = torch.randn(2, 6, D, requires_grad=True)
    valid = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    bad = torch.where(valid[..., None], x, float("nan"))
    phi = favor_features(bad, w, is_query=False, valid=valid)
    assert torch.equal(phi[1, 3:], torch.zeros(3, m))
    torch.testing.assert_close(phi[1, :3], favor_features(x[1, :3], w, is_query=False))
    phi.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.equal(x.grad[1, 3:], torch.zeros(3, D))


def test_favor_features_unbiased_for_softmax_kernel():
    D, m = 4, 20000
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(2, D, generator=g, dtype=torch.float64) * 0.5
    w = orthogonal_gaussian(m, D, generator=g, dtype=torch.float64)
    # Undo the stabilisers: compare ratios, which is all attention uses.
    pq = favor_features(torch.stack([q, k]), w)  # rows are stabilised independently
    est = pq[0] @ pq[1]
    x = torch.stack([q, k]) * D**-0.25
    stab = (x @ w.T - (x * x).sum(-1, keepdim=True) / 2).amax(-1)
    est = est * torch.exp(stab.sum())
    torch.testing.assert_close(est, torch.exp(q @ k / math.sqrt(D)), rtol=0.05, atol=0)


def test_orthogonal_gaussian_blocks():
    D, m = 16, 40  # blocks of rows 0-15, 16-31 and a partial block 32-39
    w = orthogonal_gaussian(m, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert w.shape == (m, D) and w.dtype == torch.float64
    unit = w / w.norm(dim=-1, keepdim=True)
    for lo, hi in ((0, 16), (16, 32), (32, 40)):
        block = unit[lo:hi]
        torch.testing.assert_close(block @ block.T, torch.eye(hi - lo, dtype=torch.float64))
    assert (unit[:16] @ unit[16:32].T).abs().max() > 1e-3  # different blocks are independent
    # Row norms are chi_D distributed: E|w|² = D.
    big = orthogonal_gaussian(4096, D, generator=torch.Generator().manual_seed(1))
    assert abs(big.pow(2).sum(-1).mean().item() - D) < 0.05 * D
    again = orthogonal_gaussian(
        m, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    assert torch.equal(w, again)


def test_redraw_changes_projection():
    attn = PerformerAttention(8, 16, generator=torch.Generator().manual_seed(0))
    before = attn.projection.clone()
    attn.redraw_projection(torch.Generator().manual_seed(1))
    assert attn.projection.shape == before.shape
    assert not torch.allclose(attn.projection, before)
    assert "projection" in attn.state_dict()

    auto = PerformerAttention(8, 16, redraw=True)
    q, k, v = _qkv(1, 1, 1, 4, 4, 8, 2)
    auto.eval()
    w0 = auto.projection.clone()
    auto(q, k, v)
    assert torch.equal(auto.projection, w0)
    auto.train()
    # Only a forward pass draws: a running state and the weights of inspection belong to the
    # projection they were computed with.
    auto.recurrent(q, k, v, None)
    auto.weights(q, k)
    assert torch.equal(auto.projection, w0)
    auto(q, k, v)
    assert not torch.equal(auto.projection, w0)


# --------------------------------------------------------------------------------------------
# Bad inputs: the errors of attend()
# --------------------------------------------------------------------------------------------

GOOD = ((2, 4, 5, 4), (2, 2, 5, 4), (2, 2, 5, 3))


GOOD_V = torch.randn(GOOD[2])


def _mistakes():
    """(name, q, k, v, mask): one mistake each; everything else as in GOOD."""
    q, k = (torch.randn(s) for s in GOOD[:2])
    v = GOOD_V
    return [
        ("q not a tensor", q.tolist(), k, v, None),
        ("q 3-D", q[0], k, v, None),
        ("q integer", q.long(), k, v, None),
        ("q empty head dim", q[..., :0], k[..., :0], v, None),
        ("k other dtype", q, k.double(), v, None),
        ("k other batch", q, torch.randn(3, 2, 5, 4), v, None),
        ("k other head dim", q, torch.randn(2, 2, 5, 6), v, None),
        ("v other length", q, k, torch.randn(2, 2, 6, 3), None),
        ("H not a multiple of Hkv", torch.randn(2, 3, 5, 4), k, v, None),
        ("mask of a wrong type", q, k, v, "causal"),
        ("mask of a float tensor", q, k, v, torch.ones(2, 1, 1, 5)),
        ("mask tensor of a wrong shape", q, k, v, torch.ones(2, 1, 1, 4, dtype=torch.bool)),
        ("padding for another batch", q, k, v, masks.padding([1, 2, 3])),
        ("causal & padding for another batch", q, k, v, masks.causal() & masks.padding([1])),
    ]


def _kernels():
    perf = PerformerAttention(4, 8, generator=torch.Generator().manual_seed(0))
    return {
        "linear_attention": lambda q, k, v, m: linear_attention(q, k, v, mask=m),
        "linear_attention_explicit": lambda q, k, v, m: linear_attention_explicit(q, k, v, mask=m),
        "LinearAttention": LinearAttention(),
        "PerformerAttention": perf,
        "PerformerAttention.weights": lambda q, k, v, m: perf.weights(q, k, m),
        "LinformerAttention": LinformerAttention(8, 4),
    }


def _error(fn, *args):
    with pytest.raises((TypeError, ValueError)) as info:
        fn(*args)
    return type(info.value), str(info.value)


@pytest.mark.parametrize("case", range(len(_mistakes())), ids=[m[0] for m in _mistakes()])
def test_same_mistake_same_error_as_attend(case):
    _, q, k, v, mask = _mistakes()[case]
    want = _error(lambda: attend(q, k, v, mask=mask))
    for name, fn in _kernels().items():
        if name.endswith(".weights") and v is not GOOD_V:
            continue  # the weights take no values
        got = _error(fn, q, k, v, mask)
        assert got == want, name


@pytest.mark.parametrize(
    ("shapes", "exc", "match"),
    [
        (((2, 4, 5), (2, 2, 5, 4), (2, 2, 5, 3)), ValueError, r"q: expected 4 dims.*\(2, 4, 5\)"),
        (((2, 3, 5, 4), (2, 2, 5, 4), (2, 2, 5, 3)), ValueError, r"k: query heads H=3.*Hkv=2"),
        (((2, 4, 5, 4), (2, 2, 5, 6), (2, 2, 5, 3)), ValueError, r"k: expected head dim 4.*got 6"),
        (((2, 4, 5, 4), (3, 2, 5, 4), (3, 2, 5, 3)), ValueError, r"k: expected batch size 2.*3"),
        (((2, 4, 5, 4), (2, 2, 5, 4), (2, 2, 6, 3)), ValueError, r"v: expected.*\(2, 2, 5\).*6\)"),
    ],
)
@pytest.mark.parametrize("fn", [linear_attention, linear_attention_explicit])
def test_bad_inputs_raise(fn, shapes, exc, match):
    q, k, v = (torch.randn(s) for s in shapes)
    with pytest.raises(exc, match=match):
        fn(q, k, v)


def test_bad_options_raise():
    q, k, v = (torch.randn(s) for s in GOOD)
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match=rf"chunk_size: expected a positive int, got {bad!r}"):
            linear_attention(q, k, v, chunk_size=bad)
    with pytest.raises(ValueError, match=r"chunk_size.*got 0"):
        LinearAttention(chunk_size=0)
    with pytest.raises(ValueError, match=r"chunk_size.*got 0"):
        PerformerAttention(4, 8, chunk_size=0)
    with pytest.raises(ValueError, match=r"lengths: expected a 1-D integer tensor"):
        masks.padding(torch.tensor([1.0, 2.0]))
    # The old keyword arguments are gone: masks say what is causal and which keys exist.
    with pytest.raises(TypeError):
        linear_attention(q, k, v, causal=True)
    with pytest.raises(TypeError):
        linear_attention(q, k, v, key_lengths=torch.tensor([5, 5]))
    with pytest.raises(TypeError):
        PerformerAttention(4, 8, causal=True)


@pytest.mark.parametrize(
    "shapes",
    [
        ((0, 2, 3, 4), (0, 1, 3, 4), (0, 1, 3, 2)),  # B = 0
        ((1, 2, 0, 4), (1, 1, 3, 4), (1, 1, 3, 2)),  # Tq = 0
        ((1, 2, 3, 4), (1, 1, 3, 4), (1, 1, 3, 0)),  # Dv = 0
        ((1, 2, 3, 4), (1, 1, 0, 4), (1, 1, 0, 2)),  # Tk = 0: zeros
    ],
    ids=["B=0", "Tq=0", "Dv=0", "Tk=0"],
)
def test_empty_shapes_like_attend(shapes):
    q, k, v = (torch.randn(s, requires_grad=True) for s in shapes)
    perf = PerformerAttention(4, 8)
    for mask in (None, masks.causal()):
        want = attend(q, k, v, mask=mask)
        for got in (
            linear_attention(q, k, v, mask=mask),
            linear_attention_explicit(q, k, v, mask=mask),
            perf(q, k, v, mask),
        ):
            assert got.shape == want.shape
            torch.testing.assert_close(got, want)
            got.sum().backward()  # on the graph, as attend()'s output is
    assert LinformerAttention(8, 2)(q, k, v).shape == want.shape


def test_padding_longer_than_the_keys_means_every_key_like_attend():
    q, k, v = (torch.randn(s) for s in GOOD)
    got = linear_attention(q, k, v, mask=masks.padding([1, 9]))
    torch.testing.assert_close(got, linear_attention(q, k, v, mask=masks.padding([1, 5])))
    assert not torch.allclose(got[0], linear_attention(q, k, v)[0])


def test_performer_bad_inputs_raise():
    attn = PerformerAttention(8, 16)
    with pytest.raises(ValueError, match=r"q: expected head dim D = head_dim = 8, got 4"):
        attn(*_qkv(1, 2, 1, 5, 5, 4, 3))
    with pytest.raises(ValueError, match=r"q: expected head dim D = head_dim = 8, got 4"):
        attn.weights(*_qkv(1, 2, 1, 5, 5, 4, 3)[:2])
    with pytest.raises(ValueError, match=r"k: query heads H=3.*Hkv=2"):
        attn(*_qkv(1, 3, 2, 5, 5, 8, 3))
    with pytest.raises(ValueError, match=r"projection.*D = x.shape\[-1\] = 8.*\(16, 4\)"):
        favor_features(torch.randn(3, 8), torch.randn(16, 4))
    with pytest.raises(ValueError, match=r"x must be \(\.\.\., T, D\)"):
        favor_features(torch.randn(8), torch.randn(16, 8))
    with pytest.raises(ValueError, match=r"n_features.*0"):
        orthogonal_gaussian(0, 4)
