"""Caches written at tensor positions: decoding through them equals full attention, their
tensors keep one shape and address, and a decode step compiles to one graph."""

from __future__ import annotations

import pytest
import torch

from attnlab.attention import attend, masks
from attnlab.attention.static_cache import RingKVCache, StaticKVCache, position_mask

B, H, D = 2, 4, 8


def _qkv(b: int, h: int, hkv: int, t: int, d: int = D, dv: int | None = None):
    dv = d if dv is None else dv
    return torch.randn(b, h, t, d), torch.randn(b, hkv, t, d), torch.randn(b, hkv, t, dv)


def _full(q, k, v, mask=None):
    return attend(q, k, v, mask=mask or masks.causal(), backend="reference")


def _decode(cache, q, k, v, chunks, backend="reference"):
    """Feed (q, k, v) through ``cache`` in chunks of the given sizes; outputs (B, H, T, Dv)."""
    outs, start = [], 0
    for n in chunks:
        pos = torch.arange(start, start + n)
        k_all, v_all, mask, _ = cache.attention_inputs(
            k[:, :, start : start + n], v[:, :, start : start + n], pos
        )
        outs.append(attend(q[:, :, start : start + n], k_all, v_all, mask=mask, backend=backend))
        start += n
    return torch.cat(outs, dim=2)


# -- StaticKVCache: equality with full attention ----------------------------------------------


@pytest.mark.parametrize("hkv", [4, 2, 1])  # multi-head, grouped-query, multi-query
@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_token_by_token_equals_full_causal_attention(hkv, backend):
    t = 9
    q, k, v = _qkv(B, H, hkv, t)
    cache = StaticKVCache(B, hkv, 12, D)
    out = _decode(cache, q, k, v, [1] * t, backend)
    torch.testing.assert_close(out, _full(q, k, v), atol=1e-6, rtol=1e-6)
    assert cache.lengths.tolist() == [t, t]


def test_chunk_prefill_then_single_tokens_equals_full_attention():
    t = 10
    q, k, v = _qkv(B, H, 2, t, dv=5)  # a value head dim of its own
    cache = StaticKVCache(B, 2, 16, D, v_head_dim=5)
    out = _decode(cache, q, k, v, [6, 1, 1, 2])
    torch.testing.assert_close(out, _full(q, k, v), atol=1e-6, rtol=1e-6)


def test_left_padded_prompts_decode_like_each_prompt_alone():
    lengths, pad_to, steps, hkv = [3, 6, 1], 6, 4, 2
    b = len(lengths)
    rows = [_qkv(1, H, hkv, n + steps) for n in lengths]  # each prompt and its decoded tokens
    q = torch.full((b, H, pad_to + steps, D), 1e3)  # padding holds large garbage
    k, v = q[:, :hkv].clone(), q[:, :hkv].clone()
    valid = torch.zeros(b, pad_to, dtype=torch.bool)
    for i, (n, (qi, ki, vi)) in enumerate(zip(lengths, rows, strict=True)):
        start = pad_to - n
        q[i, :, start:], k[i, :, start:], v[i, :, start:] = qi[0], ki[0], vi[0]
        valid[i, start:] = True

    cache = StaticKVCache(b, hkv, pad_to + steps, D)
    pos = torch.arange(pad_to)
    k_all, v_all = cache.update(k[:, :, :pad_to], v[:, :, :pad_to], pos, valid=valid)
    outs = [attend(q[:, :, :pad_to], k_all, v_all, mask=cache.mask(pos), backend="reference")]
    for step in range(steps):
        pos = cache.next_positions()  # (B, 1): each row's next position, as a tensor
        s = pad_to + step
        k_all, v_all, mask, _ = cache.attention_inputs(k[:, :, s : s + 1], v[:, :, s : s + 1], pos)
        outs.append(attend(q[:, :, s : s + 1], k_all, v_all, mask=mask, backend="reference"))
    out = torch.cat(outs, dim=2)

    assert cache.lengths.tolist() == [pad_to + steps] * b
    for i, (n, (qi, ki, vi)) in enumerate(zip(lengths, rows, strict=True)):
        alone = _full(qi, ki, vi)  # the prompt and its tokens, no padding, no cache
        torch.testing.assert_close(out[i : i + 1, :, pad_to - n :], alone, atol=1e-6, rtol=1e-6)


