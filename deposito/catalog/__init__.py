"""The proxy's catalog: which names exist, their versions, and where the
copies are, behind one interface (:class:`deposito.interfaces.ICatalog`),
in SQLite (embedded, the default) or PostgreSQL (which proxies may share).

- :mod:`~deposito.catalog.records`: what every backend hands out and takes in;
- :mod:`~deposito.catalog.schema`: the tables, and an older SQLite catalog's migration;
- :mod:`~deposito.catalog.dialect`: where the two databases' SQL differs;
- :mod:`~deposito.catalog.operations`: the operations, written once, blocking (with
  :mod:`~deposito.catalog.changes`, :mod:`~deposito.catalog.queue`, :mod:`~deposito.catalog.multipart`);
- :mod:`~deposito.catalog.sqlite`, :mod:`~deposito.catalog.postgres`: the two databases;
- :mod:`~deposito.catalog.thread`: the operations as ICatalog, on a thread of their own;
- :mod:`~deposito.catalog.listing`: LIST's names, read from one snapshot.
"""

from __future__ import annotations

from deposito.catalog.database import Backend
from deposito.catalog.operations import Catalog
from deposito.catalog.records import WAITING, Counts, FileRecord, Outcome, effects
from deposito.catalog.thread import CatalogThread


def backend_for(url: str, data: str) -> Backend:
    """The database ``--catalog`` names: ``sqlite:`` (the catalog in the
    directory ``data``) or a ``postgresql://`` URL. ValueError when it is
    neither."""
    if url in ("sqlite:", "sqlite"):
        from deposito.catalog.sqlite import SQLiteBackend

        return SQLiteBackend(data)
    from deposito.catalog.postgres import PostgresBackend

    return PostgresBackend(url)


__all__ = ["WAITING", "Backend", "Catalog", "CatalogThread", "Counts", "FileRecord", "Outcome", "backend_for",
           "effects"]
