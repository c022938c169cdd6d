"""Mask semantics: each mask's dense form against a direct, loop-based reading of its definition."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from attnlab.attention import masks


def _explicit(tq, tk, rule):
    """Dense (Tq, Tk) mask from a Python predicate over absolute query position and key index."""
    off = tk - tq
    return torch.tensor([[rule(i + off, j) for j in range(tk)] for i in range(tq)])


@given(tq=st.integers(1, 12), tk=st.integers(1, 12))
def test_causal_aligns_bottom_right(tq, tk):
    got = masks.causal().dense(1, tq, tk)[0, 0]
    assert torch.equal(got, _explicit(tq, tk, lambda i, j: j <= i))


@given(tq=st.integers(1, 12), tk=st.integers(1, 12), size=st.integers(1, 14))
def test_sliding_window(tq, tk, size):
    got = masks.sliding_window(size).dense(1, tq, tk)[0, 0]
    assert torch.equal(got, _explicit(tq, tk, lambda i, j: j <= i and i - j < size))
    sym = masks.sliding_window(size, causal=False).dense(1, tq, tk)[0, 0]
    assert torch.equal(sym, _explicit(tq, tk, lambda i, j: abs(i - j) < size))


def test_padding_prefix_and_document():
    lengths = torch.tensor([2, 4])
    got = masks.padding(lengths).dense(2, 3, 4)
    for b in range(2):
        assert torch.equal(got[b, 0], _explicit(3, 4, lambda i, j, b=b: j < lengths[b]))
    prefix = masks.prefix_lm(torch.tensor([0, 3])).dense(2, 4, 4)
    for b, p in enumerate([0, 3]):
        assert torch.equal(prefix[b, 0], _explicit(4, 4, lambda i, j, p=p: j < p or j <= i))
    ids = torch.tensor([[0, 0, 1, 1, 1, 2]])
    doc = masks.document(ids).dense(1, 6, 6)[0, 0]
    assert torch.equal(doc, _explicit(6, 6, lambda i, j: bool(ids[0, i] == ids[0, j])))
    doc_c = masks.document(ids, causal=True).dense(1, 6, 6)[0, 0]
    assert torch.equal(doc_c, doc & _explicit(6, 6, lambda i, j: j <= i))
    # With a KV cache the queries are the last Tq positions: their ids are the last Tq ids.
    tail = masks.document(ids, causal=True).dense(1, 2, 6)[0, 0]
    assert torch.equal(tail, doc_c[4:])


def test_combinations():
    a, b = masks.causal(), masks.sliding_window(2, causal=False)
    da, db = a.dense(1, 5, 5), b.dense(1, 5, 5)
    assert torch.equal((a & b).dense(1, 5, 5), da & db)
    assert torch.equal((a | b).dense(1, 5, 5), da | db)
    assert torch.equal((~a).dense(1, 5, 5), ~da)
    pad = masks.padding([3, 5])
    assert torch.equal((a & pad).dense(2, 5, 5), da & pad.dense(2, 5, 5))


def test_tensor_mask_broadcasts():
    t = torch.rand(1, 3, 4, 5) < 0.5
    m = masks.from_tensor(t)
    assert torch.equal(m.dense(2, 4, 5).expand(1, 3, 4, 5), t)
    assert torch.equal(masks.from_tensor(t[0, 0]).dense(1, 4, 5)[0, 0], t[0, 0])


def test_block_equals_slice_of_dense():
    ids = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2, 2]])
    m = masks.document(ids, causal=True) | masks.prefix_lm([2])
    full = m.dense(1, 9, 9)
    q_idx, k_idx = torch.arange(3, 7), torch.arange(2, 8)
    assert torch.equal(m.block(1, q_idx, k_idx, 0), full[:, :, 3:7, 2:8])


def test_mask_mod_matches_dense():
    m = masks.sliding_window(3) & masks.padding([4])
    fn = m.mask_mod(4, 6)
    q, k = torch.arange(4)[:, None], torch.arange(6)[None, :]
    assert torch.equal(fn(torch.tensor(0), torch.tensor(0), q, k), m.dense(1, 4, 6)[0, 0])


def test_density_orders_sparse_below_dense():
    assert masks.sliding_window(256).density(4096, 4096) < 0.1
    assert masks.causal().density(4096, 4096) == 0.5
    assert (masks.causal() & masks.sliding_window(256)).density(4096, 4096) < 0.1


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: masks.sliding_window(0), "size: expected a positive int, got 0"),
        (lambda: masks.padding(torch.ones(2, 2)), r"lengths: expected a 1-D integer tensor"),
        (lambda: masks.prefix_lm([0.5]), "prefix_lengths: expected a 1-D integer tensor"),
        (lambda: masks.document(torch.zeros(4)), r"doc_ids: expected a 2-D integer tensor"),
        (lambda: masks.from_tensor(torch.ones(2, 2)), "mask: expected a boolean tensor"),
        (lambda: masks.causal() & "x", "other: expected an attnlab Mask, got str"),
        (
            lambda: masks.padding([1, 2]) & masks.padding([1, 2, 3]),
            r"mask: combined masks disagree on the batch size: \[2, 3\]",
        ),
    ],
)
def test_bad_masks_raise_clear_errors(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()
