"""Run a function on several gloo ranks in fresh processes, for the multi-process tests.

``run_ranks(fn, world, *args)`` starts ``world`` spawned processes (one CPU thread each), joins
them into a gloo process group on a free local port, calls ``fn(rank, world, *args)`` in each and
returns the ranks' return values in rank order. An exception on any rank fails the caller with
that rank's traceback; a rank that does not finish within ``timeout`` seconds is killed and
reported, so a deadlock fails the test instead of hanging the suite.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue
import traceback
from collections.abc import Callable
from typing import Any


def _child(fn, rank: int, world: int, port: int, args: tuple, results, backend: str) -> None:
    import torch
    import torch.distributed as dist

    from attnlab.distributed.world import local_env

    torch.set_num_threads(1)
    os.environ.update(local_env(rank, world, port))
    try:
        if backend == "nccl":
            torch.cuda.set_device(rank)
        dist.init_process_group(backend, rank=rank, world_size=world)
        try:
            # Plain pickle bytes: the queue's own pickler would hand tensors over as shared
            # memory, which is gone once this process exits.
            results.put((rank, True, pickle.dumps(fn(rank, world, *args))))
        finally:
            dist.destroy_process_group()
    except BaseException:
        results.put((rank, False, traceback.format_exc()))


def run_ranks(
    fn: Callable[..., Any], world: int, *args: Any, timeout: float = 180, backend: str = "gloo"
) -> list[Any]:
    """``[fn(0, world, *args), ..., fn(world - 1, world, *args)]``, each run on its own rank
    (``backend="nccl"``: rank r on GPU r)."""
    from attnlab.distributed.world import free_port

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_child, args=(fn, r, world, port, args, results, backend), daemon=True)
        for r in range(world)
    ]
    for p in procs:
        p.start()
    out: dict[int, Any] = {}
    errors = []
    try:
        while len(out) + len(errors) < world:
            try:
                rank, ok, value = results.get(timeout=timeout)
            except queue.Empty:
                missing = sorted(set(range(world)) - set(out))
                raise AssertionError(f"ranks {missing} did not finish in {timeout} s") from None
            if ok:
                out[rank] = pickle.loads(value)
            else:
                errors.append(f"rank {rank} failed:\n{value}")
                break  # the other ranks may wait for it forever
    finally:
        for p in procs:
            p.join(timeout=5 if not errors else 0.1)
            if p.is_alive():
                p.kill()
    if errors:
        raise AssertionError("\n".join(errors))
    return [out[r] for r in range(world)]
