"""Model families built from attnlab's attention and layers."""

from attnlab.models.gpt import GPT, GPTConfig, lm_loss
from attnlab.models.output import ModelOutput

__all__ = ["GPT", "GPTConfig", "ModelOutput", "lm_loss"]
