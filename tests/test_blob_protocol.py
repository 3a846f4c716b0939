"""The storage server's blob port: framing on StringTransport, and real bytes in-process."""

from __future__ import annotations

import hashlib
import mmap
import os
import socket
import time

import pytest
import pytest_twisted
from twisted.internet import defer, endpoints, reactor, task, threads
from twisted.internet.testing import StringTransport

from deposito.blobstore import BlobStore, new_blob_id
from deposito.device import Device
from deposito.errors import BadArgs, NotFound
from deposito.protocols.blobclient import HOLD_FIRST, BlobClient
from deposito.protocols.blobserver import BlobServerFactory
from tests.test_blobstore import sums
from tests.test_diskio import direct_possible
from tests.test_twisted_internals import _peek, _recv_exactly
from tests.peers import on_string_transport


class Sink:
    def __init__(self):
        self.chunks = []
        self.producer = None

    def write(self, data):
        self.chunks.append(data)

    def registerProducer(self, producer, streaming):
        self.producer = producer

    def unregisterProducer(self):
        self.producer = None


def server_on_string_transport(device):
    proto = BlobServerFactory(task.Clock(), device).buildProtocol(None)
    proto.callLater = task.Clock().callLater
    tr = StringTransport()
    proto.makeConnection(tr)
    return proto, tr


def test_refused_write_closes_the_connection(tmp_path):
    device = Device(reactor, BlobStore(str(tmp_path)), capacity=10)
    proto, tr = server_on_string_transport(device)
    proto.dataReceived(f"WRITE {new_blob_id()} 100 1 2 name\n".encode())
    assert tr.value().startswith(b"ERR nospace") and tr.disconnecting
    proto, tr = server_on_string_transport(device)
    proto.dataReceived(b"WRITE ../../x 1 1 2 name\n")
    assert tr.value().startswith(b"ERR badargs") and tr.disconnecting
    proto, tr = server_on_string_transport(device)
    proto.dataReceived(f"WRITE {new_blob_id()} 1 1 2 name keep\n".encode())
    assert tr.value().startswith(b"ERR badargs the word after the name can only be 'cache'") and tr.disconnecting
    assert device.reserved == 0
    proto, tr = server_on_string_transport(device)
    proto.dataReceived(b"NOPE\nREAD\n")
    assert tr.value().split(b"\r\n")[:2] == [b"ERR badcommand unknown command 'NOPE'",
                                            b"ERR badargs usage: READ"]


@pytest_twisted.inlineCallbacks
def test_write_read_delete_real_bytes(tmp_path):
    device = Device(reactor, BlobStore(str(tmp_path), grace=0), capacity=1 << 30)  # deleted is gone at once
    device.start()
    port = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(BlobServerFactory(reactor, device))
    clients = []

    @defer.inlineCallbacks
    def client():
        c = yield endpoints.connectProtocol(
            endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), BlobClient(reactor))
        clients.append(c)
        return c

    try:
        data = os.urandom(3 << 20 | 77)
        blob = new_blob_id()
        c = yield client()
        d = c.write_blob(blob, len(data), 1, 2, "my file")
        for i in range(0, len(data), 100_000):
            c.send(data[i:i + 100_000])
        c.end(*sums(data))
        reply = yield d
        assert reply.startswith(f"OK stored {blob}")
        assert device.used == len(data)

        # the version's gateway metadata given with END is kept with the blob, for a rebuild
        kept = new_blob_id()
        d = c.write_blob(kept, 5, 1, 2, "b/k")
        c.send(b"hello")
        c.end(*sums(b"hello"), meta='{"etag": "e", "user": {"who": "\u00e9 me"}}')
        assert (yield d).startswith(f"OK stored {kept}")
        assert device.store.meta(kept).meta == '{"etag": "e", "user": {"who": "\u00e9 me"}}'
        # a wanted count changed later is kept with the blob, durably; a bad one is refused, the connection kept
        assert (yield c.want(kept, 1)) == "OK" and device.store.meta(kept).replicas == 1
        for bad in (0, 17):
            try:
                yield c.want(kept, bad)
                raise AssertionError(f"a wanted count of {bad} was taken")
            except BadArgs:
                pass
        try:
            yield c.want(new_blob_id(), 2)
            raise AssertionError("a count was kept for a blob that is not there")
        except NotFound:
            pass
        assert device.store.meta(kept).replicas == 1 and (yield c.want(kept, 3)) == "OK"
        assert device.store.meta(kept).replicas == 3

        sink = Sink()
        remaining = yield c.read_blob(blob, 1000, sink)
        assert remaining == len(data) - 1000
        yield c.body
        assert b"".join(sink.chunks) == data[1000:]

        # bytes that differ from what the proxy sent are refused and leave nothing
        other = new_blob_id()
        d = c.write_blob(other, 3, 1, 2, "x")
        c.send(b"abd")
        c.end(*sums(b"abc"))
        try:
            yield d
            raise AssertionError("a wrong checksum was accepted")
        except Exception as e:
            assert "checksum" in str(e)
        assert device.reserved == 0

        assert (yield c.delete_blobs([blob])) == "OK deleted=1 absent=0"
        assert (yield c.delete_blobs([blob])) == "OK deleted=0 absent=1"
        # several in one request; one id that is not a blob's refuses the whole line
        try:
            yield c.delete_blobs([kept, "not-a-blob"])
            raise AssertionError("a bad blob id was taken")
        except BadArgs:
            pass
        assert os.path.exists(device.store.path(kept))
        assert (yield c.delete_blobs([kept, blob, new_blob_id()])) == "OK deleted=1 absent=2"
        assert not os.path.exists(device.store.path(kept)) and device.used == 0
        try:
            yield c.read_blob(blob, 0, Sink())
            raise AssertionError("read a deleted blob")
        except NotFound:
            pass
        assert device.used == 0 and os.listdir(device.store.incoming) == []
    finally:
        for c in clients:
            c.transport.loseConnection()
        yield port.stopListening()
        yield settle()
        device.stop()


