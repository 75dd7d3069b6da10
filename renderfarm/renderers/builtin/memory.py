"""The renderer process's memory allocator settings: keep freed memory rather than return it."""

from __future__ import annotations

import ctypes

# glibc's mallopt() parameters, from <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_TRIM_THRESHOLD = 64 << 20
_MMAP_THRESHOLD = 16 << 20


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse; False where that is not possible.

    Tracing a frame allocates and frees numpy temporaries of a few hundred kilobytes many
    thousands of times. By default glibc hands memory at the top of the heap back to the
    system whenever more than a little is free, so the next allocation faults every page in
    again: measured, that made a frame take 0.45 to 0.95 s instead of 0.39 s, depending on
    what the process had allocated before. Raising the trim and mmap thresholds (a fixed
    mmap threshold also stops glibc from adjusting it) keeps the pages. This is
    process-wide, so only the renderer's own entry points (the subprocess, the benchmark)
    call it, never the library.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)) and bool(
        mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
    )
