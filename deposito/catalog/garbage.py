"""The catalog's garbage: copies to delete from the servers (replaced or
deleted versions, abandoned uploads), each claimed by one proxy at a time
while it deletes them, and remembered a while once deleted (see
:meth:`deposito.catalog.operations.Catalog.reconcile_inventory`)."""

from __future__ import annotations

from typing import Iterable

from deposito.catalog.changes import Changes
from deposito.catalog.database import Connection
from deposito.catalog.records import effects


class Garbage(Changes):
    """The copies to delete (table ``garbage``) and those deleted (``deleted``)."""

    @effects(durable=False, keeps_records=True)
    def garbage_count(self) -> list[tuple[str, int]]:
        return self.db.execute("SELECT server, count(*) FROM garbage GROUP BY server").fetchall()

    @effects(durable=False, keeps_records=True, claims=True)
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
        deleted, now = list(deleted), self._on_db_clock(now)

        def tx(db: Connection) -> None:
            db.executemany("DELETE FROM garbage WHERE blob = ? AND server = ?", deleted)
            db.executemany("INSERT INTO deleted (blob, server, at) VALUES (?, ?, ?) ON CONFLICT (blob, server)"
                           " DO UPDATE SET at = excluded.at", [(blob, server, now) for blob, server in deleted])
        self._tx(tx)
