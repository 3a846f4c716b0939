"""What the catalog's writes share (see :mod:`deposito.catalog.operations`):
committing a version, dropping one and its copies, keeping the totals and a
file's server list, and queueing files for the reconciler."""

from __future__ import annotations

import builtins
import time
from typing import Any, Iterable, Iterator, TypeVar

from deposito.catalog.database import Connection, Database
from deposito.catalog.dialect import Dialect, Statement
from deposito.catalog.records import WAITING, Expect, FileRecord
from deposito.catalog.schema import RECORD, TOTALS, to_record
from deposito.errors import Conflict, NotFound, Unavailable
from deposito.hidden import VISIBLE, hidden_name, manifest_name, parts_range


SKEW_TOLERANCE = 0.1  # seconds: a proxy's clock this close to the database's is taken as it (see _read_skew)
CURRENT = "SELECT blob, size, replicas, parts FROM files WHERE name = ?"  # a name's version, as _replace needs it
UNREAD = object()  # (see _replace)
T = TypeVar("T")


class Changes(Database):
    """The steps of the catalog's transactions, each taking the open
    connection ``db``; the operations compose them."""

    proxy: str  # this proxy's id among those sharing the catalog
    _reported: builtins.list[str] | None  # names whose records the open transaction changed (None: any)
    skew = 0.0  # the database's clock less the reactor's (see _on_db_clock)
    _machine_clock = staticmethod(time.time)  # the reactor's clock (see twisted_internals.steady_clock)

    def _on_db_clock(self, t: float) -> float:
        """A time of the reactor's clock, on the database's. Times that
        proxies store and compare (when a copy was made, a proxy last beat,
        a version was written, an upload last grew) are all on the
        database's clock, so that proxies whose clocks differ still agree on
        which came first. A SQLite database's clock is the machine's wall
        clock, which the reactor's leaves when the wall clock is stepped
        (see twisted_internals.steady_clock): the times kept follow the wall
        clock all the same. Calls taking a time convert it with this (and
        :meth:`_off_db_clock` a time they hand back)."""
        return t + self.skew if 0 < t < WAITING else t  # (0: at once, whatever the clock; WAITING: never)

    def _off_db_clock(self, t: float) -> float:
        return t - self.skew if 0 < t < WAITING else t

    def _read_skew(self, db: Connection) -> None:
        """Learn the database's clock (see :meth:`_on_db_clock`), read at
        each beat in a round trip of its own: to half that round trip, and
        taken only when it moved by more than SKEW_TOLERANCE (clocks kept by
        NTP agree to milliseconds: theirs stays 0, and no proxy's times go
        back and forth by a round trip's noise)."""
        self.backend.flush(db)  # the statements of the batch before it: not part of its round trip
        began = self._machine_clock()
        clock = float(db.execute("SELECT " + self.dialect.clock).fetchone()[0])
        ended = self._machine_clock()
        skew = clock - (began + ended) / 2
        if ended - began <= SKEW_TOLERANCE and abs(skew - self.skew) > SKEW_TOLERANCE:  # (a slow one says little)
            self.skew = 0.0 if abs(skew) <= SKEW_TOLERANCE else skew

    def _tell(self, names: Iterable[str] | None) -> None:
        """The records of ``names`` (None: any) were changed (see records.effects, ``tells``)."""
        if names is None or self._reported is None:
            self._reported = None
        else:
            self._reported.extend(names)

    def _settle_at(self, db: Connection, name: str, version: int, blob: str, servers: list[str]
                   ) -> tuple[bool, Any]:
        """A commit's first steps: lock ``name``'s row and settle it at
        ``version`` unless a newer one was settled first, and take the
        upload's intents (Unavailable if this proxy lost its lease). Returns
        whether ``version`` is the newest (if not, its copies are made
        garbage), and the version it replaces, read in the same round trip
        (see :meth:`_replace`)."""
        settled = db.execute(f"UPDATE names SET settled = {self.dialect.greatest}(settled, ?) WHERE name = ?"
                             " RETURNING settled", (version, name))
        intents = db.execute("DELETE FROM intents WHERE blob = ? RETURNING server, owner", (blob,))
        # after the lock: the newest committed, its row locked too (a copy of it being counted
        # meanwhile is counted before this reads which copies become garbage)
        current = db.execute(CURRENT + self.dialect.for_update, (name,))
        # the three are sent before any answer is read: one round trip on a distant database
        newest, taken, replaced = settled.fetchone(), intents.fetchall(), current.fetchone()
        if not set(servers) <= {server for server, owner in taken if owner == self.proxy}:
            raise Unavailable("this proxy lost its lease on the catalog meanwhile: the upload was abandoned")
        # servers written to but not holding a verified copy are garbage
        left = {server for server, _ in taken} - set(servers)
        if left:
            db.executemany(INSERT_GARBAGE, [(blob, server) for server in sorted(left)])
        if newest is not None and newest[0] > version:
            db.executemany(INSERT_GARBAGE, [(blob, s) for s in servers])
            return False, replaced
        return True, replaced

    @staticmethod
    def _check(db: Connection, name: str, expect: Expect | None, newest: bool = True,
               version: int | None = None) -> None:
        """A conditional write's condition, on ``name``'s current version
        (locked by :meth:`_settle_at`): raises when it does not hold, and
        Conflict when it holds but a newer write of the name (a version or a
        delete) was committed meanwhile: its writer must not be told yes
        for a version nobody will see."""
        if expect is not None:
            row = db.execute(RECORD + " WHERE name = ?", (name,)).fetchone()
            expect(to_record(row) if row is not None else None)
            if not newest:
                raise Conflict(f"{name} was written meanwhile")
            # an older write of the name under way (of ``version``, a commit's): told yes,
            # this one would hide it for good once it is told yes too, yet this condition
            # never saw it; no order of the two would explain both answers
            if version is not None and db.execute("SELECT 1 FROM intents WHERE name = ? AND version < ? LIMIT 1",
                                                  (name, version)).fetchone():
                raise Conflict(f"{name} is being written meanwhile; try again")

    def _bucket_stays(self, db: Connection, bucket: str) -> None:
        """NotFound unless S3 bucket ``bucket`` exists; its row is locked
        until the commit, so that deleting the bucket waits for a write into
        it (and then finds it not empty), or the write finds it gone."""
        if db.execute("SELECT 1 FROM buckets WHERE name = ?" + self.dialect.for_key_share, (bucket,)).fetchone() is None:
            raise NotFound(f"no bucket named {bucket}")

    def _replace(self, db: Connection, name: str, row: tuple[Any, ...], replaced: Any = UNREAD,
                 copies: Iterable[str] = ()) -> None:
        """Make ``row`` (the values of UPSERT_FILE) ``name``'s version, with
        copies of its blob on ``copies`` (servers): the one it replaces
        (``replaced``: as :data:`CURRENT` reads it, unless read here) is
        garbage. Its writes go together (see Dialect.together)."""
        old = db.execute(CURRENT, (name,)).fetchone() if replaced is UNREAD else replaced
        files, size, wanted = weight(name, row[3], row[5], row[9])
        writes: builtins.list[Statement | None] = []
        if old is not None:
            if old[3]:  # a multipart version: its parts are found by reading
                self._drop_version(db, old[0], old[3])
            else:
                writes += drop_blob(old[0])
            was = weight(name, old[1], old[2], old[3])
            files, size, wanted = files - was[0], size - was[1], wanted - was[2]
        writes += [totals(files, size, wanted), (UPSERT_FILE, row),
                   new_rows("copies", [(row[2], s, row[6]) for s in copies])]
        together(db, self.dialect, writes)

    @staticmethod
    def _add_copies(db: Connection, blob: str, servers: list[str], now: float) -> None:
        insert_rows(db, "copies", [(blob, s, now) for s in servers])

    def _drop_version(self, db: Connection, blob: str, parts: str) -> None:
        """A version's copies are garbage: its blob's, or every hidden file of its parts'."""
        if parts:
            self._drop_hidden(db, manifest_name(parts), manifest_name(parts) + "0")
        else:
            self._drop_blob(db, blob)

    def _drop_blob(self, db: Connection, blob: str) -> None:
        together(db, self.dialect, drop_blob(blob))

    def _drop_hidden(self, db: Connection, low: str, high: str, where: str = "") -> int:
        """The hidden files named from ``low`` up to (not including) ``high``
        (and matching ``where``) are gone, their copies garbage. Returns how many."""
        rows = db.execute(f"DELETE FROM files WHERE name >= ? AND name < ? {where} RETURNING name, blob, replicas",
                          (low, high)).fetchall()
        for name, blob, _ in rows:
            self._drop_blob(db, blob)
        db.executemany("DELETE FROM work WHERE name = ?", [(row[0],) for row in rows])
        db.executemany("DELETE FROM names WHERE name = ?", [(row[0],) for row in rows])
        add_totals(db, 0, 0, -sum(row[2] for row in rows))
        return len(rows)

    def _servers_changed(self, db: Connection, blobs: Iterable[str]) -> None:
        """Copies of these blobs were added or removed: their files' server
        lists follow, a page of blobs in one statement."""
        names = [row[0] for page in pages(sorted(set(blobs))) for row in db.execute(
            f"UPDATE files SET servers = {self.dialect.servers_of('files.blob')} WHERE blob IN ({marks(page)})"
            " RETURNING name", page)]
        self._tell(name for name in names if name >= VISIBLE)
        # parts among them: their objects' server lists follow too
        hidden = [hidden_name(name) for name in names if name < VISIBLE]
        uploads = sorted({h[0] for h in hidden if h is not None and h[1]})
        if uploads:
            self._tell(None)  # the objects made of those parts
        for upload in uploads:
            self._parts_changed(db, upload)

    def _parts_changed(self, db: Connection, upload: str) -> None:
        """A version made of parts lists the servers of its part with the
        fewest copies: what LIST, STAT and WAIT show of it."""
        low, high = parts_range(upload)
        db.execute("UPDATE files SET servers = coalesce((SELECT servers FROM files WHERE name > ? AND name < ?"
                   " AND start IS NOT NULL ORDER BY CASE WHEN servers = '' THEN 0"
                   " ELSE 1 + length(servers) - length(replace(servers, ' ', '')) END, name LIMIT 1), '')"
                   " WHERE parts = ?", (low, high, upload))

    def _enqueue(self, db: Connection, names: Iterable[str], due: float = 0.0, only_new: bool = False) -> None:
        """Queue ``names`` to be looked at from ``due`` on (or sooner, if queued
        so already); ``only_new``: leave files already queued as they are."""
        rows = [(name, due) for name in dict.fromkeys(names)]  # once each: an upsert may touch a row once
        on_conflict = "DO NOTHING" if only_new else (
            f"(name) DO UPDATE SET due = {self.dialect.least}(work.due, excluded.due), rank = 0, gen = work.gen + 1,"
            " passed = NULL")
        for page in pages(rows):
            db.execute(f"INSERT INTO work (name, due) {values(page)} ON CONFLICT {on_conflict}", flat(page))

    @staticmethod
    def _seen_bucket(db: Connection, name: str, meta: str, now: float) -> None:
        """Rebuilding: a version S3 stored (it has gateway metadata) names its
        bucket, which is made again if the catalog lost it."""
        if meta and name >= VISIBLE and "/" in name:
            db.execute("INSERT INTO buckets (name, created) VALUES (?, ?) ON CONFLICT DO NOTHING",
                       (name.split("/", 1)[0], now))

    def _seen_version(self, db: Connection, name: str, version: int) -> None:
        """Rebuilding: ``version`` of ``name`` is on the servers, so versions given out from now on are above it."""
        greatest = self.dialect.greatest
        db.execute("INSERT INTO names (name, last_version, settled) VALUES (?, ?, ?) ON CONFLICT (name)"
                   f" DO UPDATE SET last_version = {greatest}(names.last_version, excluded.last_version),"
                   f" settled = {greatest}(names.settled, excluded.settled)", (name, version, version))

    @staticmethod
    def _lookup(db: Connection, name: str) -> FileRecord | None:
        row = db.execute(RECORD + " WHERE name = ?", (name,)).fetchone()
        return to_record(row) if row else None

    @staticmethod
    def _records(db: Connection, names: builtins.list[str]) -> dict[str, FileRecord]:
        """The records of those of ``names`` that have one, by name: a page
        of names read in one statement."""
        found: dict[str, FileRecord] = {}
        for page in pages(sorted(set(names))):
            found.update((row[0], to_record(row)) for row in db.execute(RECORD + f" WHERE name IN ({marks(page)})",
                                                                        page))
        return found


