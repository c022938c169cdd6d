"""Loading and converting quantized: ``attnlab.load(quantize=)`` for GGUF files (blocks kept where
they map, fp32 or re-quantized elsewhere) and for runs; quantized runs written by ``attnlab
convert --quantize`` load back quantized; bad options are one clear error."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
import torch
from cli_helpers import one_line_error
from click.testing import CliRunner
from gguf import GGMLQuantizationType as Q
from torch import nn

import attnlab
from attnlab.cli.main import cli
from attnlab.convert import load_gguf
from attnlab.data.chars import CharTokenizer
from attnlab.loader import convert, save_run
from attnlab.models import GPT, GPTConfig
from attnlab.quantize import Int4Linear, Int8Linear, TiedEmbedding, layout, quantize

DIM, HIDDEN, VOCAB, N_HEAD, N_KV_HEAD = 64, 96, 40, 4, 2
# one type per weight of a 2-layer Llama: the three exact block types and two that are not
TYPES = {
    "attn_q.weight": Q.Q4_0,
    "attn_k.weight": Q.Q4_1,
    "attn_v.weight": Q.Q8_0,
    "attn_output.weight": Q.Q5_0,
    "ffn_gate.weight": Q.Q4_1,
    "ffn_up.weight": Q.F16,
    "ffn_down.weight": Q.Q4_0,
    "output.weight": Q.Q8_0,
}
SHAPES = {  # torch order (rows, columns)
    "attn_q.weight": (DIM, DIM),
    "attn_k.weight": (DIM // N_HEAD * N_KV_HEAD, DIM),
    "attn_v.weight": (DIM // N_HEAD * N_KV_HEAD, DIM),
    "attn_output.weight": (DIM, DIM),
    "ffn_gate.weight": (HIDDEN, DIM),
    "ffn_up.weight": (HIDDEN, DIM),
    "ffn_down.weight": (DIM, HIDDEN),
}
# expected layer per GGUF type with quantize="gguf": (class, group size), None for fp32
AS_STORED = {Q.Q4_0: (Int4Linear, 32), Q.Q4_1: (Int4Linear, 32), Q.Q8_0: (Int8Linear, 32)}
LAYER_NAMES = {  # GGUF name in a block -> attnlab module name in a block
    "attn_q.weight": "attn.q_proj",
    "attn_k.weight": "attn.k_proj",
    "attn_v.weight": "attn.v_proj",
    "attn_output.weight": "attn.out_proj",
    "ffn_gate.weight": "mlp.gate",
    "ffn_up.weight": "mlp.up",
    "ffn_down.weight": "mlp.down",
}


def _tensor(writer, name: str, shape, qtype: Q, rng) -> None:
    w = rng.normal(scale=0.2, size=shape).astype(np.float32)
    if qtype == Q.F32:
        writer.add_tensor(name, w)
    elif qtype == Q.F16:
        writer.add_tensor(name, w.astype(np.float16))
    else:
        writer.add_tensor(name, gguf.quants.quantize(w, qtype), raw_dtype=qtype)


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    """A random 2-layer Llama GGUF with mixed tensor types and a byte-level vocabulary."""
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_block_count(2)
    writer.add_context_length(64)
    writer.add_embedding_length(DIM)
    writer.add_feed_forward_length(HIDDEN)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_KV_HEAD)
    writer.add_layer_norm_rms_eps(1e-6)
    tokens = [chr(c) for c in range(ord("a"), ord("a") + VOCAB - 1)] + ["ab"]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_merges(["a b"])
    _tensor(writer, "token_embd.weight", (VOCAB, DIM), Q.Q8_0, rng)
    _tensor(writer, "output.weight", (VOCAB, DIM), TYPES["output.weight"], rng)
    writer.add_tensor("output_norm.weight", rng.uniform(0.5, 1.5, DIM).astype(np.float32))
    for i in range(2):
        for name in ("attn_norm.weight", "ffn_norm.weight"):
            writer.add_tensor(f"blk.{i}.{name}", rng.uniform(0.5, 1.5, DIM).astype(np.float32))
        for name, shape in SHAPES.items():
            _tensor(writer, f"blk.{i}.{name}", shape, TYPES[name], rng)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def fp32(tiny_gguf):
    return load_gguf(tiny_gguf)


IDS = torch.tensor([[1, 5, 9, 13, 2, 30, 7, 0, 11, 4, 3]])  # 11 rows: the dequantize path


def _logits(model, ids=IDS):
    # With gradients wanted, quantized layers dequantize then multiply in fp32 (exact); without,
    # the packed kernels round activations to bf16 (tested in tests/quantize).
    with torch.enable_grad():
        return model(ids).logits.detach()


def _kinds(model) -> dict[str, tuple[type, int | None]]:
    modules = dict(model.named_modules())
    out = {}
    for gguf_name, ours in LAYER_NAMES.items():
        m = modules[f"blocks.0.{ours}"]
        out[gguf_name] = (type(m), getattr(m, "group_size", None))
    m = model.head
    out["output.weight"] = (type(m), getattr(m, "group_size", None))
    return out


def test_gguf_mode_keeps_each_layer_as_stored(tiny_gguf, fp32):
    """Q8_0 -> group-wise int8, Q4_0/Q4_1 -> int4 (group 32), Q5_0 and F16 -> fp32; the logits
    equal the fp32-dequantized load's (the q/k rows are un-permuted as whole rows of blocks)."""
    model = load_gguf(tiny_gguf, quantize="gguf")
    expected = {name: AS_STORED.get(t, (nn.Linear, None)) for name, t in TYPES.items()}
    assert _kinds(model) == expected
    torch.testing.assert_close(_logits(model), _logits(fp32), rtol=1e-5, atol=1e-5)
    # one row: the int4 kernel path (group-wise int8 dequantizes)
    torch.testing.assert_close(
        _logits(model, IDS[:, :1]), _logits(fp32, IDS[:, :1]), rtol=1e-4, atol=1e-4
    )
    assert type(model.tok) is nn.Embedding and model.tok.weight.dtype == torch.float32


