from __future__ import annotations

import pytest
import pytest_twisted
from hypothesis import given, settings, strategies as st
from twisted.internet import defer
from twisted.internet.task import deferLater

from zope.interface.verify import verifyObject

from deposito.catalog import Catalog, CatalogThread, Outcome
from deposito.catalog.database import Database
from deposito.catalog.schema import SCHEMA_VERSION
from deposito.errors import BadArgs, Conflict, NotEmpty, NotFound, Precondition, Unavailable
from deposito.hidden import part_name
from deposito.interfaces import ICatalog, IWorkCatalog


@pytest.fixture
def cat(catalogs):
    """A new catalog, on each database in turn."""
    return catalogs.new()


def test_nothing_is_visible_before_commit(cat):
    v = cat.begin_upload("f", "b1", ["s1", "s2"])
    assert cat.lookup("f") is None and cat.list() == []
    assert cat.commit("f", v, "b1", 3, "abc", 2, ["s1", "s2"], 0.0)
    r = cat.lookup("f")
    assert (r.version, r.blob, r.servers) == (1, "b1", ("s1", "s2"))


def test_versions_grow_across_delete(cat):
    v1 = cat.begin_upload("f", "b1", ["s1"])
    cat.commit("f", v1, "b1", 1, "x", 1, ["s1"], 0.0)
    assert cat.delete("f").blob == "b1"
    assert cat.lookup("f") is None
    v2 = cat.begin_upload("f", "b2", ["s1"])
    assert v2 == v1 + 1


def test_replaced_and_deleted_copies_become_garbage(cat):
    v = cat.begin_upload("f", "b1", ["s1", "s2"])
    cat.commit("f", v, "b1", 1, "x", 2, ["s1", "s2"], 0.0)
    v = cat.begin_upload("f", "b2", ["s3"])
    cat.commit("f", v, "b2", 1, "y", 1, ["s3"], 0.0)
    assert sorted(cat.garbage(["s1", "s2", "s3"])) == [("b1", "s1"), ("b1", "s2")]
    cat.forget_garbage([("b1", "s1")])
    cat.delete("f")
    assert sorted(cat.garbage(["s1", "s2", "s3"])) == [("b1", "s2"), ("b2", "s3")]


def test_a_stale_commit_is_garbage_at_once(cat):
    v1 = cat.begin_upload("f", "b1", ["s1"])
    v2 = cat.begin_upload("f", "b2", ["s2"])
    assert cat.commit("f", v2, "b2", 1, "x", 1, ["s2"], 0.0)
    assert not cat.commit("f", v1, "b1", 1, "y", 1, ["s1"], 0.0)
    assert cat.lookup("f").blob == "b2"
    assert cat.garbage(["s1", "s2", "s3"]) == [("b1", "s1")]


def test_unfinished_uploads_are_garbage_after_a_restart(catalogs):
    where = catalogs.where()
    c = catalogs.open(where)
    c.recover(0.0)
    c.begin_upload("f", "b1", ["s1", "s2"])
    c.close()
    c = catalogs.open(where)
    if c.backend.shared:  # another proxy may be writing it: it is handed over once its lease runs out
        assert c.recover(100.0) == 0 and c.garbage(["s1", "s2", "s3"]) == []
        assert c.beat([], 100.0 + 30, 30.0, True)[:3] == ([], 1, 2)
    else:
        assert c.recover(100.0) == 2
    assert sorted(c.garbage(["s1", "s2", "s3"])) == [("b1", "s1"), ("b1", "s2")]
    assert c.lookup("f") is None
    c.close()


def test_abandon_and_partial_commit(cat):
    v = cat.begin_upload("f", "b1", ["s1", "s2"])
    cat.add_intent("b1", "s3")
    cat.commit("f", v, "b1", 1, "x", 2, ["s1", "s3"], 0.0)
    assert cat.garbage(["s1", "s2", "s3"]) == [("b1", "s2")]  # the failed target's partial copy
    v = cat.begin_upload("g", "b2", ["s1"])
    cat.abandon("b2")
    assert ("b2", "s1") in cat.garbage(["s1", "s2", "s3"])


@pytest.mark.parametrize("first", [True, False])
def test_an_upload_whose_intents_a_crash_lost_leaves_garbage_and_its_version_is_not_given_again(cat, first):
    """A database that crashes loses what was committed without waiting for
    the disk: an upload's allocation and intents. Its copies, written after,
    are garbage once it is abandoned (they were known to nobody), and its
    version is not given out again to another upload."""
    from deposito.errors import Unavailable

    if not first:
        v = cat.begin_upload("f", "b0", ["s1"])
        assert cat.commit("f", v, "b0", 1, "x", 1, ["s1"], 0.0)
    v = cat.begin_upload("f", "b1", ["s1", "s2"])
    cat.db.execute("BEGIN")  # the crash: allocation and intents gone
    cat.db.execute("DELETE FROM intents WHERE blob = 'b1'")
    if first:
        cat.db.execute("DELETE FROM names WHERE name = 'f'")
    else:
        cat.db.execute("UPDATE names SET last_version = last_version - 1 WHERE name = 'f'")
    cat.db.execute("COMMIT")
    with pytest.raises(Unavailable):
        cat.commit("f", v, "b1", 1, "x", 2, ["s1", "s2"], 0.0)
    cat.abandon("b1", "f", v, ["s1", "s2"])
    assert sorted(g for g in cat.garbage(["s1", "s2"]) if g[0] == "b1") == [("b1", "s1"), ("b1", "s2")]
    assert cat.begin_upload("f", "b2", ["s1"]) > v


def test_an_upload_committed_after_all_is_not_garbage_when_abandoned(cat):
    """The commit's answer was lost (it went in): abandoning the upload,
    servers named, makes none of its copies garbage."""
    v = cat.begin_upload("f", "b1", ["s1", "s2"])
    assert cat.commit("f", v, "b1", 1, "x", 2, ["s1", "s2"], 0.0)
    cat.abandon("b1", "f", v, ["s1", "s2"])
    assert cat.garbage(["s1", "s2"]) == [] and cat.lookup("f").servers == ("s1", "s2")


def test_list_prefix_is_literal(cat):
    for name in ("a%", "a_b", "ab", "b"):
        v = cat.begin_upload(name, "blob" + name, ["s1"])
        cat.commit(name, v, "blob" + name, 1, "x", 1, ["s1"], 0.0)
    assert [r.name for r in cat.list("a%")] == ["a%"]
    assert [r.name for r in cat.list("a")] == ["a%", "a_b", "ab"]
    counts = cat.counts()
    assert (counts.files, counts.bytes) == (4, 4)


def test_batch_commits_together_and_isolates_a_failing_call(cat):
    def boom(c):
        c._tx(lambda db: db.execute("INSERT INTO names (name, last_version) VALUES ('half', 1)"))
        raise ValueError("no")

    def refused(c):  # the database refuses a statement: its error comes back after the call
        c._tx(lambda db: db.execute("INSERT INTO names (name, last_version) VALUES ('a', 7)"))

    def refused_read(c):  # ...or as its answer is read
        return c._tx(lambda db: db.execute("INSERT INTO names (name, last_version) VALUES ('a', 7)"
                                           " RETURNING name").fetchone())

    results = cat.batch([(Catalog.begin_upload, ("a", "b1", ["s1"])), (boom, ()), (refused, ()),
                         (refused_read, ()), (Catalog.begin_upload, ("a", "b2", ["s1"]))])
    assert [ok for ok, _ in results] == [True, False, False, False, True]
    assert [r for ok, r in results if ok] == [1, 2]
    assert cat.db.execute("SELECT count(*) FROM names WHERE name = 'half'").fetchone() == (0,)


def test_a_copy_made_counts_only_if_this_proxy_made_it_of_the_current_blob_where_none_is_being_deleted(catalogs):
    cat = catalogs.new()
    cat.commit("f", cat.begin_upload("f", "b1", ["s1"]), "b1", 1, "x", 2, ["s1"], 0.0)
    assert cat.add_copy("f", "b1", "s2", 1.0) is False  # no intent of this proxy's: its lease was lost
    cat.add_intent("b1", "s3")
    cat.db.execute("INSERT INTO garbage (blob, server) VALUES (?, ?)", ("b1", "s3"))
    assert cat.add_copy("f", "b1", "s3", 1.0) is False  # a copy there is being deleted
    cat.add_intent("b1", "s4")
    cat.commit("f", cat.begin_upload("f", "b2", ["s1"]), "b2", 1, "y", 2, ["s1"], 2.0)
    assert cat.add_copy("f", "b1", "s4", 3.0) is False  # no longer the file's blob: the copy is garbage
    assert ("b1", "s4") in cat.db.execute("SELECT blob, server FROM garbage").fetchall()
    cat.add_intent("b2", "s2")
    assert cat.add_copy("f", "b2", "s2", 4.0) is True
    assert cat.lookup("f").servers == ("s1", "s2") and cat.counts().healthy == 2
    assert cat.db.execute("SELECT count(*) FROM intents").fetchone()[0] == 0
    cat.close()


def test_the_catalog_thread_is_what_the_proxy_needs(catalogs):
    from twisted.internet import reactor

    db = CatalogThread(reactor, catalogs.new())
    try:
        assert verifyObject(ICatalog, db) and verifyObject(IWorkCatalog, db)
    finally:
        db.stop()


def test_every_catalog_call_declares_its_durability_and_what_it_changes():
    """The catalog thread commits without an fsync, and keeps the records
    it holds in memory, only by what each method declares (``effects``)."""
    calls = [name for name in dir(Catalog) if not name.startswith("_") and name not in ("reader", "lookups", "change_delay", "untold")
             and callable(getattr(Catalog, name)) and not hasattr(Database, name)]
    assert {"commit", "lookup", "complete", "due_work"} <= set(calls)
    for name in calls:
        method = getattr(Catalog, name)
        assert isinstance(method.durable, bool) and isinstance(method.keeps_records, bool), name
        assert isinstance(method.one_record, bool) and not (method.one_record and method.keeps_records), name
    assert Catalog.commit.durable and not Catalog.commit.keeps_records and Catalog.commit.one_record
    assert not Catalog.add_copy.one_record  # a part's copy changes its object's record too
    assert not Catalog.lookup.durable and Catalog.lookup.keeps_records


@pytest_twisted.inlineCallbacks
def test_catalog_thread_answers_in_order_after_commit(catalogs):
    from twisted.internet import reactor

    db = CatalogThread(reactor, catalogs.new())
    db.start()
    try:
        versions = yield defer.gatherResults([db.begin_upload("f", f"b{i}", ["s"]) for i in range(20)])
        assert versions == list(range(1, 21))
        ok = yield db.commit("f", 20, "b19", 1, "x", 1, ["s"], 0.0)
        assert ok and (yield db.lookup("f")).blob == "b19"
    finally:
        db.stop()


@pytest_twisted.inlineCallbacks
def test_a_listing_bound_no_name_can_hold_is_refused_alike_on_every_catalog_which_still_serves(catalogs):
    from twisted.internet import reactor

    db = CatalogThread(reactor, catalogs.new())
    db.start()
    try:
        v = yield db.begin_upload("a/f", "b1", ["s"])
        yield db.commit("a/f", v, "b1", 1, "x", 1, ["s"], 0.0)
        refused = [db.listing("a/\x00", "", None), db.listing("", "a\x00", None), db.buckets("\x00", "", 5),
                   db.buckets("", "\x00", 5), db.uploads("\x00", "", "", 5), db.uploads("", "\x00", "", 5),
                   db.uploads("", "a", "\x00", 5), db.listing("a/\x1f", "", None)]
        for d in refused:
            with pytest.raises(BadArgs, match="control character"):
                yield d
        listing = yield db.listing("a/", "", None)
        assert [r.name for r in (yield listing.collect())] == ["a/f"]
    finally:
        db.stop()


@pytest_twisted.inlineCallbacks
def test_the_catalog_is_out_of_reach_from_a_failed_call_till_a_change_goes_through(tmp_path):
    """ICatalog.reachable: a call that met Unavailable makes it False (a
    PUT then waits for its version before it lets the client send); a
    lookup that goes through does not make it True, a change does."""
    from twisted.internet import reactor

    catalog = Catalog(str(tmp_path))
    down = [True]
    batch = catalog.batch

    def failing(calls):
        return [(False, Unavailable("out of reach")) for _ in calls] if down[0] else batch(calls)
    catalog.batch = failing  # type: ignore[method-assign]
    db = CatalogThread(reactor, catalog)
    db.start()
    try:
        assert db.reachable
        with pytest.raises(Unavailable):
            yield db.begin_upload("f", "b1", ["s1"])
        assert not db.reachable
        down[0] = False
        assert (yield db.read("f")) is None and not db.reachable  # the lookups' connection answered
        yield db.begin_upload("f", "b1", ["s1"])
        assert db.reachable
    finally:
        db.stop()


@pytest_twisted.inlineCallbacks
def test_a_looked_up_record_is_answered_from_memory_until_it_may_change(tmp_path):
    from twisted.internet import reactor

    db = CatalogThread(reactor, Catalog(str(tmp_path)))
    db.start()
    try:
        v = yield db.begin_upload("f", "b1", ["s1"])
        yield db.commit("f", v, "b1", 1, "x", 1, ["s1"], 0.0)
        first = yield db.lookup("f")
        again = db.lookup("f")
        assert again.called, "a kept record answers without the catalog thread"
        assert (yield again) == first
        # a call that leaves records as they are keeps them
        yield db.begin_upload("g", "b2", ["s1"])
        assert db.lookup("f").called
        # one that may change them does not, and the next answer is the new truth
        yield db.add_intent("b1", "s2")  # a copy is being made
        yield db.add_copy("f", "b1", "s2", 0.0)
        fresh = db.lookup("f")
        assert not fresh.called
        assert (yield fresh).servers == ("s1", "s2")
    finally:
        db.stop()


