"""What one training step of each parallelism plan sends and keeps, per rank: computed from the
model's shapes, not measured (``benchmarks/distributed.py`` measures both and compares).

:func:`volume` gives the bytes each rank SENDS in one step (forward, backward, optimizer step),
by collective; :func:`state_memory` the bytes of parameters, gradients and optimizer states each
rank holds. Both take a model (its parameters and modules are read, on any device, the meta
device included) or a config, from which the model is built on the meta device.

Collectives, per rank, for a payload of S bytes (the whole tensor) over N ranks, as the ring
algorithms of NCCL and gloo run them (Patarasuk & Yuan 2009):

* all-reduce: 2(N-1)/N · S (a reduce-scatter, then an all-gather);
* all-gather: (N-1)/N · S (S the gathered tensor: each rank's shard goes to N-1 ranks);
* reduce-scatter: (N-1)/N · S (S the input); gloo runs ``reduce_scatter_tensor`` as an all-reduce
  of the whole input and keeps its part, 2(N-1)/N · S: ``reduce_scatter="all-reduce"``;
* a point-to-point message: its size.

Plans (:mod:`attnlab.distributed.parallelize`), with P parameter bytes, L layers, B sequences of
T tokens per rank, C the width, b bytes per element:

* ``ddp``: one all-reduce of every gradient, 2(N-1)/N · P (Li et al. 2020, "PyTorch Distributed").
* ``fsdp`` (FSDP2, each block a unit, the root the rest): every unit's parameters all-gathered for
  the forward, (N-1)/N · P; the blocks' again for the backward, as they reshard after the forward
  while the root keeps its parameters until the backward is done, (N-1)/N · P_blocks; every
  gradient reduce-scattered, (N-1)/N · P. That is ZeRO stage 3's 3Ψ against DDP's 2Ψ, 1.5x
  (Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training Trillion Parameter
  Models", section 7), less when the root is large (GPT-2's embeddings are gathered once).
  Each parameter's first dimension is padded to a multiple of N, as FSDP2 shards it.
* ``tp`` (Megatron-LM, Shoeybi et al. 2019): every row-parallel linear's output is all-reduced in
  the forward (out_proj and the MLP's down: 2 per block, (B, T, C) each), and the input gradient
  of every column-parallel linear in the backward. Megatron fuses the latter into one per
  sub-layer (its "f" operator: 2 per block, 4 all-reduces of 2(N-1)/N · B·T·C·b per block in all),
  but DTensor's ``ColwiseParallel`` converts each linear's input on its own, so q, k and v reduce
  their input gradients separately: 3 + 1 per block for a GELU MLP (3 + 2 with a gated one), and
  6 all-reduces per block in all. The replicated parameters (embeddings, norms, head) get the
  same gradient on every rank, from the same activations, and are never synchronised. A
  qk-norm's weight, shared by heads split over the ranks, is all-reduced in the backward.
* ``cp`` (ring attention, Liu, Zaharia & Abbeel 2023): each attention layer sends its local K and
  V, (B, Hkv, T/N, Dh) each, on N-1 steps of the ring in the forward and again in the backward,
  where the dK, dV accumulators (at least float32) travel with them on N steps, back to their
  owner; each rank's positions are all-gathered once per forward, and every attention call
  all-gathers four integers to check the ranks agree. Gradients are all-reduced over the ranks
  as under DDP.

Not counted: activation checkpointing (recomputed forwards), and each message's own framing
(gloo: about 144 bytes a message).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from attnlab.distributed.parallelize import PLANS, blocks_of
from attnlab.names import unknown

__all__ = [
    "REDUCE_SCATTER",
    "Breakdown",
    "all_gather_bytes",
    "all_reduce_bytes",
    "model_of",
    "reduce_scatter_bytes",
    "state_memory",
    "volume",
]

# How reduce-scatter runs: "ring" (NCCL), or as an all-reduce of the whole input (gloo).
REDUCE_SCATTER = ("ring", "all-reduce")


@dataclass(frozen=True)
class Breakdown:
    """Bytes per rank under ``plan`` over ``world`` ranks, by part (a collective, or a kind of
    state); ``total`` is their sum."""

    plan: str
    world: int
    parts: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return float(sum(self.parts.values()))


# -- collectives --------------------------------------------------------------------------------
def all_reduce_bytes(size: float, world: int) -> float:
    """Bytes one rank sends in a ring all-reduce of ``size`` bytes over ``world`` ranks."""
    return 2 * (world - 1) / world * size


def all_gather_bytes(size: float, world: int) -> float:
    """Bytes one rank sends in a ring all-gather whose gathered tensor is ``size`` bytes."""
    return (world - 1) / world * size


def reduce_scatter_bytes(size: float, world: int, algorithm: str = "ring") -> float:
    """Bytes one rank sends in a reduce-scatter of ``size`` input bytes: (N-1)/N of it on a
    ring, twice that where the backend runs it as an all-reduce (gloo)."""
    if algorithm == "all-reduce":
        return all_reduce_bytes(size, world)
    return all_gather_bytes(size, world)


# -- the model ----------------------------------------------------------------------------------
def model_of(model_or_config) -> nn.Module:
    """``model_or_config`` if it is a module, else the model of that config (any family of
    :mod:`attnlab.models`) built on the meta device: shapes without memory."""
    if isinstance(model_or_config, nn.Module):
        return model_or_config
    from attnlab.models import FAMILIES

    for _, model_cls, config_cls in FAMILIES:
        if isinstance(model_or_config, config_cls):
            with torch.device("meta"), _SkipInit():
                return model_cls(model_or_config)
    names = ", ".join(config_cls.__name__ for _, _, config_cls in FAMILIES)
    raise TypeError(
        f"model: expected an nn.Module or a model config ({names}), "
        f"got {type(model_or_config).__name__}"
    )


class _SkipInit(TorchFunctionMode):
    """Leaves weight initialisation undone: on the meta device there are no values to set, and
    torch's meta ``normal_`` imports the compiler on first use (seconds)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        init = getattr(func, "__module__", None) == "torch.nn.init" and func.__name__.endswith("_")
        if init or func in _INIT_METHODS:
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


