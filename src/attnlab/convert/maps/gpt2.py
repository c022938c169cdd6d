"""GPT-2 (transformers ``GPT2LMHeadModel``) <-> attnlab ``GPT`` in its GPT-2 flavour.

GPT-2's linear layers are ``Conv1D``: weights stored (in, out), the transpose of
``nn.Linear``; the query/key/value projections are fused into one ``c_attn`` of width 3C.
Both directions read the same tables below.

A GPT without biases (nanoGPT's ``bias=False``) is exactly a GPT-2 whose biases are all zero,
LayerNorm biases included, so it is written as one; read back it is a GPT with zero biases.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnlab.convert.maps.common import GPT_EXTRAS, size_field, variant_reasons
from attnlab.models.gpt import GPT, GPTConfig

NAME = "GPT-2"
MODEL = GPT

# attnlab config field -> config.json key (errors about a field name the file's key)
CONFIG_KEYS = {
    "vocab_size": "vocab_size",
    "max_len": "n_positions",
    "n_layer": "n_layer",
    "n_head": "n_head",
    "dim": "n_embd",
    "hidden": "n_inner",
    "norm_eps": "layer_norm_epsilon",
    "mlp": "activation_function",
    "tie_embeddings": "tie_word_embeddings",
}
# config.json key of a layer count -> tensor names carrying the layer index
LAYERS = {"n_layer": r"(?:transformer\.)?h\.(\d+)\."}
# (config.json key, tensor names, axis): sizes the tensors must show
SIZES = [
    ("vocab_size", ("transformer.wte.weight", "wte.weight"), 0),
    ("n_embd", ("transformer.wte.weight", "wte.weight"), 1),
    ("n_positions", ("transformer.wpe.weight", "wpe.weight"), 0),
    ("n_inner", ("transformer.h.0.mlp.c_fc.weight", "h.0.mlp.c_fc.weight"), 1),
]

# Buffers some checkpoints carry that hold no weights (the causal mask of old versions).
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")
ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}
ACTIVATION_NAMES = {"gelu_tanh": "gelu_new", "gelu": "gelu"}  # attnlab mlp -> activation_function

# attnlab name -> Hugging Face name (without the ``transformer.`` prefix)
TOP_KEYS = {
    "tok.weight": "wte.weight",
    "pos.weight": "wpe.weight",
    "norm.weight": "ln_f.weight",
    "norm.bias": "ln_f.bias",
}
# attnlab name within block i -> Hugging Face name within layer h.i
LAYER_KEYS = {
    "attn.out_proj.weight": "attn.c_proj.weight",
    "attn.out_proj.bias": "attn.c_proj.bias",
    "mlp.up.weight": "mlp.c_fc.weight",
    "mlp.up.bias": "mlp.c_fc.bias",
    "mlp.down.weight": "mlp.c_proj.weight",
    "mlp.down.bias": "mlp.c_proj.bias",
    "attn_norm.weight": "ln_1.weight",
    "attn_norm.bias": "ln_1.bias",
    "mlp_norm.weight": "ln_2.weight",
    "mlp_norm.bias": "ln_2.bias",
}
# attnlab weights that have no bias in GPT-2 either (embeddings, the output head).
NO_BIAS = ("tok.weight", "pos.weight", "head.weight")
# Conv1D weights: stored transposed relative to nn.Linear.
TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Hugging Face fused projection within layer h.i -> the attnlab projections it concatenates
# along the output dimension (after un-transposing).
FUSED = {"attn.c_attn": ("attn.q_proj", "attn.k_proj", "attn.v_proj")}


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
        hidden=hf.get("n_inner") or 4 * size_field(hf, "n_embd"),
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        mlp=ACTIVATIONS[act],
        tie_embeddings=hf.get("tie_word_embeddings", True),
    )


def supports(c: GPTConfig) -> list[str]:
    """Why ``c`` cannot be written as GPT-2 (empty when it can). ``bias=False`` can: zero
    biases."""
    want = {**GPT_EXTRAS, "norm": "layernorm", "qk_norm": False}
    bad = [
        f"{k}={getattr(c, k)!r} (GPT-2 needs {v!r})" for k, v in want.items() if getattr(c, k) != v
    ] + variant_reasons(c, "GPT-2", "learned")
    if c.mlp not in ACTIVATION_NAMES:
        bad.append(f"mlp={c.mlp!r} (GPT-2 needs a GELU MLP)")
    if c.n_kv_head != c.n_head:
        bad.append("grouped-query attention (GPT-2 has n_kv_head == n_head)")
    return bad


def config_to_hf(c: GPTConfig) -> dict:
    """``config.json`` contents for ``GPT2LMHeadModel``."""
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
        "activation_function": ACTIVATION_NAMES[c.mlp],
        "resid_pdrop": c.dropout,
        "embd_pdrop": c.dropout,
        "attn_pdrop": c.dropout,
        "tie_word_embeddings": c.tie_embeddings,
        # GPT-2's <|endoftext|> (50256) only exists in its own vocabulary.
        "bos_token_id": 50256 if c.vocab_size > 50256 else None,
        "eos_token_id": 50256 if c.vocab_size > 50256 else None,
    }


def _body_keys(c: GPTConfig) -> dict[str, str]:
    """attnlab name -> Hugging Face name (no ``transformer.`` prefix) for every tensor of the
    body that maps one to one."""
    keys = dict(TOP_KEYS)
    for i in range(c.n_layer):
        keys.update({f"blocks.{i}.{o}": f"h.{i}.{t}" for o, t in LAYER_KEYS.items()})
    return keys


def to_attnlab(sd: dict[str, Tensor], c: GPTConfig) -> dict[str, Tensor]:
    """Hugging Face state dict (``transformer.`` prefix optional) -> attnlab state dict."""
    sd = {k.removeprefix("transformer."): v for k, v in sd.items()}
    out: dict[str, Tensor] = {}
    for ours, theirs in _body_keys(c).items():
        t = sd.pop(theirs)
        out[ours] = t.t() if theirs.endswith(TRANSPOSED) else t
    for i in range(c.n_layer):
        for theirs, parts in FUSED.items():
            w = sd.pop(f"h.{i}.{theirs}.weight").t()  # (C, 3C) -> (3C, C)
            b = sd.pop(f"h.{i}.{theirs}.bias")
            for name, wi, bi in zip(parts, w.chunk(len(parts)), b.chunk(len(parts)), strict=True):
                out[f"blocks.{i}.{name}.weight"], out[f"blocks.{i}.{name}.bias"] = wi, bi
    if c.tie_embeddings:  # transformers ties the head as well, ignoring any stored copy
        sd.pop("lm_head.weight", None)
        out["head.weight"] = out["tok.weight"]
    else:
        out["head.weight"] = sd.pop("lm_head.weight")
    out.update(sd)  # leftovers are reported as unexpected by the loader
    return out


def _with_zero_biases(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """``sd`` plus a zero ``X.bias`` for every Linear or LayerNorm ``X`` stored without one:
    a layer without bias computes exactly what it computes with a zero bias."""
    out = dict(sd)
    for key, w in sd.items():
        bias = key.removesuffix(".weight") + ".bias"
        if key.endswith(".weight") and bias not in sd and not key.endswith(NO_BIAS):
            out[bias] = w.new_zeros(w.shape[0])
    return out


def from_attnlab(sd: dict[str, Tensor], c: GPTConfig) -> dict[str, Tensor]:
    """attnlab state dict -> Hugging Face ``GPT2LMHeadModel`` state dict."""
    sd = _with_zero_biases(sd)
    out: dict[str, Tensor] = {}
    for ours, theirs in _body_keys(c).items():
        t = sd[ours]
        out["transformer." + theirs] = t.t().contiguous() if theirs.endswith(TRANSPOSED) else t
    for i in range(c.n_layer):
        h = f"transformer.h.{i}."
        for theirs, parts in FUSED.items():
            w = torch.cat([sd[f"blocks.{i}.{p}.weight"] for p in parts])  # (3C, C)
            out[h + theirs + ".weight"] = w.t().contiguous()  # (C, 3C)
            out[h + theirs + ".bias"] = torch.cat([sd[f"blocks.{i}.{p}.bias"] for p in parts])
    if not c.tie_embeddings:
        out["lm_head.weight"] = sd["head.weight"]
    return out
