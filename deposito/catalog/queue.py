"""The reconciler's queue in the catalog (see :mod:`deposito.reconciler`):
the files that may need copies made or dropped, queued by the changes that
cause it, claimed by one proxy at a time, and the counts STATUS shows."""

from __future__ import annotations

import builtins
from typing import Iterable

from deposito.catalog.changes import Changes, flat, marks, pages, values
from deposito.catalog.database import Connection
from deposito.catalog.records import WAITING, Counts, FileRecord, Outcome, effects
from deposito.catalog.schema import NOT_WAITING, RECORD, to_record


# A file a proxy passed to the others (see Outcome.passed) that none has
# taken: after this long, the proxy that passed it may look at it again.
PASSED_BACK = 30.0


class WorkQueue(Changes):
    """The ``work`` table: what the reconciler is to look at, and when."""

    @effects(durable=False, keeps_records=True)
    def enqueue(self, names: Iterable[str], due: float = 0.0, only_new: bool = False) -> None:
        """Queue files to be looked at again, from ``due`` on (or sooner, if
        queued so already); ``only_new``: leave files already queued as they are."""
        due = self._on_db_clock(due)
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
            self._enqueue(db, [row[0] for page in pages(blobs)
                               for row in db.execute(f"SELECT name FROM files WHERE blob IN ({marks(page)})", page)])
            return blobs[-1] if len(blobs) == limit else None
        return self._tx(tx)

    @effects(durable=False, keeps_records=True)
    def wake(self, now: float) -> int:
        """A server came back: every queued file waiting for later is due now."""
        now = self._on_db_clock(now)
        return self._tx(lambda db: db.execute("UPDATE work SET due = ?, gen = gen + 1 WHERE due > ?",
                                              (now, now)).rowcount)

    @effects(durable=False, keeps_records=True, claims=True)
    def due_work(self, now: float, limit: int) -> builtins.list[tuple[str, int, int]]:
        """Claim the next queued files due by ``now`` that no other proxy has
        claimed (name, generation, rank): files not yet looked at first
        (rank 0), then those with the fewest healthy copies. Each stays this
        proxy's until :meth:`settle` or :meth:`release` lets it go; rows
        another proxy is claiming at the same moment are skipped, not waited
        for. A file this proxy passed to the others waits PASSED_BACK more.
        The query walks the queue's order (work_due_in_order) and stops at
        ``limit``. Files waiting for a server, however many, are not in that
        order and are never read; files due later are (a copy under way
        waits out its lease, a failed one its retry): as many as the work
        under way."""
        in_order, now = self.dialect.indexed_by("work_due_in_order"), self._on_db_clock(now)

        def tx(db: Connection) -> builtins.list[tuple[str, int, int]]:
            rows = db.execute(
                f"UPDATE work SET owner = ? WHERE name IN (SELECT name FROM work{in_order} WHERE {NOT_WAITING}"
                " AND due <= ? AND (owner IS NULL OR owner = ?) AND (passed IS NULL OR passed <> ? OR due <= ?)"
                f" ORDER BY rank, due LIMIT ?{self.dialect.skip_locked}) RETURNING name, gen, rank, due",
                (self.proxy, now, self.proxy, self.proxy, now - PASSED_BACK, limit)).fetchall()
            return [(name, gen, rank) for name, gen, rank, _ in sorted(rows, key=lambda r: (r[2], r[3], r[0]))]
        return self._tx(tx)

    @effects(durable=False, keeps_records=True)
    def release(self, names: Iterable[str]) -> None:
        """This proxy is done with these files (their copies are made): any proxy may look at them again."""
        self._tx(lambda db: self._release(db, builtins.list(names)))

    def _release(self, db: Connection, names: builtins.list[str]) -> None:
        for page in pages(names):
            db.execute(f"UPDATE work SET owner = NULL WHERE owner = ? AND name IN ({marks(page)})", (self.proxy, *page))

    @effects(durable=False, keeps_records=True)
    def next_due(self) -> float | None:
        """When the next file no other proxy has claimed is due (for this proxy)."""
        first = self.db.execute(f"SELECT due FROM work{self.dialect.indexed_by('work_by_due')} WHERE"
                                " (owner IS NULL OR owner = ?) AND (passed IS NULL OR passed <> ?) ORDER BY due LIMIT 1",
                                (self.proxy, self.proxy)).fetchone()
        others = first[0] if first else None
        passed = self.db.execute("SELECT min(due) FROM work WHERE passed = ? AND owner IS NULL",
                                 (self.proxy,)).fetchone()[0]
        due = min((t for t in (others, passed + PASSED_BACK if passed is not None else None) if t is not None),
                  default=None)
        return None if due is None else self._off_db_clock(due)

    @effects(durable=False, keeps_records=True)
    def records(self, names: Iterable[str]) -> builtins.list[FileRecord | None]:
        """The records of ``names``; None for a version made of parts too, whose
        hidden files are each queued and planned as files (it has no copies of its own)."""
        names = builtins.list(names)
        found = self._records(self.db, names)
        return [None if record is None or record.parts else record for record in map(found.get, names)]

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
        proxy is about to make. A file another proxy passed here that this
        one passes on too (each sees copies the other cannot) waits instead,
        as for a server to come back, rather than going to and fro."""
        held = set(held)
        outcomes = builtins.list({o.name: o for o in outcomes}.values())  # a file's last outcome, as ever
        done = [(o.name, o.gen) for o in outcomes if o.due is None]
        # the others' rows: column1 to column8 of a VALUES list, one statement a page
        later = [(o.name, o.gen, self._on_db_clock(o.due), o.rank, o.wanted, o.have, o.moves, int(o.passed))
                 for o in outcomes if o.due is not None]
        real, int_ = self.dialect.real, self.dialect.int
        set_later = (f"due = CASE WHEN v.column8 = 0 OR passed IS NULL OR passed = ? THEN CAST(v.column3 AS {real})"
                     " ELSE ? END, passed = CASE WHEN v.column8 = 1 AND (passed IS NULL OR passed = ?) THEN ? END,"
                     f" rank = v.column4, wanted = CAST(v.column5 AS {int_}), have = CAST(v.column6 AS {int_}),"
                     " moves = v.column7")

        def tx(db: Connection) -> None:
            for page in pages(done):  # (by name first: SQLite reads the whole queue for pairs alone)
                db.execute(f"DELETE FROM work WHERE name IN ({marks(page)}) AND (name, gen) IN ({values(page)})",
                           (*[name for name, _ in page], *flat(page)))
            for rows in pages(later):
                db.execute(f"UPDATE work SET {set_later} FROM ({values(rows)}) AS v"
                           " WHERE work.name = v.column1 AND work.gen = v.column2",
                           (self.proxy, WAITING, self.proxy, self.proxy, *flat(rows)))
            self._release(db, [o.name for o in outcomes if o.name not in held])
        self._tx(tx)

    @effects(durable=False, keeps_records=True)
    def counts(self, servers: Iterable[str] = ()) -> Counts:
        """The totals kept with every change, and the queue's own counts:
        the cost follows the work queued, not the number of files. The
        garbage is counted on ``servers`` (those up) alone, through its
        index by server: what waits on a server gone for good (all its
        copies, maybe) is no work that can be done, and is not read."""
        servers = sorted(set(servers))
        totals = dict(self.db.execute("SELECT key, value FROM totals"))
        under, over, moves, fresh, surplus, queued = self.db.execute(
            "SELECT count(CASE WHEN have < wanted THEN 1 END), count(CASE WHEN have > wanted THEN 1 END),"
            " CAST(coalesce(sum(moves), 0) AS BIGINT), count(CASE WHEN have IS NULL THEN 1 END),"
            " CAST(coalesce(sum(have - wanted), 0) AS BIGINT), count(*) FROM work").fetchone()
        return Counts(files=totals.get("files", 0), bytes=totals.get("bytes", 0),
                      wanted=totals.get("wanted", 0), under=under, over=over, moves=moves, fresh=fresh,
                      healthy=totals.get("wanted", 0) + surplus, queued=queued,
                      garbage=[(server, self.db.execute("SELECT count(*) FROM garbage WHERE server = ?",
                                                        (server,)).fetchone()[0]) for server in servers])
