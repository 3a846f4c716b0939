"""The catalog in PostgreSQL, which several proxies may share.

What sharing asks, and where it is done:
- versions are allocated in one statement and a commit locks its name's row
  (:mod:`deposito.catalog.operations`, through the dialect);
- a batch that loses a deadlock or a serialization conflict runs again whole
  (:meth:`PostgresBackend.retryable`, :meth:`deposito.catalog.Catalog.batch`);
- another proxy may change any record (``shared``): the records a proxy
  keeps are answered only while every proxy acknowledges the others'
  changes (:mod:`deposito.catalog.coherence`, on LISTEN/NOTIFY), or while
  no other proxy is there (see deposito.catalog.coherence.TRUST); else
  every lookup asks the database (what was read is kept as a guess, see
  CatalogThread.guess);
- each proxy's unfinished uploads, queued files and garbage it works on are
  its own, claimed with ``FOR UPDATE SKIP LOCKED``, and handed over when its
  lease runs out (``Catalog.beat``, through the dialect);
- a LIST reads one REPEATABLE READ snapshot through a server-side cursor.

The database down or slow is an outage, not a crash: connections are made
with a connect timeout, statements run under a statement timeout, a
transaction its proxy leaves waiting (frozen, or cut off) is ended by the
database after IDLE_TIMEOUT, so that its locks hold nobody up, and a lost
connection makes the call :class:`deposito.errors.Unavailable` at once; the
next call connects again (after a short pause, so that a database that is
down costs each call nothing). A database that stops answering while its
connections stay open (a frozen process or host) is not told by either
timeout: a call that waits on it PROBE_AFTER seconds has the database asked,
on a new connection, whether it answers at all; if not, the call's connection
is cut (:class:`Watchdog`), and it fails as if it were lost. A call that only
waits long (on another proxy's lock, say) goes on, to CALL_TIMEOUT at most.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Iterable, Iterator

import attrs
import psycopg
from psycopg import conninfo, pq

from deposito.catalog import schema
from deposito.catalog.coherence import readable
from deposito.catalog.database import log, out_of_reach
from deposito.catalog.dialect import POSTGRESQL, numbered
from deposito.catalog.records import FileRecord
from deposito.errors import NoSpace, Unavailable

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from deposito.catalog.listing import IListingReactor, Listing, NameRange, Opened

CONNECT_TIMEOUT = 3  # seconds to reach the database (libpq's least is 2)
STATEMENT_TIMEOUT = 15_000  # milliseconds a statement may run, waiting for locks included
# milliseconds a transaction may wait on its proxy between statements: a proxy frozen or cut
# off mid-transaction has it ended by the database, and its locks freed for the others in time
# for their statements (a listing's snapshot, which waits on its client, is exempt)
IDLE_TIMEOUT = 10_000
CALL_TIMEOUT = STATEMENT_TIMEOUT / 1000 + 2  # seconds a call may wait on the database before its connection is cut
PAUSE = 1.0  # seconds after a failed connection before the next is tried (calls meanwhile fail at once)
PROBE_AFTER = 3.0  # seconds a call waits before the database is asked, on a new connection, whether it answers
PROBE_WAIT = 3.0  # seconds that connection gets to connect and answer SELECT 1
SCHEMA_LOCK = 0x6465706f  # the advisory lock (one transaction's) held while the schema is made

# Settings for every connection; those the URL names itself are kept.
SETTINGS = {
    "connect_timeout": str(CONNECT_TIMEOUT),
    "options": f"-c statement_timeout={STATEMENT_TIMEOUT} -c idle_in_transaction_session_timeout={IDLE_TIMEOUT}",
    "application_name": "deposito-proxy",
    # a database host that vanished is noticed in seconds, not at TCP's retransmission timeout
    "keepalives": "1", "keepalives_idle": "5", "keepalives_interval": "2", "keepalives_count": "3",
    "tcp_user_timeout": "10000",
}


def check_url(url: str) -> str:
    """``url`` if it is a PostgreSQL URL libpq can read; else ValueError, saying why."""
    if not url.startswith(("postgresql://", "postgres://")):
        raise ValueError(f"not a postgresql:// URL: {url!r}")
    try:
        params = conninfo.conninfo_to_dict(url)
    except psycopg.Error as e:
        raise ValueError(f"bad URL {url!r}: {e}") from None
    if not all(port.isdigit() for port in str(params.get("port") or "5432").split(",")):
        raise ValueError(f"bad port in {url!r}")
    return url


PREPARED = 64  # parameters a statement psycopg may prepare carries at most (see PostgresConnection.execute)


class PostgresConnection:
    """A psycopg connection in autocommit mode (transactions are begun by
    hand, as with SQLite) that takes the operations' ``?`` placeholders.

    In pipeline mode (see :meth:`PostgresBackend.pipeline`) it counts the
    statements sent and those known done, so that a flush costs a round trip
    only when a statement's result is still on its way."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        self.pipeline: psycopg.Pipeline | None = None  # while in pipeline mode
        self.sent = 0  # statements sent so far...
        self.done = 0  # ...and of those, the first this many are known done

    @contextlib.contextmanager
    def pipelined(self) -> Iterator[None]:
        with self.conn.pipeline() as pipeline:
            self.pipeline = pipeline
            self.done = self.sent  # whatever came before ran outside the pipeline
            try:
                yield
            finally:
                self.pipeline = None

    @property
    def in_transaction(self) -> bool:
        return self.conn.info.transaction_status != pq.TransactionStatus.IDLE

    def execute(self, sql: str, params: Any = (), /) -> PostgresCursor:
        if not params:
            return self._sent(self.conn.execute(sql))
        # a statement carrying a page of rows is not prepared: each length of page would be one more
        # statement for the database to keep, for a plan that costs little next to the rows' work
        return self._sent(self.conn.execute(numbered(sql), params, prepare=False if len(params) > PREPARED else None))

    def executemany(self, sql: str, params: Iterable[Any], /) -> PostgresCursor:
        cursor = self.conn.cursor()
        cursor.executemany(numbered(sql), list(params))
        return self._sent(cursor)

    def _sent(self, cursor: psycopg.Cursor[Any]) -> PostgresCursor:
        self.sent += 1
        return PostgresCursor(self, cursor, self.sent)

    def flush(self) -> None:
        """Wait until every statement sent is done (raising its error, if any):
        at once if a result read since the last one sent says so already."""
        if self.pipeline is not None and self.done < self.sent:
            self.done = self.sent  # answered (or failed) by the sync, whatever it raises
            self.pipeline.sync()
        self.done = self.sent

    def close(self) -> None:
        self.conn.close()

    def cut(self) -> None:
        """From another thread: shut the connection's socket down, so that a
        call waiting on it fails at once (the connection is then dropped)."""
        try:
            dup = socket.socket(fileno=os.dup(self.conn.pgconn.socket))
        except (OSError, psycopg.Error):
            return  # closed meanwhile
        with contextlib.suppress(OSError):
            dup.shutdown(socket.SHUT_RDWR)
        dup.close()


