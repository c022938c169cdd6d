"""The attention explorer: one self-contained HTML page that shows attention weights.

:func:`write_page` turns plain data (:class:`PageData`, one :class:`AttentionView` per attention
kind) into a single HTML file that opens from disk and makes no network request: the page's
script, styles and data are all inline. The template is ``assets/explorer.html``; its panels are
a head view (token columns joined by lines, as in bertviz), a model view (every layer x head as
a thumbnail), a zoomable matrix view drawn on a canvas (responsive at thousands of tokens), a
sortable statistics table and, for vision transformers, the [CLS] attention laid over the image.

Encoding: weights are quantized to one byte (``round(w * 255)``), gzip-compressed, base64-encoded
and embedded in ``<script type="application/octet-stream">`` blocks; the browser inflates them
with its built-in ``DecompressionStream``. Everything else travels as JSON in a
``<script type="application/json">`` block.

For scripts and tests the page keeps ``window.attnlabState``: ``ready`` (data decoded, first
panel drawn), ``tab``, ``view``, ``layer``, ``head``, ``focus``, ``visibleHeads``, ``matrix``
(zoom and window), ``hover`` and ``drawn``, one signature string per panel that changes whenever
what the panel draws changes. Stable element ids: ``#view-select``, ``#layer-select``,
``#head-select``, ``.head-swatch[data-head]``, ``.token[data-side][data-index]``,
``.thumb[data-layer][data-head]``, ``#matrix-canvas``, ``#stats-table``, ``#vit-canvas``.

Shapes: L layers, H heads, Tq query tokens, Tk key tokens; weights are (L, H, Tq, Tk).
"""

from __future__ import annotations

import base64
import gzip
import html
import json
import math
import numbers
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attnlab.files import atomic_write_text, writing

# A weight or pixel may exceed [0, 1] by rounding (half precision, fused kernels) by this much;
# it is clamped. Beyond it the tensor is not attention probabilities and is refused.
RANGE_TOLERANCE = 1e-3
# Rows of attention probabilities sum to 1 (or less where keys are masked out); bf16 rounding
# alone can push a sum of thousands of terms up by a few parts in a thousand.
ROW_SUM_TOLERANCE = 1e-2
STAT_KEYS = ("view", "layer", "head")  # the keys that place a stats row; the rest are metrics
_PLACEHOLDER = re.compile(r"\{\{(TITLE|META_JSON|BLOBS)\}\}")


@dataclass
class AttentionView:
    """The attention weights of one kind of attention, for the layers and heads shown."""

    name: str  # "self" (decoder-only, BERT, ViT), "encoder", "decoder" or "cross"
    query_tokens: list[str]  # Tq display strings
    key_tokens: list[str]  # Tk display strings
    layers: list[int]  # the layer numbers shown (labels), len L
    heads: list[int]  # the head numbers shown (labels), len H
    weights: torch.Tensor  # float (L, H, Tq, Tk) in [0, 1], each row sums to <= 1


@dataclass
class PageData:
    """Everything the explorer page shows."""

    title: str  # the page's title and heading
    views: list[AttentionView]  # one per attention kind; a selector appears when several
    # One dict per (view, layer, head): "view", "layer", "head" and metrics, numbers (entropy,
    # distance, sink, detector scores...) or short strings; the table shows every key present.
    stats: list[dict] = field(default_factory=list)
    # ViT only: the input image (C, H, W), floats in [0, 1], C = 1 or 3.
    image: torch.Tensor | None = None
    # ViT only: the patches as (rows, cols); key token 0 is [CLS], tokens 1.. the patches in
    # row-major order. Given together with ``image``.
    patch_grid: tuple[int, int] | None = None
    meta: dict[str, str] = field(default_factory=dict)  # header lines: model, source, text...


def write_page(path: str | Path, data: PageData) -> Path:
    """Write the explorer page for ``data`` to ``path`` (a temporary file beside it, then a
    rename: a failure leaves the old file in place) and return the path.

    Raises ValueError or TypeError naming the field when ``data`` does not hold what the page
    shows (see :class:`PageData`), and :class:`attnlab.files.WriteError` when the file cannot
    be written."""
    text = page_html(data)
    path = Path(path)
    with writing("page", path):
        atomic_write_text(path, text)
    return path


