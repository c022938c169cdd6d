"""Llama family (transformers ``LlamaForCausalLM``) <-> attnlab ``GPT`` in its Llama flavour.

Hugging Face stores q/k projections already permuted for the "rotate half" RoPE layout that
attnlab uses, so the tensors map one to one; only the names change. Both directions read the
same tables below.

:class:`LlamaMap` is also the base of the families built on Llama's layout (RMSNorm, SwiGLU,
RoPE, grouped-query attention, the same tensor names): Mistral, Qwen2 and Qwen3 (see their
maps) are subclasses that change a few class attributes and, for sliding windows, one method.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from attnlab.convert.maps.common import GPT_EXTRAS, size_field, variant_reasons
from attnlab.convert.maps.rope_scaling import scaling_from_hf, scaling_to_hf
from attnlab.models.gpt import GPT, GPTConfig
from attnlab.position import DynamicNTKScaling, scaling_from_dict, scaling_to_dict

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
# ... and the tensors a layer has only with query/key/value biases, an output bias, qk-norm
QKV_BIAS_KEYS = {f"attn.{p}_proj.bias": f"self_attn.{p}_proj.bias" for p in "qkv"}
OUT_BIAS_KEYS = {"attn.out_proj.bias": "self_attn.o_proj.bias"}
QK_NORM_KEYS = {f"attn.{p}_norm.weight": f"self_attn.{p}_norm.weight" for p in "qk"}
TOP_KEYS = {"tok.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight"}

# attnlab config field -> config.json key (errors about a field name the file's key)
CONFIG_KEYS = {
    "vocab_size": "vocab_size",
    "max_len": "max_position_embeddings",
    "n_layer": "num_hidden_layers",
    "n_head": "num_attention_heads",
    "n_kv_head": "num_key_value_heads",
    "dim": "hidden_size",
    "head_dim": "head_dim",
    "hidden": "intermediate_size",
    "norm_eps": "rms_norm_eps",
    "rope_base": "rope_theta",
    "tie_embeddings": "tie_word_embeddings",
}


class LlamaMap:
    """A Llama-shaped family's checkpoint map: ``config.json`` <-> :class:`GPTConfig`, and
    tensor names both ways. Subclasses set the class attributes below (and override
    :meth:`layer_windows` / :meth:`windows_to_hf` for sliding windows)."""

    NAME: ClassVar[str] = "Llama"  # in errors and in save_hf's reasons
    MODEL: ClassVar[type] = GPT
    ARCHITECTURE: ClassVar[str] = "LlamaForCausalLM"  # written to config.json
    MODEL_TYPE: ClassVar[str] = "llama"
    IGNORED_SUFFIXES: ClassVar[tuple[str, ...]] = (".rotary_emb.inv_freq",)
    CONFIG_KEYS: ClassVar[dict[str, str]] = {**CONFIG_KEYS, "qkv_bias": "attention_bias"}
    # config.json key of a layer count -> tensor names carrying the layer index
    LAYERS: ClassVar[dict[str, str]] = {"num_hidden_layers": r"model\.layers\.(\d+)\."}
    # (config.json key, tensor names, axis): sizes the tensors must show
    SIZES: ClassVar[list] = [
        ("vocab_size", ("model.embed_tokens.weight",), 0),
        ("hidden_size", ("model.embed_tokens.weight",), 1),
        ("intermediate_size", ("model.layers.0.mlp.up_proj.weight",), 0),
    ]
    # What transformers' config class assumes for a key config.json leaves out.
    DEFAULTS: ClassVar[dict] = {
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-6,
        "head_dim": None,  # hidden_size // num_attention_heads
    }
    # Attention biases: the config.json key that gives all four projections (q, k, v, output)
    # biases when true, or the family's fixed (q/k/v, output) biases.
    ATTENTION_BIAS: ClassVar[str | tuple[bool, bool]] = "attention_bias"
    QK_NORM: ClassVar[bool] = False  # RMSNorm on each query and key head (eps rms_norm_eps)
    WINDOWS: ClassVar[bool] = False  # sliding-window attention (attention="local") possible
    # GPTConfig fields and the values the family's layers need (supports() names the others)
    LAYOUT: ClassVar[dict] = {**GPT_EXTRAS, "norm": "rmsnorm", "mlp": "swiglu", "bias": False}
    # config.json keys whose true value this family's layers would follow and attnlab cannot
    REFUSED: ClassVar[dict[str, str]] = {"mlp_bias": "biases on the MLP projections"}

    # -- config.json -> GPTConfig ---------------------------------------------------------------

    def config_from_hf(self, hf: dict, tensors: dict | None = None) -> GPTConfig:
        """The :class:`GPTConfig` of a ``config.json`` (``tensors``, names -> shapes, unused)."""
        heads = size_field(hf, "num_attention_heads")
        size_field(hf, "hidden_size")
        layers = size_field(hf, "num_hidden_layers")
        if hf.get("hidden_act", "silu") != "silu":
            raise ValueError(f"config.json: hidden_act {hf['hidden_act']!r} is not supported")
        for key, what in self.REFUSED.items():
            if hf.get(key):
                raise ValueError(f"config.json: {key}={hf[key]!r} ({what}) is not supported")
        window, *others = self.layer_windows(hf, layers)
        if any(w != window for w in others):  # the family's method names its keys first
            raise ValueError("config.json: layers with different sliding windows")
        rope_base, rope_scaling = _rope(hf)
        qkv_bias, out_bias = self._biases(hf)
        eps = self._get(hf, "rms_norm_eps")
        return GPTConfig(
            vocab_size=hf["vocab_size"],
            max_len=self._get(hf, "max_position_embeddings"),
            n_layer=layers,
            n_head=heads,
            n_kv_head=hf.get("num_key_value_heads") or heads,
            dim=hf["hidden_size"],
            head_dim=self._get(hf, "head_dim"),
            hidden=hf["intermediate_size"],
            norm="rmsnorm",
            norm_eps=eps,
            mlp="swiglu",
            position="rope",
            rope_base=rope_base,
            rope_scaling=rope_scaling,
            attention="softmax" if window is None else "local",
            window=window,
            bias=False,
            qkv_bias=qkv_bias,
            out_bias=out_bias,
            qk_norm=self.QK_NORM,
            **({"qk_norm_eps": eps} if self.QK_NORM else {}),  # one epsilon for every norm
            tie_embeddings=hf.get("tie_word_embeddings", False),
        )

    def _get(self, hf: dict, key: str):
        """``hf[key]``, or the family's default when the key is absent or null."""
        value = hf.get(key)
        return self.DEFAULTS.get(key) if value is None else value

    def _biases(self, hf: dict) -> tuple[bool, bool]:
        """(q/k/v biases, output bias) of a ``config.json``."""
        if isinstance(self.ATTENTION_BIAS, tuple):
            return self.ATTENTION_BIAS
        on = hf.get(self.ATTENTION_BIAS, False)  # GPTConfig checks it is a bool
        return on, on

    def layer_windows(self, hf: dict, n_layer: int) -> list[int | None]:
        """Each layer's sliding window (None: full causal attention). Llama has none; a family
        with windows refuses here, naming its keys, a mix of layers attnlab cannot build."""
        return [None] * n_layer

    # -- GPTConfig -> config.json ---------------------------------------------------------------

    def supports(self, c: GPTConfig) -> list[str]:
        """Why ``c`` cannot be written as this family (empty when it can)."""
        want = {**self.LAYOUT, "qk_norm": self.QK_NORM}
        reasons = [
            f"{k}={getattr(c, k)!r} ({self.NAME} needs {v!r})"
            for k, v in want.items()
            if getattr(c, k) != v
        ]
        if isinstance(self.ATTENTION_BIAS, tuple):
            if (c.qkv_bias, c.out_bias) != self.ATTENTION_BIAS:
                q, o = self.ATTENTION_BIAS
                reasons.append(
                    f"qkv_bias={c.qkv_bias!r}, out_bias={c.out_bias!r} ({self.NAME} needs "
                    f"qkv_bias={q!r}, out_bias={o!r})"
                )
        elif c.qkv_bias != c.out_bias:
            reasons.append(
                f"qkv_bias={c.qkv_bias!r} with out_bias={c.out_bias!r} ({self.NAME}'s "
                f"{self.ATTENTION_BIAS} gives the q/k/v and output projections biases together)"
            )
        if c.qk_norm and c.qk_norm_eps != c.norm_eps:
            reasons.append(
                f"qk_norm_eps={c.qk_norm_eps!r} ({self.NAME} uses rms_norm_eps for every norm: "
                f"needs norm_eps={c.norm_eps!r})"
            )
        kinds = ("softmax", "local") if self.WINDOWS else ("softmax",)
        reasons += variant_reasons(c, self.NAME, "rope", kinds=kinds)
        scaling = scaling_from_dict(c.rope_scaling)
        try:
            scaling_to_hf(scaling)
        except ValueError as exc:
            reasons.append(f"rope_scaling: {exc}")
        if isinstance(scaling, DynamicNTKScaling) and scaling.original_max_len != c.max_len:
            reasons.append(
                "rope_scaling: transformers reads a dynamic scaling's original length from "
                f"max_position_embeddings, so original_max_len={scaling.original_max_len} must "
                f"equal max_len={c.max_len}"
            )
        return reasons

    def config_to_hf(self, c: GPTConfig) -> dict:
        """``config.json`` contents for the family's causal-LM class; the RoPE base is written
        both as ``rope_theta`` (transformers 4) and in ``rope_parameters`` (transformers 5)."""
        biases = {}
        if not isinstance(self.ATTENTION_BIAS, tuple):
            biases[self.ATTENTION_BIAS] = c.qkv_bias
        return {
            **self.shared_to_hf(c),
            "hidden_act": "silu",
            **biases,
            **self.windows_to_hf(c),
        }

    def shared_to_hf(self, c: GPTConfig) -> dict:
        """The ``config.json`` keys every Llama-shaped family writes alike: its class, sizes,
        norm epsilon, RoPE, dropout and tying."""
        return {
            "architectures": [self.ARCHITECTURE],
            "model_type": self.MODEL_TYPE,
            "vocab_size": c.vocab_size,
            "hidden_size": c.dim,
            "intermediate_size": c.hidden,
            "num_hidden_layers": c.n_layer,
            "num_attention_heads": c.n_head,
            "num_key_value_heads": c.n_kv_head,
            "head_dim": c.head_dim,
            "max_position_embeddings": c.max_len,
            "rms_norm_eps": c.norm_eps,
            "rope_theta": c.rope_base,
            **_rope_to_hf(c),
            "attention_dropout": c.dropout,
            "tie_word_embeddings": c.tie_embeddings,
        }

    def windows_to_hf(self, c: GPTConfig) -> dict:
        """The ``config.json`` keys that give every layer ``c``'s window (none for Llama)."""
        return {}

    # -- tensors ----------------------------------------------------------------------------------

    def keys(self, c: GPTConfig) -> dict[str, str]:
        """attnlab name -> Hugging Face name for every stored tensor."""
        layer = dict(LAYER_KEYS)
        if c.qkv_bias:
            layer.update(QKV_BIAS_KEYS)
        if c.out_bias:
            layer.update(OUT_BIAS_KEYS)
        if c.qk_norm:
            layer.update(QK_NORM_KEYS)
        keys = dict(TOP_KEYS)
        for i in range(c.n_layer):
            keys.update({f"blocks.{i}.{o}": f"model.layers.{i}.{t}" for o, t in layer.items()})
        if not c.tie_embeddings:
            keys["head.weight"] = "lm_head.weight"
        return keys

    def to_attnlab(self, sd: dict[str, Tensor], c: GPTConfig) -> dict[str, Tensor]:
        """Hugging Face state dict -> attnlab state dict."""
        out = {ours: sd.pop(theirs) for ours, theirs in self.keys(c).items()}
        if c.tie_embeddings:  # transformers ties the head as well, ignoring any stored copy
            sd.pop("lm_head.weight", None)
            out["head.weight"] = out["tok.weight"]
        out.update(sd)  # leftovers are reported as unexpected by the loader
        return out

    def from_attnlab(self, sd: dict[str, Tensor], c: GPTConfig) -> dict[str, Tensor]:
        """attnlab state dict -> Hugging Face state dict of the family's causal-LM class."""
        return {theirs: sd[ours] for ours, theirs in self.keys(c).items()}


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


def _rope_to_hf(c: GPTConfig) -> dict:
    scaling = scaling_to_hf(scaling_from_dict(c.rope_scaling))
    out = {"rope_parameters": {"rope_type": "default", **scaling, "rope_theta": c.rope_base}}
    if c.rope_scaling is not None:
        out["rope_scaling"] = scaling  # transformers 4
    return out


LLAMA = LlamaMap()
