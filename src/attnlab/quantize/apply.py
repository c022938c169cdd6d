"""``quantize(model, mode)``: swap every ``nn.Linear`` of a model for a weight-only quantized one.

Applied from outside the model (as gpt-fast's ``quantize.py``): the model code never knows.
An output head tied to the token embedding (GPT-2, SmolLM2) becomes int8 with one scale per
output channel whatever the mode, and the embedding a
:class:`~attnlab.quantize.tied.TiedEmbedding` that looks its rows up in the head's codes: the
matrix stays stored once. It is the largest matrix a decode step reads (GPT-2: 38.6M of 124M
parameters), so it is quantized, yet kept at 8 bits, as llama.cpp keeps its 4-bit files' token
embedding and output at 8 bits or more: errors in it reach every token's input and every
logit. Per channel is what PyTorch's int8 kernel takes. A Linear whose weight any other kind
of module also holds stays in floating point.
"""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase

import torch
from torch import nn

from attnlab.quantize.linear import Int4Linear, Int8Linear, _QuantizedLinear, check_group_size
from attnlab.quantize.tied import TiedEmbedding

MODES = ("int8", "int4")
LAYERS = {"int8": Int8Linear, "int4": Int4Linear}
DEFAULT_GROUP_SIZE = {"int8": None, "int4": 128}  # int8: one scale per output channel


def check_quantize(quantize, group_size, *, choices: tuple[str, ...] = MODES) -> None:
    """ValueError naming ``quantize`` or ``group_size`` unless they are a valid pair of loading
    options: ``quantize`` None or one of ``choices``; ``group_size`` None, or a positive int
    (even for int4) with ``quantize`` "int8" or "int4". Whether it divides each layer's width
    is checked where the layers are known."""
    if quantize is not None and quantize not in choices:
        raise ValueError(
            f"quantize: expected one of {', '.join(map(repr, choices))} or None, got {quantize!r}"
        )
    if group_size is None:
        return
    if quantize not in ("int8", "int4"):
        raise ValueError(
            f"group_size: applies with quantize='int8' or 'int4' only, got group_size="
            f"{group_size!r} with quantize={quantize!r}"
        )
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size: expected a positive int or None, got {group_size!r}")
    if quantize == "int4" and group_size % 2:
        raise ValueError(f"group_size: expected an even int for int4, got {group_size}")


def _holders(model: nn.Module) -> dict[int, list[tuple[str, nn.Module]]]:
    """id of each parameter -> the (name, module) pairs holding it."""
    holders: dict[int, list[tuple[str, nn.Module]]] = {}
    for name, module in model.named_modules():
        for p in module._parameters.values():
            if p is not None:
                holders.setdefault(id(p), []).append((name, module))
    return holders


def tied_embedding(holders: dict, linear: nn.Linear) -> str | None:
    """The name of the one ``nn.Embedding`` sharing ``linear``'s weight (a tied output head),
    or None when no other module, or another kind of module, holds it."""
    others = [(n, m) for n, m in holders.get(id(linear.weight), []) if m is not linear]
    if len(others) == 1 and type(others[0][1]) is nn.Embedding:
        return others[0][0]
    return None


