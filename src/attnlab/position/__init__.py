"""Position information for attention.

Absolute embeddings, added to the token embeddings before the first layer:

- :func:`sinusoidal_table` / :class:`SinusoidalPositionalEmbedding`: the fixed sin/cos table of
  Vaswani et al. 2017; no length limit.
- :class:`LearnedPositionalEmbedding`: a trainable table (BERT, GPT-2); limited to ``max_len``.

Relative, applied to queries and keys inside every attention layer:

- :class:`RotaryEmbedding` (RoPE, Su et al. 2021) in the rotate-half layout of GPT-NeoX and Llama,
  with partial rotary and, for longer contexts, :class:`LinearScaling`, :class:`NTKScaling`,
  :class:`DynamicNTKScaling`, :class:`YarnScaling` and :class:`Llama3Scaling`;
  :func:`apply_rotary` is the underlying pure function; :func:`scaling_from_dict` /
  :func:`scaling_to_dict` give a scaling as a config's plain dict (``{"kind": "yarn", ...}``).
"""

from attnlab.position.learned import LearnedPositionalEmbedding
from attnlab.position.rope import (
    DynamicNTKScaling,
    LinearScaling,
    Llama3Scaling,
    NTKScaling,
    RopeScaling,
    RotaryEmbedding,
    YarnScaling,
    apply_rotary,
    scaling_from_dict,
    scaling_to_dict,
)
from attnlab.position.sinusoidal import SinusoidalPositionalEmbedding, sinusoidal_table

__all__ = [
    "DynamicNTKScaling",
    "LearnedPositionalEmbedding",
    "LinearScaling",
    "Llama3Scaling",
    "NTKScaling",
    "RopeScaling",
    "RotaryEmbedding",
    "SinusoidalPositionalEmbedding",
    "YarnScaling",
    "apply_rotary",
    "scaling_from_dict",
    "scaling_to_dict",
    "sinusoidal_table",
]
