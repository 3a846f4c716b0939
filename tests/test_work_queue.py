"""The reconciler's cost follows the work: it reads only the files queued.

A real catalog (SQLite, then PostgreSQL) behind the reconciler's narrow
view (IWorkCatalog), answered at once, and a copier that records what it is asked to copy.
"""

from __future__ import annotations

import sqlite3

import pytest
from hypothesis import given, settings, strategies as st
from twisted.internet import defer, task
from zope.interface import implementer
from zope.interface.verify import verifyObject

from deposito.catalog import WAITING, Catalog, Outcome
from deposito.catalog.schema import NOT_WAITING
from deposito.errors import Unavailable
from deposito.interfaces import ICopier, IWorkCatalog
from deposito.reconciler import PAGE, SERVER_PAGE, SMALL_COPY, SWEEP_PAGE, Reconciler
from deposito.roster import Member, Roster
from tests.catalogs import Catalogs


@implementer(IWorkCatalog)
class NowCatalog:
    """The catalog's methods, answered at once; counts the files it reads."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.read: list[str] = []  # names whose records were read, in order
        self.swept = 0

    def _now(self, method, *args):
        return defer.succeed(method(*args))

    def due_work(self, now, limit):
        return self._now(self.catalog.due_work, now, limit)

    def next_due(self):
        return self._now(self.catalog.next_due)

    def records(self, names):
        self.read.extend(names)
        return self._now(self.catalog.records, names)

    def records_after(self, after, limit):
        records = self.catalog.records_after(after, limit)
        self.swept += len(records)
        return defer.succeed(records)

    def settle(self, outcomes, held=()):
        return self._now(self.catalog.settle, outcomes, held)

    def release(self, names):
        return self._now(self.catalog.release, names)

    def enqueue(self, names, due=0.0, only_new=False):
        return self._now(self.catalog.enqueue, names, due, only_new)

    def enqueue_server(self, server, after, limit):
        return self._now(self.catalog.enqueue_server, server, after, limit)

    def wake(self, now):
        return self._now(self.catalog.wake, now)

    def lookup(self, name):
        return self._now(self.catalog.lookup, name)

    def busy(self, blob):
        return self._now(self.catalog.busy, blob)

    def add_copy(self, name, blob, server, now):
        return self._now(self.catalog.add_copy, name, blob, server, now)

    def abandon_copy(self, blob, server):
        return self._now(self.catalog.abandon_copy, blob, server)

    def drop_copies(self, drops):
        return self._now(self.catalog.drop_copies, drops)


@implementer(ICopier)
class Copier:
    """Copies by naming the first up server not taken, its intent recorded
    as the proxy's writer records it; remembers the files."""

    def __init__(self, roster: Roster, catalog: Catalog) -> None:
        self.roster = roster
        self.catalog = catalog
        self.copied: list[str] = []
        self.kept: list[tuple[str, int, list[str]]] = []  # (blob, count, servers) as keep_wanted was told
        self.refusing: set[str] = set()  # servers whose copies cannot keep a count

    def keep_wanted(self, blob, count, holders):
        refused = [m.id for m in holders if m.id in self.refusing]
        if refused:
            return defer.fail(Unavailable(f"{refused[0]} is out of reach"))
        self.kept.append((blob, count, sorted(m.id for m in holders)))
        return defer.succeed(None)

    def copy_to_new_server(self, record, sources, taken, rescue=False):
        ids = {m.id for m in taken}
        target = next(m for m in sorted(self.roster.members.values(), key=lambda m: m.id)
                      if m.up and m.id not in ids)
        taken.append(target)
        self.catalog.add_intent(record.blob, target.id)
        self.copied.append(record.name)
        return defer.succeed(target)


def store(cat: Catalog, name: str, servers: list[str], replicas: int | None = None) -> None:
    blob = f"{name:0>32}"[-32:]
    version = cat.begin_upload(name, blob, servers)
    assert cat.commit(name, version, blob, 10, "x", replicas or len(servers), servers, 0.0)


def fill(cat: Catalog, files: int, servers) -> None:
    """Files f000000... with two copies each, on a and c or b and d, in one transaction."""
    names = [f"f{i:06d}" for i in range(files)]
    blob = {n: f"{n:0>32}"[-32:] for n in names}
    cat.db.execute("BEGIN")
    cat.db.executemany("INSERT INTO names (name, last_version, settled) VALUES (?, 1, 1)", [(n,) for n in names])
    cat.db.executemany("INSERT INTO files (name, version, blob, size, sha256, replicas, created, servers) VALUES (?, 1, ?, 10, 'x', 2, 0, ?)", [
        (n, blob[n], f"{servers[i % 2]} {servers[2 + i % 2]}") for i, n in enumerate(names)])
    cat.db.executemany("INSERT INTO copies VALUES (?, ?, 0)", [
        (blob[n], servers[i % 2 + k]) for i, n in enumerate(names) for k in (0, 2)])
    cat.db.executemany("UPDATE totals SET value = value + ? WHERE key = ?",
                       [(files, "files"), (10 * files, "bytes"), (2 * files, "wanted")])
    cat.db.execute("COMMIT")


def run(clock: task.Clock) -> None:
    """Let the reconciler's steps that follow at once run."""
    for _ in range(100):
        clock.advance(0)


def turn(rec: Reconciler, clock: task.Clock, member: Member, state: str) -> None:
    """``member`` goes ``state``, and the reconciler hears of it and does what follows at once."""
    member.state = state
    rec.server_changed(member)
    run(clock)


