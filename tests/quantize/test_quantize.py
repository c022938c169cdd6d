"""Weight-only quantization: kernels against the dequantized reference, model accuracy, errors."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnlab.generate import generate
from attnlab.models import GPT
from attnlab.quantize import Int4Linear, Int8Linear, TiedEmbedding, kernels, quantize

TINY = {"vocab_size": 97, "max_len": 64, "n_layer": 2, "n_head": 4, "dim": 64}
FLAVOURS = {
    "gpt2": ("gpt2", TINY),
    "llama": (
        "llama-small",
        {
            **TINY,
            "n_kv_head": 2,
            "norm": "rmsnorm",
            "mlp": "swiglu",
            "position": "rope",
            "bias": False,
            "tie_embeddings": False,
            "hidden_multiple_of": 32,
        },
    ),
}
MODES = [("int8", {}), ("int4", {"group_size": 32})]
# Relative error ||logits_q - logits|| / ||logits|| allowed. A weight's rounding error is uniform
# within half a step: int8's step is max|w| / 127 per row, about 4 std / 127 for these normal
# weights, an error near 0.9% of a weight's size; int4's is (max - min) / 15 per group of 32,
# about 4.1 std / 15, near 8%. These errors are independent across weights, so each layer's
# output moves by about that fraction; over two blocks the measured logits move 0.5-0.7%
# (int8) and 6-9% (int4). The bounds leave about 3x room for other seeds.
LOGIT_TOLERANCE = {"int8": 0.02, "int4": 0.25}
# Share of positions whose top-1 token agrees with fp32 (measured 0.98 / 0.94-0.98).
TOP1_AGREEMENT = {"int8": 0.95, "int4": 0.85}


def _model(flavour: str) -> GPT:
    torch.manual_seed(0)
    base, config = FLAVOURS[flavour]
    return GPT.from_preset(base, **config).eval()


def _linear(n: int, k: int, bias: bool = True) -> nn.Linear:
    torch.manual_seed(1)
    return nn.Linear(k, n, bias=bias)


# The packed kernels take bf16 activations and scales (fp32 ones are rounded: 2^-9 relative
# each) and return bf16; against the fp32 reference that leaves a relative error near 3e-3.
KERNEL_RTOL = 6e-3


def _close(actual: torch.Tensor, expected: torch.Tensor, rtol: float) -> None:
    err = ((actual.float() - expected.float()).norm() / expected.float().norm()).item()
    assert err <= rtol, f"relative error {err:.2e} > {rtol:.0e}"


# --- the packed kernels equal the dequantize-then-matmul reference ---------------------------


@pytest.mark.parametrize("n,k,rows", [(64, 96, 1), (48, 256, 3), (10, 7, 8), (64, 96, 20)])
def test_int8_matches_its_dequantized_weights(n, k, rows):
    linear = _linear(n, k)
    q = Int8Linear.from_linear(linear)
    x = torch.randn(rows, k)
    expected = F.linear(x, q.dequantize(), linear.bias)
    _close(q(x), expected, KERNEL_RTOL if k % 8 == 0 else 1e-5)  # fp32 at other widths
    with torch.enable_grad():  # the dequantizing path, which gradients take, is exact
        _close(q(x.requires_grad_()), expected, 1e-5)
    # the quantized weights themselves are within half a step of the originals
    step = q.scales[:, None]
    assert ((q.dequantize() - linear.weight).abs() <= step / 2 + 1e-7).all()


@pytest.mark.parametrize(
    "n,k,group,rows", [(64, 96, 32, 1), (48, 256, 64, 4), (32, 256, 128, 2), (20, 96, 32, 3)]
)
def test_int4_matches_its_dequantized_weights(n, k, group, rows):
    linear = _linear(n, k)
    q = Int4Linear.from_linear(linear, group)
    x = torch.randn(rows, k)
    expected = F.linear(x, q.dequantize(), linear.bias)
    _close(q(x), expected, KERNEL_RTOL if q.kernel_fits() else 1e-5)
    with torch.enable_grad():  # the dequantizing path, which gradients take, is exact
        _close(q(x.requires_grad_()), expected, 1e-5)
    codes = q.codes()
    assert codes.shape == (n, k) and int(codes.max()) <= 15
    assert q.weight_int4.shape == (n, k // 2)  # two codes a byte
    # each group's range maps onto 0..15: the error is at most half a step
    w = linear.weight.detach().reshape(n, k // group, group)
    step = (w.amax(-1) - w.amin(-1)) / 15
    err = (q.dequantize() - linear.weight).abs().reshape(n, k // group, group)
    assert (err <= step[..., None] / 2 + 1e-6).all()


@pytest.mark.parametrize("n,k,group,rows", [(64, 96, 32, 1), (48, 256, 64, 20), (6, 9, 3, 2)])
def test_groupwise_int8_matches_its_dequantized_weights(n, k, group, rows):
    linear = _linear(n, k)
    q = Int8Linear.from_linear(linear, group)
    assert q.scales.shape == (n, k // group) and q.weight_int8.shape == (n, k)
    x = torch.randn(rows, k)
    _close(q(x), F.linear(x, q.dequantize(), linear.bias), 1e-5)
    # each group's own scale: the error is at most half of that group's step
    w = linear.weight.detach().reshape(n, k // group, group)
    step = w.abs().amax(-1) / 127
    err = (q.dequantize() - linear.weight).abs().reshape(n, k // group, group)
    assert (err <= step[..., None] / 2 + 1e-7).all()
    # finer than one scale per channel, whose step is the largest group's
    per_channel = Int8Linear.from_linear(linear)
    coarse = (per_channel.dequantize() - linear.weight).abs().mean()
    assert (q.dequantize() - linear.weight).abs().mean() < coarse
    assert "group_size=" + str(group) in repr(q) and "group_size" not in repr(per_channel)


def test_groupwise_int8_never_calls_the_per_channel_kernel(monkeypatch):
    """PyTorch's int8 kernel takes one scale per output channel: group-wise layers dequantize."""
    called = []
    monkeypatch.setattr(torch.ops.aten, "_weight_int8pack_mm", lambda *a: called.append(a))
    q = Int8Linear.from_linear(_linear(32, 64), 32)
    x = torch.randn(1, 64)
    _close(q(x), F.linear(x, q.dequantize(), q.bias), 1e-5)
    assert not called


