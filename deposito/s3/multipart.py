"""S3's multipart uploads, on the depot's (IDepot.uploads, see
:mod:`deposito.depot.uploads`): CreateMultipartUpload, UploadPart,
UploadPartCopy, CompleteMultipartUpload, AbortMultipartUpload, ListParts
and ListMultipartUploads; and GetObjectAttributes, which pages through an
object's parts as ListParts does.

A part's body takes the same path and checks as a PutObject's (its 200 means
every copy of it is durable and verified); its ETag is its MD5. Complete
checks the parts named against those stored (InvalidPart, EntityTooSmall)
and makes the object of them without copying a byte; its ETag is the MD5 of
the parts' MD5s with ``-N``, as S3's. A Complete sent again after its
answer was lost answers the same.

A Complete reads its parts once (for the object's SHA-256), which takes a
while for a big object: as S3 does, once it has run KEEP_ALIVE_AFTER
seconds its 200 begins, a space follows every KEEP_ALIVE_EVERY seconds so
that no client's read timeout fires, and the result, or an Error document
in that 200 (which S3 clients read as the error it is), ends it.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Optional

import attrs
from twisted.internet.task import LoopingCall

from deposito.catalog import FileRecord
from deposito.catalog.listing import prefix_end
from deposito.errors import BadArgs, DepositoError, NotFound
from deposito.twisted_internals import request_gone
from deposito.protocols.words import digits
from deposito.s3 import xmlread, xmlwire
from deposito.s3.bodies import BodyChecks
from deposito.s3.checksums import FULL_OBJECT, Checksummer, of_parts, upload_checksum
from deposito.s3.conditions import http_date
from deposito.s3.errors import S3Error, s3_error
from deposito.s3.objects import OWNER, ObjectMeta, check_bucket, file_name, replicas_of

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from deposito.interfaces import IMultipart
    from deposito.s3.gateway import Call, Gateway
    from deposito.s3.request import S3Request

MIN_PART = 5 << 20  # every part but the last is at least this big, as S3 asks
MAX_PARTS_LISTED = 1000
PAGE = 1000  # stored parts read at a time while a Complete is checked
KEEP_ALIVE_AFTER = 1.0  # seconds a Complete runs before its 200 begins (see KeepAlive)
KEEP_ALIVE_EVERY = 1.0  # then a space this often until its answer
PAST_EVERY_ID = "g"  # sorts after every upload id (32 lower-case hex digits)


class Multipart:
    """The multipart operations of a Gateway (which routes them here)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    @property
    def uploads(self) -> IMultipart:
        return self.gateway.depot.uploads

    async def create(self, call: Call) -> None:
        name = file_name(call.bucket, call.key)
        algorithm, kind = upload_checksum(call.header("x-amz-checksum-algorithm"), call.header("x-amz-checksum-type"))
        meta = attrs.evolve(ObjectMeta.given(call.headers), algorithm=algorithm, checksum_type=kind)
        replicas = replicas_of(meta.user)
        await self.gateway.existing_bucket(call.bucket)
        upload = await self.uploads.create(name, replicas, meta.to_text())
        headers = {b"x-amz-checksum-algorithm": algorithm.upper().encode(),
                   b"x-amz-checksum-type": kind.encode()} if algorithm else {}
        await self.gateway.send(call, 200, xmlwire.initiate_multipart_upload_result(call.bucket, call.key, upload),
                                headers=headers)

    async def upload_of(self, call: Call) -> tuple[str, ObjectMeta]:
        """The upload a request names (uploadId), checked to be one of its
        key's under way, and what its object will keep (and the checksum
        each part must come with: ObjectMeta.algorithm)."""
        upload = call.params.get("uploadId", "")
        try:
            name, _, kept, _ = await self.uploads.upload(upload)
        except NotFound:
            name, kept = None, ""
        if name != file_name(call.bucket, call.key):
            await self.gateway.existing_bucket(call.bucket)
            raise S3Error("NoSuchUpload", UploadId=upload)
        return upload, _kept(kept)

    async def upload_part(self, call: Call) -> None:
        number = _part_number(call.params.get("partNumber", ""))
        upload, kept = await self.upload_of(call)
        if "x-amz-copy-source" in call.headers:
            await self.copy_part(call, upload, number, kept.algorithm)
            return
        size = self.gateway.body_size(call)
        wanted = "x-amz-checksum-" + kept.algorithm
        if kept.algorithm and wanted not in call.headers and call.verified.trailer != wanted:
            raise S3Error("InvalidRequest", f"The upload was created with the {kept.algorithm.upper()} checksum:"
                          f" each part must come with it ({wanted}).")
        checks = self.gateway.body_checks(call)
        part = await self.uploads.begin_part(upload, number, size)
        try:
            record = await self.gateway.receive(call, part, checks, ObjectMeta(""))
        except NotFound:  # completed or aborted while the part's bytes came: the part is garbage
            self.gateway.depot.abort_put(part)
            raise S3Error("NoSuchUpload", UploadId=upload) from None
        except BaseException:
            self.gateway.depot.abort_put(part)
            raise
        headers = {name.encode(): value.encode() for name, value in checks.checksums_given().items()}
        headers[b"etag"] = xmlwire.quoted(ObjectMeta.of(record).etag).encode()
        await self.gateway.send(call, 200, headers=headers)

    async def copy_part(self, call: Call, upload: str, number: int, algorithm: str) -> None:
        """UploadPartCopy; ``algorithm``: the checksum its upload asks of each part, made as the bytes go."""
        source = await self.gateway.copies.copy_source(call)
        start, length = _copy_range(call.header("x-amz-copy-source-range"), source.size)
        await call.request.body.read(0)
        part = await self.uploads.begin_part(upload, number, length)
        sums = [Checksummer(algorithm)] if algorithm else []
        try:
            md5 = await self.gateway.copies.copy_into(source, part, start, length, sums)
            part.meta = ObjectMeta(md5, checksums={s.algorithm: s.digest_b64() for s in sums}).to_text()
            record = await self.gateway.depot.finish_put(part)
        except NotFound:
            self.gateway.depot.abort_put(part)
            raise S3Error("NoSuchUpload", UploadId=upload) from None
        except BaseException:
            self.gateway.depot.abort_put(part)
            raise
        meta = ObjectMeta.of(record)
        await self.gateway.send(call, 200, xmlwire.copy_part_result(meta.etag, record.created, meta.checksums))

    async def complete(self, call: Call) -> None:
        name = file_name(call.bucket, call.key)
        upload = call.params.get("uploadId", "")
        try:  # first: an upload there is not is answered before its body is read (or sent, after Expect)
            of, _, kept, _ = await self.uploads.upload(upload)
        except NotFound:
            await self.answer_again(call, name, upload)
            return
        if of != name:  # another key's upload
            await self.gateway.existing_bucket(call.bucket)
            raise S3Error("NoSuchUpload", UploadId=upload)
        body = await call.request.body.read(xmlread.COMPLETE_BODY_LIMIT)
        body = BodyChecks(call, checksum_headers=False).check_whole(body)  # its x-amz-checksum-* are the object's
        asked = xmlread.parse_complete_multipart(body)
        expect = await self.gateway.write_condition(call, name)
        chosen = await self.chosen(upload, [(number, etag) for number, etag, _ in asked])
        etag = hashlib.md5(b"".join(bytes.fromhex(ObjectMeta.of(part).etag) for part in chosen),
                           usedforsecurity=False).hexdigest() + f"-{len(chosen)}"
        wanted = _kept(kept)
        checksums = _object_checksums(call, wanted, [sums for _, _, sums in asked], chosen)
        meta = attrs.evolve(wanted, etag=etag, checksums=checksums, algorithm="")
        keep = KeepAlive(self.gateway.clock, call.request)
        try:
            try:
                record = await self.uploads.complete(upload, chosen, meta.to_text(), expect)
            except NotFound:
                record = await self.made_by(call, name, upload)
            except BadArgs:  # a part was replaced meanwhile
                raise S3Error("InvalidPart") from None
        except (S3Error, DepositoError) as e:
            if not keep.stop():
                raise  # answered as any error
            error = e if isinstance(e, S3Error) else s3_error(e)
            error.resource = call.resource
            keep.end(xmlwire.error_document(error, call.request_id))
            return
        made = ObjectMeta.of(record)
        result = xmlwire.complete_multipart_upload_result(
            f"/{call.bucket}/{call.key}", call.bucket, call.key, made.etag, made.checksums, made.checksum_type)
        if keep.stop():
            keep.end(result)
        else:
            await self.gateway.send(call, 200, result)

    async def chosen(self, upload: str, asked: list[tuple[int, str]]) -> list[FileRecord]:
        """The stored parts a Complete names, in order: InvalidPart when one
        is not stored or its ETag differs, EntityTooSmall when one but the
        last is under 5 MiB. The stored parts are read a page at a time."""
        chosen: list[FileRecord] = []
        page: list[tuple[int, FileRecord]] = []
        for number, etag in asked:
            while page and page[0][0] < number:
                page.pop(0)
            if not page:
                page = await self.uploads.parts(upload, number - 1, PAGE)
            if not page or page[0][0] != number or ObjectMeta.of(page[0][1]).etag != etag:
                raise S3Error("InvalidPart", UploadId=upload, PartNumber=str(number), ETag=etag)
            chosen.append(page[0][1])
        for part in chosen[:-1]:
            if part.size < MIN_PART:
                raise S3Error("EntityTooSmall", ProposedSize=str(part.size), MinSizeAllowed=str(MIN_PART))
        return chosen

    async def part_span(self, call: Call, record: FileRecord
                        ) -> tuple[Optional[tuple[int, int]], Optional[int], Optional[FileRecord]]:
        """GetObject's ``partNumber``: the part's bytes (first, last) in the
        object, the object's part count and the part's record (None and None
        for an object not made of parts, whose one part is the whole);
        InvalidPartNumber (416) past its last part, as S3 answers. The parts
        are read a page at a time."""
        if call.header("range"):
            raise S3Error("InvalidRequest", "Cannot specify both Range header and partNumber query parameter")
        number = _part_number(call.params["partNumber"])
        if not record.parts:
            if number != 1:
                raise S3Error("InvalidPartNumber", PartNumber=str(number))
            return ((0, record.size - 1) if record.size else None), None, None  # an empty one: whole, no range
        at, after = 0, 0
        while True:
            page = await self.uploads.parts(record.parts, after, PAGE)
            for n, part in page:
                if n == number:
                    count = ObjectMeta.of(record).etag.rpartition("-")[2]
                    return (at, at + part.size - 1), int(count) if digits(count, 5) else None, part
                at += part.size
            if len(page) < PAGE:
                raise S3Error("InvalidPartNumber", PartNumber=str(number))
            after = page[-1][0]

    async def answer_again(self, call: Call, name: str, upload: str) -> None:
        """A Complete of an upload no longer under way: answered as before
        when the object is the one it made (the first answer was lost), else NoSuchUpload."""
        record = await self.made_by(call, name, upload)
        made = ObjectMeta.of(record)
        await self.gateway.send(call, 200, xmlwire.complete_multipart_upload_result(
            f"/{call.bucket}/{call.key}", call.bucket, call.key, made.etag, made.checksums, made.checksum_type))

    async def made_by(self, call: Call, name: str, upload: str) -> FileRecord:
        """The object ``upload`` made, if it is ``name``'s version now; else NoSuchUpload."""
        try:
            record: Optional[FileRecord] = await self.gateway.depot.lookup(name)
        except NotFound:
            record = None
        if record is None or record.parts != upload:
            await self.gateway.existing_bucket(call.bucket)
            raise S3Error("NoSuchUpload", UploadId=upload)
        return record

    async def abort(self, call: Call) -> None:
        upload, _ = await self.upload_of(call)
        try:
            await self.uploads.abort(upload)
        except NotFound:
            raise S3Error("NoSuchUpload", UploadId=upload) from None
        await self.gateway.send(call, 204)

    async def list_parts(self, call: Call) -> None:
        upload, kept = await self.upload_of(call)
        marker = _count_param(call.params, "part-number-marker", 0)
        limit = min(_count_param(call.params, "max-parts", MAX_PARTS_LISTED), MAX_PARTS_LISTED)
        parts = await self.uploads.parts(upload, marker, limit + 1)
        truncated = len(parts) > limit
        parts = parts[:limit]
        entries = [xmlwire.PartEntry(number, record.created, ObjectMeta.of(record).etag, record.size,
                                     ObjectMeta.of(record).checksums) for number, record in parts]
        await self.gateway.send(call, 200, xmlwire.list_parts_result(
            call.bucket, call.key, upload, entries, part_number_marker=marker,
            next_part_number_marker=parts[-1][0] if parts else None, max_parts=limit, is_truncated=truncated,
            owner=OWNER, checksum_algorithm=kept.algorithm, checksum_type=kept.checksum_type))

    async def attributes(self, call: Call) -> None:
        """GetObjectAttributes: of the attributes x-amz-object-attributes
        names, those the object has: Checksum for an object whose body came
        with x-amz-checksum-* (or whose upload asked for one), ObjectParts for
        an object made of parts, a page of them at a time, as ListParts pages."""
        wanted = _attribute_names(call.header("x-amz-object-attributes"))
        record = await self.gateway.lookup(call.bucket, call.key)
        meta = ObjectMeta.of(record)
        etag = meta.etag
        parts = None
        if "ObjectParts" in wanted and record.parts:
            marker = _count_param({"marker": call.header("x-amz-part-number-marker") or ""}, "marker", 0)
            limit = min(_count_param({"most": call.header("x-amz-max-parts") or ""}, "most", MAX_PARTS_LISTED),
                        MAX_PARTS_LISTED)
            page = await self.uploads.parts(record.parts, marker, limit + 1)
            count = etag.rpartition("-")[2]
            parts = xmlwire.ObjectParts(int(count) if digits(count, 5) else len(page),
                                        [(number, part.size, ObjectMeta.of(part).checksums)
                                         for number, part in page[:limit]], marker,
                                        page[limit - 1][0] if len(page) > limit else None, limit, len(page) > limit)
        await self.gateway.send(call, 200, xmlwire.object_attributes_result(
                                    wanted, etag, record.size, parts, meta.checksums,
                                    meta.checksum_type or FULL_OBJECT),
                                headers={b"last-modified": http_date(record.created).encode()})

    async def list_uploads(self, call: Call) -> None:
        """The uploads under way in a bucket, by key then by id; with a
        delimiter, the keys sharing what comes up to it after the prefix are
        rolled up into one CommonPrefix (each counts toward max-uploads, as
        S3 counts them), and the catalog is asked again past it."""
        p = call.params
        await self.gateway.existing_bucket(call.bucket)
        prefix, key_marker, id_marker = p.get("prefix", ""), p.get("key-marker", ""), p.get("upload-id-marker", "")
        delimiter = p.get("delimiter") or None
        limit = min(_count_param(p, "max-uploads", MAX_PARTS_LISTED), MAX_PARTS_LISTED)
        base = check_bucket(call.bucket) + "/"
        # as S3: past key-marker's own uploads, unless upload-id-marker names where among them to go on
        after: tuple[str | None, str] = (base + key_marker, id_marker or PAST_EVERY_ID) if key_marker else ("", "")
        if delimiter and key_marker.endswith(delimiter) and not id_marker:  # a CommonPrefix given back:
            after = (prefix_end(base + key_marker), "")  # past every key under it
        entries: list[xmlwire.UploadEntry] = []
        prefixes: list[str] = []
        last: tuple[str, Optional[str]] = ("", None)  # the key (or CommonPrefix) listed last, and its upload
        truncated = False
        while after[0] is not None and not truncated:
            want = limit + 1 - len(entries) - len(prefixes)
            found = await self.uploads.uploads(base + prefix, after[0], after[1], want)
            for upload, name, created in found:
                if len(entries) + len(prefixes) == limit:
                    truncated = True
                    break
                key = name[len(base):]
                cut = key.find(delimiter, len(prefix)) if delimiter else -1
                if cut < 0:
                    entries.append(xmlwire.UploadEntry(key, upload, created, owner=OWNER))
                    after, last = (name, upload), (key, upload)
                    continue
                prefixes.append(key[:cut + len(delimiter or "")])
                after, last = (prefix_end(base + prefixes[-1]), ""), (prefixes[-1], None)
                break  # asked again, past every key under it
            else:
                if len(found) < want:
                    break
        await self.gateway.send(call, 200, xmlwire.list_multipart_uploads_result(
            call.bucket, entries, prefixes, prefix=prefix, delimiter=delimiter, key_marker=key_marker,
            upload_id_marker=id_marker, next_key_marker=last[0] if truncated else None,
            next_upload_id_marker=last[1] if truncated else None, max_uploads=limit,
            is_truncated=truncated, encoding_type=p.get("encoding-type")))


