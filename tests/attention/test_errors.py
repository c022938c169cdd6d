"""Bad input to attend() raises ValueError/TypeError naming the argument, expected and actual."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from attnlab.attention import attend, bias, get_backend, masks


def _qkv(b=2, h=4, hkv=2, tq=5, tk=6, d=8):
    return torch.randn(b, h, tq, d), torch.randn(b, hkv, tk, d), torch.randn(b, hkv, tk, d)


CASES = [
    ("rank", lambda q, k, v: attend(q[0], k, v), r"q: expected 4 dims \(B, H, T, D\), got 3"),
    ("heads", lambda q, k, v: attend(q[:, :3], k, v), "query heads H=3 must be a multiple of"),
    ("kv heads", lambda q, k, v: attend(q, k, v[:, :1]), r"v: expected \(B, Hkv, Tk\)"),
    ("head dim", lambda q, k, v: attend(q, k[..., :4], v), "k: expected head dim 8 like q, got 4"),
    ("batch", lambda q, k, v: attend(q, k[:1], v[:1]), "k: expected batch size 2 like q, got 1"),
    ("dtype", lambda q, k, v: attend(q, k.double(), v), "k: expected dtype torch.float32"),
    ("int", lambda q, k, v: attend(q.long(), k, v), "q: expected a floating-point tensor"),
    ("type", lambda q, k, v: attend(q.numpy(), k, v), "q: expected a torch.Tensor, got ndarray"),
    (
        "mask shape",
        lambda q, k, v: attend(q, k, v, mask=torch.ones(5, 5, dtype=torch.bool)),
        r"mask: expected a shape broadcastable to \(B, H, Tq, Tk\) = \(2, 4, 5, 6\), got "
        r"\(1, 1, 5, 5\)",
    ),
    (
        "mask batch",
        lambda q, k, v: attend(q, k, v, mask=masks.padding([1, 2, 3])),
        "mask: built for batch size 3, but q has batch size 2",
    ),
    (
        "mask dtype",
        lambda q, k, v: attend(q, k, v, mask=torch.ones(5, 6)),
        "mask: expected a boolean tensor",
    ),
    (
        "doc length",
        lambda q, k, v: attend(q, k, v, mask=masks.document(torch.zeros(2, 5, dtype=torch.long))),
        "mask: kv_doc_ids has length 5, expected 6",
    ),
    (
        "doc self tq>tk",
        lambda q, k, v: attend(
            q, k[:, :, :4], v[:, :, :4], mask=masks.document(torch.zeros(2, 4, dtype=torch.long))
        ),
        "so Tq=5 must be <= Tk; for cross-attention pass kv_doc_ids",
    ),
    (
        "bias heads",
        lambda q, k, v: attend(q, k, v, bias=bias.alibi(3)),
        "bias: built for 3 heads, but q has 4 heads",
    ),
    (
        "bias shape",
        lambda q, k, v: attend(q, k, v, bias=torch.zeros(1, 1, 5, 7)),
        r"bias: expected a shape broadcastable to",
    ),
    ("scale", lambda q, k, v: attend(q, k, v, scale=-1.0), "scale: expected a positive finite"),
    ("scale inf", lambda q, k, v: attend(q, k, v, scale=math.inf), "scale: expected a positive"),
    ("scale nan", lambda q, k, v: attend(q, k, v, scale=math.nan), "scale: expected a positive"),
    (
        "head dim 0",
        lambda q, k, v: attend(q[..., :0], k[..., :0], v),
        r"q: expected head dim D >= 1, got shape \(2, 4, 5, 0\)",
    ),
    ("dropout", lambda q, k, v: attend(q, k, v, dropout_p=1.5), r"dropout_p: expected a float in"),
    (
        "unknown backend",
        lambda q, k, v: attend(q, k, v, backend="flash9"),
        "backend: unknown backend 'flash9'; "
        "expected one of auto, chunked, flex, reference, ring, sdpa",
    ),
    (
        "dropout unsupported",
        lambda q, k, v: attend(q, k, v, dropout_p=0.1, backend="chunked"),
        r"backend: 'chunked' cannot run this call: dropout not supported \(dropout_p=0.1\)",
    ),
    (
        "weights unsupported",
        lambda q, k, v: attend(q, k, v, return_weights=True, backend="sdpa"),
        "'sdpa' cannot run this call: cannot return attention weights",
    ),
]


@pytest.mark.parametrize(("name", "call", "match"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_names_argument(name, call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call(*_qkv())


def test_mixed_devices_are_refused():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="k: expected device cpu like q, got meta"):
        attend(q, k.to("meta"), v)
    with pytest.raises(ValueError, match="mask: expected its tensors on device cpu like q"):
        attend(q, k, v, mask=masks.padding(torch.tensor([1, 2], device="meta")))


def test_auto_without_any_backend_lists_every_reason(monkeypatch):
    # Only the reference returns weights; take float64 away from it and nothing can run.
    reference = get_backend("reference")
    narrowed = dataclasses.replace(reference.capabilities, dtypes=frozenset({torch.float32}))
    monkeypatch.setattr(reference, "capabilities", narrowed)
    q, k, v = (t.double() for t in _qkv())
    with pytest.raises(ValueError, match="no attention backend supports this call") as info:
        attend(q, k, v, return_weights=True)
    text = str(info.value)
    assert "reference: dtype torch.float64 not supported" in text
    for name in ("sdpa", "chunked", "flex"):
        assert f"{name}: " in text
    assert text.count("cannot return attention weights") == 3


BACKENDS = ["reference", "sdpa", "chunked", "auto"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mask", [None, masks.causal(), masks.sliding_window(2)])
@pytest.mark.parametrize(
    "dims", [(0, 2, 5, 6, 8), (2, 2, 0, 6, 8), (2, 2, 5, 6, 0)], ids=["B=0", "Tq=0", "Dv=0"]
)
def test_empty_dims_give_an_empty_output_on_every_backend(backend, mask, dims):
    # PyTorch's SDPA returns an empty output for these; every backend agrees, with gradients.
    b, hkv, tq, tk, dv = dims
    q = torch.randn(b, 2 * hkv, tq, 4, requires_grad=True)
    k = torch.randn(b, hkv, tk, 4, requires_grad=True)
    v = torch.randn(b, hkv, tk, dv, requires_grad=True)
    out = attend(q, k, v, mask=mask, backend=backend)
    assert out.shape == (b, 2 * hkv, tq, dv)
    out.sum().backward()
    assert q.grad.shape == q.shape and k.grad.shape == k.shape and v.grad.shape == v.shape


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_keys_give_zeros_on_every_backend(backend):
    q, k, v = torch.randn(2, 4, 5, 8), torch.randn(2, 2, 0, 8), torch.randn(2, 2, 0, 3)
    out = attend(q, k, v, mask=masks.causal(), backend=backend)
    assert out.shape == (2, 4, 5, 3) and out.abs().sum() == 0