_INIT_METHODS = (torch.Tensor.normal_, torch.Tensor.uniform_)


def _unique(params, trainable: bool = True) -> list[nn.Parameter]:
    """Parameters, each once (a tied embedding and head are one); only those that train when
    ``trainable``."""
    seen: dict[int, nn.Parameter] = {}
    for p in params:
        if p.requires_grad or not trainable:
            seen.setdefault(id(p), p)
    return list(seen.values())


def _padded(p: torch.Tensor, world: int) -> int:
    """Elements of ``p`` with its first dimension padded to a multiple of ``world`` (FSDP2's
    dim-0 shards)."""
    if p.dim() == 0:
        return world
    rest = p.numel() // p.shape[0] if p.shape[0] else 0
    return math.ceil(p.shape[0] / world) * world * rest


def _units(
    model: nn.Module, trainable: bool = True
) -> tuple[list[list[nn.Parameter]], list[nn.Parameter]]:
    """FSDP's units: each block's parameters, and the root's (every other parameter)."""
    blocks = [_unique(b.parameters(), trainable) for b in blocks_of(model)]
    in_blocks = {id(p) for ps in blocks for p in ps}
    root = [p for p in _unique(model.parameters(), trainable) if id(p) not in in_blocks]
    return blocks, root


def _numel(units: tuple[list[list[nn.Parameter]], list[nn.Parameter]], world: int):
    """Padded elements of the blocks, and of every unit."""
    blocks, root = units
    in_blocks = sum(_padded(p, world) for ps in blocks for p in ps)
    return in_blocks, in_blocks + sum(_padded(p, world) for p in root)


