"""Reads: a file's record, its healthy copies, and its bytes, failing over from copy to copy."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional

from twisted.internet import defer
from twisted.internet.interfaces import IConsumer
from twisted.logger import Logger
from twisted.python.failure import Failure

from deposito.catalog import FileRecord
from deposito.errors import BadArgs, NotFound, Unavailable
from deposito.interfaces import ICatalog
from deposito.placement import read_order
from deposito.pool import BlobPool
from deposito.roster import Member, Roster
from deposito.transfer import SMALL_READ, read_small, stream_blob

if TYPE_CHECKING:
    from deposito.catalog.listing import Listing

PARTS_PAGE = 256  # parts of a multipart version looked up at a time before it is read


class Reader:
    """What GET, STAT, LIST and the HTTP downloads read: one way for every gateway."""

    log = Logger()

    def __init__(self, db: ICatalog, roster: Roster, pool: BlobPool, repair: Callable[[], None]) -> None:
        self.db = db
        self.roster = roster
        self.pool = pool
        self.repair = repair  # a copy stopped counting: the reconciler has work

    async def lookup(self, name: str) -> FileRecord:
        record = await self.db.read(name)
        if record is None:
            raise NotFound(f"no file named {name}")
        return record

    def recent(self, name: str) -> FileRecord | None:
        """The record of ``name`` if the catalog has it at hand, without a
        trip to its thread (what :meth:`lookup` would answer), else None."""
        return self.db.kept_record(name)

    def guess(self, name: str) -> FileRecord | None:
        """What :meth:`lookup` answered last for ``name``, if at hand: on a
        shared catalog, another proxy may have changed it since."""
        return self.db.guess(name)

    def healthy(self, record: FileRecord) -> list[Member]:
        """The up servers holding a copy, in the order to read them (see read_order)."""
        members = [self.roster.get(s) for s in record.servers]
        return read_order(record.blob, [m for m in members if m is not None and m.up])

    async def listing(self, prefix: str, after: str, limit: int | None) -> Listing:
        """The names starting with ``prefix`` that sort after ``after`` (at most
        ``limit``), read in batches from one snapshot of the catalog, off the
        reactor: a :class:`deposito.catalog.listing.Listing`, to be closed when done."""
        return await self.db.listing(prefix, after, limit)

    def read_small(self, record: FileRecord) -> Optional[defer.Deferred[list[bytes]]]:
        """A small file (at most SMALL_READ bytes) read whole from its first
        copy over a connection already open, as a list of pieces; None when
        that cannot start at once (no copy up, or no idle connection to it),
        and then :meth:`read` is the way. On failure nothing has been sent,
        so :meth:`read` can still try every copy."""
        if record.size > SMALL_READ or record.parts:
            return None
        sources = self.healthy(record)
        client = self.pool.idle(sources[0]) if sources else None
        if client is None:
            return None
        member = sources[0]

        def failed(failure: Failure) -> Failure:
            self.log.warn("reading {blob} from {id} failed: {why}", blob=record.blob, id=member.id,
                          why=str(failure.value))
            if failure.check(NotFound):
                self.copy_missing(member, record.blob)
            return failure

        d: defer.Deferred[list[bytes]] = read_small(client, record.blob, record.size, release=self.pool.release)
        return d.addErrback(failed)

    async def read(self, record: FileRecord, consumer: IConsumer, offset: int = 0, length: int | None = None,
                   started: Callable[[], None] = lambda: None) -> None:
        """Write bytes ``[offset, offset + length)`` of the file (``length``
        None: to the end) to ``consumer``, failing over from copy to copy;
        ``started()`` is called before the first byte."""
        if length is None:
            length = record.size - offset
        if offset < 0 or length < 0 or offset + length > record.size:
            raise BadArgs(f"bytes {offset}+{length} are outside {record.name} ({record.size} bytes)")
        if record.parts:
            await self._read_parts(record, consumer, offset, length, started)
            return
        sources = self.healthy(record)
        if not sources:
            if not record.servers:  # (the servers that held them may still come back with one)
                raise Unavailable(f"no copy of {record.name} is left: each was lost or found corrupt")
            raise Unavailable(f"no copy of {record.name} is on a live server")
        await stream_blob(self.pool.connect, sources, record.blob, offset, length, consumer, started,
                          release=self.pool.release, local=self.pool.connect_local, missing=self.copy_missing)

    async def _read_parts(self, record: FileRecord, consumer: IConsumer, offset: int, length: int,
                          started: Callable[[], None]) -> None:
        """A version made of parts: each part's span read as a file is, in
        order (failover within each part), its part list read first."""
        begun: list[bool] = []

        def once() -> None:
            if not begun:
                begun.append(True)
                started()

        at, end = offset, offset + length
        # the part list is read whole before the first byte (S3 allows 10000 parts at most, so this
        # is bounded): once the version is replaced its part rows are gone, and a reader past the
        # first page would be cut off mid-stream
        spans: list[tuple[int, FileRecord]] = []
        seek = at
        while seek < end:
            page = await self.db.parts_at(record.parts, seek, PARTS_PAGE)
            if not page or page[0][0] > seek:
                raise Unavailable(f"{record.name} was replaced while it was read")
            for start, part in page:
                if seek >= end:
                    break
                spans.append((start, part))
                seek = start + part.size
        for start, part in spans:
            count = min(end, start + part.size) - at
            await self.read(part, consumer, at - start, count, once)
            at += count

    def copy_missing(self, member: Member, blob: str) -> None:
        """A read found that ``member`` lacks a copy of ``blob`` the catalog
        counts: it no longer counts, and its file is queued to be copied again."""
        self.log.warn("storage server {id} lacks its copy of {blob}: it counts no more", id=member.id,
                      blob=blob, event="missing")
        d = self.db.drop_copy(blob, member.id)
        d.addCallback(lambda _: self.repair())
        d.addErrback(lambda f: self.log.failure("dropping a missing copy", f))
