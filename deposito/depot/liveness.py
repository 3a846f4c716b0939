"""This proxy among the others that share its catalog: its lease renewed,
the servers it sees up told to the others, and theirs heard.

A proxy silent past the lease is retired by a live one (its unfinished
uploads become garbage, its claimed work is free for the others: see
:meth:`deposito.catalog.Catalog.beat`). A server this proxy cannot reach
is not dead while another proxy sees it: its copies wait, neither replaced
nor dropped, so one proxy's partial view never costs a copy.
"""

from __future__ import annotations

import time
from typing import Callable

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from deposito.catalog.coherence import TRUST
from deposito.errors import NoSpace, Unavailable
from deposito.interfaces import ICatalog
from deposito.roster import Member, Roster

BEAT_EVERY = 2.0  # seconds between beats, at most: less than TRUST, so that a proxy alone stays trusted


class Liveness:
    """Renews this proxy's lease in the catalog every few seconds, and
    folds the other proxies' sightings of servers into the roster."""

    log = Logger()

    def __init__(self, clock: IReactorTime, db: ICatalog, roster: Roster, lease: float,
                 handed_over: Callable[[], None], rebuilding: Callable[[], bool] = lambda: False) -> None:
        self.clock = clock
        self.db = db
        self.roster = roster
        self.lease = lease
        self.handed_over = handed_over  # a silent proxy's work passed to the live ones: look at it
        self.rebuilding = rebuilding  # this proxy rebuilds the catalog on request (clients turned away)
        self.rebuilt_elsewhere = False  # another proxy does, as the last beat heard
        # four beats to a lease, and to a server's time to die: sightings stay fresh enough
        self.every = min(BEAT_EVERY, lease / 4, roster.dead_after / 4)
        self._loop = task.LoopingCall(self.beat)
        self._loop.clock = clock
        self._last_ok: float | None = None
        self._alone: bool | None = None  # whether the last beat found no other proxy
        self._failing: str | None = None  # why the last beat failed (said once in a row)

    def start(self) -> None:
        self._loop.start(self.every, now=True)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def beat(self) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._beat()).addErrback(lambda f: self.log.failure("renewing the lease", f))

    async def _beat(self) -> None:
        now = self.clock.seconds()
        began = time.monotonic()  # no other proxy's row went in before this: see catalog.coherence.TRUST
        # Retire others only if this proxy's own last beat is recent: right
        # after an outage of the database every proxy looks silent.
        hand_over = self._last_ok is not None and now - self._last_ok <= self.lease / 2
        try:
            seen, retired, garbage, others, elsewhere = await self.db.beat(
                [m.id for m in self.roster.up()], now, self.lease, hand_over, self.rebuilding())
        except (Unavailable, NoSpace) as e:  # the next beat tries again; said once in a row
            if e.message != self._failing:
                self._failing = e.message
                self.log.warn("this proxy's beats are not recorded ({why}): other proxies may take over its work,"
                              " and what changes the catalog is refused meanwhile", why=e.message)
            return
        if self._failing is not None:
            self._failing = None
            self.log.info("this proxy's beats are recorded again")
        self._last_ok = now
        if elsewhere != self.rebuilt_elsewhere:
            self.log.info("another proxy rebuilds the catalog on request: clients are turned away meanwhile"
                          if elsewhere else "no proxy rebuilds the catalog any more: clients are served again")
        self.rebuilt_elsewhere = elsewhere
        alone = not others
        if alone:
            self.db.trust(began + TRUST)
        self.db.seen_proxies(others, began)
        if alone != self._alone and (alone or self._alone is not None):
            self.log.info("no other proxy shares the catalog: lookups are answered from the records kept" if alone
                          else "another proxy shares the catalog: lookups are answered from the records kept"
                          " only while every proxy acknowledges the others' changes")
        self._alone = alone
        unknown = {sid for sid, _ in seen if self.roster.get(sid) is None}
        if unknown:  # joined another proxy only: known from the catalog, down here
            self.roster.restore(Member(*row) for row in await self.db.servers() if row[0] in unknown)
        self.roster.seen_elsewhere(seen)
        if retired:
            self.log.warn("{n} proxies silent for {lease:.0f}s were retired: {garbage} copies of their unfinished"
                          " uploads are garbage, their work passes to the live proxies", n=retired,
                          lease=self.lease, garbage=garbage, event="retired")
            self.handed_over()