def _check_against_fp32(model, fp32, mode: str, group_size: int | None) -> None:
    """Every layer of block 0 and the head is either the file's blocks as they are (its weight
    equals the fp32 load's: Q8_0 for int8, Q4_0/Q4_1 for int4, when the group size is 32 or
    unset) or the fp32 load's weight quantized with ``group_size``, code for code."""
    floats = dict(fp32.named_modules())
    names = {f"blocks.0.{ours}": theirs for theirs, ours in LAYER_NAMES.items()}
    for name, gguf_name in {**names, "head": "output.weight"}.items():
        layer, linear = dict(model.named_modules())[name], floats[name]
        exact = AS_STORED.get(TYPES[gguf_name], (None,))[0] is type(layer) and group_size in (
            None,
            32,
        )
        if exact:
            assert layer.group_size == 32, name
            torch.testing.assert_close(layer.dequantize(), linear.weight, rtol=1e-6, atol=1e-7)
        else:
            size = group_size if group_size is not None else (None if mode == "int8" else 128)
            reference = type(layer).from_linear(linear, size)
            assert layer.group_size == size, name
            for key, value in reference.state_dict().items():
                assert torch.equal(layer.state_dict()[key], value), (name, key)


def test_int8_and_int4_map_blocks_where_they_match_and_requantize_the_rest(tiny_gguf, fp32):
    int8 = load_gguf(tiny_gguf, quantize="int8")
    kinds = _kinds(int8)
    assert kinds["attn_v.weight"] == (Int8Linear, 32) == kinds["output.weight"]  # Q8_0 blocks
    assert kinds["attn_q.weight"] == (Int8Linear, None)  # Q4_0 re-quantized per channel
    assert kinds["ffn_up.weight"] == (Int8Linear, None)  # F16 too
    _check_against_fp32(int8, fp32, "int8", None)
    int4 = load_gguf(tiny_gguf, quantize="int4", group_size=32)
    assert set(_kinds(int4).values()) == {(Int4Linear, 32)}
    _check_against_fp32(int4, fp32, "int4", 32)
    # 16 columns is no block size of the file: every layer re-quantized from fp32
    finer = load_gguf(tiny_gguf, quantize="int4", group_size=16)
    assert set(_kinds(finer).values()) == {(Int4Linear, 16)}
    _check_against_fp32(finer, fp32, "int4", 16)


