"""Headline and body of an article file (edge cases included), and a train/test split that never
puts an article, or a version of its story, on both sides."""

from __future__ import annotations

import re

import pytest

from attnlab.data.headlines import Article, Headlines, split_headline

BODY = "The first paragraph of the article.\n\nA second paragraph, after a blank line.\n"


def test_headline_is_the_first_line_and_the_body_the_rest():
    assert split_headline("Markets rally\n\n" + BODY) == (
        "Markets rally",
        "The first paragraph of the article. A second paragraph, after a blank line.",
    )
    # Blank lines (and spaces) before the headline, Windows line ends, no blank line after it.
    text = "\n  \n  Markets   rally \r\nLine one\r\n\r\n\r\nLine  two\r\n"
    assert split_headline(text) == ("Markets rally", "Line one Line two")


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "got an empty article"),
        (" \n\n\t\n", "got an empty article"),
        (
            "Only a title",
            "expected a body after the headline 'Only a title', got only the headline",
        ),
        ("\nOnly a title\n\n  \n", "got only the headline"),
    ],
)
def test_an_article_without_a_headline_or_body_is_refused(text, message):
    with pytest.raises(ValueError, match=f"^news/1.txt: .*{re.escape(message)}"):
        split_headline(text, "news/1.txt")


def _write(folder, name, text):
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_folder_reading_drops_repeats_and_refuses_a_title_only_file(tmp_path):
    _write(tmp_path, "b/2.txt", "Rates held\n\nThe bank held rates.")
    _write(tmp_path, "a/1.txt", "Rates held\n\nThe   bank held rates.\n")  # a repeat of b/2
    _write(tmp_path, "a/3.txt", "Cup final\n\nThe final was won.")
    _write(tmp_path, "a/notes.md", "not an article")
    articles = Headlines.from_folder(tmp_path)
    assert [(a.headline, a.body) for a in articles.articles] == [
        ("Rates held", "The bank held rates."),
        ("Cup final", "The final was won."),
    ]
    assert articles.articles[0].source == str(tmp_path / "a/1.txt")  # sorted by path, first kept
    bad = _write(tmp_path, "c/4.txt", "Just a title\n")
    with pytest.raises(ValueError, match=f"^{re.escape(str(bad))}: expected a body"):
        Headlines.from_folder(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        ValueError, match=r"^dataset: expected \.txt articles under .*empty, got none"
    ):
        Headlines.from_folder(tmp_path / "empty")
    with pytest.raises(
        ValueError, match=r"^dataset: expected a folder of \.txt articles, got .*nowhere"
    ):
        Headlines.from_folder(tmp_path / "nowhere")


def _story(i: int) -> str:
    return " ".join(f"story{i}word{j}" for j in range(30))


def test_versions_of_a_story_are_one_story():
    articles = [
        Article("Bank holds rates", _story(0)),
        Article("Rates held at 4.75%", _story(0)),  # new headline over the same body
        Article("Bank holds rates!", _story(1)),  # same headline words over another body
        Article("Cup final won", _story(2) + " later news"),  # same opening, longer body
        Article("Final goes to extra time", _story(2)),
        Article("Unrelated", _story(3)),
    ]
    assert Headlines(articles).stories() == [0, 0, 0, 1, 1, 2]


def test_split_keeps_stories_on_one_side_and_is_deterministic():
    articles = []
    for i in range(40):
        articles.append(Article(f"Headline {i}", _story(i)))
        if i % 3 == 0:
            articles.append(Article(f"Updated headline {i}", _story(i)))
    data = Headlines(articles)
    train, test = data.split(0.25, seed=0)
    assert len(train) + len(test) == len(data) and len(test) > 0
    assert not set(train.sources) & set(test.sources)
    again = data.split(0.25, seed=0)
    assert again[0].pairs == train.pairs and again[1].pairs == test.pairs
    assert data.split(0.25, seed=1)[1].pairs != test.pairs
    with pytest.raises(ValueError, match="expected at least 2 distinct stories"):
        Headlines(articles[:1]).split()


def _normal(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.casefold()))


def test_packaged_bbc_split_holds_out_every_article():
    data = Headlines.bbc_news()
    assert len(data) == 2125  # 2,225 files, 100 exact repeats
    train, test = data.split(0.1, seed=0)
    assert len(train) + len(test) == len(data)
    assert 180 <= len(test) <= 260
    for key in (
        lambda p: _normal(p[1]),  # headline
        lambda p: _normal(p[0]),  # body
        lambda p: " ".join(_normal(p[0]).split()[:20]),  # body opening
    ):
        assert not {key(p) for p in train.pairs} & {key(p) for p in test.pairs}
    assert Headlines.bbc_news().split(0.1, seed=0)[1].pairs == test.pairs
