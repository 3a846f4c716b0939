"""Blobs on one device: written aside, verified, fsynced and renamed into place.

A blob is named by an id the proxy chose (32 hex digits), never by a user's
file name. With each blob a small JSON record keeps the user's name,
version, size, sha256, wanted replica count and block checksums, so a lost
catalog can be made again from the servers: in the blob file's extended
attribute ``user.deposito`` when it fits, else in ``<blob>.meta`` beside it
(the record and the checksums are :mod:`deposito.blobmeta`'s). Everything
here blocks on the disk: callers run it on the device's own thread, never
on the reactor.
"""

from __future__ import annotations

import collections
import errno
import hashlib
import os
import re
import shutil
import threading
import time
import uuid
from typing import Callable, Iterator, cast

import attrs

from deposito import diskio
from deposito.blobmeta import BLOCK, NEW_CHECKSUM, BlobMeta, BlockSums, Corrupt, check_block
from deposito.errors import BadArgs, NotFound

GRACE = 10.0  # seconds a deleted blob can still be read (see BlobStore.open_trashed)
BLOB_ID = re.compile(r"^[0-9a-f]{32}$")
SUBDIR = re.compile(r"^[0-9a-f]{2}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")


def new_blob_id() -> str:
    return uuid.uuid4().hex


def check_blob_id(blob_id: str) -> str:
    if not BLOB_ID.match(blob_id):
        raise BadArgs("bad blob id")
    return blob_id


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# Metadata small enough lives in an extended attribute of the blob file: one
# file and one fsync per blob instead of two. Larger metadata (the block list
# of a big blob), or a filesystem without user attributes, gets a .meta file.
# A blob's file that fails with one of these cannot be read as it is: a
# corrupt copy (moved aside, made again elsewhere), not a fault of the server.
UNREADABLE = {errno.EIO, errno.EISDIR, errno.ENOTDIR, errno.EACCES, errno.EPERM, errno.ELOOP}

META_ATTR = "user.deposito"
META_ATTR_MAX = 2048
_NO_ATTR = {errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP}


def _set_meta_attr(fd: int, meta: BlobMeta) -> bool:
    raw = meta.to_json()
    if len(raw) > META_ATTR_MAX:
        return False
    try:
        os.setxattr(fd, META_ATTR, raw)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.E2BIG, errno.ENOSPC, errno.EPERM):
            return False
        raise
    return True


