"""Parallelism plans, applied to a single-device model from outside (as torchtitan's
``parallelize`` does): the model code never changes.

``parallelize(model, plan, world)`` returns a :class:`Parallel`: the module a training step calls,
the model itself (whose parameters may now be DTensors), and what the trainer must know about the
plan (how many ranks see different examples, how a batch is cut for this rank, what evaluation
calls). Plans (:data:`PLANS`):

* ``none``: one process (or ranks that each train alone: refused by the trainer).
* ``ddp``: data parallel; every rank holds the whole model and gradients are averaged by
  :class:`torch.nn.parallel.DistributedDataParallel` (all-reduce, overlapped with the backward).
* ``fsdp``: fully sharded data parallel, FSDP2 (``torch.distributed.fsdp.fully_shard``): each block
  is a unit whose parameters, gradients and optimizer state live as 1/N shards on each rank and
  are all-gathered for its forward and backward (Zhao et al. 2023, "PyTorch FSDP"); bf16 compute
  with fp32 gradient reduction where the device is fast at bf16.
* ``tp``: tensor parallel (Megatron-LM, Shoeybi et al. 2019): attention heads and MLP columns
  split across ranks (:mod:`attnlab.distributed.tp`); every rank sees the same examples.
* ``cp``: context parallel: every sequence is split across ranks and attention runs as ring
  attention (:mod:`attnlab.distributed.cp`); gradients are averaged over the ranks.

``activation_checkpointing`` recomputes each block's activations in the backward pass instead of
keeping them (Chen et al. 2016), with any plan.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from attnlab.distributed.world import World
from attnlab.names import closest


@dataclass
class Parallel:
    """A model under a plan."""

    plan: str
    module: nn.Module  # what a training step calls
    model: nn.Module  # the model itself: its parameters are DTensors under fsdp and tp
    data_ranks: int = 1  # ranks that draw different examples (ddp, fsdp: all of them)
    # This rank's part of a training batch (cp: its positions of every sequence).
    shard_batch: Callable[[dict[str, Any]], dict[str, Any]] = field(default=lambda batch: batch)
    eval_module: nn.Module | None = None  # what evaluation calls on whole batches
    sharded: bool = False  # parameters are DTensors: full weights take a collective to gather
    # The model as it runs alone on whole inputs (at the end of a run, to generate).
    release: Callable[[], nn.Module] | None = None

    def __post_init__(self) -> None:
        if self.eval_module is None:
            self.eval_module = self.model


def _none(model: nn.Module, world: World, **options) -> Parallel:
    return Parallel("none", model, model)


def _ddp(model: nn.Module, world: World, **options) -> Parallel:
    from torch.nn.parallel import DistributedDataParallel

    ids = [world.device.index] if world.device.type == "cuda" else None
    wrapped = DistributedDataParallel(model, device_ids=ids)
    return Parallel("ddp", wrapped, model, data_ranks=world.size)


def blocks_of(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of ``model`` (every :class:`attnlab.layers.block.Block`): the units
    that FSDP shards and activation checkpointing recomputes."""
    from attnlab.layers.block import Block

    return [m for m in model.modules() if isinstance(m, Block)]


def _fsdp(model: nn.Module, world: World, *, bf16: bool = False, **options) -> Parallel:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(world.device.type, (world.size,))
    policy = MixedPrecisionPolicy(
        param_dtype=torch.bfloat16 if bf16 else None,
        reduce_dtype=torch.float32 if bf16 else None,
    )
    for block in blocks_of(model):
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)  # embeddings, final norm, head
    return Parallel("fsdp", model, model, data_ranks=world.size, sharded=True)


def _tp(model: nn.Module, world: World, **options) -> Parallel:
    from torch.distributed.device_mesh import init_device_mesh

    from attnlab.distributed.tp import apply_tp

    mesh = init_device_mesh(world.device.type, (world.size,))
    apply_tp(model, mesh)
    return Parallel("tp", model, model, sharded=True)


def _cp(model: nn.Module, world: World, **options) -> Parallel:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from attnlab.distributed.cp import ContextParallel

    # The ring's point-to-point messages get a group of their own, apart from the gradient
    # all-reduce that DDP issues on the default group during the same backward pass.
    ring = dist.new_group(list(range(world.size)))
    cp = ContextParallel(model, ring)
    ids = [world.device.index] if world.device.type == "cuda" else None
    wrapped = DistributedDataParallel(cp, device_ids=ids)

    def shard_batch(batch: dict[str, Any]) -> dict[str, Any]:
        # Every (B, T) tensor of a language-model batch is cut along T.
        return {
            k: cp.shard(v) if isinstance(v, Tensor) and v.dim() == 2 else v
            for k, v in batch.items()
        }

    return Parallel(
        "cp", wrapped, model, shard_batch=shard_batch, eval_module=_Gathered(cp), release=cp.release
    )


class _Gathered(nn.Module):
    """Evaluation under context parallelism: whole sequences in, whole logits out (each rank
    computes its positions; the logits are gathered back into sequence order)."""

    def __init__(self, cp: nn.Module) -> None:
        super().__init__()
        self.cp = cp

    def forward(self, input_ids: Tensor, **kwargs):
        out = self.cp(self.cp.shard(input_ids), **kwargs)
        out.logits = self.cp.gather(out.logits)
        return out


# Plan name -> builder(model, world, **options) -> Parallel.
PLANS: dict[str, Callable[..., Parallel]] = {
    "none": _none,
    "ddp": _ddp,
    "fsdp": _fsdp,
    "tp": _tp,
    "cp": _cp,
}


def check_plan(plan: str) -> str:
    if plan not in PLANS:
        raise ValueError(
            f"parallel: expected one of {', '.join(PLANS)}, got {plan!r}"
            f"{closest(plan, list(PLANS))}"
        )
    return plan


def checkpoint_activations(model: nn.Module) -> nn.Module:
    """Recompute every block's activations in the backward pass (non-reentrant
    ``torch.utils.checkpoint``): activation memory of one block instead of all of them. The
    module tree and its parameter names are unchanged."""
    from torch.utils.checkpoint import checkpoint

    from attnlab.attention.backends.ring import current_ring_context, reentered

    for block in blocks_of(model):
        plain = type(block).forward

        def forward(*args, _block=block, _plain=plain, **kwargs):
            if not torch.is_grad_enabled():
                return _plain(_block, *args, **kwargs)
            # Ring attention reads its group and positions from a context the re-run in the
            # backward pass must see again.
            ring = current_ring_context()
            extra = {}
            if ring is not None:
                extra["context_fn"] = lambda: (contextlib.nullcontext(), reentered(ring))
            return checkpoint(_plain, _block, *args, use_reentrant=False, **extra, **kwargs)

        block.forward = functools.update_wrapper(forward, plain)
    return model


def parallelize(
    model: nn.Module,
    plan: str,
    world: World,
    *,
    bf16: bool = False,
    activation_checkpointing: bool = False,
) -> Parallel:
    """``model`` (on ``world.device``) under ``plan`` (:data:`PLANS`)."""
    check_plan(plan)
    if plan != "none" and not world.distributed:
        raise ValueError(
            f"parallel: {plan!r} needs several ranks; launch with torchrun "
            f"(torchrun --nproc-per-node N -m attnlab train ... parallel={plan}), or pass "
            "parallel=none to train in this one process"
        )
    if activation_checkpointing:
        checkpoint_activations(model)
    return PLANS[plan](model, world, bf16=bf16)


__all__ = ["PLANS", "Parallel", "blocks_of", "check_plan", "checkpoint_activations", "parallelize"]
