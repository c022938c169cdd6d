"""attnlab.data.bpe: byte-level BPE training."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from attnlab.data import load_text, load_tokenizer, train_bpe
from attnlab.tokenizers import Tokenizer


@pytest.fixture(scope="module")
def sample() -> str:
    return load_text("shakespeare")[:200_000]


@pytest.fixture(scope="module")
def bpe(sample) -> Tokenizer:
    return train_bpe(sample, 512)


def test_vocabulary_layout(bpe):
    assert isinstance(bpe, Tokenizer)
    assert bpe.vocab_size == 512
    assert bpe.eos_id == 0 and bpe.id_to_token(0) == "<|endoftext|>"
    assert bpe.encode("<|endoftext|>") == [0]  # kept whole
    # Merges learned from the text compress it: well under one token per character.
    text = "To be, or not to be, that is the question."
    assert len(bpe.encode(text)) < len(text) / 2


@given(st.text())
def test_round_trip_any_text(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text


def test_unicode_and_control_characters(bpe):
    text = "na\u00efve caf\u00e9 \u4e16\u754c \U0001f600 \x00\t\r\n  end"
    assert bpe.decode(bpe.encode(text)) == text


def test_deterministic(sample, bpe):
    again = train_bpe(sample, 512)
    assert again.backend.to_str() == bpe.backend.to_str()


def test_special_tokens_and_saving(sample, tmp_path):
    tok = train_bpe(sample[:50_000], 300, special_tokens=("<|eos|>", "<|pad|>"))
    assert tok.token_to_id("<|eos|>") == 0 and tok.token_to_id("<|pad|>") == 1
    assert tok.eos_id == 0
    tok.save(tmp_path)
    loaded = load_tokenizer(tmp_path)
    text = "Now is the winter of our discontent"
    assert loaded.encode(text) == tok.encode(text)


def test_errors():
    with pytest.raises(ValueError, match=r"^vocab_size: expected at least 257 .* got 100"):
        train_bpe("some text", 100)
    with pytest.raises(ValueError, match=r"^text: expected a non-empty str"):
        train_bpe("", 300)
    with pytest.raises(TypeError, match=r"^special_tokens: expected a sequence of str"):
        train_bpe("text", 300, special_tokens="<|endoftext|>")
    with pytest.raises(TypeError, match=r"^vocab_size: expected an int, got float"):
        train_bpe("text", 300.0)
