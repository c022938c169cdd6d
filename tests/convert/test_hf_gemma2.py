"""Gemma 2 checkpoints: logits and greedy generation equal transformers' on a tiny random model
(offset RMSNorm, sandwich norms, tanh-GeGLU, scaled embeddings, query_pre_attn_scalar,
soft-capped scores and logits, sliding-window layers alternating with global ones, head_dim
unlike hidden_size / heads), decoding with caches equals the full forward, round trips through
save_hf, refusals naming the config.json key or the GPTConfig field."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
from convert_helpers import assert_greedy_equals_transformers, assert_same_tensors, randomize
from transformers import Gemma2Config, Gemma2ForCausalLM

import attnlab
from attnlab.convert import load_hf, save_hf
from attnlab.models.gpt import GPT, GPTConfig

CONFIG = {
    "vocab_size": 97,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 4,  # sliding, global, sliding, global
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,  # not hidden_size / num_attention_heads = 8
    "max_position_embeddings": 64,
    "rms_norm_eps": 1e-5,
    "rope_parameters": {"rope_type": "default", "rope_theta": 500.0},
    "query_pre_attn_scalar": 12,  # a scale of 12 ** -0.5, not head_dim ** -0.5
    "attn_logit_softcapping": 5.0,  # small enough to bend the tiny model's scores
    "final_logit_softcapping": 3.0,
    "sliding_window": 4,  # shorter than the sequences
    "bos_token_id": None,  # no end-of-sequence: both generate exactly 10 tokens
    "eos_token_id": None,
    "pad_token_id": None,
}
T = 13


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    torch.manual_seed(0)
    hf = randomize(Gemma2ForCausalLM(Gemma2Config(**CONFIG)))
    assert hf.config.layer_types == ["sliding_attention", "full_attention"] * 2
    directory = tmp_path_factory.mktemp("gemma2")
    hf.save_pretrained(directory, safe_serialization=True)
    return directory, hf


def _batch():
    """Two rows of 13 tokens, the second left-padded by 3 (positions then start at its first
    real token) and the first right-padded by 2."""
    ids = torch.randint(0, 97, (2, T), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, T, dtype=torch.long)
    mask[0, -2:] = 0
    mask[1, :3] = 0
    return ids, mask


def _logits(model, hf=False):
    ids, mask = _batch()
    with torch.no_grad():
        if hf:
            return model(input_ids=ids, attention_mask=mask).logits
        return model(ids, mask).logits


def _error(ours, hf) -> float:
    real = _batch()[1].bool()
    return (_logits(ours)[real] - _logits(hf, hf=True)[real]).abs().max().item()


def test_gemma2_logits_equal_transformers_with_padding(hf_dir):
    directory, hf = hf_dir
    ours = load_hf(directory)
    c = ours.config
    assert (c.norm, c.mlp, c.sandwich_norm, c.scale_embeddings) == (
        "rmsnorm_offset", "geglu_tanh", True, True,
    )  # fmt: skip
    assert (c.head_dim, c.n_kv_head, c.norm_eps, c.rope_base) == (16, 2, 1e-5, 500.0)
    assert (c.softcap, c.logit_softcap, c.attn_scale) == (5.0, 3.0, 12**-0.5)
    assert (c.attention, c.window, c.layer_windows) == ("softmax", None, [4, None, 4, None])
    assert c.tie_embeddings and ours.head.weight is ours.tok.weight
    assert _error(ours, hf) < 1e-4  # measured: under 1e-5


@pytest.mark.parametrize(
    "change",
    [
        {"layer_windows": None},
        {"softcap": None},
        {"logit_softcap": None},
        {"attn_scale": None},
        {"scale_embeddings": False},
        {"norm": "rmsnorm"},
        {"mlp": "swiglu"},
    ],
    ids=lambda change: next(iter(change)),
)
def test_the_parity_depends_on_every_gemma_option(hf_dir, change):
    """Each option the conversion sets matters to the tiny model: without it (same weights)
    the logits move far past the tolerance."""
    directory, hf = hf_dir
    ours = load_hf(directory)
    other = GPT(dataclasses.replace(ours.config, **change)).eval()
    other.load_state_dict(ours.state_dict())
    assert _error(other, hf) > 1e-2


def test_without_sandwich_norms_the_state_differs_and_the_logits_move(hf_dir):
    directory, hf = hf_dir
    ours = load_hf(directory)
    other = GPT(dataclasses.replace(ours.config, sandwich_norm=False)).eval()
    state = {k: v for k, v in ours.state_dict().items() if "post_norm" not in k}
    assert len(state) == len(ours.state_dict()) - 2 * 4  # two output norms per layer
    other.load_state_dict(state)
    assert _error(other, hf) > 1e-2


def test_greedy_generation_equals_transformers(hf_dir):
    """Ten greedy tokens after a 6-token prompt, one row left-padded, through attnlab.load: the
    sequences (16 tokens) outgrow the window of 4."""
    directory, hf = hf_dir
    assert_greedy_equals_transformers(attnlab.load(directory).model, hf, vocab=97)


@pytest.mark.parametrize("kind", ["static", "dynamic"])
def test_decoding_with_caches_equals_the_full_forward(hf_dir, kind):
    """A 5-token prefill then one token at a time, past the window of the sliding layers: each
    step's logits equal the full forward's at that position."""
    ours = load_hf(hf_dir[0])
    ids, mask = _batch()
    mask[0, -2:] = 1  # left padding only: decoding appends real tokens
    with torch.no_grad():
        full = ours(ids, mask).logits
        caches = ours.make_caches(2, T, kind=kind)
        steps = [ours(ids[:, :5], mask[:, :5], caches=caches).logits]
        for i in range(5, T):
            steps.append(ours(ids[:, i : i + 1], mask[:, : i + 1], caches=caches).logits)
    real = mask.bool()
    torch.testing.assert_close(torch.cat(steps, 1)[real], full[real], atol=1e-4, rtol=0)


def test_round_trip_through_save_hf_is_exact(hf_dir, tmp_path):
    directory, hf = hf_dir
    save_hf(load_hf(directory), tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["model_type"] == "gemma2"
    assert written["architectures"] == ["Gemma2ForCausalLM"]
    assert written["query_pre_attn_scalar"] == 12
    again = Gemma2ForCausalLM.from_pretrained(tmp_path).eval()
    assert again.config.layer_types == hf.config.layer_types
    assert again.config.sliding_window == 4
    assert (again.config.attn_logit_softcapping, again.config.final_logit_softcapping) == (5, 3)
    torch.testing.assert_close(_logits(again, hf=True), _logits(hf, hf=True), atol=0, rtol=0)
    assert_same_tensors(tmp_path, directory)


def test_every_layer_windowed_or_none_is_one_attention_kind(hf_dir, tmp_path):
    """All layers sliding: local attention with the window, softcapping null: none (logits
    still equal transformers'); the defaults transformers assumes for absent keys are used."""
    directory, _ = hf_dir
    local = _edited(
        directory, tmp_path / "local", layer_types=["sliding_attention"] * 4,
        attn_logit_softcapping=None, final_logit_softcapping=None,
    )  # fmt: skip
    ours = load_hf(local)
    c = ours.config
    assert (c.attention, c.window, c.layer_windows, c.softcap, c.logit_softcap) == (
        "local", 4, None, None, None,
    )  # fmt: skip
    theirs = Gemma2ForCausalLM.from_pretrained(local).eval()
    assert theirs.config.final_logit_softcapping is None
    assert _error(ours, theirs) < 1e-4
    absent = _edited(
        directory, tmp_path / "absent",
        drop=["layer_types", "sliding_window", "query_pre_attn_scalar", "attn_logit_softcapping"],
    )  # fmt: skip
    c = load_hf(absent, weights=False).config
    assert c.layer_windows == [4096, None, 4096, None]  # sliding on even layers
    assert (c.attn_scale, c.softcap) == (256**-0.5, 50.0)


def _edited(src, dst, drop=(), **fields):
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    for key in drop:
        del cfg[key]
    cfg.update(fields)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"hidden_activation": "gelu"}, r"hidden_activation: expected 'gelu_pytorch_tanh'"),
        (
            {"use_bidirectional_attention": True},
            r"use_bidirectional_attention=True \(attention to later tokens as well\) is not",
        ),
        ({"layer_types": ["full_attention"]}, r"layer_types: expected a list of num_hidden"),
        ({"sliding_window": None}, r"sliding_window: null, but layer_types has 'sliding_att"),
        ({"sliding_window": 0}, r"sliding_window=0: expected each entry a positive int"),
        ({"query_pre_attn_scalar": 0}, r"query_pre_attn_scalar: expected a number > 0, got 0"),
        (
            {"attn_logit_softcapping": -1.0},
            r"attn_logit_softcapping=-1.0: expected a finite number > 0",
        ),
    ],
    ids=lambda v: next(iter(v)) if isinstance(v, dict) else "",
)
def test_unsupported_gemma2_fields_are_refused_naming_the_key(hf_dir, tmp_path, fields, message):
    bad = _edited(hf_dir[0], tmp_path / "bad", **fields)
    with pytest.raises(ValueError, match=r"bad/config.json: " + message):
        load_hf(bad)


