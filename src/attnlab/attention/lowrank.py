"""Linformer: low-rank attention by projecting keys and values along the sequence axis.

Shapes:
    B    batch
    H    query heads
    Hkv  key/value heads (H is a multiple of Hkv; G = H // Hkv)
    Tq   query length, Tk key length
    D    query/key head dim, Dv value head dim
    r    rank: the number of projected key/value rows
    L    max_len: the longest key sequence the projections cover

Wang et al. 2020, "Linformer: Self-Attention with Linear Complexity" (arXiv:2006.04768): the
(Tq, Tk) softmax attention matrix is approximately low rank (ibid. §3, Theorem 1), so project the
Tk keys and values down to r rows with learned (r, Tk) matrices E and F,

    out = softmax(q (E k)ᵀ / sqrt(D)) (F v),

and attend exactly over r rows instead of Tk: O(Tq·r·D) instead of O(Tq·Tk·D).
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.attention import masks
from attnlab.attention.call import make_call
from attnlab.attention.masks import Mask

__all__ = ["LinformerAttention", "mask_reasons"]

CAUSAL_REASON = (
    "Linformer cannot be causal: each projected key/value row mixes all positions, future ones "
    "included, so no causal mask can apply after the projection"
)


def mask_reasons(mask: Mask | None) -> list[str]:
    """Why Linformer cannot honour ``mask``; empty when it can (None, masks of which keys
    exist, and ``&`` of those)."""
    reasons = masks.causal_and_keys_reasons(mask)
    if masks.includes_causal(mask):
        reasons.append(CAUSAL_REASON)
    return reasons


class LinformerAttention(nn.Module):
    """Linformer attention (Wang et al. 2020): exact softmax attention over projected keys/values.

    k' = E[:, :Tk] k and v' = F[:, :Tk] v project the sequence axis to r rows; queries then attend
    to k', v' with ordinary softmax attention, scale 1/sqrt(D). A call with Tk keys uses only the
    first Tk columns of E and F, so one module serves any Tk <= max_len.

    Args:
        max_len: L, the largest Tk accepted (E and F have L columns).
        rank: r, the number of projected rows.
        n_heads: None shares one E and one F across all heads (Linformer §4 "headwise sharing",
            their default). An int gives every key/value head its own E and F of shape
            (n_heads, r, L); then k must have exactly n_heads heads (Hkv == n_heads).
        share_kv: use one matrix for both keys and values, F = E (§4 "key-value sharing").

    Masks: only which keys exist (padding). A causal mask is refused: projecting along the
    sequence mixes all Tk positions, future ones included, into every projected row, so no
    causal mask can be applied afterwards.

    Parameters E (and F unless ``share_kv``): (r, L), or (n_heads, r, L), initialised
    N(0, 1/r). This is the Johnson-Lindenstrauss projection of the paper's analysis (§3,
    Theorem 2: E = δR with R_ij ~ N(0, 1/k)): for any vector x over the sequence axis,
    |E x| ≈ |x|, so at initialisation k' and v' carry the energy of k and v and the logits
    q·k' keep the scale of q·k (not shrunk by a 1/sqrt(L) init into a uniform softmax).

    Padding: keys/values a padding mask excludes are zeroed before projecting, so their
    content has no effect. Their columns still exist, which makes padded attention only as exact
    as the projection (it is not the same as masking those keys in softmax attention).

    Exactness: when rank == Tk and E[:, :Tk] = F[:, :Tk] = identity (or one and the same
    permutation), k' = k and v' = v and this is softmax attention itself. With rank > Tk the
    extra projected rows are zero keys that still receive softmax weight, so it is not exact.
    Otherwise it is an approximation whose quality depends on what E and F learn.

    Cost (per batch element and head): projection O(Tk·r·(D + Dv)), attention O(Tq·r·(D + Dv))
    time; O((Tq + Tk)·(D + Dv) + Tq·r) memory: linear in T for fixed r.
    """

    def __init__(
        self,
        max_len: int,
        rank: int,
        *,
        n_heads: int | None = None,
        share_kv: bool = False,
    ) -> None:
        super().__init__()
        for name, val in (("max_len", max_len), ("rank", rank)):
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                raise ValueError(f"{name}: expected a positive int, got {val!r}")
        if n_heads is not None and (
            isinstance(n_heads, bool) or not isinstance(n_heads, int) or n_heads < 1
        ):
            raise ValueError(f"n_heads: expected None or a positive int, got {n_heads!r}")
        self.max_len = max_len
        self.rank = rank
        self.n_heads = n_heads
        self.share_kv = share_kv
        shape = (rank, max_len) if n_heads is None else (n_heads, rank, max_len)
        std = 1 / math.sqrt(rank)  # JL scaling, see the class docstring
        self.E = nn.Parameter(torch.randn(shape) * std)
        if share_kv:
            self.register_parameter("F", None)
        else:
            self.F = nn.Parameter(torch.randn(shape) * std)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, mask: Mask | Tensor | None = None) -> Tensor:
        """q (B, H, Tq, D), k (B, Hkv, Tk, D), v (B, Hkv, Tk, Dv) -> (B, H, Tq, Dv).

        mask: None or masks of which keys exist (``masks.padding(lengths)``, a boolean tensor
        (B or 1, 1, 1, Tk)); their keys/values are zeroed before the projection. Errors for bad
        inputs are those of :func:`attnlab.attention.attend`.
        """
        call = make_call(
            q, k, v, mask=mask, bias=None, scale=None, dropout_p=0.0, return_weights=False
        )
        reasons = mask_reasons(call.mask)
        if reasons:
            raise ValueError("mask: " + "; ".join(reasons))
        _, valid = masks.causal_and_keys(call.mask, call.batch, call.tk, call.device)
        B, H, Hkv, Tq, Tk = call.batch, call.heads, call.kv_heads, call.tq, call.tk
        D, Dv = q.shape[3], v.shape[3]
        if Tk > self.max_len:
            raise ValueError(
                f"k: expected at most max_len = {self.max_len} keys, got Tk={Tk} "
                f"(k.shape[2]); construct LinformerAttention with max_len >= {Tk}"
            )
        if self.n_heads is not None and Hkv != self.n_heads:
            raise ValueError(
                f"k: n_heads={self.n_heads} gives one projection per key/value head; expected "
                f"Hkv == {self.n_heads}, got Hkv={Hkv} (k.shape[1])"
            )
        if valid is not None:
            keep = valid[:, None, :, None]  # (B, 1, Tk, 1)
            k = torch.where(keep, k, 0)
            v = torch.where(keep, v, 0)
        E = self.E[..., :Tk].to(k.dtype)  # (r, Tk) or (Hkv, r, Tk)
        Fm = E if self.F is None else self.F[..., :Tk].to(v.dtype)
        eq = "rt,bhtd->bhrd" if self.n_heads is None else "hrt,bhtd->bhrd"
        k_proj = torch.einsum(eq, E, k)  # (B, Hkv, r, D)
        v_proj = torch.einsum(eq, Fm, v)  # (B, Hkv, r, Dv)
        # GQA without copying: non-causal, so the G query heads of one key/value head can be
        # folded into the query axis and attend to the same r rows in a single call.
        G = H // Hkv
        q = q.reshape(B, Hkv, G * Tq, D)  # (B, H, Tq, D) -> (B, Hkv, G·Tq, D)
        out = F.scaled_dot_product_attention(q, k_proj, v_proj)  # (B, Hkv, G·Tq, Dv)
        return out.reshape(B, H, Tq, Dv)  # (B, Hkv, G·Tq, Dv) -> (B, H, Tq, Dv)

    def extra_repr(self) -> str:
        return (
            f"max_len={self.max_len}, rank={self.rank}, n_heads={self.n_heads}, "
            f"share_kv={self.share_kv}"
        )
