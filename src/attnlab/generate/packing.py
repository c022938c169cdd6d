"""fp32 ``nn.Linear`` weights in oneDNN's packed layout while several rows decode on the CPU.

A decode step multiplies a few rows (the batch, a beam search's beams, a speculative
verification's drafted tokens) by every weight of the model. PyTorch's ``F.linear`` runs MKL's
general product on the weight as it is stored; oneDNN's linear on a weight reordered once into
its blocked layout (``mkldnn._reorder_linear_weight``, the packing Inductor's CPU freezing
uses) reads it about twice as fast for 2 to 16 rows (measured, 2-core AVX2 EPYC, torch 2.13,
GPT-2 124M's 48 layer weights streamed from memory, ms a step, ``F.linear`` vs packed: 2 rows
45.6 vs 26.7, 4 rows 68.2 vs 28.6, 8 rows 96.6 vs 46.6, 16 rows 82.0 vs 44.2, 64 rows 137 vs
106; one row 32.7 vs 32.1 with the column-major layout of
:func:`~attnlab.generate.drivers.prepare`; a 512-row prefill 94.7 vs 102.3).

:func:`packed_linears` packs the weights of a model's fp32 CPU ``nn.Linear`` layers for the
length of a generation and hands the memory back to the system at its end: the packed copy
lives beside the weight (which the rest of the model, a tied embedding say, still reads), so
the model's fp32 Linear weights are held twice meanwhile. It packs nothing when that copy
would not fit in half the memory the system has available. While packed, a layer's class
is :class:`PackedLinear` (still an ``nn.Linear``, with the same parameters and state dict):
up to ``PACKED_MAX_ROWS`` rows without a gradient go through the packed weight, anything else
through ``F.linear`` as before. Both compute the same fp32 product, in another order of
summation. A weight changed in place during the generation is not seen by its packed copy
until the next generation packs it again.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.memory import release_freed_memory

# Rows a decode step must multiply for the packing to pay (one row is as fast without it).
PACK_MIN_ROWS = 2
# More rows than this (a prefill) multiply the weight as it is stored.
PACKED_MAX_ROWS = 64


def available() -> bool:
    """Whether this PyTorch build has oneDNN's packed linear."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        torch.ops.mkldnn._reorder_linear_weight  # noqa: B018
        torch.ops.mkldnn._linear_pointwise  # noqa: B018
    except (AttributeError, RuntimeError):
        return False
    return True


@torch.library.custom_op("attnlab::packed_linear", mutates_args=())
def packed_linear(x: Tensor, packed: Tensor, bias: Tensor | None) -> Tensor:
    """``x @ W.T + b`` (M, N) from ``x`` (M, K) and ``W`` packed by oneDNN, as an operator that
    ``torch.compile`` calls as it is (Inductor does not lower a packed weight it did not pack
    itself)."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


@packed_linear.register_fake
def _(x: Tensor, packed: Tensor, bias: Tensor | None) -> Tensor:
    return x.new_empty(x.shape[0], packed.shape[0])


class PackedLinear(nn.Linear):
    """An ``nn.Linear`` holding ``_packed``, its weight in oneDNN's layout (see the module
    docstring). Only :func:`packed_linears` makes one, and turns it back into ``nn.Linear``."""

    _packed: Tensor

    def forward(self, x: Tensor) -> Tensor:
        rows = x.numel() // max(1, self.in_features)
        if (
            rows > PACKED_MAX_ROWS
            or x.dtype != torch.float32
            or (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))
        ):
            return F.linear(x, self.weight, self.bias)  # the packed product has no backward
        y = _product(x.reshape(-1, self.in_features).contiguous(), self._packed, self.bias)
        return y.reshape(*x.shape[:-1], self.out_features)


def _product(x2d: Tensor, packed: Tensor, bias: Tensor | None) -> Tensor:
    if torch.compiler.is_compiling():
        return packed_linear(x2d, packed, bias)
    # Eager: straight to ATen (the custom operator's own dispatch costs tens of us a call).
    return torch.ops.mkldnn._linear_pointwise(x2d, packed, bias, "none", [], "")


def _packable(module: nn.Module) -> bool:
    if type(module) is not nn.Linear:  # subclasses (quantized layers, ...) keep their forward
        return False
    w = module.weight
    return w.device.type == "cpu" and w.dtype == torch.float32 and w.numel() > 0


def _available_bytes() -> int | None:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


@contextmanager
def packed_linears(model: nn.Module, rows: int) -> Iterator[int]:
    """Within the block, ``model``'s fp32 CPU ``nn.Linear`` layers multiply through weights
    packed for ``rows`` rows (see the module docstring); yields how many layers were packed
    (0 for fewer than ``PACK_MIN_ROWS`` rows, without oneDNN, when memory is short, or when an
    enclosing block packed them already). Afterwards every layer is an ``nn.Linear`` again and
    the packed copies are freed."""
    layers = [m for m in model.modules() if _packable(m)] if rows >= PACK_MIN_ROWS else []
    if layers and not available():
        layers = []
    need = sum(m.weight.numel() * 4 for m in layers)
    free = _available_bytes()
    if free is not None and need > free // 2:
        layers = []
    try:
        for m in layers:
            m._packed = torch.ops.mkldnn._reorder_linear_weight(m.weight.detach(), rows)
            m.__class__ = PackedLinear
        yield len(layers)
    finally:
        for m in layers:
            if type(m) is PackedLinear:
                m.__class__ = nn.Linear
            m.__dict__.pop("_packed", None)
        if layers:  # the packed copies (as large as the weights) back to the system
            release_freed_memory()
