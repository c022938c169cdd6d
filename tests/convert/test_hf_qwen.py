"""Qwen2 (q/k/v biases, optional sliding windows) and Qwen3 (query/key RMSNorm, explicit
head_dim, attention_bias) checkpoints: logits and greedy generation equal transformers' on tiny
models, round trips through save_hf, refusals naming the config.json key."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
from convert_helpers import assert_greedy_equals_transformers, assert_same_tensors, randomize
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

import attnlab
from attnlab.convert import load_hf, save_hf
from attnlab.models.gpt import GPT, GPTConfig

BASE = {
    "vocab_size": 97,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
    "rope_theta": 500.0,
    "rms_norm_eps": 1e-5,
    "bos_token_id": None,  # no end-of-sequence: both generate exactly 10 tokens
    "eos_token_id": None,
}
# name -> (transformers classes, config fields beyond BASE)
MODELS = {
    "qwen2-tied": (Qwen2Config, Qwen2ForCausalLM, {"tie_word_embeddings": True}),
    # every layer windowed (max_window_layers=0), the window shorter than the sequences
    "qwen2-window": (
        Qwen2Config,
        Qwen2ForCausalLM,
        {"use_sliding_window": True, "sliding_window": 5, "max_window_layers": 0},
    ),
    # head_dim 16, not hidden_size / num_attention_heads = 8; a large rms_norm_eps, so that the
    # query/key norms' epsilon shows in the logits
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, {"head_dim": 16, "rms_norm_eps": 0.1}),
    "qwen3-bias": (
        Qwen3Config,
        Qwen3ForCausalLM,
        {"head_dim": 16, "attention_bias": True, "tie_word_embeddings": True},
    ),
}


@pytest.fixture(scope="module", params=list(MODELS))
def hf_dir(request, tmp_path_factory):
    config_cls, model_cls, fields = MODELS[request.param]
    torch.manual_seed(0)
    hf = randomize(model_cls(config_cls(**{**BASE, **fields})))
    directory = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(directory, safe_serialization=True)
    return directory, hf


def _batch():
    ids = torch.randint(0, 97, (2, 13), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 13, dtype=torch.long)
    mask[1, 9:] = 0
    return ids, mask


def _logits(model, hf=False):
    ids, mask = _batch()
    with torch.no_grad():
        if hf:
            return model(input_ids=ids, attention_mask=mask).logits
        return model(ids, mask).logits


def test_qwen_logits_equal_transformers_with_padding(hf_dir):
    directory, hf = hf_dir
    ours = load_hf(directory)
    c, h = ours.config, hf.config
    qwen3 = h.model_type == "qwen3"
    assert (c.head_dim, c.n_kv_head, c.norm_eps) == (h.head_dim if qwen3 else 8, 2, h.rms_norm_eps)
    assert c.tie_embeddings == h.tie_word_embeddings
    if qwen3:  # q_norm/k_norm with rms_norm_eps; attention_bias on q, k, v and o
        assert (c.qk_norm, c.qk_norm_eps) == (True, h.rms_norm_eps)
        assert c.qkv_bias == c.out_bias == h.attention_bias
    else:  # biases on q, k, v only
        assert (c.qk_norm, c.qkv_bias, c.out_bias) == (False, True, False)
    window = h.sliding_window if h.use_sliding_window else None
    assert (c.attention, c.window) == ("local" if window else "softmax", window)
    real = _batch()[1].bool()
    torch.testing.assert_close(_logits(ours)[real], _logits(hf, hf=True)[real], atol=1e-4, rtol=0)


@pytest.mark.parametrize("hf_dir", ["qwen2-window", "qwen3"], indirect=True)
def test_the_parity_depends_on_windows_and_qk_norm_epsilon(hf_dir):
    """The tiny models are sensitive to what the conversion sets: without the window, or with
    the query/key norms' default epsilon, the logits move far past the tolerance."""
    directory, hf = hf_dir
    ours = load_hf(directory)
    c = ours.config
    if c.attention == "local":
        change = {"attention": "softmax", "window": None}
    else:
        assert c.qk_norm_eps == 0.1
        change = {"qk_norm_eps": 1e-6}
    other = GPT(dataclasses.replace(c, **change)).eval()
    other.load_state_dict(ours.state_dict())
    real = _batch()[1].bool()
    assert (_logits(other)[real] - _logits(hf, hf=True)[real]).abs().max() > 1e-2