def test_window_mask_over_a_static_cache_equals_sliding_window_attention():
    t, w = 9, 3
    q, k, v = _qkv(B, H, 2, t)
    cache = StaticKVCache(B, 2, t, D)
    outs = []
    for i in range(t):
        pos = torch.tensor([i])
        k_all, v_all = cache.update(k[:, :, i : i + 1], v[:, :, i : i + 1], pos)
        m = cache.mask(pos, window=w)
        outs.append(attend(q[:, :, i : i + 1], k_all, v_all, mask=m, backend="reference"))
    full = _full(q, k, v, masks.sliding_window(w))
    torch.testing.assert_close(torch.cat(outs, dim=2), full, atol=1e-6, rtol=1e-6)


def test_mask_allows_written_real_slots_at_or_before_each_query():
    cache = StaticKVCache(1, 1, 5, 2)
    k = torch.randn(1, 1, 3, 2)
    cache.update(k, k, torch.tensor([0, 1, 3]), valid=torch.tensor([[True, False, True]]))
    dense = cache.mask(torch.tensor([1, 3, 4])).dense(1, 3, 5)  # queries at positions 1, 3, 4
    expected = [
        [True, False, False, False, False],  # slot 1 is padding
        [True, False, False, True, False],  # slot 2 never written
        [True, False, False, True, False],  # slot 4 not written yet
    ]
    assert dense[0, 0].tolist() == expected


# -- StaticKVCache: fixed tensors, dtype, rollback, beams ---------------------------------------


def test_update_returns_the_same_buffers_every_step():
    cache = StaticKVCache(B, 2, 8, D)
    _, k, v = _qkv(B, H, 2, 8)
    seen = set()
    for pos in (torch.arange(3), torch.tensor([3]), torch.tensor([[4], [4]]), torch.arange(5, 8)):
        t = pos.shape[-1]
        k_all, v_all = cache.update(k[:, :, :t], v[:, :, :t], pos)
        assert k_all.shape == (B, 2, 8, D) and v_all.shape == (B, 2, 8, D)
        seen.add((k_all.data_ptr(), v_all.data_ptr()))
        assert k_all is cache.k and v_all is cache.v
    assert seen == {(cache.k.data_ptr(), cache.v.data_ptr())}  # never reallocated
    assert cache.slot_positions.tolist() == [list(range(8))] * B


def test_bf16_cache_rounds_fp32_inputs_on_write():
    t = 6
    q, k, v = _qkv(B, H, 2, t)
    cache = StaticKVCache(B, 2, t, D, dtype=torch.bfloat16)
    k_all, v_all = cache.update(k, v, torch.arange(t))
    assert k_all.dtype == v_all.dtype == torch.bfloat16
    assert torch.equal(k_all, k.to(torch.bfloat16)) and torch.equal(v_all, v.to(torch.bfloat16))
    assert not torch.equal(k_all.float(), k)  # the values were rounded
    out = attend(q, k_all.float(), v_all.float(), mask=cache.mask(torch.arange(t)))
    rounded = _full(q, k.bfloat16().float(), v.bfloat16().float())
    torch.testing.assert_close(out, rounded, atol=1e-6, rtol=1e-6)


def test_fp32_cache_keeps_bf16_inputs_exactly():
    k = torch.randn(1, 1, 3, D, dtype=torch.bfloat16)
    cache = StaticKVCache(1, 1, 4, D, dtype=torch.float32)
    k_all, _ = cache.update(k, k, torch.arange(3))
    assert k_all.dtype == torch.float32 and torch.equal(k_all[:, :, :3], k.float())


def _outputs_for_all_positions(cache, q):
    """Attention of queries at every position over the cache (the state, not one step)."""
    k_all, v_all = cache.k, cache.v
    pos = torch.arange(cache.max_len)
    return attend(q, k_all, v_all, mask=cache.mask(pos), backend="reference")


