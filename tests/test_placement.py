from __future__ import annotations

import pytest

from deposito.errors import NoSpace, Unavailable
from deposito.placement import place
from deposito.roster import Member


def member(id, zone, free, state="up"):
    return Member(id, zone, "127.0.0.1", 1, capacity=free, used=0, state=state)


def test_distinct_zones_before_free_space():
    ms = [member("a", "z1", 100), member("b", "z1", 90), member("c", "z2", 10), member("d", "z3", 5)]
    assert [m.id for m in place(ms, 3, 1)] == ["a", "c", "d"]


def test_then_the_roomiest_in_used_zones():
    ms = [member("a", "z1", 100), member("b", "z1", 90), member("c", "z1", 80), member("d", "z2", 5)]
    assert [m.id for m in place(ms, 3, 1)] == ["a", "d", "b"]


def test_down_and_taken_servers_are_never_chosen():
    ms = [member("a", "z1", 100, "down"), member("b", "z2", 90), member("c", "z3", 80)]
    chosen = place(ms, 1, 1, taken=[ms[1]])
    assert [m.id for m in chosen] == ["c"]


def test_a_copy_replacing_a_dead_servers_goes_back_to_its_zone():
    """The zone of a dead server's copy (being replaced) is not taken for
    covered: the new copy went to the zone of the copy that stays, the
    roomier, and the file was on one zone for good."""
    ms = [member("s0", "za", 100, "dead"), member("s1", "za", 10), member("s2", "zb", 50), member("s3", "zb", 200)]
    assert [m.id for m in place(ms, 1, 1, taken=[ms[0], ms[3]])] == ["s1"]
    ms[0].state = "down"  # down, not dead: its copy is waited for, and counts
    assert [m.id for m in place(ms, 1, 1, taken=[ms[0], ms[3]])] == ["s2"]


def test_too_few_up_is_unavailable_too_little_room_is_nospace():
    ms = [member("a", "z1", 100), member("b", "z2", 10)]
    with pytest.raises(Unavailable):
        place(ms, 3, 1)
    with pytest.raises(NoSpace):
        place(ms, 2, 50)


def test_reservations_count_against_free_space():
    a = member("a", "z1", 100)
    a.reserved = 60
    with pytest.raises(NoSpace):
        place([a], 1, 50)