class KeepAlive:
    """A long Complete's answer begun early, as S3 does: once it has run
    KEEP_ALIVE_AFTER seconds, its 200 and the XML declaration are sent, then
    a space every KEEP_ALIVE_EVERY seconds, and :meth:`end` sends the rest
    (the result, or an Error document)."""

    def __init__(self, clock: IReactorTime, request: S3Request) -> None:
        self.request = request
        self.started = False
        self._spaces = LoopingCall(self._space)
        self._spaces.clock = clock
        self._begin = clock.callLater(KEEP_ALIVE_AFTER, self._start)

    def _start(self) -> None:
        if request_gone(self.request):
            return
        self.started = True
        self.request.setResponseCode(200)
        self.request.setHeader(b"content-type", b"application/xml")
        self.request.write(xmlwire.DECLARATION)
        self._spaces.start(KEEP_ALIVE_EVERY, now=False)

    def _space(self) -> None:
        if not request_gone(self.request):
            self.request.write(b" ")

    def stop(self) -> bool:
        """No more spaces; whether the answer has begun (then :meth:`end` ends it)."""
        if self._begin.active():
            self._begin.cancel()
        if self._spaces.running:
            self._spaces.stop()
        return self.started

    def end(self, document: bytes) -> None:
        """The rest of the answer begun: ``document`` without its declaration, sent already."""
        if request_gone(self.request):
            return
        self.request.write(document.removeprefix(xmlwire.DECLARATION))
        self.request.finish()


