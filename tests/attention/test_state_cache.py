"""The running state of kernel attention (linear, Performer): ``recurrent()`` and
:class:`StateCache` decode exactly what the causal forward computes, in memory that does not
grow with the length.

Shapes: B batch, H heads, Hkv key/value heads, T tokens, D head dim, Dv value dim, F features.
"""

from __future__ import annotations

import pytest
import torch

from attnlab.attention import masks
from attnlab.attention.kv_cache import KVCache
from attnlab.attention.linear import LinearAttention, LinearState, PerformerAttention
from attnlab.attention.lowrank import LinformerAttention
from attnlab.attention.state_cache import StateCache

B, H, HKV, T, D, DV = 3, 4, 2, 9, 4, 3


def _kernels():
    return {
        "linear": LinearAttention(chunk_size=2),
        "performer": PerformerAttention(
            D, 16, chunk_size=2, generator=torch.Generator().manual_seed(0)
        ),
    }


def _qkv(seed=0, t=T, *, growing=True):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, t, D, generator=g)
    k = torch.randn(B, HKV, t, D, generator=g)
    v = torch.randn(B, HKV, t, DV, generator=g)
    if growing:  # later keys larger: the Performer's largest key (its stabiliser) moves on
        k = k * torch.linspace(0.3, 2.5, t)[:, None]
    return q, k, v


def _left_padding(starts, t=T):
    """valid (B, T): row b's tokens start at starts[b]."""
    return torch.arange(t)[None, :] >= torch.tensor(starts)[:, None]


def _forward(attn, q, k, v, valid=None):
    mask = masks.causal()
    if valid is not None:
        mask = mask & masks.from_tensor(valid[:, None, None, :])
    return attn(q, k, v, mask)


def _in_chunks(attn, q, k, v, sizes, valid=None, state=None):
    outs, start = [], 0
    for n in sizes:
        part = slice(start, start + n)
        out, state = attn.recurrent(
            q[:, :, part],
            k[:, :, part],
            v[:, :, part],
            state,
            None if valid is None else valid[:, part],
        )
        outs.append(out)
        start += n
    assert start == q.shape[2]
    return torch.cat(outs, dim=2), state


SPLITS = {"token_by_token": [1] * T, "uneven": [3, 1, 5], "at_once": [T]}


@pytest.mark.parametrize("split", list(SPLITS))
@pytest.mark.parametrize("name", ["linear", "performer"])
def test_recurrent_equals_causal_forward(name, split):
    attn = _kernels()[name]
    q, k, v = _qkv(1)
    got, state = _in_chunks(attn, q, k, v, SPLITS[split])
    torch.testing.assert_close(got, _forward(attn, q, k, v), atol=1e-5, rtol=1e-5)
    # The state after the last token is the same however the tokens came.
    _, whole = attn.recurrent(q, k, v, None)
    torch.testing.assert_close(state.S, whole.S, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state.z, whole.z, atol=1e-5, rtol=1e-5)
    if name == "performer":
        torch.testing.assert_close(state.c, whole.c)
    else:
        assert state.c is None


@pytest.mark.parametrize("name", ["linear", "performer"])
def test_recurrent_with_left_padding(name):
    attn = _kernels()[name]
    q, k, v = _qkv(2)
    starts = [0, 4, 8]
    valid = _left_padding(starts)
    drop = ~valid[:, None, :, None]
    k_bad, v_bad = k.masked_fill(drop, float("nan")), v.masked_fill(drop, float("inf"))
    want = _forward(attn, q, k_bad, v_bad, valid)
    for sizes in SPLITS.values():
        got, _ = _in_chunks(attn, q, k_bad, v_bad, sizes, valid)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for b, s in enumerate(starts):  # each row is its own sequence alone
        alone = _forward(attn, q[b : b + 1, :, s:], k[b : b + 1, :, s:], v[b : b + 1, :, s:])
        torch.testing.assert_close(want[b : b + 1, :, s:], alone, atol=1e-5, rtol=1e-5)
    assert torch.equal(want[2, :, :8], torch.zeros_like(want[2, :, :8]))  # no token yet


