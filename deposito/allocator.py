"""Keep glibc from mapping and unmapping every large buffer.

Streams move data in pieces of up to a few MiB. By default glibc serves such
allocations with a fresh mmap and returns them with munmap, so every byte
passing through costs a page fault and a zeroed page: in measurement that was
half of the proxy's CPU on a large PUT. Raising the mmap threshold and the
trim threshold lets freed buffers be reused from the heap instead. Memory
stays bounded by the same buffer limits; only its reuse changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8


def tune_for_streams(mmap_threshold: int = 32 << 20, trim_threshold: int = 128 << 20, arenas: int = 1) -> bool:
    """Apply the thresholds; False where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return (bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))
            and bool(mallopt(M_ARENA_MAX, arenas)))
