"""Which catalog this is: its id, which servers check when they join, and
the lost catalogs it was rebuilt from, whose servers it takes in."""

from __future__ import annotations

from deposito.catalog.changes import Changes
from deposito.catalog.database import Connection
from deposito.catalog.records import effects

# the lowest version given out from now on (see Identity.succeed)
FLOOR = "coalesce((SELECT CAST(value AS BIGINT) FROM catalog_info WHERE key = 'floor'), 0)"


class Identity(Changes):
    """The catalog's id and lineage (table ``catalog_info``)."""

    @effects(durable=False, keeps_records=True)
    def is_empty(self) -> bool:
        """No name was ever stored: a new catalog, or a lost one."""
        return self.db.execute("SELECT 1 FROM names LIMIT 1").fetchone() is None

    @effects(durable=False, keeps_records=True)
    def identity(self) -> str:
        """The catalog's id, made with it: servers check it when they join, so
        that no server serves two catalogs at once."""
        return str(self.db.execute("SELECT value FROM catalog_info WHERE key = 'id'").fetchone()[0])

    @effects(durable=False, keeps_records=True)
    def lost_catalogs(self) -> list[str]:
        """The ids of the lost catalogs this one was rebuilt from (see :meth:`succeed`)."""
        return self._keyed("lost:")

    @effects(durable=True, keeps_records=True)
    def succeed(self, lost: str, floor: int) -> None:
        """This catalog is rebuilt from the servers of catalog ``lost``: a
        server still serving it, back late, is taken in too. Some of its
        versions may be on servers not back yet, so from now on versions are
        given out from ``floor`` up (milliseconds of the clock, above any a
        catalog gives out at fewer than a thousand versions of one name a
        second): a version written now wins over any such one that comes back."""
        def tx(db: Connection) -> None:
            db.execute("INSERT INTO catalog_info (key, value) VALUES (?, '') ON CONFLICT DO NOTHING",
                       ("lost:" + lost,))
            self._raise_floor(db, self._floor_on_db_clock(floor))
        self._tx(tx)

    @effects(durable=True, keeps_records=True)
    def raise_floor(self, floor: int) -> None:
        """Versions are given out from ``floor`` up from now on (see :meth:`succeed`)."""
        self._tx(lambda db: self._raise_floor(db, self._floor_on_db_clock(floor)))

    def _floor_on_db_clock(self, floor: int) -> int:
        return round(self._on_db_clock(floor / 1000) * 1000)

    @staticmethod
    def _raise_floor(db: Connection, floor: int) -> None:
        row = db.execute("SELECT value FROM catalog_info WHERE key = 'floor'").fetchone()
        if row is None or int(row[0]) < floor:
            db.execute("INSERT INTO catalog_info (key, value) VALUES ('floor', ?) ON CONFLICT (key)"
                       " DO UPDATE SET value = excluded.value", (str(floor),))

    @effects(durable=False, keeps_records=True)
    def rebuild_owed(self) -> bool:
        """A rebuild was under way when its proxy stopped (see :meth:`mark_rebuilding`)."""
        return self.db.execute("SELECT 1 FROM catalog_info WHERE key = 'rebuilding'").fetchone() is not None

    @effects(durable=True, keeps_records=True)
    def mark_rebuilding(self, rebuilding: bool) -> None:
        """A rebuild is under way, or (``rebuilding`` False) over, its
        multipart objects made again: a proxy stopped meanwhile goes on with
        it when it starts again."""
        if rebuilding:
            self._tx(lambda db: db.execute("INSERT INTO catalog_info (key, value) VALUES ('rebuilding', '')"
                                           " ON CONFLICT DO NOTHING"))
        else:
            self._tx(lambda db: db.execute("DELETE FROM catalog_info WHERE key = 'rebuilding'"))

    @effects(durable=False, keeps_records=True)
    def adopting(self) -> list[str]:
        """The servers whose listing is being taken in (see :meth:`mark_adopting`)."""
        return self._keyed("adopting:")

    def _keyed(self, prefix: str) -> list[str]:
        """What follows ``prefix`` in the keys of ``catalog_info`` that start with it, sorted."""
        rows = self.db.execute("SELECT key FROM catalog_info WHERE substr(key, 1, ?) = ?",
                               (len(prefix), prefix)).fetchall()
        return sorted(str(r[0])[len(prefix):] for r in rows)

    @effects(durable=True, keeps_records=True)
    def mark_adopting(self, server: str, adopting: bool) -> None:
        """``server``'s listing is being taken in (rebuilding, or a server of
        a lost catalog back late), or (``adopting`` False) it is all in."""
        if adopting:
            self._tx(lambda db: db.execute("INSERT INTO catalog_info (key, value) VALUES (?, '')"
                                           " ON CONFLICT DO NOTHING", ("adopting:" + server,)))
        else:
            self._tx(lambda db: db.execute("DELETE FROM catalog_info WHERE key = ?", ("adopting:" + server,)))

    def _floor_above(self, db: Connection, version: int) -> None:
        """Taking in ``version``: on a catalog that succeeds a lost one, the
        floor goes above it too, whatever the clock said (a clock set back
        would give out versions older than those of the lost catalog)."""
        row = db.execute("SELECT value FROM catalog_info WHERE key = 'floor'").fetchone()
        if row is not None and int(row[0]) <= version:
            db.execute("UPDATE catalog_info SET value = ? WHERE key = 'floor'", (str(version + 1),))