def test_gpt_config_checks_the_gemma_options():
    base = {"n_layer": 2, "dim": 32, "n_head": 4, "position": "rope"}
    assert GPTConfig(**base, layer_windows=(3, None)).layer_windows == [3, None]
    with pytest.raises(ValueError, match=r"layer_windows: expected a list of n_layer=2 entries"):
        GPTConfig(**base, layer_windows=[3])
    with pytest.raises(ValueError, match=r"layer_windows: expected each entry a positive int"):
        GPTConfig(**base, layer_windows=[0, None])
    with pytest.raises(ValueError, match=r"layer_windows: .*expected attention='softmax'"):
        GPTConfig(**base, layer_windows=[3, None], attention="local", window=3)
    with pytest.raises(ValueError, match=r"attn_scale: scales dot-product softmax scores"):
        GPTConfig(**base, attn_scale=0.5, score="cosine")
    with pytest.raises(ValueError, match=r"logit_softcap: expected a finite number > 0"):
        GPTConfig(**base, logit_softcap=0.0)
    with pytest.raises(ValueError, match=r"sandwich_norm: expected true or false"):
        GPTConfig(**base, sandwich_norm="yes")
    with pytest.raises(ValueError, match=r"norm: expected one of .*rmsnorm_offset"):
        GPTConfig(**base, norm="gemma")
    # The options off by default: the modules and state of existing models stay as they were.
    plain = GPT(GPTConfig(**base)).state_dict()
    gemma = GPT(GPTConfig(**base, sandwich_norm=True, norm="rmsnorm_offset")).state_dict()
    assert set(gemma) - set(plain) == {
        f"blocks.{i}.{n}_post_norm.weight" for i in range(2) for n in ("attn", "mlp")
    }
    assert all(not v.any() for k, v in gemma.items() if k.endswith("norm.weight"))  # 1 + 0


