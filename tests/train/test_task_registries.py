"""Tasks, tokenizer kinds and each family's default task are registries: one table each, looked
up by name or model class, with errors that name the setting and the closest valid name."""

from __future__ import annotations

import pytest
from cli_helpers import one_line_error
from click.testing import CliRunner
from torch import nn

from attnlab.cli.main import cli
from attnlab.models import BERT, GPT, EncoderDecoder, ViT, from_preset
from attnlab.train import config as train_config
from attnlab.train.config import NAMED, TASK_SETTINGS, TrainConfig
from attnlab.train.tasks import (
    DEFAULT_TASKS,
    TASKS,
    TOKENIZERS,
    Seq2SeqTask,
    SummarizeTask,
    TranslateTask,
    default_task,
    make_tokenizer,
)


def test_one_task_registry_and_its_settings_table_agree():
    assert list(TASKS) == list(TASK_SETTINGS)
    assert not hasattr(train_config, "TASKS")  # the task names are defined once, in tasks.py
    assert {"summarize", "translate"} <= set(TASKS)
    for task in (TranslateTask, SummarizeTask):  # one seq2seq code path: data and scores differ
        assert issubclass(task, Seq2SeqTask)
        assert set(vars(task)) & {"__init__", "_encode", "evaluate"} == set()
    assert NAMED["tokenizer"] == frozenset(TOKENIZERS)
    assert set(DEFAULT_TASKS.values()) <= set(TASKS)


def test_unknown_tokenizer_names_the_setting_and_the_closest_kind(tmp_path):
    config = TrainConfig(tokenizer="bpee")
    with pytest.raises(ValueError, match=r"^tokenizer: expected char, bpe, minilm, gpt2 or the "):
        make_tokenizer(config, "some text")
    with pytest.raises(ValueError, match=r"got 'bpee' \(did you mean 'bpe'\?\)$"):
        make_tokenizer(config, "some text")
    result = CliRunner().invoke(
        cli, ["train", "--preset", "news-headline", "tokenizer=chr", "--out", tmp_path / "run"]
    )
    one_line_error(result, "tokenizer:", "'chr'", "did you mean 'char'?")


def test_tokenizer_kinds_build_from_the_registry():
    config = TrainConfig(tokenizer="char")
    assert make_tokenizer(config, "abcab").vocab_size == 3
    bpe = make_tokenizer(TrainConfig(tokenizer="bpe", vocab_size=300), "hello world " * 20)
    assert bpe.token_to_id("<|endoftext|>") == 0
    specials = ("<pad>", "<s>", "</s>")
    bpe = make_tokenizer(
        TrainConfig(tokenizer="bpe", vocab_size=300), "hello world " * 20, special_tokens=specials
    )
    assert [bpe.token_to_id(t) for t in specials] == [0, 1, 2]
    # A kind that learns from the run's text, for a task with none: the setting is named.
    with pytest.raises(ValueError, match=r"^tokenizer: 'char' learns its vocabulary from the "):
        make_tokenizer(TrainConfig(task="classify", tokenizer="char"), None)


class Subclassed(GPT):
    pass


def test_default_task_is_looked_up_by_model_class():
    tiny = {"n_layer": 1, "n_head": 2, "dim": 32}
    gpt = from_preset("gpt2", **tiny, vocab_size=10, max_len=8)
    assert default_task(gpt) == "lm"
    assert default_task(Subclassed(gpt.config)) == "lm"  # a subclass is of its family
    assert default_task(from_preset("bert-base", **tiny, hidden=64, vocab_size=10)) == "mlm"
    classifier = from_preset("bert-base", **tiny, hidden=64, vocab_size=10, head="classify")
    assert default_task(classifier) == "classify"
    seq2seq = from_preset("transformer-base", **tiny, hidden=64, vocab_size=10)
    assert default_task(seq2seq) == "translate"
    assert list(DEFAULT_TASKS) == [GPT, BERT, EncoderDecoder, ViT]
    with pytest.raises(TypeError, match=r"^model: expected a model of a family \(GPT, BERT, "):
        default_task(nn.Linear(2, 2))


def test_source_length_is_a_setting_of_the_seq2seq_tasks_only(tmp_path):
    result = CliRunner().invoke(
        cli, ["train", "--preset", "shakespeare-char", "source_length=64", "--out", tmp_path]
    )
    one_line_error(result, "source_length: not used by task 'lm'", "summarize", "translate")
    with pytest.raises(ValueError, match=r"^source_length: expected an int >= 1 or none, got 0"):
        TrainConfig(task="summarize", source_length=0)


def test_a_pretrained_encoder_fine_tunes_into_another_attention_kind():
    """Fine-tuning the packaged MiniLM with Linformer attention or sinks: the encoder's weights
    load, and only what the kind adds (projections, sink logits) and the head start fresh."""
    import dataclasses

    import torch

    from attnlab.convert import load_hf
    from attnlab.train import tasks

    base = load_hf(tasks.minilm_dir())
    for overrides in ({"attention": "linformer", "rank": 16}, {"attention": "performer"}):
        config = dataclasses.replace(
            train_config.preset("news-classify"), model_overrides=overrides
        )
        model = tasks._classifier(config, None, ["a", "b"])
        assert model.config.attention == overrides["attention"]
        mine, theirs = model.state_dict(), base.state_dict()
        for name in ("blocks.0.attn.q_proj.weight", "tok.weight", "blocks.5.mlp.down.weight"):
            assert torch.equal(mine[name], theirs[name]), name
