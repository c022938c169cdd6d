"""ViT (transformers ``ViTForImageClassification``) <-> attnlab ``ViT``. Linear layers map one to
one; the [CLS] vector and the position table drop their leading batch axis of 1."""

from __future__ import annotations

from torch import Tensor

from attnlab.convert.maps.common import ENCODER_KEYS, encoder_fields, label_fields, variant_reasons
from attnlab.convert.maps.common import linear_keys as _linear
from attnlab.models.vit import ViT, ViTConfig

NAME = "ViT"
MODEL = ViT

IGNORED_SUFFIXES = ()
ARCH = "ViTForImageClassification"
PREFIX = "vit."

# attnlab config field -> config.json key (errors about a field name the file's key)
CONFIG_KEYS = {
    **ENCODER_KEYS,
    "image_size": "image_size",
    "patch_size": "patch_size",
    "channels": "num_channels",
    "num_labels": "num_labels",
}
# config.json key of a layer count -> tensor names carrying the layer index
LAYERS = {"num_hidden_layers": r"vit\.encoder\.layer\.(\d+)\."}
# (config.json key, tensor names, axis): sizes the tensors must show
SIZES = [
    ("hidden_size", ("vit.embeddings.cls_token",), 2),
    ("num_channels", ("vit.embeddings.patch_embeddings.projection.weight",), 1),
    ("patch_size", ("vit.embeddings.patch_embeddings.projection.weight",), 2),
    ("intermediate_size", ("vit.encoder.layer.0.intermediate.dense.weight",), 0),
]


# attnlab name -> Hugging Face name under ``vit.`` (cls and pos are reshaped, see below)
EMBEDDING_KEYS = {
    "cls": "embeddings.cls_token",
    "pos.weight": "embeddings.position_embeddings",
    **_linear("patch", "embeddings.patch_embeddings.projection"),
    **_linear("norm", "layernorm"),
}
# attnlab name within block i -> Hugging Face name within encoder.layer.i
LAYER_KEYS = {
    **_linear("attn.q_proj", "attention.attention.query"),
    **_linear("attn.k_proj", "attention.attention.key"),
    **_linear("attn.v_proj", "attention.attention.value"),
    **_linear("attn.out_proj", "attention.output.dense"),
    **_linear("attn_norm", "layernorm_before"),
    **_linear("mlp.up", "intermediate.dense"),
    **_linear("mlp.down", "output.dense"),
    **_linear("mlp_norm", "layernorm_after"),
}
HEAD_KEYS = _linear("head", "classifier")


def config_from_hf(hf: dict, tensors: dict[str, Tensor] | None = None) -> ViTConfig:
    arch = (hf.get("architectures") or [ARCH])[0]
    if arch != ARCH:
        raise ValueError(
            f"config.json: ViT architecture {arch!r} is not supported (expected {ARCH})"
        )
    if hf.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"config.json: hidden_act {hf['hidden_act']!r} is not supported")
    if not hf.get("qkv_bias", True):
        raise ValueError("config.json: qkv_bias=false is not supported")
    labels = hf.get("id2label")
    return ViTConfig(
        image_size=hf["image_size"],
        patch_size=hf["patch_size"],
        channels=hf.get("num_channels", 3),
        num_labels=len(labels) if labels else hf.get("num_labels", 2),
        n_layer=hf["num_hidden_layers"],
        n_head=hf["num_attention_heads"],
        dim=hf["hidden_size"],
        hidden=hf["intermediate_size"],
        norm_eps=hf.get("layer_norm_eps", 1e-12),
    )


def supports(c: ViTConfig) -> list[str]:
    """Why ``c`` cannot be written as a transformers ViT (empty when it can)."""
    bad = variant_reasons(c, "ViT", "learned")
    if c.pool != "cls":
        bad.append(f"pool={c.pool!r} (transformers' ViT reads [CLS])")
    return bad


def config_to_hf(c: ViTConfig) -> dict:
    return {
        "architectures": [ARCH],
        "model_type": "vit",
        "image_size": c.image_size,
        "patch_size": c.patch_size,
        "num_channels": c.channels,
        **encoder_fields(c),
        "qkv_bias": True,
        **label_fields(c.num_labels),
    }


def _keys(c: ViTConfig) -> dict[str, str]:
    keys = {ours: PREFIX + theirs for ours, theirs in EMBEDDING_KEYS.items()}
    for i in range(c.n_layer):
        keys.update(
            {f"blocks.{i}.{o}": f"{PREFIX}encoder.layer.{i}.{t}" for o, t in LAYER_KEYS.items()}
        )
    return keys | HEAD_KEYS


def to_attnlab(sd: dict[str, Tensor], c: ViTConfig) -> dict[str, Tensor]:
    """Hugging Face state dict -> attnlab state dict."""
    out = {ours: sd.pop(theirs) for ours, theirs in _keys(c).items()}
    out["pos.weight"] = out["pos.weight"].squeeze(0)  # (1, 1 + N, C) -> (1 + N, C)
    out.update(sd)  # leftovers are reported as unexpected by the loader
    return out


def from_attnlab(sd: dict[str, Tensor], c: ViTConfig) -> dict[str, Tensor]:
    """attnlab state dict -> Hugging Face state dict of ``ViTForImageClassification``."""
    out = {theirs: sd[ours] for ours, theirs in _keys(c).items()}
    out[PREFIX + "embeddings.position_embeddings"] = sd["pos.weight"].unsqueeze(0).contiguous()
    return out