def test_performer_state_rescales_when_a_much_larger_key_arrives():
    # FAVOR+ features are exp(w·k' - |k'|²/2) with k' = k D^(-1/4): long keys have tiny
    # features (|k| = 12 here: at most e^(3.5·8.5 - 36) = e^-6 with |w| < 3.5). After six of
    # them the state is divided by their largest feature; the next, ordinary key's features
    # are ~e^20 larger, and the state must be rescaled to it without overflowing or losing
    # the keys before it, for the queries before it as for those after.
    attn = _kernels()["performer"]
    assert attn.projection.norm(dim=-1).max() < 3.5
    q, k, v = _qkv(3, growing=False)
    k[:, :, :6] = 12 * k[:, :, :6] / k[:, :, :6].norm(dim=-1, keepdim=True)
    want = _forward(attn, q, k, v)
    got, state = _in_chunks(attn, q[:, :, :6], k[:, :, :6], v[:, :, :6], [6])
    before = state.c
    more, state = _in_chunks(attn, q[:, :, 6:], k[:, :, 6:], v[:, :, 6:], [1, 2], state=state)
    assert (state.c > before + 10).all()
    got = torch.cat([got, more], dim=2)
    assert torch.isfinite(got).all() and torch.isfinite(state.S).all()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # Each query is the non-causal call over the keys up to it.
    for t in (0, 5, 6, 8):
        alone = attn(q[:, :, t : t + 1], k[:, :, : t + 1], v[:, :, : t + 1])
        torch.testing.assert_close(got[:, :, t : t + 1], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["linear", "performer"])
def test_backward_through_recurrent_equals_the_forward(name):
    attn = _kernels()[name]
    q, k, v = _qkv(4, t=5)
    upstream = torch.randn(B, H, 5, DV, generator=torch.Generator().manual_seed(5))

    def grads(run):
        leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
        (run(*leaves) * upstream).sum().backward()
        return [t.grad for t in leaves]

    want = grads(lambda q, k, v: _forward(attn, q, k, v))
    got = grads(lambda q, k, v: _in_chunks(attn, q, k, v, [2, 1, 1, 1])[0])
    for name_, a, b in zip("qkv", got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=lambda m, n=name_: f"d{n}: {m}")


# --------------------------------------------------------------------------------------------
# StateCache
# --------------------------------------------------------------------------------------------


def _cache(attn, batch=B, max_len=64, **kw):
    return StateCache(batch, HKV, attn.feature_dim(D), DV, max_len=max_len, **kw)


def _decode(cache, attn, q, k, v, sizes, valid=None):
    outs, start = [], 0
    for n in sizes:
        part = slice(start, start + n)
        outs.append(
            cache.step(
                attn,
                q[:, :, part],
                k[:, :, part],
                v[:, :, part],
                cache.next_positions(n),
                None if valid is None else valid[:, part],
            )
        )
        start += n
    return torch.cat(outs, dim=2)


@pytest.mark.parametrize("name", ["linear", "performer"])
def test_state_cache_decodes_the_causal_forward(name):
    attn = _kernels()[name]
    q, k, v = _qkv(6)
    valid = _left_padding([0, 2, 5])
    want = _forward(attn, q, k, v, valid)
    for sizes in SPLITS.values():
        cache = _cache(attn)
        torch.testing.assert_close(
            _decode(cache, attn, q, k, v, sizes, valid), want, atol=1e-5, rtol=1e-5
        )
        assert cache.lengths.tolist() == [T] * B
        assert cache.next_positions(2).tolist() == [[T, T + 1]] * B


def test_state_cache_memory_does_not_grow_with_the_length():
    attn = _kernels()["performer"]
    q, k, v = _qkv(7, t=32, growing=False)
    cache = _cache(attn, max_len=32)
    kv = KVCache(B, HKV, 32, D, v_head_dim=DV)
    held, seen = [], []
    for t in range(32):
        cache.step(
            attn,
            q[:, :, t : t + 1],
            k[:, :, t : t + 1],
            v[:, :, t : t + 1],
            cache.next_positions(1),
            None,
        )
        keys, values = kv.update(k[:, :, t : t + 1], v[:, :, t : t + 1])
        held.append(cache.nbytes)
        seen.append(keys.nbytes + values.nbytes)
    # S (F, Dv), z (F) and c per key/value head, float32: the same after 1 token or 32.
    F = attn.feature_dim(D)
    assert held == [B * HKV * (F * DV + F + 1) * 4] * 32
    # What a key/value cache keeps for attention grows by a key and a value every token.
    assert seen == [(t + 1) * B * HKV * (D + DV) * 4 for t in range(32)]


