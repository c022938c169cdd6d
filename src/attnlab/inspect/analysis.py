"""Analysis of attention: where information flows, what heads do, which heads matter.

* :func:`rollout` and :func:`flow` (Abnar & Zuidema 2020, "Quantifying Attention Flow in
  Transformers"): how much each input token reaches each output token through the layers,
  by the product of residual-augmented attention (rollout) or by a maximum flow through the
  layered attention graph (flow). :func:`rollout_of` captures a model's weights first.
* :func:`detect_heads`: TransformerLens's head detector scores (previous-token, duplicate-token
  and induction heads, plus first-token "sink" heads), computed tile by tile from each layer's
  :class:`~attnlab.attention.weights.PatternSource`, so a (Tq, Tk) pattern is never held;
  :func:`detection_scores` scores one source.
* :func:`head_importance` (Michel et al. 2019, "Are Sixteen Heads Really Better than One?"):
  the gradient of the loss with respect to a mask on each head's output.
* :func:`attribution` (Chefer et al. 2021, "Transformer Interpretability Beyond Attention
  Visualization"): gradient-weighted attention rolled out over the layers, attributing one
  prediction to the input tokens.

Shapes: B batch, L layers, H heads, h selected heads, T tokens, Tq queries, r rows of a tile,
Tk keys, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from attnlab.attention.multihead import MultiHeadAttention
from attnlab.attention.weights import TILE_ELEMENTS, PatternSource, Selection
from attnlab.inspect.capture import Layers, attention_weights, capture_layers
from attnlab.inspect.hooks import check_heads, resolve_layers

FUSIONS = ("mean", "max", "min")
# Nodes of the layered graph, (layers + 1) * T, that flow() accepts by default. It solves T^2
# maximum-flow problems per batch element in Python, each growing with the graph: 256 nodes
# (e.g. 32 tokens through 7 layers) take seconds; rollout() is the one for long inputs.
FLOW_MAX_NODES = 256
# Residual capacities at or below this count as saturated: capacities are attention weights in
# [0, 1], and float rounding must not keep an augmenting path alive forever.
_FLOW_EPS = 1e-12

Weights = Sequence[Tensor] | Mapping[int | str, Tensor]


# -- rollout and flow ------------------------------------------------------------------------------


def _layer_stack(weights: Weights) -> list[Tensor]:
    """Check ``weights`` (a list, or a mapping in its order) of (B, H, T, T) and return them."""
    if isinstance(weights, Mapping):
        labels, items = [repr(k) for k in weights], list(weights.values())
    elif isinstance(weights, (list, tuple)):
        labels, items = [str(i) for i in range(len(weights))], list(weights)
    else:
        raise TypeError(
            f"weights: expected a list of (B, H, T, T) tensors or a dict layer -> tensor, got "
            f"{type(weights).__name__}"
        )
    if not items:
        raise ValueError("weights: expected at least one layer's weights, got none")
    for label, w in zip(labels, items, strict=True):
        if not isinstance(w, Tensor):
            raise TypeError(f"weights: layer {label} is a {type(w).__name__}, expected a tensor")
        if w.dim() != 4 or w.shape[-1] != w.shape[-2]:
            raise ValueError(
                f"weights: layer {label}: expected self-attention weights (B, H, T, T), got "
                f"shape {tuple(w.shape)}"
            )
        first = items[0]
        if w.shape[0] != first.shape[0] or w.shape[-1] != first.shape[-1]:
            raise ValueError(
                f"weights: layer {label} has (B, T) = {(w.shape[0], w.shape[-1])}, layer "
                f"{labels[0]} has {(first.shape[0], first.shape[-1])}; every layer must cover "
                f"the same tokens"
            )
    return items


def _check_options(head_fusion: str, discard_ratio: float) -> None:
    if head_fusion not in FUSIONS:
        raise ValueError(f"head_fusion: expected one of {', '.join(FUSIONS)}, got {head_fusion!r}")
    if isinstance(discard_ratio, bool) or not isinstance(discard_ratio, (int, float)):
        raise TypeError(f"discard_ratio: expected a float in [0, 1), got {discard_ratio!r}")
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio: expected a float in [0, 1), got {discard_ratio}")


def _one_stack(model: nn.Module, layers: Layers) -> Layers:
    """``layers``, refusing the default where the model has more than one stack of attention
    (the encoder-decoder): rolling out layers of two sequences together means nothing."""
    if layers is None:
        keys = list(resolve_layers(model, None))
        if keys and not isinstance(keys[0], int):
            raise ValueError(
                f"layers: this model's attention modules form more than one stack; name the "
                f"self-attention layers to combine, in forward order, from: {', '.join(keys)}"
            )
    return layers


def _layer_matrix(w: Tensor, head_fusion: str, residual: bool, discard_ratio: float) -> Tensor:
    """One layer's token-to-token matrix (B, T, T) in float64, rows summing to 1 (or 0)."""
    w = w.detach().to(torch.float64)
    if head_fusion == "mean":
        a = w.mean(1)
    elif head_fusion == "max":
        a = w.amax(1)
    else:
        a = w.amin(1)
    b, t, _ = a.shape
    drop = int(t * t * discard_ratio)
    if drop:
        # The weakest connections are treated as noise (Gildenblat's vit-explain): the smallest
        # `drop` entries of each matrix go to 0 before the rows are renormalised.
        flat = a.reshape(b, t * t).clone()
        flat.scatter_(1, flat.topk(drop, dim=1, largest=False).indices, 0.0)
        a = flat.view(b, t, t)
    if residual:
        # The residual connection carries each token's own state past the layer (Abnar &
        # Zuidema 2020, §3): half attention, half identity.
        a = 0.5 * a + 0.5 * torch.eye(t, dtype=a.dtype, device=a.device)
    total = a.sum(-1, keepdim=True)
    return torch.where(total > 0, a / total.clamp(min=torch.finfo(a.dtype).tiny), a)


