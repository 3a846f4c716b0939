"""The client's side of the text protocol: one connection's framing, and
each request in flight reading its reply (a pull producer sends a PUT's
bytes; a GET's bytes go to a file object or a consumer).

:class:`deposito.client.DepositoClient` makes the requests; the replies are
parsed by :mod:`deposito.wire`.
"""

from __future__ import annotations

import hashlib
from collections import deque
from typing import IO, Any, Callable, Optional, Union

from twisted.internet import defer
from twisted.internet.interfaces import IConsumer, IPullProducer
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from deposito.errors import DepositoError, from_reply
from deposito.localfile import Writable
from deposito.twisted_internals import IStreamTransport
from deposito.wire import (
    CHUNK_SIZE,
    MAX_REPLY_LINE,
    MOST_LINES,
    ChecksumMismatch,
    ConnectionLost,
    Download,
    Progress,
    ProtocolError,
    check_reply,
    decode,
    encode,
    name_line,
    parse_count,
    parse_get_header,
    parse_stored,
    text_field,
)


REQUEST_TIMEOUT = 300.0  # seconds a request may go without a byte either way, as the blocking client's


class Request:
    """One request in flight: its line, and how the reply to it is read.
    A ``patient`` one waits for its answer without a timeout."""

    patient = False

    def __init__(self, line: str) -> None:
        self.line = line
        self.deferred: defer.Deferred[Any] = defer.Deferred()
        self.protocol: Optional[DepositoClientProtocol] = None

    def start(self, protocol: DepositoClientProtocol) -> None:
        self.protocol = protocol
        protocol.sendLine(encode(self.line)[:-1])

    def lineReceived(self, line: str) -> None:
        raise NotImplementedError

    def rawDataReceived(self, data: bytes) -> None:
        assert self.protocol is not None
        self.protocol.abandon()

    def connectionLost(self, error: ConnectionLost) -> None:
        """The connection is gone; undo local effects before the failure is delivered."""

    def done(self, result: Any) -> None:
        assert self.protocol is not None
        self.protocol._finished(self, result)


class OneLine(Request):
    def __init__(self, line: str, parse: Callable[[str], Any]) -> None:
        super().__init__(line)
        self.parse = parse

    def lineReceived(self, line: str) -> None:
        try:
            self.done(self.parse(line))
        except DepositoError:
            self.done(Failure())


class MultiLine(Request):
    """``OK <n>`` then n lines, each parsed by ``parse``."""

    def __init__(self, line: str, parse: Callable[[str], Any], most: Optional[int] = MOST_LINES) -> None:
        super().__init__(line)
        self.parse = parse
        self.most = most
        self.remaining: Optional[int] = None
        self.items: list[Any] = []
        self.error: Optional[Failure] = None

    def lineReceived(self, line: str) -> None:
        if self.remaining is None:
            try:
                self.remaining = parse_count(line, self.most)
            except DepositoError:
                self.done(Failure())
                return
        else:
            self.remaining -= 1
            if self.error is None:
                try:
                    self.items.append(self.parse(line))
                except DepositoError:
                    self.error = Failure()
        if self.remaining == 0:
            self.done(self.error if self.error is not None else self.items)


@implementer(IPullProducer)
class FileProducer:
    """Reads ``size`` bytes of a file in fixed chunks, one chunk each time the consumer asks."""

    def __init__(self, file: IO[bytes], size: int, consumer: IConsumer,
                 chunk: Callable[[bytes], None], finished: Callable[[Optional[Failure]], None]) -> None:
        self.file = file
        self.remaining = size
        self.consumer = consumer
        self.chunk = chunk
        self.finished = finished
        self.stopped = False

    def resumeProducing(self) -> None:
        if self.stopped:
            return
        try:
            data = self.file.read(min(CHUNK_SIZE, self.remaining))
            if not data:
                raise ValueError(f"the file ended {self.remaining} bytes early")
            self.remaining -= len(data)
            self.consumer.write(data)
            self.chunk(data)  # (the progress callback: its failure fails the upload, not the reactor)
        except Exception:
            self._finish(Failure())
            return
        if self.remaining == 0:
            self._finish(None)

    def stopProducing(self) -> None:
        self.stopped = True

    def _finish(self, failure: Optional[Failure]) -> None:
        self.stopped = True
        self.consumer.unregisterProducer()
        self.finished(failure)