def make(catalogs: Catalogs, files: int, servers=("a", "b", "c", "d")):
    cat = catalogs.fast(catalogs.new())  # a test's catalog need not survive a power cut
    clock = task.Clock()
    roster = Roster(clock)
    for i, sid in enumerate(servers):
        roster.members[sid] = Member(sid, f"z{i}", "h", 1, capacity=10**9, state="up")
    fill(cat, files, servers)
    view = NowCatalog(cat)
    copier = Copier(roster, cat)
    rec = Reconciler(clock, view, roster, copier, sweep_every=3600.0)
    return cat, clock, roster, view, copier, rec


def copies_on(cat: Catalog, name: str) -> list[str]:
    return sorted(cat.lookup(name).servers)


def test_the_fakes_are_what_the_reconciler_needs(catalogs):
    cat, clock, roster, view, copier, rec = make(catalogs, 0)
    assert verifyObject(IWorkCatalog, view) and verifyObject(ICopier, copier)
    cat.close()


@pytest.mark.parametrize("files", [100, 3000])
def test_the_reconciler_reads_only_the_files_queued(catalogs, files):
    cat, clock, roster, view, copier, rec = make(catalogs, files)
    rec.start()
    assert view.read == [] and cat.counts().queued == 0  # a healthy catalog: nothing to read
    short = ["f000007", "f000042", "f000099"]
    for name in short:
        cat.set_replicas(name, 3)
    rec.kick()
    run(clock)
    # the same reads at any catalog size: each queued file, to rank it, to copy it, to see it done
    assert sorted(set(view.read)) == short and len(view.read) == 3 * len(short)
    assert sorted(copier.copied) == short
    assert all(len(copies_on(cat, n)) == 3 for n in short)
    assert cat.counts().queued == 0
    rec.stop()
    cat.close()


def test_a_lowered_count_goes_to_the_copies_kept_before_the_others_are_dropped(catalogs):
    """REPLICAS down: the copies a file keeps take its new count first (what
    a rebuild reads), then its extra copies are dropped; when one of the
    copies kept cannot take it, nothing is dropped and the file is looked at
    again after RETRY, still counted over."""
    from deposito.reconciler import RETRY

    cat, clock, roster, view, copier, rec = make(catalogs, 4)
    rec.start()
    blob = cat.lookup("f000000").blob  # on a and c
    cat.set_replicas("f000000", 1)
    copier.refusing = {"a", "c"}  # whichever is kept cannot take the count yet
    rec.kick()
    run(clock)
    assert copier.kept == [] and copies_on(cat, "f000000") == ["a", "c"]
    assert cat.counts().over == 1 and cat.garbage_count() == []
    copier.refusing = set()
    clock.advance(RETRY)
    run(clock)
    [(kept_blob, count, holders)] = copier.kept
    assert (kept_blob, count) == (blob, 1) and copies_on(cat, "f000000") == holders and len(holders) == 1
    assert cat.counts().over == 0 and cat.counts().queued == 0
    cat.set_replicas("f000001", 3)  # up: the new copy is written with the new count, and no copy is told
    rec.kick()
    run(clock)
    assert len(copier.kept) == 1 and len(copies_on(cat, "f000001")) == 3
    rec.stop()
    cat.close()


def test_a_count_lowered_while_a_copy_is_down_goes_to_the_copies_up_at_once(catalogs):
    """Lowered while one of its servers is down: nothing to drop yet (the
    copies up are the count), but they take the new count now (a rebuild
    would find it); the copy down is dropped once its server is back."""
    cat, clock, roster, view, copier, rec = make(catalogs, 4)
    rec.start()
    cat.set_replicas("f000000", 3)  # on a and c, then a third copy
    rec.kick()
    run(clock)
    third = [s for s in copies_on(cat, "f000000") if s not in ("a", "c")]
    assert len(third) == 1 and copier.kept == []
    turn(rec, clock, roster.members["c"], "down")
    cat.set_replicas("f000000", 2)
    rec.kick()
    run(clock)
    assert copier.kept == [(cat.lookup("f000000").blob, 2, sorted(["a", *third]))]
    assert copies_on(cat, "f000000") == sorted(["a", "c", *third])  # nothing dropped while c is away
    turn(rec, clock, roster.members["c"], "up")
    assert len(copies_on(cat, "f000000")) == 2 and cat.counts().over == 0
    rec.stop()
    cat.close()


def test_a_server_that_goes_queues_exactly_its_files_and_they_are_copied_again(catalogs):
    cat, clock, roster, view, copier, rec = make(catalogs, 1200)
    rec.start()
    a = roster.members["a"]
    on_a = {f"f{i:06d}" for i in range(1200) if i % 2 == 0}
    turn(rec, clock, a, "down")
    counts = cat.counts()
    assert counts.queued == len(on_a) and counts.under == len(on_a)  # short, but waiting: nothing copied
    assert copier.copied == []
    turn(rec, clock, a, "dead")
    assert sorted(copier.copied) == sorted(on_a)
    # the dead server's copies are forgotten once replaced, and go as garbage
    assert all(len(copies_on(cat, n)) == 2 and "a" not in copies_on(cat, n) for n in on_a)
    assert cat.counts().queued == 0
    rec.stop()
    cat.close()