def _check_int(name: str, value: object, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
    return value


def _check_args(plan: str, world: int, dtype_bytes: int, grad_bytes: int | None):
    if plan not in PLANS:
        raise unknown("plan", "parallelism plan", plan, PLANS)
    _check_int("world", world)
    _check_int("dtype_bytes", dtype_bytes)
    return dtype_bytes if grad_bytes is None else _check_int("grad_bytes", grad_bytes)


# -- communication ------------------------------------------------------------------------------
def volume(
    model,
    plan: str,
    *,
    world: int,
    batch: int,
    seq_len: int,
    dtype_bytes: int = 4,
    grad_bytes: int | None = None,
    reduce_scatter: str = "ring",
) -> Breakdown:
    """Bytes each rank sends in one training step of ``model`` under ``plan`` over ``world``
    ranks, by collective (formulas in the module docstring).

    Args:
        model: an ``nn.Module`` or a model config (built on the meta device).
        plan: "none", "ddp", "fsdp", "tp" or "cp".
        world: N, the ranks of the plan.
        batch: B, the sequences each rank runs (tp: the same B on every rank).
        seq_len: T, the length of each whole sequence (cp: split over the ranks, a multiple of
            2N for the balanced layout).
        dtype_bytes: bytes per element of parameters and activations (4: float32).
        grad_bytes: bytes per element of reduced gradients (default ``dtype_bytes``; 4 under
            FSDP's bf16 mixed precision, which reduces in float32).
        reduce_scatter: "ring", or "all-reduce" where the backend runs reduce-scatter as an
            all-reduce (gloo).
    """
    g = _check_args(plan, world, dtype_bytes, grad_bytes)
    _check_int("batch", batch)
    _check_int("seq_len", seq_len)
    if reduce_scatter not in REDUCE_SCATTER:
        raise ValueError(
            f"reduce_scatter: expected one of {', '.join(REDUCE_SCATTER)}, got {reduce_scatter!r}"
        )
    if plan == "cp" and seq_len % (2 * world):
        raise ValueError(
            f"seq_len: context parallelism over {world} ranks cuts sequences into {2 * world} "
            f"chunks; expected a multiple of {2 * world}, got {seq_len}"
        )
    model = model_of(model)
    n = world
    parts: dict[str, float] = {}
    if n == 1 or plan == "none":
        return Breakdown(plan, n, parts)
    params = sum(p.numel() for p in _unique(model.parameters()))
    if plan in ("ddp", "cp"):
        parts["all-reduce gradients"] = all_reduce_bytes(params * g, n)
    if plan == "fsdp":
        # Frozen parameters are gathered too; only those that train have gradients.
        block_numel, all_numel = _numel(_units(model, trainable=False), n)
        grad_numel = _numel(_units(model), n)[1]
        parts["all-gather forward"] = all_gather_bytes(all_numel * dtype_bytes, n)
        parts["all-gather backward"] = all_gather_bytes(block_numel * dtype_bytes, n)
        parts["reduce-scatter gradients"] = reduce_scatter_bytes(grad_numel * g, n, reduce_scatter)
    if plan == "tp":
        parts.update(_tp_parts(model, n, batch * seq_len, dtype_bytes, g))
    if plan == "cp":
        parts.update(_cp_parts(model, n, batch, seq_len, dtype_bytes))
    return Breakdown(plan, n, parts)


def _tp_parts(model: nn.Module, n: int, tokens: int, b: int, g: int) -> dict[str, float]:
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        SequenceParallel,
    )

    from attnlab.distributed.tp import tp_plan

    forward = backward = norms = 0.0
    for name, style in tp_plan(model, n).items():
        module = model.get_submodule(name)
        if isinstance(style, RowwiseParallel):  # partial outputs summed
            forward += all_reduce_bytes(tokens * module.out_features * b, n)
        elif isinstance(style, ColwiseParallel):  # partial input gradients summed
            backward += all_reduce_bytes(tokens * module.in_features * b, n)
        elif isinstance(style, SequenceParallel):  # a qk-norm's weight over split heads
            norms += all_reduce_bytes(sum(p.numel() for p in _unique(module.parameters())) * g, n)
    parts = {"all-reduce activations forward": forward, "all-reduce input gradients": backward}
    if norms:
        parts["all-reduce qk-norm gradients"] = norms
    return parts


