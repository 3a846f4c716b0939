"""How the catalog's operations reach their database: a connection, made
again when it is lost, and the transactions run on it (one call alone, or
a batch of calls with one commit), whatever the database.

A lost connection, or a database too slow to answer, fails the call with
:class:`deposito.errors.Unavailable` at once, and the next call connects
again: clients get ``ERR unavailable`` while the database is out of reach,
and the proxy serves again by itself once it is back. A batch that loses a
conflict with another proxy's transaction (a deadlock, a serialization
failure) runs again whole.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, ContextManager, Protocol, TypeVar, Union, cast

from twisted.logger import Logger

from deposito.catalog.dialect import Dialect
from deposito.catalog.records import answers_later, claims, is_durable, keeps_records, prompt
from deposito.errors import OutOfReach, Unavailable

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from deposito.catalog.listing import IListingReactor, Listing, NameRange

T = TypeVar("T")

RETRIES = 5  # a batch that lost a conflict runs again, this many times at most

log = Logger()


def out_of_reach(error: BaseException) -> Unavailable:
    """What a client is told when the database cannot be reached; the
    database's own words (which name its host, over several lines) go to
    the proxy's log instead."""
    log.warn("the catalog database is out of reach: {why}", why=describe(error))
    return OutOfReach("the catalog database is out of reach; try again shortly")


def describe(error: BaseException) -> str:
    """``error`` on one line."""
    return " ".join(str(error).split()) or type(error).__name__


class Connection(Protocol):
    """A database connection as the operations use it: sqlite3's, or one
    that takes the same ``?`` placeholders (:class:`deposito.catalog.postgres.PostgresConnection`)."""

    @property
    def in_transaction(self) -> bool: ...

    def execute(self, sql: str, params: Any = ..., /) -> Any: ...

    def executemany(self, sql: str, params: Any, /) -> Any: ...

    def close(self) -> None: ...


class Backend(Protocol):
    """A database the catalog lives in. ``db`` is always a connection its
    own :meth:`connect` made."""

    dialect: Dialect
    shared: bool  # other proxies may change the catalog: what is read is kept only while none is there

    def connect(self, reads_only: bool = False) -> Connection:
        """A new connection; :class:`Unavailable` when the database is out of reach."""

    def prepare(self, db: Any) -> None:
        """Make the schema, or bring an older one to this one."""

    def begin(self, db: Any, durable: bool) -> None:
        """Begin a batch's transaction; ``durable``: its commit must reach the disk first."""

    def pipeline(self, db: Any) -> ContextManager[Any]:
        """Around a batch: statements whose results are not read yet may go
        to the database together (one round trip for many); leaving it waits
        until every statement sent has run, raising the first error."""

    def flush(self, db: Any) -> None:
        """Inside :meth:`pipeline`: run what was sent, raising its error if any."""

    def first_row(self, cursor: Any) -> Callable[[], Any]:
        """What gives a statement's first row, called once its transaction is
        committed (see Database._tx_later)."""

    def refusal(self, error: BaseException) -> BaseException | None:
        """What a statement that refused to run tells the caller (see
        Catalog.guard_changes; NoSpace when the database's disk is full),
        or None for any other error."""

    def unreachable(self, error: BaseException) -> bool:
        """Whether ``error`` means the connection is lost or the database
        too slow: the connection is dropped and the call is Unavailable."""

    def stale(self, db: Any) -> bool:
        """Whether idle connection ``db`` was closed from the database's end
        (a restart, say): it is made again before it is used."""

    def renewable(self, error: BaseException) -> bool:
        """Whether ``error`` (the cause of an Unavailable) came from the
        connection alone, so that the call, run again on a new one, may
        well not meet it."""

    def watch(self, connection: Callable[[], Any]) -> ContextManager[Any]:
        """Around a call on the connection ``connection()`` gives: if the
        database leaves it waiting too long, the connection is cut, so the
        call fails as if it were lost."""

    def retryable(self, error: BaseException) -> bool:
        """Whether ``error`` is a conflict (deadlock, serialization) that the
        same transaction, run again, may well not meet."""

    def listing(self, reactor: IListingReactor, names: NameRange) -> Deferred[Listing]:
        """A listing of ``names`` from one snapshot (see :mod:`deposito.catalog.listing`)."""

    def notify(self, db: Any, channel: str, message: str) -> None:
        """On a shared catalog: send ``message`` on ``channel`` to every proxy
        listening, once the transaction commits (see :mod:`deposito.catalog.coherence`)."""

    def channel(self) -> Any:
        """On a shared catalog: a new connection of the database's driver, in
        autocommit mode, to listen on (see :mod:`deposito.catalog.coherence`)."""


