"""Sending a stored blob, or a range of it, block by block, each checked first.

The blob protocol answers a READ (and the local port a SEND) by handing a
:class:`BlobSender` the transport and the device: the sender reads, checks,
quarantines a corrupt copy and cuts the connection, or sends what the page
cache holds with sendfile (to a proxy) or straight from its read buffer (to
a reader's socket the proxy passed over).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Callable, cast

from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from deposito import twisted_internals
from deposito.blobmeta import BLOCK, BlobMeta, Corrupt
from deposito.diskio import Reader
from deposito.interfaces import IDevice
from deposito.splice.sockets import SocketWaiter
from deposito.twisted_internals import IStreamReactor, IStreamTransport

if TYPE_CHECKING:
    from deposito.protocols.handoff import PassedSocket

_SENDFILE = getattr(os, "sendfile", None)
# Reads up to this size go out in one send with their reply. A bigger one is
# cheaper sent by the kernel from the checked pages, after the reply: a
# 1 MiB READ here takes 0.82 ms so, 0.95 ms copied through the process.
WHOLE_MAX = 64 << 10


def read_whole(device: IDevice, f: Reader, meta: BlobMeta, offset: int, end: int) -> bytes | None:
    """Bytes [offset, end) of a blob of one block that is all in memory, no
    more than WHOLE_MAX of them, read and checked at once, to go out with
    their reply; None for anything else (a :class:`BlobSender` then reads
    them, and deals with a failing read). Raises blobmeta.Corrupt when the
    block fails its check: the request is refused before any reply."""
    if meta.size > BLOCK or offset >= end or end - offset > WHOLE_MAX:
        return None
    try:
        view = device.read_block_now(f, meta, 0)
    except OSError:
        return None
    if view is None:
        return None
    return bytes(view[offset:end])


@implementer(IPushProducer)
class BlobSender:
    """Sends bytes [offset, end) of a blob block by block, each whole block
    checked against its checksum first (also where the range starts or ends
    within it).

    A block all in the page cache is read and checked on the reactor thread
    (a read that never waits on the disk); any other is read on a reader
    thread, one block ahead of the one being sent, so the disk and the
    network work at the same time. A checked block of a cached copy goes out
    with sendfile, from the same pages and with no copy through this process;
    into a reader's socket the proxy passed over, it is sent from the buffer
    it was checked in (the reader, on this host, takes that for less).
    The peer's transport pauses the sending (the read ahead waits). A block
    that fails its check is never sent: the copy is reported corrupt and the
    connection is cut, so the reader moves to another copy.
    """

    log = Logger()
    burst = 8  # blocks moved in one go before other connections get a turn

    def __init__(self, reactor: IStreamReactor, device: IDevice, f: Reader, meta: BlobMeta, offset: int, end: int,
                 transport: IStreamTransport | PassedSocket, done: Callable[[], None],
                 progress: Callable[[], None], report: bool = True) -> None:
        self.reactor = reactor
        self.report = report  # a bad block is reported (the copy moved aside); not for a copy set aside already
        self.device, self.f, self.meta, self.offset, self.end = device, f, meta, offset, end
        self.transport, self.done, self.progress = transport, done, progress
        self._read_at = offset  # where the next block read starts
        # Read and checked, not yet sent: the bytes, or (offset, length) in the
        # file when the kernel is to send them.
        self._ready: bytes | tuple[int, int] | None = None
        self._sending: tuple[int, int] | None = None  # (file offset, length) the kernel is sending
        self._writable = SocketWaiter(transport, self._can_write, self._lost)
        self._again: IDelayedCall | None = None  # the call that goes on after a burst
        self.paused = False
        self.reading = False
        self.stopped = False

    def start(self) -> None:
        self.transport.registerProducer(self, True)
        self._pump()

    def _pump(self) -> None:
        """Send what is ready and read what comes next, as far as can be done
        without waiting; a burst at most, then the reactor's other work."""
        self._again = None
        for _ in range(self.burst):
            if self.stopped:
                return
            moved = False
            if self._ready is not None and self._sending is None and not self.paused:
                self._send()
                moved = True
            if self.stopped or self._ready is not None or self.reading:
                if not moved:
                    return
                continue
            if self._read_at >= self.end:
                if self._sending is None:
                    self._finish()
                return
            try:
                if not self._read_now():
                    self._read_on_thread()
                    return
            except Corrupt as e:
                self._corrupt(str(e))
                return
            except OSError:
                self.log.failure("reading blob {blob}", blob=self.meta.blob)
                self.stopProducing()
                self.transport.abortConnection()
                return
        self._again = self.reactor.callLater(0, self._pump)

    def _read_now(self) -> bool:
        """Read and check the next block here, if it is all in memory."""
        if not getattr(self.f, "through_cache", False):
            return False
        index, skip = divmod(self._read_at, BLOCK)
        view = self.device.read_block_now(self.f, self.meta, index)
        if view is None:
            return False
        length = min(len(view) - skip, self.end - self._read_at)
        if self._kernel_can_send():  # and it still can when the block's turn comes: only we write
            self._ready = (self._read_at, length)
        elif getattr(self.transport, "passed", False) and not self.paused:
            self._read_at += length
            self._send_view(view[skip:skip + length])
            return True
        else:
            self._ready = bytes(view[skip:skip + length])
        self._read_at += length
        return True

    def _read_on_thread(self) -> None:
        self.reading = True
        d = self.device.read_block(self.f, self.meta, self._read_at // BLOCK)
        d.addCallbacks(self._got, self._failed)

    def _got(self, block: bytes) -> None:
        self.reading = False
        if self.stopped:
            self.device.close(self.f)  # closed only now: it was being read
            return
        skip = self._read_at % BLOCK
        stop = min(len(block), skip + self.end - self._read_at)
        self._ready = block[skip:stop] if skip or stop < len(block) else block
        self._read_at += len(self._ready)
        self._pump()

    def _send(self) -> None:
        ready, self._ready = self._ready, None
        assert ready is not None
        if isinstance(ready, tuple):
            self._sending = ready
        elif self._kernel_can_send():
            # The block was read and checked from the page cache: the kernel
            # sends those same pages, with no copy through this process.
            self._sending = (self._read_at - len(ready), len(ready))
        else:
            self.offset += len(ready)
            self.progress()
            self.transport.write(ready)  # may pause us: the next block is read all the same
            return
        self.offset += self._sending[1]
        self.progress()
        self._send_file()

    def _send_view(self, view: memoryview) -> None:
        """Send a checked block into a passed socket now, before another read
        uses the view's buffer again: the socket copies only what it does not
        take at once."""
        self.offset += len(view)
        self.progress()
        cast("PassedSocket", self.transport).write(view)

    def _kernel_can_send(self) -> bool:
        t = self.transport
        if _SENDFILE is None or not getattr(self.f, "through_cache", False):
            return False
        if getattr(t, "passed", False):
            # A reader's socket the proxy passed over (deposito.protocols.handoff),
            # on this host: the reader takes plain sends of the checked block
            # for less than pages sent by the kernel (bench/PROFILE.md).
            return False
        return (twisted_internals.is_plain_tcp_server(t)
                and not twisted_internals.write_pending(self.reactor, t))  # nothing of Twisted's waits to go first

    def _can_write(self) -> None:
        self.reactor.removeWriter(self._writable)
        if self._sending is not None and not self.stopped:
            self._send_file()
            if self._sending is None:
                self._pump()

    def _send_file(self) -> None:
        """Go on sending the block in :attr:`_sending`; wait when the socket is full."""
        assert self._sending is not None
        start, length = self._sending
        while length:
            try:
                n = _SENDFILE(self.transport.fileno(), self.f.fd, start, length)  # type: ignore[misc]
            except BlockingIOError:
                self._sending = (start, length)
                self.reactor.addWriter(self._writable)
                return
            except OSError:
                n = 0
            if n == 0:  # the peer is gone, or the file shrank under us
                self._sending = None
                self.stopProducing()
                self.transport.abortConnection()
                return
            start, length = start + n, length - n
        self._sending = None

    def _lost(self) -> None:
        """The socket was lost while a block waited to go into it."""
        self.stopProducing()
        self.transport.abortConnection()

    def _failed(self, failure: Failure) -> None:
        self.reading = False
        if self.stopped:  # the reader went away meanwhile: not the blob's fault
            self.device.close(self.f)
            return
        if failure.check(Corrupt):
            self._corrupt(failure.getErrorMessage())
            return
        self.log.failure("reading blob {blob}", failure, blob=self.meta.blob)
        self.stopProducing()
        self.transport.abortConnection()

    def _corrupt(self, why: str) -> None:
        if self.report:
            self.device.corrupt(self.meta.blob, why)
        self.stopProducing()
        self.transport.abortConnection()

    def _finish(self) -> None:
        self.stopped = True
        self.transport.unregisterProducer()
        self.device.close(self.f)
        self.done()

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        if not self.stopped and self._again is None:
            self._pump()

    def stopProducing(self) -> None:
        if not self.stopped:
            self.stopped = True
            self._ready = None
            if self._again is not None:
                self._again.cancel()
                self._again = None
            if self._sending is not None:
                self._sending = None
                self.reactor.removeWriter(self._writable)
            if not self.reading:  # else closed when the read in progress returns
                self.device.close(self.f)