def deferLater(seconds):
    from twisted.internet.task import deferLater as later
    return later(reactor, seconds, lambda: None)


@defer.inlineCallbacks
def settle():
    """Let closing connections finish closing (both ends are in this process)."""
    for _ in range(50):
        if not any(type(s).__name__ in ("Server", "Client") for s in reactor.getReaders() + reactor.getWriters()):
            return
        yield deferLater(0.01)


def test_a_second_write_before_end_is_refused_and_frees_the_first(tmp_path):
    device = Device(reactor, BlobStore(str(tmp_path)), capacity=1 << 20)
    proto, tr = server_on_string_transport(device)
    proto.dataReceived(f"WRITE {new_blob_id()} 1 1 1 x\nz".encode())
    assert device.reserved == 1
    proto.dataReceived(f"WRITE {new_blob_id()} 1 1 1 y\n".encode())
    assert tr.value().startswith(b"ERR badcommand") and tr.disconnecting
    proto.connectionLost(None)
    assert device.reserved == 0


@pytest_twisted.inlineCallbacks
def test_a_store_without_grace_is_not_emptied_at_every_turn_of_the_reactor(tmp_path, monkeypatch):
    """trash/ is looked at every second at most, whatever the grace: with
    none, a look at every turn kept the writer thread busy, and the writes
    queued behind those looks waited for up to a second."""
    store = BlobStore(str(tmp_path), grace=0)
    looks = []
    real = store.empty_trash
    monkeypatch.setattr(store, "empty_trash", lambda: looks.append(1) or real())
    device = Device(reactor, store, capacity=1 << 20)
    device.start()
    try:
        yield deferLater(0.3)  # (the first look is due after EMPTY_EVERY, 1 s)
        assert looks == []
    finally:
        device.stop()


@pytest_twisted.inlineCallbacks
def test_a_blob_of_a_few_mib_starts_to_the_disk_piece_by_piece_before_its_end(tmp_path, monkeypatch):
    """The bytes of a 1 MiB WRITE go to the disk as they arrive: each piece
    but the last is written and started on its way out (sync_file_range)
    before END comes, so the commit's fsync has only the last one left. A
    big blob's writeback stays in whole windows."""
    from deposito import diskio
    from deposito.receiver import EARLY_BYTES

    started: list[tuple[int, int]] = []
    real = diskio.start_writeback
    monkeypatch.setattr(diskio, "start_writeback", lambda fd, offset, length: started.append((offset, length))
                        or real(fd, offset, length))
    device = Device(reactor, BlobStore(str(tmp_path)), capacity=1 << 30)
    device.start()
    port = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(BlobServerFactory(reactor, device))
    c = yield endpoints.connectProtocol(
        endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), BlobClient(reactor))
    try:
        for size, cache, expected in [
                (1 << 20, False, [(i * EARLY_BYTES, EARLY_BYTES) for i in range(3)]),
                (diskio.WRITE_BEHIND + (1 << 20), True, [(0, diskio.WRITE_BEHIND)])]:
            started.clear()
            data = os.urandom(size)
            blob = new_blob_id()
            d = c.write_blob(blob, len(data), 1, 1, f"few-{size}", cache=cache)
            for i in range(0, len(data), 64 << 10):
                c.send(data[i:i + (64 << 10)])
                yield deferLater(0)
            for _ in range(100):  # the writer thread has the pieces before END
                if len(started) >= len(expected):
                    break
                yield deferLater(0.01)
            assert started == expected
            c.end(*sums(data))
            yield d
            assert started == expected  # the commit fsyncs the rest
            sink = Sink()
            assert (yield c.read_blob(blob, 0, sink)) == len(data)
            yield c.body
            assert b"".join(sink.chunks) == data
    finally:
        c.transport.loseConnection()
        yield port.stopListening()
        yield settle()
        device.stop()


@pytest.mark.parametrize("cache", [True, False])
@pytest_twisted.inlineCallbacks
def test_a_slow_reader_gets_every_byte_sent_from_the_cache_or_around_it(tmp_path, monkeypatch, cache):
    """A blob read through the page cache is sent by the kernel (sendfile),
    waiting on a full socket; one written around the cache is sent from the
    process. Either way, a reader that keeps pausing gets exactly the blob."""
    import socket as socketlib

    from deposito import sender as sendermodule

    calls = []
    real = sendermodule._SENDFILE
    monkeypatch.setattr(sendermodule, "_SENDFILE", lambda *a: calls.append(a[3]) or real(*a))
    device = Device(reactor, BlobStore(str(tmp_path)), capacity=1 << 30)
    on_thread = []
    real_read = device.read_block
    monkeypatch.setattr(device, "read_block", lambda f, meta, i: on_thread.append(i) or real_read(f, meta, i))
    device.start()
    port = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(BlobServerFactory(reactor, device))
    c = yield endpoints.connectProtocol(
        endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), BlobClient(reactor))
    try:
        data = os.urandom((16 << 20) + 4097)
        blob = new_blob_id()
        d = c.write_blob(blob, len(data), 1, 1, "slow", cache=cache)
        for i in range(0, len(data), 1 << 20):
            c.send(data[i:i + (1 << 20)])
        c.end(*sums(data))
        yield d
        c.transport.getHandle().setsockopt(socketlib.SOL_SOCKET, socketlib.SO_RCVBUF, 32 << 10)

        class Slow(Sink):
            def write(self, chunk):
                super().write(chunk)
                c.transport.pauseProducing()
                reactor.callLater(0.002, c.transport.resumeProducing)

        sink = Slow()
        offset = 5000
        assert (yield c.read_blob(blob, offset, sink)) == len(data) - offset
        yield c.body
        assert hashlib.sha256(b"".join(sink.chunks)).digest() == hashlib.sha256(data[offset:]).digest()
        if cache and direct_possible(str(tmp_path)):
            # the kernel sent from the cache, and waited on the full socket in between
            assert len(calls) > (len(data) - offset) // (1 << 20) + 1
            if getattr(os, "RWF_NOWAIT", 0):
                # in memory: read and checked without a thread (but for a block
                # the kernel was busy writing out just then)
                assert len(on_thread) <= 3
        if not cache and direct_possible(str(tmp_path)):
            assert calls == []  # not cached: never pulled into the cache to send
            assert on_thread == list(range(17))  # each block read from the disk on a thread
    finally:
        c.transport.loseConnection()
        yield port.stopListening()
        yield settle()
        device.stop()


