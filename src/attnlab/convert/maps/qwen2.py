"""Qwen2 family (transformers ``Qwen2ForCausalLM``) <-> attnlab ``GPT``.

Qwen2 is Llama's layout with biases on the query, key and value projections only (not on the
output projection, nor in the MLP). Its sliding windows are per layer: with
``use_sliding_window`` true, the layers from ``max_window_layers`` on (or those that
``layer_types`` names "sliding_attention") attend within ``sliding_window`` keys, as Mistral's
do. attnlab gives every layer of a GPT the same attention, so a window on all layers or on none
is converted, and a mix is refused naming the keys.
"""

from __future__ import annotations

from typing import ClassVar

from attnlab.convert.maps.common import sliding_layers
from attnlab.convert.maps.llama import CONFIG_KEYS, LlamaMap
from attnlab.models.gpt import GPTConfig

# transformers' Qwen2Config defaults for keys a config.json leaves out
DEFAULT_WINDOW = 4096
DEFAULT_MAX_WINDOW_LAYERS = 28


class Qwen2Map(LlamaMap):
    NAME = "Qwen2"
    ARCHITECTURE = "Qwen2ForCausalLM"
    MODEL_TYPE = "qwen2"
    CONFIG_KEYS: ClassVar[dict[str, str]] = {**CONFIG_KEYS, "window": "sliding_window"}
    DEFAULTS: ClassVar[dict] = {**LlamaMap.DEFAULTS, "max_position_embeddings": 32768}
    ATTENTION_BIAS = (True, False)  # Qwen2Attention: q/k/v with biases, o_proj without
    WINDOWS = True
    REFUSED: ClassVar[dict[str, str]] = {}  # the MLP has no biases, whatever config.json says

    def layer_windows(self, hf: dict, n_layer: int) -> list[int | None]:
        """Each layer's window as transformers' Qwen2Config derives it; ValueError naming the
        keys when only some layers have one."""
        use = hf.get("use_sliding_window", False)
        if not isinstance(use, bool):
            raise ValueError(
                f"config.json: use_sliding_window: expected true or false, got {use!r:.80}"
            )
        window = hf.get("sliding_window", DEFAULT_WINDOW) if use else None
        types = hf.get("layer_types")
        if types is None:
            first = hf.get("max_window_layers", DEFAULT_MAX_WINDOW_LAYERS)
            if not isinstance(first, int) or isinstance(first, bool) or first < 0:
                raise ValueError(
                    f"config.json: max_window_layers: expected an int >= 0, got {first!r:.80}"
                )
            sliding = [window is not None and i >= first for i in range(n_layer)]
            source = f"use_sliding_window=true with max_window_layers={first}"
        else:
            sliding = sliding_layers(types, n_layer)
            if any(sliding) and window is None:
                raise ValueError(
                    "config.json: layer_types: lists 'sliding_attention' layers, but no window "
                    "is set (use_sliding_window false or sliding_window null)"
                )
            source = "layer_types"
        if any(sliding) and not all(sliding):
            windowed = [i for i, s in enumerate(sliding) if s]
            raise ValueError(
                f"config.json: {source} gives a sliding window to layers {windowed[0]}.."
                f"{windowed[-1]} of num_hidden_layers={n_layer} only; attnlab gives every layer "
                "the same attention, so per-layer sliding windows are not supported"
            )
        return [window if s else None for s in sliding]

    def windows_to_hf(self, c: GPTConfig) -> dict:
        if c.attention == "local":  # max_window_layers=0: every layer has the window
            return {"use_sliding_window": True, "sliding_window": c.window, "max_window_layers": 0}
        return {"use_sliding_window": False, "sliding_window": None, "max_window_layers": c.n_layer}


QWEN2 = Qwen2Map()