def test_a_server_that_goes_while_the_database_is_out_of_reach_is_queued_once_it_is_back(catalogs):
    """The catalog cannot take the dead server's files: queueing them is
    tried again after RETRY until it is done, and they are copied."""
    from deposito.errors import Unavailable
    from deposito.reconciler import RETRY

    cat, clock, roster, view, copier, rec = make(catalogs, 200)
    rec.start()
    out = [2]  # the first two tries find the database out of reach
    enqueue_server = view.enqueue_server

    def unreachable_at_first(server, after, limit):
        if out[0]:
            out[0] -= 1
            return defer.fail(Unavailable("the catalog database is out of reach"))
        return enqueue_server(server, after, limit)
    view.enqueue_server = unreachable_at_first
    a = roster.members["a"]
    turn(rec, clock, a, "dead")
    assert cat.counts().queued == 0 and copier.copied == []
    for _ in range(2):
        clock.advance(RETRY)
        run(clock)
    on_a = {f"f{i:06d}" for i in range(200) if i % 2 == 0}
    assert out == [0] and sorted(copier.copied) == sorted(on_a)
    assert all(len(copies_on(cat, n)) == 2 and "a" not in copies_on(cat, n) for n in on_a)
    rec.stop()
    cat.close()


def test_a_repair_cut_by_the_database_going_out_of_reach_is_let_go_once_it_is_back(catalogs):
    """The database goes as a copy is being counted: the file is queued
    again and let go as soon as the database is back (tried every RETRY),
    not left held by this proxy for LEASE (minutes) under its wanted
    count; it then gets its copy."""
    from deposito.errors import Unavailable
    from deposito.reconciler import LEASE, RETRY

    cat, clock, roster, view, copier, rec = make(catalogs, 10)
    rec.start()
    out = [2]  # after the copy's count fails, the next two tries find the database out of reach
    enqueue, add_copy = view.enqueue, view.add_copy

    def unreachable_at_first(names, due=0.0, only_new=False):
        if out[0]:
            out[0] -= 1
            return defer.fail(Unavailable("the catalog database is out of reach"))
        return enqueue(names, due, only_new)

    def out_of_reach(name, blob, server, now):
        view.add_copy, view.enqueue = add_copy, unreachable_at_first
        return defer.fail(Unavailable("the catalog database is out of reach"))
    view.add_copy = out_of_reach
    cat.set_replicas("f000003", 3)
    rec.kick()
    run(clock)
    assert len(copies_on(cat, "f000003")) == 2
    owner, due = cat.db.execute("SELECT owner, due FROM work WHERE name = 'f000003'").fetchone()
    assert owner is not None and due >= clock.seconds() + LEASE - 1  # held, as while it was copied
    for _ in range(3):
        clock.advance(RETRY)
        run(clock)
    assert out == [0] and len(copies_on(cat, "f000003")) == 3
    assert cat.counts().queued == 0
    rec.stop()
    cat.close()


@pytest.mark.parametrize("why", ["out of reach", "disk full"])
def test_a_copy_whose_count_fails_does_not_keep_its_server_from_the_file(catalogs, why):
    """The database goes as a copy is being counted: the copy is garbage and
    its intent goes once the database is back (tried every RETRY). The
    intent stayed, and kept that server from the file's next copies while
    this proxy ran: with three servers, the file stayed short for good."""
    from deposito.errors import NoSpace, Unavailable
    from deposito.reconciler import RETRY

    cat, clock, roster, view, copier, rec = make(catalogs, 10)
    rec.start()
    add_copy, abandon_copy = view.add_copy, view.abandon_copy

    def out_of_reach(name, blob, server, now):
        view.add_copy = add_copy
        return defer.fail(Unavailable("the catalog database is out of reach"))

    def still_out_of_reach(blob, server):
        view.abandon_copy = abandon_copy
        if why == "disk full":
            return defer.fail(NoSpace("the catalog database's disk is full"))
        return defer.fail(Unavailable("the catalog database is out of reach"))
    view.add_copy, view.abandon_copy = out_of_reach, still_out_of_reach
    cat.set_replicas("f000003", 3)
    rec.kick()
    run(clock)
    blob = cat.lookup("f000003").blob
    target = copier.copied and cat.db.execute("SELECT server FROM intents WHERE blob = ?", (blob,)).fetchall()
    assert target == [("a",)]  # the copy made on a, not counted
    clock.advance(RETRY)
    run(clock)
    assert cat.db.execute("SELECT server FROM intents WHERE blob = ?", (blob,)).fetchall() == []
    # the file's current blob: not garbage on a failed copy's word (a's next listing counts it)
    assert cat.db.execute("SELECT server FROM garbage WHERE blob = ?", (blob,)).fetchall() == []
    rec.stop()
    cat.close()


def test_copies_placed_while_a_zone_was_out_are_spread_again_once_it_is_back(catalogs):
    """Both copies of a file went to one zone (the other was out): the
    sweep finds the file short of the zones it could be on, and a copy made
    in the zone it lacks takes the place of one of the two. Nothing did
    before (the counts were right), and one zone's loss took every copy."""
    cat, clock, roster, view, copier, rec = make(catalogs, 0)
    for sid, zone in (("a", "z0"), ("b", "z0"), ("c", "z0"), ("d", "z1")):
        roster.members[sid].zone = zone
    store(cat, "f", ["a", "c"], 2)  # (the copy goes to d, not to b: one in z0 would be dropped at once)
    store(cat, "g", ["a", "d"], 2)  # spread already
    rec.start()
    run(clock)
    rec.sweep()
    run(clock)
    assert copier.copied == ["f"]
    servers = copies_on(cat, "f")
    assert len(servers) == 2 and {roster.members[s].zone for s in servers} == {"z0", "z1"}, servers
    assert "d" in servers and copies_on(cat, "g") == ["a", "d"] and cat.counts().queued == 0
    rec.sweep()
    run(clock)
    assert copier.copied == ["f"]  # settled: nothing more
    rec.stop()
    cat.close()


