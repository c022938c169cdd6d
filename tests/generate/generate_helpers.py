"""Tiny random transformers models and their attnlab copies, shared by the generation tests."""

from __future__ import annotations

import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from attnlab.convert import load_hf

VOCAB = 61


def _randomize(model: nn.Module, seed: int) -> nn.Module:
    """Random weights large enough that the next token is not a near tie (norms around 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            base = 1.0 if "norm" in name or ".ln_" in name else 0.0
            p.copy_(base + 0.3 * torch.randn(p.shape, generator=g))
    return model.eval()


def hf_model(family: str, seed: int = 0) -> nn.Module:
    """A tiny random transformers GPT-2 or Llama (GQA) language model."""
    if family == "gpt2":
        config = GPT2Config(
            vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4,
            bos_token_id=0, eos_token_id=1, pad_token_id=2,
        )  # fmt: skip
        return _randomize(GPT2LMHeadModel(config), seed)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        bos_token_id=0, eos_token_id=1, pad_token_id=2,
    )  # fmt: skip
    return _randomize(LlamaForCausalLM(config), seed)


def pair(family: str, tmp_path, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """(transformers model, the same weights as an attnlab model)."""
    hf = hf_model(family, seed)
    directory = tmp_path / family
    hf.save_pretrained(directory, safe_serialization=True)
    return hf, load_hf(directory).eval()


def left_padded(rows: list[list[int]], pad: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts of different lengths as (ids, attention_mask), padded on the left."""
    t = max(map(len, rows))
    ids = torch.full((len(rows), t), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), t, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, t - len(row) :] = torch.tensor(row)
        mask[i, t - len(row) :] = 1
    return ids, mask
