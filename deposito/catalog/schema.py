"""The catalog's tables (written once, for both databases: see
:class:`deposito.catalog.dialect.Dialect`), how an older SQLite catalog is
brought to them, and how a row of ``files`` becomes a :class:`FileRecord`:
what the catalog's operations (:mod:`deposito.catalog.operations`) and its
listings (:mod:`deposito.catalog.listing`) share."""

from __future__ import annotations

import functools
import uuid
import sqlite3
from typing import Any, Iterable

from deposito.catalog.dialect import SQLITE
from deposito.catalog.records import FileRecord

FILES = """CREATE TABLE IF NOT EXISTS files (
    name {key} PRIMARY KEY,
    version {int} NOT NULL,
    blob {key} NOT NULL UNIQUE,
    size {int} NOT NULL,
    sha256 TEXT NOT NULL,
    replicas {int} NOT NULL,
    created {real} NOT NULL,
    servers TEXT NOT NULL DEFAULT '',
    meta TEXT NOT NULL DEFAULT '',
    parts TEXT NOT NULL DEFAULT '',
    start {int}
){without_rowid}"""

# Version 2: what several proxies on one catalog share. Each proxy has a row
# in ``proxies`` that it renews every few seconds (its lease), and a row in
# ``sightings`` per server it sees up; the intents it writes, the queued
# files and the garbage it is working on carry its id (``owner``), so that
# each piece of work is one proxy's at a time and a proxy silent past its
# lease hands them over (see Catalog.beat). ``deleted`` remembers for a few
# minutes which copies were deleted, for inventories listed before that.
# ``catalog_info`` holds the catalog's id, which servers check when they join.
PROXIES = """CREATE TABLE IF NOT EXISTS proxies (
    id {key} PRIMARY KEY,
    seen {real} NOT NULL
);
CREATE TABLE IF NOT EXISTS sightings (
    proxy {key} NOT NULL,
    server {key} NOT NULL,
    seen {real} NOT NULL,
    PRIMARY KEY (proxy, server)
);
CREATE TABLE IF NOT EXISTS deleted (
    blob {key} NOT NULL,
    server {key} NOT NULL,
    at {real} NOT NULL,
    PRIMARY KEY (blob, server)
);
CREATE INDEX IF NOT EXISTS deleted_by_time ON deleted (at);
CREATE TABLE IF NOT EXISTS catalog_info (
    key {key} PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS buckets (
    name {key} PRIMARY KEY,
    created {real} NOT NULL
);
"""

# Version 3: what the S3 gateway keeps. ``files.meta`` holds a version's
# ETag, Content-Type and user metadata; ``buckets`` the buckets created.
#
# Version 4: versions made of parts (see deposito.hidden). ``files.parts``
# is the upload id of such a version (its parts are the hidden files named
# after it), ``files.start`` a completed part's offset in its object.
# ``uploads`` holds the multipart uploads under way: the object's name, copy
# count and metadata, and when a part last came (``touched``: an upload
# silent for long is abandoned, see Catalog.expire_uploads).
UPLOADS = """CREATE TABLE IF NOT EXISTS uploads (
    id {key} PRIMARY KEY,
    name {key} NOT NULL,
    replicas {int} NOT NULL,
    meta TEXT NOT NULL,
    created {real} NOT NULL,
    touched {real} NOT NULL
);
CREATE INDEX IF NOT EXISTS uploads_by_name ON uploads (name, id);
CREATE INDEX IF NOT EXISTS uploads_by_touched ON uploads (touched);
"""

# The columns versions 2 to 5 added to older tables, and the indexes on
# them (made once the columns are there: see add_columns). Version 5:
# ``work.passed``, the proxy that left a queued file to the others (it
# cannot see some of the file's copies that another proxy sees up).
ADDED_COLUMNS = (("intents", "owner", "TEXT"), ("garbage", "owner", "TEXT"), ("work", "owner", "TEXT"),
                 ("files", "meta", "TEXT NOT NULL DEFAULT ''"), ("files", "parts", "TEXT NOT NULL DEFAULT ''"),
                 ("files", "start", "BIGINT"), ("work", "passed", "TEXT"),
                 ("copies", "since", "REAL NOT NULL DEFAULT 0"), ("intents", "name", "TEXT"),
                 ("intents", "version", "BIGINT"))
