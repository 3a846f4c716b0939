"""A storage server's device: the blob store behind its own threads.

Writes go through one ordered thread (one writer per device). Commits (flush,
rename, flush of the directory) have a thread of their own, and the blobs
that finish while one batch commits are committed together in the next,
sharing its flushes (group commit); reads have their own pool too, so a long
flush never holds back a read. No method blocks the reactor: each returns a
Deferred, except a read that is served only from the page cache.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections import OrderedDict
from typing import Any, Callable, Iterator

from twisted.internet import task
from twisted.internet.defer import Deferred, DeferredSemaphore, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from deposito import diskio
from deposito.batching import Batches, IBatchReactor
from deposito.blobmeta import BLOCK, BlobMeta, Corrupt
from deposito.blobstore import BlobStore, IncomingBlob, Stopped
from deposito.errors import DepositoError, Internal, NoSpace, NotFound, Unavailable
from deposito.interfaces import IDevice, IInventoryCursor

EMPTY_EVERY = 1.0  # seconds between two looks at trash/, at least (see BlobStore.empty_trash)
# A copy this big or smaller is read whole while its asker waits (see checked); a bigger
# one is read in the background, one at a time, as the reads share the reader threads with GETs
CHECK_NOW_MAX = 64 << 20
CHECKED_FOR = 600.0  # seconds a bigger copy read whole and found good is taken for good unread
CHECKS_WAITING = 256  # bigger copies waiting to be read whole, at most


@implementer(IDevice)
class Device:
    """Asynchronous access to one BlobStore."""

    log = Logger()
    # The metadata of this many small blobs (under diskio.DIRECT_MIN) is kept
    # in memory, so a blob whose path is in memory opens on the reactor thread.
    kept = 8192

    fault_hold = 60.0  # seconds a disk that could not be written is offered no new copies; then it is tried again
    full_hold = 10.0  # the same, for a disk that refused a write for want of room

    def __init__(self, reactor: IBatchReactor, store: BlobStore, capacity: int) -> None:
        self.reactor = reactor
        self.store = store
        self.capacity = capacity
        self.reserved = 0
        self._writer = ThreadPool(1, 1, "deposito-writer")
        self._readers = ThreadPool(1, 2, "deposito-reader")
        self._commits: Batches[tuple[IncomingBlob, str, str, bytes]] = Batches(
            reactor, self._commit_batch, "deposito-committer")
        self._deletes: Batches[str] = Batches(reactor, store.delete_together, "deposito-deleter")
        self.corrupt_listeners: list[Callable[[str, str], None]] = []
        self.unmovable: set[str] = set()  # corrupt blobs that could not be moved aside (see corrupt)
        self._fault_until = 0.0  # time.monotonic() until which the disk is taken for unwritable (see failed)
        self._faulty = False  # a write failed, and no write went through since (see cannot_write)
        self._probing = False
        self._said: str | bool = False  # "full" or "fault" once said (once till it takes writes again)
        self._held_for = 0.0  # the last hold's length, also that of the next one if a probe fails
        self._now = memoryview(bytearray(BLOCK))  # blocks read on the reactor thread go here
        self._metas: OrderedDict[str, BlobMeta] = OrderedDict()
        self._found_good: OrderedDict[str, float] = OrderedDict()  # copies over CHECK_NOW_MAX: when read good
        self._checks = DeferredSemaphore(1)  # the reads checked() starts, one at a time
        self._checking: set[str] = set()  # the copies they are for, read or waiting
        self._stopping = threading.Event()
        self._emptying = task.LoopingCall(self._empty_trash)  # what deletes leave when none follow
        self._emptying.clock = reactor

    def start(self) -> None:
        for pool in (self._writer, self._readers, self._commits, self._deletes):
            pool.start()
        self._emptying.start(max(self.store.grace, EMPTY_EVERY), now=False)  # (a grace of 0: not every turn)

    def stop(self) -> None:
        self._stopping.set()  # whole reads under way give up (the pools wait for their threads)
        if self._emptying.running:
            self._emptying.stop()
        for pool in (self._writer, self._readers, self._commits, self._deletes):
            pool.stop()

    def _empty_trash(self) -> None:
        self._write(self.store.empty_trash).addErrback(
            lambda f: self.log.warn("cannot empty trash/: {why}", why=f.getErrorMessage()))

    @property
    def used(self) -> int:
        return self.store.used

    @property
    def count(self) -> int:
        return self.store.count

    def free(self) -> int:
        return max(0, self.capacity - self.store.used - self.reserved)

    def room(self) -> int:
        """What it holds plus what its disk could still take, in bytes: none
        more once its inodes are used up (a new blob is a new file).
        OSError when its folders are not there (a disk unmounted from under
        --data leaves an empty folder on another)."""
        for folder in (self.store.blobs, self.store.incoming):
            os.stat(folder)
        disk = os.statvfs(self.store.root)
        free = disk.f_bavail * disk.f_frsize
        if disk.f_files and disk.f_favail < 2:  # (f_files 0: a filesystem without an inode count)
            free = 0
        return self.store.used + free

    def failed(self, failure: Failure) -> DepositoError | None:
        """What a write or delete that failed on the disk tells the proxy:
        NoSpace for a disk out of room (or of inodes); for a disk that
        cannot be written (read-only, failing), an Internal saying so, said
        in the log once, and no new copies come here for ``fault_hold``
        seconds (see :meth:`cannot_write`). None for any other error."""
        error = failure.value
        if isinstance(error, NoSpace):  # a write found the disk full (diskio.write_all)
            self._full()
            return error
        if not isinstance(error, OSError):
            return None
        if error.errno == errno.ENOSPC:  # (its free space said there was room: out of inodes, say)
            self._full()
            return NoSpace("disk full")
        if error.errno not in (errno.EROFS, errno.EIO, errno.EACCES, errno.EPERM):
            return None
        if self._said != "fault":  # (also after "full": a failing disk says more)
            self._said = "fault"
            self.log.critical("the disk cannot be written ({why}): no new copies come here for {s:.0f} s,"
                              " then until a file can be written there again", why=error.strerror,
                              s=self.fault_hold)
        self._hold(self.fault_hold)
        return Internal(f"the disk cannot be written ({error.strerror})")

    def _full(self) -> None:
        if not self._said:
            self._said = "full"
            self.log.warn("the disk is full: no new copies come here for {s:.0f} s,"
                          " then until a file can be written there again", s=self.full_hold)
        self._hold(self.full_hold)

    def _hold(self, seconds: float) -> None:
        self._faulty = True
        self._held_for = seconds
        self._fault_until = max(self._fault_until, time.monotonic() + seconds)

    def cannot_write(self) -> bool:
        """True while the disk is taken for unwritable (see :meth:`failed`):
        for the hold, then until a file made, written and synced on the
        writer thread shows it takes writes again (tried once per hold)."""
        if not self._faulty:
            return False
        if not self._probing and time.monotonic() >= self._fault_until:
            self._probing = True
            self._write(self.store.probe).addCallbacks(self._writable, self._still_unwritable)
        return True

    def _writable(self, _: object) -> None:
        self._probing = self._faulty = self._said = False
        self.log.info("the disk takes new files again: new copies may come here")

    def _still_unwritable(self, failure: Failure) -> None:
        self._probing = False
        self._fault_until = time.monotonic() + self._held_for
        self.log.debug("the disk still takes no new file ({why})", why=failure.getErrorMessage())

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

    def begin(self, meta: BlobMeta, cache: bool = False) -> IncomingBlob:
        """A new incoming blob; its file is made on the writer thread."""
        return self.store.begin(meta, cache)

    def write(self, incoming: IncomingBlob, pieces: list[bytes]) -> Deferred:
        """Append ``pieces`` to the blob, in order (each is copied once, to the disk's buffer)."""
        return self._write(_write_pieces, incoming, pieces)

    def write_piece(self, incoming: IncomingBlob, buffer: Any, length: int) -> Deferred:
        """Append the first ``length`` bytes of ``buffer`` (a diskio.take_buffer
        buffer, left alone until this fires) to the blob."""
        return self._write(_write_piece, incoming, buffer, length)

    def commit(self, incoming: IncomingBlob, sha256: str, blocks: str, last: bytes = b"") -> Deferred:
        """Write ``last`` (if any), then make the blob durable and visible;
        call only once every earlier write has completed. Fires with its
        BlobMeta."""
        d = self._commits.submit((incoming, sha256, blocks, last))
        d.addCallback(self._remember)
        return d

    def _remember(self, meta: BlobMeta) -> BlobMeta:
        """Keep a small blob's metadata. It is used only once the blob's own
        path has opened, and a file there is only ever that blob (ids are
        never reused for other bytes): kept for a blob deleted meanwhile, it
        is never used, and the LRU drops it."""
        if meta.size < diskio.DIRECT_MIN:
            self._metas[meta.blob] = meta
            self._metas.move_to_end(meta.blob)
            if len(self._metas) > self.kept:
                self._metas.popitem(last=False)
        return meta

    def _forget(self, blob_id: str) -> None:
        self._metas.pop(blob_id, None)

    def _gone(self, blob_id: str) -> None:
        """The copy is deleted or set aside: nothing kept of it."""
        self._forget(blob_id)
        self._found_good.pop(blob_id, None)

    def _commit_batch(self, batch: list[tuple[IncomingBlob, str, str, bytes]]) -> list[tuple[bool, object]]:
        """On the committer thread: the last pieces written, then one group commit."""
        results: list[tuple[bool, object]] = [(False, None)] * len(batch)
        todo: list[int] = []
        for i, (incoming, _, _, last) in enumerate(batch):
            try:
                if last:
                    incoming.write(last)
                todo.append(i)
            except Exception as e:
                results[i] = (False, e)
        for i, result in zip(todo, self.store.commit_together([batch[i][:3] for i in todo])):
            results[i] = result
        return results

    def abort(self, incoming: IncomingBlob) -> Deferred:
        """Throw an unfinished blob away; a file that cannot be removed (the
        disk turned read-only, say) is said, and left to the next start, which
        clears incoming/."""
        def stays(failure: Failure) -> None:
            self.log.warn("cannot remove the unfinished upload {path}: {why}", path=incoming.path,
                          why=failure.getErrorMessage())
        return self._write(incoming.abort).addErrback(stays)

    def delete(self, blob_id: str) -> Deferred:
        """Fires with whether the blob was there; the deletes asked for
        meanwhile are made durable together."""
        self._gone(blob_id)
        return self._deletes.submit(blob_id)

    def set_wanted(self, blob_id: str, replicas: int) -> Deferred:
        """Fires with whether the blob is here, its wanted count kept (see BlobStore.set_wanted)."""
        self._forget(blob_id)
        return self._write(self.store.set_wanted, blob_id, replicas)

    def open(self, blob_id: str) -> Deferred:
        """(file, metadata) of a blob, for :meth:`read_block`: at once when
        its metadata is kept and opening it cannot wait on the disk, else from
        a reader thread."""
        meta = self._metas.get(blob_id)
        if meta is not None:
            fd = diskio.open_resident(self.store.path(blob_id))
            if fd is not None:
                try:
                    reader = self.store.reader(blob_id, meta, fd)
                except OSError:
                    os.close(fd)  # and the thread tries, and answers for it
                except Corrupt:  # (its fd closed)
                    return fail()
                else:
                    self._metas.move_to_end(blob_id)
                    return succeed((reader, meta))
        d = self._read(_open_with_meta, self.store, blob_id)
        d.addCallback(self._opened)
        return d

    def _opened(self, opened: tuple[Any, BlobMeta]) -> tuple[Any, BlobMeta]:
        self._remember(opened[1])
        return opened

    def read_block(self, f: Any, meta: BlobMeta, index: int) -> Deferred:
        """A checked block; fails with blobmeta.Corrupt on rot."""
        return self._read(self.store.read_block, f, meta, index)

    def read_block_now(self, f: Any, meta: BlobMeta, index: int) -> memoryview | None:
        """A checked block read on the reactor thread, when it is all in the
        page cache (a read that cannot wait on the disk); else None, and
        :meth:`read_block` reads it. Raises blobmeta.Corrupt on rot. The view
        is good until the next call."""
        return self.store.read_resident_block(f, meta, index, self._now)

    def check(self, blob_id: str, up_to: int | None = None) -> Deferred:
        """The copy's metadata once it is read whole and found good (see
        BlobStore.check): Corrupt, NotFound, or Stopped once :meth:`stop` is called."""
        def good(meta: BlobMeta) -> BlobMeta:
            if meta.size > CHECK_NOW_MAX and (up_to is None or meta.size <= up_to):  # read whole
                now = self.reactor.seconds()
                self._found_good[blob_id] = now
                self._found_good.move_to_end(blob_id)
                while next(iter(self._found_good.values())) < now - CHECKED_FOR:
                    self._found_good.popitem(last=False)
            return meta
        return self._read(self.store.check, blob_id, up_to, self._stopping.is_set).addCallback(good)

    def checked(self, blob_id: str) -> Deferred:
        """Fires with the copy's metadata once it was read whole and found
        good: now for a copy of CHECK_NOW_MAX or smaller; for a bigger one,
        by a read in the last CHECKED_FOR seconds (a scrub's, or one this
        started). Else that read starts in the background (one at a time),
        and this fails at once with Unavailable: ask again once it is done.
        A bad copy fails with Corrupt (and is not set aside: the caller
        does that); one the background read finds bad is set aside and told."""
        def whole(meta: BlobMeta) -> BlobMeta:
            if meta.size <= CHECK_NOW_MAX:
                return meta
            found = self._found_good.get(blob_id)
            if found is not None and found >= self.reactor.seconds() - CHECKED_FOR:
                return meta
            if blob_id not in self._checking and len(self._checking) < CHECKS_WAITING:
                self._checking.add(blob_id)
                d = self._checks.run(self.check, blob_id).addErrback(self._checked_bad, blob_id)
                d.addBoth(lambda _: self._checking.discard(blob_id))
            raise Unavailable(f"the copy ({meta.size} bytes) is being read whole first; ask again shortly")
        return self.check(blob_id, up_to=CHECK_NOW_MAX).addCallback(whole)

    def _checked_bad(self, failure: Failure, blob_id: str) -> Deferred | None:
        if failure.check(Corrupt):
            return self.corrupt(blob_id, failure.getErrorMessage())
        if not failure.check(NotFound, Stopped):
            self.log.warn("cannot read blob {blob} whole to check it: {why}", blob=blob_id,
                          why=failure.getErrorMessage())
        return None

    def corrupt(self, blob_id: str, why: str) -> Deferred:
        """A copy was found bad: move it aside and tell whoever listens (the
        proxy). When it cannot be moved (a disk turned read-only), it is told
        all the same, and left out of the inventories from now on."""
        self._gone(blob_id)

        def moved(_: object) -> None:
            self.log.error("blob {blob} is corrupt ({why}): quarantined", blob=blob_id, why=why)

        def stays(failure: Failure) -> None:
            self.unmovable.add(blob_id)
            self.log.error("blob {blob} is corrupt ({why}) and cannot be moved aside ({error}): it is no longer"
                           " listed", blob=blob_id, why=why, error=failure.getErrorMessage())

        d = self._write(self.store.quarantine, blob_id).addCallbacks(moved, stays)
        d.addCallback(lambda _: [listener(blob_id, why) for listener in self.corrupt_listeners])
        return d

    def open_set_aside(self, blob_id: str) -> Deferred:
        """(file, metadata) of a copy moved aside as corrupt (see
        BlobStore.open_set_aside), from a reader thread."""
        return self._read(self.store.open_set_aside, blob_id)

    def close(self, f: Any) -> Deferred:
        """Close a reader: at once when that cannot wait on the disk (a small
        file that still has a name), else on a reader thread."""
        try:
            now = f.size < diskio.DIRECT_MIN and f.can_close_now()
        except OSError:
            now = False
        if now:
            f.close()
            return succeed(None)
        return self._read(f.close)

    def sweep(self) -> Deferred:
        """Remove metadata left without its blob (a blob deleted behind our back)."""
        return self._write(self.store.sweep)

    def inventory(self, chunk: int = 1000, ids_only: bool = False) -> InventoryCursor:
        """Every blob's metadata (or with ``ids_only``, its id) in id order, ``chunk`` at a time."""
        blobs: Iterator[Any] = self.store.blob_ids() if ids_only else self.store.inventory()
        if self.unmovable:
            blobs = (b for b in blobs if (b if isinstance(b, str) else b.blob) not in self.unmovable)
        return InventoryCursor(self, chunk, blobs)


@implementer(IInventoryCursor)
class InventoryCursor:
    """A device's blobs in id order, read a chunk at a time on its reader
    thread: however many blobs the disk holds, one chunk (and one directory's
    names) is in memory. Ask for the next chunk only once the last one came."""

    def __init__(self, device: Device, chunk: int, blobs: Iterator[Any]) -> None:
        self._device = device
        self._chunk = chunk
        self._blobs = blobs  # BlobMeta, or blob ids
        self._ahead: Any = None  # the first blob of the next chunk, read already

    def next(self) -> Deferred:
        """Fires with (blobs, more): the next chunk, and whether any blob follows it."""
        return self._device._read(self._take)

    def _take(self) -> tuple[list[Any], bool]:
        taken = [] if self._ahead is None else [self._ahead]
        self._ahead = None
        for meta in self._blobs:
            if len(taken) == self._chunk:
                self._ahead = meta
                return taken, True
            taken.append(meta)
        return taken, False


def _write_pieces(incoming: IncomingBlob, pieces: list[bytes]) -> None:
    for piece in pieces:
        incoming.write(piece)
    incoming.start_out()


def _write_piece(incoming: IncomingBlob, buffer: Any, length: int) -> None:
    with memoryview(buffer) as whole, whole[:length] as piece:
        incoming.write_piece(piece)


def _open_with_meta(store: BlobStore, blob_id: str) -> tuple[Any, BlobMeta]:
    try:
        meta = store.meta(blob_id)
        return store.reader(blob_id, meta), meta
    except NotFound:  # deleted a moment ago (its version replaced as it was looked up): still read
        return store.open_trashed(blob_id)
