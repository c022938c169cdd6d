"""GGUF block-quantized weights straight into attnlab's quantized layers, without fp32.

ggml's classic block quants hold 32 consecutive weights of a row per block (``ggml-common.h``):

* ``Q8_0``: fp16 scale d, then 32 int8 q: x = d * q. One scale per 32 columns is
  :class:`~attnlab.quantize.Int8Linear` with ``group_size=32``: codes and scales copied as they
  are, W equal to ``gguf.quants.dequantize`` bit for bit.
* ``Q4_0``: fp16 d, then 16 bytes of 4-bit q: x = d * (q - 8). :class:`~attnlab.quantize.Int4Linear`
  with ``group_size=32`` computes ``(q - 8) * scale + zero``: scale = d, zero = 0, bit for bit.
* ``Q4_1``: fp16 d, fp16 m, then 16 bytes of q: x = d * q + m. As ``(q - 8) * d + (m + 8 d)``:
  scale = d, zero = m + 8 d in fp32. The codes and d are exact; the sum m + 8 d and the
  kernel's order of operations round in fp32, so W differs from ``d * q + m`` by at most a few
  fp32 ulps of |m| + 8 |d| (a relative 1e-7, far below the 4-bit step).

Within a 4-bit block, byte j holds weight j in its low nibble and weight j + 16 in its high
nibble (as ``gguf.quants.Q4_0.dequantize_blocks`` reads them); attnlab's int4 layout packs
columns 2i and 2i + 1 in one byte, so the codes are unpacked and packed again.

Other types (F32, F16, BF16, Q5_*, the K-quants) have no exact counterpart among attnlab's
layers and are dequantized to fp32 by the caller.

Shapes: N rows (output features), K columns, K / 32 blocks a row.
"""

from __future__ import annotations

import numpy as np
import torch
from gguf import GGMLQuantizationType as Q
from torch import Tensor

from attnlab.quantize import Int4Linear, Int8Linear

BLOCK = 32
# GGUF type -> the attnlab mode that holds its blocks exactly (group size BLOCK)
EXACT = {Q.Q8_0: "int8", Q.Q4_0: "int4", Q.Q4_1: "int4"}
_BLOCK_BYTES = {Q.Q8_0: 2 + BLOCK, Q.Q4_0: 2 + BLOCK // 2, Q.Q4_1: 4 + BLOCK // 2}


def row_blocks(data: np.ndarray, qtype: Q, columns: int) -> Tensor:
    """The raw bytes of a GGUF tensor (as ``gguf.ReaderTensor.data``: one row of bytes per
    weight row) as a (N, K / 32, bytes a block) uint8 tensor, copied out of the file's map."""
    if qtype not in EXACT:
        raise ValueError(f"qtype: expected one of {', '.join(t.name for t in EXACT)}, got {qtype}")
    if columns % BLOCK:
        raise ValueError(f"columns: expected a multiple of {BLOCK}, got {columns}")
    raw = torch.from_numpy(np.array(data, dtype=np.uint8, copy=True))
    return raw.reshape(-1, columns // BLOCK, _BLOCK_BYTES[qtype])  # (N, K/32, bytes)


def _fp16(raw: Tensor, at: int) -> Tensor:
    """The fp16 at byte ``at`` of every block, as fp32: (N, K/32, bytes) -> (N, K/32)."""
    return raw[..., at : at + 2].contiguous().view(torch.float16)[..., 0].float()


def q8_0(raw: Tensor) -> tuple[Tensor, Tensor]:
    """Q8_0 blocks (N, K/32, 34) -> (``weight_int8`` (N, K) int8, ``scales`` (N, K/32) fp32)."""
    n, blocks, _ = raw.shape
    q = raw[..., 2:].contiguous().view(torch.int8).reshape(n, blocks * BLOCK)
    return q, _fp16(raw, 0)


def q4(raw: Tensor, qtype: Q) -> tuple[Tensor, Tensor]:
    """Q4_0 / Q4_1 blocks (N, K/32, 18 or 20) -> (``weight_int4`` (N, K/2) uint8,
    ``scales_and_zeros`` (K/32, N, 2) fp32) in :class:`Int4Linear`'s layout."""
    n, blocks, _ = raw.shape
    d = _fp16(raw, 0)  # (N, K/32)
    if qtype == Q.Q4_0:
        zero = torch.zeros_like(d)  # d * (q - 8)
        qs = raw[..., 2:]
    elif qtype == Q.Q4_1:
        zero = _fp16(raw, 2) + 8 * d  # d * q + m = d * (q - 8) + (m + 8 d)
        qs = raw[..., 4:]
    else:
        raise ValueError(f"qtype: expected Q4_0 or Q4_1, got {qtype}")
    codes = torch.cat([qs & 0xF, qs >> 4], dim=-1)  # (N, K/32, 32): weights 0-15, then 16-31
    codes = codes.reshape(n, blocks * BLOCK // 2, 2)  # (N, K/2, 2): columns 2i, 2i + 1
    packed = codes[..., 0] | (codes[..., 1] << 4)  # (N, K/2)
    scales_and_zeros = torch.stack([d, zero], dim=-1).transpose(0, 1).contiguous()  # (K/32, N, 2)
    return packed, scales_and_zeros


def to_layer(raw: Tensor, qtype: Q, bias: Tensor | None = None) -> Int8Linear | Int4Linear:
    """The quantized layer holding the blocks ``raw`` (N, K/32, bytes) of type ``qtype``."""
    if qtype == Q.Q8_0:
        return Int8Linear.from_quantized(*q8_0(raw), bias, group_size=BLOCK)
    return Int4Linear.from_quantized(*q4(raw, qtype), bias, group_size=BLOCK)
