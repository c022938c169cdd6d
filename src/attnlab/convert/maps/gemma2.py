"""Gemma 2 family (transformers ``Gemma2ForCausalLM``) <-> attnlab ``GPT`` with Gemma's options.

Gemma 2 keeps Llama's tensor layout for attention (RoPE in the "rotate half" layout, grouped
query heads, an explicit ``head_dim``) and changes the rest, each mapped to a GPTConfig option:

* RMSNorm scaling by ``1 + weight`` (stored as the offset): ``norm="rmsnorm_offset"``;
* sandwich norms: ``post_attention_layernorm`` on the attention output and
  ``post_feedforward_layernorm`` on the MLP output, before the residual adds, with
  ``input_layernorm`` and ``pre_feedforward_layernorm`` before the sub-layers:
  ``sandwich_norm=True``;
* a gated MLP with the tanh GELU (``hidden_activation`` "gelu_pytorch_tanh"):
  ``mlp="geglu_tanh"``;
* token embeddings times sqrt(hidden_size), rounded to their dtype: ``scale_embeddings=True``;
* scores scaled by ``query_pre_attn_scalar ** -0.5``: ``attn_scale``;
* attention scores and final logits soft-capped (``attn_logit_softcapping``,
  ``final_logit_softcapping``; null for none): ``softcap``, ``logit_softcap``;
* layers alternating between a sliding window and global attention (``layer_types``, by default
  sliding on even layers; ``sliding_window``, a query at p seeing keys k with
  p - k < sliding_window, as Mistral's): ``layer_windows``, or ``attention="local"`` when every
  layer has the window;
* tied embeddings unless ``tie_word_embeddings`` is false.
"""

from __future__ import annotations

from typing import ClassVar

from attnlab.convert.maps.common import LAYER_TYPES, size_field, sliding_layers
from attnlab.convert.maps.llama import (
    CONFIG_KEYS,
    OUT_BIAS_KEYS,
    QKV_BIAS_KEYS,
    TOP_KEYS,
    LlamaMap,
    _rope,
)
from attnlab.models.gpt import GPTConfig

# attnlab name within block i -> Hugging Face name within layer i
LAYER_KEYS = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn.q_proj.weight": "self_attn.q_proj.weight",
    "attn.k_proj.weight": "self_attn.k_proj.weight",
    "attn.v_proj.weight": "self_attn.v_proj.weight",
    "attn.out_proj.weight": "self_attn.o_proj.weight",
    "attn_post_norm.weight": "post_attention_layernorm.weight",
    "mlp_norm.weight": "pre_feedforward_layernorm.weight",
    "mlp_post_norm.weight": "post_feedforward_layernorm.weight",
    "mlp.gate.weight": "mlp.gate_proj.weight",
    "mlp.up.weight": "mlp.up_proj.weight",
    "mlp.down.weight": "mlp.down_proj.weight",
}
ACTIVATION = "gelu_pytorch_tanh"  # the tanh GELU, the only one attnlab's geglu_tanh computes

# What transformers' Gemma2Config assumes for a key config.json leaves out (the soft-capping
# keys and sliding_window: only when absent; null there turns the feature off).
MISSING = {
    "query_pre_attn_scalar": 256,
    "attn_logit_softcapping": 50.0,
    "final_logit_softcapping": 30.0,
    "sliding_window": 4096,
    "tie_word_embeddings": True,
    "hidden_activation": ACTIVATION,
}