def test_a_server_back_before_it_died_wakes_its_files_and_nothing_is_copied(catalogs):
    cat, clock, roster, view, copier, rec = make(catalogs, 300)
    rec.start()
    b = roster.members["b"]
    turn(rec, clock, b, "down")
    assert cat.counts().under == 150
    turn(rec, clock, b, "up")
    assert cat.counts().queued == 0 and copier.copied == []
    rec.stop()
    cat.close()


def test_a_server_back_while_its_files_are_being_queued_stops_the_queueing(catalogs):
    """A restart: the server is back after the first page of its files is
    queued. The rest are never queued (its copies count again), and nothing
    is copied. At a million files a restarted server's 650,000 files were
    queued, looked at and woken one by one, and its inventory waited behind them."""
    cat, clock, roster, view, copier, rec = make(catalogs, 3 * SERVER_PAGE)  # 1,500 on b
    rec.start()
    b = roster.members["b"]
    pages = []

    def back_after_one_page(server, after, limit):
        pages.append(after)
        b.state = "up"  # joined again as this page was being queued
        return defer.succeed(cat.enqueue_server(server, after, limit))

    view.enqueue_server = back_after_one_page
    b.state = "down"
    rec.server_changed(b)
    run(clock)
    assert pages == [""]  # one page of its 1,500 files, then no more
    assert cat.counts().queued == 0 and copier.copied == []  # (those queued are looked at: healthy)
    rec.stop()
    cat.close()


def test_the_files_of_a_server_another_proxy_sees_up_are_left_to_it_not_parked(catalogs):
    """A server down here but up for another proxy: its files are not parked
    as short, waiting for it to come back here (STATUS would count them
    under, and what only the other proxy can do, such as dropping a copy
    REPLICAS made one too many, would wait). They are left to the other
    proxies, counted with the copies those see; this proxy looks again only
    after PASSED_BACK, and parks them if no proxy sees the server by then.
    Its sweep does not queue them."""
    from deposito.catalog.queue import PASSED_BACK

    cat, clock, roster, view, copier, rec = make(catalogs, 300)
    a = roster.members["a"]
    on_a = {f"f{i:06d}" for i in range(300) if i % 2 == 0}
    a.state, a.up_elsewhere = "down", True
    rec.sweep()
    assert cat.counts().queued == 0
    rec.start()
    rec.server_changed(a)
    run(clock)
    counts = cat.counts()
    assert counts.queued == len(on_a) and counts.under == 0 and counts.over == 0
    assert copier.copied == [] and all(len(copies_on(cat, n)) == 2 for n in on_a)
    assert cat.due_work(clock.seconds(), 500) == []  # the others' to take
    cat.set_replicas("f000000", 1)  # one copy too many: only a proxy that sees a can tell which to drop
    rec.kick()
    run(clock)
    assert copies_on(cat, "f000000") == ["a", "c"] and cat.counts().over == 1
    a.up_elsewhere = False  # no proxy sees it any more: parked here, short
    clock.advance(PASSED_BACK)
    run(clock)
    assert cat.counts().under == len(on_a) - 1 and copier.copied == []
    rec.stop()
    cat.close()


def test_the_sweep_finds_a_file_no_event_queued_in_bounded_pages(catalogs):
    files = 2 * SWEEP_PAGE + 10
    cat, clock, roster, view, copier, rec = make(catalogs, files)
    rec.start()
    # a change that bypassed every event: the wanted count raised behind the catalog's back
    cat.db.execute("UPDATE files SET replicas = 3 WHERE name = 'f001500'")
    steps = 0
    while not copier.copied:
        steps += 1
        clock.advance(rec.sweep_every)
        assert view.swept <= steps * SWEEP_PAGE  # a page a step, never the whole catalog
        assert steps <= 3
    assert copier.copied == ["f001500"] and len(copies_on(cat, "f001500")) == 3
    rec.stop()
    cat.close()


def test_a_stream_of_changes_does_not_hold_back_the_copies_of_files_already_ranked(catalogs):
    """REPLICAS after REPLICAS, one arriving while each look is under way
    (a busy proxy): copies are made meanwhile, not only once the stream
    stops."""
    cat, clock, roster, view, copier, rec = make(catalogs, 1000)
    arrivals = iter(range(10**6))
    copied_meanwhile = []

    def due_work(now, limit):
        n = next(arrivals)
        if n < 300:
            cat.set_replicas(f"f{n:06d}", 3)
            copied_meanwhile.append(len(copier.copied))
        return defer.succeed(cat.due_work(now, limit))

    view.due_work = due_work
    rec.start()
    run(clock)
    run(clock)
    assert len(copied_meanwhile) == 300 and copied_meanwhile[-1] >= 250
    assert sorted(copier.copied) == [f"f{n:06d}" for n in range(300)]
    rec.stop()
    cat.close()


