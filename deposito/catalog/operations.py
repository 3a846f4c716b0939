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

The steps these transactions share are in :mod:`deposito.catalog.changes`;
the reconciler's queue is :mod:`deposito.catalog.queue`, multipart uploads
:mod:`deposito.catalog.multipart`, the copies to delete :mod:`deposito.catalog.garbage`.
"""

from __future__ import annotations

import builtins
import os
import socket
import time
import uuid
from typing import Any, Callable, Iterable, NamedTuple, Union

from deposito.catalog.buckets import Buckets
from deposito.catalog.coherence import CHANNEL, WAIT, change_messages
from deposito.catalog.changes import (INSERT_COPY, INSERT_GARBAGE, add_totals, flat, insert_rows, marks, new_rows,
                                      pages, together, values, weight)
from deposito.catalog.database import Backend, Connection, log
from deposito.catalog.garbage import Garbage
from deposito.catalog.identity import FLOOR, Identity
from deposito.catalog.multipart import Multipart
from deposito.catalog.queue import WorkQueue
from deposito.catalog.records import Expect, FileRecord, effects, keeps_records, one_record, tells
from deposito.catalog.schema import RECORD, servers_text, to_record
from deposito.errors import Unavailable
from deposito.hidden import VISIBLE, manifest_name


class Beat(NamedTuple):
    """What a proxy's beat tells it (see :meth:`Catalog.beat`)."""

    seen: list[tuple[str, float]]  # servers the other proxies saw lately: (id, seconds since)
    retired: int  # proxies retired by this beat
    garbage: int  # copies their unfinished uploads made garbage
    others: builtins.list[str]  # the other proxies with a row (none: this one may answer from the records it keeps)
    rebuilding: bool = False  # another of them is rebuilding the catalog on request (see Catalog.beat)


REBUILDING = "rebuilding:"  # a key of catalog_info, then a proxy's id: it rebuilds the catalog on request (see beat)


KEEP_UNKNOWN = 7 * 86400  # seconds a blob of a version the catalog never gave out is left alone (see judge_unknown)

