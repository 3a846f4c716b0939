"""LIST read from one snapshot of a real catalog (SQLite, then PostgreSQL),
in batches, and written with backpressure: the listing alone, then through
the text protocol on a StringTransport, then over real TCP with real threads."""

from __future__ import annotations

import hashlib
import socket
import sqlite3
import time

import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from deposito.catalog import Catalog
from deposito.interfaces import IDepot
from deposito.catalog.listing import NameRange, _connect, open_listing, prefix_end
from deposito.protocols.text import DepotFactory
from deposito.protocols.words import split
from deposito.roster import Member
from tests.test_text_protocol import FakeDepot


def fill(catalog: Catalog, names: list[str], servers: tuple[str, ...] = ("s1",)) -> None:
    """Commit ``names`` straight into the catalog's tables, in one transaction."""
    db = catalog.db
    blobs = {name: hashlib.md5(name.encode("utf-8")).hexdigest() for name in names}
    db.execute("BEGIN")
    db.executemany("INSERT INTO names (name, last_version) VALUES (?, 1)"
                   " ON CONFLICT (name) DO UPDATE SET last_version = 1", [(name,) for name in names])
    db.executemany("INSERT INTO files (name, version, blob, size, sha256, replicas, created, servers) VALUES (?, 1, ?, ?, ?, 2, 0, ?)",
                   [(name, blobs[name], len(name), "ab" * 32, " ".join(sorted(servers))) for name in names])
    db.executemany("INSERT INTO copies VALUES (?, ?, 0)", [(blobs[name], s) for name in names for s in servers])
    db.execute("COMMIT")


def run_now(fn, *args):
    """Work that would go to a thread, done at once (deterministic tests)."""
    return defer.maybeDeferred(fn, *args)


class CatalogDepot(FakeDepot):
    """The depot's listing on a real catalog; s1 and s2 hold copies, s2 is down."""

    def __init__(self, path: str, clock: task.Clock, run=run_now, batch: int = 1000) -> None:
        super().__init__()
        self.path, self.clock, self.run, self.batch = path, clock, run, batch
        self.members = {"s1": Member("s1", "z", "h", 1, state="up"), "s2": Member("s2", "z", "h", 2)}
        self.listings: list = []

    async def listing(self, prefix, after, limit):
        listing = await open_listing(self.clock, self.path, NameRange(prefix, after, limit), batch=self.batch,
                                     run=self.run)
        self.listings.append(listing)
        return listing

    def healthy(self, record):
        return [self.members[s] for s in record.servers if self.members[s].up]


def test_the_catalog_depot_is_a_depot(tmp_path):
    assert verifyObject(IDepot, CatalogDepot(str(tmp_path / "catalog.sqlite"), task.Clock()))


@pytest.fixture
def catalog(catalogs):
    """A new catalog, on each database in turn."""
    return catalogs.new()


def where(catalog: Catalog):
    """Where a listing of ``catalog`` is opened: a SQLite catalog's path, or PostgreSQL's snapshot opener."""
    backend = catalog.backend
    return backend.open_snapshot if backend.shared else backend.path


def connect(depot):
    proto = DepotFactory(depot, idle_timeout=300, stall_timeout=60).buildProtocol(None)
    proto.callLater = task.Clock().callLater
    tr = StringTransport()
    proto.makeConnection(tr)
    tr.clear()
    return proto, tr


def replies(tr) -> list[str]:
    out = tr.value().decode("utf-8").split("\r\n")
    tr.clear()
    return out[:-1]


def names_of(lines: list[str]) -> list[str]:
    return [split(line)[3] for line in lines]


def ask(proto, tr, *words: str) -> list[str]:
    """One LIST; the names it answers (after checking OK <n> announces them all)."""
    proto.dataReceived(("LIST " + " ".join(words) + "\n").encode("utf-8"))
    out = replies(tr)
    assert out[0] == f"OK {len(out) - 1}", out[:3]
    return names_of(out[1:])


