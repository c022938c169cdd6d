import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab.position import LinearScaling, NTKScaling, RotaryEmbedding, apply_rotary


def reference_rope(x: torch.Tensor, positions: torch.Tensor, base: float, rotary_dim: int):
    """RoFormer written independently: interleaved pairs (x[2j], x[2j+1]) as complex numbers.

    x is (..., T, D) in the rotate-half layout and positions is (T,), possibly fractional.
    Channels are permuted into the interleaved layout, rotated by e^(i * pos * theta_j), and
    permuted back, so this shares no code path with the library's rotate_half arithmetic.
    """
    half = rotary_dim // 2
    # Rotate-half pairs channel j with j + half; interleaved puts them at 2j and 2j + 1.
    to_interleaved = [c for j in range(half) for c in (j, j + half)]
    x = x.double()
    pairs = x[..., to_interleaved].reshape(*x.shape[:-1], half, 2)
    z = torch.view_as_complex(pairs.contiguous())
    theta = base ** (-2.0 * torch.arange(half, dtype=torch.float64) / rotary_dim)
    angles = positions.double()[:, None] * theta  # (T, half)
    z = z * torch.polar(torch.ones_like(angles), angles)
    rotated = torch.empty_like(x[..., :rotary_dim])
    rotated[..., to_interleaved] = torch.view_as_real(z).flatten(-2)
    return torch.cat((rotated, x[..., rotary_dim:]), dim=-1)


def rand(*shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


@pytest.mark.parametrize(("head_dim", "base"), [(8, 10000.0), (16, 500000.0), (2, 10.0)])
def test_matches_complex_reference(head_dim, base):
    rope = RotaryEmbedding(head_dim, base=base)
    x = rand(2, 3, 5, head_dim)
    positions = torch.tensor([0, 1, 7, 100, 300])
    expected = reference_rope(x, positions, base, head_dim)
    torch.testing.assert_close(rope.rotate(x, positions).double(), expected, rtol=0, atol=2e-5)


def test_position_zero_is_identity_and_reference_is_not_trivial():
    rope = RotaryEmbedding(8)
    x = rand(1, 2, 3, 8)
    torch.testing.assert_close(rope.rotate(x, torch.zeros(3, dtype=torch.long)), x)
    assert not torch.allclose(rope.rotate(x, torch.arange(3)), x)


def test_preserves_norms():
    rope = RotaryEmbedding(16)
    x = rand(2, 2, 6, 16)
    out = rope.rotate(x, torch.tensor([0, 3, 9, 50, 1000, 4096]))
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1))

    # Each rotate-half pair (j, j + 8) keeps its own length too.
    def pair_sq_norm(t):
        return t[..., :8].square() + t[..., 8:].square()

    torch.testing.assert_close(pair_sq_norm(out), pair_sq_norm(x), rtol=1e-5, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(
    m=st.integers(0, 512),
    n=st.integers(0, 512),
    offset=st.integers(0, 512),
    seed=st.integers(0, 2**16),
)
def test_scores_depend_only_on_position_difference(m, n, offset, seed):
    rope = RotaryEmbedding(8)
    q = rand(1, 1, 1, 8, seed=seed, dtype=torch.float64)
    k = rand(1, 1, 1, 8, seed=seed + 1, dtype=torch.float64)
    q, k = q / q.norm(), k / k.norm()

    def score(qm, kn):
        q_rot, k_rot = rope(q, k, torch.tensor([qm]), torch.tensor([kn]))
        return (q_rot * k_rot).sum().item()

    # Angles are float32, whose rounding at ~1000 rad is ~1e-4: hence the tolerance.
    assert score(m, n) == pytest.approx(score(m + offset, n + offset), abs=1e-3)


def test_cached_decoding_matches_full_rotation():
    rope = RotaryEmbedding(8)
    offset, t = 5, 3
    x_full = rand(2, 2, offset + t, 8)
    full = rope.rotate(x_full, torch.arange(offset + t))
    tail = rope.rotate(x_full[:, :, offset:], torch.arange(offset, offset + t))
    torch.testing.assert_close(tail, full[:, :, offset:])


def test_per_row_positions():
    rope = RotaryEmbedding(8)
    x = rand(3, 2, 4, 8)
    positions = torch.tensor([[0, 1, 2, 3], [10, 11, 12, 13], [0, 0, 1, 2]])  # last: left pad
    out = rope.rotate(x, positions)
    for b in range(3):
        torch.testing.assert_close(out[b : b + 1], rope.rotate(x[b : b + 1], positions[b]))
    assert not torch.allclose(out[0], out[1])


def test_partial_rotary_leaves_tail_untouched():
    rope = RotaryEmbedding(8, rotary_dim=4)
    x = rand(1, 2, 5, 8)
    positions = torch.arange(5) * 7
    out = rope.rotate(x, positions)
    assert torch.equal(out[..., 4:], x[..., 4:])
    torch.testing.assert_close(out[..., :4], RotaryEmbedding(4).rotate(x[..., :4], positions))
    expected = reference_rope(x, positions, 10000.0, rotary_dim=4)
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=2e-5)
    assert rope.cos_sin(positions)[0].shape == (5, 4)


def test_linear_scaling_divides_positions():
    factor = 4
    scaled = RotaryEmbedding(8, scaling=LinearScaling(factor))
    x = rand(1, 2, 3, 8)
    positions = torch.tensor([0, 5, 37])
    torch.testing.assert_close(
        scaled.rotate(x, positions * factor), RotaryEmbedding(8).rotate(x, positions)
    )
    expected = reference_rope(x, positions / factor, 10000.0, 8)
    torch.testing.assert_close(scaled.rotate(x, positions).double(), expected, rtol=0, atol=2e-5)


