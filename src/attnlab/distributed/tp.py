"""Tensor parallelism (Megatron-LM, Shoeybi et al. 2019) as a plan applied from outside the model.

Every attention module and MLP is split across the ranks of a 1-D device mesh with
:func:`torch.distributed.tensor.parallel.parallelize_module`, as torchtitan's ``parallelize``
and gpt-fast's ``tp.py`` do; the model code never changes:

* attention: ``q_proj``, ``k_proj`` and ``v_proj`` column-split, so each rank holds H / N query
  heads and Hkv / N key/value heads (a contiguous run of each, which keeps every query head with
  its grouped-query key/value head); ``out_proj`` row-split, its partial outputs summed by one
  all-reduce. Cross-attention splits alike.
* MLP: the input projections (``up``; ``gate`` and ``up`` of SwiGLU/GeGLU) column-split, ``down``
  row-split: one all-reduce per MLP.
* qk-norm (a per-head-dim RMSNorm) keeps one weight on every rank but runs on this rank's heads
  as a DTensor sharded over heads, so its weight's gradient is summed over every rank's heads.
* Embeddings, norms, positional tables and the output head stay replicated: every rank holds
  them whole and computes them identically (a vocabulary-parallel embedding and head are not
  part of this plan). They are held as DTensors placed ``Replicate``, so that every parameter
  is a DTensor: gradient clipping and optimizers refuse a mix of DTensors and plain tensors.

Every layer reads and returns plain local tensors (``use_local_output``; replicated parameters
are seen as local tensors while their modules run): attention works on the rank's heads, whose
count it infers from its tensors. A plan is data: :func:`tp_plan` maps module names to
:class:`~torch.distributed.tensor.parallel.ParallelStyle` objects, each module kind
contributing its entries through a function in :data:`PLANS` (:func:`register_plan` adds kinds).

Communication: every row-split projection all-reduces its (B, T, C) output in the forward, and
every column-split one its input's gradient in the backward (q, k and v each on its own, as
DTensor does not fuse them as Megatron does); :mod:`attnlab.distributed.volume` counts the bytes
from :func:`tp_plan`.

What a split cannot serve is refused, not run wrong: parameters of an attention module that
belong to all its heads together (attention sinks (H,), a T5 relative bias (buckets, H), score
functions and Linformer projections with parameters), fixed per-head biases (ALiBi slopes) and
Performer features redrawn on each rank.

Dropout: ranks draw their own masks; seed every rank alike so that replicated activations
stay identical.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    ParallelStyle,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

from attnlab.attention.bias import Bias
from attnlab.attention.multihead import MultiHeadAttention
from attnlab.layers.mlp import MLP, SwiGLU

__all__ = [
    "PLANS",
    "LocalHeads",
    "apply_tp",
    "attention_plan",
    "gated_mlp_plan",
    "mlp_plan",
    "register_plan",
    "tp_plan",
]

Plan = dict[str, ParallelStyle]
# module, its name in the model, tensor-parallel size -> entries relative to the module
PlanFn = Callable[[nn.Module, str, int], Plan]

# The submodules of an attention module that the plan splits or serves (q/k norms); any other
# parameter belongs to all the heads together and cannot be split by head.
_ATTENTION_SPLIT = ("q_proj", "k_proj", "v_proj", "out_proj", "q_norm", "k_norm")


class LocalHeads(ParallelStyle):
    """Sets an attention module's ``n_heads`` and ``n_kv_heads`` to the heads of one rank
    (H / N, Hkv / N), as head pruning does, so that the caches it makes
    (:meth:`~attnlab.attention.multihead.MultiHeadAttention.make_cache`) hold this rank's
    key/value heads. Its projections are split by the other entries of the plan."""

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        n = device_mesh.size()
        module.n_heads //= n
        module.n_kv_heads //= n
        return module


def _split(count: int, field: str, what: str, where: str, tp_size: int) -> None:
    if count % tp_size:
        raise ValueError(
            f"{field}: {where} has {count} {what}, which cannot be split over {tp_size} "
            f"tensor-parallel ranks; expected a multiple of {tp_size}"
        )


def _unsplittable(attn: MultiHeadAttention, where: str) -> list[str]:
    """What of ``attn`` a split by heads cannot serve, one phrase each."""
    prefix = f"{where}." if where else ""
    reasons = [
        f"{prefix}{name} (a parameter shared by or indexed by all heads)"
        for name, _ in attn.named_parameters()
        if name.split(".", 1)[0] not in _ATTENTION_SPLIT
    ]
    if isinstance(attn.position, Bias):
        reasons.append(f"{prefix}position (a fixed score bias over all heads, such as ALiBi)")
    if getattr(attn.kernel, "redraw", False):
        reasons.append(f"{prefix}kernel (random features redrawn on each rank)")
    return reasons


def attention_plan(attn: MultiHeadAttention, where: str, tp_size: int) -> Plan:
    """Heads split across ranks: q/k/v column-split, the output projection row-split.

    ValueError when the query or key/value heads are not a multiple of ``tp_size``, or when
    ``attn`` has state that a split by heads cannot serve (see the module docstring)."""
    name = where or "the attention module"
    _split(attn.n_heads, "n_heads", "query heads", name, tp_size)
    _split(attn.n_kv_heads, "n_kv_heads", "key/value heads", name, tp_size)
    reasons = _unsplittable(attn, where)
    if reasons:
        raise ValueError(
            "model: tensor parallelism splits attention by heads and cannot serve "
            + "; ".join(reasons)
            + ". Supported: q/k/v/output projections, qk-norm, RoPE and absolute positions; "
            "not supported: attention sinks, ALiBi and T5 biases, score functions or kernel "
            "kinds with parameters, redrawn Performer features"
        )
    plan: Plan = {
        "": LocalHeads(),
        "q_proj": ColwiseParallel(),
        "k_proj": ColwiseParallel(),
        "v_proj": ColwiseParallel(),
        "out_proj": RowwiseParallel(),
    }
    # The q/k norms act on (B, H, T, Dh) with H split: "sequence" parallel over dim 1, the
    # heads, so the replicated weight's gradient is reduced over all ranks' heads.
    for norm in ("q_norm", "k_norm"):
        if getattr(attn, norm) is not None:
            plan[norm] = SequenceParallel(sequence_dim=1, use_local_output=True)
    return plan


def mlp_plan(mlp: MLP, where: str, tp_size: int) -> Plan:
    """Hidden units split across ranks: ``up`` column-split, ``down`` row-split."""
    _split(mlp.up.out_features, "hidden", "hidden units", where or "the MLP", tp_size)
    return {"up": ColwiseParallel(), "down": RowwiseParallel()}


def gated_mlp_plan(mlp: SwiGLU, where: str, tp_size: int) -> Plan:
    """Hidden units split across ranks: ``gate`` and ``up`` column-split, ``down`` row-split."""
    _split(mlp.up.out_features, "hidden", "hidden units", where or "the MLP", tp_size)
    return {"gate": ColwiseParallel(), "up": ColwiseParallel(), "down": RowwiseParallel()}


# Module kind -> the function giving its entries of the plan.
PLANS: dict[type[nn.Module], PlanFn] = {
    MultiHeadAttention: attention_plan,
    MLP: mlp_plan,
    SwiGLU: gated_mlp_plan,
}


def register_plan(kind: type[nn.Module], fn: PlanFn) -> None:
    """Split modules of ``kind`` (and its subclasses) with ``fn(module, name, tp_size)``, which
    returns styles by submodule name relative to the module ("" for the module itself)."""
    PLANS[kind] = fn


def _plan_fn(module: nn.Module) -> PlanFn | None:
    for kind in type(module).__mro__:
        if kind in PLANS:
            return PLANS[kind]
    return None


def _check_tp_size(tp_size: object) -> int:
    if isinstance(tp_size, bool) or not isinstance(tp_size, int) or tp_size < 1:
        raise ValueError(f"tp_size: expected a positive int, got {tp_size!r}")
    return tp_size


def tp_plan(model: nn.Module, tp_size: int) -> Plan:
    """The tensor-parallel plan of ``model`` over ``tp_size`` ranks: full module names to
    styles, for :func:`~torch.distributed.tensor.parallel.parallelize_module`.

    Needs no process group: every check of the split (head counts, hidden widths, unsupported
    attention state) happens here, with a ValueError naming the module."""
    tp_size = _check_tp_size(tp_size)
    plan: Plan = {}
    for name, module in model.named_modules():
        fn = _plan_fn(module)
        if fn is None:
            continue
        for child, style in fn(module, name, tp_size).items():
            plan[".".join(p for p in (name, child) if p)] = style
    return plan


def _broadcast_state(model: nn.Module, mesh: DeviceMesh) -> None:
    """Give every rank the parameters and buffers of the mesh's first rank: the replicated
    ones must be equal everywhere, and the split ones are cut from that rank's copy."""
    group = mesh.get_group()
    src = dist.get_global_rank(group, 0)
    with torch.no_grad():
        for t in (*model.parameters(), *model.buffers()):
            dist.broadcast(t.data, src=src, group=group)


