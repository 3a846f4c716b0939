"""The kernel relay of a GET's bytes, between real sockets."""

from __future__ import annotations

import hashlib
import os
import socket

import pytest
import pytest_twisted
from twisted.internet import defer, endpoints, protocol, reactor, task

from deposito.splice import fanout
from deposito.splice.fanout import FanOut, TargetGone, can_fan_out
from deposito.splice.relay import Relay, can_splice
from deposito.splice.sockets import ReaderLost, SourceLost

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


# -- FanOut: one source to several targets (the proxy's side of a PUT)


@defer.inlineCallbacks
def fanned(send: int, collectors: list[Collector]):
    """(source transport, target transports, ports) for one fan-out."""
    src_factory = protocol.Factory.forProtocol(Source)
    src_factory.send = send
    ports = [(yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(src_factory))]
    targets = []
    for collector in collectors:
        capture = Capture()
        port = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(capture)
        ports.append(port)
        yield endpoints.connectProtocol(
            endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), collector)
        targets.append((yield capture.accepted).transport)
    source = yield endpoints.connectProtocol(
        endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", ports[0].getHost().port), protocol.Protocol())
    return source.transport, targets, ports


@defer.inlineCallbacks
def until(condition, timeout: float = 20):
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        yield task.deferLater(reactor, 0.01, lambda: None)
    raise AssertionError("timed out")


@defer.inlineCallbacks
def hang_up(source, targets, ports, collectors):
    for t in (source, *targets, *(c.transport for c in collectors)):
        t.abortConnection()
    for p in ports:
        yield p.stopListening()
    yield until(lambda: all(not c.transport.connected for c in collectors))


def fan_out(source, targets, count, absorbed, dropped, live=lambda i: True, stall=10.0, progress=lambda n: None):
    return FanOut(reactor, source, targets, count, lambda view: absorbed.append(bytes(view)), progress,
                  live, lambda i, why: dropped.append((i, why)), stall)


needs_tee = pytest.mark.skipif(fanout._TEE is None, reason="no tee() here")


@needs_tee
@pytest_twisted.inlineCallbacks
def test_fan_out_gives_every_target_and_the_hash_every_byte_in_order():
    collectors = [Collector(), Collector(pause_at=1 << 20), Collector(pause_at=5 << 20)]
    source, targets, ports = yield fanned(len(DATA), collectors)
    try:
        assert can_fan_out(source, targets)
        for t in targets:  # bytes written the ordinary way just before go first
            t.write(b"head:")
        absorbed, dropped, progress = [], [], []
        fan = fan_out(source, targets, len(DATA), absorbed, dropped, progress=progress.append)
        yield ask(source)
        assert (yield fan.start()) == len(DATA)
        assert b"".join(absorbed) == DATA and sum(progress) == len(DATA) and not dropped
        yield until(lambda: all(c.size == len(DATA) + 5 for c in collectors))
        for c in collectors:
            assert hashlib.sha256(b"".join(c.got)).digest() == hashlib.sha256(b"head:" + DATA).digest()
        assert all(t.connected for t in [source, *targets])
        assert all(t in reactor.getReaders() for t in targets)  # they read again, as before
        assert source not in reactor.getReaders()  # it did not (stopped by ask())
    finally:
        yield hang_up(source, targets, ports, collectors)


@needs_tee
@pytest_twisted.inlineCallbacks
def test_fan_out_leaves_a_target_that_stops_reading_or_leaves_and_the_rest_go_on():
    frozen = Collector()
    leaving = Collector(leave_after=3 << 20)
    fine = Collector()
    source, targets, ports = yield fanned(len(DATA), [frozen, leaving, fine])
    try:
        frozen.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)

        def freeze(data, orig=frozen.dataReceived):
            orig(data)
            if frozen.size >= 2 << 20:
                frozen.transport.stopReading()  # never reads again: its socket fills

        frozen.dataReceived = freeze
        for t in targets:
            t.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 10)
        absorbed, dropped = [], []
        fan = fan_out(source, targets, len(DATA), absorbed, dropped, stall=1.0)
        yield ask(source)
        assert (yield fan.start()) == len(DATA)
        assert sorted(i for i, _ in dropped) == [0, 1]
        assert all(isinstance(why, TargetGone) for _, why in dropped)
        assert b"".join(absorbed) == DATA
        yield until(lambda: fine.size == len(DATA))
        assert hashlib.sha256(b"".join(fine.got)).digest() == hashlib.sha256(DATA).digest()
    finally:
        yield hang_up(source, targets, ports, [frozen, leaving, fine])


