"""The client-facing protocol on a StringTransport, with a stand-in depot."""

from __future__ import annotations

import socket

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task, threads
from twisted.internet.testing import StringTransport
from zope.interface import implementer
from zope.interface.verify import verifyObject

from deposito.catalog import FileRecord
from deposito.errors import NotFound, Unavailable
from deposito.interfaces import IDepot
from deposito.protocols.text import DepotFactory
from deposito.roster import Member
from tests.peers import on_string_transport


class FakeUpload:
    def __init__(self, name, size):
        self.name, self.size, self.data = name, size, b""
        self.source = None
        self.aborted = False
        self.copied_at = None  # set, as the writer sets it, where a test wants the PUT's phases timed

    def attach(self, source):
        self.source = source

    def detach(self):
        self.source = None

    def write(self, data):
        self.data += data

    def splice_from(self, source, count, progress):
        return None  # a StringTransport cannot be spliced: bytes keep coming to write()


@implementer(IDepot)
class FakeDepot:
    """Records calls; answers like a depot with one server s1."""

    closed_for_rebuild = False

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.uploads: list[FakeUpload] = []
        self.aborted: list[FakeUpload] = []
        self.finish = None
        self.member = Member("s1", "z", "h", 1, state="up")

    async def begin_put(self, name, size, replicas):
        if replicas and replicas > 1:
            raise Unavailable("1 server up")
        upload = FakeUpload(name, size)
        self.uploads.append(upload)
        return upload

    async def finish_put(self, upload):
        if self.finish is not None:
            await self.finish
        self.files[upload.name] = upload.data
        return self._record(upload.name)

    def abort_put(self, upload):
        self.aborted.append(upload)

    def _record(self, name):
        import hashlib
        data = self.files[name]
        return FileRecord(name, 1, "b" * 32, len(data), hashlib.sha256(data).hexdigest(), 1, ("s1",))

    async def lookup(self, name):
        if name not in self.files:
            raise NotFound(f"no file named {name}")
        return self._record(name)

    def healthy(self, record):
        return [self.member]

    def recent(self, name):
        return None  # every GET takes the streamed way (lookup, read)

    def guess(self, name):
        return None

    def read_small(self, record):
        return None  # the streamed read is the way

    async def read(self, record, consumer, offset=0, length=None, started=lambda: None):
        started()
        data = self.files[record.name]
        consumer.write(data[offset:] if length is None else data[offset:offset + length])

    def copy_missing(self, member, blob):
        self.missing = [*getattr(self, "missing", []), (member.id, blob)]

    async def listing(self, prefix, after, limit):
        names = [n for n in sorted(self.files) if n.startswith(prefix) and n > after][:limit]
        return FakeListing([self._record(n) for n in names])

    async def delete(self, name, expect=None):
        record = await self.lookup(name)
        del self.files[name]
        return record

    async def replicas(self, name, count, wait):
        record = await self.lookup(name)
        return record, 1

    async def status(self, copies=False):
        return {"files": len(self.files), "bytes": sum(map(len, self.files.values()))}

    def servers(self):
        return [self.member]

    async def create_bucket(self, name):
        raise NotImplementedError  # the text protocol has no buckets

    delete_bucket = bucket = create_bucket

    async def buckets(self, prefix, after, limit):
        raise NotImplementedError


class FakeListing:
    """A listing in one batch (the real one is tested in test_listing.py)."""

    def __init__(self, records):
        self.count = len(records)
        self.records = records
        self.closed = False

    def next(self):
        batch, self.records = self.records, []
        return defer.succeed(batch)

    def close(self):
        self.closed = True


def connect(depot=None, clock=None):
    depot = depot or FakeDepot()
    proto = DepotFactory(depot, idle_timeout=300, stall_timeout=60).buildProtocol(None)
    proto.callLater = (clock or task.Clock()).callLater
    tr = StringTransport()
    proto.makeConnection(tr)
    return proto, tr, depot


def lines(tr):
    out = tr.value().decode().split("\r\n")
    tr.clear()
    return out[:-1]


def test_the_fake_depots_are_depots():
    for depot in (FakeDepot(), SmallReadDepot(), SlowDepot(small=True)):
        assert verifyObject(IDepot, depot)


