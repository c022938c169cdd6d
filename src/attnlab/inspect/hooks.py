"""Named hook points of a model: finding them, hooking them, caching what flows through them.

Every attention module and every block declares its points (see
:mod:`attnlab.attention.points`); this module names them by path, like TransformerLens:
``blocks.3.attn.q``, ``blocks.3.resid_post``, and for the encoder-decoder
``encoder.blocks.0.attn.pattern`` or ``decoder.blocks.1.cross.z``.

* :func:`hooks` registers ``fn(tensor, name)`` on points for the duration of a ``with`` block;
  a hook that returns a tensor replaces the activation (ablation, activation patching).
* :func:`run_with_cache` runs the model once and returns its output and the activations.
* :func:`ablate_heads` zeroes (or mean-replaces) whole heads through their ``z`` points.

A point with no hook costs one attribute test, so a model nobody inspects runs at full speed.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager

import torch
from torch import Tensor, nn

from attnlab.attention.multihead import MultiHeadAttention
from attnlab.attention.points import HookPoint, PatternPoint, points_of
from attnlab.attention.weights import select
from attnlab.models.heads import attention_modules, canonical

Names = str | Sequence[str] | Callable[[str], bool] | None
# Dense attention patterns cached by run_with_cache, in bytes, before it refuses: 1 GiB. At
# long context a pattern is (B, H, T, T) per layer; attention_weights (some heads or rows) and
# head_stats (tile-wise statistics) are the bounded ways to look at it.
PATTERN_BUDGET = 1 << 30


def hook_points(model: nn.Module) -> dict[str, HookPoint]:
    """Every hook point of ``model`` by its full name, in forward order of the modules."""
    found: dict[str, HookPoint] = {}
    for path, module in model.named_modules():
        prefix = canonical(path)
        for short, point in points_of(module).items():
            found[f"{prefix}.{short}" if prefix else short] = point
    return found


def point_names(model: nn.Module) -> list[str]:
    """The names :func:`hooks` and :func:`run_with_cache` accept for ``model``."""
    return list(hook_points(model))


def resolve_layers(
    model: nn.Module, layers: int | str | Iterable[int | str] | None
) -> dict[int | str, tuple[str, MultiHeadAttention]]:
    """Layer keys -> (name, attention module).

    An int ``i`` is the self-attention of block ``i`` (models with one stack of ``blocks``);
    a string is an attention module's name, which the encoder-decoder needs
    (``encoder.blocks.0.attn``, ``decoder.blocks.0.attn``, ``decoder.blocks.0.cross``).
    ``None`` means every layer: ints for a single stack, names otherwise.
    """
    modules = attention_modules(model)
    if isinstance(model, MultiHeadAttention):
        by_index = [("", model)]
    else:
        by_index = [
            (f"blocks.{i}.attn", modules[f"blocks.{i}.attn"])
            for i in range(len(modules))
            if f"blocks.{i}.attn" in modules
        ]
    if layers is None:
        if by_index and len(by_index) == len(modules):
            return {i: pair for i, pair in enumerate(by_index)}
        return {name: (name, m) for name, m in modules.items()}
    if isinstance(layers, (int, str)):
        layers = [layers]
    out: dict[int | str, tuple[str, MultiHeadAttention]] = {}
    for key in layers:
        if isinstance(key, bool) or not isinstance(key, (int, str)):
            raise TypeError(
                f"layers: expected layer indices or attention module names, got "
                f"{type(key).__name__} {key!r}"
            )
        if isinstance(key, int):
            if not by_index:
                raise ValueError(
                    f"layers: this model has no single stack of blocks to index; name its "
                    f"attention modules instead: {', '.join(modules)}"
                )
            if not 0 <= key < len(by_index):
                raise ValueError(
                    f"layers: layer {key} is out of range; expected 0 <= layer < {len(by_index)}"
                )
            out[key] = by_index[key]
        else:
            if key not in modules:
                hint = _suggest(key, modules)
                raise ValueError(f"layers: unknown attention module {key!r}{hint}")
            out[key] = (key, modules[key])
    return out


def check_heads(heads, n: int, where: str) -> Tensor:
    """Head indices of one layer as a long tensor; ValueError names the layer."""
    try:
        return select(heads, n, "heads", "cpu")
    except ValueError:
        bad = [h for h in ([heads] if isinstance(heads, int) else list(heads)) if not -n <= h < n]
        raise ValueError(
            f"heads: head {bad[0]} is out of range; {where} has {n} heads (expected 0 <= head "
            f"< {n})"
        ) from None


def _suggest(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.5)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def match(model: nn.Module, names: Names, *, what: str = "names") -> dict[str, HookPoint]:
    """Points selected by exact names, globs (``blocks.*.attn.z``) or a predicate."""
    points = hook_points(model)
    if names is None:
        return points
    if callable(names):
        return {n: p for n, p in points.items() if names(n)}
    if isinstance(names, str):
        names = [names]
    chosen: dict[str, HookPoint] = {}
    for pattern in names:
        if not isinstance(pattern, str):
            raise TypeError(f"{what}: expected point names, got {type(pattern).__name__}")
        if any(c in pattern for c in "*?["):
            hits = fnmatch.filter(points, pattern)
            if not hits:
                raise ValueError(
                    f"{what}: {pattern!r} matches no hook point{_suggest(pattern, points)}"
                )
            chosen.update((n, points[n]) for n in hits)
        elif pattern in points:
            chosen[pattern] = points[pattern]
        else:
            raise ValueError(f"{what}: unknown hook point {pattern!r}{_suggest(pattern, points)}")
    return chosen


@contextmanager
def hooks(model: nn.Module, fns: Mapping[str, Callable]) -> Iterator[nn.Module]:
    """Register ``fn(tensor, name)`` on each named point (exact names or globs) while inside
    the ``with`` block. A hook returning a tensor of the same shape replaces the activation;
    on a ``pattern`` point the module then computes its output from the replaced weights."""
    with ExitStack() as stack:
        for key, fn in fns.items():
            if not callable(fn):
                got = type(fn).__name__
                raise TypeError(f"hooks: the hook for {key!r} is a {got}, not callable")
            for name, point in match(model, [key], what="hooks").items():
                stack.callback(point.add(fn, name).remove)
        yield model


class ActivationCache(dict):
    """What :func:`run_with_cache` captured: point name -> tensor; unknown names get a
    did-you-mean error."""

    def __missing__(self, key):
        raise KeyError(f"{key!r} is not in the cache{_suggest(str(key), self)}")


def run_with_cache(
    model: nn.Module,
    *inputs,
    names: Names = None,
    detach: bool = True,
    max_pattern_bytes: int = PATTERN_BUDGET,
    **kwargs,
):
    """Run ``model(*inputs, **kwargs)`` once and return ``(output, cache)``.

    Args:
        names: which points to keep: None (all), a list of names or globs, or a predicate on
            names. ``pattern`` points hold dense weights (B, H, Tq, Tk), recomputed from the
            call's queries and keys while the backend runs as configured.
        detach: store detached tensors (default); False keeps them in the autograd graph.
        max_pattern_bytes: ValueError before dense patterns would exceed this many bytes
            in all; use :func:`attnlab.inspect.attention_weights` (some heads or rows) or
            :func:`attnlab.inspect.head_stats` for long inputs.
    """
    chosen = match(model, names)
    cache = ActivationCache()
    used = [0]

    def keep(x: Tensor, name: str) -> None:
        cache[name] = x.detach() if detach else x

    def keep_pattern(source, name: str) -> None:
        need = source.nbytes()
        if used[0] + need > max_pattern_bytes:
            b, h, tq, tk = source.shape
            raise ValueError(
                f"names: the pattern {name!r} (B, H, Tq, Tk) = {(b, h, tq, tk)} needs "
                f"{need:,} bytes, over max_pattern_bytes={max_pattern_bytes:,} with what "
                f"is already cached; ask attention_weights() for some heads or rows, or "
                f"head_stats() for per-head statistics"
            )
        used[0] += need
        with torch.set_grad_enabled(torch.is_grad_enabled() and not detach):
            keep(source.weights(), name)

    with ExitStack() as stack:
        for name, point in chosen.items():
            if isinstance(point, PatternPoint):
                stack.callback(point.add_source(keep_pattern, name).remove)
            else:
                stack.callback(point.add(keep, name).remove)
        output = model(*inputs, **kwargs)
    ordered = ActivationCache((n, cache[n]) for n in chosen if n in cache)
    return output, ordered


@contextmanager
def ablate_heads(
    model: nn.Module, heads: Mapping[int | str, int | Sequence[int]], mode: str = "zero"
) -> Iterator[nn.Module]:
    """Remove heads' contributions while inside the ``with`` block, through their ``z`` points.

    Args:
        heads: layer (int or attention module name, see :func:`resolve_layers`) -> head
            indices.
        mode: "zero" sets the heads' outputs to 0 (equal to pruning them); "mean" replaces each
            head's output by its mean over the batch and positions of the call.
    """
    if mode not in ("zero", "mean"):
        raise ValueError(f"mode: expected 'zero' or 'mean', got {mode!r}")
    if not isinstance(heads, Mapping):
        raise TypeError(f"heads: expected a dict layer -> head indices, got {type(heads).__name__}")
    fns = {}
    for key, (name, attn) in resolve_layers(model, list(heads)).items():
        idx = check_heads(heads[key], attn.n_heads, f"layer {key!r}")
        fns[f"{name}.z" if name else "z"] = _ablation(idx, mode)
    with hooks(model, fns):
        yield model


def _ablation(idx: Tensor, mode: str) -> Callable:
    def ablate(z: Tensor, name: str) -> Tensor:  # z (B, H, T, Dh)
        z = z.clone()
        i = idx.to(z.device)
        if mode == "zero":
            z[:, i] = 0
        else:
            z[:, i] = z[:, i].mean(dim=(0, 2), keepdim=True).expand_as(z[:, i])
        return z

    return ablate