def replace_tied(model: nn.Module, made: dict[int, nn.Module], embeddings: dict[int, str]) -> None:
    """:func:`replace` the Linear layers by ``made``; then each embedding named in
    ``embeddings`` (id of its tied Linear -> name) by a :class:`TiedEmbedding` over the layer
    made for that Linear."""
    tied = {}
    modules = dict(model.named_modules())
    for linear_id, name in embeddings.items():
        tied[id(modules[name])] = TiedEmbedding(made[linear_id])
    replace(model, {**made, **tied})


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
        model: any module; its Linear layers (attention projections, MLPs, the output head)
            become :class:`Int8Linear` or :class:`Int4Linear`; a head tied to the embedding
            int8 per channel in either mode, and the embedding a :class:`TiedEmbedding` over
            its codes. A Linear sharing its weight with another kind of module is left as it
            is.
        mode: ``"int8"`` (symmetric scales, one per output channel unless ``group_size`` is
            given) or ``"int4"`` (a scale and a zero per group of ``group_size`` input columns).
        group_size: columns sharing a scale. int4: default 128, an even divisor of every
            quantized layer's ``in_features``; int8: default None (per output channel), else a
            divisor of every ``in_features`` (group-wise int8 has no PyTorch kernel: it
            dequantizes then multiplies). Checked before anything changes.
        skip: ``fnmatch`` patterns of module names to leave in floating point, e.g.
            ``("head", "blocks.0.*")``.

    Raises:
        TypeError: ``model`` is itself an ``nn.Linear``, or ``skip`` is not patterns.
        ValueError: unknown ``mode``, a bad ``group_size``, or nothing to quantize (no Linear,
            every Linear skipped or tied, or the model already quantized).
    """
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {', '.join(MODES)}, got {mode!r}")
    group_size = DEFAULT_GROUP_SIZE[mode] if group_size is None else group_size
    if group_size is not None and (
        isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1
    ):
        raise ValueError(f"group_size: expected a positive int or None, got {group_size!r}")
    patterns = _check_skip(skip)
    if isinstance(model, nn.Linear):
        raise TypeError(
            "model: expected a module holding nn.Linear layers, got a bare nn.Linear (it cannot "
            "be replaced in place; use Int8Linear.from_linear or Int4Linear.from_linear)"
        )

    holders = _holders(model)
    targets: dict[str, nn.Linear] = {}
    embeddings: dict[int, str] = {}  # id of a tied head -> its embedding's name
    found = already = 0
    for name, module in model.named_modules():
        if isinstance(module, _QuantizedLinear):
            already += 1
        if not isinstance(module, nn.Linear):
            continue
        found += 1
        if any(fnmatchcase(name, p) for p in patterns):
            continue
        if len(holders[id(module.weight)]) > 1:
            embedding = tied_embedding(holders, module)
            if embedding is None:
                continue
            embeddings[id(module)] = embedding
            targets[name] = module  # int8 per channel: no group size to check
            continue
        try:
            check_group_size(group_size, module.in_features, mode)
        except ValueError:
            even = "an even divisor" if mode == "int4" else "a divisor"
            raise ValueError(
                f"group_size: expected {even} of in_features={module.in_features} "
                f"of {name!r} for {mode}, got {group_size}"
            ) from None
        targets[name] = module
    if not targets:
        if already:
            why = f"it is already quantized ({already} quantized layers, no Linear left to do)"
        elif found:
            why = f"all {found} nn.Linear layers are shared with another module or match skip"
        else:
            why = "it has no nn.Linear layers"
        raise ValueError(f"model: nothing to quantize, {why}")

    layer = LAYERS[mode]
    made = {
        id(m): Int8Linear.from_linear(m)
        if id(m) in embeddings
        else layer.from_linear(m, group_size)
        for m in targets.values()
    }
    replace_tied(model, made, embeddings)
    return model


def replace(model: nn.Module, made: dict[int, nn.Module]) -> None:
    """Put ``made[id(child)]`` in place of every child module of ``model`` whose id is a key,
    under every name it has (a module shared by two parents is replaced in both)."""
    for parent in list(model.modules()):  # every parent once, so shared children too
        for child_name, child in list(parent._modules.items()):
            if child is not None and id(child) in made:
                setattr(parent, child_name, made[id(child)])


# -- describing a quantized model, and building its layers again ----------------------------------


def layout(model: nn.Module) -> dict[str, dict]:
    """How ``model`` is quantized: module name -> ``{"mode": "int8" | "int4", "group_size": G
    or None}`` for every quantized layer, with ``"embedding": name`` for a head whose tied
    embedding reads its codes; empty for a floating-point model. JSON-ready: saved
    with a run so that :func:`restore` builds the same layers before the weights are loaded."""
    tied = {id(m.head): name for name, m in model.named_modules() if isinstance(m, TiedEmbedding)}
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, _QuantizedLinear):
            out[name] = {"mode": m.mode, "group_size": m.group_size}
            if id(m) in tied:
                out[name]["embedding"] = tied[id(m)]
    return out


def restore(model: nn.Module, layers: dict, source: str = "quantization", device=None) -> nn.Module:
    """Swap the ``nn.Linear`` layers named in ``layers`` (as :func:`layout` gives) for empty
    quantized layers of the recorded mode and group size, in place, on ``device`` (default: each
    Linear's own, the ``meta`` device too), ready for ``load_state_dict``; returns ``model``.
    Nothing is quantized: the codes and scales are zeros until the state dict fills them.
    ValueError naming ``source`` for an entry that is not a Linear of the model or not a valid
    mode and size, checked before anything changes."""
    if not isinstance(layers, dict):
        raise ValueError(f"{source}: expected an object of layer name -> mode, got {layers!r:.80}")
    modules = dict(model.named_modules())
    holders = _holders(model)
    made, embeddings = {}, {}
    for name, entry in layers.items():
        linear = modules.get(name)
        if type(linear) is not nn.Linear:
            found = "nothing" if linear is None else type(linear).__name__
            raise ValueError(f"{source}: layer {name!r}: expected an nn.Linear, found {found}")
        mode = entry.get("mode") if isinstance(entry, dict) else None
        if mode not in MODES:
            raise ValueError(
                f"{source}: layer {name!r}: expected mode one of {', '.join(MODES)}, got "
                f"{entry!r:.80}"
            )
        group_size = entry.get("group_size")
        try:
            check_group_size(group_size, linear.in_features, mode)
        except ValueError as exc:
            raise ValueError(f"{source}: layer {name!r}: {exc}") from None
        if "embedding" in entry:
            embedding = entry["embedding"]
            if embedding != tied_embedding(holders, linear):
                raise ValueError(
                    f"{source}: layer {name!r}: expected {embedding!r:.80} to be an "
                    "nn.Embedding tied to it"
                )
            embeddings[id(linear)] = embedding
        made[id(linear)] = _empty(linear, mode, group_size, device or linear.weight.device)
    replace_tied(model, made, embeddings)
    return model


def _empty(linear: nn.Linear, mode: str, group_size: int | None, device) -> nn.Module:
    n, k = linear.out_features, linear.in_features
    bias = None if linear.bias is None else torch.zeros(n, device=device)
    if mode == "int8":
        scales = (n,) if group_size is None else (n, k // group_size)
        return Int8Linear.from_quantized(
            torch.zeros(n, k, dtype=torch.int8, device=device),
            torch.ones(scales, device=device),
            bias,
            group_size=group_size,
        )
    return Int4Linear.from_quantized(
        torch.zeros(n, k // 2, dtype=torch.uint8, device=device),
        torch.zeros(k // group_size, n, 2, device=device),
        bias,
        group_size=group_size,
    )
