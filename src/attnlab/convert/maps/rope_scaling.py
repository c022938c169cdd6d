"""RoPE scalings to and from Hugging Face configs (``rope_scaling`` / ``rope_parameters``).

A Hugging Face ``config.json`` names its RoPE scaling with a dict: ``rope_scaling`` in
transformers 4, ``rope_parameters`` in transformers 5 (which also holds ``rope_theta``). The kind
is under ``rope_type`` (or the older ``type``); the other keys are the kind's parameters:

- "default": plain RoPE, ``None`` here.
- "linear": :class:`LinearScaling` from ``factor``.
- "dynamic": :class:`DynamicNTKScaling` from ``factor``; its original length is the config's
  ``max_position_embeddings``.
- "yarn": :class:`YarnScaling` from ``factor`` and ``original_max_position_embeddings``, and
  optionally ``beta_fast``, ``beta_slow``, ``attention_factor``, ``mscale``, ``mscale_all_dim``,
  ``truncate``.
- "llama3": :class:`Llama3Scaling` from ``factor``, ``low_freq_factor``, ``high_freq_factor`` and
  ``original_max_position_embeddings``.

``rope_theta`` and ``partial_rotary_factor`` belong to :class:`RotaryEmbedding` (``base`` and
``rotary_dim``), not to the scaling, and are left to the caller in both directions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from attnlab.names import closest, unknown
from attnlab.position.rope import (
    DynamicNTKScaling,
    LinearScaling,
    Llama3Scaling,
    NTKScaling,
    RopeScaling,
    YarnScaling,
)

__all__ = ["scaling_from_hf", "scaling_to_hf"]

# Keys transformers knows in a RoPE dict. A key outside this set is most likely a misspelling
# (which could silently fall back to a default), so it is refused; a known key that the given
# kind does not read is ignored, as transformers ignores it.
_HF_KEYS = frozenset(
    {
        "rope_type",
        "type",
        "rope_theta",
        "partial_rotary_factor",
        "factor",
        "original_max_position_embeddings",
        "attention_factor",
        "beta_fast",
        "beta_slow",
        "mscale",
        "mscale_all_dim",
        "truncate",
        "low_freq_factor",
        "high_freq_factor",
        "short_factor",
        "long_factor",
        "mrope_section",
    }
)

# YarnScaling's optional fields, named as in Hugging Face configs, with their defaults.
_YARN_OPTIONAL = {
    "beta_fast": 32.0,
    "beta_slow": 1.0,
    "attention_factor": None,
    "mscale": None,
    "mscale_all_dim": None,
    "truncate": True,
}


def _require(params: Mapping[str, Any], key: str, kind: str) -> Any:
    value = params.get(key)
    if value is None:
        raise ValueError(
            f"rope_scaling[{key!r}] is required for rope_type {kind!r}; got keys {sorted(params)}"
        )
    return value


def _original_len(params: Mapping[str, Any], kind: str, max_position_embeddings: int | None):
    # As transformers: a config without the key was trained at its max_position_embeddings.
    value = params.get("original_max_position_embeddings", max_position_embeddings)
    if value is None:
        raise ValueError(
            f"rope_scaling['original_max_position_embeddings'] is required for rope_type "
            f"{kind!r} (or pass the config's max_position_embeddings); got keys {sorted(params)}"
        )
    return value


# Each reader returns the scaling's class and constructor arguments (None for plain RoPE), so
# that scaling_from_hf can tell the caller which dict a refused value came from.
Reader = Callable[[Mapping[str, Any], int | None], tuple[type, dict[str, Any]] | None]


def _default(params, max_position_embeddings):
    return None


def _linear(params, max_position_embeddings):
    return LinearScaling, {"factor": _require(params, "factor", "linear")}


def _dynamic(params, max_position_embeddings):
    # transformers grows the base past the config's max_position_embeddings and ignores any
    # original_max_position_embeddings in the dict, so the length must come from the config.
    if max_position_embeddings is None:
        raise ValueError(
            "rope_scaling: rope_type 'dynamic' takes its original context length from the "
            "config's max_position_embeddings; pass max_position_embeddings="
        )
    factor = _require(params, "factor", "dynamic")
    return DynamicNTKScaling, {"factor": factor, "original_max_len": max_position_embeddings}


def _yarn(params, max_position_embeddings):
    original = _original_len(params, "yarn", max_position_embeddings)
    factor = params.get("factor")
    if factor is None:
        # As transformers (DeepSeek-V3-style configs): the ratio of the two lengths.
        if max_position_embeddings is None:
            raise ValueError(
                "rope_scaling['factor'] is required for rope_type 'yarn' (or pass the config's "
                f"max_position_embeddings to derive it); got keys {sorted(params)}"
            )
        factor = max_position_embeddings / original
    optional = {k: params[k] for k in _YARN_OPTIONAL if params.get(k) is not None}
    return YarnScaling, {"factor": factor, "original_max_len": original, **optional}


def _llama3(params, max_position_embeddings):
    return Llama3Scaling, {
        "factor": _require(params, "factor", "llama3"),
        "low_freq_factor": _require(params, "low_freq_factor", "llama3"),
        "high_freq_factor": _require(params, "high_freq_factor", "llama3"),
        "original_max_len": _original_len(params, "llama3", max_position_embeddings),
    }


_FROM_HF: dict[str, Reader] = {
    "default": _default,
    "linear": _linear,
    "dynamic": _dynamic,
    "yarn": _yarn,
    "llama3": _llama3,
}


def scaling_from_hf(
    rope_scaling: Mapping[str, Any] | None, *, max_position_embeddings: int | None = None
) -> RopeScaling | None:
    """The scaling a Hugging Face ``rope_scaling`` / ``rope_parameters`` dict describes.

    Args:
        rope_scaling: the dict from ``config.json`` (``None`` or ``{}`` mean plain RoPE).
        max_position_embeddings: the config's field of that name. "dynamic" needs it (its original
            length); "yarn" and "llama3" fall back to it when the dict has no
            ``original_max_position_embeddings``, and "yarn" derives a missing ``factor`` as
            max_position_embeddings / original_max_position_embeddings, all as transformers does.

    Returns ``None`` for "default", else a scaling for ``RotaryEmbedding(scaling=...)``.

    Raises:
        ValueError: an unknown or unsupported ``rope_type`` (the supported ones are listed), an
            unknown key, a missing required key, or a value the scaling refuses.
        TypeError: ``rope_scaling`` is not a dict, or a value has the wrong type.
    """
    if rope_scaling is None:
        return None
    if not isinstance(rope_scaling, Mapping):
        raise TypeError(f"rope_scaling must be a dict or None; got {type(rope_scaling).__name__}")
    nested = [key for key, value in rope_scaling.items() if isinstance(value, Mapping)]
    if nested:
        raise ValueError(
            f"rope_scaling: per-layer-type RoPE parameters (under {nested}) are not supported; "
            "pass the dict of one layer type"
        )
    kind = rope_scaling.get("rope_type", rope_scaling.get("type", "default"))
    if "type" in rope_scaling and "rope_type" in rope_scaling and rope_scaling["type"] != kind:
        raise ValueError(
            f"rope_scaling: 'rope_type' {kind!r} and 'type' {rope_scaling['type']!r} disagree"
        )
    if not isinstance(kind, str) or kind not in _FROM_HF:
        raise unknown("rope_scaling['rope_type']", "RoPE scaling", kind, _FROM_HF)
    for key in rope_scaling:
        if key not in _HF_KEYS:
            raise ValueError(
                f"rope_scaling[{key!r}]: unknown key for rope_type {kind!r}"
                f"{closest(str(key), sorted(_HF_KEYS))}"
            )
    read = _FROM_HF[kind](rope_scaling, max_position_embeddings)
    if read is None:
        return None
    cls, kwargs = read
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise type(err)(f"rope_scaling (rope_type {kind!r}): {err}") from err


def _yarn_to_hf(s: YarnScaling) -> dict[str, Any]:
    changed = {k: getattr(s, k) for k, dflt in _YARN_OPTIONAL.items() if getattr(s, k) != dflt}
    return {"factor": s.factor, "original_max_position_embeddings": s.original_max_len, **changed}


_TO_HF: dict[type, tuple[str, Callable[[Any], dict[str, Any]]]] = {
    LinearScaling: ("linear", lambda s: {"factor": s.factor}),
    DynamicNTKScaling: ("dynamic", lambda s: {"factor": s.factor}),
    YarnScaling: ("yarn", _yarn_to_hf),
    Llama3Scaling: (
        "llama3",
        lambda s: {
            "factor": s.factor,
            "low_freq_factor": s.low_freq_factor,
            "high_freq_factor": s.high_freq_factor,
            "original_max_position_embeddings": s.original_max_len,
        },
    ),
}


def scaling_to_hf(scaling: RopeScaling | None) -> dict[str, Any]:
    """The Hugging Face ``rope_scaling`` / ``rope_parameters`` dict for ``scaling``.

    The inverse of :func:`scaling_from_hf`. Optional YaRN fields are written only when they
    differ from their defaults. Not written, as they are not part of the scaling: ``rope_theta``
    and ``partial_rotary_factor``, and for :class:`DynamicNTKScaling` its ``original_max_len``,
    which transformers reads from the config's ``max_position_embeddings`` (the caller must write
    it there).

    Raises:
        ValueError: :class:`NTKScaling`, which transformers has no kind for; it is plain RoPE with
            ``rope_theta`` set to the scaled base (``RotaryEmbedding.effective_base``).
        TypeError: anything else that is not a scaling.
    """
    if scaling is None:
        return {"rope_type": "default"}
    if isinstance(scaling, NTKScaling):
        raise ValueError(
            "scaling: NTKScaling has no Hugging Face rope_type; write it as rope_type 'default' "
            "with rope_theta = RotaryEmbedding.effective_base"
        )
    if type(scaling) not in _TO_HF:
        raise TypeError(f"scaling must be a RoPE scaling or None; got {type(scaling).__name__}")
    kind, write = _TO_HF[type(scaling)]
    return {"rope_type": kind, **write(scaling)}
