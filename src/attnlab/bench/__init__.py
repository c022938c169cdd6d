"""Benchmarks as library code: honest measurement helpers and the attention benchmark."""

from attnlab.bench.harness import (
    CLEAN_MALLOC_ENV,
    Timing,
    machine_info,
    peak_memory,
    run_isolated,
    time_fn,
)

__all__ = [
    "CLEAN_MALLOC_ENV",
    "Timing",
    "machine_info",
    "peak_memory",
    "run_isolated",
    "time_fn",
]
