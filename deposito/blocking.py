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

Failures: an ``ERR`` reply raises its :mod:`deposito.errors` class; a
connection that closes, breaks or times out raises
:class:`~deposito.client.ConnectionLost` (an ``OSError`` too) and the client is
closed; failing to connect raises the socket's ``OSError`` (for example
``ConnectionRefusedError``). One client is for one thread at a time.
"""

from __future__ import annotations

import builtins
import hashlib
import os
import socket
from typing import Any, Callable, Iterator, Optional, TypeVar, Union

from deposito.errors import BadArgs, from_reply
from deposito.localfile import AsideFile, Sink, Source, open_source
from deposito.protocols.words import check_name, quote
from deposito.wire import (
    CHUNK_SIZE,
    MAX_REPLY_LINE,
    PAGE_SIZE,
    ChecksumMismatch,
    ConnectionLost,
    Download,
    Entry,
    Progress,
    ProtocolError,
    ReplicaCount,
    Server,
    Stat,
    Status,
    Stored,
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


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) as a (host, port) pair; ValueError otherwise."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {address!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


class BlockingClient:
    """A connection to the proxy; connects (and authenticates) when made.

    ``address`` is ``"HOST:PORT"`` or a ``(host, port)`` pair. ``timeout`` is
    how long, in seconds, any one wait on the socket may last (None: no
    limit); ``replicas(..., wait=True)`` waits without limit. Use it as a
    context manager, or call :meth:`close` (or :meth:`quit`).
    """

    def __init__(self, address: Union[str, tuple[str, int]] = DEFAULT_ADDRESS,
                 token: Optional[str] = None, timeout: Optional[float] = 300.0,
                 connect_timeout: Optional[float] = 10.0) -> None:
        host, port = parse_address(address) if isinstance(address, str) else address
        self.address = (host, port)
        self.timeout = timeout
        self._buffer = bytearray()
        self._sock: Optional[socket.socket] = socket.create_connection((host, port), connect_timeout)
        try:
            self._sock.settimeout(timeout)
            greeting = self._line()
            if not greeting.startswith("OK"):
                check_reply(greeting)
                raise ProtocolError(f"unexpected greeting {greeting[:200]!r}")
            self.greeting = greeting
            if token is not None:
                self.auth(token)
        except BaseException:
            self.close()
            raise

    # -- the socket

    def _socket(self) -> socket.socket:
        if self._sock is None:
            raise ConnectionLost("the client is closed")
        return self._sock

    def _lost(self, why: str) -> ConnectionLost:
        self.close()
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
                self.close()
                raise ProtocolError(f"reply line over {MAX_REPLY_LINE} bytes")
            self._buffer += self._recv(CHUNK_SIZE)

    def _request(self, line: str) -> str:
        self._send(encode(line))
        return self._reply()

    def _reply(self) -> str:
        try:
            return self._line()
        except ProtocolError:
            self.close()
            raise

    def _one(self, line: str, parse: Callable[[str], T]) -> T:
        reply = self._request(line)
        try:
            return parse(reply)
        except ProtocolError:
            self.close()
            raise

    def _multi(self, line: str, parse: Callable[[str], T]) -> list[T]:
        count = self._one(line, parse_count)
        lines = [self._reply() for _ in range(count)]
        try:
            return [parse(ln) for ln in lines]
        except ProtocolError:
            self.close()
            raise

    # -- commands

    def put(self, name: str, source: Source, replicas: Optional[int] = None,
            progress: Optional[Progress] = None, size: Optional[int] = None) -> Stored:
        """Store ``source`` (a path, or a binary file read from its position) under ``name``.

        Returns :class:`~deposito.client.Stored` once the proxy committed every
        copy. A file that cannot seek needs ``size``. The sha256 the proxy
        reports is checked against the bytes sent (ChecksumMismatch).
        If sending breaks half way, the connection is closed.
        """
        file, length, close = open_source(source, size)
        try:
            reply = self._request(put_line(name, length, replicas))
            try:
                words = check_reply(reply).split()
                if words[:2] != ["OK", "send"] or words[2:] != [str(length)]:
                    raise ProtocolError(f"expected 'OK send {length}', got {reply[:200]!r}")
            except ProtocolError:
                self.close()
                raise
            digest = hashlib.sha256()
            sent = 0
            while sent < length:
                try:
                    data = file.read(min(CHUNK_SIZE, length - sent))
                    if not data:
                        raise ValueError(f"the file ended {length - sent} bytes early")
                except BaseException:
                    self.close()  # the proxy waits for bytes that will not come
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
        finally:
            if close:
                file.close()

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
        self.close()
        if line.startswith("ERR "):
            raise from_reply(line)
        raise ConnectionLost(f"connection to the proxy lost: {why}")

    def _one_reply(self, parse: Callable[[str], T]) -> T:
        reply = self._reply()
        try:
            return parse(reply)
        except ProtocolError:
            self.close()
            raise

    def get(self, name: str, sink: Sink, progress: Optional[Progress] = None) -> Download:
        """Write the newest version of ``name`` into ``sink``; returns :class:`~deposito.client.Download`.

        ``sink`` is a binary file object (written to, left open) or a path:
        the bytes then go to a file beside it, renamed onto it only when
        complete and verified, so a failed get leaves no partial file.
        The bytes are checked against the announced sha256 (ChecksumMismatch).
        """
        if isinstance(sink, (str, os.PathLike)):
            check_name(name)
            with AsideFile(sink) as aside:
                return self.get(name, aside, progress)
        header = self._one(name_line("GET", name), parse_get_header)
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
        return self._one(name_line("STAT", name), parse_stat)

    def list_page(self, prefix: str = "", after: str = "", limit: int = PAGE_SIZE) -> list[Entry]:
        """One page of names: at most ``limit`` of those starting with
        ``prefix`` that sort after ``after``, in name order. The next page
        starts after the last name of this one; a page shorter than
        ``limit`` is the last."""
        return self._multi(list_line(prefix, after, limit), parse_entry)

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
        return self._one(name_line("DELETE", name), parse_deleted)

    def servers(self) -> builtins.list[Server]:
        """Every storage server the proxy knows."""
        return self._multi("SERVERS", parse_server)

    def status(self) -> Status:
        """Cluster-wide counts."""
        return self._one("STATUS", parse_status)

    def help(self) -> builtins.list[str]:
        """The proxy's one-line summaries of its commands."""
        return self._multi("HELP", lambda line: line)

    def auth(self, token: str) -> None:
        """Present ``token``; Denied when the proxy does not accept it."""
        if not token or any(c in token for c in "\r\n"):
            raise BadArgs("a token is one non-empty line")
        self._one(f"AUTH {quote(token)}", check_reply)

    def quit(self) -> None:
        """Say QUIT and close; a connection already gone is not an error."""
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
