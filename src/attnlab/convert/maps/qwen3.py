"""Qwen3 family (transformers ``Qwen3ForCausalLM``) <-> attnlab ``GPT``.

Qwen3 is Qwen2 (sliding windows included) with an RMSNorm over each query and key head
(``q_norm``/``k_norm``, epsilon ``rms_norm_eps``), applied before RoPE as attnlab's
``qk_norm`` is; biases on all four attention projections only with ``attention_bias``; and an
explicit ``head_dim`` (128 when config.json leaves it out), often not hidden_size /
num_attention_heads.
"""

from __future__ import annotations

from typing import ClassVar

from attnlab.convert.maps.llama import LlamaMap
from attnlab.convert.maps.qwen2 import Qwen2Map


class Qwen3Map(Qwen2Map):
    NAME = "Qwen3"
    ARCHITECTURE = "Qwen3ForCausalLM"
    MODEL_TYPE = "qwen3"
    CONFIG_KEYS: ClassVar[dict[str, str]] = {**Qwen2Map.CONFIG_KEYS, "qkv_bias": "attention_bias"}
    SIZES: ClassVar[list] = [
        *LlamaMap.SIZES,
        ("head_dim", ("model.layers.0.self_attn.q_norm.weight",), 0),
    ]
    DEFAULTS: ClassVar[dict] = {**Qwen2Map.DEFAULTS, "head_dim": 128}
    ATTENTION_BIAS = "attention_bias"  # LlamaAttention's: q, k, v and o together
    QK_NORM = True


QWEN3 = Qwen3Map()
