"""Local (sliding-window) attention: exact softmax attention inside a window of nearby keys.

Each query sees the ``window`` most recent keys (itself included), or with ``causal=False`` the
keys less than ``window`` positions away on either side (Beltagy et al. 2020, Longformer; Child
et al. 2019 use such bands in Sparse Transformers; Mistral 7B uses the causal form).

Cost: with a block-skipping backend ("chunked", or "flex" where it runs) only the tiles that
intersect the band are computed, O(T · window · D) time and O(T · D) memory; "auto" chooses such
a backend once the window is short next to the sequence. The result is exact, not an
approximation, for the windowed model; it equals full (causal) attention when the window covers
the whole sequence.

Shapes: B batch, H query heads, Hkv key/value heads, Tq queries, Tk keys, D head dim.
"""

from __future__ import annotations

from torch import Tensor

from attnlab.attention import masks
from attnlab.attention.api import attend
from attnlab.attention.bias import Bias
from attnlab.attention.masks import Mask


def local_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    window: int,
    causal: bool = True,
    mask: Mask | None = None,
    bias: Bias | Tensor | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
    backend: str = "auto",
) -> Tensor:
    """Attention of q (B, H, Tq, D) to the keys (B, Hkv, Tk, D) within ``window`` positions.

    ``mask`` (for example ``masks.padding(lengths)``) is combined with the window by ``&``.
    Returns (B, H, Tq, Dv).
    """
    band = masks.sliding_window(window, causal=causal)
    return attend(
        q,
        k,
        v,
        mask=band if mask is None else band & mask,
        bias=bias,
        scale=scale,
        dropout_p=dropout_p,
        backend=backend,
    )
