"""The kernel relay of a GET's bytes, between real sockets."""

from __future__ import annotations

import hashlib
import os

import pytest
import pytest_twisted
from twisted.internet import defer, endpoints, protocol, reactor, task

from deposito.splice import ReaderLost, Relay, SourceLost, can_splice

pytestmark = pytest.mark.skipif(not hasattr(os, "splice"), reason="no splice() here")

DATA = os.urandom((8 << 20) + 12345)


class Source(protocol.Protocol):
    """Sends its factory's bytes once asked (so nothing arrives before the relay starts)."""

    def dataReceived(self, data: bytes) -> None:
        send = self.factory.send
        self.transport.write(DATA[:send])
        if send < len(DATA):
            self.transport.loseConnection()


class Collector(protocol.Protocol):
    """The reader at the far end; may read slowly or leave after ``leave_after`` bytes."""

    def __init__(self, leave_after: int | None = None, pause_at: int | None = None) -> None:
        self.got: list[bytes] = []
        self.size = 0
        self.leave_after, self.pause_at = leave_after, pause_at
        self.lost: defer.Deferred = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.got.append(data)
        self.size += len(data)
        if self.pause_at is not None and self.size >= self.pause_at:
            self.pause_at = None
            self.transport.pauseProducing()  # a slow reader: the relay must wait, not lose bytes
            reactor.callLater(0.3, self.transport.resumeProducing)
        if self.leave_after is not None and self.size >= self.leave_after:
            self.transport.abortConnection()

    def connectionLost(self, reason: object = None) -> None:
        self.lost.callback(None)


class Capture(protocol.Factory):
    """Keeps the server-side protocol of the connection it accepts."""

    def __init__(self) -> None:
        self.accepted: defer.Deferred = defer.Deferred()

    def buildProtocol(self, addr: object) -> protocol.Protocol:
        p = protocol.Protocol()
        reactor.callLater(0, self.accepted.callback, p)
        return p


@defer.inlineCallbacks
def ask(source):
    """Ask the source to send, and wait until the request has left (a relay
    takes over a socket only when nothing waits to be written to it)."""
    source.stopReading()  # what it sends waits in the socket for the relay
    source.write(b"go")
    while source in reactor.getWriters():
        yield task.deferLater(reactor, 0.001, lambda: None)


@defer.inlineCallbacks
def wired(send: int, collector: Collector):
    """(source transport, target transport, ports) for one relay."""
    src_factory = protocol.Factory.forProtocol(Source)
    src_factory.send = send
    src_port = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(src_factory)
    capture = Capture()
    dst_port = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(capture)
    yield endpoints.connectProtocol(
        endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", dst_port.getHost().port), collector)
    target = (yield capture.accepted).transport
    source = yield endpoints.connectProtocol(
        endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", src_port.getHost().port), protocol.Protocol())
    return source.transport, target, (src_port, dst_port)


@pytest.mark.parametrize("target_reading", [True, False])
@pytest_twisted.inlineCallbacks
def test_every_byte_arrives_in_order_also_to_a_slow_reader(target_reading):
    collector = Collector(pause_at=1 << 20)
    source, target, ports = yield wired(len(DATA), collector)
    try:
        assert can_splice(source, target)
        if not target_reading:  # as the proxy's client connection is while it serves a GET
            target.stopReading()
        relay = Relay(reactor, source, target, len(DATA), idle_timeout=10)
        yield ask(source)
        moved = yield relay.start()
        assert moved == relay.moved == len(DATA)
        while collector.size < len(DATA):
            yield task.deferLater(reactor, 0.01, lambda: None)
        assert hashlib.sha256(b"".join(collector.got)).digest() == hashlib.sha256(DATA).digest()
        assert source.connected and target.connected  # both go on, as they were
        assert source not in reactor.getReaders()  # was stopped before, by ask()
        assert (target in reactor.getReaders()) == target_reading
        assert target.producer is None
    finally:
        for t in (source, target):
            t.loseConnection()
        for p in ports:
            yield p.stopListening()


@pytest_twisted.inlineCallbacks
def test_a_source_that_stops_early_fails_with_the_bytes_delivered_counted():
    collector = Collector()
    half = 3 << 20
    source, target, ports = yield wired(half, collector)
    try:
        relay = Relay(reactor, source, target, len(DATA), idle_timeout=10)
        yield ask(source)
        with pytest.raises(SourceLost):
            yield relay.start()
        assert relay.moved == half
        while collector.size < relay.moved:
            yield task.deferLater(reactor, 0.01, lambda: None)
        assert b"".join(collector.got) == DATA[:half]
        assert target.connected  # the reader can be served the rest from elsewhere
    finally:
        target.loseConnection()
        for p in ports:
            yield p.stopListening()


@pytest_twisted.inlineCallbacks
def test_a_reader_that_leaves_stops_the_relay_and_cuts_the_source():
    collector = Collector(leave_after=1 << 20)
    source, target, ports = yield wired(len(DATA), collector)
    try:
        relay = Relay(reactor, source, target, len(DATA), idle_timeout=10)
        yield ask(source)
        with pytest.raises(ReaderLost):
            yield relay.start()
        assert relay.moved < len(DATA)
        yield collector.lost
        while source.connected:
            yield task.deferLater(reactor, 0.01, lambda: None)
    finally:
        for p in ports:
            yield p.stopListening()


@pytest_twisted.inlineCallbacks
def test_a_silent_source_times_out():
    collector = Collector()
    source, target, ports = yield wired(len(DATA), collector)
    try:
        relay = Relay(reactor, source, target, len(DATA), idle_timeout=0.3)
        # never asked: the source sends nothing
        with pytest.raises(SourceLost, match="no byte"):
            yield relay.start()
        assert relay.moved == 0 and target.connected
    finally:
        target.loseConnection()
        for p in ports:
            yield p.stopListening()
