"""Every backend equals the eager reference, forward and backward, over drawn cases."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import EMPTY_ROW_CASES, any_bias, any_mask, empty_row_case, shapes

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


@pytest.mark.parametrize("backend", ["reference", "sdpa", "chunked", "auto", "flex"])
@pytest.mark.parametrize("case", EMPTY_ROW_CASES)
def test_rows_with_no_key_give_zero_not_nan(backend, case):
    mask, empty, (b, h, tq, tk) = empty_row_case(case)
    d = 16  # FlexAttention's GPU kernel needs head dim >= 16
    # FlexAttention has no backward on the CPU: there it is checked forward only.
    grad = backend != "flex" or torch.cuda.is_available()
    device = "cuda" if backend == "flex" and torch.cuda.is_available() else "cpu"
    q, k, v = (t.to(device).detach().requires_grad_(grad) for t in _inputs(b, h, h, tq, tk, d, d))
    out = attend(q, k, v, mask=mask.to(torch.device(device)), backend=backend)
    assert not out.isnan().any()
    zero_rows = empty.expand(b, h, tq).to(device)
    assert out[zero_rows].abs().max() == 0
    assert out[~zero_rows].abs().sum() > 0
    if not grad:
        return
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
