"""A storage server serves one catalog: the decision, the record on disk, and
what the server does with each proxy's welcome (StringTransport, Clock)."""

from __future__ import annotations

import pytest
from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent

from deposito.protocols.cluster import JoinProtocol
from deposito.servedcatalog import ServedCatalog, Verdict, judge
from tests.test_storage_node import Device, blob

SERVE, RECORD, REFUSE = Verdict.SERVE, Verdict.RECORD, Verdict.REFUSE


@pytest.mark.parametrize("recorded, offered, rebuilding, joined_to_recorded, verdict", [
    (None, "A", False, False, RECORD),  # the first catalog to welcome this server
    (None, "A", True, False, RECORD),
    ("A", "A", False, True, SERVE),
    ("A", "A", True, False, SERVE),
    ("A", "B", False, False, REFUSE),  # another catalog
    ("A", "B", False, True, REFUSE),
    ("A", "B", True, True, REFUSE),  # rebuilding, but a proxy of A is joined: A is not lost
    ("A", "B", True, False, RECORD),  # rebuilding a lost catalog from the servers
    ("A", None, False, True, SERVE),  # a proxy older than catalog ids
    (None, None, True, False, SERVE),
])
def test_judge(recorded, offered, rebuilding, joined_to_recorded, verdict):
    assert judge(recorded, offered, rebuilding, joined_to_recorded) is verdict


def test_the_catalog_id_is_kept_across_restarts_and_a_damaged_record_is_refused(tmp_path):
    served = ServedCatalog(str(tmp_path))
    assert served.id is None and not (tmp_path / "catalog-id").exists()
    served.record("a" * 32)
    assert ServedCatalog(str(tmp_path)).id == "a" * 32
    assert [p.name for p in tmp_path.iterdir()] == ["catalog-id"]  # no temp file left
    (tmp_path / "catalog-id").write_text("not an id\n")
    with pytest.raises(ValueError, match="catalog-id holds no catalog id"):
        ServedCatalog(str(tmp_path))


class Proxy:
    """One proxy's connection to the node, on a StringTransport."""

    def __init__(self, node, clock, port):
        self.proto = JoinProtocol(node, clock)
        self.tr = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", port))
        self.proto.makeConnection(self.tr)
        self.tr.clear()

    def welcome(self, catalog=None, listing="ids"):
        field = f" catalog={catalog}" if catalog is not None else ""
        self.proto.dataReceived(f"OK welcome heartbeat=1.0 listing={listing}{field}\r\n".encode())

    @property
    def served(self):
        """Listed to and heartbeating: the connection is kept."""
        return self.proto.joined and not self.tr.disconnecting

    def lose(self):
        self.proto.connectionLost(None)


def node_in(data):
    from deposito.storage import StorageNode

    return StorageNode(Device([blob(1)]), "s1", "z1", None, None, ServedCatalog(str(data)))


def test_the_first_catalog_is_served_and_recorded_and_another_is_refused_without_a_word(tmp_path):
    clock = task.Clock()
    node = node_in(tmp_path)
    a = Proxy(node, clock, 7001)
    a.welcome("A")
    assert a.served and a.tr.value().startswith(b"LISTING\r\n")
    assert (tmp_path / "catalog-id").read_text() == "A\n"
    again = Proxy(node, clock, 7003)  # another proxy of the same catalog
    again.welcome("A")
    assert again.served
    b = Proxy(node, clock, 7002)
    with capturedLogs() as events:
        b.welcome("B", listing="full")  # rebuilding, but proxies of A are joined
    assert not b.served and b.tr.disconnecting and b.tr.value() == b""
    [error] = [formatEvent(e) for e in events if e["log_level"].name == "error"]
    assert "127.0.0.1:7002" in error and "catalog B" in error and "catalog A" in error
    b.lose()
    clock.advance(5)
    assert b.tr.value() == b""  # no heartbeat either
    assert node.connections == [a.proto, again.proto]
    assert node_in(tmp_path).served.id == "A"  # and after a restart
    for p in (a, again):
        p.lose()


def test_a_proxy_rebuilding_its_catalog_is_served_once_no_proxy_of_the_recorded_one_is_joined(tmp_path):
    clock = task.Clock()
    node = node_in(tmp_path)
    a = Proxy(node, clock, 7001)
    a.welcome("A")
    a.lose()  # the proxy of A is gone
    idle = Proxy(node, clock, 7002)
    idle.welcome("B", listing="ids")  # another catalog, not rebuilding: refused all the same
    assert not idle.served
    b = Proxy(node, clock, 7002)
    b.welcome("B", listing="full")
    assert b.served and node.served.id == "B" and ServedCatalog(str(tmp_path)).id == "B"
    back = Proxy(node, clock, 7001)
    back.welcome("A")  # A's proxy is back: B is served now
    assert not back.served
    b.lose()


def test_a_proxy_naming_no_catalog_is_served_as_before_and_a_bad_id_is_refused(tmp_path):
    clock = task.Clock()
    node = node_in(tmp_path)
    old = Proxy(node, clock, 7001)
    old.welcome(None)
    assert old.served and node.served.id is None and not (tmp_path / "catalog-id").exists()
    bad = Proxy(node, clock, 7002)
    bad.welcome("no/such/id")
    assert not bad.served and bad.tr.value() == b"" and node.served.id is None
    first = Proxy(node, clock, 7003)  # the older proxy being joined does not count as a catalog served
    first.welcome("A")
    assert first.served and node.served.id == "A"
    for p in (old, first):
        p.lose()
