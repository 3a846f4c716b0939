"""The proxy's catalog: which names exist, their versions, and where the copies are.

SQLite in WAL mode with full sync: a committed version survives a crash of
the proxy or the machine. Every method is one short transaction and blocks;
the proxy calls them on its catalog thread (see :class:`CatalogThread`).

Invariants kept here:
- a version becomes visible in one transaction (:meth:`commit`), only after
  its copies exist;
- versions of a name only grow, across DELETE too (``names.last_version``,
  the highest given out); a commit older than the newest version committed
  or deleted (``names.settled``) is superseded at once;
- a blob written but not committed is an *intent*; abandoned intents and
  replaced or deleted copies become *garbage*, which the proxy deletes from
  the servers, so nothing is orphaned for good;
- cost follows work: the files that may need copies made or dropped are
  queued in ``work`` by the changes that cause it (see :mod:`deposito.reconciler`),
  and the counts that STATUS shows are kept in ``totals`` with every change,
  so nothing periodic reads every file.
"""

from __future__ import annotations

import functools
import os
import sqlite3
from collections import OrderedDict
from typing import Any, Callable, Iterable, TypeVar

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from zope.interface import implementer

from deposito.batching import Batches
from deposito.interfaces import ICatalog

FILES = """CREATE TABLE IF NOT EXISTS files (
    name TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    blob TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    replicas INTEGER NOT NULL,
    created REAL NOT NULL,
    servers TEXT NOT NULL DEFAULT ''
) WITHOUT ROWID"""

SCHEMA = FILES + """;
CREATE TABLE IF NOT EXISTS names (
    name TEXT PRIMARY KEY,
    last_version INTEGER NOT NULL,
    settled INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS copies (
    blob TEXT NOT NULL,
    server TEXT NOT NULL,
    since REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (blob, server)
);
CREATE INDEX IF NOT EXISTS copies_by_server_blob ON copies (server, blob);
DROP INDEX IF EXISTS copies_by_server;
CREATE TABLE IF NOT EXISTS intents (
    blob TEXT NOT NULL,
    server TEXT NOT NULL,
    PRIMARY KEY (blob, server)
);
CREATE TABLE IF NOT EXISTS garbage (
    blob TEXT NOT NULL,
    server TEXT NOT NULL,
    PRIMARY KEY (blob, server)
);
CREATE TABLE IF NOT EXISTS servers (
    id TEXT PRIMARY KEY,
    zone TEXT NOT NULL,
    host TEXT NOT NULL,
    port INTEGER NOT NULL,
    capacity INTEGER NOT NULL,
    used INTEGER NOT NULL,
    blobs INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS totals (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS work (
    name TEXT PRIMARY KEY,
    due REAL NOT NULL,
    rank INTEGER NOT NULL DEFAULT 0,
    gen INTEGER NOT NULL DEFAULT 0,
    wanted INTEGER,
    have INTEGER,
    moves INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS work_in_order ON work (rank, due);
CREATE INDEX IF NOT EXISTS work_by_due ON work (due);
"""

# The schema's version (PRAGMA user_version). 0: a catalog from before the
# work queue, the totals, names.settled and files.servers; opening it adds
# them (see Catalog._migrate). ``files`` is kept in name order (WITHOUT
# ROWID) with its copies' servers beside each file (the ``copies`` rows, as
# a space-separated sorted list, kept with every change of them), so that a
# lookup is one row and a listing reads the table in order.
SCHEMA_VERSION = 1

# A queued file waits for this long at most, when only a server coming back
# (or dying) can change what can be done for it: such a change wakes it.
WAITING = 1e18
# The servers holding copies of a blob, as ``files.servers`` keeps them.
SERVERS_OF = ("coalesce((SELECT group_concat(server, ' ') FROM"
              " (SELECT server FROM copies c WHERE c.blob = {blob} ORDER BY server)), '')")
RECORD = "SELECT name, version, blob, size, sha256, replicas, servers FROM files"
TOTALS = ("files", "bytes", "wanted")


@attrs.frozen
class FileRecord:
    """The newest committed version of a name."""

    name: str
    version: int
    blob: str
    size: int
    sha256: str
    replicas: int
    servers: tuple[str, ...]


Method = TypeVar("Method", bound=Callable[..., Any])


def effects(*, durable: bool, keeps_records: bool) -> Callable[[Method], Method]:
    """Declares what a :class:`Catalog` method's call does, on the method
    itself; :class:`CatalogThread` calls nothing that does not declare it.

    ``durable=False``: what it records may be lost in a machine crash without
    harm, so a batch of nothing else commits without an fsync (a later durable
    commit covers it): an unrecorded intent leaves an orphan that the
    servers' inventory finds; a version number not kept was never visible; a
    garbage entry not forgotten is deleted again ("absent"); a server's
    address comes again when it joins. The reconciler's queue is a guide, not
    a record: a lost change to it is found again by the events that follow
    and by the reconciler's sweep. An inventory's result lost likewise is
    found again by the server's next one.

    ``keeps_records=True``: it leaves every name's record as it was (files
    and copies are untouched), so the records the catalog thread keeps in
    memory stay true.
    """
    def declare(method: Method) -> Method:
        method.durable = durable  # type: ignore[attr-defined]
        method.keeps_records = keeps_records  # type: ignore[attr-defined]
        return method
    return declare


