"""Hook points: named places in a model where an activation can be read or replaced.

A module that has hook points lists them in its attribute ``POINTS`` and holds one
:class:`HookPoint` per name as ``hook_<name>``; its forward pass runs each activation through
its point (``q = self.hook_q(q)``). A point without hooks returns its input unchanged at the
cost of one attribute test, so a model nobody inspects runs as fast as one without points.
Hooks are added from outside (:mod:`attnlab.inspect`); the model never returns different types
depending on a flag.

The attention pattern is a point too (:class:`PatternPoint`), but a lazy one: the weights are
never computed unless a hook asks. Its hooks receive a :class:`attnlab.attention.weights.
PatternSource` (the call's prepared queries and keys, mask and bias) and compute from it only
the heads and rows they need, while the kernel itself (SDPA, flex, chunked) stays fused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

Hook = Callable[[Any, str], Any]


class Handle:
    """Removes one hook from its point; returned by :meth:`HookPoint.add`."""

    __slots__ = ("entry", "point")

    def __init__(self, point: HookPoint, entry: tuple) -> None:
        self.point, self.entry = point, entry

    def remove(self) -> None:
        if self.entry in self.point.fns:
            self.point.fns.remove(self.entry)


class HookPoint:
    """Identity on a tensor until hooks are added; then each ``fn(tensor, name)`` runs in the
    order added and may return a replacement (None keeps the tensor)."""

    __slots__ = ("fns",)

    def __init__(self) -> None:
        self.fns: list[tuple[Hook, str]] = []

    def add(self, fn: Hook, name: str) -> Handle:
        entry = (fn, name)
        self.fns.append(entry)
        return Handle(self, entry)

    def __call__(self, x: Tensor) -> Tensor:
        if not self.fns:
            return x
        for fn, name in tuple(self.fns):
            out = fn(x, name)
            if out is not None:
                _check_replacement(out, x, name)
                x = out
        return x

    def __repr__(self) -> str:
        return f"{type(self).__name__}(hooks={len(self.fns)})"

    # Points hold callables, not state: a copied model starts with no hooks.
    def __deepcopy__(self, memo) -> HookPoint:
        return type(self)()

    def __reduce__(self):
        return (type(self), ())


class PatternPoint(HookPoint):
    """The attention pattern of one attention module, computed only on demand.

    Two kinds of hook: ``add(fn, name)`` gets the dense weights (B, H, Tq, Tk) and may return
    a replacement pattern (the module then computes its output as ``pattern @ v`` eagerly, so
    gradients reach the pattern); ``add_source(fn, name)`` gets the lazy
    :class:`~attnlab.attention.weights.PatternSource` and returns nothing.
    """

    __slots__ = ("sources",)

    def __init__(self) -> None:
        super().__init__()
        self.sources: list[tuple[Hook, str]] = []

    @property
    def active(self) -> bool:
        return bool(self.fns or self.sources)

    def add_source(self, fn: Hook, name: str) -> Handle:
        entry = (fn, name)
        self.sources.append(entry)
        return _SourceHandle(self, entry)

    def fire(self, source) -> Tensor | None:
        """Run every hook on ``source``; returns a replacement pattern or None."""
        for fn, name in tuple(self.sources):
            fn(source, name)
        if not self.fns:
            return None
        pattern = source.weights()
        replaced = False
        for fn, name in tuple(self.fns):
            out = fn(pattern, name)
            if out is not None:
                _check_replacement(out, pattern, name)
                pattern, replaced = out, True
        return pattern if replaced else None


class _SourceHandle(Handle):
    __slots__ = ()

    def remove(self) -> None:
        if self.entry in self.point.sources:
            self.point.sources.remove(self.entry)


def _check_replacement(out: object, x: Tensor, name: str) -> None:
    if not isinstance(out, Tensor) or out.shape != x.shape:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"hook on {name!r}: expected None or a tensor of shape {tuple(x.shape)} to replace "
            f"the activation, got {got}"
        )


def points_of(module) -> dict[str, HookPoint]:
    """The hook points a module declares, by their short names."""
    return {name: getattr(module, f"hook_{name}") for name in getattr(module, "POINTS", ())}


def make_points(module, names: tuple[str, ...]) -> None:
    """Give ``module`` one fresh point per name (``pattern`` gets a :class:`PatternPoint`).

    Points are plain attributes, not submodules: they hold no state, leave ``state_dict`` and
    ``named_modules`` alone, and cost one attribute lookup when unused."""
    for name in names:
        point = PatternPoint() if name == "pattern" else HookPoint()
        object.__setattr__(module, f"hook_{name}", point)
