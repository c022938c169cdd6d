"""A tokenized corpus as two flat arrays of token ids on disk, and random training windows from
them (nanoGPT's ``prepare.py`` + ``get_batch``).

Shapes: B batch, T block (context) length. ``batch`` returns ``x, y`` of shape (B, T) with
``y[:, t] == x[:, t + 1]`` inside each window: the model predicts every next token.

The ids live in ``<cache_dir>/<key>/{train,val}.bin`` (raw uint16 or uint32, little-endian as the
machine writes it) plus ``meta.json``; ``key`` hashes the corpus fingerprint, the tokenizer
fingerprint and the validation fraction, so building the same stream twice reads the files
instead of encoding again, and a changed corpus or vocabulary can never reuse stale ids. Each file
is written to a temporary name and renamed into place, ``meta.json`` last: a crash leaves either a
complete cache entry or one that is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from attnlab.data.corpus import corpus_fingerprint, line_chunks
from attnlab.files import atomic_write, atomic_write_text

__all__ = ["SPLITS", "TokenStream", "encode_corpus", "tokenizer_fingerprint"]

SPLITS = ("train", "val")
FORMAT = "attnlab.TokenStream/1"  # part of the cache key: bump it when the encoding changes
CHUNK = 1 << 12  # characters per encoding piece (cut at line ends)


def tokenizer_fingerprint(tokenizer) -> str:
    """A short hash that changes whenever the tokenizer would encode differently: the tokenizer's
    own ``fingerprint()`` if it has one (:class:`~attnlab.data.chars.CharTokenizer`), otherwise
    the serialized ``tokenizers`` backend plus the special tokens
    (:class:`attnlab.tokenizers.Tokenizer`)."""
    own = getattr(tokenizer, "fingerprint", None)
    if callable(own):
        return str(own())
    backend = getattr(tokenizer, "backend", None)
    if backend is None or not hasattr(backend, "to_str"):
        raise TypeError(
            "tokenizer: expected a CharTokenizer, an attnlab.tokenizers.Tokenizer or an object "
            f"with a fingerprint() method, got {type(tokenizer).__name__}"
        )
    special = json.dumps(getattr(tokenizer, "special", {}), sort_keys=True)
    payload = backend.to_str() + special
    return hashlib.sha256(payload.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def encode_corpus(text: str, tokenizer) -> np.ndarray:
    """Token ids of a whole corpus, (N,) int64, without special tokens.

    The text is cut into pieces of about 4 KiB at line ends and the pieces encoded separately:
    with a ``tokenizers`` backend in one parallel ``encode_batch`` call (a 5 MB corpus in about 2 s
    on 2 cores), with a :class:`~attnlab.data.chars.CharTokenizer` in one vectorized pass. The
    pieces' ids concatenate; for byte-level and character tokenizers they decode back to ``text``.
    """
    if hasattr(tokenizer, "encode_array"):
        return tokenizer.encode_array(text)
    pieces = list(line_chunks(text, CHUNK))
    backend = getattr(tokenizer, "backend", None)
    if backend is not None and hasattr(backend, "encode_batch"):
        rows = [e.ids for e in backend.encode_batch(pieces, add_special_tokens=False)]
    else:
        rows = [tokenizer.encode(p) for p in pieces]
    return np.fromiter((i for row in rows for i in row), dtype=np.int64)


class TokenStream:
    """Train and validation token ids, and batches of windows from them.

    Args:
        train, val: 1-D arrays of token ids (usually ``np.memmap`` from :meth:`build`).
        vocab_size: the tokenizer's vocabulary size (every id is below it).

    Attributes:
        train, val: the id arrays, (N_train,) and (N_val,); ``np.memmap`` when built, except
            that an empty split (``val_fraction=0``) is a plain empty array.
        vocab_size: as given.
        path: the cache directory of this stream (None when built in memory).
        cache_hit: True when :meth:`build` found the ids on disk instead of encoding.
    """

    def __init__(self, train: np.ndarray, val: np.ndarray, vocab_size: int) -> None:
        for name, arr in (("train", train), ("val", val)):
            if arr.ndim != 1:
                raise ValueError(f"{name}: expected a 1-D array of ids, got shape {arr.shape}")
        self.train = train
        self.val = val
        self.vocab_size = int(vocab_size)
        self.path: Path | None = None
        self.cache_hit = False

    def __repr__(self) -> str:
        return (
            f"TokenStream(train={len(self.train):,} tokens, val={len(self.val):,} tokens, "
            f"vocab_size={self.vocab_size}, dtype={self.train.dtype})"
        )

    @classmethod
    def build(
        cls,
        text: str,
        tokenizer,
        cache_dir: str | os.PathLike,
        val_fraction: float = 0.1,
    ) -> TokenStream:
        """Encode ``text`` with ``tokenizer`` into ``cache_dir`` (or reuse what an earlier build
        left there) and memory-map the result.

        The last ``val_fraction`` of the tokens is validation, the rest training (nanoGPT's
        split: ``n_train = int(n * (1 - val_fraction))``). Ids are stored as uint16 when the
        vocabulary has fewer than 65,536 ids, else uint32.
        """
        if not isinstance(text, str) or not text:
            raise ValueError(f"text: expected a non-empty str, got {text!r:.60}")
        if isinstance(val_fraction, bool) or not 0.0 <= float(val_fraction) < 1.0:
            raise ValueError(f"val_fraction: expected a number in [0, 1), got {val_fraction!r}")
        vocab_size = int(tokenizer.vocab_size)
        dtype = np.dtype(np.uint16 if vocab_size < 65536 else np.uint32)
        key_parts = [FORMAT, corpus_fingerprint(text), tokenizer_fingerprint(tokenizer)]
        key_parts.append(repr(float(val_fraction)))
        key = hashlib.sha256("|".join(key_parts).encode()).hexdigest()[:16]
        directory = Path(cache_dir) / key
        stream = cls._open(directory, dtype, vocab_size)
        if stream is not None:
            stream.cache_hit = True
            return stream
        ids = encode_corpus(text, tokenizer)
        if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
            raise ValueError(
                f"tokenizer: expected ids in [0, {vocab_size}), "
                f"got {int(ids.min())}..{int(ids.max())}"
            )
        n_train = int(len(ids) * (1.0 - float(val_fraction)))
        directory.mkdir(parents=True, exist_ok=True)
        for split, part in (("train", ids[:n_train]), ("val", ids[n_train:])):
            atomic_write(directory / f"{split}.bin", part.astype(dtype).tofile, binary=True)
        meta = {
            "format": FORMAT,
            "corpus": key_parts[1],
            "tokenizer": key_parts[2],
            "val_fraction": float(val_fraction),
            "vocab_size": vocab_size,
            "dtype": dtype.name,
            "train_tokens": n_train,
            "val_tokens": len(ids) - n_train,
        }
        atomic_write_text(directory / "meta.json", json.dumps(meta, indent=2) + "\n")
        stream = cls._open(directory, dtype, vocab_size)
        if stream is None:  # pragma: no cover - only if another process corrupts it meanwhile
            raise RuntimeError(f"{directory}: cache entry unreadable right after writing it")
        return stream

    @classmethod
    def _open(cls, directory: Path, dtype: np.dtype, vocab_size: int) -> TokenStream | None:
        """The stream cached in ``directory``, or None if it is absent or incomplete."""
        try:
            meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if meta.get("format") != FORMAT or meta.get("dtype") != dtype.name:
            return None
        arrays = []
        for split in SPLITS:
            file, n = directory / f"{split}.bin", meta.get(f"{split}_tokens", -1)
            if not file.is_file() or file.stat().st_size != n * dtype.itemsize:
                return None
            # np.memmap cannot map an empty file; an empty split is an empty array.
            arrays.append(np.memmap(file, dtype=dtype, mode="r") if n else np.zeros(0, dtype))
        stream = cls(arrays[0], arrays[1], vocab_size)
        stream.path = directory
        return stream

    # ---- batches -------------------------------------------------------------------------------

    def _windows(self, split: str, block_size: int, batch_size: int) -> np.ndarray:
        if split not in SPLITS:
            raise ValueError(f"split: expected 'train' or 'val', got {split!r}")
        for name, value in (("block_size", block_size), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        data = getattr(self, split)
        if len(data) < block_size + 1:
            raise ValueError(
                f"block_size: expected at most {max(len(data) - 1, 0)} for the {split!r} split "
                f"of {len(data)} tokens (a window needs block_size + 1 tokens), got {block_size}"
            )
        return data

    def batch(
        self, split: str, batch_size: int, block_size: int, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """``batch_size`` random windows of ``split``: ``x, y`` int64 (B, T), ``y`` = ``x``
        shifted left by one token. Offsets are drawn uniformly with
        ``torch.randint(..., generator=generator)``, so restoring the generator's state
        (``generator.set_state``) replays the same batches exactly."""
        data = self._windows(split, block_size, batch_size)
        offsets = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
        return self._gather(data, offsets.numpy(), block_size)

    def iter_eval(
        self, split: str, batch_size: int, block_size: int, max_batches: int | None = None
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Deterministic evaluation batches of non-overlapping windows of ``split``,
        ``batch_size`` per batch (the last one may be smaller). Without ``max_batches`` every
        window from the start (offsets 0, T, 2T, ...); with it, ``max_batches * batch_size``
        windows spread evenly over the whole split, so a partial evaluation samples all of it
        rather than its first pages. Yields ``x, y`` (B, T) as :meth:`batch` does."""
        data = self._windows(split, block_size, batch_size)  # checked now, not at first next()
        if max_batches is not None and (isinstance(max_batches, bool) or max_batches < 1):
            raise ValueError(f"max_batches: expected a positive int or None, got {max_batches!r}")
        offsets = np.arange(0, len(data) - block_size, block_size)
        if max_batches is not None and len(offsets) > max_batches * batch_size:
            picks = np.linspace(0, len(offsets) - 1, max_batches * batch_size)
            offsets = offsets[np.round(picks).astype(np.int64)]
        starts = range(0, len(offsets), batch_size)
        return (self._gather(data, offsets[s : s + batch_size], block_size) for s in starts)

    @staticmethod
    def _gather(data: np.ndarray, offsets: np.ndarray, block_size: int) -> tuple[Tensor, Tensor]:
        index = offsets[:, None] + np.arange(block_size + 1)  # (B, T + 1)
        window = torch.from_numpy(np.asarray(data[index], dtype=np.int64))  # (B, T + 1)
        return window[:, :-1].contiguous(), window[:, 1:].contiguous()  # (B, T), (B, T)
