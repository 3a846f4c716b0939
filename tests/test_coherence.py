"""Proxies sharing a PostgreSQL catalog answer lookups from the records
they keep, and still see each other's changes at once
(deposito.catalog.coherence): two catalogs as two proxies use them, on a
real private PostgreSQL."""

from __future__ import annotations

import json
import os
import time

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater

from deposito.catalog import Catalog, CatalogThread, coherence, operations


def sleep(seconds: float):
    return deferLater(reactor, seconds, lambda: None)


@pytest.fixture
def proxies(postgres, monkeypatch):
    """Two proxies' catalogs (A and B) on one fresh database, each with its row in."""
    from deposito.catalog.postgres import PostgresBackend

    monkeypatch.setattr(operations, "WAIT", 0.2)  # (the other proxy is trusted only once its view has both)
    url = postgres.database()
    a = CatalogThread(reactor, Catalog(PostgresBackend(url), among_proxies=True))
    b = CatalogThread(reactor, Catalog(PostgresBackend(url), among_proxies=True))
    a.catalog.recover(time.time())
    b.catalog.recover(time.time())
    a.start()
    b.start()
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()
        postgres.drop(url)


@defer.inlineCallbacks
def beat_until_trusted(*proxies: CatalogThread, within: float = 5.0):
    """Beat (as deposito.depot.liveness does) until every proxy answers from memory."""
    deadline = time.monotonic() + within
    while not all(p.coherence.trusted() for p in proxies):
        assert time.monotonic() < deadline, "the proxies never came to trust the records they keep"
        for p in proxies:
            began = time.monotonic()
            beat = yield p.beat([], time.time(), 30.0, False)
            p.seen_proxies(beat.others, began)
        yield sleep(0.1)


@pytest_twisted.inlineCallbacks
def test_a_change_through_one_proxy_is_seen_at_once_through_the_other_answering_from_memory(proxies):
    a, b = proxies
    assert not a.coherence.trusted() and not b.coherence.trusted()  # no beat yet: every lookup asks
    yield beat_until_trusted(a, b)
    v = yield a.begin_upload("f", "b1", ["s1"])
    assert (yield a.commit("f", v, "b1", 1, "x", 1, ["s1"], time.time()))
    assert (yield b.read("f")).version == v
    for i in range(40):
        yield beat_until_trusted(a, b)
        assert b.kept_record("f") is not None  # what B answers is from memory...
        writer, reader = (a, b) if i % 2 else (b, a)
        replicas = 2 + i % 3
        yield writer.set_replicas("f", replicas)
        # ...and yet a change answered through the other shows at once
        assert (yield reader.read("f")).replicas == replicas
        v = yield writer.begin_upload("f", f"b{i + 2}", ["s1"])
        assert (yield writer.commit("f", v, f"b{i + 2}", 1, "x", replicas, ["s1"], time.time()))
        assert (yield reader.read("f")).blob == f"b{i + 2}"
    yield a.delete("f")
    assert (yield b.read("f")) is None


@pytest_twisted.inlineCallbacks
def test_two_versions_of_one_name_committed_in_one_batch_tell_the_other_proxy_of_the_newest(proxies):
    """Two PUTs of one name through A commit in one transaction: the newer
    replaces the version B keeps, the older loses to it. B must be told of
    the name (the loser needs no telling, the winner does), and see the
    newer version at once."""
    a, b = proxies
    yield beat_until_trusted(a, b)
    v = yield b.begin_upload("f", "b1", ["s1"])
    assert (yield b.commit("f", v, "b1", 1, "x", 1, ["s1"], time.time()))
    assert (yield b.read("f")).blob == "b1" and b.kept_record("f") is not None
    older = yield a.begin_upload("f", "b2", ["s1"])
    newer = yield a.begin_upload("f", "b3", ["s1"])
    # submitted in one turn of the reactor: one batch, the newer first
    both = [a.commit("f", newer, "b3", 1, "x", 1, ["s1"], time.time()),
            a.commit("f", older, "b2", 1, "x", 1, ["s1"], time.time())]
    assert (yield defer.gatherResults(both)) == [True, False]
    got = yield b.read("f")
    assert (got.version, got.blob) == (newer, "b3"), "B still answers the version it kept"


