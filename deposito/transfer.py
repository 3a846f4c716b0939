"""Streams between the proxy and storage servers.

- :class:`Upload`: one client's bytes fanned out to N servers in parallel.
  Each server connection registers a lane as its producer; a lane paused by
  its slow server pauses the client, so nothing is buffered beyond the
  transports' own windows. A lane that fails is dropped and the rest go on.
- :func:`stream_blob`: a byte range of a blob streamed to a consumer from
  one copy; if that copy fails mid-stream, the next continues at the same
  offset, on whichever path (plain, relay, hand-off) each copy takes.
- :func:`read_small`: a small blob read whole from one copy, so that a
  failure leaves nothing sent and another copy can start afresh.
- :func:`copy_blob`: a blob relayed from one server to another, the reader
  paused by the writer.
"""

from __future__ import annotations

import hashlib
from typing import Any, Awaitable, Callable, Iterable, cast

import attrs
from twisted.internet import defer
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import IConsumer, IDelayedCall, IProducer, IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from deposito import twisted_internals
from deposito.blobmeta import BlockSums
from deposito.errors import DepositoError, NotFound, Unavailable
from deposito.catalog.records import Expect
from deposito.protocols.blobclient import BlobClient
from deposito.protocols.blobwire import ConnectionLost
from deposito.roster import Member
from deposito.splice.fanout import FanOut, can_fan_out
from deposito.splice.handoff import HandOff, can_hand_off
from deposito.splice.relay import can_splice
from deposito.splice.sockets import ReaderLost, SourceLost
from deposito.twisted_internals import IStreamTransport

SPLICE_MIN = 1 << 20  # reads from this size on are spliced where they can be
# and from this size on handed off where they can be: below it the hand-off's
# setup costs more than the relay saves (one 1 MiB GET: 1.48 ms handed off,
# 1.20 ms relayed; 2 MiB: 1.65 against 1.96 ms)
HANDOFF_MIN = 2 << 20
EARLY_MAX = 256 << 10  # bytes of an upload kept while its lanes are not open yet (see Upload.open_when)
SMALL_READ = 64 << 10  # files up to this size may be read whole before any byte is sent (read_small)

Connect = Callable[[Member], Awaitable[BlobClient]]
Release = Callable[[BlobClient], None]
LocalConnect = Callable[[Member], Awaitable["BlobClient | None"]]  # None: that server is not on this host


def close(client: BlobClient) -> None:
    """The default release: no pool, just hang up."""
    if client.transport.connected:
        client.transport.loseConnection()


@implementer(IPushProducer)
class Lane:
    """One target server of an upload."""

    def __init__(self, upload: Upload, member: Member, client: BlobClient, result: defer.Deferred) -> None:
        self.upload = upload
        self.member = member
        self.client = client
        self.result = result
        self.alive = True
        self._stall: IDelayedCall | None = None
        client.transport.registerProducer(self, True)
        result.addErrback(self._failed)

    def _failed(self, failure: Failure) -> Failure:
        self.upload._lost(self, failure)
        return failure

    def pauseProducing(self) -> None:
        self.upload._pause(self)
        if self._stall is None:
            self._stall = self.upload.clock.callLater(self.upload.stall_timeout, self._stalled)

    def resumeProducing(self) -> None:
        if self._stall is not None and self._stall.active():
            self._stall.cancel()
        self._stall = None
        self.upload._resume(self)

    def stopProducing(self) -> None:  # its connection is gone
        self.alive = False
        self.upload._left(self)

    def _stalled(self) -> None:
        self._stall = None
        Upload.log.warn("storage server {id} stopped reading an upload", id=self.member.id)
        self.client.hung = True
        self.client.transport.abortConnection()

    def close(self) -> None:
        if self._stall is not None and self._stall.active():
            self._stall.cancel()
        self._stall = None
        if self.client.transport.connected:
            self.client.transport.unregisterProducer()
        self.upload.release(self.client)


