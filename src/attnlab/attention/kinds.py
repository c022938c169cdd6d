"""Kinds of attention a model can be built with: one registry entry each.

Every model family takes ``attention=`` (and the options a kind reads) in its config, and every
attention module builds its kind from here, so a new kind is a class plus an entry, never a
branch in a model:

* ``softmax``: softmax(score(q, k) + bias) v on the backends of :func:`attnlab.attention.attend`
  (every score function, ALiBi and T5 biases, every mask).
* ``local``: softmax attention within ``window`` positions (causal models: the ``window`` most
  recent keys; encoders: less than ``window`` away on either side). Exact for the windowed
  model; O(T · window) with a tile-skipping backend (Beltagy et al. 2020; Mistral 7B).
* ``linear``: phi(q)·phi(k) with phi = elu + 1 (Katharopoulos et al. 2020); O(T); decoding
  keeps a running state of O(1) size per token instead of keys and values.
* ``performer``: FAVOR+ random features estimating softmax attention (Choromanski et al. 2021);
  ``n_features`` random features (default D · ln D, rounded); O(T); a running state too.
* ``linformer``: softmax attention over ``rank`` learned projections of the keys and values
  along the sequence (Wang et al. 2020); non-causal, so encoders only; sequences up to the
  model's ``max_len``.

A kind declares what it honours as data (:class:`Kind`), and refuses the rest with a reason,
as backends do: the kernel kinds run a running sum over keys, so they honour a causal mask and
masks of which keys exist (padding), not sliding windows or document masks, and have no scores
for score functions or biases (ALiBi, T5) to act on.

Shapes: B batch, H query heads, Hkv key/value heads, Tq queries, Tk keys, D head dim.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

from attnlab.attention import masks
from attnlab.attention.linear import KernelAttention, LinearAttention, PerformerAttention
from attnlab.attention.lowrank import CAUSAL_REASON, LinformerAttention
from attnlab.attention.masks import Mask
from attnlab.names import unknown


@dataclass(frozen=True)
class KindArgs:
    """What an attention module knows when it builds its kind."""

    head_dim: int
    n_heads: int
    n_kv_heads: int
    max_len: int | None = None  # the longest sequence (Linformer's projections cover it)
    window: int | None = None  # local: the window
    n_features: int | None = None  # performer: random features
    rank: int | None = None  # linformer: projected rows
    causal: bool = True  # self-attention of a decoder (local: a causal window)


@dataclass(frozen=True)
class Kind:
    """An attention kind: how to build it and what it honours."""

    name: str
    build: Callable[[KindArgs], nn.Module | None]  # None: softmax attention through attend()
    description: str
    causal: bool = True  # can run causally (decoders)
    scores: bool = True  # has scores: score functions and score biases (ALiBi, T5) apply
    recurrent: bool = False  # decodes from a running state instead of cached keys and values
    options: tuple[str, ...] = ()  # config fields it reads
    required: tuple[str, ...] = ()  # of those, the ones without a default

    def mask_reasons(self, mask: Mask | None) -> list[str]:
        """Why this kind cannot honour ``mask``; empty when it can."""
        if self.scores or mask is None:
            return []
        reasons = masks.causal_and_keys_reasons(mask)
        if not self.causal and masks.includes_causal(mask):
            reasons.append(CAUSAL_REASON)
        return reasons


def default_features(head_dim: int) -> int:
    """Performer's random features by default: D · ln D (Choromanski et al. 2021, §4), at
    least D."""
    return max(head_dim, round(head_dim * math.log(max(head_dim, 2))))


def _softmax(a: KindArgs) -> None:
    return None  # softmax and local attention run through attend() in the attention module


def _linear(a: KindArgs) -> nn.Module:
    return LinearAttention()


def _performer(a: KindArgs) -> nn.Module:
    return PerformerAttention(a.head_dim, a.n_features or default_features(a.head_dim))


def _linformer(a: KindArgs) -> nn.Module:
    if a.max_len is None:
        raise ValueError("max_len: attention='linformer' projects up to max_len keys; got None")
    return LinformerAttention(a.max_len, a.rank or 64)


KINDS: dict[str, Kind] = {}


def register_kind(kind: Kind) -> None:
    """Add (or replace) an attention kind."""
    KINDS[kind.name] = kind


for _kind in (
    Kind("softmax", _softmax, "softmax attention on the fastest backend"),
    Kind(
        "local",
        _softmax,
        "softmax attention within a window of positions",
        options=("window",),
        required=("window",),
    ),
    Kind(
        "linear",
        _linear,
        "elu+1 kernel attention, O(T), a running state for decoding",
        scores=False,
        recurrent=True,
    ),
    Kind(
        "performer",
        _performer,
        "FAVOR+ random features estimating softmax, O(T), a running state for decoding",
        scores=False,
        recurrent=True,
        options=("n_features",),
    ),
    Kind(
        "linformer",
        _linformer,
        "softmax over low-rank projections of keys and values, O(T), non-causal",
        causal=False,
        scores=False,
        options=("rank",),
    ),
):
    register_kind(_kind)

OPTIONS = ("window", "n_features", "rank")


def get_kind(name: str, field: str = "attention") -> Kind:
    """The kind called ``name``; ValueError naming ``field`` with the closest name otherwise."""
    if not isinstance(name, str) or name not in KINDS:
        raise unknown(field, "attention kind", name, KINDS)
    return KINDS[name]


def check_config(config, *, causal: bool, family: str) -> Kind:
    """Check a model config's ``attention`` and the options it reads (``window``,
    ``n_features``, ``rank``), and its ``score`` when it has one; ``causal``: the family's
    self-attention is causal (decoders). Returns the kind."""
    kind = get_kind(config.attention)
    for option in OPTIONS:
        value = getattr(config, option, None)
        if value is None:
            if option in kind.required:
                raise ValueError(
                    f"{option}: attention={kind.name!r} needs it; expected a positive int, got None"
                )
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{option}: expected a positive int or None, got {value!r}")
        if option not in kind.options:
            readers = [k.name for k in KINDS.values() if option in k.options]
            raise ValueError(
                f"{option}: only attention={' or '.join(map(repr, readers))} reads it; "
                f"this config has attention={kind.name!r}"
            )
    if causal and not kind.causal:
        raise ValueError(f"attention: {kind.name!r} cannot run in {family}: {CAUSAL_REASON}")
    if not kind.scores:
        score = getattr(config, "score", "dot")
        if score != "dot":
            raise ValueError(
                f"score: {score!r} scores queries against keys; attention={kind.name!r} has no "
                "scores (its kernel replaces them); expected 'dot'"
            )
    return kind


def build(name: str, args: KindArgs) -> nn.Module | None:
    """The module that runs attention of kind ``name`` (None for the softmax kinds)."""
    return get_kind(name).build(args)


def is_kernel(module: nn.Module | None) -> bool:
    """True for a feature-map kind (linear, performer): it can continue a running state."""
    return isinstance(module, KernelAttention)


def explain(mask: Mask | Tensor | None) -> dict[str, list[str]]:
    """Each kind's reasons to refuse ``mask`` (empty: it can honour it)."""
    if isinstance(mask, Tensor):
        mask = masks.from_tensor(mask)
    return {name: kind.mask_reasons(mask) for name, kind in KINDS.items()}
