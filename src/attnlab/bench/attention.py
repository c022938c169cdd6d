"""The attention benchmark: attnlab's backends against plain PyTorch SDPA, as library code.

One *case* is one backend at one sequence length, mask and mode, run on random inputs of shape
(B, H, T, D). Besides every registered attnlab backend and ``"auto"``, the peer ``"torch-sdpa"``
is what a user without attnlab writes: ``torch.nn.functional.scaled_dot_product_attention``
with ``is_causal=True`` for causal attention, or with a dense boolean (T, T) mask for a sliding
window, built once before the clock starts.

What is measured, per case:

* ``seconds``: median wall time of one call. ``fwd`` is the forward pass on inputs that do not
  require grad (inference); ``fwd+bwd`` is the forward pass and the backward pass from a fixed
  output gradient (training). attnlab's dispatch overhead is included, since a user pays it on
  every call. Warm-up calls run first, so ``torch.compile`` (FlexAttention) and lazy
  initialisation stay outside the clock.
* ``peak_mb``: memory above the level with q, k, v (and the output gradient) allocated, at the
  peak of one call, in MiB. The peer's dense window mask counts, since it is held while the
  call runs. See :func:`attnlab.bench.harness.peak_memory` for what this means on CPU.

:func:`run_sweep` runs every case in fresh processes (see there why two on CPU);
:func:`goals` turns one sweep's rows into the ratios attnlab promises.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from attnlab.attention import attend, backend_names
from attnlab.attention import masks as mask_lib
from attnlab.attention.call import make_call
from attnlab.attention.dispatch import select_backend
from attnlab.bench.harness import CLEAN_MALLOC_ENV, peak_memory, run_isolated, time_fn

PEER = "torch-sdpa"
MODES = ("fwd", "fwd+bwd")
MASKS = ("causal", "window256", "none")
MEASURES = ("time", "memory", "time+memory")
WINDOW = 256
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# The reference materialises (B, H, T, T) float32 scores several times over; past this length
# on CPU that is many GiB (8 GiB per copy at T=16384 with B=1, H=8) and minutes per call, and
# the reference is the oracle, not a contender.
REFERENCE_MAX_T_CPU = 4096
# Score-matrix copies alive at once in the reference, forward and forward+backward (rounded up).
_REFERENCE_COPIES = {"fwd": 4, "fwd+bwd": 6}

# How long one case may run in its own process before the sweep gives up on it.
CASE_TIMEOUT_S = 1800


def backend_choices() -> list[str]:
    """Every backend name :func:`bench_case` accepts: registered ones, "auto" and the peer."""
    return [*backend_names(), "auto", PEER]


# -- one case -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Case:
    backend: str
    T: int
    mode: str
    mask: str
    B: int = 1
    H: int = 8
    D: int = 64
    dtype: str = "float32"
    device: str = "cpu"

    def row(self, **fields: object) -> dict:
        """The result row: the case's identity plus what was measured (or why not)."""
        return {
            "backend": self.backend,
            "T": self.T,
            "mode": self.mode,
            "mask": self.mask,
            "seconds": None,
            "peak_mb": None,
            "device": self.device,
            "dtype": self.dtype,
            **fields,
        }


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return value


def _make_case(backend: str, T: int, *, mode: str, mask: str, **shape: object) -> _Case:
    """Check every argument of a case; errors name the argument, the expected and the actual."""
    if backend not in backend_choices():
        raise ValueError(
            f"backend: expected one of {', '.join(backend_choices())}, got {backend!r}"
        )
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {', '.join(MODES)}, got {mode!r}")
    if mask not in MASKS:
        raise ValueError(f"mask: expected one of {', '.join(MASKS)}, got {mask!r}")
    case = _Case(backend, T, mode, mask, **shape)
    for name in ("T", "B", "H", "D"):
        _positive_int(name, getattr(case, name))
    if case.dtype not in DTYPES:
        raise ValueError(f"dtype: expected one of {', '.join(DTYPES)}, got {case.dtype!r}")
    try:
        device = str(torch.device(case.device))
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device: expected a torch device such as 'cpu' or 'cuda', got {case.device!r}"
        ) from exc
    return _Case(backend, T, mode, mask, case.B, case.H, case.D, case.dtype, device)


