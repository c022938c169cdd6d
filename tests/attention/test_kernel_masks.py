"""Masks through kernel attention (linear, Performer) and Linformer: the masks of ``attend()``
that a running sum over keys can honour (causal, which keys exist, and ``&`` of those), the
same answers as running each sequence alone, and a reason for every other mask.

Shapes: B batch, H heads, Hkv key/value heads, Tq queries, Tk keys, D head dim, Dv value dim.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab.attention import attend, explain, masks
from attnlab.attention.linear import LinearAttention, PerformerAttention, linear_attention
from attnlab.attention.lowrank import LinformerAttention
from attnlab.attention.masks import Mask

D = 4


def _qkv(B, H, Hkv, Tq, Tk, Dv=3, *, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Tq, D, generator=g)
    k = torch.randn(B, Hkv, Tk, D, generator=g)
    v = torch.randn(B, Hkv, Tk, Dv, generator=g)
    return q, k, v


def _linear_fn(q, k, v, mask=None):
    return linear_attention(q, k, v, mask=mask, chunk_size=3)


KERNELS = {
    "linear_attention": _linear_fn,
    "LinearAttention": LinearAttention(chunk_size=3),
    "PerformerAttention": PerformerAttention(
        D, 16, chunk_size=3, generator=torch.Generator().manual_seed(0)
    ),
    "LinformerAttention": LinformerAttention(16, 4),
}


def _kernels(causal_only: bool = False) -> dict:
    """Every kind that runs over masks; Linformer only where no causal mask is asked for."""
    return {k: f for k, f in KERNELS.items() if not (causal_only and k == "LinformerAttention")}


def _key_tensor(lengths, T):
    """The padding mask as a boolean key tensor (B, 1, 1, T)."""
    return torch.arange(T)[None, None, None, :] < torch.as_tensor(lengths)[:, None, None, None]


def _poison(k, v, keep):
    """k, v with nan / inf wherever ``keep`` (B, 1, 1, T) is False."""
    drop = ~keep[:, :, 0, :, None]  # (B, 1, T, 1)
    return k.masked_fill(drop, float("nan")), v.masked_fill(drop, float("inf"))


# --------------------------------------------------------------------------------------------
# A padded batch equals each sequence alone
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "causal"),
    [(name, False) for name in KERNELS] + [(name, True) for name in _kernels(causal_only=True)],
)
def test_padded_batch_equals_each_sequence_alone(name, causal):
    attn = _kernels()[name]
    B, H, Hkv, T = 3, 4, 2, 9
    q, k, v = _qkv(B, H, Hkv, T, T, seed=1)
    lengths = torch.tensor([9, 5, 1])
    mask = masks.padding(lengths)
    if causal:
        mask = masks.causal() & mask
    k_bad, v_bad = _poison(k, v, _key_tensor(lengths, T))  # padding holds garbage
    out = attn(q, k_bad, v_bad, mask)
    assert torch.isfinite(out).all()
    for b, n in enumerate(lengths.tolist()):
        # Causal: the first n positions are the sequence; otherwise every query sees its n keys.
        rows = slice(0, n) if causal else slice(None)
        alone = attn(
            q[b : b + 1, :, rows],
            k[b : b + 1, :, :n],
            v[b : b + 1, :, :n],
            masks.causal() if causal else None,
        )
        torch.testing.assert_close(out[b : b + 1, :, rows], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(_kernels(causal_only=True)))
def test_left_padded_causal_batch_equals_each_sequence_alone(name):
    # Batched generation pads prompts on the left: a boolean key tensor says which keys exist.
    attn = _kernels()[name]
    B, H, Hkv, T = 3, 2, 1, 8
    q, k, v = _qkv(B, H, Hkv, T, T, seed=2)
    starts = [0, 3, 7]
    keep = torch.arange(T)[None, None, None, :] >= torch.tensor(starts)[:, None, None, None]
    k_bad, v_bad = _poison(k, v, keep)
    out = attn(q, k_bad, v_bad, masks.causal() & masks.from_tensor(keep))
    for b, s in enumerate(starts):
        alone = attn(q[b : b + 1, :, s:], k[b : b + 1, :, s:], v[b : b + 1, :, s:], masks.causal())
        torch.testing.assert_close(out[b : b + 1, :, s:], alone, atol=1e-5, rtol=1e-5)
    # Padded queries see no key: zeros, as attend() gives.
    assert torch.equal(out[1, :, :3], torch.zeros_like(out[1, :, :3]))


@settings(max_examples=15, deadline=None)
@given(
    name=st.sampled_from(list(_kernels())),
    causal=st.booleans(),
    B=st.integers(1, 3),
    Hkv=st.integers(1, 2),
    G=st.integers(1, 2),
    T=st.integers(1, 10),
    data=st.data(),
)
def test_padded_batch_equals_each_sequence_alone_hypothesis(name, causal, B, Hkv, G, T, data):
    causal = causal and name != "LinformerAttention"
    attn = _kernels()[name]
    lengths = data.draw(st.lists(st.integers(0, T), min_size=B, max_size=B))
    q, k, v = _qkv(B, Hkv * G, Hkv, T, T, seed=T)
    mask = masks.padding(lengths)
    mask = masks.causal() & mask if causal else mask
    out = attn(q, *_poison(k, v, _key_tensor(lengths, T)), mask)
    for b, n in enumerate(lengths):
        rows = slice(0, n) if causal else slice(None)
        alone = attn(
            q[b : b + 1, :, rows],
            k[b : b + 1, :, :n],
            v[b : b + 1, :, :n],
            masks.causal() if causal else None,
        )
        torch.testing.assert_close(out[b : b + 1, :, rows], alone, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# Causal queries are the last Tq of the Tk positions (bottom-right), as in attend()
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(_kernels(causal_only=True)))
@pytest.mark.parametrize("padded", [False, True])
def test_causal_fewer_queries_are_the_last_rows(name, padded):
    attn = _kernels()[name]
    B, H, Hkv, Tk = 2, 4, 2, 10
    q, k, v = _qkv(B, H, Hkv, Tk, Tk, seed=3)
    mask = masks.causal() & masks.padding([10, 7]) if padded else masks.causal()
    full = attn(q, k, v, mask)
    for Tq in (1, 4, 9):
        got = attn(q[:, :, Tk - Tq :], k, v, mask)
        torch.testing.assert_close(got, full[:, :, Tk - Tq :], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(_kernels(causal_only=True)))
def test_causal_more_queries_than_keys_gives_zeros_first(name):
    attn = _kernels()[name]
    Tq, Tk = 7, 4
    q, k, v = _qkv(2, 2, 1, Tq, Tk, seed=4)
    out = attn(q, k, v, masks.causal())
    assert torch.equal(out[:, :, : Tq - Tk], torch.zeros_like(out[:, :, : Tq - Tk]))
    torch.testing.assert_close(out[:, :, Tq - Tk :], attn(q[:, :, Tq - Tk :], k, v, masks.causal()))
    # attend() gives zeros to the same rows: no key is at or before them.
    ref = attend(q, k, v, mask=masks.causal())
    assert torch.equal(ref[:, :, : Tq - Tk], out[:, :, : Tq - Tk])


# --------------------------------------------------------------------------------------------
# Boolean key tensors are padding masks
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(_kernels()))
def test_boolean_key_tensors_equal_padding_masks(name):
    attn = _kernels()[name]
    B, T = 2, 7
    q, k, v = _qkv(B, 2, 2, T, T, seed=5)
    lengths = torch.tensor([7, 3])
    causal = name != "LinformerAttention"
    for with_causal in (False, True) if causal else (False,):

        def run(mask, with_causal=with_causal):
            if isinstance(mask, torch.Tensor):
                mask = masks.from_tensor(mask)
            return attn(q, k, v, masks.causal() & mask if with_causal else mask)

        want = run(masks.padding(lengths))
        torch.testing.assert_close(run(_key_tensor(lengths, T)), want)
        # One row for the whole batch, 1-D or (1, 1, 1, Tk), and & of two key masks.
        same = masks.padding([3, 3])
        torch.testing.assert_close(run(torch.arange(T) < 3), run(same))
        torch.testing.assert_close(run(_key_tensor([3], T)), run(same))
        both = masks.padding([5, 3]) & masks.from_tensor(_key_tensor([7, 6], T))
        torch.testing.assert_close(run(both), run(masks.padding([5, 3])))


def test_boolean_key_tensor_with_holes_drops_those_keys():
    # Non-causal linear attention and Performer: a key mask with holes is the call without
    # those keys.
    q, k, v = _qkv(1, 2, 1, 5, 8, seed=6)
    keep = torch.tensor([True, False, True, True, False, False, True, True])
    for attn in list(_kernels(causal_only=True).values()):
        got = attn(q, k, v, keep)
        torch.testing.assert_close(got, attn(q, k[:, :, keep], v[:, :, keep]), atol=1e-6, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# Masks a running sum cannot honour: refused with the reason, listed by explain()
# --------------------------------------------------------------------------------------------


class _Diagonal(Mask):
    """A user's own mask class: the kernels cannot know what it means."""

    def predicate(self, offset):
        return lambda b, h, q, k: q + offset == k