class Put(Request):
    """PUT: the line, ``OK send``, the bytes through a pull producer, ``OK stored``."""

    def __init__(self, line: str, file: IO[bytes], size: int, close: bool,
                 progress: Optional[Progress]) -> None:
        super().__init__(line)
        self.file = file
        self.size = size
        self.close = close
        self.progress = progress
        self.sent = 0
        self.hash = hashlib.sha256()
        self.state = "asked"
        self.producer: Optional[FileProducer] = None

    def lineReceived(self, line: str) -> None:
        if self.state == "asked":
            try:
                words = check_reply(line).split()
                if words[:2] != ["OK", "send"] or words[2:] != [str(self.size)]:
                    raise ProtocolError(f"expected 'OK send {self.size}', got {line[:200]!r}")
            except DepositoError:
                self._end(Failure())
                return
            self.state = "sending"
            if self.size == 0:
                self.state = "sent"
                return
            assert self.protocol is not None and self.protocol.transport is not None
            self.producer = FileProducer(self.file, self.size, self.protocol.transport,
                                          self._chunk, self._sent)
            self.protocol.transport.registerProducer(self.producer, False)
        elif self.state == "sending":
            # A reply before all bytes went: the byte count is broken, so the connection goes.
            assert self.producer is not None and self.protocol is not None
            self.producer.stopped = True
            self.protocol.transport.unregisterProducer()
            try:
                parse_stored(line)
                failure = Failure(ProtocolError(f"PUT answered before all bytes were sent: {line[:200]!r}"))
            except DepositoError:
                failure = Failure()
            self.protocol.abandon()
            self._end(failure)
        else:
            try:
                stored = parse_stored(line)
                if stored.sha256 != self.hash.hexdigest():
                    raise ChecksumMismatch(
                        f"{stored.name} stored with sha256 {stored.sha256}, sent {self.hash.hexdigest()}")
            except DepositoError:
                self._end(Failure())
                return
            self._end(stored)

    def _chunk(self, data: bytes) -> None:
        assert self.protocol is not None
        self.protocol.resetTimeout()  # bytes going out: the request is alive
        self.hash.update(data)
        self.sent += len(data)
        if self.progress is not None:
            self.progress(self.sent, self.size)

    def _sent(self, failure: Optional[Failure]) -> None:
        if failure is None:
            self.state = "sent"
            return
        # The proxy waits for bytes that will not come: the connection cannot be used again.
        assert self.protocol is not None
        self.protocol.abandon()
        self._end(failure)

    def connectionLost(self, error: ConnectionLost) -> None:
        self._close_file()

    def _close_file(self) -> None:
        if self.close and not self.file.closed:
            self.file.close()

    def _end(self, result: Any) -> None:
        self._close_file()
        self.done(result)


class Get(Request):
    """GET: the line, ``OK <size> ...``, then exactly size raw bytes into the sink."""

    def __init__(self, name: str, sink: Union[IConsumer, Writable], progress: Optional[Progress]) -> None:
        super().__init__(name_line("GET", name))
        self.name = name
        self.sink = sink
        self.consumer: Optional[IConsumer] = IConsumer(sink, None)  # paused when full
        self.progress = progress
        self.hash = hashlib.sha256()
        self.size = 0
        self.remaining = 0
        self.header: dict[str, str] = {}

    def lineReceived(self, line: str) -> None:
        assert self.protocol is not None
        try:
            self.size, self.header = parse_get_header(line)
        except DepositoError:
            self.done(Failure())
            return
        self.remaining = self.size
        if self.size == 0:
            self._complete()
            return
        if self.consumer is not None:
            self.consumer.registerProducer(self.protocol.transport, True)
        self.protocol.setRawMode()

    def rawDataReceived(self, data: bytes) -> None:
        assert self.protocol is not None
        mine, rest = data[: self.remaining], data[self.remaining:]
        self.remaining -= len(mine)
        self.hash.update(mine)
        try:
            self.sink.write(mine)
        except Exception:
            # (its reader gone, its disk full): the rest is not worth reading, as in the
            # blocking client; the connection goes and the next request opens a new one
            failure = Failure()
            if self.consumer is not None:
                self.consumer.unregisterProducer()
            self.protocol.cut()
            self.done(failure)
            return
        if self.progress is not None:
            self.progress(self.size - self.remaining, self.size)
        if self.remaining == 0:
            if self.consumer is not None:
                self.consumer.unregisterProducer()
                self.protocol.transport.resumeProducing()
            self._complete()
            self.protocol.setLineMode(rest)

    def connectionLost(self, error: ConnectionLost) -> None:
        if self.consumer is not None and self.size:
            self.consumer.unregisterProducer()

    def _complete(self) -> None:
        try:
            sha = text_field(self.header, "sha256", "GET reply")
            if sha != self.hash.hexdigest():
                raise ChecksumMismatch(f"{self.name}: received sha256 {self.hash.hexdigest()}, announced {sha}")
            version = int(self.header.get("version", "0"))
        except (DepositoError, ValueError):
            self.done(Failure())
            return
        self.done(Download(name=self.name, size=self.size, sha256=sha, version=version))


class Quit(Request):
    def lineReceived(self, line: str) -> None:
        try:
            check_reply(line)
        except DepositoError:
            self.done(Failure())
            return
        assert self.protocol is not None
        self.protocol.abandon()
        self.done(None)