OWNER_INDEXES = """CREATE INDEX IF NOT EXISTS intents_by_owner ON intents (owner);
CREATE INDEX IF NOT EXISTS work_by_owner ON work (owner);
CREATE INDEX IF NOT EXISTS work_passed ON work (passed, due) WHERE passed IS NOT NULL;
CREATE INDEX IF NOT EXISTS garbage_by_owner ON garbage (owner);
CREATE INDEX IF NOT EXISTS garbage_by_server ON garbage (server, owner);
CREATE INDEX IF NOT EXISTS files_by_parts ON files (parts) WHERE parts <> '';
CREATE INDEX IF NOT EXISTS intents_by_name ON intents (name) WHERE name IS NOT NULL;
"""

# The queued files not waiting for a server (whose ``due`` is WAITING): the
# queue's order (work_due_in_order) holds these alone, and a query that reads
# it says so in these words (an index with a condition serves a query that has it).
NOT_WAITING = "due < 1e18"  # (WAITING)

SCHEMA = FILES + """;
CREATE TABLE IF NOT EXISTS names (
    name {key} PRIMARY KEY,
    last_version {int} NOT NULL,
    settled {int} NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS copies (
    blob {key} NOT NULL,
    server {key} NOT NULL,
    since {real} NOT NULL DEFAULT 0,
    PRIMARY KEY (blob, server)
);
CREATE INDEX IF NOT EXISTS copies_by_server_blob ON copies (server, blob);
DROP INDEX IF EXISTS copies_by_server;
CREATE TABLE IF NOT EXISTS intents (
    blob {key} NOT NULL,
    server {key} NOT NULL,
    owner {key},
    name {key},
    version {int},
    PRIMARY KEY (blob, server)
);
CREATE TABLE IF NOT EXISTS garbage (
    blob {key} NOT NULL,
    server {key} NOT NULL,
    owner {key},
    PRIMARY KEY (blob, server)
);
CREATE TABLE IF NOT EXISTS servers (
    id {key} PRIMARY KEY,
    zone TEXT NOT NULL,
    host TEXT NOT NULL,
    port {int} NOT NULL,
    capacity {int} NOT NULL,
    used {int} NOT NULL,
    blobs {int} NOT NULL
);
CREATE TABLE IF NOT EXISTS totals (
    key {key} PRIMARY KEY,
    value {int} NOT NULL
);
CREATE TABLE IF NOT EXISTS work (
    name {key} PRIMARY KEY,
    due {real} NOT NULL,
    rank {int} NOT NULL DEFAULT 0,
    gen {int} NOT NULL DEFAULT 0,
    wanted {int},
    have {int},
    moves {int} NOT NULL DEFAULT 0,
    owner {key},
    passed {key}
);
DROP INDEX IF EXISTS work_in_order;
CREATE INDEX IF NOT EXISTS work_due_in_order ON work (rank, due) WHERE """ + NOT_WAITING + """;
CREATE INDEX IF NOT EXISTS work_by_due ON work (due);
""" + PROXIES + UPLOADS

# The schema's version (SQLite: PRAGMA user_version; PostgreSQL: the one row of catalog_schema). 0: a catalog from before the
# work queue, the totals, names.settled and files.servers; opening it adds
# them (see migrate). ``files`` is kept in name order (WITHOUT ROWID) with
# its copies' servers beside each file (the ``copies`` rows, as a
# space-separated sorted list, kept with every change of them), so that a
# lookup is one row and a listing reads the table in order. 6: garbage is
# indexed by server (OWNER_INDEXES, made by :func:`finish`). 7: the queue's
# order leaves out the files waiting for a server to come back (``due`` is
# WAITING, 1e18), so that claiming the next due files reads those alone.
# 8: an upload's intents name the file and version it writes
# (``intents.name``, ``intents.version``), so that a conditional write
# refuses to commit while an older write of its name is under way; and ``copies.since``, which version 0 lacked, is added to it.
SCHEMA_VERSION = 8

RECORD = "SELECT name, version, blob, size, sha256, replicas, servers, created, meta, parts FROM files"
TOTALS = ("files", "bytes", "wanted")


class NewerSchema(Exception):
    """The catalog was made, or brought up to date, by a newer Deposito:
    this one must not change what it does not know."""


