"""The storage server's local port: a blob written straight into a socket the proxy passes over.

In-process, on real sockets: the blob port and the local port of one device,
a reader's TCP connection accepted as the proxy accepts one, and the proxy's
side of the hand-off (deposito.splice.handoff.HandOff) counting what reached it.
"""

from __future__ import annotations

import glob
import os
import secrets
import socket
import struct
import subprocess
import sys

import pytest
import pytest_twisted
from twisted.internet import defer, endpoints, reactor, task, threads
from twisted.internet.protocol import Factory, Protocol

from deposito.blobstore import BlobStore, new_blob_id
from deposito.device import Device
from deposito.diskio import DIRECT_MIN
from deposito.errors import BadArgs, BadCommand, DepositoError
from deposito.protocols.blobclient import BlobClient
from deposito.protocols.blobserver import BlobServerFactory
from deposito.protocols.handoff import LocalBlobServerFactory
from deposito.splice.handoff import HandOff, can_hand_off
from deposito.splice.sockets import ReaderLost
from tests.test_blobstore import sums


class Accepted(Protocol):
    """The proxy's end of a reader's connection."""

    def connectionMade(self) -> None:
        self.factory.accepted.callback(self)


class Reader(Protocol):
    def __init__(self) -> None:
        self.got = bytearray()
        self.waiting: tuple[int, defer.Deferred] | None = None

    def dataReceived(self, data: bytes) -> None:
        self.got += data
        if self.waiting is not None and len(self.got) >= self.waiting[0]:
            d, self.waiting = self.waiting[1], None
            d.callback(bytes(self.got))

    def until(self, n: int) -> defer.Deferred:
        if len(self.got) >= n:
            return defer.succeed(bytes(self.got))
        self.waiting = (n, defer.Deferred())
        return self.waiting[1]


class Setup:
    """A device holding one blob, its blob port and local port, and a reader connected."""

    def __init__(self, tmp_path) -> None:
        self.tmp_path = tmp_path
        self.device = Device(reactor, BlobStore(str(tmp_path)), capacity=1 << 30)
        self.device.start()
        self.key = secrets.token_hex(16)
        self.name = f"\0deposito-test/{secrets.token_hex(8)}"
        self.ports: list = []
        self.clients: list = []

    @defer.inlineCallbacks
    def start(self, data: bytes, cache: bool = False, blob: str | None = None):
        self.ports.append((yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            BlobServerFactory(reactor, self.device))))
        self.ports.append(reactor.listenUNIX(self.name, LocalBlobServerFactory(reactor, self.device, None, self.key)))
        writer = yield self.blob_client()
        self.blob = blob or new_blob_id()
        d = writer.write_blob(self.blob, len(data), 1, 2, "file", cache=cache)
        writer.send(data)
        writer.end(*sums(data))
        yield d
        front = Factory.forProtocol(Accepted)
        front.accepted = defer.Deferred()
        self.ports.append((yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(front)))
        self.reader = yield endpoints.connectProtocol(
            endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.ports[-1].getHost().port), Reader())
        self.clients.append(self.reader)
        self.target = (yield front.accepted).transport

    @defer.inlineCallbacks
    def blob_client(self):
        c = yield endpoints.connectProtocol(
            endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.ports[0].getHost().port), BlobClient(reactor))
        self.clients.append(c)
        return c

    @defer.inlineCallbacks
    def local_client(self):
        c = yield endpoints.connectProtocol(endpoints.UNIXClientEndpoint(reactor, self.name), BlobClient(reactor))
        self.clients.append(c)
        return c

    def blob_path(self) -> str:
        return glob.glob(os.path.join(str(self.tmp_path), "**", self.blob), recursive=True)[0]

    @defer.inlineCallbacks
    def stop(self):
        for c in self.clients:
            if isinstance(c, task.LoopingCall):
                c.stop()
            elif c.transport is not None and c.transport.connected:
                c.transport.abortConnection()
        for p in self.ports:
            yield p.stopListening()
        yield self.device.stop()


@pytest.fixture
def setup(tmp_path):
    s = Setup(tmp_path)
    yield s
    pytest_twisted.blockon(s.stop())


