"""Llama family (transformers ``LlamaForCausalLM``) <-> attnlab ``GPT`` in its Llama flavour.

Hugging Face stores q/k projections already permuted for the "rotate half" RoPE layout that
attnlab uses, so the tensors map one to one; only the names change. Both directions read the
same tables below.
"""

from __future__ import annotations

from torch import Tensor

from attnlab.convert.maps.common import size_field, variant_reasons
from attnlab.convert.maps.rope_scaling import scaling_from_hf, scaling_to_hf
from attnlab.models.gpt import GPT, GPTConfig
from attnlab.position import DynamicNTKScaling, scaling_from_dict, scaling_to_dict

NAME = "Llama"
MODEL = GPT

IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)

# attnlab config field -> config.json key (errors about a field name the file's key)
CONFIG_KEYS = {
    "vocab_size": "vocab_size",
    "max_len": "max_position_embeddings",
    "n_layer": "num_hidden_layers",
    "n_head": "num_attention_heads",
    "n_kv_head": "num_key_value_heads",
    "dim": "hidden_size",
    "hidden": "intermediate_size",
    "norm_eps": "rms_norm_eps",
    "rope_base": "rope_theta",
    "tie_embeddings": "tie_word_embeddings",
}
# config.json key of a layer count -> tensor names carrying the layer index
LAYERS = {"num_hidden_layers": r"model\.layers\.(\d+)\."}
# (config.json key, tensor names, axis): sizes the tensors must show
SIZES = [
    ("vocab_size", ("model.embed_tokens.weight",), 0),
    ("hidden_size", ("model.embed_tokens.weight",), 1),
    ("intermediate_size", ("model.layers.0.mlp.up_proj.weight",), 0),
]

# attnlab name -> Hugging Face name
TOP_KEYS = {"tok.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight"}
# attnlab name within block i -> Hugging Face name within layer i
LAYER_KEYS = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn.q_proj.weight": "self_attn.q_proj.weight",
    "attn.k_proj.weight": "self_attn.k_proj.weight",
    "attn.v_proj.weight": "self_attn.v_proj.weight",
    "attn.out_proj.weight": "self_attn.o_proj.weight",
    "mlp_norm.weight": "post_attention_layernorm.weight",
    "mlp.gate.weight": "mlp.gate_proj.weight",
    "mlp.up.weight": "mlp.up_proj.weight",
    "mlp.down.weight": "mlp.down_proj.weight",
}


def _rope(hf: dict) -> tuple[float, dict | None]:
    """The RoPE base and scaling (as GPTConfig's dict) of a config.json: transformers 5 keeps
    both in ``rope_parameters``, transformers 4 the base in ``rope_theta`` and the scaling in
    ``rope_scaling``."""
    params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    try:
        scaling = scaling_from_hf(params, max_position_embeddings=hf.get("max_position_embeddings"))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"config.json: {exc}") from None
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    return theta, scaling_to_dict(scaling)


def config_from_hf(hf: dict, tensors: dict[str, Tensor] | None = None) -> GPTConfig:
    heads, width = size_field(hf, "num_attention_heads"), size_field(hf, "hidden_size")
    if hf.get("head_dim", width // heads) != width // heads:
        raise ValueError(
            "config.json: head_dim != hidden_size / num_attention_heads is not supported yet"
        )
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"config.json: hidden_act {hf['hidden_act']!r} is not supported")
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        raise ValueError("config.json: attention_bias/mlp_bias are not supported yet")
    rope_base, rope_scaling = _rope(hf)
    return GPTConfig(
        vocab_size=hf["vocab_size"],
        max_len=hf.get("max_position_embeddings", 2048),
        n_layer=hf["num_hidden_layers"],
        n_head=heads,
        n_kv_head=hf.get("num_key_value_heads") or heads,
        dim=hf["hidden_size"],
        hidden=hf["intermediate_size"],
        norm="rmsnorm",
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        mlp="swiglu",
        position="rope",
        rope_base=rope_base,
        rope_scaling=rope_scaling,
        bias=False,
        tie_embeddings=hf.get("tie_word_embeddings", False),
    )


def supports(c: GPTConfig) -> list[str]:
    """Why ``c`` cannot be written as Llama (empty when it can)."""
    want = {
        "norm": "rmsnorm",
        "mlp": "swiglu",
        "bias": False,
        "qk_norm": False,
    }
    reasons = [
        f"{k}={getattr(c, k)!r} (Llama needs {v!r})" for k, v in want.items() if getattr(c, k) != v
    ] + variant_reasons(c, "Llama", "rope")
    scaling = scaling_from_dict(c.rope_scaling)
    try:
        scaling_to_hf(scaling)
    except ValueError as exc:
        reasons.append(f"rope_scaling: {exc}")
    if isinstance(scaling, DynamicNTKScaling) and scaling.original_max_len != c.max_len:
        reasons.append(
            "rope_scaling: transformers reads a dynamic scaling's original length from "
            f"max_position_embeddings, so original_max_len={scaling.original_max_len} must equal "
            f"max_len={c.max_len}"
        )
    return reasons


def config_to_hf(c: GPTConfig) -> dict:
    """``config.json`` contents for ``LlamaForCausalLM``; the RoPE base is written both as
    ``rope_theta`` (transformers 4) and in ``rope_parameters`` (transformers 5)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": c.vocab_size,
        "hidden_size": c.dim,
        "intermediate_size": c.hidden,
        "num_hidden_layers": c.n_layer,
        "num_attention_heads": c.n_head,
        "num_key_value_heads": c.n_kv_head,
        "head_dim": c.head_dim,
        "max_position_embeddings": c.max_len,
        "hidden_act": "silu",
        "rms_norm_eps": c.norm_eps,
        "rope_theta": c.rope_base,
        **_rope_to_hf(c),
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": c.dropout,
        "tie_word_embeddings": c.tie_embeddings,
    }


def _rope_to_hf(c: GPTConfig) -> dict:
    scaling = scaling_to_hf(scaling_from_dict(c.rope_scaling))
    out = {"rope_parameters": {"rope_type": "default", **scaling, "rope_theta": c.rope_base}}
    if c.rope_scaling is not None:
        out["rope_scaling"] = scaling  # transformers 4
    return out


def _keys(c: GPTConfig) -> dict[str, str]:
    """attnlab name -> Hugging Face name for every stored tensor."""
    keys = dict(TOP_KEYS)
    for i in range(c.n_layer):
        keys.update({f"blocks.{i}.{o}": f"model.layers.{i}.{t}" for o, t in LAYER_KEYS.items()})
    if not c.tie_embeddings:
        keys["head.weight"] = "lm_head.weight"
    return keys


def to_attnlab(sd: dict[str, Tensor], c: GPTConfig) -> dict[str, Tensor]:
    """Hugging Face state dict -> attnlab state dict."""
    out = {ours: sd.pop(theirs) for ours, theirs in _keys(c).items()}
    if c.tie_embeddings:  # transformers ties the head as well, ignoring any stored copy
        sd.pop("lm_head.weight", None)
        out["head.weight"] = out["tok.weight"]
    out.update(sd)  # leftovers are reported as unexpected by the loader
    return out


def from_attnlab(sd: dict[str, Tensor], c: GPTConfig) -> dict[str, Tensor]:
    """attnlab state dict -> Hugging Face ``LlamaForCausalLM`` state dict."""
    return {theirs: sd[ours] for ours, theirs in _keys(c).items()}