@pytest_twisted.inlineCallbacks
def test_a_committed_record_is_answered_from_memory_and_a_change_forgets_only_its_name(tmp_path):
    from twisted.internet import reactor

    db = CatalogThread(reactor, Catalog(str(tmp_path)))
    db.start()

    def truth(name):
        return db._batches.submit((Catalog.lookup, (name,)))

    try:
        for name, blob in (("f", "b1"), ("g", "b2")):
            v = yield db.begin_upload(name, blob, ["s2", "s1"])
            yield db.commit(name, v, blob, 3, "x", 2, ["s2", "s1"], 12.5, "m")
        f, g = db.lookup("f"), db.lookup("g")
        assert f.called and g.called, "what a commit made is answered without the catalog thread"
        f = yield f
        g = yield g
        assert f == (yield truth("f")) and g == (yield truth("g"))
        assert f.servers == ("s1", "s2") and f.created == 12.5 and f.meta == "m"
        # a newer version of g, its replica count, its delete: f is kept all along
        v = yield db.begin_upload("g", "b3", ["s1"])
        yield db.commit("g", v, "b3", 1, "y", 1, ["s1"], 13.0)
        assert db.lookup("f").called and db.lookup("g").called
        g = yield db.lookup("g")
        assert g == (yield truth("g")) and g.blob == "b3"
        yield db.set_replicas("g", 3)
        assert db.lookup("f").called and not db.lookup("g").called
        assert (yield db.lookup("g")).replicas == 3
        yield db.delete("g")
        assert db.lookup("f").called and (yield db.lookup("g")) is None
        # a commit that lost to a newer version keeps nothing of itself
        old = yield db.begin_upload("f", "b4", ["s1"])
        new = yield db.begin_upload("f", "b5", ["s1"])
        assert (yield db.commit("f", new, "b5", 1, "z", 1, ["s1"], 14.0))
        assert not (yield db.commit("f", old, "b4", 1, "z", 1, ["s1"], 15.0))
        assert (yield db.lookup("f")).blob == "b5" == (yield truth("f")).blob
        # a change that may touch any record forgets them all
        yield db.add_intent("b5", "s2")
        yield db.add_copy("f", "b5", "s2", 16.0)
        assert not db.lookup("f").called
        # hidden names (parts of multipart uploads) are never kept
        hidden = part_name("up1", 1, "t")
        v = yield db.begin_upload(hidden, "b6", ["s1"])
        yield db.commit(hidden, v, "b6", 1, "w", 1, ["s1"], 17.0)
        assert not db.lookup(hidden).called and (yield db.lookup(hidden)).blob == "b6"
        assert not db.lookup(hidden).called
    finally:
        db.stop()


@pytest_twisted.inlineCallbacks
def test_kept_records_follow_an_object_made_of_parts_replaced_and_deleted(catalogs):
    """An object made of parts, then a plain version over it, then that one
    with parts again: each change answers from memory exactly what the
    catalog holds, and the hidden files of the parts are never kept."""
    from twisted.internet import reactor

    db = CatalogThread(reactor, catalogs.new())
    db.start()

    def truth(name):
        return db._batches.submit((Catalog.lookup, (name,)))

    @defer.inlineCallbacks
    def multipart(upload, name):
        yield db.create_upload(upload, name, 2, "", 0.0)
        parts = []
        for number in (1, 2):
            part = part_name(upload, number, f"{number:032x}")
            v = yield db.begin_upload(part, f"p{upload[:4]}{number}", ["s1", "s2"])
            yield db.commit_part(upload, part, v, f"p{upload[:4]}{number}", 5, "s" * 64, 2, ["s1", "s2"], 1.0)
            parts.append(part)
        v = yield db.begin_upload(name, "m" + upload[:8], ["s1", "s2"])
        ok = yield db.complete(upload, name, v, "m" + upload[:8], 10, "d" * 64, 2, ["s1", "s2"], 2.0, "", parts,
                               "f" * 64)
        assert ok
        return parts

    @defer.inlineCallbacks
    def same(name):
        kept = yield db.lookup(name)
        real = yield truth(name)
        assert kept == real
        return real

    try:
        parts = yield multipart("a" * 32, "o")
        keeps = catalogs.kind == "sqlite"  # a shared catalog answers every lookup from the database
        assert (yield same("o")).parts == "a" * 32 and db.lookup("o").called == keeps
        assert not any(db.lookup(p).called for p in parts)
        v = yield db.begin_upload("o", "plain", ["s1"])
        assert (yield db.commit("o", v, "plain", 3, "x", 1, ["s1"], 3.0))
        assert db.lookup("o").called == keeps and (yield same("o")).blob == "plain"
        assert (yield truth(parts[0])) is None  # the parts went with the version they made
        yield multipart("b" * 32, "o")
        yield same("o")
        assert (yield db.set_replicas("o", 3)).replicas == 3
        assert (yield same("o")).replicas == 3
        assert (yield db.delete("o")) is not None
        assert (yield same("o")) is None
    finally:
        db.stop()


@pytest_twisted.inlineCallbacks
def test_a_bucket_seen_is_answered_from_memory_until_it_is_deleted(tmp_path):
    from twisted.internet import reactor

    db = CatalogThread(reactor, Catalog(str(tmp_path)))
    db.start()
    try:
        assert (yield db.bucket("b")) is None and not db.bucket("b").called  # none is not remembered
        assert (yield db.create_bucket("b", 5.0))
        assert (yield db.bucket("b")) == 5.0
        kept = db.bucket("b")
        assert kept.called and (yield kept) == 5.0
        asked = db.bucket("b")  # answered from memory at once
        yield db.delete_bucket("b")
        assert (yield asked) == 5.0
        after = db.bucket("b")
        assert not after.called and (yield after) is None
    finally:
        db.stop()


@pytest_twisted.inlineCallbacks
def test_a_working_set_of_thousands_of_names_is_answered_from_memory(tmp_path):
    """Names read over and over in turn, more of them than a few thousand:
    from the second round on, every lookup answers without the catalog thread
    (a cache a little smaller than the set would miss every one)."""
    from twisted.internet import reactor

    names = [f"small/w{i % 16}/{i}" for i in range(10_000)]
    catalog = Catalog(str(tmp_path))
    catalog.batch([call for i, name in enumerate(names) for call in (
        (Catalog.begin_upload, (name, f"b{i}", ["s1", "s2"])),
        (Catalog.commit, (name, 1, f"b{i}", 4096, "x", 2, ["s1", "s2"], 0.0)))])
    db = CatalogThread(reactor, catalog)
    db.start()
    try:
        first = yield defer.gatherResults([db.lookup(name) for name in names])
        assert [r.name for r in first] == names
        again = [db.lookup(name) for name in names]
        assert all(d.called for d in again)
        assert (yield defer.gatherResults(again)) == first
        assert len({r.servers for r in first}) == 1 and len({id(r.servers) for r in first}) == 1
    finally:
        db.stop()


@pytest_twisted.inlineCallbacks
def test_a_clients_lookup_does_not_wait_behind_writes(catalogs):
    """While the catalog thread is held in a write (a slow flush, say), a
    client's lookup is answered, with what is committed; once the write is
    answered, lookups show it."""
    import threading

    from twisted.internet import reactor

    db = CatalogThread(reactor, catalogs.new())
    db.start()
    held, release = threading.Event(), threading.Event()

    def slow(catalog: Catalog) -> None:
        held.set()
        release.wait(10)

    try:
        v = yield db.begin_upload("f", "b1", ["s1"])
        yield db.commit("f", v, "b1", 1, "x", 1, ["s1"], 0.0)
        stuck = db._batches.submit((slow, ()))
        yield deferLater(reactor, 0, lambda: None)
        assert held.wait(5)
        changed = db.set_replicas("f", 2)  # waits behind the slow call
        answer = db.read("f")
        for _ in range(200):
            if answer.called:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        assert answer.called and not changed.called
        assert (yield answer).replicas == 1
        release.set()
        yield stuck
        yield changed
        assert (yield db.read("f")).replicas == 2
    finally:
        release.set()
        db.stop()


@pytest_twisted.inlineCallbacks
def test_kept_records_always_match_the_catalog(catalogs):
    """Changes and lookups of a few names, many in flight at once: every answer
    equals the one the catalog thread gives right after it."""
    import random

    from twisted.internet import reactor

    db = CatalogThread(reactor, catalogs.new())
    db.start()
    rng = random.Random(5)
    names, servers = ["a", "b", "c"], ["s1", "s2", "s3"]
    blobs: dict[str, str] = {}
    try:
        hits = 0
        for round_ in range(100):
            pairs, pending, reads = [], [], []
            for step in range(rng.randint(1, 8)):
                name = rng.choice(names)
                op = rng.choice(["lookup"] * 8 + ["read"] * 4 + ["put", "replicas", "add", "drop", "delete",
                                                                 "inventory"])
                if op == "read":  # a client's: may overlap the changes in flight, but fills memory too
                    reads.append(db.read(name))
                elif op == "lookup":
                    d = db.lookup(name)
                    hits += d.called
                    pairs.append((d, db._batches.submit((Catalog.lookup, (name,)))))  # past what is kept
                elif op == "put":
                    blob = blobs[name] = f"{name}{round_}.{step}"
                    v = yield db.begin_upload(name, blob, servers[:1])
                    pending.append(db.commit(name, v, blob, 1, "x", 1, servers[:1], 0.0))
                elif op == "replicas":
                    pending.append(db.set_replicas(name, rng.randint(1, 3)))
                elif op == "add" and name in blobs:
                    server = rng.choice(servers)
                    pending.append(db.add_intent(blobs[name], server))
                    pending.append(db.add_copy(name, blobs[name], server, 0.0))
                elif op == "drop" and name in blobs:
                    pending.append(db.drop_copy(blobs[name], rng.choice(servers)))
                elif op == "delete":
                    pending.append(db.delete(name))
                elif op == "inventory":
                    pending.append(db.reconcile_inventory(rng.choice(servers),
                                      rng.sample(list(blobs.values()), min(2, len(blobs))), None, None, 1.0))
                if rng.random() < 0.5:  # let what is in flight land before the next step
                    yield defer.gatherResults([d for pair in pairs for d in pair] + pending)
            for kept, truth in pairs:
                assert (yield kept) == (yield truth)
            yield defer.gatherResults(pending + reads)
            for name in names:  # all landed: a client's read is the truth, from memory or not
                assert (yield db.read(name)) == (yield db._batches.submit((Catalog.lookup, (name,))))
        assert hits > 0 if catalogs.kind == "sqlite" else hits == 0  # a shared catalog keeps nothing
    finally:
        db.stop()


def test_garbage_on_unreachable_servers_never_blocks_the_rest(cat):
    for i in range(300):  # a dead server's pile of garbage
        cat.begin_upload(f"d{i}", f"dead{i}", ["dead"])
        cat.abandon(f"dead{i}")
    cat.begin_upload("live", "b-live", ["s1"])
    cat.abandon("b-live")
    assert cat.garbage(["s1"], 200) == [("b-live", "s1")]
    assert cat.garbage([], 200) == []


def test_busy_servers_and_inventory_do_not_recount_garbage(cat):
    v = cat.begin_upload("f", "b1", ["s1", "s2"])
    cat.commit("f", v, "b1", 1, "x", 2, ["s1"], 0.0)  # s2's partial copy is garbage now
    assert sorted(cat.busy("b1")) == ["s2"]
    # s2 lists the blob before its deletion lands: it must not count again
    assert cat.reconcile_inventory("s2", ["b1"], None, None, before=10.0) == (0, 0, [], [])
    assert cat.lookup("f").servers == ("s1",)


def test_a_blob_the_catalog_does_not_know_is_garbage_unless_newer_than_the_catalog(cat):
    """A server's blob the catalog does not know, judged by what its
    metadata says: a copy of a version this catalog gave out is one it
    forgot (garbage); one of a version it never gave out, or of a name it
    has no row of (a part of an upload it never heard of too), was written
    through a catalog that went on after this one (a backup put back:
    deleting it lost every file written since), or is of an upload whose
    start was lost in a crash: left alone for KEEP_UNKNOWN seconds after it
    was written, then garbage. An unreadable one is garbage."""
    from deposito.catalog.operations import KEEP_UNKNOWN
    from deposito.hidden import part_name

    v = cat.begin_upload("f", "b1", ["s1"])
    cat.commit("f", v, "b1", 1, "x", 1, ["s1"], 0.0)
    v = cat.begin_upload("gone", "b2", ["s1"])
    cat.commit("gone", v, "b2", 1, "x", 1, ["s1"], 0.0)
    cat.delete("gone")
    listed = ["b1", "b-old", "b-newer", "b-new-name", "b-deleted", "b-part", "b-old-stranger", "b-unreadable"]
    missing, counted, unknown, _ = cat.reconcile_inventory("s1", listed, None, None, before=10.0)
    assert (missing, counted, sorted(unknown)) == (0, 0, sorted(listed[1:]))
    assert cat.garbage(["s1"], 10) == [("b2", "s1")]  # (the deleted file's copy) and nothing judged yet
    week = KEEP_UNKNOWN
    judged = cat.judge_unknown("s1", [("b1", "f", 1, 0), ("b-old", "f", 1, 0), ("b-newer", "f", 2, 0),
                                      ("b-new-name", "g", 1, week - 60), ("b-deleted", "gone", 1, 0),
                                      ("b-part", part_name("a" * 32, 1, "b" * 32), 1, 0),
                                      ("b-old-stranger", "h", 1, week), ("b-unreadable", None, None, 0)], 10.0)
    assert judged == (4, 3, 1)  # b1 is a file's: not judged; b-part, of an upload it never heard of, is left alone
    assert sorted(b for b, _ in cat.garbage(["s1"], 10)) == ["b-deleted", "b-old", "b-old-stranger",
                                                             "b-unreadable", "b2"]


def test_a_listing_being_taken_in_drops_the_copies_it_lacks_and_counts_none(cat):
    """While a server's blobs are taken in (a rebuild), its listing is
    judged for the copies it lacks alone: a copy counted here would skip the
    taking in, which reads its metadata (its wanted count, its size)."""
    for n, blob in enumerate(["b1", "b2"]):
        v = cat.begin_upload(f"f{n}", blob, ["s1"])
        cat.commit(f"f{n}", v, blob, 1, "x", 1, ["s1"], 0.0)
    assert cat.reconcile_inventory("s2", ["b1"], None, None, 10.0, held_only=True) == (0, 0, [], [])
    assert cat.lookup("f0").servers == ("s1",)  # s2's copy not counted
    assert cat.reconcile_inventory("s1", ["b1"], None, None, 10.0, held_only=True) == (1, 0, [], ["f1"])
    assert cat.reconcile_inventory("s2", ["b1"], None, None, 10.0) == (0, 1, [], ["f0"])  # (not taken in: counted)


