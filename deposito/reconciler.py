"""One reconciler: each file's wanted copies against its healthy copies.

Whatever made them differ (REPLICAS, a dead server, a corrupt or lost copy,
a server back with copies nobody counts) the same two moves fix it: copy a
blob from a healthy copy to a server chosen by placement, or drop a copy.
:func:`plan` decides on plain data; :class:`Reconciler` carries it out,
most endangered files first, a few copies at a time.

Its cost follows the work, not the number of files: it looks only at the
files queued in the catalog by the changes that may leave them short or
over (REPLICAS, a copy made or found bad, a server's inventory, a server
that comes or goes), a page at a time. A slow sweep through every file, a
page every few seconds, queues whatever an event missed. The queue is in
the catalog, so after a restart the reconciler simply goes on.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Iterable

import attrs
from twisted.internet import defer, task
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from deposito.catalog import WAITING, FileRecord, Outcome
from deposito.errors import DepositoError, NoSpace, NotFound, Unavailable
from deposito.interfaces import ICopier, IWorkCatalog
from deposito.roster import Member, Roster
from deposito.transfer import CopyFailed, Unrescuable


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

    @property
    def elsewhere(self) -> int:
        """Copies on servers down here that another proxy sees up: it, not this proxy, can judge the file."""
        return sum(1 for m in self.waiting if m.up_elsewhere)


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
    rescue: bool = False  # no copy is left: made from the good blocks of those set aside (see ICopier)


@attrs.frozen
class DropTask:
    record: FileRecord
    server: str


def choose_drops(healthy: Iterable[Member], n: int) -> list[Member]:
    """Which ``n`` copies to drop: keep the zone spread, then the copies the
    other proxies sharing the catalog see too, then drop from the fullest."""
    remaining = list(healthy)
    out = []
    for _ in range(min(n, len(remaining))):
        zones = Counter(m.zone for m in remaining)
        victim = max(remaining, key=lambda m: (zones[m.zone] > 1, not m.up_elsewhere, -m.free(), m.id))
        remaining.remove(victim)
        out.append(victim)
    return out


def drops_for(a: Assessment) -> list[str]:
    """The copies to drop: extras beyond the wanted count, and copies on dead
    servers once the file has its count without them."""
    out = [m.id for m in choose_drops(a.healthy, a.excess)]
    if a.gone and a.have >= a.record.replicas:
        out.extend(a.gone)
    return out


def endangered_first(t: CopyTask) -> tuple:
    return (len(t.sources), -t.count, t.record.name)


def plan(records: Iterable[FileRecord], roster: Roster) -> tuple[list[CopyTask], list[DropTask]]:
    """The moves that bring every file to its wanted count; copies most endangered first."""
    copies: list[CopyTask] = []
    drops: list[DropTask] = []
    for record in records:
        a = assess(record, roster)
        if a.deficit and a.healthy:
            copies.append(CopyTask(record, a.deficit, a.healthy, record.servers))
        drops.extend(DropTask(record, sid) for sid in drops_for(a))
    copies.sort(key=endangered_first)
    return copies, drops




PAGE = 500  # queued files looked at in one step
SERVER_PAGE = 1000  # copies of a server that went, queued in one step (a server's inventory waits no longer)
SWEEP_PAGE = 1000  # files the sweep reads in one step
SWEEP_EVERY = 10.0  # seconds between the sweep's steps: a million files in under three hours
LEASE = 300.0  # a file with copies planned is not looked at again before this, unless it changes
RETRY = 10.0  # a file whose copies all failed is looked at again after this
RETARGETS = 2  # a copy that failed (its target died, say) is tried on this many other servers at most, at once
WAITERS_EVERY = 1.0  # seconds between looks at the files a REPLICAS ... WAIT waits on
LOOK_EVERY = 5.0  # seconds between looks at when the queue's next file is due: work other proxies queued or passed
SMALL_COPY = 1 << 20  # bytes: a file this size or smaller is a small one to copy...
SMALL_AT_ONCE = 16  # ...and copies of small files go this many at once (their time goes to round trips, not bytes)
KEEPS_AT_ONCE = 16  # files whose copies are told their lowered count at once (see _keep_wanted)
WAITING_RANK = 1000  # files that wait on a server come last among the due (0: not looked at yet)


def _settled(a: Assessment, roster: Roster) -> bool:
    """Nothing to do for the file, now or when a server comes back (copies
    another proxy sees up count as healthy: that proxy's sweep judges them)."""
    return not (a.gone or len(a.waiting) > a.elsewhere or a.have + a.elsewhere != a.record.replicas
                or spread_short(a, roster))


def spread_short(a: Assessment, roster: Roster) -> bool:
    """The file has its copies, all up, but over fewer zones than it could:
    they were placed while a zone was out, and a server of a zone it lacks
    is up now with room for it. One copy more (placement takes the new
    zone), then the drop of the extra one (from a zone holding two) spreads it."""
    if a.gone or a.waiting or a.have != a.record.replicas or a.have < 2:
        return False
    zones = {m.zone for m in a.healthy}
    if len(zones) >= a.have:
        return False
    return any(m.zone not in zones and m.free() >= a.record.size for m in roster.up())


class Reconciler:
    """Works through the catalog's queue of files that may need copies made
    or dropped; WAIT on REPLICAS is answered from here."""

    log = Logger()

    def __init__(self, clock: IReactorTime, catalog: IWorkCatalog, roster: Roster, copier: ICopier,
                 collect: Callable[[], None] = lambda: None, paused: Callable[[], bool] = lambda: False,
                 concurrency: int = 4, small_at_once: int = SMALL_AT_ONCE, sweep_every: float = SWEEP_EVERY) -> None:
        self.clock = clock
        self.catalog = catalog
        self.roster = roster
        self.copier = copier
        self.collect = collect  # copies dropped: delete them from the servers soon
        self.paused = paused  # while true, no moves (the catalog is being rebuilt)
        self.concurrency = concurrency  # files being copied at once
        self.small_at_once = small_at_once  # ... or this many while the next is a small file (see _start_copies)
        self.running: dict[str, defer.Deferred] = {}
        self.planned: list[CopyTask] = []  # waiting for a free slot, most endangered first
        self._planned: set[str] = set()
        self.done = 0
        self.failures: dict[str, DepositoError] = {}
        self.unrescuable: set[str] = set()  # blobs whose copies set aside do not make them whole (see _look_at)
        self.waiters: dict[str, list[tuple[int, defer.Deferred]]] = {}
        self._started = False
        self._step: defer.Deferred | None = None
        self._stepping = False
        self._again = False
        self._timer: IDelayedCall | None = None
        self._servers: dict[str, defer.Deferred] = {}  # servers whose copies are being queued
        self._requeue: set[str] = set()
        self._sweep = task.LoopingCall(self.sweep)
        self._sweep.clock = clock
        self._looks = task.LoopingCall(self.look)
        self._looks.clock = clock
        self.sweep_every = sweep_every
        self._cursor = ""

    def start(self) -> None:
        self._started = True
        self._sweep.start(self.sweep_every, now=False).addErrback(self._said, "sweeping")
        self._looks.start(LOOK_EVERY, now=False)
        self.kick()

    def stop(self, grace: float = 5.0) -> defer.Deferred:
        """Stop; fires once the work under way ends, or after ``grace``
        seconds, when what is left is cancelled (a copy cut short is an
        intent, and so garbage at the next start)."""
        self._started = False
        for loop in (self._sweep, self._looks):
            if loop.running:
                loop.stop()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        for waiters in self.waiters.values():
            for _, d in waiters:
                d.cancel()
        pending = [*self.running.values(), *self._servers.values(), *([self._step] if self._step else [])]
        done = defer.DeferredList(pending, consumeErrors=True)
        return done.addTimeout(grace, self.clock).addErrback(lambda f: f.trap(defer.TimeoutError))

    # -- the queue

    def kick(self) -> None:
        """Look at the queue now (or right after the step under way)."""
        if not self._started:
            return
        if self._stepping:
            self._again = True
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._stepping = True
        d = defer.ensureDeferred(self._step_once())
        d.addErrback(self._step_failed)
        d.addCallback(self._stepped)
        if self._stepping:
            self._step = d

    def look(self) -> defer.Deferred:
        """Step if a queued file is due: one another proxy queued, or passed
        on to the others, wakes no timer here."""
        def due(when: float | None) -> None:
            if when is not None and when <= self.clock.seconds() and not self._stepping:
                self.kick()
        return self.catalog.next_due().addCallback(due).addErrback(self._said, "looking at the queue")

    def _said(self, failure: Failure, what: str, **fields: Any) -> bool:
        """Log a failure of background work: in one line when the catalog's
        database is out of reach, or its disk full (the work is tried
        again), else with its traceback (not a call cancelled as the proxy
        stops). Whether it was that."""
        if failure.check(defer.CancelledError) and not self._started:
            return False
        if failure.check(Unavailable, NoSpace):
            self.log.warn(what + ": {why}", why=failure.getErrorMessage(), **fields)
            return True
        self.log.failure(what, failure, **fields)
        return False

    def _step_failed(self, failure: Failure) -> float:
        self._said(failure, "reconciling")  # tried again after RETRY
        return self.clock.seconds() + RETRY

    def _stepped(self, wake_at: float | None) -> None:
        self._step, self._stepping = None, False
        if not self._started:
            return
        if self._again:
            self._again = False
            wake_at = self.clock.seconds()
        if wake_at is not None:
            self._timer = self.clock.callLater(max(0.0, wake_at - self.clock.seconds()), self.kick)

    async def _step_once(self) -> float | None:
        """Look at a page of the files due; returns when to look again (None:
        when something changes)."""
        if self.paused():
            return self.clock.seconds() + 1.0  # half the copies may be unknown yet: no moves
        self._start_copies()
        if len(self.planned) >= 2 * PAGE:
            return None  # each copy that ends kicks
        now = self.clock.seconds()
        due = await self.catalog.due_work(now, PAGE)
        if due:
            await self._look_at(due, await self.catalog.records([name for name, _, _ in due]), now)
        await self.check_waiters()
        if len(due) == PAGE:
            return now
        after = await self.catalog.next_due()
        if self.waiters:  # another proxy may be making the copies waited for: look again soon
            after = min(after if after is not None else WAITING, now + WAITERS_EVERY)
        return after if after is not None and after < WAITING else None

    async def _look_at(self, due: list[tuple[str, int, int]], records: list[FileRecord | None],
                       now: float) -> None:
        """Drop what is over now; a file's copies wait until it has been
        looked at once and ranked by how endangered it is. Fresh files come
        first in the due work, so a batch queued at once (a dead server's
        files) is ranked whole before its copies start, most endangered
        first across the whole queue; files ranked already get their copies
        whatever else is queued meanwhile (a stream of changes cannot hold
        them back)."""
        outcomes: list[Outcome] = []
        drops: list[tuple[FileRecord, str]] = []
        keeps: list[tuple[int, Assessment, list[Member]]] = []  # (its outcome, the file, copies kept) of files over
        copies: list[CopyTask] = []
        held: list[str] = []  # files this proxy is copying: still its own after settling
        for (name, gen, rank), record in zip(due, records):
            ranking = rank == 0  # fresh: ranked now, its copies planned when it comes up in its rank
            if record is None:
                outcomes.append(Outcome(name, gen, None))
                continue
            a = assess(record, self.roster)
            if name in self.running or name in self._planned:  # no drops while a copy is under way
                held.append(name)
                outcomes.append(Outcome(name, gen, now + LEASE, 1 + len(a.healthy), record.replicas, a.have,
                                        a.deficit))
                continue
            dropping = drops_for(a)
            drops.extend((record, sid) for sid in dropping)
            if a.have + len(a.waiting) > record.replicas:  # over (or would be, with the servers down back)
                keeps.append((len(outcomes), a, [m for m in a.healthy if m.id not in dropping]))
            have = a.have - a.excess
            # No copy left anywhere (each found corrupt, say): its blocks may still be good
            # across the copies the servers set aside, each bad somewhere else.
            lost = not record.servers and not record.parts and record.blob not in self.unrescuable
            if a.deficit and (a.healthy or lost):
                if not ranking:
                    copies.append(CopyTask(record, a.deficit, a.healthy, record.servers) if a.healthy else
                                  CopyTask(record, 1, tuple(self.roster.up()), (), rescue=True))
                outcomes.append(Outcome(name, gen, now if ranking else now + LEASE, 1 + len(a.healthy),
                                        record.replicas, have, a.deficit))
            elif spread_short(a, self.roster):  # one copy more in a zone it lacks; the extra goes after
                if not ranking:  # (not in a zone it has: a copy there would be dropped at once)
                    covered = {m.zone for m in a.healthy}
                    copies.append(CopyTask(record, 1, a.healthy, (*record.servers, *(
                        m.id for m in self.roster.up() if m.zone in covered))))
                outcomes.append(Outcome(name, gen, now if ranking else now + LEASE, 1 + len(a.healthy),
                                        record.replicas, have, 1))
            elif a.elsewhere:  # another proxy sees copies this one cannot: left to it
                outcomes.append(Outcome(name, gen, now, 1 + a.have + a.elsewhere, record.replicas,
                                        have + a.elsewhere, 0, passed=True))
            elif a.deficit or a.waiting:  # only a server coming back, or dying, changes this
                outcomes.append(Outcome(name, gen, WAITING, WAITING_RANK, record.replicas, have, 0))
            else:
                outcomes.append(Outcome(name, gen, None))
        if keeps:
            drops = await self._keep_wanted(keeps, drops, outcomes, now)
        if drops:
            for record, sid in drops:
                self.log.info("dropping the copy of {name} on {id}", name=record.name, id=sid, event="drop")
            await self.catalog.drop_copies([(record.blob, sid, record.replicas) for record, sid in drops])
            self.collect()
        await self.catalog.settle(outcomes, held + [t.record.name for t in copies])
        self.planned = sorted(self.planned + copies, key=endangered_first)
        self._planned.update(t.record.name for t in copies)
        self._start_copies()

    async def _keep_wanted(self, keeps: list[tuple[int, Assessment, list[Member]]],
                           drops: list[tuple[FileRecord, str]], outcomes: list[Outcome],
                           now: float) -> list[tuple[FileRecord, str]]:
        """Before a file's extra copies are dropped, the copies it keeps take
        its wanted count into their metadata: a lowered count is what a
        rebuild of the catalog finds then (it wants the most any copy says).
        So do the copies of a file that is over only once its servers down
        are back (lowered meanwhile: nothing to drop yet). A file whose
        copies could not all take it keeps its extra copies, and is looked
        at again after RETRY. Returns the drops that may go."""
        async def keep(a: Assessment, kept: list[Member]) -> None:
            await self.copier.keep_wanted(a.record.blob, a.record.replicas, kept)

        few = defer.DeferredSemaphore(KEEPS_AT_ONCE)
        results: list[tuple[bool, Any]] = await defer.DeferredList(
            [few.run(keep, a, kept) for _, a, kept in keeps],
            consumeErrors=True)
        stay = set()
        for (i, a, _), (ok, failure) in zip(keeps, results):
            if not ok:
                record = a.record
                self.log.warn("the copies of {name} could not all keep its wanted count ({why}): its extra copies"
                              " stay until it is looked at again", name=record.name, why=failure.getErrorMessage())
                stay.add(record.name)
                outcomes[i] = Outcome(record.name, outcomes[i].gen, now + RETRY, 1 + a.have, record.replicas, a.have,
                                      a.excess)
        return [(record, sid) for record, sid in drops if record.name not in stay]

    def _start_copies(self) -> None:
        """Most endangered first: the next file's copies start while fewer
        than ``concurrency`` files are being copied, or fewer than
        ``small_at_once`` when it is small (a copy of a few KiB waits on
        round trips to the catalog and the servers, not on the disks)."""
        while self.planned and self._started and len(self.running) < (
                self.small_at_once if self.planned[0].record.size <= SMALL_COPY else self.concurrency):
            t = self.planned.pop(0)
            self._planned.discard(t.record.name)
            d = defer.ensureDeferred(self._copy(t))
            self.running[t.record.name] = d
            d.addErrback(self._copy_failed)  # then counts as none made
            d.addBoth(self._repaired, t.record.name)

    def _copy_failed(self, failure: Failure) -> None:
        if not failure.check(defer.CancelledError):  # cancelled: the proxy is stopping
            self._said(failure, "repair")

    def _repaired(self, made: object, name: str) -> None:
        self.running.pop(name, None)
        # Made: looked at again now (a look while it was being copied left it
        # for LEASE). Nothing came of it: later, not at once.
        self._let_go(name, self.clock.seconds() + (0.0 if made else RETRY))
        self.kick()

    def _abandon_copy(self, blob: str, server: str) -> None:
        """A copy made, or begun, that does not count: garbage (unless an
        inventory counted it meanwhile, see ICatalog.abandon_copy), and its
        intent gone, which kept the server from this file's next copies.
        With the database out of reach, tried again every RETRY seconds."""
        def failed(failure: Failure) -> None:
            if self._said(failure, "giving up the copy of {blob} on {id}", blob=blob, id=server) and self._started:
                self.clock.callLater(RETRY, self._abandon_copy, blob, server)

        self.catalog.abandon_copy(blob, server).addCallbacks(lambda _: self.collect(), failed)

    def _let_go(self, name: str, due: float) -> None:
        """Queue ``name`` again from ``due`` and let any proxy look at it.
        With the database out of reach, tried again every RETRY seconds:
        left as it is, the file would wait out its LEASE (minutes) short of
        its copies."""
        async def let_go() -> None:
            await self.catalog.enqueue([name], due)
            await self.catalog.release([name])

        def failed(failure: Failure) -> None:
            if self._said(failure, "letting go of {name}", name=name) and self._started:
                self.clock.callLater(RETRY, self._let_go, name, due)

        defer.ensureDeferred(let_go()).addCallbacks(lambda _: self.kick(), failed)

    def server_changed(self, member: Member) -> None:
        """A server came, went or died. Gone: each file with a copy on it is
        queued. Back: every file waiting for a server is due now."""
        if member.up:
            d = self.catalog.wake(self.clock.seconds())
            d.addCallback(lambda _: self.kick())
            d.addErrback(self._retry_later, member, "waking the queue")
        elif member.id in self._servers:
            self._requeue.add(member.id)
        else:
            d = self._servers[member.id] = defer.ensureDeferred(self._queue_copies_of(member.id))
            d.addErrback(self._retry_later, member, "queueing the files of {id}", id=member.id)
            d.addBoth(self._server_queued, member)

    def _retry_later(self, failure: Failure, member: Member, what: str, **fields: Any) -> None:
        """What a server's coming or going asks of the queue could not be
        done: with the database out of reach, it is done again after RETRY."""
        if self._said(failure, what, **fields) and self._started:
            self.clock.callLater(RETRY, self.server_changed, member)

    async def _queue_copies_of(self, server: str) -> None:
        """A page at a time, until every file with a copy on ``server`` is
        queued, or until it is back up (a restart): its copies count again,
        and the files not queued yet need nothing (those that lack their copy
        are found by its inventory)."""
        after: str | None = ""
        while after is not None and not self.roster.is_up(server):
            after = await self.catalog.enqueue_server(server, after, SERVER_PAGE)
            self.kick()

    def _server_queued(self, _: object, member: Member) -> None:
        del self._servers[member.id]
        if member.id in self._requeue:
            self._requeue.discard(member.id)
            self.server_changed(member)

    def sweep(self) -> defer.Deferred:
        """One page of the slow sweep through every file: queue any file
        that is not as it should be and that no event queued."""
        return defer.ensureDeferred(self._sweep_once()).addErrback(self._said, "sweeping")

    async def _sweep_once(self) -> None:
        if self.paused():
            return
        records = await self.catalog.records_after(self._cursor, SWEEP_PAGE)
        self._cursor = records[-1].name if len(records) == SWEEP_PAGE else ""
        missed = [r.name for r in records if not _settled(assess(r, self.roster), self.roster)]
        if missed:
            await self.catalog.enqueue(missed, 0.0, True)
            self.kick()

    async def _copy(self, t: CopyTask) -> int:
        """Add the task's copies; returns how many were made."""
        busy = await self.catalog.busy(t.record.blob)
        taken = [self.roster.get(s) or Member(s, "", "", 0) for s in {*t.holders, *busy}]
        made = 0
        failed: DepositoError | None = None
        tries = t.count + RETARGETS  # a failed copy goes on to another server, twice at most
        while made < t.count and tries > 0:
            tries -= 1
            try:
                target = await self.copier.copy_to_new_server(t.record, list(t.sources), taken, rescue=t.rescue)
            except CopyFailed as e:
                self._abandon_copy(t.record.blob, e.target.id)
                failed = e
                if isinstance(e.__cause__, Unrescuable):  # tried again only if a server with a copy comes back
                    self.unrescuable.add(t.record.blob)
                    self.log.error("{name} has no copy left, and the good blocks of its copies set aside as"
                                   " corrupt do not make it whole ({why})", name=t.record.name, why=str(e.__cause__))
                    break
                continue
            except (Unavailable, NoSpace) as e:
                self.log.warn("cannot add a copy of {name}: {why}", name=t.record.name, why=str(e),
                              event="repair_failed")
                self.failures[t.record.name] = Unavailable(str(e))  # what a waiting REPLICAS hears
                await self.check_waiters()
                return made
            made += 1
            try:
                counted = await self.catalog.add_copy(t.record.name, t.record.blob, target.id, self.clock.seconds())
            except Exception:  # not counted (the database out of reach): its intent would hold the server for good
                self._abandon_copy(t.record.blob, target.id)
                raise
            self.done += 1
            self.log.info("made a copy of {name} on {id}{how}", name=t.record.name, id=target.id, event="repaired",
                          how=" from the good blocks of its copies set aside as corrupt" if t.rescue else "")
            self.failures.pop(t.record.name, None)
            await self.check_waiters()
            if not counted:  # the file changed meanwhile: the copy is garbage
                self.collect()
                return made
        if made < t.count and failed is not None:  # the servers tried failed: a waiting REPLICAS hears it
            self.failures[t.record.name] = failed
            await self.check_waiters()
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

    async def check_waiters(self) -> None:
        """Answer the waits that can be answered (one lookup per file waited on)."""
        for name in list(self.waiters):
            if not self.waiters.get(name):
                self.waiters.pop(name, None)
                continue
            record = await self.catalog.lookup(name)
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
        if len(self.roster.up()) < count:  # (not the refusal before any change: this count stays set)
            return Unavailable(f"{count} copies wanted and kept as wanted, only {len(self.roster.up())} servers up"
                               " now: the copies come when servers are back")
        if not a.healthy and not a.waiting:
            return Unavailable(f"no healthy copy of {name} is left to copy from")
        if name in self.failures:
            return self.failures[name]
        return None
