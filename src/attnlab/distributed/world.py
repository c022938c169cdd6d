"""The process group a run belongs to: who this process is, on which device, and how it agrees
with the others.

A distributed run is launched by ``torchrun``, which starts one process per rank and tells each
its place through the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``). :func:`join` reads it, picks the device (``cuda:LOCAL_RANK`` on a GPU machine,
the CPU otherwise) and the collective backend that fits it (NCCL on CUDA, gloo on the CPU), and
joins the process group with a timeout, so a rank that stops answering makes the others fail
with an error instead of waiting forever. A process that was not launched that way is a world
of one (:data:`SINGLE`), and every collective below is then a no-op.

Rank 0 is the *main* rank: it alone prints progress and writes logs, plots and samples. Checks
whose outcome every rank must share (a run directory in use, a missing checkpoint) run on rank
0 and are handed to all ranks by :meth:`World.agree`, so every rank stops with the same error
rather than some of them waiting for a rank that has already left.
"""

from __future__ import annotations

import datetime
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
CPU = torch.device("cpu")


@dataclass(frozen=True)
class World:
    """This process's place in the run: rank ``rank`` of ``size``, on ``device``."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = CPU
    backend: str | None = None  # "gloo" or "nccl"; None for a world of one
    timeout: float | None = None  # seconds a collective may wait for the other ranks

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value`` on every rank (any picklable object)."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def agree(self, check: Callable[[], T]) -> T:
        """Run ``check`` on rank 0 and give every rank its result, or raise its ValueError /
        TypeError on every rank (rank 0's file-system checks, shared so that no rank waits for
        one that has stopped)."""
        outcome: tuple[str, Any]
        if self.is_main:
            try:
                outcome = ("ok", check())
            except (ValueError, TypeError) as exc:
                outcome = (type(exc).__name__, str(exc))
        else:
            outcome = ("ok", None)
        kind, value = self.broadcast(outcome)
        if kind == "ValueError":
            raise ValueError(value)
        if kind == "TypeError":
            raise TypeError(value)
        return value

    def mean(self, value: float) -> float:
        """The mean of ``value`` over the ranks."""
        if not self.distributed:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(t)
        return float(t.item()) / self.size

    def gather(self, value: T) -> list[T]:
        """Every rank's ``value``, in rank order, on every rank."""
        if not self.distributed:
            return [value]
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, value)
        return out

    def _comm_device(self) -> torch.device:
        return self.device if self.backend == "nccl" else torch.device("cpu")


SINGLE = World()
_joined = SINGLE  # the world this process joined last


def launched() -> bool:
    """Whether this process is a rank of a process group: started by ``torchrun`` (or anything
    that sets its variables; one rank counts too), or one that joined a group already."""
    return ("RANK" in os.environ and "WORLD_SIZE" in os.environ) or dist.is_initialized()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now, for a one-machine group's rendezvous."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def local_env(rank: int, world: int, port: int, host: str = "127.0.0.1") -> dict[str, str]:
    """The variables torchrun gives rank ``rank`` of a ``world``-process job on one machine
    whose rendezvous is ``host:port``: for processes started another way (``mp.spawn``)."""
    return {
        "MASTER_ADDR": host,
        "MASTER_PORT": str(port),
        "RANK": str(rank),
        "WORLD_SIZE": str(world),
        "LOCAL_RANK": str(rank),
    }


def _env_int(name: str) -> int:
    text = os.environ.get(name, "0")
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{name}: expected an int (set by torchrun), got {text!r}") from None


def join(device: str = "auto", *, timeout: float = 600.0) -> World:
    """This process's :class:`World`: joins the process group torchrun described (reusing one
    that is already initialised), or :data:`SINGLE` when the process runs alone.

    ``device``: "auto" (the local GPU when CUDA is present), "cpu" or "cuda". ``timeout``: the
    seconds any collective may wait before it fails (a rank that died or hangs)."""
    if not launched():
        return SINGLE
    if not dist.is_available():
        raise ValueError("parallel: this torch build has no torch.distributed")
    if timeout <= 0:
        raise ValueError(f"timeout: expected seconds > 0, got {timeout}")
    local_rank = _env_int("LOCAL_RANK")
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        if not torch.cuda.is_available():
            raise ValueError(f"device: {device!r} requested but no CUDA device is available")
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK: {local_rank}, but this machine has {torch.cuda.device_count()} "
                "CUDA devices; start at most one rank per GPU (torchrun --nproc-per-node)"
            )
        where = torch.device("cuda", local_rank)
        torch.cuda.set_device(where)
    else:
        where = torch.device("cpu")
    backend = "nccl" if cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(
            backend,
            timeout=datetime.timedelta(seconds=timeout),
            device_id=where if cuda else None,
        )
    else:  # a caller (a test, a notebook) set the group up: take its backend
        backend = dist.get_backend()
    global _joined
    _joined = World(
        rank=dist.get_rank(),
        size=dist.get_world_size(),
        local_rank=local_rank,
        device=where,
        backend=str(backend),
        timeout=timeout,
    )
    return _joined


# Words of the errors torch.distributed raises when a peer is gone or silent.
_LOST = (
    "connection closed",
    "connection reset",
    "timed out",
    "timeout",
    "broken pipe",
    "gloo",
    "nccl",
    "socket",
    "peer",
)


def collective_failure(exc: BaseException) -> str | None:
    """One line for ``exc`` when it is a collective that failed because another rank died,
    raised or stopped answering (torch.distributed's ``DistError`` family, or a RuntimeError
    from gloo/NCCL); None for any other error."""
    dist_error = getattr(dist, "DistError", ())
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if not (
        isinstance(exc, dist_error)
        or (isinstance(exc, RuntimeError) and any(w in str(exc).lower() for w in _LOST))
    ):
        return None
    timeout = f" within dist_timeout={_joined.timeout:g} s" if _joined.timeout else ""
    return (
        f"stopped: {_who_fell_behind()} failed, was killed or did not answer{timeout}; {text[:200]}"
    )


_FAILED_KEY = "attnlab/failed/"


def _store():
    """The process group's key-value store (torchrun's rendezvous store), or None."""
    try:
        return dist.distributed_c10d._get_default_store()
    except Exception:
        return None


def _who_fell_behind(wait: float = 3.0) -> str:
    """Which rank stopped the run: every rank whose collective fails notes it in the launcher's
    store and waits up to ``wait`` seconds for the others to do the same; the ranks that never
    do are the ones that died or hang. "another rank" when the store cannot tell."""
    import time

    store = _store() if dist.is_initialized() else None
    if store is None or _joined.size < 2:
        return "another rank"
    keys = [f"{_FAILED_KEY}{r}" for r in range(_joined.size)]
    try:
        store.set(keys[_joined.rank], "1")
        deadline = time.monotonic() + wait
        while True:
            silent = [r for r, key in enumerate(keys) if not store.check([key])]
            if not silent or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    except Exception:
        return "another rank"
    if not silent:
        return "another rank"
    names = ", ".join(map(str, silent))
    return f"rank {names}" if len(silent) == 1 else f"ranks {names}"


def leave() -> None:
    """Leave the process group (at the end of a run launched by torchrun)."""
    if dist.is_initialized():
        dist.destroy_process_group()


__all__ = ["SINGLE", "World", "collective_failure", "join", "launched", "leave"]