def test_bad_quantize_options_are_named(tiny_gguf):
    with pytest.raises(ValueError, match=r"^quantize: expected one of 'gguf', 'int8', 'int4' or "):
        load_gguf(tiny_gguf, quantize="int3")
    # 64 does not divide the 96 columns of ffn_down: refused from the header, naming the layer
    with pytest.raises(
        ValueError,
        match=r"^group_size: expected a divisor of in_features=96 of 'blocks.0.mlp.down'",
    ):
        load_gguf(tiny_gguf, quantize="int4", group_size=64)
    with pytest.raises(ValueError, match=r"^group_size: expected an even int for int4, got 15"):
        load_gguf(tiny_gguf, quantize="int4", group_size=15)
    with pytest.raises(ValueError, match=r"^group_size: applies with quantize='int8' or 'int4'"):
        load_gguf(tiny_gguf, quantize="gguf", group_size=32)
    with pytest.raises(ValueError, match=r"^group_size: applies with .* with quantize=None"):
        attnlab.load(tiny_gguf, group_size=32)
    with pytest.raises(ValueError, match=r"^group_size: expected a positive int or None, got 0"):
        attnlab.load(tiny_gguf, quantize="int8", group_size=0)


def test_load_passes_quantize_to_gguf(tiny_gguf, fp32):
    loaded = attnlab.load(tiny_gguf, quantize="gguf")
    assert loaded.kind == "gguf" and loaded.tokenizer is not None
    assert isinstance(loaded.model.blocks[1].attn.q_proj, Int4Linear)
    torch.testing.assert_close(_logits(loaded.model), _logits(fp32), rtol=1e-5, atol=1e-5)


# ---- runs: quantized after loading, saved quantized, loaded back quantized ---------------------


def _tiny_run(tmp_path):
    torch.manual_seed(0)
    chars = CharTokenizer.from_text("abcdefgh \n.")
    config = GPTConfig(vocab_size=chars.vocab_size, max_len=16, n_layer=2, n_head=2, dim=32)
    return save_run(GPT(config).eval(), chars, tmp_path / "run")


@pytest.mark.parametrize(
    "mode,group_size,layer",
    [
        ("int8", None, (Int8Linear, None)),
        ("int8", 16, (Int8Linear, 16)),
        ("int4", 32, (Int4Linear, 32)),
    ],
)
def test_a_run_loads_quantized_and_saves_and_loads_back_quantized(
    tmp_path, mode, group_size, layer
):
    run = _tiny_run(tmp_path)
    floats = attnlab.load(run).model
    loaded = attnlab.load(run, quantize=mode, group_size=group_size)
    reference = quantize(attnlab.load(run).model, mode, group_size=group_size)
    layers = layout(loaded.model)
    head = layers.pop("head")  # tied to the embedding: int8 per channel, read by it too
    assert head == {"mode": "int8", "group_size": None, "embedding": "tok"}
    assert {(layer[0].mode, layer[1])} == {(e["mode"], e["group_size"]) for e in layers.values()}
    assert len(layers) == 2 * 6
    layers["head"] = head
    assert isinstance(loaded.model.tok, TiedEmbedding)
    ids = torch.tensor([[1, 2, 3, 4]])
    assert torch.equal(_logits(loaded.model, ids), _logits(reference, ids))

    saved = save_run(loaded.model, loaded.tokenizer, tmp_path / "quantized")
    meta = json.loads((saved / "checkpoints" / "step-0000000" / "meta.json").read_text())
    assert meta["quantization"] == layers
    assert json.loads((saved / "config.json").read_text())["quantization"] == layers
    assert (saved / "checkpoints" / "step-0000000" / "model.safetensors").is_file()
    back = attnlab.load(saved)
    assert layout(back.model) == layers
    assert isinstance(back.model.tok, TiedEmbedding) and back.model.tok.head is back.model.head
    assert torch.equal(_logits(back.model, ids), _logits(loaded.model, ids))
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(back.model.state_dict()[key], value), key
    assert back.tokenizer == loaded.tokenizer
    # quantizing changed the model by its rounding only
    assert (_logits(back.model, ids) - _logits(floats, ids)).norm() < 0.3 * _logits(
        floats, ids
    ).norm()
    with pytest.raises(ValueError, match=r"quantize: .* is already quantized \(13 .* layers\)"):
        attnlab.load(saved, quantize="int8")


