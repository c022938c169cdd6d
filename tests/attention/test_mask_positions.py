"""Masks and biases viewed at global positions: the view is the slice of the whole matrix.

``mask.at_positions(q_pos, k_pos, tq_total, tk_total)`` must equal rows ``q_pos`` and columns
``k_pos`` of the dense mask of the whole (tq_total, tk_total) matrix for every kind of mask and
combination, whatever the local shape (the global offset, not the local one, aligns it); the
same for biases, their gradients included.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from strategies import any_bias, any_mask

from attnlab.attention import attend, masks
from attnlab.attention import bias as bias_lib


def _positions(draw, total: int) -> torch.Tensor:
    """Distinct positions of [0, total) in any order (a shard: contiguous, zigzag or other)."""
    picked = draw(st.lists(st.integers(0, total - 1), min_size=1, max_size=total, unique=True))
    return torch.tensor(picked)


def _grid(tq: int, tk: int, b: int, h: int):
    return (
        torch.arange(b)[:, None, None, None],
        torch.arange(h)[None, :, None, None],
        torch.arange(tq)[None, None, :, None],
        torch.arange(tk)[None, None, None, :],
    )


def _equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(*torch.broadcast_tensors(a, b))


@given(data=st.data())
def test_mask_at_positions_is_the_slice_of_the_whole_mask(data):
    b, h = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2))
    tq_total, tk_total = data.draw(st.integers(1, 12)), data.draw(st.integers(1, 12))
    mask = data.draw(any_mask(b, h, tq_total, tk_total)) or masks.causal()
    if data.draw(st.booleans()):
        mask = ~mask
    q_pos, k_pos = _positions(data.draw, tq_total), _positions(data.draw, tk_total)
    view = mask.at_positions(q_pos, k_pos, tq_total, tk_total)
    whole = mask.dense(b, tq_total, tk_total)
    expected = whole[:, :, q_pos][:, :, :, k_pos]
    tq, tk = q_pos.numel(), k_pos.numel()
    # dense() passes the local offset tk - tq; the view must ignore it.
    assert _equal(view.dense(b, tq, tk), expected)
    # The predicate form (FlexAttention's mask_mod) and a sub-tile give the same entries.
    assert _equal(view.mask_mod(tq, tk)(*_grid(tq, tk, b, h)), expected)
    rows, cols = torch.arange(tq)[tq // 2 :], torch.arange(tk)[: max(1, tk // 2)]
    tile = view.block(b, rows, cols, offset=123)
    assert _equal(tile, expected[:, :, rows][:, :, :, cols])
    # A view of a view: the positions compose.
    inner_q, inner_k = torch.arange(tq).flip(0), torch.arange(tk)
    twice = view.at_positions(inner_q, inner_k, tq, tk)
    assert _equal(twice.dense(b, tq, tk), expected[:, :, inner_q])


@given(data=st.data())
def test_bias_at_positions_is_the_slice_of_the_whole_bias_with_its_gradients(data):
    b, h = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3))
    tq_total, tk_total = data.draw(st.integers(1, 12)), data.draw(st.integers(1, 12))
    bias, params = data.draw(any_bias(b, h, tq_total, tk_total))
    if bias is None:
        bias = bias_lib.alibi(h)
    q_pos, k_pos = _positions(data.draw, tq_total), _positions(data.draw, tk_total)
    tq, tk = q_pos.numel(), k_pos.numel()
    view = bias.at_positions(q_pos, k_pos, tq_total, tk_total)
    whole = bias.dense(b, h, tq_total, tk_total)
    expected = whole[:, :, q_pos][:, :, :, k_pos]
    got = view.dense(b, h, tq, tk)
    assert _equal(got, expected)
    assert _equal(view.score_mod(tq, tk)(0.0, *_grid(tq, tk, b, h)), expected)
    assert view.params() == bias.params()
    if not params:
        return
    # Gradients through the view: autograd of the dense view, and the tile-by-tile
    # accumulate_grad the chunked backend uses, both equal autograd of the whole bias's slice.
    upstream = torch.randn(b, h, tq, tk)
    want = torch.autograd.grad((expected * upstream).sum(), params)
    dense_grads = torch.autograd.grad((got * upstream).sum(), params)
    grads = [None] * len(params)
    for rows in torch.arange(tq).split(3):
        view.accumulate_grad(grads, b, h, rows, torch.arange(tk), 0, upstream[:, :, rows])
    for w, d, g in zip(want, dense_grads, grads, strict=True):
        torch.testing.assert_close(d, w)
        torch.testing.assert_close(g, w)


def test_attend_on_a_view_gives_the_rows_of_the_whole_attention():
    # Queries at scattered positions against every key in shuffled order: attention over the
    # view equals rows q_pos of attention over the whole sequence, forward and backward, for
    # every backend that takes masks and biases (chunked scatters the tensor bias's gradient
    # to non-contiguous rows).
    b, h, t, d = 2, 2, 12, 8
    q, k, v = torch.randn(b, h, t, d), torch.randn(b, h, t, d), torch.randn(b, h, t, d)
    doc = torch.tensor([[0] * 5 + [1] * 7, [0] * 9 + [1] * 3])
    mask = masks.document(doc, causal=True) | masks.prefix_lm([2, 0])
    table = torch.randn(b, h, t, t, requires_grad=True)
    bias = bias_lib.from_tensor(table) + bias_lib.alibi(h)
    q_pos, k_pos = torch.tensor([7, 0, 1, 10, 11, 3]), torch.randperm(t)
    w = torch.randn(b, h, q_pos.numel(), d)
    whole = attend(q, k, v, mask=mask, bias=bias, backend="reference")[:, :, q_pos]
    (want,) = torch.autograd.grad((whole * w).sum(), table)
    for backend in ("reference", "chunked", "sdpa"):
        out = attend(
            q[:, :, q_pos],
            k[:, :, k_pos],
            v[:, :, k_pos],
            mask=mask.at_positions(q_pos, k_pos, t, t),
            bias=bias.at_positions(q_pos, k_pos, t, t),
            backend=backend,
        )
        torch.testing.assert_close(out, whole, atol=1e-5, rtol=1e-5, msg=backend)
        (got,) = torch.autograd.grad((out * w).sum(), table)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, msg=backend)


def test_the_global_offset_aligns_the_view():
    # Two queries of eight against all eight keys: causal over the whole sequence lets query
    # position 5 see keys 0..5, whatever the local shapes (2 x 8) would align to.
    view = masks.causal().at_positions(torch.tensor([5, 2]), torch.arange(8), 8, 8)
    assert view.dense(1, 2, 8)[0, 0].tolist() == [
        [True] * 6 + [False] * 2,
        [True] * 3 + [False] * 5,
    ]
    # With fewer queries than keys over the whole matrix, queries align to the bottom right.
    view = masks.causal().at_positions(torch.tensor([0]), torch.arange(4), 2, 4)
    assert view.dense(1, 1, 4)[0, 0, 0].tolist() == [True, True, True, False]


def test_views_are_checked_against_the_whole_shape():
    q = torch.randn(1, 2, 3, 4)
    pos = torch.tensor([0, 4, 5])
    whole = masks.from_tensor(torch.ones(1, 1, 6, 6, dtype=torch.bool))
    attend(q, q, q, mask=whole.at_positions(pos, pos, 6, 6))  # fine: (6, 6) is the whole shape
    with pytest.raises(
        ValueError, match=r"mask: expected a shape broadcastable to .* \(1, 2, 8, 8\)"
    ):
        attend(q, q, q, mask=whole.at_positions(pos, pos, 8, 8))
    with pytest.raises(ValueError, match="mask: viewed at 2 query and 3 key positions"):
        attend(q, q, q, mask=masks.causal().at_positions(pos[:2], pos, 6, 6))
    with pytest.raises(ValueError, match="bias: viewed at 3 query and 2 key positions"):
        attend(q, q, q, bias=bias_lib.alibi(2).at_positions(pos, pos[:2], 6, 6))
    with pytest.raises(ValueError, match="bias: built for 3 heads"):
        attend(q, q, q, bias=bias_lib.alibi(3).at_positions(pos, pos, 6, 6))


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        (
            (torch.tensor([[0, 1]]), torch.tensor([0]), 4, 4),
            ValueError,
            "q_positions: expected a 1-D",
        ),
        ((torch.tensor([0]), torch.tensor([0.5]), 4, 4), ValueError, "k_positions: expected a 1-D"),
        ((torch.tensor([4]), torch.tensor([0]), 4, 4), ValueError, r"q_positions: .*\[0, 4\)"),
        ((torch.tensor([0]), torch.tensor([-1]), 4, 4), ValueError, r"k_positions: .*\[0, 4\)"),
        (
            ([0, 1], torch.tensor([0]), 4, 4),
            TypeError,
            "q_positions: expected a 1-D integer tensor",
        ),
        ((torch.tensor([0]), torch.tensor([0]), -1, 4), ValueError, "tq_total: expected an int"),
        ((torch.tensor([0]), torch.tensor([0]), 4, 2.0), ValueError, "tk_total: expected an int"),
    ],
)
def test_bad_positions_are_refused_naming_the_argument(args, error, message):
    for target in (masks.causal(), bias_lib.alibi(2)):
        with pytest.raises(error, match=message):
            target.at_positions(*args)
