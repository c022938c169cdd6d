"""Bytes sent and memory per rank of each parallelism plan, measured on gloo ranks against
:mod:`attnlab.distributed.volume`; and the longest sequence that trains under a memory limit.

Usage: ``.venv/bin/python benchmarks/distributed.py`` (both parts; ``--part volume`` or
``--part sequence`` for one, ``--quick`` a smoke run on a tiny model, ``-h`` the options).
Prints the machine and markdown tables and writes every figure as JSON to ``--out`` (default
``benchmarks/results/distributed.json``, git-ignored) and the tables beside it
(``distributed.md``); running one part keeps the other's figures in that file.

**Collectives** (with ``--part volume``). The bytes each rank writes for one all-reduce,
all-gather, reduce-scatter and send of a 4 MiB and of a one-float-per-rank payload, against the
ring formulas: what gloo's algorithms send, and its framing per message.

**Volume and memory** (``--part volume``). For each preset (``gpt2``, ``gpt2-medium``), plan
(``ddp``, ``fsdp``, ``tp``, ``cp``) and rank count N (2, 4), N fresh processes are spawned
(``torch.multiprocessing``'s spawn, gloo on the loopback interface, one torch thread each), each
builds the model, applies the plan with :func:`attnlab.distributed.parallelize.parallelize` and
trains: one warm-up step, then ``--steps`` AdamW steps (forward, next-token cross-entropy,
backward, ``step``) on random tokens, B=1 sequence of T=128 tokens per rank (the same sequence
on every rank under tp; under cp one sequence of T tokens cut over the ranks). Per rank:

* *sent/step*: the growth of ``wchar`` in ``/proc/self/io`` (all the process's threads) over
  the measured steps, divided by the steps. gloo's TCP transport writes with ``writev``, which
  Linux counts there; nothing else writes during those steps (no logging, no files). (What it
  receives does not show in ``rchar``, which counts ``read`` calls only: received bytes cannot
  be checked the same way.)
* *computed*: :func:`attnlab.distributed.volume.volume` for the same model, plan, N, B, T,
  with ``reduce_scatter="all-reduce"`` (gloo's reduce-scatter, see below); *ratio* = sent /
  computed.
* *peak RSS*: the process's peak resident set (``VmHWM``, which ``ru_maxrss`` reports too)
  over its whole life, model building included (every plan builds the whole model on every
  rank before it shards it), and over the measured steps alone: after the warm-up, freed heap
  is handed back (``malloc_trim``) and the high-water mark restarted through
  ``/proc/self/clear_refs`` (which restarts ``ru_maxrss`` too, so the mark is read before).
  With the default allocator glibc keeps freed buffers in its heap; ``--mmap-threshold 65536``
  maps every larger buffer on its own, so the peak follows live memory.
* *states*: :func:`attnlab.distributed.volume.state_memory`, the parameters, gradients and
  AdamW moments a rank holds (no activations, no runtime).

A configuration whose ranks together would need more than ``--budget-gib`` (20 GiB; estimated as
N x (the largest of the whole model and its states per rank) + 0.5 GiB of runtime each) is not
run, and the table says so.

**Longest sequence** (``--part sequence``). A small GPT (4 layers, 256 wide, 4 heads of 64, RoPE,
no biases, a 4096-token vocabulary) trains one step (forward, backward, AdamW) on one sequence
of T tokens: alone with the chunked attention backend for N=1, under ``parallel cp`` (ring
attention, zigzag layout) for N=2 and 4. A watchdog thread in every rank ends the trial as soon
as the rank's peak RSS passes ``--limit-gib`` (1 GiB), so a trial too long fails in seconds.
T doubles from 1024 N until a trial fails, then bisects until the gap is at most 1/16 of T,
each trial in fresh processes, T always a multiple of 2N.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import multiprocessing as mp
import os
import queue
import resource
import sys
import threading
import time
import traceback
from pathlib import Path

GIB = 1024**3
MIB = 1024**2
RUNTIME_BYTES = 0.5 * GIB  # a rank's torch, gloo and Python before any model
OVER_LIMIT = 3  # exit status of a rank whose peak RSS passed the limit


# -- measuring inside a rank ----------------------------------------------------------------------
def bytes_written() -> int:
    """``wchar`` of this process (all its threads) from /proc/self/io."""
    with open("/proc/self/io") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key == "wchar":
                return int(value)
    raise RuntimeError("/proc/self/io: no wchar")


def peak_rss() -> int:
    """The process's peak resident set size in bytes (``ru_maxrss`` is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status: no {field}")