def test_from_quantized_keeps_codes_and_scales_and_checks_them():
    codes = torch.randint(-127, 128, (8, 64), dtype=torch.int8)
    scales = torch.rand(8, 2)
    q = Int8Linear.from_quantized(codes, scales, group_size=32)
    expected = codes.float().reshape(8, 2, 32) * scales[..., None]
    assert torch.equal(q.dequantize(), expected.reshape(8, 64))
    packed = torch.randint(0, 256, (8, 32), dtype=torch.uint8)
    sz = torch.rand(2, 8, 2)
    q4 = Int4Linear.from_quantized(packed, sz, group_size=32)
    assert torch.equal(q4.weight_int4, packed) and (q4.in_features, q4.out_features) == (64, 8)
    with pytest.raises(ValueError, match=r"scales: expected shape \(8, 2\) torch.float32"):
        Int8Linear.from_quantized(codes, torch.rand(8), group_size=32)
    with pytest.raises(ValueError, match=r"weight_int4: expected shape .* torch.uint8"):
        Int4Linear.from_quantized(packed.to(torch.int8), sz, group_size=32)
    with pytest.raises(ValueError, match="group_size: expected an even divisor of in_features=64"):
        Int4Linear.from_quantized(packed, sz, group_size=48)


@pytest.mark.parametrize("mode,options", [*MODES, ("int8", {"group_size": 16})])
def test_layout_and_restore_rebuild_the_same_layers(mode, options):
    from attnlab.quantize import layout, restore

    quantized = quantize(_model("llama"), mode, **options, skip=("blocks.0.mlp.*",))
    layers = layout(quantized)
    assert len(layers) == 2 * 7 + 1 - 3 and "blocks.0.mlp.up" not in layers
    assert layers["head"] == {"mode": mode, "group_size": options.get("group_size")}
    fresh = restore(_model("llama"), layers)
    assert layout(fresh) == layers
    fresh.load_state_dict(quantized.state_dict())
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert torch.equal(fresh(ids).logits, quantized(ids).logits)
    with pytest.raises(ValueError, match=r"meta.json: layer 'nope': expected an nn.Linear"):
        restore(_model("llama"), {"nope": {"mode": "int8"}}, "meta.json")
    with pytest.raises(ValueError, match=r"layer 'head': expected mode one of int8, int4"):
        restore(_model("llama"), {"head": {"mode": "int2"}})
    # the untied Llama head has no embedding to read it
    with pytest.raises(ValueError, match=r"layer 'head': expected 'tok' to be an nn.Embedding"):
        restore(_model("llama"), {"head": {"mode": "int8", "embedding": "tok"}})