@attrs.frozen
class Completion:
    """What a multipart upload's manifest completes: the parts chosen (their
    hidden names, in order), and the object they make."""

    upload: str
    chosen: tuple[str, ...]
    size: int
    sha256: str


class Upload:
    """A file's bytes on their way to its first copies."""

    log = Logger()

    def __init__(self, clock: twisted_internals.IStreamReactor, name: str, version: int, blob: str, size: int, replicas: int,
                 stall_timeout: float = 30.0, release: Release = close, targets: Iterable[Member] = ()) -> None:
        self.clock = clock
        self.release = release
        self.targets = list(targets)  # the servers placed for it, holding room reserved for it
        self.name = name
        self.stored_as = name  # the name its copies keep in their metadata (a manifest's: see begin_put)
        self.version = version  # 0 until the catalog has allocated it (see open_when)
        self.blob = blob
        self.size = size
        self.replicas = replicas
        self.meta = ""  # a gateway's, committed with the version (see FileRecord.meta)
        self.part_of = ""  # a multipart upload's id, when this is one of its parts (see deposito.hidden)
        self.completes: Completion | None = None  # when this is the manifest that completes a multipart upload
        self.expect: Expect | None = None  # a conditional write's condition, checked at the commit
        self.bucket: str | None = None  # an S3 write's bucket, which must still exist at the commit
        self.finishing = False  # finish_put has it: its own failure path cleans it up
        self.copied_at: float | None = None  # when every copy was durable and verified, before the commit
        self.stall_timeout = stall_timeout
        self.lanes: list[Lane] = []
        self.received = 0
        self.failures: list[BaseException] = []  # why lanes failed, once finished
        self._hash = hashlib.sha256()
        self._sums = BlockSums()
        self._paused: set[object] = set()  # the lanes that paused the client (or self: see open_when)
        self._source: Any = None
        self._fan: FanOut | None = None
        self._fan_lanes: list[Lane] = []  # the fan-out's targets, in its order
        self._opened: defer.Deferred[None] = defer.succeed(None)  # see open_when
        self._early: list[bytes] | None = None  # bytes come before the lanes are open, or None
        self._unopened: Failure | None = None  # why the lanes could not open
        self._aborted = False

    def add_lane(self, member: Member, client: BlobClient, result: defer.Deferred) -> None:
        self.lanes.append(Lane(self, member, client, result))

    def open_when(self, version: defer.Deferred[int], start: Callable[[int], None],
                  unopened: Callable[[], None]) -> None:
        """The lanes open once the catalog has allocated the version: ``start``
        opens them, or ``unopened`` lets go of what was to carry them when the
        allocation failed or the upload was given up before. Meanwhile the
        bytes that come are kept (EARLY_MAX at most, then the client is
        paused), so that the client's first bytes travel while the catalog
        works; a failed allocation fails :meth:`finish`."""
        self._early = []

        def opened(number: int) -> None:
            early, self._early = self._early or [], None
            if self._aborted:
                unopened()
                return
            self.version = number
            start(number)
            for data in early:
                for lane in self.live():
                    lane.client.send(data)
            self._resume(self)

        def failed(failure: Failure) -> None:
            self._early, self._unopened = None, failure  # told by finish
            unopened()
            self._resume(self)  # the rest of the body is read, and thrown away

        self._opened = version.addCallbacks(opened, failed)

    def live(self) -> list[Lane]:
        return [lane for lane in self.lanes if lane.alive]

    def attach(self, source: Any) -> None:
        """The producer (the client's transport) to pause when a lane is slow."""
        self._source = source

    def detach(self) -> None:
        if self._source is not None and self._paused:
            self._source.resumeProducing()
        self._source = None
        self._paused.clear()

    def write(self, data: bytes) -> None:
        self._absorb(data)
        if self._early is not None:
            self._early.append(data)
            if self.received >= EARLY_MAX:
                self._pause(self)
            return
        for lane in self.lanes:
            if lane.alive:
                lane.client.send(data)

    def _absorb(self, data: bytes | memoryview) -> None:
        self.received += len(data)
        self._hash.update(data)
        self._sums.update(data)

    def splice_from(self, source: Any, count: int, progress: Callable[[int], None]) -> defer.Deferred | None:
        """Take the next ``count`` bytes from transport ``source`` to every
        live lane in the kernel (deposito.splice.fanout.FanOut; ``progress``
        is told how many came at each read); None when that
        cannot be done (TLS, a small rest), and the caller goes on with
        :meth:`write`. The Deferred fires once all of them are with the
        lanes, or fails when the source went away."""
        if not self._opened.called:
            return None
        lanes = self.live()
        for lane in lanes:
            lane.client.flush_held()  # the WRITE line goes before the bytes the kernel moves
        transports = [lane.client.transport for lane in lanes]
        if (count < SPLICE_MIN or self._fan is not None or not can_fan_out(source, transports)
                or twisted_internals.write_pending(self.clock, source)):
            return None

        def dropped(i: int, why: DepositoError) -> None:
            self.log.warn("storage server {id} stopped taking an upload: {why}", id=lanes[i].member.id,
                          why=why.message)
            lanes[i].client.transport.abortConnection()

        fan = FanOut(self.clock, source, transports, count, self._absorb, progress,
                     lambda i: lanes[i].alive, dropped, self.stall_timeout)
        # The fan-out reads the source itself: a lane that pauses or resumes
        # must no longer pause or resume it.
        source_was, paused_was = self._source, set(self._paused)
        self._source = None
        self._paused.clear()
        try:
            d = fan.start()
        except OSError as e:  # no pipes to be had (too many open files): the ordinary path
            self.log.warn("cannot splice an upload: {why}", why=e.strerror)
            self._source, self._paused = source_was, paused_was
            return None
        self._fan, self._fan_lanes = fan, lanes

        def over(result: Any) -> Any:
            self._fan, self._fan_lanes = None, []
            return result

        return d.addBoth(over)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def _pause(self, lane: object) -> None:
        if not self._paused and self._source is not None:
            self._source.pauseProducing()
        self._paused.add(lane)

    def _resume(self, lane: object) -> None:
        if lane in self._paused:
            self._paused.discard(lane)
            if not self._paused and self._source is not None:
                self._source.resumeProducing()

    def _lost(self, lane: Lane, failure: Failure) -> None:
        if lane.alive:
            self.log.warn("upload to {id} failed: {why}", id=lane.member.id, why=failure.getErrorMessage())
        lane.alive = False
        self._left(lane)
        self._resume(lane)

    def _left(self, lane: Lane) -> None:
        """A lane is gone: a fan-out under way stops waiting on it now."""
        if self._fan is not None and lane in self._fan_lanes:
            self._fan.leave(self._fan_lanes.index(lane))

    async def finish(self) -> list[Member]:
        """All bytes are in: the servers that hold a durable, verified copy."""
        await self._opened
        if self._unopened is not None:
            self._unopened.raiseException()
        sha, blocks = self.sha256, self._sums.digest()
        for lane in self.live():
            lane.client.end(sha, blocks, self.meta)
        results = await defer.DeferredList([lane.result for lane in self.lanes], consumeErrors=True)
        for lane in self.lanes:
            lane.close()
        self.failures = [r.value for ok, r in results if not ok]
        return [lane.member for lane, (ok, _) in zip(self.lanes, results) if ok]

    def abort(self) -> None:
        self._aborted = True  # lanes not open yet never will be (see open_when)
        if self._fan is not None:
            self._fan.fail(ReaderLost("the upload was given up"))
        self.detach()
        for lane in self.lanes:
            lane.alive = False
            lane.result.addErrback(lambda _: None)
            if lane.client.transport.connected:
                lane.client.transport.abortConnection()
            lane.close()


