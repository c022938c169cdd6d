"""Sampling: greedy equals the uncached argmax loop, seeds reproduce, top-k / top-p filter."""

from __future__ import annotations

import pytest
import torch

from attnlab.generate import filter_logits, generate, next_token
from attnlab.models import GPT, GPTConfig


def tiny(**overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=31, max_len=16, n_layer=2, n_head=2, dim=16, **overrides))


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_greedy_equals_uncached_argmax_past_max_len(position):
    model = tiny(position=position).eval()
    prompt = torch.randint(0, 31, (2, 5))
    out = generate(model, prompt, 20, temperature=0)  # 25 tokens > max_len=16
    ids = prompt
    with torch.no_grad():
        for _ in range(20):
            logits = model(ids[:, -16:]).logits[:, -1]
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, ids)


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