def test_an_inventory_of_a_server_being_taken_in_makes_no_garbage_of_what_the_catalog_lacks(cat):
    """Another proxy is taking a server's blobs in (its mark is in the
    catalog): an inventory of that server through this one counts and drops
    copies as ever, but leaves the blobs the catalog does not know yet."""
    v = cat.begin_upload("f", "b1", ["s1"])
    cat.commit("f", v, "b1", 1, "x", 1, ["s1"], 0.0)
    cat.mark_adopting("s1", True)
    assert cat.reconcile_inventory("s1", ["b1", "b-new"], None, None, before=10.0) == (0, 0, [], [])
    assert cat.judge_unknown("s1", [("b-new", None, None, 0)], 10.0) == (0, 0, 0)  # (taken in meanwhile)
    assert cat.garbage(["s1"], 10) == []
    cat.mark_adopting("s1", False)
    assert cat.reconcile_inventory("s1", ["b1", "b-new"], None, None, before=10.0) == (0, 0, ["b-new"], [])
    assert cat.judge_unknown("s1", [("b-new", None, None, 0)], 10.0) == (1, 0, 0)
    assert cat.garbage(["s1"], 10) == [("b-new", "s1")]


def test_versions_are_given_out_from_the_floor_up_and_the_floor_never_goes_down(cat):
    assert cat.begin_upload("f", "b1", ["s1"]) == 1
    cat.raise_floor(5000)
    cat.raise_floor(10)
    assert cat.begin_upload("f", "b2", ["s1"]) == 5000 and cat.begin_upload("g", "b3", ["s1"]) == 5000
    assert cat.begin_upload("f", "b4", ["s1"]) == 5001


def test_a_conditional_write_does_not_commit_while_another_write_of_its_name_is_under_way(cat):
    """A PUT under way (its version given out first) and an S3 write with
    If-None-Match: * (or If-Match) committed first: both were told yes, and
    the PUT's bytes were never seen (its version lost to the newer one),
    though no order of the two explains both answers. The conditional write
    is now refused (S3's 409 ConditionalRequestConflict, to try again);
    only an older write under way holds it up."""

    def absent(record):
        if record is not None:
            raise AssertionError("the condition held: nothing there")

    plain = cat.begin_upload("k", "b1", ["s1"])
    conditional = cat.begin_upload("k", "b2", ["s1"])
    assert conditional > plain
    with pytest.raises(Conflict, match="being written"):
        cat.commit("k", conditional, "b2", 1, "y", 1, ["s1"], 1.0, expect=absent)
    assert cat.commit("k", plain, "b1", 1, "x", 1, ["s1"], 2.0)
    assert cat.lookup("k").blob == "b1"
    # none under way: the condition alone decides
    again = cat.begin_upload("k2", "b3", ["s1"])
    assert cat.commit("k2", again, "b3", 1, "z", 1, ["s1"], 3.0, expect=absent)
    # a repair's intent names no file: it holds no write up
    cat.add_intent("b1", "s2")
    late = cat.begin_upload("k3", "b4", ["s1"])
    assert cat.commit("k3", late, "b4", 1, "w", 1, ["s1"], 4.0, expect=absent)


def test_an_upload_older_than_a_deleted_version_is_superseded(cat):
    """A's upload (version 1) is still arriving while B stores version 2 and
    deletes it: when A's finishes, it must not bring the name back at version 1."""
    v1 = cat.begin_upload("x", "b1", ["s1"])
    v2 = cat.begin_upload("x", "b2", ["s2"])
    assert cat.commit("x", v2, "b2", 100, "y", 1, ["s2"], 0.0)
    assert cat.delete("x").version == v2
    assert not cat.commit("x", v1, "b1", 8, "z", 1, ["s1"], 0.0)
    assert cat.lookup("x") is None
    assert ("b1", "s1") in cat.garbage(["s1"])
    assert cat.begin_upload("x", "b3", ["s1"]) == v2 + 1
    counts = cat.counts()
    assert (counts.files, counts.bytes) == (0, 0)


def test_an_upload_that_failed_does_not_supersede_an_older_one(cat):
    v1 = cat.begin_upload("x", "b1", ["s1"])
    cat.begin_upload("x", "b2", ["s2"])
    cat.abandon("b2")
    assert cat.commit("x", v1, "b1", 8, "z", 1, ["s1"], 0.0)
    assert cat.lookup("x").version == v1


def reconcile_whole(db, server, present, before):
    """The whole-set reconciliation, written plainly: what the catalog's
    range-by-range reconciliation must add up to."""
    present = set(present)
    listed = dict(db.execute("SELECT blob, since FROM copies WHERE server = ?", (server,)))
    missing = [b for b, since in listed.items() if b not in present and since < before]
    names = [db.execute("SELECT name FROM files WHERE blob = ?", (b,)).fetchone() for b in missing]
    for b in missing:
        db.execute("DELETE FROM copies WHERE blob = ? AND server = ?", (b, server))
    counted, unknown = 0, []
    for blob in sorted(present - listed.keys()):
        if db.execute("SELECT 1 FROM garbage WHERE blob = ? AND server = ?", (blob, server)).fetchone():
            continue
        file = db.execute("SELECT name FROM files WHERE blob = ?", (blob,)).fetchone()
        if file:
            db.execute("INSERT INTO copies VALUES (?, ?, ?)", (blob, server, before))
            counted += 1
            names.append(file)
        elif not db.execute("SELECT 1 FROM intents WHERE blob = ? AND server = ?", (blob, server)).fetchone():
            unknown.append(blob)  # judged by its metadata (judge_unknown)
    return len(missing), counted, unknown, sorted(n[0] for n in names if n)


def catalog_state(db):
    return [sorted(db.execute(f"SELECT * FROM {table}")) for table in ("copies", "garbage", "intents")] + [
        sorted(db.execute("SELECT name, version, blob, size, sha256, replicas, created FROM files"))]


def servers_follow_copies(db) -> bool:
    """Each file's server list is its copies' servers."""
    return all(servers == " ".join(sorted(s for (s,) in db.execute(
        "SELECT server FROM copies WHERE blob = ?", (blob,)))) for blob, servers in db.execute(
        "SELECT blob, servers FROM files"))


@st.composite
def catalogs_and_inventories(draw):
    blob = st.integers(0, 24).map(lambda n: f"{n:02x}" + "0" * 30)
    server = st.sampled_from(["s1", "s2"])
    files = draw(st.dictionaries(blob, st.text("abc", min_size=1, max_size=3), max_size=30))
    copies = draw(st.dictionaries(st.tuples(blob, server), st.sampled_from([0.0, 5.0, 20.0]), max_size=40))
    garbage = draw(st.sets(st.tuples(blob, server), max_size=10))
    intents = draw(st.sets(st.tuples(blob, server), max_size=10))
    present = sorted(draw(st.sets(blob, max_size=40)))
    cuts = sorted(draw(st.lists(st.integers(0, len(present)), max_size=6)))  # chunk boundaries, empty chunks too
    return files, copies, garbage, intents, present, cuts


def fill(cat, files, copies, garbage, intents):
    for table in ("names", "files", "copies", "garbage", "intents", "work"):
        cat.db.execute(f"DELETE FROM {table}")
    cat.db.execute("INSERT INTO names (name, last_version) VALUES ('a', 1)")
    cat.db.executemany("INSERT INTO files (name, version, blob, size, sha256, replicas, created, servers) VALUES (?, 1, ?, 1, 'x', 1, 0, ?) ON CONFLICT DO NOTHING",
                       [(name, b, " ".join(sorted(s for (c, s) in copies if c == b))) for b, name in files.items()])
    cat.db.executemany("INSERT INTO copies VALUES (?, ?, ?)", [(b, s, t) for (b, s), t in copies.items()])
    cat.db.executemany("INSERT INTO garbage (blob, server) VALUES (?, ?)", sorted(garbage))
    cat.db.executemany("INSERT INTO intents (blob, server) VALUES (?, ?)", sorted(intents))
    return cat


def test_a_rebuilt_version_wants_the_most_copies_any_of_its_copies_says(cat):
    """The first copy of a file was written wanting 1 copy, the reconciler's
    after a REPLICAS 2: taken in either order, the file wants 2."""
    assert cat.adopt("s1", [("b1", 1, 10, "x", 1, "f", "")], 0.0) == 1
    assert cat.adopt("s2", [("b1", 1, 10, "x", 2, "f", "")], 0.0) == 1
    assert cat.lookup("f").replicas == 2 and cat.counts().wanted == 2
    assert cat.adopt("s3", [("b1", 1, 10, "x", 1, "f", "")], 0.0) == 1
    assert cat.lookup("f").replicas == 2 and cat.lookup("f").servers == ("s1", "s2", "s3")


def test_a_drop_planned_before_a_replicas_up_keeps_the_copy(cat):
    """The reconciler planned to drop a copy of a file wanting 2 of its 3;
    a REPLICAS 3 (through another proxy, say) comes before the drop: the
    copy stays counted and is not garbage. With the count still 2, it goes;
    so does a copy of a version no longer current."""
    v = cat.begin_upload("f", "b1", ["s1", "s2", "s3"])
    assert cat.commit("f", v, "b1", 3, "x", 2, ["s1", "s2", "s3"], 0.0)
    cat.set_replicas("f", 3)
    cat.drop_copies([("b1", "s3", 2)])
    assert cat.lookup("f").servers == ("s1", "s2", "s3") and cat.garbage(["s3"]) == []
    cat.set_replicas("f", 2)
    cat.drop_copies([("b1", "s3", 2)])
    assert cat.lookup("f").servers == ("s1", "s2") and cat.garbage(["s3"]) == [("b1", "s3")]
    v = cat.begin_upload("f", "b2", ["s1"])
    assert cat.commit("f", v, "b2", 3, "x", 1, ["s1"], 0.0)
    cat.drop_copies([("b1", "s2", 1)])
    assert ("b1", "s2") in cat.garbage(["s2"])


def test_a_rebuild_on_a_kept_catalog_takes_in_no_failed_or_unfinished_upload(cat):
    """A PUT of version 2 failed (its copies made garbage) and another is
    still being written (its intents there): a rebuild that finds their
    blobs on the servers leaves the committed version 1 the name's, and
    those blobs what the catalog says they are; a copy of version 1 is
    taken in as before."""
    v = cat.begin_upload("f", "b1", ["s1", "s2"])
    assert cat.commit("f", v, "b1", 3, "x", 2, ["s1", "s2"], 0.0)
    assert cat.begin_upload("f", "b2", ["s1", "s2"]) == 2
    cat.abandon("b2")
    assert cat.begin_upload("g", "b3", ["s1"]) == 1
    entries = [("b2", 2, 5, "y", 2, "f", ""), ("b1", 1, 3, "x", 2, "f", ""), ("b3", 1, 4, "z", 1, "g", "")]
    assert cat.adopt("s1", entries, 0.0) == 1
    assert cat.adopt("s3", [("b1", 1, 3, "x", 2, "f", "")], 0.0) == 1
    record = cat.lookup("f")
    assert (record.version, record.blob, record.servers) == (1, "b1", ("s1", "s2", "s3"))
    assert cat.lookup("g") is None
    assert sorted(cat.garbage(["s1", "s2"])) == [("b2", "s1"), ("b2", "s2")]
    assert cat.db.execute("SELECT count(*) FROM intents WHERE blob = 'b3'").fetchone()[0] == 1


def test_a_catalog_rebuilt_from_a_lost_one_gives_versions_above_its_floor(cat):
    """A name no server brought back yet (its copies on a server still
    down) gets a version above any the lost catalog gave out; the late
    server's older version is garbage when it is taken in, and so is a
    version of a name deleted since."""
    assert cat.lost_catalogs() == []
    assert cat.begin_upload("before", "b0", ["s1"]) == 1  # a catalog nobody rebuilt counts from 1
    cat.succeed("0ld", 1_000_000)
    cat.succeed("0ld", 5)  # never lowered
    assert cat.lost_catalogs() == ["0ld"]
    v = cat.begin_upload("f", "b1", ["s1"])
    assert v == 1_000_000
    assert cat.commit("f", v, "b1", 1, "x", 1, ["s1"], 0.0)
    assert cat.begin_upload("before", "b9", ["s1"]) == 1_000_000
    assert cat.begin_upload("f", "b2", ["s1"]) == 1_000_001
    v = cat.begin_upload("gone", "b3", ["s1"])
    assert cat.commit("gone", v, "b3", 1, "x", 1, ["s1"], 0.0)
    cat.delete("gone")
    # the late server brings f at version 7 and gone at version 3, and a file no one else has
    assert cat.adopt("s9", [("b7", 7, 1, "x", 1, "f", ""), ("b8", 3, 1, "x", 1, "gone", ""),
                            ("b9", 4, 1, "x", 1, "only", "")], 0.0) == 1
    assert cat.lookup("f").blob == "b1" and cat.lookup("gone") is None
    assert (cat.lookup("only").version, cat.lookup("only").servers) == (4, ("s9",))
    assert sorted(g for g in cat.garbage(["s1", "s9"]) if g[1] == "s9") == [("b7", "s9"), ("b8", "s9")]


def test_a_file_deleted_after_a_rebuild_stays_deleted_when_a_late_server_brings_a_newer_version(cat):
    """Rebuilt, a name is taken in at the version a server brought (1); it
    is deleted; a server back late brings the version written after it in
    the lost catalog (2). That version is older than the deletion: garbage
    (before: the deletion settled only version 1, and 2 came back)."""
    cat.succeed("0ld", 1_000_000)
    assert cat.adopt("s0", [("b1", 1, 1, "x", 1, "a", "")], 0.0) == 1
    assert cat.delete("a").version == 1
    assert cat.adopt("s1", [("b2", 2, 1, "x", 1, "a", "")], 0.0) == 0
    assert cat.lookup("a") is None and ("b2", "s1") in cat.garbage(["s1"])
    v = cat.begin_upload("a", "b3", ["s0"])  # written again after: the newest
    assert v > 2 and cat.commit("a", v, "b3", 1, "x", 1, ["s0"], 0.0) and cat.lookup("a").blob == "b3"


def test_a_rebuild_under_way_is_kept_in_the_catalog(cat):
    assert not cat.rebuild_owed()
    cat.mark_rebuilding(True)
    cat.mark_rebuilding(True)
    assert cat.rebuild_owed()
    cat.mark_rebuilding(False)
    assert not cat.rebuild_owed()


def test_the_floor_goes_above_every_version_taken_in_and_servers_being_taken_in_are_remembered(cat):
    """A successor whose clock is behind the lost catalog's still gives out
    versions above those it took in; the servers being taken in stay marked
    until their listing is in (a proxy that stops meanwhile goes on with them)."""
    cat.succeed("0ld", 1000)  # the clock, set back
    assert cat.adopt("s1", [("b1", 5_000_000, 1, "x", 1, "f", ""), ("b2", 7, 1, "x", 1, "g", "")], 0.0) == 2
    assert cat.begin_upload("h", "b3", ["s1"]) == 5_000_001
    assert cat.adopting() == []
    cat.mark_adopting("s1", True)
    cat.mark_adopting("s2", True)
    cat.mark_adopting("s1", False)
    assert cat.adopting() == ["s2"]


