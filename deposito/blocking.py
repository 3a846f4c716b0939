"""The blocking client: the text protocol on a plain socket, for scripts with no reactor.

::

    from deposito.blocking import BlockingClient

    with BlockingClient("127.0.0.1:7000") as depot:
        depot.put("reports/2024.pdf", "2024.pdf", replicas=3)
        with open("copy.pdf", "wb") as f:
            depot.get("reports/2024.pdf", f)

The methods are those of :class:`deposito.client.DepositoClient` and return
the same values, directly instead of in Deferreds. File bytes move in chunks
of ``CHUNK_SIZE``, so memory stays bounded whatever the file size.

Several proxies (``"a:7000,b:7000"`` or a list) make the client fail over:
it uses the first that answers; a request that finds its proxy gone before
it was sent goes to the next one; a read (GET, STAT, a LIST page, SERVERS,
STATUS, HELP) cut off after it was sent is made again on the next one (a GET
only into a path, or into a sink that has not been written to yet); a PUT,
DELETE or REPLICAS cut off after it was sent raises
:class:`~deposito.wire.OutcomeUnknown` and is never sent again by the client.

Failures: an ``ERR`` reply raises its :mod:`deposito.errors` class; a
connection that closes, breaks or times out raises
:class:`~deposito.client.ConnectionLost` (an ``OSError`` too) and, with a
single proxy, the client is closed; failing to connect to a single proxy
raises the socket's ``OSError`` (for example ``ConnectionRefusedError``), and
to several :class:`~deposito.proxies.ProxiesUnreachable`. One client is for
one thread at a time.
"""

from __future__ import annotations

import builtins
import hashlib
import os
import select
import socket
from typing import IO, Any, Callable, Iterator, Optional, TypeVar

from deposito.errors import BadArgs, Denied, DepositoError, from_reply
from deposito.localfile import AsideFile, Sink, Source, Writable, open_source
from deposito.proxies import Addresses, ProxiesUnreachable, others, parse_address, parse_addresses, reason, show
from deposito.protocols.words import check_name
from deposito.wire import (
    CHUNK_SIZE,
    MAX_REPLY_LINE,
    PAGE_SIZE,
    ChecksumMismatch,
    ConnectionLost,
    Download,
    Entry,
    OutcomeUnknown,
    Progress,
    ProtocolError,
    ReplicaCount,
    Server,
    Stat,
    Status,
    Stored,
    auth_line,
    check_reply,
    decode,
    encode,
    list_line,
    name_line,
    parse_count,
    parse_deleted,
    parse_entry,
    parse_get_header,
    parse_replicas,
    parse_server,
    parse_stat,
    parse_status,
    parse_stored,
    put_line,
    replicas_line,
)

DEFAULT_ADDRESS = "127.0.0.1:7000"

T = TypeVar("T")


__all__ = ["BlockingClient", "DEFAULT_ADDRESS", "parse_address"]


def _anytime() -> bool:
    return True


class _Counted:
    """A sink that counts the bytes written to it: a GET may be made again
    elsewhere only while its caller's sink has received nothing."""

    def __init__(self, sink: Writable) -> None:
        self.sink = sink
        self.written = 0

    def write(self, data: bytes) -> None:
        self.sink.write(data)
        self.written += len(data)


