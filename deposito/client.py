"""The Twisted client of the text protocol.

``connect(reactor, "tcp:127.0.0.1:7000")`` gives a :class:`DepositoClient`
whose methods return Deferreds. Requests on one connection are answered in
the order they were made; file bytes stream through fixed-size chunks in both
directions, so memory stays bounded whatever the file size.

Failures arrive as exceptions:

- an ``ERR <code>`` reply: the :mod:`deposito.errors` class for that code
  (:class:`~deposito.errors.NotFound`, :class:`~deposito.errors.Unavailable`, ...);
- the connection closed or broke before a reply was complete:
  :class:`ConnectionLost`, which is both a ``DepositoError`` and a
  ``ConnectionError`` (an ``OSError``); every request still waiting fails
  with it, and so does every later request on that client;
- a reply the client cannot read: :class:`ProtocolError` (the connection is
  then closed, since what follows cannot be trusted);
- bytes whose sha256 differs from the one the proxy announced:
  :class:`ChecksumMismatch` (a GET's destination is then not to be trusted).

Connecting itself fails with Twisted's ``twisted.internet.error.ConnectError``
family (for example ``ConnectionRefusedError``).

The value classes and reply parsers here are shared with the blocking client
in :mod:`deposito.blocking`; importing this module does not install a reactor.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections import deque
from typing import IO, Any, Callable, Optional, Union

from attrs import frozen
from twisted.internet import defer
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IConsumer, IPullProducer, IStreamClientEndpoint
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from deposito.errors import BadArgs, DepositoError, from_reply
from deposito.protocols.words import check_name, fields, quote, split

#: Bytes read from a file or written to the wire at a time.
CHUNK_SIZE = 64 * 1024
#: The longest reply line the clients accept.
MAX_REPLY_LINE = 64 * 1024
#: Names asked per LIST page when a client pages through a listing.
PAGE_SIZE = 1000

#: ``progress(done, total)``: called as file bytes move, ``done`` growing to ``total``.
Progress = Callable[[int, int], None]
Source = Union[str, "os.PathLike[str]", IO[bytes]]


# ---------------------------------------------------------------- exceptions


class ConnectionLost(DepositoError, ConnectionError):
    """The connection to the proxy closed or broke before the reply was complete.

    A client-side condition, not an ERR code of the protocol. It is an
    ``OSError`` too, so code that handles socket errors catches it.
    """

    code = "connectionlost"


class ProtocolError(DepositoError):
    """The proxy sent something the client cannot read; the connection is closed."""

    code = "protocol"


class ChecksumMismatch(DepositoError):
    """The bytes moved do not have the sha256 the proxy announced."""

    code = "checksum"


# ---------------------------------------------------------------- replies


@frozen
class Stored:
    """The answer to PUT: the new version is committed on ``replicas`` servers."""

    name: str
    version: int
    size: int
    sha256: str
    replicas: int


@frozen
class Download:
    """The answer to GET: what was written to the destination."""

    name: str
    size: int
    sha256: str
    version: int


@frozen
class Stat:
    """The answer to STAT: the newest version of a name and where its copies are."""

    name: str
    size: int
    sha256: str
    version: int
    replicas: int
    have: int
    servers: tuple[str, ...]


@frozen
class Entry:
    """One line of LIST."""

    size: int
    wanted: int
    have: int
    name: str


@frozen
class ReplicaCount:
    """The answer to REPLICAS: the wanted count now set and the healthy copies now."""

    name: str
    replicas: int
    have: int


@frozen
class Server:
    """One line of SERVERS; ``state`` is ``up``, ``down`` or ``dead``."""

    id: str
    address: str
    state: str
    used: int
    capacity: int
    blobs: int
    zone: str


@frozen
class Status:
    """The answer to STATUS: cluster-wide counts."""

    files: int
    bytes: int
    servers_up: int
    servers_down: int
    under: int
    over: int
    repairs_queued: int
    repairs_running: int


def check_reply(line: str) -> str:
    """``line`` if it is an OK reply; raise its exception if it is an ERR reply."""
    if line == "OK" or line.startswith("OK "):
        return line
    if line == "ERR" or line.startswith("ERR "):
        raise from_reply(line)
    raise ProtocolError(f"unexpected reply {line[:200]!r}")


def _ints(found: dict[str, str], keys: tuple[str, ...], line: str) -> dict[str, int]:
    try:
        return {key: int(found[key]) for key in keys}
    except (KeyError, ValueError):
        raise ProtocolError(f"reply lacks one of {', '.join(keys)}: {line[:200]!r}") from None


def _text(found: dict[str, str], key: str, line: str) -> str:
    try:
        return found[key]
    except KeyError:
        raise ProtocolError(f"reply lacks {key}: {line[:200]!r}") from None


def _fields(line: str) -> dict[str, str]:
    try:
        return fields(line)
    except BadArgs as e:
        raise ProtocolError(f"bad quoting in reply {line[:200]!r}: {e.message}") from None


def _words(line: str) -> list[str]:
    try:
        return split(line)
    except BadArgs as e:
        raise ProtocolError(f"bad quoting in reply {line[:200]!r}: {e.message}") from None


def parse_stored(line: str) -> Stored:
    """``OK stored name=.. version=.. size=.. sha256=.. replicas=..``"""
    found = _fields(check_reply(line))
    n = _ints(found, ("version", "size", "replicas"), line)
    return Stored(name=_text(found, "name", line), sha256=_text(found, "sha256", line), **n)


def parse_get_header(line: str) -> tuple[int, dict[str, str]]:
    """``OK <size> sha256=.. version=..``: the size that follows and the fields."""
    words = check_reply(line).split(" ", 2)
    if len(words) < 2 or not words[1].isdigit():
        raise ProtocolError(f"GET reply without a size: {line[:200]!r}")
    return int(words[1]), _fields(line)


def parse_stat(line: str) -> Stat:
    """``OK name=.. size=.. sha256=.. version=.. replicas=.. have=.. servers=a,b``"""
    found = _fields(check_reply(line))
    n = _ints(found, ("size", "version", "replicas", "have"), line)
    servers = _text(found, "servers", line)
    ids = tuple(s for s in servers.split(",") if s) if servers != "-" else ()
    return Stat(name=_text(found, "name", line), sha256=_text(found, "sha256", line), servers=ids, **n)


def parse_entry(line: str) -> Entry:
    """A LIST line: ``<size> <wanted> <have> <name>``."""
    words = _words(line)
    if len(words) != 4 or not all(w.isdigit() for w in words[:3]):
        raise ProtocolError(f"bad LIST line {line[:200]!r}")
    return Entry(size=int(words[0]), wanted=int(words[1]), have=int(words[2]), name=words[3])


def parse_replicas(line: str) -> ReplicaCount:
    """``OK name=.. replicas=.. have=..``"""
    found = _fields(check_reply(line))
    n = _ints(found, ("replicas", "have"), line)
    return ReplicaCount(name=_text(found, "name", line), **n)


def _leading(line: str, count: int) -> tuple[list[str], str]:
    """The first ``count`` words of ``line`` (quoted or bare) and the rest of it."""
    i, n, ends = 0, len(line), []
    for _ in range(count):
        while i < n and line[i] == " ":
            i += 1
        if i < n and line[i] == '"':
            i += 1
            while i < n and line[i] != '"':
                i += 2 if line[i] == "\\" else 1
            i += 1
        else:
            while i < n and line[i] != " ":
                i += 1
        ends.append(i)
    words = _words(line[: ends[-1]]) if ends else []
    if len(words) != count:
        raise ProtocolError(f"expected {count} words first in {line[:200]!r}")
    return words, line[ends[-1]:]


def parse_server(line: str) -> Server:
    """A SERVERS line: ``<id> <host>:<port> <state> used=.. capacity=.. blobs=.. zone=..``"""
    (sid, address, state), rest = _leading(line, 3)
    found = _fields(rest)
    n = _ints(found, ("used", "capacity", "blobs"), line)
    return Server(id=sid, address=address, state=state, zone=found.get("zone", ""), **n)


def parse_status(line: str) -> Status:
    """``OK files=.. bytes=.. servers_up=.. servers_down=.. under=.. over=.. repairs_queued=.. repairs_running=..``"""
    found = _fields(check_reply(line))
    keys = ("files", "bytes", "servers_up", "servers_down", "under", "over",
            "repairs_queued", "repairs_running")
    return Status(**_ints(found, keys, line))


def parse_count(line: str) -> int:
    """``OK <n>``, the head of a multi-line reply: n."""
    words = check_reply(line).split()
    if len(words) != 2 or not words[1].isdigit():
        raise ProtocolError(f"expected 'OK <n>', got {line[:200]!r}")
    return int(words[1])


def parse_deleted(line: str) -> str:
    """``OK deleted name=..``: the name."""
    return _text(_fields(check_reply(line)), "name", line)


# ---------------------------------------------------------------- request lines


def put_line(name: str, size: int, replicas: Optional[int] = None) -> str:
    """The PUT request line; BadArgs for a name or count the proxy would refuse."""
    check_name(name)
    if size < 0:
        raise BadArgs("size must not be negative")
    if replicas is not None and not 1 <= replicas <= 16:
        raise BadArgs("replicas must be 1 to 16")
    return f"PUT {quote(name)} {size}" + (f" {replicas}" if replicas is not None else "")


def name_line(command: str, name: str) -> str:
    """``COMMAND <name>``, BadArgs for an invalid name."""
    return f"{command} {quote(check_name(name))}"


def list_line(prefix: str = "", after: str = "", limit: Optional[int] = None) -> str:
    """The LIST request line: names starting with ``prefix`` that sort after
    ``after``, at most ``limit`` (None: all). BadArgs for words the proxy
    would refuse or a line could not carry."""
    for word in (prefix, after):
        if word:
            check_name(word)
    if limit is None and not after:
        return f"LIST {quote(prefix)}" if prefix else "LIST"
    line = f"LIST {quote(prefix)} {quote(after)}"
    if limit is None:
        return line
    if limit < 1:
        raise BadArgs("limit must be at least 1")
    return f"{line} {limit}"


def replicas_line(name: str, count: int, wait: bool = False) -> str:
    if count < 0:
        raise BadArgs("count must not be negative")
    return f"REPLICAS {quote(check_name(name))} {count}" + (" WAIT" if wait else "")


def encode(line: str) -> bytes:
    """A request line on the wire."""
    return line.encode("utf-8") + b"\n"


def decode(raw: bytes) -> str:
    """A reply line from the wire, its CR stripped."""
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    return raw.decode("utf-8", "replace")


# ---------------------------------------------------------------- files


def open_source(source: Source, size: Optional[int] = None) -> tuple[IO[bytes], int, bool]:
    """The file to read, how many bytes to send, and whether the caller must close it.

    A path is opened; a file object is read from its current position to its
    end, which needs a seekable file unless ``size`` is given.
    """
    if isinstance(source, (str, bytes, os.PathLike)):
        f = open(source, "rb")
        try:
            return f, (os.fstat(f.fileno()).st_size if size is None else size), True
        except BaseException:
            f.close()
            raise
    if size is None:
        try:
            here = source.tell()
            end = source.seek(0, os.SEEK_END)
            source.seek(here)
        except (OSError, AttributeError, ValueError) as e:
            raise ValueError("a file that cannot seek needs size=; or spool it to a temporary file") from e
        size = end - here
    return source, size, False


class AsideFile:
    """A file written beside its destination and put in place only when complete.

    Bytes go to a hidden temporary file in the destination's folder (created
    with the usual permissions); :meth:`commit` flushes it to disk and renames
    it onto ``path``, :meth:`discard` removes it. So the destination holds
    either its old content or the whole new file, never a part.
    With ``overwrite=False``, :meth:`commit` raises FileExistsError rather
    than replace a file that exists (checked atomically where links work).
    """

    def __init__(self, path: Union[str, "os.PathLike[str]"], overwrite: bool = True) -> None:
        self.path = os.fspath(path)
        self.overwrite = overwrite
        folder, base = os.path.split(os.path.abspath(self.path))
        while True:
            self.temp = os.path.join(folder, f".{base}.{secrets.token_hex(4)}.part")
            try:
                fd = os.open(self.temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
                break
            except FileExistsError:
                continue
        self.file = os.fdopen(fd, "wb")

    def write(self, data: bytes) -> int:
        return self.file.write(data)

    def commit(self) -> None:
        """Make the written bytes durable and put them at ``path``."""
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            if self.overwrite:
                os.replace(self.temp, self.path)
            else:
                try:
                    os.link(self.temp, self.path)
                except FileExistsError:
                    raise
                except OSError:  # no hard links here: best effort
                    if os.path.lexists(self.path):
                        raise FileExistsError(17, "File exists", self.path) from None
                    os.replace(self.temp, self.path)
                    return
                os.unlink(self.temp)
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        """Drop the written bytes; the destination is untouched."""
        self.file.close()
        try:
            os.unlink(self.temp)
        except FileNotFoundError:
            pass

    def __enter__(self) -> AsideFile:
        return self

    def __exit__(self, kind: Any, value: Any, tb: Any) -> None:
        if kind is None:
            self.commit()
        else:
            self.discard()


# ---------------------------------------------------------------- the protocol


class _Request:
    """One request in flight: its line, and how the reply to it is read."""

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


class _OneLine(_Request):
    def __init__(self, line: str, parse: Callable[[str], Any]) -> None:
        super().__init__(line)
        self.parse = parse

    def lineReceived(self, line: str) -> None:
        try:
            self.done(self.parse(line))
        except DepositoError:
            self.done(Failure())


class _MultiLine(_Request):
    """``OK <n>`` then n lines, each parsed by ``parse``."""

    def __init__(self, line: str, parse: Callable[[str], Any]) -> None:
        super().__init__(line)
        self.parse = parse
        self.remaining: Optional[int] = None
        self.items: list[Any] = []
        self.error: Optional[Failure] = None

    def lineReceived(self, line: str) -> None:
        if self.remaining is None:
            try:
                self.remaining = parse_count(line)
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
class _FileProducer:
    """Reads ``size`` bytes of a file in fixed chunks, one chunk each time the consumer asks."""

    def __init__(self, file: IO[bytes], size: int, consumer: Any,
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
        except Exception:
            self._finish(Failure())
            return
        self.remaining -= len(data)
        self.consumer.write(data)
        self.chunk(data)
        if self.remaining == 0:
            self._finish(None)

    def stopProducing(self) -> None:
        self.stopped = True

    def _finish(self, failure: Optional[Failure]) -> None:
        self.stopped = True
        self.consumer.unregisterProducer()
        self.finished(failure)


class _Put(_Request):
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
        self.producer: Optional[_FileProducer] = None

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
            self.producer = _FileProducer(self.file, self.size, self.protocol.transport,
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


class _Get(_Request):
    """GET: the line, ``OK <size> ...``, then exactly size raw bytes into the sink."""

    def __init__(self, name: str, sink: Any, progress: Optional[Progress]) -> None:
        super().__init__(name_line("GET", name))
        self.name = name
        self.sink = sink
        self.consumer = IConsumer.providedBy(sink)
        self.progress = progress
        self.hash = hashlib.sha256()
        self.size = 0
        self.remaining = 0
        self.header: dict[str, str] = {}
        self.error: Optional[Failure] = None

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
        if self.consumer:
            self.sink.registerProducer(self.protocol.transport, True)
        self.protocol.setRawMode()

    def rawDataReceived(self, data: bytes) -> None:
        assert self.protocol is not None
        mine, rest = data[: self.remaining], data[self.remaining:]
        self.remaining -= len(mine)
        self.hash.update(mine)
        if self.error is None:
            try:
                self.sink.write(mine)
            except Exception:
                # Keep reading the announced bytes so the connection stays usable.
                self.error = Failure()
        if self.progress is not None:
            self.progress(self.size - self.remaining, self.size)
        if self.remaining == 0:
            if self.consumer:
                self.sink.unregisterProducer()
                self.protocol.transport.resumeProducing()
            self._complete()
            self.protocol.setLineMode(rest)

    def connectionLost(self, error: ConnectionLost) -> None:
        if self.consumer and self.size:
            self.sink.unregisterProducer()

    def _complete(self) -> None:
        if self.error is not None:
            self.done(self.error)
            return
        try:
            sha = _text(self.header, "sha256", "GET reply")
            if sha != self.hash.hexdigest():
                raise ChecksumMismatch(f"{self.name}: received sha256 {self.hash.hexdigest()}, announced {sha}")
            version = int(self.header.get("version", "0"))
        except (DepositoError, ValueError):
            self.done(Failure())
            return
        self.done(Download(name=self.name, size=self.size, sha256=sha, version=version))


class _Quit(_Request):
    def lineReceived(self, line: str) -> None:
        try:
            check_reply(line)
        except DepositoError:
            self.done(Failure())
            return
        assert self.protocol is not None
        self.protocol.abandon()
        self.done(None)


class DepositoClientProtocol(LineReceiver):
    """Frames the text protocol for one client connection.

    Requests are sent one at a time, each after the reply to the one before,
    and are answered in order. :attr:`greeted` fires with the proxy's greeting
    line; :meth:`whenClosed` gives a Deferred for the end of the connection.
    """

    delimiter = b"\n"
    MAX_LENGTH = MAX_REPLY_LINE
    log = Logger()

    def __init__(self) -> None:
        self.greeted: defer.Deferred[str] = defer.Deferred()
        self.greeting: Optional[str] = None
        self._queue: deque[_Request] = deque()
        self._current: Optional[_Request] = None
        self._lost: Optional[ConnectionLost] = None
        self._closeWaiters: list[defer.Deferred[None]] = []
        self._closing = False

    # -- requests

    def request(self, request: _Request) -> defer.Deferred[Any]:
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
            self._current.start(self)

    def _finished(self, request: _Request, result: Any) -> None:
        if self._current is request:
            self._current = None
        if isinstance(result, Failure) and isinstance(result.value, ProtocolError):
            self.abandon()
        request.deferred.callback(result)
        self._next()

    def abandon(self) -> None:
        """Close the connection: nothing more is sent, queued requests fail with ConnectionLost."""
        self._closing = True
        if self.transport is not None:
            self.transport.loseConnection()

    def whenClosed(self) -> defer.Deferred[None]:
        """A Deferred that fires once the connection is closed."""
        if self._lost is not None:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._closeWaiters.append(d)
        return d

    # -- the wire

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
        if self._current is None:
            self.log.warn("unexpected line from the proxy: {line!r}", line=line[:200])
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
        detail = reason.getErrorMessage() if reason is not None else "closed"
        self._lost = ConnectionLost(f"connection to the proxy lost: {detail}")
        if self.greeting is None:
            self.greeted.errback(ConnectionLost(self._lost.message))
        pending = ([self._current] if self._current is not None else []) + list(self._queue)
        self._current = None
        self._queue.clear()
        for request in pending:
            request.connectionLost(self._lost)
            if isinstance(request, _Quit):
                request.deferred.callback(None)
            else:
                request.deferred.errback(ConnectionLost(self._lost.message))
        waiters, self._closeWaiters = self._closeWaiters, []
        for d in waiters:
            d.callback(None)


class DepositoClient:
    """A connected client; every method returns a Deferred of the parsed reply.

    Names are quoted on the wire as the protocol says; an invalid name fails
    with BadArgs before anything is sent.
    """

    def __init__(self, protocol: DepositoClientProtocol) -> None:
        self.protocol = protocol

    @property
    def greeting(self) -> Optional[str]:
        """The proxy's greeting line (``OK deposito <version> ready``)."""
        return self.protocol.greeting

    def _one(self, line: str, parse: Callable[[str], Any]) -> defer.Deferred[Any]:
        return self.protocol.request(_OneLine(line, parse))

    def put(self, name: str, source: Source, replicas: Optional[int] = None,
            progress: Optional[Progress] = None, size: Optional[int] = None) -> defer.Deferred[Stored]:
        """Store ``source`` under ``name``; fires with :class:`Stored` once the proxy committed it.

        ``source`` is a path or a binary file object, read from its current
        position in chunks of CHUNK_SIZE bytes; a file that cannot seek needs
        ``size``. A path is opened and closed here; a file object is left open.
        ``replicas`` defaults to the proxy's count. The sha256 the proxy
        reports is checked against the bytes sent (ChecksumMismatch).
        If the upload breaks half way the connection is closed, since the
        proxy can no longer tell where the bytes end.
        """
        try:
            file, length, close = open_source(source, size)
        except Exception:
            return defer.fail()
        try:
            line = put_line(name, length, replicas)
        except DepositoError:
            if close:
                file.close()
            return defer.fail()
        return self.protocol.request(_Put(line, file, length, close, progress))

    def get(self, name: str, sink: Any, progress: Optional[Progress] = None) -> defer.Deferred[Download]:
        """Write the newest version of ``name`` into ``sink``; fires with :class:`Download`.

        ``sink`` is a binary file object (written to, left open), an
        ``IConsumer`` (registered with the connection as a streaming producer,
        so it may pause the transfer), or a path: the bytes then go to a file
        beside it, renamed onto it only when complete and verified.
        The bytes are checked against the announced sha256; on a mismatch the
        Deferred fails with ChecksumMismatch (after the bytes were written to
        a file object or consumer, which must then be discarded).
        """
        aside: Optional[AsideFile] = None
        if isinstance(sink, (str, os.PathLike)):
            try:
                check_name(name)
                aside = AsideFile(sink)
            except Exception:
                return defer.fail()
            sink = aside
        try:
            d = self.protocol.request(_Get(name, sink, progress))
        except DepositoError:
            if aside is not None:
                aside.discard()
            return defer.fail()
        if aside is not None:
            def settle(result: Any) -> Any:
                if isinstance(result, Failure):
                    aside.discard()
                else:
                    aside.commit()
                return result
            d.addBoth(settle)
        return d

    def stat(self, name: str) -> defer.Deferred[Stat]:
        """The newest version of ``name``: :class:`Stat`; NotFound when absent."""
        try:
            line = name_line("STAT", name)
        except DepositoError:
            return defer.fail()
        return self._one(line, parse_stat)

    def list_page(self, prefix: str = "", after: str = "",
                  limit: int = PAGE_SIZE) -> defer.Deferred[list[Entry]]:
        """One page of names: at most ``limit`` of those starting with
        ``prefix`` that sort after ``after``, in name order, as :class:`Entry`
        values. The next page starts after the last name of this one; a page
        shorter than ``limit`` is the last. This is the call whose memory is
        bounded, whatever the number of names."""
        try:
            line = list_line(prefix, after, limit)
        except DepositoError:
            return defer.fail()
        return self.protocol.request(_MultiLine(line, parse_entry))

    def list(self, prefix: str = "") -> defer.Deferred[list[Entry]]:
        """Every name starting with ``prefix``, in name order, as :class:`Entry` values.

        Asks for pages of PAGE_SIZE names one after the other (see
        :meth:`list_page`) and fires with all of them in one list, so it holds
        every name in memory: for a listing of any size, call
        :meth:`list_page` and keep only a page at a time. Requests made while
        it pages are answered between its pages.
        """
        return defer.ensureDeferred(self._every_page(prefix))

    async def _every_page(self, prefix: str) -> list[Entry]:
        entries: list[Entry] = []
        after = ""
        while True:
            page = await self.list_page(prefix, after, PAGE_SIZE)
            entries += page
            if len(page) < PAGE_SIZE:
                return entries
            after = page[-1].name

    def replicas(self, name: str, count: int, wait: bool = False) -> defer.Deferred[ReplicaCount]:
        """Set the wanted copy count of ``name``.

        Without ``wait`` it fires at once (copies change in the background);
        with it, when ``have == count``, or Unavailable if the cluster cannot get there.
        """
        try:
            line = replicas_line(name, count, wait)
        except DepositoError:
            return defer.fail()
        return self._one(line, parse_replicas)

    def delete(self, name: str) -> defer.Deferred[str]:
        """Delete ``name``; fires with the name deleted, NotFound when absent."""
        try:
            line = name_line("DELETE", name)
        except DepositoError:
            return defer.fail()
        return self._one(line, parse_deleted)

    def servers(self) -> defer.Deferred[list[Server]]:
        """Every storage server the proxy knows, as :class:`Server` values."""
        return self.protocol.request(_MultiLine("SERVERS", parse_server))

    def status(self) -> defer.Deferred[Status]:
        """Cluster-wide counts: :class:`Status`."""
        return self._one("STATUS", parse_status)

    def help(self) -> defer.Deferred[list[str]]:
        """The proxy's one-line summaries of its commands."""
        return self.protocol.request(_MultiLine("HELP", lambda line: line))

    def auth(self, token: str) -> defer.Deferred[None]:
        """Present ``token``; Denied when the proxy does not accept it."""
        if not token or any(c in token for c in "\r\n"):
            return defer.fail(BadArgs("a token is one non-empty line"))
        return self._one(f"AUTH {quote(token)}", lambda line: check_reply(line) and None)

    def quit(self) -> defer.Deferred[None]:
        """Say QUIT after the requests already made; fires once the connection is closed."""
        d = self.protocol.request(_Quit("QUIT"))
        d.addCallback(lambda _: self.protocol.whenClosed())
        return d

    def close(self) -> defer.Deferred[None]:
        """Close the connection now; requests still waiting fail with ConnectionLost."""
        self.protocol.abandon()
        return self.protocol.whenClosed()


@defer.inlineCallbacks
def connect(reactor: Any, endpoint: Union[str, IStreamClientEndpoint] = "tcp:127.0.0.1:7000",
            token: Optional[str] = None) -> Any:
    """Connect to the proxy at ``endpoint`` (an endpoint string or object).

    Fires with a :class:`DepositoClient` once the proxy greeted it (and, with
    ``token``, accepted it). Fails with Twisted's ConnectError family when the
    proxy cannot be reached, ConnectionLost if it hangs up first, or the ERR
    class of a refusal.
    """
    if isinstance(endpoint, str):
        endpoint = clientFromString(reactor, endpoint)
    protocol = yield endpoint.connect(Factory.forProtocol(DepositoClientProtocol))
    yield protocol.greeted
    client = DepositoClient(protocol)
    if token is not None:
        try:
            yield client.auth(token)
        except BaseException:
            yield client.close()
            raise
    return client
