"""attnlab.data.text_files: strict decoding, byte-order marks and the errors that locate a bad
byte."""

from __future__ import annotations

import pytest

from attnlab.data.text_files import decode_bytes, read_text


def test_newlines_kept_by_decode_and_unified_by_read(tmp_path):
    file = tmp_path / "t.txt"
    file.write_bytes(b"a\r\nb\rc\n")
    assert decode_bytes(file.read_bytes(), file) == "a\r\nb\rc\n"
    assert read_text(file) == "a\nb\nc\n"


def test_a_bom_that_does_not_decode_reports_the_utf8_error():
    data = b"\xff\xfe" + b"x"  # a UTF-16 mark, then half a code unit
    with pytest.raises(
        ValueError, match=r"^data: f\.txt is not valid UTF-8: byte ff at byte offset 0"
    ):
        decode_bytes(data, "f.txt", argument="data")


def test_offsets_count_the_bom_and_columns_count_characters():
    data = b"\xef\xbb\xbf" + "\u00e9t\u00e9\n  \u2014x".encode() + b"\xc3("
    with pytest.raises(ValueError) as e:
        decode_bytes(data, "f.txt")
    assert "bytes c3 28 at byte offset" not in str(e.value)  # only the bad byte is shown
    assert f"byte c3 at byte offset {len(data) - 2} (line 2, column 5)" in str(e.value)


def test_errors_replace_only_when_asked():
    assert decode_bytes(b"caf\xe9", "f.txt", errors="replace") == "caf\ufffd"
    assert decode_bytes(b"caf\xe9", "f.txt", "latin-1") == "caf\u00e9"
    with pytest.raises(ValueError, match=r"is not valid ASCII: byte e9 at byte offset 3"):
        decode_bytes(b"caf\xe9", "f.txt", "ascii")
