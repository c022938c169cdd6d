"""auto's backend choice follows the cost model: a pure function of shapes, mask and device."""

from __future__ import annotations

import pytest
import torch

from attnlab.attention import masks
from attnlab.attention.call import make_call
from attnlab.attention.dispatch import COSTS, estimated_seconds, is_sparse, priority, visited_keys


def _call(tq, tk, mask, *, b=1, h=8, d=64, grad=False):
    # Meta tensors: shapes without memory, so the decision is tested at 16k tokens for free.
    q = torch.empty(b, h, tq, d, device="meta", requires_grad=grad)
    k = torch.empty(b, h, tk, d, device="meta", requires_grad=grad)
    return make_call(q, k, k, mask=mask, bias=None, scale=None, dropout_p=0.0, return_weights=False)


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize(
    ("t", "mask", "first"),
    [
        (1024, masks.sliding_window(256), "sdpa"),  # a quarter of the keys: tiles do not pay
        (16384, masks.sliding_window(256), "chunked"),
        (4096, masks.sliding_window(64), "chunked"),
        (1024, masks.causal(), "sdpa"),  # SDPA's causal kernel skips the same half
        (16384, masks.causal(), "sdpa"),
        (4096, None, "sdpa"),
        (256, masks.sliding_window(16), "sdpa"),  # short: per-tile costs dominate
    ],
    ids=[
        "window256-1k",
        "window256-16k",
        "window64-4k",
        "causal-1k",
        "causal-16k",
        "none",
        "short",
    ],
)
def test_cpu_choice(t, mask, first, grad):
    assert priority(_call(t, t, mask, grad=grad))[0] == first


def test_decoding_one_query_stays_dense():
    # One query row with a window over a long cache: the dense call is tiny, tiles cost setup.
    assert not is_sparse(_call(1, 16384, masks.sliding_window(256)))


def test_the_crossover_for_a_256_window_lies_between_1k_and_16k():
    window = masks.sliding_window(256)
    picks = [is_sparse(_call(t, t, window)) for t in (512, 1024, 2048, 4096, 8192, 16384)]
    assert picks == sorted(picks), "once tiles pay, they pay at every longer length"
    assert picks[0] is False and picks[-1] is True


def test_cost_grows_with_visited_tiles_not_density_alone():
    # Same density (1/16) at both lengths; the longer one visits relatively fewer edge tiles.
    short = _call(1024, 1024, masks.sliding_window(64))
    long = _call(16384, 16384, masks.sliding_window(1024))
    assert visited_keys(short, 128) / 1024 > visited_keys(long, 128) / 16384
    est = estimated_seconds(long)
    assert est["tiled"] < est["dense"]


def test_cuda_costs_prefer_tiles_for_long_windows_only():
    cuda = COSTS[("cuda", "fwd")]
    long = estimated_seconds(_call(4096, 4096, masks.sliding_window(256)), cuda)
    short = estimated_seconds(_call(1024, 1024, masks.sliding_window(256)), cuda)
    assert long["tiled"] < long["dense"]
    assert short["tiled"] > short["dense"]
