"""``quantize(model, mode)``: swap every ``nn.Linear`` of a model for a weight-only quantized one.

Applied from outside the model (as gpt-fast's ``quantize.py``): the model code never knows.
A Linear whose weight another module also holds (the GPT-2 output head tied to the token
embedding) stays in floating point: quantizing it would either change the embedding or store
the matrix a second time.
"""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase

from torch import nn

from attnlab.quantize.linear import Int4Linear, Int8Linear, _QuantizedLinear

MODES = ("int8", "int4")


def _shared_weights(model: nn.Module) -> set[int]:
    """ids of the Linear weights that a module other than a Linear holding them also holds."""
    holders: dict[int, set[int]] = {}
    for module in model.modules():
        for p in module._parameters.values():
            if p is not None:
                holders.setdefault(id(p), set()).add(id(module))
    return {pid for pid, mods in holders.items() if len(mods) > 1}


def _check_skip(skip: Iterable[str]) -> tuple[str, ...]:
    if isinstance(skip, str):
        skip = (skip,)
    try:
        patterns = tuple(skip)
    except TypeError:
        raise TypeError(
            f"skip: expected module name patterns (iterable of str), got {type(skip).__name__}"
        ) from None
    bad = [p for p in patterns if not isinstance(p, str)]
    if bad:
        raise TypeError(f"skip: expected str patterns, got {bad[0]!r}")
    return patterns


def quantize(
    model: nn.Module,
    mode: str,
    *,
    group_size: int | None = None,
    skip: Iterable[str] = (),
) -> nn.Module:
    """Quantize the weights of every ``nn.Linear`` in ``model``, in place; returns ``model``.

    Args:
        model: any module; its Linear layers (attention projections, MLPs, an untied output
            head) become :class:`Int8Linear` or :class:`Int4Linear`. A Linear sharing its
            weight with another module (a head tied to the embedding) is left as it is.
        mode: ``"int8"`` (one symmetric scale per output channel) or ``"int4"`` (a scale and a
            zero per group of ``group_size`` input columns).
        group_size: int4 only, default 128; must be an even divisor of every quantized layer's
            ``in_features`` (checked before anything changes).
        skip: ``fnmatch`` patterns of module names to leave in floating point, e.g.
            ``("head", "blocks.0.*")``.

    Raises:
        TypeError: ``model`` is itself an ``nn.Linear``, or ``skip`` is not patterns.
        ValueError: unknown ``mode``, a bad ``group_size``, or nothing to quantize (no Linear,
            every Linear skipped or tied, or the model already quantized).
    """
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {', '.join(MODES)}, got {mode!r}")
    if mode == "int8" and group_size is not None:
        raise ValueError(f"group_size: applies to mode='int4' only, got {group_size!r} for int8")
    if mode == "int4":
        group_size = 128 if group_size is None else group_size
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 2:
            raise ValueError(f"group_size: expected an even int >= 2, got {group_size!r}")
    patterns = _check_skip(skip)
    if isinstance(model, nn.Linear):
        raise TypeError(
            "model: expected a module holding nn.Linear layers, got a bare nn.Linear (it cannot "
            "be replaced in place; use Int8Linear.from_linear or Int4Linear.from_linear)"
        )

    shared = _shared_weights(model)
    targets: dict[str, nn.Linear] = {}
    found = already = 0
    for name, module in model.named_modules():
        if isinstance(module, _QuantizedLinear):
            already += 1
        if not isinstance(module, nn.Linear):
            continue
        found += 1
        if id(module.weight) in shared or any(fnmatchcase(name, p) for p in patterns):
            continue
        if mode == "int4" and (group_size % 2 or module.in_features % group_size):
            raise ValueError(
                f"group_size: expected an even divisor of in_features={module.in_features} "
                f"of {name!r}, got {group_size}"
            )
        targets[name] = module
    if not targets:
        if already:
            why = f"it is already quantized ({already} quantized layers, no Linear left to do)"
        elif found:
            why = f"all {found} nn.Linear layers are tied to another module or match skip"
        else:
            why = "it has no nn.Linear layers"
        raise ValueError(f"model: nothing to quantize, {why}")

    if mode == "int8":
        made = {id(m): Int8Linear.from_linear(m) for m in targets.values()}
    else:
        made = {id(m): Int4Linear.from_linear(m, group_size) for m in targets.values()}
    for parent in list(model.modules()):  # every parent once, so shared children too
        for child_name, child in list(parent._modules.items()):
            if child is not None and id(child) in made:
                setattr(parent, child_name, made[id(child)])
    return model
