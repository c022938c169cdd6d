"""Attention pictures for papers and notebooks, drawn with matplotlib.

* :func:`plot_head`: one head's (Tq, Tk) weights as a heatmap with token labels;
* :func:`plot_grid`: every layer x head as a small heatmap, one figure;
* :func:`plot_head_stats`: one per-head metric (entropy, sink, a detector score...) as a
  layers x heads heatmap, from the stats rows the explorer page also shows.

New figures are made with matplotlib's object API on an Agg canvas, not with pyplot: nothing is
shown, no global backend is switched, and ``fig.savefig(...)`` writes PNG, PDF or SVG. Pass
``ax=`` to draw into an axes of your own figure instead. A notebook displays a returned figure.

Shapes: L layers, H heads, Tq query tokens, Tk key tokens.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

THUMBNAIL_CELLS = 256  # plot_grid max-pools each head to at most this many cells per side
LABEL_ALL_TOKENS = 64  # up to this many tokens an axis labels every one; beyond, a few
ANNOTATE_CELLS = 144  # plot_head_stats writes the values in the cells up to this many cells
STAT_KEYS = ("view", "layer", "head")


def plot_head(
    weights,
    query_tokens: Sequence[str] | None = None,
    key_tokens: Sequence[str] | None = None,
    ax: Axes | None = None,
    title: str | None = None,
) -> Axes:
    """One head's attention weights (Tq, Tk) as a heatmap: queries down, keys across, with the
    tokens as tick labels when given. Draws into ``ax`` (a new figure when None) and returns it."""
    w = _array("weights", weights, 2)
    tq, tk = w.shape
    query_tokens = _labels("query_tokens", query_tokens, tq, "Tq")
    key_tokens = _labels("key_tokens", key_tokens, tk, "Tk")
    if ax is None:
        ax = _figure((min(12.0, 2.5 + 0.18 * tk), min(12.0, 2.0 + 0.18 * tq))).add_subplot()
    vmax = max(float(w.max()), 1e-12)
    aspect = "equal" if max(tq, tk) <= 4 * min(tq, tk) else "auto"
    image = ax.imshow(w, cmap="Blues", vmin=0.0, vmax=vmax, interpolation="nearest", aspect=aspect)
    _token_axis(ax.xaxis, key_tokens, rotate=True)
    _token_axis(ax.yaxis, query_tokens, rotate=False)
    ax.set_xlabel("key")
    ax.set_ylabel("query")
    if title is not None:
        ax.set_title(title)
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="weight")
    return ax


def plot_grid(weights, layers: Sequence[int] | None = None, heads: Sequence[int] | None = None):
    """Every layer (rows) x head (columns) of ``weights`` (L, H, Tq, Tk) as small heatmaps on one
    colour scale, in a new :class:`~matplotlib.figure.Figure`. ``layers`` and ``heads`` label
    the rows and columns (default 0, 1, ...). Heads longer than 256 tokens are max-pooled, so a
    narrow peak still shows."""
    w = _array("weights", weights, 4)
    n_layers, n_heads = w.shape[:2]
    layers = _numbers("layers", layers, n_layers, "L")
    heads = _numbers("heads", heads, n_heads, "H")
    w = _pool(w, THUMBNAIL_CELLS)
    fig = _figure((1.0 + 1.3 * n_heads, 0.6 + 1.3 * n_layers))
    axes = fig.subplots(n_layers, n_heads, squeeze=False)
    vmax = max(float(w.max()), 1e-12)
    image = None
    for l in range(n_layers):
        for h in range(n_heads):
            ax = axes[l, h]
            image = ax.imshow(w[l, h], cmap="Blues", vmin=0.0, vmax=vmax, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if l == 0:
                ax.set_title(f"head {heads[h]}", fontsize=9)
            if h == 0:
                ax.set_ylabel(f"layer {layers[l]}", fontsize=9)
    fig.colorbar(image, ax=axes, shrink=0.6, label="weight")
    return fig


def plot_head_stats(stats: Sequence[dict], metric: str, ax: Axes | None = None, *, view=None):
    """One metric of per-head stats rows (dicts with "view", "layer", "head" and metrics, as
    :class:`attnlab.inspect.page.PageData` takes them) as a layers x heads heatmap; heads
    without a value stay grey. ``view`` picks the rows of one view when there are several.
    Draws into ``ax`` (a new figure when None) and returns it."""
    if not isinstance(stats, Sequence) or isinstance(stats, str):
        raise TypeError(f"stats: expected a list of dicts, got {type(stats).__name__}")
    rows = []
    for index, row in enumerate(stats):
        if not isinstance(row, dict):
            raise TypeError(f"stats[{index}]: expected a dict, got {type(row).__name__}")
        missing = [key for key in ("layer", "head") if key not in row]
        if missing:
            raise ValueError(f"stats[{index}]: missing {', '.join(map(repr, missing))}")
        rows.append((index, row))
    views = sorted({str(row.get("view")) for _, row in rows if row.get("view") is not None})
    if view is not None:
        if view not in views:
            raise ValueError(f"view: expected one of {views}, got {view!r}")
        rows = [(index, row) for index, row in rows if row.get("view") == view]
    elif len(views) > 1:
        raise ValueError(f"view: the stats hold several views {views}; pass view= to pick one")
    available = sorted({key for _, row in rows for key in row if key not in STAT_KEYS})
    if metric not in available:
        raise ValueError(f"metric: {metric!r} is not in the stats; available: {available}")
    rows = [(index, row) for index, row in rows if metric in row]
    layers = sorted({_integer(f"stats[{i}]['layer']", row["layer"]) for i, row in rows})
    heads = sorted({_integer(f"stats[{i}]['head']", row["head"]) for i, row in rows})
    grid = np.full((len(layers), len(heads)), np.nan)
    for index, row in rows:
        l, h = layers.index(int(row["layer"])), heads.index(int(row["head"]))
        if not math.isnan(grid[l, h]):
            raise ValueError(
                f"stats[{index}]: a second row for layer {row['layer']}, head {row['head']}"
            )
        grid[l, h] = _metric(f"stats[{index}][{metric!r}]", row[metric])
    if ax is None:
        ax = _figure((2.0 + 0.55 * len(heads), 1.5 + 0.45 * len(layers))).add_subplot()
    cmap = colormaps["viridis"].with_extremes(bad="#d9d9d9")  # heads without a value: grey
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, interpolation="nearest")
    ax.set_xticks(range(len(heads)), [str(h) for h in heads])
    ax.set_yticks(range(len(layers)), [str(l) for l in layers])
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(metric if view is None else f"{metric} ({view})")
    if grid.size <= ANNOTATE_CELLS:
        finite = grid[np.isfinite(grid)]
        middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
        for (l, h), value in np.ndenumerate(grid):
            if math.isfinite(value):
                colour = "black" if value > middle else "white"  # viridis: dark low, light high
                ax.text(h, l, f"{value:.2g}", ha="center", va="center", fontsize=7, color=colour)
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label=metric)
    return ax


# -- helpers ---------------------------------------------------------------------------------------


def _figure(size: tuple[float, float]) -> Figure:
    fig = Figure(figsize=size, layout="compressed")  # laid out for fixed-aspect images
    FigureCanvasAgg(fig)  # rendered by Agg whatever pyplot's backend is
    return fig


def _array(name: str, value, ndim: int) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().to("cpu", torch.float32).numpy()
    if not isinstance(value, np.ndarray):
        raise TypeError(
            f"{name}: expected a torch.Tensor or numpy array, got {type(value).__name__}"
        )
    if value.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {tuple(value.shape)}")
    if value.size == 0:
        raise ValueError(f"{name}: expected a non-empty array, got shape {tuple(value.shape)}")
    if not np.issubdtype(value.dtype, np.number) or np.issubdtype(value.dtype, np.complexfloating):
        raise TypeError(f"{name}: expected real numbers, got {value.dtype}")
    value = value.astype(np.float32)
    if not np.isfinite(value).all():
        raise ValueError(f"{name}: expected finite values, got NaN or infinity")
    return value


def _labels(name: str, labels, count: int, dim: str) -> list[str] | None:
    if labels is None:
        return None
    if isinstance(labels, str) or not isinstance(labels, Sequence):
        raise TypeError(f"{name}: expected a list of strings, got {type(labels).__name__}")
    if len(labels) != count:
        raise ValueError(f"{name}: expected {count} labels ({dim} of weights), got {len(labels)}")
    return [str(label) for label in labels]


def _numbers(name: str, labels, count: int, dim: str) -> list[int]:
    if labels is None:
        return list(range(count))
    if isinstance(labels, str) or not isinstance(labels, Sequence):
        raise TypeError(f"{name}: expected a list of integers, got {type(labels).__name__}")
    if len(labels) != count:
        raise ValueError(f"{name}: expected {count} numbers ({dim} of weights), got {len(labels)}")
    return [_integer(f"{name}[{i}]", label) for i, label in enumerate(labels)]


def _integer(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an integer, got {value!r}")
    return int(value)


def _metric(name: str, value) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
    return float(value)


def _token_axis(axis, tokens: list[str] | None, *, rotate: bool) -> None:
    """Every token under its cell when they fit; a readable few at integer positions beyond."""
    if tokens is None:
        axis.set_major_locator(MaxNLocator(nbins=10, integer=True))
        return
    if len(tokens) <= LABEL_ALL_TOKENS:
        axis.set_ticks(range(len(tokens)), tokens, fontsize=8)
    else:
        axis.set_major_locator(MaxNLocator(nbins=12, integer=True))
        axis.set_major_formatter(
            FuncFormatter(lambda x, _: tokens[int(x)] if 0 <= x < len(tokens) else "")
        )
    if rotate:
        axis.set_tick_params(labelrotation=90)


def _pool(w: np.ndarray, cells: int) -> np.ndarray:
    """(L, H, Tq, Tk) max-pooled to at most ``cells`` per side: a thumbnail that keeps peaks."""
    tq, tk = w.shape[2:]
    if max(tq, tk) <= cells:
        return w
    pooled = torch.nn.functional.adaptive_max_pool2d(
        torch.from_numpy(w).flatten(0, 1), (min(tq, cells), min(tk, cells))
    )
    return pooled.reshape(*w.shape[:2], *pooled.shape[1:]).numpy()