def rollout(
    weights: Weights,
    head_fusion: str = "mean",
    residual: bool = True,
    discard_ratio: float = 0.0,
) -> Tensor:
    """Attention rollout (Abnar & Zuidema 2020): (B, T, T), row i = how much each input token
    reaches token i after the last layer.

    Args:
        weights: each layer's self-attention weights (B, H, T, T), first layer first: a list,
            or a dict layer -> weights in its order (as :func:`attention_weights` returns).
        head_fusion: how a layer's heads combine: "mean" (the paper), "max" or "min".
        residual: account for the residual connection: A <- 0.5 A + 0.5 I.
        discard_ratio: fraction of each fused matrix's smallest entries set to 0 first.

    Each layer's matrix has its rows renormalised to sum to 1 (rows with no weight stay 0);
    the result is A_L @ ... @ A_1, float32. With weights whose rows sum to 1, so do its rows.
    """
    _check_options(head_fusion, discard_ratio)
    layers = _layer_stack(weights)
    result = None
    for w in layers:
        a = _layer_matrix(w, head_fusion, residual, discard_ratio)
        result = a if result is None else a @ result  # (B, T, T): later layers on the left
    return result.to(torch.float32)


def rollout_of(
    model: nn.Module,
    *inputs,
    layers: Layers = None,
    head_fusion: str = "mean",
    residual: bool = True,
    discard_ratio: float = 0.0,
    **kwargs,
) -> Tensor:
    """:func:`rollout` of ``model(*inputs, **kwargs)``'s self-attention: (B, T, T).

    Args:
        layers: which self-attention layers to roll out, in forward order (block indices, or
            module names such as ``encoder.blocks.0.attn``); default every layer of a model
            with one stack of blocks (a model with several, the encoder-decoder, must name
            them). The weights are captured with
            :func:`attnlab.inspect.attention_weights` while the model runs its own backend.
        head_fusion, residual, discard_ratio: as :func:`rollout`.
    """
    _check_options(head_fusion, discard_ratio)
    weights = attention_weights(model, *inputs, layers=_one_stack(model, layers), **kwargs)
    return rollout(weights, head_fusion, residual, discard_ratio)


