"""The depot's start on a catalog that cannot answer yet: it is asked
again until it does (a database down, or the catalog's disk full)."""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock

from deposito.catalog import Catalog, CatalogThread
from deposito.depot import Depot
from deposito.errors import NoSpace, Unavailable
from deposito.roster import Roster


def test_a_catalog_unavailable_or_full_at_the_start_is_asked_again_until_it_answers(tmp_path):
    reactor = MemoryReactorClock()
    db = CatalogThread(reactor, Catalog(str(tmp_path)))
    try:
        depot = Depot(reactor, db, Roster(reactor))
        answers = [NoSpace("the catalog's disk is full"), NoSpace("the catalog's disk is full"),
                   Unavailable("the catalog database is out of reach"), 7]
        asked: list[int] = []

        def call() -> defer.Deferred[int]:
            asked.append(1)
            answer = answers.pop(0)
            return defer.fail(answer) if isinstance(answer, Exception) else defer.succeed(answer)

        got: list[object] = []
        defer.ensureDeferred(depot._patiently(call)).addBoth(got.append)
        for _ in range(3):
            assert got == []
            reactor.advance(depot.retry_every)
        assert got == [7] and len(asked) == 4
    finally:
        db.stop()