NAMES = ["a", "a b", 'a"q', "a/b", "a/b/c", "a\\x", "ab", "a\xff", "a\u00e9t\u00e9", "a\U0001f600",
         "a\U0010ffff", "a\U0010ffff\U0010ffff", "b", "z" * 1024, "\u65e5\u672c"]


# -- the range


def test_prefix_end_bounds_exactly_the_names_with_the_prefix():
    assert prefix_end("") is None
    assert prefix_end("a") == "b"
    assert prefix_end("a/") == "a0"
    assert prefix_end("a\U0010ffff") == "b"
    assert prefix_end("\U0010ffff\U0010ffff") is None
    assert prefix_end("x\ud7ff") == "x\ue000"
    for prefix in ("", "a", "a\U0010ffff", "\U0010ffff", "a\xff"):
        end = prefix_end(prefix)
        for name in NAMES + ["\U0010ffff", "\U0010ffff\U0010ffffz", "b\U0010ffff"]:
            inside = name >= prefix and (end is None or name < end)
            assert inside == name.startswith(prefix), (prefix, name)


def test_the_queries_read_one_range_of_the_index_and_never_sort(tmp_path):
    db = Catalog(str(tmp_path)).db
    for names in (NameRange(), NameRange("a/", "a/b"), NameRange("a/", ""), NameRange("", "m", 5),
                  NameRange("\U0010ffff")):
        where, values = names.where("f.name")
        plan = " ".join(row[-1] for row in db.execute(
            f"EXPLAIN QUERY PLAN SELECT f.name FROM files f WHERE {where} ORDER BY f.name", values))
        assert "USING PRIMARY KEY (name>" in plan and "TEMP B-TREE" not in plan, plan  # files is in name order
        assert where.count(">") == 1  # one lower bound: SQLite would scan from the other


# -- the listing alone


def listed(path, names: NameRange, batch=3, clock=None):
    return _result(open_listing(clock or task.Clock(), path, names, batch=batch, run=run_now))


def _result(d):
    out = []
    d.addBoth(out.append)
    assert out, "the deferred did not fire"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


def test_a_listing_hands_out_its_count_in_batches_then_nothing(catalog):
    fill(catalog, NAMES)
    listing = listed(where(catalog), NameRange("a", "", None), batch=4)
    expected = sorted(n for n in NAMES if n.startswith("a"))
    assert listing.count == len(expected)
    got, sizes = [], []
    while batch := _result(listing.next()):
        sizes.append(len(batch))
        got += [r.name for r in batch]
    assert got == expected and max(sizes) == 4 and listing.closed is False
    assert [r.servers for r in _result(listed(where(catalog), NameRange("b")).next())] == [("s1",)]
    listing.close()
    assert listing.closed


def test_a_listing_reads_one_snapshot_while_the_catalog_changes(catalog):
    fill(catalog, [f"n{i:03d}" for i in range(10)])
    listing = listed(where(catalog), NameRange(), batch=2)
    assert [r.name for r in _result(listing.next())] == ["n000", "n001"]
    catalog.db.execute("DELETE FROM files WHERE name > 'n004'")
    fill(catalog, ["n0000", "zzz"])
    rest = []
    while batch := _result(listing.next()):
        rest += [r.name for r in batch]
    assert rest == [f"n{i:03d}" for i in range(2, 10)]
    listing.close()


def released(catalog: Catalog) -> bool:
    """Whether no reader holds a snapshot: a full checkpoint can then
    complete (SQLite); no other session is in a transaction (PostgreSQL)."""
    if catalog.backend.shared:
        return not catalog.db.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND state <> 'idle'").fetchone()[0]
    db = sqlite3.connect(catalog.backend.path, timeout=0)
    try:
        busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return busy == 0
    finally:
        db.close()


def test_closing_a_listing_lets_go_of_its_snapshot(catalog):
    fill(catalog, [f"n{i}" for i in range(20)])
    listing = listed(where(catalog), NameRange(), batch=5)
    fill(catalog, ["later"])  # a change made after the snapshot: the WAL must keep it apart
    assert not released(catalog)
    listing.close()
    assert released(catalog)
    snapshot = listing._snapshot
    if catalog.backend.shared:
        assert snapshot.conn.closed
    else:
        with pytest.raises(sqlite3.ProgrammingError):
            snapshot.db.execute("SELECT 1")


