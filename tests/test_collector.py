"""The garbage collector's dealings with the servers (fakes at the catalog
and blob-connection seams)."""

from __future__ import annotations

import pytest
from twisted.internet import defer, task

from deposito.depot.collector import REST, Collector
from deposito.errors import Internal
from deposito.roster import Member, Roster


class Garbage:
    """A catalog whose garbage is one copy on each server asked about."""

    def __init__(self) -> None:
        self.asked: list[list[str]] = []
        self.forgotten: list[tuple[str, str]] = []

    def garbage(self, servers: list[str], limit: int) -> defer.Deferred:
        self.asked.append(sorted(servers))
        return defer.succeed([(f"blob-{s}", s) for s in servers if (f"blob-{s}", s) not in self.forgotten])

    def forget_garbage(self, gone: list[tuple[str, str]], now: float) -> defer.Deferred:
        self.forgotten += gone
        return defer.succeed(None)

    def release_garbage(self, pairs: list[tuple[str, str]]) -> defer.Deferred:
        return defer.succeed(None)


class Client:
    def __init__(self, refuses: bool) -> None:
        self.refuses = refuses

    def delete_blobs(self, blobs: list[str]) -> defer.Deferred:
        return defer.fail(Internal("the disk cannot be written (Read-only file system)")) if self.refuses \
            else defer.succeed(None)


class Pool:
    def __init__(self, refusing: str) -> None:
        self.refusing = refusing

    async def connect(self, member: Member) -> Client:
        return Client(member.id == self.refusing)

    def release(self, client: Client) -> None:
        pass


def test_a_server_that_refuses_deletes_is_left_alone_for_a_while_and_the_others_are_not():
    clock = task.Clock()
    roster = Roster(clock)
    for sid in ("s1", "s2"):
        roster.members[sid] = Member(sid, "z", "h", 1, state="up")
    db = Garbage()
    collector = Collector(clock, db, roster, Pool(refusing="s1"), every=2.0)  # type: ignore[arg-type]
    collector.start()
    clock.advance(2.0)
    assert db.asked[0] == ["s1", "s2"] and db.forgotten == [("blob-s2", "s2")]
    for _ in range(int(REST / 2.0) - 1):
        clock.advance(2.0)
    assert all(asked == ["s2"] for asked in db.asked[1:]), db.asked  # s1 rests
    clock.advance(2.0)
    assert db.asked[-1] == ["s1", "s2"]  # then it is tried again
    collector._loop.stop()


@pytest.mark.parametrize("why", ["out of reach", "disk is full"])
def test_a_catalog_out_of_reach_is_said_once_while_it_lasts_and_collecting_goes_on_after(why):
    """Also its database's disk full (NoSpace): that was logged as a
    critical error with its traceback on every try, 600 in 20 s."""
    from twisted.logger import Logger, formatEvent

    from deposito.errors import NoSpace, Unavailable

    class Unreachable(Garbage):
        down = True

        def garbage(self, servers: list[str], limit: int) -> defer.Deferred:
            if self.down:
                if why == "out of reach":
                    return defer.fail(Unavailable("the catalog database is out of reach"))
                return defer.fail(NoSpace("the catalog database's disk is full"))
            return super().garbage(servers, limit)

    clock = task.Clock()
    roster = Roster(clock)
    roster.members["s1"] = Member("s1", "z", "h", 1, state="up")
    db = Unreachable()
    collector = Collector(clock, db, roster, Pool(refusing=""), every=2.0)  # type: ignore[arg-type]
    events: list[dict] = []
    collector.log = Logger(observer=events.append)  # type: ignore[arg-type]
    collector.start()
    for _ in range(10):
        clock.advance(2.0)
    db.down = False
    clock.advance(2.0)
    assert db.forgotten == [("blob-s1", "s1")]
    said = [formatEvent(e) for e in events]
    assert len(said) == 2 and why in said[0] and "again" in said[1], said
    collector._loop.stop()
