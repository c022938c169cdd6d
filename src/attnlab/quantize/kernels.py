"""When a PyTorch weight-only matmul kernel runs, and when the dequantize-then-matmul fallback does.

PyTorch ships CPU kernels for weight-only quantized matmuls (the ones gpt-fast and torchao use):
``aten._weight_int8pack_mm`` (int8 weights, one scale per output channel) and
``aten._weight_int4pack_mm_for_cpu`` (int4 weights, scale and zero per group of input columns).
They take a contiguous 2-D activation in fp32, bf16 or fp16 and scales of the same dtype, and
have no backward.

Measured on a 2-core AMD EPYC (AVX2, no AVX-512), torch 2.13 CPU, C 768 -> 3072, medians of
interleaved runs, relative to fp32 ``F.linear`` in the same run:

* one row (a decode step), fp32 activations: both kernels take about 4-5x the fp32 matmul time,
  yet about half the time of the fallback (int8) and a quarter of it (int4), which must write a
  whole floating-point weight matrix on every call;
* fp32 activations: the kernels' time grows with the rows (about 3 ms a row for int8, 6 ms for
  int4 under load) while the fallback's stays near one dequantization: at 8 rows the kernels
  still win (int8 25 vs 40 ms, int4 47 vs 54 ms), at 16 they lose (96 vs 51 ms, 99 vs 72 ms),
  at 64 rows they take 12-14x the fp32 time against 1.7-2.4x for the fallback;
* bf16 activations: the kernels take 0.45-0.65x the fp32 matmul at 2 to 64 rows.

Hence the rule below: the kernel for bf16/fp16 activations of any length and for fp32
activations of at most ``FP32_KERNEL_MAX_ROWS`` rows; the fallback otherwise, off the CPU, when
the operator is missing from this PyTorch build, and when a gradient must flow to the input.
On this machine kind quantization saves memory (4x or 8x smaller weights) rather than time.

Group-wise int8 (``Int8Linear(group_size=G)``, the layout of GGUF's Q8_0) has no PyTorch kernel:
``_weight_int8pack_mm`` takes one scale per output channel, and running it once per group of
columns would multiply the calls by K / G. Such layers always dequantize then multiply.
"""

from __future__ import annotations

import torch
from torch import Tensor

KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Above this many fp32 rows the kernels fall behind dequantize-then-matmul (see above).
FP32_KERNEL_MAX_ROWS = 8
# The int4 CPU kernel accepts only these group sizes and output widths divisible by 16.
INT4_KERNEL_GROUPS = (32, 64, 128, 256)
INT4_KERNEL_N_MULTIPLE = 16


def has_op(name: str) -> bool:
    """Whether this PyTorch build has ``torch.ops.aten.<name>``."""
    try:
        getattr(torch.ops.aten, name)
    except (AttributeError, RuntimeError):
        return False
    return True


def use_kernel(x2d: Tensor, op: str) -> bool:
    """Whether ``op`` should multiply the activation ``x2d`` (rows, K); see the module docstring."""
    if x2d.device.type != "cpu" or x2d.dtype not in KERNEL_DTYPES or not has_op(op):
        return False
    if torch.is_grad_enabled() and x2d.requires_grad:  # the kernels have no backward
        return False
    return x2d.dtype != torch.float32 or x2d.shape[0] <= FP32_KERNEL_MAX_ROWS
