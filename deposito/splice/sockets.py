"""What the kernel paths (relay, fan-out, hand-off) share: their errors,
their pipes, a stand-in for a socket in the reactor, and what the kernel
tells of a socket (bytes written, a peer gone, a peer's user)."""

from __future__ import annotations

import fcntl
import os
import select
import socket
import struct
import termios
from typing import Callable, Protocol

from twisted.internet.interfaces import IReadDescriptor, IWriteDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer

from deposito.errors import DepositoError
from deposito.twisted_internals import IStreamTransport

PIPE_SIZE = 1 << 20
_SPLICE = getattr(os, "splice", None)
_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", None)
TEE_FLAGS = _FLAGS  # tee() takes splice()'s flags


class SourceLost(DepositoError):
    """The storage server stopped sending mid-relay."""

    code = "unavailable"


class ReaderLost(DepositoError):
    """The client went away mid-relay."""

    code = "unavailable"



class Descriptor(Protocol):
    """Anything with a file descriptor: a socket transport, a passed socket."""

    def fileno(self) -> int: ...


def has_splice() -> bool:
    """Whether this system has splice()."""
    return _SPLICE is not None


def splice(src: int, dst: int, count: int) -> int:
    """Move up to ``count`` bytes from descriptor ``src`` to ``dst`` without
    blocking (one of them a pipe); raises BlockingIOError when nothing can
    move now. Only where :func:`has_splice`."""
    assert _SPLICE is not None
    moved: int = _SPLICE(src, dst, count, flags=_FLAGS)
    return moved


def make_pipe() -> tuple[int, int]:
    """A non-blocking pipe of PIPE_SIZE where the system allows it."""
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    if _F_SETPIPE_SZ is not None:
        try:
            fcntl.fcntl(w, _F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass  # the system's limit: a smaller pipe works too
    return r, w


def set_pipe_size(fd: int, size: int) -> None:
    """Resize pipe ``fd`` (see :func:`make_pipe`)."""
    if _F_SETPIPE_SZ is not None:
        fcntl.fcntl(fd, _F_SETPIPE_SZ, size)


@implementer(IReadDescriptor, IWriteDescriptor)
class SocketWaiter:
    """Stands in for a socket transport in the reactor while something other
    than Twisted reads or writes its socket: ``ready()`` when the socket can
    be read or written (whichever the waiter was added for), ``lost()`` when
    the reactor gives up on it. The caller removes the waiter when done."""

    def __init__(self, transport: Descriptor, ready: Callable[[], None], lost: Callable[[], None]) -> None:
        self.transport, self.ready, self.lost = transport, ready, lost

    def fileno(self) -> int:
        return self.transport.fileno()  # -1 once that socket is closed

    def doRead(self) -> None:
        self.ready()

    def doWrite(self) -> None:
        self.ready()

    def connectionLost(self, reason: Failure) -> None:
        self.lost()

    def logPrefix(self) -> str:
        return "socket-waiter"



_BYTES_ACKED = 120  # offset of tcpi_bytes_acked in Linux's struct tcp_info (4.2 on)
_SIOCOUTQ = getattr(termios, "TIOCOUTQ", None)  # SIOCOUTQ for a socket


def written(sock: socket.socket) -> int | None:
    """How many bytes were ever written into TCP socket ``sock``: those the
    peer acknowledged, plus those still queued. Exact while no one writes to
    it (acknowledgements may arrive meanwhile); None where the system cannot
    tell."""
    if _SIOCOUTQ is None or not hasattr(socket, "TCP_INFO"):
        return None
    try:
        for _ in range(16):
            acked = _acked(sock)
            queued = struct.unpack("i", fcntl.ioctl(sock.fileno(), _SIOCOUTQ, b"\0" * 4))[0]
            if acked is None:
                return None
            if _acked(sock) == acked:  # no acknowledgement in between: the sum is exact
                return acked + queued
    except OSError:
        pass
    return None


def taken(sock: socket.socket) -> tuple[int, int] | None:
    """What the peer of TCP socket ``sock`` has taken and what waits for it:
    the bytes it acknowledged, and those queued for it; None where the
    system cannot tell."""
    if _SIOCOUTQ is None or not hasattr(socket, "TCP_INFO"):
        return None
    try:
        acked = _acked(sock)
        queued = struct.unpack("i", fcntl.ioctl(sock.fileno(), _SIOCOUTQ, b"\0" * 4))[0]
    except OSError:
        return None
    return None if acked is None else (acked, queued)


def _acked(sock: socket.socket) -> int | None:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    if len(info) < _BYTES_ACKED + 8:
        return None
    return struct.unpack_from("Q", info, _BYTES_ACKED)[0]


def reader_gone(sock: socket.socket) -> bool:
    """Whether the peer of ``sock`` has gone (reset, or closed both ways)."""
    p = select.poll()
    p.register(sock.fileno(), select.POLLHUP | select.POLLERR)
    try:
        return any(events & (select.POLLHUP | select.POLLERR) for _, events in p.poll(0))
    except OSError:
        return True


def same_user(transport: IStreamTransport) -> bool:
    """Whether the peer of Unix socket ``transport`` runs as this process's user, or as root."""
    try:
        _, uid, _ = struct.unpack("3i", transport.getHandle().getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    except (OSError, AttributeError):
        return False
    return uid in (0, os.geteuid())

