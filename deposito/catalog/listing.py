"""LIST's names, read from one snapshot of the catalog in batches.

A LIST announces its count (``OK <n>``) before its lines, so the count and
the lines must come from the same state of the catalog, however long the
client takes to read them. A :class:`Listing` holds a read transaction on a
connection of its own (a :class:`Snapshot`: SQLite in WAL mode lets writers
go on meanwhile; PostgreSQL's is in :mod:`deposito.catalog.postgres`) and
reads the names from the files table's primary key index, a batch at a time,
on a thread pool this module owns: the reactor never waits on the database,
and a listing of millions of names holds a batch or two in memory.

A snapshot held open keeps the write-ahead log from being folded back into
the database (SQLite), or old row versions from being vacuumed (PostgreSQL),
so a listing ends after ``max_age`` seconds whatever its reader does (a
client that stopped reading is cut off): a client wanting more than a
listing can give in that time pages through with ``after``.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import threading
from typing import Any, Callable, Protocol, Union
from urllib.request import pathname2url

import attrs
from twisted.internet import defer, threads
from twisted.internet.interfaces import IReactorCore, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from deposito.batching import IBatchReactor
from deposito.catalog.records import FileRecord
from deposito.catalog.schema import RECORD, to_record
from deposito.hidden import VISIBLE
from deposito.errors import Unavailable

BATCH = 1000  # names read from the catalog per trip to a thread
MAX_AGE = 300.0  # seconds a listing may hold its snapshot
WAL_LIMIT = 256 << 20  # bytes a SQLite catalog's log may grow to while listings hold it (see _Holders)
WAL_EVERY = 2.0  # seconds between looks at its size meanwhile
THREADS = 4  # listings' reads at the same time, whatever the number of listings
MAX_OPEN = 64  # listings open at once in a process: each holds a connection to the catalog (see _Room)
IDLE_AFTER = 10.0  # seconds a listing's reader may leave it unasked before a new listing may end it

_COLUMNS = RECORD + " f"

Run = Callable[..., defer.Deferred[Any]]  # run(fn, *args): fn's result, computed off the reactor


class Snapshot(Protocol):
    """One read transaction and the query reading a listing's names from it."""

    def fetch(self, n: int) -> list[FileRecord]:
        """The next ``n`` records (fewer at the end); blocks."""

    def close(self) -> None:
        """End the transaction and its connection; blocks."""

    def interrupt(self) -> None:
        """Make a :meth:`fetch` under way in another thread stop early."""


Opened = tuple[Snapshot, int, list[FileRecord]]  # the snapshot, its count, its first batch
Opener = Callable[["NameRange", int], Opened]  # (names, batch): run in a thread


class IListingReactor(IBatchReactor, IReactorCore):
    """A reactor as listings use it: a clock for their age, a shutdown
    that stops their threads, and the threads' results handed back (the
    catalog's batches need the first and the last too). Every reactor
    Twisted ships is all three."""


class ListingExpired(Unavailable):
    """The listing held its snapshot for as long as it may."""


def prefix_end(prefix: str) -> str | None:
    """The least string above every string that starts with ``prefix``, or
    None when there is none (an empty prefix, or one of U+10FFFF only).

    Code point order is the byte order of UTF-8, which is how the catalog
    sorts names, so ``prefix <= name < prefix_end(prefix)`` is a range of its
    index that holds exactly the names starting with ``prefix``.
    """
    chars = prefix.rstrip("\U0010ffff")
    if not chars:
        return None
    last = ord(chars[-1]) + 1
    if 0xD800 <= last <= 0xDFFF:  # surrogates are no characters: skip them
        last = 0xE000
    return chars[:-1] + chr(last)


@attrs.frozen
class NameRange:
    """The names a listing covers: starting with ``prefix``, sorting after
    ``after``, at most ``limit`` of them (None: all)."""

    prefix: str = ""
    after: str = ""
    limit: int | None = None

    def where(self, column: str = "name") -> tuple[str, tuple[Any, ...]]:
        """The SQL condition on ``column`` and its values: one range of its
        index, with one lower bound (SQLite seeks to one, and would scan
        from the other)."""
        floor = max(self.prefix, VISIBLE)  # hidden names (deposito.hidden) are never listed
        low = f"{column} > ?" if self.after >= floor else f"{column} >= ?"
        values: tuple[Any, ...] = (max(self.after, floor),)
        end = prefix_end(self.prefix)
        if end is None:
            return low, values
        return f"{low} AND {column} < ?", (*values, end)

    @property
    def sql_limit(self) -> int:
        return -1 if self.limit is None else min(self.limit, 2**62)


