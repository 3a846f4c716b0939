"""The storage servers the proxy knows, and which of them are up."""

from __future__ import annotations

from typing import Any, Callable, Iterable

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from deposito.errors import Denied


@attrs.define
class Member:
    """One storage server as the proxy sees it."""

    id: str
    zone: str
    host: str
    port: int
    capacity: int = 0
    used: int = 0
    blobs: int = 0
    state: str = "down"
    last_seen: float = 0.0
    reserved: int = 0
    passed_over_until: float = 0.0  # it left an upload unanswered: new copies go elsewhere until then, if they can
    up_elsewhere: bool = False  # up for another proxy sharing the catalog, at its last beat
    local: str | None = None  # its local port, "@name" (deposito.protocols.handoff), while it may be on this host
    local_key: str | None = attrs.field(default=None, repr=False)
    adopted: bool = False  # its listing is taken in, not judged (see deposito.depot.rebuilder)
    serves: str | None = None  # the other catalog it served when it joined (a lost one, if taken in)
    connection: Any = attrs.field(default=None, repr=False, eq=False)

    @property
    def up(self) -> bool:
        return self.state == "up"

    def free(self) -> int:
        return max(0, self.capacity - self.used - self.reserved)

    def reserve(self, size: int) -> None:
        """Claim room for a copy about to be written here, so placement sees it taken."""
        self.reserved += size

    def unreserve(self, size: int) -> None:
        """Give back what :meth:`reserve` claimed, the copy written or not."""
        self.reserved -= size

    def stored(self, size: int) -> None:
        """A copy of ``size`` bytes is durable here: count it until the next
        heartbeat brings the server's own figure."""
        self.used += size


# A server another proxy saw up this many seconds ago at most is up for it
# (each proxy tells what it sees every few seconds: see deposito.depot.liveness).
ELSEWHERE = 10.0


class Roster:
    """Joins, heartbeats and losses of storage servers."""

    log = Logger()

    def __init__(self, clock: IReactorTime, on_change: Callable[[Member], None] = lambda m: None,
                 dead_after: float = 300.0) -> None:
        self.clock = clock
        self.members: dict[str, Member] = {}
        self.on_change = on_change
        self.dead_after = dead_after
        # (member, entries, since, more): one chunk of a server's listing;
        # returns a Deferred that fires once the chunk is taken in (or None)
        self.on_inventory: Callable[[Member, list, float, bool], Deferred | None] = \
            lambda m, entries, since, more: None
        self.on_corrupt: Callable[[Member, str, str], None] = lambda m, blob, why: None
        self.closing = False  # the proxy is stopping (see close)

    def close(self) -> None:
        """The proxy is stopping: the servers' connections close with it, and
        none of them is taken for down (nor said to be, nor its files queued)."""
        self.closing = True

    def restore(self, members: Iterable[Member]) -> None:
        """Servers known before a restart: down until they join again (their
        silence counts from now, so a restart alone kills no server). One
        that joined while the catalog was being read stays as it is."""
        for m in members:
            if m.id in self.members:
                continue
            m.state = "down"
            m.connection = None
            m.last_seen = self.clock.seconds()
            self.members[m.id] = m

    def check(self) -> None:
        """Servers silent past ``dead_after`` are dead: their copies are made again elsewhere."""
        now = self.clock.seconds()
        for m in self.members.values():
            if m.state == "down" and now - m.last_seen >= self.dead_after:
                m.state = "dead"
                self.log.warn("storage server {id} is dead (silent {seconds:.0f}s): its copies will be made again",
                              id=m.id, seconds=now - m.last_seen, event="dead")
                self.on_change(m)

    def seen_elsewhere(self, sightings: Iterable[tuple[str, float]]) -> None:
        """Other proxies saw these servers (id, seconds ago): a server this
        proxy cannot reach is not dead while another proxy sees it. One
        declared dead here that another proxy sees again waits instead."""
        now = self.clock.seconds()
        sightings = list(sightings)
        fresh = {member_id for member_id, age in sightings if age < ELSEWHERE}
        for member in self.members.values():
            member.up_elsewhere = member.id in fresh
        for member_id, age in sightings:
            m = self.members.get(member_id)
            if m is None or m.up:
                continue
            m.last_seen = max(m.last_seen, now - age)
            if m.state == "dead" and now - m.last_seen < self.dead_after:
                m.state = "down"
                self.log.warn("storage server {id} is up for another proxy: its copies wait", id=m.id, event="down")
                self.on_change(m)

    def inventory(self, member_id: str, entries: list, since: float, more: bool = False) -> Deferred | None:
        """One chunk of a server's listing (``more``: chunks follow), listed
        after ``since``; what it returns fires once the chunk is taken in."""
        return self.on_inventory(self.members[member_id], entries, since, more)

    def corrupt(self, member_id: str, blob: str, why: str) -> None:
        self.log.warn("storage server {id} found blob {blob} corrupt: {why}", id=member_id, blob=blob, why=why,
                      event="corrupt")
        self.on_corrupt(self.members[member_id], blob, why)

    def join(self, member_id: str, zone: str, host: str, port: int,
             capacity: int, used: int, blobs: int, connection: Any,
             local: tuple[str, str] | None = None) -> Member:
        m = self.members.get(member_id)
        if m is not None and m.connection is not None and m.connection is not connection:
            raise Denied(f"a server named {member_id} is already joined")
        if m is None:
            m = self.members[member_id] = Member(member_id, zone, host, port)
        m.zone, m.host, m.port = zone, host, port
        m.capacity, m.used, m.blobs = capacity, used, blobs
        m.local, m.local_key = local if local is not None else (None, None)
        m.state, m.connection, m.last_seen = "up", connection, self.clock.seconds()
        self.log.info("storage server {id} joined from {host}:{port} (zone {zone})",
                      id=member_id, host=host, port=port, zone=zone, event="join")
        self.on_change(m)
        return m

    def heartbeat(self, member_id: str, capacity: int, used: int, blobs: int) -> None:
        m = self.members[member_id]
        m.capacity, m.used, m.blobs = capacity, used, blobs
        m.last_seen = self.clock.seconds()

    def lost(self, member_id: str, connection: Any) -> None:
        m = self.members.get(member_id)
        if m is None or m.connection is not connection or self.closing:
            return
        m.connection = None
        m.state = "down"
        m.last_seen = self.clock.seconds()
        self.log.warn("storage server {id} is down", id=member_id, event="down")
        self.on_change(m)

    def up(self) -> list[Member]:
        return [m for m in self.members.values() if m.up]

    def get(self, member_id: str) -> Member | None:
        return self.members.get(member_id)

    def is_up(self, member_id: str) -> bool:
        m = self.members.get(member_id)
        return m is not None and m.up