def _memory_skip_reason(case: _Case) -> str | None:
    """Why a case obviously cannot fit in memory, or None."""
    if case.backend != "reference":
        return None
    copy_gib = case.B * case.H * case.T * case.T * 4 / 2**30
    if torch.device(case.device).type == "cpu" and case.T > REFERENCE_MAX_T_CPU:
        return (
            f"reference materialises (B, H, T, T) float32 scores, {copy_gib:.0f} GiB per copy "
            f"at T={case.T}; not run above T={REFERENCE_MAX_T_CPU} on CPU"
        )
    need_gib = copy_gib * _REFERENCE_COPIES[case.mode]
    free_gib = _free_memory_bytes(case.device) / 2**30
    if need_gib > free_gib:
        return f"reference needs about {need_gib:.1f} GiB, only {free_gib:.1f} GiB free"
    return None


def _free_memory_bytes(device: str) -> float:
    if torch.device(device).type == "cuda":
        return torch.cuda.mem_get_info(torch.device(device))[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return math.inf  # unknown: let the case try


def _mask_object(name: str) -> mask_lib.Mask | None:
    if name == "causal":
        return mask_lib.causal()
    if name == "window256":
        return mask_lib.sliding_window(WINDOW)
    return None


def _dense_window(T: int, device: str) -> Tensor:
    """The (T, T) boolean sliding-window mask a user of plain SDPA builds; True = attend."""
    i = torch.arange(T, device=device)
    return (i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] < WINDOW)


@dataclass
class _Inputs:
    q: Tensor
    k: Tensor
    v: Tensor
    dout: Tensor | None  # output gradient, for fwd+bwd


def _inputs(case: _Case) -> _Inputs:
    gen = torch.Generator().manual_seed(0)
    shape = (case.B, case.H, case.T, case.D)
    grad = case.mode == "fwd+bwd"

    def rand() -> Tensor:
        return torch.randn(shape, generator=gen).to(case.device, DTYPES[case.dtype])

    q, k, v = (rand().requires_grad_(grad) for _ in range(3))
    return _Inputs(q, k, v, rand() if grad else None)


def _chosen_backend(case: _Case, x: _Inputs) -> tuple[str | None, str | None]:
    """(name of the backend that will run the case, None), or (None, why none will)."""
    if case.backend == PEER:
        return PEER, None
    call = make_call(
        x.q,
        x.k,
        x.v,
        mask=_mask_object(case.mask),
        bias=None,
        scale=None,
        dropout_p=0.0,
        return_weights=False,
    )
    try:
        return select_backend(call, case.backend).name, None
    except ValueError as exc:
        return None, str(exc)


def _backward(out: Tensor, x: _Inputs) -> None:
    if x.dout is not None:
        x.q.grad = x.k.grad = x.v.grad = None  # fresh gradients each call, not accumulation
        out.backward(x.dout)


def _setup(case: _Case, x: _Inputs) -> Callable[[], Callable[[], None]]:
    """A function that prepares what a user prepares once, and returns the call to measure."""
    if case.backend == PEER:

        def setup_peer() -> Callable[[], None]:
            kwargs: dict = {}
            if case.mask == "causal":
                kwargs["is_causal"] = True
            elif case.mask == "window256":
                kwargs["attn_mask"] = _dense_window(case.T, case.device)

            def run_peer() -> None:
                _backward(F.scaled_dot_product_attention(x.q, x.k, x.v, **kwargs), x)

            return run_peer

        return setup_peer

    mask = _mask_object(case.mask)

    def run_attnlab() -> None:
        _backward(attend(x.q, x.k, x.v, mask=mask, backend=case.backend), x)

    return lambda: run_attnlab


