"""Blob bytes and the disk: direct writes of big blobs, the page cache for the rest."""

from __future__ import annotations

import errno
import hashlib
import os

import pytest

from deposito import diskio
from deposito.blobmeta import BLOCK, BlobMeta, Corrupt
from deposito.blobstore import BlobStore, new_blob_id
from deposito.placement import read_order
from deposito.roster import Member
from tests.test_blobstore import sums


def direct_possible(path) -> bool:
    probe = os.path.join(path, "probe")
    open(probe, "wb").close()
    fd = diskio.open_direct(probe, os.O_RDONLY)
    os.unlink(probe)
    if fd is None:
        return False
    os.close(fd)
    return True


def in_page_cache(path: str, offset: int, length: int) -> bool:
    """Whether a range reads from the page cache without going to the disk
    (asking starts a read-ahead: ask once per range)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.preadv(fd, [bytearray(length)], offset, os.RWF_NOWAIT) == length
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def write_blob(store, data, cache=False, pieces=(1 << 20) + 333):
    blob = new_blob_id()
    incoming = store.begin(BlobMeta(blob=blob, name="n", version=1, size=len(data), sha256="", replicas=2), cache)
    for i in range(0, len(data), pieces):
        incoming.write(data[i:i + pieces])
    incoming.commit(*sums(data))
    return blob


@pytest.mark.parametrize("size", [diskio.DIRECT_MIN, diskio.DIRECT_MIN + 1, 3 * diskio.DIRECT_MIN + 4095])
@pytest.mark.parametrize("cache", [False, True])
def test_big_blobs_read_back_exactly_direct_or_cached(tmp_path, size, cache):
    store = BlobStore(str(tmp_path))
    data = os.urandom(size)
    blob = write_blob(store, data, cache)
    meta = store.check(blob)
    with store.reader(blob) as f:
        got = b"".join(store.read_block(f, meta, i) for i in range((size + BLOCK - 1) // BLOCK))
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    assert os.path.getsize(store.path(blob)) == size


def test_a_big_blob_is_written_around_the_cache_unless_asked_to_stay(tmp_path):
    if not direct_possible(str(tmp_path)) or not getattr(os, "RWF_NOWAIT", 0):
        pytest.skip("this filesystem has no O_DIRECT or RWF_NOWAIT")
    store = BlobStore(str(tmp_path))
    around = write_blob(store, os.urandom(16 << 20))
    kept = write_blob(store, os.urandom(16 << 20), cache=True)
    assert not in_page_cache(store.path(around), 0, 1 << 20)
    assert in_page_cache(store.path(kept), 0, 1 << 20)
    assert store.meta(kept).cached and not store.meta(around).cached
    # reading a blob written around the cache does not pull it into the cache
    meta = store.meta(around)
    with store.reader(around, meta) as f:
        assert not f.through_cache
        for i in range(16):
            store.read_block(f, meta, i)
    assert not in_page_cache(store.path(around), 8 << 20, 1 << 20)
    with store.reader(kept, store.meta(kept)) as f:
        assert f.through_cache
    # a small blob always goes through the cache
    small = write_blob(store, os.urandom(100_000))
    assert in_page_cache(store.path(small), 0, 100_000)


def test_direct_writes_refused_midway_fall_back_to_the_page_cache(tmp_path, monkeypatch):
    if not direct_possible(str(tmp_path)):
        pytest.skip("this filesystem has no O_DIRECT")
    real = os.pwrite
    refused = []

    def pwrite(fd, data, offset):
        appender = current[0]
        if appender is not None and fd == appender._direct and offset >= 2 * diskio.PIECE:
            refused.append(offset)
            raise OSError(errno.EINVAL, "no direct writes here")
        return real(fd, data, offset)

    current = [None]
    real_init = diskio.Appender.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        current[0] = self

    monkeypatch.setattr(diskio.os, "pwrite", pwrite)
    monkeypatch.setattr(diskio.Appender, "__init__", init)
    store = BlobStore(str(tmp_path))
    data = os.urandom(diskio.DIRECT_MIN + 12345)
    blob = write_blob(store, data, pieces=700_000)
    assert refused, "the direct path was not taken"
    with open(store.path(blob), "rb") as f:
        assert hashlib.sha256(f.read()).digest() == hashlib.sha256(data).digest()
    assert store.check(blob).size == len(data)


def test_aligned_buffers_are_reused():
    a = diskio.take_buffer()
    diskio.give_back(a)
    assert diskio.take_buffer() is a


def members(*ids):
    return [Member(id=i, zone="z", host="127.0.0.1", port=1) for i in ids]


def test_read_order_is_the_same_for_every_reader_and_spreads_blobs_over_servers():
    servers = members("a", "b", "c")
    firsts = {}
    for _ in range(300):
        blob = new_blob_id()
        order = [m.id for m in read_order(blob, servers)]
        assert sorted(order) == ["a", "b", "c"]
        assert [m.id for m in read_order(blob, list(reversed(servers)))] == order
        # a server that is down drops out, the others keep their order
        assert [m.id for m in read_order(blob, [m for m in servers if m.id != order[0]])] == order[1:]
        firsts[order[0]] = firsts.get(order[0], 0) + 1
    assert set(firsts) == {"a", "b", "c"} and min(firsts.values()) > 60


def test_blocks_in_memory_are_read_and_checked_without_a_thread_others_are_left(tmp_path):
    if not getattr(os, "RWF_NOWAIT", 0):
        pytest.skip("this system has no RWF_NOWAIT")
    store = BlobStore(str(tmp_path))
    data = os.urandom(3 * BLOCK + 1000)
    blob = write_blob(store, data, cache=True)
    meta = store.meta(blob)
    buffer = memoryview(bytearray(BLOCK))
    with store.reader(blob, meta) as f:
        got = [bytes(store.read_resident_block(f, meta, i, buffer)) for i in range(4)]
        assert b"".join(got) == data
        assert store.read_resident_block(f, meta, 4, buffer) is None  # past the end
        # dropped from the page cache: left for a reader thread, nothing read
        os.posix_fadvise(f.fd, 0, 0, os.POSIX_FADV_DONTNEED)
        if not in_page_cache(store.path(blob), 2 * BLOCK, BLOCK):
            buffer[:4] = b"\0\0\0\0"
            assert store.read_resident_block(f, meta, 1, buffer) is None
            assert bytes(buffer[:4]) == b"\0\0\0\0"
    # a flipped byte in memory is caught by the same check as on a thread
    with open(store.path(blob), "r+b") as out:
        out.seek(BLOCK + 7)
        out.write(bytes([data[BLOCK + 7] ^ 0xFF]))
        out.seek(0)
        out.read()  # all in memory again
    with store.reader(blob, meta) as f:
        assert store.read_resident_block(f, meta, 0, buffer) is not None
        with pytest.raises(Corrupt, match="block 1"):
            store.read_resident_block(f, meta, 1, buffer)
    # a file cut short is refused when opened for its blob; opened as a file, it is not read
    # here: the thread's read reports it
    os.truncate(store.path(blob), 2 * BLOCK + 10)
    with pytest.raises(Corrupt, match=f"holds {2 * BLOCK + 10} bytes, not {len(data)}"):
        store.reader(blob, meta)
    with store.reader(blob) as f:
        assert store.read_resident_block(f, meta, 2, buffer) is None
        assert store.read_resident_block(f, meta, 3, buffer) is None
        with pytest.raises(Corrupt, match="block 2 is"):
            store.read_block(f, meta, 2)


def test_a_file_whose_path_is_in_memory_opens_without_waiting_others_are_left(tmp_path):
    path = tmp_path / "a" / "b"
    path.parent.mkdir()
    path.write_bytes(b"resident")
    fd = diskio.open_resident(str(path))
    if fd is None:
        pytest.skip("this system cannot open a file only from memory (Linux 5.12+)")
    try:
        assert os.pread(fd, 100, 0) == b"resident"
    finally:
        os.close(fd)
    assert diskio.open_resident(str(tmp_path / "a" / "missing")) is None
    # dropping the kernel's cached paths (as root) leaves it to the slow way
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("2")
    except OSError:
        return
    assert diskio.open_resident(str(path)) is None
    assert path.read_bytes() == b"resident"  # the path is in memory again
    fd = diskio.open_resident(str(path))
    assert fd is not None
    os.close(fd)


def test_a_reader_of_a_deleted_file_is_not_closed_on_the_spot(tmp_path):
    store = BlobStore(str(tmp_path))
    blob = write_blob(store, os.urandom(5000), cache=True)
    f = store.reader(blob, store.meta(blob))
    assert f.can_close_now()
    os.unlink(store.path(blob))  # the last close frees its blocks: a thread does that
    assert not f.can_close_now()
    f.close()
    assert not f.can_close_now()
