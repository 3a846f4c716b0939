"""What deposito.twisted_internals relies on, checked against the installed Twisted.

Each test exercises a real object (a tcp.Server or tcp.Client over
loopback, a LineReceiver, a twisted.web Request) and asserts the fact one
function depends on, so that a Twisted upgrade that breaks it fails here
rather than silently slowing or breaking a fast path.
"""

from __future__ import annotations

import socket

import pytest
import pytest_twisted
from twisted.internet import defer, endpoints, protocol, reactor, task, tcp, threads
from twisted.internet.interfaces import IPullProducer, IPushProducer, IReactorFDSet, IReactorTime
from twisted.protocols.basic import LineReceiver
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from deposito import twisted_internals as ti


class _Held(protocol.Protocol):
    """Hands its connection to the test and keeps what arrives."""

    def __init__(self) -> None:
        self.made: defer.Deferred = defer.Deferred()
        self.chunks: list[bytes] = []
        self.lost: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        self.made.callback(self)

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def connectionLost(self, reason: object = None) -> None:
        self.lost.callback(None)


def _turn(seconds: float = 0.01) -> defer.Deferred:
    d: defer.Deferred = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


@defer.inlineCallbacks
def _until(check, timeout: float = 5.0):
    waited = 0.0
    while not check():
        if waited > timeout:
            raise AssertionError("timed out")
        yield _turn()
        waited += 0.01


@defer.inlineCallbacks
def accepted():
    """A Twisted server-side connection over loopback and the plain socket at its other end."""
    held = _Held()
    factory = protocol.Factory.forProtocol(lambda: held)
    port = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    peer = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=5)
    yield held.made
    yield port.stopListening()
    return held, peer


