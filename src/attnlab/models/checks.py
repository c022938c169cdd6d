"""Field checks the model configs share: sizes are ints in a sane range, rates and epsilons are
finite numbers, switches are booleans. Errors name the field, what was expected and what was
given (``"max_len: expected a positive int, got 2.5"``)."""

from __future__ import annotations

import math

# No tensor dimension, vocabulary or sequence length of a real model comes near 2**31: beyond it
# int32 indices overflow, and such a number in a configuration is a corrupt or hostile file.
MAX_SIZE = 2**31 - 1


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_sizes(config, *names: str, minimum: int = 1) -> None:
    """Each field in ``names`` is an int in [minimum, MAX_SIZE] (None is skipped: a default
    that ``__post_init__`` fills in)."""
    for name in names:
        value = getattr(config, name)
        if value is None:
            continue
        if not _is_int(value) or value < minimum:
            kind = "a positive int" if minimum == 1 else f"an int >= {minimum}"
            raise ValueError(f"{name}: expected {kind}, got {value!r}")
        if value > MAX_SIZE:
            raise ValueError(f"{name}: expected at most {MAX_SIZE} (2**31 - 1), got {value}")


def check_numbers(
    config, *names: str, low: float = 0.0, high: float = math.inf, positive: bool = False
) -> None:
    """Each field in ``names`` is a finite int or float in [low, high] (> low with
    ``positive``)."""
    for name in names:
        value = getattr(config, name)
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not (number and math.isfinite(value) and low <= value <= high) or (
            positive and value == low
        ):
            lower = f"> {low}" if positive else f">= {low}"
            upper = "" if math.isinf(high) else f" and <= {high}"
            raise ValueError(f"{name}: expected a finite number {lower}{upper}, got {value!r}")


def check_flags(config, *names: str) -> None:
    """Each field in ``names`` is a bool (a string such as "false" would read as true)."""
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, bool):
            raise ValueError(f"{name}: expected true or false, got {value!r}")


def check_choice(config, name: str, choices) -> None:
    """Field ``name`` is one of ``choices``."""
    value = getattr(config, name)
    if value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(choices)}, got {value!r}")
