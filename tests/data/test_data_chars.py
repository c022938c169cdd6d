"""attnlab.data.chars: the character tokenizer."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from attnlab.data import CharTokenizer, load_tokenizer


@given(st.text(min_size=1))
def test_round_trip_any_text(text):
    tok = CharTokenizer.from_text(text)
    ids = tok.encode(text)
    assert len(ids) == len(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text
    assert tok.encode(text) == [tok.index[c] for c in text]


def test_vocabulary_is_sorted_characters():
    tok = CharTokenizer.from_text("hello world")
    assert tok.chars == [" ", "d", "e", "h", "l", "o", "r", "w"]
    assert tok.vocab_size == len(tok) == 8
    assert tok.encode("hold") == [3, 5, 4, 1]
    assert tok.decode(torch.tensor([3, 5, 4, 1])) == "hold"
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (None, None, None)
    assert repr(tok) == "CharTokenizer(vocab_size=8)"


def test_unknown_character_is_named():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match=r"^text: character 'z' \(U\+007A\) at position 2 is not"):
        tok.encode("abz")


def test_decode_errors():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match=r"^ids: expected ids in \[0, 3\), got 3"):
        tok.decode([0, 3])
    with pytest.raises(ValueError, match=r"^ids: expected a 1-D tensor, got shape \(1, 2\)"):
        tok.decode(torch.zeros(1, 2, dtype=torch.long))


def test_constructor_errors():
    with pytest.raises(ValueError, match=r"^text: expected a non-empty str"):
        CharTokenizer.from_text("")
    with pytest.raises(ValueError, match=r"^chars: expected single characters, got 'ab'"):
        CharTokenizer(["ab", "c"])
    with pytest.raises(TypeError, match=r"^text: expected a str, got bytes"):
        CharTokenizer.from_text("ab").encode(b"ab")


def test_save_load_file_and_directory(tmp_path):
    tok = CharTokenizer.from_text("The quick brown fox\n\u00e9\u4e16")
    file = tok.save(tmp_path / "vocab.json")
    assert json.loads(file.read_text())["chars"] == tok.chars
    assert CharTokenizer.load(file) == tok
    directory = tok.save(tmp_path / "run")
    assert (directory / "char_tokenizer.json").is_file()
    assert CharTokenizer.load(directory) == tok
    assert load_tokenizer(directory) == tok
    assert load_tokenizer(file) == tok
    assert not [p for p in tmp_path.rglob("*.tmp")]  # atomic writes leave no temporaries


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no char_tokenizer\.json"):
        CharTokenizer.load(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "other"}')
    with pytest.raises(ValueError, match=r"expected a CharTokenizer JSON file, got another format"):
        CharTokenizer.load(bad)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"expected a CharTokenizer JSON file \("):
        CharTokenizer.load(bad)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"^path: expected a directory or a \.json file"):
        CharTokenizer.from_text("ab").save(tmp_path / "file")


def test_fingerprint_follows_the_vocabulary():
    a, b = CharTokenizer.from_text("abc"), CharTokenizer.from_text("cba")
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != CharTokenizer.from_text("abd").fingerprint()
