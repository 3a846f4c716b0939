"""A storage server's device: the blob store behind its own threads.

Writes go through one ordered thread (one writer per device); reads through a
small pool of their own, so a long fsync never holds back a read. Every method
returns a Deferred and never blocks the reactor.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from deposito.blobstore import BlobMeta, BlobStore, IncomingBlob
from deposito.errors import NoSpace


class Device:
    """Asynchronous access to one BlobStore."""

    def __init__(self, reactor: Any, store: BlobStore, capacity: int) -> None:
        self.reactor = reactor
        self.store = store
        self.capacity = capacity
        self.reserved = 0
        self._writer = ThreadPool(1, 1, "deposito-writer")
        self._readers = ThreadPool(1, 2, "deposito-reader")

    def start(self) -> None:
        self._writer.start()
        self._readers.start()

    def stop(self) -> None:
        self._writer.stop()
        self._readers.stop()

    @property
    def used(self) -> int:
        return self.store.used

    @property
    def count(self) -> int:
        return self.store.count

    def free(self) -> int:
        return max(0, self.capacity - self.store.used - self.reserved)

    def _write(self, fn: Callable[..., Any], *args: Any) -> Deferred:
        return deferToThreadPool(self.reactor, self._writer, fn, *args)

    def _read(self, fn: Callable[..., Any], *args: Any) -> Deferred:
        return deferToThreadPool(self.reactor, self._readers, fn, *args)

    def reserve(self, size: int) -> None:
        """Claim room for a blob about to be written, or NoSpace."""
        if size > self.free():
            raise NoSpace(f"this server has {self.free()} bytes free, {size} needed")
        self.reserved += size

    def release(self, size: int) -> None:
        self.reserved -= size

    def begin(self, meta: BlobMeta) -> IncomingBlob:
        """A new incoming blob; its file is made on the writer thread."""
        return self.store.begin(meta)

    def write(self, incoming: IncomingBlob, data: bytes) -> Deferred:
        return self._write(incoming.write, data)

    def commit(self, incoming: IncomingBlob, sha256: str) -> Deferred:
        return self._write(incoming.commit, sha256)

    def abort(self, incoming: IncomingBlob) -> Deferred:
        return self._write(incoming.abort)

    def delete(self, blob_id: str) -> Deferred:
        return self._write(self.store.delete, blob_id)

    def open(self, blob_id: str) -> Deferred:
        return self._read(self.store.open, blob_id)

    def read(self, f: Any, offset: int, size: int) -> Deferred:
        return self._read(_pread, f, offset, size)

    def close(self, f: Any) -> Deferred:
        return self._read(f.close)

    def inventory(self) -> Deferred:
        return self._read(lambda: list(self.store.inventory()))


def _pread(f: Any, offset: int, size: int) -> bytes:
    return os.pread(f.fileno(), size, offset)
