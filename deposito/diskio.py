"""How a blob's bytes meet the disk.

Big blobs (``DIRECT_MIN`` and up) bypass the page cache with O_DIRECT where
the filesystem allows it: bytes go from a reused, aligned buffer straight to
the device, and no page of cache is allocated, dirtied, written back and
freed for them; they are read around the cache too. A big blob written
through the cache on purpose (the copy reads go to first) is read through
it.

Everything else goes through the page cache with write-behind: each finished
8 MiB is started on its way to the disk as the next arrives (Linux's
sync_file_range), so dirty pages stay few and the fsync at commit has little
left to do. A smaller blob that comes in pieces has each piece started on
its way as the next arrives (:meth:`Appender.start_out`).

None of this replaces fsync: a blob is durable only once it is fsynced.
Every call here blocks: callers run on a device thread, never the reactor.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap
import os
import threading
from typing import Any

from deposito.errors import NoSpace

ALIGN = 4096  # offsets, lengths and buffers of O_DIRECT I/O are multiples of this
PIECE = 1 << 20  # size of the aligned buffers, and of each direct write
DIRECT_MIN = 8 << 20  # blobs from this size on bypass the page cache
_NOWAIT = getattr(os, "RWF_NOWAIT", None)  # Linux: a read that fails rather than wait for the disk
WRITE_BEHIND = 8 << 20

_O_DIRECT = getattr(os, "O_DIRECT", 0)


def libc_function(name: str, argtypes: list[Any] | None, restype: Any) -> Any:
    """A function of the C library through ctypes (errno kept), or None where it has none.
    ``argtypes`` None: the arguments are not checked (a variadic function)."""
    try:
        fn = getattr(ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True), name)
    except (OSError, AttributeError, TypeError):
        return None
    fn.argtypes = argtypes
    fn.restype = restype
    return fn


_sync_file_range = libc_function(
    "sync_file_range", [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint], ctypes.c_int)
_SFR_WAIT_BEFORE, _SFR_WRITE, _SFR_WAIT_AFTER = 1, 2, 4


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Begin writing out ``length`` bytes at ``offset``; does not wait."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, _SFR_WRITE)


def wait_writeback(fd: int, offset: int, length: int) -> None:
    """Wait until ``length`` bytes at ``offset`` have been written out."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, _SFR_WAIT_BEFORE | _SFR_WRITE | _SFR_WAIT_AFTER)


_syncfs = libc_function("syncfs", [ctypes.c_int], ctypes.c_int)


def sync_filesystem(path: str) -> bool:
    """Make everything written to the filesystem holding ``path`` durable
    (Linux's syncfs); False where that call is missing or failed, so the
    caller fsyncs file by file instead."""
    if _syncfs is None:
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        return _syncfs(fd) == 0
    finally:
        os.close(fd)


# -- aligned buffers: mmap'd (so page-aligned) and reused, never given back to the system

_free: list[mmap.mmap] = []
_free_lock = threading.Lock()
_KEEP = 4  # spare buffers kept for reuse: one big blob's worth (its receive buffers and staging)


def take_buffer() -> mmap.mmap:
    with _free_lock:
        if _free:
            return _free.pop()
    return mmap.mmap(-1, PIECE)


def give_back(buf: mmap.mmap) -> None:
    with _free_lock:
        if len(_free) < _KEEP:
            _free.append(buf)
            return
    try:
        buf.close()
    except BufferError:  # still seen through a view (a failed write's traceback): freed with it
        pass


class _OpenHow(ctypes.Structure):  # Linux's struct open_how, for openat2
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_syscall = libc_function("syscall", None, ctypes.c_long)
_OPENAT2 = 437  # the same number on every Linux architecture but alpha
_RESOLVE_CACHED = 0x20  # fail with EAGAIN rather than read anything from the disk
_AT_FDCWD = -100
_resolve_cached = [os.uname().sysname == "Linux" and os.uname().machine != "alpha" and _syscall is not None]