@pytest_twisted.inlineCallbacks
def test_a_one_block_read_bigger_than_a_reply_goes_out_by_the_kernel_after_its_reply(tmp_path, monkeypatch):
    """A cached blob of one block too big to go out in one send with its
    reply (sender.WHOLE_MAX) is checked, then sent by the kernel from the
    same pages, after the reply; a flipped byte sends none of it."""
    from deposito import sender as sendermodule

    sent = []
    real = sendermodule._SENDFILE
    monkeypatch.setattr(sendermodule, "_SENDFILE", lambda *a: sent.append(a[3]) or real(*a))
    device, port, c = yield blob_server(tmp_path)
    try:
        data = os.urandom(sendermodule.WHOLE_MAX * 4 + 1)
        blob = new_blob_id()
        d = c.write_blob(blob, len(data), 1, 1, "one-block", cache=True)
        c.send(data)
        c.end(*sums(data))
        yield d
        for offset in (0, 7):
            sink = Sink()
            assert (yield c.read_blob(blob, offset, sink)) == len(data) - offset
            yield c.body
            assert b"".join(sink.chunks) == data[offset:]
        if real is not None and getattr(os, "RWF_NOWAIT", 0):
            assert sent == [len(data), len(data) - 7]  # no byte of it through the process
        with open(device.store.path(blob), "r+b") as f:
            f.seek(100)
            f.write(bytes([data[100] ^ 1]))
        sink = Sink()
        with pytest.raises(Exception):
            yield c.read_blob(blob, 0, sink)
            yield c.body
        assert data[:100] not in b"".join(sink.chunks)
        for _ in range(100):
            if not os.path.exists(device.store.path(blob)):
                break
            yield task.deferLater(reactor, 0.02, lambda: None)
        assert not os.path.exists(device.store.path(blob))  # quarantined
    finally:
        yield shut(device, port, c)


@defer.inlineCallbacks
def blob_server(tmp_path):
    device = Device(reactor, BlobStore(str(tmp_path)), capacity=1 << 31)
    device.start()
    port = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(BlobServerFactory(reactor, device))
    c = yield endpoints.connectProtocol(
        endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), BlobClient(reactor))
    return device, port, c


@defer.inlineCallbacks
def shut(device, port, c):
    if c.transport.connected:
        c.transport.loseConnection()
    yield port.stopListening()
    yield settle()
    device.stop()


@pytest.mark.parametrize("cache", [True, False])
@pytest_twisted.inlineCallbacks
def test_a_big_write_is_read_from_the_socket_straight_into_disk_buffers(tmp_path, monkeypatch, cache):
    from deposito import diskio

    pieces = []
    device, port, c = yield blob_server(tmp_path)
    real = device.write_piece
    monkeypatch.setattr(device, "write_piece", lambda i, b, n: pieces.append(n) or real(i, b, n))
    copied = [0]  # bytes that took Appender.write: for a direct blob, a copy into its own buffer
    real_write = diskio.Appender.write

    def write(self, data):
        copied[0] += len(data)
        return real_write(self, data)

    monkeypatch.setattr(diskio.Appender, "write", write)
    spare = len(diskio._free)
    try:
        data = os.urandom((21 << 20) + 4321)
        blob = new_blob_id()
        d = c.write_blob(blob, len(data), 1, 2, "big", cache=cache)
        i = 0
        for step in [100, 70_000, 1 << 20, 3 << 20, 5_000] * 100:
            c.send(data[i:i + step])
            i += step
            if i >= len(data):
                break
        c.end(*sums(data))
        assert (yield d).startswith(f"OK stored {blob}")
        assert pieces and sum(pieces) > 16 << 20  # most of it came this way, 1 MiB at a time
        # buffers end where the blob's pieces do: each but the first and last
        # is whole, so it goes to the disk straight from where it was read
        assert (len(data) - sum(pieces) + pieces[0]) % diskio.PIECE == 0
        assert set(pieces[1:-1]) == {diskio.PIECE}
        if not cache and direct_possible(str(tmp_path)):
            assert copied[0] < 2 * diskio.PIECE
        sink = Sink()
        yield c.read_blob(blob, 0, sink)
        yield c.body
        assert hashlib.sha256(b"".join(sink.chunks)).digest() == hashlib.sha256(data).digest()
        assert device.store.meta(blob).cached == (cache or not direct_possible(str(tmp_path)))
        assert device.reserved == 0 and os.listdir(device.store.incoming) == []
        assert len(diskio._free) <= max(spare + 3, diskio._KEEP)  # the buffers went back
        # the connection reads lines again: another request works
        assert (yield c.delete_blobs([blob])) == "OK deleted=1 absent=0"
    finally:
        yield shut(device, port, c)