def page_html(data: PageData) -> str:
    """The explorer page for ``data`` as one HTML string (what :func:`write_page` writes)."""
    if not isinstance(data, PageData):
        raise TypeError(f"data: expected a PageData, got {type(data).__name__}")
    payload, blobs = _payload(data)
    meta_json = json.dumps(payload, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    # The JSON sits inside a <script> element: "</script>" or "<!--" in a token must not end
    # or change it, so no "<", ">" or "&" appears literally (JSON.parse reads the escapes back).
    meta_json = meta_json.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    blob_tags = "\n".join(
        f'<script type="application/octet-stream" id="attnlab-blob-{name}" '
        f'data-encoding="gzip+base64" data-dtype="uint8">{encoded}</script>'
        for name, encoded in blobs.items()
    )
    title = html.escape(data.title.encode("utf-8", "replace").decode("utf-8"))
    values = {"TITLE": title, "META_JSON": meta_json, "BLOBS": blob_tags}
    # One pass, so text coming from the data is never searched for placeholders itself.
    return _PLACEHOLDER.sub(lambda match: values[match[1]], template())


def template() -> str:
    """The page template (``assets/explorer.html``) with its ``{{TITLE}}``, ``{{META_JSON}}``
    and ``{{BLOBS}}`` placeholders."""
    return resources.files("attnlab").joinpath("inspect/assets/explorer.html").read_text("utf-8")


def encode_bytes(data: bytes) -> str:
    """gzip (fixed timestamp, so equal data gives an equal page) then base64: the page's
    encoding of a byte array."""
    return base64.b64encode(gzip.compress(data, compresslevel=6, mtime=0)).decode("ascii")


def quantize(values: torch.Tensor) -> np.ndarray:
    """Floats in [0, 1] as bytes ``round(v * 255)``, the resolution the page stores."""
    scaled = values.detach().to("cpu", torch.float32).clamp(0.0, 1.0)  # a copy, then in place
    return scaled.mul_(255.0).round_().to(torch.uint8).numpy()


# -- validation and encoding -----------------------------------------------------------------------


def _payload(data: PageData) -> tuple[dict[str, Any], dict[str, str]]:
    """The page's JSON payload and its byte blocks (name -> gzip+base64 text), checking every
    field on the way."""
    if not isinstance(data.title, str):
        raise TypeError(f"title: expected a string, got {type(data.title).__name__}")
    if not isinstance(data.views, list | tuple) or not data.views:
        raise ValueError(f"views: expected a non-empty list of AttentionView, got {data.views!r}")
    views, blobs, names = [], {}, []
    for index, view in enumerate(data.views):
        where = f"views[{index}]"
        if not isinstance(view, AttentionView):
            raise TypeError(f"{where}: expected an AttentionView, got {type(view).__name__}")
        entry, weights = _check_view(where, view)
        if entry["name"] in names:
            raise ValueError(f"{where}.name: {entry['name']!r} is already the name of a view")
        names.append(entry["name"])
        entry["blob"] = f"view-{index}"
        blobs[entry["blob"]] = encode_bytes(quantize(weights).tobytes())
        views.append(entry)
    payload: dict[str, Any] = {
        "version": 1,
        "title": data.title,
        "meta": _check_meta(data.meta),
        "views": views,
        "image": None,
        "patch_grid": None,
    }
    payload["stats"], payload["stat_keys"] = _check_stats(data.stats, names)
    if data.image is not None or data.patch_grid is not None:
        image, grid = _check_image(data.image, data.patch_grid, views)
        payload["image"] = {"shape": list(image.shape), "blob": "image"}
        payload["patch_grid"] = list(grid)
        blobs["image"] = encode_bytes(quantize(image).tobytes())
    return payload, blobs


def _check_view(where: str, view: AttentionView) -> tuple[dict[str, Any], torch.Tensor]:
    if not isinstance(view.name, str) or not view.name:
        raise ValueError(f"{where}.name: expected a non-empty string, got {view.name!r}")
    query = _check_tokens(f"{where}.query_tokens", view.query_tokens)
    key = _check_tokens(f"{where}.key_tokens", view.key_tokens)
    layers = _check_labels(f"{where}.layers", view.layers)
    heads = _check_labels(f"{where}.heads", view.heads)
    weights = _check_probabilities(f"{where}.weights", view.weights, 4)
    expected = (len(layers), len(heads), len(query), len(key))
    if tuple(weights.shape) != expected:
        raise ValueError(
            f"{where}.weights: expected (L, H, Tq, Tk) = {expected} matching layers/heads/tokens, "
            f"got {tuple(weights.shape)}"
        )
    sums = weights.sum(-1)
    worst = int(sums.argmax())
    if sums.flatten()[worst] > 1 + ROW_SUM_TOLERANCE:
        l, h, q = np.unravel_index(worst, tuple(sums.shape))
        raise ValueError(
            f"{where}.weights: each row (over keys) must sum to at most 1, got "
            f"{float(sums.flatten()[worst]):.4g} at layer index {l}, head index {h}, query {q} "
            f"(softmax probabilities expected, not scores)"
        )
    entry = {
        "name": view.name,
        "query_tokens": query,
        "key_tokens": key,
        "layers": layers,
        "heads": heads,
        "shape": list(expected),
    }
    return entry, weights


def _check_tokens(where: str, tokens) -> list[str]:
    if not isinstance(tokens, list | tuple) or not tokens:
        raise ValueError(f"{where}: expected a non-empty list of strings, got {tokens!r:.80}")
    for index, token in enumerate(tokens):
        if not isinstance(token, str):
            raise TypeError(f"{where}[{index}]: expected a string, got {type(token).__name__}")
    return list(tokens)


def _check_labels(where: str, labels) -> list[int]:
    if not isinstance(labels, list | tuple | range) or not labels:
        raise ValueError(f"{where}: expected a non-empty list of integers, got {labels!r:.80}")
    out = []
    for index, label in enumerate(labels):
        if isinstance(label, bool) or not isinstance(label, numbers.Integral):
            raise TypeError(f"{where}[{index}]: expected an integer, got {label!r}")
        out.append(int(label))
    if len(set(out)) != len(out):
        raise ValueError(f"{where}: expected distinct numbers, got {out}")
    return out


def _check_probabilities(where: str, values, ndim: int) -> torch.Tensor:
    """``values`` as a CPU float32 tensor of ``ndim`` dimensions, finite and in [0, 1]."""
    if isinstance(values, np.ndarray):
        values = torch.from_numpy(values)
    if not isinstance(values, torch.Tensor):
        raise TypeError(f"{where}: expected a torch.Tensor, got {type(values).__name__}")
    if not values.is_floating_point():
        raise TypeError(f"{where}: expected a floating-point tensor, got {values.dtype}")
    if values.dim() != ndim:
        raise ValueError(f"{where}: expected {ndim} dimensions, got shape {tuple(values.shape)}")
    if values.numel() == 0:
        raise ValueError(f"{where}: expected a non-empty tensor, got shape {tuple(values.shape)}")
    values = values.detach().to("cpu", torch.float32)
    if not torch.isfinite(values).all():
        raise ValueError(f"{where}: expected finite values, got NaN or infinity")
    low, high = float(values.min()), float(values.max())
    if low < -RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
        raise ValueError(
            f"{where}: expected values in [0, 1], got values in [{low:.4g}, {high:.4g}]"
        )
    return values


def _check_meta(meta) -> dict[str, str]:
    if not isinstance(meta, dict):
        raise TypeError(f"meta: expected a dict of strings, got {type(meta).__name__}")
    out = {}
    for key, value in meta.items():
        if not isinstance(key, str):
            raise TypeError(f"meta: expected string keys, got {key!r}")
        if not isinstance(value, str | numbers.Number):
            raise TypeError(f"meta[{key!r}]: expected a string, got {type(value).__name__}")
        out[key] = str(value)
    return out


def _check_stats(stats, names: list[str]) -> tuple[list[dict], list[str]]:
    """The stats rows ready for JSON (non-finite numbers as null) and the metric names, in the
    order they first appear."""
    if not isinstance(stats, list | tuple):
        raise TypeError(f"stats: expected a list of dicts, got {type(stats).__name__}")
    rows, keys = [], {}
    for index, row in enumerate(stats):
        where = f"stats[{index}]"
        if not isinstance(row, dict):
            raise TypeError(f"{where}: expected a dict, got {type(row).__name__}")
        missing = [key for key in STAT_KEYS if key not in row]
        if missing:
            raise ValueError(f"{where}: missing {', '.join(map(repr, missing))}; got {sorted(row)}")
        if row["view"] not in names:
            raise ValueError(
                f"{where}['view']: expected one of the view names {names}, got {row['view']!r}"
            )
        out = {"view": row["view"]}
        for key in ("layer", "head"):
            value = row[key]
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"{where}[{key!r}]: expected an integer, got {value!r}")
            out[key] = int(value)
        for key, value in row.items():
            if key in STAT_KEYS:
                continue
            if not isinstance(key, str):
                raise TypeError(f"{where}: expected string keys, got {key!r}")
            out[key] = _stat_value(f"{where}[{key!r}]", value)
            keys.setdefault(key, None)
        rows.append(out)
    return rows, list(keys)