INSERT_GARBAGE = "INSERT INTO garbage (blob, server) VALUES (?, ?) ON CONFLICT DO NOTHING"
INSERT_COPY = "INSERT INTO copies VALUES (?, ?, ?) ON CONFLICT DO NOTHING"
UPSERT_FILE = ("INSERT INTO files (name, version, blob, size, sha256, replicas, created, servers, meta, parts)"
               " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET"
               " version = excluded.version, blob = excluded.blob, size = excluded.size, sha256 = excluded.sha256,"
               " replicas = excluded.replicas, created = excluded.created, servers = excluded.servers,"
               " meta = excluded.meta, parts = excluded.parts, start = NULL")


def weight(name: str, size: int, replicas: int, parts: str) -> tuple[int, int, int]:
    """What a row adds to the totals (files, bytes, copies wanted): a file
    counts whole; a version made of parts counts as a file, its hidden files
    count the copies."""
    if name < VISIBLE:
        return 0, 0, replicas
    return 1, size, 0 if parts else replicas


def together(db: Connection, dialect: Dialect, writes: Iterable[Statement | None]) -> Any:
    """Run ``writes`` (those not None), none of which reads what another
    writes, in as few statements as the database allows (Dialect.together):
    the last one's cursor."""
    cursor = None
    for sql, params in dialect.together([w for w in writes if w is not None]):
        cursor = db.execute(sql, params)
    return cursor


