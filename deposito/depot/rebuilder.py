"""Rebuilding the catalog from the blob metadata the storage servers keep."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Awaitable, Callable

from twisted.internet import defer
from twisted.internet.interfaces import IConsumer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from deposito import manifest
from deposito.catalog import FileRecord
from deposito.errors import DepositoError, NoSpace, Unavailable
from deposito.hidden import manifest_name

from deposito.interfaces import ICatalog
from deposito.roster import Member, Roster

if TYPE_CHECKING:
    from deposito.interfaces import Entry

Read = Callable[[FileRecord, IConsumer], Awaitable[None]]


class Rebuilder:
    """While rebuilding, the servers' blobs are taken into the catalog instead
    of being judged against it. Asked for (``--rebuild``), clients wait
    meanwhile (ERR unavailable rebuilding); on an empty catalog it happens by
    itself, so a lost catalog never turns every blob into garbage. It is over
    once the grace period has passed and every server that joined has
    listed its blobs in full.

    A server of a lost catalog taken in makes this catalog that one's
    successor (ICatalog.succeed): a server of the lost catalog back after
    the rebuild is taken in when it joins, its files visible again, and
    versions written since win over the ones it brings. Which servers are
    being taken in is kept in the catalog (ICatalog.mark_adopting) from
    before the server is welcomed until its last chunk is in, so a taking
    in cut short (the proxy stopped) goes on when the server joins again:
    a server switches to this catalog when it is welcomed, and its blobs
    not taken in yet would be judged garbage otherwise."""

    log = Logger()

    def __init__(self, clock: IReactorTime, db: ICatalog, roster: Roster, done: Callable[[], None],
                 asked: bool = False, grace: float = 5.0, read: Read | None = None) -> None:
        self.clock = clock
        self.db = db
        self.roster = roster
        self.done = done  # the catalog is whole again: its files are worth looking at
        self.read = read  # the depot's read path (for the manifests of multipart objects)
        self.rebuilding = asked
        self.closed_for_rebuild = asked
        self.grace = grace
        self._reported: set[str] = set()
        self._adopted = 0
        self._started_at = clock.seconds()
        self._finishing = False
        self._incomplete: set[str] = set()  # servers a chunk of which could not be taken in (see take)
        self._waited = False  # the multipart objects waited for the catalog (see _finished)
        self._unread = 0  # manifests that could not be read: the rebuild is owed still (see _finished)
        self.lost: set[str] = set()  # the lost catalogs this one succeeds (read at the start, see takes_in)
        self.adopting: set[str] = set()  # the servers being taken in (read at the start, see takes_in)

    def takes_in(self, member: str, serves: str | None) -> defer.Deferred[bool]:
        """Server ``member``, serving catalog ``serves`` (None: this one's, or
        none), joins: whether its listing is taken in rather than judged.
        Yes while rebuilding, for a server of a lost catalog this one
        succeeds, and for one whose taking in was cut short or is under way
        through another proxy sharing the catalog; marked in the catalog
        before the server is welcomed. What this proxy knows of the lost
        catalogs and the marks may be behind the other proxies': when it
        says no, the catalog is asked."""
        return defer.ensureDeferred(self._takes_in(member, serves))

    async def _takes_in(self, member: str, serves: str | None) -> bool:
        if member in self.adopting:
            return True
        if not (self.rebuilding or serves in self.lost):
            # another proxy sharing the catalog may be taking this server in, or may have made
            # this catalog the successor of the one it serves
            if member in await self.db.adopting():
                self.adopting.add(member)
                return True
            if serves is None or serves not in await self.db.lost_catalogs():
                return False
            self.lost.add(serves)
        await self.db.mark_adopting(member, True)
        self.adopting.add(member)
        return True

    async def start(self, empty: bool, owed: bool = False) -> None:
        """The proxy starts: rebuild if asked to, if the catalog is ``empty``,
        or if a rebuild was cut short (``owed``: its proxy stopped before the
        multipart objects were made again, see ICatalog.mark_rebuilding)."""
        self._started_at = self.clock.seconds()
        if empty and not self.rebuilding:
            self.log.info("the catalog is empty: taking in whatever blobs the servers hold (rebuilding)")
            self.rebuilding = True
        elif owed and not self.rebuilding:
            self.log.info("a rebuild was cut short: it goes on, taking in whatever blobs the servers hold")
            self.rebuilding = True
        elif self.rebuilding:
            self.log.info("rebuilding the catalog from the servers' blob metadata")
        if self.rebuilding:
            await self.db.mark_rebuilding(True)
            self.clock.callLater(self.grace, self._check)
            for m in self.roster.up():  # joined already, and listing ids alone: to join again, listing in full
                m.connection.transport.loseConnection()

    def take(self, member: Member, entries: list[Entry], more: bool) -> defer.Deferred[None]:
        """One chunk of a server's full listing, taken into the catalog
        (``more``: chunks follow). The first of a server of a lost catalog
        makes this one its successor: once the server serves this proxy,
        not before (one that refused must not count).

        Fails (Unavailable, NoSpace) when the catalog cannot take the chunk
        in for now: it must then be handed again before the next chunk is
        read (see MemberProtocol._take). Were the next chunks read, the last
        would end the taking in, and the blobs of this one, not in the
        catalog, would be judged garbage. A chunk that fails otherwise is
        said, and the server stays marked as taken in: its listings are
        taken in, never judged, so none of its blobs is deleted for want of
        being in the catalog."""
        d = defer.ensureDeferred(self._take(member, entries, more))
        return d.addErrback(self._not_taken, member, more)

    async def _take(self, member: Member, entries: list[Entry], more: bool) -> None:
        if member.serves is not None and member.serves not in self.lost:
            await self.db.succeed(member.serves, int(self.clock.seconds() * 1000))
            self.lost.add(member.serves)
        n = await self.db.adopt(member.id, entries, self.clock.seconds())
        self._took(n, member, more)

    def _not_taken(self, failure: Failure, member: Member, more: bool) -> None:
        if failure.check(Unavailable, NoSpace):
            failure.raiseException()  # handed again
        self.log.failure("taking in the blobs of {id}; its listings are taken in, not judged, from now on",
                         failure, id=member.id)
        self._incomplete.add(member.id)
        if not more:
            self._took(0, member, more)

    def _took(self, n: int, member: Member, more: bool) -> None:
        self._adopted += n
        if n:
            self.log.info("took {n} copies from {id} into the catalog", n=n, id=member.id)
        if not more and member.id in self._incomplete:
            self._reported.add(member.id)  # as far as it can be: it stays marked (see take)
            self._incomplete.discard(member.id)  # its next listing may go through
            if not self.rebuilding:
                self.done()
        elif not more:
            self._reported.add(member.id)
            member.adopted = False  # what it lists from now on is judged
            unmarked = self.db.mark_adopting(member.id, False)
            unmarked.addCallback(lambda _: self.adopting.discard(member.id))
            unmarked.addErrback(lambda f: self.log.warn("{id} is taken in again when it joins next ({why})",
                                                        id=member.id, why=f.getErrorMessage()))
            if not self.rebuilding:  # a server back late from the lost catalog: its files may want copies
                self.done()

    def _check(self) -> None:
        """Rebuilt once the grace period is over and every server that joined
        has reported, and the multipart objects are made again."""
        if not self.rebuilding or self._finishing:
            return
        waiting = [m.id for m in self.roster.up() if m.id not in self._reported]
        if waiting or self.clock.seconds() - self._started_at < self.grace:
            self.clock.callLater(0.5, self._check)
            return
        self._finishing = True
        defer.ensureDeferred(self._multipart()).addBoth(self._finished)

    def _finished(self, result: object) -> None:
        if isinstance(result, Failure) and result.check(DepositoError):
            # the catalog out of reach, say: the multipart objects are made again once it answers
            if not self._waited:  # said once
                self.log.warn("rebuilding multipart objects waits for the catalog ({why}); tried again every"
                              " {s:.0f} s", why=str(result.value), s=self.grace)
            self._waited = True
            self._finishing = False
            self.clock.callLater(self.grace, self._check)
            return
        if isinstance(result, Failure):
            self.log.failure("rebuilding multipart objects", result)
        self.rebuilding = self.closed_for_rebuild = False
        if self._unread:  # their parts are kept: the next start rebuilds again (see start)
            self.log.warn("{n} multipart objects wait for their manifests to be read: the proxy rebuilds"
                          " again when it starts next", n=self._unread)
        else:
            self.db.mark_rebuilding(False).addErrback(
                lambda f: self.log.warn("the rebuild is over, but the catalog could not be told ({why}): the"
                                        " proxy rebuilds again when it starts next", why=f.getErrorMessage()))
        if self._adopted:
            self.log.info("catalog rebuilt: {copies} copies from {n} servers", copies=self._adopted,
                          n=len(self._reported), event="rebuilt")
        else:
            self.log.info("no server holds blobs: the catalog starts empty")
        self.done()

    async def _multipart(self) -> None:
        """Every server has listed its blobs: the parts and manifests of
        multipart uploads are in as hidden files. Each manifest is read
        (failover included) and makes its object again from its parts; the
        parts of uploads that were under way, with no manifest, are garbage.
        One upload at a time, so memory holds one manifest."""
        self._unread = 0
        after = ""
        while True:
            found = await self.db.next_upload(after)
            if found is None:
                return
            upload, record = found
            after = manifest_name(upload) + "0"  # past every hidden name of this upload
            if record is None:
                if await self.db.drop_unfinished(upload):
                    self.log.info("rebuilding: the parts of unfinished upload {upload} are garbage", upload=upload)
                continue
            try:
                text = await self._read_manifest(record)
                made = manifest.read(text)
            except (DepositoError, manifest.BadManifest) as e:
                self.log.error("rebuilding: the manifest of upload {upload} cannot be read ({why});"
                               " its parts are kept for the next rebuild", upload=upload, why=str(e), event="lost")
                self._unread += 1
                continue
            outcome = await self.db.adopt_manifest(upload, record.version, made.name, made.meta, made.sha256,
                                                   made.parts, self.clock.seconds())
            if outcome == "lost":
                self.log.error("rebuilding: {name} (made of parts) has a part on no server: it is lost",
                               name=made.name, event="lost")
            elif outcome == "made":
                self._adopted += 1

    async def _read_manifest(self, record: FileRecord) -> bytes:
        if self.read is None or record.size > manifest.MAX_BYTES:
            raise DepositoError(f"a manifest of {record.size} bytes is not read")
        sink = _Bytes()
        await self.read(record, sink)
        return b"".join(sink.pieces)


@implementer(IConsumer)
class _Bytes:
    """A consumer keeping what it is given (a manifest: bounded by its caller)."""

    def __init__(self) -> None:
        self.pieces: list[bytes] = []

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.pieces.append(bytes(data))
