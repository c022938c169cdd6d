"""Llama family (transformers ``LlamaForCausalLM``) <-> attnlab ``GPT`` in its Llama flavour.

Hugging Face stores q/k projections already permuted for the "rotate half" RoPE layout that
attnlab uses, so the tensors map one to one; only the names change.
"""

from __future__ import annotations

from torch import Tensor

from attnlab.models.gpt import GPT, GPTConfig

MODEL = GPT

IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)

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


def _rope_theta(hf: dict) -> float:
    params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    kind = params.get("rope_type", params.get("type", "default"))
    if kind != "default":
        raise ValueError(f"config.json: RoPE scaling {kind!r} is not supported yet")
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


def config_from_hf(hf: dict, tensors: dict[str, Tensor] | None = None) -> GPTConfig:
    heads = hf["num_attention_heads"]
    if hf.get("head_dim", hf["hidden_size"] // heads) != hf["hidden_size"] // heads:
        raise ValueError(
            "config.json: head_dim != hidden_size / num_attention_heads is not supported yet"
        )
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        raise ValueError("config.json: attention_bias/mlp_bias are not supported yet")
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
        rope_base=_rope_theta(hf),
        bias=False,
        tie_embeddings=hf.get("tie_word_embeddings", False),
    )


def to_attnlab(sd: dict[str, Tensor], c: GPTConfig) -> dict[str, Tensor]:
    """Hugging Face state dict -> attnlab state dict."""
    out = {
        "tok.weight": sd.pop("model.embed_tokens.weight"),
        "norm.weight": sd.pop("model.norm.weight"),
    }
    for i in range(c.n_layer):
        for ours, theirs in LAYER_KEYS.items():
            out[f"blocks.{i}.{ours}"] = sd.pop(f"model.layers.{i}.{theirs}")
    head = sd.pop("lm_head.weight", None)
    out["head.weight"] = head if head is not None else out["tok.weight"]
    out.update(sd)  # leftovers are reported as unexpected by the loader
    return out
