"""The catalog's operations, written once for every database: which names
exist, their versions, and where the copies are.

Every method is one short transaction and blocks; the proxy calls them on
its catalog thread (see :class:`deposito.catalog.thread.CatalogThread`).
They reach the database through :class:`deposito.catalog.database.Database`
(SQLite or PostgreSQL: :mod:`deposito.catalog.sqlite`,
:mod:`deposito.catalog.postgres`); where its SQL differs, the operations
ask its :class:`~deposito.catalog.dialect.Dialect`. A committed version
survives a crash of the proxy or the machine on both.

Invariants kept here:
- a version becomes visible in one transaction (:meth:`commit`), only after
  its copies exist;
- versions of a name only grow, across DELETE too (``names.last_version``,
  the highest given out, allocated in one statement); a commit older than
  the newest version committed or deleted (``names.settled``, read with the
  name's row locked) is superseded at once;
- a blob written but not committed is an *intent*; abandoned intents and
  replaced or deleted copies become *garbage*, which the proxy deletes from
  the servers, so nothing is orphaned for good;
- cost follows work: the files that may need copies made or dropped are
  queued in ``work`` by the changes that cause it (see :mod:`deposito.reconciler`),
  and the counts that STATUS shows are kept in ``totals`` with every change,
  so nothing periodic reads every file.
"""

from __future__ import annotations

import builtins
import os
import socket
import uuid
from typing import Any, Iterable, Union

from deposito.catalog.database import Backend, Connection, Database, log
from deposito.catalog.records import Counts, FileRecord, Outcome, effects
from deposito.catalog.schema import RECORD, TOTALS, to_record
from deposito.errors import BadArgs, NotEmpty, NotFound, Unavailable
from deposito.catalog.listing import prefix_end
from deposito.hidden import HIDDEN, VISIBLE, hidden_name, manifest_name, part_name, parts_range, pointer_blob


