"""MultiHeadAttention against torch.nn.MultiheadAttention; cached decoding against full passes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attnlab.attention import bias as bias_lib
from attnlab.attention import masks
from attnlab.attention.multihead import MultiHeadAttention
from attnlab.inspect import run_with_cache
from attnlab.position import RotaryEmbedding


def _copy_from_torch(ours: MultiHeadAttention, ref: nn.MultiheadAttention) -> None:
    e = ref.embed_dim
    with torch.no_grad():
        if ref._qkv_same_embed_dim:
            wq, wk, wv = ref.in_proj_weight.split(e)
        else:
            wq, wk, wv = ref.q_proj_weight, ref.k_proj_weight, ref.v_proj_weight
        bq, bk, bv = ref.in_proj_bias.split(e)
        for lin, w, b in ((ours.q_proj, wq, bq), (ours.k_proj, wk, bk), (ours.v_proj, wv, bv)):
            lin.weight.copy_(w)
            lin.bias.copy_(b)
        ours.out_proj.weight.copy_(ref.out_proj.weight)
        ours.out_proj.bias.copy_(ref.out_proj.bias)


@pytest.mark.parametrize("backend", ["auto", "reference", "sdpa", "chunked"])
def test_self_attention_with_padding_matches_torch(backend):
    dim, heads, b, t = 16, 4, 3, 7
    ref = nn.MultiheadAttention(dim, heads, batch_first=True)
    ours = MultiHeadAttention(dim, heads, backend=backend)
    _copy_from_torch(ours, ref)
    x = torch.randn(b, t, dim, requires_grad=True)
    lengths = torch.tensor([7, 4, 1])
    ignore = torch.arange(t)[None, :] >= lengths[:, None]  # torch: True = ignore
    want, want_w = ref(x, x, x, key_padding_mask=ignore, need_weights=True)
    got = ours(x, mask=masks.padding(lengths))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # The weights come from the pattern point, whatever backend computes the output.
    _, cache = run_with_cache(ours, x, names=["pattern"], mask=masks.padding(lengths))
    torch.testing.assert_close(cache["pattern"].mean(1), want_w, atol=1e-6, rtol=1e-5)
    g_want = torch.autograd.grad(want.sum(), x)[0]
    g_got = torch.autograd.grad(ours(x, mask=masks.padding(lengths)).sum(), x)[0]
    torch.testing.assert_close(g_got, g_want, atol=1e-5, rtol=1e-5)


def test_cross_attention_matches_torch():
    dim, kv_dim, heads = 12, 20, 3
    ref = nn.MultiheadAttention(dim, heads, kdim=kv_dim, vdim=kv_dim, batch_first=True)
    ours = MultiHeadAttention(dim, heads, kv_dim=kv_dim)
    _copy_from_torch(ours, ref)
    x, ctx = torch.randn(2, 5, dim), torch.randn(2, 9, kv_dim)
    ignore = torch.zeros(2, 9, dtype=torch.bool)
    ignore[1, 6:] = True
    want, _ = ref(x, ctx, ctx, key_padding_mask=ignore)
    got = ours(x, ctx, mask=~ignore[:, None, None, :])  # boolean tensor mask, True = attend
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def _decode_matches_full(mha: MultiHeadAttention, mask, t=11, b=2, dim=16, chunks=(1,)):
    mha.eval()
    x = torch.randn(b, t, dim)
    full = mha(x, mask=mask)
    cache = mha.make_cache(b, t)
    pieces, i, step = [], 0, 0
    while i < t:
        n = chunks[step % len(chunks)]
        pieces.append(mha(x[:, i : i + n], mask=mask, cache=cache))
        i, step = i + n, step + 1
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-5)
    assert cache.length == t


@pytest.mark.parametrize("backend", ["reference", "sdpa", "chunked"])
@pytest.mark.parametrize(
    "variant", ["rope", "alibi", "t5", "window", "gqa", "mqa_rope_window", "qk_norm"]
)
def test_token_by_token_decoding_equals_full_forward(backend, variant):
    dim, heads = 16, 4
    kv, position, mask = None, None, masks.causal()
    if variant == "rope":
        position = RotaryEmbedding(dim // heads)
    elif variant == "alibi":
        position = bias_lib.alibi(heads)
    elif variant == "t5":
        position = bias_lib.RelativePositionBias(heads, bidirectional=False)
    elif variant == "window":
        mask = masks.sliding_window(3)
    elif variant == "gqa":
        kv = 2
    elif variant == "mqa_rope_window":
        kv, position, mask = 1, RotaryEmbedding(dim // heads), masks.sliding_window(4)
    mha = MultiHeadAttention(
        dim, heads, kv, position=position, backend=backend, qk_norm=variant == "qk_norm"
    )
    _decode_matches_full(mha, mask)
    # Prefill a few tokens at once, then continue one at a time and in uneven chunks.
    _decode_matches_full(mha, mask, chunks=(4, 1, 2))


def test_cache_overflow_and_shape_errors():
    mha = MultiHeadAttention(8, 2)
    cache = mha.make_cache(1, 3)
    mha(torch.randn(1, 3, 8), cache=cache)
    with pytest.raises(ValueError, match="cache: 4 positions would exceed max_len=3"):
        mha(torch.randn(1, 1, 8), cache=cache)
    cache.reset()
    with pytest.raises(ValueError, match=r"k: expected shape \(B, Hkv, T, D\)"):
        cache.update(torch.randn(2, 2, 1, 4), torch.randn(2, 2, 1, 4))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dim": 10, "n_heads": 3}, "dim: expected a multiple of n_heads=3"),
        ({"dim": 8, "n_heads": 4, "n_kv_heads": 3}, "n_kv_heads: expected a divisor of n_heads"),
        ({"dim": 8, "n_heads": 2, "score": "magic"}, "score: unknown score 'magic'"),
        ({"dim": 8, "n_heads": 2, "position": "rope"}, "position: expected a RotaryEmbedding"),
        ({"dim": 8, "n_heads": 2, "dropout": 1.0}, r"dropout: expected a float in \[0, 1\)"),
    ],
)
def test_bad_configuration_raises(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        MultiHeadAttention(**kwargs)


def test_dropout_only_while_training():
    mha = MultiHeadAttention(16, 4, dropout=0.5, backend="sdpa")
    x = torch.randn(2, 6, 16)
    mha.eval()
    torch.testing.assert_close(mha(x), mha(x))
    mha.train()
    assert (mha(x) - mha(x)).abs().max() > 1e-4


def test_positions_apply_to_self_attention_only():
    torch.manual_seed(0)
    plain = MultiHeadAttention(16, 4)
    rope = MultiHeadAttention(16, 4, position=RotaryEmbedding(4))
    rope.load_state_dict(plain.state_dict())
    x, ctx = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    torch.testing.assert_close(rope(x, ctx), plain(x, ctx))  # cross: no positions
    assert (rope(x) - plain(x)).abs().max() > 1e-3  # self: RoPE changes the result
