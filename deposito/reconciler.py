"""One reconciler: each file's wanted copies against its healthy copies.

Whatever made them differ (REPLICAS, a dead server, a corrupt or lost copy,
a server back with copies nobody counts) the same two moves fix it: copy a
blob from a healthy copy to a server chosen by placement, or drop a copy.
:func:`plan` decides on plain data; :class:`Reconciler` carries it out,
most endangered files first, a few copies at a time. All its state is in the
catalog, so after a restart it simply plans again.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable

import attrs
from twisted.internet import defer, task
from twisted.logger import Logger

from deposito.catalog import Catalog, FileRecord
from deposito.errors import DepositoError, NoSpace, NotFound, Unavailable
from deposito.roster import Member, Roster
from deposito.transfer import CopyFailed


@attrs.frozen
class Assessment:
    """Where a file's copies stand."""

    record: FileRecord
    healthy: tuple[Member, ...]  # on up servers: these count
    waiting: tuple[Member, ...]  # on down servers: not counted, not replaced yet
    gone: tuple[str, ...]  # on dead or unknown servers: replaced

    @property
    def have(self) -> int:
        return len(self.healthy)

    @property
    def deficit(self) -> int:
        return max(0, self.record.replicas - len(self.healthy) - len(self.waiting))

    @property
    def excess(self) -> int:
        return max(0, len(self.healthy) - self.record.replicas)


def assess(record: FileRecord, roster: Roster) -> Assessment:
    healthy, waiting, gone = [], [], []
    for sid in record.servers:
        m = roster.get(sid)
        if m is not None and m.up:
            healthy.append(m)
        elif m is not None and m.state == "down":
            waiting.append(m)
        else:
            gone.append(sid)
    return Assessment(record, tuple(healthy), tuple(waiting), tuple(gone))


@attrs.frozen
class CopyTask:
    record: FileRecord
    count: int  # copies to add
    sources: tuple[Member, ...]
    holders: tuple[str, ...]  # every server with a copy row: never a target


@attrs.frozen
class DropTask:
    record: FileRecord
    server: str


def choose_drops(healthy: Iterable[Member], n: int) -> list[Member]:
    """Which ``n`` copies to drop: keep the zone spread, then drop from the fullest."""
    remaining = list(healthy)
    out = []
    for _ in range(min(n, len(remaining))):
        zones = Counter(m.zone for m in remaining)
        victim = max(remaining, key=lambda m: (zones[m.zone] > 1, -m.free(), m.id))
        remaining.remove(victim)
        out.append(victim)
    return out


def plan(records: Iterable[FileRecord], roster: Roster) -> tuple[list[CopyTask], list[DropTask]]:
    """The moves that bring every file to its wanted count; copies most endangered first."""
    copies: list[CopyTask] = []
    drops: list[DropTask] = []
    for record in records:
        a = assess(record, roster)
        if a.deficit and a.healthy:
            copies.append(CopyTask(record, a.deficit, a.healthy, record.servers))
        for m in choose_drops(a.healthy, a.excess):
            drops.append(DropTask(record, m.id))
        if a.gone and a.have >= record.replicas:  # replaced already: forget them
            drops.extend(DropTask(record, sid) for sid in a.gone)
    copies.sort(key=lambda t: (len(t.sources), -t.count, t.record.name))
    return copies, drops