@pytest.mark.parametrize("cache", [True, False])
@pytest_twisted.inlineCallbacks
def test_the_server_writes_the_blob_into_the_passed_socket_after_what_was_there(setup, cache, monkeypatch):
    """Checked blocks of a copy kept in the page cache are read and sent on
    the reactor thread; those of a big copy read around the cache come from
    a reader thread. A reader that takes a little now and then makes the
    server wait on it over and over, for the last block too."""
    data = os.urandom(DIRECT_MIN)  # the last block a whole one, which the socket cannot take at once
    yield setup.start(data, cache=cache)
    setup.target.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 10)
    setup.reader.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    reading = [False]

    def trickle():  # read for 5 ms out of every 20
        reading[0] = not reading[0]
        (setup.reader.transport.resumeProducing if reading[0] else setup.reader.transport.pauseProducing)()
        trickling.interval = 0.005 if reading[0] else 0.015

    trickling = task.LoopingCall(trickle)
    trickling.start(0.015)
    setup.clients.append(trickling)  # stopped with the rest
    c = yield setup.local_client()
    assert (yield c.key()) == setup.key
    assert can_hand_off(setup.target)
    assert (yield c.open_blob(setup.blob, 1000)) == len(data) - 1000
    assert not c.reusable  # the blob is open for SEND: no other request on this connection meanwhile
    setup.target.write(b"OK header\n")
    hand_off = HandOff(c, setup.target, 10)
    yield defer.ensureDeferred(hand_off.run())
    assert hand_off.moved == len(data) - 1000
    setup.target.write(b"next reply\n")  # the socket is the proxy's again
    trickling.stop()
    setup.clients.remove(trickling)
    setup.reader.transport.resumeProducing()
    got = yield setup.reader.until(10 + len(data) - 1000 + 11)
    assert got == b"OK header\n" + data[1000:] + b"next reply\n"
    assert c.reusable
    assert (yield c.open_blob(setup.blob, len(data))) == 0  # the same connection serves the next one


@pytest_twisted.inlineCallbacks
def test_two_slow_readers_of_cached_copies_each_get_their_own_bytes(setup):
    """A checked block goes out from the device's one read buffer, which the
    next block read (of any blob) fills again: what a full socket does not
    take must be kept aside. Two hand-offs take turns, each reader's socket
    small, and each reader gets exactly its blob."""
    blobs = [os.urandom(6 << 20), os.urandom(6 << 20)]
    ends = []
    for i, data in enumerate(blobs):
        setup.name += str(i)  # the local port made by each start has a name of its own
        yield setup.start(data, cache=True)
        setup.target.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 10)
        setup.reader.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        ends.append((setup.blob, setup.reader, setup.target))
    running = []
    for blob, _, target in ends:
        c = yield setup.local_client()
        assert (yield c.open_blob(blob, 0)) == 6 << 20
        running.append(defer.ensureDeferred(HandOff(c, target, 10).run()))
    yield defer.gatherResults(running, consumeErrors=True)
    for data, (_, reader, _) in zip(blobs, ends):
        assert (yield reader.until(len(data))) == data


@pytest_twisted.inlineCallbacks
def test_a_block_that_fails_its_check_stops_the_copy_with_every_byte_before_it_counted(setup):
    data = os.urandom(6 << 20)
    yield setup.start(data)
    with open(setup.blob_path(), "r+b") as f:  # rot in block 3
        f.seek((3 << 20) + 5)
        f.write(b"rot")
    corrupt = defer.Deferred()
    setup.device.corrupt_listeners.append(lambda blob, why: corrupt.callback(blob))
    c = yield setup.local_client()
    yield c.open_blob(setup.blob, 0)
    hand_off = HandOff(c, setup.target, 10)
    with pytest.raises(DepositoError) as e:
        yield defer.ensureDeferred(hand_off.run())
    assert not isinstance(e.value, ReaderLost)  # the reader is fine: the next copy may go on
    assert 0 < hand_off.moved <= 3 << 20
    got = yield setup.reader.until(hand_off.moved)
    assert got == data[:hand_off.moved]  # nothing of the bad block, nothing past the count
    assert (yield corrupt) == setup.blob  # reported to the proxy, and quarantined