def test_truncate_then_rewrite_equals_never_writing_the_discarded_tokens():
    q, k, v = _qkv(B, H, 2, 8)
    _, k2, v2 = _qkv(B, H, 2, 2)  # the tokens written after the rollback
    rolled = StaticKVCache(B, 2, 8, D)
    rolled.update(k, v, torch.arange(8))
    rolled.truncate(5)
    assert rolled.lengths.tolist() == [5, 5]
    rolled.update(k2, v2, torch.arange(5, 7))  # position 7 stays forgotten

    clean = StaticKVCache(B, 2, 8, D)
    clean.update(k[:, :, :5], v[:, :, :5], torch.arange(5))
    clean.update(k2, v2, torch.arange(5, 7))
    assert torch.equal(rolled.slot_positions, clean.slot_positions)
    assert torch.equal(rolled.lengths, clean.lengths)
    held = clean.slot_positions[0] >= 0
    assert torch.equal(rolled.k[:, :, held], clean.k[:, :, held])
    torch.testing.assert_close(
        _outputs_for_all_positions(rolled, q), _outputs_for_all_positions(clean, q)
    )


def test_truncate_per_row_then_per_row_positions_continue_each_row():
    q, k, v = _qkv(B, H, 2, 8)
    _, k2, v2 = _qkv(B, H, 2, 2)
    cache = StaticKVCache(B, 2, 8, D)
    cache.update(k[:, :, :6], v[:, :, :6], torch.arange(6))
    cache.truncate(torch.tensor([4, 2]))  # row 0 keeps 4 positions, row 1 keeps 2
    assert cache.lengths.tolist() == [4, 2]
    pos = cache.next_positions(2)  # (B, 2): [[4, 5], [2, 3]]
    cache.update(k2, v2, pos)
    assert cache.lengths.tolist() == [6, 4]
    assert cache.slot_positions.tolist() == [[0, 1, 2, 3, 4, 5, -1, -1], [0, 1, 2, 3] + [-1] * 4]

    out = _outputs_for_all_positions(cache, q)
    for row, kept in ((0, 4), (1, 2)):
        ks = torch.cat([k[row : row + 1, :, :kept], k2[row : row + 1]], dim=2)
        vs = torch.cat([v[row : row + 1, :, :kept], v2[row : row + 1]], dim=2)
        n = kept + 2
        alone = _full(q[row : row + 1, :, :n], ks, vs)
        torch.testing.assert_close(out[row : row + 1, :, :n], alone, atol=1e-6, rtol=1e-6)


def test_reorder_permutes_rows_in_place():
    cache = StaticKVCache(3, 2, 4, D)
    _, k, v = _qkv(3, H, 2, 4)
    cache.update(k, v, torch.arange(4))
    cache.truncate(torch.tensor([4, 1, 2]))
    before = {name: buf.clone() for name, buf in cache.named_buffers()}
    ptr = cache.k.data_ptr()
    order = torch.tensor([2, 0, 0])  # beams: the third row first, the first twice
    cache.reorder(order)
    for name, buf in cache.named_buffers():
        assert torch.equal(buf, before[name][order]), name
    assert cache.lengths.tolist() == [2, 4, 4] and cache.k.data_ptr() == ptr


def test_reset_forgets_every_position():
    cache = StaticKVCache(B, 1, 4, D)
    cache.update(torch.ones(B, 1, 2, D), torch.ones(B, 1, 2, D), torch.arange(2))
    cache.reset()
    assert cache.lengths.tolist() == [0, 0]
    assert not cache.mask(torch.arange(4)).dense(B, 4, 4).any()


def test_buffers_are_not_saved_with_a_state_dict():
    assert StaticKVCache(1, 1, 4, D).state_dict() == {}
    assert RingKVCache(1, 1, 4, D).state_dict() == {}


# -- compiled decode step ----------------------------------------------------------------------


def _masked_softmax_attention(q, k, v, allowed):
    """Plain attention (B, H, T, Dv) over a boolean (B, 1, T, S) mask; GQA by repetition."""
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
    scores = (q @ k.transpose(-2, -1)) / q.shape[-1] ** 0.5
    scores = scores.masked_fill(~allowed, float("-inf"))
    return scores.softmax(-1) @ v


def _decode_step(cache):
    def step(q, k, v):
        pos = cache.next_positions()  # each row's next position, read from the cache
        k_all, v_all, mask, _ = cache.attention_inputs(k, v, pos)
        return _masked_softmax_attention(q, k_all, v_all, mask.tensor)

    return step


