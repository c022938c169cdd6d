"""Context parallelism: every sequence is split across the ranks of a group, attention is a ring.

A model under :class:`ContextParallel` sees only this rank's share of each sequence's tokens,
at their global positions; its attention layers run the ``"ring"`` backend
(:mod:`attnlab.attention.backends.ring`, Liu et al. 2023 "Ring Attention with Blockwise
Transformers for Near-Infinite Context"), which passes key/value blocks around the group so that
every query still attends to the whole sequence, under the model's masks (causal, windows,
ALiBi, ...) evaluated at global positions. Everything else in a Transformer works token by token
and needs no communication. Parameters are replicated: average their gradients over the group
(DDP over the same ranks does it) and the update is the one-process update on whole sequences.

Which positions a rank holds is a :class:`Layout`. Contiguous shards are simplest, but under a
causal mask rank 0 then attends to one block and the last rank to all W of them. The balanced
("zigzag") layout cuts the sequence into 2W chunks and gives rank r chunks r and 2W - 1 - r, an
early one and a late one, so every rank does about the same work (the load balancing of Llama 3's
context parallelism, Dubey et al. 2024 "The Llama 3 Herd of Models", section 3.3.2).

Shapes: B batch, T whole-sequence length, Tl = T / W local length, W ranks in the group.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from attnlab.attention.backends.ring import ring_context
from attnlab.attention.multihead import MultiHeadAttention


@dataclass(frozen=True)
class Layout:
    """Which global positions each of ``world`` ranks holds: two zigzag chunks each when
    ``balanced`` (rank r: chunks r and 2W - 1 - r of 2W), one contiguous chunk otherwise."""

    world: int
    balanced: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.world, bool) or not isinstance(self.world, int) or self.world < 1:
            raise ValueError(f"world: expected a positive int, got {self.world!r}")
        if not isinstance(self.balanced, bool):
            raise TypeError(f"balanced: expected a bool, got {type(self.balanced).__name__}")

    @property
    def chunks(self) -> int:
        """Equal chunks the sequence is cut into: 2W balanced, W contiguous."""
        return 2 * self.world if self.balanced else self.world

    def check(self, total_len: int, name: str = "total_len") -> int:
        """``total_len`` when the layout can split it (a multiple of :attr:`chunks`);
        ValueError naming ``name`` otherwise."""
        if isinstance(total_len, bool) or not isinstance(total_len, int) or total_len < 1:
            raise ValueError(f"{name}: expected a positive int, got {total_len!r}")
        if total_len % self.chunks:
            kind = "balanced" if self.balanced else "contiguous"
            raise ValueError(
                f"{name}: a {kind} layout over {self.world} ranks cuts sequences into "
                f"{self.chunks} equal chunks; expected a multiple of {self.chunks}, got {total_len}"
            )
        return total_len

    def chunk_ids(self, rank: int) -> tuple[int, ...]:
        """The chunks rank ``rank`` holds, in the order of its local tokens."""
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < self.world:
            raise ValueError(f"rank: expected an int in [0, {self.world}), got {rank!r}")
        return (rank, self.chunks - 1 - rank) if self.balanced else (rank,)

    def positions(self, rank: int, total_len: int, device: torch.device | str = "cpu") -> Tensor:
        """(Tl,) the global positions of rank ``rank``'s tokens, ascending."""
        size = self.check(total_len) // self.chunks
        return torch.cat(
            [torch.arange(c * size, (c + 1) * size, device=device) for c in self.chunk_ids(rank)]
        )

    def shard(self, x: Tensor, rank: int, dim: int = 1) -> Tensor:
        """Rank ``rank``'s part of ``x`` along ``dim`` (the whole sequence's length)."""
        total = self.check(x.shape[dim], f"x.shape[{dim}]")
        size = total // self.chunks
        return torch.cat([x.narrow(dim, c * size, size) for c in self.chunk_ids(rank)], dim)

    def unshard(self, shards: Sequence[Tensor], dim: int = 1) -> Tensor:
        """The whole sequence from every rank's part along ``dim`` (in rank order): the inverse
        of :meth:`shard`."""
        if len(shards) != self.world:
            raise ValueError(f"shards: expected {self.world} (one per rank), got {len(shards)}")
        local, per_rank = shards[0].shape[dim], len(self.chunk_ids(0))
        if local % per_rank:
            raise ValueError(
                f"shards: expected a length along dim {dim} that splits into {per_rank} equal "
                f"chunks, got {local}"
            )
        size = local // per_rank
        pieces: dict[int, Tensor] = {}
        for rank, part in enumerate(shards):
            if part.shape[dim] != local:
                raise ValueError(
                    f"shards: expected length {local} along dim {dim} like rank 0's, got "
                    f"{part.shape[dim]} from rank {rank}"
                )
            for i, c in enumerate(self.chunk_ids(rank)):
                pieces[c] = part.narrow(dim, i * size, size)
        return torch.cat([pieces[c] for c in range(self.chunks)], dim)