def test_ntk_scaling_changes_base():
    factor, r = 8.0, 16
    ntk = RotaryEmbedding(r, scaling=NTKScaling(factor))
    plain = RotaryEmbedding(r)
    expected_base = 10000.0 * factor ** (r / (r - 2))
    assert ntk.effective_base == pytest.approx(expected_base)
    assert ntk.base == 10000.0
    torch.testing.assert_close(ntk.inv_freq, RotaryEmbedding(r, base=expected_base).inv_freq)
    # The point of the exponent: highest frequency kept, lowest divided by exactly `factor`.
    assert ntk.inv_freq[0] == plain.inv_freq[0] == 1.0
    assert ntk.inv_freq[-1].item() == pytest.approx(plain.inv_freq[-1].item() / factor, rel=1e-6)
    # And the partial-rotary R, not head_dim, sets the exponent.
    partial = RotaryEmbedding(32, rotary_dim=r, scaling=NTKScaling(factor))
    assert partial.effective_base == pytest.approx(expected_base)


def test_bf16_in_bf16_out_close_to_fp32():
    rope = RotaryEmbedding(16)
    x = rand(2, 2, 4, 16)
    positions = torch.tensor([0, 9, 99, 999])
    out = rope.rotate(x.bfloat16(), positions)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), rope.rotate(x, positions), rtol=2e-2, atol=2e-2)
    # Computed in float32 and rounded once: bit-identical to rounding the fp32 result.
    assert torch.equal(out, rope.rotate(x.bfloat16().float(), positions).bfloat16())
    cos, sin = rope.cos_sin(positions, dtype=torch.bfloat16)
    assert cos.dtype == sin.dtype == torch.bfloat16


def test_module_cast_to_bf16_keeps_float32_frequencies():
    rope = RotaryEmbedding(16)
    rope_bf16 = RotaryEmbedding(16).to(torch.bfloat16)
    positions = torch.tensor([1000, 4000])
    for ours, ref in zip(rope_bf16.cos_sin(positions), rope.cos_sin(positions), strict=True):
        torch.testing.assert_close(ours, ref)


def test_forward_rotates_q_and_k_with_their_own_positions():
    rope = RotaryEmbedding(8)
    q, k = rand(2, 4, 1, 8, seed=1), rand(2, 2, 6, 8, seed=2)  # GQA heads, one new query
    q_rot, k_rot = rope(q, k, torch.tensor([5]), torch.arange(6))
    torch.testing.assert_close(q_rot, rope.rotate(q, torch.tensor([5])))
    torch.testing.assert_close(k_rot, rope.rotate(k, torch.arange(6)))
    k_same = rand(2, 2, 1, 8, seed=3)
    _, k_default = rope(q, k_same, torch.tensor([5]))
    torch.testing.assert_close(k_default, rope.rotate(k_same, torch.tensor([5])))


def test_inv_freq_not_in_state_dict():
    rope = RotaryEmbedding(8)
    assert rope.state_dict() == {}
    assert rope.inv_freq.shape == (4,)


def test_bad_inputs_raise_helpful_errors():
    rope = RotaryEmbedding(8)
    x = rand(2, 2, 3, 8)
    with pytest.raises(ValueError, match=r"x must be 4-D \(B, H, T, D\); got 3-D shape \(2, 3, 8"):
        rope.rotate(x[0], torch.arange(3))
    with pytest.raises(ValueError, match=r"x.shape\[-1\] must equal head_dim=8; got 6"):
        rope.rotate(x[..., :6], torch.arange(3))
    with pytest.raises(ValueError, match=r"positions must have shape \(T,\) = \(3,\).*got \(4,\)"):
        rope.rotate(x, torch.arange(4))
    with pytest.raises(ValueError, match=r"\(B, T\) = \(2, 3\).*got \(5, 3\)"):
        rope.rotate(x, torch.zeros(5, 3, dtype=torch.long))
    with pytest.raises(TypeError, match=r"positions must be an integer tensor; got dtype"):
        rope.rotate(x, torch.arange(3.0))
    with pytest.raises(ValueError, match=r"k_positions.*got \(2,\)"):
        rope(x, x, torch.arange(3), torch.arange(2))
    with pytest.raises(ValueError, match=r"q_positions.*got \(2,\)"):
        rope(x, x, torch.arange(2))


@pytest.mark.parametrize("rotary_dim", [3, 10, 0])
def test_bad_rotary_dim(rotary_dim):
    with pytest.raises(ValueError, match=rf"rotary_dim must be even.*head_dim=8.*got {rotary_dim}"):
        RotaryEmbedding(8, rotary_dim=rotary_dim)


def test_bad_scaling():
    with pytest.raises(ValueError, match=r"NTKScaling needs rotary_dim > 2"):
        RotaryEmbedding(2, scaling=NTKScaling(2.0))
    with pytest.raises(ValueError, match=r"LinearScaling.factor must be > 0; got 0"):
        LinearScaling(0)
    with pytest.raises(TypeError, match=r"scaling must be None, LinearScaling or NTKScaling"):
        RotaryEmbedding(8, scaling=2.0)


def test_apply_rotary_checks_cos_sin():
    x = rand(1, 1, 2, 8)
    with pytest.raises(ValueError, match=r"cos and sin must have the same shape"):
        apply_rotary(x, torch.ones(2, 8), torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"must be even and <= x.shape\[-1\]=8; got 10"):
        apply_rotary(x, torch.ones(2, 10), torch.ones(2, 10))
