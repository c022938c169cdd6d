"""The attention and position choices every model family's config shares.

Each family's config has the same fields, checked and used the same way:

    attention: str = "softmax"  # kind: softmax, local, linear, performer, linformer
    window: int | None = None  # local attention: positions each query sees
    n_features: int | None = None  # performer: random features (None: D · ln D)
    rank: int | None = None  # linformer: projected key/value rows (None: 64)
    score: str = "dot"  # softmax scoring: dot, general, cosine, euclidean, additive
    position: str = ...  # none, learned, sinusoidal, rope, alibi, t5

(see :mod:`attnlab.attention.kinds`, :mod:`attnlab.attention.scores`,
:mod:`attnlab.models.positions`).
"""

from __future__ import annotations

from attnlab.attention import kinds
from attnlab.attention.multihead import MultiHeadAttention, Position
from attnlab.attention.scores import SCORES
from attnlab.models import positions
from attnlab.names import unknown


def check_variants(config, *, causal: bool, family: str) -> None:
    """Check a config's attention kind, its options, score and position together; errors
    name the field (``causal``: the family's self-attention is causal)."""
    if config.score not in SCORES:
        raise unknown("score", "score", config.score, SCORES)
    kind = kinds.check_config(config, causal=causal, family=family)
    positions.check_config(config, kind)
    if not kind.scores:
        for field in ("softcap", "sinks"):
            if getattr(config, field, None):
                raise ValueError(
                    f"{field}: acts on softmax scores, which attention={kind.name!r} does not have"
                )


def self_attention(
    config, position: Position, *, causal: bool, layer_window: int | None = None, **kwargs
) -> MultiHeadAttention:
    """A self-attention module with a config's choices (width, heads, dropout, backend, kind,
    its options and score) and the stack's ``position``; ``layer_window`` makes this layer
    local attention within that window whatever the config's kind (per-layer windows);
    ``kwargs`` add the family's own (``n_kv_heads``, ``bias``, ``qk_norm``)."""
    attention = config.attention if layer_window is None else "local"
    options = {
        "window": config.window if layer_window is None else layer_window,
        "n_features": config.n_features,
        "rank": config.rank,
        "max_len": config.max_len,
        "causal": causal,
    }
    return MultiHeadAttention(
        config.dim,
        config.n_head,
        dropout=config.dropout,
        backend=config.backend,
        position=position,
        attention=attention,
        options=options,
        score=config.score,
        **kwargs,
    )