def test_a_listing_open_too_long_ends_and_says_so(catalog):
    fill(catalog, [f"n{i}" for i in range(20)])
    clock = task.Clock()
    listing = listed(where(catalog), NameRange(), batch=5, clock=clock)
    told = []
    listing.on_expiry = lambda: told.append(True)
    _result(listing.next())
    fill(catalog, ["later"])
    clock.advance(299)
    assert not told and not released(catalog)
    clock.advance(2)
    assert told == [True] and listing.closed and released(catalog)
    with pytest.raises(Exception, match="too long"):
        _result(listing.next())
    assert not clock.getDelayedCalls()


def test_listings_that_hold_a_growing_log_end_oldest_first(tmp_path, monkeypatch):
    """SQLite: while any listing holds its snapshot, the catalog's log
    cannot start again from its beginning, and grows with every write:
    listings that overlap held it for good (2.7 GB in two minutes under a
    review's writes). Past WAL_LIMIT the oldest listing ends (its reader
    told to page through), one each WAL_EVERY seconds, and the log is let go."""
    import os

    from deposito.catalog import listing as listing_module

    monkeypatch.setattr(listing_module, "WAL_LIMIT", 1 << 20)
    catalog = Catalog(str(tmp_path))
    fill(catalog, [f"n{i:04d}" for i in range(200)])
    clock = task.Clock()
    old, new = (listed(catalog.backend.path, NameRange(), batch=5, clock=clock) for _ in range(2))
    told = []
    old.on_expiry = lambda: told.append("old")
    new.on_expiry = lambda: told.append("new")
    clock.advance(listing_module.WAL_EVERY)
    assert told == [] and not old.closed
    fill(catalog, [f"later{i:05d}-" + "x" * 200 for i in range(5000)])  # the log past the limit
    assert os.path.getsize(catalog.backend.path + "-wal") > 1 << 20
    clock.advance(listing_module.WAL_EVERY)
    assert told == ["old"] and old.closed and not new.closed
    with pytest.raises(Exception, match="too long"):
        _result(old.next())
    clock.advance(listing_module.WAL_EVERY)
    assert told == ["old", "new"] and new.closed and released(catalog)
    catalog.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert os.path.getsize(catalog.backend.path + "-wal") == 0
    clock.advance(listing_module.WAL_EVERY)
    assert not clock.getDelayedCalls()  # nothing left to look at
    catalog.close()


def test_listings_open_at_once_are_capped_and_a_stalled_one_gives_way(catalog, monkeypatch):
    """Each open listing holds a connection to the catalog (on PostgreSQL,
    one of its few): past MAX_OPEN a new listing ends the one whose reader
    has asked nothing for IDLE_AFTER seconds, and is refused while every
    reader is still asking; a closed or failed listing gives its room back."""
    from deposito.catalog import listing as listing_module
    from deposito.errors import Unavailable

    monkeypatch.setattr(listing_module, "MAX_OPEN", 3)
    fill(catalog, [f"n{i}" for i in range(20)])
    clock = task.Clock()
    held = [listed(where(catalog), NameRange(), batch=5, clock=clock) for _ in range(3)]
    told = []
    for i, listing in enumerate(held):
        listing.on_expiry = lambda i=i: told.append(i)
    with pytest.raises(Unavailable, match="too many listings open at once"):
        listed(where(catalog), NameRange(), clock=clock)
    clock.advance(listing_module.IDLE_AFTER - 1)
    _result(held[0].next())  # its reader asks: it is not the one to go
    _result(held[2].next())
    with pytest.raises(Unavailable, match="too many listings"):
        listed(where(catalog), NameRange(), clock=clock)
    clock.advance(1)
    fourth = listed(where(catalog), NameRange(), batch=5, clock=clock)  # held[1], left unasked, gives way
    assert told == [1] and held[1].closed and not held[0].closed and not held[2].closed
    with pytest.raises(Exception, match="too long"):
        _result(held[1].next())
    held[0].close()
    fifth = listed(where(catalog), NameRange(), batch=5, clock=clock)  # its room was given back
    assert [len(_result(fifth.next())) for _ in range(4)] == [5, 5, 5, 5]  # and it reads all
    for listing in (held[2], fourth, fifth):
        listing.close()
    assert released(catalog) and id(clock) not in listing_module._Room._all