class _Graph:
    """A directed graph with float capacities for Dinic's maximum flow (Dinic 1970): edges are
    stored in pairs, edge ``e`` and its residual twin ``e ^ 1``."""

    def __init__(self, n: int) -> None:
        self.adj: list[list[int]] = [[] for _ in range(n)]
        self.to: list[int] = []
        self.cap: list[float] = []

    def add(self, u: int, v: int, capacity: float) -> None:
        self.adj[u].append(len(self.to))
        self.to.append(v)
        self.cap.append(capacity)
        self.adj[v].append(len(self.to))
        self.to.append(u)
        self.cap.append(0.0)

    def max_flow(self, s: int, t: int) -> float:
        """The value of a maximum flow from ``s`` to ``t`` (capacities are left unchanged)."""
        cap = list(self.cap)  # residual capacities of this problem
        adj, to = self.adj, self.to
        n = len(adj)
        total = 0.0
        while True:
            level = [-1] * n  # BFS distance from s in the residual graph
            level[s] = 0
            frontier = [s]
            while frontier and level[t] < 0:
                nxt = []
                for u in frontier:
                    for e in adj[u]:
                        v = to[e]
                        if level[v] < 0 and cap[e] > _FLOW_EPS:
                            level[v] = level[u] + 1
                            nxt.append(v)
                frontier = nxt
            if level[t] < 0:
                return total
            it = [0] * n  # the next edge to try at each node (dead ends are skipped once)

            def push(u: int, limit: float, level=level, it=it) -> float:
                if u == t:
                    return limit
                edges = adj[u]
                while it[u] < len(edges):
                    e = edges[it[u]]
                    v = to[e]
                    if cap[e] > _FLOW_EPS and level[v] == level[u] + 1:
                        pushed = push(v, min(limit, cap[e]))
                        if pushed > _FLOW_EPS:
                            cap[e] -= pushed
                            cap[e ^ 1] += pushed
                            return pushed
                    it[u] += 1
                return 0.0

            while True:
                pushed = push(s, float("inf"))
                if pushed <= _FLOW_EPS:
                    break
                total += pushed


def flow(
    weights: Weights,
    head_fusion: str = "mean",
    residual: bool = True,
    discard_ratio: float = 0.0,
    normalize: bool = True,
    max_nodes: int = FLOW_MAX_NODES,
) -> Tensor:
    """Attention flow (Abnar & Zuidema 2020): (B, T, T), entry (i, j) = the maximum flow from
    input token j to token i after the last layer.

    The graph has one node per (layer boundary, token): L + 1 rows of T nodes; layer l joins
    token j below to token i above with capacity A_l[i, j], the layer's matrix as in
    :func:`rollout` (heads fused, residual-augmented, rows renormalised). Each entry is one
    maximum-flow problem (Dinic's algorithm), so this is meant for short inputs: the graph is
    refused beyond ``max_nodes`` nodes.

    Args:
        weights, head_fusion, residual, discard_ratio: as :func:`rollout`.
        normalize: divide each row by its sum, as the paper's code does, so rows sum to 1 and
            compare with rollout; False returns the raw flow values.
        max_nodes: the largest (L + 1) * T accepted.
    """
    _check_options(head_fusion, discard_ratio)
    layers = _layer_stack(weights)
    b, _, t, _ = layers[0].shape
    nodes = (len(layers) + 1) * t
    if nodes > max_nodes:
        raise ValueError(
            f"weights: attention flow over {len(layers)} layers of {t} tokens needs a graph of "
            f"{nodes} nodes, over max_nodes={max_nodes}; pass fewer layers or tokens, raise "
            f"max_nodes (T^2 maximum-flow problems per batch element), or use rollout()"
        )
    mats = [_layer_matrix(w, head_fusion, residual, discard_ratio).cpu() for w in layers]
    out = torch.zeros(b, t, t, dtype=torch.float64)
    for n in range(b):
        graph = _Graph(nodes)
        reach = torch.eye(t, dtype=torch.bool)  # reach[i, j]: a positive path from j to i
        for layer, a in enumerate(mats, start=1):
            rows = a[n].tolist()
            for i in range(t):
                for j in range(t):
                    if rows[i][j] > 0.0:
                        graph.add((layer - 1) * t + j, layer * t + i, rows[i][j])
            reach = (a[n] > 0).to(torch.float64) @ reach.to(torch.float64) > 0
        last = len(mats) * t
        for i in range(t):
            for j in range(t):
                if reach[i, j]:  # without a positive path the flow is 0: skip the search
                    out[n, i, j] = graph.max_flow(j, last + i)
    if normalize:
        total = out.sum(-1, keepdim=True)
        out = torch.where(total > 0, out / total.clamp(min=torch.finfo(out.dtype).tiny), out)
    return out.to(device=layers[0].device, dtype=torch.float32)