def test_greeting_and_help_are_crlf_lines():
    proto, tr, _ = connect()
    assert tr.value() == b"OK deposito 0.1.0 ready\r\n"
    tr.clear()
    proto.dataReceived(b"help\n")
    out = lines(tr)
    assert out[0] == f"OK {len(out) - 1}" and any(ln.startswith("PUT") for ln in out[1:])


def test_put_then_pipelined_get_in_one_packet():
    proto, tr, depot = connect()
    tr.clear()
    proto.dataReceived(b"PUT \"a b\" 5\r\nhelloGET \"a b\"\n")
    send, stored, got = tr.value().split(b"\r\n", 2)
    assert send == b"OK send 5"
    assert stored.startswith(b'OK stored name="a b" version=1 size=5 sha256=')
    assert got.startswith(b"OK 5 sha256=") and got.endswith(b"version=1\r\nhello")
    assert depot.files == {"a b": b"hello"}


def test_lines_wait_while_a_put_commits():
    proto, tr, depot = connect()
    depot.finish = defer.Deferred()
    tr.clear()
    proto.dataReceived(b"PUT f 2\nhiSTAT f\n")
    assert lines(tr) == ["OK send 2"]  # STAT waits for the PUT's answer
    depot.finish.callback(None)
    out = lines(tr)
    assert out[0].startswith("OK stored") and out[1].startswith("OK name=f size=2 ")


def test_upload_source_is_the_transport_for_backpressure():
    proto, tr, depot = connect()
    proto.dataReceived(b"PUT f 10\nabc")
    assert depot.uploads[0].source is tr
    proto.dataReceived(b"defghij")
    assert depot.uploads[0].source is None  # detached once every byte is in


def test_errors_keep_the_connection_usable():
    proto, tr, _ = connect()
    tr.clear()
    proto.dataReceived(b"FROB\nGET\nGET nope\nPUT x 1 2\nPUT x -5\nQUIT\n")
    out = lines(tr)
    assert [o.split()[1] for o in out[:5]] == ["badcommand", "badargs", "notfound", "unavailable", "badargs"]
    assert out[5] == "OK bye" and tr.disconnecting


def test_line_too_long_is_refused_and_closes():
    proto, tr, _ = connect()
    tr.clear()
    proto.dataReceived(b"x" * 9000)
    assert lines(tr) == ["ERR badargs line too long"] and tr.disconnecting


def test_8k_line_is_accepted():
    proto, tr, _ = connect()
    tr.clear()
    proto.dataReceived(b"GET " + b"x" * 8180 + b"\n")
    assert lines(tr)[0].startswith("ERR badargs name longer")
    assert not tr.disconnecting


def test_client_leaving_mid_upload_aborts_it():
    proto, tr, depot = connect()
    proto.dataReceived(b"PUT f 10\nabc")
    proto.connectionLost(None)
    assert depot.aborted == depot.uploads and depot.files == {}


def test_idle_and_stalled_connections_time_out():
    clock = task.Clock()
    proto, tr, depot = connect(clock=clock)
    clock.advance(299)
    assert not tr.disconnecting
    clock.advance(2)
    assert tr.disconnecting
    proto, tr, depot = connect(clock=clock)
    proto.dataReceived(b"PUT f 10\nabc")
    tr.clear()
    clock.advance(61)
    assert lines(tr) == ["ERR badargs upload stalled, closing"] and tr.disconnecting


def test_an_upload_that_trickles_stalls_as_a_silent_one_and_one_that_moves_does_not():
    """A PUT's bytes start its stall timer again only once 64 KiB more came
    (deposito.listening.Progress): a byte every 5 s is cut at the stall
    timeout, its upload aborted (before: each byte gave it 60 s more, so
    1024 of them kept every client out, and one held the room it reserved
    for good); 64 KiB every 50 s goes on."""
    from deposito.listening import PROGRESS_BYTES

    clock = task.Clock()
    proto, tr, depot = connect(clock=clock)
    proto.dataReceived(b"PUT f 1000000\nabc")
    tr.clear()
    for _ in range(12):
        clock.advance(5)
        if tr.disconnecting:
            break
        proto.dataReceived(b"x")
    assert lines(tr) == ["ERR badargs upload stalled, closing"] and tr.disconnecting and clock.seconds() <= 61
    proto.connectionLost(None)
    assert depot.aborted == depot.uploads
    proto, tr, depot = connect(clock=clock)
    proto.dataReceived(b"PUT g 1000000\n")
    for _ in range(4):
        clock.advance(50)
        proto.dataReceived(b"x" * PROGRESS_BYTES)
    assert not tr.disconnecting


