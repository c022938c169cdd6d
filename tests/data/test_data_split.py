"""attnlab.data.split: the one stratified split."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from attnlab.data import stratified_split


def test_stratified_per_class_and_deterministic():
    labels = [0] * 50 + [1] * 30 + [2] * 20
    train, test = stratified_split(labels, 0.2, seed=0)
    assert train.dtype == np.int64 and test.dtype == np.int64
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(100))
    y = np.array(labels)
    assert np.bincount(y[test]).tolist() == [10, 6, 4]
    again = stratified_split(labels, 0.2, seed=0)
    assert np.array_equal(again[0], train) and np.array_equal(again[1], test)
    other = stratified_split(labels, 0.2, seed=1)
    assert not np.array_equal(np.sort(other[1]), np.sort(test))


def test_small_classes_keep_one_on_each_side_and_tensors_work():
    train, test = stratified_split(torch.tensor([0, 0, 1, 1, 1, 1, 1, 1, 1, 7]), 0.1)
    y = np.array([0, 0, 1, 1, 1, 1, 1, 1, 1, 7])
    assert set(y[test]) == {0, 1} and set(y[train]) == {0, 1, 7}  # a single 7 stays in train


def test_unlabelled_split():
    train, test = stratified_split(None, 0.25, seed=3, n=8)
    assert len(test) == 2 and len(train) == 6


@given(st.lists(st.integers(0, 4), min_size=2, max_size=60), st.floats(0.05, 0.95), st.integers())
def test_split_is_a_partition(labels, fraction, seed):
    assume(len(set(labels)) < len(labels))  # a class of 2 or more; else see the test below
    train, test = stratified_split(labels, fraction, seed=seed % 2**32)
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(len(labels)))
    assert len(test) > 0 and len(train) > 0


def test_classes_of_one_item_each_would_leave_test_empty():
    expected = (
        r"^labels: expected a class with at least 2 items, got 3 classes of one item each, "
        r"which would leave the test split empty"
    )
    with pytest.raises(ValueError, match=expected):
        stratified_split([4, 0, 2], 0.5)


def test_errors():
    with pytest.raises(ValueError, match=r"^test_fraction: expected a number in \(0, 1\), got 1"):
        stratified_split([0, 1], 1)
    with pytest.raises(ValueError, match=r"^n: expected the number of items"):
        stratified_split(None, 0.2)
    with pytest.raises(ValueError, match=r"^labels: expected at least 2 items to split, got 1"):
        stratified_split([3], 0.2)
    with pytest.raises(ValueError, match=r"^labels: expected a 1-D sequence"):
        stratified_split([[0, 1]], 0.2)