@pytest.mark.parametrize("size,sent", [(4 << 20, 2), (32 << 20, 12)])  # the second read into disk buffers
@pytest_twisted.inlineCallbacks
def test_a_write_cut_off_midway_leaves_nothing(tmp_path, size, sent):
    device, port, c = yield blob_server(tmp_path)
    try:
        d = c.write_blob(new_blob_id(), size, 1, 2, "x")
        d.addErrback(lambda f: None)
        for _ in range(sent):
            c.send(os.urandom(1 << 20))
        for _ in range(200):
            if os.listdir(device.store.incoming):
                break
            yield deferLater(0.02)
        yield deferLater(0.2)
        c.transport.abortConnection()
        for _ in range(200):
            if not os.listdir(device.store.incoming) and device.reserved == 0:
                break
            yield deferLater(0.02)
        assert os.listdir(device.store.incoming) == [] and device.reserved == 0 and device.used == 0
    finally:
        yield shut(device, port, c)


@pytest_twisted.inlineCallbacks
def test_a_disk_error_midway_through_a_big_write_is_the_reply_to_end(tmp_path, monkeypatch):
    from deposito.blobstore import IncomingBlob
    from deposito.errors import NoSpace

    real = IncomingBlob.write_piece
    calls = []

    def write_piece(self, piece):
        calls.append(len(piece))
        if len(calls) == 3:
            raise NoSpace("disk full")
        return real(self, piece)

    monkeypatch.setattr(IncomingBlob, "write_piece", write_piece)
    from deposito import diskio

    while len(diskio._free) < diskio._KEEP:  # a full pool: the failed buffer is not kept, but closed
        diskio._free.append(mmap.mmap(-1, diskio.PIECE))
    device, port, c = yield blob_server(tmp_path)
    try:
        data = os.urandom(12 << 20)
        d = c.write_blob(new_blob_id(), len(data), 1, 2, "full")
        for i in range(0, len(data), 1 << 20):
            c.send(data[i:i + (1 << 20)])
        c.end(*sums(data))
        with pytest.raises(Exception, match="disk full"):
            yield d
        assert len(calls) >= 3
        for _ in range(100):  # the temp file goes once the writer thread gets to it
            if not os.listdir(device.store.incoming):
                break
            yield deferLater(0.02)
        assert device.reserved == 0 and os.listdir(device.store.incoming) == []
        small = os.urandom(1000)
        blob = new_blob_id()
        d = c.write_blob(blob, len(small), 1, 2, "after")  # the connection goes on
        c.send(small)
        c.end(*sums(small))
        assert (yield d).startswith(f"OK stored {blob}")
    finally:
        yield shut(device, port, c)


@pytest_twisted.inlineCallbacks
def test_a_read_error_cuts_the_read_at_once(tmp_path, monkeypatch):
    import errno

    from deposito.errors import DepositoError

    device, port, c = yield blob_server(tmp_path)
    try:
        data = os.urandom(3 << 20)
        blob = new_blob_id()
        d = c.write_blob(blob, len(data), 1, 2, "eio")
        c.send(data)
        c.end(*sums(data))
        yield d

        def broken(f, meta, index):
            if index == 1:
                raise OSError(errno.EIO, "Input/output error")
            return real(f, meta, index)

        real = device.read_block_now
        monkeypatch.setattr(device, "read_block_now", broken)
        sink = Sink()
        started = reactor.seconds()
        with pytest.raises(DepositoError):  # before or after the reply: the connection is cut
            yield c.read_blob(blob, 0, sink)
            yield c.body
        assert reactor.seconds() - started < 5  # at once, not left to a timeout
        assert sum(len(x) for x in sink.chunks) < len(data)
        assert device.store.meta(blob)  # not taken for rot: the copy stays
    finally:
        yield shut(device, port, c)


@pytest.fixture
def device(tmp_path):
    """A started Device on a BlobStore in tmp_path, stopped after the test."""
    dev = Device(reactor, BlobStore(str(tmp_path)), capacity=1 << 30)
    dev.start()
    yield dev
    dev.stop()


@pytest_twisted.inlineCallbacks
def test_a_blob_deleted_a_moment_ago_is_still_read_until_its_grace_is_over(tmp_path):
    """A READ that comes just after the DELETE (its version replaced as the
    proxy looked it up) still gets every byte, checked; once the grace is
    over, and after a restart, the blob is gone for good. It no longer
    counts, nor is it listed, from the DELETE on."""
    store = BlobStore(str(tmp_path), grace=60)  # (its end is brought about below, not waited for)
    device = Device(reactor, store, capacity=1 << 30)
    device.start()
    port = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        BlobServerFactory(reactor, device))
    c = yield endpoints.connectProtocol(
        endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), BlobClient(reactor))
    try:
        small, big = os.urandom(5000), os.urandom(3 << 20 | 5)
        blobs = [(yield commit_blob(device, small)), (yield commit_blob(device, big))]
        assert (yield c.delete_blobs(blobs)) == "OK deleted=2 absent=0"
        assert (device.used, device.count) == (0, 0) and list(store.blob_ids()) == []
        for blob, data in zip(blobs, (small, big)):
            sink = Sink()
            assert (yield c.read_blob(blob, 0, sink)) == len(data)
            yield c.body
            assert b"".join(sink.chunks) == data
        assert device._emptying.running and device._emptying.interval == store.grace  # emptied every grace
        store.grace = 0
        assert store.empty_trash() == 2 and os.listdir(store.trash) == []
        for blob in blobs:
            try:
                yield c.read_blob(blob, 0, Sink())
                raise AssertionError("read a blob deleted past its grace")
            except NotFound:
                pass
        store.grace = 60
        again = yield commit_blob(device, small)
        yield device.delete(again)
        assert os.listdir(store.trash) == [again]
    finally:
        c.transport.loseConnection()
        yield port.stopListening()
        yield settle()
        device.stop()
    assert os.listdir(BlobStore(str(tmp_path)).trash) == []  # what a restart finds in trash/ goes


