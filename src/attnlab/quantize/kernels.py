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

Hence the rule below: the kernels run on the CPU whenever no gradient must flow to the input,
and fp32 activations are rounded to bf16 for them (measured one row, 768 -> 3072, quiet
machine: fp32 ``F.linear`` 0.26 ms, int8 kernel with fp32 activations 2.0 ms, with bf16
activations 0.20 ms; int4 4.9 ms and 0.26 ms). Rounding the activations to bf16 (8 bits of
mantissa) is the price, as llama.cpp rounds its activations to 8-bit blocks for its quantized
matmuls; the output returns in the input's dtype. The fallback runs off the CPU, when the
operator is missing from this PyTorch build, and when a gradient must flow to the input.
On this machine kind the weights are 4x (int8) or about 8x (int4) smaller, and decoding, which
reads every weight once a token, is faster for it (``benchmarks/generate.py``).

Group-wise int8 (``Int8Linear(group_size=G)``, the layout of GGUF's Q8_0) has no PyTorch kernel:
``_weight_int8pack_mm`` takes one scale per output channel, and running it once per group of
columns would multiply the calls by K / G. Such layers always dequantize then multiply.
"""

from __future__ import annotations

import torch
from torch import Tensor

KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
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
    return not (torch.is_grad_enabled() and x2d.requires_grad)  # the kernels have no backward


# _weight_int8pack_mm with bf16/fp16 activations whose width K is not a multiple of 8 gives
# wrong results for more than one row, or crashes (torch 2.13 CPU, measured: K = 4, 12, 20 wrong,
# K = 7 a segmentation fault); with fp32 activations it is exact at any K.
INT8_HALF_K_MULTIPLE = 8
# fp32 activations the int8 kernel takes as they are (the K above), up to this many rows; more
# are faster dequantized then multiplied.
FP32_KERNEL_MAX_ROWS = 8


@torch.library.custom_op("attnlab::int8_mm", mutates_args=())
def int8_mm(x: Tensor, weight: Tensor, scales: Tensor) -> Tensor:
    """``aten._weight_int8pack_mm`` as an opaque operator: ``torch.compile`` calls it as it is
    instead of lowering it (Inductor's own lowering of the packed matmuls fails on bf16-rounded
    activations in torch 2.13), and fuses everything around it."""
    return torch.ops.aten._weight_int8pack_mm(x, weight, scales)


@int8_mm.register_fake
def _(x: Tensor, weight: Tensor, scales: Tensor) -> Tensor:
    return x.new_empty(x.shape[0], weight.shape[0])


@torch.library.custom_op("attnlab::int4_mm", mutates_args=())
def int4_mm(x: Tensor, packed: Tensor, group_size: int, scales_and_zeros: Tensor) -> Tensor:
    """``aten._weight_int4pack_mm_for_cpu`` as an opaque operator (see :func:`int8_mm`)."""
    return torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, group_size, scales_and_zeros)


@int4_mm.register_fake
def _(x: Tensor, packed: Tensor, group_size: int, scales_and_zeros: Tensor) -> Tensor:
    return x.new_empty(x.shape[0], packed.shape[0])


def int8_matmul(x: Tensor, weight: Tensor, scales: Tensor) -> Tensor:
    """The int8 kernel: straight to ATen when eager (the custom operator's own dispatch costs
    about 50 us a call, measured: 11 ms of a 70 ms SmolLM2 decode step), through
    :func:`int8_mm` while ``torch.compile`` traces."""
    if torch.compiler.is_compiling():
        return int8_mm(x, weight, scales)
    return torch.ops.aten._weight_int8pack_mm(x, weight, scales)


def int4_matmul(x: Tensor, packed: Tensor, group_size: int, scales_and_zeros: Tensor) -> Tensor:
    """The int4 kernel, as :func:`int8_matmul` calls the int8 one."""
    if torch.compiler.is_compiling():
        return int4_mm(x, packed, group_size, scales_and_zeros)
    return torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, group_size, scales_and_zeros)


def kernel_input(x2d: Tensor, op: str) -> Tensor | None:
    """The activation (rows, K) as ``op`` takes it: contiguous, fp32 rounded to bf16; None when
    the kernel must not run on it (then dequantize and multiply)."""
    if op == "_weight_int8pack_mm" and x2d.shape[1] % INT8_HALF_K_MULTIPLE:
        if x2d.dtype != torch.float32 or x2d.shape[0] > FP32_KERNEL_MAX_ROWS:
            return None
        return x2d.contiguous()
    if x2d.dtype == torch.float32:
        x2d = x2d.to(torch.bfloat16)
    return x2d.contiguous()
