"""One deterministic, stratified train/test split for every labelled data set of the package.

Text classification, sentence pairs (one class) and the digit images all split through
:func:`stratified_split`, so "seed 0, 20 % test" means the same thing everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["stratified_split"]


def stratified_split(
    labels: Sequence[int] | np.ndarray | torch.Tensor | None,
    test_fraction: float = 0.2,
    seed: int = 0,
    *,
    n: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, test)`` (int64 arrays) that put ``test_fraction`` of every class in test.

    Each class of ``n_c`` examples sends ``round(n_c * test_fraction)`` of them to test, but at
    least one and at most ``n_c - 1`` when ``n_c >= 2``, so both sides see every class that can be
    split (a class of one example stays in train; labels whose classes all hold one example would
    leave test empty, a ValueError). Within a class, which examples go where is a permutation
    drawn from ``seed``; both index arrays come back shuffled by the same seed (a trainer that
    forgets to shuffle still sees the classes mixed). ``labels=None`` with ``n`` items is a plain
    random split.

    Same labels, fraction and seed -> the same indices, on every machine (NumPy's PCG64).
    """
    if isinstance(test_fraction, bool) or not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction: expected a number in (0, 1), got {test_fraction!r}")
    if labels is None:
        if n is None or n < 0:
            raise ValueError(f"n: expected the number of items when labels is None, got {n!r}")
        y = np.zeros(n, dtype=np.int64)
    else:
        y = labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
        if y.ndim != 1:
            raise ValueError(f"labels: expected a 1-D sequence, got shape {y.shape}")
    if len(y) < 2:
        raise ValueError(f"labels: expected at least 2 items to split, got {len(y)}")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for cls in np.unique(y):  # sorted, so the draws happen in a fixed order
        members = rng.permutation(np.flatnonzero(y == cls))
        k = round(len(members) * float(test_fraction))
        if len(members) >= 2:
            k = min(max(k, 1), len(members) - 1)
        test.append(members[:k])
        train.append(members[k:])
    if not any(len(t) for t in test):
        raise ValueError(
            f"labels: expected a class with at least 2 items, got {len(y)} classes of one item "
            "each, which would leave the test split empty"
        )
    train_idx = rng.permutation(np.concatenate(train)).astype(np.int64)
    test_idx = rng.permutation(np.concatenate(test)).astype(np.int64)
    return train_idx, test_idx