@pytest.mark.parametrize(
    "make", [lambda: StaticKVCache(B, 2, 8, D), lambda: RingKVCache(B, 2, 3, D)]
)
def test_decode_step_traces_to_one_graph_without_breaks(make):
    """Dynamo traces the step once (fullgraph: no break) and replays it for every token."""
    graphs = []

    def count(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    cache = make()
    q, k, v = _qkv(B, H, 2, 6)
    step = torch.compile(_decode_step(cache), backend=count, fullgraph=True, dynamic=False)
    outs = [step(q[:, :, i : i + 1], k[:, :, i : i + 1], v[:, :, i : i + 1]) for i in range(6)]
    mask = masks.causal() if isinstance(cache, StaticKVCache) else masks.sliding_window(3)
    torch.testing.assert_close(torch.cat(outs, dim=2), _full(q, k, v, mask), atol=1e-6, rtol=1e-6)
    assert len(graphs) == 1
    assert cache.lengths.tolist() == [6, 6]


@pytest.mark.slow
def test_decode_step_compiled_with_inductor_equals_eager():
    torch._dynamo.reset()
    cache = StaticKVCache(B, 2, 8, D)
    q, k, v = _qkv(B, H, 2, 5)
    step = torch.compile(_decode_step(cache), fullgraph=True, dynamic=False)
    outs = [step(q[:, :, i : i + 1], k[:, :, i : i + 1], v[:, :, i : i + 1]) for i in range(5)]
    torch.testing.assert_close(torch.cat(outs, dim=2), _full(q, k, v), atol=1e-5, rtol=1e-5)
    assert torch.equal(cache.k[:, :, :5], k) and cache.lengths.tolist() == [5, 5]


# -- RingKVCache -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "chunks",
    [
        [1] * 11,  # token by token, wrapping around the ring several times
        [3] + [1] * 8,  # prefill shorter than the window
        [4] + [1] * 7,  # prefill of exactly the window
        [7] + [1] * 4,  # prefill longer than the window
        [2, 1, 1, 3, 1, 5, 1],  # chunks after history, some longer than the window
    ],
)
def test_ring_equals_full_sliding_window_attention(chunks):
    w, hkv = 4, 2
    t = sum(chunks)
    q, k, v = _qkv(B, H, hkv, t)
    ring = RingKVCache(B, hkv, w, D)
    out = _decode(ring, q, k, v, chunks)
    full = _full(q, k, v, masks.sliding_window(w))
    torch.testing.assert_close(out, full, atol=1e-6, rtol=1e-6)
    assert ring.k.shape == (B, hkv, w, D) and ring.v.shape == (B, hkv, w, D)  # bounded memory
    assert ring.lengths.tolist() == [t, t]
    assert sorted(ring.slot_positions[0].tolist()) == list(range(t - w, t))  # the last w kept


def test_ring_decode_returns_its_buffers_and_chunks_return_cached_plus_new():
    ring = RingKVCache(B, 2, 3, D)
    _, k, v = _qkv(B, H, 2, 7)
    k_all, v_all, kpos = ring.update(k[:, :, :5], v[:, :, :5], torch.arange(5))
    assert k_all.shape == (B, 2, 3 + 5, D) and kpos.shape == (B, 3 + 5)
    assert kpos[0].tolist() == [-1, -1, -1, 0, 1, 2, 3, 4]
    assert ring.slot_positions[0].tolist() == [3, 4, 2]  # p in slot p % 3
    for i in (5, 6):
        k_all, v_all, kpos = ring.update(k[:, :, i : i + 1], v[:, :, i : i + 1], torch.tensor([i]))
        assert k_all is ring.k and v_all is ring.v and kpos is ring.slot_positions


