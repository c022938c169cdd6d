"""GPT-2 (transformers ``GPT2LMHeadModel``) <-> attnlab ``GPT``.

GPT-2's linear layers are ``Conv1D``: weights stored (in, out), the transpose of
``nn.Linear``; the query/key/value projections are fused into one ``c_attn`` of width 3C.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnlab.models.gpt import GPT, GPTConfig

MODEL = GPT

# Buffers some checkpoints carry that hold no weights (the causal mask of old versions).
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")
ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}


def config_from_hf(hf: dict, tensors: dict[str, Tensor] | None = None) -> GPTConfig:
    act = hf.get("activation_function", "gelu_new")
    if act not in ACTIVATIONS:
        raise ValueError(
            f"config.json: activation_function {act!r} is not supported "
            f"(expected one of {', '.join(ACTIVATIONS)})"
        )
    return GPTConfig(
        vocab_size=hf["vocab_size"],
        max_len=hf["n_positions"],
        n_layer=hf["n_layer"],
        n_head=hf["n_head"],
        dim=hf["n_embd"],
        hidden=hf.get("n_inner") or 4 * hf["n_embd"],
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        mlp=ACTIVATIONS[act],
        tie_embeddings=hf.get("tie_word_embeddings", True),
    )


def config_to_hf(c: GPTConfig) -> dict:
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": c.vocab_size,
        "n_positions": c.max_len,
        "n_ctx": c.max_len,
        "n_layer": c.n_layer,
        "n_head": c.n_head,
        "n_embd": c.dim,
        "n_inner": c.hidden,
        "layer_norm_epsilon": c.norm_eps,
        "activation_function": {"gelu_tanh": "gelu_new", "gelu": "gelu"}[c.mlp],
        "tie_word_embeddings": c.tie_embeddings,
    }


def supports(c: GPTConfig) -> list[str]:
    """Why ``c`` cannot be written as GPT-2 (empty when it can)."""
    want = {"norm": "layernorm", "position": "learned", "bias": True, "qk_norm": False}
    bad = [
        f"{k}={getattr(c, k)!r} (GPT-2 needs {v!r})" for k, v in want.items() if getattr(c, k) != v
    ]
    if c.mlp not in ("gelu_tanh", "gelu"):
        bad.append(f"mlp={c.mlp!r} (GPT-2 needs a GELU MLP)")
    if c.n_kv_head != c.n_head:
        bad.append("grouped-query attention (GPT-2 has n_kv_head == n_head)")
    return bad


def to_attnlab(sd: dict[str, Tensor], c: GPTConfig) -> dict[str, Tensor]:
    """Hugging Face state dict (``transformer.`` prefix optional) -> attnlab state dict."""
    sd = {k.removeprefix("transformer."): v for k, v in sd.items()}
    out = {"tok.weight": sd.pop("wte.weight"), "pos.weight": sd.pop("wpe.weight")}
    for i in range(c.n_layer):
        h, b = f"h.{i}.", f"blocks.{i}."
        q, k, v = sd.pop(h + "attn.c_attn.weight").t().chunk(3, dim=0)  # (C, 3C) -> 3 x (C, C)
        qb, kb, vb = sd.pop(h + "attn.c_attn.bias").chunk(3)
        for name, w, bias in (("q_proj", q, qb), ("k_proj", k, kb), ("v_proj", v, vb)):
            out[b + f"attn.{name}.weight"], out[b + f"attn.{name}.bias"] = w, bias
        pairs = {
            "attn.c_proj": "attn.out_proj",
            "mlp.c_fc": "mlp.up",
            "mlp.c_proj": "mlp.down",
        }
        for hf_name, ours in pairs.items():
            out[b + ours + ".weight"] = sd.pop(h + hf_name + ".weight").t()
            out[b + ours + ".bias"] = sd.pop(h + hf_name + ".bias")
        for hf_name, ours in (("ln_1", "attn_norm"), ("ln_2", "mlp_norm")):
            out[b + ours + ".weight"] = sd.pop(h + hf_name + ".weight")
            out[b + ours + ".bias"] = sd.pop(h + hf_name + ".bias")
    out["norm.weight"], out["norm.bias"] = sd.pop("ln_f.weight"), sd.pop("ln_f.bias")
    head = sd.pop("lm_head.weight", None)
    out["head.weight"] = head if head is not None else out["tok.weight"]
    out.update(sd)  # whatever is left is reported as unexpected by the loader
    return out


def from_attnlab(sd: dict[str, Tensor], c: GPTConfig) -> dict[str, Tensor]:
    """attnlab state dict -> Hugging Face ``GPT2LMHeadModel`` state dict."""
    out = {"transformer.wte.weight": sd["tok.weight"], "transformer.wpe.weight": sd["pos.weight"]}
    for i in range(c.n_layer):
        h, b = f"transformer.h.{i}.", f"blocks.{i}."
        qkv = [sd[b + f"attn.{n}.weight"] for n in ("q_proj", "k_proj", "v_proj")]
        out[h + "attn.c_attn.weight"] = torch.cat(qkv, 0).t().contiguous()
        out[h + "attn.c_attn.bias"] = torch.cat(
            [sd[b + f"attn.{n}.bias"] for n in ("q_proj", "k_proj", "v_proj")]
        )
        pairs = {"attn.c_proj": "attn.out_proj", "mlp.c_fc": "mlp.up", "mlp.c_proj": "mlp.down"}
        for hf_name, ours in pairs.items():
            out[h + hf_name + ".weight"] = sd[b + ours + ".weight"].t().contiguous()
            out[h + hf_name + ".bias"] = sd[b + ours + ".bias"]
        for hf_name, ours in (("ln_1", "attn_norm"), ("ln_2", "mlp_norm")):
            out[h + hf_name + ".weight"] = sd[b + ours + ".weight"]
            out[h + hf_name + ".bias"] = sd[b + ours + ".bias"]
    out["transformer.ln_f.weight"], out["transformer.ln_f.bias"] = (
        sd["norm.weight"],
        sd["norm.bias"],
    )
    if not c.tie_embeddings:
        out["lm_head.weight"] = sd["head.weight"]
    return out
