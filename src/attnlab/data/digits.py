"""The 1,797 handwritten digits of scikit-learn's ``load_digits`` (UCI optical recognition of
handwritten digits: 8x8 images, 16 grey levels, classes 0-9 with 174-183 images each), shipped
inside scikit-learn -- a small image set for ViT experiments on a CPU.

Shapes: N images, 1 channel, 8x8 pixels. Split them with
:func:`attnlab.data.split.stratified_split` (the split every data set of the package uses)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["digits"]


def digits() -> tuple[Tensor, Tensor]:
    """``(images, labels)``: images float32 (1797, 1, 8, 8) scaled from 0-16 to [0, 1], labels
    int64 (1797,) in 0-9, in scikit-learn's order. Raises ValueError when scikit-learn is not
    installed."""
    try:
        from sklearn.datasets import load_digits  # imported here: only this data set needs it
    except ImportError as exc:
        raise ValueError(
            f"digits: expected scikit-learn, which ships the images, got ImportError ({exc}); "
            "install it with `pip install scikit-learn`"
        ) from None
    data = load_digits()
    images = torch.as_tensor(data.images, dtype=torch.float32).div_(16.0).unsqueeze(1)  # (N,1,8,8)
    labels = torch.as_tensor(data.target, dtype=torch.int64)  # (N,)
    return images, labels