@defer.inlineCallbacks
def made():
    """A Twisted client-side connection over loopback and the plain socket at its other end."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)
    try:
        held = yield endpoints.connectProtocol(
            endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", listener.getsockname()[1]), _Held())
        peer, _ = listener.accept()
    finally:
        listener.close()
    peer.settimeout(5)
    return held, peer


@defer.inlineCallbacks
def close(held: _Held, peer: socket.socket):
    peer.close()
    held.transport.abortConnection()
    yield held.lost


def _recv_exactly(peer: socket.socket, n: int) -> bytes:
    got = bytearray()
    while len(got) < n:
        more = peer.recv(min(n - len(got), 1 << 20))
        assert more, "the connection closed"
        got += more
    return bytes(got)


def _peek(peer: socket.socket) -> bytes | None:
    """What waits to be read on ``peer`` (b"" at its end), None when nothing does; nothing is taken."""
    timeout = peer.gettimeout()
    peer.setblocking(False)
    try:
        return peer.recv(100, socket.MSG_PEEK)
    except BlockingIOError:
        return None
    finally:
        peer.settimeout(timeout)


def _nothing_more(peer: socket.socket) -> bool:
    return _peek(peer) is None


def test_the_reactor_keeps_time_and_watches_sockets():
    assert IReactorTime.providedBy(reactor) and IReactorFDSet.providedBy(reactor)
    assert ti.IStreamReactor.isOrExtends(IReactorTime) and ti.IStreamReactor.isOrExtends(IReactorFDSet)


@pytest_twisted.inlineCallbacks
def test_socket_transports_have_what_a_stream_transport_names():
    from twisted.internet import unix
    from zope.interface.verify import verifyClass

    for cls in (tcp.Server, tcp.Client, unix.Server, unix.Client):
        assert verifyClass(ti.IStreamTransport, cls, tentative=True)
    server, speer = yield accepted()
    try:
        t = server.transport
        assert t.connected and not t.disconnecting and t.producer is None
        assert t.getHandle().fileno() == t.fileno()
    finally:
        yield close(server, speer)


@pytest_twisted.inlineCallbacks
def test_plain_tcp_server_and_client_are_told_apart():
    server, speer = yield accepted()
    client, cpeer = yield made()
    try:
        assert type(server.transport) is tcp.Server and server.transport.TLS is False
        assert type(client.transport) is tcp.Client and client.transport.TLS is False
        assert ti.is_plain_tcp(server.transport) and ti.is_plain_tcp_server(server.transport)
        assert ti.is_plain_tcp(client.transport) and not ti.is_plain_tcp_server(client.transport)
        client.transport.loseConnection()
        assert client.transport.disconnecting and not ti.is_plain_tcp(client.transport)
    finally:
        yield close(server, speer)
        yield close(client, cpeer)


@pytest_twisted.inlineCallbacks
def test_a_transport_aborted_is_closing_before_its_connection_is_lost():
    server, peer = yield accepted()
    try:
        assert not ti.transport_closing(server.transport)
        server.transport.abortConnection()
        assert ti.transport_closing(server.transport) and server.transport.connected  # lost on the next turn
        yield server.lost
    finally:
        peer.close()


@pytest_twisted.inlineCallbacks
def test_a_transport_that_started_tls_is_not_plain():
    ssl = pytest.importorskip("twisted.internet.ssl")
    pytest.importorskip("OpenSSL")
    client, peer = yield made()
    try:
        client.transport.startTLS(ssl.CertificateOptions())
        assert client.transport.TLS is True
        assert not ti.is_plain_tcp(client.transport)
    finally:
        yield close(client, peer)


@pytest_twisted.inlineCallbacks
def test_read_size_bounds_each_read():
    server, peer = yield accepted()
    try:
        ti.set_read_size(server.transport, 7)
        assert server.transport.bufferSize == 7
        peer.sendall(bytes(100))
        yield _until(lambda: sum(map(len, server.chunks)) == 100)
        assert server.chunks[0] == bytes(7)
        assert max(map(len, server.chunks)) == 7
    finally:
        yield close(server, peer)


@implementer(IPushProducer)
class _Streaming:
    def __init__(self) -> None:
        self.paused = 0

    def pauseProducing(self) -> None:
        self.paused += 1

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


@pytest_twisted.inlineCallbacks
def test_read_size_is_also_the_point_a_producer_is_paused():
    client, peer = yield made()
    try:
        ti.set_read_size(client.transport, 10)
        producer = _Streaming()
        client.transport.registerProducer(producer, True)
        client.transport.write(bytes(8))
        assert producer.paused == 0
        client.transport.write(bytes(8))
        assert producer.paused == 1
        client.transport.unregisterProducer()
    finally:
        yield close(client, peer)


@pytest_twisted.inlineCallbacks
def test_send_limit_bounds_each_send():
    client, peer = yield made()
    try:
        ti.set_send_limit(client.transport, 5)
        assert client.transport.SEND_LIMIT == 5
        client.transport.write(b"0123456789" * 10)
        ti.flush_now(client.transport)  # one send, no turn of the reactor
        assert _recv_exactly(peer, 5) == b"01234"
        assert _nothing_more(peer)
        assert ti.holds_unsent(client.transport)
    finally:
        yield close(client, peer)


@pytest_twisted.inlineCallbacks
def test_flush_now_sends_what_is_written_at_once():
    client, peer = yield made()
    try:
        t = client.transport
        assert t._tempDataBuffer == [] and t.dataBuffer == b"" and t._writeDisconnecting is False
        assert not ti.holds_unsent(t)
        t.write(b"OK one\r\n")
        t.write(b"OK two\r\n")
        assert t._tempDataBuffer and ti.holds_unsent(t)
        ti.flush_now(t)  # the reactor does not run until this test yields
        assert _recv_exactly(peer, 16) == b"OK one\r\nOK two\r\n"
        assert not ti.holds_unsent(t)
    finally:
        yield close(client, peer)


@pytest_twisted.inlineCallbacks
def test_unsent_size_counts_what_waits_for_the_kernel():
    client, peer = yield made()
    try:
        t = client.transport
        assert ti.unsent_size(t) == 0
        t.write(b"OK one\r\n")
        t.write(b"OK two\r\n")
        assert ti.unsent_size(t) == 16  # written, not yet sent
        ti.set_send_limit(t, 5)
        ti.flush_now(t)  # 5 of them sent; the rest is in dataBuffer past offset
        assert ti.unsent_size(t) == 11
        assert _recv_exactly(peer, 5) == b"OK on"
        yield _until(lambda: ti.unsent_size(t) == 0)
        assert _recv_exactly(peer, 11) == b"e\r\nOK two\r\n"
    finally:
        yield close(client, peer)


@pytest_twisted.inlineCallbacks
def test_flush_now_leaves_a_half_close_to_the_reactor():
    client, peer = yield made()
    try:
        t = client.transport
        t.write(b"last")
        t.loseWriteConnection()
        assert t._writeDisconnecting is True
        ti.flush_now(t)
        assert _nothing_more(peer)
        yield _until(lambda: _peek(peer) == b"last")  # the reactor sends it on its next turns
        assert _recv_exactly(peer, 4) == b"last"
        yield _until(lambda: _peek(peer) == b"")  # and then shuts the writing side
    finally:
        yield close(client, peer)


@pytest_twisted.inlineCallbacks
def test_write_now_sends_at_once_without_registering_for_writing():
    client, peer = yield made()
    try:
        t = client.transport
        ti.write_now(t, b"OK 5\r\n", b"hello")  # the reactor does not run until this test yields
        assert not ti.write_pending(reactor, t) and not ti.holds_unsent(t)
        assert _recv_exactly(peer, 11) == b"OK 5\r\nhello"
    finally:
        yield close(client, peer)


@pytest_twisted.inlineCallbacks
def test_write_now_goes_after_what_twisted_holds():
    client, peer = yield made()
    try:
        t = client.transport
        t.write(b"first ")
        ti.write_now(t, b"second ", b"third")
        assert _nothing_more(peer)  # all of it waits for the reactor, in order
        yield _until(lambda: not ti.holds_unsent(t))
        assert _recv_exactly(peer, 18) == b"first second third"
    finally:
        yield close(client, peer)


@pytest_twisted.inlineCallbacks
def test_write_now_leaves_what_the_socket_does_not_take_to_twisted_in_order():
    client, peer = yield made()
    try:
        t = client.transport
        t.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        body = bytes(range(256)) * 65536  # 16 MiB: far more than the two buffers hold
        ti.write_now(t, b"OK 16777216\r\n", body[:1000], body[1000:])
        assert ti.holds_unsent(t) and ti.write_pending(reactor, t)
        got = yield threads.deferToThread(_recv_exactly, peer, 13 + len(body))
        assert got == b"OK 16777216\r\n" + body
        ti.write_now(t, b"next")  # the rest is sent: straight to the socket again
        assert _recv_exactly(peer, 4) == b"next"
    finally:
        yield close(client, peer)


@pytest_twisted.inlineCallbacks
def test_write_now_leaves_a_half_close_to_the_reactor():
    client, peer = yield made()
    try:
        t = client.transport
        t.loseWriteConnection()
        ti.write_now(t, b"late")
        assert _nothing_more(peer)  # no send here: a send could come after the shutdown
        yield _until(lambda: _peek(peer) is not None)
        got = b""
        while more := peer.recv(100):
            got += more
        assert got == b"late"  # as Twisted sends what is written before its shutdown, then shuts
    finally:
        yield close(client, peer)


@implementer(IPullProducer)
class _Waiter:
    def __init__(self, transport) -> None:
        self.transport = transport
        self.seen: list[bool] = []

    def resumeProducing(self) -> None:
        pending = ti.write_pending(reactor, self.transport)
        self.seen.append(pending)
        if not pending:
            self.transport.unregisterProducer()

    def stopProducing(self) -> None:
        pass


@pytest_twisted.inlineCallbacks
def test_write_pending_until_the_buffer_is_sent_then_a_pull_producer_is_asked():
    client, peer = yield made()
    try:
        t = client.transport
        assert not ti.write_pending(reactor, t)
        t.write(b"0123456789")
        assert ti.write_pending(reactor, t)
        waiter = _Waiter(t)
        t.registerProducer(waiter, False)
        assert waiter.seen == [True]
        yield _until(lambda: len(waiter.seen) == 2)
        assert waiter.seen == [True, False]
        assert _recv_exactly(peer, 10) == b"0123456789"
        assert not ti.holds_unsent(t) and not ti.write_pending(reactor, t)
    finally:
        yield close(client, peer)


@pytest_twisted.inlineCallbacks
def test_is_reading_follows_stop_and_start_reading():
    server, peer = yield accepted()
    try:
        t = server.transport
        assert ti.is_reading(reactor, t)
        t.stopReading()
        assert not ti.is_reading(reactor, t)
        t.startReading()
        assert ti.is_reading(reactor, t)
    finally:
        yield close(server, peer)


@pytest_twisted.inlineCallbacks
def test_has_producer_follows_register_and_unregister():
    client, peer = yield made()
    try:
        t = client.transport
        assert t.producer is None and not ti.has_producer(t)
        t.registerProducer(_Streaming(), True)
        assert ti.has_producer(t)
        t.unregisterProducer()
        assert t.producer is None and not ti.has_producer(t)
    finally:
        yield close(client, peer)


class _Lines(LineReceiver):
    delimiter = b"\n"

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.raw: list[bytes] = []

    def lineReceived(self, line: bytes) -> None:
        self.lines.append(line)
        if line == b"RAW":
            self.setRawMode()

    def rawDataReceived(self, data: bytes) -> None:
        self.raw.append(data)


def test_line_receiver_holds_the_rest_of_a_line():
    p = _Lines()
    assert not ti.holds_unparsed(p) and ti.unparsed_size(p) == 0
    p.dataReceived(b"abc")
    assert p._buffer == b"abc"
    assert ti.holds_unparsed(p) and ti.unparsed_size(p) == 3
    p.dataReceived(b"\n")
    assert p.lines == [b"abc"]
    assert not ti.holds_unparsed(p) and ti.unparsed_size(p) == 0


def test_line_receiver_holds_lines_back_while_paused():
    p = _Lines()
    p.paused = True
    p.dataReceived(b"one\ntwo\n")
    assert p.lines == []
    assert ti.holds_unparsed(p) and ti.unparsed_size(p) == 8
    p.paused = False
    p.dataReceived(b"")  # what the text protocol does to go on with them
    assert p.lines == [b"one", b"two"]
    assert not ti.holds_unparsed(p)


def test_line_receiver_holds_nothing_once_raw():
    p = _Lines()
    p.dataReceived(b"RAW\nbody bytes")
    assert p.raw == [b"body bytes"]
    assert not ti.holds_unparsed(p)


class _Hold(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.request: defer.Deferred = defer.Deferred()

    def render_GET(self, request):
        self.request.callback(request)
        return NOT_DONE_YET


@pytest_twisted.inlineCallbacks
def test_request_gone_once_its_connection_is_lost():
    resource = _Hold()
    port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")
    peer = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=5)
    try:
        peer.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        request = yield resource.request
        assert request._disconnected is False and not ti.request_gone(request)
        finished = request.notifyFinish()
        finished.addErrback(lambda _: None)
        peer.close()
        yield finished
        assert request._disconnected is True and ti.request_gone(request)
        request.write(b"dropped")  # Twisted drops bytes for a lost connection
    finally:
        peer.close()
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_connection_closing_once_twisted_web_answers_a_bad_chunk_itself():
    """A chunked body twisted.web cannot parse is answered 400 by the
    channel, which closes: the request (refused, say, at its headers) is
    then taken for closing before the connection is lost. (Closing while
    lingering is the other way: test_web's refused bodies.)"""
    seen = []

    class Seen(Request):
        def gotLength(self, length):
            seen.append(self)
            super().gotLength(length)

    site = _PromptSite(Resource())
    site.requestFactory = Seen
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    peer = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=5)
    try:
        peer.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        while not seen:
            yield task.deferLater(reactor, 0.01)
        assert not ti.connection_closing(seen[0])
        peer.sendall(b"zz\r\n")
        for _ in range(500):
            if ti.connection_closing(seen[0]):
                break
            yield task.deferLater(reactor, 0.01)
        assert ti.connection_closing(seen[0])
        assert peer.recv(100).startswith(b"HTTP/1.1 400 ")
    finally:
        peer.close()
        yield port.stopListening()


