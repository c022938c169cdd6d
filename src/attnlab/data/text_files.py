"""Reading text files without damaging them: strict decoding, and errors that say where and how
to fix it.

With no encoding named (or UTF-8 named), a file is expected to be UTF-8; a UTF-8 byte-order mark
is dropped, and a file that starts with a UTF-16 or UTF-32 byte-order mark and decodes strictly in
that encoding is read in it (those marks are never valid UTF-8, so nothing else could be meant).
Any other encoding is used as named. Bytes that do not decode raise ValueError naming the file,
the byte offset, the line and the ``encoding=`` setting that fixes it; characters are never
replaced unless a caller asks for ``errors="replace"`` explicitly.
"""

from __future__ import annotations

import codecs
import os
from pathlib import Path

__all__ = ["decode_bytes", "read_text"]

# Byte-order marks tried when UTF-8 is expected; UTF-32 LE's mark starts with UTF-16 LE's, so it
# is tried first.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def _codec(encoding: str, argument: str) -> str:
    try:
        return codecs.lookup(encoding).name
    except LookupError:
        raise ValueError(
            f"encoding: expected a Python codec name such as utf-8, latin-1 or cp1252 for "
            f"{argument}, got {encoding!r}"
        ) from None


def decode_bytes(
    data: bytes,
    path: str | os.PathLike,
    encoding: str | None = None,
    *,
    errors: str = "strict",
    argument: str = "path",
) -> str:
    """``data`` (the contents of ``path``) as text, newlines untouched.

    Args:
        encoding: None or "utf-8" (the default: UTF-8, BOM dropped, UTF-16/32 recognised by their
            BOM), or any Python codec name.
        errors: "strict" (a decode error raises ValueError) or, for data known to carry broken
            bytes, "replace" (they become U+FFFD).
        argument: the setting the caller's user gave the file as, named first in errors.
    """
    codec = "utf-8" if encoding is None else _codec(encoding, argument)
    if codec == "utf-8":
        for bom, name in _BOMS:
            if data.startswith(bom):
                try:
                    return data.decode(name)
                except UnicodeDecodeError:
                    break  # not that encoding after all: report the UTF-8 error below
        if data.startswith(codecs.BOM_UTF8):
            return _decode(data, len(codecs.BOM_UTF8), "utf-8", errors, path, argument)
    return _decode(data, 0, codec, errors, path, argument)


def read_text(
    path: str | os.PathLike,
    encoding: str | None = None,
    *,
    errors: str = "strict",
    argument: str = "path",
) -> str:
    """The text of the file ``path`` decoded as in :func:`decode_bytes`, with "\\r\\n" and "\\r"
    line ends turned into "\\n" (as ``open()`` does)."""
    text = decode_bytes(Path(path).read_bytes(), path, encoding, errors=errors, argument=argument)
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _decode(data: bytes, start: int, codec: str, errors: str, path, argument: str) -> str:
    try:
        return data[start:].decode(codec, errors=errors)
    except UnicodeDecodeError as exc:
        offset = start + exc.start
        before = data[start:offset].decode(codec, errors="replace")
        line = before.count("\n") + 1
        column = len(before) - before.rfind("\n")
        bad = data[offset : min(start + exc.end, offset + 4)].hex(" ")
        raise ValueError(
            f"{argument}: {path} is not valid {codec.upper()}: byte{'s' * (' ' in bad)} {bad} "
            f"at byte offset {offset} (line {line}, column {column}) cannot be decoded; set "
            f"encoding= to the file's encoding (for example encoding=latin-1 or encoding=cp1252)"
        ) from None
