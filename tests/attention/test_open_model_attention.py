"""The attention of current open models, against transformers' own attention modules given the
same weights: Gemma 2 (logit soft-capping, query_pre_attn_scalar, sliding-window layers) and
gpt-oss (learned attention sinks, biases, sliding-window layers, YaRN RoPE). Same inputs, a
padded batch, and decoding through a KV cache: outputs within 1e-5.

Also the kernels alone: soft-capping and sinks on the chunked backend equal the reference,
forward and backward; backends that cannot run them say so."""

from __future__ import annotations

import pytest
import torch

from attnlab.attention import MultiHeadAttention, attend, explain, masks
from attnlab.convert.maps.rope_scaling import scaling_from_hf
from attnlab.position import RotaryEmbedding

transformers = pytest.importorskip("transformers")

B, T = 2, 11
LENGTHS = [11, 7]  # row 1 is right-padded


def _hf_mask(window: int | None) -> torch.Tensor:
    """Transformers' additive (B, 1, T, T) mask: causal, the window, the padding."""
    q = torch.arange(T)[:, None]
    k = torch.arange(T)[None, :]
    allowed = (k <= q)[None, None] & (k[None, None] < torch.tensor(LENGTHS)[:, None, None, None])
    if window is not None:
        allowed = allowed & (q - k < window)[None, None]
    return torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)


def _ours_mask(window: int | None):
    mask = masks.causal() & masks.padding(LENGTHS)
    return mask


def _copy(ours: MultiHeadAttention, hf) -> None:
    with torch.no_grad():
        for mine, theirs in (
            (ours.q_proj, hf.q_proj),
            (ours.k_proj, hf.k_proj),
            (ours.v_proj, hf.v_proj),
            (ours.out_proj, hf.o_proj),
        ):
            mine.weight.copy_(theirs.weight)
            if theirs.bias is not None:
                mine.bias.copy_(theirs.bias)


def _compare(ours, hf, rotary, window):
    torch.manual_seed(5)
    x = torch.randn(B, T, ours.q_proj.in_features)
    positions = torch.arange(T)[None].expand(B, T)
    with torch.no_grad():
        want, _ = hf(x, position_embeddings=rotary(x, positions), attention_mask=_hf_mask(window))
        got = ours(x, mask=_ours_mask(window), positions=torch.arange(T))
        # Decoding: the first 4 tokens at once, then one at a time through a static cache.
        caches = ours.make_cache(B, 16, kind="static")
        from attnlab.attention.caches import BoundCache

        valid = torch.arange(T)[None] < torch.tensor(LENGTHS)[:, None]  # (B, T)
        steps = []
        for lo, hi in [(0, 4), *((i, i + 1) for i in range(4, T))]:
            pos = torch.arange(lo, hi)[None]
            steps.append(ours(x[:, lo:hi], cache=BoundCache(caches, pos, valid[:, lo:hi])))
        decoded = torch.cat(steps, dim=1)
    for b, n in enumerate(LENGTHS):
        torch.testing.assert_close(got[b, :n], want[b, :n], atol=1e-5, rtol=0)
        torch.testing.assert_close(decoded[b, :n], want[b, :n], atol=1e-5, rtol=0)


@pytest.mark.parametrize("layer", [0, 1])  # 0: sliding-window layer, 1: global layer
def test_gemma2_attention_equals_transformers(layer):
    from transformers import Gemma2Config
    from transformers.models.gemma2.modeling_gemma2 import Gemma2Attention, Gemma2RotaryEmbedding

    config = Gemma2Config(
        hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
        query_pre_attn_scalar=24, attn_logit_softcapping=2.0, sliding_window=4,
        num_hidden_layers=2, intermediate_size=64, vocab_size=64,
    )  # fmt: skip
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    hf = Gemma2Attention(config, layer_idx=layer).eval()
    window = hf.sliding_window
    assert (window is not None) == (layer == 0)
    ours = MultiHeadAttention(
        32, 4, 2, head_dim=8, bias=False,
        position=RotaryEmbedding(8, base=config.rope_parameters["rope_theta"]),
        softcap=2.0, scale=24**-0.5,
        attention="local" if window else "softmax",
        options={"window": window} if window else None,
    ).eval()  # fmt: skip
    _copy(ours, hf)
    _compare(ours, hf, Gemma2RotaryEmbedding(config), window)


@pytest.mark.parametrize("layer", [0, 1])
def test_gpt_oss_attention_with_sinks_equals_transformers(layer):
    from transformers import GptOssConfig
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssAttention, GptOssRotaryEmbedding

    config = GptOssConfig(
        hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
        sliding_window=4, num_hidden_layers=2, intermediate_size=32, vocab_size=64,
        num_local_experts=2, max_position_embeddings=64,
    )  # fmt: skip
    config._attn_implementation = "eager"
    torch.manual_seed(1)
    hf = GptOssAttention(config, layer_idx=layer).eval()
    with torch.no_grad():
        hf.sinks.normal_(0, 1.0)  # non-zero sinks, as trained
        for lin in (hf.q_proj, hf.k_proj, hf.v_proj, hf.o_proj):
            lin.bias.normal_(0, 0.1)
    window = hf.sliding_window
    rope = config.rope_parameters
    scaling = scaling_from_hf(rope, max_position_embeddings=config.max_position_embeddings)
    ours = MultiHeadAttention(
        32, 4, 2, head_dim=8, bias=True, sinks=True,
        position=RotaryEmbedding(8, base=rope["rope_theta"], scaling=scaling),
        attention="local" if window else "softmax",
        options={"window": window} if window else None,
    ).eval()  # fmt: skip
    _copy(ours, hf)
    with torch.no_grad():
        ours.sinks.copy_(hf.sinks)
    _compare(ours, hf, GptOssRotaryEmbedding(config), window)


