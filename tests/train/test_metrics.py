"""Macro-F1 against a hand-computed example and scikit-learn, its accumulation over batches, and
ROUGE of the rouge-score package on examples worked by hand."""

from __future__ import annotations

import pytest
import torch
from sklearn.metrics import f1_score

from attnlab.train.metrics import (
    ClassificationScore,
    confusion_matrix,
    macro_f1,
    rouge,
)


def test_macro_f1_by_hand():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    predictions = torch.tensor([0, 1, 1, 1, 2, 0])
    # class 0: TP 1, FP 1, FN 1 -> 2/4; class 1: TP 2, FP 1, FN 0 -> 4/5;
    # class 2: TP 1, FP 0, FN 1 -> 2/3
    expected = (2 / 4 + 4 / 5 + 2 / 3) / 3
    assert macro_f1(predictions, labels, 3) == pytest.approx(expected)
    assert confusion_matrix(predictions, labels, 3).tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    # Accuracy would call this classifier as good as one that is never right about class 2.
    assert macro_f1(torch.tensor([0, 0, 1, 1, 1, 1]), labels, 3) == pytest.approx(
        (1 + 2 / 3 + 0) / 3
    )


@pytest.mark.parametrize("seed", range(8))
def test_macro_f1_matches_scikit_learn(seed):
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(1, 60, (1,), generator=g))
    # Labels in 0..3 and predictions in 0..4 of 6 classes: class 4 is only ever predicted
    # (F1 0) and class 5 never seen (not averaged), as scikit-learn's default does.
    labels = torch.randint(0, 4, (n,), generator=g)
    predictions = torch.where(
        torch.rand(n, generator=g) < 0.6, labels, torch.randint(0, 5, (n,), generator=g)
    )
    ours = macro_f1(predictions, labels, 6)
    theirs = f1_score(labels.numpy(), predictions.numpy(), average="macro", zero_division=0)
    assert ours == pytest.approx(theirs, abs=1e-12)
    assert macro_f1(predictions, labels) == pytest.approx(theirs, abs=1e-12)


def test_classification_score_accumulates_batches():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 3, generator=g)
    labels = torch.randint(0, 3, (50,), generator=g)
    score, inferred = ClassificationScore(3), ClassificationScore()  # 3 classes from logits
    for start, end, loss in ((0, 20, 1.0), (20, 45, 2.0), (45, 50, 4.0)):
        score.add(logits[start:end], labels[start:end], loss)
        inferred.add(logits[start:end], labels[start:end], loss)
    result = score.result()
    assert inferred.result() == result
    predictions = logits.argmax(-1)
    assert result["accuracy"] == pytest.approx(float((predictions == labels).float().mean()))
    assert result["macro_f1"] == pytest.approx(
        f1_score(labels.numpy(), predictions.numpy(), average="macro")
    )
    assert result["val_loss"] == pytest.approx((20 * 1.0 + 25 * 2.0 + 5 * 4.0) / 50)
    with pytest.raises(ValueError, match="expected evaluated examples, got none"):
        ClassificationScore(3).result()


def test_bad_classes_are_refused():
    with pytest.raises(ValueError, match=r"^predictions: expected the shape of labels \(3,\)"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 1, 1]), 2)
    with pytest.raises(ValueError, match=r"^labels: expected classes in \[0, 2\), got .* to 2"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 2]), 2)
    with pytest.raises(ValueError, match=r"^num_classes: expected an int >= 1"):
        confusion_matrix(torch.tensor([0]), torch.tensor([0]), 0)


def test_rouge_by_hand():
    reference = "Shares fell sharply in early trading"
    # Stemmed words: share fall in earli trade against share fell sharpli in earli trade.
    # ROUGE-1: 4 shared of 5 and 6 -> F = 2 * 4 / 11; ROUGE-2: "in earli", "earli trade" of 4
    # and 5 bigrams -> F = 2 * 2 / 9; ROUGE-L: longest common subsequence 4 -> as ROUGE-1.
    scores = rouge(["Shares fall in early trading"], [reference])
    assert scores == pytest.approx({"rouge1": 8 / 11, "rouge2": 4 / 9, "rougeL": 8 / 11})
    # The mean over examples: an exact headline scores 1, a disjoint one 0.
    both = rouge([reference, "Cup final tonight"], [reference, "Markets rally"])
    assert both == pytest.approx({"rouge1": 0.5, "rouge2": 0.5, "rougeL": 0.5})
    assert rouge([""], [reference]) == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}


def test_rouge_refuses_unpaired_input():
    with pytest.raises(ValueError, match=r"^hypotheses: expected one per reference \(2\), got 1"):
        rouge(["a"], ["a", "b"])
    with pytest.raises(ValueError, match=r"^references: expected at least one"):
        rouge([], [])
