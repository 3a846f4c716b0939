"""Rebuilding the catalog from the blob metadata the storage servers keep."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from deposito.interfaces import ICatalog
from deposito.roster import Member, Roster

if TYPE_CHECKING:
    from deposito.interfaces import Entry


class Rebuilder:
    """While rebuilding, the servers' blobs are taken into the catalog instead
    of being judged against it. Asked for (``--rebuild``), clients wait
    meanwhile (ERR unavailable rebuilding); on an empty catalog it happens by
    itself, so a lost catalog never turns every blob into garbage. It is over
    once the grace period has passed and every server that joined has
    listed its blobs in full."""

    log = Logger()

    def __init__(self, clock: IReactorTime, db: ICatalog, roster: Roster, done: Callable[[], None],
                 asked: bool = False, grace: float = 5.0) -> None:
        self.clock = clock
        self.db = db
        self.roster = roster
        self.done = done  # the catalog is whole again: its files are worth looking at
        self.rebuilding = asked
        self.closed_for_rebuild = asked
        self.grace = grace
        self._reported: set[str] = set()
        self._adopted = 0
        self._started_at = clock.seconds()

    async def start(self, empty: bool) -> None:
        """The proxy starts: rebuild if asked to, or if the catalog is ``empty``."""
        self._started_at = self.clock.seconds()
        if empty and not self.rebuilding:
            self.log.info("the catalog is empty: taking in whatever blobs the servers hold (rebuilding)")
            self.rebuilding = True
        elif self.rebuilding:
            self.log.info("rebuilding the catalog from the servers' blob metadata")
        if self.rebuilding:
            self.clock.callLater(self.grace, self._check)
            for m in self.roster.up():  # joined already, and listing ids alone: to join again, listing in full
                m.connection.transport.loseConnection()

    def take(self, member: Member, entries: list[Entry], more: bool) -> defer.Deferred[None]:
        """One chunk of a server's full listing, taken into the catalog
        (``more``: chunks follow)."""
        taken = self.db.adopt(member.id, entries, self.clock.seconds()).addCallback(self._took, member, more)
        taken.addErrback(lambda f: self.log.failure("taking the blobs of {id}", f, id=member.id))
        return taken

    def _took(self, n: int, member: Member, more: bool) -> None:
        self._adopted += n
        if n:
            self.log.info("rebuilding: took {n} copies from {id}", n=n, id=member.id)
        if not more:
            self._reported.add(member.id)

    def _check(self) -> None:
        """Rebuilt once the grace period is over and every server that joined has reported."""
        if not self.rebuilding:
            return
        waiting = [m.id for m in self.roster.up() if m.id not in self._reported]
        if waiting or self.clock.seconds() - self._started_at < self.grace:
            self.clock.callLater(0.5, self._check)
            return
        self.rebuilding = self.closed_for_rebuild = False
        if self._adopted:
            self.log.info("catalog rebuilt: {copies} copies from {n} servers", copies=self._adopted,
                          n=len(self._reported), event="rebuilt")
        else:
            self.log.info("no server holds blobs: the catalog starts empty")
        self.done()
