"""Stop strings: end generated text just before a given string appears in it.

A stop string is matched in the decoded text, not in token ids, so it is found however the
tokenizer splits it: over several tokens, inside one token together with other text, or in the
middle of a multi-byte character's bytes.

The rule, the same for every way the text arrives: reading the text from its start, the first
stop string to be completed ends it, and the output is the text **before** that stop string (the
stop string itself is left out, as llama.cpp's server and the OpenAI API do). When several stop
strings are completed by the same character, the longest one is cut. The result therefore does
not depend on how the text is split into tokens or pieces.

:class:`StopStrings` applies the rule to one row of generation, fed token ids as they are
sampled; :func:`find_stop` and :func:`held_back` apply it to decoded text.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

if TYPE_CHECKING:
    from attnlab.tokenizers import TextTokenizer

__all__ = ["StopStrings", "find_stop", "held_back"]


def _check(stop) -> tuple[str, ...]:
    """``stop`` as a tuple of distinct non-empty strings (one string is a list of one)."""
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list | tuple) or not stops:
        raise ValueError(f"stop: expected a non-empty str or a list of them, got {stop!r:.80}")
    for s in stops:
        if not isinstance(s, str) or not s:
            raise ValueError(f"stop: expected non-empty strings, got {s!r:.80} in {stop!r:.80}")
    return tuple(dict.fromkeys(stops))


def _first(text: str, stops: tuple[str, ...]) -> tuple[int, str] | None:
    found = []
    for s in stops:
        i = text.find(s)  # a stop's first occurrence is also the first to be completed
        if i >= 0:
            found.append((i + len(s), -len(s), i, s))  # completed first, then longest
    return min(found)[2:] if found else None


def _held(text: str, stops: tuple[str, ...]) -> int:
    n = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), n, -1):
            if text.endswith(s[:k]):
                n = k
                break
    return n


def find_stop(text: str, stop: str | list[str]) -> tuple[int, str] | None:
    """Where ``text`` must be cut: ``(index, stop_string)`` for the first stop string to be
    completed (the longest of those completed by the same character), so that ``text[:index]``
    is the output; None when no stop string occurs."""
    return _first(text, _check(stop))


def held_back(text: str, stop: str | list[str]) -> int:
    """How many trailing characters of ``text`` to hold back from a stream: the length of the
    longest end of ``text`` that is the beginning of a stop string (and not a whole one), since
    the next text may complete it. 0 when showing all of ``text`` is safe."""
    return _held(text, _check(stop))


class StopStrings:
    """Watches one row of generation for stop strings, fed its token ids as they are sampled.

    Args:
        tokenizer: the tokenizer that decodes the ids (through its incremental decoder, so a
            multi-byte character split over tokens is matched once it is whole).
        stop: a stop string or a list of them, each non-empty.
        skip_special_tokens: decode without special tokens (the default); set False to match
            stop strings in special tokens' text too.

    :meth:`push` returns True once a stop string has appeared; :attr:`text` is then the output,
    cut exactly before it. For streaming, :meth:`release` returns the text that can be shown
    now (never a character that a stop string might still claim), and :meth:`finish`, called
    once at the end, returns the rest. Use one per row of a batch.
    """

    def __init__(
        self, tokenizer: TextTokenizer, stop: str | list[str], *, skip_special_tokens: bool = True
    ) -> None:
        self.stops = _check(stop)
        self._keep = max(map(len, self.stops)) - 1  # text a stop begun earlier can reach back to
        self._decoder = tokenizer.decoder(skip_special_tokens=skip_special_tokens)
        self._out: list[str] = []  # the output so far, in pieces
        self._tail = ""  # its last ``_keep`` characters, where a new stop string may begin
        self._pending: list[str] = []  # its end not yet released, in pieces
        self._finished = False
        self.stop: str | None = None  # the stop string that ended the text

    @property
    def stopped(self) -> bool:
        """True once a stop string has appeared."""
        return self.stop is not None

    @property
    def text(self) -> str:
        """The decoded output so far; once stopped, everything before the stop string."""
        return "".join(self._out)

    def push(self, ids: int | list[int] | Tensor) -> bool:
        """Add the row's next id(s) (an int, a list or a tensor); True once a stop string has
        appeared (ids pushed after that are ignored)."""
        if self._finished:
            raise RuntimeError("push: this row was finished; use a new StopStrings")
        if self.stop is None:
            self._add(self._decoder.push(ids))
        return self.stop is not None

    def _add(self, piece: str) -> None:
        if not piece:
            return
        window = self._tail + piece
        found = _first(window, self.stops)  # no stop lies inside the tail: it was searched before
        if found is None:
            self._out.append(piece)
            self._pending.append(piece)
            self._tail = window[max(0, len(window) - self._keep) :]
            return
        start, self.stop = found
        drop = len(window) - start  # characters from the stop string's start to the end
        text = self.text + piece
        self._out = [text[: len(text) - drop]]
        # The stop string's beginning was held back, so every dropped character is pending.
        pending = "".join(self._pending) + piece
        self._pending = [pending[: len(pending) - drop]]

    def release(self) -> str:
        """The output not yet released that no stop string can claim any more."""
        pending = "".join(self._pending)
        hold = 0 if self.stop is not None or self._finished else _held(pending, self.stops)
        cut = len(pending) - hold
        self._pending = [pending[cut:]]
        return pending[:cut]

    def finish(self) -> str:
        """End of generation: decode what the decoder still holds (an incomplete character stays
        U+FFFD), look for a stop string in it, and return all the output not yet released."""
        if self.stop is None and not self._finished:
            self._add(self._decoder.flush())
        self._finished = True
        return self.release()