@attrs.define
class _Call:
    deadline: float  # time.monotonic() when its connection is cut whatever the database answers
    timeout: float
    connection: Callable[[], PostgresConnection | None]
    probe_at: float  # when the database is asked whether it answers (once; inf when done)
    answers: Callable[[], bool]


class Watchdog:
    """One thread that cuts the connection of any call waiting on the
    database longer than its timeout, or PROBE_AFTER seconds when the
    database does not answer a new connection (see :meth:`PostgresConnection.cut`)."""

    def __init__(self) -> None:
        self._calls: dict[int, _Call] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def watch(self, connection: Callable[[], PostgresConnection | None], timeout: float,
              answers: Callable[[], bool], probe_after: float = PROBE_AFTER) -> Iterator[None]:
        call = next(self._ids)
        now = time.monotonic()
        with self._lock:
            self._calls[call] = _Call(now + timeout, timeout, connection, now + probe_after, answers)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="catalog watchdog", daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._calls.pop(call, None)

    def _run(self) -> None:
        while True:
            time.sleep(0.5)
            now = time.monotonic()
            with self._lock:
                late = [self._calls.pop(n) for n, call in list(self._calls.items()) if call.deadline <= now]
                doubtful = [call for call in self._calls.values() if call.probe_at <= now]
                for call in doubtful:
                    call.probe_at = float("inf")
            for call in late:
                self._cut(call, f"has not answered for {call.timeout:.0f} s")
            for answers in {call.answers for call in doubtful}:  # one question per database
                if not answers():
                    with self._lock:
                        gone = [self._calls.pop(n) for n, call in list(self._calls.items()) if call.answers == answers]
                    for call in gone:
                        self._cut(call, f"does not answer a new connection within {PROBE_WAIT:.0f} s")

    @staticmethod
    def _cut(call: _Call, why: str) -> None:
        db = call.connection()
        if db is not None:
            log.warn("the catalog database {why}: a call's connection is cut", why=why)
            db.cut()