@defer.inlineCallbacks
def commit_blob(device, data):
    """A blob of ``data`` written and committed through ``device`` (cached); its id."""
    from deposito.blobmeta import BlobMeta

    blob = new_blob_id()
    meta = BlobMeta(blob=blob, name="n", version=1, size=len(data), sha256="", replicas=2)
    incoming = device.begin(meta, cache=True)
    yield device.commit(incoming, *sums(data), last=data)
    return blob


@pytest_twisted.inlineCallbacks
def test_a_small_blob_opens_at_once_and_never_once_it_is_gone(tmp_path):
    from deposito import diskio

    store = BlobStore(str(tmp_path), grace=0)  # deleted is gone at once
    device = Device(reactor, store, capacity=1 << 30)
    device.start()

    def put(data):
        return commit_blob(device, data)

    try:
        probe = tmp_path / "probe"
        probe.write_bytes(b"")
        fd = diskio.open_resident(str(probe))
        if fd is None:
            pytest.skip("this system cannot open a file only from memory (Linux 5.12+)")
        os.close(fd)
        data = os.urandom(5000)
        blobs = []
        for _ in range(3):
            blobs.append((yield put(data)))
        for blob in blobs:
            d = device.open(blob)
            assert d.called, "a blob just written opens without a thread"
            f, meta = yield d
            assert bytes(device.read_block_now(f, meta, 0)) == data
            yield device.close(f)
        # gone in each way a blob goes: what was kept of it is not used
        yield device.delete(blobs[0])
        yield device.corrupt(blobs[1], "a test")
        os.unlink(store.path(blobs[2]))  # behind the server's back
        for blob in blobs:
            with pytest.raises(NotFound):
                yield device.open(blob)
        # a big blob is opened on a thread, as before
        big = yield put(os.urandom(diskio.DIRECT_MIN))
        d = device.open(big)
        assert not d.called
        f, meta = yield d
        assert meta.size == diskio.DIRECT_MIN
        yield device.close(f)
    finally:
        device.stop()


@pytest_twisted.inlineCallbacks
def test_an_open_from_memory_that_fails_goes_to_the_thread_and_leaks_nothing(device, monkeypatch):
    from deposito import diskio

    store = device.store
    data = os.urandom(3000)
    blob = yield commit_blob(device, data)
    fd = diskio.open_resident(store.path(blob))
    if fd is None:
        pytest.skip("this system cannot open a file only from memory (Linux 5.12+)")
    os.close(fd)
    real_fstat, failed = os.fstat, []

    def fstat_once(fd):  # the first look at the file fails, as a stale handle would
        if not failed:
            failed.append(fd)
            raise OSError(116, "Stale file handle")
        return real_fstat(fd)

    monkeypatch.setattr(diskio.os, "fstat", fstat_once)
    fds = len(os.listdir("/proc/self/fd"))
    f, got = yield device.open(blob)
    assert failed and got.size == len(data)
    assert bytes(device.read_block_now(f, got, 0)) == data
    yield device.close(f)
    assert len(os.listdir("/proc/self/fd")) == fds


@pytest_twisted.inlineCallbacks
def test_a_one_block_blob_in_memory_goes_out_with_its_reply_at_once_unless_rotten(device):
    store = device.store
    data = os.urandom(3000)
    blob = yield commit_blob(device, data)
    opened = device.open(blob)
    if not opened.called:
        pytest.skip("this system cannot open a file only from memory (Linux 5.12+)")
    yield device.close((yield opened)[0])
    proto, tr = server_on_string_transport(device)
    proto.dataReceived(f"READ {blob} 0\nREAD {blob} 1000\n".encode())
    # both answered before the reactor ran again: no thread, no later turn
    assert tr.value() == (b"OK 3000 size=3000\r\n" + data + b"OK 2000 size=3000\r\n" + data[1000:])
    # a flipped byte: refused before any reply (as a copy missing, so the reader goes to
    # another one), nothing of the block is sent, the copy is set aside, and the connection serves on
    with open(store.path(blob), "r+b") as f:
        f.seek(10)
        f.write(bytes([data[10] ^ 1]))
    proto, tr = server_on_string_transport(device)
    proto.dataReceived(f"READ {blob} 0\n".encode())
    for _ in range(100):
        if not os.path.exists(store.path(blob)):
            break
        yield task.deferLater(reactor, 0.02, lambda: None)
    assert tr.value().startswith(b"ERR notfound no such blob (it was corrupt: ") and tr.value().count(b"\r\n") == 1
    assert data[:100] not in tr.value() and not tr.disconnecting
    assert not os.path.exists(store.path(blob))  # quarantined



@pytest_twisted.inlineCallbacks
def test_a_rotten_copy_keeps_no_wanted_count_and_is_set_aside_and_told(device):
    """WANT reads the copy whole first: a proxy about to drop a file's other
    copies must not keep a rotten one and drop the good (before: WANT only
    rewrote the metadata, and the good copy was dropped)."""
    store = device.store
    data = os.urandom((1 << 20) + 5000)
    good, bad = (yield commit_blob(device, data)), (yield commit_blob(device, data))
    with open(store.path(bad), "r+b") as f:
        f.seek((1 << 20) + 7)  # in its second block
        f.write(bytes([data[(1 << 20) + 7] ^ 1]))
    told: list[str] = []
    device.corrupt_listeners.append(lambda blob, why: told.append(blob))
    tr = yield asked(device, f"WANT {good} 1\n")
    assert tr.value() == b"OK\r\n" and store.meta(good).replicas == 1
    tr = yield asked(device, f"WANT {bad} 1\n", lambda tr: bool(tr.value() and told))
    assert tr.value().startswith(b"ERR notfound no such blob (it was corrupt: ") and not tr.disconnecting
    assert told == [bad] and not os.path.exists(store.path(bad))  # set aside, and told to the proxies


