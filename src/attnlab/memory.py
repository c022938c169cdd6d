"""Giving memory back to the operating system."""

from __future__ import annotations


def release_freed_memory() -> None:
    """Hand memory that has been freed back to the operating system (glibc's ``malloc_trim``;
    nothing elsewhere).

    Reading a file tensor by tensor frees many fp32 temporaries of a few megabytes, and the
    reader's metadata makes ~10^5 small objects. glibc keeps freed blocks of that size in its
    heap for reuse, so without this the process stays resident at several hundred megabytes
    more than the model it holds (measured on SmolLM2: 727 MiB resident for a 210 MiB int8
    model, 314 MiB after trimming), which defeats loading quantized to save memory.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to release this way
        return
    if trim is not None:
        trim(0)
