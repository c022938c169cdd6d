"""attnlab.data.digits: scikit-learn's 8x8 digits."""

from __future__ import annotations

import sys

import pytest
import torch

from attnlab.data import digits, stratified_split


def test_digits():
    images, labels = digits()
    assert images.shape == (1797, 1, 8, 8) and images.dtype == torch.float32
    assert labels.shape == (1797,) and labels.dtype == torch.int64
    assert images.min() == 0.0 and images.max() == 1.0
    assert sorted(labels.unique().tolist()) == list(range(10))
    assert labels.bincount().min() >= 174
    assert labels[:3].tolist() == [0, 1, 2]


def test_digits_split_with_the_shared_helper():
    images, labels = digits()
    train, test = stratified_split(labels, 0.2, seed=0)
    assert len(train) + len(test) == 1797
    counts = labels[torch.from_numpy(test)].bincount()
    full = labels.bincount()
    assert ((counts - (full * 0.2).round()).abs() <= 0).all()
    assert images[torch.from_numpy(train)].shape[1:] == (1, 8, 8)


def test_missing_scikit_learn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # makes the import fail
    with pytest.raises(
        ValueError, match=r"^digits: expected scikit-learn.*pip install scikit-learn"
    ):
        digits()