def test_most_endangered_first_and_a_page_at_a_time(catalogs):
    cat, clock, roster, view, copier, rec = make(catalogs, PAGE + 50)
    rec.concurrency = rec.small_at_once = 1
    instant = copier.copy_to_new_server

    def copy_taking_a_while(record, sources, taken, rescue=False):
        made = instant(record, sources, taken, rescue)
        return task.deferLater(clock, 0.01, lambda: made.result)

    copier.copy_to_new_server = copy_taking_a_while
    for i in range(PAGE + 50):
        cat.set_replicas(f"f{i:06d}", 3)
    store(cat, "lonely", ["a"], replicas=3)  # one copy left: it goes first
    cat.enqueue(["lonely"])
    rec.start()
    for _ in range(2000):
        clock.advance(0.01)
    # the 551 files queued at once are ranked before their copies start; only copies under way
    # when lonely was ranked (in the last page, with files ranked before it) go first
    assert copier.copied.index("lonely") <= rec.concurrency
    # each file is read to rank it (once more if its page held fresh ones), to copy it, and to
    # see it done: a few reads per file queued, never the whole queue per copy
    assert len(view.read) <= 4 * (PAGE + 51)
    assert len(copier.copied) == PAGE + 50 + 2  # lonely wants two more
    rec.stop()
    cat.close()


def test_small_files_are_copied_many_at_once_big_ones_a_few(catalogs):
    cat, clock, roster, view, copier, rec = make(catalogs, 60)
    cat.db.execute("BEGIN")
    cat.db.execute("UPDATE files SET size = ? WHERE name >= ?", (SMALL_COPY + 1, "f000040"))  # the last 20: big
    cat.db.execute("COMMIT")
    instant = copier.copy_to_new_server
    at_once = {"small": 0, "big": 0}  # the most files being copied when a copy began

    def copy_taking_a_while(record, sources, taken, rescue=False):
        kind = "small" if record.size <= SMALL_COPY else "big"
        at_once[kind] = max(at_once[kind], len(rec.running.keys() | {record.name}))
        made = instant(record, sources, taken, rescue)
        return task.deferLater(clock, 1.0, lambda: made.result)

    copier.copy_to_new_server = copy_taking_a_while
    rec.start()
    for names in ([f"f{i:06d}" for i in range(40)], [f"f{i:06d}" for i in range(40, 60)]):
        for name in names:
            cat.set_replicas(name, 3)
        rec.kick()
        for _ in range(200):
            clock.advance(0.1)
        assert all(len(copies_on(cat, name)) == 3 for name in names)
    assert at_once == {"small": rec.small_at_once, "big": rec.concurrency} and rec.small_at_once > rec.concurrency
    assert sorted(copier.copied) == [f"f{i:06d}" for i in range(60)]
    rec.stop()
    cat.close()


OLD_SCHEMA = """
CREATE TABLE names (name TEXT PRIMARY KEY, last_version INTEGER NOT NULL);
CREATE TABLE files (name TEXT PRIMARY KEY, version INTEGER NOT NULL, blob TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL, sha256 TEXT NOT NULL, replicas INTEGER NOT NULL, created REAL NOT NULL);
CREATE TABLE copies (blob TEXT NOT NULL, server TEXT NOT NULL, since REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (blob, server));
CREATE INDEX copies_by_server ON copies (server);
CREATE TABLE intents (blob TEXT NOT NULL, server TEXT NOT NULL, PRIMARY KEY (blob, server));
CREATE TABLE garbage (blob TEXT NOT NULL, server TEXT NOT NULL, PRIMARY KEY (blob, server));
CREATE TABLE servers (id TEXT PRIMARY KEY, zone TEXT NOT NULL, host TEXT NOT NULL, port INTEGER NOT NULL,
    capacity INTEGER NOT NULL, used INTEGER NOT NULL, blobs INTEGER NOT NULL);
INSERT INTO names VALUES ('x', 1), ('y', 3), ('gone', 2);
INSERT INTO files VALUES ('x', 1, 'bx', 10, 'h', 1, 0), ('y', 3, 'by', 20, 'h', 2, 0);
INSERT INTO copies VALUES ('bx', 'a', 0), ('by', 'b', 0), ('by', 'a', 0);
"""


def test_a_catalog_from_before_opens_with_its_files_their_copies_and_its_counts(tmp_path):
    db = sqlite3.connect(tmp_path / "catalog.sqlite")
    db.executescript(OLD_SCHEMA)
    db.close()
    cat = Catalog(str(tmp_path))
    assert cat.lookup("y").servers == ("a", "b") and cat.lookup("x").servers == ("a",)
    counts = cat.counts()
    assert (counts.files, counts.bytes, counts.wanted, counts.queued) == (2, 30, 3, 2)
    assert cat.begin_upload("gone", "bg", ["a"]) == 3  # versions go on from where they were
    cat.close()
    cat = Catalog(str(tmp_path))  # and opens again as it is
    assert cat.lookup("y").version == 3 and cat.counts().files == 2
    cat.close()


# -- the totals kept with each change equal a recount, whatever the changes

names = st.sampled_from(["a", "b", "c", "d/e", "f g"])
steps = st.lists(st.one_of(
    st.tuples(st.just("put"), names, st.integers(1, 1000), st.integers(1, 4)),
    st.tuples(st.just("delete"), names),
    st.tuples(st.just("replicas"), names, st.integers(1, 4)),
    st.tuples(st.just("stale"), names),  # a commit that lost to a newer version
    st.tuples(st.just("adopt"), names, st.integers(1, 50), st.integers(1, 1000), st.integers(0, 4)),
), max_size=30)


