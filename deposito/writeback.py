"""Start and wait for the writing out of a file's dirty pages (Linux's
sync_file_range), so a long stream does not pile up unwritten pages.

Neither call makes data durable (only fsync does); they only spread the disk
work over the stream instead of leaving it all to the final fsync. Where the
call is missing (not Linux) both do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util

WAIT_BEFORE, WRITE, WAIT_AFTER = 1, 2, 4


def _load():
    name = ctypes.util.find_library("c")
    try:
        fn = ctypes.CDLL(name, use_errno=True).sync_file_range
    except (OSError, AttributeError, TypeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _load()


def start(fd: int, offset: int, length: int) -> None:
    """Begin writing out ``length`` bytes at ``offset``; does not wait."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, WRITE)


def wait(fd: int, offset: int, length: int) -> None:
    """Wait until ``length`` bytes at ``offset`` have been written out."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, WAIT_BEFORE | WRITE | WAIT_AFTER)