def _reset_peak() -> None:
    """Hand freed heap back to the system, then restart the VmHWM high-water mark."""
    from attnlab.memory import release_freed_memory

    gc.collect()
    release_freed_memory()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _join(rank: int, world: int, port: int):
    """This spawned process as rank ``rank`` of a gloo group, one torch thread."""
    import torch
    import torch.distributed as dist

    from attnlab.distributed.world import join, local_env

    torch.set_num_threads(1)
    os.environ.update(local_env(rank, world, port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    return join("cpu")


def _batch(seed: int, vocab: int, batch: int, seq_len: int) -> dict:
    import torch

    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (batch, seq_len + 1), generator=gen)
    return {"x": tokens[:, :-1], "y": tokens[:, 1:]}


def _step(parallel, optimizer, batch: dict) -> float:
    import torch.nn.functional as F

    part = parallel.shard_batch(batch)
    logits = parallel.module(part["x"]).logits
    loss = F.cross_entropy(logits.flatten(0, 1), part["y"].flatten())
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def volume_rank(rank: int, world: int, port: int, case: dict) -> dict:
    """One rank of a volume case: bytes written and peak RSS over ``case["steps"]`` steps after
    a warm-up."""
    import torch
    import torch.distributed as dist

    from attnlab.distributed.parallelize import parallelize
    from attnlab.models import from_preset

    where = _join(rank, world, port)
    torch.manual_seed(0)
    model = from_preset(case["preset"], dropout=0.0, **case.get("overrides", {}))
    parallel = parallelize(model, case["plan"], where)
    optimizer = torch.optim.AdamW(parallel.model.parameters(), lr=1e-4)
    # Data-parallel ranks draw their own sequences; tp and cp ranks share theirs.
    seed = rank if parallel.data_ranks > 1 else 0
    vocab = model.config.vocab_size
    batches = [_batch(seed * 1000 + i, vocab, case["batch"], case["seq_len"]) for i in range(8)]
    losses = [_step(parallel, optimizer, batches[0])]  # warm-up: lazy state, bucket rebuilds
    dist.barrier()
    # Building, sharding and the warm-up; clear_refs then restarts VmHWM and ru_maxrss alike.
    peak_before = _status_bytes("VmHWM")
    _reset_peak()
    before = bytes_written()
    start = time.perf_counter()
    for i in range(case["steps"]):
        losses.append(_step(parallel, optimizer, batches[(i + 1) % len(batches)]))
    seconds = time.perf_counter() - start
    sent = bytes_written() - before
    return {
        "sent": sent / case["steps"],
        "peak_rss": max(peak_before, _status_bytes("VmHWM")),
        "peak_rss_steps": _status_bytes("VmHWM"),
        "seconds_per_step": seconds / case["steps"],
        "losses": losses,
    }


def collectives_rank(rank: int, world: int, port: int, case: dict) -> dict:
    """Bytes this rank writes per call of each collective, for a payload of ``size`` bytes (the
    whole tensor: all-reduced, gathered, or reduce-scattered from) and for a 4-byte one."""
    import torch
    import torch.distributed as dist

    _join(rank, world, port)
    nxt, prev = (rank + 1) % world, (rank - 1) % world

    def ops(numel: int) -> dict:
        whole = torch.ones(numel * world)
        shard, got = torch.ones(numel), torch.empty(numel)

        def ring() -> None:
            for work in dist.batch_isend_irecv(
                [dist.P2POp(dist.isend, whole, nxt), dist.P2POp(dist.irecv, whole.clone(), prev)]
            ):
                work.wait()

        return {
            "all_reduce": lambda: dist.all_reduce(whole),
            "all_gather_into_tensor": lambda: dist.all_gather_into_tensor(whole, shard),
            "reduce_scatter_tensor": lambda: dist.reduce_scatter_tensor(got, whole),
            "send": ring,
        }

    out = {}
    for label, numel in (("small", 1), ("large", case["size"] // 4 // world)):
        for name, fn in ops(numel).items():
            fn()  # warm-up
            dist.barrier()
            before = bytes_written()
            for _ in range(case["repeats"]):
                fn()
            sent = (bytes_written() - before) / case["repeats"]
            out[f"{name} {label}"] = {"payload": numel * world * 4, "sent": sent}
    return out


def run_collectives(args) -> list[dict]:
    """gloo's algorithms as this machine runs them: bytes per rank against the ring formulas."""
    from attnlab.distributed.volume import all_gather_bytes, all_reduce_bytes

    formulas = {
        "all_reduce": all_reduce_bytes,
        "all_gather_into_tensor": all_gather_bytes,
        "reduce_scatter_tensor": all_gather_bytes,  # the ring's (N-1)/N of the input
        "send": lambda size, world: size,
    }
    rows = []
    for world in args.worlds:
        ranks = spawn(collectives_rank, world, {"size": 4 * MIB, "repeats": 4}, args.timeout)
        for key in ranks[0]:
            name = key.split()[0]
            payload = ranks[0][key]["payload"]
            sent = sum(r[key]["sent"] for r in ranks) / world
            ring = formulas[name](payload, world)
            rows.append(
                {"world": world, "collective": name, "payload": payload, "sent": sent,
                 "ring": ring, "ratio": sent / ring, "excess": sent - ring}
            )  # fmt: skip
    return rows


def collectives_table(rows: list[dict]) -> str:
    lines = [
        "| N | collective | payload bytes | sent bytes per rank | ring formula | ratio | "
        "excess bytes |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['world']} | {r['collective']} | {r['payload']:,} | {r['sent']:,.0f} | "
            f"{r['ring']:,.0f} | {r['ratio']:.4f} | {r['excess']:,.0f} |"
        )
    return "\n".join(lines)


def _watch(limit: int) -> None:
    """End this process with OVER_LIMIT as soon as its peak RSS passes ``limit`` bytes."""

    def run() -> None:
        while True:
            if peak_rss() > limit:
                os._exit(OVER_LIMIT)
            time.sleep(0.01)

    threading.Thread(target=run, daemon=True).start()


def sequence_rank(rank: int, world: int, port: int, case: dict) -> dict:
    """One rank of a long-sequence trial: one training step of T = case["seq_len"] tokens."""
    import torch

    from attnlab.distributed.parallelize import parallelize
    from attnlab.distributed.world import SINGLE
    from attnlab.models import GPT, GPTConfig

    _watch(case["limit"])
    if world > 1:
        where = _join(rank, world, port)
    else:
        torch.set_num_threads(1)
        where = SINGLE
    torch.manual_seed(0)
    config = GPTConfig(**case["config"], max_len=case["seq_len"], backend="chunked")
    model = GPT(config)
    parallel = parallelize(model, "cp" if world > 1 else "none", where)
    optimizer = torch.optim.AdamW(parallel.model.parameters(), lr=1e-4)
    start = time.perf_counter()
    loss = _step(parallel, optimizer, _batch(0, config.vocab_size, 1, case["seq_len"]))
    return {
        "peak_rss": peak_rss(),
        "seconds": time.perf_counter() - start,
        "loss": loss,
    }


# -- spawning ranks -------------------------------------------------------------------------------
def _child(fn, rank: int, world: int, port: int, case: dict, results) -> None:
    # The process group is left to the process's exit: the other ranks may be gone already.
    try:
        results.put((rank, True, json.dumps(fn(rank, world, port, case))))
    except BaseException:
        results.put((rank, False, traceback.format_exc()))


class OverLimit(Exception):
    """A rank passed the memory limit."""


def spawn(fn, world: int, case: dict, timeout: float) -> list[dict]:
    """``[fn(0, world, port, case), ...]`` run in ``world`` fresh processes. OverLimit when a
    rank ended with OVER_LIMIT; RuntimeError with its traceback when a rank failed."""
    from attnlab.distributed.world import free_port

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_child, args=(fn, r, world, port, case, results), daemon=True)
        for r in range(world)
    ]
    for p in procs:
        p.start()
    out: dict[int, dict] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(out) < world:
            try:
                rank, ok, value = results.get(timeout=0.2)
            except queue.Empty:
                if any(p.exitcode == OVER_LIMIT for p in procs):
                    raise OverLimit() from None
                dead = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(
                        f"ranks {dead} died (exit {procs[dead[0]].exitcode})"
                    ) from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"ranks did not finish within {timeout} s") from None
                continue
            if not ok:
                raise RuntimeError(f"rank {rank} failed:\n{value}")
            out[rank] = json.loads(value)
    finally:
        for p in procs:
            p.join(timeout=10 if len(out) == world else 0)
            if p.is_alive():
                p.kill()
                p.join()
    return [out[r] for r in range(world)]


