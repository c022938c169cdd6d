"""Attention layers with their own number of heads: the config field ``layer_heads`` of pruned
models, and the one function that changes the heads of an attention module.

Pruning heads (:func:`attnlab.inspect.prune_heads`) leaves some layers with fewer heads than the
config's ``n_head``. Every model config has a field ``layer_heads`` recording those layers by
attention module name (the names :mod:`attnlab.inspect` uses)::

    {"blocks.3.attn": {"heads": [0, 2, 5], "kv_heads": 3}}

``heads`` are the layer's remaining query heads, by their index in the unpruned layer (in order),
and ``kv_heads`` its number of key/value heads. Every model calls :func:`apply_layer_heads` at the
end of ``__init__``, so a model built from a pruned config has the pruned shapes and a saved
pruned model loads back. The head indices matter where a head's identity is not in the weights:
ALiBi's slopes are a function of the head's original index.

Shapes: H query heads, Hkv key/value heads, Dh head dim, C model width.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from attnlab.attention.bias import ALiBi, Bias, RelativePositionBias
from attnlab.attention.multihead import MultiHeadAttention
from attnlab.attention.scores import AdditiveScore, CosineScore, EuclideanScore, GeneralScore
from attnlab.models.presets import closest

# Scores without per-head parameters: their parameters (if any) act on every head alike.
SHARED_SCORES = (AdditiveScore, CosineScore, EuclideanScore)


class AttentionNames:
    """The attention module names of a model, ``(prefix, blocks, modules)`` per stack of blocks:
    ``("", 12, ["attn"])`` names ``blocks.0.attn`` ... ``blocks.11.attn``. Membership is
    parsed, not looked up, so a config that claims billions of layers costs nothing to check."""

    def __init__(self, *stacks: tuple[str, int, Sequence[str]]) -> None:
        self.stacks = stacks

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        for prefix, n, modules in self.stacks:
            head = f"{prefix}blocks."
            if name.startswith(head):
                index, _, module = name[len(head) :].partition(".")
                number = index.isdigit() and str(int(index)) == index
                if number and int(index) < n and module in modules:
                    return True
        return False

    def first(self, limit: int = 1000) -> list[str]:
        """The first ``limit`` names, in order."""
        out: list[str] = []
        for prefix, n, modules in self.stacks:
            for i in range(min(n, limit)):
                out += [f"{prefix}blocks.{i}.{module}" for module in modules]
        return out[:limit]

    def describe(self) -> str:
        return ", ".join(
            f"{prefix}blocks.{{0..{n - 1}}}.{{{','.join(modules)}}}"
            for prefix, n, modules in self.stacks
        )


def attention_names(*stacks: tuple[str, int, Sequence[str]]) -> AttentionNames:
    """See :class:`AttentionNames`."""
    return AttentionNames(*stacks)


def check_layer_heads(config, names: AttentionNames) -> None:
    """Check ``config.layer_heads`` against the config's ``n_head`` and the model's attention
    module ``names``, and store it in plain lists and ints (as JSON gives it back); ValueError
    naming the module and what is wrong otherwise."""
    value = config.layer_heads
    if value is None:
        return
    form = "a dict attention module name -> {'heads': [...], 'kv_heads': n}"
    if not isinstance(value, dict):
        raise ValueError(f"layer_heads: expected {form} or None, got {value!r:.80}")
    n = config.n_head
    checked = {}
    for name, entry in value.items():
        if name not in names:
            raise ValueError(
                f"layer_heads: unknown attention module {name!r}"
                f"{closest(str(name), names.first())}; expected one of {names.describe()}"
            )
        where = f"layer_heads[{name!r}]"
        if not isinstance(entry, dict) or set(entry) != {"heads", "kv_heads"}:
            raise ValueError(f"{where}: expected {{'heads': [...], 'kv_heads': n}}, got {entry!r}")
        heads, kv = entry["heads"], entry["kv_heads"]
        if (
            not isinstance(heads, (list, tuple))
            or not heads
            or not all(isinstance(h, int) and not isinstance(h, bool) for h in heads)
        ):
            raise ValueError(
                f"{where}.heads: expected a non-empty list of head indices, got {heads!r}"
            )
        if not all(0 <= h < n for h in heads) or list(heads) != sorted(set(heads)):
            raise ValueError(
                f"{where}.heads: expected distinct head indices in [0, n_head={n}) in increasing "
                f"order, got {list(heads)}"
            )
        if isinstance(kv, bool) or not isinstance(kv, int) or kv < 1 or len(heads) % kv:
            raise ValueError(
                f"{where}.kv_heads: expected a divisor of its {len(heads)} heads, got {kv!r}"
            )
        checked[name] = {"heads": list(heads), "kv_heads": kv}
    config.layer_heads = checked


def canonical(path: str) -> str:
    """A module path with ``blocks`` before every block index (``encoder.0.attn`` ->
    ``encoder.blocks.0.attn``): the names :mod:`attnlab.inspect` gives attention modules."""
    parts = path.split(".") if path else []
    out: list[str] = []
    for i, part in enumerate(parts):
        if part.isdigit() and (i == 0 or parts[i - 1] != "blocks"):
            out.append("blocks")
        out.append(part)
    return ".".join(out)


def attention_modules(model: nn.Module) -> dict[str, MultiHeadAttention]:
    """Every attention module of ``model`` by name (``blocks.0.attn``,
    ``decoder.blocks.1.cross``, ...), in module order."""
    return {
        canonical(path): m for path, m in model.named_modules() if isinstance(m, MultiHeadAttention)
    }


def apply_layer_heads(model: nn.Module) -> None:
    """Give the attention modules named in ``model.config.layer_heads`` their recorded heads.

    Called at the end of every model's ``__init__``: the projections keep the rows of the
    recorded heads of their fresh initialisation (so the family's initialisation still holds);
    a checkpoint's weights replace them when one is loaded."""
    layer_heads = getattr(model.config, "layer_heads", None)
    if not layer_heads:
        return
    modules = attention_modules(model)
    for name, entry in layer_heads.items():
        attn = modules.get(name)
        if attn is None:
            raise ValueError(f"layer_heads: the model has no attention module {name!r}")
        heads = torch.tensor(entry["heads"], dtype=torch.long)
        # Which key/value head each new one copies does not matter here (only the shapes do:
        # the weights come from the checkpoint); cycling keeps initialised rows.
        kv = torch.arange(entry["kv_heads"]) % attn.n_kv_heads
        resize_heads(attn, heads, kv)


def check_resizable(attn: MultiHeadAttention, where: str) -> None:
    """ValueError when ``attn`` holds per-head state :func:`resize_heads` cannot slice."""
    score = attn.score
    known = isinstance(score, (GeneralScore, *SHARED_SCORES))
    if not known and any(True for _ in score.parameters()):
        raise ValueError(
            f"{where}: the score module {type(score).__name__} has parameters whose layout per "
            "head is unknown, so its heads cannot be pruned"
        )
    position = attn.position
    if (
        isinstance(position, Bias)
        and not isinstance(position, ALiBi)
        and position.heads() is not None
    ):
        raise ValueError(
            f"{where}: the position bias {type(position).__name__} holds values per head that "
            "cannot be sliced, so its heads cannot be pruned"
        )


def resize_heads(attn: MultiHeadAttention, heads: Tensor, kv: Tensor) -> None:
    """Keep query heads ``heads`` (indices, in their new order) and key/value heads ``kv`` (the
    current key/value head each new one copies; repeats allowed) of ``attn``, in place.

    Query head ``p`` of the result attends with key/value head ``p // (len(heads) // len(kv))``,
    so the caller chooses ``kv`` to give every kept query head the keys and values it had. Sliced
    along heads: the rows of q/k/v projections (and biases), the columns of the output projection,
    the per-key/value-head matrices of a ``general`` score, ALiBi's slopes and a T5 relative
    position bias's columns; per-channel state (q/k norms, RoPE) is shared by all heads and kept.
    Parameters are replaced by new ones (an optimiser built before holds the old ones)."""
    n_q, n_kv = len(heads), len(kv)
    if n_q < 1 or n_kv < 1 or n_q % n_kv:
        raise ValueError(
            f"heads, kv: expected at least one query head and a number of key/value heads that "
            f"divides it, got {n_q} and {n_kv}"
        )
    check_resizable(attn, "attention module")
    d = attn.head_dim
    with torch.no_grad():
        _slice_rows(attn.q_proj, heads, d)
        _slice_rows(attn.k_proj, kv, d)
        _slice_rows(attn.v_proj, kv, d)
        out = attn.out_proj
        w = out.weight.view(out.out_features, attn.n_heads, d)  # (C, H, Dh)
        out.weight = _like(out.weight, w[:, heads.to(w.device)].reshape(out.out_features, n_q * d))
        out.in_features = n_q * d
        if isinstance(attn.score, GeneralScore):
            weight = attn.score.weight  # (Hkv, Dh, Dh)
            attn.score.weight = _like(weight, weight[kv.to(weight.device)])
        position = attn.position
        if isinstance(position, ALiBi):
            # The dataclass may be shared by every layer: this layer gets its own.
            attn.position = ALiBi(position.slopes[heads.to(position.slopes.device)])
        elif isinstance(position, RelativePositionBias):
            # A new module, so that a bias shared with other layers stays as it is for them.
            fresh = RelativePositionBias(
                n_q,
                num_buckets=position.num_buckets,
                max_distance=position.max_distance,
                bidirectional=position.bidirectional,
            )
            weight = position.weight  # (buckets, H)
            fresh.weight = _like(weight, weight[:, heads.to(weight.device)])
            attn.position = fresh
    attn.n_heads, attn.n_kv_heads = n_q, n_kv


def _like(old: nn.Parameter, data: Tensor) -> nn.Parameter:
    return nn.Parameter(data.clone(), requires_grad=old.requires_grad)


def _slice_rows(linear: nn.Linear, index: Tensor, head_dim: int) -> None:
    """Keep the output rows of heads ``index`` (repeats copy a head) of a projection."""
    w = linear.weight.view(-1, head_dim, linear.in_features)  # (n, Dh, in)
    index = index.to(w.device)
    linear.weight = _like(linear.weight, w[index].reshape(-1, linear.in_features))
    if linear.bias is not None:
        linear.bias = _like(linear.bias, linear.bias.view(-1, head_dim)[index].reshape(-1))
    linear.out_features = len(index) * head_dim