def test_state_cache_reorder_permutes_rows():
    attn = _kernels()["performer"]
    q, k, v = _qkv(8)
    order = torch.tensor([2, 0, 1])
    cache, permuted = _cache(attn), _cache(attn)
    _decode(cache, attn, q[:, :, :5], k[:, :, :5], v[:, :, :5], [5])
    _decode(permuted, attn, q[order, :, :5], k[order, :, :5], v[order, :, :5], [5])
    cache.reorder(order)
    for name in ("S", "z", "c", "lengths"):
        torch.testing.assert_close(getattr(cache, name), getattr(permuted, name), msg=name)
    rest = (q[order, :, 5:], k[order, :, 5:], v[order, :, 5:])
    torch.testing.assert_close(
        _decode(cache, attn, *rest, [4]), _decode(permuted, attn, *rest, [4])
    )
    with pytest.raises(TypeError, match=r"indices: expected an integer tensor"):
        cache.reorder(torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"indices: expected shape \(B,\) = \(3,\), got \(2,\)"):
        cache.reorder(torch.tensor([0, 1]))


def test_state_cache_reset_forgets_everything():
    attn = _kernels()["performer"]
    q, k, v = _qkv(9)
    cache = _cache(attn)
    first = _decode(cache, attn, q, k, v, [4, 5])
    assert cache.S.abs().sum() > 0 and torch.isfinite(cache.c).all()
    cache.reset()
    assert torch.equal(cache.S, torch.zeros_like(cache.S))
    assert torch.equal(cache.z, torch.zeros_like(cache.z))
    assert torch.equal(cache.c, torch.full_like(cache.c, -torch.inf))
    assert cache.lengths.tolist() == [0] * B
    torch.testing.assert_close(_decode(cache, attn, q, k, v, [9]), first, atol=1e-5, rtol=1e-5)


def test_state_cache_cannot_truncate():
    cache = _cache(_kernels()["linear"])
    with pytest.raises(TypeError, match=r"truncate: a running state cannot forget positions"):
        cache.truncate(2)


def test_state_cache_keeps_float32_state_for_half_inputs():
    attn = _kernels()["performer"]
    cache = _cache(attn, dtype=torch.bfloat16)
    assert cache.S.dtype == cache.z.dtype == cache.c.dtype == torch.float32
    q, k, v = _qkv(10)
    got = _decode(cache, attn, q.bfloat16(), k.bfloat16(), v.bfloat16(), [1] * T)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), _forward(attn, q, k, v), atol=5e-2, rtol=5e-2)


# --------------------------------------------------------------------------------------------
# Bad inputs
# --------------------------------------------------------------------------------------------


def test_recurrent_bad_inputs_raise():
    attn = _kernels()["linear"]
    q, k, v = _qkv(11, t=3)
    with pytest.raises(ValueError, match=r"q: expected one query per new key, T = 3 .*got 2"):
        attn.recurrent(q[:, :, :2], k, v, None)
    with pytest.raises(TypeError, match=r"valid: expected a boolean tensor \(B, T\)"):
        attn.recurrent(q, k, v, None, torch.ones(B, 3))
    with pytest.raises(ValueError, match=r"valid: expected shape \(B, T\) = \(3, 3\), got"):
        attn.recurrent(q, k, v, None, torch.ones(B, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"k: expected head dim 4 like q"):  # attend()'s words
        attn.recurrent(q, k[..., :2], v, None)
    _, state = attn.recurrent(q, k, v, None)
    with pytest.raises(ValueError, match=r"state: expected S of shape \(3, 2, 4, 2\)"):
        attn.recurrent(q, k, v[..., :2], state)
    with pytest.raises(TypeError, match=r"state: expected a LinearState or None, got tuple"):
        attn.recurrent(q, k, v, tuple(state))
    ok, _ = attn.recurrent(q, k, v, LinearState(state.S, state.z))
    assert ok.shape == (B, H, 3, DV)


def test_state_cache_bad_inputs_raise():
    attn = _kernels()["performer"]
    q, k, v = _qkv(12, t=1)
    cache = _cache(attn)
    with pytest.raises(TypeError, match=r"kernel: a running state serves kernel attention, got "):
        cache.step(LinformerAttention(8, 2), q, k, v, cache.next_positions(1), None)
    narrow = StateCache(B, HKV, 8, DV, max_len=8)  # built for 8 features; the kernel has 16
    with pytest.raises(ValueError, match=r"state: expected S of shape \(3, 2, 16, 3\)"):
        narrow.step(attn, q, k, v, narrow.next_positions(1), None)
    with pytest.raises(TypeError, match=r"dtype: a running state is summed in floating point"):
        StateCache(B, HKV, 8, DV, max_len=8, dtype=torch.int32)
    for field, args in (("batch", (0, HKV, 8, DV)), ("features", (B, HKV, -1, DV))):
        with pytest.raises(ValueError, match=rf"{field}: expected a positive int"):
            StateCache(*args, max_len=8)
