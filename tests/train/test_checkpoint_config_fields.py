"""Checkpoints written before a config field existed still load: a field whose default None
is derived from others (GPT's head_dim, qkv_bias, out_bias) compares as derived."""

from __future__ import annotations

import json

import pytest
import torch

from attnlab.models.gpt import GPT, GPTConfig
from attnlab.train import checkpoint

# The GPTConfig fields a checkpoint written before them does not record.
NEWER = ("head_dim", "qkv_bias", "out_bias", "qk_norm_eps")


def _saved(tmp_path, model):
    path = checkpoint.save(tmp_path, 1, model, {}, {})
    meta = json.loads((path / "meta.json").read_text())
    for key in NEWER:
        meta["config"].pop(key)
    (path / "meta.json").write_text(json.dumps(meta))
    return path


def test_a_checkpoint_without_the_newer_fields_loads(tmp_path):
    config = GPTConfig(vocab_size=50, max_len=16, n_layer=1, n_head=2, dim=16)
    original = GPT(config)
    path = _saved(tmp_path, original)
    saved = original.state_dict()
    model = GPT(config)  # newly initialised: different weights until loaded
    checkpoint.load_weights(model, path)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())


def test_a_checkpoint_of_a_different_model_is_still_refused(tmp_path):
    path = _saved(tmp_path, GPT(GPTConfig(vocab_size=50, max_len=16, n_layer=1, n_head=2, dim=16)))
    other = GPT(GPTConfig(vocab_size=50, max_len=16, n_layer=1, n_head=2, dim=16, head_dim=4))
    with pytest.raises(checkpoint.CheckpointError, match=r"head_dim: 8 vs 4"):
        checkpoint.load_weights(other, path)