def test_round_trip_through_save_hf_is_exact(hf_dir, tmp_path):
    directory, hf = hf_dir
    save_hf(load_hf(directory), tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["model_type"] == hf.config.model_type
    assert written["architectures"] == [type(hf).__name__]
    again = type(hf).from_pretrained(tmp_path).eval()
    assert again.config.layer_types == hf.config.layer_types
    assert again.config.sliding_window == hf.config.sliding_window
    torch.testing.assert_close(_logits(again, hf=True), _logits(hf, hf=True), atol=0, rtol=0)
    assert_same_tensors(tmp_path, directory)


def test_greedy_generation_equals_transformers(hf_dir):
    """Ten greedy tokens after a 6-token prompt, one row left-padded, through attnlab.load."""
    directory, hf = hf_dir
    assert_greedy_equals_transformers(attnlab.load(directory).model, hf, vocab=97)


@pytest.fixture(scope="module")
def qwen2_dir(tmp_path_factory):
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("qwen2")
    Qwen2ForCausalLM(Qwen2Config(**BASE)).save_pretrained(directory, safe_serialization=True)
    return directory


def _edited(src, dst, drop=(), **fields):
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    for key in drop:
        del cfg[key]
    cfg.update(fields)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_windows_on_some_layers_only_are_refused_naming_the_key(qwen2_dir, tmp_path):
    # transformers' own reading: the first max_window_layers layers full, the rest windowed.
    mixed = _edited(
        qwen2_dir,
        tmp_path / "mixed",
        drop=["layer_types"],
        use_sliding_window=True,
        sliding_window=5,
        max_window_layers=1,
    )
    assert Qwen2Config.from_pretrained(mixed).layer_types == ["full_attention", "sliding_attention"]
    with pytest.raises(
        ValueError,
        match=r"mixed/config.json: use_sliding_window=true with max_window_layers=1 gives a "
        r"sliding window to layers 1..1 of num_hidden_layers=2 only; .*per-layer sliding "
        r"windows are not supported",
    ):
        load_hf(mixed)
    listed = _edited(
        qwen2_dir,
        tmp_path / "listed",
        use_sliding_window=True,
        sliding_window=5,
        layer_types=["sliding_attention", "full_attention"],
    )
    with pytest.raises(ValueError, match=r"listed/config.json: layer_types gives a sliding window"):
        load_hf(listed)
    # use_sliding_window true with max_window_layers >= the layers: no layer is windowed.
    none = _edited(
        qwen2_dir, tmp_path / "none", drop=["layer_types"], use_sliding_window=True,
        max_window_layers=2,
    )  # fmt: skip
    assert load_hf(none).config.attention == "softmax"


def test_bad_qwen_fields_name_the_key(qwen2_dir, tmp_path):
    flag = _edited(qwen2_dir, tmp_path / "flag", use_sliding_window="yes")
    with pytest.raises(ValueError, match=r"flag/config.json: use_sliding_window: expected true or"):
        load_hf(flag)
    types = _edited(qwen2_dir, tmp_path / "types", layer_types=["full_attention"])
    with pytest.raises(ValueError, match=r"layer_types: expected a list of num_hidden_layers=2"):
        load_hf(types)
    qwen3 = _edited(qwen2_dir, tmp_path / "qwen3", model_type="qwen3", head_dim=0)
    with pytest.raises(ValueError, match=r"qwen3/config.json: head_dim=0: expected a positive int"):
        load_hf(qwen3)


def test_a_model_no_family_holds_is_refused_with_each_familys_reason(tmp_path):
    config = GPTConfig.from_preset(
        "llama-small", vocab_size=50, max_len=32, n_layer=1, n_head=4, n_kv_head=2, dim=32,
        hidden=48, qkv_bias=True, out_bias=False, qk_norm=True,
    )  # fmt: skip
    with pytest.raises(ValueError) as err:
        save_hf(GPT(config), tmp_path)
    message = str(err.value)
    assert "as Qwen2: qk_norm=True (Qwen2 needs False)" in message
    assert "as Qwen3: qkv_bias=True with out_bias=False" in message
    assert not (tmp_path / "config.json").exists()


def test_gpt_config_head_dim_defaults_to_dim_over_heads():
    assert GPTConfig(dim=32, n_head=4).head_dim == 8
    assert GPTConfig(dim=30, n_head=4, head_dim=16).head_dim == 16  # dim need not divide
    with pytest.raises(ValueError, match=r"dim: expected a multiple of n_head=4, got 30"):
        GPTConfig(dim=30, n_head=4)
    with pytest.raises(ValueError, match=r"head_dim: expected a positive int, got 0"):
        GPTConfig(dim=32, n_head=4, head_dim=0)
    with pytest.raises(ValueError, match=r"qkv_bias: expected true or false, got 'no'"):
        GPTConfig(qkv_bias="no")
    # The biases follow bias unless set.
    assert (GPTConfig(bias=False).qkv_bias, GPTConfig(bias=False).out_bias) == (False, False)
    model = GPT(GPTConfig(n_layer=1, dim=30, n_head=2, head_dim=8, bias=False, qkv_bias=True))
    attn = model.blocks[0].attn
    assert attn.q_proj.weight.shape == (16, 30) and attn.q_proj.bias is not None
    assert attn.out_proj.bias is None
