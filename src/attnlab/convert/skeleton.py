"""A model built without its parameters, to be filled one tensor at a time.

Loading a quantized checkpoint into a model built the ordinary way would first allocate (and
randomly initialise) every weight in fp32, several times the size of the quantized file. A
skeleton has its parameters on the ``meta`` device (no memory) while its buffers are computed
for real on the CPU: non-persistent buffers such as RoPE's inverse frequencies are functions of
the configuration that no checkpoint holds, so they must be built as the model's own code builds
them (accelerate's ``init_empty_weights(include_buffers=False)`` does the same). The caller then
replaces layers and assigns parameters; :func:`materialize` allocates whatever is still empty.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

_lock = threading.Lock()


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        original(module, name, param)
        p = module._parameters[name]
        if p is not None and not p.is_meta:  # a tied parameter is already there: keep it one
            module._parameters[name] = nn.Parameter(p.to("meta"), requires_grad=p.requires_grad)

    with _lock:
        nn.Module.register_parameter = register
        try:
            yield
        finally:
            nn.Module.register_parameter = original


def skeleton(model_cls: Callable[..., nn.Module], config) -> nn.Module:
    """``model_cls(config)`` in eval mode with every parameter on the ``meta`` device and its
    buffers real. Parameters tied by the model's code (an output head sharing the embedding)
    stay one object."""
    # Each layer still allocates its weight with torch.empty before the move to meta: memory
    # that is never written, so it never becomes resident, and is freed at once.
    with _parameters_on_meta():
        return model_cls(config).eval()


def fill(model: nn.Module, value: Callable[[str, nn.Parameter], Tensor]) -> nn.Module:
    """Replace every parameter of ``model`` still on the ``meta`` device with
    ``value(name, param)`` (a tensor of its shape), once per parameter object, so tied
    parameters stay tied; returns ``model``."""
    made: dict[int, nn.Parameter] = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        for name, p in list(module._parameters.items()):
            if p is None or not p.is_meta:
                continue
            if id(p) not in made:
                full = f"{module_name}.{name}" if module_name else name
                t = value(full, p)
                if tuple(t.shape) != tuple(p.shape):
                    raise ValueError(
                        f"{full}: expected a tensor of shape {tuple(p.shape)}, got {tuple(t.shape)}"
                    )
                made[id(p)] = nn.Parameter(t, requires_grad=p.requires_grad)
            module._parameters[name] = made[id(p)]
    return model


def materialize(model: nn.Module, device: str | torch.device = "cpu") -> nn.Module:
    """Allocate (uninitialised) every parameter still on the ``meta`` device, on ``device``, to
    be overwritten by ``load_state_dict``; returns ``model``."""
    return fill(model, lambda name, p: torch.empty(p.shape, dtype=p.dtype, device=device))
