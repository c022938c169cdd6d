"""NaN and inf reach exactly the output rows that see them, on every backend."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import any_mask, shapes

from attnlab.attention import attend, masks, nonfinite
from attnlab.attention.backends import ChunkedBackend
from attnlab.attention.call import make_call

BACKENDS = ["reference", "sdpa", "chunked", "auto"]


def _allowed(mask, b, h, tq, tk) -> torch.Tensor:
    """(B, H, Tq, Tk) True where a query row attends to a key."""
    if mask is None:
        return torch.ones(b, h, tq, tk, dtype=torch.bool)
    return mask.dense(b, tq, tk).expand(b, h, tq, tk)


def _poison(draw, q, k, v):
    """Write NaN or inf into one query row, key or value (a whole row or one entry), in place.
    Returns (which tensor, batch, head, position, value)."""
    which = draw(st.sampled_from(["q", "k", "v"]))
    t = {"q": q, "k": k, "v": v}[which]
    b, hd, pos = (draw(st.integers(0, n - 1)) for n in t.shape[:3])
    value = draw(st.sampled_from([float("nan"), float("inf"), float("-inf")]))
    if draw(st.booleans()):
        t[b, hd, pos] = value
    else:
        t[b, hd, pos, draw(st.integers(0, t.shape[3] - 1))] = value
    return which, b, hd, pos, value


def _rows_that_see(which, b, hd, pos, allowed, groups) -> torch.Tensor:
    """(B, H, Tq) True for the rows that see the poisoned entry."""
    rows = torch.zeros(allowed.shape[:3], dtype=torch.bool)
    has_key = allowed.any(-1)
    if which == "q":
        rows[b, hd, pos] = has_key[b, hd, pos]
    else:  # key/value head hd serves query heads hd * G ... hd * G + G - 1
        heads = slice(hd * groups, (hd + 1) * groups)
        rows[b, heads] = allowed[b, heads, :, pos]
    return rows


@settings(max_examples=60)
@given(data=st.data())
@pytest.mark.parametrize("backend", BACKENDS)
def test_nonfinite_reaches_exactly_the_rows_that_see_it(backend, data):
    b, h, hkv, tq, tk, d, dv = data.draw(shapes(max_t=12))
    mask = data.draw(any_mask(b, h, tq, tk))
    q, k, v = torch.randn(b, h, tq, d), torch.randn(b, hkv, tk, d), torch.randn(b, hkv, tk, dv)
    clean = attend(q, k, v, mask=mask, backend=backend)
    which, *where, value = _poison(data.draw, q, k, v)
    allowed = _allowed(mask, b, h, tq, tk)
    sees = _rows_that_see(which, *where, allowed, h // hkv)

    out = attend(q, k, v, mask=mask, backend=backend)
    # Rows that do not see the bad entry are exactly what they were without it.
    torch.testing.assert_close(out[~sees], clean[~sees], rtol=0, atol=0)
    # Rows with no key at all stay zeros.
    assert out[~allowed.any(-1)].abs().sum() == 0
    if value != value:  # NaN: every row that sees it is NaN
        assert out.isnan().any(-1)[sees].all(), f"{which} NaN at {where} did not reach its rows"
    elif which == "v":
        # An inf value makes the rows that see it inf or NaN. (An inf in q or k gives scores of
        # +-inf, and a -inf score legitimately drops its key, so those rows are not checked.)
        assert (~out.isfinite()).any(-1)[sees].all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_in_padding_does_not_reach_any_row(backend):
    q, k, v = (torch.randn(2, 2, 6, 4) for _ in range(3))
    mask = masks.padding([4, 6])
    want = attend(q, k, v, mask=mask, backend=backend)
    k[0, :, 4:] = float("nan")  # padded keys and values of batch row 0
    v[0, :, 4:] = float("nan")
    got = attend(q, k, v, mask=mask, backend=backend)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_value_reaches_only_later_rows_under_a_causal_mask(backend):
    q, k, v = (torch.randn(1, 2, 8, 4) for _ in range(3))
    v[0, 0, 5] = float("nan")
    out = attend(q, k, v, mask=masks.causal(), backend=backend)
    assert out[0, 0].isnan().any(-1).tolist() == [False] * 5 + [True] * 3
    assert not out[0, 1].isnan().any()  # the other head never sees it


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("t", [6, 40])
def test_nan_query_row_is_nan_not_zeros(backend, t):
    # t=6: PyTorch's CPU SDPA kernel gives zeros for such rows with fewer than 8 keys.
    q, k, v = (torch.randn(1, 2, t, 4) for _ in range(3))
    q[0, 1, 3] = float("nan")
    for mask in (None, masks.causal(), masks.padding([5]), masks.sliding_window(3)):
        out = attend(q, k, v, mask=mask, backend=backend)
        want = torch.zeros(1, 2, t, dtype=torch.bool)
        want[0, 1, 3] = True
        assert torch.equal(out.isnan().any(-1), want), mask


def test_small_chunked_tiles_follow_the_rule():
    # Tiles smaller than the mask's structure: fully masked tiles are skipped, partial tiles
    # masked; the rule must hold for both.
    q, k, v = (torch.randn(1, 2, 10, 4) for _ in range(3))
    v[0, 0, 6, 1] = float("nan")
    k[0, 1, 2] = float("nan")
    mask = masks.sliding_window(3)
    call = make_call(q, k, v, mask=mask, bias=None, scale=None, dropout_p=0.0, return_weights=False)
    out, _ = nonfinite.contain(call, ChunkedBackend(q_block=2, kv_block=3).forward)
    assert out[0, 0].isnan().any(-1).tolist() == [False] * 6 + [True] * 3 + [False]
    assert out[0, 1].isnan().any(-1).tolist() == [False] * 2 + [True] * 3 + [False] * 5


def test_weights_follow_the_rule():
    q, k, v = (torch.randn(1, 1, 6, 4) for _ in range(3))
    k[0, 0, 5] = float("nan")  # seen by row 5 only
    v[0, 0, 4] = float("nan")  # seen by rows 4 and 5; weights do not depend on values
    out, w = attend(q, k, v, mask=masks.causal(), return_weights=True)
    assert out[0, 0].isnan().any(-1).tolist() == [False] * 4 + [True] * 2
    assert w[0, 0].isnan().any(-1).tolist() == [False] * 5 + [True]
    torch.testing.assert_close(w[0, 0, :5].sum(-1), torch.ones(5))


def test_rows_without_nan_keep_their_gradients():
    q, k, v = (torch.randn(1, 2, 6, 4, requires_grad=True) for _ in range(3))
    mask = masks.padding([4])
    bad_k = k.detach().clone()
    bad_k[0, :, 4:] = float("nan")
    bad_k.requires_grad_()
    for backend in ("reference", "sdpa", "chunked"):
        want = torch.autograd.grad(attend(q, k, v, mask=mask, backend=backend).sum(), [q, v])
        got = torch.autograd.grad(attend(q, bad_k, v, mask=mask, backend=backend).sum(), [q, v])
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, rtol=0, atol=0)
