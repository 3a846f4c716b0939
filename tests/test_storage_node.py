"""A storage node joined to two proxies: each join connection on its own."""

from __future__ import annotations

from twisted.internet import task
from twisted.internet.defer import succeed
from twisted.internet.testing import StringTransport

from deposito.protocols.cluster import JoinProtocol
from deposito.servedcatalog import ServedCatalog
from deposito.storage import StorageNode


def blob(i: int) -> str:
    return f"{i:032x}"


class Cursor:
    """Blob ids two at a time, as the device's reader thread would hand them."""

    def __init__(self, blobs: list[str]) -> None:
        self.blobs = blobs

    def next(self):
        taken, self.blobs = self.blobs[:2], self.blobs[2:]
        return succeed((taken, bool(self.blobs)))


class Device:
    capacity = used = 0

    def __init__(self, blobs: list[str]) -> None:
        self.blobs = blobs
        self.count = len(blobs)
        self.corrupt_listeners: list = []

    def room(self) -> int:
        return 1 << 30

    def cannot_write(self) -> bool:
        return False

    def inventory(self, chunk: int, ids_only: bool = False) -> Cursor:
        assert ids_only
        return Cursor(list(self.blobs))


def joined(node: StorageNode, clock: task.Clock) -> tuple[JoinProtocol, StringTransport]:
    proto = JoinProtocol(node, clock)
    tr = StringTransport()
    proto.makeConnection(tr)
    proto.dataReceived(b"OK welcome heartbeat=1.0 listing=ids catalog=c1\r\n")
    return proto, tr


def lines(tr: StringTransport) -> list[str]:
    out = tr.value().decode().splitlines()
    tr.clear()
    return out


def listing(*blobs: int) -> list[str]:
    ids = [blob(i) for i in blobs]
    out = ["LISTING"]
    for n in range(0, len(ids), 2):
        chunk = ids[n:n + 2]
        out += [f"INVENTORY {len(chunk)}" + (" more" if n + 2 < len(ids) else "")] + chunk
    return out


def node_with(data, *blobs: int) -> StorageNode:
    return StorageNode(Device([blob(i) for i in blobs]), "s1", "z1", None, None, ServedCatalog(str(data)))


def test_each_proxy_gets_the_whole_inventory_and_a_slow_one_holds_up_no_other(tmp_path):
    clock = task.Clock()
    node = node_with(tmp_path, 1, 2, 3, 4, 5)
    a, ta = joined(node, clock)
    assert lines(ta)[1:] == listing(1, 2, 3, 4, 5)
    a.sending.pauseProducing()  # proxy A's buffer is full: its next listing stops after a chunk
    node.send_inventory()
    assert lines(ta) == listing(1, 2, 3, 4, 5)[:4]
    b, tb = joined(node, clock)
    assert node.connections == [a, b]
    assert lines(tb)[1:] == listing(1, 2, 3, 4, 5)  # B is listed to the end meanwhile
    a.sending.resumeProducing()
    assert lines(ta) == listing(1, 2, 3, 4, 5)[4:]
    for p in (a, b):
        p.connectionLost(None)
    assert node.connections == [] and clock.getDelayedCalls() == []


def test_a_listing_asked_for_while_one_is_under_way_follows_it_on_that_connection_only(tmp_path):
    clock = task.Clock()
    node = node_with(tmp_path, 1, 2, 3)
    a, ta = joined(node, clock)
    b, tb = joined(node, clock)
    lines(ta), lines(tb)
    a.sending.pauseProducing()
    node.send_inventory()  # after a scrub, say
    node.send_inventory()
    assert lines(tb) == listing(1, 2, 3) * 2
    assert lines(ta) == listing(1, 2, 3)[:4]
    a.sending.resumeProducing()
    assert lines(ta) == listing(1, 2, 3)[4:] + listing(1, 2, 3)
    for p in (a, b):
        p.connectionLost(None)


def test_heartbeats_and_corrupt_copies_go_to_every_proxy_joined_and_a_lost_one_stops_only_its_own(tmp_path):
    clock = task.Clock()
    node = node_with(tmp_path)
    a, ta = joined(node, clock)
    b, tb = joined(node, clock)
    lines(ta), lines(tb)
    node.device.corrupt_listeners[0](blob(7), "sha256 mismatch")
    assert lines(ta) == lines(tb) == [f"BAD {blob(7)} sha256 mismatch"]
    a.connectionLost(None)
    assert node.connections == [b]
    clock.advance(1.0)
    assert ta.value() == b"" and lines(tb)[0].startswith("HB ")
    node.device.corrupt_listeners[0](blob(8), "unreadable")
    assert ta.value() == b"" and lines(tb) == [f"BAD {blob(8)} unreadable"]
    b.connectionLost(None)
    assert clock.getDelayedCalls() == []


class GoneDevice(Device):
    """A device whose --data directory was removed, until ``back``: it lists
    no blob meanwhile (as Device.inventory does with blobs/ gone)."""

    back = False

    def room(self) -> int:
        if not self.back:
            raise FileNotFoundError(2, "No such file or directory", "/data/s1")
        return 1 << 30

    def inventory(self, chunk: int, ids_only: bool = False) -> Cursor:
        return Cursor(list(self.blobs) if self.back else [])


def test_a_data_directory_that_cannot_be_looked_at_has_no_room_and_the_server_goes_on_joining(tmp_path):
    clock = task.Clock()
    node = StorageNode(GoneDevice([]), "s1", "z1", None, None, ServedCatalog(str(tmp_path)))
    assert node.device.capacity == 0
    a, ta = joined(node, clock)  # joins all the same
    assert lines(ta)[0].startswith("JOIN ")
    clock.advance(1.0)
    [beat] = lines(ta)
    assert beat.startswith("HB ") and " capacity=0 " in beat + " ", beat
    node.device.back = True
    clock.advance(1.0)
    said = lines(ta)
    assert f"capacity={1 << 30}" in said[-1] and said[:-1] == ["LISTING", "INVENTORY 0"], said  # (nothing held)
    a.connectionLost(None)


def test_a_data_directory_lost_while_serving_is_listed_at_once_and_again_once_back(tmp_path):
    """--data unmounted (or removed) under a running server: its copies are
    out of reach, and the proxies must stop counting them now (they went on
    counting them until the next scrub, a day later, and the files stayed
    short of copies without a word). Once it is back, its copies count again."""
    clock = task.Clock()
    device = GoneDevice([blob(1), blob(2)])
    device.back = True
    node = StorageNode(device, "s1", "z1", None, None, ServedCatalog(str(tmp_path)))
    a, ta = joined(node, clock)
    assert lines(ta)[1:] == listing(1, 2)
    device.back = False
    clock.advance(1.0)
    said = lines(ta)
    assert said[-1].startswith("HB ") and said[:-1] == ["LISTING", "INVENTORY 0"], said
    clock.advance(1.0)
    assert len(lines(ta)) == 1  # a beat, and no listing again while it lasts
    device.back = True
    clock.advance(1.0)
    said = lines(ta)
    assert said[:-1] == listing(1, 2), said
    a.connectionLost(None)