@pytest_twisted.inlineCallbacks
def test_meta_tells_what_a_blob_is_a_copy_of(device):
    """Asked of a blob the proxy's catalog does not know (see ICatalog.judge_unknown)."""
    blob = yield commit_blob(device, b"some bytes")
    tr = yield asked(device, f"META {blob}\n")
    assert tr.value() in (b"OK version=1 name=n age=0\r\n", b"OK version=1 name=n age=1\r\n")
    client = BlobClient(reactor)
    client.makeConnection(StringTransport())
    got = client.meta(blob)
    assert client.transport.value() == f"META {blob}\r\n".encode()
    client.dataReceived(b'OK version=7 name="a b" age=86400\r\n')
    assert got.result == ("a b", 7, 86400)
    client.setTimeout(None)
    tr = yield asked(device, f"META {new_blob_id()}\n")
    assert tr.value().startswith(b"ERR notfound") and not tr.disconnecting


@defer.inlineCallbacks
def asked(device, line: str, answered=lambda tr: bool(tr.value())):
    """``line`` sent to a server on ``device``: its transport, once ``answered`` (4 s at most)."""
    proto, tr = server_on_string_transport(device)
    proto.dataReceived(line.encode())
    for _ in range(200):
        if answered(tr):
            break
        yield task.deferLater(reactor, 0.02, lambda: None)
    return tr


@pytest_twisted.inlineCallbacks
def test_want_reads_a_big_copy_in_the_background_and_keeps_no_count_on_it_till_then(device, monkeypatch):
    """A copy over CHECK_NOW_MAX is not read while the proxy waits (its
    reconciler, and GETs on the same reader threads): WANT answers
    ``ERR unavailable`` at once and reads it in the background; asked again
    once read, a good one takes the count, a rotten one is set aside, told,
    and answered as missing (before: a big copy took the count unread, and
    a rot no scrub had seen yet cost the file its good copies)."""
    from deposito import device as device_module

    monkeypatch.setattr(device_module, "CHECK_NOW_MAX", 1 << 20)
    store = device.store
    data = os.urandom((1 << 20) + 1)
    good, bad = (yield commit_blob(device, data)), (yield commit_blob(device, data))
    with open(store.path(bad), "r+b") as f:
        f.seek(7)
        f.write(bytes([data[7] ^ 1]))
    told: list[str] = []
    device.corrupt_listeners.append(lambda blob, why: told.append(blob))
    for blob in (good, bad):
        tr = yield asked(device, f"WANT {blob} 1\n")
        assert tr.value().startswith(b"ERR unavailable the copy (1048577 bytes) is being read whole first")
        assert not tr.disconnecting
    assert store.meta(good).replicas != 1  # (the bad one may be set aside already)
    for _ in range(200):
        if told and not device._checking:
            break
        yield task.deferLater(reactor, 0.02, lambda: None)
    assert told == [bad] and not os.path.exists(store.path(bad))  # set aside, and told to the proxies
    tr = yield asked(device, f"WANT {good} 1\n")
    assert tr.value() == b"OK\r\n" and store.meta(good).replicas == 1
    tr = yield asked(device, f"WANT {good} 2\n")  # read good lately still, though its count changed
    assert tr.value() == b"OK\r\n" and store.meta(good).replicas == 2
    tr = yield asked(device, f"WANT {bad} 1\n")
    assert tr.value().startswith(b"ERR notfound")
    scrubbed = yield commit_blob(device, data)
    yield device.check(scrubbed)  # as the scrub reads it
    tr = yield asked(device, f"WANT {scrubbed} 1\n")
    assert tr.value() == b"OK\r\n" and store.meta(scrubbed).replicas == 1


@pytest_twisted.inlineCallbacks
def test_a_copy_set_aside_as_corrupt_gives_its_good_blocks_to_rescue_and_nothing_from_its_bad_one(device):
    """RESCUE reads the copy moved aside: its checked blocks up to the first
    bad one, then a cut (nothing more is reported: it is set aside already);
    READ no longer finds it."""
    from deposito.blobmeta import BLOCK

    data = os.urandom(2 * BLOCK + 1000)
    blob = yield commit_blob(device, data)
    with open(device.store.path(blob), "r+b") as f:
        f.seek(BLOCK + 7)
        f.write(bytes([data[BLOCK + 7] ^ 1]))
    yield device.corrupt(blob, "block 1 is bad")  # set aside, as a read or a scrub does
    told = []
    device.corrupt_listeners.append(lambda b, why: told.append(b))

    def answered(line, done):
        proto, tr = server_on_string_transport(device)
        proto.dataReceived(line.encode() + b"\n")
        for _ in range(300):
            if done(tr):
                break
            yield task.deferLater(reactor, 0.01, lambda: None)
        return tr

    head = f"OK {len(data)} size={len(data)}\r\n".encode()
    tr = yield from answered(f"RESCUE {blob} 0", lambda tr: tr.disconnecting)
    assert tr.value() == head + data[:BLOCK] and tr.disconnecting  # block 0, then cut at block 1
    tail = f"OK 1000 size={len(data)}\r\n".encode() + data[2 * BLOCK:]
    tr = yield from answered(f"RESCUE {blob} {2 * BLOCK}", lambda tr: tr.value() == tail)
    assert tr.value() == tail and not tr.disconnecting
    tr = yield from answered(f"READ {blob} 0", lambda tr: tr.value())
    assert tr.value().startswith(b"ERR notfound")
    tr = yield from answered(f"RESCUE {new_blob_id()} 0", lambda tr: tr.value())
    assert tr.value().startswith(b"ERR notfound")
    assert told == []


