"""A character-level tokenizer: one id per distinct character of a training text (nanoGPT's
``shakespeare_char``). It implements :class:`attnlab.tokenizers.TextTokenizer`, the interface of
every attnlab tokenizer: ``encode``, ``encode_batch``, ``decode``, an incremental decoder,
``vocab_size``, the special ids (all None: a character vocabulary has no special tokens) and
``save``, which writes its one on-disk format, ``char_tokenizer.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from attnlab.files import atomic_write_text
from attnlab.tokenizers import TextTokenizer

__all__ = ["FILE_NAME", "CharTokenizer", "load_tokenizer"]

FILE_NAME = "char_tokenizer.json"  # the file that save() writes into a directory
FORMAT = "attnlab.CharTokenizer"


class CharTokenizer(TextTokenizer):
    """Ids ``0 .. vocab_size - 1`` for the characters of ``chars`` in sorted (code point) order.

    Args:
        chars: the vocabulary, a string or an iterable of single characters (duplicates are
            dropped, order does not matter).
    """

    def __init__(self, chars: str | Iterable[str]) -> None:
        chars = sorted(set(chars))
        bad = [c for c in chars if not isinstance(c, str) or len(c) != 1]
        if bad:
            raise ValueError(f"chars: expected single characters, got {bad[0]!r}")
        if not chars:
            raise ValueError("chars: expected at least one character, got none")
        self.chars = chars
        self.index = {c: i for i, c in enumerate(chars)}
        # Code points in id order, for vectorized encoding with searchsorted.
        self._codes = np.array([ord(c) for c in chars], dtype=np.uint32)

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """The vocabulary of every character that occurs in ``text``."""
        if not isinstance(text, str) or not text:
            raise ValueError(f"text: expected a non-empty str, got {text!r:.60}")
        return cls(text)

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharTokenizer) and other.chars == self.chars

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode_array(self, text: str) -> np.ndarray:
        """Ids of ``text`` as an int64 array (T,), vectorized: ~50 M characters/s."""
        if not isinstance(text, str):
            raise TypeError(f"text: expected a str, got {type(text).__name__}")
        codes = np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype=np.uint32)
        ids = np.searchsorted(self._codes, codes)
        ids_in_range = np.minimum(ids, len(self._codes) - 1)
        unknown = np.flatnonzero(self._codes[ids_in_range] != codes)
        if unknown.size:
            i = int(unknown[0])
            raise ValueError(
                f"text: character {text[i]!r} (U+{ord(text[i]):04X}) at position {i} is not in "
                f"the vocabulary of {self.vocab_size} characters ({self.sample_chars()})"
            )
        return ids.astype(np.int64)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Ids of ``text``, one per character; a character outside the vocabulary raises
        ValueError naming it. ``add_special_tokens`` is accepted for interface compatibility (there
        are none to add)."""
        return self.encode_array(text).tolist()

    def decode(self, ids: Iterable[int] | torch.Tensor, skip_special_tokens: bool = True) -> str:
        """Text of ``ids`` (a list or a 1-D tensor)."""
        if isinstance(ids, torch.Tensor):
            if ids.dim() != 1:
                raise ValueError(f"ids: expected a 1-D tensor, got shape {tuple(ids.shape)}")
            ids = ids.tolist()
        out = []
        for i in ids:
            if not 0 <= int(i) < self.vocab_size:
                raise ValueError(f"ids: expected ids in [0, {self.vocab_size}), got {int(i)}")
            out.append(self.chars[int(i)])
        return "".join(out)

    def sample_chars(self, n: int = 24) -> str:
        """The vocabulary spelled out for messages, shortened to about ``n`` characters."""
        shown = "".join(self.chars[:n])
        return repr(shown) + (f" and {self.vocab_size - n} more" if self.vocab_size > n else "")

    def to_tokenizer(self):
        """The same vocabulary as an :class:`attnlab.tokenizers.Tokenizer` (a ``tokenizers``
        word-level model over single characters), which saves as a ``tokenizer.json`` that
        transformers' ``AutoTokenizer`` reads; ids are identical."""
        from tokenizers import Regex, decoders, models, pre_tokenizers
        from tokenizers import Tokenizer as Backend

        from attnlab.tokenizers import Tokenizer

        vocab = {c: i for i, c in enumerate(self.chars)}
        backend = Backend(models.WordLevel(vocab, unk_token=None))
        backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        backend.decoder = decoders.Fuse()
        return Tokenizer(backend)

    def fingerprint(self) -> str:
        """A short hash of the vocabulary: equal vocabularies, equal fingerprints."""
        return hashlib.sha256(self._json().encode("utf-8", "surrogatepass")).hexdigest()[:16]

    def _json(self) -> str:
        return json.dumps({"format": FORMAT, "chars": self.chars}, ensure_ascii=True)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the vocabulary as JSON, atomically. ``path`` ending in ``.json`` is the file;
        anything else is a directory that gets ``char_tokenizer.json`` (the way
        :meth:`attnlab.tokenizers.Tokenizer.save` takes a directory). Returns ``path``."""
        path = Path(path)
        file = path if path.suffix == ".json" else path / FILE_NAME
        if file is not path and path.exists() and not path.is_dir():
            raise ValueError(f"path: expected a directory or a .json file, got the file {path}")
        atomic_write_text(file, self._json() + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> CharTokenizer:
        """The tokenizer saved at ``path`` (the JSON file, or the directory holding it)."""
        path = Path(path)
        file = path / FILE_NAME if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"{path}: no {FILE_NAME} or .json file there")
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{file}: expected a CharTokenizer JSON file ({exc})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{file}: expected a CharTokenizer JSON file, got another format")
        return cls(data["chars"])


def load_tokenizer(path: str | os.PathLike) -> TextTokenizer:
    """Whichever tokenizer was saved at ``path`` (:func:`attnlab.tokenizers.load`): a
    :class:`CharTokenizer`, ``tokenizer.json``, a BERT ``vocab.txt``, GPT-2 files or a
    ``.gguf``."""
    from attnlab import tokenizers

    return tokenizers.load(path)