def test_an_upload_moved_in_the_kernel_that_trickles_stalls_too():
    """From 1 MiB on, a PUT's bytes go from socket to sockets in the kernel
    (Upload.splice_from), which tells how many came at each read: the same
    rule holds there (before: each read, of one byte, gave it 60 s more)."""
    from deposito.listening import PROGRESS_BYTES

    told = []

    class Spliced(FakeUpload):
        def splice_from(self, source, count, progress):
            told.append(progress)
            return defer.Deferred()  # the kernel moves the rest

    class SplicingDepot(FakeDepot):
        async def begin_put(self, name, size, replicas):
            upload = Spliced(name, size)
            self.uploads.append(upload)
            return upload

    for trickle, cut in ((1, True), (PROGRESS_BYTES, False)):
        clock = task.Clock()
        proto, tr, depot = connect(SplicingDepot(), clock)
        proto.dataReceived(b"PUT f 100000000\nabc")
        for _ in range(12):  # a read every 10 s
            clock.advance(10)
            if tr.disconnecting:
                break
            told[-1](trickle)
        assert tr.disconnecting == cut and (b"upload stalled" in tr.value()) == cut


class HeldOpen(StringTransport):
    """A transport whose close waits, as TLS's does while its handshake
    never finishes (what is written is held, and the close with it)."""

    aborted = False

    def abortConnection(self):
        self.aborted = True
        self.connected = False


def test_a_connection_turned_away_or_closed_with_a_last_word_is_cut_if_its_close_waits():
    """A connection refused past the cap, one closed to make room, and an
    upload that stalled are told why, then closed; if the close waits
    (over TLS, a handshake never finished holds it for good), the
    connection is cut LAST_WORD_WITHIN later (before: those refused stayed
    open for good, those closed to make room till the idle timeout, uncounted,
    and a stalled upload over TLS was cut without its ERR)."""
    from deposito.protocols.text import LAST_WORD_WITHIN

    clock = task.Clock()
    factory = DepotFactory(FakeDepot(), clock=clock, max_connections=1, stall_timeout=60)

    def connect():
        proto = factory.buildProtocol(None)
        proto.callLater = clock.callLater
        tr = HeldOpen()
        proto.makeConnection(tr)
        return proto, tr

    idle, idle_tr = connect()
    clock.advance(3)  # silent long enough to give way
    late, late_tr = connect()
    assert b"closed to make room" in idle_tr.value() and not idle_tr.aborted
    busy = [connect() for _ in range(2)]  # late holds the one place, and is not idle yet: these are refused
    assert all(b"too many connections" in tr.value() and not tr.aborted for _, tr in busy)
    clock.advance(LAST_WORD_WITHIN)
    assert idle_tr.aborted and all(tr.aborted for _, tr in busy) and not late_tr.aborted
    late.dataReceived(b"PUT f 1000000\nabc")
    clock.advance(60)
    assert late_tr.value().endswith(b"ERR badargs upload stalled, closing\r\n") and not late_tr.aborted
    clock.advance(LAST_WORD_WITHIN)
    assert late_tr.aborted


def test_a_line_never_finished_is_idle_however_slowly_its_bytes_come():
    clock = task.Clock()
    proto, tr, depot = connect(clock=clock)
    for _ in range(3):  # one byte every 100 s, never a line end
        clock.advance(100)
        proto.dataReceived(b"G")
    assert tr.disconnecting  # 300 s since the last line
    proto, tr, depot = connect(clock=clock)
    for _ in range(5):  # a whole line each time: not idle
        clock.advance(100)
        proto.dataReceived(b"HELP\n")
    assert not tr.disconnecting


def test_list_stat_servers_delete():
    proto, tr, depot = connect()
    depot.files = {"b": b"22", "a x": b"1"}
    tr.clear()
    proto.dataReceived(b"LIST\nSTAT b\nSERVERS\nDELETE b\nLIST\n")
    out = lines(tr)
    assert out[:3] == ["OK 2", '1 1 1 "a x"', "2 1 1 b"]
    assert out[3].startswith("OK name=b size=2 ") and out[3].endswith("replicas=1 have=1 servers=s1")
    assert out[4:6] == ["OK 1", "s1 h:1 up used=0 capacity=0 blobs=0 zone=z"]
    assert out[6:] == ["OK deleted name=b", "OK 1", '1 1 1 "a x"']