@pytest_twisted.inlineCallbacks
def test_lines_sent_during_a_read_wait_and_no_more_than_a_line_is_buffered(device):
    data = os.urandom(3000)
    blob = yield commit_blob(device, data)
    device._metas.clear()  # so the open goes to a reader thread, and the READ is under way a while
    proto, tr = server_on_string_transport(device)
    proto.dataReceived(f"READ {blob} 0\n".encode())
    assert tr.value() == b"" and tr.producerState == "producing"  # the socket is still read
    proto.dataReceived(f"READ {blob} 2999\n".encode() * 10)
    assert tr.producerState == "producing"
    proto.dataReceived(f"READ {blob} 2999\n".encode() * 1000)  # more than a line's worth: stop reading
    assert tr.producerState == "paused"
    for _ in range(200):
        if tr.value().count(b"OK 1 size=3000") == 1010:
            break
        yield task.deferLater(reactor, 0.01, lambda: None)
    assert tr.value().startswith(b"OK 3000 size=3000\r\n" + data)
    assert tr.value().count(b"OK 1 size=3000\r\n" + data[-1:]) == 1010 and tr.producerState == "producing"


@pytest_twisted.inlineCallbacks
def test_a_small_upload_goes_to_its_server_in_one_message_and_a_big_one_as_it_comes():
    """A blob of at most HOLD_FIRST bytes reaches the server as one message
    (its WRITE line held until END, with its bytes); a bigger one's WRITE
    line goes at once, and its bytes as they come."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)
    c = yield endpoints.connectProtocol(
        endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", listener.getsockname()[1]), BlobClient(reactor))
    peer, _ = listener.accept()
    listener.close()
    peer.settimeout(5)
    try:
        small, big = new_blob_id(), new_blob_id()
        d = c.write_blob(small, 5, 1, 2, "x")
        c.send(b"hello")
        assert _peek(peer) is None  # held, with the WRITE line
        c.end(*sums(b"hello"))
        message = f"WRITE {small} 5 1 2 x\r\nhello".encode() + f"END {' '.join(sums(b'hello'))}\r\n".encode()
        assert _recv_exactly(peer, len(message)) == message
        peer.sendall(f"OK stored {small}\r\n".encode())
        assert (yield d).startswith("OK stored")

        data = os.urandom(HOLD_FIRST + 1)
        d = c.write_blob(big, len(data), 1, 2, "y")
        d.addErrback(lambda _: None)  # never answered here
        head = f"WRITE {big} {len(data)} 1 2 y\r\n".encode()
        assert _peek(peer) == head  # at once, before any byte
        c.send(data)
        c.end(*sums(data))
        c.setTimeout(None)
        tail = f"END {' '.join(sums(data))}\r\n".encode()
        got = yield threads.deferToThread(_recv_exactly, peer, len(head) + len(data) + len(tail))
        assert got == head + data + tail
    finally:
        peer.close()
        c.transport.loseConnection()
        yield settle()


@pytest_twisted.inlineCallbacks
def test_a_corrupt_copy_that_cannot_be_moved_aside_is_told_and_no_longer_listed(device, monkeypatch):
    """The disk turned read-only: the copy stays where it is, but the proxy
    hears it is bad, and the inventories leave it out, so it is not counted again."""
    import errno

    bad = yield commit_blob(device, os.urandom(3000))
    good = yield commit_blob(device, os.urandom(3000))

    def read_only(blob_id):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(device.store, "quarantine", read_only)
    told = []
    device.corrupt_listeners.append(lambda blob, why: told.append((blob, why)))
    yield device.corrupt(bad, "sha256 mismatch")
    assert told == [(bad, "sha256 mismatch")]
    assert os.path.exists(device.store.path(bad))  # not moved
    for ids_only in (True, False):
        listed, more = yield device.inventory(ids_only=ids_only).next()
        assert [b if ids_only else b.blob for b in listed] == [good] and not more


def test_a_write_that_finds_the_disk_full_holds_it_off_too(device):
    """A blob's bytes refused for want of room (diskio.write_all says
    NoSpace) hold the disk off as a refused open does: its server offers no
    room for a while (before: only an open's ENOSPC did, and the proxies went
    on placing copies there by its free space), and the log says so once
    (it said only when the disk took writes again)."""
    from twisted.logger import capturedLogs, formatEvent
    from twisted.python.failure import Failure

    from deposito.errors import NoSpace

    assert not device.cannot_write()
    with capturedLogs() as events:
        told = device.failed(Failure(NoSpace("disk full")))
        device.failed(Failure(NoSpace("disk full")))
    assert isinstance(told, NoSpace) and device.cannot_write()
    said = [formatEvent(e) for e in events]
    assert len(said) == 1 and "the disk is full: no new copies come here for 10 s" in said[0], said
    import errno

    with capturedLogs() as events:  # a full disk that then fails says so too
        device.failed(Failure(OSError(errno.EIO, "Input/output error")))
        device.failed(Failure(NoSpace("disk full")))
    said = [formatEvent(e) for e in events]
    assert len(said) == 1 and "cannot be written (Input/output error)" in said[0], said


@pytest_twisted.inlineCallbacks
def test_a_disk_that_cannot_be_written_takes_no_new_copies_till_a_file_can_be_written_again(device, monkeypatch):
    """A write or delete refused by a disk turned read-only (or failing), or
    for want of room its free space did not show (inodes): the device tells
    it as such, and says it cannot write, so its server offers no room; once
    the hold is over, a file written and synced on the disk says whether it
    takes writes again, and if not the hold starts over."""
    import errno

    from twisted.python.failure import Failure

    from deposito.errors import Internal, NoSpace
    from deposito.servedcatalog import ServedCatalog
    from deposito.storage import StorageNode

    node = StorageNode(device, "s1", "z1", None, None, ServedCatalog(str(device.store.root)))
    assert not device.cannot_write() and node.usage()[0] > 0
    told = device.failed(Failure(OSError(errno.EROFS, "Read-only file system")))
    assert isinstance(told, Internal) and "cannot be written (Read-only file system)" in str(told)
    assert device.cannot_write() and node.usage()[0] == 0
    assert isinstance(device.failed(Failure(OSError(errno.ENOSPC, "No space left on device"))), NoSpace)
    assert device.failed(Failure(ValueError("a bug"))) is None

    def still_read_only():
        raise OSError(errno.EROFS, "Read-only file system")

    probes = []
    real_probe = device.store.probe
    monkeypatch.setattr(device.store, "probe", lambda: probes.append(1) or still_read_only())
    monkeypatch.setattr(device, "_fault_until", 0.0)  # the hold is over
    assert device.cannot_write() and node.usage()[0] == 0  # a probe is under way
    for _ in range(100):
        if probes and not device._probing:
            break
        yield task.deferLater(reactor, 0.01, lambda: None)
    assert probes == [1] and device.cannot_write()  # it failed: held again, no second probe yet
    assert device._fault_until > time.monotonic() + 5
    monkeypatch.setattr(device.store, "probe", real_probe)
    monkeypatch.setattr(device, "_fault_until", 0.0)
    device.cannot_write()
    for _ in range(100):
        if not device.cannot_write():
            break
        yield task.deferLater(reactor, 0.01, lambda: None)
    assert not device.cannot_write() and node.usage()[0] > 0  # a file went through: room again
    assert os.listdir(device.store.incoming) == []  # the probe's file is gone


def test_a_disk_out_of_inodes_has_no_room(device, monkeypatch):
    """Its bytes free do not count once no new file can be made there."""
    real = os.statvfs

    def statvfs(path, favail):
        st = real(path)
        return os.statvfs_result((st.f_bsize, st.f_frsize, st.f_blocks, st.f_bfree, st.f_bavail, 1000,
                                   favail, favail, st.f_flag, st.f_namemax))

    monkeypatch.setattr(os, "statvfs", lambda path: statvfs(path, 0))
    assert device.room() == device.used
    monkeypatch.setattr(os, "statvfs", lambda path: statvfs(path, 500))
    assert device.room() > device.used + (1 << 20)


def test_a_host_without_the_secret_holds_a_connection_5_s_at_most_and_few_at_once(tmp_path):
    """With a cluster secret, a connection has PROVE_WITHIN in all to prove
    it, whatever it sends meanwhile (before: each byte kept one open for 120
    s more, and no number was too many: a host without the secret could take
    all of a server's file descriptors, and the proxies found it full). Past
    UNPROVEN_MOST unproven ones, the oldest is closed once it has had
    PROVE_QUICKLY, else the newcomer: a burst of connections never closes
    one still proving itself."""
    from deposito.protocols.blobserver import PROVE_QUICKLY, PROVE_WITHIN, UNPROVEN_MOST
    from deposito.protocols.blobwire import PROXY_PROOF
    from deposito.secret import nonce, proof

    device = Device(reactor, BlobStore(str(tmp_path)), capacity=1 << 20)
    clock = task.Clock()
    factory = BlobServerFactory(clock, device, b"s3cret")

    def connect():
        return on_string_transport(factory, clock)

    trickler, tr = connect()
    for _ in range(10):  # a byte a second: no newline, no proof
        clock.advance(PROVE_WITHIN / 10 - 0.01)
        trickler.dataReceived(b"x")
    assert not tr.disconnecting
    clock.advance(0.2)
    assert tr.disconnecting  # aborted at PROVE_WITHIN, its trickle notwithstanding
    trickler.connectionLost(None)

    proxy, ptr = connect()  # proves the secret: then the idle timeout, reset by what it sends
    hello = ptr.value().decode().split()[1]
    mine = nonce()
    proxy.dataReceived(f"AUTH {mine} {proof(b's3cret', PROXY_PROOF, hello, mine)}\n".encode())
    assert ptr.value().decode().splitlines()[-1].startswith("OK ")
    waiting = [connect() for _ in range(UNPROVEN_MOST)]  # a burst: all still proving themselves
    late, late_tr = connect()
    assert late_tr.disconnecting and not any(t.disconnecting for _, t in waiting)
    clock.advance(PROVE_QUICKLY)
    newest, newest_tr = connect()  # the oldest has had its time: it gives way
    assert waiting[0][1].disconnecting and not newest_tr.disconnecting
    assert not any(t.disconnecting for _, t in waiting[1:])
    clock.advance(PROVE_WITHIN)
    assert all(t.disconnecting for _, t in waiting) and not ptr.disconnecting


@pytest_twisted.inlineCallbacks
def test_a_whole_read_under_way_does_not_hold_up_the_servers_stop(tmp_path, monkeypatch):
    """A big copy read whole (a scrub's, or one WANT asked for) gives up
    between two blocks when its device stops: a server told to stop during
    the read of a copy of many GiB stopped only once it was read."""
    import threading

    from deposito.blobmeta import BLOCK
    from deposito.blobstore import Stopped

    dev = Device(reactor, BlobStore(str(tmp_path)), capacity=1 << 30)
    dev.start()
    blob = yield commit_blob(dev, os.urandom(BLOCK * 40))
    reading = threading.Event()
    real = dev.store.read_block

    def slow_block(f, meta, index):
        reading.set()
        time.sleep(0.05)  # 40 blocks: 2 s in all
        return real(f, meta, index)

    monkeypatch.setattr(dev.store, "read_block", slow_block)
    outcome = []
    dev.check(blob).addBoth(outcome.append)
    while not reading.is_set():
        yield deferLater(0.01)
    started = time.monotonic()
    dev.stop()
    assert time.monotonic() - started < 0.5
    for _ in range(100):
        if outcome:
            break
        yield deferLater(0.01)
    assert len(outcome) == 1 and outcome[0].check(Stopped), outcome
