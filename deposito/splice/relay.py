"""Relaying a blob's bytes from a storage server to a client inside the kernel.

A GET through the proxy crosses two sockets. Copying each byte up into the
proxy and down again is most of the proxy's work on a large GET; Linux's
splice() moves the pages from one socket to a pipe and on to the other
socket without that copy. The proxy still counts every byte, pauses on a
slow client (the pipe fills, the server's socket is left unread), and gives
up on a server that goes quiet.

Only for plain TCP on both sides (a TLS client needs its bytes encrypted in
the proxy) and where os.splice exists; everything else takes the ordinary
path.
"""

from __future__ import annotations

import os

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from deposito import twisted_internals
from deposito.errors import DepositoError
from deposito.splice.sockets import PIPE_SIZE, ReaderLost, SocketWaiter, SourceLost, has_splice, make_pipe, splice
from deposito.twisted_internals import IStreamReactor, IStreamTransport


def can_splice(source: object, target: object) -> bool:
    """Whether bytes can go from transport ``source`` to ``target`` by splice."""
    return has_splice() and all(twisted_internals.is_plain_tcp(t) for t in (source, target))


@implementer(IPushProducer)
class Relay:
    """Moves ``count`` bytes from socket transport ``source`` to ``target``.

    Both transports stop reading for the time of the relay, and those that
    were reading read again after (each must have nothing left to write); :attr:`done` fires with the byte count once every
    byte is in the target's socket, or fails with SourceLost or ReaderLost;
    :attr:`moved` counts the bytes the target has, whatever happens. The
    relay is the target's producer meanwhile, so a target that goes away
    stops it; whoever owns the source calls :meth:`fail` if it goes away.
    """

    log = Logger()

    def __init__(self, reactor: IStreamReactor, source: IStreamTransport, target: IStreamTransport, count: int,
                 idle_timeout: float) -> None:
        self.reactor, self.source, self.target = reactor, source, target
        self.count = count
        self.idle_timeout = idle_timeout
        self.moved = 0  # bytes written to the target
        self.taken = 0  # bytes taken from the source (the difference waits in the pipe)
        self.done: defer.Deferred[int] = defer.Deferred()
        self.reading = False
        self.writing = False
        self._readable = SocketWaiter(source, self.pump, lambda: self.fail(SourceLost("storage server connection lost")))
        self._writable = SocketWaiter(target, self._can_write, lambda: self.fail(ReaderLost("the reader went away")))
        self._pipe: tuple[int, int] | None = None
        self._idle: IDelayedCall | None = None
        self._was_reading: list[IStreamTransport] = []

    def start(self) -> defer.Deferred[int]:
        if any(twisted_internals.write_pending(self.reactor, t) for t in (self.source, self.target)):
            raise RuntimeError("a relay needs both sockets to have sent all that was written to them")
        self._was_reading = [t for t in (self.source, self.target)  # read again after
                             if twisted_internals.is_reading(self.reactor, t)]
        self.source.stopReading()
        self.target.stopReading()
        self._pipe = make_pipe()
        self._idle = self.reactor.callLater(self.idle_timeout, self._timed_out)
        self.target.registerProducer(self, True)
        self.pump()
        return self.done

    # IPushProducer, as the target's producer: its buffer stays empty, so
    # only its loss matters.
    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        self.fail(ReaderLost("the reader went away"))

    def pump(self) -> None:
        """Move what can be moved now; then wait for the target to take more
        when bytes wait in the pipe, else for the source to send more."""
        if self.done.called or self._pipe is None:
            return
        r, w = self._pipe
        progressed = False
        while self.moved < self.count:
            moved = False
            if self.taken < self.count and self.taken - self.moved < PIPE_SIZE:
                try:
                    n = splice(self.source.fileno(), w, min(PIPE_SIZE - (self.taken - self.moved),
                                                            self.count - self.taken))
                except BlockingIOError:
                    n = -1
                except OSError as e:
                    return self.fail(SourceLost(f"reading from the storage server: {e.strerror}"))
                if n == 0:
                    return self.fail(SourceLost("the storage server closed the connection mid-blob"))
                if n > 0:
                    self.taken += n
                    moved = True
            if self.taken > self.moved:
                try:
                    n = splice(r, self.target.fileno(), self.taken - self.moved)
                except BlockingIOError:
                    n = -1
                except OSError as e:
                    return self.fail(ReaderLost(f"the reader went away ({e.strerror})"))
                if n > 0:
                    self.moved += n
                    moved = True
            if not moved:
                break
            progressed = True
        if self.moved == self.count:
            return self._finish()
        if progressed and self._idle is not None and self._idle.active():
            self._idle.reset(self.idle_timeout)
        # Bytes in the pipe: the target is full, wait until it takes more. An
        # empty pipe: the source had nothing, wait until it sends more.
        want_write = self.taken > self.moved
        if want_write and not self.writing:
            self.reactor.addWriter(self._writable)
            self.writing = True
        if want_write == self.reading:
            if self.reading:
                self.reactor.removeReader(self._readable)
            else:
                self.reactor.addReader(self._readable)
            self.reading = not self.reading

    def _can_write(self) -> None:
        self.reactor.removeWriter(self._writable)
        self.writing = False
        self.pump()

    def _timed_out(self) -> None:
        self._idle = None
        self.fail(SourceLost(f"no byte from the storage server for {self.idle_timeout:.0f} s"))

    def _stop(self) -> None:
        if self.reading:
            self.reactor.removeReader(self._readable)
            self.reading = False
        if self.writing:
            self.reactor.removeWriter(self._writable)
            self.writing = False
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None
        if self._pipe is not None:
            for fd in self._pipe:
                os.close(fd)
            self._pipe = None
        if getattr(self.target, "producer", None) is self:
            self.target.unregisterProducer()

    def _read_again(self, transport: IStreamTransport) -> None:
        if transport in self._was_reading and transport.connected and not transport.disconnecting:
            transport.startReading()

    def _finish(self) -> None:
        self._stop()
        self._read_again(self.source)
        self._read_again(self.target)
        self.done.callback(self.moved)

    def fail(self, err: DepositoError) -> None:
        """Give up. The source connection is cut (its blob is half read); so
        is the target when the reader went away, else it reads again."""
        if self.done.called:
            return
        self._stop()
        if self.source.connected:
            self.source.abortConnection()
        if isinstance(err, ReaderLost):
            if self.target.connected:
                self.target.abortConnection()
        else:
            self._read_again(self.target)
        self.done.errback(err)