class BlockingClient:
    """A connection to a proxy; connects (and authenticates) when made.

    ``address`` is ``"HOST:PORT"``, a ``(host, port)`` pair, several proxies
    as ``"HOST:PORT,HOST:PORT"``, or a list of either (see the module's
    docstring for how it fails over). ``token`` is presented on every
    connection it makes. ``timeout`` is how long, in seconds, any one wait on
    the socket may last (None: no limit); ``replicas(..., wait=True)`` waits
    without limit. Use it as a context manager, or call :meth:`close` (or
    :meth:`quit`).
    """

    def __init__(self, address: Addresses = DEFAULT_ADDRESS,
                 token: Optional[str] = None, timeout: Optional[float] = 300.0,
                 connect_timeout: Optional[float] = 10.0) -> None:
        self.addresses = parse_addresses(address)
        self.token = token
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.greeting = ""
        self._at = 0
        self._buffer = bytearray()
        self._sock: Optional[socket.socket] = None
        self._closed = False
        self._sent = False  # whether the request under way has gone out
        self._first_answering(list(range(len(self.addresses))), [])

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) of the proxy in use (or last used)."""
        return self.addresses[self._at]

    # -- the proxies

    def _open(self, at: int) -> None:
        """Connect to the proxy at place ``at``, read its greeting, present the token."""
        self._at = at
        self._buffer = bytearray()
        self._sock = socket.create_connection(self.addresses[at], self.connect_timeout)
        try:
            self._sock.settimeout(self.timeout)
            greeting = self._line()
            if not greeting.startswith("OK"):
                check_reply(greeting)
                raise ProtocolError(f"unexpected greeting {greeting[:200]!r}")
            self.greeting = greeting
            if self.token is not None:
                self._one(auth_line(self.token), check_reply)
        except BaseException:
            self._drop()
            raise

    def _first_answering(self, order: builtins.list[int], failures: builtins.list[tuple[str, str]]) -> None:
        """Connect to the first proxy in ``order`` that answers. A refused
        token is final (every proxy holds the same tokens); any other
        failure moves on."""
        for at in order:
            try:
                self._open(at)
                return
            except Denied:
                raise
            except (OSError, DepositoError) as e:
                if len(self.addresses) == 1:
                    raise
                failures.append((show(self.addresses[at]), reason(e)))
        raise ProxiesUnreachable(failures)

    def _gone(self, sock: socket.socket) -> bool:
        """Whether the proxy closed the idle connection (stopped or killed
        since the last request): a request not sent yet can go elsewhere."""
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _ready(self, tried: set[int], failures: builtins.list[tuple[str, str]]) -> None:
        """A live connection for the next request: the one in use, or one to
        the next proxy that answers and was not tried for this request."""
        if self._closed:
            raise ConnectionLost("the client is closed")
        if len(self.addresses) == 1:
            if self._sock is None:
                raise ConnectionLost("the client is closed")
            return
        if self._sock is not None:
            if not self._gone(self._sock):
                return
            tried.add(self._at)
            failures.append((show(self.address), "closed by the proxy"))
            self._drop()
        self._first_answering([at for at in others(self._at, len(self.addresses)) if at not in tried], failures)

    def _call(self, command: str, attempt: Callable[[], T], retry: Optional[Callable[[], bool]] = None) -> T:
        """Run one request as the failover rules say. ``retry`` is given for
        reads: called once a read was cut off after it was sent, it says
        whether it may be made again on another proxy (and gets ready for
        it). A write cut off after it was sent raises OutcomeUnknown."""
        tried: set[int] = set()
        failures: builtins.list[tuple[str, str]] = []
        while True:
            self._ready(tried, failures)
            self._sent = False
            try:
                return attempt()
            except ConnectionLost as e:
                if self._sent and retry is None:
                    raise OutcomeUnknown.after(e, command) from None
                if len(self.addresses) == 1 or (self._sent and retry is not None and not retry()):
                    raise
                tried.add(self._at)
                failures.append((show(self.address), e.message))

    # -- the socket

    def _socket(self) -> socket.socket:
        if self._sock is None:
            raise ConnectionLost("the client is closed")
        return self._sock

    def _lost(self, why: str) -> ConnectionLost:
        self._drop()
        return ConnectionLost(f"connection to the proxy lost: {why}")

    def _recv(self, limit: int) -> bytes:
        try:
            data = self._socket().recv(limit)
        except socket.timeout:
            raise self._lost(f"no answer within {self.timeout} seconds") from None
        except OSError as e:
            raise self._lost(e.strerror or str(e)) from None
        if not data:
            raise self._lost("closed by the proxy")
        return data

    def _send(self, data: bytes) -> None:
        try:
            self._socket().sendall(data)
        except socket.timeout:
            raise self._lost(f"could not send within {self.timeout} seconds") from None
        except OSError as e:
            raise self._lost(e.strerror or str(e)) from None

    def _line(self) -> str:
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                raw = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                return decode(raw)
            if len(self._buffer) > MAX_REPLY_LINE:
                self._drop()
                raise ProtocolError(f"reply line over {MAX_REPLY_LINE} bytes")
            self._buffer += self._recv(CHUNK_SIZE)

    def _request(self, line: str) -> str:
        self._send(encode(line))
        self._sent = True
        return self._reply()

    def _reply(self) -> str:
        try:
            return self._line()
        except ProtocolError:
            self._drop()
            raise

    def _one(self, line: str, parse: Callable[[str], T]) -> T:
        reply = self._request(line)
        try:
            return parse(reply)
        except ProtocolError:
            self._drop()
            raise

    def _multi(self, line: str, parse: Callable[[str], T]) -> list[T]:
        count = self._one(line, parse_count)
        lines = [self._reply() for _ in range(count)]
        try:
            return [parse(ln) for ln in lines]
        except ProtocolError:
            self._drop()
            raise

    # -- commands

    def put(self, name: str, source: Source, replicas: Optional[int] = None,
            progress: Optional[Progress] = None, size: Optional[int] = None) -> Stored:
        """Store ``source`` (a path, or a binary file read from its position) under ``name``.

        Returns :class:`~deposito.client.Stored` once the proxy committed every
        copy. A file that cannot seek needs ``size``. The sha256 the proxy
        reports is checked against the bytes sent (ChecksumMismatch).
        If sending breaks half way, the connection is closed; if it breaks
        after the request went out, OutcomeUnknown (it is not sent again).
        """
        file, length, close = open_source(source, size)
        try:
            line = put_line(name, length, replicas)
            return self._call("PUT", lambda: self._put(line, file, length, progress))
        finally:
            if close:
                file.close()

    def _put(self, line: str, file: IO[bytes], length: int, progress: Optional[Progress]) -> Stored:
        reply = self._request(line)
        try:
            words = check_reply(reply).split()
            if words[:2] != ["OK", "send"] or words[2:] != [str(length)]:
                raise ProtocolError(f"expected 'OK send {length}', got {reply[:200]!r}")
        except ProtocolError:
            self._drop()
            raise
        digest = hashlib.sha256()
        sent = 0
        while sent < length:
            try:
                data = file.read(min(CHUNK_SIZE, length - sent))
                if not data:
                    raise ValueError(f"the file ended {length - sent} bytes early")
            except BaseException:
                self._drop()  # the proxy waits for bytes that will not come
                raise
            digest.update(data)
            self._send_upload(data)
            sent += len(data)
            if progress is not None:
                progress(sent, length)
        stored = self._one_reply(parse_stored)
        if stored.sha256 != digest.hexdigest():
            raise ChecksumMismatch(f"{stored.name} stored with sha256 {stored.sha256}, sent {digest.hexdigest()}")
        return stored

    def _send_upload(self, data: bytes) -> None:
        """Send file bytes; if the proxy hung up, raise the ERR it said first, if any."""
        sock = self._socket()
        try:
            sock.sendall(data)
            return
        except socket.timeout:
            raise self._lost(f"could not send within {self.timeout} seconds") from None
        except OSError as e:
            why = e.strerror or str(e)
        try:
            sock.settimeout(1.0)
            while b"\n" not in self._buffer and len(self._buffer) < MAX_REPLY_LINE:
                more = sock.recv(CHUNK_SIZE)
                if not more:
                    break
                self._buffer += more
        except OSError:
            pass
        line = decode(bytes(self._buffer.split(b"\n", 1)[0]))
        self._drop()
        if line.startswith("ERR "):
            raise from_reply(line)
        raise ConnectionLost(f"connection to the proxy lost: {why}")

    def _one_reply(self, parse: Callable[[str], T]) -> T:
        reply = self._reply()
        try:
            return parse(reply)
        except ProtocolError:
            self._drop()
            raise

    def get(self, name: str, sink: Sink, progress: Optional[Progress] = None) -> Download:
        """Write the newest version of ``name`` into ``sink``; returns :class:`~deposito.client.Download`.

        ``sink`` is a binary file object (written to, left open) or a path:
        the bytes then go to a file beside it, renamed onto it only when
        complete and verified, so a failed get leaves no partial file.
        The bytes are checked against the announced sha256 (ChecksumMismatch).
        Cut off by a lost proxy, it starts again on the next one when the
        bytes go to a path (or an :class:`AsideFile`), or when ``sink`` has
        received nothing yet: no byte reaches a caller's stream twice.
        """
        if isinstance(sink, (str, os.PathLike)):
            check_name(name)
            with AsideFile(sink) as aside:
                return self.get(name, aside, progress)
        line = name_line("GET", name)
        counted = _Counted(sink)

        def again() -> bool:
            if isinstance(sink, AsideFile):
                sink.restart()
                return True
            return counted.written == 0

        return self._call("GET", lambda: self._get(line, name, counted, progress), again)

    def _get(self, line: str, name: str, sink: Writable, progress: Optional[Progress]) -> Download:
        header = self._one(line, parse_get_header)
        size, found = header
        digest = hashlib.sha256()
        remaining = size
        failure: Optional[BaseException] = None
        while remaining:
            if self._buffer:
                data = bytes(self._buffer[:remaining])
                del self._buffer[: len(data)]
            else:
                data = self._recv(min(CHUNK_SIZE, remaining))
            remaining -= len(data)
            digest.update(data)
            if failure is None:
                try:
                    sink.write(data)
                except Exception as e:  # keep reading so the connection stays usable
                    failure = e
            if progress is not None:
                progress(size - remaining, size)
        if failure is not None:
            raise failure
        sha = found.get("sha256")
        if sha != digest.hexdigest():
            raise ChecksumMismatch(f"{name}: received sha256 {digest.hexdigest()}, announced {sha}")
        try:
            version = int(found.get("version", "0"))
        except ValueError:
            raise ProtocolError(f"bad version in GET reply: {found.get('version')!r}") from None
        return Download(name=name, size=size, sha256=sha, version=version)

    def stat(self, name: str) -> Stat:
        """The newest version of ``name``; NotFound when absent."""
        line = name_line("STAT", name)
        return self._call("STAT", lambda: self._one(line, parse_stat), _anytime)

    def list_page(self, prefix: str = "", after: str = "", limit: int = PAGE_SIZE) -> list[Entry]:
        """One page of names: at most ``limit`` of those starting with
        ``prefix`` that sort after ``after``, in name order. The next page
        starts after the last name of this one; a page shorter than
        ``limit`` is the last."""
        line = list_line(prefix, after, limit)
        return self._call("LIST", lambda: self._multi(line, parse_entry), _anytime)

    def list(self, prefix: str = "", page: int = PAGE_SIZE) -> Iterator[Entry]:
        """Every name starting with ``prefix``, in name order: an iterator
        that asks for the next ``page`` names when the last ones are used
        up, so memory holds one page whatever the number of names. Each page
        is read whole before its names are given, so the client may be used
        for other requests between them. ``list(client.list())`` makes a list.
        """
        if page < 1:
            raise BadArgs("page must be at least 1")
        after = ""
        while True:
            entries = self.list_page(prefix, after, page)
            yield from entries
            if len(entries) < page:
                return
            after = entries[-1].name

    def replicas(self, name: str, count: int, wait: bool = False) -> ReplicaCount:
        """Set the wanted copy count of ``name``; with ``wait``, return once the copies are there.

        With ``wait`` it raises Unavailable if the cluster cannot get there,
        and waits without a timeout.
        """
        line = replicas_line(name, count, wait)
        return self._call("REPLICAS", lambda: self._replicas(line, wait))

    def _replicas(self, line: str, wait: bool) -> ReplicaCount:
        if not wait:
            return self._one(line, parse_replicas)
        sock = self._socket()
        sock.settimeout(None)
        try:
            return self._one(line, parse_replicas)
        finally:
            if self._sock is not None:
                self._sock.settimeout(self.timeout)

    def delete(self, name: str) -> str:
        """Delete ``name``; returns the name. NotFound when absent."""
        line = name_line("DELETE", name)
        return self._call("DELETE", lambda: self._one(line, parse_deleted))

    def servers(self) -> builtins.list[Server]:
        """Every storage server the proxy knows."""
        return self._call("SERVERS", lambda: self._multi("SERVERS", parse_server), _anytime)

    def status(self) -> Status:
        """Cluster-wide counts."""
        return self._call("STATUS", lambda: self._one("STATUS", parse_status), _anytime)

    def help(self) -> builtins.list[str]:
        """The proxy's one-line summaries of its commands."""
        return self._call("HELP", lambda: self._multi("HELP", lambda line: line), _anytime)

    def auth(self, token: str) -> None:
        """Present ``token``; Denied when the proxy does not accept it.
        It is presented again on each connection the client makes later."""
        line = auth_line(token)
        self._call("AUTH", lambda: self._one(line, check_reply), _anytime)
        self.token = token

    def quit(self) -> None:
        """Say QUIT and close; a connection already gone is not an error."""
        self._closed = True
        if self._sock is None:
            return
        try:
            self._request("QUIT")
        except ConnectionLost:
            pass
        finally:
            self.close()

    def close(self) -> None:
        """Close the connection at once; later calls raise ConnectionLost."""
        self._closed = True
        self._drop()

    def _drop(self) -> None:
        """Close the connection in use; with several proxies, the next
        request goes to another one."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    @property
    def closed(self) -> bool:
        return self._sock is None

    def __enter__(self) -> BlockingClient:
        return self

    def __exit__(self, kind: Any, value: Any, tb: Any) -> None:
        if kind is None:
            self.quit()
        else:
            self.close()
