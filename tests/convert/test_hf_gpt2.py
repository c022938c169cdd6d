"""GPT-2 checkpoints: parity with transformers on a tiny random model, round trips, bad files."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from attnlab.convert import load_hf, save_hf
from attnlab.models import GPT


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=97,
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    model = GPT2LMHeadModel(config).eval()
    directory = tmp_path_factory.mktemp("gpt2")
    model.save_pretrained(directory, safe_serialization=True)
    return directory, model


def _batch():
    ids = torch.randint(0, 97, (3, 11), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[1, 7:] = 0  # right padding: positions of real tokens agree in both libraries
    mask[2, 4:] = 0
    return ids, mask


def test_logits_equal_transformers_with_padding(hf_dir):
    directory, hf = hf_dir
    ours = load_hf(directory)
    ids, mask = _batch()
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask).logits
        got = ours(ids, mask).logits
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real], atol=1e-4, rtol=0)


def test_round_trip_through_save_hf(hf_dir, tmp_path):
    directory, hf = hf_dir
    ours = load_hf(directory)
    save_hf(ours, tmp_path / "out")
    again = GPT2LMHeadModel.from_pretrained(tmp_path / "out").eval()
    ids, mask = _batch()
    with torch.no_grad():
        torch.testing.assert_close(
            again(input_ids=ids, attention_mask=mask).logits,
            hf(input_ids=ids, attention_mask=mask).logits,
            atol=0,
            rtol=0,
        )


def test_save_refuses_a_model_no_family_can_hold(tmp_path):
    model = GPT.from_preset(
        "gpt2", n_layer=1, dim=32, n_head=4, vocab_size=50, position="alibi", qk_norm=True
    )
    with pytest.raises(ValueError, match="model: cannot be written") as info:
        save_hf(model, tmp_path / "out")
    message = str(info.value)
    assert "as GPT-2: qk_norm=True (GPT-2 needs False), position='alibi' (GPT-2 needs " in message
    assert "as Llama: norm='layernorm' (Llama needs 'rmsnorm')" in message
    assert not (tmp_path / "out").exists()  # refused before anything is written


def _copy(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_bad_checkpoints_name_the_file_and_tensor(hf_dir, tmp_path):
    directory, _ = hf_dir
    truncated = _copy(directory, tmp_path / "truncated")
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cannot read safetensors weights"):
        load_hf(truncated)

    unknown = _copy(directory, tmp_path / "unknown")
    cfg = json.loads((unknown / "config.json").read_text())
    cfg["model_type"] = "mamba"
    (unknown / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"unsupported architecture \(model_type='mamba'"):
        load_hf(unknown)

    from safetensors.torch import load_file, save_file

    tensors = load_file(directory / "model.safetensors")
    missing = _copy(directory, tmp_path / "missing")
    save_file(
        {k: v for k, v in tensors.items() if "h.1.mlp.c_fc.weight" not in k},
        missing / "model.safetensors",
    )
    with pytest.raises(ValueError, match=r"model.safetensors: missing tensor '.*h.1.mlp.c_fc"):
        load_hf(missing)

    extra = _copy(directory, tmp_path / "extra")
    save_file(
        {**tensors, "transformer.h.0.attn.rotary": torch.zeros(2)}, extra / "model.safetensors"
    )
    with pytest.raises(ValueError, match=r"unexpected tensors \['h.0.attn.rotary'\]"):
        load_hf(extra)

    shape = _copy(directory, tmp_path / "shape")
    bad = dict(tensors)
    bad["transformer.wpe.weight"] = torch.zeros(63, 32)
    save_file(bad, shape / "model.safetensors")
    with pytest.raises(
        ValueError,
        match=r"config.json: n_positions=64, but .*model.safetensors holds transformer.wpe.weight "
        r"with shape \(63, 32\)",
    ):
        load_hf(shape)

    with pytest.raises(FileNotFoundError, match=r"config\.json: no such file"):
        load_hf(tmp_path / "nowhere")
