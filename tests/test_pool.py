"""Connections to storage servers are reused only when clean."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import endpoints, reactor
from twisted.internet.protocol import Factory

from deposito.blobstore import BlobStore, new_blob_id
from deposito.device import Device
from deposito.pool import BlobPool
from deposito.protocols.blobclient import BlobClient
from deposito.protocols.blobserver import BlobServerFactory
from deposito.roster import Member
from tests.test_blob_protocol import settle


@pytest_twisted.inlineCallbacks
def test_clean_connections_are_reused_and_others_closed(tmp_path):
    device = Device(reactor, BlobStore(str(tmp_path)), capacity=1 << 20)
    device.start()
    port = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(BlobServerFactory(reactor, device))
    pool = BlobPool(reactor, idle_seconds=5)
    pool.start()
    member = Member("s", "z", "127.0.0.1", port.getHost().port)
    try:
        first = yield pool.connect(member)
        assert (yield first.delete_blobs([new_blob_id()])) == "OK deleted=0 absent=1"
        pool.release(first)
        assert pool.idle_count() == 1
        again = yield pool.connect(member)
        assert again is first and pool.idle_count() == 0
        # a connection with a request under way is never kept
        pending = again.delete_blobs([new_blob_id()])
        pool.release(again)
        assert pool.idle_count() == 0 and again.transport.disconnecting
        pending.addErrback(lambda f: None)
        # a refused WRITE closes the server's end: not reusable either
        third = yield pool.connect(member)
        assert third is not first
        refused = third.write_blob(new_blob_id(), 10 << 20, 1, 1, "too big")
        try:
            yield refused
        except Exception as e:
            assert "nospace" in str(e)
        pool.release(third)
        assert pool.idle_count() == 0
    finally:
        pool.stop()
        yield port.stopListening()
        yield settle()
        device.stop()


@pytest_twisted.inlineCallbacks
def test_a_connection_the_pool_did_not_open_is_closed_not_kept(tmp_path):
    device = Device(reactor, BlobStore(str(tmp_path)), capacity=1 << 20)
    device.start()
    port = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(BlobServerFactory(reactor, device))
    pool = BlobPool(reactor, idle_seconds=5)
    pool.start()
    try:
        stranger = yield endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port).connect(
            Factory.forProtocol(lambda: BlobClient(reactor)))
        yield stranger.ready
        pool.release(stranger)  # nothing could ever take it from the pool again
        assert pool.idle_count() == 0 and stranger.transport.disconnecting
    finally:
        pool.stop()
        yield port.stopListening()
        yield settle()
        device.stop()