class Damaged(Exception):
    """The catalog's file is not a database any more (a torn write, a bad
    sector): the proxy cannot start on it."""


class _Later:
    """A batch's call's result, read once the batch is committed (see :meth:`Database._tx_later`)."""

    def __init__(self, read: Callable[[], Any]) -> None:
        self.read = read


def _read(outcome: tuple[bool, Any]) -> tuple[bool, Any]:
    ok, result = outcome
    return (ok, result.read()) if isinstance(result, _Later) else outcome


class _Conflict(Exception):
    """A batch lost a conflict and is to run again whole."""


class Database:
    """One connection to the catalog's database (one thread uses it), made
    again when lost, and the transactions run on it.

    ``where`` is a :class:`Backend`, or the directory of a SQLite catalog.
    ``reads_only``: for lookups alone (the catalog thread's second connection).
    """

    def __init__(self, where: Union[str, Backend], reads_only: bool = False) -> None:
        from deposito.catalog.sqlite import SQLiteBackend

        self.backend: Backend = SQLiteBackend(where) if isinstance(where, str) else where
        self.dialect = self.backend.dialect
        self.reads_only = reads_only
        self._db: Connection | None = None
        self._calling = False  # a batch's call is running (see _batch)
        try:
            self.db  # noqa: B018 (connect now: a SQLite catalog is made or opened at once)
        except Unavailable:
            pass  # the database is out of reach for now: the first call tries again

    @property
    def db(self) -> Any:
        """The connection, made again if it was lost (or closed by the database while idle)."""
        if self._db is not None and not self._calling and self.backend.stale(self._db):
            log.info("the catalog database closed an idle connection: it is made again")
            self._lost()
        if self._db is None:
            db = self.backend.connect(self.reads_only)
            try:
                if not self.reads_only:
                    self._guarded(lambda: self.backend.prepare(db))
            except BaseException:
                db.close()
                raise
            self._db = db
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _guarded(self, fn: Callable[[], T]) -> T:
        """``fn()``, with a lost connection (or a database too slow) dropped
        and told as :class:`Unavailable`."""
        try:
            with self.backend.watch(lambda: self._db):
                return fn()
        except Unavailable:
            raise
        except Exception as e:
            if not self.backend.unreachable(e):
                raise
            self._lost()
            raise out_of_reach(e) from e

    def _lost(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            try:
                db.close()
            except Exception:
                pass

    def _tx(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn`` atomically: its own transaction, a batch's (see
        :meth:`batch`: if it fails, the batch is undone and runs again call
        by call), or a savepoint inside a transaction already open."""
        db = self.db
        if self._calling:  # a batch's call: its failure undoes the batch (see batch)
            return fn(db)
        if db.in_transaction:
            db.execute("SAVEPOINT call")
            try:
                result = fn(db)
            except BaseException:
                db.execute("ROLLBACK TO call")
                db.execute("RELEASE call")
                raise
            db.execute("RELEASE call")
            return result
        db.execute(self.dialect.begin)
        try:
            result = fn(db)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        self.committed()
        return result

    def _tx_later(self, fn: Callable[[Any], Callable[[], T]]) -> T:
        """As :meth:`_tx`, for a call that declares ``answers_later`` (see
        :func:`deposito.catalog.records.effects`): ``fn`` sends its
        statements and returns what reads its answer, which is called once
        the transaction is committed."""
        if self._calling:
            return cast(T, _Later(self._tx(fn)))
        return self._tx(fn)()

    # -- what a Catalog adds around changes (see Catalog.before_changes)

    def guard_changes(self, db: Any, changes: bool = True) -> bool:
        """The first statement of a batch that may change records, or
        (``changes`` False) that claims rows (see records.effects): whether
        it holds this proxy's row till the commit (see Catalog.guard_changes)."""
        return False

    def committed(self) -> None:
        """A transaction of this connection is committed."""

    def announce(self, db: Any, calls: list[tuple[Callable[..., Any], tuple]]) -> None:
        """Sent in every batch's transaction, after its calls: on a shared
        catalog, what they changed is told to the other proxies."""

    def batch(self, calls: list[tuple[Callable[..., Any], tuple]]) -> list[tuple[bool, Any]]:
        """Run many calls in one transaction: one commit (one fsync) for all.

        Returns (ok, result or exception) per call, once the commit is durable.
        The calls' statements share round trips (see Backend.pipeline). When
        a call fails, the transaction is undone and each call runs again in
        one of its own, so that a failure is its call's alone (failures are
        rare: a savepoint per call would cost every batch). A batch that
        loses a conflict with another proxy's runs again whole (the database
        undid all of it).
        """
        durable = any(is_durable(method) for method, _ in calls)
        changes = any(not keeps_records(method) and not prompt(method)
                      for method, _ in calls if hasattr(method, "keeps_records"))
        later = all(answers_later(method) for method, _ in calls)
        error: BaseException | None = None
        for attempt in range(RETRIES):
            try:
                return [_read(outcome) for outcome in self._guarded(lambda: self._batch(calls, durable, changes,
                                                                                         later))]
            except _Conflict as e:
                error = e.__cause__
            except Unavailable as e:  # its connection is dropped: once, if that alone was wrong, it runs again
                error = e
                if attempt or not self.backend.renewable(e.__cause__ or e):
                    break
            except BaseException as e:
                error = e
                break
        return [(False, error) for _ in calls]

    def _batch(self, calls: list[tuple[Callable[..., Any], tuple]], durable: bool,
               changes: bool, later: bool) -> list[tuple[bool, Any]]:
        if len(calls) == 1:
            return self._alone(*calls[0], durable, changes, later)
        db = self.db
        try:
            with self.backend.pipeline(db):
                self.backend.begin(db, durable)
                guarded = (changes or any(claims(method) for method, _ in calls)) and self.guard_changes(db, changes)
                self._calling = True
                try:
                    results = [(True, method(self, *args)) for method, args in calls]
                finally:
                    self._calling = False
                self.announce(db, calls)
                if not (later or guarded):
                    self.backend.flush(db)  # (as in _alone) COMMIT once every statement is seen done
                db.execute("COMMIT")
            self.committed()
        except Exception as e:
            self._undo(db, e)
            if self.backend.unreachable(e) or self.backend.retryable(e):
                raise
            # a call failed, which undid them all: each runs again alone, and its failure is its own
            return [outcome for method, args in calls
                    for outcome in self._alone(method, args, durable, changes, answers_later(method))]
        return results

    def _alone(self, method: Callable[..., Any], args: tuple, durable: bool,
               changes: bool, later: bool) -> list[tuple[bool, Any]]:
        """A batch of one call: its failure undoes the whole transaction (no
        savepoint needed), and its statements may share round trips (see
        Backend.pipeline). What goes wrong is undone once out of the pipeline,
        where a ROLLBACK runs whatever came before."""
        db = self.db
        try:
            with self.backend.pipeline(db):
                self.backend.begin(db, durable)
                guarded = (changes or claims(method)) and self.guard_changes(db, changes)
                self._calling = True
                try:
                    result = method(self, *args)
                finally:
                    self._calling = False
                self.announce(db, [(method, args)])
                # COMMIT goes only once every statement is seen done: a proxy that dies
                # meanwhile (its statements waiting on a lock) commits nothing. Where the
                # guard went first, COMMIT goes along with the statements (a round trip
                # less): it commits nothing once this proxy's row is gone, and holds the
                # row till then, so that no other proxy takes over this one's work before
                # the transaction ends; committed after this proxy died, it is as if
                # committed just before. The end of the pipeline waits for the COMMIT.
                if not (later or guarded):
                    self.backend.flush(db)
                db.execute("COMMIT")
            self.committed()
        except Exception as e:
            self._undo(db, e)
            if self.backend.unreachable(e) or self.backend.retryable(e):
                raise
            return [(False, self.backend.refusal(e) or e)]
        return [(True, result)]

    def _undo(self, db: Any, error: BaseException) -> None:
        """After ``error``: the transaction rolled back (unless the connection
        is lost), and a lost conflict told as one, to be run again."""
        if not self.backend.unreachable(error) and db.in_transaction:
            db.execute("ROLLBACK")
        if self.backend.retryable(error):
            raise _Conflict() from error
