"""The proxy's catalog: which names exist, their versions, and where the copies are.

SQLite in WAL mode with full sync: a committed version survives a crash of
the proxy or the machine. Every method is one short transaction and blocks;
the proxy calls them on its catalog thread (see :class:`CatalogThread`).

Invariants kept here:
- a version becomes visible in one transaction (:meth:`commit`), only after
  its copies exist;
- versions of a name only grow, across DELETE too (``names.last_version``);
- a blob written but not committed is an *intent*; abandoned intents and
  replaced or deleted copies become *garbage*, which the proxy deletes from
  the servers, so nothing is orphaned for good.
"""

from __future__ import annotations

import functools
import os
import sqlite3
from collections import OrderedDict
from typing import Any, Callable, Iterable

import attrs
from twisted.internet.defer import Deferred, succeed

from deposito.batching import Batches

SCHEMA = """
CREATE TABLE IF NOT EXISTS names (
    name TEXT PRIMARY KEY,
    last_version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS files (
    name TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    blob TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    replicas INTEGER NOT NULL,
    created REAL NOT NULL
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
"""


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

    def recover(self) -> int:
        """After a restart: uploads that never committed are garbage now."""
        def tx(db: sqlite3.Connection) -> int:
            n = db.execute("INSERT OR IGNORE INTO garbage SELECT blob, server FROM intents").rowcount
            db.execute("DELETE FROM intents")
            return n
        return self._tx(tx)

    def begin_upload(self, name: str, blob: str, servers: Iterable[str]) -> int:
        """Allocate the next version of ``name`` and record where its blob is being written."""
        def tx(db: sqlite3.Connection) -> int:
            row = db.execute("SELECT last_version FROM names WHERE name = ?", (name,)).fetchone()
            version = (row[0] if row else 0) + 1
            db.execute("INSERT OR REPLACE INTO names (name, last_version) VALUES (?, ?)", (name, version))
            db.executemany("INSERT OR IGNORE INTO intents (blob, server) VALUES (?, ?)",
                           [(blob, s) for s in servers])
            return version
        return self._tx(tx)

    def add_intent(self, blob: str, server: str) -> None:
        self._tx(lambda db: db.execute("INSERT OR IGNORE INTO intents VALUES (?, ?)", (blob, server)))

    def abandon(self, blob: str) -> None:
        """An upload failed: every server it touched has garbage to delete."""
        def tx(db: sqlite3.Connection) -> None:
            db.execute("INSERT OR IGNORE INTO garbage SELECT blob, server FROM intents WHERE blob = ?", (blob,))
            db.execute("DELETE FROM intents WHERE blob = ?", (blob,))
        self._tx(tx)

    def commit(self, name: str, version: int, blob: str, size: int, sha256: str,
               replicas: int, servers: Iterable[str], now: float) -> bool:
        """Make a version visible with its copies, in one transaction.

        Returns False when a newer version was committed meanwhile: this
        one is then garbage at once and readers never see it.
        """
        servers = list(servers)

        def tx(db: sqlite3.Connection) -> bool:
            # servers written to but not holding a verified copy are garbage
            db.execute(
                "INSERT OR IGNORE INTO garbage SELECT blob, server FROM intents WHERE blob = ? AND server NOT IN (%s)"
                % ",".join("?" * len(servers)), (blob, *servers))
            db.execute("DELETE FROM intents WHERE blob = ?", (blob,))
            row = db.execute("SELECT version, blob FROM files WHERE name = ?", (name,)).fetchone()
            if row is not None and row[0] > version:
                db.executemany("INSERT OR IGNORE INTO garbage VALUES (?, ?)", [(blob, s) for s in servers])
                return False
            if row is not None:
                self._drop_blob(db, row[1])
            db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (name, version, blob, size, sha256, replicas, now))
            db.executemany("INSERT OR IGNORE INTO copies VALUES (?, ?, ?)", [(blob, s, now) for s in servers])
            return True
        return self._tx(tx)

    @staticmethod
    def _drop_blob(db: sqlite3.Connection, blob: str) -> None:
        db.execute("INSERT OR IGNORE INTO garbage SELECT blob, server FROM copies WHERE blob = ?", (blob,))
        db.execute("DELETE FROM copies WHERE blob = ?", (blob,))

    def delete(self, name: str) -> FileRecord | None:
        def tx(db: sqlite3.Connection) -> FileRecord | None:
            record = self._lookup(db, name)
            if record is not None:
                db.execute("DELETE FROM files WHERE name = ?", (name,))
                self._drop_blob(db, record.blob)
            return record
        return self._tx(tx)

    def set_replicas(self, name: str, count: int) -> FileRecord | None:
        def tx(db: sqlite3.Connection) -> FileRecord | None:
            db.execute("UPDATE files SET replicas = ? WHERE name = ?", (count, name))
            return self._lookup(db, name)
        return self._tx(tx)

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
            db.execute("DELETE FROM garbage WHERE blob = ? AND server = ?", (blob, server))
            return True
        return self._tx(tx)

    def drop_copy(self, blob: str, server: str) -> None:
        """A copy no longer counts and is to be deleted from its server."""
        def tx(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM copies WHERE blob = ? AND server = ?", (blob, server))
            db.execute("INSERT OR IGNORE INTO garbage VALUES (?, ?)", (blob, server))
        self._tx(tx)

    def abandon_copy(self, blob: str, server: str) -> None:
        """A repair copy failed: what it wrote is garbage."""
        def tx(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM intents WHERE blob = ? AND server = ?", (blob, server))
            db.execute("INSERT OR IGNORE INTO garbage VALUES (?, ?)", (blob, server))
        self._tx(tx)

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
                    counted += 1
                    names.append(row[0])
                elif not db.execute("SELECT 1 FROM intents WHERE blob = ? AND server = ?",
                                    (blob, server)).fetchone():
                    db.execute("INSERT OR IGNORE INTO garbage VALUES (?, ?)", (blob, server))
                    garbage += 1
            return missing, counted, garbage, names
        return self._tx(tx)

    def is_empty(self) -> bool:
        """No name was ever stored: a new catalog, or a lost one."""
        return self.db.execute("SELECT 1 FROM names LIMIT 1").fetchone() is None

    def adopt(self, server: str, entries: Iterable[tuple[str, int, int, str, int, str]], now: float) -> int:
        """Rebuilding: take a server's blobs (blob, version, size, sha256, replicas,
        name) into the catalog; the highest version of each name wins, older
        ones are garbage. Returns how many copies were taken."""
        def tx(db: sqlite3.Connection) -> int:
            taken = 0
            for blob, version, size, sha256, replicas, name in entries:
                db.execute("INSERT INTO names VALUES (?, ?) ON CONFLICT(name) DO UPDATE"
                           " SET last_version = max(last_version, excluded.last_version)", (name, version))
                row = db.execute("SELECT version, blob FROM files WHERE name = ?", (name,)).fetchone()
                if row is not None and (row[0], row[1]) == (version, blob):
                    pass
                elif row is not None and row[0] >= version:
                    db.execute("INSERT OR IGNORE INTO garbage VALUES (?, ?)", (blob, server))
                    continue
                else:
                    if row is not None:
                        self._drop_blob(db, row[1])
                    db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?)",
                               (name, version, blob, size, sha256, max(1, replicas), now))
                db.execute("INSERT OR IGNORE INTO copies VALUES (?, ?, ?)", (blob, server, now))
                db.execute("DELETE FROM garbage WHERE blob = ? AND server = ?", (blob, server))
                taken += 1
            return taken
        return self._tx(tx)

    def garbage_count(self) -> list[tuple[str, int]]:
        return self.db.execute("SELECT server, count(*) FROM garbage GROUP BY server").fetchall()

    def garbage(self, servers: Iterable[str], limit: int = 100) -> list[tuple[str, str]]:
        """Copies to delete from the given (reachable) servers."""
        servers = list(servers)
        if not servers:
            return []
        return self.db.execute(
            "SELECT blob, server FROM garbage WHERE server IN (%s) LIMIT ?" % ",".join("?" * len(servers)),
            (*servers, limit)).fetchall()

    def busy(self, blob: str) -> list[str]:
        """Servers where ``blob`` is being written or waits to be deleted: no place for a new copy."""
        return [row[0] for row in self.db.execute(
            "SELECT server FROM intents WHERE blob = ? UNION SELECT server FROM garbage WHERE blob = ?",
            (blob, blob))]

    def forget_garbage(self, blob: str, server: str) -> None:
        self._tx(lambda db: db.execute("DELETE FROM garbage WHERE blob = ? AND server = ?", (blob, server)))

    def save_server(self, id: str, zone: str, host: str, port: int, capacity: int, used: int, blobs: int) -> None:
        self._tx(lambda db: db.execute("INSERT OR REPLACE INTO servers VALUES (?, ?, ?, ?, ?, ?, ?)",
                                       (id, zone, host, port, capacity, used, blobs)))

    # -- reads

    def servers(self) -> list[tuple]:
        return self.db.execute("SELECT id, zone, host, port, capacity, used, blobs FROM servers ORDER BY id").fetchall()

    def lookup(self, name: str) -> FileRecord | None:
        return self._lookup(self.db, name)

    @staticmethod
    def _lookup(db: sqlite3.Connection, name: str) -> FileRecord | None:
        row = db.execute(
            "SELECT f.name, f.version, f.blob, f.size, f.sha256, f.replicas,"
            " (SELECT group_concat(server, ' ') FROM (SELECT server FROM copies c WHERE c.blob = f.blob ORDER BY server))"
            " FROM files f WHERE f.name = ?", (name,)).fetchone()
        return _record(row) if row else None

    def list(self, prefix: str = "") -> list[FileRecord]:
        rows = self.db.execute(
            "SELECT f.name, f.version, f.blob, f.size, f.sha256, f.replicas,"
            " (SELECT group_concat(server, ' ') FROM (SELECT server FROM copies c WHERE c.blob = f.blob ORDER BY server))"
            " FROM files f WHERE substr(f.name, 1, ?) = ? ORDER BY f.name",
            (len(prefix), prefix)).fetchall()
        return [_record(r) for r in rows]

    def totals(self) -> tuple[int, int]:
        files, size = self.db.execute("SELECT count(*), coalesce(sum(size), 0) FROM files").fetchone()
        return files, size


