from __future__ import annotations

import hashlib
import os

import pytest

from deposito.blobstore import BlobMeta, BlobStore, new_blob_id
from deposito.errors import BadArgs, NotFound


def meta(blob, size, name="n", version=1):
    return BlobMeta(blob=blob, name=name, version=version, size=size, sha256="", replicas=2)


def files_under(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_commit_makes_blob_and_metadata_visible_and_counted(tmp_path):
    store = BlobStore(str(tmp_path))
    blob, data = new_blob_id(), os.urandom(100_000)
    incoming = store.begin(meta(blob, len(data), name="user name.txt"))
    incoming.write(data[:40_000])
    incoming.write(data[40_000:])
    assert files_under(store.blobs) == []  # nothing visible until commit
    got = incoming.commit(hashlib.sha256(data).hexdigest())
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


def test_wrong_checksum_or_size_leaves_nothing(tmp_path):
    store = BlobStore(str(tmp_path))
    blob = new_blob_id()
    incoming = store.begin(meta(blob, 3))
    incoming.write(b"abc")
    with pytest.raises(BadArgs):
        incoming.commit("0" * 64)
    incoming.abort()
    short = store.begin(meta(new_blob_id(), 10))
    short.write(b"abc")
    with pytest.raises(BadArgs):
        short.commit(hashlib.sha256(b"abc").hexdigest())
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
    inc.commit(hashlib.sha256(b"x").hexdigest())
    assert store.delete(blob) is True
    assert store.delete(blob) is False
    assert (store.used, store.count) == (0, 0)
    with pytest.raises(NotFound):
        store.open(blob)


@pytest.mark.parametrize("bad", ["../../etc/passwd", "ABC", "0" * 31, "g" * 32, ""])
def test_blob_ids_are_checked(tmp_path, bad):
    store = BlobStore(str(tmp_path))
    with pytest.raises(BadArgs):
        store.path(bad)