def test_an_empty_listing_holds_nothing(catalog):
    fill(catalog, ["a"])
    clock = task.Clock()
    listing = listed(where(catalog), NameRange("b"), clock=clock)
    assert listing.count == 0 and _result(listing.next()) == [] and not clock.getDelayedCalls()
    assert released(catalog)


def test_a_listing_never_makes_a_catalog(tmp_path):
    with pytest.raises(sqlite3.OperationalError):
        _connect(str(tmp_path / "none.sqlite"))
    assert not (tmp_path / "none.sqlite").exists()


# -- LIST on the wire (StringTransport)


def test_list_pages_and_edge_cases(catalog):
    fill(catalog, NAMES)
    depot = CatalogDepot(where(catalog), task.Clock(), batch=2)
    proto, tr = connect(depot)
    everything = sorted(NAMES, key=lambda n: n.encode("utf-8"))
    assert everything == sorted(NAMES)  # code point order is UTF-8 byte order
    assert ask(proto, tr) == everything
    assert ask(proto, tr, '""', '""') == everything
    assert ask(proto, tr, "a/") == ["a/b", "a/b/c"]
    assert ask(proto, tr, "a/", "a/b") == ["a/b/c"]
    assert ask(proto, tr, "a", "a", "3") == ["a b", 'a"q', "a/b"]
    assert ask(proto, tr, '""', everything[-1]) == []
    assert ask(proto, tr, '""', "\U0010ffff\U0010ffff") == []
    assert ask(proto, tr, "nothing") == []
    assert ask(proto, tr, "a\U0010ffff") == ["a\U0010ffff", "a\U0010ffff\U0010ffff"]
    assert ask(proto, tr, "a\xff") == ["a\xff"]
    assert ask(proto, tr, '""', '"a b"', "1") == ['a"q']
    assert ask(proto, tr, '"a b"') == ["a b"]
    for limit in (1, 3):
        pages, after = [], ""
        while True:
            page = ask(proto, tr, '""', f'"{after}"' if " " not in after and '"' not in after
                       and "\\" not in after else _quoted(after), str(limit))
            assert len(page) <= limit
            if not page:
                break
            pages += page
            after = page[-1]
        assert pages == everything, limit
    assert all(listing.closed for listing in depot.listings) and released(catalog)


def _quoted(word: str) -> str:
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def test_list_lines_count_only_healthy_copies_and_quote_names(catalog):
    fill(catalog, ["x y", "x/z"], servers=("s1", "s2"))
    proto, tr = connect(CatalogDepot(where(catalog), task.Clock()))
    proto.dataReceived(b"LIST x\n")
    assert replies(tr) == ["OK 2", '3 2 1 "x y"', "3 2 1 x/z"]


def test_bad_limits_are_refused_and_the_connection_still_serves(catalog):
    fill(catalog, ["a", "b"])
    proto, tr = connect(CatalogDepot(where(catalog), task.Clock()))
    proto.dataReceived(b'LIST "" "" 0\nLIST "" "" -1\nLIST "" "" x\nLIST "" "" 1.5\nLIST a b c d\nLIST "" "" 1\n')
    out = replies(tr)
    assert [line.split()[:2] for line in out[:5]] == [["ERR", "badargs"]] * 5
    assert out[5:] == ["OK 1", "1 2 1 a"] and not tr.disconnecting
    proto.dataReceived(b'LIST "" "" 99999999999999999999\n')
    assert replies(tr) == ["OK 2", "1 2 1 a", "1 2 1 b"]


