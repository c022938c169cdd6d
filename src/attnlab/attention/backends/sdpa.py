"""PyTorch's fused ``scaled_dot_product_attention`` (flash, memory-efficient, cuDNN or math).

A plain causal mask with square scores goes in as ``is_causal=True`` so PyTorch can pick its
fastest kernel; any other mask or bias becomes one dense ``attn_mask`` (O(Tq * Tk) per batch
row, the cost that block-sparse backends avoid). PyTorch returns zeros for query rows whose keys
are all masked, which is the behaviour attnlab promises; the tests hold it to that.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from attnlab.attention.backends.base import Backend, Capabilities
from attnlab.attention.call import AttentionCall


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
            out = F.scaled_dot_product_attention(
                call.q, call.k, call.v, attn_mask=_attn_mask(call), **kwargs
            )
        return out, None
