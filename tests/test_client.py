"""The Python clients: reply parsing, the Twisted client's framing on a
StringTransport, the blocking client against a small fake proxy on loopback,
and both against a real cluster (the ``cluster`` fixture of conftest.py).
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import socketserver
import threading
import time
from typing import Any, Optional

import pytest
import pytest_twisted
from twisted.internet.interfaces import IConsumer
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from deposito import errors
from deposito.blocking import BlockingClient, parse_address
from deposito.client import (
    CHUNK_SIZE,
    PAGE_SIZE,
    ChecksumMismatch,
    ConnectionLost,
    DepositoClient,
    DepositoClientProtocol,
    Download,
    Entry,
    ProtocolError,
    ReplicaCount,
    Server,
    Stat,
    Status,
    Stored,
    connect,
)
from deposito.localfile import AsideFile
from deposito.wire import (
    MOST_LINES,
    list_line,
    parse_entry,
    parse_get_header,
    parse_replicas,
    parse_server,
    parse_stat,
    parse_status,
    parse_stored,
)
from deposito.protocols.words import quote, split

GREETING = b"OK deposito 0.1.0 ready\r\n"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def payload(n: int, seed: int = 1) -> bytes:
    """n bytes that are not all alike, so misplaced chunks show."""
    out = bytearray()
    block = hashlib.sha256(str(seed).encode()).digest()
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:n])


# ---------------------------------------------------------------- a fake proxy


class FakeProxy:
    """The text protocol on 127.0.0.1 over an in-memory dict, in a thread.

    ``cut_get_after``: a GET sends only that many payload bytes, then closes.
    ``tokens``: when set, AUTH with one of them is needed first.
    ``requests`` records every request line received; :meth:`kill` drops
    every connection and stops listening, as a killed proxy would.
    """

    def __init__(self, tokens: Optional[set[str]] = None) -> None:
        self.files: dict[str, tuple[bytes, int, int]] = {}  # name -> data, version, wanted
        self.versions: dict[str, int] = {}
        self.tokens = tokens
        self.cut_get_after: Optional[int] = None
        self.announce: Optional[int] = None  # a LIST says this many lines, sends the real ones, and closes
        self.requests: list[str] = []
        self.connections: list[socket.socket] = []
        fake = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                fake.connections.append(self.connection)
                fake._serve(self.rfile, self.wfile)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.address = f"127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def give_way(self) -> None:
        """Close every connection with the line a full proxy sends one it closes to make room."""
        for conn in self.connections:
            try:
                conn.sendall(b"ERR unavailable closed to make room: the proxy is full and this connection was idle\r\n")
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def kill(self) -> None:
        self.stop()
        for conn in self.connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _serve(self, rfile: Any, wfile: Any) -> None:
        def reply(line: str) -> None:
            wfile.write(line.encode() + b"\r\n")

        reply("OK deposito 0.1.0 ready")
        authed = self.tokens is None
        while True:
            raw = rfile.readline(9000)
            if not raw:
                return
            line = raw.rstrip(b"\n").rstrip(b"\r").decode()
            if not line:
                continue
            self.requests.append(line)
            try:
                words = split(line)
            except errors.DepositoError as e:
                reply(e.reply())
                continue
            cmd, args = words[0].upper(), words[1:]
            if not authed and cmd not in ("AUTH", "QUIT", "HELP"):
                reply("ERR denied AUTH first")
                continue
            if cmd == "AUTH":
                if self.tokens is not None and args[0] not in self.tokens:
                    reply("ERR denied bad token")
                else:
                    authed = True
                    reply("OK")
            elif cmd == "PUT":
                name, size = args[0], int(args[1])
                wanted = int(args[2]) if len(args) > 2 else 2
                if wanted > 3:
                    reply("ERR unavailable only 3 servers up")
                    continue
                reply(f"OK send {size}")
                data = rfile.read(size)
                if len(data) < size:
                    return
                version = self.versions.get(name, 0) + 1
                self.versions[name] = version
                self.files[name] = (data, version, wanted)
                reply(f"OK stored name={quote(name)} version={version} size={size} "
                      f"sha256={sha(data)} replicas={wanted}")
            elif cmd == "GET":
                if args[0] not in self.files:
                    reply(f"ERR notfound {args[0]}")
                    continue
                data, version, _ = self.files[args[0]]
                reply(f"OK {len(data)} sha256={sha(data)} version={version}")
                if self.cut_get_after is not None:
                    wfile.write(data[: self.cut_get_after])
                    wfile.flush()
                    return
                for i in range(0, len(data), 65536):
                    wfile.write(data[i:i + 65536])
            elif cmd == "STAT":
                if args[0] not in self.files:
                    reply(f"ERR notfound {args[0]}")
                    continue
                data, version, wanted = self.files[args[0]]
                reply(f"OK name={quote(args[0])} size={len(data)} sha256={sha(data)} version={version} "
                      f"replicas={wanted} have={wanted} servers={','.join(f's{i}' for i in range(wanted))} new=1")
            elif cmd == "LIST":
                prefix = args[0] if args else ""
                after = args[1] if len(args) > 1 else ""
                limit = int(args[2]) if len(args) > 2 else None
                names = sorted(n for n in self.files if n.startswith(prefix) and n > after)[:limit]
                reply(f"OK {len(names) if self.announce is None else self.announce}")
                for n in names:
                    data, _, wanted = self.files[n]
                    reply(f"{len(data)} {wanted} {wanted} {quote(n)}")
                if self.announce is not None:
                    return
            elif cmd == "DELETE":
                if self.files.pop(args[0], None) is None:
                    reply(f"ERR notfound {args[0]}")
                else:
                    reply(f"OK deleted name={quote(args[0])}")
            elif cmd == "REPLICAS":
                if args[0] not in self.files:
                    reply(f"ERR notfound {args[0]}")
                    continue
                data, version, _ = self.files[args[0]]
                count = int(args[1])
                self.files[args[0]] = (data, version, count)
                reply(f"OK name={quote(args[0])} replicas={count} have={count if len(args) > 2 else 1}")
            elif cmd == "SERVERS":
                reply("OK 2")
                reply("s0 127.0.0.1:4001 up used=10 capacity=1000 blobs=1 zone=a")
                reply('s1 127.0.0.1:4002 down used=0 capacity=2000 blobs=0 zone="rack 2"')
            elif cmd == "STATUS":
                reply(f"OK files={len(self.files)} bytes={sum(len(d) for d, _, _ in self.files.values())} "
                      "servers_up=1 servers_down=1 under=0 over=0 repairs_queued=0 repairs_running=0")
            elif cmd == "HELP":
                reply("OK 1")
                reply("PUT <name> <size> [<replicas>]")
            elif cmd == "QUIT":
                reply("OK bye")
                return
            else:
                reply(f"ERR badcommand {cmd}")


@pytest.fixture
def fake() -> Any:
    proxy = FakeProxy()
    yield proxy
    proxy.stop()


@pytest.fixture
def live(request: pytest.FixtureRequest) -> Any:
    """A real cluster of conftest.py (proxy + 3 storage servers as twistd processes)."""
    for name in ("shared_cluster", "cluster"):
        try:
            return request.getfixturevalue(name)
        except pytest.FixtureLookupError:
            continue
    pytest.skip("needs the `cluster` fixture of tests/conftest.py")


def implemented(call: Any) -> Any:
    """The result of ``call()``; a skip naming the command if the proxy does not know it yet."""
    try:
        return call()
    except errors.BadCommand as e:
        pytest.skip(f"the proxy does not implement this yet: {e}")


# ---------------------------------------------------------------- reply parsing


def test_parse_stored() -> None:
    s = parse_stored('OK stored name="a b" version=3 size=10 sha256=ab12 replicas=2 extra=7')
    assert s == Stored(name="a b", version=3, size=10, sha256="ab12", replicas=2)


def test_parse_stat_lists_servers_and_ignores_unknown_keys() -> None:
    s = parse_stat("OK zz=1 servers=s1,s2 name=x/y size=5 sha256=ff version=2 replicas=3 have=2")
    assert s == Stat(name="x/y", size=5, sha256="ff", version=2, replicas=3, have=2, servers=("s1", "s2"))
    assert parse_stat("OK name=x size=0 sha256=e version=1 replicas=1 have=0 servers=-").servers == ()


def test_parse_list_line_with_quoted_name() -> None:
    assert parse_entry('12 2 1 "a \\"quoted\\" name"') == Entry(12, 2, 1, 'a "quoted" name')
    assert parse_entry("0 1 1 dir/file=1") == Entry(0, 1, 1, "dir/file=1")


def test_parse_server_status_replicas_get_header() -> None:
    assert parse_server('s1 10.0.0.2:4000 down used=5 capacity=9 blobs=1 zone="rack 2" new=x') == Server(
        id="s1", address="10.0.0.2:4000", state="down", used=5, capacity=9, blobs=1, zone="rack 2")
    assert parse_server('"my server" [::1]:4000 up zone=z blobs=0 used=0 capacity=1').id == "my server"
    assert parse_status("OK files=1 bytes=2 servers_up=3 servers_down=0 under=1 over=0 "
                        "repairs_queued=4 repairs_running=1") == Status(1, 2, 3, 0, 1, 0, 4, 1)
    assert parse_replicas("OK name=n replicas=3 have=1") == ReplicaCount("n", 3, 1)
    assert parse_get_header("OK 42 sha256=ab version=7") == (42, {"sha256": "ab", "version": "7"})


@pytest.mark.parametrize("line, cls, message", [
    ("ERR notfound no such file", errors.NotFound, "no such file"),
    ("ERR unavailable 1 server up", errors.Unavailable, "1 server up"),
    ("ERR denied", errors.Denied, ""),
    ("ERR toolarge over 10 bytes", errors.TooLarge, "over 10 bytes"),
    ("ERR whatever new code", errors.Internal, "new code"),
])
def test_err_replies_raise_their_class(line: str, cls: type, message: str) -> None:
    with pytest.raises(cls) as info:
        parse_stat(line)
    assert info.value.message == message


@pytest.mark.parametrize("line", ["hello", "OK name=x size=big sha256=a version=1 replicas=1 have=1 servers=-",
                                  "OK name=x"])
def test_unreadable_replies_raise_protocol_error(line: str) -> None:
    with pytest.raises(ProtocolError):
        parse_stat(line)


def test_connection_lost_is_a_deposito_error_and_an_oserror() -> None:
    e = ConnectionLost("gone")
    assert isinstance(e, errors.DepositoError) and isinstance(e, OSError)


def test_parse_address() -> None:
    assert parse_address("127.0.0.1:7000") == ("127.0.0.1", 7000)
    assert parse_address("[::1]:7000") == ("::1", 7000)
    for bad in ("7000", "host:", "host:x", "host:70000"):
        with pytest.raises(ValueError):
            parse_address(bad)


# ---------------------------------------------------------------- Twisted client framing


class Wire:
    """A DepositoClient on a StringTransport, greeted."""

    def __init__(self) -> None:
        from twisted.internet.task import Clock

        self.protocol = DepositoClientProtocol()
        self.protocol.callLater = Clock().callLater  # a request's timeout is the business of its own test
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        self.protocol.dataReceived(GREETING)
        self.client = DepositoClient(self.protocol)

    def sent(self) -> bytes:
        data = self.transport.value()
        self.transport.clear()
        return data

    def feed(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def pump_producer(self) -> int:
        """Let the registered pull producer run until it unregisters; the number of pulls."""
        pulls = 0
        while self.transport.producer is not None:
            self.transport.producer.resumeProducing()
            pulls += 1
        return pulls

    def lose(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionResetError("reset by peer")))


def result(d: Any) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


def failure(d: Any) -> BaseException:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out and isinstance(out[0], Failure), f"expected a failure, got {out}"
    return out[0].value


def test_requests_wait_for_the_greeting_and_go_one_at_a_time() -> None:
    protocol = DepositoClientProtocol()
    transport = StringTransport()
    protocol.makeConnection(transport)
    client = DepositoClient(protocol)
    d1 = client.stat("a b")
    d2 = client.delete("c")
    assert transport.value() == b""
    protocol.dataReceived(GREETING)
    assert transport.value() == b'STAT "a b"\n'
    transport.clear()
    protocol.dataReceived(b"OK name=\"a b\" size=1 sha256=x version=1 replicas=1 have=1 servers=s0\r\n")
    assert result(d1).name == "a b"
    assert transport.value() == b"DELETE c\n"
    protocol.dataReceived(b"OK deleted name=c\n")  # LF alone is accepted too
    assert result(d2) == "c"


def test_err_greeting_fails_the_connection() -> None:
    protocol = DepositoClientProtocol()
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(b"ERR unavailable rebuilding\r\n")
    assert isinstance(failure(protocol.greeted), errors.Unavailable)
    assert transport.disconnecting


def test_err_reply_fails_with_its_class_and_the_connection_stays_usable() -> None:
    w = Wire()
    d = w.client.stat("missing")
    w.feed(b"ERR notfound no such file: missing\r\n")
    e = failure(d)
    assert isinstance(e, errors.NotFound) and e.message == "no such file: missing"
    w.sent()
    d = w.client.status()
    assert w.sent() == b"STATUS\n"
    w.feed(b"OK files=0 bytes=0 servers_up=3 servers_down=0 under=0 over=0 repairs_queued=0 repairs_running=0\r\n")
    assert result(d).servers_up == 3


def test_invalid_name_fails_before_anything_is_sent() -> None:
    w = Wire()
    assert isinstance(failure(w.client.stat("bad\nname")), errors.BadArgs)
    assert isinstance(failure(w.client.put("", io.BytesIO(b"x"))), errors.BadArgs)
    assert w.sent() == b""


def test_put_streams_the_file_in_chunks_through_a_pull_producer() -> None:
    data = payload(3 * CHUNK_SIZE + 123)
    reads: list[int] = []

    class Recording(io.BytesIO):
        def read(self, n: int = -1) -> bytes:
            reads.append(n)
            return super().read(n)

    progress: list[tuple[int, int]] = []
    w = Wire()
    d = w.client.put("big file", Recording(data), replicas=3, progress=lambda done, total: progress.append((done, total)))
    assert w.sent() == f'PUT "big file" {len(data)} 3\n'.encode()
    w.feed(b"OK send %d\r\n" % len(data))
    assert w.transport.producer is not None and not w.transport.streaming
    w.transport.producer.resumeProducing()
    assert len(w.transport.value()) == CHUNK_SIZE  # one pull, one chunk: nothing read ahead
    assert w.pump_producer() == 3
    assert w.sent() == data
    assert all(0 < n <= CHUNK_SIZE for n in reads)
    assert progress[-1] == (len(data), len(data)) and len(progress) == 4
    assert not d.called
    w.feed(f"OK stored name=\"big file\" version=1 size={len(data)} sha256={sha(data)} replicas=3\r\n".encode())
    assert result(d) == Stored("big file", 1, len(data), sha(data), 3)


def test_put_from_a_path_closes_the_file(tmp_path: Any) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"hello")
    w = Wire()
    d = w.client.put("f.bin", str(path))
    assert w.sent() == b"PUT f.bin 5\n"
    w.feed(b"OK send 5\r\n")
    w.pump_producer()
    assert w.sent() == b"hello"
    w.feed(f"OK stored name=f.bin version=2 size=5 sha256={sha(b'hello')} replicas=2\r\n".encode())
    assert result(d).version == 2


def test_put_refused_before_sending_keeps_the_connection() -> None:
    w = Wire()
    d = w.client.put("x", io.BytesIO(b"abc"), replicas=9)
    w.sent()
    w.feed(b"ERR unavailable 3 servers up\r\n")
    assert isinstance(failure(d), errors.Unavailable)
    assert w.transport.producer is None and not w.transport.disconnecting
    d = w.client.delete("x")
    assert w.sent() == b"DELETE x\n"


def test_put_of_an_empty_file_sends_no_bytes() -> None:
    w = Wire()
    d = w.client.put("empty", io.BytesIO(b""))
    w.sent()
    w.feed(b"OK send 0\r\n")
    assert w.transport.producer is None
    w.feed(f"OK stored name=empty version=1 size=0 sha256={sha(b'')} replicas=2\r\n".encode())
    assert result(d).size == 0


def test_put_with_a_wrong_checksum_in_the_reply_fails() -> None:
    w = Wire()
    d = w.client.put("x", io.BytesIO(b"abc"))
    w.feed(b"OK send 3\r\n")
    w.pump_producer()
    w.feed(f"OK stored name=x version=1 size=3 sha256={sha(b'abd')} replicas=2\r\n".encode())
    assert isinstance(failure(d), ChecksumMismatch)


def test_put_of_a_file_that_ends_early_drops_the_connection() -> None:
    class Shrinking(io.BytesIO):
        def seek(self, *a: Any) -> int:  # claims 10 bytes, holds 4
            return 10 if a[1:] == (os.SEEK_END,) else super().seek(*a)

    w = Wire()
    d = w.client.put("x", Shrinking(b"abcd"))
    queued = w.client.status()
    assert w.sent() == b"PUT x 10\n"
    w.feed(b"OK send 10\r\n")
    w.pump_producer()
    assert isinstance(failure(d), ValueError)
    assert w.transport.disconnecting
    assert w.sent() == b"abcd"  # the queued STATUS never went out after the broken bytes
    w.lose()
    assert isinstance(failure(queued), ConnectionLost)


def test_put_whose_progress_callback_fails_fails_with_its_error_and_drops_the_connection() -> None:
    """The error went up through the transport (an unhandled error logged,
    the connection lost, the put said to have an unknown outcome); it is
    the put's own failure now, and the connection goes, as for a file that
    cannot be read."""
    data = payload(2 * CHUNK_SIZE)

    def interrupt(done: int, total: int) -> None:
        raise RuntimeError("stopped by its user")

    w = Wire()
    d = w.client.put("x", io.BytesIO(data), progress=interrupt)
    w.sent()
    w.feed(b"OK send %d\r\n" % len(data))
    w.pump_producer()
    error = failure(d)
    assert isinstance(error, RuntimeError) and str(error) == "stopped by its user"
    assert w.transport.disconnecting and len(w.sent()) == CHUNK_SIZE


def test_get_writes_the_bytes_and_the_next_reply_in_the_same_packet_is_read() -> None:
    data = payload(2 * CHUNK_SIZE + 5)
    sink = io.BytesIO()
    progress: list[int] = []
    w = Wire()
    d = w.client.get("x", sink, progress=lambda done, total: progress.append(done))
    d2 = w.client.delete("x")
    assert w.sent() == b"GET x\n"
    stream = f"OK {len(data)} sha256={sha(data)} version=4\r\n".encode() + data
    w.feed(stream[:10])
    w.feed(stream[10:70000])
    w.feed(stream[70000:])
    assert result(d) == Download("x", len(data), sha(data), 4)
    assert sink.getvalue() == data and progress[-1] == len(data)
    assert w.sent() == b"DELETE x\n"
    w.feed(b"OK deleted name=x\r\n")
    assert result(d2) == "x"


def test_get_reply_and_bytes_and_next_reply_in_one_packet() -> None:
    w = Wire()
    sink = io.BytesIO()
    d = w.client.get("x", sink)
    d2 = w.client.get("y", io.BytesIO())
    w.feed(f"OK 3 sha256={sha(b'abc')} version=1\r\nabc".encode() + b"ERR notfound y\r\n")
    assert result(d).size == 3 and sink.getvalue() == b"abc"
    assert isinstance(failure(d2), errors.NotFound)


def test_get_with_a_wrong_checksum_fails_but_the_connection_stays_usable() -> None:
    w = Wire()
    d = w.client.get("x", io.BytesIO())
    w.feed(f"OK 3 sha256={sha(b'xyz')} version=1\r\nabc".encode())
    assert isinstance(failure(d), ChecksumMismatch)
    w.sent()
    w.client.status()
    assert w.sent() == b"STATUS\n"


def test_get_into_a_consumer_registers_the_transport_as_its_producer() -> None:
    @implementer(IConsumer)
    class Consumer:
        def __init__(self) -> None:
            self.data = b""
            self.producer: Any = None
            self.events: list[str] = []

        def registerProducer(self, producer: Any, streaming: bool) -> None:
            self.producer = producer
            self.events.append(f"register streaming={streaming}")
            producer.pauseProducing()

        def unregisterProducer(self) -> None:
            self.events.append("unregister")

        def write(self, data: bytes) -> None:
            self.data += data

    w = Wire()
    consumer = Consumer()
    d = w.client.get("x", consumer)
    w.feed(f"OK 6 sha256={sha(b'abcdef')} version=1\r\nabc".encode())
    assert consumer.producer is w.transport and w.transport.producerState == "paused"
    w.feed(b"def")
    assert result(d).size == 6 and consumer.data == b"abcdef"
    assert consumer.events == ["register streaming=True", "unregister"]
    assert w.transport.producerState == "producing"


def test_get_into_a_path_renames_only_a_complete_file(tmp_path: Any) -> None:
    target = tmp_path / "out.bin"
    w = Wire()
    d = w.client.get("x", str(target))
    w.feed(f"OK 6 sha256={sha(b'abcdef')} version=1\r\nabc".encode())
    assert not target.exists()
    w.feed(b"def")
    result(d)
    assert target.read_bytes() == b"abcdef" and os.listdir(tmp_path) == ["out.bin"]

    d = w.client.get("y", str(tmp_path / "broken.bin"))
    w.feed(f"OK 6 sha256={sha(b'abcdef')} version=1\r\nabc".encode())
    w.lose()
    assert isinstance(failure(d), ConnectionLost)
    assert os.listdir(tmp_path) == ["out.bin"]


def test_lost_connection_fails_current_queued_and_later_requests() -> None:
    w = Wire()
    d1 = w.client.get("x", io.BytesIO())
    d2 = w.client.list()
    w.feed(b"OK 100 sha256=00 version=1\r\nabc")
    w.lose()
    for d in (d1, d2, w.client.status()):
        e = failure(d)
        assert isinstance(e, ConnectionLost) and isinstance(e, OSError)
        assert "reset by peer" in str(e)


def test_list_servers_help_replicas() -> None:
    w = Wire()
    d = w.client.list("dir/")
    assert w.sent() == b'LIST dir/ "" 1000\n'
    w.feed(b'OK 2\r\n5 2 2 dir/a\r\n7 3 1 "dir/b c"\r\n')
    assert result(d) == [Entry(5, 2, 2, "dir/a"), Entry(7, 3, 1, "dir/b c")]
    d = w.client.list()
    assert w.sent() == b'LIST "" "" 1000\n'
    w.feed(b"OK 0\r\n")
    assert result(d) == []
    d = w.client.servers()
    w.sent()
    w.feed(b"OK 1\r\ns0 127.0.0.1:4000 up used=1 capacity=2 blobs=3 zone=z\r\n")
    assert result(d)[0].zone == "z"
    d = w.client.replicas("a", 3, wait=True)
    assert w.sent() == b"REPLICAS a 3 WAIT\n"
    w.feed(b"OK name=a replicas=3 have=3\r\n")
    assert result(d) == ReplicaCount("a", 3, 3)
    d = w.client.help()
    w.sent()
    w.feed(b"OK 2\r\nHELP\r\nQUIT\r\n")
    assert result(d) == ["HELP", "QUIT"]


def test_list_line_pages_and_refuses_what_a_line_cannot_carry() -> None:
    assert list_line() == "LIST" and list_line("a b") == 'LIST "a b"'
    assert list_line("", "x", 5) == 'LIST "" x 5' and list_line("p/", 'a"b') == 'LIST p/ "a\\"b"'
    for bad in (lambda: list_line("a\nb"), lambda: list_line("", "", 0), lambda: list_line("", "\r")):
        with pytest.raises(errors.BadArgs):
            bad()


def test_twisted_list_pages_through_and_list_page_asks_one_page() -> None:
    w = Wire()
    d = w.client.list_page("p/", "p/b", 2)
    assert w.sent() == b"LIST p/ p/b 2\n"
    w.feed(b"OK 1\r\n1 1 1 p/c\r\n")
    assert result(d) == [Entry(1, 1, 1, "p/c")]
    d = w.client.list("p/")
    for page in range(3):  # two full pages, then a short one
        names = [f"p/{page}-{i:04d}" for i in range(PAGE_SIZE if page < 2 else 3)]
        after = f"p/{page - 1}-{PAGE_SIZE - 1:04d}" if page else '""'
        assert w.sent() == f"LIST p/ {after} {PAGE_SIZE}\n".encode()
        w.feed(f"OK {len(names)}\r\n".encode() + b"".join(f"1 1 1 {n}\r\n".encode() for n in names))
    entries = result(d)
    assert len(entries) == 2 * PAGE_SIZE + 3 and entries[-1].name == "p/2-0002"
    assert w.sent() == b""


def test_blocking_list_is_an_iterator_of_pages(fake: FakeProxy) -> None:
    fake.files.update({f"it/{i:03d}": (b"x", 1, 1) for i in range(7)})
    fake.files["other"] = (b"y", 1, 1)
    with BlockingClient(fake.address) as c:
        entries = c.list("it/", page=3)
        assert next(entries).name == "it/000"
        assert [r for r in fake.requests if r.startswith("LIST")] == ['LIST it/ "" 3']
        assert c.stat("other").size == 1  # the client serves other requests between pages
        assert [e.name for e in entries] == [f"it/{i:03d}" for i in range(1, 7)]
        assert [r for r in fake.requests if r.startswith("LIST")] == [
            'LIST it/ "" 3', "LIST it/ it/002 3", "LIST it/ it/005 3"]
        assert [e.name for e in c.list_page("it/", "it/004", 10)] == ["it/005", "it/006"]
        assert [e.name for e in c.list()] == sorted(fake.files)


def test_garbage_reply_closes_the_connection() -> None:
    w = Wire()
    d = w.client.status()
    w.feed(b"HELLO THERE\r\n")
    assert isinstance(failure(d), ProtocolError)
    assert w.transport.disconnecting


def test_overlong_reply_line_closes_the_connection() -> None:
    w = Wire()
    d = w.client.status()
    w.feed(b"x" * (DepositoClientProtocol.MAX_LENGTH + 10))
    assert w.transport.disconnecting
    w.lose()
    assert isinstance(failure(d), ConnectionLost)


def test_a_reply_announcing_more_lines_than_asked_for_is_not_believed() -> None:
    """A LIST page of 3 answered ``OK 1000000000`` (a broken or hostile
    proxy): the client kept every line it was sent till that many came,
    gigabytes; SERVERS and HELP, which ask no limit, have a bound of their own."""
    w = Wire()
    d = w.client.list_page("p/", "", 3)
    w.feed(b"OK 1000000000\r\n" + b"1 1 1 p/a\r\n" * 4)
    told = failure(d)
    assert isinstance(told, ProtocolError) and "1000000000 lines" in str(told)
    assert w.transport.disconnecting
    w = Wire()
    d = w.client.servers()
    w.feed(f"OK {MOST_LINES + 1}\r\n".encode())
    assert isinstance(failure(d), ProtocolError) and w.transport.disconnecting
    w = Wire()
    d = w.client.servers()
    w.feed(b"OK 1\r\ns0 127.0.0.1:4001 up used=10 capacity=1000 blobs=1 zone=a\r\n")
    assert [s.id for s in result(d)] == ["s0"]


def test_blocking_a_reply_announcing_more_lines_than_asked_for_is_not_believed(fake: FakeProxy) -> None:
    fake.files.update({f"p/{i}": (b"x", 1, 1) for i in range(5)})
    fake.announce = 1000000000
    with BlockingClient(fake.address) as c:
        with pytest.raises(ProtocolError, match="1000000000 lines, more than the 3 asked for"):
            c.list_page("p/", "", 3)


def test_get_into_a_file_that_fails_stops_reading_there() -> None:
    """The sink refuses a write (its disk full, its reader gone): the GET
    fails at once and the connection goes, as in the blocking client (it
    read the rest of the file first, hundreds of MiB for nothing)."""
    class Full(io.RawIOBase):
        def write(self, data: Any) -> int:
            raise OSError(28, "No space left on device")

    w = Wire()
    d = w.client.get("x", Full())
    w.feed(f"OK 300000 sha256={sha(b'x' * 300000)} version=1\r\n".encode() + b"x" * 1000)
    told = failure(d)
    assert isinstance(told, OSError) and "No space left" in str(told)
    assert w.transport.disconnecting


@pytest_twisted.inlineCallbacks
def test_twisted_a_get_given_up_for_its_file_leaves_the_client_usable(fake: FakeProxy) -> Any:
    from twisted.internet import reactor

    class Full(io.RawIOBase):
        def write(self, data: Any) -> int:
            raise OSError(28, "No space left on device")

    fake.files["big"] = (payload(3 << 20), 1, 2)
    fake.files["f"] = (b"abc", 1, 2)
    client = yield connect(reactor, f"tcp:127.0.0.1:{fake.port}")
    with pytest.raises(OSError):
        yield client.get("big", Full())
    assert (yield client.stat("f")).size == 3  # on a new connection
    assert len(fake.connections) == 2
    yield client.quit()


@pytest_twisted.inlineCallbacks
def test_twisted_a_request_after_a_put_refused_midway_by_a_proxy_that_reads_no_more_does_not_wait() -> Any:
    """A PUT refused mid-body leaves its connection closing with bytes still
    to send; a proxy that reads no more never lets it close: the next
    request fails at once, as before the GET's cut, not for ever."""
    from twisted.internet import reactor, task

    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def proxy() -> None:
        conn, _ = listener.accept()
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        held.append(conn)
        conn.sendall(b"OK deposito 1 ready\r\n")
        f = conn.makefile("rb")
        size = int(f.readline().split()[2])
        conn.sendall(f"OK send {size}\r\n".encode())
        f.read(1 << 16)
        conn.sendall(b"ERR nospace the storage servers are full\r\n")  # then reads no more

    thread = threading.Thread(target=proxy, daemon=True)
    thread.start()
    try:
        client = yield connect(reactor, f"tcp:127.0.0.1:{listener.getsockname()[1]}")
        with pytest.raises(errors.NoSpace):
            yield client.put("big", io.BytesIO(b"x" * (64 << 20)))
        d = client.stat("f")
        timer = reactor.callLater(10, d.cancel)
        with pytest.raises(ConnectionLost):
            yield d
        assert timer.active()
        timer.cancel()
        client.protocol.transport.abortConnection()
        yield task.deferLater(reactor, 0.05, lambda: None)
    finally:
        thread.join(5)
        for conn in held:
            conn.close()
        listener.close()


