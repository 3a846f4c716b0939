"""Writes: PUT (placement, the parallel upload, the commit point) and one more copy of a file."""

from __future__ import annotations

from typing import Callable, cast

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from deposito.blobstore import new_blob_id
from deposito.catalog import FileRecord
from deposito.errors import BadCommand, NoSpace, OutOfReach, Unavailable
from deposito.hidden import pointer_blob
from deposito.interfaces import ICatalog, ICopier
from deposito.placement import place, read_order
from deposito.pool import BlobPool
from deposito.roster import Member, Roster
from deposito.transfer import CopyFailed, Upload, copy_blob
from deposito.twisted_internals import IStreamReactor

PASS_OVER = 60.0  # seconds a server that left an upload unanswered gets no new copies, while others can take them
ABANDON_RETRY = 5.0  # seconds between tries to record an upload's copies as garbage while the catalog is out of reach
ABANDON_TRIES = 5  # tries in all after a failure of another kind


@implementer(ICopier)
class Writer:
    """Stores new versions: room is reserved on the placed servers while the
    bytes flow, and a version is committed only once ``replicas`` copies are
    durable and verified. Also the reconciler's copier."""

    log = Logger()

    def __init__(self, clock: IStreamReactor, db: ICatalog, roster: Roster, pool: BlobPool,
                 collect: Callable[[], None], repair: Callable[[], None],
                 default_replicas: int = 2, stall_timeout: float = 30.0,
                 missing: Callable[[Member, str], None] = lambda member, blob: None) -> None:
        self.clock = clock
        self.db = db
        self.roster = roster
        self.pool = pool
        self.collect = collect  # copies became garbage: delete them soon
        self.repair = repair  # a file is short of copies: the reconciler has work
        self.missing = missing  # a copy read from is not on its server (see Reader.copy_missing)
        self.default_replicas = default_replicas
        self.stall_timeout = stall_timeout
        self._unabandoned: set[str] = set()  # blobs of failed uploads not yet recorded as garbage (see abandon)

    async def begin_put(self, name: str, size: int, replicas: int | None, stored_as: str | None = None) -> Upload:
        """Reserve room on ``replicas`` servers and reach each; the catalog
        allocates the version meanwhile, and the streams open once it has
        (see Upload.open_when): the client's first bytes need not wait for
        the catalog, unless it was out of reach lately (ICatalog.reachable).
        The blob is stored under the name ``stored_as``, when not ``name``
        (a multipart upload's manifest is a version of its object's name)."""
        replicas = replicas or self.default_replicas
        targets = self._place(replicas, size)
        blob = new_blob_id()
        for m in targets:
            m.reserve(size)
        try:
            version = defer.ensureDeferred(self.db.begin_upload(name, blob, [m.id for m in targets]))
            if not self.db.reachable:  # out of reach lately: the client hears it before it sends a byte
                try:
                    version = defer.succeed(await version)
                except Unavailable:  # its answer lost: its intents may be in all the same
                    self.abandon(blob)
                    raise
            upload = Upload(self.clock, name, 0, blob, size, replicas, self.stall_timeout,
                            release=self.pool.release, targets=targets)
            upload.stored_as = stored_as or name
            clients = await defer.DeferredList(
                [defer.ensureDeferred(self.pool.connect(m)) for m in targets], consumeErrors=True)
            reached = []
            for m, (ok, client) in zip(targets, clients):
                if ok:
                    reached.append((m, client))
                else:
                    failure = cast(Failure, client)  # DeferredList's type leaves out the failures
                    self.log.warn("cannot reach storage server {id}: {why}", id=m.id,
                                  why=failure.getErrorMessage())
            if not reached:
                version.addErrback(lambda _: None)  # (an allocation that failed: its intents are abandoned)
                self.abandon(blob)
                raise Unavailable("no storage server could be reached")
        except BaseException:
            for m in targets:
                m.unreserve(size)
            raise
        first = read_order(blob, targets)[0]  # the copy reads go to first: keep it in cache

        def start(number: int) -> None:
            for m, client in reached:
                upload.add_lane(m, client, client.write_blob(blob, size, number, replicas, upload.stored_as,
                                                             cache=m is first))

        def unopened() -> None:
            for _, client in reached:
                self.pool.release(client)

        upload.open_when(version, start, unopened)
        return upload

    async def finish_put(self, upload: Upload) -> FileRecord:
        """Every byte is in: make sure there are ``replicas`` verified copies,
        then commit. From here on the upload is this call's to clean up, also
        when it fails: :meth:`abort_put` does nothing more to it."""
        upload.finishing = True
        upload.detach()
        tried = list(upload.targets)  # and the servers of the copies made below
        try:
            good = await upload.finish()
            # after finish: the version is known once the lanes opened (see Upload.open_when)
            record = FileRecord(upload.stored_as, upload.version, upload.blob, upload.size, upload.sha256,
                                upload.replicas, (), meta=upload.meta)  # what the copies below are written as
            self._pass_over_hung(upload)
            if not good:  # no copy to make the others from: say why the servers refused
                if any(isinstance(e, NoSpace) for e in upload.failures):
                    raise NoSpace("the storage servers are full")
                raise Unavailable("no storage server kept a copy")
            failures = list(upload.failures)
            while len(good) < upload.replicas:
                try:
                    good.append(await self.copy_to_new_server(record, good, tried))
                except CopyFailed as e:
                    failures.append(e.__cause__ or e)  # its partial copy is garbage at commit; try the next server
                except (Unavailable, NoSpace) as e:  # no server left to try: say why the tried ones failed
                    short = f"{len(good)} of {upload.replicas} copies could be made"
                    if any(isinstance(f, NoSpace) for f in [e, *failures]):
                        raise NoSpace(f"the storage servers are full: {short}") from e
                    raise Unavailable(f"{short} ({e})") from e
        except BaseException:
            self._abandon_written(upload, tried)
            raise
        finally:
            for m in upload.targets:
                m.unreserve(upload.size)
        ids = [m.id for m in good]
        try:
            now = upload.copied_at = self.clock.seconds()
            newest, record = await self._commit(upload, ids, now)
        except Exception as e:
            # Not committed (or, with the database lost at that moment, maybe committed: then
            # this changes nothing, see ICatalog.abandon): what was written is garbage.
            self._abandon_written(upload, tried)
            if isinstance(e, OutOfReach):  # its client must not take it for not stored
                raise Unavailable(f"the catalog database went out of reach as {upload.name} was committed:"
                                  " it may be stored, or not (STAT tells)") from e
            raise
        for m in good:
            m.stored(upload.size)
        if newest and not all(m.up for m in good):  # one went down meanwhile: the file is short
            await self.db.enqueue([upload.name])
            self.repair()
        if not newest or upload.version > 1 or len(tried) > len(good) or upload.part_of or upload.completes:
            self.collect()  # a version replaced, or copies not kept: garbage to delete now
        self.log.info("stored {name} version {version} ({size} bytes) on {servers}",
                      name=upload.name, version=upload.version, size=upload.size, servers=",".join(ids))
        return record

    async def _commit(self, upload: Upload, ids: list[str], now: float) -> tuple[bool, FileRecord]:
        """The commit point of a file, of a part of a multipart upload, or of
        the manifest that completes one: whether it is the newest version, and
        its record (``now`` in it on the catalog's clock, as the catalog keeps it)."""
        u = upload
        done = u.completes
        if done is not None:
            newest = await self.db.complete(done.upload, u.name, u.version, u.blob, u.size, u.sha256, u.replicas,
                                            ids, now, u.meta, list(done.chosen), done.sha256, u.expect)
            return newest, FileRecord(u.name, u.version, pointer_blob(done.upload), done.size, done.sha256,
                                      u.replicas, (), self.db.on_db_clock(now), u.meta, done.upload)
        if u.part_of:
            await self.db.commit_part(u.part_of, u.name, u.version, u.blob, u.size, u.sha256, u.replicas, ids, now,
                                      u.meta)
            newest = True
        else:
            newest = await self.db.commit(u.name, u.version, u.blob, u.size, u.sha256, u.replicas, ids, now, u.meta,
                                          u.expect, u.bucket)
        return newest, FileRecord(u.name, u.version, u.blob, u.size, u.sha256, u.replicas, tuple(ids),
                                  self.db.on_db_clock(now), u.meta)

    async def keep_wanted(self, blob: str, count: int, holders: list[Member]) -> None:
        async def keep(member: Member) -> None:
            client = await self.pool.connect(member)
            try:
                await client.want(blob, count)
            except BadCommand:  # a server of a version before WANT: its copies keep the count they were written with
                pass
            finally:
                self.pool.release(client)

        try:
            await defer.gatherResults([defer.ensureDeferred(keep(m)) for m in holders], consumeErrors=True)
        except defer.FirstError as e:  # the holder's own error, not FirstError's repr with its traceback
            e.subFailure.raiseException()

    def _place(self, count: int, size: int, taken: list[Member] | None = None) -> list[Member]:
        """Servers for ``count`` new copies (see placement.place), passing over
        those that left an upload unanswered lately while the others suffice."""
        members = list(self.roster.members.values())
        now = self.clock.seconds()
        answering = [m for m in members if m.passed_over_until <= now]
        if len(answering) < len(members):
            try:
                return place(answering, count, size, taken if taken is not None else [])
            except (Unavailable, NoSpace):
                pass
        return place(members, count, size, taken if taken is not None else [])

    def _pass_over_hung(self, upload: Upload) -> None:
        now = self.clock.seconds()
        for lane in upload.lanes:
            if lane.client.hung:
                self.log.warn("storage server {id} left an upload unanswered: no new copies go to it for {s:.0f} s"
                              " while others can take them", id=lane.member.id, s=PASS_OVER)
                lane.member.passed_over_until = now + PASS_OVER

    def abort_put(self, upload: Upload) -> None:
        """The client went away mid-upload: nothing of it is kept. Nothing
        to do once :meth:`finish_put` has it (its lanes may already serve others)."""
        if upload.finishing:
            return
        upload.abort()
        for m in upload.targets:
            m.unreserve(upload.size)
        self._abandon_written(upload, upload.targets)

    def _abandon_written(self, upload: Upload, servers: list[Member]) -> None:
        """An upload failed once its copies may have been written (to ``servers``)."""
        if upload.version:  # (the copies are written only once the version is known)
            self.abandon(upload.blob, upload.name, upload.version, [m.id for m in servers])
        else:
            self.abandon(upload.blob)

    def abandon(self, blob: str, name: str | None = None, version: int | None = None,
                servers: list[str] | None = None, tries: int = 0) -> None:
        """An upload failed: what it wrote of ``blob`` anywhere is garbage, to
        be deleted (see ICatalog.abandon for ``name``'s ``version`` written
        to ``servers``). While the catalog is out of reach this is tried
        again every ABANDON_RETRY seconds, so that no copy stays for good;
        after any other failure, ABANDON_TRIES times in all (then the copies
        wait for this proxy's next start, which collects every upload it
        left unfinished)."""
        d = self.db.abandon(blob, name, version, servers or [])
        d.addCallback(self._abandoned, blob)
        d.addErrback(self._abandon_later, blob, name, version, servers, tries)

    def _abandoned(self, _: object, blob: str) -> None:
        self.collect()
        if blob in self._unabandoned:
            self._unabandoned.discard(blob)
            if not self._unabandoned:
                self.log.info("the copies of failed uploads are garbage now, as they were to be")

    def _abandon_later(self, failure: Failure, blob: str, name: str | None, version: int | None,
                       servers: list[str] | None, tries: int) -> None:
        if failure.check(Unavailable, NoSpace):  # the catalog out of reach, or its disk full
            if not self._unabandoned:  # said once while it lasts, however many uploads fail meanwhile
                self.log.warn("the copies of failed uploads cannot be made garbage yet ({why}); trying again"
                              " every {s:.0f} s", why=failure.getErrorMessage(), s=ABANDON_RETRY)
            self._unabandoned.add(blob)
        else:  # (the tries while the catalog was out of reach do not count)
            tries += 1
            self.log.failure("making the copies of failed upload {blob} garbage (try {n} of {all})", failure,
                             blob=blob, n=tries, all=ABANDON_TRIES)
            if tries >= ABANDON_TRIES:
                self._unabandoned.discard(blob)
                return
        self.clock.callLater(ABANDON_RETRY, self.abandon, blob, name, version, servers, tries)

    async def copy_to_new_server(self, record: FileRecord, sources: list[Member],
                                 taken: list[Member], rescue: bool = False) -> Member:
        """One more copy of ``record``'s blob, on a server placement picks outside
        ``taken`` (the pick is added to it). The write is an intent until the
        caller counts it. Raises Unavailable/NoSpace when no server fits, and
        CopyFailed when the copy itself fails. ``rescue``: see ICopier."""
        target = self._place(1, record.size, taken)[0]
        taken.append(target)
        target.reserve(record.size)
        try:
            await self.db.add_intent(record.blob, target.id)
            self.log.info("{how} {name} to {id}", how="rescuing" if rescue else "copying", name=record.name,
                          id=target.id)
            await copy_blob(self.pool.connect, list(sources), target, record.blob, record.size, record.sha256,
                            record.name, record.version, record.replicas, release=self.pool.release,
                            cache=read_order(record.blob, [*sources, target])[0] is target, meta=record.meta,
                            missing=self.missing, rescue=rescue)
            target.stored(record.size)
        except Exception as e:
            self.log.warn("copy of {name} to {id} failed: {why}", name=record.name, id=target.id, why=str(e))
            raise CopyFailed(target, str(e)) from e
        finally:
            target.unreserve(record.size)
        return target