@pytest_twisted.inlineCallbacks
def test_a_change_waits_for_a_silent_proxy_then_goes_on_without_it(proxies, monkeypatch):
    """B stops listening (as if its process had died): A's next change of a
    record B may keep waits ACK_WAIT for B's ack and then LEASE + MARGIN, by
    which time B no longer answers from memory; the changes after go on at
    once. A name's first version waits for nobody."""
    a, b = proxies
    monkeypatch.setattr(coherence, "ACK_WAIT", 0.5)
    yield beat_until_trusted(a, b)
    v = yield a.begin_upload("f", "b1", ["s1"])
    assert (yield a.commit("f", v, "b1", 1, "x", 1, ["s1"], time.time()))
    assert (yield b.read("f")).replicas == 1
    monkeypatch.setattr(b.coherence, "_send", lambda conn, messages: None)  # it dies: no ack, no goodbye
    yield sleep(0.2)  # (answers to pings already sent come in)
    b_trusted_until = b.coherence.trusted_until
    b.coherence.stop()
    began = time.monotonic()  # a name's first version changes nothing B keeps: it waits for nobody
    v = yield a.begin_upload("new", "b2", ["s1"])
    assert (yield a.commit("new", v, "b2", 1, "x", 1, ["s1"], time.time()))
    assert time.monotonic() - began < coherence.ACK_WAIT and not a.catalog.quiet
    began = time.monotonic()
    yield a.set_replicas("f", 2)
    waited = time.monotonic() - began
    assert coherence.ACK_WAIT + coherence.LEASE + coherence.MARGIN <= waited < 6.0
    assert time.monotonic() >= b_trusted_until  # B's trust ran out before the change was answered
    assert not b.coherence.trusted() and (yield b.read("f")).replicas == 2
    began = time.monotonic()
    yield a.set_replicas("f", 3)
    assert time.monotonic() - began < 1.0  # B is counted no more


@pytest_twisted.inlineCallbacks
def test_a_proxy_whose_listening_connection_is_cut_forgets_what_it_kept_and_trusts_again_later(proxies, postgres):
    import psycopg

    a, b = proxies
    yield beat_until_trusted(a, b)
    v = yield a.begin_upload("f", "b1", ["s1"])
    assert (yield a.commit("f", v, "b1", 1, "x", 1, ["s1"], time.time()))
    assert (yield b.read("f")).replicas == 1
    assert b.kept_record("f") is not None
    # every listening connection cut by the database (as a restart of it would)
    with psycopg.connect(a.catalog.backend.conninfo, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                      " WHERE query LIKE 'SELECT pg_notify(''deposito_records'', m)%'"
                      " OR query LIKE 'LISTEN %'")
    yield sleep(0.3)
    yield a.set_replicas("f", 3)  # A's ack may be lost with the cut: this waits till B lets go
    assert (yield b.read("f")).replicas == 3
    yield beat_until_trusted(a, b, within=10.0)
    assert (yield b.read("f")).replicas == 3


@pytest_twisted.inlineCallbacks
def test_a_proxy_that_stops_says_so_and_the_others_changes_wait_for_it_no_more(proxies):
    a, b = proxies
    yield beat_until_trusted(a, b)
    v = yield a.begin_upload("f", "b1", ["s1"])
    assert (yield a.commit("f", v, "b1", 1, "x", 1, ["s1"], time.time()))
    b.coherence.stop()
    assert not b.coherence.trusted()  # at once, for good
    yield sleep(0.3)  # its goodbye goes round
    began = time.monotonic()
    yield a.set_replicas("f", 2)
    assert time.monotonic() - began < coherence.ACK_WAIT


@pytest_twisted.inlineCallbacks
def test_a_change_makes_the_others_forget_only_the_records_it_changed(proxies):
    """A copy added to one file, or a batch of commits whose names do not
    fit in one message, leaves the other proxy's other records kept."""
    a, b = proxies
    yield beat_until_trusted(a, b)
    long = ["long/" + "x" * 90 + f"{i:04d}" for i in range(150)]
    for name in ["f", "g", *long]:
        v = yield a.begin_upload(name, f"blob-{name}", ["s1"])
        assert (yield a.commit(name, v, f"blob-{name}", 1, "x", 2, ["s1"], time.time()))
        assert (yield b.read(name)).version == v
    yield beat_until_trusted(a, b)
    v = yield a.begin_upload("g", "blob-g2", ["s1"])
    assert (yield a.commit("g", v, "blob-g2", 1, "x", 2, ["s1"], time.time()))
    assert (yield a.add_copy("g", "blob-g2", "s1", time.time())) is False  # (its intent was taken by the commit)
    yield a.add_intent("blob-g2", "s2")
    assert (yield a.add_copy("g", "blob-g2", "s2", time.time()))
    assert b.kept_record("f") is not None and (yield b.read("g")).servers == ("s1", "s2")
    versions = yield defer.gatherResults([a.set_replicas(name, 3) for name in long])  # one batch, or a few
    assert all(r.replicas == 3 for r in versions)
    assert b.kept_record("f") is not None
    for name in long:
        assert (yield b.read(name)).replicas == 3


