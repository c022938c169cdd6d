"""Filling a freshly built model from a converted state dict, strictly: every tensor used, every
parameter filled, every shape right; errors name the checkpoint file and the tensor.

A checkpoint's configuration is never trusted to size anything by itself: before a key map
walks its layers or a model is allocated, :func:`check_config_sizes` compares the layer counts
and widths the configuration states with the tensors the file holds (names and shapes only, read
from the headers), and :func:`build_model` compares every shape against a model built on the
``meta`` device, which allocates nothing."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

Shapes = Mapping[str, tuple[int, ...]]


def in_file_terms(message: str, keys: Mapping[str, str], stated: Mapping) -> str:
    """An attnlab config error (``"dim: expected a multiple of n_head=4, got 30"``) in the
    checkpoint's own terms (``"hidden_size=30: expected a multiple of num_attention_heads=4,
    got 30"``), through ``keys`` (attnlab field -> the file's key)."""
    message = message.removeprefix("config.json: ")
    field, sep, rest = message.partition(": ")
    if not sep or field not in keys:
        return message
    pattern = r"\b(" + "|".join(re.escape(f) for f in keys) + r")="
    rest = re.sub(pattern, lambda m: keys[m.group(1)] + "=", rest)
    key = keys[field]
    return f"{key}={stated[key]!r:.80}: {rest}" if stated.get(key) is not None else f"{key}: {rest}"


def _stated(stated: Mapping, key: str, used) -> str:
    """``key=value`` as the file states it, or the default the converter used."""
    if stated.get(key) is not None:
        return f"{key}={stated[key]!r:.80}"
    return f"{key} (not set, so {used!r})"


def check_config_sizes(
    config,
    shapes: Shapes,
    *,
    fields: Mapping[str, str],
    stated: Mapping,
    layers: Mapping[str, str],
    sizes: Sequence[tuple[str, tuple[str, ...], int]],
    config_source: str,
    weights_source: str,
) -> None:
    """ValueError unless the layer counts and widths of ``config`` agree with ``shapes``.

    Args:
        config: the attnlab config converted from the file.
        shapes: tensor name -> shape, as stored in the checkpoint.
        fields: attnlab config field -> the file's own key for it (errors use the file's key).
        stated: the file's configuration (key -> value), to quote what it says.
        layers: file key of a layer count -> regular expression whose first group is the layer
            index in a tensor name; the count must equal the number of indices present, and the
            indices must be 0 .. count - 1.
        sizes: (file key, candidate tensor names, axis): the first candidate present must have
            the configured size along ``axis``; absent tensors are left for the key map to
            report.
        config_source, weights_source: the files named in errors.
    """
    field_of = {key: field for field, key in fields.items()}
    for key, pattern in layers.items():
        want = getattr(config, field_of[key])
        regex = re.compile(pattern)
        found = {int(m.group(1)) for name in shapes if (m := regex.match(name))}
        if want != len(found) or found != set(range(len(found))):
            listed = sorted(found)
            detail = "" if found == set(range(len(found))) else f" (indices {listed[:8]})"
            layers = "layer" if len(found) == 1 else "layers"
            raise ValueError(
                f"{config_source}: {_stated(stated, key, want)}, but {weights_source} holds "
                f"{len(found)} {layers}{detail}"
            )
    for key, names, axis in sizes:
        name = next((n for n in names if n in shapes), None)
        if name is None:
            continue
        want, shape = getattr(config, field_of[key]), shapes[name]
        if len(shape) <= axis or shape[axis] != want:
            raise ValueError(
                f"{config_source}: {_stated(stated, key, want)}, but {weights_source} holds "
                f"{name} with shape {tuple(shape)}"
            )


def check_state_shapes(
    expected: dict[str, tuple[int, ...]], given: dict[str, tuple[int, ...]], source: str
) -> None:
    """ValueError naming ``source`` and the tensor unless ``given`` names exactly the
    ``expected`` tensors, with their shapes."""
    unexpected = sorted(set(given) - set(expected))
    if unexpected:
        raise ValueError(f"{source}: unexpected tensors {unexpected[:5]}")
    missing = sorted(set(expected) - set(given))
    if missing:
        raise ValueError(f"{source}: missing tensors for {missing[:5]}")
    for key, shape in given.items():
        if shape != expected[key]:
            raise ValueError(
                f"{source}: tensor for {key!r} has shape {shape}, expected {expected[key]}"
            )


def build_model(model_cls, config, state: dict[str, Tensor], source: str) -> nn.Module:
    """``model_cls(config)`` loaded with ``state`` (cast to fp32), in eval mode. Names and
    shapes are compared on a ``meta``-device model first, so a configuration that disagrees with
    the tensors is reported before anything is allocated."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in model_cls(config).state_dict().items()}
    check_state_shapes(expected, {k: tuple(v.shape) for k, v in state.items()}, source)
    model = model_cls(config)
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.eval()