def proxy_id() -> str:
    """A name for this proxy process among those sharing a catalog."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Catalog(Database):
    """The catalog's operations (see :class:`Database` for how they run),
    as the proxy ``proxy`` makes them: the uploads it writes, the queued
    files and the garbage it works on are its own (see :meth:`beat`)."""

    def __init__(self, where: Union[str, Backend], reads_only: bool = False, proxy: str | None = None) -> None:
        self.proxy = proxy or proxy_id()
        self.left = False  # the proxy stopped (see leave): it starts no more uploads
        super().__init__(where, reads_only)

    def reader(self) -> Catalog:
        """Another Catalog on the same database, for clients' lookups (:meth:`lookups`)."""
        return Catalog(self.backend, reads_only=True, proxy=self.proxy)

    def lookups(self, names: Iterable[str]) -> builtins.list[tuple[bool, Any]]:
        """The records of ``names`` (ok, record or None) each, as :meth:`batch`
        answers: read a page of names at a time, one statement for each."""
        names = builtins.list(names)
        try:
            found: dict[str, FileRecord] = {}
            for start in range(0, len(names), LOOKUP_PAGE):
                page = sorted(set(names[start:start + LOOKUP_PAGE]))
                rows = self._guarded(lambda: self.db.execute(
                    RECORD + " WHERE name IN (%s)" % ",".join("?" * len(page)), page).fetchall())
                found.update((row[0], to_record(row)) for row in rows)
            return [(True, found.get(name)) for name in names]
        except Exception as e:
            return [(False, e) for _ in names]

    # -- writes

    # -- the proxies sharing the catalog

    @effects(durable=True, keeps_records=False)
    def recover(self, now: float) -> int:
        """This proxy starts: it takes its place among the proxies. On a
        catalog no other proxy shares, whatever a proxy before it left
        unfinished is garbage at once (on a shared one, :meth:`beat` hands
        over a proxy's work once its lease has run out). Returns how many
        copies that made garbage."""
        def tx(db: Connection) -> int:
            db.execute("INSERT INTO proxies (id, seen) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET seen = excluded.seen",
                       (self.proxy, now))
            if self.backend.shared:  # only uploads from before proxies had ids
                return self._retire(db, "owner IS NULL", (), claims=False)
            db.execute("DELETE FROM sightings WHERE proxy <> ?", (self.proxy,))
            db.execute("DELETE FROM proxies WHERE id <> ?", (self.proxy,))
            return self._retire(db, "owner IS NULL OR owner <> ?", (self.proxy,))
        n = self._tx(tx)
        self.left = False
        return n

    @effects(durable=False, keeps_records=True)
    def beat(self, up: Iterable[str], now: float, lease: float, hand_over: bool
             ) -> tuple[list[tuple[str, float]], int, int]:
        """This proxy is alive (its lease renewed) and sees the servers ``up``.
        With ``hand_over``, proxies silent for ``lease`` seconds are retired
        (see :meth:`_retire`). Returns the servers the other proxies saw
        lately (id, seconds since), how many proxies were retired, and how
        many copies that made garbage."""
        def tx(db: Connection) -> tuple[list[tuple[str, float]], int, int]:
            if not db.execute("UPDATE proxies SET seen = ? WHERE id = ?", (now, self.proxy)).rowcount:
                # Retired by another proxy (silent past the lease): what it had under way is
                # garbage, and its uploads under way cannot commit. It goes on under a new id.
                log.warn("this proxy was silent past its lease and another took over its work;"
                         " it goes on as a new proxy", event="retired")
                self.proxy = proxy_id()
                db.execute("INSERT INTO proxies (id, seen) VALUES (?, ?)", (self.proxy, now))
            db.execute("DELETE FROM sightings WHERE proxy = ?", (self.proxy,))
            db.executemany("INSERT INTO sightings (proxy, server, seen) VALUES (?, ?, ?)",
                           [(self.proxy, server, now) for server in set(up)])
            garbage = retired = 0
            if hand_over:
                for (proxy,) in db.execute("SELECT id FROM proxies WHERE seen < ? AND id <> ?",
                                           (now - lease, self.proxy)).fetchall():
                    # still silent once its row is locked: a beat that came meanwhile keeps it
                    if db.execute("DELETE FROM proxies WHERE id = ? AND seen < ? RETURNING id",
                                  (proxy, now - lease)).fetchone():
                        garbage += self._retire_proxy(db, proxy)
                        retired += 1
            db.execute("DELETE FROM deleted WHERE at < ?", (now - REMEMBER_DELETES,))
            seen = db.execute("SELECT server, max(seen) FROM sightings WHERE proxy <> ? GROUP BY server",
                              (self.proxy,)).fetchall()
            return [(server, max(0.0, now - when)) for server, when in seen], retired, garbage
        return self._tx(tx)

    @effects(durable=True, keeps_records=False)
    def leave(self) -> int:
        """This proxy stops: what it was working on passes to the others now,
        and it starts no upload from now on (nobody would hand its intents over)."""
        n = self._tx(lambda db: self._retire_proxy(db, self.proxy))
        self.left = True
        return n

    def _not_left(self) -> None:
        if self.left:
            raise Unavailable("this proxy is stopping; try another")

    def _retire_proxy(self, db: Connection, proxy: str) -> int:
        """A proxy's row, its sightings and its work: gone (see :meth:`_retire`)."""
        db.execute("DELETE FROM sightings WHERE proxy = ?", (proxy,))
        db.execute("DELETE FROM proxies WHERE id = ?", (proxy,))
        return self._retire(db, "owner = ?", (proxy,))

    def _retire(self, db: Connection, owned: str, args: tuple[str, ...], claims: bool = True) -> int:
        """The work of the proxies whose rows match ``owned`` is over: their
        unfinished uploads are garbage, and (``claims``) the queued files
        and garbage they had claimed are free for others. Returns how many
        copies became garbage.

        The intents are taken with one DELETE ... RETURNING, as a commit
        takes its own: of a retirement and a commit of the same upload, the
        one that comes second finds nothing, so a committed copy is never
        garbage too."""
        taken = db.execute(f"DELETE FROM intents WHERE {owned} RETURNING blob, server", args).fetchall()
        db.executemany(INSERT_GARBAGE, [(blob, server) for blob, server in taken])
        if claims:
            # due now: a file held while its copies were being made was put off (the reconciler's LEASE)
            db.execute(f"UPDATE work SET owner = NULL, due = 0 WHERE owner IS NOT NULL AND ({owned})", args)
            db.execute(f"UPDATE garbage SET owner = NULL WHERE owner IS NOT NULL AND ({owned})", args)
        return len(taken)

    @effects(durable=False, keeps_records=True)
    def begin_upload(self, name: str, blob: str, servers: Iterable[str]) -> int:
        """Allocate the next version of ``name`` (in one statement: two proxies
        never get the same) and record where its blob is being written."""
        self._not_left()

        def tx(db: Connection) -> int:
            version = db.execute("INSERT INTO names (name, last_version) VALUES (?, 1) ON CONFLICT (name)"
                                 " DO UPDATE SET last_version = names.last_version + 1 RETURNING last_version",
                                 (name,)).fetchone()[0]
            db.executemany("INSERT INTO intents (blob, server, owner) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                           [(blob, s, self.proxy) for s in servers])
            return int(version)
        return self._tx(tx)

    @effects(durable=False, keeps_records=True)
    def add_intent(self, blob: str, server: str) -> None:
        self._not_left()
        self._tx(lambda db: db.execute("INSERT INTO intents (blob, server, owner) VALUES (?, ?, ?)"
                                       " ON CONFLICT DO NOTHING", (blob, server, self.proxy)))

    @effects(durable=True, keeps_records=True)
    def abandon(self, blob: str) -> None:
        """An upload failed: every server it touched has garbage to delete."""
        def tx(db: Connection) -> None:
            db.execute("INSERT INTO garbage (blob, server) SELECT blob, server FROM intents WHERE blob = ? ON CONFLICT DO NOTHING",
                       (blob,))
            db.execute("DELETE FROM intents WHERE blob = ?", (blob,))
        self._tx(tx)

    @effects(durable=True, keeps_records=False)
    def commit(self, name: str, version: int, blob: str, size: int, sha256: str,
               replicas: int, servers: Iterable[str], now: float, meta: str = "") -> bool:
        """Make a version visible with its copies (and ``meta``, see
        FileRecord), in one transaction.

        Returns False when a newer version was committed or deleted
        meanwhile: this one is then garbage at once and readers never see it.
        The name's row is locked first, so two proxies committing versions of
        one name decide newest-wins one after the other. Unavailable when
        this proxy's lease ran out meanwhile: its uploads were made garbage
        (and may be deleted already), so they must not count.
        """
        servers = list(servers)

        def tx(db: Connection) -> bool:
            if not self._settle_at(db, name, version, blob, servers):
                return False
            self._replace(db, name, (name, version, blob, size, sha256, replicas, now, " ".join(sorted(set(servers))),
                                     meta, ""))
            self._add_copies(db, blob, servers, now)
            return True
        return self._tx(tx)

    def _settle_at(self, db: Connection, name: str, version: int, blob: str, servers: list[str]) -> bool:
        """A commit's first steps: lock ``name``'s row and settle it at
        ``version`` unless a newer one was settled first, and take the
        upload's intents (Unavailable if this proxy lost its lease). False
        (the copies made garbage) when the version is superseded."""
        settled = db.execute(f"UPDATE names SET settled = {self.dialect.greatest}(settled, ?) WHERE name = ?"
                             " RETURNING settled", (version, name)).fetchone()
        intents = db.execute("DELETE FROM intents WHERE blob = ? RETURNING server, owner", (blob,)).fetchall()
        if not set(servers) <= {server for server, owner in intents if owner == self.proxy}:
            raise Unavailable("this proxy lost its lease on the catalog meanwhile: the upload was abandoned")
        # servers written to but not holding a verified copy are garbage
        left = {server for server, _ in intents} - set(servers)
        if left:
            db.executemany(INSERT_GARBAGE, [(blob, server) for server in sorted(left)])
        if settled is not None and settled[0] > version:
            db.executemany(INSERT_GARBAGE, [(blob, s) for s in servers])
            return False
        return True

    def _replace(self, db: Connection, name: str, row: tuple[Any, ...]) -> None:
        """Make ``row`` (the values of UPSERT_FILE) ``name``'s version: the one it replaces is garbage."""
        old = db.execute("SELECT blob, size, replicas, parts FROM files WHERE name = ?", (name,)).fetchone()
        files, size, wanted = _weight(name, row[3], row[5], row[9])
        if old is not None:
            self._drop_version(db, old[0], old[3])
            was = _weight(name, old[1], old[2], old[3])
            files, size, wanted = files - was[0], size - was[1], wanted - was[2]
        _count(db, files, size, wanted)
        db.execute(UPSERT_FILE, row)

    @staticmethod
    def _add_copies(db: Connection, blob: str, servers: list[str], now: float) -> None:
        if servers:  # in one statement
            db.execute("INSERT INTO copies VALUES " + ",".join(["(?, ?, ?)"] * len(servers))
                       + " ON CONFLICT DO NOTHING", [v for s in servers for v in (blob, s, now)])

    def _drop_version(self, db: Connection, blob: str, parts: str) -> None:
        """A version's copies are garbage: its blob's, or every hidden file of its parts'."""
        if parts:
            self._drop_hidden(db, manifest_name(parts), manifest_name(parts) + "0")
        else:
            self._drop_blob(db, blob)

    @staticmethod
    def _drop_blob(db: Connection, blob: str) -> None:
        db.execute("INSERT INTO garbage (blob, server) SELECT blob, server FROM copies WHERE blob = ? ON CONFLICT DO NOTHING", (blob,))
        db.execute("DELETE FROM copies WHERE blob = ?", (blob,))

    def _drop_hidden(self, db: Connection, low: str, high: str, where: str = "") -> int:
        """The hidden files named from ``low`` up to (not including) ``high``
        (and matching ``where``) are gone, their copies garbage. Returns how many."""
        rows = db.execute(f"DELETE FROM files WHERE name >= ? AND name < ? {where} RETURNING name, blob, replicas",
                          (low, high)).fetchall()
        for name, blob, _ in rows:
            self._drop_blob(db, blob)
        db.executemany("DELETE FROM work WHERE name = ?", [(row[0],) for row in rows])
        db.executemany("DELETE FROM names WHERE name = ?", [(row[0],) for row in rows])
        _count(db, 0, 0, -sum(row[2] for row in rows))
        return len(rows)

    # -- multipart uploads (the S3 gateway's): each part is a hidden file (see
    # deposito.hidden), and completing an upload makes the object's version a
    # row pointing to them, in one transaction, without copying a byte.

    @effects(durable=True, keeps_records=True)
    def create_upload(self, upload: str, name: str, replicas: int, meta: str, now: float) -> None:
        """An upload of ``name`` begins: parts may come, from any proxy, until it is completed or aborted."""
        self._tx(lambda db: db.execute("INSERT INTO uploads VALUES (?, ?, ?, ?, ?, ?)",
                                       (upload, name, replicas, meta, now, now)))

    @effects(durable=False, keeps_records=True)
    def upload(self, upload: str) -> tuple[str, int, str, float] | None:
        """An upload under way: (name, replicas, meta, created), or None."""
        row = self.db.execute("SELECT name, replicas, meta, created FROM uploads WHERE id = ?", (upload,)).fetchone()
        return (row[0], row[1], row[2], float(row[3])) if row else None

    @effects(durable=False, keeps_records=True)
    def uploads(self, prefix: str, after_name: str, after_id: str, limit: int
                ) -> builtins.list[tuple[str, str, float]]:
        """The uploads under way of names starting with ``prefix``, in (name,
        id) order after (``after_name``, ``after_id``): (id, name, created) each."""
        end = prefix_end(prefix)
        return [(row[0], row[1], float(row[2])) for row in self.db.execute(
            "SELECT id, name, created FROM uploads WHERE name >= ?" + (" AND name < ?" if end else "")
            + " AND (name > ? OR (name = ? AND id > ?)) ORDER BY name, id LIMIT ?",
            (prefix, *([end] if end else []), after_name, after_name, after_id, limit)).fetchall()]

    @effects(durable=False, keeps_records=True)
    def parts(self, upload: str, after: int, limit: int) -> builtins.list[tuple[int, FileRecord]]:
        """The parts stored for an upload, numbered above ``after``: (number, record) each, in order."""
        low, high = part_name(upload, after + 1, ""), parts_range(upload)[1]
        rows = self.db.execute(RECORD + " WHERE name >= ? AND name < ? ORDER BY name LIMIT ?",
                               (low, high, limit)).fetchall()
        return [(hidden_name(row[0])[1], to_record(row)) for row in rows]  # type: ignore[index]

    @effects(durable=True, keeps_records=False)
    def commit_part(self, upload: str, name: str, version: int, blob: str, size: int, sha256: str,
                    replicas: int, servers: Iterable[str], now: float, meta: str = "") -> None:
        """A part of ``upload`` is stored (as :meth:`commit` does a file, under
        its hidden ``name``); an earlier part of the same number is garbage.
        NotFound when the upload was completed or aborted meanwhile."""
        servers = list(servers)

        def tx(db: Connection) -> None:
            # the upload's row locked: its parts commit one by one, and a Complete waits for them
            if db.execute("UPDATE uploads SET touched = ? WHERE id = ? RETURNING id", (now, upload)).fetchone() is None:
                raise NotFound(f"no upload {upload} under way")
            self._settle_at(db, name, version, blob, servers)  # a part's name is its own: never superseded
            number = hidden_name(name)[1]  # type: ignore[index]
            self._drop_hidden(db, part_name(upload, number, ""), part_name(upload, number + 1, ""))
            self._replace(db, name, (name, version, blob, size, sha256, replicas, now, " ".join(sorted(set(servers))),
                                     meta, ""))
            self._add_copies(db, blob, servers, now)
        self._tx(tx)

    @effects(durable=True, keeps_records=False)
    def complete(self, upload: str, name: str, version: int, blob: str, size: int, sha256: str, replicas: int,
                 servers: Iterable[str], now: float, meta: str, chosen: Iterable[str], digest: str) -> bool:
        """Complete ``upload``: in one transaction, the parts ``chosen`` (by
        name, in order) become ``name``'s version ``version`` (whole-object
        SHA-256 ``digest``), the manifest just written (``blob``, ``size``,
        ``sha256`` on ``servers``) is kept with them, and the upload's other
        parts are garbage. As :meth:`commit`: False, and all of it garbage,
        when a newer version was committed or deleted meanwhile. NotFound
        when the upload is no longer under way; BadArgs when a chosen part
        is not (or no longer) stored."""
        servers, chosen = list(servers), list(chosen)

        def tx(db: Connection) -> bool:
            if db.execute("DELETE FROM uploads WHERE id = ? RETURNING id", (upload,)).fetchone() is None:
                raise NotFound(f"no upload {upload} under way")
            if not self._settle_at(db, name, version, blob, servers):
                self._drop_hidden(db, manifest_name(upload), manifest_name(upload) + "0")
                return False
            low, high = parts_range(upload)
            sizes = dict(db.execute("SELECT name, size FROM files WHERE name > ? AND name < ?", (low, high)).fetchall())
            starts, total = [], 0
            for part in chosen:
                if part not in sizes:
                    raise BadArgs(f"part {hidden_name(part)} of upload {upload} is not stored")
                starts.append((total, part))
                total += sizes[part]
            db.executemany("UPDATE files SET start = ? WHERE name = ?", starts)
            self._drop_hidden(db, low, high, "AND start IS NULL")
            self._replace(db, manifest_name(upload), (manifest_name(upload), version, blob, size, sha256, replicas,
                                                      now, " ".join(sorted(set(servers))), "", ""))
            self._add_copies(db, blob, servers, now)
            self._replace(db, name, (name, version, pointer_blob(upload), total, digest, replicas, now, "", meta,
                                     upload))
            self._parts_changed(db, upload)
            return True
        return self._tx(tx)

    @effects(durable=True, keeps_records=False)
    def abort_upload(self, upload: str) -> bool:
        """An upload is given up: its parts are garbage. False when it was not under way."""
        def tx(db: Connection) -> bool:
            if db.execute("DELETE FROM uploads WHERE id = ? RETURNING id", (upload,)).fetchone() is None:
                return False
            self._drop_hidden(db, manifest_name(upload), manifest_name(upload) + "0")
            return True
        return self._tx(tx)

    @effects(durable=True, keeps_records=False)
    def expire_uploads(self, before: float, limit: int) -> builtins.list[str]:
        """Abort up to ``limit`` uploads no part came for since ``before`` (through
        the index on ``touched``: one probe when there are none). Returns their ids."""
        def tx(db: Connection) -> builtins.list[str]:
            expired = []
            for upload, in db.execute("SELECT id FROM uploads WHERE touched < ? ORDER BY touched LIMIT ?",
                                      (before, limit)).fetchall():
                if db.execute("DELETE FROM uploads WHERE id = ? AND touched < ? RETURNING id",
                              (upload, before)).fetchone():
                    self._drop_hidden(db, manifest_name(upload), manifest_name(upload) + "0")
                    expired.append(upload)
            return expired
        return self._tx(tx)

    # -- rebuilding multipart versions (see deposito.depot.rebuilder): the servers' blobs
    # were taken in as files, the parts and manifests under their hidden names

    @effects(durable=False, keeps_records=True)
    def next_upload(self, after: str) -> tuple[str, FileRecord | None] | None:
        """The first upload with a hidden file named after ``after``: its id and its manifest's record, if any."""
        row = self.db.execute("SELECT name FROM files WHERE name > ? AND name < ? ORDER BY name LIMIT 1",
                              (after, VISIBLE)).fetchone()
        found = hidden_name(row[0]) if row else None
        if found is None:
            return None
        return found[0], self._lookup(self.db, manifest_name(found[0]))

    @effects(durable=True, keeps_records=False)
    def adopt_manifest(self, upload: str, version: int, name: str, meta: str, sha256: str,
                       parts: builtins.list[tuple[str, int, str]], now: float) -> str:
        """Rebuilding: the object a completed upload's manifest describes
        (``version`` of ``name``, made of ``parts``: hidden names, sizes and
        SHA-256s in order) is made again from its parts, unless a newer
        version of ``name`` is known. Returns "made", "kept" (it is there
        already), "older" or "lost" (a part is on no server): in the last two
        the upload's blobs are garbage."""
        def tx(db: Connection) -> str:
            greatest = self.dialect.greatest
            db.execute("INSERT INTO names (name, last_version, settled) VALUES (?, ?, ?) ON CONFLICT (name)"
                       f" DO UPDATE SET last_version = {greatest}(names.last_version, excluded.last_version),"
                       f" settled = {greatest}(names.settled, excluded.settled)", (name, version, version))
            current = db.execute("SELECT version, parts FROM files WHERE name = ?", (name,)).fetchone()
            if current is not None and (current[0], current[1]) == (version, upload):
                return "kept"
            everything = (manifest_name(upload), manifest_name(upload) + "0")
            if current is not None and current[0] >= version:
                self._drop_hidden(db, *everything)
                return "older"
            low, high = parts_range(upload)
            stored = dict(db.execute("SELECT name, size FROM files WHERE name > ? AND name < ?", (low, high)).fetchall())
            kept = db.execute("SELECT replicas FROM files WHERE name = ?", (manifest_name(upload),)).fetchone()
            if kept is None or any(stored.get(part) != size for part, size, _ in parts):
                self._drop_hidden(db, *everything)
                return "lost"
            starts, total = [], 0
            for part, size, _ in parts:
                starts.append((total, part))
                total += size
            db.executemany("UPDATE files SET start = ? WHERE name = ?", starts)
            self._drop_hidden(db, low, high, "AND start IS NULL")
            self._replace(db, name, (name, version, pointer_blob(upload), total, sha256, kept[0], now, "", meta,
                                     upload))
            self._parts_changed(db, upload)
            return "made"
        return self._tx(tx)

    @effects(durable=True, keeps_records=False)
    def drop_unfinished(self, upload: str) -> bool:
        """Rebuilding: the parts of an upload with no manifest and no row in
        ``uploads`` (it was under way when the catalog was lost) are garbage.
        False when the upload is still known."""
        def tx(db: Connection) -> bool:
            if db.execute("SELECT 1 FROM uploads WHERE id = ?", (upload,)).fetchone() or db.execute(
                    "SELECT 1 FROM files WHERE parts = ?", (upload,)).fetchone():
                return False
            return self._drop_hidden(db, manifest_name(upload), manifest_name(upload) + "0") > 0
        return self._tx(tx)

    @effects(durable=False, keeps_records=True)
    def parts_at(self, upload: str, offset: int, limit: int) -> builtins.list[tuple[int, FileRecord]]:
        """The parts of a completed upload from the one holding byte
        ``offset`` of its object on, at most ``limit``: (start, record) each, in order."""
        low, high = parts_range(upload)
        rows = self.db.execute(RECORD.replace(" FROM files", ", start FROM files")
                               + " WHERE name > ? AND name < ? AND start IS NOT NULL AND start + size > ?"
                               " ORDER BY name LIMIT ?", (low, high, offset, limit)).fetchall()
        return [(int(row[-1]), to_record(row)) for row in rows]

    # -- buckets (the S3 gateway's): bucket B holds the files named B/...

    @effects(durable=True, keeps_records=True)
    def create_bucket(self, name: str, now: float) -> bool:
        """Make bucket ``name``; False when it exists already."""
        return self._tx(lambda db: db.execute("INSERT INTO buckets (name, created) VALUES (?, ?)"
                                              " ON CONFLICT DO NOTHING RETURNING name", (name, now)
                                              ).fetchone() is not None)

    @effects(durable=True, keeps_records=False)
    def delete_bucket(self, name: str) -> None:
        """Remove bucket ``name``: NotFound when there is none, NotEmpty while
        a file ``name/...`` exists; its multipart uploads under way are aborted."""
        def tx(db: Connection) -> None:
            if db.execute("SELECT 1 FROM buckets WHERE name = ?" + self.dialect.for_update, (name,)).fetchone() is None:
                raise NotFound(f"no bucket named {name}")
            if db.execute("SELECT 1 FROM files WHERE name >= ? AND name < ? LIMIT 1",
                          (name + "/", name + "0")).fetchone() is not None:  # "0" follows "/"
                raise NotEmpty(f"bucket {name} holds files")
            db.execute("DELETE FROM buckets WHERE name = ?", (name,))
            for upload, in db.execute("DELETE FROM uploads WHERE name >= ? AND name < ? RETURNING id",
                                      (name + "/", name + "0")).fetchall():
                self._drop_hidden(db, manifest_name(upload), manifest_name(upload) + "0")  # its uploads under way
        self._tx(tx)

    @effects(durable=False, keeps_records=True)
    def bucket(self, name: str) -> float | None:
        """When bucket ``name`` was created, or None when there is none."""
        row = self.db.execute("SELECT created FROM buckets WHERE name = ?", (name,)).fetchone()
        return float(row[0]) if row else None

    @effects(durable=False, keeps_records=True)
    def buckets(self) -> builtins.list[tuple[str, float]]:
        """Every bucket, ``(name, created)`` in name order."""
        return [(name, float(created)) for name, created
                in self.db.execute("SELECT name, created FROM buckets ORDER BY name").fetchall()]

    @effects(durable=True, keeps_records=False)
    def delete(self, name: str) -> FileRecord | None:
        def tx(db: Connection) -> FileRecord | None:
            db.execute("SELECT 1 FROM names WHERE name = ?" + self.dialect.for_update, (name,))  # as commit does
            record = self._lookup(db, name)
            if record is not None:
                db.execute("DELETE FROM files WHERE name = ?", (name,))
                db.execute(f"UPDATE names SET settled = {self.dialect.greatest}(settled, ?) WHERE name = ?",
                           (record.version, name))
                db.execute("DELETE FROM work WHERE name = ?", (name,))
                self._drop_version(db, record.blob, record.parts)
                _count(db, *(-n for n in _weight(name, record.size, record.replicas, record.parts)))
            return record
        return self._tx(tx)

    @effects(durable=True, keeps_records=False)
    def set_replicas(self, name: str, count: int) -> FileRecord | None:
        def tx(db: Connection) -> FileRecord | None:
            row = db.execute("SELECT replicas, parts FROM files WHERE name = ?" + self.dialect.for_update,
                             (name,)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE files SET replicas = ? WHERE name = ?", (count, name))
            if row[1]:  # made of parts: each of them, and its manifest, is a file to converge
                low, high = manifest_name(row[1]), manifest_name(row[1]) + "0"
                changed = db.execute("SELECT name, replicas FROM files WHERE name >= ? AND name < ?",
                                     (low, high)).fetchall()
                db.execute("UPDATE files SET replicas = ? WHERE name >= ? AND name < ?", (count, low, high))
                _count(db, 0, 0, sum(count - replicas for _, replicas in changed))
                self._enqueue(db, [hidden for hidden, _ in changed])
            else:
                _count(db, 0, 0, count - row[0])
                self._enqueue(db, [name])
            return self._lookup(db, name)
        return self._tx(tx)

    @effects(durable=True, keeps_records=False)
    def add_copy(self, name: str, blob: str, server: str, now: float) -> bool:
        """A new copy of ``name``'s blob is durable on ``server``: it counts, if the
        blob is still the current one (else it is garbage)."""
        def tx(db: Connection) -> bool:
            if not db.execute("DELETE FROM intents WHERE blob = ? AND server = ? AND owner = ?",
                              (blob, server, self.proxy)).rowcount:
                return False  # this proxy lost its lease meanwhile: the copy is garbage already
            row = db.execute("SELECT 1 FROM files WHERE name = ? AND blob = ?" + self.dialect.for_update,
                             (name, blob)).fetchone()
            if row is None:
                db.execute(INSERT_GARBAGE, (blob, server))
                return False
            if db.execute("SELECT 1 FROM garbage WHERE blob = ? AND server = ?", (blob, server)).fetchone():
                return False  # a copy there is being deleted: this one may go with it, so it does not count
            db.execute(INSERT_COPY, (blob, server, now))
            self._servers_changed(db, [blob])
            self._enqueue(db, [name])
            return True
        return self._tx(tx)

    @effects(durable=True, keeps_records=False)
    def drop_copy(self, blob: str, server: str) -> None:
        """A copy no longer counts (found corrupt) and is to be deleted from
        its server; its file is queued, to be copied again."""
        def tx(db: Connection) -> None:
            db.execute("DELETE FROM copies WHERE blob = ? AND server = ?", (blob, server))
            self._servers_changed(db, [blob])
            db.execute(INSERT_GARBAGE, (blob, server))
            self._enqueue(db, [row[0] for row in db.execute("SELECT name FROM files WHERE blob = ?", (blob,))])
        self._tx(tx)

    @effects(durable=True, keeps_records=False)
    def drop_copies(self, drops: Iterable[tuple[str, str]]) -> None:
        """The reconciler's drops, (blob, server) each: copies over the wanted
        count, or on dead servers once replaced. No longer counted, to be deleted."""
        def tx(db: Connection) -> None:
            for blob, server in drops:
                db.execute("DELETE FROM copies WHERE blob = ? AND server = ?", (blob, server))
                db.execute(INSERT_GARBAGE, (blob, server))
            self._servers_changed(db, {blob for blob, _ in drops})
        self._tx(tx)

    @effects(durable=True, keeps_records=False)
    def abandon_copy(self, blob: str, server: str) -> None:
        """A repair copy failed: what it wrote is garbage."""
        def tx(db: Connection) -> None:
            db.execute("DELETE FROM intents WHERE blob = ? AND server = ?", (blob, server))
            if not db.execute("SELECT 1 FROM copies WHERE blob = ? AND server = ?", (blob, server)).fetchone():
                db.execute(INSERT_GARBAGE, (blob, server))  # unless an inventory counted it meanwhile
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
        being written. A blob deleted from the server at ``before`` or later
        (by any proxy: see :meth:`forget_garbage`) may still be listed, and
        is left alone. The catalog's copies are read through the index in
        pages, so a range of any size costs memory for a page and the listed
        blobs. Returns (missing, counted, garbage, names of the files whose
        copies changed).
        """
        present = {b for b in present if (lo is None or b > lo) and (hi is None or b <= hi)}
        page = 1000

        def tx(db: Connection) -> tuple[int, int, int, list[str]]:
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
                if db.execute("SELECT 1 FROM deleted WHERE blob = ? AND server = ? AND at >= ?",
                              (blob, server, before)).fetchone():
                    continue  # deleted after the listing began: gone, though listed
                # The intent first, then the file: an upload another proxy commits meanwhile is
                # seen as one or the other, never as neither. The file's row stays locked, so
                # a version replacing it waits, and then finds this copy to make garbage.
                written = db.execute("SELECT 1 FROM intents WHERE blob = ? AND server = ?",
                                     (blob, server)).fetchone()
                row = db.execute("SELECT name FROM files WHERE blob = ?" + self.dialect.for_update,
                                 (blob,)).fetchone()
                if row is not None:
                    db.execute(INSERT_COPY, (blob, server, before))
                    changed.append(blob)
                    counted += 1
                    names.append(row[0])
                elif not written:
                    db.execute(INSERT_GARBAGE, (blob, server))
                    garbage += 1
            self._servers_changed(db, changed)
            self._enqueue(db, names)
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
        def tx(db: Connection) -> int:
            taken = 0
            for blob, version, size, sha256, replicas, name in entries:
                greatest = self.dialect.greatest
                db.execute("INSERT INTO names (name, last_version, settled) VALUES (?, ?, ?) ON CONFLICT (name)"
                           f" DO UPDATE SET last_version = {greatest}(names.last_version, excluded.last_version),"
                           f" settled = {greatest}(names.settled, excluded.settled)", (name, version, version))
                row = db.execute("SELECT version, blob FROM files WHERE name = ?", (name,)).fetchone()
                if row is not None and (row[0], row[1]) == (version, blob):
                    pass
                elif row is not None and row[0] >= version:
                    db.execute(INSERT_GARBAGE, (blob, server))
                    continue
                else:
                    self._replace(db, name, (name, version, blob, size, sha256, max(1, replicas), now, "", "", ""))
                    self._enqueue(db, [name])
                db.execute(INSERT_COPY, (blob, server, now))
                self._servers_changed(db, [blob])
                db.execute("DELETE FROM garbage WHERE blob = ? AND server = ?", (blob, server))
                taken += 1
            return taken
        return self._tx(tx)

    @effects(durable=False, keeps_records=True)
    def garbage_count(self) -> list[tuple[str, int]]:
        return self.db.execute("SELECT server, count(*) FROM garbage GROUP BY server").fetchall()

    @effects(durable=False, keeps_records=True)
    def garbage(self, servers: Iterable[str], limit: int = 100) -> list[tuple[str, str]]:
        """Claim copies to delete from the given (reachable) servers that no
        other proxy has claimed; each is this proxy's until
        :meth:`forget_garbage` (deleted) or :meth:`release_garbage`."""
        servers = list(servers)
        if not servers:
            return []

        def tx(db: Connection) -> list[tuple[str, str]]:
            rows = db.execute(
                "SELECT blob, server FROM garbage WHERE (owner IS NULL OR owner = ?) AND server IN (%s) LIMIT ?%s"
                % (",".join("?" * len(servers)), self.dialect.skip_locked), (self.proxy, *servers, limit)).fetchall()
            db.executemany("UPDATE garbage SET owner = ? WHERE blob = ? AND server = ?",
                           [(self.proxy, blob, server) for blob, server in rows])
            return [(blob, server) for blob, server in rows]
        return self._tx(tx)

    @effects(durable=False, keeps_records=True)
    def release_garbage(self, pairs: Iterable[tuple[str, str]]) -> None:
        """These claimed copies could not be deleted yet: any proxy may try them again."""
        self._tx(lambda db: db.executemany("UPDATE garbage SET owner = NULL WHERE blob = ? AND server = ?"
                                           " AND owner = ?", [(b, s, self.proxy) for b, s in pairs]))

    @effects(durable=False, keeps_records=True)
    def busy(self, blob: str) -> list[str]:
        """Servers where ``blob`` is being written or waits to be deleted: no place for a new copy."""
        return [row[0] for row in self.db.execute(
            "SELECT server FROM intents WHERE blob = ? UNION SELECT server FROM garbage WHERE blob = ?",
            (blob, blob))]

    @effects(durable=False, keeps_records=True)
    def forget_garbage(self, deleted: Iterable[tuple[str, str]], now: float = 0.0) -> None:
        """These (blob, server) copies were deleted from their servers at
        ``now``: remembered a while (see :meth:`reconcile_inventory`)."""
        deleted = list(deleted)

        def tx(db: Connection) -> None:
            db.executemany("DELETE FROM garbage WHERE blob = ? AND server = ?", deleted)
            db.executemany("INSERT INTO deleted (blob, server, at) VALUES (?, ?, ?) ON CONFLICT (blob, server)"
                           " DO UPDATE SET at = excluded.at", [(blob, server, now) for blob, server in deleted])
        self._tx(tx)

    @effects(durable=False, keeps_records=True)
    def save_server(self, id: str, zone: str, host: str, port: int, capacity: int, used: int, blobs: int) -> None:
        self._tx(lambda db: db.execute(
            "INSERT INTO servers VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET zone = excluded.zone,"
            " host = excluded.host, port = excluded.port, capacity = excluded.capacity, used = excluded.used,"
            " blobs = excluded.blobs", (id, zone, host, port, capacity, used, blobs)))

    # -- reads

    @effects(durable=False, keeps_records=True)
    def identity(self) -> str:
        """The catalog's id, made with it: servers check it when they join, so
        that no server serves two catalogs at once."""
        return str(self.db.execute("SELECT value FROM catalog_info WHERE key = 'id'").fetchone()[0])

    @effects(durable=False, keeps_records=True)
    def servers(self) -> list[tuple]:
        return self.db.execute("SELECT id, zone, host, port, capacity, used, blobs FROM servers ORDER BY id").fetchall()

    @effects(durable=False, keeps_records=True)
    def lookup(self, name: str) -> FileRecord | None:
        return self._lookup(self.db, name)

    @staticmethod
    def _lookup(db: Connection, name: str) -> FileRecord | None:
        row = db.execute(RECORD + " WHERE name = ?", (name,)).fetchone()
        return to_record(row) if row else None

    @effects(durable=False, keeps_records=True)
    def list(self, prefix: str = "") -> list[FileRecord]:
        rows = self.db.execute(
            RECORD + " WHERE substr(name, 1, ?) = ? AND name >= ? ORDER BY name",
            (len(prefix), prefix, "" if prefix.startswith(HIDDEN) else VISIBLE)).fetchall()
        return [to_record(r) for r in rows]

    # -- the reconciler's queue (see deposito.reconciler)

    @effects(durable=False, keeps_records=True)
    def enqueue(self, names: Iterable[str], due: float = 0.0, only_new: bool = False) -> None:
        """Queue files to be looked at again, from ``due`` on (or sooner, if
        queued so already); ``only_new``: leave files already queued as they are."""
        self._tx(lambda db: self._enqueue(db, names, due, only_new))

    @effects(durable=False, keeps_records=True)
    def enqueue_server(self, server: str, after: str, limit: int) -> str | None:
        """Queue the files with a copy on ``server`` (it came or went): the
        next ``limit`` of its copies by blob id after ``after``. Returns the
        last blob id queued, to go on from, or None when there are no more."""
        def tx(db: Connection) -> str | None:
            blobs = [row[0] for row in db.execute(
                "SELECT blob FROM copies WHERE server = ? AND blob > ? ORDER BY blob LIMIT ?",
                (server, after, limit))]
            names = [row[0] for blob in blobs for row in db.execute("SELECT name FROM files WHERE blob = ?", (blob,))]
            self._enqueue(db, names)
            return blobs[-1] if len(blobs) == limit else None
        return self._tx(tx)

    @effects(durable=False, keeps_records=True)
    def wake(self, now: float) -> int:
        """A server came back: every queued file waiting for later is due now."""
        return self._tx(lambda db: db.execute("UPDATE work SET due = ?, gen = gen + 1 WHERE due > ?",
                                              (now, now)).rowcount)

    @effects(durable=False, keeps_records=True)
    def due_work(self, now: float, limit: int) -> builtins.list[tuple[str, int, int]]:
        """Claim the next queued files due by ``now`` that no other proxy has
        claimed (name, generation, rank): files not yet looked at first
        (rank 0), then those with the fewest healthy copies. Each stays this
        proxy's until :meth:`settle` or :meth:`release` lets it go; rows
        another proxy is claiming at the same moment are skipped, not waited for."""
        def tx(db: Connection) -> builtins.list[tuple[str, int, int]]:
            rows = db.execute(
                "UPDATE work SET owner = ? WHERE name IN (SELECT name FROM work WHERE (owner IS NULL OR owner = ?)"
                f" AND due <= ? ORDER BY rank, due LIMIT ?{self.dialect.skip_locked}) RETURNING name, gen, rank, due",
                (self.proxy, self.proxy, now, limit)).fetchall()
            return [(name, gen, rank) for name, gen, rank, _ in sorted(rows, key=lambda r: (r[2], r[3], r[0]))]
        return self._tx(tx)

    @effects(durable=False, keeps_records=True)
    def release(self, names: Iterable[str]) -> None:
        """This proxy is done with these files (their copies are made): any proxy may look at them again."""
        self._tx(lambda db: db.executemany("UPDATE work SET owner = NULL WHERE name = ? AND owner = ?",
                                           [(name, self.proxy) for name in names]))

    @effects(durable=False, keeps_records=True)
    def next_due(self) -> float | None:
        """When the next file no other proxy has claimed is due."""
        return self.db.execute("SELECT min(due) FROM work WHERE owner IS NULL OR owner = ?",
                               (self.proxy,)).fetchone()[0]

    @effects(durable=False, keeps_records=True)
    def records(self, names: Iterable[str]) -> builtins.list[FileRecord | None]:
        """The records of ``names``; None for a version made of parts too, whose
        hidden files are each queued and planned as files (it has no copies of its own)."""
        return [None if record is None or record.parts else record
                for record in (self._lookup(self.db, name) for name in names)]

    @effects(durable=False, keeps_records=True)
    def records_after(self, after: str, limit: int) -> builtins.list[FileRecord]:
        """The next ``limit`` files in name order after ``after`` (the background sweep's page)."""
        rows = self.db.execute(RECORD + " WHERE name > ? AND parts = '' ORDER BY name LIMIT ?", (after, limit)).fetchall()
        return [to_record(r) for r in rows]

    @effects(durable=False, keeps_records=True)
    def settle(self, outcomes: Iterable[Outcome], held: Iterable[str] = ()) -> None:
        """Record what the reconciler found for each file it looked at: done
        (out of the queue) or when to look again. A file queued again
        meanwhile (its generation moved on) stays as that left it. Each is
        let go (see :meth:`due_work`) but those ``held``, whose copies this
        proxy is about to make."""
        held = set(held)

        def tx(db: Connection) -> None:
            for o in outcomes:
                if o.due is None:
                    db.execute("DELETE FROM work WHERE name = ? AND gen = ?", (o.name, o.gen))
                else:
                    db.execute("UPDATE work SET due = ?, rank = ?, wanted = ?, have = ?, moves = ?"
                               " WHERE name = ? AND gen = ?",
                               (o.due, o.rank, o.wanted, o.have, o.moves, o.name, o.gen))
            db.executemany("UPDATE work SET owner = NULL WHERE name = ? AND owner = ?",
                           [(o.name, self.proxy) for o in outcomes if o.name not in held])
        self._tx(tx)

    @effects(durable=False, keeps_records=True)
    def counts(self) -> Counts:
        """The totals kept with every change, and the queue's own counts:
        the cost follows the work queued, not the number of files."""
        totals = dict(self.db.execute("SELECT key, value FROM totals"))
        under, over, moves, fresh, surplus, queued = self.db.execute(
            "SELECT count(CASE WHEN have < wanted THEN 1 END), count(CASE WHEN have > wanted THEN 1 END),"
            " CAST(coalesce(sum(moves), 0) AS BIGINT), count(CASE WHEN have IS NULL THEN 1 END),"
            " CAST(coalesce(sum(have - wanted), 0) AS BIGINT), count(*) FROM work").fetchone()
        return Counts(files=totals.get("files", 0), bytes=totals.get("bytes", 0),
                      wanted=totals.get("wanted", 0), under=under, over=over, moves=moves, fresh=fresh,
                      healthy=totals.get("wanted", 0) + surplus, queued=queued,
                      garbage=self.db.execute("SELECT server, count(*) FROM garbage GROUP BY server").fetchall())

    def _servers_changed(self, db: Connection, blobs: Iterable[str]) -> None:
        """Copies of these blobs were added or removed: their files' server lists follow."""
        blobs = builtins.list(blobs)
        db.executemany(f"UPDATE files SET servers = {self.dialect.servers_of('?')} WHERE blob = ?",
                       [(blob, blob) for blob in blobs])
        if blobs:  # parts among them: their objects' server lists follow too
            hidden = [hidden_name(row[0]) for row in db.execute(
                "SELECT name FROM files WHERE name < ? AND blob IN (%s)" % ",".join("?" * len(blobs)), (VISIBLE, *blobs))]
            for upload in sorted({h[0] for h in hidden if h is not None and h[1]}):
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
        if only_new:
            db.executemany("INSERT INTO work (name, due) VALUES (?, ?) ON CONFLICT DO NOTHING",
                           [(name, due) for name in names])
            return
        db.executemany("INSERT INTO work (name, due) VALUES (?, ?) ON CONFLICT (name) DO UPDATE"
                       f" SET due = {self.dialect.least}(work.due, excluded.due), rank = 0, gen = work.gen + 1",
                       [(name, due) for name in names])


LOOKUP_PAGE = 500  # names read in one statement by clients' lookups
REMEMBER_DELETES = 600.0  # seconds a delete is remembered for the inventories that may still list it
INSERT_GARBAGE = "INSERT INTO garbage (blob, server) VALUES (?, ?) ON CONFLICT DO NOTHING"
INSERT_COPY = "INSERT INTO copies VALUES (?, ?, ?) ON CONFLICT DO NOTHING"
UPSERT_FILE = ("INSERT INTO files (name, version, blob, size, sha256, replicas, created, servers, meta, parts)"
               " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET"
               " version = excluded.version, blob = excluded.blob, size = excluded.size, sha256 = excluded.sha256,"
               " replicas = excluded.replicas, created = excluded.created, servers = excluded.servers,"
               " meta = excluded.meta, parts = excluded.parts, start = NULL")


def _weight(name: str, size: int, replicas: int, parts: str) -> tuple[int, int, int]:
    """What a row adds to the totals (files, bytes, copies wanted): a file
    counts whole; a version made of parts counts as a file, its hidden files
    count the copies."""
    if name < VISIBLE:
        return 0, 0, replicas
    return 1, size, 0 if parts else replicas


def _count(db: Connection, files: int, size: int, wanted: int) -> None:
    """Add to the totals STATUS shows, in one statement."""
    deltas = [(key, delta) for key, delta in zip(TOTALS, (files, size, wanted)) if delta]
    if deltas:
        db.execute("UPDATE totals SET value = value + CASE key"
                   + " WHEN ? THEN ?" * len(deltas) + " END WHERE key IN (%s)" % ",".join("?" * len(deltas)),
                   (*[v for pair in deltas for v in pair], *[key for key, _ in deltas]))
