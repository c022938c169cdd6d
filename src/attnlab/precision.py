"""Whether this machine computes in bf16 faster than in fp32, and the dtype a precision name means.

bf16 pays only where the hardware has bf16 arithmetic: CUDA GPUs from Ampere on, and CPUs with
AVX512-BF16 or AMX (Intel Xeon from Cooper Lake / Sapphire Rapids on; a 2048^2 matmul runs at
~660 GFLOP/s in bf16 against ~106 in fp32). Elsewhere, an AVX2-only AMD EPYC for one, a bf16
matmul is emulated and runs hundreds of times slower than fp32 (~0.3 GFLOP/s), so "auto" must
not pick it. :func:`torch.backends.cpu.get_cpu_capability` names only the vector width of
PyTorch's own kernels ("AVX2", "AVX512"), not bf16 support, so the CPU answer is read from the
kernel's flags in ``/proc/cpuinfo`` and, where they promise bf16, confirmed by timing a bf16
against an fp32 matmul once per process (well under a second; never without the flags).

The environment variable ``ATTNLAB_BF16`` overrides the answer of :func:`fast_bf16` (and so what
precision "auto" picks): ``1`` says bf16 is fast, ``0`` says it is not; unset or empty, the
answer is detected.
"""

from __future__ import annotations

import functools
import os
import platform
import statistics
import time
from pathlib import Path

import torch

# Where Linux lists the CPU's model and flags; a module attribute so tests can point it at a
# fake file. Missing (macOS, Windows), no flags are known and bf16 counts as not fast.
CPUINFO = Path("/proc/cpuinfo")

# Flags that promise bf16 arithmetic: x86 AVX512-BF16 and AMX-BF16 ("flags" line), and the
# aarch64 BF16 extension ("Features" line).
BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")

# The confirmation: a bf16 matmul of this size must beat fp32 by this factor (AMX and
# AVX512-BF16 machines beat it by 3x and more; emulated bf16 loses by 100x and more).
MEASURE_SIZE = 512
MEASURE_REPEATS = 5
MIN_SPEEDUP = 1.5
MEASURE_DEADLINE_S = 0.5  # the measurement stops here and decides on what it has

OVERRIDE_VAR = "ATTNLAB_BF16"

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}
DTYPE_NAMES = ("auto", *DTYPES)


def _read_cpuinfo(path: Path | None) -> str:
    try:
        return Path(path or CPUINFO).read_text(errors="replace")
    except OSError:
        return ""


def _field(text: str, *keys: str) -> str | None:
    """The value of the first ``key : value`` line of ``text`` whose key is one of ``keys``."""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in keys:
            return value.strip()
    return None


def cpu_flags(cpuinfo: str | os.PathLike | None = None) -> frozenset[str]:
    """The CPU's feature flags as Linux lists them in ``/proc/cpuinfo`` (``cpuinfo``: another
    file of that format), lower case: x86's ``flags`` line or aarch64's ``Features`` line of
    the first processor. Empty where there is no such file (macOS, Windows)."""
    value = _field(_read_cpuinfo(cpuinfo), "flags", "features")
    return frozenset(value.lower().split()) if value else frozenset()


def cpu_model(cpuinfo: str | os.PathLike | None = None) -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (``cpuinfo``: another file of that format),
    or the platform's processor name where the file has none."""
    text = _read_cpuinfo(cpuinfo)
    name = _field(text, "model name", "hardware", "cpu model")
    return name or platform.processor() or platform.machine() or "unknown CPU"


def _override() -> bool | None:
    value = os.environ.get(OVERRIDE_VAR, "").strip()
    if not value:
        return None
    if value not in ("0", "1"):
        raise ValueError(f"{OVERRIDE_VAR}: expected 0 or 1 (or unset), got {value!r}")
    return value == "1"


def _time_matmul(a: torch.Tensor) -> float:
    start = time.perf_counter()
    torch.mm(a, a)
    return time.perf_counter() - start


def measure_speedup(
    size: int = MEASURE_SIZE,
    repeats: int = MEASURE_REPEATS,
    deadline_s: float = MEASURE_DEADLINE_S,
) -> float:
    """How many times faster a ``size`` x ``size`` matmul runs in bf16 than in fp32 on this CPU
    (below 1: slower): the median over ``repeats`` interleaved pairs of the fp32 / bf16 time
    ratio, so load from other processes hits both dtypes alike and a preempted pair does not
    decide.

    It runs on one thread: on a shared machine a multi-threaded matmul waits for its thread
    pool (~10 ms for a 128^2 fp32 matmul on 2 busy cores, 50x its compute), which would decide
    the ratio; one core's ratio is the hardware's. A probe at size 128 first stops at once where
    bf16 is emulated (10x and more slower there), so the whole takes milliseconds on such a
    machine, ~30 ms on an AMX one, and about ``deadline_s`` at most anywhere."""
    threads = torch.get_num_threads()
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            small = torch.randn(128, 128, generator=generator)
            small16 = small.bfloat16()
            for x in (small, small16):  # the first call at a shape and dtype sets up its kernel
                _time_matmul(x)
            # The minimum of three: noise only ever adds time.
            probe32 = min(_time_matmul(small) for _ in range(3))
            probe16 = min(_time_matmul(small16) for _ in range(3))
            if probe16 > 4 * probe32:
                return probe32 / probe16
            a = torch.randn(size, size, generator=generator)
            a16 = a.bfloat16()
            for x in (a, a16):
                _time_matmul(x)
            ratios = []
            for i in range(repeats):
                if ratios and time.perf_counter() - start > deadline_s:
                    break
                if i % 2:  # alternate which dtype goes first
                    t16, t32 = _time_matmul(a16), _time_matmul(a)
                else:
                    t32, t16 = _time_matmul(a), _time_matmul(a16)
                ratios.append(t32 / max(t16, 1e-9))
    finally:
        torch.set_num_threads(threads)
    return statistics.median(ratios)


