"""Kinds of position information a model can be built with: one registry entry each.

Every family's config names one in ``position=``; the family builds it here and uses what it
gives, so a new kind is an entry, not a branch in a model:

* ``none``: no position information (a causal decoder still tells positions apart by how many
  tokens it sees; Haviv et al. 2022).
* ``learned``: a trainable table added to the token embeddings (BERT, GPT-2); limited to
  ``max_len`` positions.
* ``sinusoidal``: the fixed sin/cos table of Vaswani et al. 2017 added to the embeddings; no
  length limit.
* ``rope``: rotary embeddings of queries and keys in every self-attention layer (Su et al.
  2021; Llama).
* ``alibi``: a linear distance penalty per head on the attention scores (Press et al. 2022).
* ``t5``: a learned bias per relative-distance bucket and head (Raffel et al. 2020), shared by
  the layers of one stack; bidirectional buckets in encoders, one-sided in decoders.

Absolute kinds give an ``embedding`` module (positions -> (…, C)); relative kinds give the
``attention`` position every self-attention module of the stack takes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from attnlab.attention.bias import RelativePositionBias, alibi
from attnlab.attention.multihead import Position
from attnlab.names import unknown
from attnlab.position import (
    LearnedPositionalEmbedding,
    RopeScaling,
    RotaryEmbedding,
    SinusoidalPositionalEmbedding,
)

# Rows of a sinusoidal table computed up front; it grows on demand, so a context limit of
# billions (from a checkpoint's config) must not allocate.
SINUSOID_ROWS = 4096


@dataclass(frozen=True)
class PositionArgs:
    """What a family knows when it builds its positions."""

    dim: int  # model width C
    head_dim: int  # D
    n_heads: int  # query heads H
    max_len: int  # learned tables' length
    causal: bool  # the stack is a decoder (T5 buckets one-sided)
    rope_base: float = 10000.0  # RoPE base (theta)
    rope_scaling: RopeScaling | None = None  # RoPE beyond the trained context (YaRN, ...)
    embedding_scale: float = (
        1.0  # multiplies a sinusoidal table (see SinusoidalPositionalEmbedding)
    )


@dataclass(frozen=True)
class Positions:
    """A built position kind: at most one of the two is set."""

    embedding: nn.Module | None = None  # absolute: added to the token embeddings
    attention: Position = None  # relative: given to every self-attention module


def _sinusoidal(a: PositionArgs) -> Positions:
    table = SinusoidalPositionalEmbedding(
        a.dim, max_len=min(a.max_len, SINUSOID_ROWS), scale=a.embedding_scale
    )
    return Positions(embedding=table)


POSITIONS: dict[str, Callable[[PositionArgs], Positions]] = {
    "none": lambda a: Positions(),
    "learned": lambda a: Positions(embedding=LearnedPositionalEmbedding(a.max_len, a.dim)),
    "sinusoidal": _sinusoidal,
    "rope": lambda a: Positions(
        attention=RotaryEmbedding(a.head_dim, base=a.rope_base, scaling=a.rope_scaling)
    ),
    "alibi": lambda a: Positions(attention=alibi(a.n_heads)),
    "t5": lambda a: Positions(
        attention=RelativePositionBias(a.n_heads, bidirectional=not a.causal)
    ),
}

# Kinds that act on attention scores (a bias), which kernel attention does not have.
SCORE_BIASES = frozenset({"alibi", "t5"})


def register_position(name: str, build: Callable[[PositionArgs], Positions]) -> None:
    """Add (or replace) a position kind."""
    POSITIONS[name] = build


def check_position(name: object, field: str = "position") -> str:
    """``name`` when it is a registered kind; ValueError naming ``field`` otherwise."""
    if not isinstance(name, str) or name not in POSITIONS:
        raise unknown(field, "position", name, POSITIONS)
    return name


def check_config(config, kind) -> None:
    """A config's ``position`` is registered and can act on attention ``kind``
    (:class:`attnlab.attention.kinds.Kind`): score biases need scores."""
    check_position(config.position)
    if config.position in SCORE_BIASES and not kind.scores:
        usable = ", ".join(p for p in POSITIONS if p not in SCORE_BIASES)
        raise ValueError(
            f"position: {config.position!r} adds a bias to attention scores, which "
            f"attention={kind.name!r} does not have; expected one of {usable}"
        )


def make_positions(name: str, args: PositionArgs) -> Positions:
    """Build position kind ``name`` for a stack described by ``args``."""
    return POSITIONS[check_position(name)](args)
