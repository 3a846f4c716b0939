"""Where SQLite's SQL and PostgreSQL's differ, in one place.

The catalog's operations (:mod:`deposito.catalog.operations`) are written
once, with ``?`` placeholders and ``ON CONFLICT`` upserts, which both
databases speak; what they do not share is named here and filled in per
database: scalar greatest/least, how a file's server list is built, column
types, the lock a commit takes on its name's row, how a transaction begins,
how durable a batch is, and whether several writes can go as one statement.
"""

from __future__ import annotations

from typing import Any

import attrs

Statement = tuple[str, tuple[Any, ...]]  # SQL with ``?`` placeholders, and its values


@attrs.frozen
class Dialect:
    name: str
    greatest: str  # the larger of two values (not the aggregate)
    least: str
    begin: str  # a write transaction, its locks taken up front where the database wants that
    for_update: str  # appended to a SELECT of a row a decision rests on: another proxy's change waits
    for_key_share: str  # appended to a SELECT of a row that must stay: its deletion waits (and is waited for)
    skip_locked: str  # appended to a SELECT of rows to claim: rows another proxy is claiming are skipped
    int: str  # column types: counts and sizes (PostgreSQL's INTEGER is 32 bits)
    real: str  # times (PostgreSQL's REAL is 32 bits: a second's resolution lost)
    key: str  # a text column that is sorted: by code point, as Python sorts
    without_rowid: str
    servers_of_blob: str  # a blob's servers, space-separated, sorted; ``{blob}`` the blob's column
    writes_in_with: bool  # a WITH may hold INSERT, UPDATE and DELETE statements
    by_index: str  # after a table's name: the index a query reads it by (see indexed_by)
    clock: str  # the database's clock, in seconds since the epoch (see Changes._on_db_clock)

    def together(self, statements: list[Statement]) -> list[Statement]:
        """Statements none of which reads what another writes, as few as the
        database runs them in: one where a WITH may hold writes (they then
        run on one snapshot, the last one's rows being the answer), each by
        itself elsewhere. On PostgreSQL each statement costs the proxy's CPU
        more than the database's work."""
        if not self.writes_in_with or len(statements) < 2:
            return statements
        *first, (last, values) = statements
        return [("WITH " + ", ".join(f"w{i} AS ({sql})" for i, (sql, _) in enumerate(first)) + " " + last,
                 tuple(v for _, params in statements for v in params))]

    def ddl(self, text: str) -> str:
        """A table definition written with ``{int}``, ``{real}``, ``{key}`` and ``{without_rowid}``."""
        return text.format(int=self.int, real=self.real, key=self.key, without_rowid=self.without_rowid)

    def indexed_by(self, index: str) -> str:
        """After a table's name: read it by ``index``. SQLite's planner, which
        keeps no statistics, may take another index and sort every row it
        finds; PostgreSQL's chooses by its statistics."""
        return self.by_index.format(index=index)

    def servers_of(self, blob: str) -> str:
        return self.servers_of_blob.format(blob=blob)


SQLITE = Dialect(
    name="sqlite",
    greatest="max",
    least="min",
    begin="BEGIN IMMEDIATE",  # writers queue for the lock at once, never fail half-way on an upgrade
    for_update="",  # BEGIN IMMEDIATE holds the database's one write lock already
    for_key_share="",
    skip_locked="",
    int="INTEGER",
    real="REAL",
    key="TEXT",
    without_rowid=" WITHOUT ROWID",
    servers_of_blob=("coalesce((SELECT group_concat(server, ' ') FROM"
                     " (SELECT server FROM copies c WHERE c.blob = {blob} ORDER BY server)), '')"),
    writes_in_with=False,
    by_index=" INDEXED BY {index}",
    clock="(julianday('now') - 2440587.5) * 86400.0",
)

POSTGRESQL = Dialect(
    name="postgresql",
    greatest="greatest",
    least="least",
    begin="BEGIN",  # READ COMMITTED; rows a decision rests on are locked with FOR UPDATE
    for_update=" FOR UPDATE",
    for_key_share=" FOR KEY SHARE",
    skip_locked=" FOR UPDATE SKIP LOCKED",
    int="BIGINT",
    real="DOUBLE PRECISION",
    key='TEXT COLLATE "C"',
    without_rowid="",
    servers_of_blob=("coalesce((SELECT string_agg(server, ' ' ORDER BY server) FROM copies c"
                     " WHERE c.blob = {blob}), '')"),
    writes_in_with=True,
    by_index="",
    clock="extract(epoch FROM clock_timestamp())::float8",
)


def numbered(sql: str) -> str:
    """``sql`` written with ``?`` placeholders, with PostgreSQL's own ($1,
    $2, ...), which psycopg's raw cursors pass on as they are: parsing its
    own placeholders in a statement that carries a page of rows (thousands
    of them) cost psycopg 16 ms, more than the database's work."""
    pieces = sql.split("?")
    return "".join([f"{piece}${i}" for i, piece in enumerate(pieces[:-1], 1)] + pieces[-1:])