def open_resident(path: str) -> int | None:
    """A read-only descriptor of ``path``, if opening it needs nothing that is
    not already in memory (Linux 5.12's RESOLVE_CACHED): it cannot wait on the
    disk, so the reactor thread may call it. None when it would, or cannot."""
    if not _resolve_cached[0]:
        return None
    how = _OpenHow(os.O_RDONLY | os.O_CLOEXEC, 0, _RESOLVE_CACHED)
    fd = _syscall(ctypes.c_long(_OPENAT2), ctypes.c_int(_AT_FDCWD), os.fsencode(path),
                  ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
    if fd >= 0:
        return fd
    if ctypes.get_errno() in (errno.ENOSYS, errno.EINVAL, errno.E2BIG, errno.EPERM):
        _resolve_cached[0] = False  # an older kernel, or a sandbox that refuses it: stop asking
    return None


def open_direct(path: str, flags: int) -> int | None:
    """A second descriptor of ``path`` that bypasses the page cache, or None
    where the system or filesystem has no O_DIRECT."""
    if not _O_DIRECT:
        return None
    try:
        return os.open(path, flags | _O_DIRECT)
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.EOPNOTSUPP):
            return None
        raise


def write_all(fd: int, data, offset: int | None = None) -> None:
    """Write every byte of ``data`` (at ``offset``, or the file position); NoSpace when the disk is full."""
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view) if offset is None else os.pwrite(fd, view, offset)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise NoSpace("disk full") from e
            raise
        if n == 0:
            raise NoSpace("disk full")
        view = view[n:]
        if offset is not None:
            offset += n


class Appender:
    """Appends a stream to a new file: a big one (unless ``direct`` is False)
    in whole aligned pieces around the page cache when the filesystem allows,
    anything else through the page cache with write-behind."""

    def __init__(self, path: str, size: int, direct: bool = True) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self.written = 0  # bytes in the file
        self._behind = 0  # bytes handed to writeback
        self._small = size < WRITE_BEHIND  # (see start_out)
        self._direct: int | None = None
        self._buf: mmap.mmap | None = None
        self._staged = 0
        if direct and size >= DIRECT_MIN:
            self._direct = open_direct(path, os.O_WRONLY)
            if self._direct is not None:
                self._buf = take_buffer()

    @property
    def direct(self) -> bool:
        return self._direct is not None

    def write(self, data: bytes | memoryview) -> None:
        if self._direct is None:
            write_all(self.fd, data, self.written)
            self.written += len(data)
            while self.written - self._behind >= WRITE_BEHIND:
                start_writeback(self.fd, self._behind, WRITE_BEHIND)
                if self._behind:
                    wait_writeback(self.fd, self._behind - WRITE_BEHIND, WRITE_BEHIND)
                self._behind += WRITE_BEHIND
            return
        assert self._buf is not None
        view = memoryview(data)
        while view:
            n = min(len(view), PIECE - self._staged)
            self._buf[self._staged:self._staged + n] = view[:n]
            self._staged += n
            view = view[n:]
            if self._staged == PIECE:
                self._write_staged(PIECE)
            if self._direct is None and view:  # direct writes were refused: the rest as plain writes
                self.write(bytes(view))
                return

    def start_out(self) -> None:
        """Start what was written through the page cache and not yet handed to
        writeback on its way to the disk, without waiting: for a file smaller
        than a write-behind window that comes in pieces, each is on the disk,
        or on its way, while the next arrives."""
        if self._small and self.written > self._behind:
            start_writeback(self.fd, self._behind, self.written - self._behind)
            self._behind = self.written

    def write_piece(self, piece: memoryview) -> None:
        """Like :meth:`write`, for bytes in a page-aligned buffer (one of
        :func:`take_buffer`'s): a whole number of aligned blocks arriving
        when nothing is staged goes to the disk straight from it."""
        if self._direct is None or self._staged or len(piece) % ALIGN:
            self.write(piece)
            return
        try:
            write_all(self._direct, piece, self.written)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            write_all(self.fd, piece, self.written)  # the filesystem will not: through the cache
            self._stop_direct()
        self.written += len(piece)

    def _write_staged(self, length: int) -> None:
        assert self._buf is not None and self._direct is not None
        piece = memoryview(self._buf)[:length]
        try:
            write_all(self._direct, piece, self.written)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            # The filesystem opened O_DIRECT but will not take these writes:
            # write the staged bytes through the page cache, and all that follows.
            write_all(self.fd, piece, self.written)
            self._stop_direct()
        self.written += length
        rest = self._staged - length
        if rest and self._buf is not None:
            self._buf[:rest] = self._buf[length:self._staged]
        self._staged = rest

    def finish(self) -> None:
        """Write what is still staged; the file then holds every byte (not yet fsynced)."""
        if self._direct is not None and self._staged:
            aligned = self._staged // ALIGN * ALIGN
            if aligned:
                self._write_staged(aligned)
        if self._staged:
            assert self._buf is not None
            write_all(self.fd, memoryview(self._buf)[:self._staged], self.written)
            self.written += self._staged
            self._staged = 0

    def close(self) -> None:
        self._staged = 0
        self._stop_direct()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _stop_direct(self) -> None:
        if self._direct is not None:
            os.close(self._direct)
            self._direct = None
        if self._buf is not None and not self._staged:
            give_back(self._buf)
            self._buf = None