@implementer(IConsumer)
class CountingConsumer:
    """Passes bytes (and a producer) on to ``consumer``, counting the bytes."""

    def __init__(self, consumer: IConsumer) -> None:
        self.consumer = consumer
        self.count = 0

    def write(self, data: bytes) -> None:
        self.count += len(data)
        self.consumer.write(data)

    def spliced(self, n: int) -> None:
        """``n`` bytes reached the transport underneath without passing here."""
        self.count += n
        if isinstance(self.consumer, CountingConsumer):
            self.consumer.spliced(n)

    def transport(self) -> IConsumer:
        """The transport under any counting layers."""
        inner = self.consumer
        while isinstance(inner, CountingConsumer):
            inner = inner.consumer
        return inner

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        self.consumer.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.consumer.unregisterProducer()

    @property
    def disconnected(self) -> bool:
        return bool(getattr(self.consumer, "disconnected", False))


class _Reading:
    """Where a read of a byte range stands, across the copies it is served from."""

    def __init__(self, blob: str, offset: int, length: int, consumer: IConsumer,
                 started: Callable[[], None]) -> None:
        self.blob, self.offset, self.length = blob, offset, length
        self.consumer = consumer
        self.sink = CountingConsumer(consumer)
        self.begun = False  # started() was called: bytes may have gone to the consumer
        self._started = started

    @property
    def at(self) -> int:
        """Where in the blob the next byte comes from."""
        return self.offset + self.sink.count

    @property
    def left(self) -> int:
        return self.length - self.sink.count

    def begin(self) -> None:
        if not self.begun:
            self.begun = True
            self._started()


