"""Streams between the proxy and servers: the upload fan-out (lanes, backpressure, dropped lanes), small reads."""

from __future__ import annotations

import hashlib

from twisted.internet import defer, task
from twisted.internet.testing import StringTransport

from deposito.blobmeta import BlockSums
from deposito.protocols.blobclient import BlobClient
from deposito.protocols.blobwire import ConnectionLost
from deposito.roster import Member
from deposito.transfer import Upload


class Source:
    """The client's transport, as far as the fan-out cares."""

    def __init__(self):
        self.paused = 0
        self.resumed = 0

    def pauseProducing(self):
        self.paused += 1

    def resumeProducing(self):
        self.resumed += 1


def lanes(n, clock=None):
    clock = clock or task.Clock()
    up = Upload(clock, "f", 1, "b" * 32, 6, n, stall_timeout=30)
    src = Source()
    up.attach(src)
    clients = []
    for i in range(n):
        client = BlobClient(clock)
        client.makeConnection(StringTransport())
        up.add_lane(Member(f"s{i}", "z", "h", 1), client, client.write_blob("b" * 32, 6, 1, n, "f"))
        clients.append(client)
    return up, src, clients, clock


def test_every_lane_gets_every_byte_and_the_hash_is_kept():
    up, src, clients, _ = lanes(3)
    up.write(b"abc")
    up.write(b"def")
    for c in clients:
        assert c.transport.value() == b""  # a small blob's bytes wait for END, with its WRITE line
        c.end(up.sha256, "0" * 32)
        assert b"\r\nabcdefEND " in c.transport.value()
        c.setTimeout(None)  # END waits for a reply that never comes here
    assert up.sha256 == hashlib.sha256(b"abcdef").hexdigest()


def test_one_slow_lane_pauses_the_source_until_all_resume():
    up, src, clients, _ = lanes(3)
    producers = [c.transport.producer for c in clients]
    assert all(p is not None and c.transport.streaming for p, c in zip(producers, clients))
    producers[0].pauseProducing()
    producers[1].pauseProducing()
    assert src.paused == 1
    producers[0].resumeProducing()
    assert src.resumed == 0
    producers[1].resumeProducing()
    assert src.resumed == 1


def test_a_lane_stalled_too_long_is_dropped_and_the_source_resumes():
    up, src, clients, clock = lanes(2)
    clients[0].transport.producer.pauseProducing()
    assert src.paused == 1
    clock.advance(31)
    assert clients[0].transport.disconnecting  # aborted
    clients[0].connectionLost(None)
    assert src.resumed == 1
    assert [lane.member.id for lane in up.live()] == ["s1"]
    up.write(b"xyz")
    assert not clients[0].transport.value().endswith(b"xyz")
    up.abort()  # what the proxy does with an upload given up: the dropped lane's failure is consumed


def test_a_lane_whose_connection_goes_is_left_by_the_fan_out_under_way():
    class Fan:
        def __init__(self):
            self.left = []

        def leave(self, i):
            self.left.append(i)

    up, _, clients, _ = lanes(3)
    up._fan, up._fan_lanes = Fan(), list(up.lanes)
    up.lanes[1].stopProducing()  # what Twisted calls once that connection is lost
    assert up._fan.left == [1] and [lane.alive for lane in up.lanes] == [True, False, True]
    clients[2].connectionLost(None)  # the reply's Deferred fails: the lane is lost
    assert up._fan.left == [1, 2]
    failures = []
    up.lanes[2].result.addErrback(failures.append)
    assert failures and failures[0].check(ConnectionLost)


@defer.inlineCallbacks
def test_finish_reports_the_servers_that_confirmed():
    up, src, clients, _ = lanes(3)
    up.write(b"abcdef")
    d = defer.ensureDeferred(up.finish())
    for c in clients:
        sums = BlockSums()
        sums.update(b"abcdef")
        assert c.transport.value().endswith(f"END {up.sha256} {sums.digest()}\r\n".encode())
    clients[0].dataReceived(b"OK stored x\r\n")
    clients[1].dataReceived(b"ERR nospace disk full\r\n")
    clients[2].connectionLost(None)
    good = yield d
    assert [m.id for m in good] == ["s0"]


def _read_small_on(reply: bytes, size: int):
    """read_small over a BlobClient on a StringTransport that gets ``reply``:
    (the outcomes, the connection's reusable state when released)."""
    from deposito.transfer import read_small

    client = BlobClient(task.Clock())
    client.makeConnection(StringTransport())
    released: list[bool] = []

    def release(c):
        released.append(c.reusable)
        if not c.reusable:
            c.transport.loseConnection()

    outcome: list = []
    read_small(client, "b" * 32, size, release=release).addBoth(outcome.append)
    client.dataReceived(reply)
    return client, outcome, released


def test_a_small_read_gives_the_pieces_and_a_clean_connection_back():
    client, outcome, released = _read_small_on(b"OK 5 size=5\r\nhel", 5)
    assert outcome == [] and released == []  # not all of it yet
    client.dataReceived(b"lo")
    assert outcome == [[b"hel", b"lo"]] and released == [True]


def test_a_small_read_refused_or_miscounted_closes_the_connection_and_logs_no_stray_error():
    import gc

    from twisted.logger import globalLogPublisher
    from twisted.python.failure import Failure

    from deposito.errors import Unavailable

    seen: list = []
    globalLogPublisher.addObserver(seen.append)
    try:
        for reply in (b"ERR notfound no such blob\r\n", b"OK 7 size=7\r\nabc"):
            client, outcome, released = _read_small_on(reply, 5)
            assert isinstance(outcome[0], Failure) and released == [False] and client.transport.disconnecting
            if reply.startswith(b"OK"):
                assert outcome[0].check(Unavailable)
            client.connectionLost(Failure(ConnectionError("closed")))
            outcome.clear()
            del client
            gc.collect()
    finally:
        globalLogPublisher.removeObserver(seen.append)
    assert not [e for e in seen if e.get("isError") or "Unhandled" in str(e.get("log_format", ""))]


def test_a_connect_error_holding_a_failure_is_told_by_its_message_not_its_text():
    """The local port of a server that closes at once (full, say) makes the
    proxy log why and relay: the line names the reason, with no Failure's
    text ("Traceback ...") in it."""
    from twisted.internet.error import ConnectError, ConnectionDone, ConnectionRefusedError
    from twisted.python.failure import Failure

    from deposito.transfer import why_not_connected

    assert why_not_connected(ConnectError(string=Failure(ConnectionDone()))) == (
        "An error occurred while connecting: Connection was closed cleanly.")
    assert why_not_connected(ConnectionRefusedError()) == str(ConnectionRefusedError())
    assert "Traceback" not in str(ConnectError(string="x")) and why_not_connected(ConnectError(string="x")) == (
        "An error occurred while connecting: x.")
