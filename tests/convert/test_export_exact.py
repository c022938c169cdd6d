"""save_hf is exact for every model `attnlab train` trains: each training preset's model (shrunk,
every parameter random) is written, read by its transformers class with from_pretrained, and
gives the same outputs; read back by load_hf it gives the same outputs again."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from convert_helpers import randomize
from safetensors.torch import load_file

from attnlab.convert import load_hf, save_hf
from attnlab.models import EncoderDecoder, ViT, from_preset
from attnlab.train.config import PRESETS

V = 61  # vocabulary of the text models
# Per training preset: fields that shrink its model; the preset's own overrides (bias=False,
# head="pretrain", ...) are kept.
TINY = {
    "shakespeare-char": {"vocab_size": V, "max_len": 16, "n_layer": 2, "dim": 32},
    "shakespeare-bpe": {"vocab_size": V, "max_len": 16, "n_layer": 2, "n_head": 4, "dim": 32},
    "bert-pretrain": {"vocab_size": V, "max_len": 16, "n_layer": 2, "dim": 32, "hidden": 48},
    "news-classify": {
        "vocab_size": V,
        "max_len": 16,
        "n_layer": 2,
        "n_head": 4,
        "dim": 32,
        "hidden": 48,
        "head": "classify",  # what the classify task sets on the pretrained encoder
        "num_labels": 5,
    },
    "translate": {"vocab_size": V, "max_len": 16, "n_layer": 2, "dim": 32, "hidden": 48},
    "vit-digits": {"n_layer": 2, "dim": 32, "hidden": 48},
}


def _model(preset: str):
    train = PRESETS[preset]
    fields = {**train.get("model_overrides", {}), **TINY[preset], "dropout": 0.0}
    return randomize(from_preset(train["model"], **fields))


def _text_batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, V, (3, 12), generator=g)
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, 8:] = 0  # right padding: positions of real tokens agree in both libraries
    mask[2, 3:] = 0
    return ids, mask


def _target_batch():
    target = torch.randint(0, V, (3, 9), generator=torch.Generator().manual_seed(2))
    target_mask = torch.ones(3, 9, dtype=torch.long)
    target_mask[2, 5:] = 0
    return target, target_mask


def _images():
    return torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(3))


def _theirs(directory):
    arch = json.loads((directory / "config.json").read_text())["architectures"][0]
    return getattr(transformers, arch).from_pretrained(directory, local_files_only=True).eval()


@torch.no_grad()
def _our_outputs(model) -> list[torch.Tensor]:
    """The attnlab model's outputs, at real (unpadded) positions only."""
    ids, mask = _text_batch()
    if isinstance(model, EncoderDecoder):
        target, target_mask = _target_batch()
        out = model(ids, mask, decoder_input_ids=target, decoder_attention_mask=target_mask)
        return [out.logits[target_mask.bool()]]
    if isinstance(model, ViT):
        return [model(_images()).logits]
    out = model(ids, mask)
    logits = out.logits[mask.bool()] if out.logits.dim() == 3 else out.logits
    return [logits] if out.nsp_logits is None else [logits, out.nsp_logits]


@torch.no_grad()
def _their_outputs(model) -> list[torch.Tensor]:
    """The same outputs from the transformers model."""
    ids, mask = _text_batch()
    if model.config.model_type == "marian":
        target, target_mask = _target_batch()
        out = model(
            input_ids=ids,
            attention_mask=mask,
            decoder_input_ids=target,
            decoder_attention_mask=target_mask,
        )
        return [out.logits[target_mask.bool()]]
    if model.config.model_type == "vit":
        return [model(pixel_values=_images()).logits]
    out = model(input_ids=ids, attention_mask=mask)
    if hasattr(out, "prediction_logits"):  # BertForPreTraining: masked-LM and next-sentence
        return [out.prediction_logits[mask.bool()], out.seq_relationship_logits]
    return [out.logits[mask.bool()] if out.logits.dim() == 3 else out.logits]


@pytest.mark.parametrize("preset", list(TINY))
def test_every_trained_model_exports_exactly(preset, tmp_path):
    ours = _model(preset)
    save_hf(ours, tmp_path)
    theirs = _theirs(tmp_path)
    got, want = _our_outputs(ours), _their_outputs(theirs)
    assert len(got) == len(want) >= 1
    for a, b in zip(got, want, strict=True):
        assert a.abs().max() > 0.5  # large enough for the tolerance to mean something
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)
    again = load_hf(tmp_path)
    assert type(again) is type(ours)
    for a, b in zip(_our_outputs(again), got, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_bias_free_gpt_is_written_as_gpt2_with_zero_biases(tmp_path):
    ours = _model("shakespeare-char")
    assert ours.config.bias is False
    save_hf(ours, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "gpt2"
    written = load_file(tmp_path / "model.safetensors")
    biases = [k for k in written if k.endswith(".bias")]
    assert "transformer.ln_f.bias" in biases and "transformer.h.1.attn.c_attn.bias" in biases
    assert all(not written[k].any() for k in biases)
    again = load_hf(tmp_path)
    assert again.config.bias is True  # a GPT-2: the zero biases are now parameters


def test_translation_model_is_marian_with_permuted_channels(tmp_path):
    ours = _model("translate")
    save_hf(ours, tmp_path)
    theirs = _theirs(tmp_path)
    assert type(theirs).__name__ == "MarianMTModel"
    # Marian's sinusoids are attnlab's with the sines first: channel c holds attnlab's PERM[c].
    c = ours.config.dim
    perm = torch.cat([torch.arange(0, c, 2), torch.arange(1, c, 2)])
    table = ours.src_pos(torch.arange(16))
    marian = theirs.model.encoder.embed_positions.weight[:16]
    torch.testing.assert_close(marian, table[:, perm], atol=1e-6, rtol=0)
    # Greedy decoding agrees token for token.
    ids, mask = _text_batch()
    with torch.no_grad():
        want = theirs.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False, num_beams=1
        )
        got = ours.generate(ids, mask, max_new_tokens=6)
    assert torch.equal(want[:, 1 : 1 + got.shape[1]], got)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"prenorm": True}, "as Marian: prenorm=True (Marian is post-norm, without final norms)"),
        ({"norm_eps": 1e-6}, "as Marian: norm_eps=1e-06 (Marian's LayerNorm epsilon is fixed"),
    ],
)
def test_encoder_decoders_marian_cannot_hold_are_refused(fields, reason, tmp_path):
    model = from_preset("transformer-base", **{**TINY["translate"], **fields})
    with pytest.raises(ValueError, match="model: cannot be written") as info:
        save_hf(model, tmp_path / "out")
    assert reason in str(info.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("share", [True, False])
def test_untied_and_unshared_encoder_decoders_export_exactly(share, tmp_path):
    fields = {**TINY["translate"], "tie_embeddings": False, "share_embeddings": share}
    if not share:
        fields["tgt_vocab_size"] = V + 6
    ours = randomize(from_preset("transformer-base", **fields, dropout=0.0))
    save_hf(ours, tmp_path)
    theirs = _theirs(tmp_path)
    assert theirs.config.tie_word_embeddings is False
    for a, b in zip(_our_outputs(ours), _their_outputs(theirs), strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)
    again = load_hf(tmp_path)
    assert again.config.share_embeddings is share and again.config.tie_embeddings is False
    assert all(torch.equal(again.state_dict()[k], v) for k, v in ours.state_dict().items())