def test_aside_file_of_a_long_name_in_a_multibyte_script(tmp_path: Any) -> None:
    """The hidden file's name is cut to fit the folder's limit in bytes, not
    in characters: a 254-byte name of two-byte letters could not be written."""
    target = tmp_path / ("a" + "é" * 127)  # 255 bytes: cut at 200, a letter would be split
    aside = AsideFile(target)
    assert len(os.fsencode(os.path.basename(aside.temp))) <= 255
    os.path.basename(aside.temp).encode()  # whole characters: a name a UTF-8-only filesystem takes
    with aside as f:
        f.write(b"data")
    assert target.read_bytes() == b"data" and os.listdir(tmp_path) == [target.name]


def test_quit_says_quit_and_closes() -> None:
    w = Wire()
    d = w.client.quit()
    assert w.sent() == b"QUIT\n"
    fired: list[Any] = []
    d.addBoth(fired.append)
    w.feed(b"OK bye\r\n")
    assert w.transport.disconnecting and fired == []
    w.protocol.connectionLost(Failure(ConnectionResetError()))
    assert fired == [None]


def test_quit_after_the_connection_is_lost_fires_at_once() -> None:
    w = Wire()
    w.lose()
    assert result(w.client.quit()) is None and w.sent() == b""


def test_a_request_with_no_answer_is_given_up_after_the_timeout() -> None:
    """A proxy that greets and then says nothing: the request fails with
    ConnectionLost after REQUEST_TIMEOUT, where it would wait for good. A
    PUT whose bytes keep going out, a REPLICAS that waits, and a connection
    with no request under way are never cut."""
    from twisted.internet.task import Clock

    from deposito.protocols.text_client import REQUEST_TIMEOUT

    clock = Clock()
    w = Wire()
    w.protocol.callLater = clock.callLater
    clock.advance(REQUEST_TIMEOUT * 3)  # no request: nothing to time
    assert not w.transport.disconnecting
    d = w.client.replicas("x", 2, wait=True)
    clock.advance(REQUEST_TIMEOUT * 3)
    assert not w.transport.disconnecting
    w.feed(b"OK name=x replicas=2 have=2\r\n")
    assert result(d).have == 2
    data = os.urandom(CHUNK_SIZE * 4)
    d = w.client.put("big", io.BytesIO(data), replicas=1)
    w.feed(b"OK send %d\r\n" % len(data))
    while w.transport.producer is not None:
        clock.advance(REQUEST_TIMEOUT - 1)  # slowly, but each chunk in time
        w.transport.producer.resumeProducing()
    w.sent()
    clock.advance(REQUEST_TIMEOUT - 1)
    assert not w.transport.disconnecting
    w.feed(f"OK stored name=big version=1 size={len(data)} sha256={hashlib.sha256(data).hexdigest()}"
           f" replicas=1\r\n".encode())
    assert result(d).size == len(data)
    d = w.client.stat("x")
    clock.advance(REQUEST_TIMEOUT - 1)
    assert not w.transport.disconnecting
    clock.advance(1)
    assert w.transport.disconnecting
    w.protocol.connectionLost(Failure(ConnectionResetError("aborted")))
    e = failure(d)
    assert isinstance(e, ConnectionLost) and f"no answer for {REQUEST_TIMEOUT:.0f} s" in str(e)
    assert not clock.getDelayedCalls()