def test_the_request_line_is_at_hand_while_the_body_arrives():
    """twisted.web calls gotLength once the headers are in, with the request
    line still on the channel (its method and raw path with the query)."""
    from twisted.internet.testing import StringTransport
    from twisted.web.http import HTTPChannel, Request

    seen = []

    class Early(Request):
        def gotLength(self, length):
            seen.append(ti.request_line(self))
            super().gotLength(length)

    channel = HTTPChannel()
    channel.requestFactory = Early
    channel.makeConnection(StringTransport())
    channel.dataReceived(b"PUT /b/k%20x?partNumber=2 HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nab")
    assert seen == [(b"PUT", b"/b/k%20x?partNumber=2")]


def test_a_channel_is_between_requests_only_while_no_body_is_read_and_no_answer_is_owed():
    """PromptChannel.between_requests reads HTTPChannel's _transferDecoder
    (a body being read) and _handlingRequest (an answer owed): a head
    coming a byte at a time still counts as between requests."""
    from twisted.internet.testing import StringTransport
    from twisted.web.http import Request

    answered = []

    class Held(Request):
        def process(self):
            answered.append(self)

    channel = ti.PromptChannel()
    channel.requestFactory = Held
    channel.makeConnection(StringTransport())
    assert channel.between_requests()
    channel.dataReceived(b"PUT /b/k HTTP/1.1\r\nHost: h\r\n")
    assert channel.between_requests()  # a head, still coming
    channel.dataReceived(b"Content-Length: 5\r\n\r\nab")
    assert not channel.between_requests()  # its body being read
    channel.dataReceived(b"cde")
    assert answered and not channel.between_requests()  # its answer owed
    answered[0].setHeader(b"content-length", b"0")
    answered[0].finish()
    assert channel.between_requests()
    channel.connectionLost(None)


