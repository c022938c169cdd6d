"""Sharded model and optimizer state with ``torch.distributed.checkpoint`` (DCP).

Every rank writes its own shards of the weights and of the optimizer state into one folder
(``dcp/``: a ``.metadata`` file plus one ``.distcp`` file per rank), and any number of ranks,
one included, reads them back: DCP reshards on load, so a run saved on 4 ranks under FSDP resumes
on 2, on 1 without torch.distributed, or under another plan. Tensors are stored under the
model's own parameter names (the fully-qualified names of the single-device model, whatever
wraps it), the optimizer's state under the same names.

The folder is written by the ranks together and made visible by the caller's rename of the
checkpoint directory (:func:`attnlab.train.checkpoint.save_sharded`), so it is complete or absent.
Reading uses DCP's own format (no pickled code runs). :func:`to_single_file` turns a sharded
checkpoint into the single ``model.safetensors`` that :func:`attnlab.load` and ``attnlab convert``
read.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

DCP_DIR = "dcp"


def is_sharded(path: str | Path) -> bool:
    """Whether the checkpoint directory ``path`` holds DCP shards."""
    return (Path(path) / DCP_DIR / ".metadata").is_file()


def _quiet():
    # DCP warns when it reads or writes without a process group ("assuming the intent is to
    # load in a single process"): exactly what a one-process resume or export means.
    ctx = warnings.catch_warnings()
    ctx.__enter__()
    warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
    return ctx


def save_states(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
    """Write ``model``'s weights (and ``optimizer``'s state) into ``folder/dcp``; every rank of
    the process group calls it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    if optimizer is None:
        states: dict[str, Any] = {"model": get_model_state_dict(model)}
    else:
        weights, optim = get_state_dict(model, optimizer)
        states = {"model": weights, "optim": optim}
    ctx = _quiet()
    try:
        dcp.save(states, checkpoint_id=str(Path(folder) / DCP_DIR))
    finally:
        ctx.__exit__(None, None, None)


def load_states(
    folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> None:
    """Fill ``model`` (and ``optimizer``) from ``folder/dcp``, resharded to however ``model`` is
    laid out now (plain, DDP, FSDP, TP; any number of ranks)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_state_dict,
        set_model_state_dict,
        set_state_dict,
    )

    where = Path(folder) / DCP_DIR
    ctx = _quiet()
    try:
        if optimizer is None:
            states = {"model": get_model_state_dict(model)}
            dcp.load(states, checkpoint_id=str(where))
            set_model_state_dict(model, states["model"])
        else:
            weights, optim = get_state_dict(model, optimizer)
            states = {"model": weights, "optim": optim}
            dcp.load(states, checkpoint_id=str(where))
            set_state_dict(
                model, optimizer, model_state_dict=states["model"], optim_state_dict=states["optim"]
            )
    except (RuntimeError, ValueError, KeyError, OSError) as exc:
        raise ValueError(f"checkpoint: cannot read the shards in {where} ({exc})") from None
    finally:
        ctx.__exit__(None, None, None)


def set_full_states(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    weights: dict[str, torch.Tensor],
    optim_state: dict[str, Any] | None,
) -> None:
    """Load full (unsharded) weights and an optimizer ``state_dict()`` of the plain model into a
    possibly parallel ``model`` and its ``optimizer``: each rank keeps its shards. The optimizer
    state is that of :func:`attnlab.train.trainer.make_optimizer` on the plain model (its
    parameters numbered in ``model.parameters()`` order), as a one-process checkpoint holds it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    named = _named_optimizer_state(model, optim_state) if optim_state is not None else None
    set_state_dict(
        model,
        optimizer,
        model_state_dict=weights,
        optim_state_dict=named if named is not None else {},
        options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=False),
    )


def _named_optimizer_state(model: nn.Module, optim_state: dict[str, Any]) -> dict[str, Any]:
    """An optimizer ``state_dict()`` keyed by parameter numbers as one keyed by parameter names
    (the form ``torch.distributed.checkpoint.state_dict`` takes)."""
    from attnlab.train.checkpoint import unwrap

    names = {id(p): n for n, p in _plain_named_parameters(unwrap(model))}
    order = [names[id(p)] for p in _plain_params(unwrap(model))]
    number_to_name: dict[int, str] = {}
    groups = []
    for group in optim_state["param_groups"]:
        params = []
        for number in group["params"]:
            number_to_name[number] = order[number]
            params.append(order[number])
        groups.append({**group, "params": params})
    state = {number_to_name[n]: s for n, s in optim_state["state"].items()}
    return {"state": state, "param_groups": groups}


def _plain_named_parameters(model: nn.Module):
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def _plain_params(model: nn.Module) -> list[nn.Parameter]:
    """Parameters in the order make_optimizer numbers them: matrices first, then vectors."""
    params = [p for _, p in _plain_named_parameters(model)]
    return [p for p in params if p.dim() >= 2] + [p for p in params if p.dim() < 2]


def full_model(model: nn.Module, world) -> nn.Module | None:
    """On rank 0, a plain single-device copy of the sharded ``model`` (fsdp, tp) with its full
    weights, gathered from every rank (all ranks must call this); None on the other ranks."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from attnlab.models import family, family_name

    weights = get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    if not world.is_main:
        return None
    model_cls, _ = family(family_name(model))
    plain = model_cls(model.config)
    plain.load_state_dict(weights)
    device = next(iter(weights.values())).device if weights else torch.device("cpu")
    return plain.to(world.device if world.device.type == "cuda" else device).eval()


def to_single_file(checkpoint: str | Path, out: str | Path | None = None) -> Path:
    """Write the weights of the sharded ``checkpoint`` as one ``model.safetensors`` (into the
    checkpoint itself unless ``out``, a directory, is given, with its ``meta.json``): the form
    :func:`attnlab.load` and ``attnlab convert`` read. Runs in one process."""
    import shutil

    from safetensors.torch import save_model

    from attnlab.loader import load

    checkpoint = Path(checkpoint)
    if not is_sharded(checkpoint):
        raise ValueError(f"checkpoint: {checkpoint} holds no sharded weights ({DCP_DIR}/.metadata)")
    model = load(checkpoint).model  # built from meta.json, filled from the shards
    target = Path(out) if out is not None else checkpoint
    target.mkdir(parents=True, exist_ok=True)
    if target != checkpoint:
        shutil.copy2(checkpoint / "meta.json", target / "meta.json")
    tmp = target / ".model.safetensors.tmp"
    save_model(model, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, target / "model.safetensors")
    return target / "model.safetensors"


__all__ = [
    "DCP_DIR",
    "full_model",
    "is_sharded",
    "load_states",
    "save_states",
    "set_full_states",
    "to_single_file",
]
