"""The real parts are what their interfaces say; the metered depot passes
every IDepot call through, and nothing else."""

from __future__ import annotations

import pytest
from twisted.internet import defer, task
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from zope.interface.verify import verifyClass, verifyObject

from deposito.blobstore import BlobStore
from deposito.catalog import Catalog, CatalogThread
from deposito.depot import Depot
from deposito.depot.writes import Writer
from deposito.device import Device
from deposito.errors import Unavailable
from deposito.events import MeteredDepot, Metrics
from deposito.interfaces import ICatalog, ICopier, IDepot, IDevice, IWorkCatalog
from deposito.roster import Roster
from tests.test_text_protocol import FakeDepot


def test_the_depot_and_its_catalog(tmp_path):
    """The depot's writer is also the reconciler's copier."""
    reactor = MemoryReactorClock()
    db = CatalogThread(reactor, Catalog(str(tmp_path)))
    try:
        assert verifyObject(ICatalog, db) and verifyObject(IWorkCatalog, db)
        roster = Roster(reactor)
        depot = Depot(reactor, db, roster)
        assert verifyObject(IDepot, depot)
        assert verifyClass(ICopier, Writer) and verifyObject(ICopier, depot.writer)
        assert depot.reconciler.copier is depot.writer
        assert roster.on_change == depot.member_changed and roster.on_corrupt == depot.corrupt
        assert roster.on_inventory == depot.inventories.inventory
        assert "connect" not in IDepot  # byte ranges go through read, like whole files
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

    _result(metered.read(record, Sink(), started=lambda: None))
    assert got == [b"hello"]
    _result(metered.read(record, Sink(), 1, 3))
    assert got == [b"hello", b"ell"]
    assert _result(metered.status()) == {"files": 1, "bytes": 5}
    assert _result(metered.delete("f")) == record and depot.files == {}
    value = metrics.registry.get_sample_value
    assert value("deposito_requests_total", {"command": "PUT", "via": "text", "outcome": "ok"}) == 1
    assert value("deposito_requests_total", {"command": "GET", "via": "text", "outcome": "ok"}) == 2
    assert value("deposito_received_bytes_total", {"via": "text"}) == 5
    assert value("deposito_sent_bytes_total", {"via": "text"}) == 8
    assert value("deposito_request_duration_seconds_sum", {"command": "PUT", "via": "text"}) == 2


def test_the_metered_depot_times_a_stored_puts_phases_one_after_the_other():
    depot, metrics, clock = FakeDepot(), Metrics(), task.Clock()
    metered = MeteredDepot(depot, metrics, clock, via="s3")
    clock.advance(100)
    upload = _result(metered.begin_put("f", 5, None))
    clock.advance(1)  # the client's bytes
    upload.write(b"hello")
    upload.received = 5  # as the real upload counts them
    depot.finish = defer.Deferred()
    finished = defer.ensureDeferred(metered.finish_put(upload))
    clock.advance(1.5)
    upload.copied_at = clock.seconds()  # as the writer marks it, once its servers answered
    clock.advance(0.25)  # the catalog's commit
    depot.finish.callback(None)
    assert finished.result.name == "f"
    value = metrics.registry.get_sample_value
    for phase, seconds in (("place", 0), ("body", 1), ("copies", 1.5), ("commit", 0.25)):
        assert value("deposito_put_phase_seconds_count", {"phase": phase, "via": "s3"}) == 1, phase
        assert value("deposito_put_phase_seconds_sum", {"phase": phase, "via": "s3"}) == seconds, phase
    assert value("deposito_request_duration_seconds_sum", {"command": "PUT", "via": "s3"}) == 2.75
    # one begun elsewhere (a part of a multipart upload) is timed from its finish, not in phases
    upload = _result(depot.begin_put("p", 5, None))
    upload.received, upload.copied_at = 5, clock.seconds()
    clock.advance(0.5)
    depot.finish = defer.succeed(None)
    assert _result(metered.finish_put(upload)).name == "p"
    assert value("deposito_put_phase_seconds_count", {"phase": "place", "via": "s3"}) == 1
    assert value("deposito_requests_total", {"command": "PUT", "via": "s3", "outcome": "ok"}) == 2
    # a PUT that failed is timed whole, not in phases
    upload = _result(metered.begin_put("g", 5, None))
    upload.received = 0
    depot.finish = defer.fail(Unavailable("no"))
    with pytest.raises(Unavailable):
        _result(metered.finish_put(upload))
    assert value("deposito_put_phase_seconds_count", {"phase": "commit", "via": "s3"}) == 1
    assert value("deposito_requests_total", {"command": "PUT", "via": "s3", "outcome": "unavailable"}) == 1
    # ...and aborted then (as an S3 copy does), it is not counted again
    metered.abort_put(upload)
    assert value("deposito_requests_total", {"command": "PUT", "via": "s3", "outcome": "aborted"}) is None
    upload = _result(metered.begin_put("h", 5, None))  # one the client left: aborted, counted once
    upload.received = 2
    metered.abort_put(upload)
    assert value("deposito_requests_total", {"command": "PUT", "via": "s3", "outcome": "aborted"}) == 1
    assert value("deposito_requests_total", {"command": "PUT", "via": "s3", "outcome": "unavailable"}) == 1
    assert value("deposito_received_bytes_total", {"via": "s3"}) == 5 + 5 + 0 + 2


def _result(awaitable):
    """The result of an awaitable that finishes at once."""
    results = []
    defer.ensureDeferred(awaitable).addBoth(results.append)
    assert results, "did not finish at once"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def test_the_metered_depot_counts_http_downloads_and_readers_that_left():
    depot, metrics, clock = FakeDepot(), Metrics(), task.Clock()
    depot.files["f"] = b"hello"
    metered = MeteredDepot(depot, metrics, clock, via="http")
    record = _result(metered.lookup("f"))

    class Gone:
        disconnected = True

        def write(self, data):
            pass

    _result(metered.read(record, Gone(), 2))
    value = metrics.registry.get_sample_value
    assert value("deposito_requests_total", {"command": "GET", "via": "http", "outcome": "aborted"}) == 1
    assert value("deposito_sent_bytes_total", {"via": "http"}) == 3