# -- head detectors --------------------------------------------------------------------------------

# A detection pattern, one tile at a time: (query positions (r,), key positions (Tk,), query
# tokens (B, r) or None, key tokens (B, Tk) or None) -> bool (B or 1, r, Tk), True where the
# head type is expected to attend.
PatternFn = Callable[[Tensor, Tensor, Tensor | None, Tensor | None], Tensor]


@dataclass(frozen=True)
class Detector:
    """One head type: its detection pattern, whether the pattern depends on token ids, and a
    few words on the keys it marks."""

    pattern: PatternFn
    needs_tokens: bool
    about: str


def _previous(q_pos: Tensor, k_pos: Tensor, q_tok, k_tok) -> Tensor:
    return (k_pos[None, :] == q_pos[:, None] - 1)[None]


def _first(q_pos: Tensor, k_pos: Tensor, q_tok, k_tok) -> Tensor:
    return (k_pos[None, :] == 0).expand(q_pos.numel(), -1)[None]


def _duplicate(q_pos: Tensor, k_pos: Tensor, q_tok: Tensor, k_tok: Tensor) -> Tensor:
    earlier = k_pos[None, :] < q_pos[:, None]  # (r, Tk)
    return (k_tok[:, None, :] == q_tok[:, :, None]) & earlier[None]


def _induction(q_pos: Tensor, k_pos: Tensor, q_tok: Tensor, k_tok: Tensor) -> Tensor:
    # Key j follows an earlier copy of the query's token: tokens[j - 1] == tokens[i], 1 <= j <= i
    # (TransformerLens shifts the duplicate pattern one key to the right).
    before = torch.roll(k_tok, 1, dims=-1)  # (B, Tk): tokens[j - 1]; j = 0 is masked below
    valid = (k_pos[None, :] >= 1) & (k_pos[None, :] <= q_pos[:, None])  # (r, Tk)
    return (before[:, None, :] == q_tok[:, :, None]) & valid[None]


DETECTORS: dict[str, Detector] = {
    "previous_token": Detector(_previous, False, "key i - 1"),
    "first_token": Detector(_first, False, "key 0 (attention sinks)"),
    "duplicate_token": Detector(_duplicate, True, "earlier keys with the query's token"),
    "induction": Detector(
        _induction, True, "keys right after an earlier copy of the query's token"
    ),
}
DEFAULT_DETECTORS = tuple(DETECTORS)


def _check_detectors(detectors: str | Iterable[str]) -> tuple[str, ...]:
    if isinstance(detectors, str):
        detectors = (detectors,)
    names = tuple(detectors)
    if not names:
        raise ValueError(f"detectors: expected at least one of {', '.join(DETECTORS)}, got none")
    for name in names:
        if name not in DETECTORS:
            raise ValueError(
                f"detectors: unknown detector {name!r}; expected names from {', '.join(DETECTORS)}"
            )
    return names