B, H, HKV, T = 2, 4, 2, 6
REFUSED = {
    "sliding_window": (masks.sliding_window(3), r"a sliding window is not supported"),
    "sliding_window_both_sides": (
        masks.sliding_window(3, causal=False),
        r"a sliding window is not supported",
    ),
    "causal_and_window": (
        masks.causal() & masks.sliding_window(2),
        r"^mask: a sliding window is not supported: [^;]*(; Linformer cannot be causal.*)?$",
    ),
    "document": (masks.document(torch.tensor([[0, 0, 0, 1, 1, 1]] * B)), r"a document mask"),
    "prefix_lm": (masks.prefix_lm([2, 3]), r"a prefix-LM mask"),
    "or": (masks.causal() | masks.padding([3, 4]), r"a union of masks \(a \| b\)"),
    "not": (~masks.padding([3, 4]), r"a negated mask"),
    "query_tensor": (
        torch.ones(B, 1, T, T, dtype=torch.bool).tril(),
        r"a boolean tensor of shape \(2, 1, 6, 6\), not \(B or 1, 1, 1, Tk\)",
    ),
    "head_tensor": (
        torch.ones(1, H, 1, T, dtype=torch.bool),
        r"a boolean tensor of shape \(1, 4, 1, 6\).*heads",
    ),
    "own_class": (_Diagonal(), r"_Diagonal is not supported"),
}
REASON = r"is not supported: a running sum over keys honours only a causal mask and masks of"


