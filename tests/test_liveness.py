"""This proxy among the others on its catalog: the lease renewed, other
proxies' sightings of servers folded into the roster, a silent proxy's
work handed over (deposito.depot.liveness, with the catalog's answers given
by the test)."""

from __future__ import annotations

from twisted.internet import defer, task

from deposito.catalog.coherence import TRUST
from deposito.catalog.operations import Beat
from deposito.depot.liveness import Liveness
from deposito.errors import NoSpace, Unavailable
from deposito.roster import Member, Roster


class Beats:
    """The catalog's beat and servers, answered as the test says."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, float]] = []  # what the other proxies saw
        self.retired = 0
        self.calls: list[tuple[list[str], float, bool]] = []
        self.down = False
        self.full = False
        self.rows = [("s9", "z9", "h", 9, 100, 0, 0)]
        self.alone = False  # no other proxy's row
        self.trusted: list[float] = []  # the trust given after each beat that found this proxy alone
        self.views: list[list[str]] = []  # the other proxies each beat found
        self.rebuilding: list[bool] = []  # what each beat said of this proxy
        self.elsewhere = False  # another proxy rebuilds the catalog on request

    def beat(self, up, now, lease, hand_over, rebuilding=False):
        self.calls.append((sorted(up), now, hand_over))
        self.rebuilding.append(rebuilding)
        if self.down:
            return defer.fail(Unavailable("the catalog database is out of reach"))
        if self.full:
            return defer.fail(NoSpace("the catalog's disk is full"))
        retired, self.retired = self.retired, 0
        return defer.succeed(Beat(list(self.seen), retired, 2 * retired, [] if self.alone else ["p2"], self.elsewhere))

    def trust(self, until):
        self.trusted.append(until)

    def seen_proxies(self, others, began):
        self.views.append(list(others))

    def servers(self):
        return defer.succeed(self.rows)


def setup(lease: float = 8.0, dead_after: float = 10.0):
    clock = task.Clock()
    roster = Roster(clock, dead_after=dead_after)
    roster.members["s1"] = Member("s1", "z1", "h", 1, state="up")
    roster.members["s2"] = Member("s2", "z2", "h", 2, state="down")
    db = Beats()
    handed: list[int] = []
    live = Liveness(clock, db, roster, lease, handed_over=lambda: handed.append(1))
    return clock, roster, db, live, handed


def test_a_server_another_proxy_sees_is_not_declared_dead_here():
    clock, roster, db, live, _ = setup()
    live.start()
    db.seen = [("s2", 0.5)]
    for _ in range(30):  # 30 s: three times dead_after, silent to this proxy all along
        clock.advance(1.0)
        roster.check()
    assert roster.members["s2"].state == "down" and roster.members["s2"].up_elsewhere
    assert db.calls[-1][0] == ["s1"]  # it tells the others what it sees itself
    db.seen = [("s2", 12.0)]  # the proxy that saw it has not told for 12 s: not up for it now
    clock.advance(2.0)
    assert not roster.members["s2"].up_elsewhere
    db.seen = []  # no proxy sees it any more: dead once dead_after has passed
    clock.advance(7.0)
    roster.check()
    assert roster.members["s2"].state == "down"
    clock.advance(2.0)
    roster.check()
    assert roster.members["s2"].state == "dead"
    db.seen = [("s2", 0.0)]  # back for another proxy: its copies wait again
    clock.advance(2.0)
    assert roster.members["s2"].state == "down"
    live.stop()


def test_a_server_known_only_to_another_proxy_is_taken_in_as_down():
    clock, roster, db, live, _ = setup()
    db.seen = [("s9", 1.0)]
    live.start()
    assert roster.members["s9"].state == "down" and roster.members["s9"].zone == "z9"
    live.stop()


def test_silent_proxies_are_retired_only_after_a_recent_beat_of_its_own():
    clock, roster, db, live, handed = setup(lease=8.0)
    live.start()  # the first beat: not yet
    clock.advance(live.every)
    assert [hand for _, _, hand in db.calls] == [False, True]
    db.down = True  # the database is out of reach for a while
    clock.advance(30.0)
    db.down = False
    clock.advance(live.every)
    assert db.calls[-1][2] is False  # right after an outage every proxy looks silent: none retired
    db.retired = 1
    clock.advance(live.every)
    assert db.calls[-1][2] is True and handed == [1]
    live.stop()


def test_a_proxy_alone_is_trusted_for_a_while_after_each_beat():
    """A beat that finds no other proxy trusts the records kept for TRUST
    seconds from when it began (a monotonic time); one that finds another, not."""
    import time

    clock, roster, db, live, _ = setup()
    before = time.monotonic()
    live.start()
    assert db.trusted == []
    db.alone = True
    clock.advance(live.every)
    assert len(db.trusted) == 1 and before + TRUST <= db.trusted[0] <= time.monotonic() + TRUST
    assert live.every < TRUST  # the next beat comes before the trust runs out
    db.alone = False
    clock.advance(live.every)
    assert len(db.trusted) == 1
    live.stop()


def test_each_beat_says_whether_this_proxy_rebuilds_and_hears_whether_another_does():
    clock, roster, db, _, _ = setup()
    mine = [True]
    live = Liveness(clock, db, roster, 8.0, handed_over=lambda: None, rebuilding=lambda: mine[0])
    live.start()
    assert db.rebuilding == [True] and not live.rebuilt_elsewhere
    mine[0], db.elsewhere = False, True
    clock.advance(live.every)
    assert db.rebuilding == [True, False] and live.rebuilt_elsewhere
    db.down = True  # a beat that fails changes nothing
    clock.advance(live.every)
    assert live.rebuilt_elsewhere
    db.down, db.elsewhere = False, False
    clock.advance(live.every)
    assert not live.rebuilt_elsewhere
    live.stop()


def test_a_catalog_with_a_full_disk_is_said_once_and_the_beats_go_on():
    from twisted.logger import globalLogPublisher

    said: list[dict] = []
    globalLogPublisher.addObserver(said.append)
    try:
        clock, roster, db, live, handed = setup(lease=8.0)
        live.start()
        db.full = True
        for _ in range(5):
            clock.advance(live.every)
        db.full = False
        clock.advance(live.every)
        live.stop()
    finally:
        globalLogPublisher.removeObserver(said.append)
    told = [e for e in said if e.get("log_namespace", "").endswith("Liveness")]
    assert [e["log_level"].name for e in told] == ["warn", "info"], told
    assert "disk is full" in told[0]["why"] and not any(e.get("log_failure") for e in told)
    assert len(db.calls) == 7  # every beat tried
