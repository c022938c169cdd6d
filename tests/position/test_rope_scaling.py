"""RoPE scalings (dynamic NTK, YaRN, Llama 3) against transformers' own RoPE code, and the
Hugging Face ``rope_scaling`` dict mapping in both directions."""

import dataclasses
import math

import pytest
import torch

from attnlab.convert.maps.rope_scaling import scaling_from_hf, scaling_to_hf
from attnlab.position import (
    DynamicNTKScaling,
    LinearScaling,
    Llama3Scaling,
    NTKScaling,
    RotaryEmbedding,
    YarnScaling,
    apply_rotary,
)

# Our frequencies are worked out in float64 and rounded once; transformers works in float32, so
# its frequencies are off by up to a few units in the last place (~3.6e-7 relative for plain
# RoPE already). Any formula difference is orders of magnitude larger.
FREQ_RTOL = 5e-7


def hf():
    """transformers' LlamaConfig, ROPE_INIT_FUNCTIONS and LlamaRotaryEmbedding (5.x API)."""
    pytest.importorskip("transformers", minversion="5.0")
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    return LlamaConfig, ROPE_INIT_FUNCTIONS, LlamaRotaryEmbedding


def hf_config(rope: dict, *, head_dim: int, max_len: int, base: float, rotary_fraction=1.0):
    """A tiny LlamaConfig carrying ``rope`` as its rope_parameters."""
    llama_config, _, _ = hf()
    params = {**rope, "rope_theta": base}
    if rotary_fraction != 1.0:
        params["partial_rotary_factor"] = rotary_fraction
    return llama_config(
        hidden_size=2 * head_dim,
        num_attention_heads=2,
        head_dim=head_dim,
        max_position_embeddings=max_len,
        rope_parameters=params,
    )


def hf_frequencies(config, **kwargs):
    _, init_functions, _ = hf()
    return init_functions[config.rope_parameters["rope_type"]](config, **kwargs)


def ours(rope: dict, *, head_dim: int, max_len: int, base: float, rotary_fraction=1.0):
    return RotaryEmbedding(
        head_dim,
        base=base,
        rotary_dim=int(head_dim * rotary_fraction),
        scaling=scaling_from_hf(rope, max_position_embeddings=max_len),
    )


def assert_frequencies_match(got, want):
    assert got.dtype == want.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=FREQ_RTOL, atol=0)


def yarn(factor, original, **extra):
    return {
        "rope_type": "yarn",
        "factor": factor,
        "original_max_position_embeddings": original,
        **extra,
    }


def llama3(factor, low, high, original):
    return {
        "rope_type": "llama3",
        "factor": factor,
        "low_freq_factor": low,
        "high_freq_factor": high,
        "original_max_position_embeddings": original,
    }


# (head_dim, base, rotary fraction, rope dict); max_position_embeddings = factor * original.
YARN_CASES = {
    "llama2-7b-yarn": (128, 10000.0, 1.0, yarn(16.0, 4096)),
    "qwen2.5": (128, 1e6, 1.0, yarn(4.0, 32768)),
    "tiny-betas": (16, 10000.0, 1.0, yarn(4.0, 256, beta_fast=8, beta_slow=2)),
    "odd-pairs": (24, 10000.0, 1.0, yarn(2.0, 64)),
    "partial": (64, 10000.0, 0.5, yarn(8.0, 2048)),
    "deepseek-mscale": (64, 10000.0, 1.0, yarn(40.0, 4096, mscale=0.707, mscale_all_dim=1.0)),
    "gpt-oss-untruncated": (64, 150000.0, 1.0, yarn(32.0, 4096, truncate=False)),
    "explicit-attention-factor": (32, 500000.0, 1.0, yarn(4.0, 1024, attention_factor=0.8)),
    "step-not-ramp": (8, 10000.0, 1.0, yarn(4.0, 4)),  # both bounds clamp to pair 0
    "ramp-past-last-pair": (16, 100.0, 1.0, yarn(4.0, 1024)),  # upper bound clamps to R - 1
}


@pytest.mark.parametrize("case", YARN_CASES)
def test_yarn_frequencies_and_attention_factor_match_transformers(case):
    head_dim, base, fraction, rope = YARN_CASES[case]
    max_len = int(rope["factor"] * rope["original_max_position_embeddings"])
    kw = {"head_dim": head_dim, "max_len": max_len, "base": base, "rotary_fraction": fraction}
    want_freq, want_factor = hf_frequencies(hf_config(rope, **kw))
    emb = ours(rope, **kw)
    assert_frequencies_match(emb.inv_freq, want_freq)
    assert emb.attention_factor == pytest.approx(want_factor, rel=1e-12)
    # Not vacuous: YaRN moved some frequencies away from plain RoPE's.
    plain = RotaryEmbedding(head_dim, base=base, rotary_dim=emb.rotary_dim)
    assert not torch.allclose(emb.inv_freq, plain.inv_freq, rtol=1e-3)