class Reconciler:
    log = Logger()

    def __init__(self, reactor: Any, depot: Any, concurrency: int = 2, every: float = 5.0) -> None:
        self.reactor = reactor
        self.depot = depot
        self.db = depot.db
        self.roster: Roster = depot.roster
        self.concurrency = concurrency
        self.running: dict[str, defer.Deferred] = {}
        self.queued = 0
        self.done = 0
        self.failures: dict[str, DepositoError] = {}
        self.waiters: dict[str, list[tuple[int, defer.Deferred]]] = {}
        self._loop = task.LoopingCall(self.kick)
        self._loop.clock = reactor
        self.every = every
        self._cycle: defer.Deferred | None = None
        self._again = False
        self._retry_at: dict[str, float] = {}
        self.retry_after = 10.0

    def start(self) -> None:
        self._loop.start(self.every, now=True).addErrback(lambda f: self.log.failure("reconciler loop", f))

    def stop(self) -> defer.Deferred:
        if self._loop.running:
            self._loop.stop()
        for waiters in self.waiters.values():
            for _, d in waiters:
                d.cancel()
        pending = list(self.running.values()) + ([self._cycle] if self._cycle else [])
        return defer.DeferredList(pending, consumeErrors=True)

    def kick(self) -> None:
        """Plan again now (or right after the planning under way)."""
        if self._cycle is not None:
            self._again = True
            return
        self._cycle = defer.ensureDeferred(self._plan_once())
        self._cycle.addErrback(lambda f: self.log.failure("reconciling", f))
        self._cycle.addBoth(self._planned)

    def _planned(self, _: object) -> None:
        self._cycle = None
        if self._again and self._loop.running:
            self._again = False
            self.reactor.callLater(0, self.kick)

    async def _plan_once(self) -> None:
        if getattr(self.depot, "rebuilding", False):
            return  # half the servers' copies may be unknown yet: no moves on a partial picture
        records = await self.db(Catalog.list, "")
        copies, drops = plan(records, self.roster)
        for drop in drops:
            self.log.info("dropping the copy of {name} on {id}", name=drop.record.name, id=drop.server,
                          event="drop")
            await self.db(Catalog.drop_copy, drop.record.blob, drop.server)
        if drops:
            self.depot.kick()
        now = self.reactor.seconds()
        waiting = [t for t in copies if t.record.name not in self.running
                   and self._retry_at.get(t.record.name, 0.0) <= now]
        while waiting and len(self.running) < self.concurrency and self._loop.running:
            t = waiting.pop(0)
            d = defer.ensureDeferred(self._copy(t))
            self.running[t.record.name] = d
            d.addErrback(lambda f: self.log.failure("repair", f))  # then counts as none made
            d.addBoth(self._repaired, t.record.name)
        self.queued = sum(t.count for t in waiting)
        await self.check_waiters(records if not drops else None)

    def _repaired(self, made: object, name: str) -> None:
        self.running.pop(name, None)
        if made:
            self._retry_at.pop(name, None)
        else:  # nothing came of it: try that file again later, not at once
            self._retry_at[name] = self.reactor.seconds() + self.retry_after
        if self._loop.running:
            self.kick()

    def roster_changed(self) -> None:
        """A server came, went or died: what failed before may work now."""
        self._retry_at.clear()
        self.kick()

    async def _copy(self, t: CopyTask) -> int:
        """Add the task's copies; returns how many were made."""
        busy = await self.db(Catalog.busy, t.record.blob)
        taken = [self.roster.get(s) or Member(s, "", "", 0) for s in {*t.holders, *busy}]
        made = 0
        failed: DepositoError | None = None
        for _ in range(t.count):
            try:
                target = await self.depot.copy_to_new_server(t.record, list(t.sources), taken)
            except CopyFailed as e:
                await self.db(Catalog.abandon_copy, t.record.blob, e.target.id)
                self.depot.kick()
                failed = e
                continue
            except (Unavailable, NoSpace) as e:
                self.log.warn("cannot add a copy of {name}: {why}", name=t.record.name, why=str(e),
                              event="repair_failed")
                self.failures[t.record.name] = e
                await self.check_waiters(None)
                return made
            made += 1
            counted = await self.db(Catalog.add_copy, t.record.name, t.record.blob, target.id,
                                    self.reactor.seconds())
            self.done += 1
            self.log.info("made a copy of {name} on {id}", name=t.record.name, id=target.id, event="repaired")
            self.failures.pop(t.record.name, None)
            await self.check_waiters(None)
            if not counted:  # the file changed meanwhile: the copy is garbage
                self.depot.kick()
                return made
        if not made and failed is not None:  # every attempt failed: a waiting REPLICAS hears it
            self.failures[t.record.name] = failed
            await self.check_waiters(None)
        return made

    # -- REPLICAS ... WAIT

    def wait(self, name: str, count: int) -> defer.Deferred:
        """Fires with the healthy count once it equals ``count``; fails with
        Unavailable when the cluster can no longer get there. Cancelling
        (the client left) stops only the wait."""
        def cancel(d: defer.Deferred) -> None:
            entries = self.waiters.get(name, [])
            self.waiters[name] = [(c, w) for c, w in entries if w is not d]

        d: defer.Deferred = defer.Deferred(cancel)
        self.waiters.setdefault(name, []).append((count, d))
        self.failures.pop(name, None)
        self.kick()
        return d

    async def check_waiters(self, records: list[FileRecord] | None) -> None:
        if not any(self.waiters.values()):
            return
        by_name = {r.name: r for r in records} if records is not None else None
        for name in list(self.waiters):
            entries = self.waiters.get(name)
            if not entries:
                self.waiters.pop(name, None)
                continue
            record = by_name.get(name) if by_name is not None else await self.db(Catalog.lookup, name)
            entries = self.waiters.get(name, [])  # a client may have left meanwhile
            for count, d in list(entries):
                outcome = self._outcome(record, count, name)
                if outcome is None or d.called:
                    continue
                entries.remove((count, d))
                if isinstance(outcome, DepositoError):
                    d.errback(outcome)
                else:
                    d.callback(outcome)

    def _outcome(self, record: FileRecord | None, count: int, name: str) -> int | DepositoError | None:
        if record is None:
            return NotFound(f"no file named {name}")
        if record.replicas != count:
            return Unavailable(f"the wanted count of {name} changed to {record.replicas}")
        a = assess(record, self.roster)
        if a.have == count:
            return a.have
        if len(self.roster.up()) < count:
            return Unavailable(f"{count} copies wanted, {len(self.roster.up())} servers up")
        if not a.healthy and not a.waiting:
            return Unavailable(f"no healthy copy of {name} is left to copy from")
        if name in self.failures:
            return self.failures[name]
        return None
