"""Measurement helpers shared by every attnlab benchmark: wall time, peak memory, isolation.

The rules these helpers follow, so that numbers are comparable and honest:

* Wall time is read with ``time.perf_counter`` after ``torch.cuda.synchronize()`` on CUDA, so a
  measurement covers the kernels it launched, not just their launch. Warm-up calls (lazy
  initialisation, ``torch.compile``, CUDA context creation) run before the clock starts.
* Peak memory is reported *above the level before the call*, so inputs that exist before the
  call are not counted. On CUDA this is PyTorch's allocator peak. On CPU it is the peak
  resident set size of the whole process (Linux ``VmHWM``), which also counts anything else the
  process allocates, and which glibc inflates or hides by keeping freed memory: measure in a
  fresh process (:func:`run_isolated`) with ``MALLOC_MMAP_THRESHOLD_=65536`` in its environment
  (:data:`CLEAN_MALLOC_ENV`), which makes glibc serve large buffers with ``mmap`` and return them
  to the operating system as soon as they are freed.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

# Environment for a child process whose CPU peak memory should be measured (see module doc).
CLEAN_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


@dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of ``repeats`` timed calls (warm-up calls excluded)."""

    median_s: float
    min_s: float
    mean_s: float
    repeats: int
    samples: tuple[float, ...] = ()


def _is_cuda(device: torch.device | str | None) -> bool:
    return device is not None and torch.device(device).type == "cuda"


def _sync(device: torch.device | str | None) -> None:
    if _is_cuda(device):
        torch.cuda.synchronize(device)


def time_fn(
    fn: Callable[[], object],
    *,
    repeats: int = 5,
    warmup: int = 1,
    device: torch.device | str | None = None,
    min_total_s: float = 0.0,
    max_repeats: int = 1000,
) -> Timing:
    """Time ``fn()``: ``warmup`` untimed calls, then ``repeats`` timed calls one by one.

    With ``min_total_s``, timed calls go on past ``repeats`` until they add up to that many
    seconds (at most ``max_repeats`` calls), so that millisecond calls get a stable median
    instead of three noisy samples. Each timed call is bracketed by device synchronisation when
    ``device`` is a CUDA device, so asynchronous kernels are counted in full; on other devices
    the clock is read directly.
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats: expected an int >= 1, got {repeats!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup: expected an int >= 0, got {warmup!r}")
    for _ in range(warmup):
        fn()
    _sync(device)
    samples: list[float] = []
    while len(samples) < repeats or (sum(samples) < min_total_s and len(samples) < max_repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        samples.append(time.perf_counter() - start)
    return Timing(
        median_s=statistics.median(samples),
        min_s=min(samples),
        mean_s=statistics.fmean(samples),
        repeats=len(samples),
        samples=tuple(samples),
    )


def _proc_status_bytes(field: str) -> int:
    """A ``kB`` field of /proc/self/status (VmRSS, VmHWM) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"peak_memory: no {field} in /proc/self/status")


def peak_memory(fn: Callable[[], object], device: torch.device | str) -> int:
    """Bytes by which memory rose above its starting level at the peak of one ``fn()`` call.

    CUDA: PyTorch's caching allocator peak (``max_memory_allocated``) minus what was allocated
    before, i.e. tensor memory only.

    CPU (Linux only): resets the process's peak resident set size by writing ``5`` to
    ``/proc/self/clear_refs``, runs ``fn``, and returns ``VmHWM`` (peak) minus ``VmRSS`` before.
    This is resident memory of the *whole process*: other threads and the Python heap count,
    and memory glibc kept from earlier frees is reused without showing up. For clean numbers
    run it in a fresh process (:func:`run_isolated`) whose environment includes
    :data:`CLEAN_MALLOC_ENV`.
    """
    if _is_cuda(device):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return max(0, torch.cuda.max_memory_allocated(device) - before)
    if torch.device(device).type != "cpu":
        raise ValueError(f"device: expected a cpu or cuda device, got {device!r}")
    try:
        before = _proc_status_bytes("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")
    except OSError as exc:
        raise RuntimeError(
            f"peak_memory: CPU peak memory needs Linux /proc/self/clear_refs ({exc})"
        ) from exc
    fn()
    return max(0, _proc_status_bytes("VmHWM") - before)


# The child process: import the function, call it with JSON kwargs, write its JSON result.
_CHILD = """
import importlib, json, sys
module_name, function_name = sys.argv[1].split(":")
kwargs = json.loads(sys.argv[2])
result = getattr(importlib.import_module(module_name), function_name)(**kwargs)
with open(sys.argv[3], "w") as f:
    json.dump(result, f)
"""


def run_isolated(
    module_function: str,
    kwargs: dict,
    env: dict[str, str] | None = None,
    timeout: float | None = 900,
) -> dict:
    """Call ``module:function(**kwargs)`` in a fresh Python process and return its result.

    ``kwargs`` and the result must be JSON-serialisable. ``env`` entries are added to (and
    override) this process's environment. The result travels through a temporary file, so the
    function may print freely. Raises RuntimeError with the tail of the child's stderr when the
    child fails, and when it runs longer than ``timeout`` seconds.
    """
    module_name, sep, function_name = module_function.partition(":")
    if not sep or not module_name or not function_name or ":" in function_name:
        raise ValueError(
            f"module_function: expected 'package.module:function', got {module_function!r}"
        )
    child_env = {**os.environ, **(env or {})}
    with tempfile.TemporaryDirectory(prefix="attnlab-bench-") as tmp:
        out_path = Path(tmp) / "result.json"
        argv = [sys.executable, "-c", _CHILD, module_function, json.dumps(kwargs), str(out_path)]
        try:
            proc = subprocess.run(
                argv, env=child_env, capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(
                f"run_isolated: {module_function}(**{kwargs}) ran longer than {timeout} s"
                + _tail(exc.stderr)
            ) from None
        if proc.returncode != 0:
            raise RuntimeError(
                f"run_isolated: {module_function}(**{kwargs}) exited with status "
                f"{proc.returncode}" + _tail(proc.stderr)
            )
        return json.loads(out_path.read_text())


def _tail(stderr: str | bytes | None, lines: int = 15) -> str:
    if not stderr:
        return " (no stderr)"
    if isinstance(stderr, bytes):
        stderr = stderr.decode(errors="replace")
    return "; stderr tail:\n" + "\n".join(stderr.rstrip().splitlines()[-lines:])


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device | str | None = None) -> dict:
    """What the numbers were measured on: CPU, cores, threads, versions and the device name."""
    cuda = torch.cuda.is_available() and (device is None or _is_cuda(device))
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count()
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": torch.cuda.get_device_name(device) if cuda else _cpu_model(),
    }