@pytest_twisted.inlineCallbacks
def test_a_reader_that_takes_nothing_ends_the_hand_off_as_lost(setup):
    data = os.urandom(32 << 20)
    yield setup.start(data)
    setup.reader.transport.pauseProducing()  # the reader stops reading: its socket fills
    c = yield setup.local_client()
    yield c.open_blob(setup.blob, 0)
    hand_off = HandOff(c, setup.target, 0.5)
    with pytest.raises(ReaderLost):
        yield defer.ensureDeferred(hand_off.run())
    assert 0 < hand_off.moved < len(data)
    assert not c.transport.connected  # cut: the server stops writing to the reader


@pytest_twisted.inlineCallbacks
def test_a_reader_that_resets_while_the_server_waits_on_it_ends_the_hand_off_at_once(setup):
    data = os.urandom(16 << 20)
    yield setup.start(data, cache=True)  # read and sent on the reactor thread
    setup.reader.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 10)
    setup.reader.transport.pauseProducing()
    c = yield setup.local_client()
    yield c.open_blob(setup.blob, 0)
    hand_off = HandOff(c, setup.target, 4)
    running = defer.ensureDeferred(hand_off.run())
    yield task.deferLater(reactor, 0.3, lambda: None)  # the server waits for room in the socket
    assert not running.called
    reader = setup.reader.transport.getHandle()
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    setup.reader.transport.abortConnection()
    began = reactor.seconds()
    with pytest.raises(ReaderLost):
        yield running
    assert reactor.seconds() - began < 3  # told by the server, not found by the watch


def server_ends(setup) -> list:
    """The local port's protocols, as they are made."""
    factory = setup.ports[1].factory
    made: list = []
    build = factory.buildProtocol

    def recording(addr):
        p = build(addr)
        made.append(p)
        return p

    factory.buildProtocol = recording
    return made


@pytest_twisted.inlineCallbacks
def test_a_server_taken_for_down_that_then_closes_its_end_lets_the_next_copy_go_on_from_the_count(setup):
    """Cut while it holds the reader's socket, a server first has a grace
    to close the connection from its end, as a dead one's kernel does at
    once: then it has let go of the socket, and what reached it is exact."""
    data = os.urandom(32 << 20)
    yield setup.start(data)
    made = server_ends(setup)
    setup.reader.transport.pauseProducing()  # the server waits on a full socket
    c = yield setup.local_client()
    yield c.open_blob(setup.blob, 0)
    hand_off = HandOff(c, setup.target, 10)
    running = defer.ensureDeferred(hand_off.run())
    yield task.deferLater(reactor, 0.3, lambda: None)
    assert not running.called and c.lending
    c.cut(reactor, 5)  # taken for down: not cut yet
    assert c.transport.connected
    [server] = made
    server.transport.loseConnection()  # it lets go: closes the socket, then the connection
    with pytest.raises(DepositoError) as e:
        yield running
    assert not isinstance(e.value, ReaderLost)  # the next copy goes on
    assert not c.lending and 0 < hand_off.moved < len(data)
    setup.target.write(b"and on")  # the socket is the proxy's again
    setup.reader.transport.resumeProducing()
    got = yield setup.reader.until(hand_off.moved + 6)
    assert got == data[:hand_off.moved] + b"and on"


@pytest_twisted.inlineCallbacks
def test_a_server_taken_for_down_that_stays_silent_ends_the_reader_after_the_grace(setup):
    data = os.urandom(32 << 20)
    yield setup.start(data)
    setup.reader.transport.pauseProducing()
    c = yield setup.local_client()
    yield c.open_blob(setup.blob, 0)
    hand_off = HandOff(c, setup.target, 10)
    running = defer.ensureDeferred(hand_off.run())
    yield task.deferLater(reactor, 0.3, lambda: None)
    began = reactor.seconds()
    c.cut(reactor, 0.5)
    with pytest.raises(ReaderLost, match="stopped answering mid-blob"):
        yield running
    assert 0.4 < reactor.seconds() - began < 3
    assert 0 < hand_off.moved < len(data)


@pytest_twisted.inlineCallbacks
def test_a_server_taken_for_down_before_the_socket_went_over_never_gets_it(setup):
    data = os.urandom(2 << 20)
    yield setup.start(data)
    c = yield setup.local_client()
    yield c.open_blob(setup.blob, 0)
    c.cut(reactor, 5)  # holding no socket yet: cut at once
    hand_off = HandOff(c, setup.target, 10)
    with pytest.raises(DepositoError) as e:
        yield defer.ensureDeferred(hand_off.run())
    assert not isinstance(e.value, ReaderLost) and hand_off.moved == 0
    setup.target.write(b"still mine")
    assert (yield setup.reader.until(10)) == b"still mine"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another user")