def test_reconciling_range_by_range_equals_reconciling_the_whole_set(catalogs):
    """A listing split into chunks in blob id order, each reconciled over its
    own range, leaves the catalog as one whole-set reconciliation would, with
    the same counts and the same names."""
    whole, ranged = catalogs.new(), catalogs.new()

    @settings(max_examples=150 if catalogs.kind == "sqlite" else 60, deadline=None)
    @given(catalogs_and_inventories())
    def check(case):
        files, copies, garbage, intents, present, cuts = case
        fill(whole, files, copies, garbage, intents), fill(ranged, files, copies, garbage, intents)
        expected = reconcile_whole(whole.db, "s1", present, 10.0)
        totals, unknown, names, lo = [0, 0], [], [], None
        bounds = [0] + cuts + [len(present)]
        for i, (a, b) in enumerate(zip(bounds, bounds[1:])):
            last = i == len(bounds) - 2
            entries = present[a:b]
            hi = None if last else (entries[-1] if entries else lo)
            if not last and hi == lo:
                continue  # an empty chunk in the middle covers no range (as the depot does)
            missing, counted, new, changed = ranged.reconcile_inventory("s1", entries, lo, hi, 10.0)
            totals = [totals[0] + missing, totals[1] + counted]
            unknown += new
            names += changed
            lo = hi
        assert (*totals, sorted(unknown), sorted(names)) == expected
        assert catalog_state(ranged.db) == catalog_state(whole.db)
        assert servers_follow_copies(ranged.db)

    check()


def test_a_range_touches_only_the_copies_inside_it(cat):
    for n, blob in enumerate(["b1", "b2", "b3", "b4"]):
        v = cat.begin_upload(f"f{n}", blob, ["s1"])
        cat.commit(f"f{n}", v, blob, 1, "x", 1, ["s1"], 0.0)
    # the server lacks b2 and b4; a range up to b3 finds only b2 missing
    assert cat.reconcile_inventory("s1", ["b1", "b3", "zz"], None, "b3", 10.0) == (1, 0, [], ["f1"])
    assert [r.servers for r in cat.list()] == [("s1",), (), ("s1",), ("s1",)]
    assert cat.reconcile_inventory("s1", [], "b3", None, 10.0) == (1, 0, [], ["f3"])


def test_a_range_is_read_through_the_index(tmp_path):
    cat = Catalog(str(tmp_path))
    plan = " ".join(str(row) for row in cat.db.execute(
        "EXPLAIN QUERY PLAN SELECT blob, since FROM copies WHERE server = ? AND blob > ? AND blob <= ?"
        " ORDER BY blob LIMIT 1000", ("s1", "b1", "b3")))
    assert "copies_by_server_blob" in plan and "TEMP B-TREE" not in plan
    cat.close()


def two_catalogs(postgres, among_proxies: bool = False):
    """Two Catalogs on one new PostgreSQL database, as two proxies open it; dropped after."""
    from deposito.catalog.postgres import PostgresBackend

    url = postgres.database()
    first = Catalog(PostgresBackend(url), among_proxies=among_proxies)
    second = Catalog(PostgresBackend(url), among_proxies=among_proxies)
    try:
        yield first, second
    finally:
        first.close()
        second.close()
        postgres.drop(url)


@pytest.fixture
def shared(postgres):
    """One PostgreSQL catalog, as two proxies open it."""
    yield from two_catalogs(postgres)


@pytest_twisted.inlineCallbacks
def test_a_proxy_alone_on_a_shared_catalog_answers_from_the_records_it_keeps_while_trusted(postgres):
    """Until a beat finds it alone, every lookup asks the database; trusted,
    the records kept are answered (a change another catalog makes behind
    its back is not seen: in a cluster, no proxy changes anything until the
    trust given before it joined has run out); once the trust runs out the
    database is asked again, and a new trust forgets what was kept meanwhile."""
    import time

    from twisted.internet import reactor

    from deposito.catalog.postgres import PostgresBackend

    url = postgres.database()
    one, behind = CatalogThread(reactor, Catalog(PostgresBackend(url))), Catalog(PostgresBackend(url))
    one.start()
    try:
        v = yield one.begin_upload("f", "b1", ["s1"])
        yield one.commit("f", v, "b1", 1, "x", 1, ["s1"], 0.0)
        assert one.kept_record("f") is None  # not trusted: the database is asked
        one.trust(time.monotonic() + 0.5)
        assert one.kept_record("f") is None  # forgotten when the trust began
        assert (yield one.read("f")).replicas == 1
        assert one.kept_record("f").replicas == 1
        behind.set_replicas("f", 3)
        assert (yield one.read("f")).replicas == 1  # from memory
        yield deferLater(reactor, 0.6, lambda: None)
        assert one.kept_record("f") is None and (yield one.read("f")).replicas == 3
        behind.set_replicas("f", 2)  # kept while not trusted: a guess, forgotten when trusted again
        one.trust(time.monotonic() + 5)
        assert (yield one.read("f")).replicas == 2
    finally:
        one.stop()
        behind.close()
        postgres.drop(url)


def test_a_proxy_among_others_changes_nothing_before_its_row_is_in_and_a_while_after(postgres, monkeypatch):
    """Among proxies (the proxy's own catalog), a change waits for this
    proxy's row and then WAIT seconds more, so that a proxy that took itself
    for alone before the row went in has stopped answering from memory; a
    change made once another proxy retired this one is refused whole."""
    import time

    from deposito.catalog import operations
    from deposito.catalog.postgres import PostgresBackend
    from deposito.errors import Unavailable

    monkeypatch.setattr(operations, "WAIT", 0.5)
    url = postgres.database()
    a, b = Catalog(PostgresBackend(url), among_proxies=True), Catalog(PostgresBackend(url))
    try:
        v = a.begin_upload("f", "b1", ["s1"])
        [(ok, error)] = a.batch([(Catalog.commit, ("f", v, "b1", 1, "x", 1, ["s1"], 0.0))])
        assert not ok and isinstance(error, Unavailable)  # its row is not in yet
        a.recover(0.0)
        assert 0.4 < a.change_delay() <= 0.5  # what CatalogThread holds a change back
        [(ok, error)] = a.batch([(Catalog.commit, ("f", v, "b1", 1, "x", 1, ["s1"], 0.0))])
        assert not ok and isinstance(error, Unavailable)  # too early
        time.sleep(0.5)
        assert a.change_delay() == 0
        [(ok, _)] = a.batch([(Catalog.commit, ("f", v, "b1", 1, "x", 1, ["s1"], 0.0))])
        assert ok and a.lookup("f") is not None
        b.recover(100.0)
        assert b.beat([], 100.0, 30.0, True)[1:4] == (1, 0, [])  # A retired: B alone
        [(ok, error)] = a.batch([(Catalog.set_replicas, ("f", 3))])
        assert not ok and isinstance(error, Unavailable) and "took over" in str(error)
        assert a.lookup("f").replicas == 1
        # an upload's start commits before its answer is read: it is refused whole too
        [(ok, error)] = a.batch([(Catalog.begin_upload, ("g", "b2", ["s1"]))])
        assert not ok and isinstance(error, Unavailable) and "took over" in str(error)
        assert b.db.execute("SELECT count(*) FROM intents WHERE blob = 'b2'").fetchone() == (0,)
        assert b.db.execute("SELECT count(*) FROM names WHERE name = 'g'").fetchone() == (0,)
    finally:
        a.close()
        b.close()
        postgres.drop(url)


def test_a_commit_among_proxies_sends_commit_with_its_writes_and_counts_once_its_proxy_is_gone(postgres, monkeypatch):
    """Among proxies, a commit's COMMIT goes with its writes, without
    waiting for them (its guard holds the proxy's row till then): when the
    proxy's connection is lost while its writes wait on a lock, the version
    is committed all the same, as if just before, and the proxy that then
    takes over the lost one's work finds none of its copies to make garbage."""
    import threading
    import time

    import psycopg

    from deposito.catalog import operations
    from deposito.catalog.postgres import PostgresBackend

    monkeypatch.setattr(operations, "WAIT", 0.0)
    url = postgres.database()
    a, b = Catalog(PostgresBackend(url), among_proxies=True), Catalog(PostgresBackend(url), among_proxies=True)
    holder = psycopg.connect(url)
    try:
        a.recover(0.0)
        version = a.begin_upload("f", "b1", ["s1"])
        holder.execute("UPDATE totals SET value = value")  # a commit's writes add to the totals: they wait
        outcome: list = []
        committing = threading.Thread(target=lambda: outcome.append(
            a.batch([(Catalog.commit, ("f", version, "b1", 1, "x", 1, ["s1"], 0.0))])))
        committing.start()
        waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        deadline = time.monotonic() + 10
        while b.db.execute(waiting).fetchone() != (1,):
            assert time.monotonic() < deadline, "the commit never waited on the lock"
            time.sleep(0.01)
        a.db.cut()  # the proxy is gone (its socket shut) while its writes wait
        committing.join(10)
        assert not committing.is_alive() and not outcome[0][0][0]  # it never heard the answer
        holder.rollback()  # the lock is let go: the writes run, then the COMMIT sent with them
        while b.lookups(["f"]) == [(True, None)]:
            assert time.monotonic() < deadline, "the commit sent with the writes was lost"
            time.sleep(0.01)
        assert b.lookup("f").servers == ("s1",)
        b.recover(100.0)
        assert b.beat([], 100.0, 30.0, True)[1:3] == (1, 0)  # A retired: no copy of its was left unfinished
        assert b.db.execute("SELECT count(*) FROM garbage").fetchone() == (0,)
        assert b.lookup("f").servers == ("s1",)
    finally:
        holder.close()
        a.close()
        b.close()
        postgres.drop(url)


def test_proxies_sharing_a_catalog_never_get_the_same_version(shared):
    a, b = shared
    versions = [c.begin_upload("f", f"b{i}", ["s1"]) for i, c in enumerate([a, b, a, b, b])]
    assert versions == [1, 2, 3, 4, 5]
    assert b.commit("f", 5, "b4", 1, "x", 1, ["s1"], 0.0)
    assert not a.commit("f", 3, "b2", 1, "x", 1, ["s1"], 0.0)  # older than the newest: garbage at once
    assert a.lookup("f").version == 5


def test_proxies_sharing_a_catalog_decide_a_conditional_write_on_the_same_current_version(shared):
    """Two proxies each store a lock file asking for no object: one wins.
    The newer version, committing while the older is under way, is told to
    try again (its condition could not see the older); the older commits,
    and the newer's next try is refused."""
    a, b = shared
    va, vb = a.begin_upload("lock", "ba", ["s1"]), b.begin_upload("lock", "bb", ["s2"])
    with pytest.raises(Conflict):
        b.commit("lock", vb, "bb", 1, "x", 1, ["s2"], 0.0, "", _absent)
    b.abandon("bb")
    assert a.commit("lock", va, "ba", 1, "y", 1, ["s1"], 0.0, "", _absent)
    again = b.begin_upload("lock", "bc", ["s2"])
    with pytest.raises(Precondition):
        b.commit("lock", again, "bc", 1, "x", 1, ["s2"], 0.0, "", _absent)
    assert a.lookup("lock").blob == "ba" and b.lookup("lock").blob == "ba"


def once_committed(a: Catalog, call, why: str):
    """``call()`` (through another proxy's catalog) while ``a`` holds its
    transaction open: it must wait for it (``why`` says what went wrong if
    it does not). Returns what ``call()`` returned, once ``a`` has committed."""
    import threading

    outcome: list = []
    waiter = threading.Thread(target=lambda: outcome.append(call()))
    waiter.start()
    waiter.join(0.5)
    assert waiter.is_alive(), why
    a.db.execute("COMMIT")
    waiter.join(10)
    assert not waiter.is_alive() and outcome, "it did not end once the transaction was committed"
    return outcome[0]


def test_a_commit_waits_for_another_proxys_commit_of_the_same_name(shared):
    """The name's row is locked: B's commit of version 2 decides only after
    A's transaction (which committed version 3) ends, and so loses."""
    a, b = shared
    a.begin_upload("f", "b1", ["s1"])
    v2 = b.begin_upload("f", "b2", ["s2"])
    v3 = a.begin_upload("f", "b3", ["s1"])
    a.db.execute("BEGIN")
    assert a.commit("f", v3, "b3", 1, "x", 1, ["s1"], 0.0)  # inside A's open transaction: a savepoint
    assert once_committed(a, lambda: b.commit("f", v2, "b2", 1, "y", 1, ["s2"], 0.0),
                          "B decided without waiting for A's lock") is False
    assert b.lookup("f").blob == "b3"


def test_a_delete_waits_for_another_proxys_commit_of_the_same_name(shared):
    """B's DELETE, arriving while A commits version 2, deletes version 2:
    its blob is garbage and the totals come to nothing."""
    a, b = shared
    v1 = a.begin_upload("f", "b1", ["s1"])
    a.commit("f", v1, "b1", 10, "x", 1, ["s1"], 0.0)
    v2 = a.begin_upload("f", "b2", ["s2"])
    a.db.execute("BEGIN")
    assert a.commit("f", v2, "b2", 20, "y", 1, ["s2"], 0.0)
    assert once_committed(a, lambda: b.delete("f"), "B deleted without waiting for A's lock").blob == "b2"
    counts = b.counts()
    assert (counts.files, counts.bytes, counts.wanted) == (0, 0, 0)
    assert sorted(b.garbage(["s1", "s2"])) == [("b1", "s1"), ("b2", "s2")]


def test_a_batch_that_loses_a_deadlock_runs_again_whole(shared):
    """A and B each lock one name, then want the other's: PostgreSQL ends
    one transaction; its batch runs again and every call in it is answered."""
    import threading

    a, b = shared
    for name in ("x", "y"):
        v = a.begin_upload(name, f"{name}1", ["s1"])
        a.commit(name, v, f"{name}1", 1, "x", 1, ["s1"], 0.0)
    both = threading.Barrier(2, timeout=10)
    runs = []

    def replicas_then(first: str, second: str):
        def touch(catalog, name, count):  # its result read: the row is locked once this returns
            catalog.db.execute("UPDATE files SET replicas = ? WHERE name = ? RETURNING name", (count, name)).fetchone()

        def call(catalog, count):
            runs.append(first)
            touch(catalog, first, count)
            if runs.count(first) == 1:
                both.wait()  # each holds its first row now
            touch(catalog, second, count)
        return call

    results = {}
    ta = threading.Thread(target=lambda: results.update(a=a.batch([(replicas_then("x", "y"), (2,))])))
    tb = threading.Thread(target=lambda: results.update(b=b.batch([(replicas_then("y", "x"), (3,))])))
    ta.start(), tb.start()
    ta.join(30), tb.join(30)
    assert all(ok for ok, _ in results["a"] + results["b"]), results
    # one ran again at least (on a loaded machine the batch that ran again may
    # deadlock a second time with the other, which then runs again too)
    assert len(runs) >= 3, runs
    assert a.lookup("x").replicas == a.lookup("y").replicas