Path = Callable[[BlobClient, _Reading], Awaitable[None]]


async def stream_blob(connect: Connect, sources: list[Member], blob: str, offset: int, length: int,
                      consumer: IConsumer, started: Callable[[], None] = lambda: None,
                      release: Release = close, local: LocalConnect | None = None,
                      missing: Callable[[Member, str], None] = lambda member, blob: None) -> None:
    """Write bytes [offset, offset + length) of ``blob`` to ``consumer`` from
    the first copy that serves them, moving to the next copy at the same
    byte when one fails, whatever path the bytes took (:func:`_choose`).

    ``started`` is called once, before the first byte. Raises Unavailable if
    no copy could be read (then, if ``started`` ran, the stream is short),
    and ReaderLost when the reader went away, or when a copy on this host
    that held the reader's socket stopped answering and might still write
    into it (see deposito.splice.handoff). With ``local``, a copy on a server
    on this host writes into the reader's socket itself (see
    deposito.protocols.handoff). ``missing(member, blob)`` hears of a copy
    its server says it does not hold.
    """
    read = _Reading(blob, offset, length, consumer, started)
    last: Exception | None = None
    for member in sources:
        if read.begun and read.left <= 0:
            break
        if _reader_left(consumer):  # the reader left (or is being cut off): no copy can help
            raise ConnectionLost("the reader went away")
        if not member.up:  # taken for down since the read began: it would be waited on for nothing
            last = Unavailable(f"storage server {member.id} is down")
            continue
        client = None
        try:
            client, path = await _choose(connect, local, member, read)
            await path(client, read)
            if read.left == 0:
                return
        except ReaderLost:
            raise
        except Exception as e:  # the copy's failure (DepositoError), connection refused, timeouts
            last = e
            Upload.log.warn("reading {blob} from {id} failed at {offset}: {why}",
                            blob=blob, id=member.id, offset=read.sink.count, why=str(e))
            if isinstance(e, NotFound):  # the server lacks the copy the catalog counts
                missing(member, blob)
        finally:
            if client is not None:
                release(client)
    if read.begun and read.left == 0:
        return
    raise Unavailable(f"no copy is reachable ({last})" if last else "no copy is reachable")


