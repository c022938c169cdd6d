"""Structural head pruning: remove attention heads from a model, score heads to choose which,
and measure what pruning more and more of them costs.

* :func:`prune_heads` removes heads for good: the rows of the query projection, the columns of
  the output projection, the key/value heads no query head uses any more, the per-head
  parameters of the score and the position bias. The pruned model computes exactly what the
  unpruned one computes with those heads zero-ablated (:func:`attnlab.inspect.ablate_heads`,
  ``mode="zero"``), and it saves and loads like any model: ``config.layer_heads`` records the
  layers it changed (see :mod:`attnlab.models.heads`).
* :func:`score_heads` ranks heads: by importance (Michel et al. 2019, "Are Sixteen Heads
  Really Better than One?": |d loss / d head mask| over batches), by attention entropy, or at
  random (a baseline).
* :func:`select_heads` picks the lowest-scored fraction of all heads, ranked across layers;
  :func:`pruning_curve` evaluates the model pruned at several fractions, :func:`plot_curve`
  draws it.

Grouped-query attention. A key/value head is removed only when every query head of its group
is. Query heads pruned from a group that keeps others leave groups of different sizes, which
the kernels cannot express (every key/value head serves the same number of query heads); the
remaining key/value heads are then replicated so that every group has the size
G' = gcd(remaining group sizes): a key/value head with n remaining query heads becomes n / G'
copies. Every query head keeps exactly the keys and values it had, so the function is
unchanged, but such a layer can hold more key/value heads (and a larger KV cache) than before;
pruning whole groups avoids it.

A layer keeps at least one head: pruning all of a layer's heads is refused (its attention would
then add only the output projection's bias, which is what ``ablate_heads`` with every head
gives, without a structure to hold it).
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from attnlab.inspect.hooks import attention_modules, check_heads, resolve_layers
from attnlab.models.heads import check_resizable, resize_heads

Heads = Mapping[int | str, int | Sequence[int]]
METHODS = ("importance", "entropy", "random")
METRIC_NAMES = {"accuracy": "accuracy", "val_ppl": "perplexity", "bleu": "BLEU", "val_loss": "loss"}


# -- pruning -----------------------------------------------------------------------------------


def prune_heads(model: nn.Module, heads: Heads) -> nn.Module:
    """Remove attention heads from ``model`` in place and return it.

    Args:
        heads: layer -> head indices to remove. A layer is a block index (models with one stack
            of ``blocks``) or an attention module name such as ``"decoder.blocks.0.cross"``
            (see :func:`attnlab.inspect.resolve_layers`); indices count the layer's current
            heads.

    Every request is checked before anything changes: an unknown layer, an index out of range,
    a head listed twice, two keys naming one module, or removing every head of a layer is a
    ValueError naming the layer. ``model.config.layer_heads`` (where the model has one)
    records each changed layer's remaining heads, by their indices in the unpruned model, and
    its key/value heads, so the model saves and loads with its new shapes. Parameters of the
    changed layers are new tensors: build optimisers after pruning.
    """
    if not isinstance(heads, Mapping):
        raise TypeError(f"heads: expected a dict layer -> head indices, got {type(heads).__name__}")
    chosen = resolve_layers(model, list(heads))
    plans = []
    named: dict[str, int | str] = {}
    for key, (name, attn) in chosen.items():
        if name in named:
            raise ValueError(
                f"heads: layers {named[name]!r} and {key!r} name the same attention module {name!r}"
            )
        named[name] = key
        drop = check_heads(heads[key], attn.n_heads, f"layer {key!r}").tolist()
        twice = sorted(h for h, n in Counter(drop).items() if n > 1)
        if twice:
            raise ValueError(f"heads: head {twice[0]} is listed twice for layer {key!r}")
        keep = sorted(set(range(attn.n_heads)) - set(drop))
        if not keep:
            raise ValueError(
                f"heads: removing all {attn.n_heads} heads of layer {key!r} would leave it no "
                "attention; keep at least one head"
            )
        if drop:
            check_resizable(attn, f"layer {key!r}")
            plans.append((name, attn, keep))
    for name, attn, keep in plans:
        kv = _kv_heads(attn, keep)
        _record(model, name, attn, keep, len(kv))
        resize_heads(attn, torch.tensor(keep), torch.tensor(kv))
    return model


def _kv_heads(attn: nn.Module, keep: list[int]) -> list[int]:
    """The key/value head each new key/value head copies, so that the kept query heads (in
    order, groups of equal size G') see the keys and values they saw before."""
    group = attn.n_heads // attn.n_kv_heads
    remaining = Counter(h // group for h in keep)  # key/value head -> its remaining query heads
    size = math.gcd(*remaining.values())
    return [j for j, n in sorted(remaining.items()) for _ in range(n // size)]


def _record(model: nn.Module, name: str, attn: nn.Module, keep: list[int], kv: int) -> None:
    """Note the layer's new heads in ``model.config.layer_heads`` (models with that field)."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "layer_heads"):
        return
    recorded = dict(config.layer_heads or {})
    before = recorded.get(name, {}).get("heads", list(range(attn.n_heads)))
    recorded[name] = {"heads": [before[h] for h in keep], "kv_heads": kv}
    order = list(attention_modules(model))
    config.layer_heads = {n: recorded[n] for n in sorted(recorded, key=order.index)}


# -- scoring -----------------------------------------------------------------------------------

Loss = Callable[[nn.Module, object], Tensor]


class _TaskLoss(nn.Module):
    """``loss(model, batch)`` as a module, so that the analysis functions, which call a model
    on each batch, score heads on any loss. Its attention modules are ``model.<name>``."""

    def __init__(self, model: nn.Module, loss: Loss) -> None:
        super().__init__()
        self.model, self.loss = model, loss

    def forward(self, batch, attention_mask: Tensor | None = None) -> Tensor:
        # attention_mask is not used here: head_stats reads it from the call to leave padding
        # queries out of its statistics.
        return self.loss(self.model, batch)


def _default_loss(model: nn.Module, batch) -> Tensor:
    return model(**batch).loss


def score_heads(
    model: nn.Module,
    by: str,
    batches: Iterable,
    *,
    loss: Loss | None = None,
    seed: int = 0,
) -> dict[str, Tensor]:
    """Score every attention head: attention module name -> (H,) float32, higher = more worth
    keeping (:func:`select_heads` prunes the lowest first).

    Args:
        by: "importance": Michel et al. (2019), |d loss / d mask_h| summed over ``batches``,
            normalised per layer (:func:`attnlab.inspect.analysis.head_importance`);
            "entropy": minus the mean entropy of each head's attention over ``batches``, so the
            most spread-out heads go first (a score that needs no gradients or labels);
            "random": uniform random scores from ``seed``, the baseline a ranking must beat.
        batches: what ``loss`` takes; the ranking is computed from them once (one-shot).
        loss: ``loss(model, batch) -> scalar tensor``; default ``model(**batch).loss``. For
            "entropy" it only runs the model.
    """
    if by not in METHODS:
        raise ValueError(f"by: expected one of {', '.join(METHODS)}, got {by!r}")
    modules = attention_modules(model)
    if not modules:
        raise ValueError(f"model: {type(model).__name__} has no attention heads to score")
    if by == "random":
        g = torch.Generator().manual_seed(seed)
        return {name: torch.rand(m.n_heads, generator=g) for name, m in modules.items()}
    if isinstance(batches, (Mapping, Tensor)):
        raise TypeError(
            f"batches: expected an iterable of batches, got one {type(batches).__name__}; "
            "wrap it in a list"
        )
    batches = list(batches)
    if not batches:
        raise ValueError("batches: expected at least one batch to score heads on, got none")
    wrapper = _TaskLoss(model, loss or _default_loss)
    layers = [f"model.{name}" for name in modules]
    was_training = model.training
    model.eval()  # no dropout noise in the scores
    try:
        if by == "importance":
            from attnlab.inspect.analysis import head_importance

            table = head_importance(
                wrapper, [(b,) for b in batches], lambda out, _: out, layers=layers
            )  # (L, max H), NaN-padded
            return {
                name: table[i, : m.n_heads].float() for i, (name, m) in enumerate(modules.items())
            }
        return _entropy(wrapper, batches, layers, modules)
    finally:
        model.train(was_training)


def _entropy(wrapper, batches, layers, modules) -> dict[str, Tensor]:
    """Minus each head's mean attention entropy over every counted query row of ``batches``."""
    from attnlab.inspect.capture import head_stats

    sums = {name: torch.zeros(m.n_heads, dtype=torch.float64) for name, m in modules.items()}
    rows = dict.fromkeys(modules, 0.0)
    for batch in batches:
        mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
        stats = head_stats(wrapper, batch, layers=layers, attention_mask=mask)
        for layer, name in zip(layers, modules, strict=True):
            s = stats[layer]
            weight = s.rows.to(torch.float64).cpu()  # (B,) query rows each mean is over
            sums[name] += (s.entropy.to(torch.float64).cpu() * weight[:, None]).sum(0)
            rows[name] += float(weight.sum())
    return {name: (-sums[name] / max(rows[name], 1.0)).float() for name in modules}


def select_heads(scores: Mapping[str, Tensor], fraction: float) -> dict[str, list[int]]:
    """The ``round(fraction * all heads)`` lowest-scored heads across layers: module name ->
    head indices, every layer keeping at least its best head. Ties go to the earlier layer and
    head. ValueError when the fraction is outside [0, 1) or would leave a layer empty."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        raise TypeError(f"fraction: expected a number in [0, 1), got {fraction!r}")
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction: expected a number in [0, 1), got {fraction}")
    total = sum(len(s) for s in scores.values())
    count = round(fraction * total)
    most = total - len(scores)
    if count > most:
        raise ValueError(
            f"fraction: {fraction} of {total} heads is {count}, but each of the {len(scores)} "
            f"attention layers keeps at least one head, so at most {most} "
            f"({most / total:.3f}) can be pruned"
        )
    order = sorted(
        (float(s), i, h)
        for i, layer in enumerate(scores.values())
        for h, s in enumerate(layer.tolist())
    )
    left = [len(s) for s in scores.values()]
    names = list(scores)
    chosen: dict[str, list[int]] = {}
    for _, i, h in order:
        if sum(len(v) for v in chosen.values()) == count:
            break
        if left[i] > 1:
            left[i] -= 1
            chosen.setdefault(names[i], []).append(h)
    return {name: sorted(chosen[name]) for name in names if name in chosen}


def curve_fractions(fraction: float, step: float = 0.1) -> list[float]:
    """0, step, 2 step, ... below ``fraction``, then ``fraction``: the points of a curve."""
    if not 0 < step <= 1:
        raise ValueError(f"step: expected a number in (0, 1], got {step}")
    points = [round(i * step, 10) for i in range(math.ceil(fraction / step - 1e-9))]
    return [*points, fraction] if fraction > 0 else [0.0]


def count_heads(model: nn.Module) -> int:
    """Query heads over every attention module of ``model``."""
    return sum(m.n_heads for m in attention_modules(model).values())


def pruning_curve(
    model: nn.Module,
    scores: Mapping[str, Tensor],
    fractions: Sequence[float],
    evaluate: Callable[[nn.Module], Mapping[str, float]],
) -> list[dict]:
    """Evaluate copies of ``model`` pruned at each fraction (by :func:`select_heads` on
    ``scores``; ``model`` is left as it is): one row per distinct number of heads pruned,
    ``{"fraction", "heads_pruned", "heads", "params", **evaluate(pruned)}``, where ``fraction``
    is the fraction of heads actually pruned."""
    total = count_heads(model)
    rows, done = [], set()
    for fraction in fractions:
        chosen = select_heads(scores, fraction)
        pruned_count = sum(len(v) for v in chosen.values())
        if pruned_count in done:
            continue  # a fraction that rounds to a count already measured
        done.add(pruned_count)
        pruned = prune_heads(copy.deepcopy(model), chosen)
        rows.append(
            {
                "fraction": pruned_count / total,
                "heads_pruned": pruned_count,
                "heads": total - pruned_count,
                "params": sum(p.numel() for p in pruned.parameters()),
                **evaluate(pruned),
            }
        )
    return rows


def curve_metric(row: Mapping[str, float]) -> str:
    """The metric a curve shows: accuracy where measured, else perplexity, else BLEU, else the
    validation loss."""
    for name in ("accuracy", "val_ppl", "bleu", "val_loss"):
        if name in row:
            return name
    raise ValueError(f"row: expected accuracy, val_ppl, bleu or val_loss, got {sorted(row)}")


def plot_curve(
    curves: Mapping[str, Sequence[Mapping[str, float]]], metric: str, path: str | Path, title: str
) -> Path:
    """Draw ``metric`` against the fraction of heads pruned, one line per curve (label ->
    rows of :func:`pruning_curve`), into the PNG file ``path`` (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from attnlab.files import atomic_write

    path = Path(path)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    try:
        for label, rows in curves.items():
            xs = [r["fraction"] for r in rows]
            ax.plot(xs, [r[metric] for r in rows], "o-", label=label, linewidth=1.5)
        ax.set_xlabel("fraction of attention heads pruned")
        ax.set_ylabel(METRIC_NAMES.get(metric, metric))
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if len(curves) > 1:
            ax.legend()
        fig.tight_layout()
        atomic_write(path, lambda f: fig.savefig(f, format="png"), binary=True)
    finally:
        plt.close(fig)
    return path


__all__: Sequence[str] = (
    "METHODS",
    "count_heads",
    "curve_fractions",
    "curve_metric",
    "plot_curve",
    "prune_heads",
    "pruning_curve",
    "score_heads",
    "select_heads",
)