@pytest_twisted.inlineCallbacks
def test_a_proxy_reads_what_another_proxy_wrote(postgres):
    """On a shared catalog nothing is kept in memory: every read and lookup
    asks the database, so a change made through one proxy shows at once in
    the other's answers."""
    from twisted.internet import reactor

    from deposito.catalog.postgres import PostgresBackend

    url = postgres.database()
    one, two = CatalogThread(reactor, Catalog(PostgresBackend(url))), CatalogThread(reactor, Catalog(PostgresBackend(url)))
    one.start(), two.start()
    try:
        v = yield one.begin_upload("f", "b1", ["s1"])
        yield one.commit("f", v, "b1", 1, "x", 1, ["s1"], 0.0)
        assert (yield two.read("f")).replicas == 1 and (yield two.lookup("f")).replicas == 1
        assert two.kept_record("f") is None
        yield one.set_replicas("f", 3)
        assert (yield two.read("f")).replicas == 3 and (yield two.lookup("f")).replicas == 3
        yield one.delete("f")
        assert (yield two.read("f")) is None
    finally:
        one.stop(), two.stop()
        postgres.drop(url)


def looked_up_again(cat: Catalog, name: str, seconds: float = 10.0):
    """The record of ``name`` once the catalog answers again; None if it does not within ``seconds``."""
    import time

    deadline = time.monotonic() + seconds
    while True:
        [(ok, record)] = cat.batch([(Catalog.lookup, (name,))])
        if ok or time.monotonic() > deadline:
            return record if ok else None
        time.sleep(0.2)


class FrozenLink:
    """A TCP relay on loopback to ``port`` that can stop passing bytes while
    every connection through it stays open: a database that stops answering
    (a frozen process or host) without closing anything."""

    def __init__(self, port: int) -> None:
        import socket
        import threading

        self.target = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.frozen = threading.Event()
        self.flowing = threading.Event()
        self.flowing.set()
        threading.Thread(target=self._accept, daemon=True).start()

    def freeze(self) -> None:
        self.flowing.clear()

    def thaw(self) -> None:
        self.flowing.set()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                near, _ = self.listener.accept()
            except OSError:
                return
            far = socket.create_connection(("127.0.0.1", self.target), 5)
            far.settimeout(None)
            for src, dst in ((near, far), (far, near)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src, dst) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                self.flowing.wait()
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.close()
            except OSError:
                pass

    def close(self) -> None:
        self.listener.close()


def test_a_database_that_stops_answering_is_unavailable_after_the_call_timeout(postgres):
    """The database's connections stay open but nothing comes back: neither
    the statement timeout (the server's) nor TCP's tell it. A call that waits
    past the call timeout has its connection cut and fails with Unavailable;
    once the database answers again, the next calls work."""
    import time

    from deposito.catalog.postgres import PostgresBackend
    from deposito.errors import Unavailable

    url = postgres.database()
    host, rest = url.rsplit(":", 1)
    port, database = rest.split("/")
    link = FrozenLink(int(port))
    backend = PostgresBackend(f"{host}:{link.port}/{database}")
    backend.call_timeout = 2.0
    cat = Catalog(backend)
    try:
        cat.commit("f", cat.begin_upload("f", "b1", ["s1"]), "b1", 1, "x", 1, ["s1"], 0.0)
        link.freeze()
        started = time.monotonic()
        [(ok, error)] = cat.batch([(Catalog.lookup, ("f",))])
        took = time.monotonic() - started
        assert not ok and isinstance(error, Unavailable) and 2.0 <= took < 5.0, (error, took)
        link.thaw()
        record = looked_up_again(cat, "f")
        assert record is not None and record.blob == "b1"
    finally:
        link.thaw()
        cat.close()
        link.close()
        postgres.drop(url)


def test_a_database_that_stops_answering_is_found_out_by_a_new_connection_and_a_slow_call_goes_on(postgres):
    """Past the probe time, the database is asked on a new connection whether
    it answers: frozen, the waiting call's connection is cut long before the
    call timeout; answering (the call only waits on a lock), the call goes on."""
    import threading
    import time

    import psycopg

    from deposito.catalog.postgres import PROBE_WAIT, PostgresBackend
    from deposito.errors import Unavailable

    url = postgres.database()
    host, rest = url.rsplit(":", 1)
    port, database = rest.split("/")
    link = FrozenLink(int(port))
    backend = PostgresBackend(f"{host}:{link.port}/{database}")
    backend.probe_after = 1.0  # (the call timeout stays the default, 17 s)
    cat = Catalog(backend)
    try:
        cat.commit("f", cat.begin_upload("f", "b1", ["s1"]), "b1", 1, "x", 1, ["s1"], 0.0)
        # a call that waits on another connection's lock, past the probe time: it goes on
        holder = psycopg.connect(url, autocommit=True)
        holder.execute("BEGIN")
        holder.execute("SELECT 1 FROM files WHERE name = 'f' FOR UPDATE")
        threading.Timer(3.0, holder.execute, ("COMMIT",)).start()
        started = time.monotonic()
        [(ok, outcome)] = cat.batch([(Catalog.set_replicas, ("f", 2))])
        took = time.monotonic() - started
        assert ok and outcome.replicas == 2 and 2.9 <= took < 8, (outcome, took)
        holder.close()
        link.freeze()
        started = time.monotonic()
        [(ok, error)] = cat.batch([(Catalog.lookup, ("f",))])
        took = time.monotonic() - started
        assert not ok and isinstance(error, Unavailable) and took < 1.0 + PROBE_WAIT + 1.5, (error, took)
        link.thaw()
        record = looked_up_again(cat, "f")
        assert record is not None and record.replicas == 2
    finally:
        link.thaw()
        cat.close()
        link.close()
        postgres.drop(url)


def test_the_database_down_is_unavailable_at_once_and_back_by_itself(postgres):
    """Every call fails fast with Unavailable while the database is down, and
    the next call after it is back connects again."""
    import time

    from deposito.catalog.postgres import PostgresBackend
    from deposito.errors import Unavailable

    url = postgres.database()
    cat = Catalog(PostgresBackend(url))
    try:
        v = cat.begin_upload("f", "b1", ["s1"])
        cat.commit("f", v, "b1", 1, "x", 1, ["s1"], 0.0)
        postgres.server.kill()
        try:
            for _ in range(3):
                started = time.monotonic()
                [(ok, error)] = cat.batch([(Catalog.lookup, ("f",))])
                assert not ok and isinstance(error, Unavailable) and time.monotonic() - started < 5
                assert "\n" not in error.reply() and "127.0.0.1" not in error.reply()  # the detail is logged
                [(ok, error)] = cat.lookups(["f"])
                assert not ok and isinstance(error, Unavailable)
        finally:
            postgres.start()
        record = looked_up_again(cat, "f")
        assert record is not None and record.blob == "b1"
    finally:
        cat.close()
        postgres.drop(url)


def queue(cat: Catalog, names: list[str]) -> None:
    for name in names:
        cat.commit(name, cat.begin_upload(name, "b" + name, ["s1"]), "b" + name, 1, "x", 2, ["s1"], 0.0)
    cat.enqueue(names)


def test_proxies_claim_different_queued_files_until_they_let_them_go(shared):
    a, b = shared
    queue(a, [f"f{i}" for i in range(10)])
    mine = [name for name, _, _ in a.due_work(1.0, 6)]
    theirs = [name for name, _, _ in b.due_work(1.0, 100)]
    assert len(mine) == 6 and len(theirs) == 4 and not set(mine) & set(theirs)
    assert {name for name, _, _ in b.due_work(1.0, 100)} == set(theirs)  # its own again, never A's
    # A settles all but one it is copying: the rest are free for B, the one held is not
    a.settle([Outcome(name, 1, 0.0) for name in mine], held=[mine[0]])
    again = {name for name, _, _ in b.due_work(1.0, 100)}
    assert set(mine[1:]) <= again and mine[0] not in again
    a.release([mine[0]])
    assert mine[0] in {name for name, _, _ in b.due_work(1.0, 100)}


def test_a_file_passed_to_the_others_is_theirs_at_once_and_its_passers_only_later(shared):
    """A proxy that cannot see some copies another proxy sees leaves the
    file to the others: they may take it at once, it itself only after
    PASSED_BACK (none took it), and a new change makes it anyone's again."""
    from deposito.catalog import WAITING
    from deposito.catalog.queue import PASSED_BACK

    a, b = shared
    queue(a, ["f", "g"])
    claimed = {name: gen for name, gen, _ in a.due_work(100.0, 10)}
    a.settle([Outcome(name, gen, 100.0, 3, 2, 2, passed=True) for name, gen in claimed.items()])
    assert a.due_work(100.0, 10) == [] and a.next_due() == 100.0 + PASSED_BACK
    assert b.next_due() == 100.0 and a.counts().under == 0
    taken = b.due_work(100.0, 1)
    assert [name for name, _, _ in taken] == ["f"]
    b.settle([Outcome("f", claimed["f"], 100.0, 3, 2, 2, passed=True)])  # b cannot judge it either: it waits
    assert a.db.execute("SELECT due, passed FROM work WHERE name = 'f'").fetchone() == (WAITING, None)
    assert b.counts().under == 0
    b.settle([Outcome("f", claimed["f"], None)])
    assert a.due_work(100.0 + PASSED_BACK - 1, 10) == []
    assert [name for name, _, _ in a.due_work(100.0 + PASSED_BACK, 10)] == ["g"]  # none took it
    a.settle([Outcome("g", claimed["g"], 200.0, 3, 2, 2, passed=True)])
    a.enqueue(["g"])  # changed since: anyone's, at once
    assert [name for name, _, _ in a.due_work(200.0, 10)] == ["g"]


def test_proxies_claim_different_garbage(shared):
    a, b = shared
    for name in ("f", "g"):
        a.commit(name, a.begin_upload(name, "b" + name, ["s1", "s2"]), "b" + name, 1, "x", 2, ["s1", "s2"], 0.0)
        a.delete(name)
    first = a.garbage(["s1", "s2"], 3)
    rest = b.garbage(["s1", "s2"], 10)
    assert len(first) == 3 and len(rest) == 1 and not set(first) & set(rest)
    a.release_garbage(first[1:])
    a.forget_garbage(first[:1], 50.0)
    assert sorted(b.garbage(["s1", "s2"], 10)) == sorted(first[1:] + rest)


def test_a_silent_proxy_is_retired_and_its_upload_cannot_commit(shared):
    """A proxy whose lease ran out: its unfinished upload is garbage that a
    live proxy deletes, its claims are free, and its commit is refused,
    so nothing acknowledged rests on copies being deleted."""
    from deposito.errors import Unavailable

    a, b = shared
    a.recover(100.0)
    b.recover(100.0)
    queue(a, ["q"])
    [(_, gen, _)] = a.due_work(100.0, 10)
    a.settle([Outcome("q", gen, 400.0)], held=["q"])  # its copies being made: put off, and held
    assert b.due_work(131.0, 10) == []
    v = a.begin_upload("f", "b1", ["s1", "s2"])
    assert b.beat(["s1"], 120.0, 30.0, True)[1:3] == (0, 0)  # not silent long enough yet
    assert b.beat(["s1"], 131.0, 30.0, True)[1:3] == (1, 2)
    assert sorted(b.garbage(["s1", "s2"], 10)) == [("b1", "s1"), ("b1", "s2")]
    assert [name for name, _, _ in b.due_work(131.0, 10)] == ["q"]  # its claim passed over
    with pytest.raises(Unavailable, match="lease"):
        a.commit("f", v, "b1", 1, "x", 2, ["s1", "s2"], 131.0)
    assert a.lookup("f") is None and b.lookup("f") is None
    # it comes back: a new beat, a new upload, which commits
    a.beat(["s1"], 132.0, 30.0, True)
    v = a.begin_upload("f", "b2", ["s1"])
    assert a.commit("f", v, "b2", 1, "x", 1, ["s1"], 132.0) and b.lookup("f").blob == "b2"


def test_proxies_whose_clocks_differ_agree_on_what_came_first(shared):
    """Each proxy gives its own clock's times; the catalog keeps them on
    the database's. With B's clock an hour behind, A retired B at every
    beat (its `seen` an hour old), and an inventory A took a copy B made
    after the listing began for one the server lacked (made before it):
    dropped, then deleted as a failed repair's garbage, the only copy."""
    import time

    a, b = shared
    b._machine_clock = lambda: time.time() - 3600  # B's clock, an hour behind
    a.recover(time.time())
    b.recover(time.time() - 3600)
    assert abs(b.skew - 3600) < 1 and a.skew == 0.0
    for _ in range(2):
        b.beat(["s1"], time.time() - 3600, 30.0, True)
        assert a.beat(["s1"], time.time(), 30.0, True).retired == 0
    assert a.beat(["s1"], time.time(), 30.0, True).others == [b.proxy]
    listing_began = time.time()  # (on A's clock) s1 lists its blobs, then B makes a copy there
    v = b.begin_upload("f", "b1", ["s1"])
    assert b.commit("f", v, "b1", 1, "x", 1, ["s1"], time.time() - 3600)
    missing, *_ = a.reconcile_inventory("s1", [], None, None, listing_began)
    assert missing == 0 and list(a.lookup("f").servers) == ["s1"]
    # a repair copy of a file's current blob that fails makes no garbage there
    a.abandon_copy("b1", "s2")
    assert a.garbage(["s1", "s2"], 10) == []
    # and a listing that began after the copy was made does drop it
    missing, *_ = a.reconcile_inventory("s1", [], None, None, time.time() + 1)
    assert missing == 1 and list(a.lookup("f").servers) == []


