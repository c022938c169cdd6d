"""Attention weights and per-head statistics from a model running its own backend.

The model runs as configured (SDPA, flex, chunked: the kernels stay fused). At each requested
layer the ``pattern`` point hands over the call's prepared queries and keys, mask and bias
(:class:`attnlab.attention.weights.PatternSource`), and only what was asked is recomputed,
tile by tile:

* :func:`attention_weights`: the weights (B, h, r, Tk) of some heads and query rows.
* :func:`head_stats`: per-head statistics over every query row, never holding Tq x Tk:
  entropy, mean attention distance, mass on the first key (attention sinks), mass on the
  previous token, and the top-k keys of every query.

Shapes: B batch, H heads, h selected heads, Tq queries, r selected rows, Tk keys.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from attnlab.attention.weights import PatternSource, Selection
from attnlab.inspect.hooks import check_heads, resolve_layers

# Bytes of weights attention_weights returns before it refuses (1 GiB): a dense pattern grows
# with T², so a long input must ask for rows, heads or statistics.
WEIGHTS_BUDGET = 1 << 30

Layers = int | str | Iterable[int | str] | None


def capture_layers(model: nn.Module, layers: Layers, consume, inputs, kwargs) -> None:
    """Run ``model(*inputs, **kwargs)`` once, without gradients, calling ``consume(key, name,
    attn, source)`` with the :class:`PatternSource` of each chosen layer (see
    :func:`~attnlab.inspect.hooks.resolve_layers`): one forward pass serves every reader of the
    weights (weights, statistics, detectors)."""
    chosen = resolve_layers(model, layers)
    with ExitStack() as stack, torch.no_grad():
        for key, (name, attn) in chosen.items():

            def fn(source: PatternSource, _name: str, key=key, name=name, attn=attn) -> None:
                consume(key, name, attn, source)

            stack.callback(attn.hook_pattern.add_source(fn, f"{name}.pattern").remove)
        model(*inputs, **kwargs)


def attention_weights(
    model: nn.Module,
    *inputs,
    layers: Layers = None,
    heads: Selection = None,
    rows: Selection = None,
    max_bytes: int = WEIGHTS_BUDGET,
    **kwargs,
) -> dict[int | str, Tensor]:
    """Attention weights of ``model(*inputs, **kwargs)``: layer -> (B, h, r, Tk).

    Args:
        layers: block indices (models with one stack of blocks) or attention module names
            (``decoder.blocks.0.cross``); default every layer.
        heads: head indices kept in every layer (int, list, slice); default all.
        rows: query rows kept (int, list, slice); default all.
        max_bytes: ValueError (suggesting rows, heads or :func:`head_stats`) when the weights
            asked for would exceed this many bytes in all.

    The weights equal the reference backend's (float32 math, masked keys 0, rows with no
    allowed key all 0). When a layer runs more than once in the call (decoding with a cache),
    the last call's weights are returned.
    """
    out: dict[int | str, Tensor] = {}
    used: dict[int | str, int] = {}

    def consume(key, name, attn, source: PatternSource) -> None:
        idx = check_heads(heads, attn.n_heads, f"layer {key!r}")
        need = source.nbytes(idx, rows)
        total = sum(v for k, v in used.items() if k != key) + need
        if total > max_bytes:
            b, h, tq, tk = source.shape
            raise ValueError(
                f"heads/rows: the weights asked for need {total:,} bytes (layer {key!r} "
                f"is (B, H, Tq, Tk) = {(b, h, tq, tk)}), over max_bytes={max_bytes:,}; ask for "
                f"fewer heads or some rows (rows=slice(-1, None) is the last token's), or use "
                f"head_stats() for per-head statistics of every row"
            )
        used[key] = need
        out[key] = source.weights(idx, rows)

    capture_layers(model, layers, consume, inputs, kwargs)
    return out


@dataclass
class LayerStats:
    """Per-head statistics of one attention layer, each (B, h) unless noted.

    entropy: mean over query rows of the weights' entropy (nats).
    distance: mean over query rows of sum_j p_ij |i - j| (positions of query and key; in
        cross-attention each sequence counts from 0, see ``PatternSource.offset``).
    sink: mean mass on key 0 (the first token; large values are "attention sinks").
    previous: mean mass on key i - 1 (rows with a previous key).
    top_indices, top_values: (B, h, Tq, k) the k largest weights of every query and their keys.
    heads: (h,) which heads these are.
    rows: (B,) query rows counted (rows with at least one allowed key and, when a query mask
        was given, a real query token).
    """

    name: str
    heads: Tensor
    entropy: Tensor
    distance: Tensor
    sink: Tensor
    previous: Tensor
    rows: Tensor
    top_indices: Tensor | None = None
    top_values: Tensor | None = None
    metrics: tuple[str, ...] = field(default=("entropy", "distance", "sink", "previous"))


def layer_stats(
    name: str,
    source: PatternSource,
    idx: Tensor,
    top_k: int = 0,
    query_mask: Tensor | None = None,
) -> LayerStats:
    """The :class:`LayerStats` of heads ``idx`` (a long tensor on the source's device) of one
    attention call, tile by tile; ``name`` labels the result."""
    b, _, tq, tk = source.shape
    h = idx.numel()
    device = source.q.device
    sums = {m: torch.zeros(b, h, dtype=torch.float64, device=device) for m in LayerStats.metrics}
    counted = torch.zeros(b, dtype=torch.float64, device=device)
    with_prev = torch.zeros(b, dtype=torch.float64, device=device)
    k = min(top_k, tk)
    top_i = torch.zeros(b, h, tq, k, dtype=torch.long, device=device) if k else None
    top_v = torch.zeros(b, h, tq, k, dtype=torch.float32, device=device) if k else None
    kv_pos = torch.arange(tk, device=device, dtype=torch.float32)
    for rows, p in source.tiles(idx):  # p (B, h, r, Tk)
        q_pos = (rows + source.offset).to(torch.float32)  # absolute positions of the rows
        live = p.sum(-1) > 0  # (B, h, r): rows that attend to something
        weight = live[:, 0].to(torch.float64)  # (B, r); masks are the same for every head
        if query_mask is not None:
            weight = weight * query_mask[:, rows].to(torch.float64)
        counted += weight.sum(-1)
        w = weight[:, None, :]  # (B, 1, r)
        sums["entropy"] += (torch.special.entr(p).sum(-1) * w).sum(-1)
        dist = (q_pos[:, None] - kv_pos[None, :]).abs()  # (r, Tk)
        sums["distance"] += ((p * dist).sum(-1) * w).sum(-1)
        sums["sink"] += (p[..., 0] * w).sum(-1)
        # The previous key's index; a row has one when it lies among the keys (in
        # cross-attention the target can be longer than the source).
        prev = rows + source.offset - 1  # (r,)
        has_prev = ((prev >= 0) & (prev < tk)).to(torch.float64)  # (r,)
        prev = prev.clamp(0, tk - 1)
        mass = p.gather(-1, prev.view(1, 1, -1, 1).expand(b, h, -1, 1)).squeeze(-1)
        sums["previous"] += (mass * w * has_prev).sum(-1)
        with_prev += (weight * has_prev).sum(-1)
        if k:
            values, keys = p.topk(k, dim=-1)
            top_i[:, :, rows] = keys
            top_v[:, :, rows] = values
    denom = counted.clamp(min=1)[:, None]
    return LayerStats(
        name=name,
        heads=idx,
        entropy=(sums["entropy"] / denom).float(),
        distance=(sums["distance"] / denom).float(),
        sink=(sums["sink"] / denom).float(),
        previous=(sums["previous"] / with_prev.clamp(min=1)[:, None]).float(),
        rows=counted,
        top_indices=top_i,
        top_values=top_v,
    )


def head_stats(
    model: nn.Module,
    *inputs,
    layers: Layers = None,
    heads: Selection = None,
    top_k: int = 0,
    query_mask: Tensor | None = None,
    **kwargs,
) -> dict[int | str, LayerStats]:
    """Per-head statistics of ``model(*inputs, **kwargs)`` at any length: layer ->
    :class:`LayerStats`. Memory is one tile of scores (16 MB) plus the results, never Tq x Tk.

    Args:
        layers, heads: as :func:`attention_weights`.
        top_k: also keep the k largest weights of every query (0 = none).
        query_mask: (B, Tq), 1 = real query token; padding rows are left out of the means.
            Default: the call's ``attention_mask`` for layers whose queries it covers
            (self-attention over the same tokens).
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k: expected an int >= 0, got {top_k!r}")
    mask = query_mask
    if mask is None:  # the call's attention mask, whether passed by keyword or by position
        mask = _call_argument(model, "attention_mask", inputs, kwargs)
    out: dict[int | str, LayerStats] = {}

    def consume(key, name, attn, source: PatternSource) -> None:
        idx = check_heads(heads, attn.n_heads, f"layer {key!r}")
        b, _, tq, _ = source.shape
        qm = mask if mask is not None and tuple(mask.shape) == (b, tq) else None
        if qm is not None and query_mask is None and name.startswith("decoder."):
            qm = None  # the source's mask does not describe target tokens
        out[key] = layer_stats(name, source, idx.to(source.q.device), top_k, qm)

    capture_layers(model, layers, consume, inputs, kwargs)
    return out


def _call_argument(model: nn.Module, name: str, inputs: tuple, kwargs: dict):
    """The argument ``name`` of the call ``model(*inputs, **kwargs)`` (None when absent)."""
    if name in kwargs:
        return kwargs[name]
    try:
        bound = inspect.signature(model.forward).bind_partial(*inputs, **kwargs)
    except (TypeError, ValueError):  # the call itself will say what is wrong
        return None
    return bound.arguments.get(name)


def stats_table(stats: dict[int | str, LayerStats]) -> list[dict]:
    """One row per (layer, head), averaged over the batch: ``{"layer", "head", "entropy",
    "distance", "sink", "previous"}``, for tables, the explorer page and plots."""
    rows: list[dict] = []
    for key, layer in stats.items():
        for j, head in enumerate(layer.heads.tolist()):
            row: dict = {"layer": key, "head": head}
            for metric in layer.metrics:
                row[metric] = float(getattr(layer, metric)[:, j].mean())
            rows.append(row)
    return rows


__all__: Sequence[str] = (
    "LayerStats",
    "attention_weights",
    "capture_layers",
    "head_stats",
    "layer_stats",
    "stats_table",
)