def test_8k_line_with_crlf_is_accepted_too():
    proto, tr, _ = connect()
    tr.clear()
    line = b"GET " + b"x" * (8192 - 4)
    proto.dataReceived(line + b"\r\n")
    assert lines(tr)[0].startswith("ERR badargs name longer") and not tr.disconnecting
    proto.dataReceived(line + b"x\r\n")
    assert lines(tr) == ["ERR badargs line too long"] and tr.disconnecting
    proto, tr, _ = connect()
    tr.clear()
    proto.dataReceived(line + b"x\n")  # one byte over, with a bare LF
    assert lines(tr) == ["ERR badargs line too long"] and tr.disconnecting


def test_tokens_gate_every_command_but_help_auth_quit():
    from deposito.protocols.text import WRONG_TOKEN_DELAY
    from deposito.tokens import Tokens

    depot = FakeDepot()
    depot.files = {"f": b"x"}
    proto = DepotFactory(depot, tokens=Tokens(["s3cret", "other"])).buildProtocol(None)
    clock = task.Clock()
    proto.callLater = clock.callLater
    tr = StringTransport()
    proto.makeConnection(tr)
    tr.clear()
    proto.dataReceived(b"STAT f\nHELP\nAUTH wrong\nPUT g 1\nAUTH s3cret\nSTAT f\n")
    clock.advance(WRONG_TOKEN_DELAY - 0.01)
    assert b"wrong token" not in tr.value()  # a wrong token is answered later, the lines after it waiting
    clock.advance(0.01)
    out = lines(tr)
    assert out[0] == "ERR denied AUTH <token> first"
    assert out[1].startswith("OK ")
    rest = out[2 + int(out[1].split()[1]):]
    assert rest[0] == "ERR denied wrong token" and rest[1] == "ERR denied AUTH <token> first"
    assert rest[2] == "OK" and rest[3].startswith("OK name=f ")


def test_max_size_refuses_before_any_byte():
    proto = DepotFactory(FakeDepot(), max_size=10).buildProtocol(None)
    proto.callLater = task.Clock().callLater
    tr = StringTransport()
    proto.makeConnection(tr)
    tr.clear()
    proto.dataReceived(b"PUT big 11\nPUT ok 10\n")
    out = lines(tr)
    assert out[0].startswith("ERR toolarge") and out[1] == "OK send 10"


def test_connections_beyond_the_limit_make_room_by_closing_one_that_idles_or_are_told_to_come_back():
    clock = task.Clock()
    depot = FakeDepot()
    depot.files["f"] = b"hello"
    factory = DepotFactory(depot, clock=clock, max_connections=2)

    def connect():
        return on_string_transport(factory, clock)

    first, second = connect(), connect()
    assert first[1].value().startswith(b"OK deposito")
    clock.advance(1)
    first[0].dataReceived(b"STATUS\n")  # first was heard from a moment ago; second has idled longer
    refused = connect()  # neither has idled MAKE_ROOM_AFTER seconds yet
    assert refused[1].value().startswith(b"ERR unavailable too many connections") and refused[1].disconnecting
    refused[0].connectionLost(None)
    clock.advance(1.5)  # second idled 2.5 s, first 1.5 s
    third = connect()
    assert second[1].value().endswith(b"ERR unavailable closed to make room: the proxy is full and this"
                                      b" connection was idle\r\n") and second[1].disconnecting
    second[0].connectionLost(None)
    assert third[1].value().startswith(b"OK deposito") and not third[1].disconnecting
    third[1].clear()
    third[0].dataReceived(b"GET f\n")
    assert third[1].value().startswith(b"OK 5 ")  # the newcomer is served
    for proto, tr in (first, third):
        assert not tr.disconnecting
        proto.connectionLost(None)
    assert factory.cap.open == 0


