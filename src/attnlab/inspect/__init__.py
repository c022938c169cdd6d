"""Seeing inside attention: hook points, weights from any backend, statistics, analysis,
pruning and the explorer page.

* :func:`hooks`, :func:`run_with_cache`, :func:`ablate_heads`: named hook points
  (``blocks.3.attn.q``, ``blocks.3.resid_post``, ...), TransformerLens style.
* :func:`attention_weights`, :func:`head_stats`: weights of some heads and rows, or per-head
  statistics at any length, while the model runs its configured backend.
* :func:`prune_heads`: remove heads structurally (parameters and FLOPs drop); scoring and
  pruning curves.
* :mod:`attnlab.inspect.page` / :mod:`attnlab.inspect.plots`: the explorer page and
  matplotlib pictures.
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
from attnlab.inspect.prune import (
    count_heads,
    curve_fractions,
    plot_curve,
    prune_heads,
    pruning_curve,
    score_heads,
    select_heads,
)

__all__ = [
    "ActivationCache",
    "LayerStats",
    "ablate_heads",
    "attention_modules",
    "attention_weights",
    "count_heads",
    "curve_fractions",
    "head_stats",
    "hook_points",
    "hooks",
    "plot_curve",
    "point_names",
    "prune_heads",
    "pruning_curve",
    "resolve_layers",
    "run_with_cache",
    "score_heads",
    "select_heads",
    "stats_table",
]