def test_restore_rebuilds_a_tied_head_and_its_embedding():
    from attnlab.quantize import layout, restore

    quantized = quantize(_model("gpt2"), "int4", group_size=32)
    fresh = restore(_model("gpt2"), layout(quantized))
    assert isinstance(fresh.tok, TiedEmbedding) and fresh.tok.head is fresh.head
    fresh.load_state_dict(quantized.state_dict())
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert torch.equal(fresh(ids).logits, quantized(ids).logits)


def test_the_kernels_run_and_match_in_every_dtype(monkeypatch):
    """The PyTorch kernels themselves (not just the fallback) agree with the reference, and the
    kernel path is the one taken for fp32 (rounded to bf16), bf16 and fp16 inputs."""
    calls = []
    original = kernels.use_kernel

    def spy(x2d, op):
        used = original(x2d, op)
        calls.append((op, x2d.dtype, used))
        return used

    monkeypatch.setattr(kernels, "use_kernel", spy)
    linear = _linear(64, 128)
    for q in (Int8Linear.from_linear(linear), Int4Linear.from_linear(linear, 64)):
        for dtype, rtol in (
            (torch.float32, KERNEL_RTOL),
            (torch.bfloat16, 2e-2),
            (torch.float16, 4e-3),
        ):
            x = torch.randn(2, 128).to(dtype)
            expected = F.linear(x.float(), q.dequantize(), linear.bias)
            y = q(x)
            assert y.dtype == dtype
            _close(y, expected, rtol)
    assert kernels.has_op(Int8Linear.OP) and kernels.has_op(Int4Linear.OP)
    assert all(used for _, _, used in calls), calls


def test_fallback_when_the_kernel_is_missing_or_a_gradient_is_needed(monkeypatch):
    linear = _linear(32, 64)
    q = Int4Linear.from_linear(linear, 32)
    x = torch.randn(1, 64)
    fast = q(x)
    monkeypatch.setattr(kernels, "has_op", lambda name: False)
    _close(q(x), fast, KERNEL_RTOL)
    x.requires_grad_(True)
    q(x).sum().backward()  # the fallback carries the gradient to the input
    _close(x.grad, q.dequantize().sum(0, keepdim=True), 1e-5)


def test_layer_keeps_its_shape_bias_and_repr():
    linear = _linear(32, 64)
    q = Int4Linear.from_linear(linear, 32)
    assert (q.in_features, q.out_features) == (64, 32)
    assert torch.equal(q.bias, linear.bias)
    assert "mode=int4" in repr(q) and "group_size=32" in repr(q)
    assert "mode=int8" in repr(Int8Linear.from_linear(linear))
    x = torch.randn(2, 5, 64)
    assert q(x).shape == (2, 5, 32)