WATCHDOG = Watchdog()


class _AfterTheError(logging.Filter):
    """psycopg warns when a pipeline left because of a statement's error
    cannot end cleanly (it is aborted): that error is already the caller's."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("error ignored terminating")


logging.getLogger("psycopg").addFilter(_AfterTheError())


class PostgresCursor:
    """One statement's results. In pipeline mode they come back when read,
    and with them those of every statement sent before (the server runs
    them in order); its row count, only after a flush, which is done here."""

    def __init__(self, conn: PostgresConnection, cursor: psycopg.Cursor[Any], number: int) -> None:
        self.conn = conn
        self.cursor = cursor
        self.number = number  # the how-manieth statement sent on conn

    def _read(self) -> None:
        self.conn.done = max(self.conn.done, self.number)

    def fetchone(self) -> Any:
        row = self.cursor.fetchone()
        self._read()
        return row

    def fetchall(self) -> list[Any]:
        rows = self.cursor.fetchall()
        self._read()
        return rows

    def __iter__(self) -> Iterator[Any]:
        row = self.fetchone()
        while row is not None:
            yield row
            row = self.cursor.fetchone()

    @property
    def rowcount(self) -> int:
        if self.cursor.rowcount < 0 and self.conn.pipeline is not None:  # not answered yet
            self.conn.flush()
        return self.cursor.rowcount


class PostgresBackend:
    """The catalog in the PostgreSQL database at ``url`` (any libpq URL),
    which any number of proxies may share."""

    dialect = POSTGRESQL
    shared = True

    def __init__(self, url: str) -> None:
        self.url = check_url(url)
        settings = conninfo.conninfo_to_dict(url)
        for key, value in SETTINGS.items():
            settings.setdefault(key, value)
        self.conninfo = conninfo.make_conninfo("", **settings)
        self._retry_at = 0.0  # while a connection failed this recently, calls fail without trying
        self._down = False
        self.call_timeout = CALL_TIMEOUT
        self.probe_after = PROBE_AFTER

    def _connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        if time.monotonic() < self._retry_at:
            raise Unavailable("the catalog database is out of reach; try again shortly")
        try:
            conn = psycopg.connect(self.conninfo, cursor_factory=psycopg.RawCursor, **kwargs)
            conn.server_cursor_factory = psycopg.RawServerCursor  # (see numbered)
        except psycopg.Error as e:
            self._retry_at = time.monotonic() + PAUSE
            if self._down:  # told once an outage
                raise Unavailable("the catalog database is out of reach; try again shortly") from None
            self._down = True
            raise out_of_reach(e) from None
        if self._down:
            self._down = False
            log.info("the catalog database is reachable again")
        return conn

    def connect(self, reads_only: bool = False) -> PostgresConnection:
        return PostgresConnection(self._connect(autocommit=True))

    def prepare(self, db: PostgresConnection) -> None:
        """Make the tables the first time, one proxy at a time."""
        if self._version(db) == schema.SCHEMA_VERSION:
            return
        db.execute("BEGIN")
        try:
            db.execute("SELECT pg_advisory_xact_lock(?)", (SCHEMA_LOCK,))
            db.execute("CREATE TABLE IF NOT EXISTS catalog_schema (version INTEGER NOT NULL)")
            version = self._version(db)
            schema.refuse_newer(version, "in PostgreSQL")
            if version != schema.SCHEMA_VERSION:
                for statement in POSTGRESQL.ddl(schema.SCHEMA).split(";"):  # what is missing
                    if statement.strip():
                        db.execute(statement)
                if version is None:
                    db.executemany("INSERT INTO totals VALUES (?, 0) ON CONFLICT DO NOTHING",
                                   [(key,) for key in schema.TOTALS])
                else:
                    schema.add_columns(db, lambda table, column: self._has_column(db, table, column))
                schema.finish(db, POSTGRESQL.ddl)
                db.execute("DELETE FROM catalog_schema")
                db.execute("INSERT INTO catalog_schema VALUES (?)", (schema.SCHEMA_VERSION,))
            db.execute("COMMIT")
        except BaseException:
            if not db.conn.closed:
                db.execute("ROLLBACK")
            raise

    @staticmethod
    def _has_column(db: PostgresConnection, table: str, column: str) -> bool:
        return db.execute("SELECT 1 FROM information_schema.columns WHERE table_name = ? AND column_name = ?",
                          (table, column)).fetchone() is not None

    @staticmethod
    def _version(db: PostgresConnection) -> int | None:
        if db.execute("SELECT to_regclass('catalog_schema')").fetchone() == (None,):
            return None
        row = db.execute("SELECT version FROM catalog_schema").fetchone()
        return None if row is None else int(row[0])

    def pipeline(self, db: PostgresConnection) -> contextlib.AbstractContextManager[Any]:
        """Statements go out without waiting for each other's answers until
        one's result is read (psycopg's pipeline mode), and the end of the
        pipeline waits for the rest: a PUT's commit takes two round trips
        (its reads; its writes with COMMIT, see Database._alone) instead of ten."""
        return db.pipelined()

    def flush(self, db: PostgresConnection) -> None:
        db.flush()

    def first_row(self, cursor: PostgresCursor) -> Callable[[], Any]:
        return cursor.fetchone  # the answer is read when the pipeline ends

    def begin(self, db: PostgresConnection, durable: bool) -> None:
        """A batch of nothing durable commits without waiting for the disk
        (see :func:`deposito.catalog.records.effects`)."""
        db.execute("BEGIN")
        if not durable:  # sent with it, in the pipeline (see pipeline)
            db.execute("SET LOCAL synchronous_commit = off")

    def retryable(self, error: BaseException) -> bool:
        # class 40: serialization failure (40001), deadlock (40P01)...
        return isinstance(error, psycopg.Error) and (error.sqlstate or "").startswith("40")

    def refusal(self, error: BaseException) -> BaseException | None:
        # the guard of a change (Catalog.guard_changes) divides by zero when this proxy's row is gone
        if isinstance(error, psycopg.errors.DivisionByZero):
            return Unavailable("another proxy took over this one's work (it was silent past its lease);"
                               " try again shortly")
        if isinstance(error, psycopg.errors.DiskFull):
            return NoSpace("the catalog database's disk is full")
        return None

    def unreachable(self, error: BaseException) -> bool:
        # A prepared statement the database does not know: the connection's
        # prepared statements are out of step with psycopg's (a batch that
        # failed in pipeline mode can leave them so), and only a new one mends it.
        return (isinstance(error, (psycopg.OperationalError, psycopg.InterfaceError,
                                   psycopg.errors.InvalidSqlStatementName))
                and not self.retryable(error) and not isinstance(error, psycopg.errors.DiskFull))

    def renewable(self, error: BaseException) -> bool:
        # prepared statements out of step with psycopg's (see unreachable): the database is fine
        return isinstance(error, psycopg.errors.InvalidSqlStatementName)

    def stale(self, db: PostgresConnection) -> bool:
        """An idle connection is sent nothing (no LISTEN here): one with
        something to read was told it is closed (the server shut down)."""
        if db.conn.closed:
            return True
        if db.pipeline is not None or db.in_transaction:
            return False
        return readable([db.conn.fileno()], 0)

    def notify(self, db: PostgresConnection, channel: str, message: str) -> None:
        db.execute("SELECT pg_notify(?, ?)", (channel, message))  # its answer is never read: no round trip

    def channel(self) -> psycopg.Connection[Any]:
        # not through _connect: a failure here is said by the listener, and makes no other call wait
        return psycopg.connect(self.conninfo, autocommit=True)

    def watch(self, connection: Callable[[], PostgresConnection | None]) -> ContextManager[None]:
        return WATCHDOG.watch(connection, self.call_timeout, self.answers, self.probe_after)

    def answers(self) -> bool:
        """Whether the database answers SELECT 1 on a new connection within
        PROBE_WAIT seconds (asked from the watchdog's thread; the question
        runs on a thread of its own, so that a database that hangs it holds
        only that thread)."""
        done = threading.Event()
        answered: list[bool] = []

        def ask() -> None:
            try:
                with psycopg.connect(self.conninfo, autocommit=True, connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                answered.append(True)
            except psycopg.Error as e:
                if e.sqlstate:  # the database said no (too many connections, say): it answers
                    answered.append(True)
            except Exception:
                pass
            finally:
                done.set()

        threading.Thread(target=ask, name="catalog probe", daemon=True).start()
        return done.wait(PROBE_WAIT) and bool(answered)

    def listing(self, reactor: IListingReactor, names: NameRange) -> Deferred[Listing]:
        from deposito.catalog.listing import open_listing

        return open_listing(reactor, self.open_snapshot, names)

    def open_snapshot(self, names: NameRange, batch: int) -> Opened:
        """In a thread: a listing's snapshot, its count, and its first batch."""
        snapshot = PostgresSnapshot(self._connect(autocommit=False))
        try:
            return snapshot.open(names, batch)
        except Exception as e:
            snapshot.close()
            if self.unreachable(e):
                raise out_of_reach(e) from e
            raise


