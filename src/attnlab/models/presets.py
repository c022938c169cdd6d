"""Named configurations shared by the model families: lookup with did-you-mean errors."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from attnlab.names import closest

__all__ = ["build", "closest"]

C = TypeVar("C")


def build(config_cls: type[C], presets: dict[str, dict[str, Any]], name: str, overrides) -> C:
    """``config_cls(**presets[name], **overrides)``; ValueError naming an unknown preset or key."""
    if name not in presets:
        raise ValueError(
            f"preset: unknown preset {name!r}{closest(name, list(presets))}; "
            f"expected one of {', '.join(presets)}"
        )
    fields = [f.name for f in dataclasses.fields(config_cls) if f.init]
    for key in overrides:
        if key not in fields:
            raise ValueError(f"{key}: not a field of {config_cls.__name__}{closest(key, fields)}")
    return config_cls(**{**presets[name], **overrides})
