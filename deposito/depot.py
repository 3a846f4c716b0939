"""The proxy's work: what PUT, GET, DELETE and the listings do.

The Depot knows nothing of sockets on the client side: the gateways call it
(as IDepot), and it answers with records or DepositoError. It owns the catalog
(an ICatalog), the roster of storage servers, and the collector that
deletes garbage copies from the servers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import attrs
from twisted.internet import defer, task
from twisted.internet.interfaces import IConsumer, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from deposito.blobstore import new_blob_id
from deposito.catalog import FileRecord
from deposito.errors import NoSpace, NotFound, Unavailable
from deposito.interfaces import ICatalog, ICopier, IDepot
from deposito.placement import place, read_order
from deposito.pool import BlobPool
from deposito.protocols.blobclient import BlobClient
from deposito.roster import Member, Roster
from deposito.reconciler import Reconciler
from deposito.transfer import SMALL_READ, CopyFailed, Upload, copy_blob, read_small, stream_blob


COLLECT_PAGE = 500  # garbage copies read from the catalog at once
DELETES_AT_ONCE = 4  # per server

if TYPE_CHECKING:
    from deposito.listing import Listing


@implementer(IDepot, ICopier)
class Depot:
    log = Logger()

    def __init__(self, reactor: IReactorTime, db: ICatalog, roster: Roster, default_replicas: int = 2,
                 connect_timeout: float = 5.0, stall_timeout: float = 30.0,
                 collect_every: float = 2.0, secret: bytes | None = None, rebuild: bool = False,
                 rebuild_grace: float = 5.0, collect_rate: float = 1000.0) -> None:
        self.reactor = reactor
        self.db = db
        self.roster = roster
        self.default_replicas = default_replicas
        self.connect_timeout = connect_timeout
        self.pool = BlobPool(reactor, connect_timeout, secret=secret)
        # Rebuilding: servers' blobs are taken into the catalog instead of being
        # judged against it. Asked for (--rebuild), clients wait meanwhile (ERR
        # unavailable rebuilding); on an empty catalog it happens by itself, so
        # a lost catalog never turns every blob into garbage.
        self.rebuilding = rebuild
        self.closed_for_rebuild = rebuild
        self.rebuild_grace = rebuild_grace
        self._reported: set[str] = set()
        self._adopted = 0
        self._started_at = reactor.seconds()
        self._absent: Any = None
        self.stall_timeout = stall_timeout
        self._collector = task.LoopingCall(self._collect)
        self._collector.clock = reactor
        self.collect_every = collect_every
        self.collect_rate = collect_rate  # garbage copies deleted a second, at most
        self._collecting: defer.Deferred | None = None
        # (blob, server) -> when its delete landed: an inventory listed before
        # that moment may still name the blob, and must not count it again
        self.recently_deleted: dict[tuple[str, str], float] = {}
        self._listings: dict[str, _Listing] = {}  # server -> its listing under way
        self.reconciler = Reconciler(reactor, db, roster, self, collect=self.kick,
                                     paused=lambda: self.rebuilding)

    def start(self) -> defer.Deferred:
        self._started_at = self.reactor.seconds()
        d = self.db.is_empty()
        d.addCallback(self._maybe_rebuild)
        d.addCallback(lambda _: self.db.recover())
        d.addCallback(lambda n: n and self.log.info("{n} unfinished uploads from before are garbage now", n=n))
        d.addCallback(lambda _: self.db.servers())
        d.addCallback(lambda rows: self.roster.restore(Member(*row) for row in rows))
        d.addCallback(self._started)
        return d

    def _maybe_rebuild(self, empty: bool) -> None:
        if empty and not self.rebuilding:
            self.log.info("the catalog is empty: taking in whatever blobs the servers hold (rebuilding)")
            self.rebuilding = True
        elif self.rebuilding:
            self.log.info("rebuilding the catalog from the servers' blob metadata")
        if self.rebuilding:
            self.reactor.callLater(self.rebuild_grace, self._rebuild_check)
            for m in self.roster.up():  # joined already, and listing ids alone: to join again, listing in full
                m.connection.transport.loseConnection()

    def _took(self, n: int, member: Member) -> None:
        self._adopted += n
        if n:
            self.log.info("rebuilding: took {n} copies from {id}", n=n, id=member.id)

    def _rebuild_check(self) -> None:
        """Rebuilt once the grace period is over and every server that joined has reported."""
        if not self.rebuilding:
            return
        waiting = [m.id for m in self.roster.up() if m.id not in self._reported]
        if waiting or self.reactor.seconds() - self._started_at < self.rebuild_grace:
            self.reactor.callLater(0.5, self._rebuild_check)
            return
        self.rebuilding = self.closed_for_rebuild = False
        if self._adopted:
            self.log.info("catalog rebuilt: {copies} copies from {n} servers", copies=self._adopted,
                          n=len(self._reported), event="rebuilt")
        else:
            self.log.info("no server holds blobs: the catalog starts empty")
        self.reconciler.kick()

    def _started(self, _: object) -> None:
        self.pool.start()
        self._collector.start(self.collect_every, now=False)
        self.reconciler.start()
        self._absent = self.reactor.callLater(self.absent_after, self._still_absent)

    absent_after = 10.0  # after a restart, servers not back by then count as down in STATUS

    def _still_absent(self) -> None:
        """Servers known before the restart that have not joined again: their
        files are queued, so the counts show them short of copies."""
        for m in list(self.roster.members.values()):
            if m.state == "down":
                self.reconciler.server_changed(m)

    async def stop(self) -> None:
        if self._collector.running:
            self._collector.stop()
        if self._absent is not None and self._absent.active():
            self._absent.cancel()
        await self.reconciler.stop()
        if self._collecting is not None:  # a page of deletes under way: a few seconds at most
            await self._collecting.addTimeout(5.0, self.reactor).addErrback(lambda f: f.trap(defer.TimeoutError))
        self.pool.stop()

    def member_changed(self, m: Member) -> None:
        """The roster's hook: remember servers across restarts; collect from a
        returning one; re-plan copies."""
        self.db.save_server(m.id, m.zone, m.host, m.port, m.capacity, m.used, m.blobs)
        if m.up:
            self.kick()
        else:
            self.pool.abort(m)
        self.reconciler.server_changed(m)

    async def connect(self, member: Member) -> BlobClient:
        """A connection to a storage server; hand it back with ``self.pool.release``."""
        return await self.pool.connect(member)

    # -- PUT

    async def begin_put(self, name: str, size: int, replicas: int | None) -> Upload:
        """Reserve room on ``replicas`` servers and open a stream to each."""
        replicas = replicas or self.default_replicas
        targets = place(self.roster.members.values(), replicas, size)
        blob = new_blob_id()
        for m in targets:
            m.reserved += size
        try:
            version = await self.db.begin_upload(name, blob, [m.id for m in targets])
            upload = Upload(self.reactor, name, version, blob, size, replicas, self.stall_timeout,
                            release=self.pool.release)
            clients = await defer.DeferredList(
                [defer.ensureDeferred(self.connect(m)) for m in targets], consumeErrors=True)
            first = read_order(blob, targets)[0]  # the copy reads go to first: keep it in cache
            for m, (ok, client) in zip(targets, clients):
                if ok:
                    upload.add_lane(m, client, client.write_blob(blob, size, version, replicas, name,
                                                                 cache=m is first))
                else:
                    self.log.warn("cannot reach storage server {id}: {why}", id=m.id,
                                  why=client.getErrorMessage())
            if not upload.lanes:
                await self.db.abandon(blob)
                raise Unavailable("no storage server could be reached")
        except BaseException:
            for m in targets:
                m.reserved -= size
            raise
        upload.targets = targets  # type: ignore[attr-defined]
        return upload

    async def finish_put(self, upload: Upload) -> FileRecord:
        """Every byte is in: make sure there are ``replicas`` verified copies, then commit."""
        upload.detach()
        record = FileRecord(upload.name, upload.version, upload.blob, upload.size, upload.sha256,
                            upload.replicas, ())
        try:
            good = await upload.finish()
            if not good:  # no copy to make the others from: say why the servers refused
                if any(isinstance(e, NoSpace) for e in upload.failures):
                    raise NoSpace("the storage servers are full")
                raise Unavailable("no storage server kept a copy")
            tried = list(upload.targets)  # type: ignore[attr-defined]
            while len(good) < upload.replicas:
                try:
                    good.append(await self.copy_to_new_server(record, good, tried))
                except CopyFailed:
                    pass  # its partial copy is garbage at commit; try the next server
        except BaseException:
            await self.db.abandon(upload.blob)
            self.kick()
            raise
        finally:
            for m in upload.targets:  # type: ignore[attr-defined]
                m.reserved -= upload.size
        ids = [m.id for m in good]
        newest = await self.db.commit(upload.name, upload.version, upload.blob, upload.size,
                                      upload.sha256, upload.replicas, ids, self.reactor.seconds())
        for m in good:  # count the bytes now; the next heartbeat brings the server's own figure
            m.used += upload.size
        if newest and not all(m.up for m in good):  # one went down meanwhile: the file is short
            await self.db.enqueue([upload.name])
            self.reconciler.kick()
        if not newest or upload.version > 1 or len(tried) > len(good):
            self.kick()  # a version replaced, or copies not kept: garbage to delete now
        self.log.info("stored {name} version {version} ({size} bytes) on {servers}",
                      name=upload.name, version=upload.version, size=upload.size, servers=",".join(ids))
        return FileRecord(upload.name, upload.version, upload.blob, upload.size, upload.sha256,
                          upload.replicas, tuple(ids))

    async def copy_to_new_server(self, record: FileRecord, sources: list[Member],
                                 taken: list[Member]) -> Member:
        """One more copy of ``record``'s blob, on a server placement picks outside
        ``taken`` (the pick is added to it). The write is an intent until the
        caller counts it. Raises Unavailable/NoSpace when no server fits, and
        CopyFailed when the copy itself fails."""
        target = place(self.roster.members.values(), 1, record.size, taken=taken)[0]
        taken.append(target)
        target.reserved += record.size
        try:
            await self.db.add_intent(record.blob, target.id)
            self.log.info("copying {name} to {id}", name=record.name, id=target.id)
            await copy_blob(self.connect, list(sources), target, record.blob, record.size, record.sha256,
                            record.name, record.version, record.replicas, release=self.pool.release,
                            cache=read_order(record.blob, [*sources, target])[0] is target)
            target.used += record.size  # until its next heartbeat says so itself
        except Exception as e:
            self.log.warn("copy of {name} to {id} failed: {why}", name=record.name, id=target.id, why=str(e))
            raise CopyFailed(target, str(e)) from e
        finally:
            target.reserved -= record.size
        return target

    def abort_put(self, upload: Upload) -> None:
        """The client went away mid-upload: nothing of it is kept."""
        upload.abort()
        for m in upload.targets:  # type: ignore[attr-defined]
            m.reserved -= upload.size
        d = self.db.abandon(upload.blob)
        d.addCallback(lambda _: self.kick())
        d.addErrback(lambda f: self.log.failure("abandoning {blob}", f, blob=upload.blob))

    # -- reads

    async def lookup(self, name: str) -> FileRecord:
        record = await self.db.read(name)
        if record is None:
            raise NotFound(f"no file named {name}")
        return record

    def healthy(self, record: FileRecord) -> list[Member]:
        """The up servers holding a copy, in the order to read them (see read_order)."""
        members = [self.roster.get(s) for s in record.servers]
        return read_order(record.blob, [m for m in members if m is not None and m.up])

    def recent(self, name: str) -> FileRecord | None:
        """The record of ``name`` if the catalog has it at hand, without a
        trip to its thread (what :meth:`lookup` would answer), else None."""
        return self.db.kept_record(name)

    def read_small(self, record: FileRecord) -> defer.Deferred | None:
        """A small file (at most SMALL_READ bytes) read whole from its first
        copy over a connection already open, as a list of pieces; None when
        that cannot start at once (no copy up, or no idle connection to it),
        and then :meth:`read` is the way. On failure nothing has been sent,
        so :meth:`read` can still try every copy."""
        if record.size > SMALL_READ:
            return None
        sources = self.healthy(record)
        client = self.pool.idle(sources[0]) if sources else None
        if client is None:
            return None
        member = sources[0]

        def failed(failure: Any) -> Any:
            self.log.warn("reading {blob} from {id} failed: {why}", blob=record.blob, id=member.id,
                          why=str(failure.value))
            if failure.check(NotFound):
                self.copy_missing(member, record.blob)
            return failure

        return read_small(client, record.blob, record.size, release=self.pool.release).addErrback(failed)

    async def read(self, record: FileRecord, consumer: IConsumer, started: Callable[[], None]) -> None:
        sources = self.healthy(record)
        if not sources:
            raise Unavailable(f"no copy of {record.name} is on a live server")
        await stream_blob(self.connect, sources, record.blob, 0, record.size, consumer, started,
                          release=self.pool.release, local=self.pool.connect_local, missing=self.copy_missing)

    def copy_missing(self, member: Member, blob: str) -> None:
        """A read found that ``member`` lacks a copy of ``blob`` the catalog
        counts: it no longer counts, and its file is queued to be copied again."""
        self.log.warn("storage server {id} lacks its copy of {blob}: made again elsewhere", id=member.id,
                      blob=blob, event="missing")
        d = self.db.drop_copy(blob, member.id)
        d.addCallback(lambda _: self.reconciler.kick())
        d.addErrback(lambda f: self.log.failure("dropping a missing copy", f))

    async def listing(self, prefix: str, after: str, limit: int | None) -> Listing:
        """The names starting with ``prefix`` that sort after ``after`` (at most
        ``limit``), read in batches from one snapshot of the catalog, off the
        reactor: a :class:`deposito.listing.Listing`, to be closed when done."""
        return await self.db.listing(prefix, after, limit)

    async def delete(self, name: str) -> FileRecord:
        record = await self.db.delete(name)
        if record is None:
            raise NotFound(f"no file named {name}")
        self.kick()
        self.log.info("deleted {name} version {version}", name=name, version=record.version)
        return record

    def servers(self) -> list[Member]:
        return sorted(self.roster.members.values(), key=lambda m: m.id)

    # -- convergence

    async def replicas(self, name: str, count: int, wait: bool) -> tuple[FileRecord, int]:
        """Set the wanted count; with ``wait``, answer once the healthy count equals it."""
        up = len(self.roster.up())
        if count > up:
            raise Unavailable(f"{count} copies wanted, {up} servers up")
        record = await self.db.set_replicas(name, count)
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
        c = await self.db.counts()
        running = len(self.reconciler.running)
        collecting = self._collecting is not None
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

    def inventory(self, member: Member, entries: list, since: float, more: bool = False) -> defer.Deferred:
        """One chunk of a server's listing (``more``: chunks follow), in blob id
        order: missing copies in its range stop counting, unknown blobs go
        (while rebuilding, they are taken into the catalog instead). Fires
        once the chunk is taken in; one summary per whole listing is logged."""
        listing = self._listings.get(member.id)
        if listing is None or listing.connection is not member.connection or listing.since != since:
            listing = self._listings[member.id] = _Listing(member.connection, since)
            now = self.reactor.seconds()
            self.recently_deleted = {k: t for k, t in self.recently_deleted.items() if now - t < 600}
        lo = listing.after
        hi = (entries[-1][0] if entries else lo) if more else None
        listing.after = hi
        if not more:
            del self._listings[member.id]
        if self.rebuilding:
            d = self.db.adopt(member.id, entries, self.reactor.seconds())
            d.addCallback(self._took, member)
            if not more:
                d.addCallback(lambda _: self._reported.add(member.id))
            d.addErrback(lambda f: self.log.failure("taking the blobs of {id}", f, id=member.id))
            return d
        if more and hi == lo:
            return defer.succeed(None)  # an empty chunk in the middle covers no range
        cutoff = since - 5.0
        present = [e[0] for e in entries if self.recently_deleted.get((e[0], member.id), -1.0) < cutoff]
        d = self.db.reconcile_inventory(member.id, present, lo, hi, cutoff)

        def reconciled(result: tuple[int, int, int, list[str]]) -> None:
            listing.missing += result[0]
            listing.counted += result[1]
            listing.garbage += result[2]
            if more:
                return
            if listing.missing or listing.counted or listing.garbage:
                self.log.info("inventory of {id}: {missing} copies missing, {counted} counted again,"
                              " {garbage} to delete", id=member.id, missing=listing.missing,
                              counted=listing.counted, garbage=listing.garbage, event="inventory")
            self.reconciler.kick()
            self.kick()

        d.addCallback(reconciled)
        d.addErrback(lambda f: self.log.failure("reconciling the inventory of {id}", f, id=member.id))
        return d

    def corrupt(self, member: Member, blob: str, why: str) -> None:
        d = self.db.drop_copy(blob, member.id)
        d.addCallback(lambda _: self.reconciler.kick())
        d.addErrback(lambda f: self.log.failure("dropping a corrupt copy", f))

    # -- garbage

    def kick(self) -> None:
        """Collect garbage soon, rather than at the next tick."""
        if self._collecting is None and self._collector.running:
            self.reactor.callLater(0, self._collect)

    def _collect(self) -> defer.Deferred | None:
        if self._collecting is not None:
            return None
        self._collecting = defer.ensureDeferred(self._collect_once())
        self._collecting.addErrback(lambda f: self.log.failure("collecting garbage", f))
        self._collecting.addBoth(lambda _: setattr(self, "_collecting", None))
        return None

    async def _collect_once(self) -> None:
        """Delete the garbage on the servers that are up, a page at a time,
        several deletes at once per server, with no pause while pages are
        full, and at most ``collect_rate`` deletes a second."""
        while self._collector.running:
            began = self.reactor.seconds()
            page = await self.db.garbage([m.id for m in self.roster.up()], COLLECT_PAGE)
            by_server: dict[str, list[str]] = {}
            for blob, server in page:
                by_server.setdefault(server, []).append(blob)
            done = await defer.gatherResults([defer.ensureDeferred(self._delete_from(server, blobs))
                                              for server, blobs in by_server.items()])
            gone = [pair for pairs in done for pair in pairs]
            now = self.reactor.seconds()
            for pair in gone:
                self.recently_deleted[pair] = now
            if gone:
                await self.db.forget_garbage(gone)
            if len(page) < COLLECT_PAGE or len(gone) < len(page):
                return  # all done, or some could not go yet: the next tick tries again
            pause = len(gone) / self.collect_rate - (self.reactor.seconds() - began)
            if pause > 0:
                await task.deferLater(self.reactor, pause)

    async def _delete_from(self, server: str, blobs: list[str]) -> list[tuple[str, str]]:
        """Delete ``blobs`` from one server over a few connections at once;
        returns the (blob, server) pairs deleted."""
        member = self.roster.get(server)
        if member is None or not member.up:
            return []
        todo = iter(blobs)
        gone: list[tuple[str, str]] = []

        async def worker() -> None:
            client = await self.connect(member)
            try:
                for blob in todo:
                    await client.delete_blob(blob)
                    gone.append((blob, server))
            finally:
                self.pool.release(client)

        results = await defer.DeferredList([defer.ensureDeferred(worker()) for _ in range(DELETES_AT_ONCE)],
                                           consumeErrors=True)
        for ok, failure in results:
            if not ok:
                self.log.warn("cannot delete garbage from {id} yet: {why}", id=server,
                              why=failure.getErrorMessage())
                break
        return gone


@attrs.define
class _Listing:
    """A server's listing under way: where its next chunk starts, and its counts so far."""

    connection: Any
    since: float
    after: str | None = None  # the last blob id of the chunks so far
    missing: int = 0
    counted: int = 0
    garbage: int = 0
