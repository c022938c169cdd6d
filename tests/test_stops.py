"""Stop strings cut generated text just before the first one completed, however it is tokenized."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as Backend
from tokenizers import decoders, models

from attnlab.stops import StopStrings, find_stop, held_back
from attnlab.tokenizers import Tokenizer, bytes_to_unicode

SPELL = bytes_to_unicode()
# Multi-character tokens on top of the 256 byte tokens, so that a test picks the split it wants.
PIECES = ["Hello", " wor", "ld", " world", "foo", " ba", "r.\n\nUser: hi", "\n\n", "User"]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    """Byte-level: ids 0..255 are the bytes, 256.. the PIECES (decoding is all these tests do)."""
    vocab = {SPELL[b]: b for b in range(256)}
    for piece in PIECES:
        vocab["".join(SPELL[b] for b in piece.encode())] = len(vocab)
    assert len(vocab) == 256 + len(PIECES)
    backend = Backend(models.BPE(vocab, []))
    backend.decoder = decoders.ByteLevel()
    return Tokenizer(backend)


def ids(*parts: str | bytes) -> list[list[int]]:
    """One push per part: a PIECES entry is its one token, anything else its byte tokens."""
    return [[256 + PIECES.index(p)] if p in PIECES else list(bytes(p, "utf-8")) for p in parts]


def run(tokenizer, stop, pushes: list[list[int]]):
    """Push each group of ids; returns the StopStrings and the pieces it released."""
    stops = StopStrings(tokenizer, stop)
    released = []
    for group in pushes:
        stopped = stops.push(group)
        released.append(stops.release())
        if stopped:
            break
    released.append(stops.finish())
    return stops, released


def test_a_stop_spanning_tokens_cuts_exactly(tokenizer):
    stops, released = run(tokenizer, "world", ids("Hello", " wor", "ld", "!"))
    assert stops.stopped and stops.stop == "world"
    assert stops.text == "Hello "
    assert released == ["Hello", " ", "", ""]  # "wor" held back until "ld" completed the stop
    assert "".join(released) == stops.text


def test_a_stop_inside_one_token_cuts_mid_token(tokenizer):
    stops, released = run(tokenizer, ["\n\nUser:", "###"], ids("foo", " ba", "r.\n\nUser: hi"))
    assert stops.stop == "\n\nUser:" and stops.text == "foo bar."
    assert "".join(released) == "foo bar."
    # the stop also ends the text when each of its parts is a token of its own
    stops, _ = run(tokenizer, "\n\nUser:", ids("foo", "\n\n", "User", ":", "!"))
    assert stops.text == "foo"


def test_a_stop_across_the_bytes_of_a_character(tokenizer):
    emoji = "🙂".encode()  # four byte tokens, pushed one at a time
    pushes = [*ids("ok "), *[[b] for b in emoji], *ids("!", "more")]
    stops, released = run(tokenizer, "🙂!", pushes)
    assert stops.stop == "🙂!" and stops.text == "ok "
    assert all("\ufffd" not in r for r in released)
    # a stop that is the first byte's character elsewhere never matches half a character
    stops, released = run(tokenizer, "\ufffd", pushes)
    assert not stops.stopped and "".join(released) == "ok 🙂!more"


def test_no_false_positive(tokenizer):
    text = "word worl wor ld world-ish"
    stops, released = run(tokenizer, ["world!", "xyz"], [[b] for b in text.encode()])
    assert not stops.stopped and stops.stop is None
    assert stops.text == "".join(released) == text


def test_ids_after_the_stop_are_ignored(tokenizer):
    stops = StopStrings(tokenizer, "!")
    assert stops.push(torch.tensor(ids("Hello", "!")[0] + ids("!")[0])) is True
    assert stops.push(ids(" world")[0]) is True
    assert stops.text == "Hello" and stops.finish() == "Hello"
    with pytest.raises(RuntimeError, match="push: this row was finished"):
        stops.push(1)


def test_the_first_stop_completed_wins_then_the_longest():
    assert find_stop("abcd", ["abcd", "bc"]) == (1, "bc")  # "bc" is complete before "abcd"
    assert find_stop("xab", ["b", "ab"]) == (1, "ab")  # both end at "b": the longer is cut
    assert find_stop("xab", "ab") == (1, "ab")
    assert find_stop("xyz", ["ab", "q"]) is None


def test_held_back_counts_the_start_of_a_stop():
    assert held_back("Hello wor", "world") == 3
    assert held_back("Hello wor", ["xyz", "or!", "world"]) == 3
    assert held_back("Hello world", "world") == 0  # a whole stop is found, not held
    assert held_back("aba", "abab") == 3
    assert held_back("ab", ["b!", "abab"]) == 2
    assert held_back("Hello", ["x", "world"]) == 0


@pytest.mark.parametrize("stop", ["", [], [""], ["ok", ""], [1], None, {"a": 1}])
def test_empty_or_invalid_stops_name_stop(tokenizer, stop):
    with pytest.raises(ValueError, match=r"^stop: expected"):
        StopStrings(tokenizer, stop)
    with pytest.raises(ValueError, match=r"^stop: expected"):
        held_back("text", stop)


def reference_cut(text: str, stops: list[str]) -> tuple[int, str] | None:
    """The rule read literally: grow the text one character at a time; the first time it ends
    with stop strings, cut before the longest of them."""
    for end in range(1, len(text) + 1):
        ending = [s for s in stops if text[:end].endswith(s)]
        if ending:
            longest = max(ending, key=len)
            return end - len(longest), longest
    return None


ALPHABET = "ab é🙂\n"


@settings(max_examples=200)  # cheap, and a split stop's rarer cases need more than the default
@given(
    stop=st.lists(st.text(ALPHABET, min_size=1, max_size=4), min_size=1, max_size=3),
    data=st.data(),
)
def test_any_split_of_the_bytes_gives_the_reference_cut(tokenizer, stop, data):
    # texts made of the stops' pieces and single characters, so that stops occur, whole or in part
    parts = st.one_of(
        st.sampled_from(stop),
        st.sampled_from([s[:-1] for s in stop if s[:-1]] or ["a"]),
        st.sampled_from(ALPHABET),
    )
    text = "".join(data.draw(st.lists(parts, max_size=10), label="parts"))
    raw = text.encode()
    cuts = data.draw(st.sets(st.integers(1, max(1, len(raw) - 1)), max_size=12), label="cuts")
    bounds = sorted({0, len(raw), *(c for c in cuts if c < len(raw))})
    pushes = [list(raw[a:b]) for a, b in itertools.pairwise(bounds)]
    stops = StopStrings(tokenizer, stop)
    released = ""
    for group in pushes:
        stops.push(group)
        released += stops.release()
        assert "\ufffd" not in released
    released += stops.finish()
    want = reference_cut(text, stop)
    assert stops.text == released == (text if want is None else text[: want[0]])
    assert stops.stop == (None if want is None else want[1])
    assert find_stop(text, stop) == want
