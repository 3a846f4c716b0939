"""The catalog as :class:`ICatalog`: its calls on a thread of their own,
committed in groups, clients' lookups on a second connection, and the
records of recently looked-up names kept in memory."""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional, TypeVar

from twisted.internet import task
from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from deposito.batching import Batches, Results
from deposito.catalog.coherence import Coherence
from deposito.catalog.listing import IListingReactor, Listing, NameRange
from deposito.catalog.operations import Beat, Catalog
from deposito.catalog.records import Counts, Expect, FileRecord, Outcome, keeps_records, one_record, prompt
from deposito.catalog.schema import committed
from deposito.errors import BadArgs, Unavailable
from deposito.hidden import VISIBLE
from deposito.interfaces import ICatalog
from deposito.protocols.words import check_bound

if TYPE_CHECKING:
    from deposito.interfaces import Entry, ServerRow

T = TypeVar("T")
MAX_JOIN_WAIT = 10.0  # seconds a change waits at most for this proxy to have joined the others


@implementer(ICatalog)
class CatalogThread:
    """The catalog as :class:`ICatalog`: runs Catalog methods on one thread
    of their own, in order, as Deferreds.

    Calls that arrive while a batch is being committed wait and go together in
    the next one (group commit): many PUTs share one fsync, and no Deferred
    fires before its transaction is durable.

    The records of recently looked-up or committed names are kept in
    memory, so a lookup mostly answers at once (a file is often read right
    after it is written). Any call that may change a record forgets it: the
    one name's, for a call that changes only that (:func:`one_record`), else
    all. A lookup's answer (or a commit's record) is kept only if no such
    call was made after it was asked (calls run in the order they are made):
    what is kept always matches the catalog as every call made so far leaves
    it, so an answer from memory is the one the thread would give. Hidden
    names (parts of multipart uploads) are never kept.

    Clients' lookups (:meth:`read`) go to a second connection on a thread of
    their own, so a GET does not wait behind the PUTs committing meanwhile;
    their answers are kept only when no change was under way.

    On a catalog other proxies share (``backend.shared``) any of them may
    change any record. The records kept are answered while the proxies
    tell each other their changes and acknowledge them (:attr:`coherence`,
    see :mod:`deposito.catalog.coherence`: what another proxy changed is
    forgotten here before it is acknowledged, and a change is answered only
    once acknowledged), or while no other proxy is there (:meth:`trust`,
    after each beat that finds none); otherwise every lookup asks the
    database, and the records kept are only guesses (:meth:`guess`), which a
    lookup confirms or not.
    """

    kept = 16384  # records of this many names at most (about 500 bytes each)

    def __init__(self, reactor: IListingReactor, catalog: Catalog) -> None:
        self.reactor = reactor
        self.catalog = catalog
        self.reachable = True  # see ICatalog.reachable
        self._batches: Batches[tuple[Callable[..., Any], tuple]] = Batches(reactor, self._heard(catalog.batch),
                                                                           "deposito-catalog")
        self._keeps = not catalog.backend.shared
        # Clients' lookups (see read) on a second connection and thread of their own.
        self._reader = catalog.reader()
        self._reads: Batches[str] = Batches(reactor, self._heard(self._reader.lookups, writes=False),
                                            "deposito-catalog-reads")
        self._records: OrderedDict[str, FileRecord] = OrderedDict()
        self._buckets: dict[str, float] = {}  # buckets seen (see bucket)
        self._changes = 0  # calls made so far that may change records
        self._unfinished = 0  # of those, the ones not answered yet
        self._trusted_until = 0.0  # time.monotonic() until which no other proxy shares a shared catalog
        # Among proxies on a shared catalog, what the others change is told by the
        # coherence's thread (names to forget, None: all), and done on this one's.
        self._told: deque[list[str] | None] = deque()
        self.coherence: Coherence | None = None
        if catalog.among_proxies and catalog.backend.shared:
            self.coherence = Coherence(reactor, catalog.backend.channel, lambda: catalog.proxy,
                                       lambda: catalog.announced, self._told.append)

    def start(self) -> None:
        self._batches.start()
        self._reads.start()
        if self.coherence is not None:
            self.coherence.start()

    def stop(self) -> None:
        if self.coherence is not None:
            self.coherence.stop()
        self._reads.stop()
        self._batches.stop()
        self._reader.close()
        self.catalog.close()

    def _heard(self, run: Callable[[list[Any]], Results], writes: bool = True) -> Callable[[list[Any]], Results]:
        """``run``, noting whether the database answered it (see ICatalog.reachable):
        only the changes' connection says it is back, as PUTs need that one."""
        def heard(items: list[Any]) -> Results:
            results = run(items)
            if any(not ok and isinstance(outcome, Unavailable) for ok, outcome in results):
                self.reachable = False
            elif writes:
                self.reachable = True
            return results
        return heard

    def _call(self, method: Callable[..., T], *args: Any, waited: float = 0.0) -> Deferred[T]:
        """``self._call(Catalog.due_work, now, limit)``: the method's result, as a
        Deferred. The method declares what it does with
        :func:`deposito.catalog.records.effects`."""
        if keeps_records(method):
            return self._batches.submit((method, args))
        try:
            delay = 0.0 if prompt(method) else self.catalog.change_delay()
        except Unavailable:
            return fail()
        if delay > 0:  # this proxy joined the others moments ago: the change waits (see Catalog.change_delay)
            if waited + delay > MAX_JOIN_WAIT:  # joined again and again meanwhile (retired each time)
                return fail(Unavailable("this proxy is joining the others; try again shortly"))
            later: Deferred[T] = task.deferLater(self.reactor, delay, lambda: None).addCallback(
                lambda _: self._call(method, *args, waited=waited + delay))
            return later
        if one_record(method):
            self._records.pop(args[0], None)
        else:
            self._records.clear()
        self._changes += 1
        self._unfinished += 1
        return self._batches.submit((method, args)).addBoth(self._finished).addCallback(
            self._told_to_all, method, args)

    def _finished(self, result: Any) -> Any:
        self._unfinished -= 1
        return result

    def _told_to_all(self, result: T, method: Callable[..., Any], args: tuple) -> T | Deferred[T]:
        """A change is answered once every other proxy that may answer from
        memory forgot what it changed (see :mod:`deposito.catalog.coherence`);
        a commit that made a name's first version changed nothing they keep."""
        if self.coherence is None:
            return result
        if method is Catalog.commit and self.catalog.untold(args[0], args[1]):
            return result
        return self.coherence.after(self.catalog.announced).addCallback(lambda _: result)

    def _forget_told(self) -> None:
        """Forget the records other proxies changed, as told so far."""
        if self._told:
            self._changes += 1  # and lookups under way are not kept
            while self._told:
                names = self._told.popleft()
                if names is None:
                    self._records.clear()
                else:
                    for name in names:
                        self._records.pop(name, None)

    def read(self, name: str) -> Deferred[Optional[FileRecord]]:
        """The record of ``name`` (or None) for a client's request: from
        memory, or else from the second connection, which never waits behind
        writes and their flush to disk. Every change answered before the call
        shows in it; one still under way may or may not (the two overlap)."""
        record = self.kept_record(name)
        if record is not None:
            return succeed(record)
        d = self._reads.submit(name)
        if not self._unfinished:  # all made so far is committed: so the answer may be kept
            d.addCallback(self._keep, name, self._changes)
        return d

    def kept_record(self, name: str) -> FileRecord | None:
        """The record of ``name`` if it is kept in memory (what a lookup would
        answer now), else None."""
        if not self._keeps and time.monotonic() >= self._trusted_until and not (
                self.coherence is not None and self.coherence.trusted()):
            return None  # shared: any proxy may have changed it
        return self.guess(name)

    def seen_proxies(self, others: list[str], began: float) -> None:
        if self.coherence is not None:
            self.coherence.view(others, began)

    def trust(self, until: float) -> None:
        """No other proxy shares the catalog until ``until`` (time.monotonic(),
        see deposito.catalog.coherence.TRUST): the records kept are answered
        till then. When trust had lapsed, the records kept meanwhile (another
        proxy may have changed them since) are forgotten first, and so are
        the answers of lookups under way."""
        if time.monotonic() >= self._trusted_until:
            self._records.clear()
            self._changes += 1
        self._trusted_until = max(self._trusted_until, until)

    def guess(self, name: str) -> FileRecord | None:
        """The record ``name`` had when last looked up here, if it is kept: on
        a shared catalog another proxy may have changed it since, and only a
        lookup says whether it still stands."""
        self._forget_told()
        record = self._records.get(name)
        if record is not None:
            self._records.move_to_end(name)
        return record

    def lookup(self, name: str) -> Deferred[Optional[FileRecord]]:
        """The record of ``name`` (or None), from memory or else in turn
        after every call made before it."""
        record = self.kept_record(name)
        if record is not None:
            return succeed(record)
        d = self._batches.submit((Catalog.lookup, (name,)))
        d.addCallback(self._keep, name, self._changes)
        return d

    def _keep(self, record: FileRecord | None, name: str, changes: int) -> FileRecord | None:
        # kept if nothing of ours (or another proxy's, as told) may have changed it since
        self._forget_told()
        if record is not None and changes == self._changes and name >= VISIBLE:
            self._records[name] = record
            if len(self._records) > self.kept:
                self._records.popitem(last=False)
        return record

    # -- the reconciler's view of the catalog (IWorkCatalog)

    def due_work(self, now: float, limit: int) -> Deferred[list[tuple[str, int, int]]]:
        return self._call(Catalog.due_work, now, limit)

    def next_due(self) -> Deferred[Optional[float]]:
        return self._call(Catalog.next_due)

    def release(self, names: list[str]) -> Deferred[None]:
        return self._call(Catalog.release, names)

    def records(self, names: list[str]) -> Deferred[list[Optional[FileRecord]]]:
        return self._call(Catalog.records, names)

    def records_after(self, after: str, limit: int) -> Deferred[list[FileRecord]]:
        return self._call(Catalog.records_after, after, limit)

    def settle(self, outcomes: list[Outcome], held: list[str] = []) -> Deferred[None]:
        return self._call(Catalog.settle, outcomes, held)

    def enqueue(self, names: list[str], due: float = 0.0, only_new: bool = False) -> Deferred[None]:
        return self._call(Catalog.enqueue, names, due, only_new)

    def enqueue_server(self, server: str, after: str, limit: int) -> Deferred[Optional[str]]:
        return self._call(Catalog.enqueue_server, server, after, limit)

    def wake(self, now: float) -> Deferred[int]:
        return self._call(Catalog.wake, now)

    def busy(self, blob: str) -> Deferred[list[str]]:
        return self._call(Catalog.busy, blob)

    def add_copy(self, name: str, blob: str, server: str, now: float) -> Deferred[bool]:
        return self._call(Catalog.add_copy, name, blob, server, now)

    def abandon_copy(self, blob: str, server: str) -> Deferred[None]:
        return self._call(Catalog.abandon_copy, blob, server)

    def drop_copies(self, drops: list[tuple[str, str, int]]) -> Deferred[None]:
        return self._call(Catalog.drop_copies, drops)

    # -- the rest of what the proxy needs (ICatalog)

    def is_empty(self) -> Deferred[bool]:
        return self._call(Catalog.is_empty)

    def recover(self, now: float) -> Deferred[int]:
        return self._call(Catalog.recover, now)

    def beat(self, up: list[str], now: float, lease: float, hand_over: bool, rebuilding: bool = False) -> Deferred[Beat]:
        return self._call(Catalog.beat, up, now, lease, hand_over, rebuilding)

    def leave(self) -> Deferred[int]:
        return self._call(Catalog.leave)

    def adopt(self, server: str, entries: list[Entry], now: float) -> Deferred[int]:
        return self._call(Catalog.adopt, server, entries, now)

    def servers(self) -> Deferred[list[ServerRow]]:
        return self._call(Catalog.servers)

    def identity(self) -> Deferred[str]:
        return self._call(Catalog.identity)

    def lost_catalogs(self) -> Deferred[list[str]]:
        return self._call(Catalog.lost_catalogs)

    def succeed(self, lost: str, floor: int) -> Deferred[None]:
        return self._call(Catalog.succeed, lost, floor)

    def raise_floor(self, floor: int) -> Deferred[None]:
        return self._call(Catalog.raise_floor, floor)

    def adopting(self) -> Deferred[list[str]]:
        return self._call(Catalog.adopting)

    def rebuild_owed(self) -> Deferred[bool]:
        return self._call(Catalog.rebuild_owed)

    def mark_rebuilding(self, rebuilding: bool) -> Deferred[None]:
        return self._call(Catalog.mark_rebuilding, rebuilding)

    def mark_adopting(self, server: str, adopting: bool) -> Deferred[None]:
        return self._call(Catalog.mark_adopting, server, adopting)

    def save_server(self, id: str, zone: str, host: str, port: int, capacity: int, used: int,
                    blobs: int) -> Deferred[None]:
        return self._call(Catalog.save_server, id, zone, host, port, capacity, used, blobs)

    def begin_upload(self, name: str, blob: str, servers: list[str]) -> Deferred[int]:
        return self._call(Catalog.begin_upload, name, blob, servers)

    def add_intent(self, blob: str, server: str) -> Deferred[None]:
        return self._call(Catalog.add_intent, blob, server)

    def abandon(self, blob: str, name: str | None = None, version: int | None = None,
                servers: list[str] | None = None) -> Deferred[None]:
        return self._call(Catalog.abandon, blob, name, version, servers or [])

    def commit(self, name: str, version: int, blob: str, size: int, sha256: str, replicas: int,
               servers: list[str], now: float, meta: str = "", expect: Expect | None = None,
               bucket: str | None = None) -> Deferred[bool]:
        d = self._call(Catalog.commit, name, version, blob, size, sha256, replicas, servers, now, meta, expect, bucket)
        changes = self._changes
        return d.addCallback(self._committed, committed(name, version, blob, size, sha256, replicas, servers,
                                                        self.on_db_clock(now), meta), changes)

    def on_db_clock(self, t: float) -> float:
        return self.catalog._on_db_clock(t)

    def _committed(self, newest: bool, record: FileRecord, changes: int) -> bool:
        if newest:
            self._keep(record, record.name, changes)
        return newest

    def create_upload(self, upload: str, name: str, replicas: int, meta: str, now: float) -> Deferred[None]:
        return self._call(Catalog.create_upload, upload, name, replicas, meta, now)

    def upload(self, upload: str) -> Deferred[Optional[tuple[str, int, str, float]]]:
        return self._call(Catalog.upload, upload)

    def uploads(self, prefix: str, after_name: str, after_id: str, limit: int
                ) -> Deferred[list[tuple[str, str, float]]]:
        try:
            _bounds(prefix=prefix, marker=after_name, id_marker=after_id)
        except BadArgs:
            return fail()
        return self._call(Catalog.uploads, prefix, after_name, after_id, limit)

    def parts(self, upload: str, after: int, limit: int) -> Deferred[list[tuple[int, FileRecord]]]:
        return self._call(Catalog.parts, upload, after, limit)

    def commit_part(self, upload: str, name: str, version: int, blob: str, size: int, sha256: str, replicas: int,
                    servers: list[str], now: float, meta: str = "") -> Deferred[None]:
        return self._call(Catalog.commit_part, upload, name, version, blob, size, sha256, replicas, servers, now, meta)

    def complete(self, upload: str, name: str, version: int, blob: str, size: int, sha256: str, replicas: int,
                 servers: list[str], now: float, meta: str, chosen: list[str], digest: str,
                 expect: Expect | None = None) -> Deferred[bool]:
        return self._call(Catalog.complete, upload, name, version, blob, size, sha256, replicas, servers, now, meta,
                          chosen, digest, expect)

    def abort_upload(self, upload: str) -> Deferred[bool]:
        return self._call(Catalog.abort_upload, upload)

    def expire_uploads(self, before: float, limit: int) -> Deferred[list[str]]:
        return self._call(Catalog.expire_uploads, before, limit)

    def next_upload(self, after: str) -> Deferred[Optional[tuple[str, Optional[FileRecord]]]]:
        return self._call(Catalog.next_upload, after)

    def adopt_manifest(self, upload: str, version: int, name: str, meta: str, sha256: str,
                       parts: list[tuple[str, int, str]], now: float) -> Deferred[str]:
        return self._call(Catalog.adopt_manifest, upload, version, name, meta, sha256, parts, now)

    def drop_unfinished(self, upload: str) -> Deferred[bool]:
        return self._call(Catalog.drop_unfinished, upload)

    def parts_at(self, upload: str, offset: int, limit: int) -> Deferred[list[tuple[int, FileRecord]]]:
        return self._call(Catalog.parts_at, upload, offset, limit)

    def create_bucket(self, name: str, now: float) -> Deferred[bool]:
        return self._call(Catalog.create_bucket, name, now)

    def delete_bucket(self, name: str) -> Deferred[None]:
        def forget(result: object) -> object:  # after it, when every lookup made before it has answered
            self._buckets.pop(name, None)
            return result
        self._buckets.pop(name, None)
        return self._call(Catalog.delete_bucket, name).addBoth(forget)

    def bucket(self, name: str) -> Deferred[Optional[float]]:
        """When bucket ``name`` was made (None: there is none). A bucket seen
        is remembered, as records are, until it is deleted (through this
        thread: on a catalog no other proxy shares, no one else can)."""
        if name in self._buckets:
            return succeed(self._buckets[name])
        d = self._call(Catalog.bucket, name)
        if self._keeps:
            d.addCallback(self._keep_bucket, name)
        return d

    def _keep_bucket(self, created: Optional[float], name: str) -> Optional[float]:
        if created is not None and len(self._buckets) < self.kept:
            self._buckets[name] = created
        return created

    def buckets(self, prefix: str, after: str, limit: int) -> Deferred[list[tuple[str, float]]]:
        try:
            _bounds(prefix=prefix, marker=after)
        except BadArgs:
            return fail()
        return self._call(Catalog.buckets, prefix, after, limit)

    def listing(self, prefix: str, after: str, limit: int | None) -> Deferred[Listing]:
        try:
            _bounds(prefix=prefix, marker=after)
        except BadArgs:
            return fail()
        return self.catalog.backend.listing(self.reactor, NameRange(prefix, after, limit))

    def delete(self, name: str, expect: Expect | None = None) -> Deferred[Optional[FileRecord]]:
        return self._call(Catalog.delete, name, expect)

    def set_replicas(self, name: str, count: int, up: Iterable[str] | None = None) -> Deferred[Optional[FileRecord]]:
        return self._call(Catalog.set_replicas, name, count, up)

    def drop_copy(self, blob: str, server: str) -> Deferred[None]:
        return self._call(Catalog.drop_copy, blob, server)

    def reconcile_inventory(self, server: str, present: list[str], lo: str | None, hi: str | None,
                            before: float, held_only: bool = False) -> Deferred[tuple[int, int, list[str], list[str]]]:
        return self._call(Catalog.reconcile_inventory, server, present, lo, hi, before, held_only)

    def judge_unknown(self, server: str, blobs: list[tuple[str, str | None, int | None, int]],
                      before: float) -> Deferred[tuple[int, int, int]]:
        return self._call(Catalog.judge_unknown, server, blobs, before)

    def counts(self, servers: list[str]) -> Deferred[Counts]:
        return self._call(Catalog.counts, servers)

    def garbage(self, servers: list[str], limit: int = 100) -> Deferred[list[tuple[str, str]]]:
        return self._call(Catalog.garbage, servers, limit)

    def forget_garbage(self, deleted: list[tuple[str, str]], now: float) -> Deferred[None]:
        return self._call(Catalog.forget_garbage, deleted, now)

    def release_garbage(self, pairs: list[tuple[str, str]]) -> Deferred[None]:
        return self._call(Catalog.release_garbage, pairs)

    def garbage_count(self) -> Deferred[list[tuple[str, int]]]:
        return self._call(Catalog.garbage_count)


def _bounds(**texts: str) -> None:
    """A listing's bounds, as a request gave them: BadArgs for one no name
    can hold (PostgreSQL would refuse a NUL, where SQLite would find nothing)."""
    for what, text in texts.items():
        check_bound(text, what.replace("_", " "))
