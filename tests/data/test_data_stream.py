"""attnlab.data.stream: cached token streams and their batches."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from attnlab.data import CharTokenizer, TokenStream, load_text, tokenizer_fingerprint, train_bpe


@pytest.fixture(scope="module")
def text() -> str:
    return load_text("shakespeare")[:300_000]


@pytest.fixture(scope="module")
def chars(text) -> CharTokenizer:
    return CharTokenizer.from_text(text)


class CountingChars(CharTokenizer):
    """A CharTokenizer that counts how often it encodes."""

    calls = 0

    def encode_array(self, text):
        type(self).calls += 1
        return super().encode_array(text)


class BigVocab:
    """A duck-typed tokenizer with more than 65,536 ids: bytes shifted up by 70,000."""

    vocab_size = 70_256

    def fingerprint(self) -> str:
        return "big-vocab"

    def encode(self, text: str) -> list[int]:
        return [70_000 + b for b in text.encode()]


def test_build_writes_memmaps_and_splits_like_nanogpt(text, chars, tmp_path):
    stream = TokenStream.build(text, chars, tmp_path, val_fraction=0.1)
    assert isinstance(stream.train, np.memmap) and isinstance(stream.val, np.memmap)
    assert stream.train.dtype == np.uint16 and stream.val.dtype == np.uint16
    assert stream.vocab_size == chars.vocab_size
    assert len(stream.train) == int(len(text) * 0.9)
    assert len(stream.train) + len(stream.val) == len(text)
    ids = np.concatenate([stream.train, stream.val])
    assert chars.decode(ids.tolist()) == text  # the last 10 % is validation, in order
    assert sorted(p.name for p in stream.path.iterdir()) == ["meta.json", "train.bin", "val.bin"]
    meta = json.loads((stream.path / "meta.json").read_text())
    assert meta["dtype"] == "uint16" and meta["val_tokens"] == len(stream.val)
    assert not stream.cache_hit


def test_second_build_is_a_cache_hit_without_encoding(text, tmp_path):
    tok = CountingChars(text)
    CountingChars.calls = 0
    first = TokenStream.build(text, tok, tmp_path)
    assert CountingChars.calls == 1 and not first.cache_hit
    second = TokenStream.build(text, tok, tmp_path)
    assert CountingChars.calls == 1 and second.cache_hit
    assert second.path == first.path
    assert np.array_equal(second.train, first.train) and np.array_equal(second.val, first.val)


def test_cache_key_changes_with_corpus_tokenizer_and_fraction(text, chars, tmp_path):
    base = TokenStream.build(text, chars, tmp_path).path
    assert TokenStream.build(text, chars, tmp_path, val_fraction=0.2).path != base
    assert TokenStream.build(text[:-1], chars, tmp_path).path != base
    other = CharTokenizer([*chars.chars, "\u00e9"])
    assert TokenStream.build(text, other, tmp_path).path != base
    assert len(list(tmp_path.iterdir())) == 4


def test_incomplete_cache_entry_is_rebuilt(text, chars, tmp_path):
    stream = TokenStream.build(text, chars, tmp_path)
    train = stream.path / "train.bin"
    del stream
    with open(train, "r+b") as f:
        f.truncate(10)  # as if a crash had cut it short
    again = TokenStream.build(text, chars, tmp_path)
    assert not again.cache_hit and len(again.train) == int(len(text) * 0.9)


def test_uint32_for_large_vocabularies(tmp_path):
    stream = TokenStream.build("abc\ndef\n" * 10, BigVocab(), tmp_path)
    assert stream.train.dtype == np.uint32
    assert int(stream.train[0]) == 70_000 + ord("a")


def test_bpe_stream_decodes_back_to_the_corpus(text, tmp_path):
    bpe = train_bpe(text, 400)
    stream = TokenStream.build(text, bpe, tmp_path)
    ids = np.concatenate([stream.train, stream.val]).tolist()
    assert len(ids) < len(text) * 0.6
    assert bpe.decode(ids) == text
    assert TokenStream.build(text, bpe, tmp_path).cache_hit


def test_batches_are_shifted_windows(text, chars, tmp_path):
    stream = TokenStream.build(text, chars, tmp_path)
    g = torch.Generator().manual_seed(1)
    state = g.get_state()
    x, y = stream.batch("train", 8, 32, g)
    assert x.shape == y.shape == (8, 32) and x.dtype == y.dtype == torch.long
    assert x.is_contiguous() and y.is_contiguous()
    assert torch.equal(x[:, 1:], y[:, :-1])
    # The windows start where torch.randint with the same generator state says.
    offsets = torch.randint(
        len(stream.train) - 32, (8,), generator=torch.Generator().set_state(state)
    )
    for row, o in zip(x, offsets.tolist(), strict=True):
        assert row.tolist() == stream.train[o : o + 32].tolist()
    for row, o in zip(y, offsets.tolist(), strict=True):
        assert row.tolist() == stream.train[o + 1 : o + 33].tolist()


def test_generator_state_replays_batches(text, chars, tmp_path):
    stream = TokenStream.build(text, chars, tmp_path)
    g = torch.Generator().manual_seed(0)
    stream.batch("train", 4, 16, g)
    state = g.get_state()  # e.g. saved in a checkpoint mid-run
    later = [stream.batch("val", 4, 16, g) for _ in range(3)]
    g.set_state(state)
    replay = [stream.batch("val", 4, 16, g) for _ in range(3)]
    for (x1, y1), (x2, y2) in zip(later, replay, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(later[0][0], later[1][0])


def test_iter_eval_is_deterministic_and_non_overlapping(chars, tmp_path):
    text = "".join(chars.chars) * 20
    stream = TokenStream.build(text, chars, tmp_path, val_fraction=0.5)
    n = len(stream.val)
    batches = list(stream.iter_eval("val", 3, 10, max_batches=None))
    windows = torch.cat([x for x, _ in batches])
    assert windows.shape == ((n - 1) // 10, 10)
    assert windows.flatten().tolist() == stream.val[: windows.numel()].tolist()
    assert [len(x) for x, _ in batches][:-1] == [3] * (len(batches) - 1)
    for x, y in batches:
        assert torch.equal(x[:, 1:], y[:, :-1])
    assert len(list(stream.iter_eval("val", 3, 10, max_batches=2))) == 2
    # A partial evaluation spreads its windows over the whole split: first and last included.
    spread = torch.cat([x for x, _ in stream.iter_eval("val", 3, 10, max_batches=2)])
    assert torch.equal(spread[0], windows[0]) and torch.equal(spread[-1], windows[-1])
    again = list(stream.iter_eval("val", 3, 10))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again, strict=True))


def test_no_validation_split(tmp_path):
    stream = TokenStream.build("abcdefgh", CharTokenizer.from_text("abcdefgh"), tmp_path, 0.0)
    assert len(stream.train) == 8 and len(stream.val) == 0
    assert TokenStream.build("abcdefgh", CharTokenizer.from_text("abcdefgh"), tmp_path, 0).cache_hit
    with pytest.raises(ValueError, match=r"^block_size: .* 'val' split of 0 tokens"):
        stream.batch("val", 1, 1, torch.Generator())


def test_in_memory_stream():
    stream = TokenStream(np.arange(20, dtype=np.uint16), np.arange(5, dtype=np.uint16), 20)
    x, y = stream.batch("train", 2, 4, torch.Generator().manual_seed(0))
    assert torch.equal(y, x + 1)
    assert "train=20 tokens" in repr(stream) and stream.path is None


def test_full_shakespeare_with_chars_builds_fast_enough(tmp_path):
    text = load_text("shakespeare")
    stream = TokenStream.build(text, CharTokenizer.from_text(text), tmp_path)
    assert len(stream.train) + len(stream.val) == len(text)


def test_full_shakespeare_with_bpe(tmp_path):
    text = load_text("shakespeare")
    bpe = train_bpe(text[:500_000], 1024)
    stream = TokenStream.build(text, bpe, tmp_path)
    assert 1_500_000 < len(stream.train) + len(stream.val) < 2_500_000
    assert bpe.decode(stream.val[:200].tolist()) in text


def test_errors(text, chars, tmp_path):
    tiny = TokenStream.build("abcdefghij", CharTokenizer.from_text("abcdefghij"), tmp_path)
    assert (len(tiny.train), len(tiny.val)) == (9, 1)
    g = torch.Generator()
    with pytest.raises(ValueError, match=r"^block_size: expected at most 0 for the 'val' split"):
        tiny.batch("val", 1, 1, g)
    with pytest.raises(ValueError, match=r"^block_size: expected at most 8 .* 9 tokens .* got 9$"):
        tiny.batch("train", 1, 9, g)
    assert tiny.batch("train", 1, 8, g)[0].shape == (1, 8)
    with pytest.raises(ValueError, match=r"^block_size: expected at most 8"):
        tiny.iter_eval("train", 1, 9)
    with pytest.raises(ValueError, match=r"^split: expected 'train' or 'val', got 'test'"):
        tiny.batch("test", 1, 2, g)
    with pytest.raises(ValueError, match=r"^batch_size: expected a positive int, got 0"):
        tiny.batch("train", 0, 2, g)
    with pytest.raises(ValueError, match=r"^max_batches: expected a positive int or None, got 0"):
        tiny.iter_eval("train", 1, 2, max_batches=0)
    with pytest.raises(ValueError, match=r"^val_fraction: expected a number in \[0, 1\), got 1"):
        TokenStream.build(text, chars, tmp_path, val_fraction=1)
    with pytest.raises(ValueError, match=r"^text: expected a non-empty str"):
        TokenStream.build("", chars, tmp_path)
    with pytest.raises(ValueError, match=r"^text: character 'Z'"):
        TokenStream.build("Zebra", CharTokenizer.from_text("ebra"), tmp_path)
    with pytest.raises(TypeError, match=r"^tokenizer: expected a CharTokenizer"):
        tokenizer_fingerprint(object())
    with pytest.raises(ValueError, match=r"^train: expected a 1-D array of ids"):
        TokenStream(np.zeros((2, 2)), np.zeros(2), 4)
