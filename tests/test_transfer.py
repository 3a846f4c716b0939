"""The upload fan-out: parallel lanes, backpressure, dropped lanes."""

from __future__ import annotations

import hashlib

from twisted.internet import defer, task
from twisted.internet.testing import StringTransport

from deposito.blobstore import BlockSums
from deposito.protocols.blob import BlobClient
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
        client = BlobClient()
        client.makeConnection(StringTransport())
        up.add_lane(Member(f"s{i}", "z", "h", 1), client, client.write_blob("b" * 32, 6, 1, n, "f"))
        clients.append(client)
    return up, src, clients, clock


def test_every_lane_gets_every_byte_and_the_hash_is_kept():
    up, src, clients, _ = lanes(3)
    up.write(b"abc")
    up.write(b"def")
    for c in clients:
        assert c.transport.value().endswith(b"\r\nabcdef")
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