def _cp_parts(model: nn.Module, n: int, batch: int, seq_len: int, b: int) -> dict[str, float]:
    from attnlab.attention.multihead import MultiHeadAttention

    local = seq_len // n
    acc = max(b, 4)  # dK, dV accumulate in at least float32
    kv = sum(
        2 * batch * m.n_kv_heads * local * m.head_dim
        for m in model.modules()
        if isinstance(m, MultiHeadAttention)
    )  # elements of K and V, over all layers
    calls = sum(isinstance(m, MultiHeadAttention) for m in model.modules())
    return {
        "ring k/v forward": (n - 1) * kv * b,
        "ring k/v backward": (n - 1) * kv * b,
        "ring dk/dv backward": n * kv * acc,
        # int64: every rank's positions, once per forward; (Tq, Tk, T, non-finite) per call.
        "all-gather positions and checks": (n - 1) * 8 * (local + 4 * calls),
    }


# -- memory -------------------------------------------------------------------------------------
def _held(model: nn.Module, plan: str, n: int) -> dict[int, float]:
    """Elements of each parameter (by id) one rank keeps between steps under ``plan``."""
    params = _unique(model.parameters(), trainable=False)
    if plan == "fsdp":  # dim-0 shards of the padded parameter
        return {id(p): _padded(p, n) / n for p in params}
    held = {id(p): float(p.numel()) for p in params}
    if plan == "tp":
        from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

        from attnlab.distributed.tp import tp_plan

        for name, style in tp_plan(model, n).items():
            linear = model.get_submodule(name)
            if isinstance(style, ColwiseParallel):  # weight and bias cut by output
                cut = list(linear.parameters(recurse=False))
            elif isinstance(style, RowwiseParallel):  # weight cut by input, bias replicated
                cut = [linear.weight]
            else:
                continue
            for p in cut:
                held[id(p)] = p.numel() / n
    return held


def state_memory(
    model,
    plan: str,
    *,
    world: int,
    dtype_bytes: int = 4,
    grad_bytes: int | None = None,
    optimizer_bytes: int = 8,
) -> Breakdown:
    """Bytes of parameters, gradients and optimizer state each rank holds during a step of
    ``plan`` over ``world`` ranks (the model states of ZeRO, Rajbhandari et al. 2020, section 3;
    activations, buffers and the runtime not counted).

    ``optimizer_bytes``: optimizer state per parameter (AdamW: two float32 moments, 8).
    ``ddp`` and ``cp`` hold everything whole, plus DDP's gradient buckets (a second copy of the
    gradients, the buffers it all-reduces); ``fsdp`` holds 1/N of everything, plus the root's
    parameters and gradients whole through the step and two blocks' gathered at a time (the
    running one and the one prefetched) with one block's gradients; ``tp`` holds 1/N of the
    split weights and the replicated ones whole."""
    g = _check_args(plan, world, dtype_bytes, grad_bytes)
    _check_int("optimizer_bytes", optimizer_bytes, low=0)
    model = model_of(model)
    n = world
    held = _held(model, plan, n)  # parameter id -> elements this rank holds
    params = sum(held[id(p)] for p in _unique(model.parameters(), trainable=False))
    trained = sum(held[id(p)] for p in _unique(model.parameters()))
    parts = {
        "parameters": params * dtype_bytes,
        "gradients": trained * g,
        "optimizer states": trained * optimizer_bytes,
    }
    if plan in ("ddp", "cp") and n > 1:
        parts["gradient buckets"] = trained * g
    if plan == "fsdp" and n > 1:
        blocks, root = _units(model, trainable=False)
        largest = max((sum(p.numel() for p in ps) for ps in blocks), default=0)
        root_numel = sum(p.numel() for p in root)
        parts["gathered units"] = root_numel * (dtype_bytes + g) + largest * (2 * dtype_bytes + g)
    return Breakdown(plan, n, parts)