def test_a_proxy_that_stops_hands_over_at_once_and_sightings_are_shared(shared):
    from deposito.errors import Unavailable

    a, b = shared
    a.recover(0.0)
    b.recover(0.0)
    a.begin_upload("f", "b1", ["s1"])
    seen = b.beat(["s2"], 1.0, 30.0, True).seen
    assert seen == []
    seen = a.beat(["s1", "s3"], 3.0, 30.0, True).seen
    assert sorted(seen) == [("s2", 2.0)]  # B saw s2 two seconds ago
    assert sorted(b.beat([], 4.0, 30.0, True)[0]) == [("s1", 1.0), ("s3", 1.0)]
    assert a.leave() == 1
    assert b.garbage(["s1"], 10) == [("b1", "s1")]
    with pytest.raises(Unavailable, match="stopping"):  # an upload it began now would be nobody's to hand over
        a.begin_upload("g", "b2", ["s1"])
    assert b.beat([], 5.0, 30.0, True)[0] == []  # its sightings went with it


def test_a_rebuild_on_request_is_heard_by_the_other_proxies_until_it_ends_or_its_proxy_is_retired(shared):
    """A proxy rebuilding on request says so in its beats: the others' beats
    hear it (and turn clients away) until its beat says it is over, or until
    it falls silent past its lease and is retired."""
    a, b = shared
    a.recover(100.0)
    b.recover(100.0)
    assert not b.beat([], 100.0, 30.0, True).rebuilding
    assert not a.beat([], 101.0, 30.0, True, rebuilding=True).rebuilding  # (its own is not another's)
    assert b.beat([], 102.0, 30.0, True).rebuilding
    assert not a.beat([], 103.0, 30.0, True).rebuilding
    assert not b.beat([], 104.0, 30.0, True).rebuilding  # over
    a.beat([], 105.0, 30.0, True, rebuilding=True)
    assert b.beat([], 106.0, 30.0, True).rebuilding
    assert b.beat([], 136.0, 30.0, True)[1:5] == (1, 0, [], False)  # A silent past its lease: retired, mark and all


def test_a_delete_by_one_proxy_is_not_undone_by_an_inventory_another_listed_before(shared):
    a, b = shared
    a.commit("f", a.begin_upload("f", "b1", ["s1", "s2"]), "b1", 1, "x", 1, ["s1", "s2"], 0.0)
    a.drop_copies([("b1", "s2", 1)])  # over its count: dropped, to be deleted
    assert a.garbage(["s2"], 10) == [("b1", "s2")]
    a.forget_garbage([("b1", "s2")], 100.0)  # deleted at 100
    # s2 listed its blobs at 99, before the delete: b1 is in the listing, but is not counted again
    assert b.reconcile_inventory("s2", ["b1"], None, None, 99.0)[1] == 0
    assert b.lookup("f").servers == ("s1",)
    # a listing after the delete that still names it (a blob written again) counts
    assert b.reconcile_inventory("s2", ["b1"], None, None, 101.0)[1] == 1


def test_a_second_catalog_on_one_postgresql_database_writes_at_once(postgres):
    """Several proxies may share a PostgreSQL catalog: a second one on the
    same database writes at once, versions of a name stay distinct across
    the two, the newest commit wins, and each reads what the other wrote."""
    from deposito.catalog.postgres import PostgresBackend

    url = postgres.database()
    first = Catalog(PostgresBackend(url))
    second = Catalog(PostgresBackend(url))
    try:
        older = first.begin_upload("f", "b1", ["s1"])
        newer = second.begin_upload("f", "b2", ["s2"])
        assert (older, newer) == (1, 2)
        assert second.commit("f", newer, "b2", 1, "y", 1, ["s2"], 0.0)
        assert not first.commit("f", older, "b1", 1, "x", 1, ["s1"], 0.0)  # a newer one is there
        for cat in (first, second):
            record = cat.lookup("f")
            assert record is not None and (record.version, record.blob) == (2, "b2")
        assert first.delete("f") is not None
        assert second.lookup("f") is None
    finally:
        first.close()
        second.close()
        postgres.drop(url)


def opened_from(tmp_path, script: str) -> Catalog:
    """A catalog an older proxy left (tests/data/``script``, its SQL), opened by this one."""
    import sqlite3
    from pathlib import Path

    folder = tmp_path / "proxy"
    folder.mkdir()
    old = sqlite3.connect(folder / "catalog.sqlite")
    old.executescript((Path(__file__).parent / "data" / script).read_text())
    old.close()
    return Catalog(str(folder))


def test_the_first_catalog_opens_and_its_copies_are_judged_and_made(tmp_path):
    """A SQLite catalog of the first proxy (schema version 0, whose copies
    had no time made, tests/data/catalog-v0.sql): brought to this schema,
    it takes new files, and a server's listing and a repair copy count.
    Every PUT failed, and every listing, with 'no such column: since'."""
    cat = opened_from(tmp_path, "catalog-v0.sql")
    try:
        assert cat.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        a = cat.lookup("a.txt")
        assert (a.version, a.replicas, a.servers) == (2, 2, ("s1", "s2"))
        cat.recover(10.0)
        assert cat.reconcile_inventory("s1", ["a" * 32], None, None, 11.0) == (0, 0, [], [])
        assert cat.reconcile_inventory("s2", [], None, None, 11.0)[0] == 1  # made before the listing: missing
        cat.add_intent("a" * 32, "s3")
        assert cat.add_copy("a.txt", "a" * 32, "s3", 12.0)
        assert cat.begin_upload("a.txt", "b" * 32, ["s3"]) == 3
        assert cat.commit("a.txt", 3, "b" * 32, 1, "x", 1, ["s3"], 13.0)
        assert cat.lookup("a.txt").blob == "b" * 32
    finally:
        cat.close()


def test_a_catalog_from_before_several_proxies_opens_unchanged(tmp_path):
    """A SQLite catalog of schema version 1 (tests/data/catalog-v1.sql, as the
    proxy before several proxies left it) is brought to this schema in place:
    its files, versions and counts as they were, its unfinished upload
    garbage once the proxy starts, and new uploads commit."""
    cat = opened_from(tmp_path, "catalog-v1.sql")
    try:
        assert cat.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        indexes = {row[0] for row in cat.db.execute("SELECT name FROM sqlite_master WHERE tbl_name = 'work'")}
        assert "work_due_in_order" in indexes and "work_in_order" not in indexes  # (schema 7)
        kept, docs = cat.lookup("kept.bin"), cat.lookup("docs/b.txt")
        assert kept.meta == "" and cat.buckets("", "", 100) == []
        assert (kept.version, kept.replicas, kept.servers) == (1, 3, ("s1", "s2"))
        assert (docs.version, docs.blob, docs.servers) == (2, "c" * 32, ("s2",))
        counts = cat.counts()
        assert (counts.files, counts.bytes, counts.wanted) == (2, 1006, 4)
        assert cat.recover(10.0) == 2
        assert sorted(cat.garbage(["s1", "s2", "s3"], 10)) == [("b" * 32, "s1"), ("d" * 32, "s1"), ("d" * 32, "s3")]
        assert cat.begin_upload("unfinished", "e" * 32, ["s3"]) == 2  # versions go on from those given out
        assert cat.commit("unfinished", 2, "e" * 32, 1, "x", 1, ["s3"], 11.0, '{"etag": "e"}')
        assert [name for name, _, _ in cat.due_work(11.0, 10)] == ["kept.bin"]  # its raised count still queued
    finally:
        cat.close()
    again = Catalog(str(tmp_path / "proxy"))  # and opens again as it is
    try:
        assert again.lookup("unfinished").version == 2 and again.lookup("kept.bin").replicas == 3
        assert again.lookup("unfinished").meta == '{"etag": "e"}'
    finally:
        again.close()


def test_clients_lookups_answer_each_name_in_order_from_one_statement_a_page(cat):
    cat.commit("a", cat.begin_upload("a", "b1", ["s1"]), "b1", 1, "x", 1, ["s1"], 0.0)
    cat.commit("b", cat.begin_upload("b", "b2", ["s2"]), "b2", 2, "y", 1, ["s2"], 0.0)
    answers = cat.lookups(["b", "missing", "a", "b"])
    assert [(ok, r and (r.name, r.blob)) for ok, r in answers] == [
        (True, ("b", "b2")), (True, None), (True, ("a", "b1")), (True, ("b", "b2"))]
    many = [f"n{i}" for i in range(1200)] + ["a"]  # more than a page
    assert [r for _, r in cat.lookups(many)][-1].blob == "b1"


def test_a_retirement_waiting_on_a_commit_of_the_same_upload_makes_no_garbage_of_it(shared):
    """A commits while B retires it: B's retirement waits for the intents A's
    commit is taking, and then finds none, so the committed copy is not
    garbage as well (it would be deleted while counted)."""
    a, b = shared
    a.recover(0.0)
    b.recover(0.0)
    version = a.begin_upload("f", "b1", ["s1"])
    a.db.execute("BEGIN")
    assert a.commit("f", version, "b1", 1, "x", 1, ["s1"], 0.0)  # in A's open transaction
    retired = once_committed(a, lambda: b.beat([], 100.0, 30.0, True),
                             "B retired A's upload without waiting for A's commit")
    assert retired[1:3] == (1, 0)  # A retired, no copy made garbage
    assert b.garbage(["s1"], 10) == [] and b.lookup("f").servers == ("s1",)


def test_an_abandon_waiting_on_a_commit_of_the_same_upload_makes_no_garbage_of_it(shared):
    """An upload whose commit's answer was lost is abandoned while the commit
    still runs: the abandon waits for the intents the commit is taking, and
    then finds none, so the committed copy is not garbage as well."""
    a, b = shared
    version = a.begin_upload("f", "b1", ["s1"])
    a.db.execute("BEGIN")
    assert a.commit("f", version, "b1", 1, "x", 1, ["s1"], 0.0)  # in A's open transaction
    once_committed(a, lambda: b.abandon("b1"), "the abandon took the intents without waiting for the commit")
    assert b.garbage(["s1"], 10) == [] and b.lookup("f").servers == ("s1",)


def test_an_abandon_naming_its_servers_waits_on_a_commit_of_the_same_upload(shared):
    """As above, the servers written to named (see Catalog.abandon): it
    waits for the commit still running, then finds the blob committed, and
    none of its copies is garbage."""
    a, b = shared
    version = a.begin_upload("f", "b1", ["s1"])
    a.db.execute("BEGIN")
    assert a.commit("f", version, "b1", 1, "x", 1, ["s1"], 0.0)  # in A's open transaction
    once_committed(a, lambda: b.abandon("b1", "f", version, ["s1"]),
                   "the abandon went on without waiting for the commit")
    assert b.garbage(["s1"], 10) == [] and b.lookup("f").servers == ("s1",)


def test_a_copy_added_while_a_new_version_commits_is_garbage_with_its_old_version(shared):
    """A copy of the current version is counted (A) while B commits the next
    version: B's commit waits for A's, and then makes every copy of the old
    version garbage, the new one too (it would stay on its disk for good)."""
    a, b = shared
    a.recover(0.0)
    b.recover(0.0)
    v1 = b.begin_upload("f", "old", ["s1"])
    assert b.commit("f", v1, "old", 1, "x", 2, ["s1"], 0.0)
    v2 = b.begin_upload("f", "new", ["s2"])
    a.add_intent("old", "s3")  # the reconciler's copy of the old version, to s3
    a.db.execute("BEGIN")
    assert a.add_copy("f", "old", "s3", 1.0)  # in A's open transaction
    assert once_committed(a, lambda: b.commit("f", v2, "new", 1, "y", 2, ["s2"], 2.0),
                          "B's commit did not wait for the copy A is counting") is True
    assert b.lookup("f").blob == "new"
    assert b.db.execute("SELECT server FROM copies WHERE blob = 'old'").fetchall() == []
    assert sorted(b.garbage(["s1", "s3"], 10)) == [("old", "s1"), ("old", "s3")]


def test_a_retired_proxy_goes_on_under_a_new_id_and_its_uploads_cannot_commit(shared):
    from deposito.errors import Unavailable

    a, b = shared
    a.recover(0.0)
    b.recover(0.0)
    old = a.proxy
    version = a.begin_upload("f", "b1", ["s1", "s2"])
    assert b.beat([], 100.0, 30.0, True)[1:3] == (1, 2)
    a.beat([], 101.0, 30.0, True)  # it hears it was retired
    assert a.proxy != old
    a.add_intent("b1", "s3")  # a lane retried elsewhere, under the new id
    with pytest.raises(Unavailable):
        a.commit("f", version, "b1", 1, "x", 2, ["s1", "s3"], 101.0)
    assert a.lookup("f") is None



@pytest.fixture
def among(postgres, monkeypatch):
    """Two proxies' catalogs on one PostgreSQL database, as the proxies open them."""
    from deposito.catalog import operations

    monkeypatch.setattr(operations, "WAIT", 0.0)
    yield from two_catalogs(postgres, among_proxies=True)


def batched(cat: Catalog, method, *args):
    """One call as the catalog's thread makes it: a batch of its own (guarded as such)."""
    [(ok, result)] = cat.batch([(method, args)])
    if not ok:
        raise result
    return result


def test_a_retired_proxy_claims_nothing_before_it_hears_so_and_the_others_take_its_work(among):
    """A proxy retired while it was silent may claim work before its next
    beat tells it: those claims, under an id no proxy has any more, would
    stay for good (nobody hands them over). They are refused; once it goes
    on under a new id, the work is taken and done (before: the queued file
    and the garbage stayed claimed by the old id, and a repair's intent
    under it left a copy nobody deleted)."""
    a, b = among
    a.recover(100.0)
    b.recover(100.0)
    for name in ("q", "g"):
        version = batched(b, Catalog.begin_upload, name, "b" + name, ["s1", "s2"])
        assert batched(b, Catalog.commit, name, version, "b" + name, 1, "x", 2, ["s1", "s2"], 100.0)
    batched(b, Catalog.enqueue, ["q"])
    assert batched(b, Catalog.delete, "g") is not None  # its two copies are garbage
    assert b.beat([], 131.0, 30.0, True)[1] == 1  # a retired, silent past its lease
    for method, args in ((Catalog.due_work, (131.0, 10)), (Catalog.garbage, (["s1", "s2"], 10)),
                         (Catalog.add_intent, ("bq", "s3"))):  # a's reconciler and collector, before its beat
        with pytest.raises(Unavailable):
            batched(a, method, *args)
    a.beat([], 132.0, 30.0, True)  # it hears, and goes on under a new id
    assert [name for name, _, _ in batched(a, Catalog.due_work, 140.0, 10)] == ["q"]
    assert sorted(batched(b, Catalog.garbage, ["s1", "s2"], 10)) == [("bg", "s1"), ("bg", "s2")]
    assert b.db.execute("SELECT count(*) FROM intents").fetchone() == (0,)