def _reader_left(consumer: IConsumer) -> bool:
    """Whether the reader's connection is gone or going: a relay that met a
    dead reader aborts its transport, whose connectionLost only comes on
    the next turn of the reactor (till then ``disconnected`` is still false)."""
    if getattr(consumer, "disconnected", False):
        return True
    transport = consumer
    while isinstance(transport, CountingConsumer):
        transport = transport.consumer
    return twisted_internals.transport_closing(transport)


async def _choose(connect: Connect, local: LocalConnect | None, member: Member,
                  read: _Reading) -> tuple[BlobClient, Path]:
    """A connection to ``member`` and the path for the rest of the read:
    hand-off when its server is on this host and the reader's socket can be
    passed to it, relay when both sockets are plain TCP, else plain. Only a
    read of SPLICE_MIN or more takes the kernel's paths, and of HANDOFF_MIN
    or more the hand-off."""
    target = read.sink.transport()
    big = read.left >= SPLICE_MIN
    if local is not None and read.left >= HANDOFF_MIN and can_hand_off(target):
        try:
            client = await local(member)
        except Exception as e:
            if not member.up:  # taken for down meanwhile: on to the next copy
                raise
            Upload.log.info("the local port of {id} failed ({why}): relaying", id=member.id, why=why_not_connected(e))
        else:
            if client is not None:
                return client, _hand_off
    client = await connect(member)
    if big and can_splice(client.transport, target):
        return client, _relay
    return client, _plain


def why_not_connected(error: Exception) -> str:
    """``error``'s message for a log line; Twisted's ConnectError that
    holds the Failure which ended the connection gives that Failure's
    message, not its whole text."""
    if isinstance(error, ConnectError) and error.args and isinstance(error.args[0], Failure):
        return f"{error.MESSAGE}: {error.args[0].getErrorMessage()}"
    return str(error)


async def _hand_off(client: BlobClient, read: _Reading) -> None:
    """The server writes the rest into the reader's socket (deposito.splice.handoff)."""
    if await client.open_blob(read.blob, read.at, read.left) != read.left:
        raise SourceLost("this copy has another size")
    read.begin()
    hand_off = HandOff(client, cast(IStreamTransport, read.sink.transport()), client.request_timeout)
    try:
        await hand_off.run()
    finally:
        read.sink.spliced(hand_off.moved)
    if read.left != 0:
        raise SourceLost(f"the storage server sent {hand_off.moved} bytes and stopped")


async def _relay(client: BlobClient, read: _Reading) -> None:
    """The client splices the rest from its socket into the reader's (deposito.splice.relay)."""
    target = cast(IStreamTransport, read.sink.transport())
    await client.read_blob(read.blob, read.at, read.sink, relay_to=target, length=read.left)
    read.begin()
    await client.body


async def _plain(client: BlobClient, read: _Reading) -> None:
    """The bytes come up through the proxy, the server's socket paused by the reader."""
    await client.read_blob(read.blob, read.at, read.sink, length=read.left)
    await _plain_body(client, read)


async def _plain_body(client: BlobClient, read: _Reading) -> None:
    read.begin()
    read.consumer.registerProducer(client.transport, True)
    try:
        await client.body
    finally:
        read.consumer.unregisterProducer()