def test_yarn_without_factor_derives_it_from_the_lengths_as_transformers():
    rope = {"rope_type": "yarn", "factor": None, "original_max_position_embeddings": 512}
    want_freq, want_factor = hf_frequencies(
        hf_config(rope, head_dim=32, max_len=2048, base=10000.0)
    )
    emb = ours(rope, head_dim=32, max_len=2048, base=10000.0)
    assert emb.scaling == YarnScaling(4.0, 512)
    assert_frequencies_match(emb.inv_freq, want_freq)
    assert emb.attention_factor == pytest.approx(want_factor, rel=1e-12)


LLAMA3_CASES = {
    "llama3.1-8b": (128, 500000.0, 1.0, llama3(8.0, 1.0, 4.0, 8192)),
    "llama3.2-1b": (64, 500000.0, 1.0, llama3(32.0, 1.0, 4.0, 8192)),
    "tiny": (16, 10000.0, 1.0, llama3(4.0, 1.0, 4.0, 64)),
    "partial-other-factors": (32, 10000.0, 0.5, llama3(2.0, 2.0, 8.0, 256)),
}


@pytest.mark.parametrize("case", LLAMA3_CASES)
def test_llama3_frequencies_match_transformers(case):
    head_dim, base, fraction, rope = LLAMA3_CASES[case]
    max_len = int(rope["factor"] * rope["original_max_position_embeddings"])
    kw = {"head_dim": head_dim, "max_len": max_len, "base": base, "rotary_fraction": fraction}
    want_freq, want_factor = hf_frequencies(hf_config(rope, **kw))
    emb = ours(rope, **kw)
    assert_frequencies_match(emb.inv_freq, want_freq)
    assert emb.attention_factor == want_factor == 1.0
    # All three bands occur: kept (first), blended, and divided by the factor (last).
    plain = RotaryEmbedding(head_dim, base=base, rotary_dim=emb.rotary_dim).inv_freq
    ratio = plain / emb.inv_freq
    assert ratio[0] == 1.0
    assert ratio[-1].item() == pytest.approx(rope["factor"], rel=1e-6)
    assert ((ratio > 1.001) & (ratio < rope["factor"] * 0.999)).any()


@pytest.mark.parametrize(("head_dim", "base", "fraction"), [(16, 10000.0, 1.0), (64, 1e6, 0.5)])
@pytest.mark.parametrize("seq_len", [65, 100, 256, 1000])
def test_dynamic_frequencies_match_transformers_past_the_original_length(
    head_dim, base, fraction, seq_len
):
    rope = {"rope_type": "dynamic", "factor": 4.0}
    kw = {"head_dim": head_dim, "max_len": 64, "base": base, "rotary_fraction": fraction}
    want, want_factor = hf_frequencies(hf_config(rope, **kw), seq_len=torch.tensor(seq_len))
    emb = ours(rope, **kw)
    # The length is the largest position + 1, wherever it sits among the positions.
    positions = torch.tensor([[0, seq_len - 1, 3], [5, 6, 7]])
    got = emb.frequencies(positions)
    assert_frequencies_match(got, want)
    assert emb.attention_factor == want_factor == 1.0
    assert not torch.allclose(got, emb.inv_freq, rtol=1e-4)


@pytest.mark.parametrize("last", [0, 1, 40, 63])
def test_dynamic_up_to_the_original_length_is_plain_rope_exactly(last):
    emb = RotaryEmbedding(16, scaling=DynamicNTKScaling(4.0, original_max_len=64))
    plain = RotaryEmbedding(16)
    positions = torch.tensor([[0, 1, last], [last, 2, 3]])
    assert torch.equal(emb.frequencies(positions), plain.inv_freq)
    for got, want in zip(emb.cos_sin(positions), plain.cos_sin(positions), strict=True):
        assert torch.equal(got, want)
    x = torch.randn(2, 2, 3, 16)
    assert torch.equal(emb.rotate(x, positions), plain.rotate(x, positions))
    # One past the original length, the base starts growing.
    assert not torch.equal(emb.frequencies(torch.tensor([64])), plain.inv_freq)


