"""Model families built from attnlab's attention and layers."""

from attnlab.models.bert import BERT, BertConfig
from attnlab.models.gpt import GPT, GPTConfig, lm_loss
from attnlab.models.output import ModelOutput

__all__ = ["BERT", "GPT", "BertConfig", "GPTConfig", "ModelOutput", "lm_loss"]
