"""Inventories: each storage server's listing of its blobs, checked against the catalog."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional

import attrs
from twisted.internet import defer, error
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from deposito.catalog.operations import KEEP_UNKNOWN
from deposito.depot.collector import Collector
from deposito.depot.rebuilder import Rebuilder
from deposito.errors import BadCommand, DepositoError, NoSpace, NotFound, Unavailable
from deposito.interfaces import ICatalog
from deposito.roster import Member

if TYPE_CHECKING:
    from deposito.interfaces import Entry

LISTED_BEFORE = 5.0  # seconds: a delete this close before a listing may not show in it


class Inventories:
    """Takes in servers' listings, a chunk at a time, in blob id order: copies
    missing in a chunk's range stop counting, blobs the catalog does not know
    are garbage, unless their metadata (asked of the server) shows a version
    newer than the catalog ever gave out (see ICatalog.judge_unknown; while rebuilding, the rebuilder takes them in instead, and
    likewise the listing of a server back late from a lost catalog, or of one
    whose taking in was cut short: see Rebuilder.takes_in)."""

    log = Logger()

    def __init__(self, clock: IReactorTime, db: ICatalog, collector: Collector, rebuilder: Rebuilder,
                 repair: Callable[[], None]) -> None:
        self.clock = clock
        self.db = db
        self.collector = collector
        self.rebuilder = rebuilder
        self.repair = repair  # copies stopped counting: the reconciler has work
        self._listings: dict[str, _Listing] = {}  # server -> its listing under way

    def inventory(self, member: Member, entries: list[Entry], since: float,
                  more: bool = False) -> defer.Deferred[None]:
        """One chunk of a server's listing (``more``: chunks follow), listed
        after ``since``. Fires once the chunk is taken in; one summary per
        whole listing is logged."""
        listing = self._listings.get(member.id)
        if listing is None or listing.connection is not member.connection or listing.since != since:
            listing = self._listings[member.id] = _Listing(member.connection, since)
        lo = listing.after
        hi = (entries[-1][0] if entries else lo) if more else None
        listing.after = hi
        if not more:
            del self._listings[member.id]
        taken_in = self.rebuilder.rebuilding or member.adopted
        if more and hi == lo:  # an empty chunk in the middle covers no range
            return self.rebuilder.take(member, entries, more) if taken_in else defer.succeed(None)
        d = self.db.reconcile_inventory(member.id, [e[0] for e in entries], lo, hi, since - LISTED_BEFORE,
                                        held_only=taken_in)
        if taken_in:
            # First the copies a catalog kept through --rebuild (a backup put back, say) lists on
            # this server and it lacks stop counting; then the chunk is taken in (which judges its
            # blobs by their metadata: a copy counted here would be taken in without it).
            taking: defer.Deferred[None] = d.addCallbacks(
                lambda _: self.rebuilder.take(member, entries, more),
                self._take_unjudged, errbackArgs=(member, entries, more))

            def again(failure: Failure) -> Failure:
                if failure.check(Unavailable, NoSpace):  # handed again: the same range, judged again
                    listing.after = lo
                    self._listings[member.id] = listing
                return failure
            return taking.addErrback(again)

        done = d.addCallback(lambda result: defer.ensureDeferred(
            self._reconciled(result, member, listing, more, since - LISTED_BEFORE)))
        done.addErrback(self._not_reconciled, member)
        return done

    async def _reconciled(self, result: tuple[int, int, list[str], list[str]], member: Member,
                          listing: _Listing, more: bool, before: float) -> None:
        missing, counted, unknown, _ = result
        listing.missing += missing
        listing.counted += counted
        if unknown:
            garbage, kept, expired = await self.db.judge_unknown(
                member.id, await self._what_they_are(member, unknown), before)
            listing.garbage += garbage
            listing.kept += kept
            listing.expired += expired
        if more:
            return
        if listing.missing or listing.counted or listing.garbage:
            self.log.info("inventory of {id}: {missing} copies missing, {counted} counted again,"
                          " {garbage} to delete", id=member.id, missing=listing.missing,
                          counted=listing.counted, garbage=listing.garbage, event="inventory")
        if listing.expired:
            self.log.error("{id} held {n} blobs of versions this catalog never gave out, written more than {days}"
                           " days ago: they were deleted (a backup of the catalog that old, put back, loses the"
                           " files written after it unless the proxy starts with --rebuild)", id=member.id,
                           n=listing.expired, days=KEEP_UNKNOWN // 86400)
        if listing.kept:
            self.log.error("{id} holds {kept} blobs of versions this catalog never gave out: either the catalog"
                           " is older than they are (a backup put back: restart the proxy with --rebuild to take"
                           " them in), or they are of uploads whose start it lost in a crash. They are left alone"
                           " till {days} days after they were written, then deleted", id=member.id,
                           kept=listing.kept, days=KEEP_UNKNOWN // 86400)
        self.repair()
        self.collector.kick()

    async def _what_they_are(self, member: Member, blobs: list[str]
                             ) -> list[tuple[str, str | None, int | None, int]]:
        """The name and version each blob's metadata says, and its age,
        asked of its server (None, None: not there, or its metadata
        unreadable); none from a server too old to tell."""
        try:
            client = await self.collector.pool.connect(member)
        except (error.ConnectError, error.TimeoutError) as e:  # gone meanwhile
            raise Unavailable(f"cannot reach the server to ask what its blobs are ({e})") from None
        told: list[tuple[str, str | None, int | None, int]] = []
        try:
            for blob in blobs:
                try:
                    told.append((blob, *await client.meta(blob)))
                except NotFound:
                    told.append((blob, None, None, 0))
                except BadCommand:  # a server of an older release: cannot tell, so nothing is judged
                    self.log.warn("{id} cannot say what the {n} blobs the catalog does not know are (META: a"
                                  " server of an older release): they are left alone till it is upgraded",
                                  id=member.id, n=len(blobs))
                    return []
        finally:
            self.collector.pool.release(client)
        return told

    def _take_unjudged(self, failure: Failure, member: Member, entries: list[Entry],
                       more: bool) -> defer.Deferred[None]:
        if failure.check(Unavailable, NoSpace):
            failure.raiseException()  # handed again (see Rebuilder.take)
        self.log.failure("judging the listing of {id} as it is taken in", failure, id=member.id)
        return self.rebuilder.take(member, entries, more)

    def _not_reconciled(self, failure: Failure, member: Member) -> None:
        """A chunk not judged: its copies are, at the server's next listing."""
        if failure.check(DepositoError):
            self.log.warn("the inventory of {id} is not judged now ({why}); its next one is",
                          id=member.id, why=str(failure.value))
        else:
            self.log.failure("reconciling the inventory of {id}", failure, id=member.id)


@attrs.define
class _Listing:
    """A server's listing under way: where its next chunk starts, and its counts so far."""

    connection: object
    since: float
    after: Optional[str] = None  # the last blob id of the chunks so far
    missing: int = 0
    counted: int = 0
    garbage: int = 0
    kept: int = 0  # blobs newer than the catalog (see ICatalog.judge_unknown)
    expired: int = 0  # ... deleted for their age
