"""Runs refuse bad data and settings before training starts (one line, exit 2, no run directory
left behind), and a classifier keeps its class names from the data to its checkpoints."""

from __future__ import annotations

import json

import pytest
from cli_helpers import one_line_error as _one_line_error
from click.testing import CliRunner

from attnlab.cli.main import cli
from attnlab.train import checkpoint
from attnlab.train.config import TrainConfig
from attnlab.train.tasks import ClassifyTask, LMTask

TINY_BERT = ["model.n_layer=1", "model.n_head=2", "model.dim=32", "model.hidden=64"]
POSITIVE = ["great film", "loved it", "wonderful acting", "a joy", "superb", "brilliant"]
NEGATIVE = ["awful film", "hated it", "boring plot", "a mess", "terrible", "dull"]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _write_csv(path, rows, header="text,label"):
    path.write_text(header + "\n" + "".join(f"{t},{y}\n" for t, y in rows))
    return path


@pytest.fixture
def reviews(tmp_path):
    """12 rows, 2 labels, in columns review/stars."""
    rows = [r for p, n in zip(POSITIVE, NEGATIVE, strict=True) for r in ((p, "pos"), (n, "neg"))]
    return _write_csv(tmp_path / "reviews.csv", rows, header="review,stars")


def _classify(tmp_path, dataset, *extra):
    return invoke(
        "train", "--preset", "news-classify", f"dataset={dataset}", "init_from=none",
        *TINY_BERT, "block_size=16", "batch_size=4", "max_steps=2", "eval_every=2",
        "--out", tmp_path / "run", "--no-progress", *extra,
    )  # fmt: skip


def test_prompt_outside_a_character_vocabulary_fails_before_training(tiny_lm, tmp_path):
    corpus = tmp_path / "one_line.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog " * 60)  # no "\n" anywhere
    run = tmp_path / "run"
    base = ["train", "--preset", "shakespeare-char", *tiny_lm, f"corpus={corpus}", "--out", run]
    line = _one_line_error(
        invoke(*base, "max_steps=4"),
        "prompt: character '\\n' is not in the vocabulary of 27 characters of corpus",
        "set prompt= to text made of the corpus's characters (for example prompt=the)",
    )
    assert str(corpus) in line
    assert not run.exists()  # refused before any training or run directory
    _one_line_error(invoke(*base, "prompt=ZZ\t"), "characters 'Z', '\\t' are not in")
    # Without a final sample the prompt is not used, so it is not checked.
    assert invoke(*base, "max_steps=2", "sample_length=0").exit_code == 0


def test_empty_prompt_samples_from_the_first_token(tiny_lm, tmp_path):
    result = invoke(
        "train", "--preset", "shakespeare-char", *tiny_lm, "max_steps=2", "prompt=",
        "--out", tmp_path / "run", "--no-progress",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert len((tmp_path / "run" / "sample.txt").read_text()) == 20


def test_corpus_that_is_not_utf8_fails_before_training(tiny_lm, tmp_path):
    corpus = tmp_path / "latin1.txt"
    corpus.write_bytes("caf\xe9 au lait\n".encode("latin-1") * 300)
    run = tmp_path / "run"
    _one_line_error(
        invoke("train", "--preset", "shakespeare-char", *tiny_lm, f"corpus={corpus}", "--out", run),
        f"corpus: {corpus} is not valid UTF-8: byte e9 at byte offset 3 (line 1, column 4)",
        "set encoding=",
    )
    assert not run.exists()
    config = TrainConfig(corpus=str(corpus), cache_dir=str(tmp_path / "cache"), sample_length=0)
    config.encoding = "latin-1"  # the setting, until TrainConfig declares it
    assert "\xe9" in LMTask(config).tokenizer.chars


def test_degenerate_classification_data_is_refused_before_a_run_exists(tmp_path):
    two = _write_csv(tmp_path / "two.csv", [("hello there", "pos"), ("awful", "neg")])
    _one_line_error(
        _classify(tmp_path, two),
        f"{two}: expected at least 2 examples of every label",
        "got a single example of 'neg', 'pos'",
    )
    one = _write_csv(tmp_path / "one.csv", [(t, "pos") for t in POSITIVE])
    _one_line_error(_classify(tmp_path, one), "expected at least 2 labels", "accuracy 1.0")
    assert not (tmp_path / "run").exists()


def test_columns_and_encoding_are_settings(reviews, tmp_path):
    reviews.write_bytes(reviews.read_bytes().replace(b"a joy", b"\xe0 joy"))  # Latin-1 "à"
    config = TrainConfig(
        task="classify", model="bert-base", tokenizer="minilm", dataset=str(reviews),
        model_overrides={"n_layer": 1, "n_head": 2, "dim": 32, "hidden": 64}, block_size=16,
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"reviews\.csv is not valid UTF-8: byte e0 at byte"):
        ClassifyTask(config)
    config.encoding = "latin-1"  # these three settings as attributes, until TrainConfig has them
    with pytest.raises(ValueError, match=r"^text_column: expected a column of .*got 'text'"):
        ClassifyTask(config)
    config.text_column, config.label_column = "review", "stars"
    task = ClassifyTask(config)
    assert "\xe0 joy" in task.train_set.texts + task.test_set.texts
    assert task.model.config.labels == ["neg", "pos"] and task.model.config.num_labels == 2
    assert task.summary.startswith("labels (sorted by name, by index): 0 neg, 1 pos; 10 training")
    task.test_set = task.test_set.subset([])  # evaluate never divides by an empty test set
    with pytest.raises(ValueError, match=r"^dataset: the test split of .* is empty"):
        task.evaluate(task.model, "cpu")


def test_a_classify_run_keeps_its_label_names(tmp_path):
    rows = [(t, "pos") for t in POSITIVE] + [(t, "neg") for t in NEGATIVE]
    rows += [("so so", "meh"), ("fine i guess", "meh"), ("okay", "meh")]
    data = _write_csv(tmp_path / "three.csv", rows)
    result = _classify(tmp_path, data)
    assert result.exit_code == 0, result.output
    assert "labels (sorted by name, by index): 0 meh, 1 neg, 2 pos;" in result.output
    run = tmp_path / "run"
    saved = json.loads((run / "config.json").read_text())
    assert saved["config"]["labels"] == ["meh", "neg", "pos"]
    model = checkpoint.load_model(run)
    assert model.config.labels == ["meh", "neg", "pos"] and model.config.num_labels == 3
    scored = invoke("eval", "--checkpoint", run)
    assert scored.exit_code == 0, scored.output
    assert 0.0 <= json.loads(scored.output)["accuracy"] <= 1.0


def test_checkpoints_from_before_a_config_field_existed_still_load(tmp_path):
    rows = [r for p, n in zip(POSITIVE, NEGATIVE, strict=True) for r in ((p, "pos"), (n, "neg"))]
    result = _classify(tmp_path, _write_csv(tmp_path / "d.csv", rows))
    assert result.exit_code == 0, result.output
    ckpt = checkpoint.latest(tmp_path / "run")
    meta = json.loads((ckpt / "meta.json").read_text())
    del meta["config"]["labels"]  # as written before BertConfig had the field
    (ckpt / "meta.json").write_text(json.dumps(meta))
    assert checkpoint.load_model(ckpt).config.labels is None
