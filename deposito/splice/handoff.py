"""Handing the reader's socket to a storage server on this host (the
proxy's side of deposito.protocols.handoff): the server writes the blob
into it, and the proxy counts what went in by the socket's own counters."""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING, TypeVar

from twisted.internet import defer, task
from twisted.internet.interfaces import IPullProducer, IReactorTime
from zope.interface import implementer

from deposito import twisted_internals
from deposito.errors import DepositoError
from deposito.protocols.lines import send_now
from deposito.splice.sockets import ReaderLost, reader_gone, written
from deposito.twisted_internals import IStreamReactor, IStreamTransport

if TYPE_CHECKING:
    from deposito.protocols.blobclient import BlobClient

_T = TypeVar("_T")


def can_hand_off(target: object) -> bool:
    """Whether the reader's transport ``target`` can be handed to a storage server on this host."""
    return twisted_internals.is_plain_tcp_server(target) and written(
        target.getHandle()) is not None  # type: ignore[attr-defined]


@implementer(IPullProducer)
class _WhenSent:
    def __init__(self, reactor: IStreamReactor, target: IStreamTransport, d: defer.Deferred[None]) -> None:
        self.reactor, self.target, self.d = reactor, target, d

    def resumeProducing(self) -> None:
        if twisted_internals.write_pending(self.reactor, self.target):
            return  # still sending: asked again once it is done
        self.target.unregisterProducer()
        self.d.callback(None)

    def stopProducing(self) -> None:
        if not self.d.called:
            self.d.errback(ReaderLost("the reader went away"))

    def give_up(self, timeout: float) -> None:
        if not self.d.called:
            self.target.unregisterProducer()
            self.d.errback(ReaderLost(f"the reader took nothing for {timeout:.0f} s"))


def sent(reactor: IStreamReactor, target: IStreamTransport, timeout: float) -> defer.Deferred[None]:
    """Fires once socket transport ``target`` has handed the kernel all that
    was written to it; fails with ReaderLost if that takes ``timeout`` seconds."""
    send_now(target)
    if not twisted_internals.write_pending(reactor, target):
        return defer.succeed(None)
    d: defer.Deferred[None] = defer.Deferred()
    waiter = _WhenSent(reactor, target, d)
    target.registerProducer(waiter, False)
    if not d.called:
        deadline = reactor.callLater(timeout, waiter.give_up, timeout)

        def settled(result: _T) -> _T:
            if deadline.active():
                deadline.cancel()
            return result

        d.addBoth(settled)
    return d


class HandOff:
    """The storage server behind ``client``, on this host, writes the blob
    it opened (``client.open_blob``) straight into the reader's socket
    (transport ``target``), after what was written to that first.

    :meth:`run` returns once the server is done with the socket. It raises
    ReaderLost when the reader went away or took nothing for
    ``idle_timeout`` seconds (the reader's connection must then go), and the
    server's reason when the copy failed (the next copy may go on).
    :attr:`moved` counts the bytes that went into the socket, by the
    socket's own counters, whatever happens.
    """

    def __init__(self, client: BlobClient, target: IStreamTransport, idle_timeout: float) -> None:
        self.client, self.target, self.idle_timeout = client, target, idle_timeout
        self.moved = 0
        self._stalled = False

    async def run(self) -> None:
        target = self.target
        await sent(self.client.reactor, target, self.idle_timeout)
        if not target.connected or target.disconnecting:
            raise ReaderLost("the reader went away")
        sock = target.getHandle()
        start = written(sock)
        if start is None:
            raise ReaderLost("the reader's socket cannot be counted")
        fd = os.dup(sock.fileno())  # the server's: this one may close meanwhile
        reading = twisted_internals.is_reading(self.client.reactor, target)
        target.stopReading()  # nothing of the reader's is read or written here meanwhile
        progress = Progress(self.client.reactor, self.idle_timeout, start)
        watch = task.LoopingCall(self._watch, sock, progress)
        watch.clock = self.client.reactor
        watch.start(self.idle_timeout / WATCHES, now=False)
        failed: DepositoError | None = None
        try:
            await self.client.send_to(fd)
        except DepositoError as e:
            failed = e
        finally:
            if watch.running:
                watch.stop()
            os.close(fd)
            now = await self._count(sock)
            if now is not None:
                self.moved = now - start
            if reading and target.connected and not target.disconnecting:
                target.startReading()
        lost = None
        if self._stalled:
            lost = ReaderLost(f"nothing went to the reader for {self.idle_timeout:.0f} s")
        elif failed is not None and self.client.lending:
            # This end cut the server off (it was taken for down) before it
            # let go of the socket: alive, it may yet write into it, so no
            # other copy may go on. One that answered, or closed the
            # connection from its end (a dead one has), writes no more.
            lost = ReaderLost(f"the storage server stopped answering mid-blob ({failed})")
        elif now is None or (failed is not None and reader_gone(sock)):
            lost = ReaderLost("the reader went away")
        if lost is not None:
            try:
                # Closing this end would not close the socket while the server
                # holds it: shut it down for both, so the reader hears at once
                # and the server can write no more.
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            raise lost
        if failed is not None:
            raise failed

    async def _count(self, sock: socket.socket) -> int | None:
        """:func:`written` of the reader's socket, asked again for up to a
        second while it cannot be told (acknowledgements of the bytes still
        on their way kept changing it while this thread waited for its turn
        in a busy process); None once the reader has gone."""
        for _ in range(COUNT_TRIES):
            if not self.target.connected:
                return None
            now = written(sock)
            if now is not None:
                return now
            await task.deferLater(self.client.reactor, 0.01, lambda: None)
        return None

    def _watch(self, sock: socket.socket, progress: Progress) -> None:
        if progress.stalled(written(sock)):
            # The server may still be writing into the socket when this end
            # cuts it off: the stream cannot go on from another copy.
            self._stalled = True
            self.client.transport.abortConnection()


WATCHES = 6  # looks at the reader's socket per idle timeout: a stall is cut within a sixth of it past
COUNT_TRIES = 100  # tries, 10 ms apart, to count what went to the reader's socket once the server is done


class Progress:
    """Whether a count of bytes moved within the last ``idle`` seconds, from
    counts taken now and then (None: the count cannot be taken this time,
    which is no progress, and no stall before ``idle`` has passed)."""

    def __init__(self, clock: IReactorTime, idle: float, count: int) -> None:
        self.clock, self.idle = clock, idle
        self.count, self.since = count, clock.seconds()

    def stalled(self, count: int | None) -> bool:
        now = self.clock.seconds()
        if count is not None and count != self.count:
            self.count, self.since = count, now
            return False
        return now - self.since >= self.idle