def _entry_points():
    """Every way into the kernels (linear, Performer) with a mask: name -> fn(q, k, v, mask)."""
    perf = _kernels()["PerformerAttention"]
    lin = LinearAttention()
    return {
        "linear_attention": lambda q, k, v, m: linear_attention(q, k, v, mask=m),
        "LinearAttention": lin,
        "LinearAttention.weights": lambda q, k, v, m: lin.weights(q, k, m),
        "PerformerAttention": perf,
        "PerformerAttention.pattern_source": lambda q, k, v, m: perf.pattern_source(q, k, m),
    }


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_masks_raise_with_the_reason(case):
    mask, match = REFUSED[case]
    q, k, v = _qkv(B, H, HKV, T, T)
    attend(q, k, v, mask=mask)  # softmax attention honours it
    messages = set()
    for name, fn in _entry_points().items():
        with pytest.raises(ValueError, match=match) as info:
            fn(q, k, v, mask)
        assert str(info.value).startswith("mask: "), name
        assert REASON in str(info.value), name
        messages.add(str(info.value))
    assert len(messages) == 1  # one message, whatever the entry point
    # explain() gives the same reasons, without running anything.
    reasons = explain(q, k, v, mask=mask)
    for kind in ("linear", "performer"):
        assert messages == {"mask: " + "; ".join(reasons[kind])}, kind
    # Linformer's error names every reason explain() gives it (a causal part included).
    with pytest.raises(ValueError, match=match) as info:
        LinformerAttention(8, 4)(q, k, v, mask)
    assert reasons["linformer"] and REASON in str(info.value)
    assert str(info.value) == "mask: " + "; ".join(reasons["linformer"])
    assert reasons["reference"] == []


ACCEPTED = {
    "none": (None, False),
    "causal": (masks.causal(), True),
    "padding": (masks.padding([6, 2]), False),
    "key_tensor": (_key_tensor([6, 2], T), False),
    "causal_and_padding": (masks.causal() & masks.padding([6, 2]), True),
    "causal_and_key_tensor": (masks.causal() & masks.from_tensor(_key_tensor([1, 6], T)), True),
    "nested_and": (masks.padding([6, 5]) & (masks.causal() & masks.padding([4, 6])), True),
}


