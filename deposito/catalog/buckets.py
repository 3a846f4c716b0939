"""The catalog's buckets (S3's): bucket B holds the files named ``B/...``."""

from __future__ import annotations

import builtins

from deposito.catalog.changes import Changes
from deposito.catalog.database import Connection
from deposito.catalog.records import effects
from deposito.errors import NotEmpty, NotFound
from deposito.hidden import manifest_name


class Buckets(Changes):
    """The buckets (table ``buckets``), made, listed and removed."""

    @effects(durable=True, keeps_records=True)
    def create_bucket(self, name: str, now: float) -> bool:
        """Make bucket ``name``; False when it exists already."""
        now = self._on_db_clock(now)
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
    def buckets(self, prefix: str, after: str, limit: int) -> builtins.list[tuple[str, float]]:
        """The buckets whose names start with ``prefix`` and sort after
        ``after``, ``(name, created)`` in name order, at most ``limit``."""
        return [(name, float(created)) for name, created in self.db.execute(
            "SELECT name, created FROM buckets WHERE name > ? AND name >= ? AND substr(name, 1, ?) = ?"
            " ORDER BY name LIMIT ?", (after, prefix, len(prefix), prefix, limit)).fetchall()]