def test_names_too_long_for_one_message_go_in_several_only_the_last_acked():
    names = [f"n{i:05d}-" + "é" * 50 for i in range(400)]
    messages = coherence.change_messages("p1", 7, names + names[:10])
    assert len(messages) > 1 and all(len(m.encode()) < 8000 for m in messages)
    assert [m.split(" ")[0] for m in messages] == ["c+"] * (len(messages) - 1) + ["c"]
    told = [n for m in messages for n in json.loads(m.split(" ", 3)[3])]
    assert sorted(told) == sorted(names)
    assert coherence.change_messages("p1", 8, None) == ["c p1 8 *"]


@pytest_twisted.inlineCallbacks
def test_a_proxy_renamed_after_a_hand_over_is_followed_under_its_new_id(proxies):
    """B was silent past its lease and another proxy took its row: its next
    beat goes on under a new id, which it tells the others. A's changes then
    wait for B's acks under that id, and not ACK_WAIT for the old one."""
    import psycopg

    a, b = proxies
    yield beat_until_trusted(a, b)
    v = yield a.begin_upload("f", "b1", ["s1"])
    assert (yield a.commit("f", v, "b1", 1, "x", 1, ["s1"], time.time()))
    assert (yield b.read("f")).replicas == 1
    old = b.catalog.proxy
    with psycopg.connect(a.catalog.backend.conninfo, autocommit=True) as admin:
        admin.execute("DELETE FROM proxies WHERE id = %s", (old,))
    yield b.beat([], time.time(), 30.0, False)
    assert b.catalog.proxy != old
    yield sleep(0.3)  # its new id goes round
    for replicas in (2, 3):
        began = time.monotonic()
        yield a.set_replicas("f", replicas)
        assert time.monotonic() - began < coherence.ACK_WAIT
        assert (yield b.read("f")).replicas == replicas


class Listening:
    """The listening thread's connection, counting its waits for messages."""

    def __init__(self, conn) -> None:
        self.conn, self.waits = conn, 0

    def notifies(self, *args, **kwargs):
        self.waits += 1
        return self.conn.notifies(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.conn, name)


def test_an_idle_proxy_listens_without_waking_between_pings_and_stops_at_once(postgres):
    """A proxy alone on a shared catalog sends a ping each PING seconds and
    hears it back: its listening thread wakes for those and nothing else
    (it woke ten times a second to look whether it was asked to stop, a
    whole per cent of a core on an idle proxy), and yet stops at once."""
    from deposito.catalog.postgres import PostgresBackend

    url = postgres.database()
    made: list[Listening] = []

    def connect():
        made.append(Listening(PostgresBackend(url).channel()))
        return made[-1]

    listener = coherence.Coherence(reactor, connect, lambda: "p1", lambda: 0, lambda names: None)
    listener.start()
    try:
        time.sleep(5 * coherence.PING)
        waits = made[0].waits
    finally:
        began = time.monotonic()
        listener.stop()
        stopped = time.monotonic() - began
    postgres.drop(url)
    assert len(made) == 1 and waits <= 2 * 5 + 2, waits  # a ping and its echo each; it was 30
    assert stopped < coherence.PING / 2, stopped


def test_a_proxy_with_more_than_1024_descriptors_open_listens_and_reads_the_catalog_all_the_same(postgres):
    """A proxy serving many clients has descriptors past 1024, where
    select() refuses to wait: the listening thread then reconnected every
    second (forgetting all it kept) and an idle connection's check failed."""
    from deposito.catalog.postgres import PostgresBackend

    url = postgres.database()
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    made: list[Listening] = []

    def connect():
        made.append(Listening(PostgresBackend(url).channel()))
        return made[-1]

    listener = coherence.Coherence(reactor, connect, lambda: "p1", lambda: 0, lambda names: None)
    cat = Catalog(PostgresBackend(url))
    try:
        listener.start()
        cat.commit("f", cat.begin_upload("f", "b1", ["s1"]), "b1", 1, "x", 1, ["s1"], 0.0)
        time.sleep(5 * coherence.PING)
        assert cat.db.conn.fileno() > 1024 and made[0].fileno() > 1024
        assert cat.lookup("f").blob == "b1"  # its idle connection looked at first (Backend.stale)
        assert len(made) == 1 and 0 < made[0].waits <= 2 * 5 + 2, (len(made), made[0].waits)
    finally:
        listener.stop()
        cat.close()
        for fd in held:
            os.close(fd)
        postgres.drop(url)