def test_a_head_sent_a_byte_at_a_time_idles_and_gives_way_on_a_full_port():
    """A port's cap hears a channel when a whole head has come, as its body
    comes, and when an answer is done: bytes of a head that never ends do
    not keep a connection from giving way to a newcomer."""
    from twisted.internet.testing import StringTransport

    from deposito.listening import MAKE_ROOM_AFTER, ConnectionCap

    clock = task.Clock()
    cap = ConnectionCap(1, clock)

    def connect():
        channel = ti.PromptChannel()
        channel.cap, channel.busy, channel.callLater = cap, b"busy", clock.callLater
        transport = StringTransport()
        channel.makeConnection(transport)
        return channel, transport

    dribbler, its_transport = connect()
    for byte in b"GET /status HTTP/1.1\r\n"[:int(MAKE_ROOM_AFTER / 0.5) + 2]:  # a byte every 0.5 s, past the time
        clock.advance(0.5)
        dribbler.dataReceived(bytes([byte]))
    newcomer, transport = connect()
    assert its_transport.disconnecting and transport.value() == b"" and not transport.disconnecting
    dribbler.connectionLost(None)
    newcomer.connectionLost(None)


def test_a_body_that_stops_coming_is_answered_the_sites_timed_out_before_the_close():
    """Silent for the site's timeout in the middle of a body: the channel
    sends the site's ``timed_out`` answer, then closes; silent between
    requests, it closes without a word. The S3 port's answer is S3's
    RequestTimeout."""
    from twisted.internet.testing import StringTransport
    from twisted.web.server import Site
    from twisted.web.resource import Resource

    from deposito.s3.gateway import _S3Site

    clock = task.Clock()

    def channel(data: bytes, answering: bool = False):
        proto = _S3Site(Resource(), timeout=60).buildProtocol(None)
        inner = proto._channel
        assert inner.timed_out.startswith(b"HTTP/1.1 400 ") and b"<Code>RequestTimeout</Code>" in inner.timed_out
        inner.callLater = clock.callLater
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.dataReceived(data)
        if answering:  # its answer begun before its body came (refused early): nothing more is written
            inner.requests[-1].startedWriting = 1
        clock.advance(61)
        return inner, transport

    head = b"PUT /b/k HTTP/1.1\r\nHost: h\r\nContent-Length: 100000\r\n\r\nonly this"
    inner, transport = channel(head)
    assert transport.value() == inner.timed_out and transport.disconnecting
    inner, transport = channel(head, answering=True)
    assert transport.value() == b"" and transport.disconnecting
    inner, transport = channel(b"")
    assert transport.value() == b"" and transport.disconnecting
    assert ti.http_site_protocol(Site(Resource()))._channel.timed_out == b""  # a site without one: closed as before