ATTRIBUTES = ("ETag", "Checksum", "ObjectParts", "StorageClass", "ObjectSize")  # GetObjectAttributes' names


def _attribute_names(header: Optional[str]) -> list[str]:
    """The attributes a GetObjectAttributes asks for (at least one, each one of S3's)."""
    names = [name.strip() for name in (header or "").split(",") if name.strip()]
    if not names or any(name not in ATTRIBUTES for name in names):
        raise S3Error("InvalidArgument", "Invalid attribute name specified", ArgumentName="x-amz-object-attributes",
                      ArgumentValue=(header or "")[:100])
    return names


def _part_number(text: str) -> int:
    if not digits(text, 5) or not 1 <= int(text) <= xmlread.MAX_PART_NUMBER:
        raise S3Error("InvalidArgument", "Part number must be an integer between 1 and 10000, inclusive",
                      ArgumentName="partNumber", ArgumentValue=text[:20])
    return int(text)


def _count_param(params: dict[str, str], name: str, default: int) -> int:
    text = params.get(name)
    if text is None or text == "":
        return default
    if not digits(text, 9):
        raise S3Error("InvalidArgument", f"{name} must be a whole number", ArgumentName=name,
                      ArgumentValue=text[:20])
    return int(text)


def _copy_range(header: Optional[str], size: int) -> tuple[int, int]:
    """(start, length) of x-amz-copy-source-range (``bytes=first-last``, both
    given and inside the source), or the whole source."""
    if header is None:
        return 0, size
    unit, _, span = header.strip().partition("=")
    first, _, last = span.partition("-")
    numbers = digits(first) and digits(last)
    if unit != "bytes" or not numbers or int(first) > int(last) or int(last) >= size:
        raise S3Error("InvalidRange" if unit == "bytes" and numbers else "InvalidArgument",
                      "The x-amz-copy-source-range value must be of the form bytes=first-last"
                      " where first and last are the zero-based offsets of the first and last bytes to copy",
                      ArgumentName="x-amz-copy-source-range", ArgumentValue=header[:100])
    return int(first), int(last) - int(first) + 1


