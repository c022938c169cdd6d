"""attnlab.data.classify: labelled texts, their loaders and split."""

from __future__ import annotations

import pytest

from attnlab.data import TextClassification, bbc_news, sentiment
from attnlab.data.classify import from_csv, from_folder


def test_bbc_news():
    data = bbc_news()
    assert len(data) == 2_225
    assert data.label_names == ["business", "entertainment", "politics", "sports", "tech"]
    assert data.counts() == {
        "business": 510,
        "entertainment": 386,
        "politics": 417,
        "sports": 511,
        "tech": 401,
    }
    assert data[0] == (data.texts[0], 0)
    assert data.texts[0].startswith("Ad sales boost Time Warner profit\n\nQuarterly profits")
    assert all(text.strip() for text in data.texts)
    assert data.num_labels == 5


def test_sentiment():
    data = sentiment()
    assert len(data) == 38_158
    assert data.label_names == ["negative", "neutral", "positive"]
    assert data.counts() == {"negative": 16_186, "neutral": 15_018, "positive": 6_954}
    assert data.texts[1] == "self-driving cars just seem lazy and a waste of money"
    assert data.labels[1] == 0


def test_split_is_stratified_and_deterministic():
    data = bbc_news()
    train, test = data.split(test_fraction=0.2, seed=0)
    assert len(train) + len(test) == len(data)
    assert test.counts() == {name: round(n * 0.2) for name, n in data.counts().items()}
    # The packaged set repeats 98 articles (2,127 distinct texts), so compare as multisets.
    assert sorted(train.texts + test.texts) == sorted(data.texts)
    assert len(set(data.texts)) == 2_127
    train2, test2 = data.split(test_fraction=0.2, seed=0)
    assert train2.texts == train.texts and test2.labels == test.labels
    assert data.split(test_fraction=0.2, seed=1)[1].texts != test.texts
    assert test.label_names == data.label_names


def test_from_folder(tmp_path):
    for label, names in {"spam": ["b.txt", "a.txt"], "ham": ["x.txt"], "empty": []}.items():
        (tmp_path / label).mkdir()
        for name in names:
            (tmp_path / label / name).write_text(f" {label} {name} \n")
    (tmp_path / "ham" / "notes.md").write_text("not an example")
    (tmp_path / "loose.txt").write_text("not in a label folder")
    data = from_folder(tmp_path)
    assert data.label_names == ["ham", "spam"]
    assert data.texts == ["ham x.txt", "spam a.txt", "spam b.txt"]
    assert data.labels == [0, 1, 1]
    assert TextClassification.from_folder(tmp_path) == data


def test_from_folder_errors(tmp_path):
    with pytest.raises(ValueError, match=r"^path: expected a folder with one sub-folder per label"):
        from_folder(tmp_path / "missing")
    (tmp_path / "label").mkdir()
    (tmp_path / "label" / "a.md").write_text("x")
    with pytest.raises(ValueError, match=r"^path: expected sub-folders holding \.txt files"):
        from_folder(tmp_path)


def test_from_csv(tmp_path):
    file = tmp_path / "data.csv"
    file.write_bytes(b'id,review,stars\n1,"Great, really",good\n2,bad caf\xe9,bad\n3,fine,good\n')
    data = from_csv(file, text_column="review", label_column="stars")
    assert data.label_names == ["bad", "good"]
    assert data.texts == ["Great, really", "bad caf\ufffd", "fine"]
    assert data.labels == [1, 0, 1]


def test_from_csv_errors(tmp_path):
    file = tmp_path / "data.csv"
    file.write_text("id,review,stars\n1,ok,good\n")
    with pytest.raises(
        ValueError, match=r"^text_column: expected a column of .*, got 'text'; its "
    ):
        from_csv(file, text_column="text", label_column="stars")
    with pytest.raises(ValueError, match=r"its columns are 'id', 'review', 'stars'$"):
        from_csv(file, text_column="review", label_column="label")
    file.write_text("id,review,stars\n1,ok,good\n2,short\n")
    with pytest.raises(
        ValueError, match=r"line 3: expected a value in columns 'review' and 'stars'"
    ):
        from_csv(file, text_column="review", label_column="stars")
    file.write_text("id,review,stars\n")
    with pytest.raises(ValueError, match=r"^path: expected rows after the header, got none"):
        from_csv(file, text_column="review", label_column="stars")
    with pytest.raises(
        ValueError, match=r"^path: expected a CSV file, got .*, which does not exist"
    ):
        from_csv(tmp_path / "missing.csv", text_column="review", label_column="stars")
    file.write_text("")
    with pytest.raises(ValueError, match=r"its columns are none \(empty file\)$"):
        from_csv(file, text_column="review", label_column="stars")


def test_constructor_checks_labels():
    with pytest.raises(ValueError, match=r"^labels: expected one label per text \(2\), got 1"):
        TextClassification(["a", "b"], [0], ["x"])
    with pytest.raises(ValueError, match=r"^labels: expected labels in \[0, 2\) .*, got 2"):
        TextClassification(["a", "b"], [0, 2], ["x", "y"])