def totals_match_a_recount(cat: Catalog, plan) -> None:
    for table in ("names", "files", "copies", "garbage", "intents", "work"):
        cat.db.execute(f"DELETE FROM {table}")
    cat.db.execute("UPDATE totals SET value = 0")
    blob = 0
    for step in plan:
        blob += 1
        b = f"{blob:032x}"
        if step[0] == "put":
            _, name, size, replicas = step
            v = cat.begin_upload(name, b, ["s1"])
            cat.commit(name, v, b, size, "x", replicas, ["s1"], 0.0)
        elif step[0] == "delete":
            cat.delete(step[1])
        elif step[0] == "replicas":
            cat.set_replicas(step[1], step[2])
        elif step[0] == "stale":
            v = cat.begin_upload(step[1], b, ["s1"])
            newer = f"{blob:031x}f"
            cat.commit(step[1], cat.begin_upload(step[1], newer, ["s2"]), newer, 5, "y", 1, ["s2"], 0.0)
            assert not cat.commit(step[1], v, b, 7, "x", 2, ["s1"], 0.0)
        else:
            _, name, version, size, replicas = step
            cat.adopt("s3", [(b, version, size, "z", replicas, name, "")], 0.0)
    counts = cat.counts()
    recount = cat.db.execute(
        "SELECT count(*), coalesce(sum(size), 0), coalesce(sum(replicas), 0) FROM files").fetchone()
    assert (counts.files, counts.bytes, counts.wanted) == tuple(recount)


def test_totals_match_a_recount(catalogs):
    cat = catalogs.fast(catalogs.new())
    settings(max_examples=60 if catalogs.kind == "sqlite" else 30, deadline=None)(
        given(steps)(lambda plan: totals_match_a_recount(cat, plan)))()


# -- what the periodic jobs ask of the catalog costs the same at any size


def vm_steps(cat: Catalog, call) -> int:
    """SQLite's virtual-machine steps (in hundreds) that ``call`` takes."""
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    cat.db.set_progress_handler(count, 100)
    try:
        call()
    finally:
        cat.db.set_progress_handler(None, 100)
    return steps[0]


def periodic_costs(tmp_path, files: int) -> dict[str, int]:
    """On SQLite, whose virtual machine counts its steps."""
    cat, clock, roster, view, copier, rec = make(Catalogs("sqlite", tmp_path, None), files)
    cat.set_replicas("f000003", 3)  # one file queued, and some garbage
    cat.drop_copy(f"{'f000005':0>32}"[-32:], "a")
    costs = {
        "counts (STATUS, /metrics, /api/status)": vm_steps(cat, cat.counts),
        "due work": vm_steps(cat, lambda: cat.due_work(1.0, 500)),
        "next due": vm_steps(cat, cat.next_due),
        "garbage to collect": vm_steps(cat, lambda: cat.garbage(["a", "b", "c", "d"], 200)),
        "a sweep page": vm_steps(cat, lambda: cat.records_after("f000100", 50)),
        "a record": vm_steps(cat, lambda: cat.lookup("f000077")),
    }
    cat.close()
    return costs


def test_the_periodic_jobs_cost_the_same_at_any_number_of_files(tmp_path):
    small = periodic_costs(tmp_path / "small", 200)
    large = periodic_costs(tmp_path / "large", 20_000)
    for job, cost in small.items():
        assert large[job] <= cost + 2, (job, cost, large[job])  # not 100 times as much: the same