def skip_reason(
    backend: str, T: int, *, mode: str, mask: str = "causal", **shape: object
) -> str | None:
    """Why :func:`bench_case` would skip this case without running it (None: it would run).

    Cheap: it builds the inputs and asks dispatch but runs no attention, so a sweep can skip
    cases without starting a process for them. ``shape``: B, H, D, dtype, device.
    """
    case = _make_case(backend, T, mode=mode, mask=mask, **shape)
    reason = _memory_skip_reason(case)
    if reason is None:
        _, reason = _chosen_backend(case, _inputs(case))
    return reason


# Timed calls of one case last at least this long in all (more repeats for short calls).
MIN_TIMED_S = 0.5


def bench_case(
    backend: str,
    T: int,
    *,
    mode: str,
    mask: str = "causal",
    B: int = 1,
    H: int = 8,
    D: int = 64,
    dtype: str = "float32",
    device: str = "cpu",
    repeats: int = 3,
    measure: str = "time+memory",
) -> dict:
    """Time one case and/or measure its peak memory (definitions in the module docstring).

    Args:
        backend: a registered attnlab backend name, "auto", or "torch-sdpa" (plain PyTorch).
        T: sequence length (queries = keys = T).
        mode: "fwd" (forward, no grad) or "fwd+bwd" (forward and backward).
        mask: "causal", "window256" (causal sliding window over 256 keys) or "none".
        B, H, D: batch, heads and head dim of q, k and v.
        dtype: "float32", "float16" or "bfloat16".
        device: a torch device string.
        repeats: timed calls at least; calls repeat until they add up to ``MIN_TIMED_S``;
            ``seconds`` is their median.
        measure: "time", "memory" or "time+memory". CPU peak memory is clean only in a fresh
            process with :data:`~attnlab.bench.harness.CLEAN_MALLOC_ENV`, which slows the
            timed calls, so :func:`run_sweep` measures the two in separate processes.

    Returns:
        A JSON-ready dict with keys backend, T, mode, mask, seconds, peak_mb, device, dtype,
        plus ``chosen`` (the backend that ran: what "auto" picked), and when timed
        ``min_seconds`` and ``repeats``. A case the backend refuses, or that obviously cannot
        fit in memory, is not run: ``seconds`` and ``peak_mb`` stay None and ``skipped`` says
        why.
    """
    case = _make_case(backend, T, mode=mode, mask=mask, B=B, H=H, D=D, dtype=dtype, device=device)
    _positive_int("repeats", repeats)
    if measure not in MEASURES:
        raise ValueError(f"measure: expected one of {', '.join(MEASURES)}, got {measure!r}")
    reason = _memory_skip_reason(case)
    if reason:
        return case.row(skipped=reason)
    x = _inputs(case)
    chosen, reason = _chosen_backend(case, x)
    if reason:
        return case.row(skipped=reason)

    setup = _setup(case, x)
    run = setup()
    fields: dict = {"chosen": chosen}
    warmed = False
    if "memory" in measure:
        run()  # warm-up: compilation and lazy initialisation are not the call's memory
        warmed = True
        # A fresh setup() inside the measurement, so that a mask the user keeps counts. Without
        # /proc (not Linux) there is no CPU measurement and peak_mb stays None.
        with contextlib.suppress(RuntimeError):
            fields["peak_mb"] = peak_memory(lambda: setup()(), case.device) / 2**20
    if "time" in measure:
        # Short calls repeat for at least MIN_TIMED_S in all, so their median is stable.
        timing = time_fn(
            run,
            repeats=repeats,
            warmup=0 if warmed else 1,
            device=case.device,
            min_total_s=MIN_TIMED_S,
        )
        fields.update(seconds=timing.median_s, min_seconds=timing.min_s, repeats=timing.repeats)
    return case.row(**fields)