def test_aside_file_never_leaves_a_partial_file(tmp_path: Any) -> None:
    target = tmp_path / "t"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with AsideFile(target) as f:
            f.write(b"new, half")
            raise RuntimeError
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["t"]
    with pytest.raises(FileExistsError):
        with AsideFile(target, overwrite=False) as f:
            f.write(b"new")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["t"]
    with AsideFile(target) as f:
        f.write(b"new")
    assert target.read_bytes() == b"new" and os.listdir(tmp_path) == ["t"]


# ---------------------------------------------------------------- blocking client on a fake proxy


def test_blocking_round_trip_larger_than_a_chunk(fake: FakeProxy, tmp_path: Any) -> None:
    data = payload(5 * CHUNK_SIZE + 17)
    src = tmp_path / "src"
    src.write_bytes(data)
    seen: list[int] = []
    with BlockingClient(fake.address) as c:
        stored = c.put("dir/a b", str(src), replicas=2, progress=lambda done, total: seen.append(done))
        assert stored == Stored("dir/a b", 1, len(data), sha(data), 2)
        assert seen[-1] == len(data) and len(seen) == 6
        sink = io.BytesIO()
        got = c.get("dir/a b", sink)
        assert sink.getvalue() == data and got.sha256 == sha(data) and got.version == 1
        c.get("dir/a b", tmp_path / "copy")
        assert (tmp_path / "copy").read_bytes() == data
        assert c.stat("dir/a b").servers == ("s0", "s1")
        assert list(c.list("dir/")) == [Entry(len(data), 2, 2, "dir/a b")]
        assert c.replicas("dir/a b", 3) == ReplicaCount("dir/a b", 3, 1)
        assert [s.zone for s in c.servers()] == ["a", "rack 2"]
        assert c.status().files == 1
        assert c.help() == ["PUT <name> <size> [<replicas>]"]
        assert c.delete("dir/a b") == "dir/a b"
    assert fake.requests[0] == f'PUT "dir/a b" {len(data)} 2' and fake.requests[-1] == "QUIT"


