"""Mistral family (transformers ``MistralForCausalLM``) <-> attnlab ``GPT``.

Mistral is Llama's layout without biases, plus an optional sliding window that every layer
shares (``sliding_window``; null for none). transformers' window lets the query at position p
see the keys k with p - k < sliding_window, the query's own position included: attnlab's
``attention="local"`` with ``window=sliding_window``
(:func:`attnlab.attention.masks.sliding_window`).
"""

from __future__ import annotations

from typing import ClassVar

from attnlab.convert.maps.llama import CONFIG_KEYS, LlamaMap
from attnlab.models.gpt import GPTConfig

# transformers' MistralConfig gives a config.json without the key a 4096-token window.
DEFAULT_WINDOW = 4096


class MistralMap(LlamaMap):
    NAME = "Mistral"
    ARCHITECTURE = "MistralForCausalLM"
    MODEL_TYPE = "mistral"
    CONFIG_KEYS: ClassVar[dict[str, str]] = {**CONFIG_KEYS, "window": "sliding_window"}
    DEFAULTS: ClassVar[dict] = {**LlamaMap.DEFAULTS, "max_position_embeddings": 4096 * 32}
    ATTENTION_BIAS = (False, False)  # MistralAttention has no biases, whatever config.json says
    WINDOWS = True
    REFUSED: ClassVar[dict[str, str]] = {}  # MistralMLP has no biases either

    def layer_windows(self, hf: dict, n_layer: int) -> list[int | None]:
        """Every layer has the window ``sliding_window`` (GPTConfig checks its value)."""
        return [hf.get("sliding_window", DEFAULT_WINDOW)] * n_layer

    def windows_to_hf(self, c: GPTConfig) -> dict:
        return {"sliding_window": c.window if c.attention == "local" else None}


MISTRAL = MistralMap()
