"""Filling a freshly built model from a converted state dict, strictly: every tensor used, every
parameter filled, every shape right; errors name the checkpoint file and the tensor."""

from __future__ import annotations

from torch import Tensor, nn


def build_model(model_cls, config, state: dict[str, Tensor], source: str) -> nn.Module:
    """``model_cls(config)`` loaded with ``state`` (cast to fp32), in eval mode."""
    model = model_cls(config)
    expected = model.state_dict()
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise ValueError(f"{source}: unexpected tensors {unexpected[:5]}")
    missing = sorted(set(expected) - set(state))
    if missing:
        raise ValueError(f"{source}: missing tensors for {missing[:5]}")
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ValueError(
                f"{source}: tensor for {key!r} has shape {tuple(value.shape)}, "
                f"expected {tuple(expected[key].shape)}"
            )
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.eval()
