"""save_hf for every family: attnlab-built models with random weights are read by transformers'
from_pretrained with outputs equal to attnlab's, and by load_hf with identical tensors; models no
family can hold are refused; files are replaced atomically."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from convert_helpers import randomize as _randomize

import attnlab.convert.hf as hf_module
from attnlab.convert import load_hf, save_hf
from attnlab.models import GPT
from attnlab.models.bert import BERT

TINY_GPT = {"vocab_size": 61, "max_len": 32, "n_layer": 2, "n_head": 4, "dim": 32}
TINY_BERT = {"vocab_size": 61, "max_len": 32, "n_layer": 2, "n_head": 4, "dim": 32, "hidden": 48}

GPTS = {
    "gpt2": {},
    "gpt2-untied-gelu": {"tie_embeddings": False, "mlp": "gelu", "hidden": 40},
    "llama": {"n_kv_head": 2, "hidden_multiple_of": 16, "rope_base": 1000.0},
    "llama-tied-mha": {"hidden": 40, "tie_embeddings": True, "norm_eps": 1e-5},
}
BERTS = {
    "mlm": {"head": "mlm"},
    "mlm-no-pooler": {"head": "mlm", "pooler": False},
    "nsp": {"head": "nsp"},
    "classify": {"head": "classify", "num_labels": 5},
    "token": {"head": "token", "num_labels": 4},
    "none": {"head": "none"},
}
ARCHS = {
    "mlm": "BertForMaskedLM",
    "nsp": "BertForNextSentencePrediction",
    "classify": "BertForSequenceClassification",
    "token": "BertForTokenClassification",
    "none": "BertModel",
}


def _gpt(name):
    preset = "llama-small" if name.startswith("llama") else "gpt2"
    return _randomize(GPT.from_preset(preset, **{**TINY_GPT, **GPTS[name]}))


def _batch(vocab=61):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (3, 12), generator=g)
    types = torch.randint(0, 2, (3, 12), generator=g)
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, 8:] = 0
    mask[2, 3:] = 0
    return ids, types, mask


def _from_pretrained(directory):
    arch = json.loads((directory / "config.json").read_text())["architectures"][0]
    return getattr(transformers, arch).from_pretrained(directory).eval()


def _assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("name", list(GPTS))
def test_gpt_written_by_save_hf_runs_in_transformers(name, tmp_path):
    ours = _gpt(name)
    save_hf(ours, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    theirs = _from_pretrained(tmp_path)
    family = "llama" if name.startswith("llama") else "gpt2"
    assert theirs.config.model_type == family
    assert theirs.config.tie_word_embeddings == ours.config.tie_embeddings
    ids, _, mask = _batch()
    with torch.no_grad():
        got = ours(ids, mask).logits
        want = theirs(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    assert got.abs().max() > 1  # outputs large enough for the tolerance to mean something
    torch.testing.assert_close(got[real], want[real], atol=1e-5, rtol=0)
    again = load_hf(tmp_path)
    _assert_same_state(again, ours)
    for field in ("n_kv_head", "hidden", "norm", "mlp", "position", "rope_base", "norm_eps"):
        assert getattr(again.config, field) == getattr(ours.config, field), field


@pytest.mark.parametrize("name", list(BERTS))
def test_bert_written_by_save_hf_runs_in_transformers(name, tmp_path):
    ours = _randomize(BERT.from_preset("bert-base", **{**TINY_BERT, **BERTS[name]}))
    head = ours.config.head
    save_hf(ours, tmp_path)
    theirs = _from_pretrained(tmp_path)
    assert type(theirs).__name__ == ARCHS[head]
    if head in ("classify", "token"):
        assert theirs.config.num_labels == ours.config.num_labels
    ids, types, mask = _batch()
    with torch.no_grad():
        got = ours(ids, mask, token_type_ids=types).logits
        out = theirs(input_ids=ids, attention_mask=mask, token_type_ids=types)
    want = out.last_hidden_state if head == "none" else out.logits
    if got.dim() == 3:  # per-token outputs: padded positions are not compared
        got, want = got[mask.bool()], want[mask.bool()]
    assert got.abs().max() > 0.5
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    again = load_hf(tmp_path)
    assert (again.config.head, again.config.pooler) == (head, ours.config.pooler)
    _assert_same_state(again, ours)


def test_models_no_family_can_hold_are_refused(tmp_path):
    rope_layernorm = GPT.from_preset("gpt2", **TINY_GPT, position="rope")
    with pytest.raises(ValueError, match="model: cannot be written") as info:
        save_hf(rope_layernorm, tmp_path / "a")
    assert "as GPT-2: position='rope' (GPT-2 needs 'learned')" in str(info.value)
    assert "as Llama: norm='layernorm' (Llama needs 'rmsnorm'), mlp='gelu_tanh'" in str(info.value)

    gqa = GPT.from_preset("gpt2", **TINY_GPT, n_kv_head=2)
    with pytest.raises(ValueError, match=r"grouped-query attention \(GPT-2 has n_kv_head"):
        save_hf(gqa, tmp_path / "b")

    llama_with_bias = GPT.from_preset("llama-small", **TINY_GPT, hidden=40, bias=True)
    with pytest.raises(ValueError, match=r"as Llama: bias=True \(Llama needs False\)"):
        save_hf(llama_with_bias, tmp_path / "c")

    with pytest.raises(
        TypeError, match="model: expected one of BERT, EncoderDecoder, GPT, ViT, got Linear"
    ):
        save_hf(torch.nn.Linear(2, 2), tmp_path / "d")

    with pytest.raises(ValueError, match="max_shard_bytes: expected a positive int"):
        save_hf(_gpt("gpt2"), tmp_path / "e", max_shard_bytes=0)
    assert not any((tmp_path / d).exists() for d in "abcde")


def test_save_replaces_files_atomically(tmp_path, monkeypatch):
    first, second = _gpt("gpt2"), _randomize(GPT.from_preset("gpt2", **TINY_GPT), seed=1)
    save_hf(first, tmp_path)
    before = (tmp_path / "model.safetensors").read_bytes()

    def fail_midway(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(hf_module, "save_file", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        save_hf(second, tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == before  # old weights intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]

    monkeypatch.undo()
    save_hf(second, tmp_path)  # overwriting an existing checkpoint
    _assert_same_state(load_hf(tmp_path), second)
