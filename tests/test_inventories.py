"""Servers' listings taken in by the depot's Inventories, chunk by chunk,
on a real catalog (SQLite, then PostgreSQL)."""

from __future__ import annotations

import pytest
from twisted.internet import defer, error, task
from twisted.logger import Logger, LogLevel, formatEvent

from deposito.depot.inventories import Inventories
from deposito.errors import BadCommand, NoSpace, NotFound
from deposito.roster import Member


class CatalogNow:
    """The real catalog, called at once (no thread)."""

    def __init__(self, cat) -> None:
        self.cat = cat

    def reconcile_inventory(self, server, present, lo, hi, before, held_only=False):
        return defer.succeed(self.cat.reconcile_inventory(server, present, lo, hi, before, held_only))

    def judge_unknown(self, server, blobs, before):
        return defer.succeed(self.cat.judge_unknown(server, blobs, before))


class FullOnce:
    """A rebuild whose catalog's disk is full for a moment: the last chunk's first taking in fails."""

    rebuilding = True

    def __init__(self) -> None:
        self.tries = 0

    def take(self, member, entries, more):
        self.tries += 1
        if not more and self.tries == 3:
            return defer.fail(NoSpace("the catalog's disk is full"))
        return defer.succeed(None)


def entries(*numbers: int) -> list:
    return [(f"{n:032x}", 1, 10, "f" * 64, 2, "f", "") for n in numbers]


def test_a_chunk_handed_again_while_taken_in_is_judged_over_its_own_range_again(catalogs):
    """A kept catalog (a backup put back, --rebuild): s1 holds b1..b6, all
    counted. The listing's last chunk fails to be taken in once (NoSpace)
    and is handed again: judged over the whole range with only its own
    blobs, it made every older copy of s1 stop counting (have=0, reads
    failing until the server listed again, a day later)."""
    cat = catalogs.new()
    for i in range(1, 7):
        v = cat.begin_upload(f"f{i}", f"{i:032x}", ["s1"])
        assert cat.commit(f"f{i}", v, f"{i:032x}", 1, "x", 1, ["s1"], 0.0)
    cat.mark_adopting("s1", True)
    inventories = Inventories(task.Clock(), CatalogNow(cat), collector=None, rebuilder=FullOnce(),  # type: ignore[arg-type]
                              repair=lambda: None)
    member = Member("s1", "z", "h", 1)
    member.connection = object()
    inventories.inventory(member, entries(1, 2), 10_000.0, True)
    inventories.inventory(member, entries(3, 4), 10_000.0, True)
    failed: list = []
    inventories.inventory(member, entries(5, 6), 10_000.0, False).addErrback(failed.append)
    assert failed and failed[0].check(NoSpace)
    inventories.inventory(member, entries(5, 6), 10_000.0, False)  # handed again (MemberProtocol._take)
    assert [len(cat.lookup(f"f{i}").servers) for i in range(1, 7)] == [1] * 6


@pytest.fixture
def cat(catalogs):
    return catalogs.new()


class NotRebuilding:
    rebuilding = False


class Client:
    def __init__(self, answers) -> None:
        self.answers = answers
        self.asked = 0

    def meta(self, blob):
        self.asked += 1
        a = self.answers(blob)
        return defer.fail(a) if isinstance(a, Exception) else defer.succeed(a)


class Pool:
    def __init__(self, client=None, refuse=False) -> None:
        self.client, self.refuse, self.released = client, refuse, 0

    async def connect(self, member):
        if self.refuse:
            raise error.ConnectionRefusedError("gone")
        return self.client

    def release(self, client):
        self.released += 1


class Collector:
    def __init__(self, pool) -> None:
        self.pool = pool

    def kick(self):
        pass


def setup(cat, pool):
    events: list = []
    inv = Inventories(task.Clock(), CatalogNow(cat), Collector(pool), NotRebuilding(),  # type: ignore[arg-type]
                      repair=lambda: None)
    inv.log = Logger(observer=events.append)
    member = Member("s1", "z", "h", 1)
    member.connection = object()
    return inv, member, events


def listed(*blobs):
    return [(b, 1, 10, "f" * 64, 2, "f", "") for b in blobs]