def test_blocking_put_interrupted_mid_upload_closes_the_client_and_stores_nothing(fake: FakeProxy) -> None:
    """Ctrl-C during a put (here, in its progress callback, after the first
    chunk went): the proxy still waits for the upload's last bytes, and
    would take the next request's line for them, storing a wrong file.
    The client is closed instead, and the next request says so."""
    data = payload(CHUNK_SIZE + 10)

    def interrupt(done: int, total: int) -> None:
        raise KeyboardInterrupt

    with BlockingClient(fake.address) as c:
        with pytest.raises(KeyboardInterrupt):
            c.put("victim", io.BytesIO(data), progress=interrupt)
        with pytest.raises(ConnectionLost):
            c.stat("a name long enough to end the upload")
    assert "victim" not in fake.files


def test_blocking_err_raises_and_the_connection_stays_usable(fake: FakeProxy) -> None:
    with BlockingClient(fake.address) as c:
        with pytest.raises(errors.NotFound):
            c.get("nope", io.BytesIO())
        with pytest.raises(errors.Unavailable):
            c.put("x", io.BytesIO(b"abc"), replicas=5)
        assert c.put("x", io.BytesIO(b"abc")).size == 3


def test_blocking_put_from_an_unseekable_file_needs_a_size(fake: FakeProxy) -> None:
    r, w = os.pipe()
    os.write(w, b"piped")
    os.close(w)
    with BlockingClient(fake.address) as c, open(r, "rb", buffering=0) as pipe:
        with pytest.raises(ValueError):
            c.put("p", pipe)
        assert c.put("p", pipe, size=5).sha256 == sha(b"piped")


