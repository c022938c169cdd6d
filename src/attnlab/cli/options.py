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


def parse_indices(text: str | None, option: str) -> list[int] | None:
    """``"0,2,5"`` or ``"0-3"`` (or a mix) as a list of ints; None stays None. ValueError naming
    ``option`` otherwise."""
    if text is None:
        return None
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part[1:]:
                low, high = part.split("-", 1) if not part.startswith("-") else (part, "")
                out.extend(range(int(low), int(high) + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise ValueError(
                f"{option}: expected indices such as 0,2,5 or 0-3, got {text!r}"
            ) from None
    if len(set(out)) != len(out):
        raise ValueError(f"{option}: expected each index once, got {text!r}")
    return out


def encode_text(tokenizer, text: str, option: str, source: str, source_option: str) -> list[int]:
    """Token ids of ``text`` given with ``option``; ValueError naming the option when the source
    has no tokenizer, the text does not encode, or it gives no token."""
    if tokenizer is None:
        raise ValueError(f"{source_option}: {source} has no tokenizer to turn {option} into ids")
    try:
        ids = tokenizer.encode(text)
    except ValueError as exc:
        raise ValueError(f"{option}: {str(exc).removeprefix('text: ')}") from None
    if not ids:
        raise ValueError(f"{option}: expected text that gives at least one token, got nothing")
    return ids
