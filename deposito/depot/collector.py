"""Garbage collection: copies the catalog no longer counts, deleted from their servers."""

from __future__ import annotations

from typing import Callable, cast

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from deposito.errors import NoSpace, Unavailable
from deposito.interfaces import ICatalog
from deposito.pool import BlobPool
from deposito.protocols.blobwire import DELETES_PER_LINE
from deposito.roster import Roster

COLLECT_PAGE = 500  # garbage copies read from the catalog at once
DELETES_AT_ONCE = 2  # requests under way per server
REST = 30.0  # seconds a server that refused deletes is left alone (a disk turned read-only, say)


class Collector:
    """Deletes garbage copies from the servers that are up, in bounded pages
    at a bounded rate, every ``every`` seconds or sooner when kicked. Each
    page is claimed in the catalog, so proxies sharing it delete different
    copies; the catalog remembers when each delete landed, for the
    inventories listed before it."""

    log = Logger()

    def __init__(self, clock: IReactorTime, db: ICatalog, roster: Roster, pool: BlobPool,
                 every: float = 2.0, rate: float = 1000.0, paused: Callable[[], bool] = lambda: False) -> None:
        self.clock = clock
        self.paused = paused  # while true, nothing is deleted (the catalog is being rebuilt)
        self.db = db
        self.roster = roster
        self.pool = pool
        self.every = every
        self.rate = rate  # garbage copies deleted a second, at most
        self._resting: dict[str, float] = {}  # servers that refused deletes: left alone until then
        self._loop = task.LoopingCall(self._collect)
        self._loop.clock = clock
        self._collecting: defer.Deferred[None] | None = None
        self._failing: str | None = None  # why the last collection failed (said once in a row)

    @property
    def busy(self) -> bool:
        """A page of deletes is under way."""
        return self._collecting is not None

    def start(self) -> None:
        self._loop.start(self.every, now=False)

    async def stop(self) -> None:
        """Stop; a page of deletes under way gets a few seconds at most."""
        if self._loop.running:
            self._loop.stop()
        if self._collecting is not None:
            await self._collecting.addTimeout(5.0, self.clock).addErrback(lambda f: f.trap(defer.TimeoutError))

    def kick(self) -> None:
        """Collect garbage soon, rather than at the next tick."""
        if self._collecting is None and self._loop.running:
            self.clock.callLater(0, self._collect)

    def _collect(self) -> None:
        if self._collecting is not None:
            return
        self._collecting = defer.ensureDeferred(self._collect_once())
        self._collecting.addCallbacks(self._succeeded, self._failed)
        self._collecting.addBoth(self._collected)

    def _succeeded(self, _: object) -> None:
        if self._failing is not None:
            self._failing = None
            self.log.info("collecting garbage again")

    def _failed(self, failure: Failure) -> None:
        if failure.check(Unavailable, NoSpace):  # its database down, or its disk full: said once in a row, tried again shortly
            why = failure.getErrorMessage()
            if why != self._failing:
                self._failing = why
                self.log.warn("collecting garbage: {why}; trying again every {s:.0f} s", why=why, s=self.every)
        else:
            self._failing = None
            self.log.failure("collecting garbage", failure)

    def _collected(self, _: object) -> None:
        self._collecting = None

    async def _collect_once(self) -> None:
        """Delete the garbage on the servers that are up, a page at a time,
        several deletes at once per server, with no pause while pages are
        full, and at most ``rate`` deletes a second. Nothing while the
        catalog is being rebuilt: a copy the catalog holds for garbage (a
        failed PUT's) must stay so until the servers' listings are in, or a
        listing made before its delete would bring it back as a version."""
        while self._loop.running and not self.paused():
            began = self.clock.seconds()
            page = await self.db.garbage([m.id for m in self.roster.up() if self._resting.get(m.id, 0.0) <= began],
                                         COLLECT_PAGE)
            by_server: dict[str, list[str]] = {}
            for blob, server in page:
                by_server.setdefault(server, []).append(blob)
            done = await defer.gatherResults([defer.ensureDeferred(self._delete_from(server, blobs))
                                              for server, blobs in by_server.items()])
            gone = [pair for pairs in done for pair in pairs]
            if gone:
                await self.db.forget_garbage(gone, self.clock.seconds())
            if len(gone) < len(page):  # the rest are for the next tick, or another proxy
                left = set(page) - set(gone)
                await self.db.release_garbage([pair for pair in page if pair in left])
            if len(page) < COLLECT_PAGE or len(gone) < len(page):
                return  # all done, or some could not go yet: the next tick tries again
            pause = len(gone) / self.rate - (self.clock.seconds() - began)
            if pause > 0:
                await task.deferLater(self.clock, pause)

    async def _delete_from(self, server: str, blobs: list[str]) -> list[tuple[str, str]]:
        """Delete ``blobs`` from one server, many to a request, a few requests
        at once; returns the (blob, server) pairs deleted."""
        member = self.roster.get(server)
        if member is None or not member.up:
            return []
        todo = iter([blobs[i:i + DELETES_PER_LINE] for i in range(0, len(blobs), DELETES_PER_LINE)])
        gone: list[tuple[str, str]] = []

        async def worker() -> None:
            client = await self.pool.connect(member)
            try:
                for some in todo:
                    await client.delete_blobs(some)
                    gone.extend((blob, server) for blob in some)
            finally:
                self.pool.release(client)

        results = await defer.DeferredList([defer.ensureDeferred(worker()) for _ in range(DELETES_AT_ONCE)],
                                           consumeErrors=True)
        for ok, result in results:
            if not ok:
                failure = cast(Failure, result)  # DeferredList's type leaves out the failures
                self.log.warn("cannot delete garbage from {id} yet ({why}): tried again in {s:.0f} s", id=server,
                              why=failure.getErrorMessage(), s=REST)
                self._resting[server] = self.clock.seconds() + REST
                break
        return gone
