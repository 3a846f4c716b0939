"""The proxy's depot: what the gateways call, composed of its parts.

The Depot knows nothing of sockets on the client side: the gateways call it
(as IDepot), and it answers with records or DepositoError. It wires the
parts (writes, reads, the collector, the rebuilder, inventories) to the
catalog (an ICatalog), the roster of storage servers, the connection pool
and the reconciler, and answers the few calls that are the whole cluster's:
DELETE, REPLICAS, SERVERS, STATUS.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, TypeVar

from twisted.internet import defer, task
from twisted.internet.interfaces import IConsumer, IDelayedCall
from twisted.logger import Logger
from zope.interface import implementer

from deposito.catalog import FileRecord
from deposito.depot.collector import Collector
from deposito.depot.inventories import Inventories
from deposito.depot.liveness import Liveness
from deposito.depot.reads import Reader
from deposito.depot.uploads import Uploads
from deposito.depot.rebuilder import Rebuilder
from deposito.depot.writes import Writer
from deposito.errors import NoSpace, NotFound, Unavailable
from deposito.interfaces import ICatalog, IDepot
from deposito.pool import BlobPool
from deposito.reconciler import Reconciler
from deposito.roster import Member, Roster
from deposito.transfer import Upload
from deposito.twisted_internals import IStreamReactor

if TYPE_CHECKING:
    from deposito.catalog.listing import Listing
    from deposito.catalog.records import Expect

T = TypeVar("T")


@implementer(IDepot)
class Depot:
    """The proxy's depot as the gateways call it; each call is answered by
    the part that does that work."""

    log = Logger()

    absent_after = 10.0  # after a restart, servers not back by then count as down in STATUS
    retry_every = 2.0  # seconds between tries of a catalog unavailable at the start

    def __init__(self, reactor: IStreamReactor, db: ICatalog, roster: Roster, default_replicas: int = 2,
                 connect_timeout: float = 5.0, stall_timeout: float = 30.0,
                 collect_every: float = 2.0, secret: bytes | None = None, rebuild: bool = False,
                 rebuild_grace: float = 5.0, collect_rate: float = 1000.0, lease: float = 30.0,
                 upload_expiry: float = 7 * 86400.0) -> None:
        self.reactor = reactor
        self.db = db
        self.roster = roster
        self.pool = BlobPool(reactor, connect_timeout, secret=secret)
        self.collector = Collector(reactor, db, roster, self.pool, every=collect_every, rate=collect_rate,
                                   paused=lambda: self.rebuilding_anywhere)
        self.writer = Writer(reactor, db, roster, self.pool, collect=self.collector.kick, repair=self._repair,
                             default_replicas=default_replicas, stall_timeout=stall_timeout,
                             missing=lambda member, blob: self.reader.copy_missing(member, blob))
        self.reader = Reader(db, roster, self.pool, repair=self._repair)
        self.rebuilder = Rebuilder(reactor, db, roster, done=self._rebuilt, asked=rebuild, grace=rebuild_grace,
                                   read=self.reader.read)
        self.uploads = Uploads(reactor, db, self.writer, self.reader, collect=self.collector.kick,
                               expiry=upload_expiry)
        self.inventories = Inventories(reactor, db, self.collector, self.rebuilder, repair=self._repair)
        self.reconciler = Reconciler(reactor, db, roster, self.writer, collect=self.collector.kick,
                                     paused=lambda: self.rebuilding_anywhere)
        self.liveness = Liveness(reactor, db, roster, lease, handed_over=self._handed_over,
                                 rebuilding=lambda: self.rebuilder.closed_for_rebuild)
        self._absent: IDelayedCall | None = None
        self.catalog_id: str | None = None  # read at the start: until then, servers cannot join
        self._stopping = False
        self._retry: defer.Deferred[None] | None = None
        roster.on_change = self.member_changed
        roster.on_inventory = self.inventories.inventory
        roster.on_corrupt = self.corrupt

    def _repair(self) -> None:
        self.reconciler.kick()

    def _rebuilt(self) -> None:
        self.reconciler.kick()
        self.collector.kick()

    @property
    def rebuilding_anywhere(self) -> bool:
        """This proxy or another sharing the catalog is rebuilding it: no
        copy is made or deleted meanwhile."""
        return self.rebuilder.rebuilding or self.liveness.rebuilt_elsewhere

    def _handed_over(self) -> None:
        """Another proxy's unfinished uploads and claimed work are free now."""
        self.reconciler.kick()
        self.collector.kick()

    @property
    def closed_for_rebuild(self) -> bool:
        return self.rebuilder.closed_for_rebuild or self.liveness.rebuilt_elsewhere

    @property
    def rebuilding(self) -> bool:
        """Servers are to list their blobs in full, for the rebuilder."""
        return self.rebuilder.rebuilding

    # -- starting and stopping

    async def start(self) -> None:
        """Read what the catalog knows, then start the background work. A
        catalog out of reach (a database down) is asked again until it
        answers; clients get ``ERR unavailable`` from it meanwhile. Servers
        join once the catalog's id is known and whether it is to be rebuilt,
        the two things a server decides on to serve this proxy."""
        # Its place among the proxies first: until then it changes nothing (Catalog.before_changes).
        n = await self._patiently(lambda: self.db.recover(self.reactor.seconds()))
        if n:
            self.log.info("{n} copies of unfinished uploads from before are garbage now", n=n)
        empty = await self._patiently(self.db.is_empty)
        catalog_id = await self._patiently(self.db.identity)
        lost = await self._patiently(self.db.lost_catalogs)
        adopting = await self._patiently(self.db.adopting)
        owed = await self._patiently(self.db.rebuild_owed)
        if self.rebuilder.closed_for_rebuild:
            # --rebuild: a proxy sharing the catalog may serve on meanwhile, and a version it
            # writes must win over any the rebuild takes in (as after a lost catalog: ICatalog.succeed)
            await self._patiently(lambda: self.db.raise_floor(int(self.reactor.seconds() * 1000)))
        if self._stopping:
            return
        self.rebuilder.lost, self.rebuilder.adopting = set(lost or []), set(adopting or [])
        await self._patiently(lambda: defer.ensureDeferred(self.rebuilder.start(bool(empty), bool(owed))))
        self.catalog_id = catalog_id
        rows = await self._patiently(self.db.servers)
        if self._stopping:
            return
        self.roster.restore(Member(*row) for row in rows or [])
        self.pool.start()
        self.liveness.start()
        self.collector.start()
        self.reconciler.start()
        self.uploads.start()
        self._absent = self.reactor.callLater(self.absent_after, self._still_absent)

    async def _patiently(self, call: Callable[[], defer.Deferred[T]]) -> T | None:
        """``call()``'s answer, asked again every ``retry_every`` seconds while
        the catalog is unavailable (or its disk full: the start writes); None
        if the proxy stops first. Each reason is said once in a row."""
        said = None
        while not self._stopping:
            try:
                return await call()
            except (Unavailable, NoSpace) as e:
                if e.message != said:
                    said = e.message
                    self.log.warn("the catalog is unavailable ({why}); trying again every {s} s", why=e.message,
                                  s=self.retry_every)
            self._retry = task.deferLater(self.reactor, self.retry_every, lambda: None)
            try:
                await self._retry
            except defer.CancelledError:
                break
        return None

    def _still_absent(self) -> None:
        """Servers known before the restart that have not joined again: their
        files are queued, so the counts show them short of copies."""
        for m in list(self.roster.members.values()):
            if m.state == "down":
                self.reconciler.server_changed(m)

    async def stop(self) -> None:
        self._stopping = True
        self.roster.close()
        if self._retry is not None:
            self._retry.cancel()
        collector = defer.ensureDeferred(self.collector.stop())  # no new page from now on
        if self._absent is not None and self._absent.active():
            self._absent.cancel()
        self.uploads.stop()
        await self.reconciler.stop()
        await collector
        self.liveness.stop()
        try:
            await self.db.leave()  # what this proxy was working on passes to the others now
        except Exception as e:
            self.log.warn("the other proxies take over this one's work once its lease runs out ({why})", why=str(e))
        self.pool.stop()

    # -- the roster's hooks

    def member_changed(self, m: Member) -> None:
        """Remember servers across restarts; collect from a returning one; re-plan copies."""
        saved = self.db.save_server(m.id, m.zone, m.host, m.port, m.capacity, m.used, m.blobs)
        saved.addErrback(lambda f: self.log.warn("server {id} not remembered: {why}", id=m.id,
                                                 why=f.getErrorMessage()))
        if m.up:
            self.collector.kick()
        else:
            self.pool.abort(m)
        self.reconciler.server_changed(m)

    def corrupt(self, member: Member, blob: str, why: str) -> None:
        """A server found its copy of ``blob`` corrupt: it stops counting, and is made again."""
        d = self.db.drop_copy(blob, member.id)
        d.addCallback(lambda _: self.reconciler.kick())
        d.addErrback(lambda f: self.log.failure("dropping a corrupt copy", f))

    # -- IDepot: writes

    async def begin_put(self, name: str, size: int, replicas: int | None) -> Upload:
        return await self.writer.begin_put(name, size, replicas)

    async def finish_put(self, upload: Upload) -> FileRecord:
        return await self.writer.finish_put(upload)

    def abort_put(self, upload: Upload) -> None:
        self.writer.abort_put(upload)

    # -- IDepot: reads

    async def lookup(self, name: str) -> FileRecord:
        return await self.reader.lookup(name)

    def recent(self, name: str) -> FileRecord | None:
        return self.reader.recent(name)

    def guess(self, name: str) -> FileRecord | None:
        return self.reader.guess(name)

    def healthy(self, record: FileRecord) -> list[Member]:
        return self.reader.healthy(record)

    def read_small(self, record: FileRecord) -> defer.Deferred[list[bytes]] | None:
        return self.reader.read_small(record)

    async def read(self, record: FileRecord, consumer: IConsumer, offset: int = 0, length: int | None = None,
                   started: Callable[[], None] = lambda: None) -> None:
        await self.reader.read(record, consumer, offset, length, started=started)

    def copy_missing(self, member: Member, blob: str) -> None:
        self.reader.copy_missing(member, blob)

    async def listing(self, prefix: str, after: str, limit: int | None) -> Listing:
        return await self.reader.listing(prefix, after, limit)

    # -- IDepot: the whole cluster's

    async def delete(self, name: str, expect: Expect | None = None) -> FileRecord:
        record = await self.db.delete(name, expect)
        if record is None:
            raise NotFound(f"no file named {name}")
        self.collector.kick()
        self.log.info("deleted {name} version {version}", name=name, version=record.version)
        return record

    def servers(self) -> list[Member]:
        return sorted(self.roster.members.values(), key=lambda m: m.id)

    async def replicas(self, name: str, count: int, wait: bool) -> tuple[FileRecord, int]:
        """Set the wanted count; with ``wait``, answer once the healthy count equals it."""
        up = [m.id for m in self.roster.up()]
        if count > len(up):
            raise Unavailable(f"{count} copies wanted, {len(up)} servers up")
        record = await self.db.set_replicas(name, count, up)
        if record is None:
            raise NotFound(f"no file named {name}")
        self.log.info("{name} now wants {count} copies", name=name, count=count)
        if wait:
            have = await self.reconciler.wait(name, count)
            return record, have
        self.reconciler.kick()
        return record, len(self.healthy(record))

    async def status(self, copies: bool = False) -> dict[str, int]:
        """Counts that tell the truth about the work left: kept with every
        change, and counted over the queued work alone (so they cost the
        same at any number of files). ``copies``: with the copies wanted and
        healthy, summed over all files."""
        c = await self.db.counts([m.id for m in self.roster.up()])
        running = len(self.reconciler.running)
        collecting = int(self.collector.busy)
        deletable = sum(n for sid, n in c.garbage if self.roster.is_up(sid))
        up = len(self.roster.up())
        status = {
            "files": c.files,
            "bytes": c.bytes,
            "servers_up": up,
            "servers_down": len(self.roster.members) - up,
            "under": c.under,
            "over": c.over,
            "repairs_queued": max(0, c.moves - running) + c.fresh + max(0, deletable - collecting),
            "repairs_running": running + collecting,
        }
        if copies:
            status.update(copies_wanted=c.wanted, copies_healthy=c.healthy)
        return status

    # -- IDepot: buckets (the S3 gateway's)

    async def create_bucket(self, name: str) -> bool:
        made = await self.db.create_bucket(name, self.reactor.seconds())
        if made:
            self.log.info("bucket {name} created", name=name)
        return made

    async def delete_bucket(self, name: str) -> None:
        await self.db.delete_bucket(name)
        self.log.info("bucket {name} deleted", name=name)

    async def bucket(self, name: str) -> float | None:
        return await self.db.bucket(name)

    async def buckets(self, prefix: str, after: str, limit: int) -> list[tuple[str, float]]:
        return await self.db.buckets(prefix, after, limit)
