"""The writer's ownership of an upload: once finish_put has it, its failure
path is the only cleanup (fakes at the catalog and blob-connection seams)."""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.task import Clock

from deposito.depot.writes import Writer
from deposito.errors import Precondition
from deposito.roster import Member
from deposito.transfer import Upload


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

    def __init__(self) -> None:
        self.transport = FakeTransport()
        self.stored = defer.Deferred()

    def send(self, data: bytes) -> None:
        pass

    def end(self, sha256: str, blocks: str, meta: str) -> None:
        self.stored.callback(None)


class RefusingCatalog:
    """A catalog whose commit refuses (a conditional write's condition did not hold)."""

    def __init__(self) -> None:
        self.abandoned: list[str] = []

    def commit(self, *args: object) -> defer.Deferred:
        return defer.fail(Precondition("If-None-Match"))

    def abandon(self, blob: str) -> defer.Deferred:
        self.abandoned.append(blob)
        return defer.succeed(None)


def test_an_upload_whose_commit_is_refused_is_cleaned_up_once_even_if_aborted_after():
    clock, db = Clock(), RefusingCatalog()
    pooled: list[FakeClient] = []
    writer = Writer(clock, db, roster=None, pool=None, collect=lambda: None, repair=lambda: None)  # type: ignore[arg-type]
    members = [Member(f"s{i}", f"z{i}", "127.0.0.1", 1, capacity=1 << 30) for i in range(2)]
    upload = Upload(clock, "lock", 1, "b" * 32, 5, 2, release=pooled.append, targets=members)
    clients = [FakeClient() for _ in members]
    for member, client in zip(members, clients):
        member.reserve(upload.size)
        upload.add_lane(member, client, client.stored)
    upload.write(b"hello")

    failure = writer.finish_put(upload)
    outcome: list = []
    defer.ensureDeferred(failure).addBoth(outcome.append)
    assert outcome and outcome[0].check(Precondition)
    assert pooled == clients  # back in the pool, where another transfer may take them
    writer.abort_put(upload)  # what a gateway does on any failure: too late, and harmless
    assert not any(client.transport.aborted for client in clients)
    assert [m.reserved for m in members] == [0, 0]  # given back once
    assert db.abandoned == ["b" * 32]  # its copies are garbage, once
