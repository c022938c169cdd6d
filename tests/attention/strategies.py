"""Hypothesis strategies for attention calls: shapes, masks and biases of every kind."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from attnlab.attention import bias as bias_lib
from attnlab.attention import masks


@st.composite
def shapes(draw, max_t: int = 24):
    b = draw(st.integers(1, 2))
    hkv = draw(st.integers(1, 2))
    g = draw(st.integers(1, 3))
    tq = draw(st.integers(1, max_t))
    tk = draw(st.one_of(st.just(tq), st.integers(1, max_t)))
    d = draw(st.sampled_from([1, 3, 8]))
    dv = draw(st.sampled_from([2, 5, 8]))
    return b, hkv * g, hkv, tq, tk, d, dv


def _lengths(draw, b: int, t: int) -> torch.Tensor:
    return torch.tensor(draw(st.lists(st.integers(0, t), min_size=b, max_size=b)))


def _doc_ids(draw, b: int, t: int) -> torch.Tensor:
    rows = []
    for _ in range(b):
        steps = draw(st.lists(st.booleans(), min_size=t, max_size=t))
        rows.append(torch.tensor(steps, dtype=torch.long).cumsum(0))
    return torch.stack(rows)


@st.composite
def single_mask(draw, b: int, h: int, tq: int, tk: int):
    kind = draw(
        st.sampled_from(
            ["causal", "window", "window_sym", "padding", "prefix", "doc", "doc_causal", "tensor"]
        )
    )
    if kind == "causal":
        return masks.causal()
    if kind == "window":
        return masks.sliding_window(draw(st.integers(1, tk + 1)))
    if kind == "window_sym":
        return masks.sliding_window(draw(st.integers(1, tk + 1)), causal=False)
    if kind == "padding":
        return masks.padding(_lengths(draw, b, tk))
    if kind == "prefix":
        return masks.prefix_lm(_lengths(draw, b, tk))
    if kind in ("doc", "doc_causal"):
        causal = kind == "doc_causal"
        if tq <= tk and draw(st.booleans()):  # self-attention: queries are the last Tq ids
            return masks.document(_doc_ids(draw, b, tk), causal=causal)
        kv_ids = _doc_ids(draw, b, tk)
        return masks.document(_doc_ids(draw, b, tq), kv_doc_ids=kv_ids, causal=causal)
    shape = (draw(st.sampled_from([1, b])), draw(st.sampled_from([1, h])), tq, tk)
    return masks.from_tensor(torch.rand(shape) < draw(st.floats(0.2, 0.9)))


@st.composite
def any_mask(draw, b: int, h: int, tq: int, tk: int):
    """None, one mask, or two combined with & or |."""
    n = draw(st.integers(0, 2))
    if n == 0:
        return None
    m = draw(single_mask(b, h, tq, tk))
    if n == 2:
        other = draw(single_mask(b, h, tq, tk))
        m = (m & other) if draw(st.booleans()) else (m | other)
    return m


@st.composite
def any_bias(draw, b: int, h: int, tq: int, tk: int):
    """None, ALiBi, a learnable T5 bias, a learnable tensor, or a sum; returns (bias, params)."""
    kind = draw(st.sampled_from(["none", "alibi", "t5", "t5_causal", "tensor", "sum"]))
    if kind == "none":
        return None, []
    if kind == "alibi":
        return bias_lib.alibi(h), []
    if kind in ("t5", "t5_causal"):
        module = bias_lib.RelativePositionBias(
            h, num_buckets=8, max_distance=16, bidirectional=kind == "t5"
        )
        with torch.no_grad():
            module.weight.normal_()
        return module(), [module.weight]
    shape = (draw(st.sampled_from([1, b])), draw(st.sampled_from([1, h])), tq, tk)
    t = torch.randn(shape, requires_grad=True)
    if kind == "tensor":
        return bias_lib.from_tensor(t), [t]
    return bias_lib.from_tensor(t) + bias_lib.alibi(h), [t]


# Half precisions and the largest q magnitude drawn for them: with |q| up to 1e4 the logits reach
# about 1e4 * sqrt(D) before scaling, past float16's 65504 and far past bfloat16's 8-bit mantissa.
LOW_PRECISION_DTYPES = (torch.float16, torch.bfloat16)
MAGNITUDES = (1.0, 30.0, 1e3, 1e4)


@st.composite
def low_precision_qkv(draw, b: int, h: int, hkv: int, tq: int, tk: int, d: int, dv: int):
    """q, k, v in float16 or bfloat16, q scaled by a drawn magnitude (up to 1e4): large logits."""
    dtype = draw(st.sampled_from(LOW_PRECISION_DTYPES))
    magnitude = draw(st.sampled_from(MAGNITUDES))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    q = torch.randn(b, h, tq, d, generator=gen) * magnitude
    k = torch.randn(b, hkv, tk, d, generator=gen)
    v = torch.randn(b, hkv, tk, dv, generator=gen)
    return tuple(t.to(dtype) for t in (q, k, v))


EMPTY_ROW_CASES = ["padding_zero", "causal_tq_gt_tk", "document_cross", "tensor_all_false"]


def empty_row_case(case: str):
    """A mask leaving some query rows without any key: (mask, empty (B|1, 1|H, Tq), shape)."""
    b, h, tq, tk = 2, 2, 6, 6
    if case == "padding_zero":
        mask = masks.padding([0, 3])
        empty = torch.tensor([True, False])[:, None, None]  # every row of batch row 0
    elif case == "causal_tq_gt_tk":
        tk = 3
        mask = masks.causal()  # bottom-right: the first tq - tk query rows see nothing
        empty = (torch.arange(tq) < tq - tk)[None, None, :]
    elif case == "document_cross":
        q_ids = torch.tensor([[0, 0, 5, 5, 1, 1]] * b)
        kv_ids = torch.tensor([[0, 0, 1, 1, 1, 1]] * b)
        mask = masks.document(q_ids, kv_doc_ids=kv_ids)
        empty = (q_ids == 5)[:, None, :]
    else:
        t = torch.ones(b, 1, tq, tk, dtype=torch.bool)
        t[:, :, 2] = False
        mask = masks.from_tensor(t)
        empty = (torch.arange(tq) == 2)[None, None, :]
    return mask, empty, (b, h, tq, tk)
