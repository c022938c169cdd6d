"""PyTorch's fused ``scaled_dot_product_attention`` (flash, memory-efficient, cuDNN or math).

A plain causal mask with square scores goes in as ``is_causal=True`` so PyTorch can pick its
fastest kernel; any other mask or bias becomes one dense ``attn_mask`` (O(Tq * Tk) per batch
row, the cost that block-sparse backends avoid). PyTorch returns zeros for query rows whose keys
are all masked, which is the behaviour attnlab promises; the tests hold it to that.

PyTorch's CPU kernel also returns zeros for a query row holding a NaN when there are fewer
than 8 keys and no dense mask (torch 2.13, AVX2: its short-row path takes a maximum that skips
NaN, then treats the row as fully masked). attnlab promises NaN there, so for short key
sequences the rows of q holding a NaN are written back as NaN; :mod:`attnlab.attention.nonfinite`
handles the rest of the NaN rule for every backend.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from attnlab.attention.backends.base import Backend, Capabilities
from attnlab.attention.call import AttentionCall

# Below this many keys the unmasked kernels are checked for NaN query rows turned into zeros.
# Measured: up to 7 keys (one AVX2 vector of float32); the margin covers wider vector units,
# and the check, one pass over q, is small next to attention even at 64 keys.
SHORT_KEYS = 64


def _attn_mask(call: AttentionCall) -> Tensor | None:
    mask, bias = call.dense_mask(), call.dense_bias()
    if bias is None:
        return mask
    bias = bias.to(call.dtype)
    return bias if mask is None else bias.masked_fill(~mask, float("-inf"))


class SDPABackend(Backend):
    name = "sdpa"
    description = "torch.nn.functional.scaled_dot_product_attention; dense masks"
    capabilities = Capabilities(
        devices=frozenset({"cpu", "cuda"}),
        dropout=True,
        notes=("masks and biases are materialised as a dense (Tq, Tk) tensor",),
    )

    def forward(self, call: AttentionCall) -> tuple[Tensor, Tensor | None]:
        kwargs = {
            "dropout_p": call.dropout_p,
            "scale": call.scale,
            "enable_gqa": call.groups > 1,
        }
        if call.mask is None and call.bias is None:
            out = F.scaled_dot_product_attention(call.q, call.k, call.v, **kwargs)
        elif call.plain_causal:
            out = F.scaled_dot_product_attention(call.q, call.k, call.v, is_causal=True, **kwargs)
        else:
            # A dense mask goes through a kernel path that keeps NaN query rows NaN.
            out = F.scaled_dot_product_attention(
                call.q, call.k, call.v, attn_mask=_attn_mask(call), **kwargs
            )
            return out, None
        if 0 < call.tk < SHORT_KEYS:
            # Every row sees a key here (no mask, or square causal), so a NaN query row must
            # give a NaN output row.
            out = out.masked_fill(call.q.isnan().any(-1, keepdim=True), float("nan"))
        return out, None
