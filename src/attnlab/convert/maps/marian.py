"""Marian (transformers ``MarianMTModel``) <-> attnlab ``EncoderDecoder`` in the paper's post-norm
form: the original Transformer, exactly.

Both add sinusoids to token embeddings scaled by sqrt(C), use post-norm blocks with biases
everywhere, and read the output through a (usually tied) projection. They differ in one layout:
attnlab interleaves the sinusoids (channel 2i the sine, 2i + 1 the cosine of frequency i, as in
the paper), Marian puts every sine first and every cosine after (channel i the sine, C/2 + i the
cosine). Every part of the model except the positions is equivariant under a permutation of the
residual channels (LayerNorm's mean and variance do not depend on the channel order), so the
weights are converted by permuting the residual channels of every tensor that touches the
residual stream, ``marian[c] = attnlab[PERM[c]]`` with PERM = (0, 2, 4, ..., 1, 3, 5, ...):
then Marian's sinusoid table is attnlab's, permuted alike, and every output is the same.

Marian's own sinusoid table is not stored (transformers recomputes it), nor read back.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnlab.convert.maps.common import variant_reasons
from attnlab.models.encoder_decoder import EncoderDecoder, TransformerConfig

NAME = "Marian"
MODEL = EncoderDecoder
ARCH = "MarianMTModel"

IGNORED_SUFFIXES = ("embed_positions.weight",)
# attnlab activation -> activation_function (tanh-GELU as PyTorch computes it)
ACTIVATION_NAMES = {"relu": "relu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}
ACTIVATIONS = {**{v: k for k, v in ACTIVATION_NAMES.items()}, "gelu_new": "gelu_tanh"}
# Marian's LayerNorms are nn.LayerNorm(d_model): the epsilon is PyTorch's default, not a setting.
NORM_EPS = 1e-5

# attnlab config field -> config.json key (errors about a field name the file's key)
CONFIG_KEYS = {
    "vocab_size": "vocab_size",
    "tgt_vocab_size": "decoder_vocab_size",
    "max_len": "max_position_embeddings",
    "n_layer": "encoder_layers",
    "n_decoder_layer": "decoder_layers",
    "n_head": "encoder_attention_heads",
    "dim": "d_model",
    "hidden": "encoder_ffn_dim",
    "activation": "activation_function",
    "share_embeddings": "share_encoder_decoder_embeddings",
    "tie_embeddings": "tie_word_embeddings",
    "pad_id": "pad_token_id",
    "bos_id": "decoder_start_token_id",
    "eos_id": "eos_token_id",
}
# config.json key of a layer count -> tensor names carrying the layer index
LAYERS = {
    "encoder_layers": r"model\.encoder\.layers\.(\d+)\.",
    "decoder_layers": r"model\.decoder\.layers\.(\d+)\.",
}
# (config.json key, tensor names, axis): sizes the tensors must show
SIZES = [
    ("vocab_size", ("model.shared.weight", "model.encoder.embed_tokens.weight"), 0),
    ("d_model", ("model.shared.weight", "model.encoder.embed_tokens.weight"), 1),
    ("decoder_vocab_size", ("model.decoder.embed_tokens.weight",), 0),
    ("encoder_ffn_dim", ("model.encoder.layers.0.fc1.weight",), 0),
]

# The shared token embedding, and the encoder's and decoder's own (copies of it when shared).
SHARED = "model.shared.weight"
COPIES = ("model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight")

# attnlab name within a block -> (Marian name within ``layers.i``, the axis of the tensor that
# runs over the residual channels, or None for tensors inside attention or the MLP only)
_ATTENTION = {
    "q_proj.weight": ("q_proj.weight", 1),
    "q_proj.bias": ("q_proj.bias", None),
    "k_proj.weight": ("k_proj.weight", 1),
    "k_proj.bias": ("k_proj.bias", None),
    "v_proj.weight": ("v_proj.weight", 1),
    "v_proj.bias": ("v_proj.bias", None),
    "out_proj.weight": ("out_proj.weight", 0),
    "out_proj.bias": ("out_proj.bias", 0),
}


def _norm(ours: str, theirs: str) -> dict[str, tuple[str, int]]:
    return {f"{ours}.weight": (f"{theirs}.weight", 0), f"{ours}.bias": (f"{theirs}.bias", 0)}


ENCODER_LAYER_KEYS = {
    **{f"attn.{o}": (f"self_attn.{t}", axis) for o, (t, axis) in _ATTENTION.items()},
    **_norm("attn_norm", "self_attn_layer_norm"),
    "mlp.up.weight": ("fc1.weight", 1),
    "mlp.up.bias": ("fc1.bias", None),
    "mlp.down.weight": ("fc2.weight", 0),
    "mlp.down.bias": ("fc2.bias", 0),
    **_norm("mlp_norm", "final_layer_norm"),
}
DECODER_LAYER_KEYS = {
    **ENCODER_LAYER_KEYS,
    **{f"cross.{o}": (f"encoder_attn.{t}", axis) for o, (t, axis) in _ATTENTION.items()},
    **_norm("cross_norm", "encoder_attn_layer_norm"),
}


def config_from_hf(hf: dict, tensors=None) -> TransformerConfig:
    arch = (hf.get("architectures") or [ARCH])[0]
    if arch != ARCH:
        raise ValueError(
            f"config.json: Marian architecture {arch!r} is not supported (expected {ARCH})"
        )
    act = hf.get("activation_function", "gelu")
    if act not in ACTIVATIONS:
        raise ValueError(
            f"config.json: activation_function {act!r} is not supported "
            f"(expected one of {', '.join(ACTIVATIONS)})"
        )
    if not hf.get("scale_embedding", False):
        raise ValueError(
            "config.json: scale_embedding=false is not supported (the attnlab encoder-decoder "
            "scales embeddings by sqrt(d_model))"
        )
    for key in ("normalize_before", "normalize_embedding", "add_final_layer_norm"):
        if hf.get(key):
            raise ValueError(f"config.json: {key}=true is not supported (Marian is post-norm)")
    for ours, theirs in (
        ("decoder_attention_heads", "encoder_attention_heads"),
        ("decoder_ffn_dim", "encoder_ffn_dim"),
    ):
        if hf.get(ours, hf.get(theirs)) != hf.get(theirs):
            raise ValueError(
                f"config.json: {ours}={hf[ours]!r} differs from {theirs}={hf.get(theirs)!r}; "
                "the attnlab encoder-decoder uses one value for both"
            )
    pad = hf.get("pad_token_id", 0)
    return TransformerConfig(
        vocab_size=hf["vocab_size"],
        tgt_vocab_size=hf.get("decoder_vocab_size") or hf["vocab_size"],
        max_len=hf.get("max_position_embeddings", 1024),
        n_layer=hf["encoder_layers"],
        n_decoder_layer=hf["decoder_layers"],
        n_head=hf["encoder_attention_heads"],
        dim=hf["d_model"],
        hidden=hf["encoder_ffn_dim"],
        activation=ACTIVATIONS[act],
        norm_eps=NORM_EPS,
        dropout=hf.get("dropout", 0.1),
        share_embeddings=hf.get("share_encoder_decoder_embeddings", True),
        tie_embeddings=hf.get("tie_word_embeddings", True),
        pad_id=pad,
        bos_id=hf.get("decoder_start_token_id", pad),
        eos_id=hf.get("eos_token_id", 0),
    )


def supports(c: TransformerConfig) -> list[str]:
    """Why ``c`` cannot be written as Marian (empty when it can)."""
    bad = variant_reasons(c, "Marian", "sinusoidal")
    if c.prenorm:
        bad.append("prenorm=True (Marian is post-norm, without final norms)")
    if c.norm_eps != NORM_EPS:
        bad.append(f"norm_eps={c.norm_eps!r} (Marian's LayerNorm epsilon is fixed at 1e-05)")
    return bad


def config_to_hf(c: TransformerConfig) -> dict:
    """``config.json`` contents for ``MarianMTModel``."""
    return {
        "architectures": [ARCH],
        "model_type": "marian",
        "is_encoder_decoder": True,
        "vocab_size": c.vocab_size,
        "decoder_vocab_size": c.tgt_vocab_size,
        "max_position_embeddings": c.max_len,
        "d_model": c.dim,
        "encoder_layers": c.n_layer,
        "decoder_layers": c.n_decoder_layer,
        "encoder_attention_heads": c.n_head,
        "decoder_attention_heads": c.n_head,
        "encoder_ffn_dim": c.hidden,
        "decoder_ffn_dim": c.hidden,
        "activation_function": ACTIVATION_NAMES[c.activation],
        "scale_embedding": True,
        "dropout": c.dropout,
        "attention_dropout": c.dropout,
        "activation_dropout": 0.0,
        "share_encoder_decoder_embeddings": c.share_embeddings,
        "tie_word_embeddings": c.tie_embeddings,
        "pad_token_id": c.pad_id,
        "bos_token_id": c.bos_id,
        "eos_token_id": c.eos_id,
        "decoder_start_token_id": c.bos_id,
        "forced_eos_token_id": None,  # attnlab decodes without forcing a final EOS
    }


def _perm(dim: int) -> Tensor:
    """Marian channel c holds attnlab channel PERM[c]: the sines (even channels), then the
    cosines (odd channels)."""
    return torch.cat([torch.arange(0, dim, 2), torch.arange(1, dim, 2)])


def _reorder(t: Tensor, axis: int | None, index: Tensor) -> Tensor:
    """``t`` with its residual channels along ``axis`` taken in ``index`` order; unchanged when
    it has no such axis of that size (the loader then reports its shape)."""
    if axis is None or t.dim() <= axis or t.shape[axis] != len(index):
        return t.contiguous()
    return t.index_select(axis, index)


def _keys(c: TransformerConfig) -> dict[str, tuple[str, int | None]]:
    """attnlab name -> (Marian name, residual axis) for every tensor but the embeddings and the
    output projection."""
    keys = {}
    for prefix, n, table in (
        ("encoder", c.n_layer, ENCODER_LAYER_KEYS),
        ("decoder", c.n_decoder_layer, DECODER_LAYER_KEYS),
    ):
        for i in range(n):
            keys.update(
                {
                    f"{prefix}.{i}.{o}": (f"model.{prefix}.layers.{i}.{t}", axis)
                    for o, (t, axis) in table.items()
                }
            )
    return keys


def _embedding_keys(c: TransformerConfig) -> dict[str, str]:
    """attnlab name -> Marian name of the stored embedding matrices (residual axis 1)."""
    if c.share_embeddings:
        keys = {"src_tok.weight": SHARED}
    else:
        keys = dict(zip(("src_tok.weight", "tgt_tok.weight"), COPIES, strict=True))
    if not c.tie_embeddings:
        keys["head.weight"] = "lm_head.weight"
    return keys


def to_attnlab(sd: dict[str, Tensor], c: TransformerConfig) -> dict[str, Tensor]:
    """Marian state dict -> attnlab state dict (residual channels put back in attnlab's order).
    Refused: a non-zero ``final_logits_bias`` (attnlab's output projection has no bias) and
    encoder/decoder copies of a shared matrix that differ from it."""
    inverse = torch.argsort(_perm(c.dim))
    out: dict[str, Tensor] = {}
    if c.share_embeddings:
        shared = sd[SHARED]
        for key in COPIES:
            copy = sd.pop(key, None)
            if copy is not None and not torch.equal(copy, shared):
                raise ValueError(
                    f"{key} differs from {SHARED}, but share_encoder_decoder_embeddings is true"
                )
    for ours, theirs in _embedding_keys(c).items():
        out[ours] = _reorder(sd.pop(theirs), 1, inverse)
    for ours, (theirs, axis) in _keys(c).items():
        out[ours] = _reorder(sd.pop(theirs), axis, inverse)
    if c.share_embeddings:
        out["tgt_tok.weight"] = out["src_tok.weight"]
    if c.tie_embeddings:  # transformers ties the head as well, ignoring any stored copy
        sd.pop("lm_head.weight", None)
        out["head.weight"] = out["tgt_tok.weight"]
    bias = sd.pop("final_logits_bias", None)
    if bias is not None and bool(bias.any()):
        raise ValueError(
            "final_logits_bias is not zero; the attnlab encoder-decoder's output projection "
            "has no bias"
        )
    out.update(sd)  # leftovers are reported as unexpected by the loader
    return out


def from_attnlab(sd: dict[str, Tensor], c: TransformerConfig) -> dict[str, Tensor]:
    """attnlab state dict -> ``MarianMTModel`` state dict (residual channels permuted)."""
    perm = _perm(c.dim)
    out = {}
    for ours, theirs in _embedding_keys(c).items():
        out[theirs] = _reorder(sd[ours], 1, perm)
    if c.share_embeddings:  # transformers 5 leaves these untied when the head is untied
        out.update({key: out[SHARED].clone() for key in COPIES})
    for ours, (theirs, axis) in _keys(c).items():
        out[theirs] = _reorder(sd[ours], axis, perm)
    out["final_logits_bias"] = torch.zeros(1, c.tgt_vocab_size, dtype=sd["head.weight"].dtype)
    return out
