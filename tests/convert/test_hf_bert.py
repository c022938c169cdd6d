"""BERT checkpoints: masked LM, next sentence, sequence and token classification and the bare
encoder give the same outputs as transformers on tiny random models with padding; round trips
through save_hf are exact; bad files are refused with the file and tensor named."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from convert_helpers import randomize as _randomize
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModel,
    BertConfig,
    BertForMaskedLM,
    BertForNextSentencePrediction,
    BertForPreTraining,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
)

from attnlab.convert import load_hf, save_hf

HF_CLASSES = {
    "mlm": BertForMaskedLM,
    "nsp": BertForNextSentencePrediction,
    "classify": BertForSequenceClassification,
    "token": BertForTokenClassification,
    "none": BertModel,
}


def _config():
    return BertConfig(
        vocab_size=97,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=40,
        num_labels=3,
    )


@pytest.fixture(scope="module", params=list(HF_CLASSES))
def hf_dir(request, tmp_path_factory):
    torch.manual_seed(0)
    hf = _randomize(HF_CLASSES[request.param](_config()))
    directory = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(directory, safe_serialization=True)
    return request.param, directory, hf


def _batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 97, (3, 10), generator=g)
    types = torch.randint(0, 2, (3, 10), generator=g)
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    return ids, types, mask


def _hf_out(hf, ids, types, mask):
    out = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
    if isinstance(hf, BertModel):
        return out.last_hidden_state
    return out.prediction_logits if isinstance(hf, BertForPreTraining) else out.logits


def test_bert_outputs_equal_transformers(hf_dir):
    head, directory, hf = hf_dir
    ours = load_hf(directory)
    assert ours.config.head == head
    if head in ("classify", "token"):
        assert ours.config.num_labels == 3
    ids, types, mask = _batch()
    with torch.no_grad():
        want = _hf_out(hf, ids, types, mask)
        got = ours(ids, mask, token_type_ids=types).logits
    if got.dim() == 3:  # per-token outputs: padded positions are not compared
        got, want = got[mask.bool()], want[mask.bool()]
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def test_round_trip_through_save_hf_is_exact(hf_dir, tmp_path):
    head, directory, hf = hf_dir
    save_hf(load_hf(directory), tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["architectures"] == [type(hf).__name__]
    again = (AutoModel if head == "none" else type(hf)).from_pretrained(tmp_path).eval()
    assert type(again) is type(hf)
    if head in ("classify", "token"):
        assert again.config.num_labels == 3
    ids, types, mask = _batch()
    with torch.no_grad():
        torch.testing.assert_close(
            _hf_out(again, ids, types, mask), _hf_out(hf, ids, types, mask), atol=0, rtol=0
        )
    theirs = load_file(directory / "model.safetensors")
    theirs.pop("bert.embeddings.position_ids", None)
    mine = load_file(tmp_path / "model.safetensors")
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_pretraining_checkpoint_gives_both_heads(tmp_path):
    """BertForPreTraining (bert-base-uncased's layout): masked-LM and next-sentence logits and
    the summed loss equal transformers'."""
    torch.manual_seed(0)
    hf = _randomize(BertForPreTraining(_config()))
    hf.save_pretrained(tmp_path, safe_serialization=True)
    ours = load_hf(tmp_path)
    assert ours.config.head == "pretrain" and ours.config.pooler
    ids, types, mask = _batch()
    labels = torch.where(torch.rand(ids.shape) < 0.3, ids, -100)
    nsp = torch.arange(ids.shape[0]) % 2
    with torch.no_grad():
        want = hf(
            input_ids=ids,
            token_type_ids=types,
            attention_mask=mask,
            labels=labels,
            next_sentence_label=nsp,
        )
        got = ours(ids, mask, token_type_ids=types, labels=labels, next_sentence_label=nsp)
    real = mask.bool()
    torch.testing.assert_close(got.logits[real], want.prediction_logits[real], atol=1e-4, rtol=0)
    torch.testing.assert_close(got.nsp_logits, want.seq_relationship_logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(got.loss, want.loss, atol=1e-4, rtol=0)
    save_hf(ours, tmp_path / "again")
    again = BertForPreTraining.from_pretrained(tmp_path / "again").eval()
    with torch.no_grad():
        back = again(input_ids=ids, token_type_ids=types, attention_mask=mask)
    assert torch.equal(
        back.prediction_logits,
        hf(input_ids=ids, token_type_ids=types, attention_mask=mask).prediction_logits,
    )


@pytest.fixture(scope="module")
def classify_dir(tmp_path_factory):
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("classify")
    BertForSequenceClassification(_config()).save_pretrained(directory, safe_serialization=True)
    return directory


def _variant(src, dst, edit_config=None, edit_tensors=None):
    shutil.copytree(src, dst)
    if edit_config:
        cfg = json.loads((dst / "config.json").read_text())
        edit_config(cfg)
        (dst / "config.json").write_text(json.dumps(cfg))
    if edit_tensors:
        save_file(edit_tensors(load_file(src / "model.safetensors")), dst / "model.safetensors")
    return dst


def test_bad_bert_checkpoints_name_the_file_and_tensor(classify_dir, tmp_path):
    truncated = _variant(classify_dir, tmp_path / "truncated")
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[:-100])
    with pytest.raises(ValueError, match=r"truncated/model.safetensors: cannot read safetensors"):
        load_hf(truncated)

    def set_arch(arch):
        return lambda cfg: cfg.update(architectures=[arch])

    qa = _variant(classify_dir, tmp_path / "qa", edit_config=set_arch("BertForQuestionAnswering"))
    with pytest.raises(
        ValueError, match=r"qa/config.json: BERT architecture 'BertForQuestionAnswering' is not"
    ):
        load_hf(qa)

    def drop(key):
        return lambda t: {k: v for k, v in t.items() if k != key}

    key = "bert.encoder.layer.1.attention.self.value.bias"
    missing = _variant(classify_dir, tmp_path / "missing", edit_tensors=drop(key))
    with pytest.raises(
        ValueError, match=r"model.safetensors: missing tensor 'encoder.layer.1.attention.self.value"
    ):
        load_hf(missing)

    no_head = _variant(classify_dir, tmp_path / "no_head", edit_tensors=drop("classifier.weight"))
    with pytest.raises(ValueError, match=r"missing tensor 'classifier.weight'"):
        load_hf(no_head)

    no_pooler = _variant(
        classify_dir, tmp_path / "no_pooler", edit_tensors=drop("bert.pooler.dense.weight")
    )
    with pytest.raises(ValueError, match=r"missing tensor 'pooler.dense.weight'"):
        load_hf(no_pooler)

    extra = _variant(
        classify_dir,
        tmp_path / "extra",
        edit_tensors=lambda t: {**t, "bert.encoder.layer.1.output.extra.bias": torch.zeros(32)},
    )
    with pytest.raises(ValueError, match=r"unexpected tensors \['encoder.layer.1.output.extra"):
        load_hf(extra)

    # Five labels stored where config.json says three.
    shape = _variant(
        classify_dir,
        tmp_path / "shape",
        edit_tensors=lambda t: {**t, "classifier.weight": torch.zeros(5, 32)},
    )
    with pytest.raises(
        ValueError, match=r"tensor for 'classifier.weight' has shape \(5, 32\), expected \(3, 32\)"
    ):
        load_hf(shape)

    relative = _variant(
        classify_dir,
        tmp_path / "relative",
        edit_config=lambda cfg: cfg.update(position_embedding_type="relative_key"),
    )
    with pytest.raises(ValueError, match=r"position_embedding_type 'relative_key' is not"):
        load_hf(relative)