# -- part 1: volume and memory --------------------------------------------------------------------
def estimate_bytes(model, plan: str, world: int) -> float:
    """What ``world`` ranks of ``plan`` need together, roughly: each builds the whole model,
    then holds its model states (volume.state_memory), plus its runtime."""
    from attnlab.distributed.volume import state_memory

    whole = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values()) * 4
    states = state_memory(model, plan, world=world).total
    return world * (max(whole, states) + RUNTIME_BYTES)


def run_volume(args) -> list[dict]:
    from attnlab.distributed.volume import model_of, state_memory, volume
    from attnlab.models import GPTConfig

    rows = []
    for preset in args.presets:
        config = GPTConfig.from_preset(preset, dropout=0.0, **args.overrides)
        model = model_of(config)  # on the meta device: shapes only
        for world in args.worlds:
            for plan in args.plans:
                row = {"preset": preset, "plan": plan, "world": world}
                row["params"] = sum(
                    p.numel() for p in {id(p): p for p in model.parameters()}.values()
                )
                need = estimate_bytes(model, plan, world)
                row["estimate_gib"] = need / GIB
                computed = volume(
                    model,
                    plan,
                    world=world,
                    batch=args.batch,
                    seq_len=args.seq_len,
                    reduce_scatter="all-reduce",
                )
                row["computed"] = computed.total
                row["computed_parts"] = computed.parts
                row["computed_ring"] = volume(
                    model, plan, world=world, batch=args.batch, seq_len=args.seq_len
                ).total
                row["states"] = state_memory(model, plan, world=world).total
                if need > args.budget_gib * GIB:
                    row["skipped"] = (
                        f"needs ~{need / GIB:.0f} GiB over {world} ranks "
                        f"(budget {args.budget_gib:g} GiB)"
                    )
                    print(f"{preset} {plan} N={world}: skipped, {row['skipped']}", file=sys.stderr)
                    rows.append(row)
                    continue
                case = {
                    "preset": preset,
                    "overrides": args.overrides,
                    "plan": plan,
                    "batch": args.batch,
                    "seq_len": args.seq_len,
                    "steps": args.steps,
                }
                t0 = time.perf_counter()
                ranks = spawn(volume_rank, world, case, timeout=args.timeout)
                row["ranks"] = ranks
                row["sent"] = sum(r["sent"] for r in ranks) / world
                row["sent_max"] = max(r["sent"] for r in ranks)
                row["ratio"] = row["sent"] / computed.total
                row["peak_rss"] = max(r["peak_rss"] for r in ranks)
                row["peak_rss_steps"] = max(r["peak_rss_steps"] for r in ranks)
                row["seconds_per_step"] = max(r["seconds_per_step"] for r in ranks)
                print(
                    f"{preset} {plan} N={world}: sent {row['sent'] / MIB:.1f} MiB/step, "
                    f"computed {computed.total / MIB:.1f}, ratio {row['ratio']:.4f}, peak RSS "
                    f"{row['peak_rss'] / MIB:.0f} MiB ({time.perf_counter() - t0:.0f} s)",
                    file=sys.stderr,
                )
                rows.append(row)
    return rows