class Reader:
    """Reads pieces of a file: a big one around the page cache unless
    ``cached`` (it was written through the cache to stay there)."""

    _buffers = threading.local()  # one aligned buffer per reading thread

    def __init__(self, path: str, cached: bool = False, fd: int | None = None) -> None:
        """``fd``: the file, opened already; it is then read through the cache."""
        self.fd = os.open(path, os.O_RDONLY) if fd is None else fd
        self.size = os.fstat(self.fd).st_size
        direct = fd is None and not cached and self.size >= DIRECT_MIN
        self._direct = open_direct(path, os.O_RDONLY) if direct else None

    def pread(self, length: int, offset: int) -> bytes:
        """Up to ``length`` bytes at ``offset`` (fewer only at the end of the file)."""
        if self._direct is None or length > PIECE or offset % ALIGN:
            return os.pread(self.fd, length, offset)
        buf = getattr(self._buffers, "buf", None)
        if buf is None:
            buf = self._buffers.buf = mmap.mmap(-1, PIECE)
        view = memoryview(buf)
        want = -(-length // ALIGN) * ALIGN
        try:
            n = os.preadv(self._direct, [view[:want]], offset)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            os.close(self._direct)  # the filesystem will not: read through the cache
            self._direct = None
            return os.pread(self.fd, length, offset)
        return bytes(view[:min(n, length)])

    def pread_resident(self, view: memoryview, offset: int) -> int | None:
        """Read into ``view`` only from the page cache, never waiting on the
        disk: the count read, or None when some of it is not in memory (or
        the system cannot tell). For files read through the cache only."""
        if self._direct is not None or _NOWAIT is None:
            return None
        try:
            n = os.preadv(self.fd, [view], offset, _NOWAIT)
        except BlockingIOError:
            return None
        except OSError as e:
            if e.errno in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                return None
            raise
        return n if n == len(view) or offset + n >= self.size else None

    @property
    def through_cache(self) -> bool:
        """Whether reads go through the page cache (a small file, or a big
        one found in it): then the kernel can send from there too."""
        return self._direct is None

    def can_close_now(self) -> bool:
        """Whether closing cannot wait on the disk: the file still has a name
        (the last close of a deleted file frees its blocks, which can wait)."""
        return self.fd >= 0 and os.fstat(self.fd).st_nlink > 0

    def close(self) -> None:
        for fd in (self.fd, self._direct):
            if fd is not None and fd >= 0:
                os.close(fd)
        self.fd, self._direct = -1, None

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
