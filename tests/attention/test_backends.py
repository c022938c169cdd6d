"""Every backend equals the eager reference, forward and backward, over drawn cases."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import any_bias, any_mask, shapes

from attnlab.attention import attend, masks
from attnlab.attention.backends import chunked_attention
from attnlab.attention.call import make_call

ATOL = 1e-5


def _inputs(b, h, hkv, tq, tk, d, dv, requires_grad=True):
    q = torch.randn(b, h, tq, d, requires_grad=requires_grad)
    k = torch.randn(b, hkv, tk, d, requires_grad=requires_grad)
    v = torch.randn(b, hkv, tk, dv, requires_grad=requires_grad)
    return q, k, v


def _run(fn, q, k, v, params):
    out = fn()
    # A fixed random cotangent makes every output element matter to the gradients.
    cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad((out * cot).sum(), [q, k, v, *params], allow_unused=True)
    return out, grads


def _assert_close(name, got, want):
    out_g, grads_g = got
    out_w, grads_w = want
    assert not out_g.isnan().any(), f"{name}: NaN in output"
    torch.testing.assert_close(out_g, out_w, atol=ATOL, rtol=1e-4, msg=f"{name}: output")
    labels = ["q", "k", "v"] + [f"bias param {i}" for i in range(len(grads_w) - 3)]
    for label, g, w in zip(labels, grads_g, grads_w, strict=True):
        if w is None:
            assert g is None or not g.any(), f"{name}: unexpected gradient for {label}"
            continue
        assert g is not None, f"{name}: missing gradient for {label}"
        torch.testing.assert_close(g, w, atol=ATOL, rtol=1e-4, msg=f"{name}: grad {label}")


@settings(max_examples=400)
@given(data=st.data())
def test_sdpa_and_chunked_match_reference(data):
    b, h, hkv, tq, tk, d, dv = data.draw(shapes())
    mask = data.draw(any_mask(b, h, tq, tk))
    bias, params = data.draw(any_bias(b, h, tq, tk))
    scale = data.draw(st.sampled_from([None, 0.3]))
    q, k, v = _inputs(b, h, hkv, tq, tk, d, dv)
    kw = dict(mask=mask, bias=bias, scale=scale)
    want = _run(lambda: attend(q, k, v, backend="reference", **kw), q, k, v, params)
    got = _run(lambda: attend(q, k, v, backend="sdpa", **kw), q, k, v, params)
    _assert_close("sdpa", got, want)
    # Small tiles so that every drawn case crosses tile borders, skips and partial tiles.
    qb, kb = data.draw(st.sampled_from([(1, 1), (2, 3), (4, 4), (5, 7), (64, 64)]))
    call = lambda: chunked_attention(  # noqa: E731
        make_call(q, k, v, dropout_p=0.0, return_weights=False, **kw), q_block=qb, kv_block=kb
    )
    _assert_close(f"chunked {qb}x{kb}", _run(call, q, k, v, params), want)


@pytest.mark.parametrize("backend", ["reference", "sdpa", "chunked", "auto"])
@pytest.mark.parametrize(
    "case",
    ["padding_zero", "causal_tq_gt_tk", "document_cross", "tensor_all_false"],
)
def test_rows_with_no_key_give_zero_not_nan(backend, case):
    b, h, tq, tk, d = 2, 2, 6, 6, 4
    if case == "padding_zero":
        mask = masks.padding([0, 3])
        empty = torch.tensor([True, False])[:, None, None]  # (B, 1, 1) every row of batch 0
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
        mask = torch.ones(b, 1, tq, tk, dtype=torch.bool)
        mask[:, :, 2] = False
        empty = (torch.arange(tq) == 2)[None, None, :]
    q, k, v = _inputs(b, h, h, tq, tk, d, d)
    out = attend(q, k, v, mask=mask, backend=backend)
    assert not out.isnan().any()
    zero_rows = empty.expand(b, h, tq)
    assert out[zero_rows].abs().max() == 0
    assert out[~zero_rows].abs().sum() > 0
    out.square().sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    assert q.grad[zero_rows].abs().max() == 0


def test_flex_refuses_training_on_cpu_with_the_reason():
    q, k, v = _inputs(1, 2, 2, 8, 8, 16, 16)
    with pytest.raises(ValueError, match="'flex' cannot run this call: no backward on cpu"):
        attend(q, k, v, backend="flex")


def test_dropout_sdpa_and_reference():
    q, k, v = _inputs(1, 2, 2, 16, 16, 8, 8, requires_grad=False)
    for backend in ("reference", "sdpa"):
        torch.manual_seed(3)
        a = attend(q, k, v, dropout_p=0.5, backend=backend)
        torch.manual_seed(3)
        b = attend(q, k, v, dropout_p=0.5, backend=backend)
        torch.testing.assert_close(a, b)  # reproducible under a seed
        clean = attend(q, k, v, backend=backend)
        assert (a - clean).abs().max() > 1e-3  # dropout did something
        # Inverted dropout keeps the expectation: averaging many draws approaches the output.
        mean = torch.stack([attend(q, k, v, dropout_p=0.5, backend=backend) for _ in range(400)])
        assert (mean.mean(0) - clean).abs().mean() < 0.05 * clean.abs().mean() + 0.02


def test_return_weights_rows_sum_to_one_and_match_output():
    q, k, v = _inputs(2, 4, 2, 5, 9, 8, 3)
    out, w = attend(q, k, v, mask=masks.causal(), return_weights=True)
    assert w.shape == (2, 4, 5, 9)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 5))
    assert w[..., 0, 5:].abs().max() == 0  # bottom-right causal: query 0 sits at position 4
    torch.testing.assert_close(out, w @ v.repeat_interleave(2, 1))