def test_a_proxy_frozen_mid_transaction_holds_the_others_up_only_till_the_database_ends_it(postgres, monkeypatch):
    """A proxy frozen (or cut off) between two round trips of a transaction
    keeps its locks until the database ends the transaction: its proxy's
    row, the totals, the names it commits. Every connection says after how
    long (before: never, and every other proxy's beats and commits failed
    for as long as it stayed frozen); a listing's snapshot, which waits on
    its client, is exempt. Here with the timeouts shortened in the URL."""
    from urllib.parse import quote

    from deposito.catalog import operations
    from deposito.catalog.listing import NameRange
    from deposito.catalog.postgres import IDLE_TIMEOUT, PostgresBackend

    monkeypatch.setattr(operations, "WAIT", 0.0)
    url = postgres.database()
    plain = Catalog(PostgresBackend(url))
    try:
        shown = plain.db.execute("SHOW idle_in_transaction_session_timeout").fetchone()[0]
        assert shown == f"{IDLE_TIMEOUT // 1000}s"
        plain.commit("n", plain.begin_upload("n", "bn", ["s1"]), "bn", 1, "x", 1, ["s1"], 1.0)
        snapshot, count, _ = plain.backend.open_snapshot(NameRange(""), 10)
        assert count == 1
        assert snapshot.conn.execute("SHOW idle_in_transaction_session_timeout").fetchone() == ("0",)
        snapshot.close()
    finally:
        plain.close()
    quick = url + "?options=" + quote("-c statement_timeout=3000 -c idle_in_transaction_session_timeout=1000")
    a, b = Catalog(PostgresBackend(quick), among_proxies=True), Catalog(PostgresBackend(quick), among_proxies=True)
    try:
        a.recover(100.0)
        b.recover(100.0)
        v, w = batched(a, Catalog.begin_upload, "f", "b1", ["s1"]), batched(a, Catalog.begin_upload, "g", "b2", ["s1"])
        a.db.execute("BEGIN")  # a's group commit, half-way...
        assert a.guard_changes(a.db)
        assert a.commit("f", v, "b1", 1, "x", 1, ["s1"], 100.0) and a.commit("g", w, "b2", 1, "x", 1, ["s1"], 100.0)
        # ...when its host froze: the connection is neither used nor closed again
        beats = [b.batch([(Catalog.beat, ([], t, 30.0, True))])[0][0] for t in (131.0, 133.0)]
        x = batched(b, Catalog.begin_upload, "f", "b3", ["s2"])
        assert beats == [True, True] and batched(b, Catalog.commit, "f", x, "b3", 1, "x", 1, ["s2"], 136.0)
        assert b.lookup("f").blob == "b3" and b.lookup("g") is None  # a's half-made commit undone
    finally:
        a.close()
        b.close()
        postgres.drop(url)


def test_a_version_keeps_its_time_and_meta_and_the_next_version_its_own(cat):
    cat.commit("b/k", cat.begin_upload("b/k", "b1", ["s1"]), "b1", 1, "x", 1, ["s1"], 5.0, '{"type": "text/plain"}')
    first = cat.lookup("b/k")
    assert (first.created, first.meta) == (5.0, '{"type": "text/plain"}')
    cat.commit("b/k", cat.begin_upload("b/k", "b2", ["s1"]), "b2", 1, "y", 1, ["s1"], 6.0)
    second = cat.lookup("b/k")
    assert (second.version, second.created, second.meta) == (2, 6.0, "")
    assert [(r.name, r.meta) for r in cat.list("b/")] == [("b/k", "")]


def test_buckets_are_made_once_listed_in_order_and_deleted_only_when_empty(cat):
    assert cat.create_bucket("photos", 1.0) and cat.create_bucket("docs", 2.0)
    assert not cat.create_bucket("photos", 3.0)  # made already: its time stays
    assert cat.buckets("", "", 100) == [("docs", 2.0), ("photos", 1.0)]
    assert cat.bucket("photos") == 1.0 and cat.bucket("nope") is None
    cat.commit("photos/a.jpg", cat.begin_upload("photos/a.jpg", "b1", ["s1"]), "b1", 1, "x", 1, ["s1"], 0.0)
    cat.commit("photos.old", cat.begin_upload("photos.old", "b2", ["s1"]), "b2", 1, "x", 1, ["s1"], 0.0)
    cat.commit("photos0", cat.begin_upload("photos0", "b3", ["s1"]), "b3", 1, "x", 1, ["s1"], 0.0)
    with pytest.raises(NotEmpty):
        cat.delete_bucket("photos")
    assert cat.bucket("photos") == 1.0
    cat.delete("photos/a.jpg")
    cat.delete_bucket("photos")  # names beside the bucket's ("photos.old", "photos0") are not in it
    assert cat.bucket("photos") is None and [name for name, _ in cat.buckets("", "", 100)] == ["docs"]
    with pytest.raises(NotFound):
        cat.delete_bucket("photos")


def test_a_write_into_a_bucket_commits_only_while_the_bucket_exists(cat):
    assert cat.create_bucket("kept", 1.0)
    v = cat.begin_upload("kept/a", "b1", ["s1"])
    assert cat.commit("kept/a", v, "b1", 1, "x", 1, ["s1"], 0.0, bucket="kept")
    with pytest.raises(NotEmpty):
        cat.delete_bucket("kept")
    v = cat.begin_upload("gone/a", "b2", ["s1"])
    with pytest.raises(NotFound):  # no such bucket (deleted while the bytes came): nothing is kept
        cat.commit("gone/a", v, "b2", 1, "x", 1, ["s1"], 0.0, bucket="gone")
    assert cat.lookup("gone/a") is None
    cat.abandon("b2")
    assert ("b2", "s1") in cat.db.execute("SELECT blob, server FROM garbage").fetchall()


def test_buckets_are_listed_a_page_at_a_time_by_prefix(cat):
    names = ["a-1", "a-2", "a-3", "a.b", "ab", "b-1"]
    for i, name in enumerate(names):
        assert cat.create_bucket(name, float(i))
    assert [n for n, _ in cat.buckets("a-", "", 2)] == ["a-1", "a-2"]
    assert [n for n, _ in cat.buckets("a-", "a-2", 2)] == ["a-3"]
    assert [n for n, _ in cat.buckets("a", "a-3", 10)] == ["a.b", "ab"]
    assert [n for n, _ in cat.buckets("", "ab", 10)] == ["b-1"]
    assert cat.buckets("c", "", 10) == [] and cat.buckets("", "", 0) == []
    pages, after = [], ""
    while page := cat.buckets("", after, 4):
        pages.append([n for n, _ in page])
        after = page[-1][0]
    assert pages == [names[:4], names[4:]]


def _absent(current):
    """If-None-Match: * as a condition (see Expect)."""
    if current is not None:
        raise Precondition(f"version {current.version} is there")


def _blob_is(blob, asked):
    """If-Match as a condition (see Expect): the current version is of ``blob``;
    the versions it was asked about go to ``asked``."""
    def expect(current):
        asked.append(current and current.version)
        if current is None or current.blob != blob:
            raise Precondition("another version")
    return expect


def test_a_conditional_commit_is_decided_on_the_current_version_and_a_refused_one_counts_nothing(cat):
    seen = []
    v1 = cat.begin_upload("f", "b1", ["s1"])
    assert cat.commit("f", v1, "b1", 1, "x", 1, ["s1"], 0.0, "", _absent)  # nothing there: it holds
    v2 = cat.begin_upload("f", "b2", ["s1", "s2"])
    with pytest.raises(Precondition):
        cat.commit("f", v2, "b2", 1, "y", 2, ["s1", "s2"], 1.0, "", _absent)
    assert (cat.lookup("f").blob, cat.counts().files, cat.counts().bytes) == ("b1", 1, 1)  # unchanged
    cat.abandon("b2")  # what the writer does with a refused upload: its copies are garbage
    assert sorted(cat.garbage(["s1", "s2"])) == [("b2", "s1"), ("b2", "s2")]
    v3 = cat.begin_upload("f", "b3", ["s2"])
    assert cat.commit("f", v3, "b3", 1, "z", 1, ["s2"], 2.0, "", _blob_is("b1", seen))  # If-Match of the current one
    assert cat.lookup("f").blob == "b3" and seen == [1]


def test_a_conditional_commit_overtaken_by_a_newer_version_is_refused_not_dropped_quietly(cat):
    """Two writers both asking for no object (a lock file): the one whose
    version is older, committing second, must be told no, not counted as an
    older version silently replaced. (The newer committed first once the
    older was no longer under way: here, an older proxy's upload, whose
    intents tell no version.)"""
    first = cat.begin_upload("lock", "b1", ["s1"])
    second = cat.begin_upload("lock", "b2", ["s1"])
    cat.db.execute("UPDATE intents SET version = NULL WHERE blob = 'b1'")
    assert cat.commit("lock", second, "b2", 1, "x", 1, ["s1"], 0.0, "", _absent)
    with pytest.raises(Precondition):
        cat.commit("lock", first, "b1", 1, "y", 1, ["s1"], 0.0, "", _absent)
    assert cat.lookup("lock").blob == "b2"


def test_a_conditional_delete_removes_only_a_version_that_meets_it(cat):
    asked = []
    cat.commit("f", cat.begin_upload("f", "b1", ["s1"]), "b1", 1, "x", 1, ["s1"], 0.0)
    cat.commit("f", cat.begin_upload("f", "b2", ["s1"]), "b2", 1, "y", 1, ["s1"], 1.0)
    with pytest.raises(Precondition):
        cat.delete("f", _blob_is("b1", asked))
    assert cat.lookup("f").blob == "b2" and cat.counts().files == 1
    assert cat.delete("f", _blob_is("b2", asked)).blob == "b2"
    assert cat.lookup("f") is None and cat.delete("f") is None
    with pytest.raises(Precondition):  # nothing there: the condition is asked, and says no
        cat.delete("f", _blob_is("b2", asked))
    assert asked == [2, 2, None]


def test_a_conditional_commit_that_holds_but_was_overtaken_is_a_conflict_not_a_quiet_yes(cat):
    """A lock file taken and given back while this writer's upload was under
    way: no object now, so its condition holds, but a newer write of the
    name (the delete) was committed; told yes, it would hold a lock that
    nobody sees, and the next writer would be told yes too."""
    mine = cat.begin_upload("lock", "b1", ["s1"])
    other = cat.begin_upload("lock", "b2", ["s1"])
    assert cat.commit("lock", other, "b2", 1, "x", 1, ["s1"], 0.0, "")  # (a plain write: no condition)
    assert cat.delete("lock").blob == "b2"
    with pytest.raises(Conflict):
        cat.commit("lock", mine, "b1", 1, "y", 1, ["s1"], 1.0, "", _absent)
    cat.abandon("b1")  # (as the proxy does with a refused write)
    assert cat.lookup("lock") is None
    assert cat.commit("lock", cat.begin_upload("lock", "b3", ["s1"]), "b3", 1, "z", 1, ["s1"], 2.0, "", _absent)


def test_a_refused_conditional_complete_leaves_the_upload_under_way(cat):
    cat.create_upload("a" * 32, "obj", 1, "", 0.0)
    part = part_name("a" * 32, 1, "1" * 32)
    cat.commit_part("a" * 32, part, cat.begin_upload(part, "p1", ["s1"]), "p1", 5, "s" * 64, 1, ["s1"], 1.0)
    cat.commit("obj", cat.begin_upload("obj", "b0", ["s1"]), "b0", 1, "x", 1, ["s1"], 1.0)
    v = cat.begin_upload("obj", "m1", ["s1"])
    with pytest.raises(Precondition):
        cat.complete("a" * 32, "obj", v, "m1", 10, "d" * 64, 1, ["s1"], 2.0, "", [part], "f" * 64, _absent)
    cat.abandon("m1")  # (as the proxy does with a refused write's manifest)
    assert cat.lookup("obj").blob == "b0"
    cat.delete("obj")
    v = cat.begin_upload("obj", "m2", ["s1"])  # still under way: completed once the condition holds
    assert cat.complete("a" * 32, "obj", v, "m2", 10, "d" * 64, 1, ["s1"], 3.0, "", [part], "f" * 64, _absent)
    assert cat.lookup("obj").parts == "a" * 32


def test_a_postgresql_catalog_of_schema_2_is_brought_to_this_schema_in_place(postgres):
    """Version 3 added files.meta and buckets, version 4 files.parts,
    files.start and uploads, version 5 work.passed, version 6 an index of
    garbage by server, version 7 the queue's order without the files
    waiting: a catalog of version 2 (made here by taking them away again,
    and with the queue's order of before) gets them when a proxy opens it,
    its files as they were."""
    from deposito.catalog.postgres import PostgresBackend

    url = postgres.database()
    old = Catalog(PostgresBackend(url))
    try:
        old.commit("f", old.begin_upload("f", "b1", ["s1"]), "b1", 1, "x", 1, ["s1"], 0.0)
        for column in ("meta", "parts", "start"):
            old.db.execute(f"ALTER TABLE files DROP COLUMN {column}")
        old.db.execute("ALTER TABLE work DROP COLUMN passed")
        old.db.execute("DROP TABLE buckets")
        old.db.execute("DROP TABLE uploads")
        old.db.execute("DROP INDEX garbage_by_server")
        old.db.execute("DROP INDEX work_due_in_order")
        old.db.execute("CREATE INDEX work_in_order ON work (rank, due)")
        old.db.execute("UPDATE catalog_schema SET version = 2")
    finally:
        old.close()
    cat = Catalog(PostgresBackend(url))
    try:
        assert cat.db.execute("SELECT version FROM catalog_schema").fetchone()[0] == SCHEMA_VERSION
        indexes = {row[0] for row in cat.db.execute("SELECT indexname FROM pg_indexes WHERE tablename IN"
                                                    " ('garbage', 'work')").fetchall()}
        assert {"garbage_by_server", "work_due_in_order"} <= indexes and "work_in_order" not in indexes
        cat.enqueue(["f"])
        assert cat.due_work(1.0, 10) == [("f", 0, 0)] and cat.next_due() == 0.0
        assert (cat.lookup("f").blob, cat.lookup("f").meta, cat.lookup("f").parts) == ("b1", "", "")
        assert cat.db.execute("SELECT count(*) FROM uploads").fetchone()[0] == 0
        assert cat.create_bucket("b", 1.0) and cat.buckets("", "", 100) == [("b", 1.0)]
    finally:
        cat.close()
        postgres.drop(url)


