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
    file.write_bytes(
        b'id,review,stars\n1,"Great, really",good\n2,bad caf\xc3\xa9,bad\n3,fine,good\n'
    )
    data = from_csv(file, text_column="review", label_column="stars")
    assert data.label_names == ["bad", "good"]  # sorted names, numbered in that order
    assert data.texts == ["Great, really", "bad caf\xe9", "fine"]
    assert data.labels == [1, 0, 1]
    assert data.source == str(file)
    file.write_bytes(b'text,label\n"two\r\nlines",a\n')  # a quoted line break stays as is
    assert from_csv(file).texts == ["two\r\nlines"]


def test_files_that_are_not_utf8_are_refused_unless_an_encoding_is_named(tmp_path):
    file = tmp_path / "data.csv"
    file.write_bytes(b"text,label\nok,good\nbad caf\xe9,bad\n")
    with pytest.raises(ValueError, match=r"^path: .*data\.csv is not valid UTF-8: byte e9 at byte "
                       r"offset 26 \(line 3, column 8\).*set encoding="):  # fmt: skip
        from_csv(file)
    assert from_csv(file, encoding="latin-1").texts == ["ok", "bad caf\xe9"]
    assert from_csv(file, errors="replace").texts == ["ok", "bad caf\ufffd"]  # only if asked
    (tmp_path / "folder" / "spam").mkdir(parents=True)
    (tmp_path / "folder" / "spam" / "a.txt").write_bytes(b"\xa315 off")
    with pytest.raises(ValueError, match=r"a\.txt is not valid UTF-8: byte a3 at byte offset 0"):
        from_folder(tmp_path / "folder")
    assert from_folder(tmp_path / "folder", encoding="cp1252").texts == ["\xa315 off"]
    bom = tmp_path / "bom.csv"  # Excel's "CSV UTF-8": the BOM must not become part of a name
    bom.write_bytes(b"\xef\xbb\xbftext,label\nhi,x\n")
    assert from_csv(bom).texts == ["hi"]


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


def _csv(tmp_path, rows: list[tuple[str, str]]):
    file = tmp_path / "tiny.csv"
    file.write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in rows))
    return file


def test_split_refuses_data_that_cannot_train_and_score_a_classifier(tmp_path):
    one_label = _csv(tmp_path, [(f"text {i}", "pos") for i in range(12)])
    with pytest.raises(ValueError) as e:
        from_csv(one_label).split()
    assert str(e.value).startswith(f"{one_label}: expected at least 2 labels to train a")
    assert "got 1: 'pos' (12 examples)" in str(e.value) and "accuracy 1.0" in str(e.value)
    singles = _csv(tmp_path, [("a", "pos"), ("b", "pos"), ("c", "neg"), ("d", "meh")])
    with pytest.raises(ValueError, match=r"tiny\.csv: expected at least 2 examples of every label "
                       r"\(one for training, one for testing\), got a single example of 'meh', "
                       r"'neg'"):  # fmt: skip
        from_csv(singles).split()
    two = _csv(tmp_path, [("a", "pos"), ("b", "neg")])
    with pytest.raises(ValueError, match=r"single example of 'neg', 'pos'"):
        from_csv(two).split()
    with pytest.raises(ValueError, match=r"^labels: expected at least 2 labels .*got 0;"):
        TextClassification([], [], ["x", "y"]).split()  # no source: the argument is named
    empty_label = _csv(tmp_path, [("a", "pos"), ("b", " ")])
    with pytest.raises(ValueError, match=r"line 3: expected a label in column 'label', got an"):
        from_csv(empty_label)


def test_smallest_splittable_set_has_every_label_on_both_sides(tmp_path):
    data = from_csv(_csv(tmp_path, [("a", "pos"), ("b", "neg"), ("c", "pos"), ("d", "neg")]))
    train, test = data.split(0.2)
    assert sorted(train.labels) == [0, 1] and sorted(test.labels) == [0, 1]
    assert train.source == test.source == data.source


def test_encode_texts_cuts_long_texts_to_max_len_ending_with_sep():
    from attnlab import tokenizers
    from attnlab.data.classify import encode_texts
    from attnlab.train.tasks import minilm_dir

    tok = tokenizers.load(minilm_dir())
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    batch = encode_texts(tok, ["one two three four five six seven", "one"], max_len=5)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape == mask.shape == (2, 5)
    assert ids[0].tolist() == [*tok.encode("one two three four")[:4], sep]
    assert ids[0, 0] == cls and mask[0].tolist() == [1] * 5
    assert ids[1, :3].tolist() == tok.encode("one") and mask[1].tolist() == [1, 1, 1, 0, 0]
    short = encode_texts(tok, ["one"], max_len=5)["input_ids"]
    assert short.tolist() == [tok.encode("one")]  # nothing to cut, nothing padded
    with pytest.raises(ValueError, match=r"^max_len: expected an int >= 1, got 0"):
        encode_texts(tok, ["one"], max_len=0)


def test_constructor_checks_labels():
    with pytest.raises(ValueError, match=r"^labels: expected one label per text \(2\), got 1"):
        TextClassification(["a", "b"], [0], ["x"])
    with pytest.raises(ValueError, match=r"^labels: expected labels in \[0, 2\) .*, got 2"):
        TextClassification(["a", "b"], [0, 2], ["x", "y"])