# -- a sweep ------------------------------------------------------------------------------------
def _check_names(name: str, values: Iterable, allowed: Iterable) -> list:
    values, allowed = list(values), list(allowed)
    unknown = [v for v in values if v not in allowed]
    if not values or unknown:
        raise ValueError(
            f"{name}: expected a non-empty list from {', '.join(map(str, allowed))}, got {values!r}"
        )
    return values


def sweep_cases(
    backends: Iterable[str], lengths: Iterable[int], modes: Iterable[str], masks: Iterable[str]
) -> list[tuple[str, int, str, str]]:
    """The (backend, T, mode, mask) cases of a sweep, checked, in the order they run."""
    backends = _check_names("backends", backends, backend_choices())
    modes = _check_names("modes", modes, MODES)
    masks = _check_names("masks", masks, MASKS)
    lengths = [_positive_int("lengths", T) for T in lengths]
    if not lengths:
        raise ValueError("lengths: expected at least one length, got none")
    return [(b, T, mo, ma) for ma in masks for T in lengths for b in backends for mo in modes]


def run_sweep(
    backends: Iterable[str],
    lengths: Iterable[int],
    modes: Iterable[str],
    masks: Iterable[str],
    **case_kwargs: object,
) -> list[dict]:
    """Run every (mask, length, backend, mode) case in fresh Python processes; rows in order.

    Fresh processes keep one case's caches, compilation and fragmentation out of the next. On
    CPU each case runs twice: once to time it with the ordinary allocator, and once to measure
    its peak memory with :data:`~attnlab.bench.harness.CLEAN_MALLOC_ENV`, which makes the
    resident-memory peak exact but slows the calls (every large buffer is mapped afresh). Cases
    :func:`skip_reason` rules out are recorded without starting a process. A case whose
    process fails (out of memory, say) becomes a row with an ``error`` key, and the sweep goes
    on. ``case_kwargs`` go to :func:`bench_case` (B, H, D, dtype, device, repeats). Progress
    goes to stderr, one line per case.
    """
    cases = sweep_cases(backends, lengths, modes, masks)
    shape = {k: v for k, v in case_kwargs.items() if k not in ("repeats", "measure")}
    on_cpu = torch.device(str(shape.get("device", "cpu"))).type == "cpu"
    runs = [("time", {}), ("memory", CLEAN_MALLOC_ENV)] if on_cpu else [("time+memory", {})]
    rows, start = [], time.perf_counter()
    for i, (backend, T, mode, mask) in enumerate(cases, 1):
        case = _make_case(backend, T, mode=mode, mask=mask, **shape)
        reason = skip_reason(backend, T, mode=mode, mask=mask, **shape)
        row = case.row(skipped=reason) if reason else _run_case(case, case_kwargs, runs)
        rows.append(row)
        print(
            f"[{i}/{len(cases)} {time.perf_counter() - start:5.0f} s] {mask:9} T={T:<6} "
            f"{backend:10} {mode:7} {_outcome(row)}",
            file=sys.stderr,
            flush=True,
        )
    return rows


def _run_case(case: _Case, case_kwargs: dict, runs: list[tuple[str, dict]]) -> dict:
    """One row from one process per (measure, environment) in ``runs``."""
    row = case.row()
    kwargs = {**case_kwargs, "backend": case.backend, "T": case.T, "mode": case.mode}
    for measure, env in runs:
        try:
            result = run_isolated(
                "attnlab.bench.attention:bench_case",
                {**kwargs, "mask": case.mask, "measure": measure},
                env=env,
                timeout=CASE_TIMEOUT_S,
            )
        except RuntimeError as exc:
            return case.row(error=str(exc))
        # Each process fills in what it measured (seconds, or peak_mb); the rest agrees.
        row.update({k: v for k, v in result.items() if v is not None})
    return row


def _outcome(row: dict) -> str:
    if row.get("seconds") is not None:
        mem = f", peak {row['peak_mb']:.0f} MB" if row.get("peak_mb") is not None else ""
        return f"{row['seconds'] * 1e3:.1f} ms{mem}"
    if "error" in row:
        return "error: " + row["error"].splitlines()[0]
    return "skipped: " + str(row.get("skipped"))


