"""Multi-head latent attention (DeepSeek-V2/V3) against transformers' own ``DeepseekV3Attention``
given the same weights: a right-padded batch with and without the query bottleneck, with and
without interleaved rotary weights, plain RoPE and YaRN with mscale (which also changes the
softmax scale); decoding through the latent cache (which holds only c_kv and k_pe) equals the
full forward; gradients reach every parameter and equal transformers'; bad arguments are named.
"""

from __future__ import annotations

import math

import pytest
import torch

from attnlab.attention import LatentAttention, LatentCache, masks
from attnlab.attention.caches import BoundCache, Caches
from attnlab.attention.latent import deinterleave_rope, full_kv_bytes_per_token
from attnlab.attention.static_cache import StaticKVCache
from attnlab.convert.maps.rope_scaling import scaling_from_hf
from attnlab.position import RotaryEmbedding

transformers = pytest.importorskip("transformers")
from transformers import DeepseekV3Config  # noqa: E402
from transformers.models.deepseek_v3.modeling_deepseek_v3 import (  # noqa: E402
    DeepseekV3Attention,
    DeepseekV3RotaryEmbedding,
)

C, H, RKV, DN, DR, DV = 32, 4, 8, 8, 4, 8
B, T = 2, 7
LENGTHS = [7, 4]  # row 1 is right-padded
TOL = dict(atol=1e-5, rtol=0)

YARN = {
    "rope_type": "yarn",
    "rope_theta": 10000.0,
    "factor": 4.0,
    "original_max_position_embeddings": 16,
    "mscale": 0.9,
    "mscale_all_dim": 0.707,
    "beta_fast": 32,
    "beta_slow": 1,
}
DEFAULT = {"rope_type": "default", "rope_theta": 10000.0}

# attnlab name -> transformers name (the mapping documented in attnlab.attention.latent).
NAMES = {
    "q_down.weight": "q_a_proj.weight",
    "q_down.bias": "q_a_proj.bias",
    "q_norm.weight": "q_a_layernorm.weight",
    "q_up.weight": "q_b_proj.weight",
    "q_proj.weight": "q_proj.weight",
    "kv_down.weight": "kv_a_proj_with_mqa.weight",
    "kv_down.bias": "kv_a_proj_with_mqa.bias",
    "kv_norm.weight": "kv_a_layernorm.weight",
    "kv_up.weight": "kv_b_proj.weight",
    "out_proj.weight": "o_proj.weight",
    "out_proj.bias": "o_proj.bias",
}
# Rows holding rotary channels in interleaved checkpoints: name -> group of rows per head.
ROPE_ROWS = {
    "q_up.weight": DN + DR,
    "q_proj.weight": DN + DR,
    "kv_down.weight": RKV + DR,
    "kv_down.bias": RKV + DR,
}


def _config(q_lora_rank=16, interleave=True, rope=YARN, bias=False) -> DeepseekV3Config:
    config = DeepseekV3Config(
        hidden_size=C,
        num_attention_heads=H,
        num_key_value_heads=H,
        q_lora_rank=q_lora_rank,
        kv_lora_rank=RKV,
        qk_nope_head_dim=DN,
        qk_rope_head_dim=DR,
        v_head_dim=DV,
        rope_interleave=interleave,
        attention_bias=bias,
        max_position_embeddings=64,
        rope_parameters=dict(rope),
        vocab_size=16,
        intermediate_size=8,
        moe_intermediate_size=8,
        n_routed_experts=2,
        num_experts_per_tok=1,
        n_group=1,
        topk_group=1,
    )
    config._attn_implementation = "eager"
    return config


def _pair(config: DeepseekV3Config) -> tuple[DeepseekV3Attention, object, LatentAttention]:
    """transformers' attention with random weights (norm weights too), its rotary embedding,
    and ours with the same weights copied by ``NAMES``."""
    hf = DeepseekV3Attention(config, layer_idx=0).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.copy_(1 + 0.2 * torch.randn_like(p) if "layernorm" in name else torch.randn_like(p))
            if "layernorm" not in name:
                p.mul_(0.3)
    rope = RotaryEmbedding(
        DR,
        base=config.rope_parameters["rope_theta"],
        scaling=scaling_from_hf(config.rope_parameters, max_position_embeddings=64),
    )
    ours = LatentAttention(
        C,
        H,
        q_lora_rank=config.q_lora_rank,
        kv_lora_rank=RKV,
        qk_nope_head_dim=DN,
        qk_rope_head_dim=DR,
        v_head_dim=DV,
        rope=rope,
        bias=config.attention_bias,
    ).eval()
    theirs = dict(hf.named_parameters())
    with torch.no_grad():
        for name, p in ours.named_parameters():
            t = theirs.pop(NAMES[name])
            if config.rope_interleave and name in ROPE_ROWS:
                t = deinterleave_rope(t, group=ROPE_ROWS[name], rope_dim=DR)
            p.copy_(t)
    assert not theirs, f"transformers parameters without an attnlab counterpart: {theirs}"
    return hf, DeepseekV3RotaryEmbedding(config), ours