def detection_scores(
    source: PatternSource,
    tokens: Tensor | None = None,
    detectors: str | Iterable[str] = DEFAULT_DETECTORS,
    heads: Selection = None,
    *,
    exclude_bos: bool = False,
    exclude_current_token: bool = False,
    query_mask: Tensor | None = None,
    max_elements: int = TILE_ELEMENTS,
) -> dict[str, Tensor]:
    """Detector scores of one attention call, per sequence and head: name -> (B, h).

    A score is TransformerLens's "mul" measure, sum(pattern * detection) / sum(pattern), over
    the whole (Tq, Tk) pattern of one sequence, accumulated tile by tile so that no more than
    ``max_elements`` weights are held at once.

    Args:
        source: the call's :class:`~attnlab.attention.weights.PatternSource` (B, H, Tq, Tk).
        tokens: token ids (B, Tk) of the keys; the queries are the last Tq of them. Needed by
            "duplicate_token" and "induction".
        detectors: names from :data:`DETECTORS`.
        heads: head indices (default all).
        exclude_bos: drop the weight on key 0 from the pattern first (TransformerLens).
        exclude_current_token: drop the weight on the query's own position first.
        query_mask: (B, Tq), 1 = a real query; padding rows are left out.
        max_elements: weights per tile.

    A head whose pattern has no weight left (every row masked or excluded) scores 0.
    """
    names = _check_detectors(detectors)
    b, n_heads, tq, tk = source.shape
    device = source.q.device
    q_tok = k_tok = None
    if any(DETECTORS[n].needs_tokens for n in names):
        if not isinstance(tokens, Tensor) or tokens.dim() != 2:
            got = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
            raise ValueError(
                f"tokens: detectors {', '.join(n for n in names if DETECTORS[n].needs_tokens)} "
                f"need the token ids (B, Tk) = {(b, tk)}, got {got}"
            )
        if tuple(tokens.shape) != (b, tk):
            raise ValueError(
                f"tokens: expected token ids of shape (B, Tk) = {(b, tk)} (the keys of this "
                f"attention call), got {tuple(tokens.shape)}"
            )
        k_tok = tokens.to(device)
    if query_mask is not None and tuple(query_mask.shape) != (b, tq):
        raise ValueError(
            f"query_mask: expected shape (B, Tq) = {(b, tq)}, got {tuple(query_mask.shape)}"
        )
    idx = check_heads(heads, n_heads, "the source").to(device)
    h = idx.numel()
    num = {n: torch.zeros(b, h, dtype=torch.float64, device=device) for n in names}
    den = torch.zeros(b, h, dtype=torch.float64, device=device)
    k_pos = torch.arange(tk, device=device)
    for rows, p in source.tiles(idx, max_elements=max_elements):  # p (B, h, r, Tk)
        q_pos = rows + source.offset  # absolute positions of the rows
        keep = torch.ones(q_pos.numel(), tk, dtype=torch.bool, device=device)  # (r, Tk)
        if exclude_bos:
            keep[:, 0] = False
        if exclude_current_token:
            keep &= k_pos[None, :] != q_pos[:, None]
        p = p * keep  # float32 tiles, float64 sums
        if query_mask is not None:
            p = p * query_mask[:, rows].to(p.dtype)[:, None, :, None]
        den += p.sum((-1, -2), dtype=torch.float64)
        if k_tok is not None:
            q_tok = k_tok[:, q_pos]  # (B, r)
        for n in names:
            det = DETECTORS[n].pattern(q_pos, k_pos, q_tok, k_tok)  # (B|1, r, Tk)
            num[n] += (p * det[:, None]).sum((-1, -2), dtype=torch.float64)
    safe = den.clamp(min=torch.finfo(den.dtype).tiny)
    return {n: torch.where(den > 0, num[n] / safe, 0.0).float() for n in names}


def _cross_modules(model: nn.Module) -> set[int]:
    """ids of the attention modules that attend to another sequence (a block's ``cross``)."""
    return {
        id(m.cross)
        for m in model.modules()
        if isinstance(getattr(m, "cross", None), MultiHeadAttention)
    }


def _stack_rows(rows: list[Tensor]) -> Tensor:
    """Stack per-layer vectors (h_l,) into (L, max h), padding shorter layers with NaN."""
    width = max(r.numel() for r in rows)
    out = torch.full((len(rows), width), float("nan"), dtype=rows[0].dtype, device=rows[0].device)
    for i, r in enumerate(rows):
        out[i, : r.numel()] = r
    return out