@pytest_twisted.inlineCallbacks
def test_the_local_port_takes_no_connection_from_another_user(setup):
    yield setup.start(os.urandom(100))
    probe = ("import os, socket\nos.setuid(65534)\ns = socket.socket(socket.AF_UNIX)\n"
             f"s.connect({setup.name!r})\ns.settimeout(5)\n"
             "try:\n    s.sendall(b'KEY\\n')\n    print(s.recv(100))\n"
             "except (ConnectionResetError, BrokenPipeError):\n    print('reset')")
    done = yield threads.deferToThread(subprocess.run, [sys.executable, "-c", probe], capture_output=True,
                                       timeout=30)
    assert (done.returncode, done.stderr) == (0, b"")
    assert done.stdout.strip() in (b"b''", b"reset")  # closed (before or after the request), unanswered
    c = yield setup.local_client()
    assert (yield c.key()) == setup.key


@pytest_twisted.inlineCallbacks
def test_the_local_port_refuses_what_does_not_come_in_order_and_keeps_serving(setup):
    yield setup.start(os.urandom(100))
    c = yield setup.local_client()
    with pytest.raises(BadCommand):
        yield c.send_to(setup.target.fileno())  # SEND before OPEN
    c = yield setup.local_client()
    yield c.open_blob(setup.blob, 0)
    r, w = os.pipe()
    try:
        with pytest.raises(BadArgs, match="not a non-blocking stream socket"):
            yield c.send_to(w)  # a pipe is no reader's socket
    finally:
        os.close(r)
        os.close(w)
    c = yield setup.local_client()
    yield c.open_blob(setup.blob, 0)
    c.reply("SEND")  # and no socket with it
    with pytest.raises(BadArgs, match="comes with the socket"):
        yield c._expect()
    with pytest.raises(BadArgs, match="offset past the end"):
        yield (yield setup.local_client()).open_blob(setup.blob, 101)
    tcp = yield setup.blob_client()  # the blob port has none of these
    with pytest.raises(BadCommand):
        yield tcp.key()
    c = yield setup.local_client()
    assert (yield c.key()) == setup.key


def test_a_stall_is_found_within_a_sixth_of_the_idle_timeout_past_it():
    """The reader's socket is looked at WATCHES times per idle timeout: bytes
    that stop moving are a stall once the idle timeout has passed since they
    last moved, not since the look before."""
    from twisted.internet.task import Clock

    from deposito.splice.handoff import WATCHES, Progress

    clock = Clock()
    progress = Progress(clock, 60.0, 0)
    looks = []
    count = 0
    while not looks or not looks[-1][1]:
        clock.advance(60.0 / WATCHES)
        if clock.seconds() <= 30:
            count += 1000  # the reader reads for 30 s, then stops
        looks.append((clock.seconds(), progress.stalled(count)))
    assert 90 <= looks[-1][0] <= 90 + 60 / WATCHES
    # a count that cannot be taken this time (acknowledgements moving it while this thread
    # waited its turn) is no progress, not a stall before the idle timeout
    progress = Progress(clock, 60.0, 0)
    assert not progress.stalled(None)
    clock.advance(59.0)
    assert not progress.stalled(None)
    clock.advance(1.0)
    assert progress.stalled(None)


@pytest_twisted.inlineCallbacks
def test_what_went_to_the_reader_is_counted_again_while_it_cannot_be_told(monkeypatch):
    """Once the server is done, the reader's socket is counted: a count that
    cannot be told this time (acknowledgements moved it while the proxy's
    thread waited its turn) is asked again, not taken for a reader gone;
    a reader gone is None at once."""
    from deposito.splice import handoff

    answers = [None, None, 1234]
    monkeypatch.setattr(handoff, "written", lambda sock: answers.pop(0))

    class Client:
        pass

    class Target:
        connected = True

    client = Client()
    client.reactor = reactor
    hand_off = handoff.HandOff(client, Target(), 60.0)
    assert (yield defer.ensureDeferred(hand_off._count(None))) == 1234 and answers == []
    Target.connected = False
    assert (yield defer.ensureDeferred(hand_off._count(None))) is None