def test_gemma_options_are_refused_by_the_families_without_them(tmp_path):
    """A Llama-shaped GPT with one Gemma option is not silently written as Llama, and
    Gemma 2's single sliding_window holds one window."""
    llama = GPTConfig.from_preset(
        "llama-small", vocab_size=50, max_len=32, n_layer=2, n_head=4, n_kv_head=2, dim=32,
        hidden=48, logit_softcap=3.0,
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"as Llama: logit_softcap=3.0 \(Llama needs None\)"):
        save_hf(GPT(llama), tmp_path / "llama")
    gemma = load_hf(_gemma_dir(tmp_path), weights=False).config
    two = dataclasses.replace(gemma, layer_windows=[4, None, 8, None])
    with pytest.raises(ValueError, match=r"as Gemma2: layer_windows with windows \[4, 8\]"):
        save_hf(GPT(two), tmp_path / "two")
    assert not (tmp_path / "two" / "config.json").exists()


def _gemma_dir(tmp_path):
    directory = tmp_path / "tiny"
    Gemma2ForCausalLM(Gemma2Config(**CONFIG)).save_pretrained(directory)
    return directory


def test_offset_rmsnorm_and_geglu_compute_gemmas_formulas():
    """The layers alone, against transformers' modules with the same weights, in bfloat16 too
    (the norm works in float32 and rounds once, as Gemma's does)."""
    from transformers.models.gemma2.modeling_gemma2 import Gemma2MLP, Gemma2RMSNorm

    from attnlab.layers import make_mlp, make_norm

    g = torch.Generator().manual_seed(3)
    theirs = Gemma2RMSNorm(32, eps=1e-5)
    ours = make_norm("rmsnorm_offset", 32, eps=1e-5)
    with torch.no_grad():
        theirs.weight.copy_(torch.randn(32, generator=g))
        ours.weight.copy_(theirs.weight)
    x = 3 * torch.randn(2, 5, 32, generator=g)
    for dtype in (torch.float32, torch.bfloat16):
        want = theirs.to(dtype)(x.to(dtype))
        assert torch.equal(ours.to(dtype)(x.to(dtype)), want)
    mlp = Gemma2MLP(Gemma2Config(**CONFIG)).float()
    geglu = make_mlp("geglu_tanh", 32, 64, bias=False)
    geglu.load_state_dict(
        {f"{n}.weight": getattr(mlp, f"{n}_proj").weight for n in ("gate", "up", "down")}
    )
    torch.testing.assert_close(geglu(x), mlp(x), atol=1e-6, rtol=0)
