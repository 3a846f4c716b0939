"""Byte ranges: READ and OPEN with a length on a storage server, and
stream_blob serving a range from two copies on each read path."""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from twisted.internet import defer

from deposito import transfer
from deposito.errors import BadArgs
from deposito.protocols.blobwire import ConnectionLost
from deposito.roster import Member
from deposito.transfer import stream_blob
from tests.test_handoff import Setup

BLOCK = 1 << 20
DATA = os.urandom((5 << 20) + 77)
START = BLOCK // 2 + 3  # within block 0
END = (3 << 20) + 1000  # within block 3


class Collect:
    """A consumer that is no socket: the bytes come up through the proxy."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.producer = None

    def write(self, data: bytes) -> None:
        self.chunks.append(data)

    def registerProducer(self, producer, streaming) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def value(self) -> bytes:
        return b"".join(self.chunks)


@pytest.fixture
def setups(tmp_path):
    made = [Setup(tmp_path / "a"), Setup(tmp_path / "b")]
    for s in made:
        os.makedirs(s.tmp_path, exist_ok=True)
    yield made
    for s in made:
        pytest_twisted.blockon(s.stop())


@pytest.fixture
def setup(setups):
    return setups[0]


@pytest.mark.parametrize("cache", [True, False])
@pytest_twisted.inlineCallbacks
def test_a_read_with_a_length_sends_exactly_that_range(setup, cache):
    yield setup.start(DATA, cache=cache)
    c = yield setup.blob_client()
    for start, end in [(START, END), (5, 17), (BLOCK - 1, BLOCK + 1), (0, 0), (len(DATA) - 9, len(DATA)),
                       (0, len(DATA))]:
        sink = Collect()
        assert (yield c.read_blob(setup.blob, start, sink, length=end - start)) == end - start
        yield c.body
        assert sink.value() == DATA[start:end], (start, end)
        assert c.reusable


@pytest_twisted.inlineCallbacks
def test_a_range_of_a_one_block_blob_in_memory_goes_out_with_its_reply(setup):
    data = os.urandom(10_000)
    yield setup.start(data, cache=True)
    c = yield setup.blob_client()
    sink = Collect()
    assert (yield c.read_blob(setup.blob, 100, sink, length=1900)) == 1900
    yield c.body
    assert sink.value() == data[100:2000]


@pytest_twisted.inlineCallbacks
def test_a_range_past_the_end_is_an_err_and_the_server_keeps_serving(setup):
    yield setup.start(DATA)
    c = yield setup.blob_client()
    with pytest.raises(BadArgs, match="past its end"):
        yield c.read_blob(setup.blob, len(DATA) - 10, Collect(), length=11)
    with pytest.raises(BadArgs, match="offset past the end"):
        yield c.read_blob(setup.blob, len(DATA) + 1, Collect(), length=0)
    sink = Collect()
    assert (yield c.read_blob(setup.blob, len(DATA) - 10, sink, length=10)) == 10  # the same connection
    yield c.body
    assert sink.value() == DATA[-10:]
    local = yield setup.local_client()
    with pytest.raises(BadArgs, match="past its end"):
        yield local.open_blob(setup.blob, 10, len(DATA))
    assert (yield local.open_blob(setup.blob, 10, 20)) == 20


@pytest_twisted.inlineCallbacks
def test_a_range_that_ends_mid_block_is_still_checked_against_the_whole_block(setup):
    yield setup.start(DATA)
    with open(setup.blob_path(), "r+b") as f:  # rot in block 1, past the range's end
        f.seek(2 * BLOCK - 10)
        f.write(b"rot")
    corrupt = defer.Deferred()
    setup.device.corrupt_listeners.append(lambda blob, why: corrupt.callback(blob))
    c = yield setup.blob_client()
    sink = Collect()
    with pytest.raises(ConnectionLost):  # the connection is cut, before the reply or after
        yield c.read_blob(setup.blob, START, sink, length=BLOCK + 100 - START)
        yield c.body
    got = sink.value()
    assert len(got) <= BLOCK - START and got == DATA[START:START + len(got)]  # nothing of block 1
    assert (yield corrupt) == setup.blob


@pytest.mark.parametrize("path", ["plain", "relay", "hand_off"])
@pytest_twisted.inlineCallbacks
def test_a_range_from_two_copies_goes_on_from_the_second_at_the_same_byte(setups, path, monkeypatch):
    """The copy read first has rot in a block inside the range: it stops
    there, and the other copy serves the rest (over 2 MiB: enough to be
    handed off), from mid-block to mid-block."""
    a, b = setups
    yield a.start(DATA)
    yield b.start(DATA, blob=a.blob)
    with open(a.blob_path(), "r+b") as f:  # rot in block 1
        f.seek(BLOCK + 5)
        f.write(b"rot")
    taken: list[str] = []
    for name in ("_plain", "_relay", "_hand_off"):
        real = getattr(transfer, name)
        monkeypatch.setattr(transfer, name, lambda client, read, real=real, name=name: taken.append(name) or real(
            client, read))
    members = [Member("a", "z", "h", 1, state="up"), Member("b", "z", "h", 2, state="up")]
    by_id = {"a": a, "b": b}

    def connect(member):
        return by_id[member.id].blob_client()

    def local(member):
        return by_id[member.id].local_client()

    consumer = Collect() if path == "plain" else a.target
    started: list[bool] = []
    yield defer.ensureDeferred(stream_blob(
        connect, members, a.blob, START, END - START, consumer, started=lambda: started.append(True),
        local=local if path == "hand_off" else None))
    assert taken == ["_" + path] * 2 and started == [True]
    got = consumer.value() if path == "plain" else (yield a.reader.until(END - START))
    assert len(got) == END - START and got == DATA[START:END]


@pytest_twisted.inlineCallbacks
def test_a_copy_whose_server_is_taken_for_down_during_the_read_is_not_tried(setups):
    """The first copy fails at rot; the second one's server was taken for
    down since the read began (frozen, say): it is passed over, not waited
    on, and the read fails at once as Unavailable."""
    from deposito.errors import Unavailable

    a, b = setups
    yield a.start(DATA)
    yield b.start(DATA, blob=a.blob)
    with open(a.blob_path(), "r+b") as f:
        f.seek(BLOCK + 5)
        f.write(b"rot")
    members = [Member("a", "z", "h", 1, state="up"), Member("b", "z", "h", 2, state="up")]
    asked: list[str] = []

    def connect(member):
        asked.append(member.id)
        members[1].state = "down"  # while the first copy is read
        return {"a": a, "b": b}[member.id].blob_client()

    with pytest.raises(Unavailable, match="storage server b is down"):
        yield defer.ensureDeferred(stream_blob(connect, members, a.blob, 0, len(DATA), Collect()))
    assert asked == ["a"]


@pytest_twisted.inlineCallbacks
def test_a_reader_whose_connection_is_being_aborted_gets_no_copy_tried():
    """A relay that met a dead reader aborts its connection, whose loss is
    told on the reactor's next turn: meanwhile no other copy is tried for
    it (each was, and failed at once)."""
    from twisted.internet.testing import StringTransport

    from deposito.transfer import CountingConsumer

    tried = []

    async def connect(member):
        tried.append(member.id)
        raise AssertionError("no copy is to be tried")

    reader = StringTransport()
    reader._aborting = True  # as tcp's abortConnection leaves it till the next turn
    members = [Member(f"s{i}", "z", "127.0.0.1", 1, state="up") for i in range(2)]
    with pytest.raises(ConnectionLost):
        yield defer.ensureDeferred(stream_blob(connect, members, "b" * 32, 0, 10, CountingConsumer(reader)))
    assert tried == []