# Least time a fresh process spends starting (seconds; it is also measured), and how long
# FlexAttention compiles on CPU in a new process: about 20 s the very first time, about 6 s once
# Inductor's on-disk cache holds the kernels (2-core machine).
_PROCESS_START_S = 1.5
_FLEX_COMPILE_S = 10.0


def estimate_sweep_seconds(
    backends: Iterable[str],
    lengths: Iterable[int],
    modes: Iterable[str],
    masks: Iterable[str],
    *,
    repeats: int = 3,
    calibration_T: int = 1024,
    **shape: object,
) -> float:
    """Rough wall time of :func:`run_sweep` with these arguments, from a quick calibration.

    Each backend that would run (per mode and mask) is timed once, in this process, at
    ``calibration_T`` (or the longest length, if shorter); times are then scaled to each length:
    by T for a sliding window on a backend that skips masked tiles (chunked, flex), by T^2
    otherwise. FlexAttention is not timed (it would compile): it is assumed as fast as chunked,
    plus its compile time in every process. Takes seconds; the estimate is as good as the
    machine is quiet.
    """
    cases = sweep_cases(backends, lengths, modes, masks)
    _positive_int("repeats", repeats)
    t_cal = min(_positive_int("calibration_T", calibration_T), max(c[1] for c in cases))
    on_cpu = torch.device(str(shape.get("device", "cpu"))).type == "cpu"
    processes = 2 if on_cpu else 1
    # Calls per case: the warm-up and the timed calls, plus warm-up and peak when measuring memory.
    calls = 1 + repeats + (2 if on_cpu else 1)

    per_call: dict[tuple[str, str, str], float] = {}

    def calibrated(name: str, mode: str, mask: str) -> float:
        key = (name, mode, mask)
        if key not in per_call:
            row = bench_case(
                "chunked" if name == "flex" else name,
                t_cal,
                mode=mode,
                mask=mask,
                repeats=1,
                measure="time",
                **shape,
            )
            per_call[key] = row["seconds"] or 0.0
        return per_call[key]

    start = time.perf_counter()
    run_isolated("attnlab.bench.harness:machine_info", {})
    process_start = max(time.perf_counter() - start, _PROCESS_START_S)

    total = 0.0
    for backend, T, mode, mask in cases:
        case = _make_case(backend, T, mode=mode, mask=mask, **shape)
        if _memory_skip_reason(case):
            continue
        chosen, reason = _chosen_backend(case, _inputs(case))
        if reason or chosen is None:
            continue
        sparse = mask == "window256" and chosen in ("chunked", "flex")
        scale = T / t_cal if sparse else (T / t_cal) ** 2
        total += calls * calibrated(chosen, mode, mask) * scale
        total += processes * (process_start + (_FLEX_COMPILE_S if chosen == "flex" else 0.0))
    return total


# -- reporting ----------------------------------------------------------------------------------
def _lookup(rows: list[dict], backend: str, T: int, mode: str, mask: str) -> dict | None:
    key = (backend, T, mode, mask)
    found = [r for r in rows if (r["backend"], r["T"], r["mode"], r["mask"]) == key]
    if len(found) > 1:
        raise ValueError(
            f"rows: expected at most one row for {backend} T={T} {mode} {mask} (one sweep), "
            f"got {len(found)}"
        )
    return found[0] if found else None


def _seconds(rows: list[dict], backend: str, T: int, mode: str, mask: str) -> float | None:
    row = _lookup(rows, backend, T, mode, mask)
    return None if row is None else row.get("seconds")


def _cell_ms(row: dict | None) -> str:
    if row is None:
        return ""
    if row.get("seconds") is not None:
        return f"{row['seconds'] * 1e3:.1f}"
    if "error" in row:
        return "error"
    return "skip" if row.get("skipped") else ""


def _cell_mb(row: dict | None) -> str:
    if row is None or row.get("peak_mb") is None:
        return ""
    mb = row["peak_mb"]
    return f"{mb:.1f}" if mb < 10 else f"{mb:.0f}"


