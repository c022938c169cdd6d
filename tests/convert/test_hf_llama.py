"""Llama checkpoints (GQA, RoPE, RMSNorm, SwiGLU): logits equal transformers' on a tiny model,
round trips through save_hf, bad files."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from convert_helpers import randomize as _randomize
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

from attnlab.convert import load_hf, save_hf


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def hf_dir(request, tmp_path_factory):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rope_theta=500.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=request.param,
    )
    hf = _randomize(LlamaForCausalLM(config))
    directory = tmp_path_factory.mktemp("llama")
    hf.save_pretrained(directory, safe_serialization=True)
    return directory, hf


def _batch():
    ids = torch.randint(0, 97, (2, 13), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 13, dtype=torch.long)
    mask[1, 9:] = 0
    return ids, mask


def test_llama_logits_equal_transformers_with_padding(hf_dir):
    directory, hf = hf_dir
    ours = load_hf(directory)
    c = ours.config
    assert (c.n_kv_head, c.rope_base, c.norm_eps) == (2, 500.0, 1e-5)
    assert c.tie_embeddings == hf.config.tie_word_embeddings
    ids, mask = _batch()
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask).logits
        got = ours(ids, mask).logits
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real], atol=1e-4, rtol=0)


def test_round_trip_through_save_hf_is_exact(hf_dir, tmp_path):
    directory, hf = hf_dir
    save_hf(load_hf(directory), tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["model_type"] == "llama" and written["architectures"] == ["LlamaForCausalLM"]
    again = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    assert again.config.num_key_value_heads == 2
    assert again.config.tie_word_embeddings == hf.config.tie_word_embeddings
    ids, mask = _batch()
    with torch.no_grad():
        torch.testing.assert_close(
            again(input_ids=ids, attention_mask=mask).logits,
            hf(input_ids=ids, attention_mask=mask).logits,
            atol=0,
            rtol=0,
        )
    # The tensors written are exactly the ones read, under the same names.
    theirs = load_file(directory / "model.safetensors")
    mine = load_file(tmp_path / "model.safetensors")
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)


def _variant(src, dst, edit_config=None, edit_tensors=None):
    shutil.copytree(src, dst)
    if edit_config:
        cfg = json.loads((dst / "config.json").read_text())
        edit_config(cfg)
        (dst / "config.json").write_text(json.dumps(cfg))
    if edit_tensors:
        tensors = load_file(src / "model.safetensors")
        save_file(edit_tensors(tensors), dst / "model.safetensors")
    return dst


def test_bad_llama_checkpoints_name_the_file_and_tensor(hf_dir, tmp_path):
    directory, _ = hf_dir
    truncated = _variant(directory, tmp_path / "truncated")
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"truncated/model.safetensors: cannot read safetensors"):
        load_hf(truncated)

    def drop(key):
        return lambda t: {k: v for k, v in t.items() if k != key}

    missing = _variant(directory, tmp_path / "missing", edit_tensors=drop("model.norm.weight"))
    with pytest.raises(ValueError, match=r"model.safetensors: missing tensor 'model.norm.weight'"):
        load_hf(missing)

    layer = "model.layers.1.self_attn.k_proj.weight"
    missing_layer = _variant(directory, tmp_path / "missing_layer", edit_tensors=drop(layer))
    with pytest.raises(ValueError, match=rf"missing tensor '{layer}'"):
        load_hf(missing_layer)

    extra = _variant(
        directory,
        tmp_path / "extra",
        edit_tensors=lambda t: {**t, "model.layers.0.self_attn.q_norm.weight": torch.ones(8)},
    )
    with pytest.raises(ValueError, match=r"unexpected tensors \['model.layers.0.self_attn.q_norm"):
        load_hf(extra)

    # A k projection for 4 key/value heads where the config says 2.
    shape = _variant(
        directory,
        tmp_path / "shape",
        edit_tensors=lambda t: {**t, "model.layers.0.self_attn.k_proj.weight": torch.zeros(32, 32)},
    )
    with pytest.raises(
        ValueError, match=r"tensor for 'blocks.0.attn.k_proj.weight' has shape \(32, 32\), expected"
    ):
        load_hf(shape)

    def set_field(**fields):
        return lambda cfg: cfg.update(fields)

    gelu = _variant(directory, tmp_path / "gelu", edit_config=set_field(hidden_act="gelu"))
    with pytest.raises(ValueError, match=r"gelu/config.json: hidden_act 'gelu' is not supported"):
        load_hf(gelu)

    falcon = _variant(directory, tmp_path / "falcon", edit_config=set_field(model_type="falcon"))
    with pytest.raises(ValueError, match=r"unsupported architecture \(model_type='falcon'"):
        load_hf(falcon)

    no_field = _variant(
        directory, tmp_path / "no_field", edit_config=lambda cfg: cfg.pop("hidden_size")
    )
    with pytest.raises(ValueError, match=r"no_field/config.json: missing field 'hidden_size'"):
        load_hf(no_field)


def test_untied_checkpoint_without_lm_head_is_refused(tmp_path):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path, safe_serialization=True)
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["lm_head.weight"]
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"model.safetensors: missing tensor 'lm_head.weight'"):
        load_hf(tmp_path)