# Replicated parameters are held as DTensors (placement Replicate) so that every parameter of a
# split model is a DTensor, which gradient clipping and optimizers need (they refuse a mix of
# DTensors and plain tensors). The model code works on plain tensors: while a module runs,
# forward hooks put local views (``to_local()``, through which gradients flow back to the
# DTensor) in place of its replicated parameters, and put the DTensors back afterwards. The
# model's root swaps every replicated parameter of the model, for code that reads another
# module's parameter (BERT's masked-LM head reads the token embedding); each owner swaps its
# own, for modules called on their own (an encoder's blocks, recomputed blocks).
_REPLICATED = "_tp_replicated"  # a module's attribute: names of its replicated parameters
_SWAPPED = "_tp_swapped"  # a module's attribute: a stack of the swaps its running calls made


def _swap(owners, module: nn.Module) -> None:
    swapped = []
    for owner in owners:
        for name in getattr(owner, _REPLICATED, ()):
            p = owner._parameters[name]
            if isinstance(p, DTensor):
                owner._parameters[name] = p.to_local()
                swapped.append((owner, name, p))
    module.__dict__.setdefault(_SWAPPED, []).append(swapped)


def _swap_own(module: nn.Module, args) -> None:
    _swap((module,), module)


def _swap_all(module: nn.Module, args) -> None:
    _swap(module.modules(), module)