def test_blocking_never_takes_a_line_said_while_idle_for_the_reply_to_its_next_request() -> None:
    """A proxy closing an idle connection may say why first: the next request
    goes to the next proxy, or (one proxy) to a new connection to it, and
    is never answered with that line."""
    first, second = FakeProxy(), FakeProxy()
    try:
        for proxy in (first, second):
            proxy.files["f"] = (b"abc", 1, 2)
        c = BlockingClient(f"{first.address},{second.address}")
        assert c.stat("f").size == 3 and first.requests == ["STAT f"]
        first.give_way()
        time.sleep(0.3)  # the line and the close arrive
        assert c.stat("f").size == 3 and second.requests == ["STAT f"]
        alone = BlockingClient(second.address)
        assert alone.stat("f").size == 3
        connections = len(second.connections)
        second.give_way()
        time.sleep(0.3)
        assert alone.stat("f").size == 3 and not alone.closed
        assert second.requests == ["STAT f", "STAT f", "STAT f"] and len(second.connections) == connections + 1
    finally:
        first.stop()
        second.stop()


def test_blocking_lost_connection_mid_get(fake: FakeProxy, tmp_path: Any) -> None:
    fake.files["f"] = (payload(300000), 1, 2)
    fake.cut_get_after = 100000
    c = BlockingClient(fake.address)
    with pytest.raises(ConnectionLost) as info:
        c.get("f", tmp_path / "f")
    assert isinstance(info.value, OSError) and "closed by the proxy" in str(info.value)
    assert os.listdir(tmp_path) == [] and c.closed
    with pytest.raises(ConnectionLost):
        c.status()