def detect_heads(
    model: nn.Module,
    input_ids: Tensor,
    detectors: str | Iterable[str] = DEFAULT_DETECTORS,
    layers: Layers = None,
    heads: Selection = None,
    exclude_bos: bool = False,
    exclude_current_token: bool = False,
    **kwargs,
) -> dict[str, Tensor]:
    """Score every head as each head type, TransformerLens style: name -> (L, h).

    One forward pass of ``model(input_ids, **kwargs)`` under ``torch.no_grad``; at each layer
    the pattern is recomputed tile by tile from the call's queries and keys while the backend
    runs as configured, and scored by :func:`detection_scores`. Scores are averaged over the
    batch (TransformerLens scores a list of sequences by the mean of their scores).

    Detectors (:data:`DETECTORS`), each the mass a head puts on its keys, over all its mass:
    "previous_token" (key i - 1), "first_token" (key 0: attention sinks), "duplicate_token"
    (keys j < i with the same token as query i), "induction" (keys j <= i right after an
    earlier copy of token i, tokens[j - 1] == tokens[i]). Repeated random sequences give an
    induction head up to about half its mass: only the repeated half has targets.

    Args:
        input_ids: token ids (B, T) (passed to the model first; for the encoder-decoder the
            source ids, and the decoder's layers are scored on ``decoder_input_ids``).
        detectors: names, in the order of the result.
        layers: self-attention layers, the rows of each result in the order given. Default
            every self-attention layer: block indices 0..L-1 for a model with one stack of
            blocks; for the encoder-decoder its module names, ``encoder.blocks.i.attn`` then
            ``decoder.blocks.i.attn`` (cross-attention relates two sequences and is refused).
        heads: head indices kept in every layer (default all); layers with fewer heads are
            padded with NaN.
        exclude_bos, exclude_current_token: drop the weight on key 0 / on the query's own
            position from each pattern before scoring (TransformerLens's options).
        **kwargs: more model inputs; ``attention_mask`` (``decoder_attention_mask`` for
            decoder layers) leaves padding queries out.
    """
    names = _check_detectors(detectors)
    cross = _cross_modules(model)
    chosen = resolve_layers(model, layers)
    if layers is None:
        chosen = {k: v for k, v in chosen.items() if id(v[1]) not in cross}
    else:
        for key, (_, attn) in chosen.items():
            if id(attn) in cross:
                raise ValueError(
                    f"layers: {key!r} is a cross-attention; head detectors score self-attention "
                    f"over one sequence"
                )
    rows: dict[int | str, dict[str, Tensor]] = {}

    def consume(key, name: str, attn, source: PatternSource) -> None:
        decoder = name.startswith("decoder.")
        ids = kwargs.get("decoder_input_ids") if decoder else input_ids
        if decoder and ids is None and any(DETECTORS[n].needs_tokens for n in names):
            raise ValueError(
                f"decoder_input_ids: layer {key!r} scores target tokens; pass the target ids"
            )
        b, _, tq, _ = source.shape
        mask = kwargs.get("decoder_attention_mask" if decoder else "attention_mask")
        if mask is not None and tuple(mask.shape) != (b, tq):
            mask = None  # a mask over cached positions too: every query row is real
        heads_idx = check_heads(heads, attn.n_heads, f"layer {key!r}")
        try:
            scores = detection_scores(
                source,
                ids,
                names,
                heads_idx,
                exclude_bos=exclude_bos,
                exclude_current_token=exclude_current_token,
                query_mask=mask,
            )
        except ValueError as exc:
            raise ValueError(f"{exc} (layer {key!r})") from None
        rows[key] = {n: s.mean(0) for n, s in scores.items()}  # (h,): mean over the batch

    capture_layers(model, list(chosen), consume, (input_ids,), kwargs)
    missing = [k for k in chosen if k not in rows]
    if missing:
        raise ValueError(f"layers: {missing!r} did not run in this forward pass")
    return {n: _stack_rows([rows[k][n] for k in chosen]) for n in names}


# -- head importance -------------------------------------------------------------------------------


def _call(model: nn.Module, batch) -> object:
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    raise TypeError(
        f"batches: expected each batch as a dict of model inputs or a tuple of positional "
        f"inputs, got {type(batch).__name__}"
    )