def proxy_id() -> str:
    """A name for this proxy process among those sharing a catalog."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Catalog(Multipart, WorkQueue, Buckets, Garbage, Identity):
    """The catalog's operations (see :class:`Database` for how they run),
    as the proxy ``proxy`` makes them: the uploads it writes, the queued
    files and the garbage it works on are its own (see :meth:`beat`)."""

    def __init__(self, where: Union[str, Backend], reads_only: bool = False, proxy: str | None = None,
                 among_proxies: bool = False, clock: Callable[[], float] = time.time) -> None:
        self.proxy = proxy or proxy_id()
        self._machine_clock = clock  # the reactor's (see Changes._on_db_clock)
        self.left = False  # the proxy stopped (see leave): it starts no more uploads
        # a proxy's, among the others sharing the catalog: its changes wait for its row (see WAIT)
        self.among_proxies = among_proxies
        self.registered: float | None = None  # time.monotonic() when this proxy's row last went in
        self._registering = False  # a transaction puts it in: registered once it commits
        self.announced = 0  # the number of this proxy's last change told to the others (see announce)
        self._announcing = 0  # the number of the change the open transaction tells, if any
        # the commits of the open transaction that need no telling, as (name, version): another commit
        # of the same name in it may need telling (see announce)
        self._untold: set[tuple[str, int]] = set()
        self._reported: builtins.list[str] | None = []  # names the open transaction's calls changed (see _tell)
        self._quiet: builtins.list[tuple[str, int]] = []  # ...as (name, version), and once committed:
        self.quiet: set[tuple[str, int]] = set()
        super().__init__(where, reads_only)

    # -- changes on a shared catalog (see TRUST and WAIT)

    def change_delay(self) -> float:
        """Among proxies on a shared catalog, how long this proxy must wait
        before it changes a record: until WAIT seconds after its row went in
        (another proxy alone until then may be answering from the records it
        keeps). Unavailable before its row is in. (Asked on the reactor's
        thread by CatalogThread, which holds a change back that long.)"""
        if not (self.among_proxies and self.backend.shared):
            return 0.0
        registered = self.registered
        if registered is None:
            raise Unavailable("this proxy is joining the others; try again shortly")
        return max(0.0, registered + WAIT - time.monotonic())

    def guard_changes(self, db: Connection, changes: bool = True) -> bool:
        """Among proxies on a shared catalog, a change runs only WAIT seconds
        after this proxy's row went in (see :meth:`change_delay`; it may have
        gone in again meanwhile), and while the row is there (locked till the
        commit, so that no proxy retires it meanwhile and takes itself for
        alone): a division by zero undoes it otherwise. That statement's
        result is never read, so it costs no round trip. A batch that
        changes no record (``changes`` False) needs the row alone. Returns
        whether the row is held."""
        if not (self.among_proxies and self.backend.shared):
            return False
        if self.change_delay() > 0 and changes:
            raise Unavailable("this proxy is joining the others; try again shortly")
        db.execute("SELECT 1 / count(*) FROM (SELECT 1 FROM proxies WHERE id = ?"
                   + self.dialect.for_key_share + ") AS mine", (self.proxy,))
        return True

    def committed(self) -> None:
        if self._registering:
            self._registering = False
            self.registered = time.monotonic()
        if self._announcing:
            self.announced, self._announcing = self._announcing, 0
        self.quiet.update(self._quiet)
        self._quiet = []

    def untold(self, name: str, version: int) -> bool:
        """Whether the commit of ``version`` of ``name`` was not told to the
        other proxies, as it needed not be (see :meth:`announce`); asked once
        per commit, from the reactor's thread."""
        try:
            self.quiet.remove((name, version))
            return True
        except KeyError:
            return False

    def announce(self, db: Connection, calls: builtins.list[tuple[Callable[..., Any], tuple]]) -> None:
        """Among proxies on a shared catalog, a transaction that changes
        records tells the others which (see :mod:`deposito.catalog.coherence`):
        its message is numbered, and :attr:`announced` is the number of the
        last one committed. A commit that made a name's first version (or
        one that lost to a newer) changed no record another proxy may keep,
        and is not told: its answer waits for nobody."""
        self._announcing = 0
        untold, self._untold = self._untold, set()
        reported, self._reported = self._reported, []
        self._quiet = []
        if not (self.among_proxies and self.backend.shared):
            return
        self._quiet = [(args[0], args[1]) for method, args in calls if method is Catalog.commit and args[:2] in untold]
        names: builtins.list[str] | None = []
        if any(tells(method) for method, _ in calls):
            names = reported
        for method, args in calls:
            if names is None or keeps_records(method) or tells(method) or (
                    method is Catalog.commit and args[:2] in untold):
                continue
            if one_record(method):
                names.append(args[0])
            else:
                names = None
        if names == []:
            return
        self._announcing = self.announced + 1
        for message in change_messages(self.proxy, self._announcing, names):
            self.backend.notify(db, CHANNEL, message)

    def reader(self) -> Catalog:
        """Another Catalog on the same database, for clients' lookups (:meth:`lookups`)."""
        return Catalog(self.backend, reads_only=True, proxy=self.proxy)

    def lookups(self, names: Iterable[str]) -> builtins.list[tuple[bool, Any]]:
        """The records of ``names`` (ok, record or None) each, as :meth:`batch`
        answers: read a page of names at a time, one statement for each."""
        names = builtins.list(names)
        try:
            found = self._guarded(lambda: self._records(self.db, names))
            return [(True, found.get(name)) for name in names]
        except Exception as e:
            told = self.backend.refusal(e) or e  # (a file gone under the reads, say: Unavailable)
            return [(False, told) for _ in names]

    # -- writes

    # -- the proxies sharing the catalog

    @effects(durable=True, keeps_records=True)  # no file's record: intents, claims and garbage
    def recover(self, now: float) -> int:
        """This proxy starts: it takes its place among the proxies. On a
        catalog no other proxy shares, whatever a proxy before it left
        unfinished is garbage at once (on a shared one, :meth:`beat` hands
        over a proxy's work once its lease has run out). Returns how many
        copies that made garbage."""
        def tx(db: Connection) -> int:
            self._registering = True
            self._read_skew(db)  # before its row goes in: seen by the others on their clock
            db.execute("INSERT INTO proxies (id, seen) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET seen = excluded.seen",
                       (self.proxy, self._on_db_clock(now)))
            if self.backend.shared:  # only uploads from before proxies had ids
                return self._retire(db, "owner IS NULL", (), claims=False)
            db.execute("DELETE FROM sightings WHERE proxy <> ?", (self.proxy,))
            db.execute("DELETE FROM catalog_info WHERE substr(key, 1, ?) = ?", (len(REBUILDING), REBUILDING))
            db.execute("DELETE FROM proxies WHERE id <> ?", (self.proxy,))
            return self._retire(db, "owner IS NULL OR owner <> ?", (self.proxy,))
        n = self._tx(tx)
        self.left = False
        return n

    @effects(durable=False, keeps_records=True)
    def beat(self, up: Iterable[str], now: float, lease: float, hand_over: bool, rebuilding: bool = False) -> Beat:
        """This proxy is alive (its lease renewed) and sees the servers ``up``;
        ``rebuilding``: it rebuilds the catalog on request (``--rebuild``), and
        turns clients away meanwhile, as every proxy sharing the catalog does
        once its beat hears of it. With ``hand_over``, proxies silent for
        ``lease`` seconds are retired (see :meth:`_retire`). Returns the
        servers the other proxies saw lately, how many proxies were retired
        and how many copies that made garbage, the other proxies' ids, and
        whether one of them is rebuilding."""
        given = now  # (this machine's clock)

        def tx(db: Connection) -> Beat:
            self._read_skew(db)
            now = self._on_db_clock(given)
            if not db.execute("UPDATE proxies SET seen = ? WHERE id = ?", (now, self.proxy)).rowcount:
                # Retired by another proxy (silent past the lease): what it had under way is
                # garbage, and its uploads under way cannot commit. It goes on under a new id.
                log.warn("this proxy was silent past its lease and another took over its work;"
                         " it goes on as a new proxy", event="retired")
                self.proxy = proxy_id()
                self._registering = True
                db.execute("INSERT INTO proxies (id, seen) VALUES (?, ?)", (self.proxy, now))
            if rebuilding:
                db.execute("INSERT INTO catalog_info (key, value) VALUES (?, '') ON CONFLICT DO NOTHING",
                           (REBUILDING + self.proxy,))
            else:
                db.execute("DELETE FROM catalog_info WHERE key = ?", (REBUILDING + self.proxy,))
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
            others = [row[0] for row in db.execute("SELECT id FROM proxies WHERE id <> ?", (self.proxy,))]
            elsewhere = db.execute("SELECT 1 FROM catalog_info JOIN proxies ON key = ? || id WHERE id <> ? LIMIT 1",
                                   (REBUILDING, self.proxy)).fetchone() is not None
            return Beat([(server, max(0.0, now - when)) for server, when in seen], retired, garbage, others,
                        elsewhere)
        return self._tx(tx)

    @effects(durable=True, keeps_records=True)  # no file's record: intents, claims and garbage
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
        db.execute("DELETE FROM catalog_info WHERE key = ?", (REBUILDING + proxy,))
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

    @effects(durable=False, keeps_records=True, answers_later=True)
    def begin_upload(self, name: str, blob: str, servers: Iterable[str]) -> int:
        """Allocate the next version of ``name`` (in one statement: two proxies
        never get the same) and record where its blob is being written."""
        self._not_left()
        greatest, rows = self.dialect.greatest, [(blob, s) for s in servers]

        def tx(db: Connection) -> Callable[[], int]:
            version = self.backend.first_row(db.execute(
                f"INSERT INTO names (name, last_version) VALUES (?, {greatest}(1, {FLOOR}))"
                f" ON CONFLICT (name) DO UPDATE SET last_version = {greatest}(names.last_version + 1, {FLOOR})"
                " RETURNING last_version", (name,)))
            if rows:  # each intent with the version just given out (see Changes._check)
                db.execute(f"INSERT INTO intents (blob, server, owner, name, version) SELECT v.column1, v.column2,"
                           f" ?, ?, names.last_version FROM ({values(rows)}) AS v, names WHERE names.name = ?"
                           " ON CONFLICT DO NOTHING", (self.proxy, name, *flat(rows), name))
            return lambda: int(version()[0])
        return self._tx_later(tx)

    @effects(durable=False, keeps_records=True, claims=True)
    def add_intent(self, blob: str, server: str) -> None:
        self._not_left()
        self._tx(lambda db: db.execute("INSERT INTO intents (blob, server, owner) VALUES (?, ?, ?)"
                                       " ON CONFLICT DO NOTHING", (blob, server, self.proxy)))

    @effects(durable=True, keeps_records=True)
    def abandon(self, blob: str, name: str | None = None, version: int | None = None,
                servers: Iterable[str] = ()) -> None:
        """An upload failed: every server it touched has garbage to delete.
        Its intents are taken with one DELETE ... RETURNING, as a commit
        takes them: if the commit is still running (its answer was lost),
        whichever of the two comes second finds nothing, so a committed copy
        is never garbage too.

        An allocation commits without waiting for the disk (see
        begin_upload), so a database that crashes may lose the intents, and
        the version, of an upload whose copies are then written: given
        ``name`` (the name allocated, its ``version``) and the ``servers``
        written to, those without an intent hold garbage all the same,
        unless the blob was committed (a commit takes every intent of its
        upload: one still running, on a connection lost meanwhile, is
        waited for by the DELETE below, and one whose intents were lost
        cannot commit). The name's next version is moved past this one,
        which is not given out twice (a --rebuild would find two blobs of
        one version)."""
        servers = sorted(set(servers))

        def tx(db: Connection) -> None:
            if name is not None:
                db.execute(f"INSERT INTO names (name, last_version) VALUES (?, ?) ON CONFLICT (name) DO UPDATE"
                           f" SET last_version = {self.dialect.greatest}(names.last_version, excluded.last_version)",
                           (name, version or 0))
            taken = db.execute("DELETE FROM intents WHERE blob = ? RETURNING blob, server", (blob,)).fetchall()
            db.executemany(INSERT_GARBAGE, taken)
            lost = [s for s in servers if s not in {server for _, server in taken}]
            if lost and name is not None and db.execute("SELECT 1 FROM files WHERE blob = ?", (blob,)).fetchone() is None:
                db.executemany(INSERT_GARBAGE, [(blob, s) for s in lost])
        self._tx(tx)

    @effects(durable=True, keeps_records=False, one_record=True)
    def commit(self, name: str, version: int, blob: str, size: int, sha256: str,
               replicas: int, servers: Iterable[str], now: float, meta: str = "", expect: Expect | None = None,
               bucket: str | None = None) -> bool:
        """Make a version visible with its copies (and ``meta``, see
        FileRecord), in one transaction; with ``expect``, only if the name's
        current version meets it (see Expect), and Conflict when it is not
        the newest; with ``bucket`` (an S3 write), only while that bucket
        exists, else NotFound.

        Returns False when a newer version was committed or deleted
        meanwhile: this one is then garbage at once and readers never see it.
        The name's row is locked first, so two proxies committing versions of
        one name decide newest-wins one after the other. Unavailable when
        this proxy's lease ran out meanwhile: its uploads were made garbage
        (and may be deleted already), so they must not count.
        """
        servers, now = list(servers), self._on_db_clock(now)

        def tx(db: Connection) -> bool:
            if bucket is not None:
                self._bucket_stays(db, bucket)
            newest, replaced = self._settle_at(db, name, version, blob, servers)
            self._untold.discard((name, version))
            if not newest or replaced is None:  # (see announce)
                self._untold.add((name, version))
            self._check(db, name, expect, newest, version)
            if not newest:
                return False
            self._replace(db, name, (name, version, blob, size, sha256, replicas, now, servers_text(servers),
                                     meta, ""), replaced, copies=servers)
            return True
        return self._tx(tx)

    @effects(durable=True, keeps_records=False, one_record=True)
    def delete(self, name: str, expect: Expect | None = None) -> FileRecord | None:
        """Remove ``name``'s version (and queue its copies as garbage): the
        record it had, or None. With ``expect`` (see Expect), only if the
        current version (or None) meets it."""
        def tx(db: Connection) -> FileRecord | None:
            db.execute("SELECT 1 FROM names WHERE name = ?" + self.dialect.for_update, (name,))  # as commit does
            record = self._lookup(db, name)
            if expect is not None:
                expect(record)
            if record is not None:
                db.execute("DELETE FROM files WHERE name = ?", (name,))
                # on a catalog rebuilt from a lost one, a version of it on a server back late (below
                # the floor: see Identity.succeed) is older than this deletion, whatever its number
                db.execute(f"UPDATE names SET settled = {self.dialect.greatest}(settled, ?, {FLOOR} - 1)"
                           " WHERE name = ?", (record.version, name))
                db.execute("DELETE FROM work WHERE name = ?", (name,))
                self._drop_version(db, record.blob, record.parts)
                add_totals(db, *(-n for n in weight(name, record.size, record.replicas, record.parts)))
            return record
        return self._tx(tx)

    @effects(durable=True, keeps_records=False, one_record=True)
    def set_replicas(self, name: str, count: int, up: Iterable[str] | None = None) -> FileRecord | None:
        """Change the wanted count and queue the file. ``up``: the servers
        this proxy sees up; then the queue counts the file under or over at
        once (STATUS), from its copies on them, as the reconciler would."""
        up = None if up is None else builtins.list(up)

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
                add_totals(db, 0, 0, sum(count - replicas for _, replicas in changed))
                self._enqueue(db, [hidden for hidden, _ in changed])
            else:
                add_totals(db, 0, 0, count - row[0])
                self._enqueue(db, [name])
            record = self._lookup(db, name)
            if up is not None and record is not None and not record.parts:
                have = len(set(record.servers).intersection(up))
                db.execute("UPDATE work SET wanted = ?, have = ?, moves = ? WHERE name = ?",
                           (count, have, abs(count - have), name))
            return record
        return self._tx(tx)

    @effects(durable=True, keeps_records=False, tells=True)
    def add_copy(self, name: str, blob: str, server: str, now: float) -> bool:
        """A new copy of ``name``'s blob is durable on ``server``: it counts, if the
        blob is still the current one (else it is garbage)."""
        now = self._on_db_clock(now)

        def tx(db: Connection) -> bool:
            intent = db.execute("DELETE FROM intents WHERE blob = ? AND server = ? AND owner = ? RETURNING 1",
                                (blob, server, self.proxy))
            file = db.execute("SELECT 1 FROM files WHERE name = ? AND blob = ?" + self.dialect.for_update,
                              (name, blob))
            garbage = db.execute("SELECT 1 FROM garbage WHERE blob = ? AND server = ?", (blob, server))
            # the three are sent before any answer is read: one round trip on a distant database
            mine, current, going = intent.fetchone(), file.fetchone(), garbage.fetchone()
            if mine is None:
                return False  # this proxy lost its lease meanwhile: the copy is garbage already
            if current is None:
                db.execute(INSERT_GARBAGE, (blob, server))
                return False
            if going is not None:
                return False  # a copy there is being deleted: this one may go with it, so it does not count
            db.execute(INSERT_COPY, (blob, server, now))
            self._servers_changed(db, [blob])
            self._enqueue(db, [name])
            # one copy fewer to make: STATUS counts it before the reconciler looks again
            db.execute("UPDATE work SET have = have + 1, moves = CASE WHEN moves > 0 THEN moves - 1 ELSE 0 END"
                       " WHERE name = ? AND have < wanted", (name,))
            return True
        return self._tx(tx)

    @effects(durable=True, keeps_records=False, tells=True)
    def drop_copy(self, blob: str, server: str) -> None:
        """A copy no longer counts (found corrupt) and is to be deleted from
        its server; its file is queued, to be copied again."""
        def tx(db: Connection) -> None:
            db.execute("DELETE FROM copies WHERE blob = ? AND server = ?", (blob, server))
            self._servers_changed(db, [blob])
            db.execute(INSERT_GARBAGE, (blob, server))
            self._enqueue(db, [row[0] for row in db.execute("SELECT name FROM files WHERE blob = ?", (blob,))])
        self._tx(tx)

    @effects(durable=True, keeps_records=False, tells=True)
    def drop_copies(self, drops: Iterable[tuple[str, str, int]]) -> None:
        """The reconciler's drops, (blob, server, wanted) each: copies over
        the ``wanted`` count the reconciler saw, or on dead servers once
        replaced. No longer counted, to be deleted; but a copy of a file
        that wants more copies now (a REPLICAS since, maybe through another
        proxy) is kept: the file is queued again by that change."""
        drops = list(drops)

        def tx(db: Connection) -> None:
            dropped: set[str] = set()
            for page in pages(drops):  # a page of drops in a few statements
                wants_more = {(blob, wanted) for blob, wanted in db.execute(
                    f"SELECT v.column1, v.column2 FROM files f JOIN ({values([(b, w) for b, _, w in page])}) AS v"
                    " ON f.blob = v.column1 WHERE f.replicas > v.column2", flat((b, w) for b, _, w in page))}
                gone = [(blob, server) for blob, server, wanted in page if (blob, wanted) not in wants_more]
                if gone:  # (by blob first: SQLite reads every copy for pairs alone)
                    db.execute(f"DELETE FROM copies WHERE blob IN ({marks(gone)}) AND (blob, server) IN"
                               f" ({values(gone)})", (*[blob for blob, _ in gone], *flat(gone)))
                    insert_rows(db, "garbage (blob, server)", gone)
                    dropped.update(blob for blob, _ in gone)
            self._servers_changed(db, dropped)
        self._tx(tx)

    @effects(durable=True, keeps_records=False, tells=True)
    def abandon_copy(self, blob: str, server: str) -> None:
        """A repair copy failed: what it wrote is garbage, unless an
        inventory counted it meanwhile, or the blob is a file's current one.
        Such a blob on ``server`` (this copy's after all, its answer lost,
        or one made before that the catalog had stopped counting, wrongly
        taken for missing) is never deleted on the word of a failed copy:
        the server's next listing counts it, and the reconciler drops it if
        it is one too many."""
        def tx(db: Connection) -> None:
            db.execute("DELETE FROM intents WHERE blob = ? AND server = ?", (blob, server))
            counted = db.execute("SELECT 1 FROM copies WHERE blob = ? AND server = ?", (blob, server))
            current = db.execute("SELECT 1 FROM files WHERE blob = ?", (blob,))
            if counted.fetchone() is None and current.fetchone() is None:
                db.execute(INSERT_GARBAGE, (blob, server))
        self._tx(tx)

    @effects(durable=False, keeps_records=False, tells=True, prompt=True)
    def reconcile_inventory(self, server: str, present: Iterable[str], lo: str | None, hi: str | None,
                            before: float, held_only: bool = False) -> tuple[int, int, list[str], list[str]]:
        """Compare what a server holds with what the catalog says it holds, over
        one range of blob ids: above ``lo`` (None: from the first) up to and
        including ``hi`` (None: to the last). ``present`` is what the server
        listed in that range (ids outside it are left alone).

        Copies the catalog lists in the range (made before ``before``) that the
        server lacks stop counting; blobs it holds that are a file's current
        blob count (again); anything else it holds is unknown (to be judged
        by its metadata: see :meth:`judge_unknown`), unless still being
        written, or unless the server is being taken in (a proxy sharing
        the catalog is adopting its blobs: see :meth:`mark_adopting`).
        A blob deleted from the server at ``before`` or later (by any proxy:
        see :meth:`forget_garbage`) may still be listed, and is left alone. The catalog's copies are read through the index in
        pages, so a range of any size costs memory for a page and the listed
        blobs. Returns (missing, counted, the unknown blobs, names of the
        files whose copies changed). With ``held_only``, only the copies the
        server lacks are looked at (its blobs are being taken in: see
        :meth:`adopt`, which judges them).
        """
        present = {b for b in present if (lo is None or b > lo) and (hi is None or b <= hi)}
        page, before = 1000, self._on_db_clock(before)

        def tx(db: Connection) -> tuple[int, int, list[str], list[str]]:
            names: list[str] = []
            changed: list[str] = []  # blobs whose copies on this server were added or removed
            unknown: list[str] = []
            missing = counted = 0
            adopting = db.execute("SELECT 1 FROM catalog_info WHERE key = ?",
                                  ("adopting:" + server,)).fetchone() is not None
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
            for blob in sorted(set() if held_only else present - held):
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
                elif not (written or adopting):
                    unknown.append(blob)
            self._servers_changed(db, changed)
            self._enqueue(db, names)
            return missing, counted, unknown, names
        return self._tx(tx)

    @effects(durable=True, keeps_records=True)
    def judge_unknown(self, server: str, blobs: Iterable[tuple[str, str | None, int | None, int]],
                      before: float) -> tuple[int, int, int]:
        """Blobs a server holds that the catalog does not know (see
        :meth:`reconcile_inventory`), with the name and version their
        metadata says (None: unreadable) and their age (seconds since
        written). Garbage when this catalog gave that version of that name
        out (or a later one): a copy it forgot (of a failed upload, of a
        replaced version). One of a version it never gave out (or of a name
        it has no row of) was written through a catalog that went on after
        this one (this one is older: a backup put back, and deleting it
        would lose a file written since; ``--rebuild`` takes it in), or is
        of an upload whose start this catalog lost in a crash (its
        allocation is not made durable): it is left alone till it is
        KEEP_UNKNOWN seconds old, then garbage, so that neither loses a
        file nor stays for good. Each blob is judged again as
        :meth:`reconcile_inventory` did (it may have been committed, or made
        garbage, meanwhile). Returns (garbage, left alone, of those garbage
        the ones of versions never given out, too old to be left alone)."""
        blobs, before = list(blobs), self._on_db_clock(before)

        def tx(db: Connection) -> tuple[int, int, int]:
            garbage = kept = expired = 0
            if db.execute("SELECT 1 FROM catalog_info WHERE key = ?", ("adopting:" + server,)).fetchone():
                return 0, 0, 0  # being taken in meanwhile: its blobs are not judged
            for blob, name, version, age in blobs:
                if (db.execute("SELECT 1 FROM garbage WHERE blob = ? AND server = ?", (blob, server)).fetchone()
                        or db.execute("SELECT 1 FROM deleted WHERE blob = ? AND server = ? AND at >= ?",
                                      (blob, server, before)).fetchone()
                        or db.execute("SELECT 1 FROM intents WHERE blob = ? AND server = ?", (blob, server)).fetchone()
                        or db.execute("SELECT 1 FROM files WHERE blob = ?" + self.dialect.for_update,
                                      (blob,)).fetchone()):
                    continue  # known meanwhile: the next listing judges it as any other
                if name is not None and version is not None:
                    last = db.execute("SELECT last_version FROM names WHERE name = ?", (name,)).fetchone()
                    if last is None or last[0] < version:
                        if age < KEEP_UNKNOWN:
                            kept += 1
                            continue
                        expired += 1
                db.execute(INSERT_GARBAGE, (blob, server))
                garbage += 1
            return garbage, kept, expired
        return self._tx(tx)

    @effects(durable=True, keeps_records=False, prompt=True)
    def adopt(self, server: str, entries: Iterable[tuple[str, int, int, str, int, str, str]], now: float) -> int:
        """Rebuilding: take a server's blobs (blob, version, size, sha256, replicas,
        name, meta) into the catalog, each version with the gateway metadata
        kept on its blob (and the bucket S3 stored it in made again); the highest version of each name wins, older ones
        are garbage, and a version wants the most copies any of its copies
        says (one made after a REPLICAS knows the new count). A server back
        late from a lost catalog is taken in the same way, after writes: a
        version older than the name's newest, or than its deletion, is
        garbage. A copy this catalog knows is no version's (of an upload not
        committed, its intent still there, or one made garbage already, a
        failed PUT's say, or deleted since the server listed it) is left as
        it is: the catalog kept says more than the blob's metadata. Returns how many copies were taken."""
        entries, now = list(entries), self._on_db_clock(now)

        def tx(db: Connection) -> int:
            taken = 0
            for blob, version, size, sha256, replicas, name, meta in entries:
                if db.execute("SELECT 1 WHERE EXISTS (SELECT 1 FROM garbage WHERE blob = ? AND server = ?)"
                              " OR EXISTS (SELECT 1 FROM intents WHERE blob = ? AND server = ?)"
                              " OR EXISTS (SELECT 1 FROM deleted WHERE blob = ? AND server = ?)",
                              (blob, server) * 3).fetchone():
                    continue
                settled = db.execute("SELECT settled FROM names WHERE name = ?" + self.dialect.for_update,
                                     (name,)).fetchone()
                self._seen_version(db, name, version)
                row = db.execute("SELECT version, blob, replicas FROM files WHERE name = ?", (name,)).fetchone()
                if row is None and settled is not None and settled[0] >= version:
                    db.execute(INSERT_GARBAGE, (blob, server))  # deleted since: a late server's old copy
                    continue
                if row is not None and (row[0], row[1]) == (version, blob):
                    # copies made after a REPLICAS know the higher count: the most wins; but a copy
                    # this catalog knows already says less than it (a REPLICAS since, not yet kept there)
                    if replicas > row[2] and db.execute("SELECT 1 FROM copies WHERE blob = ? AND server = ?",
                                                        (blob, server)).fetchone() is None:
                        db.execute("UPDATE files SET replicas = ? WHERE name = ?", (replicas, name))
                        add_totals(db, 0, 0, replicas - row[2])
                        self._enqueue(db, [name])
                elif row is not None and row[0] >= version:
                    db.execute(INSERT_GARBAGE, (blob, server))
                    continue
                else:
                    self._replace(db, name, (name, version, blob, size, sha256, max(1, replicas), now, "", meta, ""))
                    self._seen_bucket(db, name, meta, now)
                    self._enqueue(db, [name])
                db.execute(INSERT_COPY, (blob, server, now))
                self._servers_changed(db, [blob])
                taken += 1
            if entries:
                self._floor_above(db, max(entry[1] for entry in entries))
            return taken
        return self._tx(tx)

    @effects(durable=False, keeps_records=True)
    def save_server(self, id: str, zone: str, host: str, port: int, capacity: int, used: int, blobs: int) -> None:
        self._tx(lambda db: db.execute(
            "INSERT INTO servers VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET zone = excluded.zone,"
            " host = excluded.host, port = excluded.port, capacity = excluded.capacity, used = excluded.used,"
            " blobs = excluded.blobs", (id, zone, host, port, capacity, used, blobs)))

    # -- reads

    @effects(durable=False, keeps_records=True)
    def servers(self) -> list[tuple]:
        return self.db.execute("SELECT id, zone, host, port, capacity, used, blobs FROM servers ORDER BY id").fetchall()

    @effects(durable=False, keeps_records=True)
    def lookup(self, name: str) -> FileRecord | None:
        return self._lookup(self.db, name)

    @effects(durable=False, keeps_records=True)
    def list(self, prefix: str = "") -> list[FileRecord]:
        rows = self.db.execute(
            RECORD + " WHERE substr(name, 1, ?) = ? AND name >= ? ORDER BY name",
            (len(prefix), prefix, VISIBLE)).fetchall()
        return [to_record(r) for r in rows]


REMEMBER_DELETES = 600.0  # seconds a delete is remembered for the inventories that may still list it
