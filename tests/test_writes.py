"""The writer's ownership of an upload: once finish_put has it, its failure
path is the only cleanup (fakes at the catalog and blob-connection seams)."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent

from deposito.depot.writes import ABANDON_RETRY, ABANDON_TRIES, PASS_OVER, Writer
from deposito.errors import NoSpace, Precondition, Unavailable
from deposito.roster import Member
from deposito.transfer import EARLY_MAX, Upload


class FakeTransport:
    connected = True

    def __init__(self) -> None:
        self.aborted = False

    def registerProducer(self, producer: object, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def abortConnection(self) -> None:
        self.aborted = True
        self.connected = False


class FakeClient:
    """A connection to a server that stores every blob it is sent."""

    hung = False

    def __init__(self) -> None:
        self.transport = FakeTransport()
        self.stored = defer.Deferred()

    def send(self, data: bytes) -> None:
        pass

    def end(self, sha256: str, blocks: str, meta: str) -> None:
        self.stored.callback(None)


class RefusingCatalog:
    """A catalog whose commit refuses (a conditional write's condition did not hold)."""

    reachable = True

    def __init__(self) -> None:
        self.abandoned: list[str] = []

    def commit(self, *args: object) -> defer.Deferred:
        return defer.fail(Precondition("If-None-Match"))

    def on_db_clock(self, t: float) -> float:
        return t

    def abandon(self, blob: str, name=None, version=None, servers=None) -> defer.Deferred:
        self.abandoned.append(blob)
        return defer.succeed(None)


def sent(clock: Clock, name: str, members: list[Member], clients: list, release=lambda client: None) -> Upload:
    """An upload of b"hello" to ``members`` through ``clients``, its bytes sent."""
    upload = Upload(clock, name, 1, "b" * 32, 5, 2, release=release, targets=members)
    for member, client in zip(members, clients):
        member.reserve(upload.size)
        upload.add_lane(member, client, client.stored)
    upload.write(b"hello")
    return upload


def test_an_upload_whose_commit_is_refused_is_cleaned_up_once_even_if_aborted_after():
    clock, db = Clock(), RefusingCatalog()
    pooled: list[FakeClient] = []
    writer = Writer(clock, db, roster=None, pool=None, collect=lambda: None, repair=lambda: None)  # type: ignore[arg-type]
    members = [Member(f"s{i}", f"z{i}", "127.0.0.1", 1, capacity=1 << 30) for i in range(2)]
    clients = [FakeClient() for _ in members]
    upload = sent(clock, "lock", members, clients, release=pooled.append)

    failure = writer.finish_put(upload)
    outcome: list = []
    defer.ensureDeferred(failure).addBoth(outcome.append)
    assert outcome and outcome[0].check(Precondition)
    assert pooled == clients  # back in the pool, where another transfer may take them
    writer.abort_put(upload)  # what a gateway does on any failure: too late, and harmless
    assert not any(client.transport.aborted for client in clients)
    assert [m.reserved for m in members] == [0, 0]  # given back once
    assert db.abandoned == ["b" * 32]  # its copies are garbage, once


def test_an_upload_whose_commit_lost_the_database_says_it_may_be_stored():
    """The database went as the commit was sent: the version may be in.
    Told plainly 'out of reach; try again', a client took a stored file for
    not stored (a review saw one read back after it)."""
    from deposito.errors import OutOfReach

    class Lost(RefusingCatalog):
        def commit(self, *args: object) -> defer.Deferred:
            return defer.fail(OutOfReach("the catalog database is out of reach; try again shortly"))

    clock, db = Clock(), Lost()
    writer = Writer(clock, db, roster=None, pool=None, collect=lambda: None, repair=lambda: None)  # type: ignore[arg-type]
    members = [Member(f"s{i}", f"z{i}", "127.0.0.1", 1, capacity=1 << 30) for i in range(2)]
    upload = sent(clock, "notes", members, [FakeClient() for _ in members])
    outcome: list = []
    defer.ensureDeferred(writer.finish_put(upload)).addBoth(outcome.append)
    assert outcome and outcome[0].check(Unavailable)
    assert "may be stored, or not (STAT tells)" in outcome[0].getErrorMessage()
    assert db.abandoned == ["b" * 32]  # (a commit that went in is left as it is: see ICatalog.abandon)


class UnreachableCatalog:
    """A catalog out of reach (or, ``full``, its disk full) for its first
    ``down`` calls to abandon."""

    reachable = True

    def __init__(self, down: int, full: bool = False) -> None:
        self.down = down
        self.full = full
        self.abandoned: list[str] = []

    def abandon(self, blob: str, name=None, version=None, servers=None) -> defer.Deferred:
        if self.down:
            self.down -= 1
            return defer.fail(NoSpace("the catalog's disk is full") if self.full
                              else Unavailable("the catalog database is out of reach"))
        self.abandoned.append(blob)
        return defer.succeed(None)


def abandoning(clock: Clock, db) -> tuple[Writer, list[bool], list[dict]]:
    """A Writer on ``db`` alone (abandon's catalog), with the collections it asks for and what it logs."""
    collected: list[bool] = []
    writer = Writer(clock, db, roster=None, pool=None, collect=lambda: collected.append(True),  # type: ignore[arg-type]
                    repair=lambda: None)
    events: list[dict] = []
    writer.log = Logger(observer=events.append)  # type: ignore[arg-type]
    return writer, collected, events


@pytest.mark.parametrize("full", [False, True])
def test_copies_of_a_failed_upload_are_made_garbage_once_the_catalog_is_back(full):
    """An upload aborted while the catalog is out of reach (or its disk is
    full): recording its copies as garbage is tried again until it is done,
    then they are collected."""
    clock, db = Clock(), UnreachableCatalog(down=2, full=full)
    writer, collected, events = abandoning(clock, db)
    writer.abandon("b" * 32)
    assert db.abandoned == [] and collected == []
    clock.advance(ABANDON_RETRY)
    assert db.abandoned == [] and collected == []  # still out of reach
    clock.advance(ABANDON_RETRY)
    assert db.abandoned == ["b" * 32] and collected == [True]
    clock.advance(10 * ABANDON_RETRY)
    assert db.abandoned == ["b" * 32] and not clock.getDelayedCalls()  # once
    said = [formatEvent(e) for e in events]
    assert len(said) == 2 and "cannot be made garbage yet" in said[0] and "garbage now" in said[1], said


def test_many_uploads_failed_while_the_catalog_is_out_of_reach_are_said_once():
    clock, db = Clock(), UnreachableCatalog(down=30)
    writer, _, events = abandoning(clock, db)
    blobs = [f"{i:032x}" for i in range(10)]
    for blob in blobs:
        writer.abandon(blob)
    for _ in range(5):
        clock.advance(ABANDON_RETRY)
    assert sorted(db.abandoned) == blobs
    said = [formatEvent(e) for e in events]
    assert len(said) == 2 and "cannot be made garbage yet" in said[0] and "garbage now" in said[1], said


class FailingCatalog(UnreachableCatalog):
    """A catalog out of reach for its first ``out`` abandons, whose next
    ``down`` fail with an error of no known kind."""

    def __init__(self, down: int, out: int = 0) -> None:
        super().__init__(down)
        self.out = out

    def abandon(self, blob: str, name=None, version=None, servers=None) -> defer.Deferred:
        if self.out:
            self.out -= 1
            return defer.fail(Unavailable("the catalog database is out of reach"))
        if self.down:
            self.down -= 1
            return defer.fail(RuntimeError("an error nobody foresaw"))
        self.abandoned.append(blob)
        return defer.succeed(None)


@pytest.mark.parametrize("down,out", [(2, 0), (ABANDON_TRIES, 0), (1, 12)])
def test_a_failed_uploads_copies_are_tried_again_after_any_error_a_few_times(down, out):
    """An error of no known kind while recording a failed upload's copies
    as garbage: tried again ABANDON_TRIES times in all, each failure logged,
    so that a passing fault leaves no intent behind (it would hold
    conditional writes of the name back with 409s until a restart). The
    tries while the catalog was out of reach (a minute of it, then one
    fault) do not count."""
    clock, db = Clock(), FailingCatalog(down=down, out=out)
    writer, collected, events = abandoning(clock, db)
    writer.abandon("b" * 32)
    for _ in range(3 * ABANDON_TRIES + out):
        clock.advance(ABANDON_RETRY)
    assert not clock.getDelayedCalls()
    failures = [e for e in events if "log_failure" in e]
    assert len(failures) == min(down, ABANDON_TRIES)
    assert db.abandoned == (["b" * 32] if down < ABANDON_TRIES else []) and len(collected) == len(db.abandoned)
    assert not writer._unabandoned


class LosingCatalog(UnreachableCatalog):
    """A catalog whose answer to an upload's start is lost."""

    def begin_upload(self, name: str, blob: str, servers: list[str]) -> defer.Deferred:
        self.began = blob
        return defer.fail(Unavailable("the catalog database is out of reach"))


class Pool:
    """Connections to servers that store what they are sent, counted out and back."""

    def __init__(self) -> None:
        self.out: list[WritingClient] = []
        self.back: list[WritingClient] = []

    async def connect(self, member: Member) -> WritingClient:
        self.out.append(WritingClient())
        return self.out[-1]

    def release(self, client: WritingClient) -> None:
        self.back.append(client)


class WritingClient(FakeClient):
    """A connection that keeps the WRITE it was given and the bytes after it."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[tuple] = []
        self.sent: list[bytes] = []

    def write_blob(self, blob: str, size: int, version: int, replicas: int, name: str,
                   cache: bool = False) -> defer.Deferred:
        self.writes.append((blob, size, version, replicas, name))
        return self.stored

    def send(self, data: bytes) -> None:
        self.sent.append(data)


class Source:
    """The client's transport, as an upload pauses and resumes it."""

    def __init__(self) -> None:
        self.paused = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False


class SlowCatalog(RefusingCatalog):
    """A catalog that allocates a version when the test says, and commits."""

    def __init__(self) -> None:
        super().__init__()
        self.version: defer.Deferred[int] = defer.Deferred()

    def begin_upload(self, name: str, blob: str, servers: list[str]) -> defer.Deferred:
        self.began = blob
        return self.version

    def commit(self, *args: object) -> defer.Deferred:
        self.committed = args
        return defer.succeed(True)


def _writer(db: object, pool: Pool | None = None) -> tuple[Writer, list[Member]]:
    members = [Member(f"s{i}", f"z{i}", "127.0.0.1", 1, capacity=1 << 30, state="up") for i in range(2)]
    return Writer(Clock(), db, roster=Members(members), pool=pool, collect=lambda: None,  # type: ignore[arg-type]
                  repair=lambda: None), members


def test_an_upload_whose_start_went_unanswered_is_abandoned():
    """The start's answer lost, its intents may be in all the same: the
    upload fails, they are made garbage (there may be none), the
    connections go back unused and the room reserved is given back."""
    db, pool = LosingCatalog(down=0), Pool()
    writer, members = _writer(db, pool)
    upload: list = []
    defer.ensureDeferred(writer.begin_put("f", 5, 2)).addBoth(upload.append)
    assert isinstance(upload[0], Upload) and len(pool.back) == 2 and not any(c.writes for c in pool.out)
    upload[0].write(b"hello")  # the client's bytes are read, and thrown away
    outcome: list = []
    defer.ensureDeferred(writer.finish_put(upload[0])).addBoth(outcome.append)
    assert outcome and outcome[0].check(Unavailable), outcome
    assert db.abandoned == [db.began]
    assert [m.reserved for m in members] == [0, 0]


def test_an_upload_while_the_catalog_is_out_of_reach_fails_before_its_client_sends_a_byte():
    db, pool = LosingCatalog(down=0), Pool()
    db.reachable = False  # the last call failed
    writer, members = _writer(db, pool)
    outcome: list = []
    defer.ensureDeferred(writer.begin_put("f", 5, 2)).addBoth(outcome.append)
    assert outcome and outcome[0].check(Unavailable), outcome
    assert db.abandoned == [db.began] and [m.reserved for m in members] == [0, 0] and not pool.out


def test_the_first_bytes_of_an_upload_wait_for_its_version_and_then_go_to_every_server():
    db, pool = SlowCatalog(), Pool()
    writer, members = _writer(db, pool)
    upload: list = []
    defer.ensureDeferred(writer.begin_put("f", EARLY_MAX + 10, 2)).addBoth(upload.append)
    up, source = upload[0], Source()
    up.attach(source)
    up.write(b"a" * 10)
    up.write(b"b" * (EARLY_MAX - 10))
    assert source.paused and not any(c.writes or c.sent for c in pool.out)  # kept, then the client paused
    db.version.callback(7)
    assert [c.writes for c in pool.out] == [[(db.began, EARLY_MAX + 10, 7, 2, "f")]] * 2
    assert [c.sent for c in pool.out] == [[b"a" * 10, b"b" * (EARLY_MAX - 10)]] * 2
    assert not source.paused and up.version == 7
    up.write(b"c" * 10)
    assert [c.sent[-1] for c in pool.out] == [b"c" * 10] * 2
    outcome: list = []
    defer.ensureDeferred(writer.finish_put(up)).addBoth(outcome.append)
    assert outcome and outcome[0].version == 7 and db.committed[:2] == ("f", 7), outcome


@pytest.mark.parametrize("stored_as", [None, "manifest-of-f"])
def test_a_copy_made_for_a_lost_lane_carries_the_version_that_came_after_the_bytes(stored_as):
    """The body is all in before the catalog allocates the version, and one
    server's lane fails: the copy made from the other is of that version,
    under the name the blob is stored as (a multipart upload's manifest is
    stored under a hidden name of its own)."""
    db, pool = SlowCatalog(), Pool()
    writer, members = _writer(db, pool)
    copied: list = []

    async def copy_to_new_server(record, sources, taken, rescue=False):
        copied.append(record)
        return members[0]
    writer.copy_to_new_server = copy_to_new_server  # type: ignore[method-assign]
    upload: list = []
    defer.ensureDeferred(writer.begin_put("f", 5, 2, stored_as=stored_as)).addBoth(upload.append)
    upload[0].write(b"hello")
    upload[0].meta = "gateway's"
    outcome: list = []
    defer.ensureDeferred(writer.finish_put(upload[0])).addBoth(outcome.append)
    pool.out[1].end = lambda *_: pool.out[1].stored.errback(Unavailable("the storage server went away"))
    db.version.callback(7)
    assert outcome and outcome[0].version == 7, outcome
    assert [(r.name, r.version, r.blob, r.meta) for r in copied] == [(stored_as or "f", 7, db.began, "gateway's")]
    assert [c.writes[0][4] for c in pool.out] == [stored_as or "f"] * 2


def test_an_upload_given_up_before_its_version_opens_no_stream():
    db, pool = SlowCatalog(), Pool()
    writer, members = _writer(db, pool)
    upload: list = []
    defer.ensureDeferred(writer.begin_put("f", 5, 2)).addBoth(upload.append)
    upload[0].write(b"hel")
    writer.abort_put(upload[0])  # the client went away
    assert db.abandoned == [db.began] and [m.reserved for m in members] == [0, 0]
    db.version.callback(3)
    assert not any(c.writes or c.sent for c in pool.out) and pool.back == pool.out


class Members:
    """A roster's members, as the writer reads them."""

    def __init__(self, members: list[Member]) -> None:
        self.members = {m.id: m for m in members}


def test_a_server_that_left_an_upload_unanswered_is_passed_over_while_others_can_take_the_copies():
    clock = Clock()
    clock.advance(1000)
    members = [Member(f"s{i}", f"z{i}", "127.0.0.1", 1, capacity=1 << 30, state="up") for i in range(3)]
    writer = Writer(clock, None, roster=Members(members), pool=None,  # type: ignore[arg-type]
                    collect=lambda: None, repair=lambda: None)
    hung = members[0]
    hung.passed_over_until = clock.seconds() + PASS_OVER
    for _ in range(20):
        assert hung not in writer._place(2, 100)
    assert sorted(m.id for m in writer._place(3, 100)) == ["s0", "s1", "s2"]  # needed: taken all the same
    clock.advance(PASS_OVER)
    assert any(hung in writer._place(2, 100 + i) for i in range(50))  # its turn again


def test_finishing_an_upload_marks_the_servers_that_did_not_answer():
    clock = Clock()
    members = [Member(f"s{i}", f"z{i}", "127.0.0.1", 1, capacity=1 << 30, state="up") for i in range(2)]
    writer = Writer(clock, None, roster=Members(members), pool=None,  # type: ignore[arg-type]
                    collect=lambda: None, repair=lambda: None)
    upload = Upload(clock, "f", 1, "b" * 32, 5, 2, release=lambda c: None, targets=members)
    clients = [FakeClient() for _ in members]
    for member, client in zip(members, clients):
        upload.add_lane(member, client, client.stored)
    clients[1].hung = True
    writer._pass_over_hung(upload)
    assert members[0].passed_over_until == 0 and members[1].passed_over_until == clock.seconds() + PASS_OVER


class RefusingClient(FakeClient):
    """A connection to a server that refuses the blob once it has it all."""

    def __init__(self, why: Exception) -> None:
        super().__init__()
        self.why = why

    def end(self, sha256: str, blocks: str, meta: str) -> None:
        self.stored.errback(self.why)


@pytest.mark.parametrize("why", [NoSpace("disk full"), Unavailable("the storage server went away")])
def test_an_upload_short_of_copies_with_no_server_left_to_try_says_why_its_servers_failed(why):
    """Every server was tried: a full disk among them makes the answer
    nospace, anything else unavailable, saying how many copies were made."""
    clock, db = Clock(), UnreachableCatalog(down=0)
    members = [Member(f"s{i}", f"z{i}", "127.0.0.1", 1, capacity=1 << 30, state="up") for i in range(2)]
    writer = Writer(clock, db, roster=Members(members), pool=None,  # type: ignore[arg-type]
                    collect=lambda: None, repair=lambda: None)
    upload = sent(clock, "f", members, [FakeClient(), RefusingClient(why)])
    outcome: list = []
    defer.ensureDeferred(writer.finish_put(upload)).addBoth(outcome.append)
    assert outcome, "finish_put is still waiting"
    assert outcome[0].check(type(why)), outcome[0]
    said = outcome[0].getErrorMessage()
    assert "1 of 2 copies could be made" in said and ("full" in said if isinstance(why, NoSpace) else True), said
    assert db.abandoned == ["b" * 32] and [m.reserved for m in members] == [0, 0]


@pytest_twisted.inlineCallbacks
def test_keeping_the_wanted_count_fails_with_the_servers_own_error():
    """A holder refusing WANT (its copy gone, say) fails keep_wanted with
    its own error, as the reconciler logs it in one line: it was a
    FirstError, whose text carries the traceback of the failure inside."""
    from deposito.errors import NotFound

    class Refusing(WritingClient):
        def want(self, blob: str, count: int) -> defer.Deferred:
            return defer.fail(NotFound(f"no blob {blob}"))

    class RefusingPool(Pool):
        async def connect(self, member: Member) -> WritingClient:
            self.out.append(Refusing())
            return self.out[-1]

    pool = RefusingPool()
    writer = Writer(Clock(), None, roster=None, pool=pool, collect=lambda: None, repair=lambda: None)  # type: ignore[arg-type]
    members = [Member(f"s{i}", f"z{i}", "127.0.0.1", 1, capacity=1 << 30) for i in range(2)]
    with pytest.raises(NotFound, match="no blob b1"):
        yield defer.ensureDeferred(writer.keep_wanted("b1", 1, members))
    assert len(pool.back) == 2
