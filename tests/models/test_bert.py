"""BERT: preset sizes, heads, sentence embeddings, and learning."""

from __future__ import annotations

import pytest
import torch

from attnlab.models.bert import BERT, BertConfig

TINY = {
    "vocab_size": 50,
    "max_len": 16,
    "n_layer": 2,
    "n_head": 2,
    "dim": 16,
    "hidden": 32,
    "dropout": 0.0,
}


def test_bert_base_has_the_published_parameter_count():
    with torch.device("meta"):
        model = BERT.from_preset("bert-base", head="none")
    assert sum(p.numel() for p in model.parameters()) == 109_482_240  # BertModel, with pooler


@pytest.mark.parametrize(
    ("head", "shape"),
    [
        ("mlm", (2, 7, 50)),
        ("nsp", (2, 2)),
        ("classify", (2, 3)),
        ("token", (2, 7, 3)),
        ("none", (2, 7, 16)),
    ],
)
def test_head_output_shapes(head, shape):
    model = BERT.from_preset("bert-base", **TINY, head=head, num_labels=3)
    assert model(torch.randint(0, 50, (2, 7))).logits.shape == shape


def test_mean_pooled_embeddings_ignore_padding():
    model = BERT.from_preset("minilm-l6", **TINY).eval()
    ids = torch.randint(0, 50, (1, 5))
    alone = model.embed(ids)
    padded = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], 1)
    mask = torch.tensor([[1] * 5 + [0] * 3])
    torch.testing.assert_close(model.embed(padded, mask), alone, atol=1e-5, rtol=1e-5)


def test_masked_lm_learns():
    torch.manual_seed(0)
    model = BERT.from_preset("bert-base", **TINY).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ids = torch.randint(0, 50, (8, 12))
    losses = []
    for _ in range(80):
        logits = model(ids).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 50), ids.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"head": "qa"}, "head: unknown BERT head .qa.; expected one of none, mlm, nsp, pretrain"),
        ({"head": "nsp", "pooler": False}, "pooler: the 'nsp' head reads the pooled vector"),
        ({"dim": 10}, "dim: expected a multiple of n_head=12, got 10"),
    ],
)
def test_bad_configs_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BertConfig(**kwargs)
