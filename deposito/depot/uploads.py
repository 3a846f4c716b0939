"""Multipart uploads (S3's): parts stored as they arrive, each a hidden file
with the object's copy count (see :mod:`deposito.hidden`), and the object
made of them at Complete without copying a byte.

Completing an upload reads its parts once, in order, through the one read
path, for the object's SHA-256 (what GET announces and both clients check),
then writes the upload's manifest (:mod:`deposito.manifest`), replicated
like the object, and commits both in one transaction: the object appears
whole, at once, or not at all. Uploads left without a part for
``expiry`` seconds are aborted, their parts garbage.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any, Callable

from twisted.internet import defer, task
from twisted.internet.interfaces import IConsumer
from twisted.logger import Logger
from zope.interface import implementer

from deposito import manifest
from deposito.catalog import FileRecord
from deposito.catalog.records import Expect
from deposito.depot.reads import Reader
from deposito.depot.writes import Writer
from deposito.errors import NotFound
from deposito.hidden import manifest_name, part_name
from deposito.interfaces import ICatalog
from deposito.transfer import Completion, Upload
from deposito.twisted_internals import IStreamReactor

EXPIRE_PAGE = 100  # uploads expired in one transaction


class Uploads:
    """The depot's multipart uploads, as the S3 gateway calls them."""

    log = Logger()

    def __init__(self, clock: IStreamReactor, db: ICatalog, writer: Writer, reader: Reader,
                 collect: Callable[[], None], expiry: float = 7 * 86400.0, check_every: float = 60.0) -> None:
        self.clock = clock
        self.db = db
        self.writer = writer
        self.reader = reader
        self.collect = collect
        self.expiry = expiry
        self._loop = task.LoopingCall(self.expire)
        self._loop.clock = clock
        self._check_every = min(check_every, max(1.0, expiry / 4))

    def start(self) -> None:
        self._loop.start(self._check_every, now=False).addErrback(
            lambda f: self.log.failure("expiring uploads", f))

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    async def expire(self) -> None:
        """Abort the uploads no part came for in ``expiry`` seconds."""
        try:
            while True:
                gone = await self.db.expire_uploads(self.clock.seconds() - self.expiry, EXPIRE_PAGE)
                for upload in gone:
                    self.log.info("multipart upload {upload} abandoned: aborted", upload=upload)
                if gone:
                    self.collect()
                if len(gone) < EXPIRE_PAGE:
                    return
        except Exception as e:  # the catalog unavailable: the next round tries again
            self.log.warn("expiring uploads failed: {why}", why=str(e))

    async def create(self, name: str, replicas: int | None, meta: str) -> str:
        """A new upload of ``name``: its id."""
        upload = secrets.token_hex(16)
        await self.db.create_upload(upload, name, replicas or self.writer.default_replicas, meta, self.clock.seconds())
        return upload

    async def upload(self, upload: str) -> tuple[str, int, str, float]:
        """(name, replicas, meta, created) of an upload under way; NotFound else."""
        found = await self.db.upload(upload)
        if found is None:
            raise NotFound(f"no upload {upload} under way")
        return found

    async def begin_part(self, upload: str, number: int, size: int) -> Upload:
        """Part ``number`` of ``upload`` begins: an Upload to write its bytes
        to, then to finish (or abort) as any upload (IDepot.finish_put)."""
        _, replicas, _, _ = await self.upload(upload)
        part = await self.writer.begin_put(part_name(upload, number, secrets.token_hex(16)), size, replicas)
        part.part_of = upload
        return part

    def parts(self, upload: str, after: int, limit: int) -> defer.Deferred[list[tuple[int, FileRecord]]]:
        return self.db.parts(upload, after, limit)

    def uploads(self, prefix: str, after_name: str, after_id: str, limit: int
                ) -> defer.Deferred[list[tuple[str, str, float]]]:
        return self.db.uploads(prefix, after_name, after_id, limit)

    async def abort(self, upload: str) -> None:
        """Give an upload up: its parts are deleted. NotFound when it is not under way."""
        if not await self.db.abort_upload(upload):
            raise NotFound(f"no upload {upload} under way")
        self.collect()

    async def complete(self, upload: str, chosen: list[FileRecord], meta: str,
                       expect: Expect | None = None) -> FileRecord:
        """The parts ``chosen`` (records from :meth:`parts`, in order) become
        the upload's object, with ``meta``: its record once committed (if
        the name's current version meets ``expect``).
        NotFound when the upload is no longer under way; BadArgs when a
        chosen part was replaced meanwhile."""
        name, replicas, _, _ = await self.upload(upload)
        digest = hashlib.sha256()
        for part in chosen:
            await self.reader.read(part, _Hashing(digest))
        size = sum(part.size for part in chosen)
        text = manifest.write(name, meta, digest.hexdigest(), [(part.name, part.size, part.sha256) for part in chosen])
        writing = await self.writer.begin_put(name, len(text), replicas, stored_as=manifest_name(upload))
        try:
            writing.write(text)
            writing.meta = meta
            writing.expect = expect
            writing.completes = Completion(upload, tuple(part.name for part in chosen), size, digest.hexdigest())
            record = await self.writer.finish_put(writing)
        except BaseException:
            self.writer.abort_put(writing)
            raise
        self.log.info("multipart upload {upload} completed {name} ({n} parts, {size} bytes)", upload=upload,
                      name=name, n=len(chosen), size=size)
        return record


@implementer(IConsumer)
class _Hashing:
    """A consumer of a file's bytes that only hashes them."""

    def __init__(self, digest: Any) -> None:
        self.digest = digest

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.digest.update(data)
