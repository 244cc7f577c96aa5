"""Keep a long-running process's memory flat under glibc's allocator.

glibc raises its mmap threshold each time a large block is freed, so the NumPy arrays of every KPI
computation (a few hundred KB each) move from mmap into the heap arenas, where they fragment: the 30-minute
soak (bench/soak.py, docs/RELIABILITY.md) saw the gateway's RSS grow 15.7 MiB/h while its own objects grew
0.8 MiB/h. A fixed threshold (mallopt M_MMAP_THRESHOLD, the same as MALLOC_MMAP_THRESHOLD_=131072) keeps such
arrays in mmap, returned to the system when freed: 0.4 MiB/h in the same soak. Elsewhere (musl, macOS) this
does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("fieldlab")

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
MMAP_THRESHOLD = 128 * 1024


def steady_malloc() -> bool:
    """Fix glibc's mmap threshold for this process; True if it was set."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    if not ok:
        log.debug("mallopt(M_MMAP_THRESHOLD) refused; memory may grow by fragmentation")
    return ok
