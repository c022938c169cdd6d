"""Helpers the key maps share, and the interface every key map has."""

from __future__ import annotations

from typing import Protocol

from torch import Tensor, nn


class KeyMap(Protocol):
    """What :mod:`attnlab.convert.hf` reads from a family's key map (a module with these
    names, or an object such as :class:`attnlab.convert.maps.llama.LlamaMap`)."""

    NAME: str  # the family, in errors
    MODEL: type[nn.Module]  # the attnlab model class
    IGNORED_SUFFIXES: tuple[str, ...]  # stored tensors that are not weights (rotary tables)
    CONFIG_KEYS: dict[str, str]  # attnlab config field -> config.json key
    LAYERS: dict[str, str]  # config.json layer-count key -> tensor-name regex (layer index)
    SIZES: list  # (config.json key, tensor names, axis) the tensors' shapes must agree with

    def config_from_hf(self, hf: dict, tensors: dict): ...
    def supports(self, c) -> list[str]: ...
    def config_to_hf(self, c) -> dict: ...
    def to_attnlab(self, sd: dict[str, Tensor], c) -> dict[str, Tensor]: ...
    def from_attnlab(self, sd: dict[str, Tensor], c) -> dict[str, Tensor]: ...


def linear_keys(ours: str, theirs: str) -> dict[str, str]:
    """Weight and bias names of one module (Linear, LayerNorm or Conv2d): attnlab -> theirs."""
    return {f"{ours}.weight": f"{theirs}.weight", f"{ours}.bias": f"{theirs}.bias"}


# attnlab field -> config.json key, for the fields transformers' BERT and ViT share
ENCODER_KEYS = {
    "dim": "hidden_size",
    "n_layer": "num_hidden_layers",
    "n_head": "num_attention_heads",
    "hidden": "intermediate_size",
    "norm_eps": "layer_norm_eps",
}


def encoder_fields(c) -> dict:
    """``config.json`` fields transformers' BERT and ViT share, from an attnlab config with
    ``dim``, ``n_layer``, ``n_head``, ``hidden``, ``dropout`` and ``norm_eps``."""
    return {
        "hidden_size": c.dim,
        "num_hidden_layers": c.n_layer,
        "num_attention_heads": c.n_head,
        "intermediate_size": c.hidden,
        "hidden_act": "gelu",
        "hidden_dropout_prob": c.dropout,
        "attention_probs_dropout_prob": c.dropout,
        "layer_norm_eps": c.norm_eps,
    }


def label_fields(n: int) -> dict:
    """``id2label`` / ``label2id`` for ``n`` classes named LABEL_0, LABEL_1, ..."""
    labels = [f"LABEL_{i}" for i in range(n)]
    return {"id2label": dict(enumerate(labels)), "label2id": {x: i for i, x in enumerate(labels)}}


def size_field(hf: dict, key: str) -> int:
    """``hf[key]`` where a key map computes with it before the config class can check it:
    KeyError when absent (reported as a missing field), ValueError unless a positive int."""
    value = hf[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"config.json: {key}: expected a positive int, got {value!r}")
    return value


# GPTConfig options that GPT-2 and Llama-shaped checkpoints have no key for, at the values
# that leave them off (a family holding some of them overrides those)
GPT_EXTRAS = {
    "layer_windows": None,
    "softcap": None,
    "sinks": False,
    "attn_scale": None,
    "sandwich_norm": False,
    "scale_embeddings": False,
    "logit_softcap": None,
}


def variant_reasons(
    c, family: str, position: str, *, kinds: tuple[str, ...] = ("softmax",)
) -> list[str]:
    """Why config ``c`` is not the plain attention (one of ``kinds``: softmax, or also
    "local" for a family with sliding windows) with ``position`` that the Hugging Face
    ``family`` has (empty when it is): attnlab's other attention kinds, scores and positions
    have no place in that family's config.json."""
    bad = []
    if c.attention not in kinds:
        bad.append(f"attention={c.attention!r} ({family} uses {' or '.join(kinds)} attention)")
    if c.score != "dot":
        bad.append(f"score={c.score!r} ({family} uses the scaled dot product)")
    if c.position != position:
        bad.append(f"position={c.position!r} ({family} needs {position!r})")
    return bad


# transformers' per-layer attention kinds (index: is the layer windowed?).
LAYER_TYPES = ("full_attention", "sliding_attention")


def sliding_layers(types: object, n_layer: int) -> list[bool]:
    """Which layers a config.json's ``layer_types`` windows; ValueError naming the key unless it
    is a list of ``n_layer`` entries from :data:`LAYER_TYPES`."""
    if (
        not isinstance(types, list)
        or len(types) != n_layer
        or any(t not in LAYER_TYPES for t in types)
    ):
        raise ValueError(
            f"config.json: layer_types: expected a list of num_hidden_layers={n_layer} "
            f"entries, each {' or '.join(map(repr, LAYER_TYPES))}, got {types!r:.120}"
        )
    return [t == LAYER_TYPES[1] for t in types]