def test_a_body_that_trickles_is_cut_as_a_silent_one_and_one_that_moves_is_not():
    """A body's bytes start the silence timer again only once 64 KiB more
    came (deposito.listening.Progress): a byte every few seconds gets the
    site's timed_out answer at its timeout, as silence does (before: each
    byte gave it 60 s more, and 1024 of them held the S3 port for good);
    64 KiB every 50 s goes on past it. Holds the facts PromptChannel relies
    on: http.HTTPChannel resets its timeout from dataReceived, and reads a
    body with ``_transferDecoder`` set."""
    from twisted.internet.testing import StringTransport
    from twisted.web.resource import Resource

    from deposito.listening import PROGRESS_BYTES
    from deposito.s3.gateway import _S3Site

    clock = task.Clock()

    def channel():
        proto = _S3Site(Resource(), timeout=60).buildProtocol(None)
        inner = proto._channel
        inner.callLater = clock.callLater
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.dataReceived(b"PUT /b/k HTTP/1.1\r\nHost: h\r\nContent-Length: 100000000\r\n\r\n")
        assert inner._transferDecoder is not None
        return proto, inner, transport

    proto, inner, transport = channel()
    for _ in range(12):  # a byte every 5 s
        clock.advance(5)
        if transport.disconnecting:
            break
        proto.dataReceived(b"x")
    assert transport.value() == inner.timed_out and transport.disconnecting and clock.seconds() <= 61
    proto, inner, transport = channel()
    for _ in range(4):  # 64 KiB every 50 s: 200 s in all
        clock.advance(50)
        proto.dataReceived(b"x" * PROGRESS_BYTES)
    assert not transport.disconnecting


def test_continue_is_sent_when_the_request_asks_and_a_refusal_is_answered_before_the_body():
    """ContinueWhenAsked hands the sending of 100 Continue to the request
    (after gotLength); answer_before_body lets a request answer with its
    status line before its body came, and closes the connection after."""
    from twisted.internet.testing import StringTransport
    from twisted.web.http import Request

    class Asks(Request):
        later = None

        def continue_later(self, send):
            type(self).later = send

    class Refuses(Request):
        def continue_later(self, send):
            ti.answer_before_body(self)
            self.setResponseCode(412)
            self.setHeader(b"content-length", b"0")
            self.finish()

    head = b"PUT /b/k HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
    channel = ti.ContinueWhenAsked()
    channel.requestFactory = Asks
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(head)
    assert transport.value() == b"" and Asks.later is not None  # not yet
    Asks.later()
    assert transport.value() == b"HTTP/1.1 100 Continue\r\n\r\n"

    channel = ti.ContinueWhenAsked()
    channel.requestFactory = Refuses
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(head)
    assert transport.value().startswith(b"HTTP/1.1 412 ") and b"100 Continue" not in transport.value()
    assert b"\r\nConnection: close\r\n" in transport.value()  # said, as HTTP/1.1 asks
    assert transport.disconnecting