def test_ring_left_padded_prompts_decode_like_each_prompt_alone():
    w, lengths, pad_to, steps = 3, [2, 5], 5, 3
    rows = [_qkv(1, H, 1, n + steps) for n in lengths]
    q = torch.full((2, H, pad_to + steps, D), 1e3)
    k, v = q[:, :1].clone(), q[:, :1].clone()
    valid = torch.zeros(2, pad_to, dtype=torch.bool)
    for i, (n, (qi, ki, vi)) in enumerate(zip(lengths, rows, strict=True)):
        q[i, :, pad_to - n :], k[i, :, pad_to - n :], v[i, :, pad_to - n :] = qi[0], ki[0], vi[0]
        valid[i, pad_to - n :] = True
    ring = RingKVCache(2, 1, w, D)
    pos = torch.arange(pad_to)
    view = ring.attention_inputs(k[:, :, :pad_to], v[:, :, :pad_to], pos, valid=valid)
    outs = [attend(q[:, :, :pad_to], *view[:2], mask=view.mask, backend="reference")]
    for s in range(pad_to, pad_to + steps):
        # A view of ``lengths`` as positions: the mask must use the values before the write.
        pos = ring.lengths[:, None]
        view = ring.attention_inputs(k[:, :, s : s + 1], v[:, :, s : s + 1], pos)
        outs.append(attend(q[:, :, s : s + 1], *view[:2], mask=view.mask, backend="reference"))
    out = torch.cat(outs, dim=2)
    for i, (n, (qi, ki, vi)) in enumerate(zip(lengths, rows, strict=True)):
        alone = _full(qi, ki, vi, masks.sliding_window(w))
        torch.testing.assert_close(out[i : i + 1, :, pad_to - n :], alone, atol=1e-6, rtol=1e-6)


def test_ring_reorder_and_reset():
    ring = RingKVCache(3, 1, 2, D)
    k = torch.randn(3, 1, 3, D)
    ring.update(k, k, torch.arange(3))
    before = ring.k.clone()
    ring.reorder(torch.tensor([1, 2, 0]))
    assert torch.equal(ring.k, before[[1, 2, 0]])
    ring.reset()
    assert ring.lengths.tolist() == [0, 0, 0] and (ring.slot_positions == -1).all()


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda: StaticKVCache(0, 1, 4, D), "batch"),
        (lambda: StaticKVCache(1, 0, 4, D), "kv_heads"),
        (lambda: StaticKVCache(1, 1, 0, D), "max_len"),
        (lambda: StaticKVCache(1, 1, 4, -1), "head_dim"),
        (lambda: StaticKVCache(1, 1, 4, D, v_head_dim=0), "v_head_dim"),
        (lambda: RingKVCache(1, 1, 0, D), "window"),
        (lambda: RingKVCache(1, 1, 2.5, D), "window"),
        (lambda: position_mask(torch.zeros(1, 2, dtype=torch.long), torch.arange(1), window=0),
         "window"),
    ],
)  # fmt: skip
def test_bad_sizes_raise_value_error_naming_the_argument(make, name):
    with pytest.raises(ValueError, match=rf"^{name}: expected a positive int"):
        make()


def test_non_float_dtype_raises_type_error():
    with pytest.raises(TypeError, match=r"^dtype: expected a floating-point"):
        StaticKVCache(1, 1, 4, D, dtype=torch.long)


_K = torch.zeros(B, 2, 3, D)


@pytest.mark.parametrize(
    ("call", "error", "pattern"),
    [
        (lambda c: c.update(torch.zeros(B, 3, 3, D), _K, torch.arange(3)), ValueError,
         r"^k: expected shape \(B, Hkv, T, D\)"),
        (lambda c: c.update(_K, torch.zeros(B, 2, 3, D + 1), torch.arange(3)), ValueError,
         r"^v: expected shape \(2, 2, 3, 8\)"),
        (lambda c: c.update(_K, _K, torch.arange(2)), ValueError, r"^positions: expected \(T,\)"),
        (lambda c: c.update(_K, _K, torch.zeros(3, 3, dtype=torch.long)), ValueError,
         r"^positions: expected shape \(T,\) or \(B, T\)"),
        (lambda c: c.update(_K, _K, torch.arange(3.0)), TypeError, "^positions: expected an int"),
        (lambda c: c.update(_K, _K, torch.arange(6, 9)), ValueError,
         r"^positions: expected values < max_len=8"),
        (lambda c: c.update(_K, _K, torch.arange(-1, 2)), ValueError,
         r"^positions: expected values >= 0"),
        (lambda c: c.update(_K, _K, torch.arange(3), valid=torch.ones(B, 2, dtype=torch.bool)),
         ValueError, r"^valid: expected shape \(B, T\) = \(2, 3\)"),
        (lambda c: c.update(_K, _K, torch.arange(3), valid=torch.ones(B, 3)), TypeError,
         "^valid: expected a boolean tensor"),
        (lambda c: c.reorder(torch.tensor([0, 2])), ValueError, r"^indices: expected values in"),
        (lambda c: c.reorder(torch.tensor([0])), ValueError, r"^indices: expected shape \(B,\)"),
        (lambda c: c.truncate(-1), ValueError, "^n: expected an int >= 0"),
        (lambda c: c.truncate(torch.tensor([1, -1])), ValueError, "^n: expected values >= 0"),
        (lambda c: c.truncate(torch.tensor([1])), ValueError, r"^n: expected an int or shape"),
        (lambda c: c.mask(torch.zeros(3, 1, dtype=torch.long)), ValueError,
         r"^query_positions: expected shape"),
    ],
)  # fmt: skip
def test_bad_input_raises_naming_the_argument(call, error, pattern):
    cache = StaticKVCache(B, 2, 8, D)
    with pytest.raises(error, match=pattern):
        call(cache)
    assert cache.lengths.tolist() == [0, 0]  # nothing half-written