_cursors = itertools.count()


class PostgresSnapshot:
    """A listing's REPEATABLE READ READ ONLY transaction, its names read
    through a server-side cursor: the database holds the query's place,
    and each :meth:`fetch` brings one batch over."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        self.cursor: psycopg.ServerCursor[Any] | None = None

    def open(self, names: NameRange, batch: int) -> Opened:
        self.conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        self.conn.read_only = True
        self.conn.execute("SET idle_in_transaction_session_timeout = 0")  # its client sets the pace
        where, values = names.where()
        limit = None if names.limit is None else names.sql_limit
        row = self.conn.execute(numbered(f"SELECT count(*) FROM (SELECT 1 FROM files WHERE {where} LIMIT ?) t"),
                                (*values, limit)).fetchone()
        count = row[0] if row else 0
        if not count:
            self.close()
            return self, 0, []
        self.cursor = self.conn.cursor(name=f"listing{next(_cursors)}")
        where, values = names.where("f.name")
        self.cursor.execute(numbered(f"{schema.RECORD} f WHERE {where} ORDER BY f.name LIMIT ?"),
                            (*values, count))
        return self, count, self.fetch(min(batch, count))

    def fetch(self, n: int) -> list[FileRecord]:
        assert self.cursor is not None
        try:
            return [schema.to_record(row) for row in self.cursor.fetchmany(n)]
        except (psycopg.OperationalError, psycopg.InterfaceError) as e:
            raise out_of_reach(e) from e

    def close(self) -> None:
        """End the transaction (the snapshot is let go) and the connection."""
        try:
            if self.cursor is not None and not self.conn.closed:
                self.cursor.close()
            if not self.conn.closed:
                self.conn.rollback()
        except psycopg.Error:
            pass  # the connection is going anyway
        finally:
            self.conn.close()

    def interrupt(self) -> None:
        self.conn.cancel()
