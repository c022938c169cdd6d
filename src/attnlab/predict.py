"""Labels and probabilities for texts from a trained sequence classifier (a BERT with
``head="classify"``, as ``attnlab train --preset news-classify`` leaves it).

Texts are encoded in batches as in training (:func:`attnlab.data.classify.encode_texts`): a text
longer than the model's ``max_len`` tokens is cut to ``max_len``, still ending with ``[SEP]``.
Class names come from the model's config (``BertConfig.labels``, by label index); a model whose
classes were never named reports transformers' placeholders ``LABEL_0``, ``LABEL_1``, ...
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from attnlab.data.classify import encode_texts
from attnlab.models import BERT

__all__ = ["Prediction", "check_classifier", "iter_predict", "label_names", "predict"]


@dataclass
class Prediction:
    """The classifier's answer for one text.

    Attributes:
        text: the text as given (before truncation).
        label: the most probable class name.
        probability: its softmax probability.
        probabilities: every class name -> its probability, in label order.
    """

    text: str
    label: str
    probability: float
    probabilities: dict[str, float]


def check_classifier(model: nn.Module, source: object = "model") -> None:
    """ValueError naming ``source`` unless ``model`` is a BERT sequence classifier."""
    if isinstance(model, BERT) and model.config.head == "classify":
        return
    if isinstance(model, BERT):
        got = f"a BERT with head={model.config.head!r}"
    else:
        got = f"a {type(model).__name__}"
    raise ValueError(
        f"{source}: expected a classification model (BERT with head='classify'), got {got}"
    )


def label_names(model: nn.Module) -> list[str]:
    """The class names of a classifier, by label index (``LABEL_i`` where it has none)."""
    config = model.config
    return list(config.labels or [f"LABEL_{i}" for i in range(config.num_labels)])


def iter_predict(
    model: nn.Module, tokenizer, texts: Sequence[str], *, batch_size: int = 32
) -> Iterator[Prediction]:
    """One :class:`Prediction` per text of ``texts``, in order, computed ``batch_size`` texts
    at a time on the model's device (yielded batch by batch, so output can stream)."""
    check_classifier(model)
    if isinstance(texts, str):
        raise TypeError("texts: expected a sequence of str, got one str")
    if batch_size < 1:
        raise ValueError(f"batch_size: expected an int >= 1, got {batch_size}")
    names = label_names(model)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(texts), batch_size):
            chunk = list(texts[start : start + batch_size])
            batch = encode_texts(tokenizer, chunk, model.config.max_len)
            with torch.inference_mode():
                logits = model(**{k: v.to(device) for k, v in batch.items()}).logits  # (B, L)
            probs = logits.float().softmax(-1).cpu()
            best = probs.argmax(-1).tolist()
            for text, row, i in zip(chunk, probs.tolist(), best, strict=True):
                yield Prediction(text, names[i], row[i], dict(zip(names, row, strict=True)))
    finally:
        model.train(was_training)


def predict(
    model: nn.Module, tokenizer, texts: Sequence[str], *, batch_size: int = 32
) -> list[Prediction]:
    """:func:`iter_predict` as a list."""
    return list(iter_predict(model, tokenizer, texts, batch_size=batch_size))
