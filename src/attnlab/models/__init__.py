"""Model families built from attnlab's attention and layers.

Every family is one dataclass config plus one ``nn.Module``, with named presets; all share the
calling convention ``model(inputs, attention_mask=None, **family_inputs) -> ModelOutput``.
:func:`from_preset` builds any family's preset by name.
"""

from __future__ import annotations

from torch import nn

from attnlab.models import bert, encoder_decoder, gpt, presets, vit
from attnlab.models.bert import BERT, BertConfig
from attnlab.models.encoder_decoder import EncoderDecoder, TransformerConfig
from attnlab.models.gpt import GPT, GPTConfig, lm_loss
from attnlab.models.output import ModelOutput, set_backend
from attnlab.models.vit import ViT, ViTConfig

# Preset tables, the model class each builds and its config class.
FAMILIES = (
    (gpt.PRESETS, GPT, GPTConfig),
    (bert.PRESETS, BERT, BertConfig),
    (encoder_decoder.PRESETS, EncoderDecoder, TransformerConfig),
    (vit.PRESETS, ViT, ViTConfig),
)


# Config fields renamed so that every family spells a shared field alike (old -> new). Configs
# written before (checkpoints' meta.json, runs' config.json) are read with the new names.
RENAMED_FIELDS = {"tie_output": "tie_embeddings", "num_classes": "num_labels"}


def upgrade_config(values: dict) -> dict:
    """``values`` (a config as a dict) with renamed fields under their current names; a
    ValueError when a dict holds a field under both names."""
    out = dict(values)
    for old, new in RENAMED_FIELDS.items():
        if old in out:
            if new in out:
                raise ValueError(f"{old}: renamed to {new!r}; expected one of them, got both")
            out[new] = out.pop(old)
    return out


def family(name: str) -> tuple[type[nn.Module], type]:
    """``(model class, config class)`` of the family ``name`` ("GPT", "BERT", "EncoderDecoder",
    "ViT"), the name checkpoints record; ValueError listing the families otherwise."""
    for _, model_cls, config_cls in FAMILIES:
        if model_cls.__name__ == name:
            return model_cls, config_cls
    names = ", ".join(model_cls.__name__ for _, model_cls, _ in FAMILIES)
    raise ValueError(f"family: expected one of {names}, got {name!r}")


def family_name(model: nn.Module) -> str:
    """The family name a checkpoint records for ``model``."""
    for _, model_cls, _ in FAMILIES:
        if isinstance(model, model_cls):
            return model_cls.__name__
    raise TypeError(f"model: expected an attnlab model family, got {type(model).__name__}")


def preset_names() -> list[str]:
    """Every model preset of every family."""
    return [name for table, _, _ in FAMILIES for name in table]


def config_class(name: str) -> type:
    """The config dataclass of model preset ``name``."""
    for table, _, config_cls in FAMILIES:
        if name in table:
            return config_cls
    raise _unknown(name)


def from_preset(name: str, **overrides) -> nn.Module:
    """The model of any family built from preset ``name`` with config fields overridden."""
    for table, model_cls, _ in FAMILIES:
        if name in table:
            return model_cls.from_preset(name, **overrides)
    raise _unknown(name)


def _unknown(name: str) -> ValueError:
    names = preset_names()
    return ValueError(
        f"preset: unknown model preset {name!r}{presets.closest(name, names)}; "
        f"expected one of {', '.join(names)}"
    )


__all__ = [
    "BERT",
    "GPT",
    "BertConfig",
    "EncoderDecoder",
    "GPTConfig",
    "ModelOutput",
    "TransformerConfig",
    "ViT",
    "ViTConfig",
    "config_class",
    "family",
    "family_name",
    "from_preset",
    "lm_loss",
    "preset_names",
    "set_backend",
    "upgrade_config",
]