def test_lines_after_a_list_are_answered_after_it_in_order(catalog):
    fill(catalog, [f"n{i:02d}" for i in range(10)])
    depot = CatalogDepot(where(catalog), task.Clock(), batch=3)
    proto, tr = connect(depot)
    held = []
    depot.run = lambda fn, *args: held.append((fn, args, defer.Deferred())) or held[-1][2]
    proto.dataReceived(b"LIST\nLIST n0 n05 2\nQUIT\n")
    assert tr.value() == b""
    while held:  # the work "threads" do, one at a time, in order
        fn, args, d = held.pop(0)
        d.callback(fn(*args))
    out = replies(tr)
    assert out[0] == "OK 10" and names_of(out[1:11]) == [f"n{i:02d}" for i in range(10)]
    assert out[11:] == ["OK 2", "3 2 1 n06", "3 2 1 n07", "OK bye"]


class SlowReader(StringTransport):
    """A transport that is full once ``room`` bytes wait in it, as TCP's is
    when the client does not read: its producer is paused until it drains."""

    def __init__(self, room: int) -> None:
        super().__init__()
        self.room = room

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.producer is not None and len(self.value()) > self.room:
            self.producer.pauseProducing()

    def drain(self) -> bytes:
        data = self.value()
        self.clear()
        if self.producer is not None:
            self.producer.resumeProducing()
        return data


def test_a_client_that_does_not_read_holds_the_listing_back(catalog):
    fill(catalog, [f"name-{i:06d}" for i in range(20_000)])
    depot = CatalogDepot(where(catalog), task.Clock(), batch=500)
    proto = DepotFactory(depot).buildProtocol(None)
    proto.callLater = task.Clock().callLater
    tr = SlowReader(room=64 << 10)
    proto.makeConnection(tr)
    tr.clear()
    proto.dataReceived(b"LIST\nLIST name-019998\n")
    listing = depot.listings[0]
    assert listing.count == 20_000
    written = tr.value().count(b"\r\n") - 1
    assert written < 5000 and len(tr.value()) < (64 << 10) + 500 * 25  # full: at most one batch over
    assert listing.fetched == written  # nothing read ahead of what the transport took
    assert tr.producer is not None
    received = b""
    while tr.producer is not None:
        received += tr.drain()
        handed = received.count(b"\r\n") + tr.value().count(b"\r\n") - 1
        if tr.producer is not None:  # (once it is done, the next request's answer comes too)
            assert listing.fetched == handed and len(tr.value()) < (64 << 10) + 500 * 25
    received += tr.value()
    lines = received.decode().split("\r\n")
    assert lines[0] == "OK 20000" and names_of(lines[1:20_001]) == [f"name-{i:06d}" for i in range(20_000)]
    assert lines[20_001:] == ["OK 1", "11 2 1 name-019998", ""]  # the next request waited for the LIST
    assert listing.closed and released(catalog)


def test_a_client_leaving_mid_list_closes_the_listing(catalog):
    fill(catalog, [f"n{i:04d}" for i in range(5000)])
    depot = CatalogDepot(where(catalog), task.Clock(), batch=100)
    proto = DepotFactory(depot).buildProtocol(None)
    proto.callLater = task.Clock().callLater
    tr = SlowReader(room=1000)
    proto.makeConnection(tr)
    proto.dataReceived(b"LIST\n")
    listing = depot.listings[0]
    assert not listing.closed and not released(catalog)
    tr.producer.stopProducing()  # what TCP does when the connection is lost
    proto.connectionLost(None)
    assert listing.closed and released(catalog)


def test_a_listing_that_breaks_mid_way_cuts_the_connection(catalog):
    fill(catalog, [f"n{i:04d}" for i in range(50)])
    depot = CatalogDepot(where(catalog), task.Clock(), batch=10)
    calls = []

    def failing(fn, *args):
        calls.append(fn)
        if len(calls) == 3:
            return defer.fail(sqlite3.OperationalError("disk I/O error"))
        return run_now(fn, *args)

    depot.run = failing
    proto, tr = connect(depot)
    proto.dataReceived(b"LIST\nSTATUS\n")
    out = tr.value().split(b"\r\n")
    assert out[0] == b"OK 50" and len(out) - 2 < 50 and tr.disconnecting
    assert depot.listings[0].closed and released(catalog)


