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
]