def _hf_mask(lengths) -> torch.Tensor:
    """Transformers' additive (B, 1, T, T) mask: causal, with right padding on the keys."""
    q, k = torch.arange(T)[:, None], torch.arange(T)[None, :]
    allowed = (k <= q)[None, None] & (k < torch.tensor(lengths)[:, None, None, None])
    return torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)


def _hf_forward(hf, rotary, x, lengths):
    positions = torch.arange(x.shape[1])[None].expand(x.shape[0], -1)
    out, weights = hf(x, position_embeddings=rotary(x, positions), attention_mask=_hf_mask(lengths))
    return out, weights


CASES = {
    "bottleneck-interleave-yarn": dict(q_lora_rank=16, interleave=True, rope=YARN),
    "bottleneck-halves-yarn": dict(q_lora_rank=16, interleave=False, rope=YARN),
    "bottleneck-interleave-plain": dict(q_lora_rank=16, interleave=True, rope=DEFAULT),
    "bottleneck-halves-plain": dict(q_lora_rank=16, interleave=False, rope=DEFAULT),
    "plain-q-interleave-yarn": dict(q_lora_rank=None, interleave=True, rope=YARN),
    "plain-q-halves-plain": dict(q_lora_rank=None, interleave=False, rope=DEFAULT),
    "bias-interleave-yarn": dict(q_lora_rank=16, interleave=True, rope=YARN, bias=True),
}


@pytest.mark.parametrize("case", CASES)
def test_padded_batch_equals_transformers(case):
    hf, rotary, ours = _pair(_config(**CASES[case]))
    x = torch.randn(B, T, C)
    with torch.no_grad():
        want, _ = _hf_forward(hf, rotary, x, LENGTHS)
        got = ours(x, mask=masks.causal() & masks.padding(LENGTHS))
    assert ours.scale == pytest.approx(hf.scaling, rel=1e-12)
    torch.testing.assert_close(got, want, **TOL)


def test_yarn_mscale_changes_the_softmax_scale():
    """DeepSeek's YaRN multiplies the softmax scale by m(s, mscale_all_dim)^2; without it the
    outputs would differ from transformers' (the padded-batch test would fail)."""
    _, _, ours = _pair(_config(rope=YARN))
    m = 0.1 * YARN["mscale_all_dim"] * math.log(YARN["factor"]) + 1
    assert ours.scale == pytest.approx((DN + DR) ** -0.5 * m * m, rel=1e-12)
    assert ours.scale != pytest.approx((DN + DR) ** -0.5, rel=1e-3)