def test_blocking_refused_connection() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(ConnectionRefusedError):
        BlockingClient(("127.0.0.1", port))


def test_blocking_token() -> None:
    proxy = FakeProxy(tokens={"sesame"})
    try:
        with pytest.raises(errors.Denied):
            BlockingClient(proxy.address, token="wrong")
        with BlockingClient(proxy.address) as c:
            with pytest.raises(errors.Denied):
                c.status()
        with BlockingClient(proxy.address, token="sesame") as c:
            assert c.status().files == 0
    finally:
        proxy.stop()


@pytest_twisted.inlineCallbacks
def test_twisted_connect_on_loopback(fake: FakeProxy, tmp_path: Any) -> Any:
    from twisted.internet import reactor

    data = payload(3 * CHUNK_SIZE + 1)
    client = yield connect(reactor, f"tcp:127.0.0.1:{fake.port}")
    assert client.greeting.startswith("OK deposito")
    stored = yield client.put("t", io.BytesIO(data))
    assert stored.sha256 == sha(data)
    yield client.get("t", str(tmp_path / "t"))
    assert (tmp_path / "t").read_bytes() == data
    yield client.quit()


@pytest_twisted.inlineCallbacks
def test_twisted_one_proxy_opens_a_connection_it_closed_while_idle_again_but_not_one_lost_mid_request(
        fake: FakeProxy, tmp_path: Any) -> Any:
    from twisted.internet import reactor, task

    fake.files["f"] = (b"abc", 1, 2)
    client = yield connect(reactor, f"tcp:127.0.0.1:{fake.port}")
    assert (yield client.stat("f")).size == 3
    fake.give_way()  # says why, and closes
    yield task.deferLater(reactor, 0.3, lambda: None)
    assert (yield client.stat("f")).size == 3  # on a new connection
    assert fake.requests == ["STAT f", "STAT f"] and len(fake.connections) == 2
    fake.files["g"] = (payload(300000), 1, 2)
    fake.cut_get_after = 100000
    with pytest.raises(ConnectionLost):
        yield client.get("g", str(tmp_path / "g"))
    with pytest.raises(ConnectionLost):  # lost mid-request: the client is closed
        yield client.stat("f")
    assert len(fake.connections) == 2


