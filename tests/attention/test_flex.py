"""FlexAttention against the reference: inference on CPU (all torch offers there), training on GPU.

Each new mask or bias program compiles once (seconds on CPU), so this file uses fixed shapes and
one case per mask and bias kind instead of drawn ones. Where the compiled kernel is wrong on this
CPU (its probe fails), the tests check that flex refuses every call with that reason instead.
"""

from __future__ import annotations

import pytest
import torch

from attnlab.attention import attend, explain, masks
from attnlab.attention import bias as bias_lib
from attnlab.attention.backends import flex as flex_backend

B, H, HKV, T, D = 2, 4, 2, 40, 16


def _mask_cases():
    lengths = torch.tensor([40, 17])
    ids = torch.tensor([[0] * 10 + [1] * 25 + [2] * 5, [0] * 40])
    return {
        "none": None,
        "causal": masks.causal(),
        "window": masks.sliding_window(7),
        "padding": masks.padding(lengths),
        "prefix": masks.prefix_lm(torch.tensor([5, 0])),
        "document_causal": masks.document(ids, causal=True),
        "tensor": masks.from_tensor(torch.rand(B, 1, T, T) < 0.7),
        "combined": masks.causal() & masks.padding(lengths) | masks.sliding_window(3),
    }


def _bias_cases():
    t5 = bias_lib.RelativePositionBias(H, num_buckets=8, max_distance=16)
    with torch.no_grad():
        t5.weight.normal_()
    return {"alibi": bias_lib.alibi(H), "t5": t5(), "tensor": torch.randn(1, H, T, T)}


def _check(device, mask=None, bias=None, tq=T, grad=False, dtype=torch.float32, atol=1e-5):
    q = torch.randn(B, H, tq, D, device=device, dtype=dtype, requires_grad=grad)
    k = torch.randn(B, HKV, T, D, device=device, dtype=dtype, requires_grad=grad)
    v = torch.randn(B, HKV, T, D, device=device, dtype=dtype, requires_grad=grad)
    if mask is not None:
        mask = mask.to(device)
    if isinstance(bias, torch.Tensor):
        bias = bias.to(device, dtype)
    elif bias is not None:
        bias = bias.to(device)
    broken = flex_backend._forward_probe(torch.device(device).type)
    if broken:  # this CPU's compiled kernel is wrong: flex must refuse, saying why
        with pytest.raises(ValueError, match=r"flex.*compiled kernel"):
            attend(q, k, v, mask=mask, bias=bias, backend="flex")
        reasons = explain(q, k, v, mask=mask, bias=bias)["flex"]
        assert broken in reasons and attend(q, k, v, mask=mask, bias=bias).isfinite().all()
        return
    got = attend(q, k, v, mask=mask, bias=bias, backend="flex")
    want = attend(q, k, v, mask=mask, bias=bias, backend="reference")
    torch.testing.assert_close(got, want, atol=atol, rtol=atol)
    if grad:
        cot = torch.randn_like(got)
        g = torch.autograd.grad((got * cot).sum(), [q, k, v])
        w = torch.autograd.grad((want * cot).sum(), [q, k, v])
        for a, b in zip(g, w, strict=True):
            torch.testing.assert_close(a, b, atol=atol * 10, rtol=atol * 10)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(_mask_cases()))
def test_flex_masks_cpu_inference(name):
    with torch.no_grad():
        _check("cpu", mask=_mask_cases()[name])


@pytest.mark.slow
@pytest.mark.parametrize("name", list(_bias_cases()))
def test_flex_biases_cpu_inference(name):
    with torch.no_grad():
        _check("cpu", mask=masks.causal(), bias=_bias_cases()[name])


@pytest.mark.slow
def test_flex_decode_shape_cpu():
    with torch.no_grad():
        _check("cpu", mask=masks.causal(), tq=1)


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(_mask_cases()))
def test_flex_masks_cuda_training(name):
    _check("cuda", mask=_mask_cases()[name], grad=True)


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(_bias_cases()))
def test_flex_biases_cuda_training(name):
    _check("cuda", mask=masks.causal(), bias=_bias_cases()[name], grad=True)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["sdpa", "chunked", "flex"])
def test_cuda_bf16_close_to_reference(backend):
    q, k, v = (torch.randn(2, 8, 256, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    got = attend(q, k, v, mask=masks.causal(), backend=backend)
    want = attend(q, k, v, mask=masks.causal(), backend="reference")
    torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["sdpa", "chunked"])
def test_cuda_training_matches_reference(backend):
    for name, mask in _mask_cases().items():
        q = torch.randn(B, H, T, D, device="cuda", requires_grad=True)
        k = torch.randn(B, HKV, T, D, device="cuda", requires_grad=True)
        v = torch.randn(B, HKV, T, D, device="cuda", requires_grad=True)
        m = mask.to("cuda") if mask is not None else None
        got = attend(q, k, v, mask=m, backend=backend)
        want = attend(q, k, v, mask=m, backend="reference")
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4, msg=name)
        g = torch.autograd.grad(got.square().sum(), [q, k, v])
        w = torch.autograd.grad(want.square().sum(), [q, k, v])
        for a, b in zip(g, w, strict=True):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=name)


@pytest.mark.gpu
def test_auto_prefers_flex_for_sparse_masks_on_cuda():
    from attnlab.attention.call import make_call
    from attnlab.attention.dispatch import select_backend

    q = torch.randn(1, 8, 4096, 64, device="cuda")
    call = make_call(
        q,
        q,
        q,
        mask=masks.sliding_window(256),
        bias=None,
        scale=None,
        dropout_p=0.0,
        return_weights=False,
    )
    assert select_backend(call).name == "flex"
