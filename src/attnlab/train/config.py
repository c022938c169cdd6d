"""Training configuration: one dataclass, named presets, and ``key=value`` overrides.

Every field can be overridden from the command line as ``key=value``; the value is parsed as the
field's type (ints, floats, booleans, strings, or ``none`` for optional fields), and an unknown
key is refused with the closest valid name. Fields of the model's own config are reached with a
``model.`` prefix (``model.n_layer=6``) and checked against that config class.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from attnlab.models.presets import closest

TASKS = ("lm", "mlm", "classify", "translate", "vit")


@dataclass
class TrainConfig:
    # what to train
    task: str = "lm"  # "lm", "mlm" (BERT MLM + NSP), "classify", "translate" or "vit"
    model: str = "gpt2"  # model preset (see `attnlab info`) the run starts from
    model_overrides: dict[str, Any] = field(default_factory=dict)  # model.KEY=VALUE fields
    init_from: str | None = None  # checkpoint (HF directory, GGUF, "minilm") to fine-tune
    # data
    corpus: str = "shakespeare"  # "shakespeare", "kjv", a text file or a folder (lm, mlm)
    dataset: str = "bbc-news"  # classify: bbc-news, sentiment, a folder or CSV; translate:
    # chichewa-english or a TSV file of sentence pairs
    tokenizer: str = "char"  # "char", "bpe" (trained on the corpus) or a tokenizer path
    vocab_size: int = 4096  # BPE vocabulary trained for tokenizer="bpe"
    val_fraction: float = 0.1  # share of the corpus held out (lm), or of examples (others)
    cache_dir: str = ".cache/attnlab"  # tokenised corpora, keyed by corpus and tokenizer
    # optimisation
    batch_size: int = 12  # sequences per optimiser step (per micro-batch with grad_accum)
    block_size: int = 64  # tokens per sequence
    grad_accum: int = 1  # micro-batches per optimiser step
    max_steps: int = 2000  # optimiser steps
    lr: float = 1e-3  # peak learning rate
    min_lr: float = 1e-4  # learning rate at the end of the cosine decay
    warmup_steps: int = 100  # linear warm-up steps
    weight_decay: float = 0.1  # AdamW decay, on matrices only (not biases, norms, embeddings)
    beta1: float = 0.9  # AdamW beta1
    beta2: float = 0.99  # AdamW beta2
    grad_clip: float = 1.0  # clip the global gradient norm to this (0 = off)
    dropout: float | None = None  # overrides the model's dropout when set
    # runtime
    device: str = "auto"  # "auto" (CUDA when present), "cpu", "cuda", "cuda:1"
    precision: str = "auto"  # "auto" (bf16 autocast on CUDA that supports it), "fp32", "bf16"
    compile: bool = False  # torch.compile the model
    backend: str = "auto"  # attention backend
    threads: int = 0  # CPU threads for torch (0 = torch's default)
    seed: int = 1337  # initialisation, data order and dropout
    # evaluation, checkpoints, logging
    eval_every: int = 250  # steps between evaluations (and checkpoints)
    eval_batches: int = 20  # batches per evaluation (0 = the whole validation set)
    eval_batch_size: int = 0  # sequences per evaluation batch (0 = batch_size)
    keep_last: int = 2  # checkpoints kept besides the best
    log_every: int = 10  # steps between metric lines
    out_dir: str = "runs/default"  # where checkpoints, metrics and plots go
    time_budget: float | None = None  # seconds; the schedule is fitted to end within it
    sample_length: int = 500  # characters/tokens sampled at the end of an LM run
    prompt: str = "\n"  # prompt of the final sample

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(
                f"task: expected one of {', '.join(TASKS)}, got {self.task!r}"
                f"{closest(self.task, list(TASKS))}"
            )
        for name in ("batch_size", "block_size", "grad_accum", "max_steps", "eval_every"):
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {value}")
        for name in (
            "warmup_steps",
            "eval_batches",
            "eval_batch_size",
            "keep_last",
            "threads",
            "sample_length",
        ):
            value = getattr(self, name)
            if value < 0:
                raise ValueError(f"{name}: expected an int >= 0, got {value}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction: expected a float in [0, 1), got {self.val_fraction}")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ValueError(
                f"lr, min_lr: expected 0 <= min_lr <= lr and lr > 0, got lr={self.lr}, "
                f"min_lr={self.min_lr}"
            )
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision: expected auto, fp32 or bf16, got {self.precision!r}")
        if self.time_budget is not None and self.time_budget <= 0:
            raise ValueError(f"time_budget: expected seconds > 0, got {self.time_budget}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PRESETS: dict[str, dict[str, Any]] = {
    # Character-level Shakespeare: nanoGPT's CPU model (4 layers, 4 heads, 128 wide, block 64,
    # no biases or dropout) with batch 16 and a 4x higher learning rate over a 1000-step cosine
    # schedule, which reaches validation loss 1.89 in ~0.6x the time of nanoGPT's own recipe
    # (batch 12, lr 1e-3 over 2000 steps; see benchmarks/train.py).
    "shakespeare-char": {
        "task": "lm",
        "model": "gpt2",
        "model_overrides": {
            "n_layer": 4,
            "n_head": 4,
            "dim": 128,
            "max_len": 64,
            "dropout": 0.0,
            "bias": False,
            "mlp": "gelu",
        },
        "corpus": "shakespeare",
        "tokenizer": "char",
        "batch_size": 16,
        "block_size": 64,
        "max_steps": 1000,
        "lr": 4e-3,
        "min_lr": 4e-4,
        "warmup_steps": 50,
        "eval_every": 200,
        "out_dir": "runs/shakespeare-char",
    },
    # Byte-level BPE trained on the same text.
    "shakespeare-bpe": {
        "task": "lm",
        "model": "gpt2",
        "model_overrides": {"n_layer": 6, "n_head": 6, "dim": 192, "max_len": 128, "dropout": 0.1},
        "corpus": "shakespeare",
        "tokenizer": "bpe",
        "vocab_size": 4096,
        "batch_size": 16,
        "block_size": 128,
        "max_steps": 3000,
        "lr": 1e-3,
        "out_dir": "runs/shakespeare-bpe",
    },
    # BERT pre-training from scratch (masked LM + next sentence) on the KJV Bible.
    "bert-pretrain": {
        "task": "mlm",
        "model": "bert-base",
        "model_overrides": {
            "n_layer": 4,
            "n_head": 4,
            "dim": 256,
            "hidden": 1024,
            "max_len": 128,
            "head": "pretrain",
        },
        "corpus": "kjv",
        "tokenizer": "minilm",
        "batch_size": 16,
        "block_size": 128,
        "max_steps": 3000,
        "lr": 5e-4,
        "weight_decay": 0.01,
        "out_dir": "runs/bert-pretrain",
    },
    # Fine-tune the packaged all-MiniLM-L6-v2 on BBC News (5 topics).
    "news-classify": {
        "task": "classify",
        "model": "minilm-l6",
        "init_from": "minilm",
        "dataset": "bbc-news",
        "tokenizer": "minilm",
        "val_fraction": 0.2,
        "batch_size": 16,
        "block_size": 128,
        "max_steps": 300,
        "lr": 1e-4,
        "min_lr": 1e-5,
        "warmup_steps": 20,
        "weight_decay": 0.01,
        "eval_every": 100,
        "eval_batches": 0,
        "out_dir": "runs/news-classify",
    },
    # The original Transformer, small, on Chichewa -> English Bible verses.
    "translate": {
        "task": "translate",
        "model": "transformer-base",
        "dataset": "chichewa-english",
        "model_overrides": {
            "n_layer": 3,
            "n_head": 4,
            "dim": 256,
            "hidden": 1024,
            "max_len": 128,
            "dropout": 0.1,
        },
        "tokenizer": "bpe",
        "vocab_size": 8000,
        "val_fraction": 0.02,
        "batch_size": 32,
        "block_size": 64,
        "max_steps": 4000,
        "lr": 7e-4,
        "warmup_steps": 400,
        "weight_decay": 0.01,
        "eval_every": 500,
        "out_dir": "runs/translate",
    },
    # A small ViT on scikit-learn's 8 x 8 digits.
    "vit-digits": {
        "task": "vit",
        "model": "vit-digits",
        "val_fraction": 0.2,
        "batch_size": 64,
        "max_steps": 3000,
        "lr": 2e-3,
        "warmup_steps": 100,
        "weight_decay": 0.05,
        "eval_every": 500,
        "eval_batches": 0,
        "out_dir": "runs/vit-digits",
    },
}


def preset(name: str) -> TrainConfig:
    """The training preset ``name``; ValueError with the closest name otherwise."""
    if name not in PRESETS:
        raise ValueError(
            f"preset: unknown training preset {name!r}{closest(name, list(PRESETS))}; "
            f"expected one of {', '.join(PRESETS)}"
        )
    return TrainConfig(**PRESETS[name])


def parse_value(text: str, annotation, key: str) -> Any:
    """``text`` converted to the type ``annotation`` (int, float, bool, str, or a union)."""
    kind = annotation
    args = typing.get_args(kind)
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        if type(None) in args and text.lower() in ("none", "null"):
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for option in inner:
            try:
                return parse_value(text, option, key)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(errors[0])
    if kind is bool:
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{key}: expected a boolean (true/false), got {text!r}")
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{key}: expected an int, got {text!r}") from None
    if kind is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{key}: expected a float, got {text!r}") from None
    if kind is str:
        return text
    raise ValueError(f"{key}: cannot be set from the command line (type {kind})")


def apply_overrides(
    config: TrainConfig, overrides: list[str], model_config_cls=None
) -> TrainConfig:
    """``config`` with ``key=value`` strings applied; ``model.key=value`` goes to
    ``model_overrides`` (checked against ``model_config_cls`` when given)."""
    values = config.to_dict()
    train_fields = typing.get_type_hints(TrainConfig)
    settable = [k for k in train_fields if k != "model_overrides"]
    model_fields = None
    if model_config_cls is not None:
        hints = typing.get_type_hints(model_config_cls)
        model_fields = {f.name: hints[f.name] for f in dataclasses.fields(model_config_cls)}
    model_overrides = dict(values["model_overrides"])
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip().removeprefix("--").replace("-", "_")
        if not sep or not key:
            raise ValueError(f"override: expected key=value, got {item!r}")
        if key.startswith("model."):
            name = key.removeprefix("model.")
            if model_fields is not None and name not in model_fields:
                raise ValueError(
                    f"{key}: not a field of the model config{closest(name, list(model_fields))}"
                )
            kind = model_fields[name] if model_fields is not None else str
            model_overrides[name] = parse_value(text, kind, key)
        elif key in settable:
            values[key] = parse_value(text, train_fields[key], key)
        else:
            if model_fields and key in model_fields:
                hint = f" (did you mean 'model.{key}'? model fields take a model. prefix)"
            else:
                hint = closest(key, settable)
            raise ValueError(f"{key}: not a training setting{hint}")
    values["model_overrides"] = model_overrides
    return TrainConfig(**values)