class _Noting(Resource):
    """A test resource that serves every path and notes what it saw in ``seen``."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple] = []


class _Lent(_Noting):
    """Writes each response body straight into the transport its channel lends."""

    def render_GET(self, request):
        if request.path == b"/unsized":
            self.seen.append((ti.take_http_socket(request),))
            return b"plain"
        request.setHeader(b"content-length", b"%d" % len(request.path))
        transport = ti.take_http_socket(request)
        assert transport is not None
        self.seen.append((type(transport), ti.has_producer(transport)))
        request.write(b"")  # the status line and headers
        transport.write(request.path)
        ti.give_back_http_socket(request, transport)
        self.seen.append((transport.producer is request.channel,))
        self.transport = transport
        request.finish()
        return NOT_DONE_YET


@defer.inlineCallbacks
def _hang_up(peer: socket.socket, resource: Resource, port):
    """Close the client's end, wait for the server's end (the transport
    ``resource`` served on) to close too, its channel's timer with it, and
    stop listening."""
    peer.close()
    for _ in range(500):
        if not resource.transport.connected:
            break
        yield task.deferLater(reactor, 0.01, lambda: None)
    yield port.stopListening()


def _http(peer: socket.socket, request: bytes, done) -> bytes:
    """Send ``request``; the reply, read until ``done(reply)``."""
    peer.sendall(request)
    reply = b""
    while not done(reply):
        chunk = peer.recv(65536)
        assert chunk, reply
        reply += chunk
    return reply


def _http_get(peer: socket.socket, path: bytes, length: int) -> bytes:
    return _http(peer, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n",
                 lambda r: b"\r\n\r\n" in r and len(r.split(b"\r\n\r\n", 1)[1]) >= length)


@pytest_twisted.inlineCallbacks
def test_an_http_channel_lends_its_transport_for_a_body_and_serves_on():
    """While a request is handled, its HTTPChannel is the producer of its
    plain TCP transport; taken off, the transport takes the body itself;
    given back, the same connection serves the next request."""
    resource = _Lent()
    port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")
    peer = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=5)
    try:
        for path in (b"/first", b"/and-the-second"):
            reply = yield threads.deferToThread(_http_get, peer, path, len(path))
            head, body = reply.split(b"\r\n\r\n", 1)
            assert head.startswith(b"HTTP/1.1 200") and b"chunked" not in head.lower()
            assert body == path
        assert resource.seen == [(tcp.Server, False), (True,)] * 2
        reply = yield threads.deferToThread(_http_get, peer, b"/unsized", 5)
        assert resource.seen[-1] == (None,)  # no Content-Length: the body must go through the request
        assert reply.endswith(b"plain")
    finally:
        yield _hang_up(peer, resource, port)


class _Prompt(_Noting):
    """Answers at once, sized or chunked, and notes what its transport still held after."""

    def render(self, request):
        t = self.transport = request.channel.transport
        if request.path == b"/unfinished":  # half of a big body, the rest owed: an answer under way
            request.setHeader(b"content-length", b"%d" % (16 << 20))
            request.write(bytes(8 << 20))
            return NOT_DONE_YET
        if request.path == b"/sized":
            request.setHeader(b"content-length", b"5")
            request.write(b"hello")
        else:  # no length: chunked, in two writes
            request.write(b"hel")
            request.write(b"lo")
        request.finish()
        nodelay = t.getHandle().getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        self.seen.append((ti.holds_unsent(t), ti.write_pending(reactor, t), bool(nodelay)))
        return NOT_DONE_YET


class _PromptSite(Site):
    protocol = ti.http_site_protocol


def _http_until(peer: socket.socket, request: bytes, end: bytes) -> bytes:
    return _http(peer, request, lambda r: r.endswith(end))


@pytest_twisted.inlineCallbacks
def test_an_http_answer_goes_to_the_socket_at_once_in_order():
    """The channel of http_site_protocol writes each answer to the socket
    as it is given (nothing left for a turn of the reactor), headers before
    body, sized, chunked or headers alone, with Nagle's delay off."""
    resource = _Prompt()
    port = reactor.listenTCP(0, _PromptSite(resource), interface="127.0.0.1")
    peer = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=5)
    try:
        reply = yield threads.deferToThread(_http_until, peer, b"GET /sized HTTP/1.1\r\nHost: x\r\n\r\n", b"hello")
        assert reply.startswith(b"HTTP/1.1 200 ") and b"\r\nContent-Length: 5\r\n" in reply
        assert reply.endswith(b"\r\n\r\nhello")
        reply = yield threads.deferToThread(_http_until, peer, b"GET /chunked HTTP/1.1\r\nHost: x\r\n\r\n",
                                            b"0\r\n\r\n")
        assert reply.endswith(b"\r\n\r\n3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n") and b"chunked" in reply.lower()
        reply = yield threads.deferToThread(_http_until, peer, b"HEAD /sized HTTP/1.1\r\nHost: x\r\n\r\n",
                                            b"\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 200 ") and b"hello" not in reply
        assert resource.seen == [(False, False, True)] * 3
    finally:
        yield _hang_up(peer, resource, port)


