"""A WRITE's bytes on their way to the disk: in order, in few trips, and the
last ones with the commit."""

from __future__ import annotations

import os
from types import SimpleNamespace

from twisted.internet import defer
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.python.failure import Failure

from deposito.blobmeta import BlobMeta
from deposito.errors import DepositoError, Internal
from deposito.diskio import WRITE_BEHIND
from deposito.receiver import EARLY_BYTES, FLUSH_BYTES, Receiver


class Disk:
    """A device that keeps the bytes it is handed and the trips they took;
    each write is done only when the test says so."""

    def __init__(self) -> None:
        self.trips: list[tuple[str, int]] = []
        self.data = bytearray()
        self.writes: list[defer.Deferred[None]] = []
        self.reserved = 0

    def reserve(self, size: int) -> None:
        self.reserved += size

    def release(self, size: int) -> None:
        self.reserved -= size

    def begin(self, meta: BlobMeta, cache: bool = False) -> SimpleNamespace:
        return SimpleNamespace(meta=meta)

    def write(self, incoming: SimpleNamespace, pieces: list[bytes]) -> defer.Deferred[None]:
        self.trips.append(("write", sum(len(p) for p in pieces)))
        self.data += b"".join(pieces)
        d: defer.Deferred[None] = defer.Deferred()
        self.writes.append(d)
        return d

    def commit(self, incoming: SimpleNamespace, sha256: str, blocks: str, last: bytes = b"") -> defer.Deferred[BlobMeta]:
        self.trips.append(("commit", len(last)))
        self.data += last
        return defer.succeed(incoming.meta)

    def abort(self, incoming: SimpleNamespace) -> defer.Deferred[None]:
        self.trips.append(("abort", 0))
        return defer.succeed(None)

    told: DepositoError | None = None  # what the device makes of a failed write (None: it does not know it)

    def failed(self, failure: Failure) -> DepositoError | None:
        return self.told


def receive(data: bytes, chunk: int = 65536) -> tuple[Disk, Receiver]:
    disk = Disk()
    meta = BlobMeta("b" * 32, "f", 1, len(data), "", 1)
    receiver = Receiver(MemoryReactor(), disk, meta, False, StringTransport(), lambda: None)  # type: ignore[arg-type]
    for at in range(0, len(data), chunk):
        assert receiver.take(data[at:at + chunk]) == b""
    return disk, receiver


def test_a_small_blob_that_arrives_whole_is_written_and_committed_in_one_trip():
    data = os.urandom(EARLY_BYTES)
    disk, receiver = receive(data)
    assert disk.trips == []
    done = receiver.finish("", "")
    assert disk.trips == [("commit", EARLY_BYTES)] and bytes(disk.data) == data
    assert done.called and disk.reserved == 0


def test_a_blob_of_a_few_mib_goes_to_the_disk_in_small_pieces_as_it_arrives():
    data = os.urandom(1 << 20)  # the benchmark's 1 MiB files: three pieces before END, the last with the commit
    disk, receiver = receive(data)
    assert disk.trips == [("write", EARLY_BYTES)] * 3
    done = receiver.finish("", "")
    assert not done.called and len(disk.trips) == 3, "no commit before the writes are done"
    for d in disk.writes:
        d.callback(None)
    assert disk.trips[3:] == [("commit", EARLY_BYTES)] and bytes(disk.data) == data
    assert done.called and disk.reserved == 0


def test_the_last_bytes_of_a_big_blob_go_with_the_commit_once_every_write_is_done():
    data = os.urandom(WRITE_BEHIND + 12345)  # big: in FLUSH_BYTES pieces
    disk, receiver = receive(data)
    assert disk.trips == [("write", FLUSH_BYTES)] * (WRITE_BEHIND // FLUSH_BYTES)  # the rest waits for END
    done = receiver.finish("", "")
    assert not done.called
    for d in disk.writes:
        d.callback(None)
    assert disk.trips[-1:] == [("commit", 12345)] and bytes(disk.data) == data
    assert done.called and disk.reserved == 0


def test_a_failed_write_commits_nothing_and_throws_the_blob_away():
    data = os.urandom(EARLY_BYTES + 10)
    disk, receiver = receive(data)
    failures: list = []
    done = receiver.finish("", "")
    done.addErrback(failures.append)
    disk.writes[0].errback(OSError(28, "No space left on device"))
    assert [kind for kind, _ in disk.trips] == ["write", "abort"]
    assert len(failures) == 1 and isinstance(failures[0].value, DepositoError)
    assert disk.reserved == 0


def test_bytes_after_a_failed_write_are_dropped_and_nothing_is_committed():
    data = os.urandom(EARLY_BYTES + 10)
    disk = Disk()
    receiver = Receiver(MemoryReactor(), disk, BlobMeta("b" * 32, "f", 1, len(data), "", 1), False,  # type: ignore[arg-type]
                        StringTransport(), lambda: None)
    receiver.take(data[:EARLY_BYTES])
    disk.writes[0].errback(OSError(5, "Input/output error"))
    receiver.take(data[EARLY_BYTES:])  # read on, so the connection stays usable, and dropped
    failures: list = []
    receiver.finish("", "").addErrback(failures.append)
    assert [kind for kind, _ in disk.trips] == ["write", "abort"] and len(failures) == 1
    assert disk.reserved == 0


def test_a_connection_lost_before_end_throws_the_pending_bytes_away():
    disk, receiver = receive(os.urandom(EARLY_BYTES // 2))
    receiver.stop()
    assert disk.trips == [("abort", 0)] and disk.reserved == 0


def test_a_write_the_disk_refuses_is_answered_as_the_device_tells_it():
    data = os.urandom(EARLY_BYTES + 10)
    disk, receiver = receive(data)
    disk.told = Internal("the disk cannot be written (Read-only file system)")
    failures: list = []
    receiver.finish("", "").addErrback(failures.append)
    disk.writes[0].errback(OSError(30, "Read-only file system"))
    assert [f.value for f in failures] == [disk.told] and disk.reserved == 0


def test_a_failed_commit_is_told_once_its_bytes_are_thrown_away():
    """The writer hears ERR only when nothing of the blob is left on the disk."""
    data = os.urandom(100)
    disk, receiver = receive(data)
    thrown: defer.Deferred[None] = defer.Deferred()
    disk.told = Internal("the disk cannot be written (Input/output error)")
    disk.commit = lambda *a, **k: defer.fail(OSError(5, "Input/output error"))  # type: ignore[method-assign]
    disk.abort = lambda incoming: disk.trips.append(("abort", 0)) or thrown  # type: ignore[method-assign]
    failures: list = []
    receiver.finish("", "").addErrback(failures.append)
    assert disk.trips == [("abort", 0)] and failures == [], "told before the abort was done"
    thrown.callback(None)
    assert [f.value for f in failures] == [disk.told] and disk.reserved == 0