def head_importance(
    model: nn.Module,
    batches: Iterable[Mapping | tuple],
    loss_fn: Callable[[object, object], Tensor] | None = None,
    normalize: bool = True,
    layers: Layers = None,
) -> Tensor:
    """Head importance scores (Michel et al. 2019): (L, H), |d loss / d mask_h| summed over
    the batches.

    A mask of ones multiplies each head's output (the ``z`` point, before the output
    projection); the gradient of the loss with respect to a head's mask entry estimates how
    much the loss changes when the head is removed. Grouped-query models are scored per query
    head. Only the masks get gradients: the parameters' ``.grad`` are left alone. Run the
    model in eval mode for scores without dropout noise.

    Args:
        batches: model inputs, each a dict (``model(**batch)``) or a tuple
            (``model(*batch)``).
        loss_fn: ``loss_fn(output, batch) -> scalar``; default the output's ``.loss`` (so the
            batches must hold labels).
        normalize: divide each layer's scores by their L2 norm, as in the paper.
        layers: which attention layers, the rows in the order given; default every attention
            module: block indices 0..L-1 for a model with one stack of blocks, module names
            (``encoder.blocks.0.attn``, ..., ``decoder.blocks.0.cross``, ...) otherwise, the
            order :func:`attnlab.inspect.resolve_layers` gives. Layers with fewer heads are
            padded with NaN.
    """
    if isinstance(batches, (Mapping, Tensor)):
        raise TypeError(
            f"batches: expected an iterable of batches (dicts or tuples), got one "
            f"{type(batches).__name__}; wrap it in a list"
        )
    chosen = resolve_layers(model, layers)
    masks: list[Tensor] = []
    for _, attn in chosen.values():
        device = attn.out_proj.weight.device
        masks.append(torch.ones(attn.n_heads, device=device, requires_grad=True))
    totals = [torch.zeros(m.numel(), dtype=torch.float64, device=m.device) for m in masks]
    seen = 0
    with ExitStack() as stack, torch.enable_grad():
        for (name, attn), mask in zip(chosen.values(), masks, strict=True):

            def scale(z: Tensor, _name: str, mask=mask) -> Tensor:  # z (B, H, T, Dh)
                return z * mask.to(z.dtype).view(1, -1, 1, 1)

            stack.callback(attn.hook_z.add(scale, f"{name}.z" if name else "z").remove)
        for batch in batches:
            output = _call(model, batch)
            if loss_fn is not None:
                loss = loss_fn(output, batch)
            else:
                loss = getattr(output, "loss", None)
                if loss is None:
                    raise ValueError(
                        "batches: the model returned no loss; include labels in each batch or "
                        "pass loss_fn"
                    )
            if not isinstance(loss, Tensor) or loss.numel() != 1:
                got = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
                raise ValueError(f"loss_fn: expected a scalar tensor, got {got}")
            grads = torch.autograd.grad(loss.reshape(()), masks, allow_unused=True)
            for total, grad in zip(totals, grads, strict=True):
                if grad is not None:  # None: the layer did not run for this batch
                    total += grad.detach().abs().to(torch.float64)
            seen += 1
    if not seen:
        raise ValueError("batches: got no batches")
    if normalize:
        totals = [t / (t.norm() + 1e-20) for t in totals]
    return _stack_rows([t.float() for t in totals])


# -- attribution -----------------------------------------------------------------------------------


def _attention_grads(
    model: nn.Module,
    input_ids: Tensor,
    target: int | Tensor | None,
    position: int,
    chosen: dict,
    kwargs: dict,
) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """Run the model with every chosen pattern replaced by itself (so the output is computed
    from it and gradients reach it); return (logits, patterns, d logit / d pattern)."""
    patterns: dict[int | str, Tensor] = {}
    with ExitStack() as stack, torch.enable_grad():
        for key, (name, attn) in chosen.items():

            def keep(pattern: Tensor, _name: str, key=key) -> Tensor:
                if not pattern.requires_grad:  # frozen weights: still differentiate here
                    pattern = pattern.detach().requires_grad_()
                patterns[key] = pattern
                return pattern

            point = f"{name}.pattern" if name else "pattern"
            stack.callback(attn.hook_pattern.add(keep, point).remove)
        logits = model(input_ids, **kwargs).logits
        if logits.dim() == 3:  # (B, T, V): the prediction at `position`
            t = logits.shape[1]
            if not -t <= position < t:
                raise ValueError(f"position: expected -{t} <= position < {t}, got {position}")
            scores = logits[:, position]  # (B, V)
        elif logits.dim() == 2:  # (B, K): one prediction per sequence
            scores = logits
        else:
            raise ValueError(
                f"model: expected logits (B, T, V) or (B, K), got shape {tuple(logits.shape)}"
            )
        b, v = scores.shape
        if target is None:
            target = scores.argmax(-1)
        elif isinstance(target, Tensor):
            if target.shape not in ((), (b,)) or target.dtype.is_floating_point:
                raise ValueError(
                    f"target: expected an int or integer ids of shape (B,) = ({b},), got "
                    f"{target.dtype} {tuple(target.shape)}"
                )
            target = target.to(scores.device).long().expand(b)
        elif isinstance(target, bool) or not isinstance(target, int):
            raise TypeError(f"target: expected an int, a (B,) tensor or None, got {target!r}")
        else:
            target = torch.full((b,), target, dtype=torch.long, device=scores.device)
        if ((target < 0) | (target >= v)).any():
            raise ValueError(f"target: expected ids in [0, {v}), got {target.tolist()}")
        missing = [k for k in chosen if k not in patterns]
        if missing:
            raise ValueError(f"layers: {missing!r} did not run in this forward pass")
        ordered = [patterns[k] for k in chosen]
        objective = scores.gather(1, target[:, None]).sum()  # sequences are independent
        grads = torch.autograd.grad(objective, ordered, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(ordered, grads, strict=True)]
    return logits.detach(), [p.detach() for p in ordered], [g.detach() for g in grads]