def test_a_postgresql_catalog_of_a_newer_schema_is_refused_and_left_as_it_was(postgres):
    """A catalog a newer Deposito made or upgraded: opening it raises
    NewerSchema (the proxy stops, saying so) and changes nothing in it."""
    from deposito.catalog.postgres import PostgresBackend
    from deposito.catalog.schema import NewerSchema

    url = postgres.database()
    old = Catalog(PostgresBackend(url))
    try:
        old.commit("f", old.begin_upload("f", "b1", ["s1"]), "b1", 1, "x", 1, ["s1"], 0.0)
        old.db.execute("UPDATE catalog_schema SET version = ?", (SCHEMA_VERSION + 1,))
        tables = old.db.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()[0]
    finally:
        old.close()
    with pytest.raises(NewerSchema, match=f"schema version {SCHEMA_VERSION + 1}"):
        Catalog(PostgresBackend(url))
    import psycopg

    with psycopg.connect(url) as look:
        assert look.execute("SELECT version FROM catalog_schema").fetchall() == [(SCHEMA_VERSION + 1,)]
        assert look.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()[0] == tables
        assert look.execute("SELECT name, blob FROM files").fetchall() == [("f", "b1")]
    postgres.drop(url)


def test_a_catalog_whose_disk_is_full_refuses_changes_with_nospace_and_still_answers(tmp_path):
    """SQLite told it may grow no more (as a full disk tells it): each change
    is refused with NoSpace, the clients' error for it, and undone whole;
    what is stored is still read, and changes go on once there is room."""
    from deposito.errors import NoSpace

    cat = Catalog(str(tmp_path))
    try:
        v = alone(cat, Catalog.begin_upload, "kept", "b0", ["s1"])
        assert alone(cat, Catalog.commit, "kept", v, "b0", 1, "x", 1, ["s1"], 0.0)
        cat.db.execute("PRAGMA journal_mode=DELETE")  # (a WAL grows past max_page_count till its checkpoint)
        pages = cat.db.execute("PRAGMA page_count").fetchone()[0]
        cat.db.execute(f"PRAGMA max_page_count = {pages}")
        outcomes = [cat.batch([(Catalog.begin_upload, (f"f{i}", f"b{i + 1}", ["s1"]))])[0] for i in range(2000)]
        refused = [e for ok, e in outcomes if not ok]
        assert refused and all(isinstance(e, NoSpace) and "disk is full" in str(e) for e in refused), refused[:3]
        begun = len(outcomes) - len(refused)  # those that fit in the pages there were
        assert cat.db.execute("SELECT count(*) FROM intents").fetchone() == (begun,)
        assert cat.lookup("kept").blob == "b0"
        cat.db.execute(f"PRAGMA max_page_count = {pages * 100}")
        assert alone(cat, Catalog.begin_upload, "f1999", "b2000", ["s1"]) == 1
    finally:
        cat.close()


def test_a_catalog_file_removed_or_replaced_under_the_proxy_refuses_changes_and_is_still_read(tmp_path):
    """Changes written to a catalog file no longer on disk would be lost
    with it: each is Unavailable, saying what to do; the clients' lookups
    still answer from the file open, even the first of them. A file put in
    its place is not taken for it either."""
    from deposito.errors import Unavailable

    cat = Catalog(str(tmp_path))
    reader = cat.reader()
    try:
        v = alone(cat, Catalog.begin_upload, "kept", "b0", ["s1"])
        assert alone(cat, Catalog.commit, "kept", v, "b0", 1, "x", 1, ["s1"], 0.0)
        for leftover in tmp_path.glob("catalog.sqlite*"):
            leftover.unlink()
        for _ in range(2):
            [(ok, error)] = cat.batch([(Catalog.set_replicas, ("kept", 3))])
            assert not ok and isinstance(error, Unavailable) and "removed or replaced" in str(error), error
            [(ok, record)] = reader.lookups(["kept"])
            assert ok and record.replicas == 1
            (tmp_path / "catalog.sqlite").write_bytes(b"")  # a new file in its place
    finally:
        reader.close()
        cat.close()


def test_a_catalog_whose_disk_cannot_be_written_refuses_changes_as_unavailable_and_still_answers(tmp_path):
    """SQLite told its file is read-only (as a disk turned read-only tells
    it): each change is Unavailable, saying why; what is stored is still read."""
    from deposito.errors import Unavailable

    cat = Catalog(str(tmp_path))
    try:
        v = alone(cat, Catalog.begin_upload, "kept", "b0", ["s1"])
        assert alone(cat, Catalog.commit, "kept", v, "b0", 1, "x", 1, ["s1"], 0.0)
        cat.db.execute("PRAGMA query_only = ON")
        [(ok, error)] = cat.batch([(Catalog.set_replicas, ("kept", 3))])
        assert not ok and isinstance(error, Unavailable) and "cannot be written" in str(error), error
        assert cat.lookup("kept").replicas == 1
        cat.db.execute("PRAGMA query_only = OFF")
        assert alone(cat, Catalog.set_replicas, "kept", 3).replicas == 3
    finally:
        cat.close()


def alone(catalog: Catalog, method, *args):
    """``method`` called as the proxy calls it: a batch of one (on PostgreSQL,
    its statements pipelined), its result or its error raised."""
    [(ok, result)] = catalog.batch([(method, args)])
    if not ok:
        raise result
    return result


def test_calls_made_alone_see_how_many_rows_their_statements_changed(cat):
    """A copy whose intent is gone does not count, a waking counts the files
    it made due, and a proxy that finds its own row gone goes on under a new
    id, when each is a batch of its own, as the proxy makes them."""
    v = alone(cat, Catalog.begin_upload, "f", "b1", ["s1"])
    assert alone(cat, Catalog.commit, "f", v, "b1", 1, "x", 2, ["s1"], 0.0)
    alone(cat, Catalog.add_intent, "b1", "s2")
    alone(cat, Catalog.abandon_copy, "b1", "s2")  # the intent taken back: garbage...
    alone(cat, Catalog.forget_garbage, [("b1", "s2")], 0.5)  # ...deleted already
    assert alone(cat, Catalog.add_copy, "f", "b1", "s2", 1.0) is False
    assert cat.lookup("f").servers == ("s1",)
    alone(cat, Catalog.enqueue, ["f", "g"], 50.0)
    assert alone(cat, Catalog.wake, 10.0) == 2
    alone(cat, Catalog.recover, 0.0)
    old = cat.proxy
    cat.db.execute("DELETE FROM proxies")  # retired by another proxy meanwhile
    alone(cat, Catalog.beat, [], 1.0, 30.0, True)
    assert cat.proxy != old
    assert cat.db.execute("SELECT id FROM proxies").fetchall() == [(cat.proxy,)]


def test_a_rebuild_makes_again_the_buckets_s3_stored_versions_name(cat):
    """A version with gateway metadata was stored through S3: adopting it
    makes its bucket again; a file the text protocol stored makes none."""
    meta = '{"etag": "0123456789abcdef0123456789abcdef", "type": "text/plain"}'
    cat.adopt("s1", [("b1", 1, 3, "x", 1, "photos/cat.jpg", meta), ("b2", 1, 3, "y", 1, "notes/a.txt", "")], 5.0)
    assert cat.bucket("photos") == 5.0
    assert cat.bucket("notes") is None
    assert cat.create_bucket("docs", 1.0)
    cat.adopt("s1", [("b3", 1, 3, "z", 1, "docs/old.txt", meta)], 9.0)
    assert cat.bucket("docs") == 1.0  # one there already is kept as it is


def test_a_connection_whose_prepared_statements_are_gone_is_made_again(shared):
    """psycopg prepares a statement run often; if the database no longer has
    it (a batch that failed in pipeline mode can leave them out of step),
    the connection is made again and the call runs again on it, once (the
    failed one's transaction was undone): the caller sees no error."""
    a, _ = shared
    for i in range(8):  # past psycopg's threshold: the lookup is prepared
        assert a.batch([(Catalog.lookup, (f"n{i}",))]) == [(True, None)]
    before = a.db
    a.db.conn.pgconn.exec_(b"DEALLOCATE ALL")  # behind psycopg's back
    assert a.batch([(Catalog.lookup, ("n0",))]) == [(True, None)]  # as the proxy calls it
    assert a.db is not before  # on a new connection


def test_the_write_ahead_log_shrinks_back_once_a_long_read_lets_go(tmp_path, monkeypatch):
    """SQLite: while a read holds its snapshot (a listing read slowly), no
    checkpoint passes it and the log grows with every change; once it lets
    go, the log file is cut back to WAL_KEPT, not kept at its largest."""
    import os
    import sqlite3

    from deposito.catalog import sqlite as backend

    monkeypatch.setattr(backend, "WAL_KEPT", 1 << 20)
    cat = Catalog(str(tmp_path))
    cat.db.execute("PRAGMA synchronous=OFF")  # (a test's catalog need not survive a power cut)
    wal = tmp_path / "catalog.sqlite-wal"
    reader = sqlite3.connect(tmp_path / "catalog.sqlite")
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM files").fetchone()

    def store(i):
        blob = f"{i:032x}"
        v = cat.begin_upload(f"f{i}", blob, ["s1", "s2"])
        assert cat.commit(f"f{i}", v, blob, 1, "x", 2, ["s1", "s2"], 0.0)

    i = 0
    while os.path.getsize(wal) < 8 << 20:
        store(i)
        i += 1
    grown = os.path.getsize(wal)
    reader.rollback()
    reader.close()
    smallest = grown
    for j in range(i, i + 1000):  # the next changes checkpoint, then start the log again from its head
        store(j)
        smallest = min(smallest, os.path.getsize(wal))
    assert smallest <= (1 << 20) + (64 << 10) < grown  # (the pages of the change that started it again)
    assert len(cat.list()) == i + 1000
    cat.close()


def test_claiming_garbage_reads_only_the_servers_asked_for(tmp_path):
    """A dead server's copies, dropped once replaced, wait as garbage until
    it comes back: the collector's claim (every 2 s) and STATUS must not
    read them all each time."""
    cat = Catalog(str(tmp_path))
    cat.db.execute("BEGIN")
    cat.db.executemany("INSERT INTO garbage (blob, server) VALUES (?, ?)",
                       [(f"{i:032x}", "dead") for i in range(20000)])
    cat.db.executemany("INSERT INTO garbage (blob, server) VALUES (?, ?)", [(f"{i:032x}", "a") for i in range(5)])
    cat.db.execute("COMMIT")
    steps = []
    cat.db.set_progress_handler(lambda: steps.append(1), 1000)  # called every 1000 steps of the database's VM
    assert sorted(cat.garbage(["a", "b"])) == [(f"{i:032x}", "a") for i in range(5)]
    cat.db.set_progress_handler(None, 0)
    assert len(steps) < 5, len(steps)  # a scan of the dead server's 20,000 would take about 200
    cat.close()


def test_status_counts_the_garbage_of_the_servers_up_alone(cat):
    """STATUS counts the garbage that can be deleted: on the servers up,
    each read through the index by server. It read every row of every
    server's garbage: a server gone for good with 172,858 copies left made
    each STATUS take 10 ms, and /metrics 21 ms, for as long as it stayed
    gone (a review at scale)."""
    from deposito.catalog.changes import INSERT_GARBAGE

    cat.db.execute("BEGIN")
    cat.db.executemany(INSERT_GARBAGE, [(f"{i:032x}", "gone") for i in range(500)] + [("a" * 32, "s1")])
    cat.db.execute("COMMIT")
    assert cat.counts(["s1", "s2"]).garbage == [("s1", 1), ("s2", 0)]
    assert cat.counts([]).garbage == []
    if not cat.backend.shared:  # (PostgreSQL's planner may scan so small a table whole)
        plan = " ".join(str(row) for row in cat.db.execute(
            "EXPLAIN QUERY PLAN SELECT count(*) FROM garbage WHERE server = ?", ("s1",)).fetchall())
        assert "garbage_by_server" in plan, plan


def test_a_change_waits_for_this_proxy_to_join_the_others_ten_seconds_at_most(catalogs):
    """A change waits until the others may have heard of this proxy (see
    Catalog.change_delay); a proxy retired and joining again at every beat
    (its clock an hour off, before the catalog kept the database's) made
    every change wait for good: a DELETE hung 120 s and more."""
    from twisted.internet import task

    from deposito.catalog.thread import MAX_JOIN_WAIT

    clock = task.Clock()
    cat = catalogs.new()
    db = CatalogThread(clock, cat)  # (not started: no call reaches the database here)
    cat.change_delay = lambda: 3.5  # joined again since, every time
    outcome: list = []
    db.delete("f").addBoth(outcome.append)
    for _ in range(int(MAX_JOIN_WAIT / 3.5) + 1):
        clock.advance(3.5)
    assert outcome and outcome[0].check(Unavailable) and "joining the others" in outcome[0].getErrorMessage()
    cat.close()


@pytest_twisted.inlineCallbacks
def test_the_record_a_commit_leaves_in_memory_has_its_time_on_the_databases_clock(postgres):
    """A proxy an hour ahead kept the record it committed with its own
    time: its HEAD said Last-Modified an hour later than the other proxy's,
    for one version of one object."""
    import time

    from twisted.internet import reactor

    from deposito.catalog.postgres import PostgresBackend

    url = postgres.database()
    cat = Catalog(PostgresBackend(url))
    cat._machine_clock = lambda: time.time() + 3600  # this proxy's clock, an hour ahead
    db = CatalogThread(reactor, cat)
    db.start()
    try:
        yield db.recover(time.time() + 3600)
        db.trust(time.monotonic() + 60)  # alone: the records it keeps are answered
        v = yield db.begin_upload("f", "b1", ["s1"])
        assert (yield db.commit("f", v, "b1", 1, "x", 1, ["s1"], time.time() + 3600))
        kept = yield db.lookup("f")
        stored = cat.reader().lookup("f")
        assert abs(stored.created - time.time()) < 60 and abs(kept.created - stored.created) < 1, (kept, stored)
        assert abs(db.on_db_clock(time.time() + 3600) - time.time()) < 1
    finally:
        db.stop()
        postgres.drop(url)


def test_the_database_clock_is_read_in_a_round_trip_of_its_own(shared):
    """Read behind the statements of its batch (a commit waiting on a lock,
    a page of an inventory), the clock came late: a proxy in step with the
    database was given half their time as its skew, and lost it at the next
    beat alone, its times going to and fro."""
    import time

    a, _ = shared
    a.recover(time.time())

    def slow(self):
        self.db.execute("SELECT pg_sleep(0.6)")

    for _ in range(2):
        assert [ok for ok, _ in a.batch([(slow, ()), (Catalog.beat, (["s1"], time.time(), 30.0, True))])] == [True, True]
        assert a.skew == 0.0
