"""The proxy's catalog: which names exist, their versions, and where the
copies are, behind one interface (:class:`deposito.interfaces.ICatalog`).

- :mod:`~deposito.catalog.records`: what every backend hands out and takes in;
- :mod:`~deposito.catalog.schema`: the SQLite tables and their migration;
- :mod:`~deposito.catalog.sqlite`: the SQLite operations, blocking;
- :mod:`~deposito.catalog.thread`: those as ICatalog, on a thread of their own;
- :mod:`~deposito.catalog.listing`: LIST's names, read from one snapshot.
"""

from deposito.catalog.records import WAITING, Counts, FileRecord, Outcome, effects
from deposito.catalog.sqlite import Catalog
from deposito.catalog.thread import CatalogThread

__all__ = ["WAITING", "Catalog", "CatalogThread", "Counts", "FileRecord", "Outcome", "effects"]