def test_ring_refuses_non_consecutive_positions_in_one_call():
    ring = RingKVCache(B, 2, 4, D)
    with pytest.raises(ValueError, match=r"^positions: expected consecutive positions"):
        ring.update(_K, _K, torch.tensor([0, 1, 3]))
    with pytest.raises(ValueError, match=r"^positions: expected values >= 0"):
        ring.update(_K[:, :, :1], _K[:, :, :1], torch.tensor([-1]))


def test_value_checks_can_be_switched_off():
    """Without them an out-of-range position reaches torch's own indexing error instead."""
    cache = StaticKVCache(B, 2, 8, D, check_values=False)
    with pytest.raises((IndexError, RuntimeError)) as caught:
        cache.update(_K, _K, torch.arange(6, 9))
    assert not isinstance(caught.value, ValueError)


@pytest.mark.parametrize("cls", ["static", "ring"])
def test_int8_cache_stays_close_to_float_and_reorders(cls):
    from attnlab.attention.static_cache import RingKVCache, StaticKVCache

    g = torch.Generator().manual_seed(0)
    k = torch.randn(2, 3, 6, 8, generator=g)
    v = torch.randn(2, 3, 6, 8, generator=g)
    make = StaticKVCache if cls == "static" else RingKVCache
    exact, int8 = make(2, 3, 8, 8), make(2, 3, 8, 8, dtype=torch.int8)
    assert int8.k.dtype == torch.int8
    for s in range(6):
        pos = torch.tensor([s])
        want = exact.attention_inputs(k[:, :, s : s + 1], v[:, :, s : s + 1], pos)
        got = int8.attention_inputs(k[:, :, s : s + 1], v[:, :, s : s + 1], pos)
    assert got.k.dtype == torch.float32
    assert torch.equal(got.mask.dense(2, 1, 8), want.mask.dense(2, 1, 8))
    # absmax / 127 per vector: every entry within half a step of its vector's scale
    bound = k.abs().amax(-1, keepdim=True).max() / 127 / 2 + 1e-6
    assert (got.k - want.k).abs().max() <= bound
    int8.reorder(torch.tensor([1, 0]))
    exact.reorder(torch.tensor([1, 0]))
    assert (int8.keys_values()[1] - exact.keys_values()[1]).abs().max() <= 0.05


@pytest.mark.parametrize("bias", ["t5", "alibi"])
def test_position_biases_follow_the_slots(bias):
    """ALiBi and T5 biases over a static cache's slots equal the full causal forward."""
    from attnlab.attention import masks
    from attnlab.attention.bias import RelativePositionBias, alibi
    from attnlab.attention.caches import Caches
    from attnlab.attention.multihead import MultiHeadAttention

    torch.manual_seed(0)
    if bias == "t5":
        position = RelativePositionBias(4, bidirectional=False, num_buckets=8, max_distance=16)
    else:
        position = alibi(4)
    mha = MultiHeadAttention(32, 4, position=position).eval()
    with torch.no_grad():
        if bias == "t5":
            position.weight.normal_()
        x = torch.randn(2, 9, 32)
        full = mha(x, mask=masks.causal())
        caches = Caches([mha.make_cache(2, 12, kind="static")])
        outs = [mha(x[:, :5], cache=caches.bind(torch.arange(5))[0])]
        for i in range(5, 9):
            outs.append(mha(x[:, i : i + 1], cache=caches.bind(torch.tensor([i]))[0]))
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=1e-5)