def test_a_connection_with_a_request_under_way_never_gives_way():
    clock = task.Clock()
    depot = FakeDepot()
    factory = DepotFactory(depot, clock=clock, max_connections=1)
    proto = factory.buildProtocol(None)
    proto.callLater = clock.callLater
    tr = StringTransport()
    proto.makeConnection(tr)
    proto.dataReceived(b"PUT up 10\nabc")  # an upload, its sender silent for a while
    clock.advance(10)
    late = factory.buildProtocol(None)
    late.callLater = clock.callLater
    late_tr = StringTransport()
    late.makeConnection(late_tr)
    assert late_tr.value().startswith(b"ERR unavailable too many connections") and not tr.disconnecting
    late.connectionLost(None)
    proto.dataReceived(b"defghij")
    assert lines(tr)[-1].startswith("OK stored name=up") and depot.files["up"] == b"abcdefghij"
    proto.connectionLost(None)


@pytest_twisted.inlineCallbacks
def test_a_client_that_stops_reading_its_answer_is_cut_off_to_make_room():
    """A port of one connection, held by a GET whose client read a little
    and stopped: a newcomer after MAKE_ROOM_AFTER finds the answer's bytes
    waiting (and is told to come back); one more, once the client took
    nothing for STOPPED_AFTER, cuts it off and is served."""
    from deposito.listening import MAKE_ROOM_AFTER, STOPPED_AFTER
    from tests.peers import let_go, read_to_end

    depot = FakeDepot()
    depot.files["big"] = bytes(range(256)) * (32 << 10)  # 8 MiB: far more than the sockets hold
    depot.files["small"] = b"hello"
    clock = task.Clock()  # the cap's: how long each connection was silent
    factory = DepotFactory(depot, clock=clock, max_connections=1)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    address = ("127.0.0.1", port.getHost().port)

    def connect():
        peer = socket.socket()
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a client that stops reading holds little
        peer.settimeout(5)
        peer.connect(address)
        return peer

    def read_until(peer, end):
        got = b""
        while not got.endswith(end):
            chunk = peer.recv(65536)
            if not chunk:
                break
            got += chunk
        return got

    reader = connect()
    peers = [reader]
    try:
        assert (yield threads.deferToThread(read_until, reader, b"\n")).startswith(b"OK deposito")
        reader.sendall(b"GET big\n")
        head = yield threads.deferToThread(read_until, reader, b"\n")
        assert head.startswith(b"OK 8388608 ")
        yield task.deferLater(reactor, 0.2, lambda: None)  # the answer fills the sockets

        clock.advance(MAKE_ROOM_AFTER)
        refused = connect()
        peers.append(refused)
        assert (yield threads.deferToThread(read_until, refused, b"\n")).startswith(
            b"ERR unavailable too many connections")  # what the reader took was only looked at now

        clock.advance(STOPPED_AFTER)
        newcomer = connect()
        peers.append(newcomer)
        assert (yield threads.deferToThread(read_until, newcomer, b"\n")).startswith(b"OK deposito")
        newcomer.sendall(b"GET small\n")
        got = yield threads.deferToThread(read_until, newcomer, b"hello")
        assert got.startswith(b"OK 5 ") and got.endswith(b"hello")
        taken = yield threads.deferToThread(read_to_end, reader)
        assert taken < 8 << 20  # cut off: the rest of the answer never comes
        assert factory.cap.open == 1
    finally:
        yield let_go(peers, factory.cap, port)


@pytest_twisted.inlineCallbacks
def test_a_client_that_reads_slowly_is_never_cut_off_to_make_room():
    """A port of one connection, held by a GET whose client reads 24 KiB
    between newcomers 2.5 s apart: its kernel acknowledges a window at a
    time (on loopback, every 64 KiB or so), so several looks in a row see
    nothing taken; it is never cut off, and gets every byte."""
    from deposito.listening import MAKE_ROOM_AFTER
    from tests.peers import let_go

    depot = FakeDepot()
    depot.files["big"] = bytes(range(256)) * (32 << 10)  # 8 MiB
    clock = task.Clock()
    factory = DepotFactory(depot, clock=clock, max_connections=1)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    address = ("127.0.0.1", port.getHost().port)
    reader = socket.create_connection(address, timeout=5)
    peers = [reader]

    def read(peer, count):
        got = b""
        while len(got) < count:
            chunk = peer.recv(count - len(got))
            assert chunk, got[-200:]
            got += chunk
        return got

    try:
        greeting = yield threads.deferToThread(read, reader, len(b"OK deposito x ready\r\n") - 1)
        assert greeting.startswith(b"OK deposito")
        reader.sendall(b"GET big\n")
        taken = 0
        for _ in range(8):  # 20 s of the cap's clock
            taken += len((yield threads.deferToThread(read, reader, 24 << 10)))
            yield task.deferLater(reactor, 0.2, lambda: None)  # what it took is acknowledged, or not, by now
            clock.advance(MAKE_ROOM_AFTER + 0.5)
            newcomer = socket.create_connection(address, timeout=5)
            peers.append(newcomer)
            refused = yield threads.deferToThread(read, newcomer, 10)
            assert refused.startswith(b"ERR unava"), refused
        rest = yield threads.deferToThread(read, reader, (8 << 20) - taken)  # all of it still comes
        whole = greeting + rest
        assert len(rest) == (8 << 20) - taken and not whole.endswith(b"\r\n\r\n")
    finally:
        yield let_go(peers, factory.cap, port)