class _Collect:
    """A sink that keeps the pieces it is given (see :func:`read_small`)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.count = 0

    def write(self, data: bytes) -> None:
        self.parts.append(data)
        self.count += len(data)


def read_small(client: BlobClient, blob: str, size: int, release: Release = close) -> defer.Deferred:
    """The ``size`` bytes of a small blob (at most SMALL_READ), read whole
    over ``client`` and then released, as a list of pieces: most often the
    one piece a single read of the socket brought.

    On failure nothing has reached the reader yet, so the caller can still
    answer an error or read another copy from the start."""
    if size > SMALL_READ:
        raise ValueError(f"{size} bytes is more than a small read")
    sink = _Collect()

    def accepted(count: int) -> defer.Deferred:
        if count != size:  # the server has another blob under this id: read nothing more of it
            client.body.addErrback(lambda _: None)  # fails when the connection is closed for this
            raise Unavailable(f"the server offers {count} bytes of {blob}, not {size}")
        return client.body

    def done(_: object) -> list[bytes]:
        release(client)
        return sink.parts

    def failed(failure: Failure) -> Failure:
        release(client)  # closed, unless it is clean for the next request
        return failure

    d = client.read_blob(blob, 0, sink)
    d.addCallback(accepted)
    d.addCallbacks(done, failed)
    return d


@implementer(IConsumer)
class _Relay:
    """Passes bytes from a reader to a blob upload on another server."""

    def __init__(self, writer: BlobClient, whole: Any = None) -> None:
        self.writer = writer
        self.sums = BlockSums()
        self.whole = whole  # a sha256 of what passes, when it is to be checked (see copy_blob)

    def write(self, data: bytes) -> None:
        self.sums.update(data)
        if self.whole is not None:
            self.whole.update(data)
        self.writer.send(data)

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        self.writer.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        if self.writer.transport.connected:
            self.writer.transport.unregisterProducer()


class Unrescuable(Unavailable):
    """The copies set aside as corrupt do not make a whole file between them (see rescue_blob)."""


class CopyFailed(Unavailable):
    """A copy to ``target`` did not complete."""

    def __init__(self, target: Member, why: str) -> None:
        super().__init__(f"copy to {target.id} failed: {why}")
        self.target = target


async def copy_blob(connect: Connect, sources: list[Member], target: Member, blob: str,
                    size: int, sha256: str, name: str, version: int, replicas: int,
                    release: Release = close, cache: bool = False, meta: str = "",
                    missing: Callable[[Member, str], None] = lambda member, blob: None,
                    rescue: bool = False) -> None:
    """Make one more copy of a blob on ``target``, read from any of ``sources``
    (``cache``: the target should keep it in its page cache, see
    BlobClient.write_blob; ``meta``: the version's gateway metadata;
    ``missing``: as for :func:`stream_blob`). With ``rescue``, no copy is
    whole: the bytes come from the copies ``sources`` set aside as corrupt
    (:func:`rescue_blob`), and go to the target only if their sha256 is the file's."""
    writer = await connect(target)
    try:
        stored = writer.write_blob(blob, size, version, replicas, name, cache=cache)
        relay = _Relay(writer, whole=hashlib.sha256() if rescue else None)
        try:
            if rescue:
                await rescue_blob(connect, sources, blob, size, relay, release)
                if relay.whole is not None and relay.whole.hexdigest() != sha256:
                    raise Unrescuable("the blocks set aside do not make the file's sha256")
            else:
                await stream_blob(connect, sources, blob, 0, size, relay, release=release, missing=missing)
        except BaseException:
            stored.addErrback(lambda _: None)
            raise
        writer.end(sha256, relay.sums.digest(), meta)
        await stored
    finally:
        release(writer)


async def rescue_blob(connect: Connect, members: list[Member], blob: str, size: int, consumer: IConsumer,
                      release: Release = close) -> None:
    """All of a blob no copy of which is whole any more, block by block from
    the copies ``members`` set aside as corrupt (RESCUE): each gives its
    checked blocks up to its first bad one, and the next goes on from there,
    round after round while the read moves on. A block bad in every copy
    ends it: Unrescuable."""
    read = _Reading(blob, 0, size, consumer, lambda: None)
    while read.left > 0:
        before = read.at
        for member in members:
            if read.left <= 0:
                break
            client = None
            try:
                client = await connect(member)
                await client.read_blob(blob, read.at, read.sink, length=read.left, set_aside=True)
                await _plain_body(client, read)
            except Exception as e:  # none set aside there, or a bad block: on to the next
                Upload.log.debug("rescuing {blob} from {id} stopped at {offset}: {why}",
                                 blob=blob, id=member.id, offset=read.at, why=str(e))
            finally:
                if client is not None:
                    release(client)
        if read.at == before:
            raise Unrescuable(f"no copy set aside holds good bytes of {blob} at {read.at}")