def refuse_newer(version: int | None, where: str) -> None:
    """NewerSchema when ``version`` (the catalog's at ``where``) is newer than this code's."""
    if version is not None and version > SCHEMA_VERSION:
        raise NewerSchema(f"the catalog {where} has schema version {version}, and this proxy knows versions up to"
                          f" {SCHEMA_VERSION}: a newer Deposito made or upgraded it; run that version")


def outdated(db: sqlite3.Connection) -> bool:
    """Whether the SQLite catalog behind ``db`` predates this schema (see :func:`migrate`)."""
    return bool(db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION)


def migrate(db: sqlite3.Connection) -> None:
    """In one transaction: bring an older SQLite catalog to this schema."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version < 1:
        _migrate_to_1(db)
    if version < SCHEMA_VERSION:
        add_columns(db, lambda table, column: column in [row[1] for row in db.execute(f"PRAGMA table_info({table})")])
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _migrate_to_1(db: sqlite3.Connection) -> None:
    """Version 0 to 1: the work queue, the totals, names.settled and
    files.servers. Its totals are counted and every file is queued once,
    so whatever work it had left is found."""
    if "servers" not in [row[1] for row in db.execute("PRAGMA table_info(files)")]:
        db.execute("ALTER TABLE files RENAME TO files_before")
        db.execute(SQLITE.ddl(FILES))
        db.execute("INSERT INTO files (name, version, blob, size, sha256, replicas, created, servers)"
                   " SELECT f.name, f.version, f.blob, f.size, f.sha256, f.replicas,"
                   f" f.created, {SQLITE.servers_of('f.blob')} FROM files_before f")
        db.execute("DROP TABLE files_before")
    if "settled" not in [row[1] for row in db.execute("PRAGMA table_info(names)")]:
        # no upload outlives a restart: whatever version was given out is settled
        db.execute("ALTER TABLE names ADD COLUMN settled INTEGER NOT NULL DEFAULT 0")
        db.execute("UPDATE names SET settled = last_version")
    files, size, wanted = db.execute(
        "SELECT count(*), coalesce(sum(size), 0), coalesce(sum(replicas), 0) FROM files").fetchone()
    db.executemany("INSERT OR REPLACE INTO totals VALUES (?, ?)",
                   [("files", files), ("bytes", size), ("wanted", wanted)])
    db.execute("INSERT OR IGNORE INTO work (name, due) SELECT name, 0 FROM files")


def add_columns(db: Any, has_column: Any) -> None:
    """Versions 1 to 7 to 8: the columns added since (``has_column(table,
    column)`` says whether one is there already)."""
    for table, column, kind in ADDED_COLUMNS:
        if not has_column(table, column):
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")


def finish(db: Any, ddl: Any) -> None:
    """After the tables are made or migrated: the indexes of the owner
    columns, and the catalog's id, given once (``ddl`` reads the dialect's
    types into a table definition)."""
    for statement in ddl(OWNER_INDEXES).split(";"):
        if statement.strip():
            db.execute(statement)
    db.execute("INSERT INTO catalog_info (key, value) VALUES ('id', ?) ON CONFLICT DO NOTHING",
               (uuid.uuid4().hex,))


def to_record(row: tuple[Any, ...]) -> FileRecord:
    """The record of a row selected with :data:`RECORD`."""
    return FileRecord(row[0], row[1], row[2], row[3], row[4], row[5], _servers(row[6] or ""), row[7], row[8],
                      row[9])


def servers_text(servers: Iterable[str]) -> str:
    """A version's servers as its row keeps them."""
    return " ".join(sorted(set(servers)))


def committed(name: str, version: int, blob: str, size: int, sha256: str, replicas: int,
              servers: Iterable[str], now: float, meta: str = "") -> FileRecord:
    """The record :meth:`deposito.catalog.Catalog.commit`, given the same,
    leaves when it returns True: what a lookup answers next."""
    return to_record((name, version, blob, size, sha256, replicas, servers_text(servers), float(now), meta, ""))


@functools.lru_cache(maxsize=4096)
def _servers(ids: str) -> tuple[str, ...]:
    """The servers of a copy list, one tuple shared by every record with the
    same list (the records kept in memory are mostly these)."""
    return tuple(ids.split(" ")) if ids else ()
