"""PyTorch FlexAttention: masks as ``mask_mod`` with a block mask, biases as ``score_mod``.

FlexAttention generates one fused kernel per (mask, bias) program through ``torch.compile``
(Dong et al. 2024, "Flex Attention: A Programming Model for Generating Optimized Attention
Kernels"), and skips the tiles its block mask marks empty, so sparse masks (sliding window,
packed documents) cost in proportion to what they allow.

What the installed torch can do is probed, not assumed: on first use per device type we call
the uncompiled kernel on a tiny input that requires grad, and record whether backward exists
there (PyTorch 2.13 on CPU: inference only). The first compiled call for a new mask or bias
program pays the compile time (seconds); later calls reuse the kernel.
"""

from __future__ import annotations

import functools
import shutil
import warnings

import torch
from torch import Tensor

from attnlab.attention.backends.base import Backend, Capabilities
from attnlab.attention.call import AttentionCall
from attnlab.attention.masks import Mask, head_dependent, value_key

try:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    _IMPORT_ERROR = ""
except ImportError as exc:  # pragma: no cover - torch without FlexAttention
    create_block_mask = flex_attention = None
    _IMPORT_ERROR = f"torch {torch.__version__} has no FlexAttention ({exc})"


@functools.cache
def _compiled():
    # Static shapes: with dynamic shapes, PyTorch 2.13's CPU code generation for FlexAttention
    # fails to compile the kernel after a recompile for a new mask. The cost is one compile per
    # new (shape, mask program) pair.
    return torch.compile(flex_attention, dynamic=False)


@functools.cache
def _backward_probe(device_type: str) -> str:
    """'' when FlexAttention's backward runs on ``device_type``, else PyTorch's reason."""
    device = torch.device(device_type)
    x = torch.zeros(1, 1, 16, 16, device=device, requires_grad=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            flex_attention(x, x, x).sum().backward()
    except Exception as exc:  # the kernel tells us why; keep its first line
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return ""


@functools.cache
def _forward_probe(device_type: str) -> str:
    """'' when the compiled FlexAttention kernel can be trusted on ``device_type``, else why not.

    On CPUs without AVX-512 (an AVX2 AMD EPYC, torch 2.13) the generated CPU kernel returns
    wrong values or NaN for some masks even in fp32, and not in every process alike, so no
    probe call can vouch for it; it is refused there. With AVX-512 it matches the reference in
    every test."""
    if device_type != "cpu":
        return ""
    capability = torch.backends.cpu.get_cpu_capability()
    if capability.startswith("AVX512"):
        return ""
    return (
        f"its compiled kernel gives wrong results on CPUs without AVX-512 in torch "
        f"{torch.__version__} (this one: {capability})"
    )


def _has_compiler(device_type: str) -> bool:
    # Inductor's CPU code generation needs a C++ compiler; GPU code goes through Triton.
    return device_type != "cpu" or any(shutil.which(c) for c in ("g++", "c++", "clang++"))


@functools.lru_cache(maxsize=64)
def _cached_block_mask(mask: Mask, tq: int, tk: int, device: torch.device):
    return create_block_mask(mask.mask_mod(tq, tk), None, None, tq, tk, device=device)


def block_mask_for(call: AttentionCall):
    """FlexAttention BlockMask for the call's mask, cached for position-only masks."""
    mask = call.mask
    if mask is None:
        return None
    key = value_key(mask)
    if key is not None:
        return _cached_block_mask(key, call.tq, call.tk, call.device)
    b = call.batch if mask.batch_size() is not None else None
    h = call.heads if head_dependent(mask) else None
    return create_block_mask(
        mask.mask_mod(call.tq, call.tk), b, h, call.tq, call.tk, device=call.device
    )


def _score_mod(call: AttentionCall):
    """The call's soft cap, then its bias, as one FlexAttention ``score_mod`` (None: neither)."""
    bias = call.bias.score_mod(call.tq, call.tk) if call.bias is not None else None
    cap = call.softcap
    if cap is None:
        return bias
    if bias is None:
        return lambda score, b, h, q, k: cap * torch.tanh(score / cap)
    return lambda score, b, h, q, k: bias(cap * torch.tanh(score / cap), b, h, q, k)


class FlexBackend(Backend):
    name = "flex"
    description = "torch FlexAttention (compiled); block-sparse masks, biases as score_mod"
    capabilities = Capabilities(
        devices=frozenset({"cpu", "cuda"}),
        dtypes=frozenset({torch.float16, torch.bfloat16, torch.float32}),
        softcap=True,
        notes=("compiles once per shape and mask/bias program: the first call takes seconds",),
    )

    def extra_reasons(self, call: AttentionCall) -> list[str]:
        if _IMPORT_ERROR:
            return [_IMPORT_ERROR]
        reasons = []
        if not _has_compiler(call.device.type):
            reasons.append("no C++ compiler found for torch.compile on CPU")
        elif call.device.type in self.capabilities.devices and _forward_probe(call.device.type):
            reasons.append(_forward_probe(call.device.type))
        if call.needs_grad and call.device.type in self.capabilities.devices:
            why = _backward_probe(call.device.type)
            if why:
                reasons.append(
                    f"no backward on {call.device.type} in torch {torch.__version__}: {why}"
                )
        if call.q.shape[-1] < 16 and call.device.type == "cuda":
            reasons.append(f"head dim {call.q.shape[-1]} < 16 not supported by the GPU kernel")
        return reasons

    def forward(self, call: AttentionCall) -> tuple[Tensor, Tensor | None]:
        out = _compiled()(
            call.q,
            call.k,
            call.v,
            score_mod=_score_mod(call),
            block_mask=block_mask_for(call),
            scale=call.scale,
            enable_gqa=call.groups > 1,
        )
        return out, None