def test_a_quantized_run_is_rebuilt_without_allocating_its_fp32_weights(tmp_path, monkeypatch):
    """Loading a quantized run never builds the float model it replaced: GPT.__init__ runs with
    its parameters on the meta device (a skeleton) and nothing else."""
    run = _tiny_run(tmp_path)
    saved = save_run(attnlab.load(run, quantize="int4", group_size=16).model, None, tmp_path / "q")
    built = []
    original = GPT.__init__

    def spy(self, config):
        original(self, config)
        built.append(self.tok.weight.device.type)

    monkeypatch.setattr(GPT, "__init__", spy)
    attnlab.load(saved)
    assert built == ["meta", "meta"]  # the shape check's model and the skeleton


def test_a_group_size_that_does_not_divide_a_run_layer_is_named(tmp_path):
    run = _tiny_run(tmp_path)
    with pytest.raises(
        ValueError, match=r"^group_size: expected an even divisor of in_features=32"
    ):
        attnlab.load(run, quantize="int4")  # the default 128 is wider than the 32 columns
    with pytest.raises(
        ValueError, match=r"^group_size: expected a divisor of in_features=32 .*got 24"
    ):
        attnlab.load(run, quantize="int8", group_size=24)


def test_gguf_mode_is_for_gguf_sources_only(tmp_path):
    with pytest.raises(
        ValueError,
        match=r"quantize: 'gguf' keeps the blocks of a .gguf file, but .* is a run source",
    ):
        attnlab.load(_tiny_run(tmp_path), quantize="gguf")


def test_a_quantized_model_is_not_written_as_hugging_face(tmp_path):
    run = _tiny_run(tmp_path)
    saved = save_run(attnlab.load(run, quantize="int8").model, None, tmp_path / "q")
    with pytest.raises(
        ValueError,
        match=r"to: expected a floating-point model for a Hugging Face checkpoint, got one with "
        r"13 int8 quantized layers",
    ):
        convert(saved, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    with pytest.raises(
        ValueError,
        match=r"quantize: a Hugging Face checkpoint holds floating-point weights, got "
        r"quantize='int4' with to='hf'",
    ):
        convert(run, tmp_path / "hf", to="hf", quantize="int4")


# ---- attnlab convert --quantize ------------------------------------------------------------------


def _convert(*args):
    return CliRunner().invoke(cli, ["convert", *map(str, args)])


def test_cli_convert_quantize_round_trip(tmp_path, tiny_gguf, fp32):
    result = _convert(tiny_gguf, tmp_path / "out", "--quantize", "int4", "--group-size", "32")
    assert result.exit_code == 0, result.output
    assert "wrote attnlab run" in result.output and "(int4)" in result.output
    loaded = attnlab.load(tmp_path / "out")
    direct = load_gguf(tiny_gguf, quantize="int4", group_size=32)
    assert layout(loaded.model) == layout(direct)
    assert torch.equal(_logits(loaded.model), _logits(direct))
    assert loaded.tokenizer is not None
    # a run converts to a quantized run too (the default format with --quantize)
    run = _tiny_run(tmp_path)
    result = _convert(run, tmp_path / "run8", "--quantize", "int8")
    assert result.exit_code == 0, result.output
    assert set(e["mode"] for e in layout(attnlab.load(tmp_path / "run8").model).values()) == {
        "int8"
    }


@pytest.mark.parametrize(
    "args,needles",
    [
        (["--quantize", "int4", "--group-size", "48"], ["group_size", "in_features=64", "48"]),
        (["--group-size", "32"], ["group_size", "quantize=None"]),
        (["--quantize", "int4", "--to", "hf"], ["quantize", "to='hf'"]),
    ],
)
def test_cli_convert_bad_quantize_options_are_one_line(tmp_path, tiny_gguf, args, needles):
    result = _convert(tiny_gguf, tmp_path / "out", *args)
    one_line_error(result, *needles)
    assert not (tmp_path / "out").exists()


def test_cli_convert_unknown_quantize_mode_is_a_usage_error(tmp_path, tiny_gguf):
    result = _convert(tiny_gguf, tmp_path / "out", "--quantize", "int3")
    assert result.exit_code == 2 and "int3" in result.output and "Traceback" not in result.output
