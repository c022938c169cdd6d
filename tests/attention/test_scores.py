"""Scoring functions against their textbook formulas, forward and backward, on every backend."""

from __future__ import annotations

import math

import pytest
import torch

from attnlab.attention import masks
from attnlab.attention.multihead import MultiHeadAttention
from attnlab.attention.reference import masked_softmax
from attnlab.attention.scores import (
    AdditiveScore,
    CosineScore,
    EuclideanScore,
    GeneralScore,
    make_score,
)


def _explicit(scores, v, allowed):
    return masked_softmax(scores, allowed) @ v


def _qkv(b=2, h=2, tq=5, tk=6, d=4):
    return (
        torch.randn(b, h, tq, d, dtype=torch.float64, requires_grad=True),
        torch.randn(b, h, tk, d, dtype=torch.float64, requires_grad=True),
        torch.randn(b, h, tk, 3, dtype=torch.float64, requires_grad=True),
    )


BACKENDS = ["reference", "sdpa", "chunked"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_general_score(backend):
    q, k, v = _qkv()
    score = GeneralScore(4, 2).double()
    with torch.no_grad():
        score.weight.normal_()
    want = _explicit(torch.einsum("bhie,hed,bhjd->bhij", q, score.weight, k) / 2.0, v, None)
    torch.testing.assert_close(score(q, k, v, backend=backend), want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cosine_score_and_temperature_gradient(backend):
    q, k, v = _qkv()
    score = CosineScore(init_temperature=5.0).double()
    cos = torch.nn.functional.cosine_similarity(q[:, :, :, None], k[:, :, None], dim=-1)
    allowed = masks.causal().dense(1, 5, 6)
    want = _explicit(cos * 5.0, v, allowed)
    got = score(q, k, v, mask=masks.causal(), backend=backend)
    torch.testing.assert_close(got, want)
    (g,) = torch.autograd.grad(got.sum(), score.log_temperature)
    (w,) = torch.autograd.grad(
        _explicit(cos * score.log_temperature.exp(), v, allowed).sum(), score.log_temperature
    )
    torch.testing.assert_close(g, w)


@pytest.mark.parametrize("backend", BACKENDS)
def test_euclidean_score(backend):
    q, k, v = _qkv()
    dist2 = (q[:, :, :, None] - k[:, :, None]).square().sum(-1)
    want = _explicit(-dist2 / math.sqrt(4), v, None)
    got = EuclideanScore()(q, k, v, backend=backend)
    torch.testing.assert_close(got, want)
    gq = torch.autograd.grad(got.sum(), q)[0]
    torch.testing.assert_close(gq, torch.autograd.grad(want.sum(), q)[0])


def test_additive_score():
    q, k, v = _qkv()
    score = AdditiveScore(4, hidden=7).double()
    hidden = torch.tanh(score.w_q(q)[:, :, :, None] + score.w_k(k)[:, :, None])
    want = _explicit(score.v(hidden).squeeze(-1), v, masks.padding([6, 2]).dense(2, 5, 6))
    got = score(q, k, v, mask=masks.padding([6, 2]))
    torch.testing.assert_close(got, want)
    got.sum().backward()
    assert score.v.weight.grad is not None and score.v.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="backend: additive scores run eagerly"):
        score(q, k, v, backend="sdpa")


@pytest.mark.parametrize("name", ["dot", "general", "cosine", "euclidean", "additive"])
def test_every_score_trains_inside_multihead(name):
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4, 2, score=name)
    opt = torch.optim.Adam(mha.parameters(), lr=1e-2)
    x = torch.randn(4, 8, 16)
    target = x.flip(1)  # needs attention to move information across positions
    losses = []
    for _ in range(60):
        loss = (mha(x) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    assert make_score(name, head_dim=4, n_kv_heads=2) is not None
