"""The catalog a storage server serves: one at a time, kept in its data directory.

Proxies with catalogs of their own must never share a server: each would
find the other's blobs in the server's listing, unknown to its own catalog,
and delete them as garbage, acknowledged files with them. So every proxy's
welcome names its catalog (proxies sharing one catalog name the same), the
server records the first it serves and refuses a proxy of any other.

One exception makes a lost catalog good again: a proxy rebuilding its
catalog from the servers (its welcome asks for ``listing=full``) is served,
and its catalog recorded instead, when no proxy of the recorded catalog is
joined. Its blobs are then taken in, never judged.
"""

from __future__ import annotations

import enum
import os

from deposito.blobstore import fsync_dir
from deposito.protocols.cluster import CATALOG_ID

FILE = "catalog-id"


class Verdict(enum.Enum):
    SERVE = "serve"  # the recorded catalog, or a proxy that names none
    RECORD = "record"  # a catalog to serve from now on: recorded before it is served
    REFUSE = "refuse"  # another catalog than the one served


def judge(recorded: str | None, offered: str | None, rebuilding: bool, joined_to_recorded: bool) -> Verdict:
    """What to do with a proxy's welcome naming catalog ``offered``
    (None: a proxy older than catalog ids names none), this server having
    ``recorded`` (None: none yet); ``rebuilding``: the proxy rebuilds its
    catalog from the servers; ``joined_to_recorded``: a proxy of the
    recorded catalog is joined now."""
    if offered is None:
        return Verdict.SERVE
    if recorded is None:
        return Verdict.RECORD
    if offered == recorded:
        return Verdict.SERVE
    if rebuilding and not joined_to_recorded:
        return Verdict.RECORD
    return Verdict.REFUSE


class ServedCatalog:
    """The id of the catalog this server serves, in ``<data>/catalog-id``."""

    def __init__(self, data: str) -> None:
        self.path = os.path.join(data, FILE)
        self.id = self._read()

    def _read(self) -> str | None:
        try:
            with open(self.path) as f:
                text = f.read().strip()
        except FileNotFoundError:
            return None
        if not CATALOG_ID.match(text):
            raise ValueError(f"{self.path} holds no catalog id; remove it to serve the first"
                             " catalog whose proxy welcomes this server")
        return text

    def record(self, catalog: str) -> None:
        """Serve ``catalog`` from now on, durably before its proxy is served.
        Done on the reactor's thread: a few bytes, written once in a
        server's life, or when a lost catalog is rebuilt."""
        temp = self.path + ".tmp"
        with open(temp, "w") as f:
            f.write(catalog + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, self.path)
        fsync_dir(os.path.dirname(self.path))
        self.id = catalog