def _kept(meta: str) -> ObjectMeta:
    """What an upload under way keeps for its object (its catalog text)."""
    return ObjectMeta.of(FileRecord("", 0, "", 0, "", 0, (), meta=meta))


def _object_checksums(call: Call, kept: ObjectMeta, given: list[dict[str, str]], chosen: list[FileRecord]
                      ) -> dict[str, str]:
    """The checksum of the object a Complete makes of ``chosen``, when its
    upload asked for one: each part's, where the Complete names it
    (``given``), must be the one stored with the part, and an
    x-amz-checksum-* of the whole object, if sent, the one made of them
    (BadDigest else)."""
    algorithm = kept.algorithm
    if not algorithm:
        return {}
    parts = []
    for sums, part in zip(given, chosen):
        stored = ObjectMeta.of(part).checksums.get(algorithm)
        if stored is None or sums.get(algorithm, stored) != stored:
            raise S3Error("BadDigest", f"The {algorithm.upper()} given for a part is not the one it was stored with.")
        parts.append((stored, part.size))
    whole = of_parts(algorithm, kept.checksum_type, parts)
    asked = call.header("x-amz-checksum-" + algorithm)
    if asked is not None and asked.strip() != whole:
        raise S3Error("BadDigest", f"The {algorithm.upper()} you specified did not match the calculated checksum.")
    return {algorithm: whole}