@pytest_twisted.inlineCallbacks
def test_twisted_connect_with_a_token() -> Any:
    from twisted.internet import reactor

    proxy = FakeProxy(tokens={"sesame"})
    try:
        with pytest.raises(errors.Denied):
            yield connect(reactor, f"tcp:127.0.0.1:{proxy.port}", token="wrong")
        client = yield connect(reactor, f"tcp:127.0.0.1:{proxy.port}", token="sesame")
        status = yield client.status()
        assert status.files == 0
        yield client.close()
    finally:
        proxy.stop()
    assert proxy.requests[:3] == ["AUTH wrong", "AUTH sesame", "STATUS"]


# ---------------------------------------------------------------- both clients on a real cluster


@pytest.mark.slow
def test_blocking_client_on_the_cluster(live: Any, tmp_path: Any) -> None:
    data = payload(3 * 1024 * 1024 + 11, seed=7)  # far more than one chunk
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    name = "py/blocking big.bin"
    with BlockingClient(("127.0.0.1", live.port)) as c:
        stored = c.put(name, str(src), replicas=2)
        assert stored.size == len(data) and stored.sha256 == sha(data) and stored.replicas == 2
        c.get(name, tmp_path / "back.bin")
        assert sha((tmp_path / "back.bin").read_bytes()) == sha(data)
        sink = io.BytesIO()
        assert c.get(name, sink).version == stored.version
        assert sink.getvalue() == data
        st = c.stat(name)
        assert (st.size, st.sha256, st.version, len(st.servers)) == (len(data), sha(data), stored.version, 2)
        assert name in [e.name for e in c.list("py/")]
        assert c.list_page("py/", "", 1) == [next(c.list("py/"))]
        assert len([s for s in c.servers() if s.state == "up"]) >= 3
        with pytest.raises(errors.NotFound):
            c.get("py/no such file", io.BytesIO())
        assert c.put('py/"quoted" name', io.BytesIO(b"q"), replicas=1).replicas == 1
        assert c.delete(name) == name
        with pytest.raises(errors.NotFound):
            c.stat(name)
        with pytest.raises(errors.Unavailable):
            c.put("py/too many", io.BytesIO(b"x"), replicas=4)
        assert c.stat('py/"quoted" name').size == 1  # still usable after the ERRs