# --- whole models ----------------------------------------------------------------------------


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("mode,options", MODES)
def test_quantized_logits_stay_close_to_fp32(flavour, mode, options):
    model = _model(flavour)
    ids = torch.randint(0, 97, (4, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(ids).logits
        quantized = quantize(copy.deepcopy(model), mode, **options)
        logits = quantized(ids).logits
        step = quantized(ids[:1, :1]).logits  # one row: the kernel path
    _close(logits, expected, LOGIT_TOLERANCE[mode])
    _close(step, expected[:1, :1], LOGIT_TOLERANCE[mode])
    agree = (logits.argmax(-1) == expected.argmax(-1)).float().mean().item()
    assert agree >= TOP1_AGREEMENT[mode]
    layers = [m for m in quantized.modules() if isinstance(m, (Int8Linear, Int4Linear))]
    per_block = 4 + (3 if flavour == "llama" else 2)
    assert len(layers) == TINY["n_layer"] * per_block + 1  # and the head, tied or not
    assert not any(type(m) is nn.Linear for m in quantized.blocks.modules())


def test_greedy_decoding_with_int8_matches_fp32():
    """8 greedy steps with the KV cache (the one-row kernel path) give fp32's tokens."""
    model = _model("llama")
    prompt = torch.tensor([[5, 17, 42, 8]])
    expected = generate(model, prompt, 8, temperature=0)
    quantized = quantize(copy.deepcopy(model), "int8")
    assert torch.equal(generate(quantized, prompt, 8, temperature=0), expected)


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_a_tied_head_becomes_int8_and_the_embedding_reads_its_rows(mode):
    model = _model("gpt2")
    embedding = model.tok.weight.detach().clone()
    quantize(model, mode, group_size=32 if mode == "int4" else None)
    head = model.head
    assert type(head) is Int8Linear and head.group_size is None  # int8 per channel in any mode
    assert isinstance(model.tok, TiedEmbedding) and model.tok.head is head
    assert not [k for k in model.state_dict() if k.startswith("tok.")]  # stored once
    ids = torch.tensor([[3, 0, 96], [5, 5, 1]])
    rows = head.dequantize()[ids]
    assert torch.equal(model.tok(ids), rows)  # the embedding is the head's matrix
    torch.testing.assert_close(rows, embedding[ids], rtol=0, atol=embedding.abs().max() / 127)
    with pytest.raises(TypeError, match="input_ids: expected integer"):
        model.tok(ids.float())


def test_skipping_a_tied_head_keeps_it_and_the_embedding_fp32_and_tied():
    model = _model("gpt2")
    quantize(model, "int8", skip=["head"])
    assert type(model.head) is nn.Linear and model.head.weight is model.tok.weight
    assert type(model.tok) is nn.Embedding


def test_a_weight_shared_with_another_kind_of_module_stays_fp32():
    class Holder(nn.Module):
        def __init__(self, weight):
            super().__init__()
            self.weight = weight

    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    model.append(Holder(model[1].weight))
    quantize(model, "int8")
    assert isinstance(model[0], Int8Linear) and type(model[1]) is nn.Linear


def test_skip_leaves_matching_layers_in_floating_point():
    model = quantize(_model("llama"), "int4", group_size=32, skip=("head", "blocks.0.*"))
    assert type(model.head) is nn.Linear
    assert type(model.blocks[0].attn.q_proj) is nn.Linear
    assert isinstance(model.blocks[1].attn.q_proj, Int4Linear)


def test_a_linear_shared_under_two_names_is_replaced_under_both():
    shared = nn.Linear(32, 32)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    quantize(model, "int8")
    assert isinstance(model[0], Int8Linear) and model[0] is model[2]


def test_state_dict_round_trips_and_refuses_a_floating_point_model():
    quantized = quantize(_model("llama"), "int4", group_size=32)
    state = quantized.state_dict()
    assert state["head.weight_int4"].dtype == torch.uint8
    fresh = quantize(_model("llama"), "int4", group_size=32)
    for p in fresh.parameters():
        p.data.zero_()
    for name, buffer in fresh.named_buffers():
        if name.endswith(("weight_int4", "scales_and_zeros")):
            buffer.zero_()
    fresh.load_state_dict(state)
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert torch.equal(fresh(ids).logits, quantized(ids).logits)
    with pytest.raises(RuntimeError, match="Missing key"):
        _model("llama").load_state_dict(state)


# --- bad input -------------------------------------------------------------------------------


def test_unknown_mode_names_the_modes():
    with pytest.raises(ValueError, match=r"mode: expected one of int8, int4, got 'int3'"):
        quantize(_model("gpt2"), "int3")


@pytest.mark.parametrize("group", [48, 7, 0, 1.5])
def test_group_size_must_evenly_divide_the_input_width(group):
    model = _model("llama")
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="group_size"):
        quantize(model, "int4", group_size=group)
    # checked before anything changed
    assert all(type(m) is not Int4Linear for m in model.modules())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_group_size_error_names_the_layer_and_widths():
    model = nn.Sequential(nn.Linear(64, 8), nn.Linear(8, 8))
    with pytest.raises(ValueError, match=r"even divisor of in_features=8 of '1' for int4, got 32"):
        quantize(model, "int4", group_size=32)
    with pytest.raises(ValueError, match=r"a divisor of in_features=8 of '1' for int8, got 32"):
        quantize(model, "int8", group_size=32)
    with pytest.raises(ValueError, match=r"group_size: expected a positive int or None, got 0"):
        quantize(model, "int8", group_size=0)


def test_nothing_to_quantize_is_an_error():
    with pytest.raises(ValueError, match=r"no nn\.Linear layers"):
        quantize(nn.Sequential(nn.Embedding(4, 4)), "int8")
    with pytest.raises(ValueError, match="shared with another module or match skip"):
        quantize(nn.Sequential(nn.Linear(4, 4)), "int8", skip=("*",))
    with pytest.raises(TypeError, match=r"bare nn\.Linear"):
        quantize(nn.Linear(4, 4), "int8")
    with pytest.raises(TypeError, match="skip"):
        quantize(nn.Sequential(nn.Linear(4, 4)), "int8", skip=3)


def test_quantizing_twice_is_an_error_and_changes_nothing():
    model = quantize(_model("gpt2"), "int8")
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="already quantized"):
        quantize(model, "int4", group_size=32)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("n,k", [(16, 64), (32, 128), (48, 64), (96, 256), (80, 32)])