@pytest.mark.parametrize("case", list(ACCEPTED))
def test_explain_lists_no_reason_for_accepted_masks(case):
    mask, causal = ACCEPTED[case]
    q, k, v = _qkv(B, H, HKV, T, T)
    reasons = explain(q, k, v, mask=mask)
    assert reasons["linear"] == [] and reasons["performer"] == []
    if causal:
        assert len(reasons["linformer"]) == 1
        assert reasons["linformer"][0].startswith("Linformer cannot be causal")
        with pytest.raises(ValueError, match=r"^mask: Linformer cannot be causal"):
            LinformerAttention(8, 4)(q, k, v, mask)
    else:
        assert reasons["linformer"] == []
        LinformerAttention(8, 4)(q, k, v, mask)
    for fn in _entry_points().values():  # and every entry point runs it
        fn(q, k, v, mask)


def test_explain_gives_a_reason_for_a_bias():
    q, k, v = _qkv(B, H, HKV, T, T)
    bias = torch.zeros(1, H, T, T)
    reasons = explain(q, k, v, bias=bias)
    for kind in ("linear", "performer", "linformer"):
        assert reasons[kind] == ["score biases not supported (it has no scores)"], kind
    both = explain(q, k, v, mask=masks.sliding_window(2), bias=bias)
    assert len(both["linear"]) == 2 and "sliding window" in both["linear"][0]
    assert explain(q, k, v)["linear"] == []


# --------------------------------------------------------------------------------------------
# The weights the kernels never build
# --------------------------------------------------------------------------------------------


def _check_weights(attn, q, k, v, mask):
    """weights() are the explicit form of the kernel: rows sum to 1 where a key is allowed (but
    for eps's share), 0 at masked keys and in rows with no key, and weights @ v is the output."""
    w = attn.weights(q, k, mask)
    Bq, Hq, Tq, Tk = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    assert w.shape == (Bq, Hq, Tq, Tk) and w.dtype == torch.float32
    allowed = torch.ones(Bq, 1, Tq, Tk, dtype=torch.bool)
    if mask is not None:
        m = masks.from_tensor(mask) if isinstance(mask, torch.Tensor) else mask
        allowed = m.dense(Bq, Tq, Tk).expand(Bq, 1, Tq, Tk)
    assert torch.equal(w[~allowed.expand_as(w)], torch.zeros(int((~allowed).sum()) * Hq))
    any_key = allowed.any(-1).expand(Bq, Hq, Tq)
    sums = w.sum(-1)
    torch.testing.assert_close(sums[any_key], torch.ones(int(any_key.sum())), atol=1e-3, rtol=0)
    assert torch.equal(sums[~any_key], torch.zeros(int((~any_key).sum())))
    G = Hq // k.shape[1]
    out = attn(q, k, v, mask)
    torch.testing.assert_close(w @ v.repeat_interleave(G, dim=1), out, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", list(_kernels(causal_only=True))[1:])
@pytest.mark.parametrize("case", list(ACCEPTED))
def test_weights_are_the_kernel_explicit(name, case):
    attn = _kernels()[name]
    mask, _ = ACCEPTED[case]
    _check_weights(attn, *_qkv(B, H, HKV, T, T, seed=7), mask)


@settings(max_examples=15, deadline=None)
@given(
    name=st.sampled_from(["LinearAttention", "PerformerAttention"]),
    causal=st.booleans(),
    B=st.integers(1, 2),
    Hkv=st.integers(1, 2),
    G=st.integers(1, 2),
    Tq=st.integers(1, 7),
    Tk=st.integers(0, 7),
    data=st.data(),
)
def test_weights_are_the_kernel_explicit_hypothesis(name, causal, B, Hkv, G, Tq, Tk, data):
    attn = _kernels()[name]
    lengths = data.draw(st.none() | st.lists(st.integers(0, Tk), min_size=B, max_size=B))
    mask = None if lengths is None else masks.padding(lengths)
    if causal:
        mask = masks.causal() if mask is None else masks.causal() & mask
    _check_weights(attn, *_qkv(B, Hkv * G, Hkv, Tq, Tk, seed=Tq * 8 + Tk), mask)