def _qkv(dtype=torch.float64):
    g = torch.Generator().manual_seed(3)
    q = (3 * torch.randn(2, 4, 37, 16, generator=g, dtype=dtype)).requires_grad_()
    k = torch.randn(2, 2, 37, 16, generator=g, dtype=dtype).requires_grad_()
    v = torch.randn(2, 2, 37, 16, generator=g, dtype=dtype).requires_grad_()
    sinks = torch.randn(4, generator=g, dtype=dtype).requires_grad_()
    return q, k, v, sinks


@pytest.mark.parametrize("softcap", [None, 3.0])
@pytest.mark.parametrize("use_sinks", [False, True])
@pytest.mark.parametrize(
    "mask", [None, masks.causal(), masks.sliding_window(5) & masks.padding([30, 37])]
)
def test_chunked_softcap_and_sinks_equal_the_reference(softcap, use_sinks, mask):
    q, k, v, sinks = _qkv()
    inputs = [q, k, v, *([sinks] if use_sinks else [])]
    results = []
    for backend in ("reference", "chunked"):
        out = attend(
            q, k, v, mask=mask, softcap=softcap, sinks=sinks if use_sinks else None,
            backend=backend,
        )  # fmt: skip
        results.append((out, torch.autograd.grad(out.square().sum(), inputs)))
    (want, want_grads), (got, got_grads) = results
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    for a, b in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


def test_softcap_bounds_the_scores_and_sinks_take_weight():
    q, k, v, sinks = _qkv(torch.float32)
    with torch.no_grad():
        _, capped = attend(q * 100, k, v, softcap=1.0, backend="reference", return_weights=True)
        # With scores within (-1, 1) no weight can exceed e^2 times another in its row.
        ratio = capped.amax(-1) / capped.amin(-1)
        assert float(ratio.max()) <= torch.e**2 + 1e-3
        _, sunk = attend(q, k, v, sinks=sinks + 5, backend="reference", return_weights=True)
        assert float(sunk.sum(-1).max()) < 1.0  # the sink took part of every row


def test_backends_that_cannot_run_them_say_why():
    q, k, v, sinks = _qkv(torch.float32)
    reasons = explain(q, k, v, softcap=2.0, sinks=sinks)
    assert "score soft-capping not supported (softcap=2.0)" in reasons["sdpa"]
    assert "attention sinks not supported" in reasons["sdpa"]
    assert reasons["chunked"] == [] and reasons["reference"] == []
    with pytest.raises(ValueError, match=r"backend: 'sdpa' cannot run this call: score soft"):
        attend(q, k, v, softcap=2.0, backend="sdpa")
    with pytest.raises(ValueError, match=r"sinks: expected one logit per query head, shape \(4,\)"):
        attend(q, k, v, sinks=torch.zeros(3))
    with pytest.raises(ValueError, match=r"softcap: expected a positive finite float"):
        attend(q, k, v, softcap=0.0)


@pytest.mark.parametrize("prefill", [1, 2, 7, 12])
def test_streaming_sink_and_window_cache_equals_attention_under_its_mask(prefill):
    """StreamingLLM (Xiao et al. 2024): the first S tokens and the last W stay in view. A ring
    cache with ``sink_tokens`` holds S + W slots whatever the length and decodes exactly what
    full attention does under the mask causal & (window | first S keys)."""
    from attnlab.attention.caches import BoundCache

    s, w, t = 3, 5, 20
    torch.manual_seed(6)
    mha = MultiHeadAttention(16, 4, 2, position=RotaryEmbedding(4)).eval()
    x = torch.randn(2, t, 16)
    first = masks.from_tensor((torch.arange(t) < s)[None, None, None, :])
    with torch.no_grad():
        want = mha(x, mask=masks.causal() & (masks.sliding_window(w) | first))
        cache = mha.make_cache(2, 64, kind="ring", window=w, sink_tokens=s)
        assert cache.k.shape[2] == s + w  # memory bounded by sinks + window
        steps = []
        for lo, hi in [(0, prefill), *((i, i + 1) for i in range(prefill, t))]:
            steps.append(
                mha(x[:, lo:hi], cache=BoundCache(cache, torch.arange(lo, hi)[None], None))
            )
    torch.testing.assert_close(torch.cat(steps, dim=1), want, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="sink_tokens: keeps the first tokens beside a ring"):
        mha.make_cache(2, 64, kind="static", sink_tokens=2)