def meta_at(path: str) -> BlobMeta:
    """The metadata of the blob at ``path``: from its extended attribute, or
    the file beside it. NotFound without the blob; Corrupt when the blob is
    there but its metadata is lost or cannot be read (its bytes cannot be
    checked, so the copy cannot be served)."""
    try:
        raw = os.getxattr(path, META_ATTR)
    except FileNotFoundError:
        raise NotFound("no such blob") from None
    except OSError as e:
        if e.errno in UNREADABLE:
            raise Corrupt(f"its metadata cannot be read ({e.strerror})") from None
        if e.errno not in _NO_ATTR:
            raise
        try:
            with open(path + ".meta", "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            if os.path.exists(path):
                raise Corrupt("its metadata is lost") from None
            raise NotFound("no such blob") from None
        except OSError as e2:
            if e2.errno in UNREADABLE:
                raise Corrupt(f"its metadata cannot be read ({e2.strerror})") from None
            raise
    try:
        meta = BlobMeta.from_json(raw)
    except (ValueError, KeyError, TypeError) as e:
        raise Corrupt(f"its metadata cannot be read ({type(e).__name__})") from None
    if meta.blob != os.path.basename(path):
        raise Corrupt(f"its metadata names blob {meta.blob[:40]!r}")
    return meta


class Stopped(Exception):
    """A blob's whole read given up: its server is stopping."""


class IncomingBlob:
    """One blob being written: a temp file in incoming/ until :meth:`commit`.

    Methods block; the store's writer thread calls them in order.
    """

    def __init__(self, store: BlobStore, meta: BlobMeta, cache: bool = False) -> None:
        self.store = store
        self.meta = meta
        self.cache = cache
        self.received = 0
        self.sums = BlockSums()
        self.path = os.path.join(store.incoming, f"{meta.blob}.{uuid.uuid4().hex[:8]}.tmp")
        self._file: diskio.Appender | None = None
        self._closed = False
        self._beside = False  # its metadata is in a .meta file, not the attribute

    def _appender(self) -> diskio.Appender:
        if self._file is None:
            if self._closed:
                raise ValueError("blob already finished")
            self._file = diskio.Appender(self.path, self.meta.size, direct=not self.cache)
        return self._file

    def write(self, data: bytes | memoryview) -> None:
        self._count(data)
        self._appender().write(data)

    def write_piece(self, piece: memoryview) -> None:
        """:meth:`write` from a page-aligned buffer (see diskio.Appender.write_piece)."""
        self._count(piece)
        self._appender().write_piece(piece)

    def start_out(self) -> None:
        """What was written so far is a piece of a blob whose rest is still
        coming: start it on its way to the disk (see diskio.Appender.start_out)."""
        if self._file is not None:
            self._file.start_out()

    def _count(self, data: bytes | memoryview) -> None:
        self.received += len(data)
        if self.received > self.meta.size:
            raise BadArgs("more bytes than announced")
        self.sums.update(data)

    def commit(self, sha256: str, blocks: str) -> BlobMeta:
        """Check size and block checksums, make the blob durable and visible.

        ``blocks`` is the digest of the block checksums of what was sent
        (:class:`BlockSums`); ``sha256``, the whole file's, is kept with it.
        """
        meta = self.prepare(sha256, blocks)
        self.sync()
        for d in self.install():
            fsync_dir(d)
        return meta

    # The steps of commit, for committing several blobs together (commit_together).

    def prepare(self, sha256: str, blocks: str) -> BlobMeta:
        """Check the blob and write all of it and its metadata (not yet durable)."""
        if self.received != self.meta.size:
            raise BadArgs(f"got {self.received} bytes, expected {self.meta.size}")
        if not SHA256.match(sha256):
            raise BadArgs("bad sha256")
        got = self.sums.digest()
        if got != blocks:
            raise BadArgs(f"checksum mismatch: got {got}")
        f = self._appender()
        meta = attrs.evolve(self.meta, sha256=sha256, blocks=self.sums.blocks, cached=not f.direct)
        f.finish()
        self._beside = not _set_meta_attr(f.fd, meta)  # in the blob's own inode when it fits
        if self._beside:
            with open(self.path + ".meta", "wb") as out:
                out.write(meta.to_json())
        self.meta = meta
        return meta

    def sync(self) -> None:
        """Make the prepared blob (and its metadata file) durable."""
        assert self._file is not None
        os.fsync(self._file.fd)
        if self._beside:
            fd = os.open(self.path + ".meta", os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def install(self) -> list[str]:
        """Rename the durable blob into place; the directories to fsync so the
        renames are durable too."""
        self._close()
        return self.store.install(self.path, self.meta, self._beside)

    def _close(self) -> None:
        self._closed = True
        if self._file is not None:
            self._file.close()
            self._file = None

    def abort(self) -> None:
        self._close()
        for path in (self.path, self.path + ".meta"):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


def _install_and_sync(incoming: IncomingBlob) -> None:
    """Rename a synced blob into place, then make its directories' entries durable."""
    for d in incoming.install():
        fsync_dir(d)


class BlobStore:
    """The blobs of one storage server, under one directory."""

    def __init__(self, root: str, grace: float = GRACE, clock: Callable[[], float] = time.monotonic) -> None:
        self.root = os.path.abspath(root)
        self.blobs = os.path.join(self.root, "blobs")
        self.incoming = os.path.join(self.root, "incoming")
        self.trash = os.path.join(self.root, "trash")
        self.grace = grace
        self.clock = clock  # when a file went to trash/ (seconds, any origin)
        os.makedirs(self.blobs, exist_ok=True)
        # What an interrupted write left is never a blob, and what was deleted stays so: start clean.
        for folder in (self.incoming, self.trash):
            shutil.rmtree(folder, ignore_errors=True)
            os.makedirs(folder, exist_ok=True)  # (a file the disk would not let go of stays: no blob for all that)
        self._trashed: collections.deque[tuple[float, str]] = collections.deque()  # (when, path), oldest first
        self._trashed_at: dict[str, float] = {}  # path -> when its file was last trashed
        self._trash_lock = threading.Lock()  # deletes and the periodic emptying run on different threads
        # A blob's file and its .meta move one after the other: a read that found the blob gone
        # from blobs/ (see open_trashed) or a change of its metadata (set_wanted) waits till both have.
        self._moving = threading.Lock()
        # Group commits sync the whole filesystem, which covers the blobs only if it holds all of them.
        self.one_filesystem = len({os.stat(p).st_dev for p in (self.root, self.blobs, self.incoming)}) == 1
        self._tally_lock = threading.Lock()  # commits run on several threads
        self._make_subdirs()
        self.used, self.count = self._recount()

    def _make_subdirs(self) -> None:
        """Every blob directory, made durable now rather than with its first
        blob: a new one costs that write a mkdir and an fsync of blobs/ more,
        and on a fresh server most writes are a directory's first."""
        made = {d for d in (os.path.join(self.blobs, f"{i:02x}") for i in range(256)) if not os.path.isdir(d)}
        for d in made:
            os.makedirs(d, exist_ok=True)
        if made:
            self._sync_dirs(made | {self.blobs})

    def _dir(self, blob_id: str) -> str:
        return os.path.join(self.blobs, blob_id[:2])

    def path(self, blob_id: str) -> str:
        check_blob_id(blob_id)
        return os.path.join(self._dir(blob_id), blob_id)

    def begin(self, meta: BlobMeta, cache: bool = False) -> IncomingBlob:
        """A blob to write; ``cache``: keep it in the page cache even if big."""
        check_blob_id(meta.blob)
        return IncomingBlob(self, meta, cache)

    def install(self, temp_path: str, meta: BlobMeta, beside: bool) -> list[str]:
        """Rename a verified, fsynced temp file into place, with its metadata
        file when it has one (``beside``; else the metadata is in the file).
        Returns the directories to fsync for the renames to be durable."""
        d = self._dir(meta.blob)
        made = not os.path.isdir(d)
        if made:
            os.makedirs(d, exist_ok=True)
        final = os.path.join(d, meta.blob)
        existed = os.path.exists(final)
        if beside:
            os.replace(temp_path + ".meta", final + ".meta")
        elif os.path.exists(final + ".meta"):  # left by an older copy of the same blob
            os.unlink(final + ".meta")
        os.replace(temp_path, final)
        if not existed:
            self._tally(meta.size, 1)
        return [d, self.blobs] if made else [d]  # a new subdirectory's own entry too

    def commit_together(self, batch: list[tuple[IncomingBlob, str, str]]) -> list[tuple[bool, object]]:
        """Commit several blobs (incoming, sha256, blocks) with shared flushes:
        one sync of the filesystem makes all their bytes durable, one more all
        their renames, where a blob alone takes an fsync of its file and one of
        its directory. Returns (True, meta) or (False, error) for each."""
        results: list[tuple[bool, object]] = [(False, None)] * len(batch)
        ready: list[int] = []
        for i, (incoming, sha256, blocks) in enumerate(batch):
            try:
                results[i] = (True, incoming.prepare(sha256, blocks))
                ready.append(i)
            except Exception as e:
                results[i] = (False, e)

        def each(step: Callable[[IncomingBlob], object]) -> None:
            for i in list(ready):
                try:
                    step(batch[i][0])
                except Exception as e:
                    results[i] = (False, e)
                    ready.remove(i)

        if len(ready) > 1 and self.one_filesystem and diskio.sync_filesystem(self.root):
            dirs: set[str] = set()
            each(lambda incoming: dirs.update(incoming.install()))
            self._sync_dirs(dirs)
            return results
        each(IncomingBlob.sync)
        each(_install_and_sync)
        return results

    def meta(self, blob_id: str) -> BlobMeta:
        """A blob's metadata: from its extended attribute, or the file beside
        it; with its block checksums (see :meth:`_sum_blocks`)."""
        meta = meta_at(self.path(blob_id))
        if meta.size and not meta.blocks:
            meta = self._sum_blocks(blob_id, meta)
        return meta

    def _sum_blocks(self, blob_id: str, meta: BlobMeta) -> BlobMeta:
        """A blob written before blocks had checksums (the first servers,
        24 November 2026) gets them, once: its bytes read whole against its
        sha256, their checksums kept in its metadata. Corrupt if the bytes
        do not match: such a copy was served as corrupt, whole, before."""
        digest, sums = hashlib.sha256(), BlockSums()
        with self.reader(blob_id, meta) as f:
            for index in range((meta.size + BLOCK - 1) // BLOCK):
                data = f.pread(BLOCK, index * BLOCK)
                digest.update(data)
                sums.update(data)
        if digest.hexdigest() != meta.sha256:
            raise Corrupt("sha256 mismatch")
        summed = attrs.evolve(meta, blocks=sums.blocks, checksum=NEW_CHECKSUM)
        with self._moving:
            self._rewrite_meta(self.path(blob_id), lambda old: summed if old == meta else None)
        return summed

    def open(self, blob_id: str):
        """A binary file object for reading the blob, and its size on disk."""
        try:
            f = open(self.path(blob_id), "rb")
        except FileNotFoundError:
            raise NotFound("no such blob") from None
        return f, os.fstat(f.fileno()).st_size

    def _size(self, blob_id: str) -> int | None:
        """The size a present blob counts for (its recorded size), or None when absent."""
        if not os.path.exists(self.path(blob_id)):
            return None
        try:
            return meta_at(self.path(blob_id)).size
        except (NotFound, Corrupt):
            return os.stat(self.path(blob_id)).st_size

    def reader(self, blob_id: str, meta: BlobMeta | None = None, fd: int | None = None) -> diskio.Reader:
        """An open blob, for :meth:`read_block` (``meta`` tells whether it is
        one to read through the page cache; ``fd``, the blob opened already,
        is then closed with it). Corrupt when the file's size is not the
        blob's: a copy cut short, or grown, is refused before any byte is
        sent."""
        try:
            reader = diskio.Reader(self.path(blob_id), cached=meta is not None and meta.cached, fd=fd)
        except FileNotFoundError:
            raise NotFound("no such blob") from None
        except OSError as e:
            if e.errno in UNREADABLE:
                raise Corrupt(f"its file cannot be read ({e.strerror})") from None
            raise
        if meta is not None and reader.size != meta.size:
            reader.close()
            raise Corrupt(f"its file holds {reader.size} bytes, not {meta.size}")
        return reader

    def read_block(self, f: diskio.Reader, meta: BlobMeta, index: int) -> bytes:
        """Block ``index`` of an open blob, checked against its checksum, or
        Corrupt (also when the disk cannot read it)."""
        try:
            data = f.pread(BLOCK, index * BLOCK)
        except OSError as e:
            if e.errno not in UNREADABLE:
                raise
            raise Corrupt(f"block {index} cannot be read ({e.strerror})") from None
        check_block(meta, index, data)
        return data

    def read_resident_block(self, f: diskio.Reader, meta: BlobMeta, index: int,
                            buffer: memoryview) -> memoryview | None:
        """Block ``index`` read into ``buffer`` and checked, if all of it is in
        the page cache (so the caller never waits on the disk); else None.
        Corrupt on rot."""
        length = min(BLOCK, meta.size - index * BLOCK)
        if length <= 0:
            return None
        view = buffer[:length]
        if f.pread_resident(view, index * BLOCK) != length:
            return None  # not all in memory, or the file is short: read it the slow way
        check_block(meta, index, view)
        return view

    def check(self, blob_id: str, up_to: int | None = None,
              stopping: Callable[[], bool] = lambda: False) -> BlobMeta:
        """Re-read a whole blob against its block checksums and sha256; Corrupt
        (also when the disk cannot read it) or NotFound. A blob bigger than
        ``up_to`` (when given) is not read: its metadata is returned. Stopped
        (between two blocks) once ``stopping()`` is true: a big blob's read
        does not hold up its server's shutdown."""
        meta = self.meta(blob_id)
        if up_to is not None and meta.size > up_to:
            return meta
        with self.reader(blob_id, meta) as f:
            digest = hashlib.sha256()
            for index in range((meta.size + BLOCK - 1) // BLOCK):
                if stopping():
                    raise Stopped("the server is stopping")
                digest.update(self.read_block(f, meta, index))
        if digest.hexdigest() != meta.sha256:
            raise Corrupt("sha256 mismatch")
        return meta

    def probe(self) -> None:
        """Make, write, sync and remove a small file in incoming/: raises
        OSError when the disk takes no new file (read-only, failing, full)."""
        path = os.path.join(self.incoming, f"probe.{uuid.uuid4().hex[:8]}.tmp")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, b"deposito")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(path)

    def open_set_aside(self, blob_id: str) -> tuple[diskio.Reader, BlobMeta]:
        """A copy moved aside as corrupt (see :meth:`quarantine`), opened to
        read the blocks of it that are still good (when no copy of its file
        is whole any more: see deposito.transfer.rescue_blob). NotFound when
        there is none; Corrupt when its metadata cannot be read or its size is
        not the blob's."""
        return self._open_in(os.path.join(self.root, "quarantine"), blob_id)

    def _open_in(self, folder: str, blob_id: str) -> tuple[diskio.Reader, BlobMeta]:
        """A blob moved aside into ``folder``, and its metadata: NotFound when
        it is not there; Corrupt when its metadata cannot be read or its size
        is not the blob's."""
        path = os.path.join(folder, check_blob_id(blob_id))
        meta = meta_at(path)
        try:
            reader = diskio.Reader(path, cached=meta.cached)
        except FileNotFoundError:
            raise NotFound("no such blob") from None
        if reader.size != meta.size:
            reader.close()
            raise Corrupt(f"its file holds {reader.size} bytes, not {meta.size}")
        return reader, meta

    def quarantine(self, blob_id: str) -> None:
        """Move a corrupt blob aside: no longer served, kept for a person to
        look at, and for its good blocks to be read if no copy of its file
        is whole any more (see :meth:`open_set_aside`)."""
        qdir = os.path.join(self.root, "quarantine")
        os.makedirs(qdir, exist_ok=True)
        path = self.path(blob_id)
        size = self._size(blob_id)
        if size is None:
            return
        for suffix in ("", ".meta"):
            try:
                os.replace(path + suffix, os.path.join(qdir, blob_id + suffix))
            except FileNotFoundError:
                pass
        fsync_dir(self._dir(blob_id))
        self._tally(-size, -1)

    def set_wanted(self, blob_id: str, replicas: int) -> bool:
        """Keep ``replicas`` as the blob's wanted count in its metadata (what
        a rebuild reads), durably; False when the blob is not here. The
        attribute is replaced in one call; a .meta file is written aside
        and renamed over the old one, so either record is whole at any time."""
        with self._moving:  # (not while a delete moves it to trash/: no .meta left behind)
            return self._set_wanted(self.path(blob_id), replicas)

    def _set_wanted(self, path: str, replicas: int) -> bool:
        return self._rewrite_meta(path, lambda meta: attrs.evolve(meta, replicas=replicas)
                                  if meta.replicas != replicas else None)

    def _rewrite_meta(self, path: str, change: Callable[[BlobMeta], BlobMeta | None]) -> bool:
        """The metadata of the blob at ``path`` replaced by ``change(meta)``
        (None: left as it is), durably; False when the blob is not here."""
        try:
            meta = meta_at(path)
            fd = os.open(path, os.O_RDONLY)
        except (NotFound, FileNotFoundError):
            return False
        changed = change(meta)
        if changed is None:
            os.close(fd)
            return True
        meta = changed
        blob_id = meta.blob
        try:
            beside = os.path.exists(path + ".meta")
            if not beside and _set_meta_attr(fd, meta):
                os.fsync(fd)
                return True
            temp = os.path.join(self.incoming, f"{blob_id}.{uuid.uuid4().hex[:8]}.meta")
            with open(temp, "wb") as out:
                out.write(meta.to_json())
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, path + ".meta")
            if not beside:  # (the attribute, if any, would be read first)
                try:
                    os.removexattr(fd, META_ATTR)
                except OSError as e:
                    if e.errno not in _NO_ATTR:
                        raise
                os.fsync(fd)
            fsync_dir(self._dir(blob_id))
        finally:
            os.close(fd)
        return True

    def delete(self, blob_id: str) -> bool:
        """Remove a blob and its metadata; False when it was not there."""
        ok, outcome = self.delete_together([blob_id])[0]
        if not ok:
            raise cast(Exception, outcome)
        return bool(outcome)

    def delete_together(self, blob_ids: list[str]) -> list[tuple[bool, object]]:
        """Remove several blobs and their metadata, their directories made
        durable together (see :meth:`_sync_dirs`). Returns (True, whether it
        was there) or (False, error) for each. Each goes to trash/ for
        ``grace`` seconds (see :meth:`open_trashed`) before it is unlinked."""
        results: list[tuple[bool, object]] = []
        dirs: set[str] = set()
        for blob_id in blob_ids:
            try:
                path = self.path(blob_id)
                size = self._size(blob_id)
                with self._moving:
                    for p in (path, path + ".meta"):
                        self._to_trash(p)
                if size is not None:
                    dirs.add(self._dir(blob_id))
                    self._tally(-size, -1)
                results.append((True, size is not None))
            except Exception as e:
                results.append((False, e))
        try:
            self._sync_dirs(dirs)
        except Exception as e:
            return [(False, e)] * len(blob_ids)
        self.empty_trash()
        return results

    def _to_trash(self, path: str) -> None:
        """Move a deleted file into trash/ (unlinked there after ``grace``;
        at once when trash/ is on another filesystem)."""
        aside = os.path.join(self.trash, os.path.basename(path))
        try:
            os.replace(path, aside)
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
            os.unlink(path)
            return
        with self._trash_lock:
            now = self.clock()
            self._trashed.append((now, aside))
            self._trashed_at[aside] = now

    def empty_trash(self) -> int:
        """Unlink what was deleted more than ``grace`` seconds ago; how many files."""
        gone = 0
        limit = self.clock() - self.grace
        while True:
            with self._trash_lock:
                if not self._trashed or self._trashed[0][0] > limit:
                    return gone
                when, path = self._trashed.popleft()
                if self._trashed_at.get(path) != when:  # trashed again since: its own grace counts
                    continue
                del self._trashed_at[path]
            try:
                os.unlink(path)
                gone += 1
            except FileNotFoundError:
                pass

    def open_trashed(self, blob_id: str) -> tuple[diskio.Reader, BlobMeta]:
        """A blob deleted less than ``grace`` seconds ago, opened to read: a
        reader that found its version just before it was replaced still gets
        it, from every copy (NotFound once it is gone for good)."""
        with self._moving:
            return self._open_in(self.trash, blob_id)

    def _sync_dirs(self, dirs: set[str]) -> None:
        """Make the renames and unlinks done in ``dirs`` durable: one sync of
        the filesystem for several directories, where it holds all the blobs,
        else an fsync of each."""
        if len(dirs) > 1 and self.one_filesystem and diskio.sync_filesystem(self.root):
            return
        for d in sorted(dirs):
            fsync_dir(d)

    def sweep(self) -> int:
        """Drop metadata whose blob is gone; recount what the disk holds."""
        removed = 0
        for d in self._subdirs():
            names = set(self._names_in(d))
            for entry in names:
                if entry.endswith(".meta") and entry[:-5] not in names:
                    try:
                        os.unlink(os.path.join(d, entry))
                        removed += 1
                    except FileNotFoundError:
                        pass
        used, count = self._recount()
        with self._tally_lock:
            self.used, self.count = used, count
        return removed

    def _recount(self) -> tuple[int, int]:
        """(bytes, blobs) the disk holds, from the directories alone: the size
        of each blob file, never its metadata (an intact blob's file holds
        exactly its recorded size)."""
        used = count = 0
        for d in self._subdirs():
            for name in self._names_in(d):
                if BLOB_ID.match(name):
                    try:
                        used += os.stat(os.path.join(d, name), follow_symlinks=False).st_size
                    except FileNotFoundError:  # deleted meanwhile
                        continue
                    count += 1
        return used, count

    def _subdirs(self) -> list[str]:
        """The blob directories, in id order (a blob's directory is its id's
        first two digits); none when blobs/ itself is gone or cannot be
        listed (its disk unmounted, say: the proxies then find the copies
        missing)."""
        try:
            names = os.listdir(self.blobs)
        except OSError as e:
            if e.errno == errno.ENOENT or e.errno in UNREADABLE:
                return []
            raise
        return [os.path.join(self.blobs, sub) for sub in sorted(names)
                if SUBDIR.match(sub) and os.path.isdir(os.path.join(self.blobs, sub))]

    @staticmethod
    def _names_in(d: str) -> list[str]:
        """The names in blob directory ``d``, sorted; none once it is gone,
        or when the disk cannot list it (its blobs cannot be served: the
        proxies find them missing and make them again elsewhere)."""
        try:
            return sorted(os.listdir(d))
        except OSError as e:
            if e.errno == errno.ENOENT or e.errno in UNREADABLE:
                return []
            raise

    def _tally(self, size: int, count: int) -> None:
        with self._tally_lock:
            self.used += size
            self.count += count

    def blob_ids(self, after: str = "") -> Iterator[str]:
        """Every blob's id in order, from the first above ``after``, read from
        the directories alone (no blob or metadata is opened). Lazy: one
        directory's names are held at a time."""
        for d in self._subdirs():
            if os.path.basename(d) < after[:2]:
                continue
            for entry in self._names_in(d):
                if entry > after and BLOB_ID.match(entry):
                    yield entry

    def inventory(self, after: str = "") -> Iterator[BlobMeta]:
        """Every blob's metadata in id order, from the first id above ``after``
        (blobs without readable metadata, whose metadata names another blob,
        or whose file is not the size it says, are skipped: reads and the
        scrub find them corrupt). Lazy: one directory's names are held at a
        time."""
        for d in self._subdirs():
            if os.path.basename(d) < after[:2]:
                continue
            for entry in self._names_in(d):
                if entry <= after or not BLOB_ID.match(entry):
                    continue
                path = os.path.join(d, entry)
                try:
                    meta = meta_at(path)
                    if os.stat(path).st_size != meta.size:
                        continue  # cut short or grown: for reads and the scrub to find
                except (NotFound, Corrupt, FileNotFoundError):
                    continue  # deleted meanwhile; or for the scrub to find
                yield meta