def test_packing_keeps_one_copy_of_the_codes_and_gives_them_back(n, k):
    """Once packed for the kernel the layer holds the codes in the kernel's layout only; the
    codes, the state dict, dequantize, moves and loads see the same codes as before (the
    kernel's layout is read back, block sizes of 16, 32 and 64 rows included)."""
    layer = Int4Linear.from_linear(_linear(n, k), 32)
    state = {key: v.clone() for key, v in layer.state_dict().items()}
    weight = layer.dequantize()
    x = torch.randn(2, k)
    with torch.no_grad():
        before = layer(x)
    layer.packed()
    assert layer._buffers["weight_int4"] is None  # one copy: the packed one
    sd = layer.state_dict()
    assert set(sd) == set(state)
    assert all(torch.equal(sd[key], v) for key, v in state.items())
    assert layer._buffers["weight_int4"] is None  # saving did not keep a second copy
    with torch.no_grad():
        assert torch.equal(layer(x), before)
    assert torch.equal(layer.dequantize(), weight)  # rebuilt from the packed layout
    layer.packed()
    fresh = Int4Linear.from_linear(nn.Linear(k, n), 32)
    fresh.packed()
    fresh.load_state_dict(state)
    assert torch.equal(fresh.dequantize(), weight)
    layer.packed()
    layer.to(torch.float64)
    assert torch.equal(layer.codes(), Int4Linear.from_linear(_linear(n, k), 32).codes())


@pytest.mark.parametrize("layer_cls,options", [(Int8Linear, {}), (Int4Linear, {"group_size": 32})])
def test_scales_converted_for_the_kernel_follow_a_new_state_dict(layer_cls, options):
    """The kernel's copy of the scales (converted to the activation dtype once) is dropped when
    new weights are loaded, so the layer computes with the new ones."""
    torch.manual_seed(3)
    a = layer_cls.from_linear(nn.Linear(64, 32), **options)
    b = layer_cls.from_linear(nn.Linear(64, 32), **options)
    x = torch.randn(1, 64)
    with torch.no_grad():
        a(x)  # converts and keeps a's scales
        a.load_state_dict(b.state_dict())
        assert torch.equal(a(x), b(x))
