"""Names chosen from a registry: did-you-mean errors shared by every package."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def closest(name: str, choices: list[str]) -> str:
    """' (did you mean X?)' for the nearest choice, or ''."""
    match = difflib.get_close_matches(name, choices, n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def unknown(field: str, what: str, name: object, choices: Iterable[str]) -> ValueError:
    """The error for a ``name`` that is not one of ``choices``: it names the field, suggests
    the closest choice and lists them all."""
    choices = list(choices)
    hint = closest(name, choices) if isinstance(name, str) else ""
    return ValueError(
        f"{field}: unknown {what} {name!r}{hint}; expected one of {', '.join(choices)}"
    )
