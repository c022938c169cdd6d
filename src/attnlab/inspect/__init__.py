"""Seeing inside attention: hook points, weights from any backend, statistics, analysis,
pruning and the explorer page.

* :func:`hooks`, :func:`run_with_cache`, :func:`ablate_heads`: named hook points
  (``blocks.3.attn.q``, ``blocks.3.resid_post``, ...), TransformerLens style.
* :func:`attention_weights`, :func:`head_stats`: weights of some heads and rows, or per-head
  statistics at any length, while the model runs its configured backend.
"""

from attnlab.inspect.capture import LayerStats, attention_weights, head_stats, stats_table
from attnlab.inspect.hooks import (
    ActivationCache,
    ablate_heads,
    attention_modules,
    hook_points,
    hooks,
    point_names,
    resolve_layers,
    run_with_cache,
)

__all__ = [
    "ActivationCache",
    "LayerStats",
    "ablate_heads",
    "attention_modules",
    "attention_weights",
    "head_stats",
    "hook_points",
    "hooks",
    "point_names",
    "resolve_layers",
    "run_with_cache",
    "stats_table",
]