def test_a_client_that_stops_reading_is_cut_off_after_the_listing_time(catalog):
    fill(catalog, [f"n{i:04d}" for i in range(5000)])
    clock = task.Clock()
    depot = CatalogDepot(where(catalog), clock, batch=100)
    proto = DepotFactory(depot).buildProtocol(None)
    proto.callLater = clock.callLater
    tr = SlowReader(room=1000)
    proto.makeConnection(tr)
    proto.dataReceived(b"LIST\n")
    clock.advance(301)
    assert tr.disconnecting or tr.producer is None
    assert depot.listings[0].closed and released(catalog)


# -- real threads, real TCP


@pytest_twisted.inlineCallbacks
def test_over_tcp_a_client_that_does_not_read_gets_a_bounded_listing(catalog):
    from twisted.internet import reactor

    names = [f"{'long-name-' * 90}{i:06d}" for i in range(20_000)]  # 18 MB of lines: more than TCP buffers
    fill(catalog, names)
    depot = CatalogDepot(where(catalog), reactor, run=None)  # the module's own threads, as in the proxy
    port = reactor.listenTCP(0, DepotFactory(depot), interface="127.0.0.1")
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    client.connect(("127.0.0.1", port.getHost().port))
    try:
        client.sendall(b"LIST\nQUIT\n")
        yield task.deferLater(reactor, 1.0, lambda: None)
        listing = depot.listings[0]
        assert listing.count == 20_000 and 0 < listing.fetched < 10_000  # held back, not all read
        client.setblocking(False)
        data = b""
        deadline = time.monotonic() + 30
        while not data.endswith(b"OK bye\r\n") and time.monotonic() < deadline:
            try:
                more = client.recv(1 << 20)
            except BlockingIOError:
                yield task.deferLater(reactor, 0.01, lambda: None)
                continue
            if not more:
                break
            data += more
        lines = data.decode().split("\r\n")
        assert lines[0].startswith("OK deposito") and lines[1] == "OK 20000"
        assert names_of(lines[2:20_002]) == names and lines[20_002] == "OK bye"
        deadline = time.monotonic() + 10  # the connection's close runs on a thread (and a busy one, under load)
        while not (listing.closed and released(catalog)) and time.monotonic() < deadline:
            yield task.deferLater(reactor, 0.05, lambda: None)
        assert listing.closed and released(catalog)
    finally:
        client.close()
        yield port.stopListening()


# -- a real proxy and servers


@pytest.mark.slow
def test_list_pages_on_a_real_cluster(shared_cluster):
    from tests.cluster import quote

    names = ["e2e/a", "e2e/a b", 'e2e/"q"', "e2e/a/b", "e2e/ab", "e2e/a\xff", "e2e/\u65e5\u672c", "e2e/z"]
    with shared_cluster.wire() as w:
        for name in names:
            assert w.put(name, name.encode("utf-8"), 1).startswith("OK stored"), name
        every = [split(line)[3] for line in w.multi("LIST e2e/")]
        assert every == sorted(names)
        assert [split(line) for line in w.multi("LIST e2e/a")][:2] == [
            ["5", "1", "1", "e2e/a"], ["7", "1", "1", "e2e/a b"]]
        for limit in (1, 3):
            paged, after = [], ""
            while page := [split(line)[3] for line in w.multi(f"LIST e2e/ {quote(after)} {limit}")]:
                assert len(page) <= limit
                paged += page
                after = page[-1]
            assert paged == every
        assert w.multi(f"LIST e2e/ {quote(every[-1])}") == []
        assert w.multi("LIST e2e/nothing") == []
        assert w.cmd('LIST e2e/ "" 0').startswith("ERR badargs")
        assert w.cmd("LIST e2e/ x -2").startswith("ERR badargs")
        assert w.stat("e2e/z")["size"] == "5"  # the connection still serves