class DepositoClientProtocol(LineReceiver, TimeoutMixin):
    """Frames the text protocol for one client connection.

    Requests are sent one at a time, each after the reply to the one before,
    and are answered in order. :attr:`greeted` fires with the proxy's greeting
    line; :meth:`whenClosed` gives a Deferred for the end of the connection.
    While a request is under way and nothing comes from the proxy, and no
    byte goes to it, for ``timeout`` seconds, the connection is given up:
    the request fails with ConnectionLost, as when the proxy is lost.
    """

    delimiter = b"\n"
    MAX_LENGTH = MAX_REPLY_LINE
    log = Logger()
    transport: IStreamTransport  # set by makeConnection before any request starts

    timeout = REQUEST_TIMEOUT

    def __init__(self) -> None:
        self.greeted: defer.Deferred[str] = defer.Deferred()
        self.greeting: Optional[str] = None
        self._queue: deque[Request] = deque()
        self._current: Optional[Request] = None
        self._lost: Optional[ConnectionLost] = None
        self._closeWaiters: list[defer.Deferred[None]] = []
        self._closing = False
        self._silent = False  # given up: a request had no answer for ``timeout`` seconds
        self.lost_idle = False  # the proxy closed the connection while no request was under way
        self._told_idle = False  # it said a line while nothing was asked (see lineReceived)
        self.cutting = False  # closed by cut(): the connection goes at once, and the next request opens a new one

    # -- requests

    def request(self, request: Request) -> defer.Deferred[Any]:
        """Queue ``request``; its Deferred fires with the parsed reply."""
        if self._lost is not None or self._closing:
            request.connectionLost(ConnectionLost("connection to the proxy closed"))
            message = self._lost.message if self._lost is not None else "connection to the proxy is closing"
            return defer.fail(ConnectionLost(message))
        self._queue.append(request)
        self._next()
        return request.deferred

    def _next(self) -> None:
        if (self._current is None and self._queue and self.greeted.called
                and self._lost is None and not self._closing):
            self._current = self._queue.popleft()
            self.setTimeout(None if self._current.patient else self.timeout)
            self._current.start(self)

    def _finished(self, request: Request, result: Any) -> None:
        if self._current is request:
            self._current = None
            self.setTimeout(None)
        if isinstance(result, Failure) and isinstance(result.value, ProtocolError):
            self.abandon()
        request.deferred.callback(result)
        self._next()

    def abandon(self) -> None:
        """Close the connection: nothing more is sent, queued requests fail with ConnectionLost."""
        self._closing = True
        if self.transport is not None:
            self.transport.loseConnection()

    def cut(self) -> None:
        """Give up the reply under way unread: the connection closes, and
        (as after an idle close) the next request opens a new one."""
        self._told_idle = self.cutting = True
        self._closing = True
        if self.transport is not None:
            self.transport.abortConnection()  # nothing is worth sending or reading: closed on the next turn

    @property
    def lost(self) -> bool:
        """Whether the connection is closed (not merely closing)."""
        return self._lost is not None

    @property
    def usable(self) -> bool:
        """Whether a request made now would be sent: the connection is
        neither lost nor closing."""
        return self._lost is None and not self._closing

    def whenClosed(self) -> defer.Deferred[None]:
        """A Deferred that fires once the connection is closed."""
        if self._lost is not None:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._closeWaiters.append(d)
        return d

    # -- the wire

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        super().dataReceived(data)

    def timeoutConnection(self) -> None:
        self._silent = True
        self.transport.abortConnection()

    def lineReceived(self, raw: bytes) -> None:
        line = decode(raw)
        if self.greeting is None:
            self.greeting = line
            if line.startswith("OK"):
                self.greeted.callback(line)
                self._next()
            else:
                self.abandon()
                error = from_reply(line) if line.startswith("ERR") else ProtocolError(
                    f"unexpected greeting {line[:200]!r}")
                self.greeted.errback(error)
            return
        if self._current is None:  # nothing asked: the proxy is closing this idle connection (saying why)
            self.log.info("the proxy closes the connection: {line!r}", line=line[:200])
            self._told_idle = True
            self.abandon()
            return
        self._current.lineReceived(line)

    def rawDataReceived(self, data: bytes) -> None:
        if self._current is None:
            self.abandon()
            return
        self._current.rawDataReceived(data)

    def lineLengthExceeded(self, line: bytes) -> None:
        self.log.warn("reply line over {limit} bytes from the proxy", limit=self.MAX_LENGTH)
        self.abandon()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.setTimeout(None)
        detail = reason.getErrorMessage() if reason is not None else "closed"
        if self._silent:
            detail = f"no answer for {self.timeout:.0f} s"
        self._lost = ConnectionLost(f"connection to the proxy lost: {detail}")
        if self.greeting is None:
            self.greeted.errback(ConnectionLost(self._lost.message))
        pending = ([self._current] if self._current is not None else []) + list(self._queue)
        self.lost_idle = not pending and (self._told_idle or not self._closing)
        self._current = None
        self._queue.clear()
        for request in pending:
            request.connectionLost(self._lost)
            if isinstance(request, Quit):
                request.deferred.callback(None)
            else:
                request.deferred.errback(ConnectionLost(self._lost.message))
        waiters, self._closeWaiters = self._closeWaiters, []
        for d in waiters:
            d.callback(None)
