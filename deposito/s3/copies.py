"""S3's copies: CopyObject, and the source of UploadPartCopy. The bytes
take the depot's read path (failover included) into a new upload, as a
PutObject's body would; nothing is copied on disk behind the catalog's back."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, Sequence
from urllib.parse import unquote

import attrs
from twisted.internet.interfaces import IConsumer
from zope.interface import implementer

from deposito.catalog import FileRecord
from deposito.errors import NotFound
from deposito.s3 import xmlwire
from deposito.s3.checksums import COMPOSITE, Checksummer
from deposito.s3.conditions import check_copy_conditions
from deposito.s3.errors import S3Error
from deposito.s3.objects import ObjectMeta, check_bucket, file_name, replicas_of
from deposito.transfer import Upload

if TYPE_CHECKING:
    from deposito.s3.gateway import Call, Gateway


class Copies:
    """The copy operations of a Gateway (which routes them here)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def copy_source(self, call: Call) -> FileRecord:
        """The object x-amz-copy-source names, its x-amz-copy-source-if-* conditions checked."""
        source_bucket, source_key = _copy_source(call.header("x-amz-copy-source") or "")
        source = await self.gateway.lookup(source_bucket, source_key)
        check_copy_conditions(call, xmlwire.quoted(ObjectMeta.of(source).etag), int(source.created))
        return source

    async def copy_object(self, call: Call) -> None:
        source = await self.copy_source(call)
        name = file_name(call.bucket, call.key)
        await self.gateway.existing_bucket(call.bucket)
        kept = ObjectMeta.of(source)
        # the same bytes: a checksum of them all still holds (one made of a multipart source's parts does not)
        sums = {} if kept.checksum_type == COMPOSITE else kept.checksums
        directive = (call.header("x-amz-metadata-directive") or "COPY").upper()
        if directive == "REPLACE":
            meta = attrs.evolve(ObjectMeta.given(call.headers), checksums=sums)
        elif directive == "COPY":
            if source.name == name:
                raise S3Error("InvalidRequest", "This copy request is illegal because it is trying to copy an "
                              "object to itself without changing the object's metadata.")
            meta = attrs.evolve(kept, etag="", checksums=sums, checksum_type="")
        else:
            raise S3Error("InvalidArgument", "Unknown metadata directive.")
        expect = await self.gateway.write_condition(call, name)  # the destination's If-Match and If-None-Match
        await call.request.body.read(0)  # a copy has no body of its own
        upload = await self.gateway.depot.begin_put(name, source.size, replicas_of(meta.user))
        upload.expect, upload.bucket = expect, call.bucket
        try:
            md5 = await self.copy_into(source, upload, 0, source.size)
            upload.meta = attrs.evolve(meta, etag=md5).to_text()
            record = await self.gateway.depot.finish_put(upload)
        except NotFound as e:
            self.gateway.depot.abort_put(upload)
            if await self.gateway.depot.bucket(call.bucket) is None:  # deleted meanwhile: nothing is kept
                raise S3Error("NoSuchBucket", BucketName=call.bucket) from None
            raise e
        except BaseException:
            self.gateway.depot.abort_put(upload)
            raise
        await self.gateway.send(call, 200, xmlwire.copy_object_result(ObjectMeta.of(record).etag, record.created))

    async def copy_into(self, source: FileRecord, upload: Upload, start: int, length: int,
                        sums: Sequence[Checksummer] = ()) -> str:
        """Bytes of ``source`` into ``upload`` through the read path: their
        hex MD5 (and ``sums`` fed them too)."""
        copier = _Copier(upload, sums)
        await self.gateway.depot.read(source, copier, start, length)
        return copier.md5.hexdigest()


@implementer(IConsumer)
class _Copier:
    """A consumer of one file's bytes that stores them as a new upload (CopyObject)."""

    def __init__(self, upload: Upload, sums: Sequence[Checksummer] = ()) -> None:
        self.upload = upload
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.sums = sums
        self.disconnected = False

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.upload.attach(producer)

    def unregisterProducer(self) -> None:
        self.upload.detach()

    def write(self, data: bytes) -> None:
        piece = bytes(data)
        self.md5.update(piece)
        for checksummer in self.sums:
            checksummer.update(piece)
        self.upload.write(piece)


def _copy_source(header: str) -> tuple[str, str]:
    """(bucket, key) of x-amz-copy-source: ``[/]bucket/key[?versionId=...]``, percent-encoded."""
    source, _, query = header.partition("?")
    if query and query not in ("versionId=null",):
        raise S3Error("NotImplemented", "Object versions are not kept: copy the current one")
    try:
        bucket, _, key = unquote(source.lstrip("/"), errors="strict").partition("/")
    except UnicodeDecodeError:
        raise S3Error("InvalidArgument", "x-amz-copy-source is not UTF-8 once percent-decoded",
                      ArgumentName="x-amz-copy-source", ArgumentValue=header[:100]) from None
    if not bucket or not key:
        raise S3Error("InvalidArgument", "Copy Source must mention the source bucket and key: sourcebucket/sourcekey",
                      ArgumentName="x-amz-copy-source", ArgumentValue=header)
    return check_bucket(bucket), key
