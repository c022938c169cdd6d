"""Class names of BERT classifiers: ``BertConfig.labels`` is written as ``id2label`` /
``label2id`` of config.json (what transformers reads) and read back by load_hf; unnamed classes
stay transformers' LABEL_i placeholders both ways."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification

from attnlab.convert import load_hf, save_hf
from attnlab.models import BERT, BertConfig

TINY = {"vocab_size": 50, "max_len": 16, "n_layer": 1, "n_head": 2, "dim": 16, "hidden": 32}


def test_label_names_round_trip_through_transformers(tmp_path):
    torch.manual_seed(0)
    names = ["sports", "business", "tech"]  # index order, deliberately not sorted
    model = BERT(BertConfig(**TINY, head="classify", num_labels=3, labels=names)).eval()
    save_hf(model, tmp_path)
    theirs = AutoConfig.from_pretrained(tmp_path)
    assert theirs.id2label == {0: "sports", 1: "business", 2: "tech"}
    assert theirs.label2id == {"sports": 0, "business": 1, "tech": 2}
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert hf.config.id2label[2] == "tech"
    back = load_hf(tmp_path)
    assert back.config.labels == names and back.config.num_labels == 3
    assert back.config == model.config
    ids = torch.randint(0, 50, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, hf(ids).logits, atol=1e-5, rtol=0)


def test_unnamed_classes_stay_unnamed(tmp_path):
    model = BERT(BertConfig(**TINY, head="classify", num_labels=2))
    save_hf(model, tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).id2label == {0: "LABEL_0", 1: "LABEL_1"}
    assert load_hf(tmp_path).config.labels is None


def test_id2label_keys_are_read_in_index_order_and_checked(tmp_path):
    save_hf(BERT(BertConfig(**TINY, head="classify", num_labels=2, labels=["a", "b"])), tmp_path)
    file = tmp_path / "config.json"
    hf = json.loads(file.read_text())
    hf["id2label"] = {"1": "pos", "0": "neg"}
    file.write_text(json.dumps(hf))
    assert load_hf(tmp_path).config.labels == ["neg", "pos"]
    hf["id2label"] = {"0": "neg", "2": "pos"}
    file.write_text(json.dumps(hf))
    with pytest.raises(
        ValueError, match=r"config\.json: id2label: expected keys 0\.\.1, got \[0, 2\]"
    ):
        load_hf(tmp_path)


def test_config_checks_the_label_names():
    with pytest.raises(ValueError, match=r"^labels: expected num_labels=3 names .*got 2"):
        BertConfig(**TINY, head="classify", num_labels=3, labels=["a", "b"])
    with pytest.raises(ValueError, match=r"^labels: expected distinct class names"):
        BertConfig(**TINY, head="classify", num_labels=2, labels=["a", "a"])
    with pytest.raises(ValueError, match=r"^labels: expected a list of str"):
        BertConfig(**TINY, head="classify", num_labels=2, labels="ab")
    assert BertConfig(**TINY, head="classify", num_labels=2, labels=("a", "b")).labels == ["a", "b"]