# Positions past the original context of each config (and a few inside it), two rows.
MODULE_CASES = {
    "default": ({"rope_type": "default"}, 64),
    "linear": ({"rope_type": "linear", "factor": 4.0}, 64),
    "dynamic": ({"rope_type": "dynamic", "factor": 4.0}, 64),
    "yarn": (yarn(4.0, 64), 256),
    "llama3": (llama3(4.0, 1.0, 4.0, 64), 256),
}


@pytest.mark.parametrize("case", MODULE_CASES)
@pytest.mark.parametrize("last", [100, 255])
def test_cos_sin_match_transformers_rotary_module(case, last):
    _, _, llama_rotary = hf()
    rope, max_len = MODULE_CASES[case]
    config = hf_config(rope, head_dim=16, max_len=max_len, base=10000.0)
    positions = torch.stack((torch.arange(last - 39, last + 1), torch.arange(40) * 2))  # (2, 40)
    want_cos, want_sin = llama_rotary(config)(torch.zeros(2, 40, 16), positions)
    emb = ours(rope, head_dim=16, max_len=max_len, base=10000.0)
    cos, sin = emb.cos_sin(positions)
    # 1e-6, plus 1e-6 of each angle: the float32 frequencies of the two libraries differ in
    # their last bits (see FREQ_RTOL), and position * frequency carries that to the angle.
    angle = positions[..., None] * emb.frequencies(positions)
    tol = 1e-6 + 1e-6 * torch.cat((angle, angle), dim=-1)
    assert ((cos - want_cos).abs() <= tol).all()
    assert ((sin - want_sin).abs() <= tol).all()