def new_rows(into: str, rows: list[tuple[Any, ...]]) -> Statement | None:
    """The statement that inserts ``rows`` into ``into`` (a table, with its
    columns if not all), leaving out those already there; None for no rows."""
    if not rows:
        return None
    return f"INSERT INTO {into} {values(rows)} ON CONFLICT DO NOTHING", flat(rows)


ROWS_PER_STATEMENT = 500  # rows a statement carries, well within both databases' limits on parameters


def pages(rows: list[T]) -> Iterator[list[T]]:
    """``rows`` in pages of ROWS_PER_STATEMENT, one statement for each: on
    PostgreSQL a statement costs the proxy's CPU and the database's far more
    than a row does."""
    for start in range(0, len(rows), ROWS_PER_STATEMENT):
        yield rows[start:start + ROWS_PER_STATEMENT]


def values(rows: list[tuple[Any, ...]]) -> str:
    """A VALUES list of parameters for ``rows`` (see :func:`flat`), all of
    one width: its columns are column1, column2, ... on both databases."""
    row = "(" + ", ".join("?" * len(rows[0])) + ")"
    return "VALUES " + ",".join([row] * len(rows))


def flat(rows: Iterable[tuple[Any, ...]]) -> tuple[Any, ...]:
    """The parameters of ``rows``, one after the other (see :func:`values`)."""
    return tuple(v for row in rows for v in row)