class Gemma2Map(LlamaMap):
    NAME = "Gemma2"
    ARCHITECTURE = "Gemma2ForCausalLM"
    MODEL_TYPE = "gemma2"
    CONFIG_KEYS: ClassVar[dict[str, str]] = {
        **CONFIG_KEYS,
        "qkv_bias": "attention_bias",
        "out_bias": "attention_bias",
        "softcap": "attn_logit_softcapping",
        "logit_softcap": "final_logit_softcapping",
        "window": "sliding_window",
        "layer_windows": "sliding_window",
    }
    DEFAULTS: ClassVar[dict] = {
        **LlamaMap.DEFAULTS,
        "max_position_embeddings": 8192,
        "head_dim": 256,
    }
    LAYOUT: ClassVar[dict] = {
        "norm": "rmsnorm_offset",
        "mlp": "geglu_tanh",
        "bias": False,
        "sandwich_norm": True,
        "scale_embeddings": True,
        "sinks": False,
    }
    WINDOWS = True
    # Gemma2MLP has no biases, whatever config.json says; bidirectional attention would make
    # the causal model an encoder.
    REFUSED: ClassVar[dict[str, str]] = {
        "use_bidirectional_attention": "attention to later tokens as well"
    }

    # -- config.json -> GPTConfig ---------------------------------------------------------------

    def config_from_hf(self, hf: dict, tensors: dict | None = None) -> GPTConfig:
        """The :class:`GPTConfig` of a Gemma 2 ``config.json`` (``tensors`` unused)."""
        heads = size_field(hf, "num_attention_heads")
        size_field(hf, "hidden_size")
        layers = size_field(hf, "num_hidden_layers")
        act = hf.get("hidden_activation", ACTIVATION)
        if act != ACTIVATION:
            raise ValueError(
                f"config.json: hidden_activation: expected {ACTIVATION!r}, got {act!r:.80}"
            )
        for key, what in self.REFUSED.items():
            if hf.get(key):
                raise ValueError(f"config.json: {key}={hf[key]!r} ({what}) is not supported")
        scalar = hf.get("query_pre_attn_scalar", MISSING["query_pre_attn_scalar"])
        if not isinstance(scalar, int | float) or isinstance(scalar, bool) or not scalar > 0:
            raise ValueError(
                f"config.json: query_pre_attn_scalar: expected a number > 0, got {scalar!r:.80}"
            )
        windows = self.layer_windows(hf, layers)
        window = windows[0]
        same = all(w == window for w in windows)  # one attention for every layer
        rope_base, rope_scaling = _rope(hf)
        qkv_bias, out_bias = self._biases(hf)
        return GPTConfig(
            vocab_size=hf["vocab_size"],
            max_len=self._get(hf, "max_position_embeddings"),
            n_layer=layers,
            n_head=heads,
            n_kv_head=hf.get("num_key_value_heads") or heads,
            dim=hf["hidden_size"],
            head_dim=self._get(hf, "head_dim"),
            hidden=hf["intermediate_size"],
            norm="rmsnorm_offset",
            norm_eps=self._get(hf, "rms_norm_eps"),
            mlp="geglu_tanh",
            position="rope",
            rope_base=rope_base,
            rope_scaling=rope_scaling,
            attention="local" if same and window is not None else "softmax",
            window=window if same else None,
            layer_windows=None if same else windows,
            bias=False,
            qkv_bias=qkv_bias,
            out_bias=out_bias,
            softcap=hf.get("attn_logit_softcapping", MISSING["attn_logit_softcapping"]),
            attn_scale=scalar**-0.5,  # as transformers computes it
            sandwich_norm=True,
            scale_embeddings=True,
            logit_softcap=hf.get("final_logit_softcapping", MISSING["final_logit_softcapping"]),
            tie_embeddings=hf.get("tie_word_embeddings", MISSING["tie_word_embeddings"]),
        )

    def layer_windows(self, hf: dict, n_layer: int) -> list[int | None]:
        """Each layer's window as transformers' Gemma2Config derives it: ``layer_types``, by
        default "sliding_attention" on even layers, with ``sliding_window``."""
        types = hf.get("layer_types")
        if types is None:
            types = [LAYER_TYPES[i % 2 == 0] for i in range(n_layer)]
        sliding = sliding_layers(types, n_layer)
        window = hf.get("sliding_window", MISSING["sliding_window"])
        if any(sliding) and window is None:
            raise ValueError(
                "config.json: sliding_window: null, but layer_types has 'sliding_attention' "
                "layers (by default the even ones); expected a positive int"
            )
        return [window if s else None for s in sliding]

    # -- GPTConfig -> config.json ---------------------------------------------------------------

    def supports(self, c: GPTConfig) -> list[str]:
        reasons = super().supports(c)
        windows = {w for w in c.layer_windows or () if w is not None}
        if len(windows) > 1:
            reasons.append(
                f"layer_windows with windows {sorted(windows)} (Gemma2 has one sliding_window)"
            )
        return reasons

    def config_to_hf(self, c: GPTConfig) -> dict:
        """``config.json`` contents for ``Gemma2ForCausalLM`` (RoPE base both as
        ``rope_theta`` and in ``rope_parameters``, as for Llama)."""
        windows = c.layer_windows or [c.window if c.attention == "local" else None] * c.n_layer
        window = next((w for w in windows if w is not None), None)
        return {
            **self.shared_to_hf(c),
            "hidden_activation": ACTIVATION,
            "attention_bias": c.qkv_bias,
            "query_pre_attn_scalar": _pre_attn_scalar(c),
            "attn_logit_softcapping": c.softcap,
            "final_logit_softcapping": c.logit_softcap,
            "sliding_window": window,
            "layer_types": [LAYER_TYPES[w is not None] for w in windows],
        }

    # -- tensors ----------------------------------------------------------------------------------

    def keys(self, c: GPTConfig) -> dict[str, str]:
        """attnlab name -> Hugging Face name for every stored tensor."""
        layer = dict(LAYER_KEYS)
        if c.qkv_bias:  # attention_bias: all four projections (supports() checks they agree)
            layer.update(QKV_BIAS_KEYS)
        if c.out_bias:
            layer.update(OUT_BIAS_KEYS)
        keys = dict(TOP_KEYS)
        for i in range(c.n_layer):
            keys.update({f"blocks.{i}.{o}": f"model.layers.{i}.{t}" for o, t in layer.items()})
        if not c.tie_embeddings:
            keys["head.weight"] = "lm_head.weight"
        return keys


def _pre_attn_scalar(c: GPTConfig) -> int | float:
    """``query_pre_attn_scalar`` whose ``** -0.5`` is ``c``'s score scale: head_dim for the
    default scale, a whole number where one gives the scale exactly (12, not
    12.000000000000002)."""
    if c.attn_scale is None:
        return c.head_dim
    scalar = c.attn_scale**-2
    whole = round(scalar)
    return whole if whole > 0 and whole**-0.5 == c.attn_scale else scalar


GEMMA2 = Gemma2Map()