def claiming_costs(tmp_path, queued: int) -> dict[str, int]:
    """``queued`` files queued as a dead server's are: half waiting for a
    server to come back, half due; what claiming the next page costs."""
    cat, clock, roster, view, copier, rec = make(Catalogs("sqlite", tmp_path, None), queued)
    names = [f"f{i:06d}" for i in range(queued)]
    cat.enqueue(names)
    cat.settle([Outcome(name, gen, WAITING, 1000, 2, 0) for name, gen, _ in cat.due_work(1.0, queued // 2)])
    costs = {"due work": vm_steps(cat, lambda: cat.due_work(1.0, 100)),
             "next due": vm_steps(cat, cat.next_due)}
    cat.close()
    return costs


class Counting:
    """A catalog's connection, counting the statements it sends the
    database (each row of an executemany is one)."""

    def __init__(self, db) -> None:
        self.db, self.statements = db, 0

    def execute(self, sql, params=(), /):
        self.statements += 1
        return self.db.execute(sql, params)

    def executemany(self, sql, params, /):
        params = list(params)
        self.statements += len(params)
        return self.db.executemany(sql, params)

    def __getattr__(self, name):
        return getattr(self.db, name)


def test_a_dead_servers_files_are_queued_read_and_settled_a_page_at_a_time(catalogs):
    """At a million files a dead server's copies are hundreds of thousands:
    each page of them is queued, read, settled and dropped in a few
    statements, not one or more a file (on PostgreSQL a statement costs the proxy and the
    database more than its rows: looking at a million files took minutes)."""
    cat, clock, roster, view, copier, rec = make(catalogs, 1200)  # a holds 600
    counting = Counting(cat.db)
    cat._db = counting

    def statements(call):
        before = counting.statements
        result = call()
        return counting.statements - before, result

    sent, after = statements(lambda: cat.enqueue_server("a", "", SERVER_PAGE))
    assert after is None and cat.counts().queued == 600 and sent <= 8, sent
    due = cat.due_work(1.0, PAGE)
    assert len(due) == PAGE
    sent, records = statements(lambda: cat.records([name for name, _, _ in due]))
    assert [r.name for r in records] == [name for name, _, _ in due] and sent <= 4, sent
    done, later, passed = due[:100], due[100:300], due[300:]
    outcomes = ([Outcome(name, gen, None) for name, gen, _ in done]
                + [Outcome(name, gen, WAITING, 1000, 2, 1, 1) for name, gen, _ in later]
                + [Outcome(name, gen, 5.0, 3, 2, 1, 1, passed=True) for name, gen, _ in passed])
    sent, _ = statements(lambda: cat.settle(outcomes))
    assert sent <= 12, sent
    rows = dict((name, (due, rank, wanted, have, owner, passed)) for name, due, rank, wanted, have, owner, passed
                in cat.db.execute("SELECT name, due, rank, wanted, have, owner, passed FROM work"))
    assert len(rows) == 500 and not {name for name, _, _ in done} & set(rows)
    assert {rows[name] for name, _, _ in later} == {(WAITING, 1000, 2, 1, None, None)}
    assert {rows[name] for name, _, _ in passed} == {(5.0, 3, 2, 1, None, cat.proxy)}
    # their copies on a dropped (those of files wanting more copies than seen kept)
    drops = [(r.blob, "a", 1 if i < 100 else 2) for i, r in enumerate(records)]
    sent, _ = statements(lambda: cat.drop_copies(drops))
    assert sent <= 8, sent
    on_a = {blob for (blob,) in cat.db.execute("SELECT blob FROM copies WHERE server = 'a'")}
    garbage = {blob for blob, server in cat.db.execute("SELECT blob, server FROM garbage") if server == "a"}
    assert on_a & {blob for blob, _, _ in drops} == {blob for blob, _, wanted in drops if wanted == 1}
    assert garbage == {blob for blob, _, wanted in drops if wanted == 2}
    assert all(cat.lookup(r.name).servers == (("a", "c") if i < 100 else ("c",)) for i, r in enumerate(records))
    cat.close()


def test_a_files_last_outcome_and_each_drops_own_count_decide(catalogs):
    """settle takes a file's last outcome when given two; drop_copies
    weighs each drop against its own wanted count, even for one blob."""
    cat, clock, roster, view, copier, rec = make(catalogs, 2)  # f000000 on a and c, wanting 2
    cat.enqueue(["f000000", "f000001"])
    (name, gen, _), (other, other_gen, _) = cat.due_work(1.0, 10)
    cat.settle([Outcome(name, gen, 5.0, 1, 2, 2), Outcome(name, gen, None),
                Outcome(other, other_gen, None), Outcome(other, other_gen, 7.0, 2, 2, 1, 1)])
    assert cat.db.execute("SELECT name, due FROM work").fetchall() == [(other, 7.0)]
    blob = cat.lookup("f000000").blob
    cat.drop_copies([(blob, "a", 1), (blob, "c", 2)])  # the file wants more than 1: a's copy stays
    assert cat.lookup("f000000").servers == ("a",)
    cat.close()


def test_the_queues_order_leaves_out_exactly_the_files_waiting_for_a_server():
    """The condition of the queue's index is written out in SQL: it must be WAITING's."""
    assert NOT_WAITING.split(" < ") == ["due", "1e18"] and float("1e18") == WAITING


def test_claiming_the_next_due_files_costs_the_same_however_many_are_queued(tmp_path):
    """A dead server's files wait in the queue, hundreds of thousands at a
    million files: a page claimed reads that page, not the queue (each
    claim read every file queued, and a dead server's files took minutes)."""
    small = claiming_costs(tmp_path / "small", 400)
    large = claiming_costs(tmp_path / "large", 20_000)
    for job, cost in small.items():
        assert large[job] <= cost + 2, (job, cost, large[job])


def test_a_file_looked_at_while_its_copies_are_made_is_looked_at_again_once_they_are(catalogs):
    """A copy made queues its file again, and the reconciler may look at it
    before the copy's task is over (another change wakes it): the file is
    then left for later, as one being copied. Once the task is over it is
    looked at at once, not when that later comes."""
    cat, clock, roster, view, copier, rec = make(catalogs, 10)
    add_copy, copy = view.add_copy, copier.copy_to_new_server

    def later(*args, **kwargs):  # as the real copier: done on a later turn of the reactor
        return task.deferLater(clock, 0, lambda: None).addCallback(lambda _: copy(*args, **kwargs))

    def then_a_look(*args):
        counted = add_copy(*args)  # queues the file again
        rec.kick()  # a look now, while the copy's task is still under way
        return counted

    copier.copy_to_new_server, view.add_copy = later, then_a_look
    cat.set_replicas("f000001", 3)
    rec.start()
    run(clock)
    assert len(copies_on(cat, "f000001")) == 3 and not rec.running
    assert cat.counts().queued == 0 and cat.next_due() is None
    rec.stop()
    cat.close()


def test_a_file_counts_under_or_over_from_its_change_until_its_copies_are_made(catalogs):
    """STATUS's ``under`` and ``over`` count a file from the moment its
    wanted count changes (from its copies on the servers up), and stop
    counting it as each copy is made, not only once the reconciler looks
    at it again."""
    cat, clock, roster, view, copier, rec = make(catalogs, 10)
    up = [m.id for m in roster.up()]
    cat.set_replicas("f000001", 1, up)  # it has 2
    c = cat.counts()
    assert (c.under, c.over, c.moves, c.fresh) == (0, 1, 1, 0)
    cat.set_replicas("f000001", 4, up)
    c = cat.counts()
    assert (c.under, c.over, c.moves, c.fresh) == (1, 0, 2, 0)
    roster.members["c"].state = "down"  # of its servers a and c, one seen up
    cat.set_replicas("f000002", 2, [m.id for m in roster.up()])
    c = cat.counts()
    assert (c.under, c.over, c.moves, c.fresh) == (2, 0, 3, 0)
    roster.members["c"].state = "up"
    cat.set_replicas("f000002", 2, up)
    cat.set_replicas("f000004", 3)  # no servers given: counted once looked at
    assert cat.counts().fresh == 1

    seen = []
    add_copy = view.add_copy

    def counted(*args):
        made = add_copy(*args)
        seen.append(cat.counts())  # before the reconciler looks at the file again
        return made

    view.add_copy = counted
    rec.start()
    run(clock)
    assert len(copies_on(cat, "f000001")) == 4 and len(copies_on(cat, "f000004")) == 3
    made_for_1 = [c for c in seen if c.under]  # while f000001 or f000004 still short
    assert seen[-1].under == 0 and seen[-1].moves == 0 and len(made_for_1) == len(seen) - 1
    c = cat.counts()
    assert (c.under, c.over, c.moves, c.fresh, c.queued) == (0, 0, 0, 0, 0)
    rec.stop()
    cat.close()


def test_a_wait_for_copies_no_server_has_room_for_is_unavailable(catalogs):
    """REPLICAS ... WAIT answers ``unavailable`` when the cluster can no
    longer get there, a lack of room included; the reason is kept."""
    from deposito.errors import NoSpace, Unavailable

    cat, clock, roster, view, copier, rec = make(catalogs, 10)
    copier.copy_to_new_server = lambda record, sources, taken, rescue=False: defer.fail(
        NoSpace("only 0 servers have 10 bytes free, 1 needed"))
    cat.set_replicas("f000001", 3)
    waited = rec.wait("f000001", 3)
    rec.start()
    run(clock)
    failure = []
    waited.addErrback(failure.append)
    assert failure and failure[0].check(Unavailable) and "bytes free" in failure[0].getErrorMessage()
    assert cat.lookup("f000001").replicas == 3  # the wanted count stays
    rec.stop()
    cat.close()


def test_a_wait_ended_by_servers_going_down_says_the_count_is_kept(catalogs):
    """A WAIT that can no longer be met because servers went down says the
    wanted count stays set, unlike the refusal of a count above the servers
    up, which changes nothing (before: the two read alike)."""
    from deposito.errors import Unavailable

    cat, clock, roster, view, copier, rec = make(catalogs, 10)
    copier.copy_to_new_server = lambda record, sources, taken, rescue=False: defer.Deferred()  # under way
    cat.set_replicas("f000001", 4)
    waited = rec.wait("f000001", 4)
    rec.start()
    run(clock)
    roster.members["d"].state = "down"
    clock.advance(2)  # past the next look at the waits
    run(clock)
    failure = []
    waited.addErrback(failure.append)
    assert failure and failure[0].check(Unavailable)
    assert "4 copies wanted and kept as wanted, only 3 servers up now" in failure[0].getErrorMessage()
    assert cat.lookup("f000001").replicas == 4
    rec.stop()
    cat.close()


def test_stopping_waits_for_a_copy_under_way_a_few_seconds_at_most(catalogs):
    """A copy whose servers stopped answering does not hold the proxy's
    shutdown: after the grace it is cancelled."""
    cat, clock, roster, view, copier, rec = make(catalogs, 10)
    hanging: list[defer.Deferred] = []

    def never(record, sources, taken, rescue=False):
        hanging.append(defer.Deferred())
        return hanging[-1]

    copier.copy_to_new_server = never
    cat.set_replicas("f000001", 3)
    rec.start()
    run(clock)
    assert len(hanging) == 1 and rec.running
    stopped = rec.stop(grace=5.0)
    clock.advance(4.9)
    assert not stopped.called
    clock.advance(0.2)
    assert stopped.called and hanging[0].called  # cancelled
    cat.close()


def test_a_failed_copy_goes_on_to_two_other_servers_at_most(catalogs):
    """A copy that failed (its target died, say) is tried on another server,
    twice at most in one look: when every try fails (its sources at fault,
    say), ten servers do not cost ten intents, garbage rows and deletes."""
    from deposito.reconciler import RETARGETS
    from deposito.transfer import CopyFailed

    servers = tuple("abcdefghij")
    cat, clock, roster, view, copier, rec = make(catalogs, 4, servers)
    rec.start()
    tried: list[str] = []

    def failing(record, sources, taken, rescue=False):
        ids = {m.id for m in taken}
        target = next(m for m in sorted(roster.members.values(), key=lambda m: m.id) if m.id not in ids)
        taken.append(target)
        tried.append(target.id)
        return defer.fail(CopyFailed(target, "no copy is reachable"))
    copier.copy_to_new_server = failing
    cat.set_replicas("f000001", 3)
    rec.kick()
    run(clock)
    assert len(tried) == 1 + RETARGETS and len(set(tried)) == len(tried)
    assert len(copies_on(cat, "f000001")) == 2
    rec.stop()
    cat.close()


def test_a_stop_while_a_gone_servers_files_are_being_queued_logs_no_error(catalogs):
    """The proxy stops while it queues the files of a server that went (a
    long job on a big catalog): the catalog's call is cancelled, and that is
    no failure to log with its traceback (one a server, before)."""
    from twisted.logger import globalLogPublisher

    cat, clock, roster, view, copier, rec = make(catalogs, 10)
    pending: list[defer.Deferred] = []
    view.enqueue_server = lambda server, after, limit: pending.append(defer.Deferred()) or pending[-1]
    said: list[dict] = []
    globalLogPublisher.addObserver(said.append)
    try:
        rec.start()
        turn(rec, clock, roster.members["a"], "dead")
        assert len(pending) == 1
        rec.stop()
        pending[0].cancel()  # as the catalog thread does with the calls still waiting when it stops
        run(clock)
    finally:
        globalLogPublisher.removeObserver(said.append)
    assert [e for e in said if e.get("log_level") is not None and e["log_level"].name in ("error", "critical")] == []
    cat.close()
