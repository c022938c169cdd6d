"""Speculative decoding: greedy output equals the target's own greedy output token for token;
sampled tokens follow the target's distribution; rollback keeps the caches exact."""

from __future__ import annotations

import pytest
import torch

from attnlab.generate import generate
from attnlab.generate.sampling import Sampling
from attnlab.generate.speculative import _accept, _correct, _probs, speculative
from attnlab.models import GPT, GPTConfig


def _lm(seed: int, n_layer: int = 2, dim: int = 32, vocab: int = 48, scale: float = 3.0) -> GPT:
    torch.manual_seed(seed)
    config = GPTConfig(
        vocab_size=vocab, max_len=64, n_layer=n_layer, n_head=4, n_kv_head=2, dim=dim,
        position="rope", norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=False,
    )  # fmt: skip
    model = GPT(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(scale)
    return model


@pytest.mark.parametrize("num_draft", [1, 3, 5])
def test_greedy_equals_the_target_alone(num_draft):
    target, draft = _lm(0, n_layer=3), _lm(1, n_layer=1, dim=16)
    ids = torch.tensor([[5, 9, 13, 7]])
    want = generate(target, ids, 24, temperature=0)
    got, stats = speculative(
        target, draft, ids, 24, num_draft=num_draft, temperature=0, return_stats=True
    )
    assert torch.equal(got, want)
    assert stats.rounds < 24  # fewer target passes than tokens, or it did nothing
    assert 0 <= stats.acceptance_rate <= 1


def test_a_draft_equal_to_the_target_is_always_accepted():
    target = _lm(0)
    ids = torch.tensor([[5, 9, 13, 7]])
    got, stats = speculative(target, target, ids, 20, num_draft=4, temperature=0, return_stats=True)
    assert torch.equal(got, generate(target, ids, 20, temperature=0))
    assert stats.acceptance_rate == 1.0
    assert stats.tokens_per_round == 5.0


def test_generate_runs_it_and_stops_at_eos():
    target, draft = _lm(0), _lm(1)
    ids = torch.tensor([[5, 9, 13, 7]])
    free = generate(target, ids, 16, temperature=0)
    eos = int(free[0, 10])
    end = 4 + free[0, 4:].tolist().index(eos) + 1
    got = generate(target, ids, 16, temperature=0, draft_model=draft, eos_id=eos)
    assert torch.equal(got, free[:, :end])


def test_accepted_and_corrected_tokens_follow_the_target_distribution():
    """One position, many draws: draft from q, accept or correct; the histogram is p."""
    g = torch.Generator().manual_seed(0)
    p_logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, 0.5]])
    q_logits = torch.tensor([[0.0, 2.0, 1.0, 0.0, -1.0]])
    sampling = Sampling(temperature=1.0)
    q = _probs(q_logits, sampling)[0]
    counts = torch.zeros(5)
    n = 6000
    for _ in range(n):
        d = torch.multinomial(q, 1, generator=g)
        if _accept(d, p_logits, q_logits, sampling, g):
            counts[d] += 1
        else:
            counts[_correct(p_logits[0], q_logits[0], sampling, g)] += 1
    p = _probs(p_logits, sampling)[0]
    # Standard error of a frequency here is at most 0.0065; 4.5 of them.
    assert (counts / n - p).abs().max() < 0.03, (counts / n, p)


def test_sampled_run_is_reproducible_and_valid():
    target, draft = _lm(0), _lm(1)
    ids = torch.tensor([[5, 9, 13, 7]])
    a = speculative(target, draft, ids, 12, temperature=0.8, top_k=5, seed=3)
    b = speculative(target, draft, ids, 12, temperature=0.8, top_k=5, seed=3)
    assert torch.equal(a, b) and a.shape == (1, 16)


@pytest.mark.parametrize(
    ("draft", "kwargs", "match"),
    [
        (lambda: _lm(1, vocab=50), {}, "draft_model: expected the target's vocabulary of 48"),
        (lambda: _lm(1), {"num_draft": 0}, "num_draft"),
        (lambda: _lm(1), {"repetition_penalty": 1.2}, "draft_model: .*repetition_penalty"),
        (lambda: _lm(1), {"max_new_tokens": 60}, "max_new_tokens"),
        (lambda: _lm(1), {"input_ids": torch.zeros(2, 3, dtype=torch.long)}, "one prompt"),
    ],
)
def test_bad_input_names_the_argument(draft, kwargs, match):
    call = {"input_ids": torch.tensor([[5, 9, 13]]), "max_new_tokens": 5, **kwargs}
    with pytest.raises(ValueError, match=match):
        speculative(_lm(0), draft(), **call)