def test_cos_sin_equal_transformers_module_given_the_same_frequencies():
    # With the frequencies shared, the rest (angles, layout, YaRN's scale) is the same float32
    # arithmetic, so the outputs agree to 1e-6 at any position.
    _, _, llama_rotary = hf()
    rope = yarn(8.0, 128)
    config = hf_config(rope, head_dim=32, max_len=1024, base=10000.0)
    theirs = llama_rotary(config)
    emb = ours(rope, head_dim=32, max_len=1024, base=10000.0)
    theirs.inv_freq.copy_(emb.inv_freq)
    positions = torch.tensor([[0, 127, 128, 500, 1023]])
    want = theirs(torch.zeros(1, 5, 32), positions)
    cos, sin = emb.cos_sin(positions)
    torch.testing.assert_close(cos, want[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(sin, want[1], rtol=0, atol=1e-6)
    # Not vacuous: YaRN's scale is in both (cos^2 + sin^2 = attention_factor^2, not 1).
    scale = 0.1 * math.log(8.0) + 1
    assert emb.attention_factor == pytest.approx(scale)
    torch.testing.assert_close(cos.square() + sin.square(), torch.full_like(cos, scale**2))


def test_yarn_scales_only_the_rotated_channels():
    emb = RotaryEmbedding(16, rotary_dim=8, scaling=YarnScaling(4.0, 64))
    x = torch.randn(1, 2, 3, 16)
    out = emb.rotate(x, torch.tensor([5, 100, 300]))
    torch.testing.assert_close(
        out[..., :8].norm(dim=-1), x[..., :8].norm(dim=-1) * emb.attention_factor
    )
    assert torch.equal(out[..., 8:], x[..., 8:])


def test_dynamic_forward_rotates_q_and_k_with_one_set_of_frequencies():
    emb = RotaryEmbedding(8, scaling=DynamicNTKScaling(2.0, original_max_len=16))
    q, k = torch.randn(1, 2, 1, 8), torch.randn(1, 2, 40, 8)
    q_pos, k_pos = torch.tensor([20]), torch.arange(40)
    q_rot, k_rot = emb(q, k, q_pos, k_pos)
    shared = emb.frequencies(q_pos, k_pos)  # from the largest position, 39
    assert torch.equal(shared, emb.frequencies(torch.tensor([39])))

    def rotate(x, pos):
        angles = pos[:, None].float() * shared
        angles = torch.cat((angles, angles), dim=-1)
        return apply_rotary(x, angles.cos(), angles.sin())

    torch.testing.assert_close(q_rot, rotate(q, q_pos), rtol=0, atol=1e-6)
    torch.testing.assert_close(k_rot, rotate(k, k_pos), rtol=0, atol=1e-6)
    # Rotating q alone would use n = 21 and so different frequencies.
    assert not torch.allclose(emb.rotate(q, q_pos), q_rot)


def test_dynamic_compiles_into_one_graph_for_every_length():
    emb = RotaryEmbedding(16, scaling=DynamicNTKScaling(4.0, original_max_len=64))
    q, k = torch.randn(1, 2, 1, 16), torch.randn(1, 2, 1, 16)
    step = torch.compile(emb, backend="eager", fullgraph=True)  # fails on any graph break
    step(q, k, torch.tensor([3]))
    torch.compiler.set_stance("fail_on_recompile")  # one static-shape decode graph
    try:
        for position in (3, 63, 64, 500):
            got = step(q, k, torch.tensor([position]))
            want = emb(q, k, torch.tensor([position]))
            for a, b in zip(got, want, strict=True):
                assert torch.equal(a, b)
    finally:
        torch.compiler.set_stance("default")


@pytest.mark.parametrize(
    "scaling",
    [
        YarnScaling(8.0, 128, beta_fast=16.0),
        Llama3Scaling(8.0, 1.0, 4.0, 128),
        DynamicNTKScaling(4.0, 64),
    ],
    ids=lambda s: type(s).__name__,
)
def test_module_cast_to_bf16_keeps_the_scaled_float32_frequencies(scaling):
    emb = RotaryEmbedding(16, scaling=scaling)
    cast = RotaryEmbedding(16, scaling=scaling).to(torch.bfloat16)
    positions = torch.tensor([100, 1000])
    assert torch.equal(cast.frequencies(positions), emb.frequencies(positions))


# --- Hugging Face rope_scaling dicts -------------------------------------------------------------

QWEN25 = {"factor": 4.0, "original_max_position_embeddings": 32768, "type": "yarn"}
DEEPSEEK_V3 = {
    "beta_fast": 32,
    "beta_slow": 1,
    "factor": 40,
    "mscale": 1.0,
    "mscale_all_dim": 1.0,
    "original_max_position_embeddings": 4096,
    "type": "yarn",
}
# (rope_scaling as in the config, max_position_embeddings, expected)
REAL_CONFIGS = {
    "none": (None, None, None),
    "empty": ({}, None, None),
    "default": ({"rope_type": "default", "rope_theta": 10000.0}, None, None),
    "linear-old-key": ({"type": "linear", "factor": 2.0}, None, LinearScaling(2.0)),
    "dynamic": ({"type": "dynamic", "factor": 2.0}, 4096, DynamicNTKScaling(2.0, 4096)),
    "llama3.1": (llama3(8.0, 1.0, 4.0, 8192), 131072, Llama3Scaling(8.0, 1.0, 4.0, 8192)),
    "qwen2.5": (QWEN25, 32768, YarnScaling(4.0, 32768)),
    "both-type-keys": ({**QWEN25, "rope_type": "yarn"}, 32768, YarnScaling(4.0, 32768)),
    "deepseek-v3": (
        DEEPSEEK_V3,
        163840,
        YarnScaling(40, 4096, beta_fast=32, beta_slow=1, mscale=1.0, mscale_all_dim=1.0),
    ),
    "gpt-oss": (
        yarn(32.0, 4096, beta_fast=32.0, beta_slow=1.0, truncate=False, rope_theta=150000.0),
        131072,
        YarnScaling(32.0, 4096, truncate=False),
    ),
    "yarn-original-from-config": (
        {"rope_type": "yarn", "factor": 2.0},
        1024,
        YarnScaling(2.0, 1024),
    ),
}


@pytest.mark.parametrize("case", REAL_CONFIGS)
def test_scaling_from_hf_reads_real_configs(case):
    rope, max_len, expected = REAL_CONFIGS[case]
    assert scaling_from_hf(rope, max_position_embeddings=max_len) == expected


def test_deepseek_mscale_gives_the_ratio_of_the_two_scales():
    s = YarnScaling(40.0, 4096, mscale=0.707, mscale_all_dim=1.0)
    ln = math.log(40.0)
    assert s.effective_attention_factor == pytest.approx((0.0707 * ln + 1) / (0.1 * ln + 1))
    assert YarnScaling(40.0, 4096, mscale=1.0, mscale_all_dim=1.0).effective_attention_factor == 1
    assert YarnScaling(40.0, 4096).effective_attention_factor == pytest.approx(0.1 * ln + 1)
    assert YarnScaling(1.0, 4096).effective_attention_factor == 1.0


ROUND_TRIP = [
    LinearScaling(4.0),
    DynamicNTKScaling(2.0, 512),
    YarnScaling(4.0, 512),
    YarnScaling(16.0, 512, beta_fast=16.0, beta_slow=2.0, attention_factor=1.5, truncate=False),
    YarnScaling(40.0, 512, mscale=0.707, mscale_all_dim=1.0),
    Llama3Scaling(8.0, 1.0, 4.0, 512),
]


@pytest.mark.parametrize("scaling", ROUND_TRIP, ids=repr)
def test_scaling_to_hf_round_trips_and_transformers_reads_it(scaling):
    rope = scaling_to_hf(scaling)
    # The dynamic original length travels as the config's max_position_embeddings.
    if isinstance(scaling, DynamicNTKScaling):
        max_len = scaling.original_max_len
    else:
        max_len = int(scaling.factor * getattr(scaling, "original_max_len", 512))
    assert scaling_from_hf(rope, max_position_embeddings=max_len) == scaling
    # transformers builds the same frequencies and scale from the exported dict.
    config = hf_config(dict(rope), head_dim=32, max_len=max_len, base=10000.0)
    seq_len = {"seq_len": torch.tensor(2000)} if isinstance(scaling, DynamicNTKScaling) else {}
    want_freq, want_factor = hf_frequencies(config, **seq_len)
    emb = RotaryEmbedding(32, scaling=scaling)
    assert_frequencies_match(emb.frequencies(torch.tensor([1999])), want_freq)
    assert emb.attention_factor == pytest.approx(want_factor, rel=1e-12)


def test_scaling_to_hf_writes_defaults_sparingly():
    assert scaling_to_hf(None) == {"rope_type": "default"}
    assert scaling_from_hf(scaling_to_hf(None)) is None
    assert scaling_to_hf(YarnScaling(4.0, 512)) == {
        "rope_type": "yarn",
        "factor": 4.0,
        "original_max_position_embeddings": 512,
    }
    assert scaling_to_hf(YarnScaling(4.0, 512, truncate=False))["truncate"] is False


FROM_HF_ERRORS = {
    "typo-type": (
        {"rope_type": "yran", "factor": 2.0},
        None,
        ValueError,
        r"rope_scaling\['rope_type'\]: unknown RoPE scaling 'yran' \(did you mean 'yarn'\?\); "
        r"expected one of default, linear, dynamic, yarn, llama3",
    ),
    "unsupported-type": (
        {"rope_type": "longrope", "short_factor": [1.0], "long_factor": [2.0]},
        None,
        ValueError,
        r"unknown RoPE scaling 'longrope'; expected one of default, linear",
    ),
    "type-not-a-string": ({"rope_type": 3}, None, ValueError, r"unknown RoPE scaling 3;"),
    "typo-key": (
        {"rope_type": "yarn", "factor": 2.0, "orignal_max_position_embeddings": 64},
        128,
        ValueError,
        r"rope_scaling\['orignal_max_position_embeddings'\]: unknown key for rope_type 'yarn' "
        r"\(did you mean 'original_max_position_embeddings'\?\)",
    ),
    "no-factor": (
        {"rope_type": "linear"},
        None,
        ValueError,
        r"rope_scaling\['factor'\] is required for rope_type 'linear'; got keys \['rope_type'\]",
    ),
    "llama3-no-high": (
        {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0},
        64,
        ValueError,
        r"rope_scaling\['high_freq_factor'\] is required for rope_type 'llama3'",
    ),
    "llama3-no-original": (
        {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0},
        None,
        ValueError,
        r"\['original_max_position_embeddings'\] is required for rope_type 'llama3' \(or pass",
    ),
    "yarn-no-factor": (
        {"rope_type": "yarn", "original_max_position_embeddings": 64},
        None,
        ValueError,
        r"rope_scaling\['factor'\] is required for rope_type 'yarn' \(or pass",
    ),
    "dynamic-no-length": (
        {"rope_type": "dynamic", "factor": 2.0},
        None,
        ValueError,
        r"'dynamic' takes its original context length from the config's max_position_embeddings",
    ),
    "types-disagree": (
        {"rope_type": "yarn", "type": "linear", "factor": 2.0},
        64,
        ValueError,
        r"'rope_type' 'yarn' and 'type' 'linear' disagree",
    ),
    "per-layer": (
        {"full_attention": {"rope_type": "default"}, "sliding_attention": {"rope_type": "default"}},
        None,
        ValueError,
        r"per-layer-type RoPE parameters \(under \['full_attention', 'sliding_attention'\]\)",
    ),
    "bad-value": (
        yarn(2.0, 64, beta_fast=-1),
        None,
        ValueError,
        r"rope_scaling \(rope_type 'yarn'\): YarnScaling.beta_fast must be > 0; got -1",
    ),
    "bad-type": (
        {"rope_type": "linear", "factor": "2"},
        None,
        TypeError,
        r"rope_scaling \(rope_type 'linear'\): LinearScaling.factor must be a number; got str",
    ),
    "not-a-dict": (
        [("rope_type", "linear")],
        None,
        TypeError,
        r"rope_scaling must be a dict or None; got list",
    ),
}


@pytest.mark.parametrize("case", FROM_HF_ERRORS)
def test_scaling_from_hf_errors_name_the_key(case):
    rope, max_len, error, pattern = FROM_HF_ERRORS[case]
    with pytest.raises(error, match=pattern):
        scaling_from_hf(rope, max_position_embeddings=max_len)


def test_scaling_to_hf_errors():
    with pytest.raises(
        ValueError, match=r"NTKScaling has no Hugging Face rope_type.*effective_base"
    ):
        scaling_to_hf(NTKScaling(2.0))
    with pytest.raises(TypeError, match=r"scaling must be a RoPE scaling or None; got str"):
        scaling_to_hf("yarn")


BAD_FIELDS = [
    (lambda: YarnScaling(0, 64), ValueError, r"YarnScaling.factor must be > 0; got 0"),
    (lambda: YarnScaling("4", 64), TypeError, r"YarnScaling.factor must be a number; got str '4'"),
    (lambda: YarnScaling(4.0, 0), ValueError, r"YarnScaling.original_max_len must be >= 1; got 0"),
    (lambda: YarnScaling(4.0, 64.0), TypeError, r"YarnScaling.original_max_len must be an int"),
    (lambda: YarnScaling(4.0, True), TypeError, r"YarnScaling.original_max_len must be an int"),
    (
        lambda: YarnScaling(4.0, 64, beta_fast=1.0, beta_slow=2.0),
        ValueError,
        r"YarnScaling.beta_fast must be >= beta_slow=2.0; got 1.0",
    ),
    (lambda: YarnScaling(4.0, 64, beta_slow=0), ValueError, r"YarnScaling.beta_slow must be > 0"),
    (
        lambda: YarnScaling(4.0, 64, attention_factor=0.0),
        ValueError,
        r"YarnScaling.attention_factor must be > 0; got 0.0",
    ),
    (
        lambda: YarnScaling(4.0, 64, mscale=-1.0, mscale_all_dim=1.0),
        ValueError,
        r"YarnScaling.mscale must be > 0; got -1.0",
    ),
    (
        lambda: YarnScaling(4.0, 64, truncate="no"),
        TypeError,
        r"YarnScaling.truncate must be a bool; got 'no'",
    ),
    (
        lambda: Llama3Scaling(8.0, 4.0, 4.0, 8192),
        ValueError,
        r"Llama3Scaling.high_freq_factor must be > low_freq_factor=4.0; got 4.0",
    ),
    (
        lambda: Llama3Scaling(8.0, 0.0, 4.0, 8192),
        ValueError,
        r"Llama3Scaling.low_freq_factor must be > 0; got 0.0",
    ),
    (lambda: DynamicNTKScaling(-2.0, 64), ValueError, r"DynamicNTKScaling.factor must be > 0"),
    (
        lambda: DynamicNTKScaling(2.0, None),
        TypeError,
        r"DynamicNTKScaling.original_max_len must be an int \(a number of positions\); got None",
    ),
    (
        lambda: RotaryEmbedding(2, scaling=DynamicNTKScaling(2.0, 64)),
        ValueError,
        r"DynamicNTKScaling needs rotary_dim > 2",
    ),
    (
        lambda: RotaryEmbedding(8, base=1.0, scaling=YarnScaling(2.0, 64)),
        ValueError,
        r"YarnScaling needs base != 1",
    ),
    (
        lambda: RotaryEmbedding(8, scaling={"rope_type": "yarn"}),
        TypeError,
        r"scaling must be None, .*DynamicNTKScaling, YarnScaling or Llama3Scaling; got dict",
    ),
]


@pytest.mark.parametrize(("make", "error", "pattern"), BAD_FIELDS)
def test_bad_scaling_fields_name_field_expected_and_got(make, error, pattern):
    with pytest.raises(error, match=pattern):
        make()


def test_scalings_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        YarnScaling(4.0, 64).factor = 8.0  # type: ignore[misc]