class Catalog:
    """Blocking access to the catalog database (one connection, one thread)."""

    def __init__(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        self.path = os.path.join(directory, "catalog.sqlite")
        self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self._durable = True
        self.db.executescript(SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        """Bring an older catalog to this schema: its totals are counted and
        every file is queued once, so whatever work it had left is found."""
        if self.db.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
            return

        def tx(db: sqlite3.Connection) -> None:
            if "servers" not in [row[1] for row in db.execute("PRAGMA table_info(files)")]:
                db.execute("ALTER TABLE files RENAME TO files_before")
                db.execute(FILES)
                db.execute("INSERT INTO files SELECT f.name, f.version, f.blob, f.size, f.sha256, f.replicas,"
                           f" f.created, {SERVERS_OF.format(blob='f.blob')} FROM files_before f")
                db.execute("DROP TABLE files_before")
            if "settled" not in [row[1] for row in db.execute("PRAGMA table_info(names)")]:
                # no upload outlives a restart: whatever version was given out is settled
                db.execute("ALTER TABLE names ADD COLUMN settled INTEGER NOT NULL DEFAULT 0")
                db.execute("UPDATE names SET settled = last_version")
            files, size, wanted = db.execute(
                "SELECT count(*), coalesce(sum(size), 0), coalesce(sum(replicas), 0) FROM files").fetchone()
            db.executemany("INSERT OR REPLACE INTO totals VALUES (?, ?)",
                           [("files", files), ("bytes", size), ("wanted", wanted)])
            db.execute("INSERT OR IGNORE INTO work (name, due) SELECT name, 0 FROM files")
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        self._tx(tx)

    def close(self) -> None:
        self.db.close()

    def _tx(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``fn`` atomically: its own transaction, or a savepoint inside a
        batch (see :meth:`batch`), so one failing call undoes only itself."""
        if self.db.in_transaction:
            self.db.execute("SAVEPOINT call")
            try:
                result = fn(self.db)
            except BaseException:
                self.db.execute("ROLLBACK TO call")
                self.db.execute("RELEASE call")
                raise
            self.db.execute("RELEASE call")
            return result
        self.db.execute("BEGIN IMMEDIATE")
        try:
            result = fn(self.db)
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")
        return result

    def batch(self, calls: list[tuple[Callable[..., Any], tuple]]) -> list[tuple[bool, Any]]:
        """Run many calls in one transaction: one commit (one fsync) for all.

        Returns (ok, result or exception) per call, once the commit is durable.
        If the commit itself fails, every call fails with its error.
        """
        results: list[tuple[bool, Any]] = []
        durable = any(getattr(method, "durable", True) for method, _ in calls)
        if durable != self._durable:
            self.db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self._durable = durable
        self.db.execute("BEGIN IMMEDIATE")
        try:
            for method, args in calls:
                self.db.execute("SAVEPOINT batched")
                try:
                    results.append((True, method(self, *args)))
                except Exception as e:
                    self.db.execute("ROLLBACK TO batched")
                    results.append((False, e))
                self.db.execute("RELEASE batched")
            self.db.execute("COMMIT")
        except BaseException as e:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            return [(False, e) for _ in calls]
        return results

    # -- writes

    @effects(durable=True, keeps_records=False)
    def recover(self) -> int:
        """After a restart: uploads that never committed are garbage now."""
        def tx(db: sqlite3.Connection) -> int:
            n = db.execute("INSERT OR IGNORE INTO garbage SELECT blob, server FROM intents").rowcount
            db.execute("DELETE FROM intents")
            return n
        return self._tx(tx)

    @effects(durable=False, keeps_records=True)
    def begin_upload(self, name: str, blob: str, servers: Iterable[str]) -> int:
        """Allocate the next version of ``name`` and record where its blob is being written."""
        def tx(db: sqlite3.Connection) -> int:
            row = db.execute("SELECT last_version FROM names WHERE name = ?", (name,)).fetchone()
            version = (row[0] if row else 0) + 1
            db.execute("INSERT INTO names (name, last_version) VALUES (?, ?)"
                       " ON CONFLICT (name) DO UPDATE SET last_version = excluded.last_version", (name, version))
            db.executemany("INSERT OR IGNORE INTO intents (blob, server) VALUES (?, ?)",
                           [(blob, s) for s in servers])
            return version
        return self._tx(tx)

    @effects(durable=False, keeps_records=True)
    def add_intent(self, blob: str, server: str) -> None:
        self._tx(lambda db: db.execute("INSERT OR IGNORE INTO intents VALUES (?, ?)", (blob, server)))

    @effects(durable=True, keeps_records=True)
    def abandon(self, blob: str) -> None:
        """An upload failed: every server it touched has garbage to delete."""
        def tx(db: sqlite3.Connection) -> None:
            db.execute("INSERT OR IGNORE INTO garbage SELECT blob, server FROM intents WHERE blob = ?", (blob,))
            db.execute("DELETE FROM intents WHERE blob = ?", (blob,))
        self._tx(tx)

    @effects(durable=True, keeps_records=False)
    def commit(self, name: str, version: int, blob: str, size: int, sha256: str,
               replicas: int, servers: Iterable[str], now: float) -> bool:
        """Make a version visible with its copies, in one transaction.

        Returns False when a newer version was committed or deleted
        meanwhile: this one is then garbage at once and readers never see it.
        """
        servers = list(servers)

        def tx(db: sqlite3.Connection) -> bool:
            # servers written to but not holding a verified copy are garbage
            db.execute(
                "INSERT OR IGNORE INTO garbage SELECT blob, server FROM intents WHERE blob = ? AND server NOT IN (%s)"
                % ",".join("?" * len(servers)), (blob, *servers))
            db.execute("DELETE FROM intents WHERE blob = ?", (blob,))
            settled = db.execute("SELECT settled FROM names WHERE name = ?", (name,)).fetchone()
            if settled is not None and settled[0] > version:
                db.executemany("INSERT OR IGNORE INTO garbage VALUES (?, ?)", [(blob, s) for s in servers])
                return False
            db.execute("UPDATE names SET settled = ? WHERE name = ?", (version, name))
            row = db.execute("SELECT version, blob, size, replicas FROM files WHERE name = ?", (name,)).fetchone()
            if row is not None:
                self._drop_blob(db, row[1])
                _count(db, 0, size - row[2], replicas - row[3])
            else:
                _count(db, 1, size, replicas)
            db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (name, version, blob, size, sha256, replicas, now, " ".join(sorted(set(servers)))))
            db.executemany("INSERT OR IGNORE INTO copies VALUES (?, ?, ?)", [(blob, s, now) for s in servers])
            return True
        return self._tx(tx)

    @staticmethod
    def _drop_blob(db: sqlite3.Connection, blob: str) -> None:
        db.execute("INSERT OR IGNORE INTO garbage SELECT blob, server FROM copies WHERE blob = ?", (blob,))
        db.execute("DELETE FROM copies WHERE blob = ?", (blob,))

    @effects(durable=True, keeps_records=False)
    def delete(self, name: str) -> FileRecord | None:
        def tx(db: sqlite3.Connection) -> FileRecord | None:
            record = self._lookup(db, name)
            if record is not None:
                db.execute("DELETE FROM files WHERE name = ?", (name,))
                db.execute("UPDATE names SET settled = max(settled, ?) WHERE name = ?", (record.version, name))
                db.execute("DELETE FROM work WHERE name = ?", (name,))
                self._drop_blob(db, record.blob)
                _count(db, -1, -record.size, -record.replicas)
            return record
        return self._tx(tx)

    @effects(durable=True, keeps_records=False)
    def set_replicas(self, name: str, count: int) -> FileRecord | None:
        def tx(db: sqlite3.Connection) -> FileRecord | None:
            row = db.execute("SELECT replicas FROM files WHERE name = ?", (name,)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE files SET replicas = ? WHERE name = ?", (count, name))
            _count(db, 0, 0, count - row[0])
            _enqueue(db, [name])
            return self._lookup(db, name)
        return self._tx(tx)

    @effects(durable=True, keeps_records=False)
    def add_copy(self, name: str, blob: str, server: str, now: float) -> bool:
        """A new copy of ``name``'s blob is durable on ``server``: it counts, if the
        blob is still the current one (else it is garbage)."""
        def tx(db: sqlite3.Connection) -> bool:
            db.execute("DELETE FROM intents WHERE blob = ? AND server = ?", (blob, server))
            row = db.execute("SELECT 1 FROM files WHERE name = ? AND blob = ?", (name, blob)).fetchone()
            if row is None:
                db.execute("INSERT OR IGNORE INTO garbage VALUES (?, ?)", (blob, server))
                return False
            db.execute("INSERT OR IGNORE INTO copies VALUES (?, ?, ?)", (blob, server, now))
            _servers_changed(db, [blob])
            db.execute("DELETE FROM garbage WHERE blob = ? AND server = ?", (blob, server))
            _enqueue(db, [name])
            return True
        return self._tx(tx)

    @effects(durable=True, keeps_records=False)
    def drop_copy(self, blob: str, server: str) -> None:
        """A copy no longer counts (found corrupt) and is to be deleted from
        its server; its file is queued, to be copied again."""
        def tx(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM copies WHERE blob = ? AND server = ?", (blob, server))
            _servers_changed(db, [blob])
            db.execute("INSERT OR IGNORE INTO garbage VALUES (?, ?)", (blob, server))
            _enqueue(db, [row[0] for row in db.execute("SELECT name FROM files WHERE blob = ?", (blob,))])
        self._tx(tx)

    @effects(durable=True, keeps_records=False)
    def drop_copies(self, drops: Iterable[tuple[str, str]]) -> None:
        """The reconciler's drops, (blob, server) each: copies over the wanted
        count, or on dead servers once replaced. No longer counted, to be deleted."""
        def tx(db: sqlite3.Connection) -> None:
            for blob, server in drops:
                db.execute("DELETE FROM copies WHERE blob = ? AND server = ?", (blob, server))
                db.execute("INSERT OR IGNORE INTO garbage VALUES (?, ?)", (blob, server))
            _servers_changed(db, {blob for blob, _ in drops})
        self._tx(tx)

    @effects(durable=True, keeps_records=False)
    def abandon_copy(self, blob: str, server: str) -> None:
        """A repair copy failed: what it wrote is garbage."""
        def tx(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM intents WHERE blob = ? AND server = ?", (blob, server))
            db.execute("INSERT OR IGNORE INTO garbage VALUES (?, ?)", (blob, server))
        self._tx(tx)

    @effects(durable=False, keeps_records=False)
    def reconcile_inventory(self, server: str, present: Iterable[str], lo: str | None, hi: str | None,
                            before: float) -> tuple[int, int, int, list[str]]:
        """Compare what a server holds with what the catalog says it holds, over
        one range of blob ids: above ``lo`` (None: from the first) up to and
        including ``hi`` (None: to the last). ``present`` is what the server
        listed in that range (ids outside it are left alone).

        Copies the catalog lists in the range (made before ``before``) that the
        server lacks stop counting; blobs it holds that are a file's current
        blob count (again); anything else it holds is garbage, unless still
        being written. The catalog's copies are read through the index in
        pages, so a range of any size costs memory for a page and the listed
        blobs. Returns (missing, counted, garbage, names of the files whose
        copies changed).
        """
        present = {b for b in present if (lo is None or b > lo) and (hi is None or b <= hi)}
        page = 1000

        def tx(db: sqlite3.Connection) -> tuple[int, int, int, list[str]]:
            names: list[str] = []
            changed: list[str] = []  # blobs whose copies on this server were added or removed
            missing = counted = garbage = 0
            held: set[str] = set()  # listed by both
            after = lo
            while True:
                rows = db.execute(
                    "SELECT blob, since FROM copies WHERE server = ?"
                    + (" AND blob > ?" if after is not None else "") + (" AND blob <= ?" if hi is not None else "")
                    + " ORDER BY blob LIMIT ?",
                    [v for v in (server, after, hi) if v is not None] + [page]).fetchall()
                for blob, since in rows:
                    if blob in present:
                        held.add(blob)
                    elif since < before:
                        db.execute("DELETE FROM copies WHERE blob = ? AND server = ?", (blob, server))
                        changed.append(blob)
                        missing += 1
                        row = db.execute("SELECT name FROM files WHERE blob = ?", (blob,)).fetchone()
                        if row is not None:
                            names.append(row[0])
                if len(rows) < page:
                    break
                after = rows[-1][0]
            for blob in sorted(present - held):
                if db.execute("SELECT 1 FROM garbage WHERE blob = ? AND server = ?", (blob, server)).fetchone():
                    continue  # on its way out: counting it again would race its deletion
                row = db.execute("SELECT name FROM files WHERE blob = ?", (blob,)).fetchone()
                if row is not None:
                    db.execute("INSERT OR IGNORE INTO copies VALUES (?, ?, ?)", (blob, server, before))
                    changed.append(blob)
                    counted += 1
                    names.append(row[0])
                elif not db.execute("SELECT 1 FROM intents WHERE blob = ? AND server = ?",
                                    (blob, server)).fetchone():
                    db.execute("INSERT OR IGNORE INTO garbage VALUES (?, ?)", (blob, server))
                    garbage += 1
            _servers_changed(db, changed)
            _enqueue(db, names)
            return missing, counted, garbage, names
        return self._tx(tx)

    @effects(durable=False, keeps_records=True)
    def is_empty(self) -> bool:
        """No name was ever stored: a new catalog, or a lost one."""
        return self.db.execute("SELECT 1 FROM names LIMIT 1").fetchone() is None

    @effects(durable=True, keeps_records=False)
    def adopt(self, server: str, entries: Iterable[tuple[str, int, int, str, int, str]], now: float) -> int:
        """Rebuilding: take a server's blobs (blob, version, size, sha256, replicas,
        name) into the catalog; the highest version of each name wins, older
        ones are garbage. Returns how many copies were taken."""
        def tx(db: sqlite3.Connection) -> int:
            taken = 0
            for blob, version, size, sha256, replicas, name in entries:
                db.execute("INSERT INTO names (name, last_version, settled) VALUES (?, ?, ?) ON CONFLICT(name)"
                           " DO UPDATE SET last_version = max(last_version, excluded.last_version),"
                           " settled = max(settled, excluded.settled)", (name, version, version))
                row = db.execute("SELECT version, blob FROM files WHERE name = ?", (name,)).fetchone()
                if row is not None and (row[0], row[1]) == (version, blob):
                    pass
                elif row is not None and row[0] >= version:
                    db.execute("INSERT OR IGNORE INTO garbage VALUES (?, ?)", (blob, server))
                    continue
                else:
                    if row is not None:
                        old = db.execute("SELECT size, replicas FROM files WHERE name = ?", (name,)).fetchone()
                        self._drop_blob(db, row[1])
                        _count(db, -1, -old[0], -old[1])
                    db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?, '')",
                               (name, version, blob, size, sha256, max(1, replicas), now))
                    _count(db, 1, size, max(1, replicas))
                    _enqueue(db, [name])
                db.execute("INSERT OR IGNORE INTO copies VALUES (?, ?, ?)", (blob, server, now))
                _servers_changed(db, [blob])
                db.execute("DELETE FROM garbage WHERE blob = ? AND server = ?", (blob, server))
                taken += 1
            return taken
        return self._tx(tx)

    @effects(durable=False, keeps_records=True)
    def garbage_count(self) -> list[tuple[str, int]]:
        return self.db.execute("SELECT server, count(*) FROM garbage GROUP BY server").fetchall()

    @effects(durable=False, keeps_records=True)
    def garbage(self, servers: Iterable[str], limit: int = 100) -> list[tuple[str, str]]:
        """Copies to delete from the given (reachable) servers."""
        servers = list(servers)
        if not servers:
            return []
        return self.db.execute(
            "SELECT blob, server FROM garbage WHERE server IN (%s) LIMIT ?" % ",".join("?" * len(servers)),
            (*servers, limit)).fetchall()

    @effects(durable=False, keeps_records=True)
    def busy(self, blob: str) -> list[str]:
        """Servers where ``blob`` is being written or waits to be deleted: no place for a new copy."""
        return [row[0] for row in self.db.execute(
            "SELECT server FROM intents WHERE blob = ? UNION SELECT server FROM garbage WHERE blob = ?",
            (blob, blob))]

    @effects(durable=False, keeps_records=True)
    def forget_garbage(self, deleted: Iterable[tuple[str, str]]) -> None:
        """These (blob, server) copies are deleted from their servers."""
        self._tx(lambda db: db.executemany("DELETE FROM garbage WHERE blob = ? AND server = ?", deleted))

    @effects(durable=False, keeps_records=True)
    def save_server(self, id: str, zone: str, host: str, port: int, capacity: int, used: int, blobs: int) -> None:
        self._tx(lambda db: db.execute("INSERT OR REPLACE INTO servers VALUES (?, ?, ?, ?, ?, ?, ?)",
                                       (id, zone, host, port, capacity, used, blobs)))

    # -- reads

    @effects(durable=False, keeps_records=True)
    def servers(self) -> list[tuple]:
        return self.db.execute("SELECT id, zone, host, port, capacity, used, blobs FROM servers ORDER BY id").fetchall()

    @effects(durable=False, keeps_records=True)
    def lookup(self, name: str) -> FileRecord | None:
        return self._lookup(self.db, name)

    @staticmethod
    def _lookup(db: sqlite3.Connection, name: str) -> FileRecord | None:
        row = db.execute(RECORD + " WHERE name = ?", (name,)).fetchone()
        return _record(row) if row else None

    @effects(durable=False, keeps_records=True)
    def list(self, prefix: str = "") -> list[FileRecord]:
        rows = self.db.execute(
            RECORD + " WHERE substr(name, 1, ?) = ? ORDER BY name",
            (len(prefix), prefix)).fetchall()
        return [_record(r) for r in rows]

    # -- the reconciler's queue (see deposito.reconciler)

    @effects(durable=False, keeps_records=True)
    def enqueue(self, names: Iterable[str], due: float = 0.0, only_new: bool = False) -> None:
        """Queue files to be looked at again, from ``due`` on (or sooner, if
        queued so already); ``only_new``: leave files already queued as they are."""
        self._tx(lambda db: _enqueue(db, names, due, only_new))

    @effects(durable=False, keeps_records=True)
    def enqueue_server(self, server: str, after: str, limit: int) -> str | None:
        """Queue the files with a copy on ``server`` (it came or went): the
        next ``limit`` of its copies by blob id after ``after``. Returns the
        last blob id queued, to go on from, or None when there are no more."""
        def tx(db: sqlite3.Connection) -> str | None:
            blobs = [row[0] for row in db.execute(
                "SELECT blob FROM copies WHERE server = ? AND blob > ? ORDER BY blob LIMIT ?",
                (server, after, limit))]
            names = [row[0] for blob in blobs for row in db.execute("SELECT name FROM files WHERE blob = ?", (blob,))]
            _enqueue(db, names)
            return blobs[-1] if len(blobs) == limit else None
        return self._tx(tx)

    @effects(durable=False, keeps_records=True)
    def wake(self, now: float) -> int:
        """A server came back: every queued file waiting for later is due now."""
        return self._tx(lambda db: db.execute("UPDATE work SET due = ?, gen = gen + 1 WHERE due > ?",
                                              (now, now)).rowcount)

    @effects(durable=False, keeps_records=True)
    def due_work(self, now: float, limit: int) -> list[tuple[str, int, int]]:
        """The next queued files due by ``now`` (name, generation, rank): files
        not yet looked at first (rank 0), then those with the fewest healthy copies."""
        return self.db.execute("SELECT name, gen, rank FROM work WHERE due <= ? ORDER BY rank, due LIMIT ?",
                               (now, limit)).fetchall()

    @effects(durable=False, keeps_records=True)
    def next_due(self) -> float | None:
        return self.db.execute("SELECT min(due) FROM work").fetchone()[0]

    @effects(durable=False, keeps_records=True)
    def records(self, names: Iterable[str]) -> list[FileRecord | None]:
        return [self._lookup(self.db, name) for name in names]

    @effects(durable=False, keeps_records=True)
    def records_after(self, after: str, limit: int) -> list[FileRecord]:
        """The next ``limit`` files in name order after ``after`` (the background sweep's page)."""
        rows = self.db.execute(RECORD + " WHERE name > ? ORDER BY name LIMIT ?", (after, limit)).fetchall()
        return [_record(r) for r in rows]

    @effects(durable=False, keeps_records=True)
    def settle(self, outcomes: Iterable[Outcome]) -> None:
        """Record what the reconciler found for each file it looked at: done
        (out of the queue) or when to look again. A file queued again
        meanwhile (its generation moved on) stays as that left it."""
        def tx(db: sqlite3.Connection) -> None:
            for o in outcomes:
                if o.due is None:
                    db.execute("DELETE FROM work WHERE name = ? AND gen = ?", (o.name, o.gen))
                else:
                    db.execute("UPDATE work SET due = ?, rank = ?, wanted = ?, have = ?, moves = ?"
                               " WHERE name = ? AND gen = ?",
                               (o.due, o.rank, o.wanted, o.have, o.moves, o.name, o.gen))
        self._tx(tx)

    @effects(durable=False, keeps_records=True)
    def counts(self) -> Counts:
        """The totals kept with every change, and the queue's own counts:
        the cost follows the work queued, not the number of files."""
        totals = dict(self.db.execute("SELECT key, value FROM totals"))
        under, over, moves, fresh, surplus, queued = self.db.execute(
            "SELECT coalesce(sum(have < wanted), 0), coalesce(sum(have > wanted), 0),"
            " coalesce(sum(moves), 0), coalesce(sum(have IS NULL), 0), coalesce(sum(have - wanted), 0),"
            " count(*) FROM work").fetchone()
        return Counts(files=totals.get("files", 0), bytes=totals.get("bytes", 0),
                      wanted=totals.get("wanted", 0), under=under, over=over, moves=moves, fresh=fresh,
                      healthy=totals.get("wanted", 0) + surplus, queued=queued,
                      garbage=self.db.execute("SELECT server, count(*) FROM garbage GROUP BY server").fetchall())


@attrs.frozen
class Outcome:
    """What the reconciler found for one queued file: ``due`` None when
    there is nothing left to do for it, else when to look again."""

    name: str
    gen: int
    due: float | None
    rank: int = 0
    wanted: int | None = None
    have: int | None = None
    moves: int = 0


@attrs.frozen
class Counts:
    """The cluster's counts as the catalog keeps them (see :meth:`Catalog.counts`)."""

    files: int
    bytes: int
    wanted: int  # copies wanted, over all files
    healthy: int  # copies healthy, as last looked at (files not queued have what they want)
    under: int  # queued files found below their wanted count
    over: int
    moves: int  # copies to make or drop, as planned for the queued files
    fresh: int  # queued files not looked at yet
    queued: int  # queued files
    garbage: list[tuple[str, int]]  # copies to delete, by server


def _count(db: sqlite3.Connection, files: int, size: int, wanted: int) -> None:
    for key, delta in zip(TOTALS, (files, size, wanted)):
        if delta:
            db.execute("UPDATE totals SET value = value + ? WHERE key = ?", (delta, key))


def _servers_changed(db: sqlite3.Connection, blobs: Iterable[str]) -> None:
    """Copies of these blobs were added or removed: their files' server lists follow."""
    db.executemany(f"UPDATE files SET servers = {SERVERS_OF.format(blob='?1')} WHERE blob = ?1",
                   [(blob,) for blob in blobs])


def _enqueue(db: sqlite3.Connection, names: Iterable[str], due: float = 0.0, only_new: bool = False) -> None:
    if only_new:
        db.executemany("INSERT OR IGNORE INTO work (name, due) VALUES (?, ?)", [(name, due) for name in names])
        return
    db.executemany("INSERT INTO work (name, due) VALUES (?, ?) ON CONFLICT (name) DO UPDATE"
                   " SET due = min(due, excluded.due), rank = 0, gen = gen + 1",
                   [(name, due) for name in names])


def _record(row: tuple) -> FileRecord:
    return FileRecord(row[0], row[1], row[2], row[3], row[4], row[5], _servers(row[6] or ""))


@functools.lru_cache(maxsize=4096)
def _servers(ids: str) -> tuple[str, ...]:
    """The servers of a copy list, one tuple shared by every record with the
    same list (the records kept in memory are mostly these)."""
    return tuple(ids.split(" ")) if ids else ()


@implementer(ICatalog)
class CatalogThread:
    """The SQLite catalog as :class:`ICatalog`: runs Catalog methods on one
    thread of their own, in order, as Deferreds.

    Calls that arrive while a batch is being committed wait and go together in
    the next one (group commit): many PUTs share one fsync, and no Deferred
    fires before its transaction is durable.

    The records of recently looked-up names are kept in memory, so a lookup
    mostly answers at once. Any call that may change a record empties them,
    and a lookup's answer is kept only if no such call was made after it was
    asked (calls run in the order they are made): what is kept always matches
    the catalog as every call made so far leaves it, so an answer from memory
    is the one the thread would give.

    Clients' lookups (:meth:`read`) go to a second connection on a thread of
    their own, so a GET does not wait behind the PUTs committing meanwhile;
    their answers are kept only when no change was under way.
    """

    kept = 16384  # records of this many names at most (about 500 bytes each)

    def __init__(self, reactor: IReactorFromThreads, catalog: Catalog) -> None:
        self.reactor = reactor
        self.catalog = catalog
        self._batches: Batches[tuple[Callable[..., Any], tuple]] = Batches(reactor, catalog.batch, "deposito-catalog")
        # Clients' lookups (see read) on a second connection and thread of their own.
        self._reader = sqlite3.connect(catalog.path, check_same_thread=False, isolation_level=None)
        self._reader.execute("PRAGMA query_only=1")
        self._reads: Batches[str] = Batches(reactor, self._read_batch, "deposito-catalog-reads")
        self._records: OrderedDict[str, FileRecord] = OrderedDict()
        self._changes = 0  # calls made so far that may change records
        self._unfinished = 0  # of those, the ones not answered yet

    def start(self) -> None:
        self._batches.start()
        self._reads.start()

    def stop(self) -> None:
        self._reads.stop()
        self._batches.stop()
        self._reader.close()
        self.catalog.close()

    def _call(self, method: Callable[..., Any], *args: Any) -> Deferred:
        """``self._call(Catalog.lookup, name)``: the method's result, as a
        Deferred. The method declares what it does with :func:`effects`."""
        if method is Catalog.lookup:
            return self._lookup(*args)
        if method.keeps_records:  # type: ignore[attr-defined]
            return self._batches.submit((method, args))
        self._records.clear()
        self._changes += 1
        self._unfinished += 1
        return self._batches.submit((method, args)).addBoth(self._finished)

    def _finished(self, result: Any) -> Any:
        self._unfinished -= 1
        return result

    def read(self, name: str) -> Deferred:
        """The record of ``name`` (or None) for a client's request: from
        memory, or else from the second connection, which never waits behind
        writes and their flush to disk. Every change answered before the call
        shows in it; one still under way may or may not (the two overlap)."""
        record = self.kept_record(name)
        if record is not None:
            return succeed(record)
        d = self._reads.submit(name)
        if not self._unfinished:  # all made so far is committed: so the answer may be kept
            d.addCallback(self._keep, name, self._changes)
        return d

    def _read_batch(self, names: list[str]) -> list[tuple[bool, Any]]:
        results: list[tuple[bool, Any]] = []
        for name in names:
            try:
                results.append((True, Catalog._lookup(self._reader, name)))
            except Exception as e:
                results.append((False, e))
        return results

    def kept_record(self, name: str) -> FileRecord | None:
        """The record of ``name`` if it is kept in memory (what a lookup would
        answer now), else None."""
        record = self._records.get(name)
        if record is not None:
            self._records.move_to_end(name)
        return record

    def _lookup(self, name: str) -> Deferred:
        record = self.kept_record(name)
        if record is not None:
            return succeed(record)
        d = self._batches.submit((Catalog.lookup, (name,)))
        d.addCallback(self._keep, name, self._changes)
        return d

    def _keep(self, record: FileRecord | None, name: str, changes: int) -> FileRecord | None:
        if record is not None and changes == self._changes:  # nothing may have changed it since
            self._records[name] = record
            if len(self._records) > self.kept:
                self._records.popitem(last=False)
        return record

    # -- the reconciler's view of the catalog (IWorkCatalog)

    def due_work(self, now: float, limit: int) -> Deferred:
        return self._call(Catalog.due_work, now, limit)

    def next_due(self) -> Deferred:
        return self._call(Catalog.next_due)

    def records(self, names: list[str]) -> Deferred:
        return self._call(Catalog.records, names)

    def records_after(self, after: str, limit: int) -> Deferred:
        return self._call(Catalog.records_after, after, limit)

    def settle(self, outcomes: list[Outcome]) -> Deferred:
        return self._call(Catalog.settle, outcomes)

    def enqueue(self, names: list[str], due: float = 0.0, only_new: bool = False) -> Deferred:
        return self._call(Catalog.enqueue, names, due, only_new)

    def enqueue_server(self, server: str, after: str, limit: int) -> Deferred:
        return self._call(Catalog.enqueue_server, server, after, limit)

    def wake(self, now: float) -> Deferred:
        return self._call(Catalog.wake, now)

    def lookup(self, name: str) -> Deferred:
        return self._call(Catalog.lookup, name)

    def busy(self, blob: str) -> Deferred:
        return self._call(Catalog.busy, blob)

    def add_copy(self, name: str, blob: str, server: str, now: float) -> Deferred:
        return self._call(Catalog.add_copy, name, blob, server, now)

    def abandon_copy(self, blob: str, server: str) -> Deferred:
        return self._call(Catalog.abandon_copy, blob, server)

    def drop_copies(self, drops: list[tuple[str, str]]) -> Deferred:
        return self._call(Catalog.drop_copies, drops)

    # -- the rest of what the proxy needs (ICatalog)

    def is_empty(self) -> Deferred:
        return self._call(Catalog.is_empty)

    def recover(self) -> Deferred:
        return self._call(Catalog.recover)

    def adopt(self, server: str, entries: list[tuple[str, int, int, str, int, str]], now: float) -> Deferred:
        return self._call(Catalog.adopt, server, entries, now)

    def servers(self) -> Deferred:
        return self._call(Catalog.servers)

    def save_server(self, id: str, zone: str, host: str, port: int, capacity: int, used: int,
                    blobs: int) -> Deferred:
        return self._call(Catalog.save_server, id, zone, host, port, capacity, used, blobs)

    def begin_upload(self, name: str, blob: str, servers: list[str]) -> Deferred:
        return self._call(Catalog.begin_upload, name, blob, servers)

    def add_intent(self, blob: str, server: str) -> Deferred:
        return self._call(Catalog.add_intent, blob, server)

    def abandon(self, blob: str) -> Deferred:
        return self._call(Catalog.abandon, blob)

    def commit(self, name: str, version: int, blob: str, size: int, sha256: str, replicas: int,
               servers: list[str], now: float) -> Deferred:
        return self._call(Catalog.commit, name, version, blob, size, sha256, replicas, servers, now)

    def listing(self, prefix: str, after: str, limit: int | None) -> Deferred:
        from deposito.listing import NameRange, open_listing

        return open_listing(self.reactor, self.catalog.path, NameRange(prefix, after, limit))

    def delete(self, name: str) -> Deferred:
        return self._call(Catalog.delete, name)

    def set_replicas(self, name: str, count: int) -> Deferred:
        return self._call(Catalog.set_replicas, name, count)

    def drop_copy(self, blob: str, server: str) -> Deferred:
        return self._call(Catalog.drop_copy, blob, server)

    def reconcile_inventory(self, server: str, present: list[str], lo: str | None, hi: str | None,
                            before: float) -> Deferred:
        return self._call(Catalog.reconcile_inventory, server, present, lo, hi, before)

    def counts(self) -> Deferred:
        return self._call(Catalog.counts)

    def garbage(self, servers: list[str], limit: int = 100) -> Deferred:
        return self._call(Catalog.garbage, servers, limit)

    def forget_garbage(self, deleted: list[tuple[str, str]]) -> Deferred:
        return self._call(Catalog.forget_garbage, deleted)

    def garbage_count(self) -> Deferred:
        return self._call(Catalog.garbage_count)
