"""Position information for attention.

Absolute embeddings, added to the token embeddings before the first layer:

- :func:`sinusoidal_table` / :class:`SinusoidalPositionalEmbedding`: the fixed sin/cos table of
  Vaswani et al. 2017; no length limit.
- :class:`LearnedPositionalEmbedding`: a trainable table (BERT, GPT-2); limited to ``max_len``.

Relative, applied to queries and keys inside every attention layer:

- :class:`RotaryEmbedding` (RoPE, Su et al. 2021) in the rotate-half layout of GPT-NeoX and Llama,
  with partial rotary and :class:`LinearScaling` / :class:`NTKScaling` for longer contexts;
  :func:`apply_rotary` is the underlying pure function.
"""

from attnlab.position.learned import LearnedPositionalEmbedding
from attnlab.position.rope import LinearScaling, NTKScaling, RotaryEmbedding, apply_rotary
from attnlab.position.sinusoidal import SinusoidalPositionalEmbedding, sinusoidal_table

__all__ = [
    "LearnedPositionalEmbedding",
    "LinearScaling",
    "NTKScaling",
    "RotaryEmbedding",
    "SinusoidalPositionalEmbedding",
    "apply_rotary",
    "sinusoidal_table",
]