def test_a_request_head_that_trickles_in_is_cut_at_its_deadline():
    """twisted.web reads a request's line and headers in line mode and its
    body in raw mode (HeadDeadline relies on it): headers sent a line every
    10 s are cut HEAD_TIMEOUT after the first byte, while twisted.web's own
    timeout, reset by each line, never comes; a body after prompt headers
    may take longer."""
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport
    from twisted.web.http import Request

    clock = Clock()
    channel = ti.HeadDeadline()
    channel.callLater = clock.callLater
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(b"GET / HTTP/1.1\r\n")
    assert channel.line_mode
    for n in range(int(ti.HEAD_TIMEOUT // 10) - 1):
        clock.advance(10)
        channel.dataReceived(b"X-Slow-%d: 1\r\n" % n)
    assert not transport.disconnecting
    clock.advance(10)
    assert transport.disconnecting  # cut: the head took HEAD_TIMEOUT
    channel.connectionLost(None)

    class Quiet(Request):
        def process(self):
            self.finish()

    channel = ti.HeadDeadline()
    channel.requestFactory = Quiet
    channel.callLater = clock.callLater
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(b"PUT /k HTTP/1.1\r\nHost: h\r\nContent-Length: 30\r\n\r\n")
    assert not channel.line_mode  # the body is read in raw mode
    for _ in range(30):
        clock.advance(10)
        channel.dataReceived(b"x")
    assert not transport.disconnecting and transport.value().startswith(b"HTTP/1.1 200 ")
    assert not [c for c in clock.getDelayedCalls() if c.active() and c.func == channel._head_too_slow]
    channel.connectionLost(None)


def test_a_body_in_the_deadline_must_come_with_its_head():
    """With ``body_in_deadline`` (the read-only HTTP port), a body sent a
    byte every 10 s is cut HEAD_TIMEOUT after the request's first byte; a
    whole request in time leaves no deadline behind."""
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport
    from twisted.web.http import Request

    class Quiet(Request):
        def process(self):
            self.finish()

    clock = Clock()
    for slow in (True, False):
        channel = ti.HeadDeadline()
        channel.body_in_deadline = True
        channel.requestFactory = Quiet
        channel.callLater = clock.callLater
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(b"GET /k HTTP/1.1\r\nHost: h\r\nContent-Length: 30\r\n\r\n")
        if slow:
            for _ in range(int(ti.HEAD_TIMEOUT // 10) - 1):
                clock.advance(10)
                channel.dataReceived(b"x")
            assert not transport.disconnecting
            clock.advance(10)
            assert transport.disconnecting and transport.value() == b""  # cut: the request took HEAD_TIMEOUT
        else:
            channel.dataReceived(b"x" * 30)
            assert transport.value().startswith(b"HTTP/1.1 200 ") and not transport.disconnecting
            assert not [c for c in clock.getDelayedCalls() if c.active() and c.func == channel._head_too_slow]
        channel.connectionLost(None)


@pytest_twisted.inlineCallbacks
def test_a_connection_past_the_cap_is_answered_busy_and_closed():
    """A site with a cap of 2: a third connection gets the site's busy
    answer whole and is closed; once one of the two closes, a new one is
    served; once both have idled a while, a newcomer closes the one heard
    from last longest ago, and is served."""
    from deposito.listening import MAKE_ROOM_AFTER, ConnectionCap, http_busy
    from tests.peers import let_go

    resource = _Prompt()
    site = _PromptSite(resource)
    clock = task.Clock()  # time stands still till told: no held connection idles long enough to give way
    site.cap = ConnectionCap(2, clock)
    site.busy = http_busy("text/plain", b"too many\n")
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    address = ("127.0.0.1", port.getHost().port)
    held = [socket.create_connection(address, timeout=5) for _ in range(2)]
    for _ in range(500):
        if site.cap.open == 2:
            break
        yield task.deferLater(reactor, 0.01, lambda: None)
    extra = socket.create_connection(address, timeout=5)
    try:
        def everything(peer):
            reply = b""
            while chunk := peer.recv(65536):
                reply += chunk
            return reply
        reply = yield threads.deferToThread(_http, extra, b"GET /sized HTTP/1.1\r\nHost: x\r\n\r\n",
                                            lambda r: r.endswith(b"too many\n"))
        assert reply.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 1" in reply
        assert (yield threads.deferToThread(everything, extra)) == b""  # closed
        held.pop().close()
        for _ in range(500):
            if site.cap.open == 1:
                break
            yield task.deferLater(reactor, 0.01, lambda: None)
        peer = socket.create_connection(address, timeout=5)
        held.append(peer)
        reply = yield threads.deferToThread(_http_until, peer, b"GET /sized HTTP/1.1\r\nHost: x\r\n\r\n", b"hello")
        assert reply.startswith(b"HTTP/1.1 200 ")
        clock.advance(MAKE_ROOM_AFTER + 1)
        newcomer = socket.create_connection(address, timeout=5)
        held.append(newcomer)
        reply = yield threads.deferToThread(_http_until, newcomer, b"GET /sized HTTP/1.1\r\nHost: x\r\n\r\n", b"hello")
        assert reply.startswith(b"HTTP/1.1 200 ")
        assert (yield threads.deferToThread(everything, held[0])) == b""  # the one idle longest: closed
    finally:
        yield let_go([extra, *held], site.cap, port)


@pytest_twisted.inlineCallbacks
def test_a_client_that_stops_reading_its_answer_gives_way_to_a_newcomer():
    """A site with a cap of 1, held by a request whose answer is under way
    and whose client stopped reading it: a newcomer after MAKE_ROOM_AFTER
    finds the answer's bytes waiting (and is answered busy); one more,
    once the client took nothing for STOPPED_AFTER, cuts it off and is
    served."""
    from deposito.listening import MAKE_ROOM_AFTER, STOPPED_AFTER, ConnectionCap, http_busy
    from tests.peers import let_go, read_to_end

    site = _PromptSite(_Prompt())
    clock = task.Clock()
    site.cap = ConnectionCap(1, clock)
    site.busy = http_busy("text/plain", b"too many\n")
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    address = ("127.0.0.1", port.getHost().port)
    reader = socket.socket()
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a client that stops reading holds little
    reader.settimeout(5)
    reader.connect(address)
    peers = [reader]
    try:
        head = yield threads.deferToThread(_http, reader, b"GET /unfinished HTTP/1.1\r\nHost: x\r\n\r\n",
                                           lambda r: b"\r\n\r\n" in r)
        assert head.startswith(b"HTTP/1.1 200 ")
        yield task.deferLater(reactor, 0.2, lambda: None)  # the answer fills the sockets
        clock.advance(MAKE_ROOM_AFTER)
        refused = socket.create_connection(address, timeout=5)
        peers.append(refused)
        reply = yield threads.deferToThread(_http, refused, b"GET /sized HTTP/1.1\r\nHost: x\r\n\r\n",
                                            lambda r: r.endswith(b"too many\n"))
        assert reply.startswith(b"HTTP/1.1 503 ")
        clock.advance(STOPPED_AFTER)
        newcomer = socket.create_connection(address, timeout=5)
        peers.append(newcomer)
        reply = yield threads.deferToThread(_http_until, newcomer, b"GET /sized HTTP/1.1\r\nHost: x\r\n\r\n",
                                            b"hello")
        assert reply.startswith(b"HTTP/1.1 200 ")
        assert (yield threads.deferToThread(read_to_end, reader)) < 8 << 20  # cut off
        assert site.cap.open == 1
    finally:
        yield let_go(peers, site.cap, port)


def test_a_request_line_too_long_is_answered_400():
    """twisted.web's channel reads a request's head with LineReceiver, whose
    lineLengthExceeded closes without a word: HeadDeadline answers 400 first."""
    from twisted.internet.testing import StringTransport

    channel = ti.HeadDeadline()
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(b"GET /" + b"a" * (channel.MAX_LENGTH + 10) + b" HTTP/1.1\r\n")
    assert transport.value().startswith(b"HTTP/1.1 400 Bad Request\r\n") and transport.disconnecting
    channel.connectionLost(None)


@pytest.mark.parametrize("steady", [True, False])
def test_a_steady_clock_keeps_the_reactors_timers_through_a_step_of_the_wall_clock(steady):
    """steady_clock's fact: ReactorBase reads the time through its
    ``seconds`` alone (callLater, the poll's timeout, runUntilCurrent). On
    the wall clock (Twisted's own, the case ``steady`` False shows), a step
    an hour back held every timer up for that hour, and one forward fired
    them all at once (connections cut, servers taken for down)."""
    from twisted.internet.selectreactor import SelectReactor

    from deposito.twisted_internals import steady_clock

    wall, monotonic = [1.8e9], [500.0]
    reactor = SelectReactor()
    try:
        if steady:
            steady_clock(reactor, wall=lambda: wall[0], monotonic=lambda: monotonic[0])
        else:
            reactor.seconds = lambda: wall[0]
        assert reactor.seconds() == wall[0]  # it starts as the wall clock does
        fired: list[bool] = []
        reactor.callLater(10, fired.append, True)
        held = []
        for step in (3600, -7200):
            wall[0] += step
            timeout = reactor.timeout()
            held.append(timeout is not None and 9 < timeout <= 10)
            reactor.runUntilCurrent()
            held.append(fired == [])
        monotonic[0] += 10
        reactor.runUntilCurrent()
        if steady:
            assert held == [True] * 4 and fired == [True]  # held through both steps, fired on time
        else:
            assert held != [True] * 4  # (what the wall clock did)
    finally:
        for call in reactor.getDelayedCalls():
            call.cancel()
        reactor.removeReader(reactor.waker)
        reactor.waker.connectionLost(None)  # (its pipe closed: this reactor never runs)


def test_a_peer_is_shown_as_host_and_port():
    """In logs and on the status page's events (they showed Python's repr of the address)."""
    from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

    from deposito.listening import peer

    assert peer(IPv4Address("TCP", "10.0.0.7", 4321)) == "10.0.0.7:4321"
    assert peer(IPv6Address("TCP", "::1", 80)) == "[::1]:80"
    assert peer(UNIXAddress(b"/run/deposito.sock")) == "/run/deposito.sock"
