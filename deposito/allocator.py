"""Keep glibc from mapping and unmapping every large buffer.

Streams move data in pieces of up to a few MiB. By default glibc serves such
allocations with a fresh mmap and returns them with munmap, so every byte
passing through costs a page fault and a zeroed page: in measurement that was
half of the proxy's CPU on a large PUT. Raising the mmap threshold and the
trim threshold lets freed buffers be reused from the heap instead. Memory
stays bounded by the same buffer limits; only its reuse changes. Past a
burst (many downloads stalled at once, say), the heap keeps what they
freed: :func:`trim_when_large` gives it back to the system.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from typing import Callable

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8


TRIM_EVERY = 30.0  # seconds between looks at the process's size
TRIM_ABOVE = 256 << 20  # resident bytes past which the heap's free pages are given back


@functools.lru_cache(maxsize=None)
def _libc() -> ctypes.CDLL | None:
    """The C library, found once (find_library runs ldconfig)."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def resident() -> int:
    """This process's resident bytes (0 where /proc cannot tell)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def trim() -> bool:
    """Give the heap's free pages back to the system (glibc's malloc_trim);
    False where there is no such call."""
    libc = _libc()
    malloc_trim = getattr(libc, "malloc_trim", None)
    if malloc_trim is None:
        return False
    malloc_trim.argtypes = [ctypes.c_size_t]
    malloc_trim(0)
    return True


def trim_if_large(size: Callable[[], int] = resident, give_back: Callable[[], bool] = trim,
                  above: int = TRIM_ABOVE) -> bool:
    """Trim when the process holds more than ``above`` bytes: whether it did."""
    return size() > above and give_back()


def trim_when_large(reactor: IReactorTime, every: float = TRIM_EVERY) -> LoopingCall:
    """Every ``every`` seconds, trim the heap if the process is large (see
    :func:`trim_if_large`): never while it runs within its usual buffers."""
    loop = LoopingCall(trim_if_large)
    loop.clock = reactor
    loop.start(every, now=False)
    return loop


def tune_for_streams(mmap_threshold: int = 32 << 20, trim_threshold: int = 128 << 20, arenas: int = 1) -> bool:
    """Apply the thresholds; False where the C library is not glibc."""
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return (bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))
            and bool(mallopt(M_ARENA_MAX, arenas)))
