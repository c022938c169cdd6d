"""Score biases: ALiBi slopes from the paper, T5 buckets, tensors, and their tiles."""

from __future__ import annotations

import math

import pytest
import torch

from attnlab.attention import bias as bias_lib


def test_alibi_slopes_power_of_two_match_paper():
    # Press et al. 2022: for 8 heads the slopes are 1/2, 1/4, ..., 1/256.
    torch.testing.assert_close(
        bias_lib.alibi_slopes(8), torch.tensor([2.0**-i for i in range(1, 9)])
    )


def test_alibi_slopes_non_power_of_two():
    # 12 heads: the 8 slopes of 8 heads, then every other slope of 16 heads.
    s16 = [2 ** (-0.5 * (i + 1)) for i in range(16)]
    want = [2.0 ** -(i + 1) for i in range(8)] + s16[0::2][:4]
    torch.testing.assert_close(bias_lib.alibi_slopes(12), torch.tensor(want))
    assert bias_lib.alibi_slopes(1).tolist() == [2.0**-8]


def test_alibi_values_are_negative_distance_times_slope():
    b = bias_lib.alibi(4).dense(1, 4, 3, 5)  # (1, H, Tq, Tk); queries at positions 2, 3, 4
    slopes = bias_lib.alibi_slopes(4)
    for h in range(4):
        for i in range(3):
            for j in range(5):
                assert b[0, h, i, j] == pytest.approx(-slopes[h].item() * abs(i + 2 - j))


def _t5_bucket_loop(rel, bidirectional, num_buckets, max_distance):
    """T5's bucketing written directly from the paper's description, one scalar at a time."""
    ret = 0
    n = -rel
    if bidirectional:
        num_buckets //= 2
        ret += num_buckets if n < 0 else 0
        n = abs(n)
    else:
        n = max(n, 0)
    max_exact = num_buckets // 2
    if n < max_exact:
        return ret + n
    val = max_exact + int(
        math.log(n / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    )
    return ret + min(val, num_buckets - 1)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_t5_buckets_match_loop(bidirectional):
    rel = torch.arange(-300, 301)
    got = bias_lib.t5_bucket(rel, bidirectional=bidirectional, num_buckets=32, max_distance=128)
    want = [_t5_bucket_loop(r, bidirectional, 32, 128) for r in rel.tolist()]
    assert got.tolist() == want
    assert got.max() < 32


def test_t5_bias_looks_up_its_table():
    module = bias_lib.RelativePositionBias(3, num_buckets=8, max_distance=16, bidirectional=False)
    b = module().dense(1, 3, 4, 4)
    for i in range(4):
        for j in range(4):
            bucket = _t5_bucket_loop(j - i, False, 8, 16)
            torch.testing.assert_close(b[0, :, i, j], module.weight[bucket])


def test_tile_equals_slice_of_dense_for_every_bias():
    module = bias_lib.RelativePositionBias(2)
    t = torch.randn(2, 1, 7, 9)
    for b in (bias_lib.alibi(2), module(), bias_lib.from_tensor(t), bias_lib.alibi(2) + module()):
        full = b.dense(2, 2, 7, 9)
        tile = b.block(2, 2, torch.arange(2, 5), torch.arange(3, 9), 2)
        torch.testing.assert_close(tile, full[:, :, 2:5, 3:9])


def test_score_mod_adds_the_value():
    b = bias_lib.alibi(2)
    fn = b.score_mod(3, 3)
    s = torch.zeros(())
    got = fn(s, torch.tensor(0), torch.tensor(1), torch.tensor(2), torch.tensor(0))
    assert got.item() == pytest.approx(-bias_lib.alibi_slopes(2)[1].item() * 2)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: bias_lib.alibi_slopes(0), "n_heads: expected a positive int, got 0"),
        (lambda: bias_lib.from_tensor(torch.ones(2, dtype=torch.long)), "bias: expected a float"),
        (lambda: bias_lib.from_tensor(torch.ones(1, 1, 1, 1, 1)), "bias: expected at most 4"),
        (lambda: bias_lib.RelativePositionBias(2, num_buckets=2), "num_buckets: expected at"),
    ],
)
def test_bad_biases_raise(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()