@needs_tee
@pytest_twisted.inlineCallbacks
def test_fan_out_told_a_target_left_while_it_waits_on_that_target_goes_on_at_once():
    frozen, fine = Collector(), Collector()
    source, targets, ports = yield fanned(len(DATA), [frozen, fine])
    try:
        frozen.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        targets[0].getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 10)

        def freeze(data, orig=frozen.dataReceived):
            orig(data)
            if frozen.size >= 1 << 20:
                frozen.transport.stopReading()  # its socket fills: the fan-out waits to write to it

        frozen.dataReceived = freeze
        absorbed, dropped = [], []
        fan = fan_out(source, targets, len(DATA), absorbed, dropped, stall=60.0)
        yield ask(source)
        done = fan.start()
        yield until(lambda: frozen.size >= 1 << 20 and fan.pending[0] and not fan.reading)
        # Its connection is closed (as when its server died and Twisted saw it
        # first): the socket the fan-out waits on leaves the reactor with it.
        targets[0].abortConnection()
        yield until(lambda: not targets[0].connected)
        fan.leave(0)
        assert (yield done.addTimeout(10, reactor)) == len(DATA)  # not the stall timeout's 60 s
        assert dropped == []  # told, not found out: nothing to report
        yield until(lambda: fine.size == len(DATA))
        assert hashlib.sha256(b"".join(fine.got)).digest() == hashlib.sha256(DATA).digest()
    finally:
        yield hang_up(source, targets, ports, [frozen, fine])


@needs_tee
@pytest_twisted.inlineCallbacks
def test_fan_out_stops_sending_to_a_target_no_longer_live():
    collectors = [Collector(), Collector()]
    source, targets, ports = yield fanned(len(DATA), collectors)
    try:
        absorbed, dropped = [], []
        fan = fan_out(source, targets, len(DATA), absorbed, dropped, live=lambda i: i == 0 or len(absorbed) < 2)
        yield ask(source)
        assert (yield fan.start()) == len(DATA)
        assert dropped == []  # not live is not a failure to report
        yield until(lambda: collectors[0].size == len(DATA))
        yield task.deferLater(reactor, 0.1, lambda: None)
        assert 0 < collectors[1].size < len(DATA)
        assert DATA.startswith(b"".join(collectors[1].got))
    finally:
        yield hang_up(source, targets, ports, collectors)


@needs_tee
@pytest_twisted.inlineCallbacks
def test_fan_out_fails_when_the_source_leaves_midway():
    half = 3 << 20
    collectors = [Collector(), Collector()]
    source, targets, ports = yield fanned(half, collectors)
    try:
        absorbed, dropped = [], []
        fan = fan_out(source, targets, len(DATA), absorbed, dropped)
        yield ask(source)
        with pytest.raises(ReaderLost):
            yield fan.start()
        assert b"".join(absorbed) == DATA[:half]
        # It closed, and it is not cut: its protocol hears of the end once it reads again
        # (a client that only shut its sending side is then told why its upload failed).
        yield task.deferLater(reactor, 0.1, lambda: None)  # (a cut connection would be lost by now)
        assert source.connected and not source.disconnecting
        source.startReading()
        yield until(lambda: not source.connected)
        assert all(t.connected for t in targets)  # whoever owns them decides
        assert all(t in reactor.getReaders() for t in targets)
    finally:
        yield hang_up(source, targets, ports, collectors)


@needs_tee
@pytest_twisted.inlineCallbacks
def test_fan_out_will_not_start_while_the_source_has_bytes_to_send():
    collectors = [Collector()]
    source, targets, ports = yield fanned(len(DATA), collectors)
    try:
        fan = fan_out(source, targets, len(DATA), [], [])
        source.write(b"a reply not yet sent")
        with pytest.raises(RuntimeError):
            fan.start()
        assert source in reactor.getWriters()  # untouched: Twisted sends it as ever
        assert not fan.done.called
    finally:
        yield hang_up(source, targets, ports, collectors)


@pytest_twisted.inlineCallbacks
def test_a_copy_lost_while_the_reader_waits_on_earlier_bytes_leaves_the_reader_to_the_next_copy(tmp_path):
    """The relay waits for the reader's transport to send what Twisted holds
    for it; a copy lost meanwhile lets go of that transport, so the next copy
    relays into it from the same offset."""
    from deposito.protocols.blobwire import ConnectionLost
    from deposito.transfer import CountingConsumer
    from tests.test_handoff import Setup

    setup = Setup(tmp_path)
    try:
        data = os.urandom(4 << 20)
        yield setup.start(data)
        target = setup.target
        setup.reader.transport.pauseProducing()
        target.write(b"h" * (4 << 20))  # more than the sockets hold: Twisted keeps the rest
        sink = CountingConsumer(target)
        first = yield setup.blob_client()
        assert (yield first.read_blob(setup.blob, 0, sink, relay_to=target)) == len(data)
        yield task.deferLater(reactor, 0.1, lambda: None)
        assert target.producer is not None  # the relay waits for the reader
        first.transport.abortConnection()
        with pytest.raises(ConnectionLost):
            yield first.body
        assert target.producer is None
        second = yield setup.blob_client()
        offset = sink.count
        assert (yield second.read_blob(setup.blob, offset, sink, relay_to=target)) == len(data) - offset
        setup.reader.transport.resumeProducing()
        yield second.body
        assert sink.count == len(data)
        got = yield setup.reader.until((4 << 20) + len(data))
        assert got == b"h" * (4 << 20) + data
    finally:
        yield setup.stop()
