"""The blocking client's side of the text protocol: one connection's framing
on a plain socket (request lines out; reply lines and raw bytes in).

:class:`deposito.blocking.BlockingClient` makes the requests and decides,
from :attr:`TextSocket.sent`, what may be made again on another proxy; this
module only moves bytes and words every failure the same way: the connection
is closed, and ConnectionLost (or ProtocolError for a reply it cannot read)
is raised.
"""

from __future__ import annotations

import select
import socket
from contextlib import contextmanager
from typing import Callable, Iterator, Optional, TypeVar

from deposito.errors import from_reply
from deposito.wire import (CHUNK_SIZE, MAX_REPLY_LINE, MOST_LINES, ConnectionLost, ProtocolError, check_reply, decode, encode,
                           parse_count)

T = TypeVar("T")


class TextSocket:
    """A greeted connection to one proxy."""

    def __init__(self, address: tuple[str, int], timeout: Optional[float],
                 connect_timeout: Optional[float]) -> None:
        """Connect and read the greeting: the socket's OSError if the proxy
        cannot be reached, the ERR class of an ERR greeting, ProtocolError
        for anything else."""
        # a proxy that accepts and does not greet (hung, say) is given up as soon as one that does not accept
        self.timeout = connect_timeout if connect_timeout is not None else timeout
        self.buffer = bytearray()
        self.sent = False  # whether the last request line went out
        self._sock: Optional[socket.socket] = socket.create_connection(address, connect_timeout)
        try:
            self._sock.settimeout(self.timeout)
            greeting = self.line()
            if not greeting.startswith("OK"):
                check_reply(greeting)
                raise ProtocolError(f"unexpected greeting {greeting[:200]!r}")
            self.greeting = greeting
            self.timeout = timeout
            self._sock.settimeout(timeout)
        except BaseException:
            self.close()
            raise

    @property
    def closed(self) -> bool:
        return self._sock is None

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def cut(self) -> None:
        """Give up the reply under way unread: the proxy sees the connection
        end, and the next request opens a new one (see :meth:`gone`)."""
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def gone(self) -> bool:
        """Whether the proxy closed the idle connection or is closing it
        (stopped or killed since the last request, or closing it to make
        room, which it says in a line no request asked for), found without
        waiting: an idle connection has nothing to read."""
        if self.buffer:
            return True
        sock = self._socket()
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            return bool(readable)
        except OSError:
            return True

    @contextmanager
    def waiting(self, seconds: Optional[float]) -> Iterator[None]:
        """Wait for the reply ``seconds`` at most, or (None) as long as it
        takes (REPLICAS ... WAIT)."""
        self._socket().settimeout(seconds)
        try:
            yield
        finally:
            if self._sock is not None:
                self._sock.settimeout(self.timeout)

    def _socket(self) -> socket.socket:
        if self._sock is None:
            raise ConnectionLost("the client is closed")
        return self._sock

    def _lost(self, why: str) -> ConnectionLost:
        self.close()
        return ConnectionLost(f"connection to the proxy lost: {why}")

    def recv(self, limit: int) -> bytes:
        """Bytes already read past the last line first, else from the socket."""
        if self.buffer:
            data = bytes(self.buffer[:limit])
            del self.buffer[: len(data)]
            return data
        return self._recv(limit)

    def send(self, data: bytes) -> None:
        try:
            self._socket().sendall(data)
        except socket.timeout:
            raise self._lost(f"could not send within {self.timeout} seconds") from None
        except OSError as e:
            raise self._lost(e.strerror or str(e)) from None

    def line(self) -> str:
        while True:
            end = self.buffer.find(b"\n")
            if end >= 0:
                raw = bytes(self.buffer[:end])
                del self.buffer[: end + 1]
                return decode(raw)
            if len(self.buffer) > MAX_REPLY_LINE:
                self.close()
                raise ProtocolError(f"reply line over {MAX_REPLY_LINE} bytes")
            self.buffer += self._recv(CHUNK_SIZE)

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

    def request(self, line: str) -> str:
        """Send a request line; its first reply line."""
        self.send(encode(line))
        self.sent = True
        return self.reply()

    def reply(self) -> str:
        try:
            return self.line()
        except ProtocolError:
            self.close()
            raise

    def parsed(self, reply: str, parse: Callable[[str], T]) -> T:
        try:
            return parse(reply)
        except ProtocolError:
            self.close()
            raise

    def one(self, line: str, parse: Callable[[str], T]) -> T:
        return self.parsed(self.request(line), parse)

    def multi(self, line: str, parse: Callable[[str], T], most: Optional[int] = MOST_LINES) -> list[T]:
        """``OK <n>`` and n lines, each parsed as it comes: a count over
        ``most`` (see wire.parse_count) is refused before any line is read."""
        count = self.one(line, lambda reply: parse_count(reply, most))
        try:
            return [parse(self.reply()) for _ in range(count)]
        except ProtocolError:
            self.close()
            raise

    def send_upload(self, data: bytes) -> None:
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
            while b"\n" not in self.buffer and len(self.buffer) < MAX_REPLY_LINE:
                more = sock.recv(CHUNK_SIZE)
                if not more:
                    break
                self.buffer += more
        except OSError:
            pass
        line = decode(bytes(self.buffer.split(b"\n", 1)[0]))
        self.close()
        if line.startswith("ERR "):
            raise from_reply(line)
        raise ConnectionLost(f"connection to the proxy lost: {why}")
