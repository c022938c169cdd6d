"""Evaluation scores of the training tasks: accuracy and macro-F1 of a classifier (accumulated
batch by batch), ROUGE of generated summaries.

Macro-F1 is the unweighted mean over classes of each class's F1 = 2 TP / (2 TP + FP + FN); it
gives a rare class the weight of a common one, which accuracy does not (a classifier that never
predicts the rarest of three classes can still score high accuracy). As scikit-learn's
``f1_score(average="macro")`` does, the mean runs over the classes that occur among the labels
or the predictions: a class absent from both has no F1 to average.

ROUGE (Lin 2004, "ROUGE: A Package for Automatic Evaluation of Summaries") is computed by
Google's ``rouge-score`` package, the reference implementation in Python, with its Porter
stemmer on: the mean F-measure over the examples of ROUGE-1 (words), ROUGE-2 (word pairs) and
ROUGE-L (longest common subsequence).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "ROUGE_TYPES",
    "ClassificationScore",
    "confusion_matrix",
    "macro_f1",
    "macro_f1_of",
    "rouge",
]

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def confusion_matrix(predictions: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Counts (num_classes, num_classes), int64: row = true label, column = predicted label.

    ValueError for shapes that differ or a class outside ``[0, num_classes)``."""
    predictions, labels = torch.as_tensor(predictions), torch.as_tensor(labels)
    if predictions.shape != labels.shape:
        raise ValueError(
            f"predictions: expected the shape of labels {tuple(labels.shape)}, got "
            f"{tuple(predictions.shape)}"
        )
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes: expected an int >= 1, got {num_classes!r}")
    predictions, labels = predictions.reshape(-1).long().cpu(), labels.reshape(-1).long().cpu()
    for name, values in (("predictions", predictions), ("labels", labels)):
        if values.numel() and not (int(values.min()) >= 0 and int(values.max()) < num_classes):
            raise ValueError(
                f"{name}: expected classes in [0, {num_classes}), got values from "
                f"{int(values.min())} to {int(values.max())}"
            )
    flat = labels * num_classes + predictions
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def macro_f1_of(confusion: Tensor) -> float:
    """Macro-F1 of a confusion matrix (rows true, columns predicted); 0.0 when it is empty."""
    confusion = confusion.double()
    tp = confusion.diagonal()
    fp = confusion.sum(0) - tp  # predicted as the class, truly another
    fn = confusion.sum(1) - tp  # truly the class, predicted as another
    denominator = 2 * tp + fp + fn
    present = denominator > 0  # in the labels or the predictions
    if not bool(present.any()):
        return 0.0
    return float((2 * tp[present] / denominator[present]).mean())


def macro_f1(predictions: Tensor, labels: Tensor, num_classes: int | None = None) -> float:
    """The mean per-class F1 of ``predictions`` against ``labels`` (integer classes), over the
    classes present in either (module docstring); ``num_classes`` defaults to the largest class
    seen plus one."""
    predictions, labels = torch.as_tensor(predictions), torch.as_tensor(labels)
    if num_classes is None:
        seen = torch.cat([predictions.reshape(-1), labels.reshape(-1)])
        num_classes = int(seen.max()) + 1 if seen.numel() else 1
    return macro_f1_of(confusion_matrix(predictions, labels, num_classes))


class ClassificationScore:
    """Loss, accuracy and macro-F1 of a classifier over evaluation batches: ``add`` each batch's
    logits (B, num_classes), labels (B,) and mean loss, then ``result()``. ``num_classes``
    defaults to the width of the first logits."""

    def __init__(self, num_classes: int | None = None) -> None:
        self.num_classes = num_classes
        self.confusion: Tensor | None = None
        self.loss_sum = 0.0

    def add(self, logits: Tensor, labels: Tensor, loss: Tensor | float) -> None:
        if self.num_classes is None:
            self.num_classes = int(logits.shape[-1])
        counts = confusion_matrix(logits.argmax(-1), labels, self.num_classes)
        self.confusion = counts if self.confusion is None else self.confusion + counts
        self.loss_sum += float(loss) * labels.numel()

    @property
    def seen(self) -> int:
        return 0 if self.confusion is None else int(self.confusion.sum())

    def result(self) -> dict[str, float]:
        """``{"val_loss", "accuracy", "macro_f1"}``; ValueError before any example was added."""
        if not self.seen:
            raise ValueError("ClassificationScore: expected evaluated examples, got none")
        right = int(self.confusion.diagonal().sum())
        return {
            "val_loss": self.loss_sum / self.seen,
            "accuracy": right / self.seen,
            "macro_f1": macro_f1_of(self.confusion),
        }


def rouge(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1, ROUGE-2 and ROUGE-L F-measures (``{"rouge1", "rouge2", "rougeL"}``, each in
    [0, 1]) of ``hypotheses`` against ``references``, one reference per hypothesis; needs the
    ``rouge-score`` package (``pip install 'attnlab[data]'``)."""
    if len(hypotheses) != len(references):
        raise ValueError(
            f"hypotheses: expected one per reference ({len(references)}), got {len(hypotheses)}"
        )
    if not references:
        raise ValueError("references: expected at least one reference to score, got none")
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise ValueError(
            "rouge: scoring summaries needs the rouge-score package "
            "(pip install rouge-score, or pip install 'attnlab[data]')"
        ) from None
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for hypothesis, reference in zip(hypotheses, references, strict=True):
        scores = scorer.score(reference, hypothesis)  # (target, prediction)
        for name in ROUGE_TYPES:
            totals[name] += scores[name].fmeasure
    return {name: total / len(references) for name, total in totals.items()}
