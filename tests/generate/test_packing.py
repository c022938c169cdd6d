"""oneDNN-packed fp32 Linear weights while several rows decode (attnlab.generate.packing)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from generate_helpers import left_padded
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from attnlab.generate import generate, packing
from attnlab.models import GPT, GPTConfig
from attnlab.quantize import quantize
from attnlab.quantize.linear import Int8Linear

pytestmark = pytest.mark.skipif(not packing.available(), reason="no oneDNN in this PyTorch")


def _gpt(seed: int = 0, flavour: dict | None = None) -> GPT:
    torch.manual_seed(seed)
    config = GPTConfig(
        vocab_size=64, max_len=48, n_layer=2, n_head=4, dim=32, **(flavour or {"position": "rope"})
    )
    model = GPT(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(4.0)
    return model


@settings(max_examples=25, deadline=None)
@given(
    rows=st.integers(1, 80),
    k=st.integers(1, 40),
    n=st.integers(1, 40),
    bias=st.booleans(),
    lead=st.sampled_from([(), (2,), (1, 3)]),
    column_major=st.booleans(),
)
def test_a_packed_layer_computes_its_linear(rows, k, n, bias, lead, column_major):
    """Up to PACKED_MAX_ROWS rows through the packed weight, more through F.linear; the same
    product either way, for any shape, with or without a bias, over leading dimensions, from a
    weight stored either way (generate's decoding layout stores wide ones column-major)."""
    torch.manual_seed(rows * 1000 + k * 40 + n)
    layer = nn.Linear(k, n, bias=bias)
    if column_major:
        layer.weight.data = layer.weight.data.t().contiguous().t()
    x = torch.randn(*lead, rows, k)
    want = F.linear(x, layer.weight, layer.bias)
    with torch.no_grad(), packing.packed_linears(layer, rows=8) as count:
        assert count == 1 and type(layer) is packing.PackedLinear
        got = layer(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert type(layer) is nn.Linear and "_packed" not in layer.__dict__


def test_the_packed_path_is_taken_and_a_gradient_takes_the_dense_one(monkeypatch):
    layer = nn.Linear(8, 6)
    calls = []
    real = packing._product

    def spy(x2d, packed, bias):
        calls.append(tuple(x2d.shape))
        return real(x2d, packed, bias)

    monkeypatch.setattr(packing, "_product", spy)
    x = torch.randn(4, 8, requires_grad=True)
    with packing.packed_linears(layer, rows=4):
        with torch.no_grad():
            layer(x)
        assert calls == [(4, 8)]
        layer(torch.randn(packing.PACKED_MAX_ROWS + 1, 8)).sum()  # a prefill: dense
        y = layer(x)  # a gradient must flow: dense, and backward works
        y.sum().backward()
    assert calls == [(4, 8)]
    torch.testing.assert_close(x.grad, layer.weight.sum(0).expand(4, 8))


def test_packing_keeps_the_model_and_gives_everything_back():
    model = quantize(_gpt(), "int8", skip=["head"])  # quantized blocks, an fp32 head
    keys = list(model.state_dict())
    linears = [m for m in model.modules() if type(m) is nn.Linear]
    assert linears  # the head
    with packing.packed_linears(model, rows=4) as count:
        assert count == len(linears)
        assert all(type(m) is packing.PackedLinear for m in linears)
        assert any(isinstance(m, Int8Linear) for m in model.modules())  # left as they are
        assert list(model.state_dict()) == keys
        with packing.packed_linears(model, rows=4) as inner:
            assert inner == 0  # packed already: the outer block owns them
        assert all(type(m) is packing.PackedLinear for m in linears)
    assert all(type(m) is nn.Linear and "_packed" not in m.__dict__ for m in linears)
    with pytest.raises(RuntimeError, match="inside"), packing.packed_linears(model, rows=4):
        raise RuntimeError("inside")
    assert all(type(m) is nn.Linear for m in linears)


def test_one_row_short_memory_and_other_dtypes_pack_nothing(monkeypatch):
    model = _gpt()
    with packing.packed_linears(model, rows=1) as count:
        assert count == 0
    with packing.packed_linears(model.to(torch.bfloat16), rows=4) as count:
        assert count == 0
    model = _gpt()
    monkeypatch.setattr(packing, "_available_bytes", lambda: 1000)
    with packing.packed_linears(model, rows=4) as count:
        assert count == 0
    assert all(type(m) is nn.Linear for m in model.modules() if isinstance(m, nn.Linear))


@pytest.mark.parametrize("flavour", [{"position": "learned"}, {"position": "rope"}])
def test_a_packed_batch_gives_the_unpacked_tokens(monkeypatch, flavour):
    """A left-padded batch decodes through packed weights (the model comes back unpacked) and
    chooses the tokens the unpacked model chooses."""
    model = _gpt(3, flavour)
    ids, mask = left_padded([[5, 9, 13, 7, 22], [8, 3], [11, 40, 41]])
    seen = []
    packed = generate(
        model,
        ids,
        16,
        attention_mask=mask,
        temperature=0,
        on_token=lambda _: seen.append(type(model.head)),
    )
    assert set(seen) == {packing.PackedLinear}
    assert type(model.head) is nn.Linear
    monkeypatch.setattr(packing, "PACK_MIN_ROWS", 10**9)
    plain = generate(model, ids, 16, attention_mask=mask, temperature=0)
    assert torch.equal(packed, plain)


def test_beams_pack_and_give_the_unpacked_result(monkeypatch):
    model = _gpt(4)
    ids = torch.tensor([[5, 9, 13, 7]])
    packed = generate(model, ids, 10, num_beams=3)
    monkeypatch.setattr(packing, "PACK_MIN_ROWS", 10**9)
    assert torch.equal(packed, generate(model, ids, 10, num_beams=3))


def test_compiled_packed_steps_give_the_eager_tokens_for_each_model():
    """The compiled step calls the packed product as an opaque operator; after its first step a
    generation skips the guards that cannot tell its model's entries apart, yet two models of
    one shape still decode with their own weights (unpacked, test_engine compiles the same
    batch)."""
    a, b = _gpt(5), _gpt(6)
    ids, mask = left_padded([[5, 9, 13, 7], [8, 3]])
    eager = {m: generate(m, ids, 12, attention_mask=mask, temperature=0) for m in (a, b)}
    assert not torch.equal(eager[a], eager[b])
    for m in (a, b, a):
        got = generate(m, ids, 12, attention_mask=mask, temperature=0, compile=True)
        assert torch.equal(got, eager[m])
