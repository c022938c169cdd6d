"""The sentiment and news-headline presets run end to end from the command line on tiny settings
and record their scores; the classifier's macro-F1 is scikit-learn's on its own predictions."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from sklearn.metrics import f1_score

from attnlab.cli.main import cli
from attnlab.train.config import TrainConfig, preset
from attnlab.train.tasks import ClassifyTask, SummarizeTask

TINY_BERT = ["model.n_layer=1", "model.n_head=2", "model.dim=32", "model.hidden=64"]
TINY_SEQ2SEQ = [*TINY_BERT, "vocab_size=300", "block_size=8", "source_length=24"]
ROUGE = ("rouge1", "rouge2", "rougeL")


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _train(tmp_path, preset: str, *overrides: str):
    out = tmp_path / preset
    result = invoke(
        "train", "--preset", preset, "max_steps=3", "eval_every=3", "batch_size=2",
        "eval_batches=2", "--out", out, "--no-progress", *overrides,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return out, result, [r for r in records if r["split"] == "val"]


def test_sentiment_preset_records_accuracy_and_macro_f1(tmp_path):
    _, result, val = _train(tmp_path, "sentiment", "init_from=none", "block_size=16", *TINY_BERT)
    assert "0 negative, 1 neutral, 2 positive" in result.output
    assert [r["step"] for r in val] == [3]
    for name in ("accuracy", "macro_f1"):
        assert 0.0 <= val[0][name] <= 1.0, name
    assert "macro_f1" in result.output.splitlines()[-1]


def test_classify_macro_f1_is_that_of_the_predictions(tmp_path):
    """Every classify run (news-classify's CSV and folder data as much as sentiment) scores
    macro-F1 beside accuracy, both as scikit-learn computes them from the model's predictions
    on the test split."""
    rows = [(f"good {i}", "pos") for i in range(9)] + [(f"bad {i}", "neg") for i in range(9)]
    rows += [(f"meh {i}", "mid") for i in range(6)]
    data = tmp_path / "d.csv"
    data.write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in rows))
    config = TrainConfig(
        task="classify", model="bert-base", tokenizer="minilm", dataset=str(data),
        model_overrides={"n_layer": 1, "n_head": 2, "dim": 32, "hidden": 64},
        block_size=8, batch_size=4, val_fraction=0.5, eval_batches=0,
    )  # fmt: skip
    task = ClassifyTask(config)
    model = task.model.eval()
    with torch.no_grad():
        metrics = task.evaluate(model, torch.device("cpu"))
        batch = task._encode(task.test_set.texts)
        predictions = model(**batch).logits.argmax(-1).numpy()
    labels = task.test_set.labels
    assert metrics["accuracy"] == pytest.approx(float((predictions == labels).mean()))
    assert metrics["macro_f1"] == pytest.approx(f1_score(labels, predictions, average="macro"))


@pytest.fixture
def articles(tmp_path):
    """A folder of 16 made-up articles (the packaged BBC set, in small)."""
    folder = tmp_path / "articles"
    topics = ["markets", "football", "elections", "phones"]
    for i in range(16):
        topic = topics[i % 4]
        body = f"The {topic} story number {i} begins here. " + " ".join(
            f"{topic} item {i} detail {j}." for j in range(12)
        )
        path = folder / topic / f"{i:03}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{topic.title()} news {i} today\n\n{body}\n")
    return folder


def test_news_headline_reads_the_packaged_articles_by_story():
    train, test = SummarizeTask.splits(preset("news-headline"))
    assert len(train) + len(test) == 2125 and 180 <= len(test) <= 260
    assert not set(train.targets) & set(test.targets)
    assert not set(train.sources) & set(test.sources)


def test_news_headline_preset_records_rouge_of_beam_and_greedy_decoding(tmp_path, articles):
    out, result, val = _train(tmp_path, "news-headline", f"dataset={articles}", *TINY_SEQ2SEQ)
    assert "rougeL_greedy" in result.output.splitlines()[-1]
    assert [r["step"] for r in val] == [3]
    for name in ROUGE:
        for key in (name, f"{name}_greedy"):  # beam search (num_beams=4) and greedy
            assert 0.0 <= val[0][key] <= 1.0, key
    # A finished run is scored again with its own task, data split and tokenizer.
    scored = invoke("eval", "--checkpoint", out, "eval_batches=1")
    assert scored.exit_code == 0, scored.output
    assert set(ROUGE) <= set(json.loads(scored.output))


def test_headline_sources_are_cut_to_source_length(articles):
    config = TrainConfig(
        task="summarize", model="transformer-base", dataset=str(articles), tokenizer="bpe",
        vocab_size=300, block_size=5, source_length=16, batch_size=4, val_fraction=0.25,
        model_overrides={"n_layer": 1, "n_head": 2, "dim": 32, "hidden": 64},
    )  # fmt: skip
    task = SummarizeTask(config)
    assert len(task.train_set) == 12 and len(task.test_set) == 4
    batch = task.train_batch(torch.Generator())
    assert batch["input_ids"].shape == (4, 16)  # every body is longer than 16 tokens
    assert batch["labels"].shape[1] <= 5 and (batch["labels"] == task.eos_id).sum() == 4
    assert task.model.config.max_len == 17  # the context holds the longest source
