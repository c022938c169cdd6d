"""What an attention backend is: a kernel function plus the capabilities it declares.

Capabilities are data (:class:`Capabilities`), and :meth:`Backend.not_supported_reasons` turns
them into readable sentences for one call, so that dispatch never needs scattered checks and a
refusal always says why. A backend with constraints that are not simple flags (FlexAttention's
CPU training, say) adds them in :meth:`Backend.extra_reasons`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from attnlab.attention.call import AttentionCall

FLOAT_DTYPES = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do; every field is checked against each call."""

    devices: frozenset[str]  # device types, e.g. {"cpu", "cuda"}
    dtypes: frozenset[torch.dtype] = FLOAT_DTYPES
    grad: bool = True  # can run backward
    masks: bool = True  # accepts Mask objects
    biases: bool = True  # accepts additive score biases
    bias_grad: bool = True  # gives gradients of learnable biases
    dropout: bool = False  # attention-probability dropout
    weights: bool = False  # can return the (B, H, Tq, Tk) attention weights
    softcap: bool = False  # soft-capped scores (Gemma 2)
    sinks: bool = False  # a learned sink logit per head in the softmax (gpt-oss)
    # Runs collectives across ranks (ring attention): every rank must call it in lockstep, so
    # "auto" never picks it and attend() does not re-run it on one rank (nonfinite.contain).
    collective: bool = False
    notes: tuple[str, ...] = field(default=())  # shown in the backend table


class Backend:
    """Base class: set ``name`` and ``capabilities``, implement :meth:`forward`."""

    name: str = ""
    capabilities: Capabilities
    description: str = ""

    def not_supported_reasons(self, call: AttentionCall) -> list[str]:
        """Why this backend cannot run ``call``; empty when it can."""
        caps = self.capabilities
        reasons = []
        if call.device.type not in caps.devices:
            reasons.append(
                f"device {call.device.type} not supported (supports {sorted(caps.devices)})"
            )
        if call.dtype not in caps.dtypes:
            names = sorted(str(d).removeprefix("torch.") for d in caps.dtypes)
            reasons.append(f"dtype {call.dtype} not supported (supports {names})")
        if call.needs_grad and not caps.grad:
            reasons.append("no backward pass (inputs require grad)")
        if call.mask is not None and not caps.masks:
            reasons.append("masks not supported")
        if call.bias is not None and not caps.biases:
            reasons.append("score biases not supported")
        if call.bias_needs_grad and caps.biases and not caps.bias_grad:
            reasons.append("no gradient for learnable biases")
        if call.dropout_p > 0 and not caps.dropout:
            reasons.append(f"dropout not supported (dropout_p={call.dropout_p})")
        if call.return_weights and not caps.weights:
            reasons.append("cannot return attention weights (return_weights=True)")
        if call.softcap is not None and not caps.softcap:
            reasons.append(f"score soft-capping not supported (softcap={call.softcap})")
        if call.sinks is not None and not caps.sinks:
            reasons.append("attention sinks not supported")
        return reasons + self.extra_reasons(call)

    def extra_reasons(self, call: AttentionCall) -> list[str]:
        """Backend-specific refusals beyond the capability flags."""
        return []

    def forward(self, call: AttentionCall) -> tuple[Tensor, Tensor | None]:
        """Run attention: (output (B, H, Tq, Dv), weights (B, H, Tq, Tk) or None)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<attention backend {self.name!r}>"


_REGISTRY: dict[str, Backend] = {}


def register_backend(backend: Backend) -> Backend:
    """Add a backend to the registry under ``backend.name`` (replacing one of that name)."""
    if not backend.name:
        raise ValueError("backend: expected a non-empty name")
    _REGISTRY[backend.name] = backend
    return backend


def get_backend(name: str) -> Backend:
    """The registered backend called ``name``; ValueError listing the known names otherwise."""
    if not isinstance(name, str):
        raise TypeError(f"backend: expected a backend name (str), got {type(name).__name__}")
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted([*_REGISTRY, "auto"]))
        raise ValueError(f"backend: unknown backend {name!r}; expected one of {known}") from None


def backend_names() -> list[str]:
    """Names of every registered backend, in registration order."""
    return list(_REGISTRY)