def attribution(
    model: nn.Module,
    input_ids: Tensor,
    target: int | Tensor | None = None,
    position: int = -1,
    layers: Layers = None,
    **kwargs,
) -> Tensor:
    """Attribute one prediction to the input tokens (Chefer et al. 2021): (B, T).

    The prediction is the logit of ``target`` at ``position`` (for sequence classifiers,
    logits (B, K), the class logit). Every chosen layer's pattern A (B, H, T, T) is replaced by
    itself, so the model computes its output from A eagerly and the gradient dA reaches it;
    the layer's relevance is the mean over heads of relu(dA * A) (Chefer et al.'s gradient-
    weighted attention: positive contributions only). Layers combine as in rollout,
    R <- R + relevance @ R from R = I, first layer first, and the result is row ``position``
    of R. The identity keeps the token at ``position`` at least 1; in a causal model the
    tokens after ``position`` get exactly 0.

    Args:
        input_ids: token ids (B, T), passed to the model first.
        target: token (or class) id, an int or a (B,) tensor; default the argmax.
        position: the predicting query position (negative counts from the end).
        layers: self-attention layers combined, in the order given; default every layer of
            a model with one stack of blocks, in forward order (the encoder-decoder must name
            them, e.g. ``["encoder.blocks.0.attn", "encoder.blocks.1.attn"]``); each must be
            (B, H, T, T) over the tokens of ``input_ids``.
        **kwargs: more model inputs.

    Meant for models that predict over the sequence they attend within (GPT, BERT, ViT).
    Runs one forward and one backward pass with gradients on; the model's parameters get no
    ``.grad``. Run the model in eval mode (dropout would act on the replaced patterns).
    """
    if isinstance(position, bool) or not isinstance(position, int):
        raise TypeError(f"position: expected an int, got {position!r}")
    chosen = resolve_layers(model, _one_stack(model, layers))
    _, patterns, grads = _attention_grads(model, input_ids, target, position, chosen, kwargs)
    b, _, t, _ = patterns[0].shape
    if not -t <= position < t:
        raise ValueError(f"position: expected -{t} <= position < {t}, got {position}")
    relevance = torch.eye(t, dtype=torch.float64, device=patterns[0].device).expand(b, t, t)
    for key, a, grad in zip(chosen, patterns, grads, strict=True):
        if a.shape[-1] != a.shape[-2] or a.shape[-1] != t or a.shape[0] != b:
            raise ValueError(
                f"layers: layer {key!r} has weights {tuple(a.shape)}; attribution combines "
                f"self-attention over the same {t} tokens (B, H, T, T)"
            )
        layer = (grad.to(torch.float64) * a.to(torch.float64)).clamp(min=0).mean(1)  # (B, T, T)
        relevance = relevance + layer @ relevance
    return relevance[:, position].to(torch.float32)


__all__: Sequence[str] = (
    "DETECTORS",
    "Detector",
    "attribution",
    "detect_heads",
    "detection_scores",
    "flow",
    "head_importance",
    "rollout",
    "rollout_of",
)