@pytest_twisted.inlineCallbacks
def test_send_now_hands_a_reply_to_the_kernel_without_a_turn_of_the_reactor():
    import socket

    from twisted.internet import endpoints, reactor
    from twisted.internet.protocol import Protocol

    from deposito.protocols.lines import send_now

    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)
    try:
        proto = yield endpoints.connectProtocol(
            endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", listener.getsockname()[1]), Protocol())
        peer, _ = listener.accept()
        peer.settimeout(5)
        proto.transport.write(b"OK one\r\n")
        proto.transport.write(b"OK two\r\n")
        send_now(proto.transport)  # the reactor does not run until this test yields
        got = b""
        while len(got) < 16:
            got += peer.recv(100)
        assert got == b"OK one\r\nOK two\r\n"
        # a closing transport is left to the reactor, which sends and then closes
        proto.transport.write(b"bye\r\n")
        proto.transport.loseConnection()
        send_now(proto.transport)
        peer.setblocking(False)
        with pytest.raises(BlockingIOError):
            peer.recv(100)
        peer.setblocking(True)
        got = b""
        while True:
            yield task.deferLater(reactor, 0.01, lambda: None)
            peer.setblocking(False)
            try:
                chunk = peer.recv(100)
            except BlockingIOError:
                continue
            if not chunk:
                break
            got += chunk
        assert got == b"bye\r\n"
        peer.close()
    finally:
        listener.close()


class SmallReadDepot(FakeDepot):
    """Has every record at hand and reads small files whole: each read_small
    waits on a Deferred the test fires, or fails to let the streamed read try."""

    def __init__(self):
        super().__init__()
        self.pending: list[defer.Deferred] = []
        self.streamed = 0

    def recent(self, name):
        return self._record(name) if name in self.files else None

    def guess(self, name):
        return None

    def read_small(self, record):
        d = defer.Deferred()
        self.pending.append(d)
        return d

    async def read(self, record, consumer, offset=0, length=None, started=lambda: None):
        self.streamed += 1
        await super().read(record, consumer, offset, length, started=started)


def small_get(data, request):
    """A connection to a SmallReadDepot holding file f (``data``) that got ``request``."""
    depot = SmallReadDepot()
    depot.files["f"] = data
    proto, tr, _ = connect(depot)
    depot.proto = proto
    tr.clear()
    proto.dataReceived(request)
    return tr, depot


def test_a_small_get_answers_with_the_pieces_it_read_and_lines_wait_meanwhile():
    tr, depot = small_get(b"hello world", b"GET f\nSTAT f\n")
    assert tr.value() == b""  # STAT waits for the GET's answer
    assert tr.producerState == "producing"  # the socket is still read: no more than a line waits yet
    depot.pending.pop().callback([b"hello ", b"world"])
    assert tr.producerState == "producing"
    got, stat = tr.value().split(b"\r\n", 1)[1].split(b"world", 1)
    assert tr.value().startswith(b"OK 11 sha256=") and got == b"hello " and stat.startswith(b"OK name=f size=11")
    assert depot.streamed == 0


def test_a_client_sending_ahead_is_stopped_once_more_than_a_line_waits():
    tr, depot = small_get(b"hello", b"GET f\n")
    proto = depot.proto
    proto.dataReceived(b"STAT f\n" * 1000)  # 7,000 bytes: less than a line's limit
    assert tr.producerState == "producing" and tr.value() == b""
    proto.dataReceived(b"STAT f\n" * 300)
    assert tr.producerState == "paused"  # the socket is no longer read
    depot.pending.pop().callback([b"hello"])
    assert tr.producerState == "producing"
    answers = lines(tr)
    assert answers[0].startswith("OK 5 sha256=") and answers[1].startswith("helloOK name=f size=5 ")
    assert len(answers) == 1301 and all(a.startswith("OK name=f size=5 ") for a in answers[2:])  # every STAT


def test_a_small_get_that_fails_is_read_again_streamed():
    tr, depot = small_get(b"hello", b"GET f\n")
    depot.pending.pop().errback(Unavailable("that copy is rotten"))
    assert tr.value().startswith(b"OK 5 sha256=") and tr.value().endswith(b"\r\nhello")
    assert depot.streamed == 1


class SlowDepot(FakeDepot):
    """Answers a GET after a tenth of a second, by the small read or streamed."""

    def __init__(self, small):
        super().__init__()
        self.small = small

    def recent(self, name):
        return self._record(name) if self.small and name in self.files else None

    def guess(self, name):
        return None

    def read_small(self, record):
        return task.deferLater(reactor, 0.1, lambda: [self.files[record.name]])

    async def read(self, record, consumer, offset=0, length=None, started=lambda: None):
        await task.deferLater(reactor, 0.1, lambda: None)
        await super().read(record, consumer, offset, length, started=started)


def _ask_and_half_close(port, request):
    """Send ``request``, shut the sending side (as ``nc -N`` does), read all answers."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    got = b""
    while b"\r\n" not in got:
        got += s.recv(100)
    s.sendall(request)
    s.shutdown(socket.SHUT_WR)
    got = b""
    while chunk := s.recv(65536):
        got += chunk
    s.close()
    return got


@pytest.mark.parametrize("small", [True, False])
@pytest_twisted.inlineCallbacks
def test_a_client_that_half_closes_after_its_gets_gets_every_answer(small):
    depot = SlowDepot(small)
    depot.files["f"] = b"hello"
    port = reactor.listenTCP(0, DepotFactory(depot), interface="127.0.0.1")
    try:
        got = yield threads.deferToThread(_ask_and_half_close, port.getHost().port, b"GET f\nGET f\n")
    finally:
        yield port.stopListening()
    assert got.count(b"\r\nhello") == 2, got


@pytest_twisted.inlineCallbacks
def test_a_client_that_half_closes_after_its_upload_gets_its_answer():
    depot = SlowDepot(small=True)
    depot.finish = task.deferLater(reactor, 0.2, lambda: None)  # the end of the file is read while it commits
    port = reactor.listenTCP(0, DepotFactory(depot), interface="127.0.0.1")
    try:
        got = yield threads.deferToThread(_ask_and_half_close, port.getHost().port, b"PUT g 5\nhelloGET g\n")
    finally:
        yield port.stopListening()
    send, stored, header, rest = got.split(b"\r\n", 3)
    assert send == b"OK send 5" and stored.startswith(b"OK stored name=g version=1 size=5 ")
    assert header.startswith(b"OK 5 sha256=") and rest == b"hello"
    assert depot.files == {"g": b"hello"} and not depot.aborted


@pytest_twisted.inlineCallbacks
def test_a_client_that_half_closes_in_the_middle_of_its_upload_stores_nothing():
    depot = SlowDepot(small=True)
    port = reactor.listenTCP(0, DepotFactory(depot), interface="127.0.0.1")
    try:
        got = yield threads.deferToThread(_ask_and_half_close, port.getHost().port, b"PUT g 5\nhel")
    finally:
        yield port.stopListening()
    assert got == b"OK send 5\r\nERR badargs upload cut short: the client sent less than 5 bytes, closing\r\n"
    assert depot.files == {} and depot.aborted == depot.uploads


class SlowToBegin(FakeDepot):
    """Sets an upload up in a fifth of a second, as a catalog may take."""

    async def begin_put(self, name, size, replicas):
        await task.deferLater(reactor, 0.2, lambda: None)
        return await super().begin_put(name, size, replicas)


@pytest.mark.parametrize("sent", [b"", b"hel", b"hello"])
@pytest_twisted.inlineCallbacks
def test_a_client_that_half_closes_while_its_upload_is_set_up_is_answered_at_once(sent):
    """The end of the stream comes before `OK send`: the bytes sent with the
    request are taken, then the client is told at once (no stall timeout)
    whether the upload was short."""
    depot = SlowToBegin()
    port = reactor.listenTCP(0, DepotFactory(depot, stall_timeout=30), interface="127.0.0.1")
    try:
        started = reactor.seconds()
        got = yield threads.deferToThread(_ask_and_half_close, port.getHost().port, b"PUT g 5\n" + sent)
        took = reactor.seconds() - started
    finally:
        yield port.stopListening()
    if sent == b"hello":
        assert got.startswith(b"OK send 5\r\nOK stored name=g ") and depot.files == {"g": b"hello"}
    else:
        assert got == b"OK send 5\r\nERR badargs upload cut short: the client sent less than 5 bytes, closing\r\n"
        assert depot.files == {} and depot.aborted == depot.uploads
    assert took < 5


@pytest_twisted.inlineCallbacks
def test_a_client_that_half_closes_gets_every_answer_also_to_lines_answered_at_once():
    """The end of the stream is read while the PUT commits; the STAT after
    it is answered at once, and the GET after that must still be answered."""
    depot = SlowDepot(small=False)
    depot.finish = task.deferLater(reactor, 0.2, lambda: None)
    port = reactor.listenTCP(0, DepotFactory(depot), interface="127.0.0.1")
    try:
        got = yield threads.deferToThread(_ask_and_half_close, port.getHost().port,
                                          b"PUT g 5\nhelloSTAT g\nGET g\n")
    finally:
        yield port.stopListening()
    send, stored, stat, header, rest = got.split(b"\r\n", 4)
    assert send == b"OK send 5" and stored.startswith(b"OK stored name=g ")
    assert stat.startswith(b"OK name=g size=5 ") and header.startswith(b"OK 5 sha256=") and rest == b"hello"


@pytest_twisted.inlineCallbacks
def test_a_client_that_asks_and_never_reads_costs_a_bounded_buffer():
    """HELP after HELP from a client that reads nothing: once more than
    REPLY_BACKLOG of replies wait, the proxy stops reading its requests; every
    reply still comes, in order, once the client reads, and it goes on serving."""
    from deposito import twisted_internals
    from deposito.protocols.text import HELP, REPLY_BACKLOG

    factory = DepotFactory(FakeDepot())
    protos: list = []
    build = factory.buildProtocol
    factory.buildProtocol = lambda addr: protos.append(build(addr)) or protos[-1]
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", port.getHost().port))
    help_reply = (f"OK {len(HELP)}\r\n" + "".join(line + "\r\n" for line in HELP)).encode()
    count = 20000  # about 16 MB of replies
    try:
        sending = threads.deferToThread(sock.sendall, b"HELP\n" * count)  # blocks once the proxy stops reading
        most = 0
        for _ in range(100):
            yield task.deferLater(reactor, 0.01, lambda: None)
            if protos:
                most = max(most, twisted_internals.unsent_size(protos[0].transport))
        assert protos[0].paused and not twisted_internals.is_reading(reactor, protos[0].transport)
        # sampled every 10 ms: the peak, just over REPLY_BACKLOG, may fall
        # between samples; it stays paused while more than half of it waits
        assert REPLY_BACKLOG // 2 < most <= REPLY_BACKLOG + len(help_reply)

        def read_all(size: int) -> bytes:
            got = bytearray()
            while len(got) < size:
                chunk = sock.recv(1 << 20)
                assert chunk, "closed early"
                got += chunk
            return bytes(got)

        greeting = yield threads.deferToThread(read_line, sock)
        assert greeting.startswith(b"OK deposito ")
        got = yield threads.deferToThread(read_all, count * len(help_reply))
        assert got == help_reply * count
        yield sending
        sock.sendall(b"STAT nothing\n")
        line = yield threads.deferToThread(read_line, sock)
        assert line.startswith(b"ERR notfound")
    finally:
        sock.close()
        for _ in range(500):  # till the proxy's end has seen the close
            if not protos or not protos[0].transport.connected:
                break
            yield task.deferLater(reactor, 0.01, lambda: None)
        yield port.stopListening()


def read_line(sock: socket.socket) -> bytes:
    got = b""
    while not got.endswith(b"\n"):
        chunk = sock.recv(1)
        assert chunk, "closed early"
        got += chunk
    return got
