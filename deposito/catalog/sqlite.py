"""The catalog in SQLite, embedded: one file in the proxy's ``--data``.

WAL mode with full sync: a committed version survives a crash of the proxy
or the machine. One proxy owns it, so its records may be kept in memory
(see :class:`deposito.catalog.thread.CatalogThread`).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Iterator

from deposito.catalog import schema
from deposito.catalog.database import Damaged
from deposito.catalog.dialect import SQLITE
from deposito.errors import NoSpace, Unavailable

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from deposito.catalog.listing import IListingReactor, Listing, NameRange


WAL_KEPT = 64 << 20  # bytes of write-ahead log file kept on disk after a checkpoint


class SQLiteBackend:
    """The SQLite catalog in ``directory`` (made if absent)."""

    dialect = SQLITE
    shared = False

    def __init__(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        self.path = os.path.join(directory, "catalog.sqlite")
        self._durable = True  # the write connection's synchronous setting
        self._file: tuple[int, int] | None = None  # (device, inode) of the file the write connection opened

    def connect(self, reads_only: bool = False) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        with self._readable():
            if reads_only:
                db.execute("PRAGMA query_only=1")
                # A first read opens the write-ahead log, and the connection keeps
                # it open: one that first reads after the file is removed would
                # find no log, and read the file without what is in it.
                db.execute("SELECT count(*) FROM sqlite_master").fetchone()
                return db
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            # A listing read slowly holds its snapshot (up to MAX_AGE): no
            # checkpoint passes it, so the log grows with every change
            # meanwhile. Once one passes, the log file shrinks back to this.
            db.execute(f"PRAGMA journal_size_limit={WAL_KEPT}")
        self._durable = True
        if self._file is None:
            self._file = _identity(self.path)
        return db

    def _still_there(self) -> None:
        """Unavailable when the catalog's file is no longer the one opened:
        removed, or replaced, while the proxy ran. Changes made from then on
        would be lost with it, so none is made."""
        try:
            same = _identity(self.path) == self._file
        except OSError:  # gone, or its folder with it
            same = False
        if not same:
            raise Unavailable(f"the catalog {self.path} was removed or replaced while the proxy ran; restart"
                              " the proxy (a catalog that is gone is rebuilt from the storage servers)")

    @contextlib.contextmanager
    def _readable(self) -> Iterator[None]:
        """Around the first statements on the file: one that is not a
        database (any more) is told as Damaged."""
        try:
            yield
        except sqlite3.DatabaseError as e:
            if isinstance(e, sqlite3.OperationalError):
                raise
            raise Damaged(f"the catalog {self.path} cannot be read ({e})") from e

    def prepare(self, db: sqlite3.Connection) -> None:
        with self._readable():
            schema.refuse_newer(db.execute("PRAGMA user_version").fetchone()[0], self.path)
            db.executescript(SQLITE.ddl(schema.SCHEMA))
            db.execute("BEGIN IMMEDIATE")
        try:
            if schema.outdated(db):
                schema.migrate(db)
            schema.finish(db, SQLITE.ddl)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def pipeline(self, db: sqlite3.Connection) -> contextlib.nullcontext[None]:
        return contextlib.nullcontext()  # in the process: nothing to save

    def first_row(self, cursor: sqlite3.Cursor) -> Callable[[], Any]:
        row = cursor.fetchone()  # now: a statement not read to its end holds the COMMIT back
        return lambda: row

    def flush(self, db: sqlite3.Connection) -> None:
        pass

    def begin(self, db: sqlite3.Connection, durable: bool) -> None:
        """A batch of nothing durable commits without an fsync (a later
        durable commit covers it: see :func:`deposito.catalog.records.effects`)."""
        self._still_there()
        if durable != self._durable:
            db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self._durable = durable
        db.execute("BEGIN IMMEDIATE")

    def stale(self, db: sqlite3.Connection) -> bool:
        return False  # in this process: never closed from the other end

    def notify(self, db: sqlite3.Connection, channel: str, message: str) -> None:
        raise NotImplementedError("a SQLite catalog is never shared")

    def channel(self) -> Any:
        raise NotImplementedError("a SQLite catalog is never shared")

    def watch(self, connection: Callable[[], Any]) -> ContextManager[None]:
        return contextlib.nullcontext()  # a file on the proxy's own disk: a slow disk is waited for

    def unreachable(self, error: BaseException) -> bool:
        return False  # a file on the proxy's own disk: its errors are errors

    def renewable(self, error: BaseException) -> bool:
        return False

    def retryable(self, error: BaseException) -> bool:
        return False  # BEGIN IMMEDIATE: writers take turns, and never conflict

    def refusal(self, error: BaseException) -> BaseException | None:
        code = getattr(error, "sqlite_errorcode", None) if isinstance(error, sqlite3.OperationalError) else None
        if code == sqlite3.SQLITE_FULL:
            return NoSpace("the catalog's disk is full")
        if code is not None and code & 0xFF == sqlite3.SQLITE_READONLY:
            return Unavailable(f"the catalog's disk cannot be written ({error})")
        if code is not None and code & 0xFF in (sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN):
            return Unavailable(f"the catalog's file cannot be read or written ({error})")  # failing, or gone
        return None

    def listing(self, reactor: IListingReactor, names: NameRange) -> Deferred[Listing]:
        from twisted.internet.defer import fail

        from deposito.catalog.listing import open_listing

        try:
            self._still_there()  # else the listing would open (or make) whatever file is there now
        except Unavailable:
            return fail()
        return open_listing(reactor, self.path, names)


def _identity(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino
