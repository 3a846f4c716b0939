"""The real parts are what their interfaces say; the metered depot passes
every IDepot call through, and nothing else."""

from __future__ import annotations

from twisted.internet import defer, task
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from zope.interface.verify import verifyClass, verifyObject

from deposito.blobstore import BlobStore
from deposito.catalog import Catalog, CatalogThread
from deposito.depot import Depot
from deposito.device import Device
from deposito.events import MeteredDepot, Metrics
from deposito.interfaces import ICatalog, ICopier, IDepot, IDevice, IWorkCatalog
from deposito.roster import Roster
from tests.test_text_protocol import FakeDepot


def test_the_depot_and_its_catalog(tmp_path):
    """The depot is also the reconciler's copier."""
    reactor = MemoryReactorClock()
    db = CatalogThread(reactor, Catalog(str(tmp_path)))
    try:
        assert verifyObject(ICatalog, db) and verifyObject(IWorkCatalog, db)
        depot = Depot(reactor, db, Roster(reactor))
        assert verifyObject(IDepot, depot) and verifyObject(ICopier, depot)
    finally:
        db.stop()


def test_the_device(tmp_path):
    device = Device(MemoryReactorClock(), BlobStore(str(tmp_path)), capacity=1 << 20)
    assert verifyObject(IDevice, device)
    assert device.room() >= device.used == 0


def test_the_metered_depot_declares_every_call_and_forwards_nothing_else():
    assert verifyClass(IDepot, MeteredDepot)
    assert "__getattr__" not in vars(MeteredDepot)
    depot = FakeDepot()
    metered = MeteredDepot(depot, Metrics(), task.Clock())
    assert verifyObject(IDepot, metered)
    assert not metered.closed_for_rebuild
    depot.closed_for_rebuild = True
    assert metered.closed_for_rebuild
    assert not hasattr(metered, "files")  # the fake's own state is not the depot's interface
    assert metered.servers() == [depot.member]


def test_the_metered_depot_counts_puts_and_gets_and_passes_the_rest_through():
    depot, metrics, clock = FakeDepot(), Metrics(), task.Clock()
    metered = MeteredDepot(depot, metrics, clock)

    upload = _result(metered.begin_put("f", 5, None))
    upload.write(b"hello")
    upload.received = 5  # as the real upload counts them
    clock.advance(2)
    record = _result(metered.finish_put(upload))
    assert record.name == "f" and depot.files == {"f": b"hello"}
    assert _result(metered.lookup("f")) == record and metered.healthy(record) == [depot.member]
    got = []

    class Sink:
        def write(self, data):
            got.append(data)

    _result(metered.read(record, Sink(), lambda: None))
    assert got == [b"hello"]
    assert _result(metered.status()) == {"files": 1, "bytes": 5}
    assert _result(metered.delete("f")) == record and depot.files == {}
    value = metrics.registry.get_sample_value
    assert value("deposito_requests_total", {"command": "PUT", "via": "text", "outcome": "ok"}) == 1
    assert value("deposito_requests_total", {"command": "GET", "via": "text", "outcome": "ok"}) == 1
    assert value("deposito_received_bytes_total", {"via": "text"}) == 5
    assert value("deposito_sent_bytes_total", {"via": "text"}) == 5
    assert value("deposito_request_duration_seconds_sum", {"command": "PUT", "via": "text"}) == 2


def _result(awaitable):
    """The result of an awaitable that finishes at once."""
    results = []
    defer.ensureDeferred(awaitable).addBoth(results.append)
    assert results, "did not finish at once"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]