@pytest.mark.slow
def test_blocking_replicas_and_status_on_the_cluster(live: Any) -> None:
    with BlockingClient(("127.0.0.1", live.port)) as c:
        c.put("py/replicas", io.BytesIO(b"three copies"), replicas=1)
        assert implemented(lambda: c.replicas("py/replicas", 3, wait=True)) == ReplicaCount("py/replicas", 3, 3)
        assert c.stat("py/replicas").have == 3
        status = implemented(c.status)
        assert status.servers_up == 3 and status.files >= 1


@pytest.mark.slow
@pytest_twisted.inlineCallbacks
def test_twisted_client_on_the_cluster(live: Any, tmp_path: Any) -> Any:
    from twisted.internet import reactor

    data = payload(2 * 1024 * 1024 + 5, seed=8)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    client = yield connect(reactor, f"tcp:127.0.0.1:{live.port}")
    try:
        name = "py/twisted big.bin"
        stored = yield client.put(name, str(src), replicas=2)
        assert stored.sha256 == sha(data)
        download = yield client.get(name, str(tmp_path / "back.bin"))
        assert download.sha256 == sha(data) and download.version == stored.version
        assert sha((tmp_path / "back.bin").read_bytes()) == sha(data)
        with open(src, "rb") as f:  # a second version, from a file object
            again = yield client.put(name, f)
        assert again.version > stored.version
        st = yield client.stat(name)
        assert (st.have, st.version) == (2, again.version)
        entries = yield client.list("py/twisted")
        assert [e.name for e in entries] == [name]
        with pytest.raises(errors.NotFound):
            yield client.stat("py/no such file")
        servers = yield client.servers()
        assert len([s for s in servers if s.state == "up"]) == 3
        yield client.delete(name)
        with pytest.raises(errors.NotFound):
            yield client.get(name, io.BytesIO())
    finally:
        yield client.quit()


def test_a_blocking_client_leaving_a_proxy_that_hangs_waits_a_moment_not_its_timeout(fake: Any) -> None:
    """The work is done when it says QUIT: a proxy that hangs (stopped, say)
    is left after QUIT_WAIT seconds, not after the client's request timeout."""
    import time

    from deposito.blocking import QUIT_WAIT

    fake_quit = fake._serve

    def never_answers_quit(rfile: Any, wfile: Any) -> None:
        class Hang:
            def write(self, data: bytes) -> None:
                if data.startswith(b"OK bye"):
                    time.sleep(60)  # as a stopped proxy: no answer
                wfile.write(data)
        fake_quit(rfile, Hang())

    fake._serve = never_answers_quit
    with BlockingClient(fake.address, timeout=300) as c:
        c.put("f", io.BytesIO(b"hello"))
        began = time.monotonic()
    took = time.monotonic() - began
    assert QUIT_WAIT - 0.5 <= took < QUIT_WAIT + 2, took
    assert fake.files["f"][0] == b"hello"
