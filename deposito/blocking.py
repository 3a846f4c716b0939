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

A connection the proxy closed while no request was under way (its idle
timeout, a restart, making room for others) is opened again for the next
request: with several proxies the others are tried first, then that one
(no proxy is ruled out for good). A GET whose sink fails (its reader gone,
its disk full) stops reading there; the next request opens a new connection.

Failures: an ``ERR`` reply raises its :mod:`deposito.errors` class; a
connection that closes, breaks or times out during a request raises
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
from typing import IO, Any, Callable, Iterator, Optional, TypeVar

from deposito.errors import BadArgs, Denied, DepositoError
from deposito.localfile import AsideFile, Sink, Source, Writable, open_source
from deposito.protocols.text_socket import TextSocket
from deposito.protocols.words import check_name
from deposito.proxies import Addresses, ProxiesUnreachable, after, parse_address, parse_addresses, reason, show
from deposito.wire import (
    CHUNK_SIZE,
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
    list_line,
    name_line,
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
QUIT_WAIT = 2.0  # seconds a QUIT waits for its answer: the work is done, a hung proxy is not waited on

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
        self._conn: Optional[TextSocket] = None
        self._closed = False
        self._first_answering(list(range(len(self.addresses))), [])

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) of the proxy in use (or last used)."""
        return self.addresses[self._at]

    # -- the proxies

    def _open(self, at: int) -> None:
        """Connect to the proxy at place ``at`` and present the token."""
        self._at = at
        conn = TextSocket(self.addresses[at], self.timeout, self.connect_timeout)
        try:
            if self.token is not None:
                conn.one(auth_line(self.token), check_reply)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self.greeting = conn.greeting

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

    def _ready(self, tried: set[int], failures: builtins.list[tuple[str, str]]) -> TextSocket:
        """A live connection for the next request: the one in use, or one to
        the next proxy that answers and was not tried for this request."""
        conn = self._conn
        if self._closed or (len(self.addresses) == 1 and (conn is None or conn.closed)):
            raise ConnectionLost("the client is closed")
        if conn is not None and not conn.closed:
            if not conn.gone():
                return conn
            conn.close()  # closed by the proxy while idle: this request goes on a new one
        self._first_answering([at for at in after(self._at, len(self.addresses)) if at not in tried], failures)
        assert self._conn is not None
        return self._conn

    def _call(self, command: str, attempt: Callable[[TextSocket], T],
              retry: Optional[Callable[[], bool]] = None) -> T:
        """Run one request as the failover rules say. ``retry`` is given for
        reads: called once a read was cut off after it was sent, it says
        whether it may be made again on another proxy (and gets ready for
        it). A write cut off after it was sent raises OutcomeUnknown."""
        tried: set[int] = set()
        failures: builtins.list[tuple[str, str]] = []
        while True:
            conn = self._ready(tried, failures)
            conn.sent = False
            try:
                return attempt(conn)
            except ConnectionLost as e:
                if conn.sent and retry is None:
                    raise OutcomeUnknown.after(e, command) from None
                if len(self.addresses) == 1 or (conn.sent and retry is not None and not retry()):
                    raise
                tried.add(self._at)
                failures.append((show(self.address), e.message))

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
            return self._call("PUT", lambda conn: self._put(conn, line, file, length, progress))
        finally:
            if close:
                file.close()

    def _put(self, conn: TextSocket, line: str, file: IO[bytes], length: int,
             progress: Optional[Progress]) -> Stored:
        reply = conn.request(line)
        try:
            words = check_reply(reply).split()
            if words[:2] != ["OK", "send"] or words[2:] != [str(length)]:
                raise ProtocolError(f"expected 'OK send {length}', got {reply[:200]!r}")
        except ProtocolError:
            conn.close()
            raise
        digest = hashlib.sha256()
        sent = 0
        try:
            while sent < length:
                data = file.read(min(CHUNK_SIZE, length - sent))
                if not data:
                    raise ValueError(f"the file ended {length - sent} bytes early")
                digest.update(data)
                conn.send_upload(data)
                sent += len(data)
                if progress is not None:
                    progress(sent, length)
        except BaseException:
            # a read, a send or a progress callback that failed (Ctrl-C included): the
            # proxy waits for bytes that will not come, and would take the next request's
            # line as the upload's last bytes
            conn.close()
            raise
        stored = conn.parsed(conn.reply(), parse_stored)
        if stored.sha256 != digest.hexdigest():
            raise ChecksumMismatch(f"{stored.name} stored with sha256 {stored.sha256}, sent {digest.hexdigest()}")
        return stored

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

        return self._call("GET", lambda conn: self._get(conn, line, name, counted, progress), again)

    def _get(self, conn: TextSocket, line: str, name: str, sink: Writable,
             progress: Optional[Progress]) -> Download:
        header = conn.one(line, parse_get_header)
        size, found = header
        digest = hashlib.sha256()
        remaining = size
        while remaining:
            data = conn.recv(min(CHUNK_SIZE, remaining))
            remaining -= len(data)
            digest.update(data)
            try:
                sink.write(data)
            except Exception:  # (its reader gone, its disk full): the rest is not worth reading
                conn.cut()
                raise
            if progress is not None:
                progress(size - remaining, size)
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
        return self._call("STAT", lambda conn: conn.one(line, parse_stat), _anytime)

    def list_page(self, prefix: str = "", after: str = "", limit: int = PAGE_SIZE) -> list[Entry]:
        """One page of names: at most ``limit`` of those starting with
        ``prefix`` that sort after ``after``, in name order. The next page
        starts after the last name of this one; a page shorter than
        ``limit`` is the last."""
        line = list_line(prefix, after, limit)
        return self._call("LIST", lambda conn: conn.multi(line, parse_entry, limit), _anytime)

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
        return self._call("REPLICAS", lambda conn: self._replicas(conn, line, wait))

    @staticmethod
    def _replicas(conn: TextSocket, line: str, wait: bool) -> ReplicaCount:
        if not wait:
            return conn.one(line, parse_replicas)
        with conn.waiting(None):
            return conn.one(line, parse_replicas)

    def delete(self, name: str) -> str:
        """Delete ``name``; returns the name. NotFound when absent."""
        line = name_line("DELETE", name)
        return self._call("DELETE", lambda conn: conn.one(line, parse_deleted))

    def servers(self) -> builtins.list[Server]:
        """Every storage server the proxy knows."""
        return self._call("SERVERS", lambda conn: conn.multi("SERVERS", parse_server), _anytime)

    def status(self) -> Status:
        """Cluster-wide counts."""
        return self._call("STATUS", lambda conn: conn.one("STATUS", parse_status), _anytime)

    def help(self) -> builtins.list[str]:
        """The proxy's one-line summaries of its commands."""
        return self._call("HELP", lambda conn: conn.multi("HELP", lambda line: line), _anytime)

    def auth(self, token: str) -> None:
        """Present ``token``; Denied when the proxy does not accept it.
        It is presented again on each connection the client makes later."""
        line = auth_line(token)
        self._call("AUTH", lambda conn: conn.one(line, check_reply), _anytime)
        self.token = token

    def quit(self) -> None:
        """Say QUIT and close; a connection already gone is not an error."""
        self._closed = True
        if self._conn is None or self._conn.closed:
            return
        try:
            conn = self._conn
            with conn.waiting(QUIT_WAIT if self.timeout is None else min(self.timeout, QUIT_WAIT)):
                conn.request("QUIT")
        except ConnectionLost:
            pass  # (a proxy that does not answer in time, hung say, is left all the same)
        finally:
            self.close()

    def close(self) -> None:
        """Close the connection at once; later calls raise ConnectionLost."""
        self._closed = True
        if self._conn is not None:
            self._conn.close()

    @property
    def closed(self) -> bool:
        return self._conn is None or self._conn.closed

    def __enter__(self) -> BlockingClient:
        return self

    def __exit__(self, kind: Any, value: Any, tb: Any) -> None:
        if kind is None:
            self.quit()
        else:
            self.close()
