"""Every backend equals the eager reference, forward and backward, over drawn cases."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import (
    EMPTY_ROW_CASES,
    LOW_PRECISION_DTYPES,
    any_bias,
    any_mask,
    empty_row_case,
    low_precision_qkv,
    shapes,
)

from attnlab.attention import attend, masks
from attnlab.attention.backends import chunked_attention
from attnlab.attention.backends import flex as flex_backend
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


# Half precision is checked against a float64 oracle: the reference backend run in float64 on
# the same rounded inputs. The reference computes half-precision calls in float32 and rounds
# the result once, so its error is the floor. Tolerance, per dtype: a backend's largest error
# may be LOW_PRECISION_FACTOR times the reference's largest error,
# + one machine epsilon of the dtype (float16: 2**-10, bfloat16: 2**-7) times the largest entry
#   of the exact result,
# + 8 float32 epsilons times the largest term the float32 computation of that result adds up
#   (see _magnitudes): where terms cancel to an exact 0, as in the gradients of a single key,
#   float32 rounding of those terms is all that remains.
LOW_PRECISION_FACTOR = 4.0
FLOAT32_ROUNDINGS = 8.0


def _max_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return (got.double() - want).abs().max().item() if want.numel() else 0.0


def _magnitudes(q, k, v, cot, scale) -> dict[str, float]:
    """Bounds on the terms summed for the output and the gradients of q, k and v."""
    mq, mk, mv, mc = (t.abs().max().item() if t.numel() else 0.0 for t in (q, k, v, cot))
    rows = q.shape[1] // k.shape[1] * q.shape[2]  # query rows per key: G * Tq
    ds = 2 * v.shape[-1] * mc * mv  # |dP - D| <= 2 Dv max|dO| max|v|
    return {"out": mv, "q": scale * mk * ds, "k": scale * mq * ds * rows, "v": mc * rows}


def _check_low_precision(name, got, reference, oracle, magnitude):
    eps, eps32 = torch.finfo(got.dtype).eps, torch.finfo(torch.float32).eps
    err, ref_err = _max_error(got, oracle), _max_error(reference, oracle)
    largest = oracle.abs().max().item() if oracle.numel() else 0.0
    allowed = LOW_PRECISION_FACTOR * ref_err + eps * largest + FLOAT32_ROUNDINGS * eps32 * magnitude
    # `not >` so that a NaN error fails too.
    assert not err > allowed and err == err, (
        f"{name} ({got.dtype}): max error {err:.3g} against the float64 oracle; reference's "
        f"{ref_err:.3g}, allowed {allowed:.3g}"
    )


def _with_grads(fn, inputs, cotangent):
    inputs = [t.detach().requires_grad_() for t in inputs]
    out = fn(*inputs)
    grads = torch.autograd.grad((out * cotangent.to(out.dtype)).sum(), inputs)
    return out, grads


@settings(max_examples=30)
@given(data=st.data())
def test_half_precision_large_logits_match_float64_oracle(data):
    b, h, hkv, tq, tk, d, dv = data.draw(shapes(max_t=12))
    q, k, v = data.draw(low_precision_qkv(b, h, hkv, tq, tk, d, dv))
    mask = data.draw(any_mask(b, h, tq, tk))
    qb, kb = data.draw(st.sampled_from([(1, 1), (2, 3), (5, 7), (64, 64)]))
    gen = torch.Generator().manual_seed(1)
    cot = torch.randn(b, h, tq, dv, generator=gen).to(q.dtype)
    size = _magnitudes(q, k, v, cot, d**-0.5)

    def backend(name):
        return lambda q, k, v: attend(q, k, v, mask=mask, backend=name)

    def chunked(q, k, v):
        call = make_call(
            q, k, v, mask=mask, bias=None, scale=None, dropout_p=0.0, return_weights=False
        )
        return chunked_attention(call, q_block=qb, kv_block=kb)

    oracle = _with_grads(backend("reference"), [t.double() for t in (q, k, v)], cot.double())
    reference = _with_grads(backend("reference"), [q, k, v], cot)
    sdpa = backend("sdpa")(q, k, v)
    _check_low_precision("sdpa", sdpa, reference[0], oracle[0], size["out"])
    # The hand-written backward is held to the same bound, gradient by gradient. (SDPA's
    # backward is PyTorch's kernel; on the CPU it loses the q and k gradients of half-precision
    # calls at large logits, which is PyTorch's to fix.)
    got = _with_grads(chunked, [q, k, v], cot)
    name = f"chunked {qb}x{kb}"
    _check_low_precision(name, got[0], reference[0], oracle[0], size["out"])
    for label, g, r, o in zip("qkv", got[1], reference[1], oracle[1], strict=True):
        _check_low_precision(f"{name} grad {label}", g, r, o, size[label])


@pytest.mark.parametrize("dtype", LOW_PRECISION_DTYPES)
def test_half_precision_sliding_window_at_large_logits(dtype):
    # Logits near 1e4 * sqrt(D): q kᵀ overflows float16 unless scores are accumulated in float32.
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 1024, 64, generator=gen) for _ in range(3))
    q, k, v = (q * 1e4).to(dtype), k.to(dtype), v.to(dtype)
    mask = masks.sliding_window(16)
    oracle = attend(q.double(), k.double(), v.double(), mask=mask, backend="reference")
    reference = attend(q, k, v, mask=mask, backend="reference")
    for backend in ("sdpa", "chunked", "auto"):
        got = attend(q, k, v, mask=mask, backend=backend)
        assert not got.isnan().any(), f"{backend}: NaN in output"
        _check_low_precision(backend, got, reference, oracle, v.abs().max().item())


@pytest.mark.parametrize("backend", ["reference", "sdpa", "chunked", "auto", "flex"])
@pytest.mark.parametrize("case", EMPTY_ROW_CASES)
def test_rows_with_no_key_give_zero_not_nan(backend, case):
    mask, empty, (b, h, tq, tk) = empty_row_case(case)
    d = 16  # FlexAttention's GPU kernel needs head dim >= 16
    # FlexAttention has no backward on the CPU: there it is checked forward only.
    grad = backend != "flex" or torch.cuda.is_available()
    device = "cuda" if backend == "flex" and torch.cuda.is_available() else "cpu"
    q, k, v = (t.to(device).detach().requires_grad_(grad) for t in _inputs(b, h, h, tq, tk, d, d))
    if backend == "flex" and flex_backend._forward_probe(device):  # wrong kernel on this CPU
        with pytest.raises(ValueError, match="compiled kernel gives wrong results"):
            attend(q, k, v, mask=mask.to(torch.device(device)), backend=backend)
        return
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
    with pytest.raises(ValueError, match=r"'flex' cannot run this call: .*no backward on cpu"):
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