# What these record may be lost in a machine crash without harm, so a batch of
# nothing else commits without an fsync (a later durable commit covers them):
# an unrecorded intent leaves an orphan that the servers' inventory finds; a
# version number not kept was never visible; a garbage entry not forgotten is
# deleted again ("absent"); a server's address comes again when it joins.
for _method in (Catalog.begin_upload, Catalog.add_intent, Catalog.forget_garbage, Catalog.save_server,
                Catalog.lookup, Catalog.list, Catalog.garbage, Catalog.garbage_count, Catalog.servers,
                Catalog.totals, Catalog.busy, Catalog.is_empty):
    _method.durable = False  # type: ignore[attr-defined]

# What these do leaves every name's record as it was (files and copies are
# untouched), so the records the catalog thread keeps in memory stay true.
for _method in (Catalog.begin_upload, Catalog.add_intent, Catalog.abandon, Catalog.forget_garbage,
                Catalog.save_server, Catalog.lookup, Catalog.list, Catalog.garbage, Catalog.garbage_count,
                Catalog.servers, Catalog.totals, Catalog.busy, Catalog.is_empty):
    _method.keeps_records = True  # type: ignore[attr-defined]


def _record(row: tuple) -> FileRecord:
    return FileRecord(row[0], row[1], row[2], row[3], row[4], row[5], _servers(row[6] or ""))


@functools.lru_cache(maxsize=4096)
def _servers(ids: str) -> tuple[str, ...]:
    """The servers of a copy list, one tuple shared by every record with the
    same list (the records kept in memory are mostly these)."""
    return tuple(ids.split(" ")) if ids else ()


class CatalogThread:
    """Runs Catalog methods on one thread of their own, in order, as Deferreds.

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

    def __init__(self, reactor: Any, catalog: Catalog) -> None:
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

    def __call__(self, method: Callable[..., Any], *args: Any) -> Deferred:
        """``db(Catalog.lookup, name)``: the method's result, as a Deferred."""
        if method is Catalog.lookup:
            return self._lookup(*args)
        if getattr(method, "keeps_records", False):
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