def test_decoding_through_the_latent_cache_equals_full_forward_and_transformers():
    hf, rotary, ours = _pair(_config(q_lora_rank=16, interleave=True, rope=YARN))
    x = torch.randn(B, T, C)
    with torch.no_grad():
        want, _ = _hf_forward(hf, rotary, x, [T, T])
        full = ours(x, mask=masks.causal())
        cache = ours.make_cache(B, 10)
        steps = [ours(x[:, :3], cache=cache)]  # a prefill of 3, then one token at a time
        steps += [ours(x[:, i : i + 1], cache=cache) for i in range(3, T)]
        decoded = torch.cat(steps, dim=1)
    torch.testing.assert_close(full, want, **TOL)
    torch.testing.assert_close(decoded, full, **TOL)
    torch.testing.assert_close(decoded, want, **TOL)

    # The cache holds the latent only: c_kv after its norm and k_pe after RoPE, one per token.
    assert isinstance(cache, LatentCache)
    assert cache.c_kv.shape == (B, 1, 10, RKV) and cache.k_pe.shape == (B, 1, 10, DR)
    assert [tuple(b.shape) for b in (cache.k, cache.v)] == [(B, 1, 10, RKV), (B, 1, 10, DR)]
    assert cache.lengths.tolist() == [T, T]
    with torch.no_grad():
        c_kv, k_pe = ours._latents(x)
        _, k_pe = ours.rope(k_pe, k_pe, torch.arange(T))
    # (Equal up to rounding: the cache's latents were computed a few tokens at a time.)
    torch.testing.assert_close(cache.c_kv[:, :, :T], c_kv, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(cache.k_pe[:, :, :T], k_pe, atol=1e-6, rtol=1e-6)


def test_left_padded_batch_decodes_each_row_as_alone():
    """Two prompts of 5 and 3 tokens, left-padded in one slotted cache (bound through
    ``Caches``), then two decode steps: every real output equals its row run alone."""
    _, _, ours = _pair(_config())
    prompt, extra = 5, 2
    lengths = torch.tensor([5, 3])
    x = torch.randn(B, prompt + extra, C)
    valid = torch.arange(prompt)[None] >= (prompt - lengths)[:, None]  # (B, 5): left padding
    rope_pos = (valid.long().cumsum(1) - 1).clamp(min=0)  # real tokens counted from 0
    caches = Caches([ours.make_cache(B, 8)])
    with torch.no_grad():
        outs = [ours(x[:, :prompt], cache=caches.bind(torch.arange(prompt), valid)[0],
                     positions=rope_pos)]  # fmt: skip
        next_rope = lengths.clone()
        for i in range(prompt, prompt + extra):
            (bound,) = caches.bind(caches.next_positions(1))
            outs.append(ours(x[:, i : i + 1], cache=bound, positions=next_rope[:, None]))
            next_rope += 1
        got = torch.cat(outs, dim=1)
        for b in range(B):
            pad = prompt - int(lengths[b])
            alone = torch.cat([x[b : b + 1, pad:prompt], x[b : b + 1, prompt:]], dim=1)
            want = ours(alone, mask=masks.causal())
            torch.testing.assert_close(got[b : b + 1, pad:], want, **TOL)


def test_truncate_and_reorder_act_on_the_latents():
    _, _, ours = _pair(_config())
    x = torch.randn(B, 5, C)
    cache = ours.make_cache(B, 8)
    with torch.no_grad():
        ours(x[:, :3], cache=cache)
        fourth = ours(x[:, 3:4], cache=cache)
        cache.truncate(3)  # forget position 3: writing it again gives the same output
        assert cache.lengths.tolist() == [3, 3]
        torch.testing.assert_close(ours(x[:, 3:4], cache=cache), fourth, atol=0, rtol=0)
        swap = torch.tensor([1, 0])
        want = ours(x[:, 4:5], cache=cache)
        cache.truncate(4)
        cache.reorder(swap)  # row 0 now holds row 1's latents
        got = ours(x[swap, 4:5], cache=cache)
    torch.testing.assert_close(got, want[swap], **TOL)
    assert not torch.allclose(got, want)


def test_bytes_per_token_is_the_latent():
    cache = LatentCache(B, 10, RKV, DR)
    assert cache.bytes_per_token == (RKV + DR) * 4  # fp32
    assert LatentCache(B, 10, RKV, DR, dtype=torch.bfloat16).bytes_per_token == (RKV + DR) * 2
    int8 = LatentCache(B, 10, RKV, DR, dtype=torch.int8)
    assert int8.bytes_per_token == (RKV + DR) * 1 + 2 * 4  # codes and one fp32 scale per vector
    full = full_kv_bytes_per_token(H, DN + DR, DV)
    assert full == H * (DN + DR + DV) * 4 == 320
    assert cache.bytes_per_token == 48  # 6.7 times less in this tiny config

    # DeepSeek-V3: kv_lora_rank 512, qk_rope 64, 128 heads, qk_nope 128, v 128, in bf16.
    v3 = LatentCache(1, 1, 512, 64, dtype=torch.bfloat16)
    v3_full = full_kv_bytes_per_token(128, 128 + 64, 128, dtype=torch.bfloat16)
    assert v3.bytes_per_token == (512 + 64) * 2 == 1152
    assert v3_full == 128 * (128 + 64 + 128) * 2 == 81920
    assert v3_full / v3.bytes_per_token == pytest.approx(71.11, abs=0.01)


@pytest.mark.parametrize("q_lora_rank", [16, None])
def test_backward_reaches_every_parameter_and_equals_transformers(q_lora_rank):
    config = _config(q_lora_rank=q_lora_rank, interleave=True, rope=YARN, bias=True)
    hf, rotary, ours = _pair(config)
    x = torch.randn(B, T, C)
    x_hf, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    target = torch.randn(B, T, C)
    want, _ = _hf_forward(hf, rotary, x_hf, LENGTHS)
    got = ours(x_ours, mask=masks.causal() & masks.padding(LENGTHS))
    ((want - target) ** 2).sum().backward()
    ((got - target) ** 2).sum().backward()
    torch.testing.assert_close(x_ours.grad, x_hf.grad, atol=1e-4, rtol=1e-5)
    theirs = dict(hf.named_parameters())
    for name, p in ours.named_parameters():
        assert p.grad is not None and bool(p.grad.abs().sum() > 0), name
        grad = theirs[NAMES[name]].grad
        if name in ROPE_ROWS:
            grad = deinterleave_rope(grad, group=ROPE_ROWS[name], rope_dim=DR)
        torch.testing.assert_close(p.grad, grad, atol=1e-4, rtol=1e-5, msg=name)


def test_hook_points_and_pattern_equal_transformers_weights():
    hf, rotary, ours = _pair(_config())
    x = torch.randn(B, T, C)
    seen = {}
    for name in ("q", "k", "v", "z", "out"):
        getattr(ours, f"hook_{name}").add(lambda t, n: seen.__setitem__(n, t.shape), name)
    ours.hook_pattern.add(lambda w, n: seen.__setitem__(n, w.clone()), "pattern")
    mask = masks.causal() & masks.padding(LENGTHS)
    with torch.no_grad():
        _, want_weights = _hf_forward(hf, rotary, x, LENGTHS)
        plain = ours(x, mask=mask)
    assert seen["q"] == (B, H, T, DN + DR) and seen["k"] == (B, H, T, DN + DR)
    assert seen["v"] == (B, H, T, DV) and seen["z"] == (B, H, T, DV)
    assert seen["out"] == (B, T, C)
    torch.testing.assert_close(seen["pattern"], want_weights, **TOL)

    # A replaced pattern is weighed eagerly: replacing it by itself changes nothing.
    ours.hook_pattern.add(lambda w, n: w.clone(), "pattern")
    with torch.no_grad():
        torch.testing.assert_close(ours(x, mask=mask), plain, **TOL)


def _module(**changes):
    args = dict(
        q_lora_rank=16,
        kv_lora_rank=RKV,
        qk_nope_head_dim=DN,
        qk_rope_head_dim=DR,
        v_head_dim=DV,
        rope=RotaryEmbedding(DR),
    )
    args.update(changes)
    dim, heads = args.pop("dim", C), args.pop("n_heads", H)
    return LatentAttention(dim, heads, **args)


@pytest.mark.parametrize(
    ("changes", "error", "name"),
    [
        ({"n_heads": 0}, ValueError, "n_heads"),
        ({"kv_lora_rank": 0}, ValueError, "kv_lora_rank"),
        ({"q_lora_rank": 0}, ValueError, "q_lora_rank"),
        ({"v_head_dim": 2.5}, ValueError, "v_head_dim"),
        ({"rope": None}, TypeError, "rope"),
        ({"rope": RotaryEmbedding(8)}, ValueError, "rope"),
        ({"norm_eps": 0.0}, ValueError, "norm_eps"),
        ({"scale": -1.0}, ValueError, "scale"),
        ({"bias": "yes"}, TypeError, "bias"),
    ],
)
def test_bad_constructor_arguments_are_named(changes, error, name):
    with pytest.raises(error, match=rf"^{name}: expected"):
        _module(**changes)


def test_bad_call_arguments_are_named():
    ours = _module()
    x = torch.randn(B, 3, C)
    with pytest.raises(ValueError, match=r"^x: expected shape \(B, T, C\) with C = 32"):
        ours(torch.randn(B, 3, C + 1))
    with pytest.raises(TypeError, match=r"^cache: expected a LatentCache.*StaticKVCache"):
        ours(x, cache=StaticKVCache(B, H, 8, DN + DR))
    with pytest.raises(TypeError, match=r"^cache: expected a LatentCache.*StaticKVCache"):
        ours(x, cache=BoundCache(StaticKVCache(B, 1, 8, RKV), torch.arange(3), None))
    with pytest.raises(ValueError, match=r"^cache: expected a LatentCache of .* \(8, 4\), got"):
        ours(x, cache=LatentCache(B, 8, RKV * 2, DR))
    with pytest.raises(ValueError, match=r"^positions: expected shape \(T,\) = \(3,\)"):
        ours(x, positions=torch.arange(4))
    with pytest.raises(TypeError, match=r"^positions: expected an integer tensor"):
        ours(x, positions=torch.arange(3.0))
    with pytest.raises(TypeError, match=r"^mask: expected"):
        ours(x, mask="causal")
    with pytest.raises(ValueError, match=r"^kv_lora_rank: expected a positive int, got 0"):
        LatentCache(B, 8, 0, DR)
    with pytest.raises(ValueError, match=r"^v_head_dim: expected a positive int, got 0"):
        full_kv_bytes_per_token(H, DN + DR, 0)
    with pytest.raises(ValueError, match=r"^group: expected a divisor of the 10 rows"):
        deinterleave_rope(torch.zeros(10, 3), group=4, rope_dim=2)
    with pytest.raises(ValueError, match=r"^rope_dim: expected an even number"):
        deinterleave_rope(torch.zeros(12, 3), group=4, rope_dim=3)