class ContextParallel(nn.Module):
    """``model`` run on this rank's share of each sequence, attention as a ring over ``group``.

    ``forward(input_ids, **kwargs)`` takes this rank's tokens (B, Tl), cut by :meth:`shard`, and
    returns the model's output for them (logits (B, Tl, V)): the whole sequence is W * Tl tokens.
    Every attention module of ``model`` is switched to the ``"ring"`` backend (its config keeps
    the backend it was built with; :meth:`release` switches the modules back).
    Compute a loss on pre-shifted targets cut by :meth:`shard` (an LM batch's ``y``), not with
    ``labels=``, which shifts within the shard. Average gradients over the group.
    The ring context is active during ``forward`` only: the backward pass needs none, and
    activation checkpointing (:func:`attnlab.distributed.parallelize.checkpoint_activations`)
    re-enters it for the blocks it re-runs.

    Args:
        model: a model whose forward accepts ``positions`` (GPT).
        group: the context-parallel process group (None: the default group).
        balanced: zigzag layout (see :class:`Layout`), the right choice for causal models.
    """

    def __init__(
        self, model: nn.Module, group: dist.ProcessGroup | None = None, *, balanced: bool = True
    ) -> None:
        super().__init__()
        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError(
                "group: context parallelism needs torch.distributed initialised "
                "(dist.init_process_group), got none"
            )
        # The modules' backend, not the config's: a checkpoint records the backend the model
        # runs with on its own (see release()).
        self._backends = {}
        for module in model.modules():
            if isinstance(module, MultiHeadAttention):
                self._backends[module] = module.backend
                module.backend = "ring"
        self.model = model
        self.group = group
        self.layout = Layout(dist.get_world_size(group), balanced)

    @property
    def rank(self) -> int:
        """This process's rank in the group."""
        return dist.get_rank(self.group)

    def positions(self, local_len: int, device: torch.device | str = "cpu") -> Tensor:
        """(Tl,) the global positions of this rank's ``local_len`` tokens; ValueError when the
        layout cannot cut W * Tl tokens into its equal chunks."""
        world, chunks = self.layout.world, self.layout.chunks
        if (local_len * world) % chunks:
            raise ValueError(
                f"input_ids: the whole sequence (W * Tl = {world} * {local_len}) must be a "
                f"multiple of {chunks} for this layout, so Tl a multiple of {chunks // world}; "
                f"got Tl={local_len}"
            )
        return self.layout.positions(self.rank, local_len * world, device)

    def forward(self, input_ids: Tensor, **kwargs):
        for name, why in _REFUSED.items():
            if kwargs.get(name) is not None:
                raise ValueError(f"{name}: not supported under context parallelism: {why}")
        if not isinstance(input_ids, Tensor) or input_ids.dim() != 2:
            got = tuple(input_ids.shape) if isinstance(input_ids, Tensor) else type(input_ids)
            raise ValueError(f"input_ids: expected this rank's tokens (B, Tl), got {got}")
        positions = self.positions(input_ids.shape[1], input_ids.device)
        total = input_ids.shape[1] * self.layout.world
        with ring_context(self.group, positions, total_len=total):
            return self.model(input_ids, positions=positions, **kwargs)

    def release(self) -> nn.Module:
        """The model with its attention backends as they were before it was wrapped (to run
        on whole sequences in one process, e.g. to generate); the wrapper is unusable after."""
        for module, backend in self._backends.items():
            module.backend = backend
        return self.model

    def shard(self, x: Tensor, dim: int = 1) -> Tensor:
        """This rank's part of ``x`` (whole sequences along ``dim``): inputs and targets alike."""
        return self.layout.shard(x, self.rank, dim)

    def gather(self, x: Tensor, dim: int = 1) -> Tensor:
        """Whole sequences from every rank's part ``x`` along ``dim`` (all-gather, then sequence
        order); not differentiable."""
        parts = [torch.empty_like(x) for _ in range(self.layout.world)]
        dist.all_gather(parts, x.contiguous(), group=self.group)
        return self.layout.unshard(parts, dim)


# Model arguments the wrapper cannot pass on, and why.
_REFUSED = {
    "positions": "the wrapper sets them from the layout",
    "attention_mask": "a padding mask over the local tokens cannot cover the whole sequence",
    "caches": "incremental decoding runs on whole sequences",
    "labels": "the loss would shift targets within a shard; pass shifted targets cut by shard()",
}
