"""Option values shared by several commands, checked so that mistakes become one-line errors."""

from __future__ import annotations

import torch


def parse_device(text: str) -> str:
    """A torch device string that exists on this machine; ValueError naming --device otherwise."""
    try:
        device = torch.device(text)
    except RuntimeError:
        raise ValueError(
            f"--device: expected a torch device such as cpu or cuda, got {text!r}"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device: {text!r} requested, but no CUDA device is available")
    return str(device)
