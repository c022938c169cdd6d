"""Local attention: exact inside its window, and the chunked backend only visits the band."""

from __future__ import annotations

import pytest
import torch

from attnlab.attention import attend, masks
from attnlab.attention.backends.chunked import _plan, _Spec
from attnlab.attention.local import local_attention


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("backend", ["reference", "sdpa", "chunked"])
def test_local_equals_dense_band(causal, backend):
    q, k, v = (torch.randn(2, 4, 50, 8) for _ in range(3))
    i = torch.arange(50)
    dist = i[:, None] - i[None, :]
    band = (dist >= 0) & (dist < 6) if causal else dist.abs() < 6
    want = attend(q, k, v, mask=band, backend="reference")
    got = local_attention(q, k, v, window=6, causal=causal, backend=backend)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_window_covering_everything_is_causal_attention():
    q, k, v = (torch.randn(1, 2, 30, 8) for _ in range(3))
    full = attend(q, k, v, mask=masks.causal())
    torch.testing.assert_close(local_attention(q, k, v, window=30), full)


def test_local_combines_with_padding():
    q, k, v = (torch.randn(2, 2, 20, 8) for _ in range(3))
    pad = masks.padding([20, 11])
    want = attend(q, k, v, mask=masks.sliding_window(4) & pad, backend="reference")
    torch.testing.assert_close(local_attention(q, k, v, window=4, mask=pad), want)


def test_chunked_skips_tiles_outside_the_window():
    t, window, bq, bk = 4096, 256, 256, 512  # tiles chosen for easy counting
    spec = _Spec(masks.sliding_window(window), None, 1.0, 1, 1, 1, t, t, bq, bk)
    plan = _plan(spec, torch.device("cpu"))
    visited = sum(len(row) for row in plan)
    # Each 256-query tile overlaps at most two 512-key tiles: 32 of the 128 tiles, not 128.
    assert visited <= 2 * len(plan)
    causal = _plan(_Spec(masks.causal(), None, 1.0, 1, 1, 1, t, t, bq, bk), torch.device("cpu"))
    assert sum(len(row) for row in causal) == sum((i * bq) // bk + 1 for i in range(t // bq))