def bf16_flags(cpuinfo: str | os.PathLike | None = None) -> list[str]:
    """The flags of :data:`BF16_FLAGS` this CPU has, in that order."""
    flags = cpu_flags(cpuinfo)
    return [f for f in BF16_FLAGS if f in flags]


@functools.cache
def _cpu_speedup() -> float | None:
    """:func:`measure_speedup`, once per process; None (nothing measured) without bf16 flags."""
    if not bf16_flags():
        return None
    return measure_speedup()


def _device_type(device: str | torch.device) -> str:
    if not isinstance(device, (str, torch.device)):
        raise TypeError(
            f"device: expected a device name or torch.device, got {type(device).__name__}"
        )
    try:
        return torch.device(device).type
    except RuntimeError:
        raise ValueError(
            f"device: expected a device such as cpu or cuda:0, got {device!r}"
        ) from None


def _cuda_bf16(device: str | torch.device) -> bool:
    """Whether the CUDA device has bf16 arithmetic (Ampere on, or ROCm): bf16 that PyTorch
    emulates on older GPUs runs, but slower than fp32, and does not count."""
    if not torch.cuda.is_available():
        return False
    with torch.cuda.device(torch.device(device)):
        return torch.cuda.is_bf16_supported(including_emulation=False)


def fast_bf16(device: str | torch.device = "cpu") -> bool:
    """Whether bf16 compute on ``device`` is faster than fp32, so worth autocasting to.

    CUDA: native bf16 (:func:`torch.cuda.is_bf16_supported` without emulation). CPU: the CPU
    has AVX512-BF16, AMX-BF16 or the aarch64 BF16 extension, and a bf16 matmul measured
    :data:`MIN_SPEEDUP` times faster than fp32 (:func:`measure_speedup`, run at most once per
    process and only when those flags are present). Other devices: no. ``ATTNLAB_BF16=1`` /
    ``0`` forces the answer."""
    kind = _device_type(device)
    forced = _override()
    if forced is not None:
        return forced
    if kind == "cuda":
        return _cuda_bf16(device)
    if kind == "cpu":
        speedup = _cpu_speedup()
        return speedup is not None and speedup >= MIN_SPEEDUP
    return False


def bf16_capability(device: str | torch.device = "cpu") -> str:
    """One line naming the hardware, the bf16 flags it has or lacks, and whether bf16 is fast,
    for benchmarks to print beside every figure, e.g. ``"AMD EPYC 7B13: avx2, no
    avx512_bf16/amx_bf16 (bf16 not accelerated)"``."""
    kind = _device_type(device)
    forced = _override()
    note = ""
    if forced is not None:
        note = f"; {OVERRIDE_VAR}={int(forced)} forces bf16 {'on' if forced else 'off'}"
    if kind == "cuda":
        if not torch.cuda.is_available():
            return f"no CUDA device (bf16 not accelerated){note}"
        name = torch.cuda.get_device_name(torch.device(device))
        major, minor = torch.cuda.get_device_capability(torch.device(device))
        verdict = "native bf16 (bf16 accelerated)" if _cuda_bf16(device) else "bf16 emulated"
        return f"{name}: sm_{major}{minor}, {verdict}{note}"
    if kind != "cpu":
        return f"{kind}: bf16 speed not detected (bf16 not used by auto){note}"
    flags = cpu_flags()
    widest = next((f for f in ("avx512f", "avx2", "avx", "asimd", "neon") if f in flags), None)
    found = bf16_flags()
    if not flags:
        return f"{cpu_model()}: CPU flags unknown (bf16 not used by auto){note}"
    if not found:
        wanted = "avx512_bf16/amx_bf16" if "avx" in flags else "bf16"
        parts = [widest, f"no {wanted}"] if widest else [f"no {wanted}"]
        return f"{cpu_model()}: {', '.join(parts)} (bf16 not accelerated){note}"
    speedup = _cpu_speedup()
    verdict = "accelerated" if speedup >= MIN_SPEEDUP else "not faster than fp32, not used"
    parts = [widest, *found] if widest else found
    return f"{cpu_model()}: {', '.join(parts)} (bf16 {verdict}: matmul {speedup:.1f}x fp32){note}"


def resolve_dtype(name: str, device: str | torch.device = "cpu") -> torch.dtype:
    """The dtype a precision name stands for on ``device``: "fp32"/"float32", "bf16"/"bfloat16",
    "fp16"/"float16", or "auto": bf16 where :func:`fast_bf16` says it is fast, else fp32."""
    if not isinstance(name, str):
        raise TypeError(
            f"dtype: expected one of {', '.join(DTYPE_NAMES)}, got {type(name).__name__}"
        )
    key = name.strip().lower()
    if key == "auto":
        return torch.bfloat16 if fast_bf16(device) else torch.float32
    if key not in DTYPES:
        raise ValueError(f"dtype: expected one of {', '.join(DTYPE_NAMES)}, got {name!r}")
    return DTYPES[key]
