"""attnlab.data.pairs: parallel sentences."""

from __future__ import annotations

import pytest

from attnlab.data import SentencePairs, chichewa_english
from attnlab.data.pairs import from_tsv


@pytest.fixture(scope="module")
def bible() -> SentencePairs:
    return chichewa_english()


def test_chichewa_english_is_aligned_by_verse(bible):
    assert 31_000 <= len(bible) <= 31_200
    assert bible.names == ("ny", "en")
    assert bible[0] == (
        "Pachiyambi Mulungu adalenga kumwamba ndi dziko lapansi.",
        "In the beginning God created the heaven and the earth.",
    )
    assert bible[-1][1] == "The grace of our Lord Jesus Christ be with you all. Amen."
    assert bible[-1][0].startswith("Chisomo cha Ambuye Yesu")
    assert all(source and target for source, target in bible.pairs)
    assert bible.sources[1].startswith("Dziko lapansi") and bible.targets[1].startswith("And the")


def test_split(bible):
    train, test = bible.split(test_fraction=0.1, seed=0)
    assert len(test) == round(len(bible) * 0.1) and len(train) + len(test) == len(bible)
    assert train.names == test.names == ("ny", "en")
    again = bible.split(test_fraction=0.1, seed=0)[1]
    assert again.pairs == test.pairs
    assert bible.split(test_fraction=0.1, seed=1)[1].pairs != test.pairs


def test_from_tsv(tmp_path):
    file = tmp_path / "pairs.tsv"
    file.write_text("hello\tmoni\r\n\n  \ngood night\tusiku wabwino\n", encoding="utf-8")
    pairs = from_tsv(file)
    assert pairs.pairs == [("hello", "moni"), ("good night", "usiku wabwino")]
    assert pairs.names == ("source", "target")
    assert SentencePairs.from_tsv(file, names=("en", "ny")).names == ("en", "ny")


def test_from_tsv_errors(tmp_path):
    file = tmp_path / "pairs.tsv"
    file.write_text("a\tb\n\nc\td\te\n")
    with pytest.raises(ValueError, match=r"pairs\.tsv: line 3: expected 2 non-empty tab-separated"):
        from_tsv(file)
    file.write_text("a\tb\nno tab here\n")
    with pytest.raises(ValueError, match=r"line 2: .*got 1 column\(s\): 'no tab here'"):
        from_tsv(file)
    file.write_text("a\t \n")
    with pytest.raises(ValueError, match=r"line 1: expected 2 non-empty"):
        from_tsv(file)
    file.write_text("\n\n")
    with pytest.raises(ValueError, match=r"^path: expected lines of source<TAB>target, got none"):
        from_tsv(file)
    with pytest.raises(
        ValueError, match=r"^path: expected a TSV file, got .*, which does not exist"
    ):
        from_tsv(tmp_path / "missing.tsv")
    with pytest.raises(ValueError, match=r"^pairs: expected \(source, target\) pairs"):
        SentencePairs([("a", "b", "c")])
