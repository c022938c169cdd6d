"""Sampling: greedy equals the uncached argmax loop, seeds reproduce, top-k / top-p filter."""

from __future__ import annotations

import pytest
import torch

from attnlab.generate import filter_logits, generate, next_token, prompt_overflow
from attnlab.models import GPT, GPTConfig


def tiny(**overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=31, max_len=16, n_layer=2, n_head=2, dim=16, **overrides))


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_greedy_equals_uncached_argmax_past_max_len(position):
    """Past the context (max_len=16) the window keeps its newest half (8 tokens) and grows
    again: the cached decode equals running the model on exactly that window each step."""
    model = tiny(position=position).eval()
    prompt = torch.randint(0, 31, (2, 5))
    out = generate(model, prompt, 30, temperature=0)  # 35 tokens > max_len=16
    ids, start = prompt, 0
    with torch.no_grad():
        for _ in range(30):
            logits = model(ids[:, start:]).logits[:, -1]
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], 1)
            if ids.shape[1] - start > 16:
                start = ids.shape[1] - 8
    assert torch.equal(out, ids)


def test_prompt_longer_than_the_context_is_refused_or_truncated_on_request():
    model = tiny().eval()
    prompt = torch.randint(0, 31, (1, 40))
    with pytest.raises(
        ValueError, match=r"^prompt: 40 tokens do not fit the model's context of 16"
    ):
        generate(model, prompt, 3, temperature=0)
    out = generate(model, prompt, 3, temperature=0, truncate=True)
    assert torch.equal(out[:, -3:], generate(model, prompt[:, -15:], 3, temperature=0)[:, -3:])
    assert prompt_overflow(40, 16) == 25 and prompt_overflow(15, 16) == 0


def test_the_cache_holds_the_prompt_and_the_new_tokens_only(monkeypatch):
    """A model whose context is huge must not allocate a cache for all of it."""
    model = tiny().eval()
    model.config.max_len = 2_000_000_000  # as a hostile config.json could claim
    sizes = []
    make = model.make_caches
    monkeypatch.setattr(
        model, "make_caches", lambda b, n, **kw: sizes.append(n) or make(b, n, **kw)
    )
    generate(model, torch.randint(0, 31, (1, 4)), 5, temperature=0)
    assert sizes == [9]


def test_sampling_never_draws_ids_the_tokenizer_cannot_decode():
    model = tiny().eval()

    def favour_padding(module, args, logits):  # the padded rows become the likeliest ids
        return logits + torch.cat([torch.zeros(20), torch.full((11,), 100.0)])

    model.head.register_forward_hook(favour_padding)
    out = generate(model, torch.zeros(3, 2, dtype=torch.long), 30, temperature=1.0, vocab_size=20)
    assert int(out.max()) < 20
    assert int(generate(model, torch.zeros(1, 2, dtype=torch.long), 5, temperature=0).max()) >= 20


def test_seeded_sampling_reproduces_and_streams():
    model = tiny()
    prompt = torch.randint(0, 31, (1, 3))
    seen = []
    a = generate(
        model,
        prompt,
        10,
        temperature=0.9,
        top_k=5,
        generator=torch.Generator().manual_seed(3),
        on_token=seen.append,
    )
    b = generate(
        model, prompt, 10, temperature=0.9, top_k=5, generator=torch.Generator().manual_seed(3)
    )
    assert torch.equal(a, b) and torch.equal(torch.cat(seen, 1), a[:, 3:])


def test_eos_stops_every_row():
    model = tiny()
    prompt = torch.randint(0, 31, (1, 4))
    greedy = generate(model, prompt, 8, temperature=0)
    eos = int(greedy[0, 6])  # the third new token
    out = generate(model, prompt, 8, temperature=0, eos_id=eos)
    assert out.shape[1] <= 7 and int(out[0, -1]) == eos


def test_filters():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    assert torch.isinf(filter_logits(logits, top_k=2)[0, [0, 3]]).all()
    assert torch.isfinite(filter_logits(logits, top_k=2)[0, [1, 2]]).all()
    probs = logits.softmax(-1)[0]  # 0.09, 0.67, 0.24, 0.03
    kept = torch.isfinite(filter_logits(logits, top_p=0.8)[0])
    assert kept.tolist() == [False, True, True, False] and probs[1] < 0.8
    assert torch.isfinite(filter_logits(logits, top_p=0.5)[0]).sum() == 1
    assert next_token(logits, temperature=0).item() == 1
    g = torch.Generator().manual_seed(0)
    assert all(next_token(logits, top_k=1, generator=g).item() == 1 for _ in range(20))
    with pytest.raises(ValueError, match="top_p: expected a float in"):
        filter_logits(logits, top_p=1.5)
    with pytest.raises(ValueError, match="top_k: expected a positive int, got 0"):
        filter_logits(logits, top_k=0)
    with pytest.raises(ValueError, match="temperature: expected a float >= 0"):
        next_token(logits, temperature=-1)