def _restore(module: nn.Module, args, output) -> None:
    stack = module.__dict__.get(_SWAPPED)
    if stack:  # empty when an earlier pre-hook raised before this module's swap
        for owner, name, p in stack.pop():
            owner._parameters[name] = p


def _replicate_rest(model: nn.Module, mesh: DeviceMesh) -> None:
    """Hold every parameter the plan left plain as a replicated DTensor, keeping parameters
    shared by several modules (tied embeddings) shared."""
    made: dict[int, nn.Parameter] = {}
    for module in model.modules():
        names = []
        for name, p in module._parameters.items():
            if p is None or isinstance(p, DTensor):
                continue
            if id(p) not in made:
                local = DTensor.from_local(p.detach(), mesh, [Replicate()], run_check=False)
                made[id(p)] = nn.Parameter(local, requires_grad=p.requires_grad)
            module._parameters[name] = made[id(p)]
            names.append(name)
        if names:
            setattr(module, _REPLICATED, tuple(names))
            if module is not model:
                module.register_forward_pre_hook(_swap_own)
                module.register_forward_hook(_restore, always_call=True)
    model.register_forward_pre_hook(_swap_all)
    model.register_forward_hook(_restore, always_call=True)


def apply_tp(model: nn.Module, mesh: DeviceMesh) -> nn.Module:
    """Split ``model``'s attention heads and MLP hidden units across the ranks of ``mesh`` (a
    1-D :class:`~torch.distributed.device_mesh.DeviceMesh`) in place; returns the model.

    Every parameter becomes a DTensor: split weights sharded over the mesh, the rest
    (embeddings, norms, output head) replicated; ``.full_tensor()`` gives a whole one. The
    model code still sees plain tensors while it runs. Gradient clipping
    (:func:`torch.nn.utils.clip_grad_norm_`) and optimizers work on the parameters as they
    are. Every rank starts from the first rank's weights, and must then be given the same
    inputs. Each attention module's ``n_heads`` and ``n_kv_heads`` become the rank's own counts
    (its caches hold its heads). See the module docstring for what is split and what is
    refused."""
    if not isinstance(mesh, DeviceMesh) or mesh.ndim != 1:
        got = f"a {mesh.ndim}-D DeviceMesh" if isinstance(mesh, DeviceMesh) else repr(mesh)
        raise ValueError(f"mesh: expected a 1-D DeviceMesh, got {got:.80}")
    split = [n for n, p in model.named_parameters() if isinstance(p, DTensor)]
    if split:
        raise ValueError(
            f"model: expected a single-device model, got distributed parameters "
            f"({', '.join(split[:3])}{', ...' if len(split) > 3 else ''})"
        )
    plan = tp_plan(model, mesh.size())
    if not plan:
        raise ValueError(
            f"model: no module to split (expected attention or MLP modules of kinds "
            f"{', '.join(k.__name__ for k in PLANS)}), got a {type(model).__name__}"
        )
    _broadcast_state(model, mesh)
    parallelize_module(model, mesh, plan)
    _replicate_rest(model, mesh)
    return model