def _stat_value(where: str, value):
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else value
    elif isinstance(value, np.ndarray) and value.size == 1:
        value = value.item()
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{where}: expected a number or a string, got {type(value).__name__}")
    value = float(value)
    return value if math.isfinite(value) else None


def _check_image(image, grid, views: list[dict]) -> tuple[torch.Tensor, tuple[int, int]]:
    if image is None or grid is None:
        given, absent = ("image", "patch_grid") if grid is None else ("patch_grid", "image")
        raise ValueError(f"{absent}: expected together with {given} (the ViT overlay needs both)")
    image = _check_probabilities("image", image, 3)
    if image.shape[0] not in (1, 3):
        raise ValueError(f"image: expected (C, H, W) with C = 1 or 3, got {tuple(image.shape)}")
    if (
        not isinstance(grid, list | tuple)
        or len(grid) != 2
        or not all(
            isinstance(n, numbers.Integral) and not isinstance(n, bool) and n > 0 for n in grid
        )
    ):
        raise ValueError(f"patch_grid: expected (rows, cols) of positive integers, got {grid!r}")
    rows, cols = int(grid[0]), int(grid[1])
    keys = 1 + rows * cols
    if not any(view["shape"][3] == keys for view in views):
        have = {view["name"]: view["shape"][3] for view in views}
        raise ValueError(
            f"patch_grid: ({rows}, {cols}) needs a view with 1 + {rows}*{cols} = {keys} key tokens "
            f"([CLS] then the patches), got key counts {have}"
        )
    return image, (rows, cols)
