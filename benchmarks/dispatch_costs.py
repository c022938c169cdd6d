"""Measure the constants of auto's cost model (attnlab.attention.dispatch.COSTS) on this machine.

Usage: ``python benchmarks/dispatch_costs.py`` (about 4 minutes on 2 CPU cores); ``-h`` lists
the options. For each sliding-window case it times the ``sdpa`` and ``chunked`` backends
alternately in this process (median per backend), prints measured and estimated times side by
side with the backend "auto" picks, then fits the constants by least squares on relative error:
dense SDPA's seconds per unit and per mask entry, chunked's seconds per unit and per partially
masked tile. Cases at two head shapes separate the per-unit costs from the others. On a shared
machine run it when nothing else is busy: chunked's many small operations slow down far more
than SDPA's when another process takes a core, and the fit would follow.
Copy the table into benchmarks/README.md with the machine's name.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from attnlab.attention import attend, masks
from attnlab.attention.call import make_call
from attnlab.attention.dispatch import COSTS, estimated_seconds, is_sparse, work
from attnlab.bench import machine_info
from attnlab.bench.harness import time_fn


def _ints(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _shapes(text: str) -> list[tuple[int, int]]:
    try:
        pairs = [tuple(int(x) for x in part.split("x")) for part in text.split(",") if part]
    except ValueError:
        pairs = []
    if not pairs or any(len(p) != 2 or min(p) < 1 for p in pairs):
        raise argparse.ArgumentTypeError(f"expected HxD pairs like 8x64,2x32, got {text!r}")
    return pairs


def _cpu_flags() -> str:
    """The CPU's bfloat16 and AMX flags from /proc/cpuinfo (they change what is fast)."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f if line.startswith("flags")]
    except OSError:
        return "unknown"
    flags = lines[0].split(":", 1)[1].split() if lines else []
    return " ".join(sorted(f for f in flags if f in ("amx_bf16", "amx_tile", "avx512_bf16")))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=_ints, default=_ints("512,1024,2048,4096"))
    p.add_argument("--windows", type=_ints, default=_ints("64,256,1024"))
    p.add_argument("--shapes", type=_shapes, default=_shapes("8x64,2x32"), help="HxD list")
    p.add_argument("--modes", default="fwd,fwd+bwd", help="fwd, fwd+bwd or both")
    p.add_argument("--min-seconds", type=float, default=1.0, help="timed seconds per case")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    return p


def _case(T: int, window: int, mode: str, heads: int, d: int):
    grad = mode == "fwd+bwd"
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, heads, T, d, generator=gen).requires_grad_(grad) for _ in range(3))
    dout = torch.randn(1, heads, T, d, generator=gen)
    mask = masks.sliding_window(window)

    def runner(backend: str):
        def run() -> None:
            out = attend(q, k, v, mask=mask, backend=backend)
            if grad:
                q.grad = k.grad = v.grad = None
                out.backward(dout)

        return run

    call = make_call(q, k, v, mask=mask, bias=None, scale=None, dropout_p=0.0, return_weights=False)
    return call, runner("sdpa"), runner("chunked")


def _interleaved(first, second, min_seconds: float) -> tuple[float, float]:
    first(), second()  # warm-up
    a: list[float] = []
    b: list[float] = []
    while len(a) < 5 or (sum(a) + sum(b) < min_seconds and len(a) < 200):
        a.append(time_fn(first, repeats=1, warmup=0).median_s)
        b.append(time_fn(second, repeats=1, warmup=0).median_s)
    return statistics.median(a), statistics.median(b)


def _lstsq(rows: list[dict], columns: list[str], target: str) -> list[float]:
    """Least squares on relative error: each row weighted by 1 / its measured time."""
    x = torch.tensor([[r[c] for c in columns] for r in rows], dtype=torch.float64)
    y = torch.tensor([r[target] for r in rows], dtype=torch.float64)
    return torch.linalg.lstsq(x / y[:, None], torch.ones_like(y)).solution.tolist()


def _fit(rows: list[dict]) -> dict[str, float]:
    """t_sdpa = dense_s * units + mask_s * mask entries; t_chunked = tiled_s * units +
    edge_s * partially masked tiles (call_s is left at 0 on the CPU: the fit finds it within
    noise of 0)."""
    dense = _lstsq(rows, ["dense_units", "mask_entries"], "sdpa_s")
    tiled = _lstsq(rows, ["tiled_units", "edge_tiles"], "chunked_s")
    names = ["dense_s", "mask_s", "tiled_s", "edge_s"]
    return dict(zip(names, dense + tiled, strict=True))


def main() -> None:
    args = _parser().parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    print(machine_info(), "| bf16/AMX flags:", _cpu_flags() or "none")
    header = (
        f"{'mode':8} {'HxD':>5} {'T':>5} {'window':>6}  {'sdpa ms':>8} {'chunked ms':>10}  "
        f"{'est sdpa':>8} {'est chunked':>11}  {'faster':>7}  auto"
    )
    for mode in modes:
        rows = []
        print(header)
        costs = COSTS[("cpu", "train" if mode == "fwd+bwd" else "fwd")]
        for heads, d in args.shapes:
            for T in args.lengths:
                for window in args.windows:
                    if window >= T:
                        continue
                    call, sdpa, chunked = _case(T, window, mode, heads, d)
                    sdpa_s, chunked_s = _interleaved(sdpa, chunked, args.min_seconds)
                    est = estimated_seconds(call, costs)
                    w = work(call, costs.tile)
                    rows.append(
                        {
                            "sdpa_s": sdpa_s,
                            "chunked_s": chunked_s,
                            "dense_units": w.dense_units,
                            "mask_entries": w.mask_entries,
                            "tiled_units": w.tiled_units,
                            "edge_tiles": w.edge_tiles,
                        }
                    )
                    faster = "chunked" if chunked_s < sdpa_s else "sdpa"
                    picks = "chunked" if is_sparse(call) else "sdpa"
                    print(
                        f"{mode:8} {f'{heads}x{d}':>5} {T:>5} {window:>6}  {sdpa_s * 1e3:>8.1f} "
                        f"{chunked_s * 1e3:>10.1f}  {est['dense'] * 1e3:>8.1f} "
                        f"{est['tiled'] * 1e3:>11.1f}  {faster:>7}  {picks}",
                        flush=True,
                    )
        fit = _fit(rows)
        print(f"fit ({mode}): " + ", ".join(f"{k}={v:.3g}" for k, v in fit.items()) + "\n")


if __name__ == "__main__":
    main()