def marks(items: list[Any]) -> str:
    """As many parameters as ``items``, for an IN list."""
    return ",".join("?" * len(items))


def insert_rows(db: Connection, into: str, rows: list[tuple[Any, ...]]) -> None:
    """Insert ``rows`` into ``into`` in one statement (see new_rows)."""
    statement = new_rows(into, rows)
    if statement is not None:
        db.execute(*statement)


def drop_blob(blob: str) -> list[Statement]:
    """The statements that make ``blob``'s copies garbage."""
    return [("INSERT INTO garbage (blob, server) SELECT blob, server FROM copies WHERE blob = ? ON CONFLICT DO NOTHING",
             (blob,)),
            ("DELETE FROM copies WHERE blob = ?", (blob,))]


def totals(files: int, size: int, wanted: int) -> Statement | None:
    """The statement that adds to the totals STATUS shows; None for nothing to add."""
    deltas = [(key, delta) for key, delta in zip(TOTALS, (files, size, wanted)) if delta]
    if not deltas:
        return None
    return ("UPDATE totals SET value = value + CASE key" + " WHEN ? THEN ?" * len(deltas)
            + " END WHERE key IN (%s)" % ",".join("?" * len(deltas)),
            (*[v for pair in deltas for v in pair], *[key for key, _ in deltas]))


def add_totals(db: Connection, files: int, size: int, wanted: int) -> None:
    """Add to the totals STATUS shows, in one statement."""
    statement = totals(files, size, wanted)
    if statement is not None:
        db.execute(*statement)
