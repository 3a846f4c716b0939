"""The reconciler's decisions, on plain data."""

from __future__ import annotations

from twisted.internet import task

from deposito.catalog import FileRecord
from deposito.reconciler import assess, choose_drops, plan
from deposito.roster import Member, Roster


def roster(*members):
    r = Roster(task.Clock())
    for m in members:
        r.members[m.id] = m
    return r


def m(id, zone="z", state="up", used=0, capacity=100):
    return Member(id, zone, "h", 1, capacity=capacity, used=used, state=state)


def rec(name, replicas, *servers):
    return FileRecord(name, 1, name * 32, 10, "x", replicas, tuple(servers))


def test_under_replicated_files_get_copies_most_endangered_first():
    r = roster(m("a", "z1"), m("b", "z2"), m("c", "z3"), m("d", "z4"))
    copies, drops = plan([rec("x", 3, "a", "b"), rec("y", 3, "c")], r)
    assert [(t.record.name, t.count) for t in copies] == [("y", 2), ("x", 1)]
    assert drops == []
    assert {s.id for s in copies[1].sources} == {"a", "b"}


def test_copies_on_down_servers_wait_copies_on_dead_servers_are_replaced():
    r = roster(m("a"), m("b", state="down"), m("c", state="dead"), m("d"))
    assert plan([rec("x", 2, "a", "b")], r) == ([], [])
    copies, drops = plan([rec("x", 2, "a", "c")], r)
    assert [(t.count, t.holders) for t in copies] == [(1, ("a", "c"))]
    a = assess(rec("x", 2, "a", "b", "c"), r)
    assert (a.have, [w.id for w in a.waiting], a.gone, a.deficit) == (1, ["b"], ("c",), 0)


def test_once_replaced_copies_on_dead_servers_are_forgotten():
    r = roster(m("a"), m("b"), m("c", state="dead"))
    copies, drops = plan([rec("x", 2, "a", "b", "c")], r)
    assert copies == [] and [(d.server) for d in drops] == ["c"]


def test_no_healthy_copy_means_nothing_to_copy_from():
    r = roster(m("a", state="dead"), m("b"))
    assert plan([rec("x", 2, "a")], r) == ([], [])


def test_extras_keep_the_zone_spread_and_go_from_the_fullest():
    members = [m("a", "z1", used=10), m("b", "z1", used=50), m("c", "z2", used=90), m("d", "z3", used=0)]
    assert [x.id for x in choose_drops(members, 1)] == ["b"]  # z1 has two; b is fuller
    assert [x.id for x in choose_drops(members, 2)] == ["b", "c"]
    # another proxy sees a, c and d but not b (cut off from it): b still goes first, being where
    # only this proxy can read it; with a and b both seen elsewhere, the fuller one goes
    for x in members:
        x.up_elsewhere = x.id != "b"
    assert [x.id for x in choose_drops(members, 1)] == ["b"]
    members[0].up_elsewhere, members[1].up_elsewhere = False, True
    assert [x.id for x in choose_drops(members, 1)] == ["a"]  # a is emptier, but only this proxy sees it
    for x in members:
        x.up_elsewhere = False
    r = roster(*members)
    copies, drops = plan([rec("x", 2, "a", "b", "c", "d")], r)
    assert copies == [] and sorted(d.server for d in drops) == ["b", "c"]