def format_rows(rows: list[dict]) -> str:
    """A plain-text table, one line per (mask, T, backend), then a note per skip reason.

    Columns: mask, T, backend (for "auto", the backend it picked in parentheses), fwd ms and
    fwd+bwd ms (median wall time of one call), peak MB fwd and peak MB fwd+bwd (MiB above the
    inputs at the peak of one call). Columns no row has a value for are left out.
    """
    keys: list[tuple[str, int, str]] = []
    for r in rows:
        if (r["mask"], r["T"], r["backend"]) not in keys:
            keys.append((r["mask"], r["T"], r["backend"]))
    table = []
    for mask, T, backend in keys:
        fwd = _lookup(rows, backend, T, "fwd", mask)
        both = _lookup(rows, backend, T, "fwd+bwd", mask)
        chosen = {r.get("chosen") for r in (fwd, both) if r is not None} - {None, backend}
        table.append(
            {
                "mask": mask,
                "T": str(T),
                "backend": f"{backend} ({'/'.join(sorted(chosen))})" if chosen else backend,
                "fwd ms": _cell_ms(fwd),
                "fwd+bwd ms": _cell_ms(both),
                "peak MB fwd": _cell_mb(fwd),
                "peak MB fwd+bwd": _cell_mb(both),
            }
        )
    if not table:
        return "(no results)"
    cols = [c for c in table[0] if any(line[c] for line in table)]
    widths = {c: max(len(c), *(len(line[c]) for line in table)) for c in cols}
    left = {"mask", "backend"}

    def fmt(cells: dict) -> str:
        return "  ".join(
            cells[c].ljust(widths[c]) if c in left else cells[c].rjust(widths[c]) for c in cols
        ).rstrip()

    lines = [fmt({c: c for c in cols}), "  ".join("-" * widths[c] for c in cols)]
    lines += [fmt(cells) for cells in table]
    notes = _skip_notes(rows)
    return "\n".join(lines + (["", *notes] if notes else []))


def _skip_notes(rows: list[dict]) -> list[str]:
    """One line per distinct reason cases were skipped or failed, naming the cases."""
    by_reason: dict[str, dict[tuple[str, str, str], list[str]]] = {}
    for r in rows:
        if "error" in r:
            why = "error: " + r["error"].splitlines()[0]
        elif r.get("skipped"):
            why = "skipped: " + r["skipped"]
        else:
            continue
        cases = by_reason.setdefault(why, {})
        cases.setdefault((r["backend"], r["mode"], r["mask"]), []).append(str(r["T"]))
    lines = []
    for why, cases in by_reason.items():
        named = [f"{b} {mo} {ma} T={','.join(ts)}" for (b, mo, ma), ts in cases.items()]
        lines.append(f"{why} [{'; '.join(named)}]")
    return lines


def _goal(name: str, num: float | None, den: float | None, op: str, target: float) -> dict:
    value = num / den if num is not None and den else None
    met = value is not None and (value <= target if op == "<=" else value >= target)
    return {"name": name, "value": value, "goal": f"{op} {target}", "met": met}