def _connect(path: str) -> sqlite3.Connection:
    """A read-only connection to the catalog at ``path``; never makes a new one."""
    db = sqlite3.connect(f"file:{pathname2url(path)}?mode=rw", uri=True, timeout=10.0,
                         check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA query_only=1")
    db.execute("PRAGMA cache_size=-256")  # KiB: a listing reads in order, once; many may be open (2 MiB each, else)
    return db


class SQLiteSnapshot:
    """A listing's read transaction on a SQLite catalog."""

    def __init__(self, db: sqlite3.Connection, cursor: sqlite3.Cursor | None) -> None:
        self.db = db
        self.cursor = cursor

    @classmethod
    def open(cls, path: str, names: NameRange, batch: int) -> Opened:
        """In a thread: the snapshot, its count, and its first batch."""
        snapshot = cls(_connect(path), None)
        try:
            where, values = names.where()
            snapshot.db.execute("BEGIN")
            count = snapshot.db.execute(f"SELECT count(*) FROM (SELECT 1 FROM files WHERE {where} LIMIT ?)",
                                        (*values, names.sql_limit)).fetchone()[0]
            if not count:
                snapshot.close()
                return snapshot, 0, []
            where, values = names.where("f.name")
            snapshot.cursor = snapshot.db.execute(f"{_COLUMNS} WHERE {where} ORDER BY f.name LIMIT ?",
                                                  (*values, count))
            return snapshot, count, snapshot.fetch(min(batch, count))
        except BaseException:
            snapshot.close()
            raise

    def fetch(self, n: int) -> list[FileRecord]:
        assert self.cursor is not None
        return [to_record(row) for row in self.cursor.fetchmany(n)]

    def close(self) -> None:
        """End the read transaction (the snapshot is let go) and the connection.
        A statement left unfinished would keep both alive past ``close``."""
        try:
            if self.cursor is not None:
                self.cursor.close()
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
        finally:
            self.db.close()

    def interrupt(self) -> None:
        self.db.interrupt()


class Listing:
    """An open listing: :attr:`count` records, handed out by :meth:`next` in
    name order. A batch is read when it is asked for, not ahead: a reader
    that stops holds nothing more, and the thread reading never competes
    for the interpreter with the reactor writing the batch before (the
    two would slow each other down). Call :meth:`close` when done, or when
    the reader leaves: the snapshot is let go then, or after ``max_age``
    seconds, when ``on_expiry`` is called (its reader must give up: the
    count cannot be kept).
    """

    log = Logger()

    def __init__(self, reactor: IReactorTime, run: Run, snapshot: Snapshot,
                 count: int, first: list[FileRecord], batch: int = BATCH, max_age: float = MAX_AGE) -> None:
        self.count = count
        self.fetched = len(first)  # records read from the catalog so far
        self.batch = batch
        self.on_expiry: Callable[[], None] = lambda: None
        self.on_close: list[Callable[[Listing], None]] = []  # told once, when the listing closes
        self._clock = reactor
        self.asked = reactor.seconds()  # when its reader last asked for a batch
        self._run = run
        self._snapshot = snapshot
        self._ready: list[FileRecord] | None = first or None
        self._waiter: defer.Deferred[list[FileRecord]] | None = None
        self._busy = False  # a read runs in a thread
        self._error: BaseException | None = None
        self._released = count == 0  # an empty listing's connection is closed already
        self.closed = count == 0
        self._timer = None if self.closed else reactor.callLater(max_age, self._expire)

    def next(self) -> defer.Deferred[list[FileRecord]]:
        """The next batch of records, ``[]`` after the last one."""
        self.asked = self._clock.seconds()
        if self._error is not None:
            return defer.fail(self._error)
        if self._ready is not None:
            batch, self._ready = self._ready, None
            return defer.succeed(batch)
        if self.fetched >= self.count or self.closed:
            return defer.succeed([])
        waiter = self._waiter = defer.Deferred()
        self._read()
        return waiter

    def close(self) -> None:
        """Let go of the snapshot (at once, or when the read under way ends)."""
        if self.closed:
            return
        self.closed = True
        for told in self.on_close:
            told(self)
        self._ready = None
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if self._waiter is not None:
            waiter, self._waiter = self._waiter, None
            waiter.callback([])
        if self._busy:
            self._snapshot.interrupt()  # the read stops early; _release follows it
        else:
            self._release()

    def collect(self) -> defer.Deferred[list[FileRecord]]:
        """Every record left, in one list, then close: for a bounded listing."""
        out: list[FileRecord] = []

        def more(batch: list[FileRecord]) -> Any:
            if not batch:
                self.close()
                return out
            out.extend(batch)
            return self.next().addCallback(more)

        def failed(failure: Failure) -> Failure:
            self.close()
            return failure

        return self.next().addCallback(more).addErrback(failed)

    def _read(self) -> None:
        if self._busy or self.closed or self._ready is not None or self.fetched >= self.count:
            return
        self._busy = True
        self._run(self._snapshot.fetch, min(self.batch, self.count - self.fetched)).addCallbacks(
            self._fetched, self._failed)

    def _fetched(self, batch: list[FileRecord]) -> None:
        self._busy = False
        if self.closed:
            self._release()
            return
        self.fetched += len(batch)
        if not batch:  # one snapshot cannot hold fewer names than it counted
            self._failed(RuntimeError(f"the catalog gave {self.fetched} names of {self.count}"))
            return
        if self._waiter is not None:
            waiter, self._waiter = self._waiter, None
            waiter.callback(batch)
        else:
            self._ready = batch

    def _failed(self, why: Failure | BaseException) -> None:
        self._busy = False
        error = why.value if isinstance(why, Failure) else why
        if self.closed:
            self._release()
            return
        self.log.warn("listing stopped after {n} of {count} names: {why}", n=self.fetched, count=self.count,
                      why=str(error))
        self._error = error
        waiter, self._waiter = self._waiter, None
        self.close()
        if waiter is not None:
            waiter.errback(error)

    def _expire(self, why: str = "was still open after its time") -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.log.warn("a listing " + why + ", at {n} of {count} names: ended", n=self.fetched, count=self.count)
        self._error = ListingExpired("the listing took too long; page through with <after>")
        waiter, self._waiter = self._waiter, None
        self.close()
        if waiter is not None:
            waiter.errback(self._error)
        self.on_expiry()

    def _release(self) -> None:
        if self._released:
            return
        self._released = True
        self._run(self._snapshot.close).addErrback(lambda f: self.log.failure("closing a listing", f))


def open_listing(reactor: IListingReactor, where: Union[str, Opener], names: NameRange, batch: int = BATCH,
                 max_age: float = MAX_AGE, run: Run | None = None) -> defer.Deferred[Listing]:
    """A :class:`Listing` of ``names`` in the catalog ``where`` (the path of
    a SQLite catalog, or an opener of snapshots), its count taken and its
    first batch read. ``run`` puts work on a thread (by default this
    module's pool)."""
    reads: Run = run or functools.partial(threads.deferToThreadPool, reactor, _pool(reactor))
    opener: Opener = functools.partial(SQLiteSnapshot.open, where) if isinstance(where, str) else where
    room = _Room.of(reactor)
    try:
        room.take()
    except Unavailable:
        return defer.fail()

    def opened(result: Opened) -> Listing:
        snapshot, count, first = result
        listing = Listing(reactor, reads, snapshot, count, first, batch=batch, max_age=max_age)
        room.hold(listing)
        if isinstance(where, str) and not listing.closed:
            _Holders.of(reactor, where).hold(listing)
        return listing

    def failed(failure: Failure) -> Failure:
        room.give_back()
        return failure

    return reads(opener, names, batch).addCallbacks(opened, failed)


class _Room:
    """The listings open in one process, at most MAX_OPEN (each holds a
    connection to the catalog: on PostgreSQL a process of the database's,
    and its connections are few). When they are all taken, a new listing
    ends the one its reader has left unasked longest, if for IDLE_AFTER
    seconds or more (a reader that stopped reading); else it is refused
    (Unavailable: the client tries again shortly)."""

    _all: dict[int, _Room] = {}

    def __init__(self, reactor: IReactorTime) -> None:
        self.reactor = reactor
        self.listings: list[Listing] = []
        self.opening = 0  # listings being opened (in a thread)

    @classmethod
    def of(cls, reactor: IReactorTime) -> _Room:
        if id(reactor) not in cls._all:
            cls._all[id(reactor)] = cls(reactor)
        return cls._all[id(reactor)]

    def take(self) -> None:
        """Room for one more listing, or Unavailable."""
        if len(self.listings) + self.opening >= MAX_OPEN:
            idle = [listing for listing in self.listings if listing.asked <= self.reactor.seconds() - IDLE_AFTER]
            if not idle:
                raise Unavailable(f"too many listings open at once ({MAX_OPEN}); try again shortly")
            min(idle, key=lambda listing: listing.asked)._expire(
                f"gave way to a new one: its reader had asked nothing for {IDLE_AFTER:.0f} s")
        self.opening += 1

    def give_back(self) -> None:
        """A listing being opened failed."""
        self.opening -= 1
        self._let_go(None)

    def hold(self, listing: Listing) -> None:
        self.opening -= 1
        if listing.closed:
            self._let_go(None)
        else:
            self.listings.append(listing)
            listing.on_close.append(self._let_go)

    def _let_go(self, listing: Listing | None) -> None:
        if listing is not None:
            self.listings.remove(listing)
        if not self.listings and not self.opening:
            del _Room._all[id(self.reactor)]


class _Holders:
    """The listings open on one SQLite catalog. Each holds a read
    transaction, and SQLite's log (``catalog.sqlite-wal``) cannot start
    again from its beginning while one does: under writes it grows, and
    listings that overlap (or one read slowly) would hold it for good, a
    gigabyte a few minutes on a busy proxy. Past WAL_LIMIT the oldest
    listing is ended (its reader told to page through), one a look, every
    WAL_EVERY seconds while any is open."""

    _all: dict[tuple[int, str], _Holders] = {}

    def __init__(self, reactor: IReactorTime, path: str) -> None:
        self.reactor, self.path, self.wal = reactor, path, path + "-wal"
        self.listings: list[Listing] = []  # oldest first
        self._look: Any = None

    @classmethod
    def of(cls, reactor: IReactorTime, path: str) -> _Holders:
        key = (id(reactor), path)
        if key not in cls._all:
            cls._all[key] = cls(reactor, path)
        return cls._all[key]

    def hold(self, listing: Listing) -> None:
        self.listings.append(listing)
        listing.on_close.append(self._let_go)
        if self._look is None:
            self._look = self.reactor.callLater(WAL_EVERY, self._check)

    def _let_go(self, listing: Listing) -> None:
        self.listings.remove(listing)
        if not self.listings:
            if self._look is not None and self._look.active():
                self._look.cancel()
            self._look = None
            del _Holders._all[(id(self.reactor), self.path)]

    def _check(self) -> None:
        self._look = None
        try:
            size = os.path.getsize(self.wal)
        except OSError:
            size = 0
        if size > WAL_LIMIT:  # (ended, it is let go: see _let_go)
            self.listings[0]._expire(f"held the catalog's log as it grew past {WAL_LIMIT >> 20} MiB")
        if self.listings:
            self._look = self.reactor.callLater(WAL_EVERY, self._check)


_pools: dict[int, ThreadPool] = {}
_pools_lock = threading.Lock()


def _pool(reactor: IReactorCore) -> ThreadPool:
    """The listings' threads: a few, shared by every listing, made at the
    first listing and stopped with the reactor."""
    with _pools_lock:
        pool = _pools.get(id(reactor))
        if pool is None:
            pool = ThreadPool(0, THREADS, "deposito-listing")
            # daemon threads: a listing's read never keeps the process from exiting
            pool.threadFactory = functools.partial(threading.Thread, daemon=True)  # type: ignore[assignment]
            pool.start()
            _pools[id(reactor)] = pool

            def stop() -> None:
                _pools.pop(id(reactor), None)
                pool.stop()

            reactor.addSystemEventTrigger("during", "shutdown", stop)
        return pool