def volume_table(rows: list[dict]) -> str:
    lines = [
        "| model | plan | N | sent MiB/step (per rank) | computed MiB | ratio | "
        "computed, ring reduce-scatter | states MiB (computed) | peak RSS MiB: process | "
        "steps |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        head = f"| {r['preset']} | {r['plan']} | {r['world']} |"
        if "skipped" in r:
            lines.append(
                f"{head} not run: {r['skipped']} | {r['computed'] / MIB:.1f} | | "
                f"{r['computed_ring'] / MIB:.1f} | {r['states'] / MIB:.0f} | | |"
            )
            continue
        lines.append(
            f"{head} {r['sent'] / MIB:.2f} | {r['computed'] / MIB:.2f} | {r['ratio']:.4f} | "
            f"{r['computed_ring'] / MIB:.2f} | {r['states'] / MIB:.0f} | "
            f"{r['peak_rss'] / MIB:.0f} | {r['peak_rss_steps'] / MIB:.0f} |"
        )
    return "\n".join(lines)


# -- part 2: the longest sequence -----------------------------------------------------------------
def trial(world: int, seq_len: int, args) -> dict:
    """One training step of ``seq_len`` tokens over ``world`` ranks: fits or not, and how."""
    case = {"config": args.seq_config, "seq_len": seq_len, "limit": int(args.limit_gib * GIB)}
    t0 = time.perf_counter()
    try:
        ranks = spawn(sequence_rank, world, case, timeout=args.timeout)
    except OverLimit:
        result = {"seq_len": seq_len, "fits": False, "why": "peak RSS over the limit"}
    else:
        peak = max(r["peak_rss"] for r in ranks)
        result = {
            "seq_len": seq_len,
            "fits": peak <= case["limit"],
            "peak_rss": peak,
            "seconds": max(r["seconds"] for r in ranks),
        }
    result["wall"] = time.perf_counter() - t0
    print(
        f"sequence N={world} T={seq_len}: {'fits' if result['fits'] else 'over'}"
        + (f", peak {result['peak_rss'] / MIB:.0f} MiB" if "peak_rss" in result else "")
        + f" ({result['wall']:.0f} s)",
        file=sys.stderr,
    )
    return result


def longest(world: int, args) -> dict:
    """The largest T (a multiple of 2N) whose step fits: doubling, then bisection down to a gap
    of 1/16 of T."""
    unit = 2 * world
    trials = []
    fits, over = 0, None
    t = args.seq_start * world
    while over is None:
        result = trial(world, t, args)
        trials.append(result)
        if result["fits"]:
            fits, t = t, 2 * t
        else:
            over = t
    while over - fits > max(unit, fits // 16):
        mid = (fits + over) // 2 // unit * unit
        if mid in (fits, over):
            break
        result = trial(world, mid, args)
        trials.append(result)
        if result["fits"]:
            fits = mid
        else:
            over = mid
    best = max((r for r in trials if r["fits"]), key=lambda r: r["seq_len"], default=None)
    return {"world": world, "longest": fits, "first_over": over, "best": best, "trials": trials}


def sequence_table(rows: list[dict], limit_gib: float) -> str:
    lines = [
        f"| N | longest T under {limit_gib:g} GiB per rank | T per rank | first T over | "
        "peak RSS MiB at the longest | step s | x N=1 |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = rows[0]["longest"] if rows and rows[0]["world"] == 1 else None
    for r in rows:
        best = r["best"] or {}
        gain = f"{r['longest'] / base:.2f}" if base else ""
        lines.append(
            f"| {r['world']} | {r['longest']} | {r['longest'] // r['world']} | "
            f"{r['first_over']} | {best.get('peak_rss', 0) / MIB:.0f} | "
            f"{best.get('seconds', 0):.1f} | {gain} |"
        )
    return "\n".join(lines)


# -- main ---------------------------------------------------------------------------------------
def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--part", choices=("all", "volume", "sequence"), default="all")
    add("--presets", type=_names, default=["gpt2", "gpt2-medium"], help="model presets")
    add("--plans", type=_names, default=["ddp", "fsdp", "tp", "cp"], help="plans")
    add("--worlds", type=_ints, default=[2, 4], help="rank counts of the volume part")
    add("--batch", type=int, default=1, help="sequences per rank")
    add("--seq-len", type=int, default=128, help="tokens per sequence (cp: a multiple of 2N)")
    add("--steps", type=int, default=3, help="measured steps after the warm-up")
    add("--budget-gib", type=float, default=20.0, help="memory all ranks may use together")
    add("--limit-gib", type=float, default=1.0, help="peak RSS per rank, sequence part")
    add("--seq-worlds", type=_ints, default=[1, 2, 4], help="rank counts of the sequence part")
    add("--seq-start", type=int, default=1024, help="first T of the search, per rank")
    add("--vocab", type=int, default=4096, help="vocabulary of the sequence part's model")
    add("--timeout", type=float, default=900.0, help="seconds a spawn may take")
    add("--quick", action="store_true", help="smoke run: tiny models, small limits")
    add(
        "--mmap-threshold",
        type=int,
        help="MALLOC_MMAP_THRESHOLD_ of the ranks: buffers above it are mapped and unmapped "
        "(peak RSS then follows live memory, not glibc's retained heap)",
    )
    add("--out", type=Path, default=Path("benchmarks/results/distributed.json"), help="JSON")
    args = parser.parse_args()
    if args.mmap_threshold is not None:  # read by glibc as each spawned rank starts
        os.environ["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
    args.overrides = {}
    args.seq_config = {
        "n_layer": 4,
        "dim": 256,
        "n_head": 4,
        "vocab_size": args.vocab,
        "position": "rope",
        "bias": False,
        "dropout": 0.0,
    }
    if args.quick:
        args.presets = ["gpt2"]
        args.overrides = {"n_layer": 2, "dim": 64, "n_head": 4, "vocab_size": 512}
        args.steps = 2
        args.seq_config.update(n_layer=2, dim=64, vocab_size=512)
        args.limit_gib = min(args.limit_gib, 0.6)
        args.seq_start = 256
        args.seq_worlds = [w for w in args.seq_worlds if w <= 2]

    from attnlab.bench.harness import machine_info
    from attnlab.files import atomic_write_text
    from attnlab.precision import cpu_flags

    wanted = {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}
    machine = {**machine_info(), "flags": sorted(cpu_flags() & wanted)}
    print(
        f"{machine['cpu']}, {machine['cores']} cores, flags {' '.join(machine['flags'])}, "
        f"torch {machine['torch']}"
    )
    # Running one part keeps the other part's figures from an earlier run in the same file.
    record: dict = {}
    if args.part != "all" and args.out.exists():
        with contextlib.suppress(ValueError):
            record = json.loads(args.out.read_text())
    record["machine"] = machine
    record.setdefault("args", {})[args.part] = json.loads(
        json.dumps({k: v for k, v in vars(args).items() if k != "out"}, default=str)
    )

    def save() -> str:
        tables = []
        if "collectives" in record:
            tables.append(
                "gloo collectives, bytes each rank writes per call (mean over ranks)\n\n"
                + collectives_table(record["collectives"])
            )
        if "volume" in record:
            a = record["args"].get("volume", record["args"].get("all", {}))
            tables.append(
                f"Per-step bytes sent and memory per rank, B={a.get('batch')} "
                f"T={a.get('seq_len')}, {a.get('steps')} steps after a warm-up\n\n"
                + volume_table(record["volume"])
            )
        if "sequence" in record:
            a = record["args"].get("sequence", record["args"].get("all", {}))
            tables.append(
                f"Longest sequence, one training step, {a.get('seq_config')}\n\n"
                + sequence_table(record["sequence"], a.get("limit_gib", 0))
            )
        text = "\n\n".join(tables)
        atomic_write_text(args.out, json.dumps(record, indent=1) + "\n")
        atomic_write_text(args.out.with_suffix(".md"), text + "\n")
        return text

    if args.part in ("all", "volume"):
        record["collectives"] = run_collectives(args)
        save()
        record["volume"] = run_volume(args)
        save()
    if args.part in ("all", "sequence"):
        record["sequence"] = [longest(w, args) for w in args.seq_worlds]
    print(save())


if __name__ == "__main__":
    main()