def test_a_server_too_old_to_say_what_its_blobs_are_has_none_judged(cat):
    """A catalog older than the blobs (a backup put back), a server of an
    older release (META: ERR badcommand): the blob of version 2 (the catalog
    gave out 1) was deleted at once; nothing is judged now."""
    v = cat.begin_upload("f", "b1", ["s1"])
    cat.commit("f", v, "b1", 1, "x", 1, ["s1"], 0.0)
    inv, member, events = setup(cat, Pool(Client(lambda b: BadCommand("unknown command 'META'"))))
    inv.inventory(member, listed("b1", "b2"), 10_000.0, False)
    assert cat.garbage(["s1"], 10) == []
    assert any("older release" in formatEvent(e) for e in events)


def test_a_blob_of_a_version_never_given_out_deleted_for_its_age_is_said_as_an_error(cat):
    """A backup of 30 days put back without --rebuild: a file written 10 days
    ago (version 2) is deleted (README), and the operator is told so at
    ERROR (it was an info line among forgotten copies)."""
    v = cat.begin_upload("f", "b1", ["s1"])
    cat.commit("f", v, "b1", 1, "x", 1, ["s1"], 0.0)
    inv, member, events = setup(cat, Pool(Client(lambda b: ("f", 2, 10 * 86400))))
    inv.inventory(member, listed("b1", "b2"), 10_000.0, False)
    assert cat.garbage(["s1"], 10) == [("b2", "s1")]
    errors = [formatEvent(e) for e in events if e["log_level"] >= LogLevel.error]
    assert len(errors) == 1 and "written more than 7 days ago: they were deleted" in errors[0], errors


def test_a_server_gone_before_it_is_asked_what_its_blobs_are_is_a_warning(cat):
    v = cat.begin_upload("f", "b1", ["s1"])
    cat.commit("f", v, "b1", 1, "x", 1, ["s1"], 0.0)
    inv, member, events = setup(cat, Pool(refuse=True))
    inv.inventory(member, listed("b1", "b2"), 10_000.0, False)
    tracebacks = [e for e in events if "log_failure" in e]
    assert not tracebacks, [e["log_format"] for e in tracebacks]


def test_a_blob_of_a_version_never_given_out_is_left_alone_and_said(cat):
    v = cat.begin_upload("f", "b1", ["s1"])
    cat.commit("f", v, "b1", 1, "x", 1, ["s1"], 0.0)
    inv, member, events = setup(cat, Pool(Client(lambda b: ("f", 2, 60))))
    inv.inventory(member, listed("b1", "b2"), 10_000.0, False)
    assert cat.garbage(["s1"], 10) == []
    assert [e for e in events if e["log_level"] == LogLevel.error]


def test_a_blob_not_there_when_asked_is_garbage_and_the_rest_judged(cat):
    v = cat.begin_upload("f", "b1", ["s1"])
    cat.commit("f", v, "b1", 1, "x", 1, ["s1"], 0.0)
    inv, member, events = setup(cat, Pool(Client(lambda b: NotFound("x") if b == "b2" else ("f", 5, 60))))
    inv.inventory(member, listed("b1", "b2", "b3"), 10_000.0, False)
    assert cat.garbage(["s1"], 10) == [("b2", "s1")]


def test_a_server_lost_while_asked_warns_once_and_has_nothing_judged(cat):
    from deposito.protocols.blobwire import ConnectionLost
    v = cat.begin_upload("f", "b1", ["s1"])
    cat.commit("f", v, "b1", 1, "x", 1, ["s1"], 0.0)
    client = Client(lambda b: ConnectionLost("storage server connection lost") if b == "b3" else ("f", 1, 60))
    pool = Pool(client)
    inv, member, events = setup(cat, pool)
    inv.inventory(member, listed("b1", "b2", "b3", "b4"), 10_000.0, False)
    assert cat.garbage(["s1"], 10) == []  # nothing judged (b2 would have been garbage)
    assert pool.released == 1
    assert not [e for e in events if "log_failure" in e]
    assert len([e for e in events if e["log_level"] == LogLevel.warn]) == 1
