from __future__ import annotations

import hashlib
import json
import os

import attrs
import pytest
import pytest_twisted

from deposito.blobmeta import BLOCK, BlobMeta, BlockSums, Corrupt
from deposito.blobstore import BlobStore, new_blob_id
from deposito.errors import BadArgs, NotFound


def meta(blob, size, name="n", version=1):
    return BlobMeta(blob=blob, name=name, version=version, size=size, sha256="", replicas=2)


def sums(data):
    """What the proxy sends at END: the sha256 and the block checksum digest."""
    b = BlockSums()
    b.update(data)
    return hashlib.sha256(data).hexdigest(), b.digest()


def files_under(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_commit_makes_blob_and_metadata_visible_and_counted(tmp_path):
    store = BlobStore(str(tmp_path))
    blob, data = new_blob_id(), os.urandom(100_000)
    incoming = store.begin(meta(blob, len(data), name="user name.txt"))
    incoming.write(data[:40_000])
    incoming.write(data[40_000:])
    assert files_under(store.blobs) == []  # nothing visible until commit
    got = incoming.commit(*sums(data))
    assert got.sha256 == hashlib.sha256(data).hexdigest()
    f, size = store.open(blob)
    with f:
        assert f.read() == data and size == len(data)
    assert store.meta(blob).name == "user name.txt"
    assert (store.used, store.count) == (len(data), 1)
    assert os.listdir(store.incoming) == []
    # user names never become paths
    assert all("user" not in p for p in files_under(str(tmp_path)))
    assert [m.blob for m in BlobStore(str(tmp_path)).inventory()] == [blob]


def test_every_blob_directory_is_made_at_start_so_a_write_makes_none(tmp_path, monkeypatch):
    """A new store makes its 256 blob directories at once: a blob written
    then makes no directory (no mkdir, no fsync of blobs/, on its way). One
    removed by hand is made again by the next start, or by a write."""
    store = BlobStore(str(tmp_path))
    assert sorted(os.listdir(store.blobs)) == [f"{i:02x}" for i in range(256)]
    made = []
    real_makedirs = os.makedirs
    monkeypatch.setattr(os, "makedirs", lambda path, *a, **k: (made.append(path), real_makedirs(path, *a, **k)))
    for i in range(20):  # in directories 00 to 13: ab and cd, removed below, stay empty
        blob, data = f"{i:02x}" + new_blob_id()[2:], os.urandom(100)
        incoming = store.begin(meta(blob, len(data)))
        incoming.write(data)
        incoming.commit(*sums(data))
    assert made == []
    monkeypatch.undo()
    os.rmdir(os.path.join(store.blobs, "ab"))
    assert os.path.isdir(os.path.join(BlobStore(str(tmp_path)).blobs, "ab"))
    os.rmdir(os.path.join(store.blobs, "cd"))
    blob, data = "cd" + new_blob_id()[2:], b"x"
    incoming = store.begin(meta(blob, 1))
    incoming.write(data)
    incoming.commit(*sums(data))
    assert store.meta(blob).size == 1


def test_wrong_checksum_or_size_leaves_nothing(tmp_path):
    store = BlobStore(str(tmp_path))
    blob = new_blob_id()
    incoming = store.begin(meta(blob, 3))
    incoming.write(b"abc")
    with pytest.raises(BadArgs, match="checksum"):
        incoming.commit(sums(b"abc")[0], sums(b"abd")[1])
    incoming.abort()
    short = store.begin(meta(new_blob_id(), 10))
    short.write(b"abc")
    with pytest.raises(BadArgs):
        short.commit(*sums(b"abc"))
    short.abort()
    with pytest.raises(BadArgs):
        store.begin(meta(new_blob_id(), 2)).write(b"abc")
    assert files_under(str(tmp_path / "blobs")) == []
    assert os.listdir(store.incoming) == [] or all(p.endswith(".tmp") for p in os.listdir(store.incoming))


def test_leftover_temp_files_are_removed_on_start(tmp_path):
    store = BlobStore(str(tmp_path))
    store.begin(meta(new_blob_id(), 10)).write(b"half")
    assert os.listdir(store.incoming)
    store = BlobStore(str(tmp_path))
    assert os.listdir(store.incoming) == []


def test_delete_and_missing(tmp_path):
    store = BlobStore(str(tmp_path))
    blob = new_blob_id()
    inc = store.begin(meta(blob, 1))
    inc.write(b"x")
    inc.commit(*sums(b"x"))
    assert store.delete(blob) is True
    assert store.delete(blob) is False
    assert (store.used, store.count) == (0, 0)
    with pytest.raises(NotFound):
        store.open(blob)


def test_delete_together(tmp_path):
    store = BlobStore(str(tmp_path))
    blobs = [new_blob_id() for _ in range(5)]
    for b in blobs:
        inc = store.begin(meta(b, 2))
        inc.write(b"ab")
        inc.commit(*sums(b"ab"))
    results = store.delete_together(blobs[:3] + [new_blob_id(), "bad"])
    assert [r[1] for r in results[:4]] == [True, True, True, False] and all(ok for ok, _ in results[:4])
    assert results[4][0] is False and isinstance(results[4][1], BadArgs)
    assert [os.path.exists(store.path(b)) for b in blobs] == [False, False, False, True, True]
    assert (store.used, store.count) == (4, 2)


@pytest.mark.parametrize("bad", ["../../etc/passwd", "ABC", "0" * 31, "g" * 32, ""])
def test_blob_ids_are_checked(tmp_path, bad):
    store = BlobStore(str(tmp_path))
    with pytest.raises(BadArgs):
        store.path(bad)


def test_block_sums_do_not_depend_on_how_the_stream_is_cut():
    data = os.urandom(2 * BLOCK + 12345)
    whole = BlockSums()
    whole.update(data)
    assert len(whole.blocks) == 3
    import random
    rng = random.Random(7)
    for _ in range(5):
        cut, i = BlockSums(), 0
        while i < len(data):
            n = rng.choice([1, 100, 4096, BLOCK - 1, BLOCK, BLOCK + 1, 3 << 20])
            cut.update(data[i:i + n])
            i += n
        assert cut.blocks == whole.blocks and cut.digest() == whole.digest()
    flipped = bytearray(data)
    flipped[BLOCK + 5] ^= 1
    other = BlockSums()
    other.update(bytes(flipped))
    assert other.digest() != whole.digest()
    assert [a == b for a, b in zip(other.blocks, whole.blocks)] == [True, False, True]
    assert BlockSums().digest() == BlockSums().digest()  # an empty file has a digest too


def test_a_large_blob_written_in_many_pieces_reads_back_and_checks(tmp_path):
    """Past the write-behind size the bytes are pushed to disk as they come:
    what lands must still be exactly what was sent, each block checked."""
    store = BlobStore(str(tmp_path))
    blob, data = new_blob_id(), os.urandom(20 * BLOCK + 999)
    incoming = store.begin(meta(blob, len(data)))
    for i in range(0, len(data), 3 << 20):
        incoming.write(data[i:i + (3 << 20)])
    incoming.commit(*sums(data))
    assert store.check(blob).size == len(data)
    f, size = store.open(blob)
    with f:
        assert size == len(data) and hashlib.sha256(f.read()).digest() == hashlib.sha256(data).digest()


def test_a_blob_from_before_crc32c_is_still_read_and_checked(tmp_path):
    """Blobs written with zlib's CRC-32 (metadata without "checksum") stay readable."""
    import zlib

    store = BlobStore(str(tmp_path))
    blob, data = new_blob_id(), os.urandom(BLOCK + 10)
    incoming = store.begin(meta(blob, len(data)))
    incoming.write(data)
    incoming.commit(*sums(data))
    old = json.loads(store.meta(blob).to_json())
    assert old["checksum"] == "crc32c"
    # as blobs were kept before: metadata in a .meta file beside, CRC-32 blocks
    os.removexattr(store.path(blob), "user.deposito")
    del old["checksum"]
    old["blocks"] = [zlib.crc32(data[:BLOCK]), zlib.crc32(data[BLOCK:])]
    with open(store.path(blob) + ".meta", "w") as f:
        json.dump(old, f)
    assert store.check(blob).checksum == "crc32"
    with open(store.path(blob), "r+b") as f:
        f.seek(BLOCK + 3)
        f.write(bytes([data[BLOCK + 3] ^ 1]))
    with pytest.raises(Corrupt, match="block 1"):
        store.check(blob)


def test_a_blob_from_before_block_checksums_gets_them_once_its_bytes_match_its_sha256(tmp_path):
    """The first servers kept no block checksums: every such copy was
    served as corrupt and quarantined after an upgrade (19 of 21 files a
    review stored with that version were lost to its clients). Its bytes
    are now read whole against its sha256 once, and its checksums kept."""
    store = BlobStore(str(tmp_path))
    blobs = {}
    for size in (5, BLOCK + 10):
        blob, data = new_blob_id(), os.urandom(size)
        incoming = store.begin(meta(blob, len(data)))
        incoming.write(data)
        incoming.commit(*sums(data))
        old = json.loads(store.meta(blob).to_json())
        os.removexattr(store.path(blob), "user.deposito")  # as the first servers kept it: beside, no blocks
        for key in ("checksum", "blocks", "cached", "meta"):
            del old[key]
        with open(store.path(blob) + ".meta", "w") as f:
            json.dump(old, f)
        blobs[blob] = data
    for blob, data in blobs.items():
        checked = store.check(blob)
        assert checked.checksum == "crc32c" and len(checked.blocks) == (len(data) + BLOCK - 1) // BLOCK
        assert json.loads(open(store.path(blob) + ".meta").read())["blocks"] == list(checked.blocks)  # kept
        with store.reader(blob, checked) as f:
            assert store.read_block(f, checked, 0) == data[:BLOCK]
    # one whose bytes rotted meanwhile is corrupt, as before
    blob, data = new_blob_id(), b"x" * 100
    incoming = store.begin(meta(blob, len(data)))
    incoming.write(data)
    incoming.commit(*sums(data))
    old = json.loads(store.meta(blob).to_json())
    os.removexattr(store.path(blob), "user.deposito")
    del old["blocks"]
    with open(store.path(blob) + ".meta", "w") as f:
        json.dump(old, f)
    with open(store.path(blob), "r+b") as f:
        f.write(b"y")
    with pytest.raises(Corrupt, match="sha256"):
        store.check(blob)


def test_metadata_lives_in_the_blob_file_or_beside_it_when_large(tmp_path):
    """Small metadata is an extended attribute of the blob (one file, one
    fsync); a big blob's block list goes to a .meta file. Both read back, and
    delete and quarantine take both along."""
    store = BlobStore(str(tmp_path))
    small, small_data = new_blob_id(), os.urandom(5000)
    inc = store.begin(meta(small, len(small_data)))
    inc.write(small_data)
    inc.commit(*sums(small_data))
    assert os.getxattr(store.path(small), "user.deposito") == store.meta(small).to_json()
    assert not os.path.exists(store.path(small) + ".meta")

    big, big_data = new_blob_id(), os.urandom(300 * BLOCK)  # 300 block checksums: too many for the attribute
    inc = store.begin(meta(big, len(big_data)))
    for i in range(0, len(big_data), 8 * BLOCK):
        inc.write(big_data[i:i + 8 * BLOCK])
    inc.commit(*sums(big_data))
    assert os.path.exists(store.path(big) + ".meta")
    assert len(store.meta(big).blocks) == 300
    assert {m.blob for m in BlobStore(str(tmp_path)).inventory()} == {small, big}

    store.quarantine(small)
    assert os.getxattr(os.path.join(str(tmp_path), "quarantine", small), "user.deposito")
    assert store.delete(big) and not os.path.exists(store.path(big) + ".meta")
    assert (store.used, store.count) == (0, 0)


def test_a_wanted_count_kept_later_replaces_the_one_written_in_the_attribute_or_beside(tmp_path):
    """set_wanted rewrites the count in the metadata, wherever it is, and
    changes nothing else of it: read back here and by a new store's
    inventory (what a rebuild reads); nothing is left in incoming/."""
    store = BlobStore(str(tmp_path))
    blobs = {}
    for size in (5000, 300 * BLOCK):  # metadata in the attribute, and beside the blob
        blob, data = new_blob_id(), os.urandom(size)
        inc = store.begin(meta(blob, len(data)))
        for i in range(0, len(data), 8 * BLOCK):
            inc.write(data[i:i + 8 * BLOCK])
        before = inc.commit(*sums(data))
        blobs[blob] = (before, data)
    for blob, (before, data) in blobs.items():
        assert store.set_wanted(blob, 1)
        assert store.meta(blob) == attrs.evolve(before, replicas=1)
        f, _ = store.open(blob)
        with f:
            assert f.read() == data
    assert {m.blob: m.replicas for m in BlobStore(str(tmp_path)).inventory()} == dict.fromkeys(blobs, 1)
    assert not store.set_wanted(new_blob_id(), 1)
    assert os.listdir(store.incoming) == []
    small, big = blobs
    assert sorted(os.path.basename(p) for p in files_under(store.blobs)) == sorted([small, big, big + ".meta"])


def test_a_blob_deleted_twice_keeps_the_grace_of_its_last_delete(tmp_path):
    """The same blob written to a server again (a copy made anew) and
    deleted again: the first delete's grace does not cut the second's short."""
    now = [100.0]
    store = BlobStore(str(tmp_path), grace=10, clock=lambda: now[0])
    blob, data = new_blob_id(), os.urandom(5000)
    for _ in range(2):
        inc = store.begin(meta(blob, len(data)))
        inc.write(data)
        inc.commit(*sums(data))
        assert store.delete(blob)
        now[0] += 6
    assert store.empty_trash() == 0  # the first delete's grace is over, not the second's
    reader, got = store.open_trashed(blob)
    reader.close()
    assert got.size == len(data)
    now[0] += 5
    assert store.empty_trash() == 1 and os.listdir(store.trash) == []
    assert not store.set_wanted(blob, 1) and files_under(store.blobs) == []  # no metadata made for a blob gone


def test_reads_of_a_blob_being_deleted_never_see_half_a_move(tmp_path, monkeypatch):
    """A blob whose metadata is beside it (.meta): a delete moves the two
    files one after the other, and a read meanwhile finds the blob whole,
    here or in trash/, never 'its metadata is lost' (taken for corrupt)."""
    import threading
    import time

    import deposito.blobstore
    from deposito.device import _open_with_meta

    monkeypatch.setattr(deposito.blobstore, "_set_meta_attr", lambda fd, m: False)
    store = BlobStore(str(tmp_path), grace=1000)
    blob, data = new_blob_id(), os.urandom(20_000)
    inc = store.begin(meta(blob, len(data)))
    inc.write(data)
    inc.commit(*sums(data))
    seen: dict[str, int] = {}
    stop = time.monotonic() + 2.0
    back = threading.Lock()

    def read() -> None:
        while time.monotonic() < stop:
            with back:
                try:
                    reader, _ = _open_with_meta(store, blob)
                    reader.close()
                    outcome = "ok"
                except Exception as e:
                    outcome = type(e).__name__
            seen[outcome] = seen.get(outcome, 0) + 1

    reading = threading.Thread(target=read)
    reading.start()
    while time.monotonic() < stop:
        store.delete(blob)
        with back:  # put it back, unseen by the reader
            for name in (blob + ".meta", blob):
                os.replace(os.path.join(store.trash, name), os.path.join(store._dir(blob), name))
            store.count, store.used = 1, len(data)
    reading.join()
    assert set(seen) == {"ok"}, seen


def test_a_blob_whose_metadata_is_lost_or_unreadable_is_corrupt_not_absent(tmp_path):
    """Without its metadata a blob cannot be checked, so it is not served:
    reading it or checking it says Corrupt (the scrub then moves it aside),
    and inventories leave it out; a blob that is not there is NotFound."""
    store = BlobStore(str(tmp_path))
    blobs = {}
    for how in ("removed", "garbage", "another blob's", "big, file removed", "big, file garbage"):
        blob, data = new_blob_id(), os.urandom(300 * BLOCK if how.startswith("big") else 5000)
        inc = store.begin(meta(blob, len(data)))
        inc.write(data)
        inc.commit(*sums(data))
        blobs[how] = blob
    path = {how: store.path(blob) for how, blob in blobs.items()}
    os.removexattr(path["removed"], "user.deposito")
    os.setxattr(path["garbage"], "user.deposito", b"{not json")
    other = json.loads(os.getxattr(path["another blob's"], "user.deposito"))
    other["blob"] = new_blob_id()
    os.setxattr(path["another blob's"], "user.deposito", json.dumps(other).encode())
    os.unlink(path["big, file removed"] + ".meta")
    with open(path["big, file garbage"] + ".meta", "wb") as f:
        f.write(b"\x00" * 100)
    for how, blob in blobs.items():
        with pytest.raises(Corrupt):
            store.meta(blob)
        with pytest.raises(Corrupt):
            store.check(blob)
    assert list(store.inventory()) == [] and sorted(store.blob_ids()) == sorted(blobs.values())
    with pytest.raises(NotFound):
        store.meta(new_blob_id())
    store.quarantine(blobs["removed"])
    assert not os.path.exists(path["removed"]) and store.count == len(blobs) - 1


@pytest.mark.parametrize("together", [True, False])
def test_blobs_committed_together_each_get_their_own_outcome(tmp_path, monkeypatch, together):
    """A batch shares its flushes (syncfs), or falls back to one fsync per
    file: either way good blobs land whole, a bad one fails alone and leaves
    nothing."""
    from deposito import diskio

    calls = []
    real = diskio.sync_filesystem
    monkeypatch.setattr(diskio, "sync_filesystem", lambda path: calls.append(path) or (together and real(path)))
    store = BlobStore(str(tmp_path))
    calls.clear()  # (the store's directories, made at its start)
    datas = [os.urandom(n) for n in (10, 5000, 3 * BLOCK + 1, 0)]
    batch = []
    for data in datas:
        inc = store.begin(meta(new_blob_id(), len(data)))
        inc.write(data)
        batch.append((inc, *sums(data)))
    bad = store.begin(meta(new_blob_id(), 3))
    bad.write(b"abc")
    batch.insert(2, (bad, *sums(b"abd")))
    results = store.commit_together(batch)
    assert [ok for ok, _ in results] == [True, True, False, True, True]
    assert isinstance(results[2][1], BadArgs)
    bad.abort()
    for (inc, _, _), data in zip([b for b in batch if b[0] is not bad], datas):
        f, size = store.open(inc.meta.blob)
        with f:
            assert f.read() == data
        assert store.check(inc.meta.blob).size == len(data)
    assert store.count == 4 and os.listdir(store.incoming) == []
    assert len(calls) == (2 if together else 1)  # bytes, then renames; or refused once


def put_blob(store, data, blob=None):
    blob = blob or new_blob_id()
    inc = store.begin(meta(blob, len(data)))
    inc.write(data)
    inc.commit(*sums(data))
    return blob


def test_a_blob_file_cut_short_or_grown_is_left_out_of_inventories_and_refused_when_opened(tmp_path):
    """A rebuild takes in what the full inventory lists: a copy whose file
    is not the size its metadata says is not in it (reads and the scrub
    find it corrupt); opened for a read, it is refused before any byte."""
    store = BlobStore(str(tmp_path))
    blobs = {}
    for how in ("whole", "cut short", "grown"):
        blob, data = new_blob_id(), os.urandom(2 * BLOCK)
        inc = store.begin(meta(blob, len(data)))
        inc.write(data)
        inc.commit(*sums(data))
        blobs[how] = blob
    os.truncate(store.path(blobs["cut short"]), BLOCK)
    with open(store.path(blobs["grown"]), "ab") as f:
        f.write(b"more")
    assert [m.blob for m in store.inventory()] == [blobs["whole"]]
    assert sorted(store.blob_ids()) == sorted(blobs.values())
    store.reader(blobs["whole"], store.meta(blobs["whole"])).close()
    for how in ("cut short", "grown"):
        with pytest.raises(Corrupt, match="bytes, not"):
            store.reader(blobs[how], store.meta(blobs[how]))
        with pytest.raises(Corrupt):
            store.check(blobs[how])
    # a file that cannot be read at all (here a directory in its place) is corrupt too, and moved aside
    meta_of_whole = store.meta(blobs["whole"])
    os.unlink(store.path(blobs["whole"]))
    os.mkdir(store.path(blobs["whole"]))
    with pytest.raises(Corrupt, match="cannot be read"), store.reader(blobs["whole"]) as f:
        store.read_block(f, meta_of_whole, 0)
    with pytest.raises(Corrupt):
        store.check(blobs["whole"])
    store.quarantine(blobs["whole"])
    assert not os.path.exists(store.path(blobs["whole"]))


@pytest_twisted.inlineCallbacks
def test_a_chunked_inventory_yields_every_blob_once_in_id_order(tmp_path):
    """Chunk by chunk, from the device's reader thread: each blob exactly
    once, ids increasing across chunks, and blobs without readable metadata
    left out."""
    from twisted.internet import reactor

    from deposito.device import Device

    store = BlobStore(str(tmp_path))
    blobs = sorted(put_blob(store, os.urandom(i % 7)) for i in range(301))
    stray = os.path.join(store.blobs, "ab", "ab" + "0" * 30)  # a blob file with no metadata at all
    os.makedirs(os.path.dirname(stray), exist_ok=True)
    open(stray, "wb").close()
    os.makedirs(os.path.join(store.blobs, "zz"))  # not a blob directory
    device = Device(reactor, store, 1 << 30)
    device.start()
    try:
        for size in (1, 7, 301, 1000):
            cursor, seen, chunks = device.inventory(size), [], []
            more = True
            while more:
                entries, more = yield cursor.next()
                chunks.append(len(entries))
                seen += [m.blob for m in entries]
            assert seen == blobs, size
            assert all(n == size for n in chunks[:-1]) and chunks[-1] <= size and (chunks[-1] or len(chunks) == 1)
    finally:
        device.stop()
    assert [m.blob for m in store.inventory(after=blobs[150])] == blobs[151:]


def test_start_counts_blobs_from_the_directories_and_clears_incoming(tmp_path, monkeypatch):
    store = BlobStore(str(tmp_path))
    sizes = [0, 1, 5000, 3 * BLOCK + 1]
    blobs = [put_blob(store, os.urandom(n)) for n in sizes]
    big = put_blob(store, os.urandom(300 * BLOCK))  # metadata beside it, in a .meta file
    half_written = os.path.join(store.incoming, new_blob_id() + ".1234.tmp")
    with open(half_written, "wb") as f:
        f.write(b"x" * 100)

    def never(self, blob_id):
        raise AssertionError("a blob's metadata was read just to count it")

    monkeypatch.setattr(BlobStore, "meta", never)
    again = BlobStore(str(tmp_path))
    assert (again.used, again.count) == (sum(sizes) + 300 * BLOCK, 5)
    assert os.listdir(again.incoming) == []
    os.unlink(again.path(blobs[2]))  # deleted behind the store's back: its .meta-less entry is gone
    os.unlink(again.path(big))  # and this one leaves a .meta file behind
    assert again.sweep() == 1 and not os.path.exists(again.path(big) + ".meta")
    assert (again.used, again.count) == (sum(sizes) - 5000, 3)


def test_blob_ids_come_in_order_from_the_directories_alone(tmp_path, monkeypatch):
    from deposito import blobstore as bs

    store = bs.BlobStore(str(tmp_path))
    made = sorted(f"{n:02x}" + "ab" * 15 for n in (3, 200, 7, 7 * 16))
    for blob in made:
        os.makedirs(store._dir(blob), exist_ok=True)
        open(store.path(blob), "wb").close()
    monkeypatch.setattr(bs, "meta_at", lambda *a: pytest.fail("a listing of ids read metadata"))
    assert list(store.blob_ids()) == made
    assert list(store.blob_ids(after=made[1])) == made[2:]


def test_a_blob_whose_metadata_the_disk_cannot_read_is_corrupt(tmp_path, monkeypatch):
    """A metadata read the disk fails (EIO, EACCES) is a copy that cannot be
    served: Corrupt, so the scrub and reads move it aside and it is made
    again elsewhere, and listings leave it out (before: an OSError, answered
    as the server's own fault, the copy counted for good, and a full
    listing cut at it)."""
    import builtins
    import errno

    from deposito import blobstore

    store = BlobStore(str(tmp_path))
    ok, bad, big = new_blob_id(), new_blob_id(), new_blob_id()
    for blob, size in ((ok, 5000), (bad, 5000), (big, 300 * BLOCK)):  # big: its metadata in a .meta file
        data = os.urandom(size)
        inc = store.begin(meta(blob, len(data)))
        inc.write(data)
        inc.commit(*sums(data))
    real_getxattr, real_open = os.getxattr, builtins.open

    def getxattr(path, *args, **kwargs):
        if os.path.basename(str(path)) == bad:
            raise OSError(errno.EIO, "Input/output error")
        return real_getxattr(path, *args, **kwargs)

    def open_(path, *args, **kwargs):
        if str(path).endswith(".meta"):
            raise OSError(errno.EACCES, "Permission denied")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(blobstore.os, "getxattr", getxattr)
    monkeypatch.setattr(builtins, "open", open_)
    with pytest.raises(Corrupt, match="Input/output error"):
        store.meta(bad)
    with pytest.raises(Corrupt, match="Permission denied"):
        store.meta(big)
    with pytest.raises(Corrupt):
        store.check(bad)
    assert [m.blob for m in store.inventory()] == [ok]


def test_a_store_whose_folders_are_gone_lists_nothing_and_has_no_room(tmp_path):
    """--data's folders gone from under a running server (removed, or its
    disk unmounted, leaving an empty folder on another): listings and the
    scrub's sweep find no blob, so the proxies find its copies missing and
    make them again elsewhere, and it offers no room (before: every listing
    and scrub failed with FileNotFoundError, the copies were counted
    healthy, and PUTs were placed there and failed)."""
    import shutil

    from twisted.internet import task

    from deposito.device import Device

    store = BlobStore(str(tmp_path))
    blob, data = new_blob_id(), os.urandom(5000)
    inc = store.begin(meta(blob, len(data)))
    inc.write(data)
    inc.commit(*sums(data))
    device = Device(task.Clock(), store, capacity=1 << 30)
    assert device.room() > 0
    shutil.rmtree(store.blobs)
    shutil.rmtree(store.incoming)
    assert list(store.inventory()) == [] and list(store.blob_ids()) == []
    store.sweep()
    assert (store.used, store.count) == (0, 0)
    with pytest.raises(OSError):
        device.room()


def test_a_blob_folder_the_disk_cannot_list_lists_nothing(tmp_path, monkeypatch):
    """A blob folder whose listing the disk refuses (EACCES, EIO): its
    blobs are left out of listings and the sweep, the others listed (before:
    every listing and scrub failed, and a rebuild waited on the server for
    good)."""
    import errno

    from deposito import blobstore

    store = BlobStore(str(tmp_path))
    ids = sorted(new_blob_id() for _ in range(8))
    for blob in ids:
        inc = store.begin(meta(blob, 10))
        inc.write(b"0123456789")
        inc.commit(*sums(b"0123456789"))
    bad = os.path.dirname(store.path(ids[0]))
    real_listdir = os.listdir

    def listdir(path):
        if str(path) == bad:
            raise OSError(errno.EACCES, "Permission denied")
        return real_listdir(path)

    monkeypatch.setattr(blobstore.os, "listdir", listdir)
    kept = [b for b in ids if os.path.dirname(store.path(b)) != bad]
    assert [m.blob for m in store.inventory()] == kept and list(store.blob_ids()) == kept
    store.sweep()
    assert store.count == len(kept)


def test_a_store_starts_though_a_leftover_of_incoming_cannot_be_removed(tmp_path, monkeypatch):
    """What an interrupted write left in incoming/ is cleared at the start;
    one file the disk will not let go of (immutable, or an unlink failing
    with EIO) stays, and the server starts all the same (before: it could
    never start again, and its good copies went unserved)."""
    from deposito import blobstore

    BlobStore(str(tmp_path))
    stuck = tmp_path / "incoming" / "leftover.tmp"
    stuck.write_bytes(b"x")
    monkeypatch.setattr(blobstore.shutil, "rmtree", lambda path, ignore_errors=False: None)  # nothing goes
    store = BlobStore(str(tmp_path))
    assert stuck.exists() and os.path.isdir(store.incoming) and os.path.isdir(store.trash)


def test_blob_metadata_keeps_every_field_through_its_json():
    meta = BlobMeta("ab" * 16, "b/k é", 3, 5 << 20, "f" * 64, 2, (1, 2, 3, 4, 5), checksum="crc32", cached=True,
                    meta='{"etag":"x"}')
    raw = meta.to_json()
    assert sorted(json.loads(raw)) == sorted(field.name for field in attrs.fields(BlobMeta))
    assert BlobMeta.from_json(raw) == meta