def goals(rows: list[dict]) -> list[dict]:
    """The three promises, each a ratio of two times measured in the same sweep (``rows``).

    (a) auto / torch-sdpa forward time, causal, at every T either was timed: <= 1.05 (going
        through attnlab costs at most 5 %);
    (b) torch-sdpa with its dense mask / auto forward time, sliding window 256 at T=4096:
        >= 2.0 (skipping masked tiles pays);
    (c) chunked / torch-sdpa forward+backward time, causal at T=4096: <= 2.0 (the pure-PyTorch
        training kernel stays within 2x of the fused one).

    Each dict has name, value (None when a time is missing), goal (e.g. "<= 1.05") and met.
    """
    out = []
    lengths = sorted(
        {
            r["T"]
            for r in rows
            if r["backend"] in ("auto", PEER) and r["mode"] == "fwd" and r["mask"] == "causal"
        }
    )
    for T in lengths or [None]:
        out.append(
            _goal(
                f"auto / {PEER} fwd, causal" + (f", T={T}" if T else ""),
                _seconds(rows, "auto", T, "fwd", "causal"),
                _seconds(rows, PEER, T, "fwd", "causal"),
                "<=",
                1.05,
            )
        )
    out.append(
        _goal(
            f"{PEER} (dense mask) / auto fwd, window {WINDOW}, T=4096",
            _seconds(rows, PEER, 4096, "fwd", "window256"),
            _seconds(rows, "auto", 4096, "fwd", "window256"),
            ">=",
            2.0,
        )
    )
    out.append(
        _goal(
            f"chunked / {PEER} fwd+bwd, causal, T=4096",
            _seconds(rows, "chunked", 4096, "fwd+bwd", "causal"),
            _seconds(rows, PEER, 4096, "fwd+bwd", "causal"),
            "<=",
            2.0,
        )
    )
    return out


def time_pair(
    first: str,
    second: str,
    T: int,
    *,
    mode: str,
    mask: str,
    min_total_s: float = 2.0,
    min_rounds: int = 5,
    max_rounds: int = 200,
    **shape: object,
) -> tuple[float, float]:
    """Median seconds of one call of backend ``first`` and of ``second``, timed alternately in
    this process (first, second, first, ...), so that a shared machine's drift hits both alike.

    A sweep times each case in its own process minutes apart; for a ratio between two cases
    this interleaving is the steadier measurement. Raises ValueError when a backend refuses.
    """
    runs, device = [], "cpu"
    for backend in (first, second):
        case = _make_case(backend, T, mode=mode, mask=mask, **shape)
        x = _inputs(case)
        _, reason = _chosen_backend(case, x)
        if reason:
            raise ValueError(reason)
        run = _setup(case, x)()
        run()  # warm-up: compilation and lazy initialisation are not timed
        runs.append(run)
        device = case.device
    samples: tuple[list[float], list[float]] = ([], [])
    while len(samples[0]) < max_rounds and (
        len(samples[0]) < min_rounds or sum(samples[0]) + sum(samples[1]) < min_total_s
    ):
        for run, out in zip(runs, samples, strict=True):
            out.append(time_fn(run, repeats=1, warmup=0, device=device).median_s)
    return statistics.median(samples[0]), statistics.median(samples[1])


def interleaved_goals(lengths: Iterable[int], **shape: object) -> list[dict]:
    """The goals of :func:`goals`, each ratio from :func:`time_pair` in this process; (a) at
    every length in ``lengths``, (b) and (c) at T=4096."""
    out = []
    for T in lengths:
        auto, peer = time_pair("auto", PEER, T, mode="fwd", mask="causal", **shape)
        out.append(_goal(f"auto / {PEER} fwd, causal, T={T}", auto, peer, "<=", 1.05))
    peer, auto = time_pair(PEER, "auto", 4096, mode="fwd", mask="window256", **shape)
    out.append(
        _goal(f"{PEER} (dense mask) / auto fwd, window {WINDOW}, T=4096", peer, auto, ">=", 2.0)
    )
    chunked, peer = time_pair("chunked", PEER, 4096, mode="fwd+bwd", mask="causal", **shape)
    out.append(_goal(f"chunked / {PEER} fwd+bwd, causal, T=4096", chunked, peer, "<=", 2.0))
    return out


def format_goals(goal_rows: list[dict]) -> str:
    """One line per goal: its name, the measured ratio, the goal and whether it is met."""
    lines = []
    for g in goal_rows:
        value = "not measured" if g["value"] is None else f"{g['value']:.2f}"
        verdict = "met" if g["met"] else ("" if g["value"] is None else "NOT met")
        lines.append(f"{g['name']:<50} {value:>12}  goal {g['goal']:<7} {verdict}".rstrip())
    return "\n".join(lines)
