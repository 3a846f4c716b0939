"""The catalog's multipart uploads (S3's). Each part is a hidden file (see
:mod:`deposito.hidden`), committed as any file is; completing an upload
makes the object's version a row pointing to its parts, in one transaction,
without copying a byte; a rebuild makes such versions again from their
manifests (see :mod:`deposito.depot.rebuilder`)."""

from __future__ import annotations

import builtins
from typing import Iterable

from deposito.catalog.changes import Changes
from deposito.catalog.database import Connection
from deposito.catalog.listing import prefix_end
from deposito.catalog.records import Expect, FileRecord, effects
from deposito.catalog.schema import RECORD, to_record
from deposito.errors import BadArgs, NotFound
from deposito.hidden import VISIBLE, hidden_name, manifest_name, part_name, parts_range, pointer_blob


class Multipart(Changes):
    """The uploads under way (table ``uploads``) and their parts."""

    @effects(durable=True, keeps_records=True)
    def create_upload(self, upload: str, name: str, replicas: int, meta: str, now: float) -> None:
        """An upload of ``name`` begins: parts may come, from any proxy, until it is completed or aborted."""
        now = self._on_db_clock(now)
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
        servers, now = list(servers), self._on_db_clock(now)

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
                 servers: Iterable[str], now: float, meta: str, chosen: Iterable[str], digest: str,
                 expect: Expect | None = None) -> bool:
        """Complete ``upload``: in one transaction, the parts ``chosen`` (by
        name, in order) become ``name``'s version ``version`` (whole-object
        SHA-256 ``digest``), the manifest just written (``blob``, ``size``,
        ``sha256`` on ``servers``) is kept with them, and the upload's other
        parts are garbage. As :meth:`commit`: False, and all of it garbage,
        when a newer version was committed or deleted meanwhile. NotFound
        when the upload is no longer under way; BadArgs when a chosen part
        is not (or no longer) stored. ``expect``: as for :meth:`commit` (the
        upload stays under way when it refuses)."""
        servers, chosen, now = list(servers), list(chosen), self._on_db_clock(now)

        def tx(db: Connection) -> bool:
            if db.execute("DELETE FROM uploads WHERE id = ? RETURNING id", (upload,)).fetchone() is None:
                raise NotFound(f"no upload {upload} under way")
            newest = self._settle_at(db, name, version, blob, servers)[0]
            self._check(db, name, expect, newest, version)
            if not newest:
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
        before = self._on_db_clock(before)

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
        now = self._on_db_clock(now)

        def tx(db: Connection) -> str:
            self._seen_version(db, name, version)
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
            self._seen_bucket(db, name, meta, now)
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
