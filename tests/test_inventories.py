"""Servers' listings taken in by the depot's Inventories, chunk by chunk,
on a real catalog (SQLite, then PostgreSQL)."""

from __future__ import annotations

from twisted.internet import defer, task

from deposito.depot.inventories import Inventories
from deposito.errors import NoSpace
from deposito.roster import Member


class CatalogNow:
    """The real catalog, called at once (no thread)."""

    def __init__(self, cat) -> None:
        self.cat = cat

    def reconcile_inventory(self, server, present, lo, hi, before, held_only=False):
        return defer.succeed(self.cat.reconcile_inventory(server, present, lo, hi, before, held_only))


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
