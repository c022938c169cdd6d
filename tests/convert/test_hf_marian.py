"""Marian checkpoints: a tiny random transformers MarianMTModel, saved by transformers, loads as
an attnlab EncoderDecoder with equal logits and greedy output; what attnlab cannot hold is
refused by name."""

from __future__ import annotations

import json

import pytest
import torch
from convert_helpers import randomize
from safetensors.torch import load_file, save_file
from transformers import MarianConfig, MarianMTModel

from attnlab.convert import load_hf
from attnlab.models import EncoderDecoder

V = 53


def _config(**fields) -> MarianConfig:
    return MarianConfig(
        vocab_size=V,
        d_model=32,
        encoder_layers=2,
        decoder_layers=3,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=48,
        decoder_ffn_dim=48,
        max_position_embeddings=64,
        activation_function="relu",
        scale_embedding=True,
        dropout=0.0,
        attention_dropout=0.0,
        pad_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=1,
        forced_eos_token_id=None,
        **fields,
    )


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    torch.manual_seed(0)
    hf = randomize(MarianMTModel(_config()))
    with torch.no_grad():  # the sinusoid tables are fixed functions, not weights to randomize
        for table in (hf.model.encoder.embed_positions, hf.model.decoder.embed_positions):
            table.weight.copy_(table.create_weight())
    directory = tmp_path_factory.mktemp("marian")
    hf.save_pretrained(directory, safe_serialization=True)
    return directory, hf


def _batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, V, (2, 10), generator=g)
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, 6:] = 0
    target = torch.randint(3, V, (2, 7), generator=g)
    return ids, mask, target


def test_marian_logits_and_greedy_output_equal_transformers(hf_dir):
    directory, hf = hf_dir
    ours = load_hf(directory)
    assert isinstance(ours, EncoderDecoder)
    c = ours.config
    assert (c.n_layer, c.n_decoder_layer, c.dim, c.hidden, c.activation) == (2, 3, 32, 48, "relu")
    assert (c.pad_id, c.bos_id, c.eos_id, c.share_embeddings, c.tie_embeddings) == (
        0,
        1,
        2,
        True,
        True,
    )
    ids, mask, target = _batch()
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=target).logits
        got = ours(ids, mask, decoder_input_ids=target).logits
        assert got.abs().max() > 0.5
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)
        theirs = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, num_beams=1)
        mine = ours.generate(ids, mask, max_new_tokens=5)
    assert torch.equal(theirs[:, 1 : 1 + mine.shape[1]], mine)


def _variant(src, dst, *, config=None, tensors=None):
    dst.mkdir()
    cfg = json.loads((src / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**cfg, **(config or {})}))
    weights = load_file(src / "model.safetensors")
    save_file(tensors(weights) if tensors else weights, dst / "model.safetensors")
    return dst


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"scale_embedding": False}, "scale_embedding=false is not supported"),
        ({"activation_function": "swish"}, "activation_function 'swish' is not supported"),
        ({"decoder_ffn_dim": 64}, "decoder_ffn_dim=64 differs from encoder_ffn_dim=48"),
        ({"decoder_layers": 5}, "decoder_layers=5, but"),
        ({"d_model": 64}, "d_model=64, but"),
        ({"eos_token_id": 99}, "eos_token_id=99: expected a token id in [0, 53), got 99"),
    ],
    ids=lambda v: "-".join(v) if isinstance(v, dict) else None,
)
def test_marian_configs_attnlab_cannot_hold_are_named(hf_dir, tmp_path, config, message):
    directory, _ = hf_dir
    bad = _variant(directory, tmp_path / "bad", config=config)
    with pytest.raises(ValueError, match=rf"config\.json: .*{message[:40]}".replace("[", r"\[")):
        load_hf(bad)


def test_marian_output_bias_must_be_zero(hf_dir, tmp_path):
    directory, _ = hf_dir

    def biased(tensors):
        return {**tensors, "final_logits_bias": torch.ones(1, V)}

    bad = _variant(directory, tmp_path / "bias", tensors=biased)
    with pytest.raises(ValueError, match=r"model\.safetensors: final_logits_bias is not zero"):
        load_hf(bad)
