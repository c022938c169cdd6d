"""BERT checkpoints: masked LM, next sentence, sequence classification and the bare encoder give
the same outputs as transformers on tiny random models with padding."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertForNextSentencePrediction,
    BertForSequenceClassification,
    BertModel,
)

from attnlab.convert import load_hf

HF_CLASSES = {
    "mlm": BertForMaskedLM,
    "nsp": BertForNextSentencePrediction,
    "classify": BertForSequenceClassification,
    "none": BertModel,
}


@pytest.mark.parametrize("head", list(HF_CLASSES))
def test_bert_outputs_equal_transformers(tmp_path, head):
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=97,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=40,
        num_labels=3,
    )
    hf = HF_CLASSES[head](config).eval()
    hf.save_pretrained(tmp_path, safe_serialization=True)
    ours = load_hf(tmp_path)
    assert ours.config.head == head
    ids = torch.randint(0, 97, (3, 10))
    types = torch.randint(0, 2, (3, 10))
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
        got = ours(ids, mask, token_type_ids=types).logits
    want = theirs.last_hidden_state if head == "none" else theirs.logits
    if got.dim() == 3:  # per-token outputs: padded positions are not compared
        got, want = got[mask.bool()], want[mask.bool()]
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
