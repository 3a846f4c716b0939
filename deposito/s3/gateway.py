"""The S3 API (README, "S3"), off unless the proxy is given ``--s3``.

Path-style addressing: ``/`` lists the buckets, ``/B`` is bucket B, and
``/B/KEY`` is the depot file ``B/KEY`` (see :mod:`deposito.s3.objects`).
With a domain (``--s3-domain D``), virtual-host style too: a Host header
``B.D`` names bucket B, and the path is then the key.
Every request is checked with Signature Version 4 (:mod:`deposito.s3.sigv4`)
before anything is read or stored, and answered with S3's XML (:mod:`deposito.s3.xmlwire`).

The bytes take the depot's one data path both ways: a PutObject streams its
body (:class:`deposito.s3.request.S3Request`) through its checks into an
upload (``begin_put``, ``finish_put``: a 200 means every copy is durable and
verified); a GetObject is ``depot.read``, which fails over from copy to
copy. A body whose signature, checksum or Content-MD5 does not hold stores
nothing: the upload is aborted before its commit.

Multipart uploads (:mod:`deposito.s3.multipart`) store each part as it
comes, the same way, and make the object of them at Complete. Listings are
in :mod:`deposito.s3.listings`, copies in :mod:`deposito.s3.copies`, a body's checks in :mod:`deposito.s3.bodies`,
the conditional headers in :mod:`deposito.s3.conditions`.
"""

from __future__ import annotations

import secrets
import time
from typing import Any, Awaitable, Callable, Optional
from urllib.parse import parse_qsl, unquote

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Site

from deposito import twisted_internals
from deposito.catalog import FileRecord
from deposito.catalog.records import Expect
from deposito.errors import DepositoError, NotEmpty, NotFound, Unavailable
from deposito.interfaces import IDepot
from deposito.listening import MAX_CONNECTIONS, ConnectionCap, http_busy, http_whole
from deposito.protocols.words import digits
from deposito.s3 import sigv4, xmlread, xmlwire
from deposito.s3.bodies import BodyChecks
from deposito.s3.checksums import FULL_OBJECT
from deposito.s3.conditions import check_conditions, delete_condition, http_date, if_range_holds, write_condition
from deposito.s3.copies import Copies
from deposito.s3.errors import UNSERVED_CONDITION, S3Error, s3_error
from deposito.s3.keys import S3Keys
from deposito.s3.listings import Listings
from deposito.s3.multipart import Multipart
from deposito.s3.objects import (KEPT_HEADERS, ObjectMeta, check_bucket, check_new_bucket, file_name, header_text,
                                 mail_safe, replicas_of)
from deposito.s3.request import S3Request
from deposito.transfer import Upload
from deposito.web import parse_range, send_body

log = Logger()

XML_BODY_LIMIT = 1 << 20  # CreateBucket
ANSWER_HEADERS = {b"x-amz-request-id", b"server", b"date"}  # those of any answer, an error's too
IDLE_TIMEOUT = 60  # seconds a connection may send nothing (mid-body included)
# Sub-resources of a bucket or an object that are not served (S3 has many).
NOT_SERVED = {"acl", "policy", "tagging", "cors", "lifecycle", "website", "logging",
              "notification", "replication", "encryption", "object-lock", "retention", "legal-hold",
              "accelerate", "requestPayment", "inventory", "analytics", "metrics", "ownershipControls",
              "publicAccessBlock", "intelligent-tiering", "torrent", "restore", "select"}
MULTIPART = {"uploads", "uploadId", "partNumber"}
ENCRYPTION = "x-amz-server-side-encryption"  # SSE-S3, SSE-KMS and SSE-C (customer keys) headers all start so
LOCK = "x-amz-object-lock-"  # an object's retention and legal hold


@attrs.frozen
class Call:
    """One request, checked: what the operations need of it."""

    request: Any  # the S3Request
    verified: sigv4.Verified
    bucket: str
    key: str
    params: dict[str, str]
    headers: dict[str, list[str]]

    def header(self, name: str) -> Optional[str]:
        values = self.headers.get(name)
        return ",".join(values) if values else None

    @property
    def resource(self) -> str:
        return "/" + self.bucket + ("/" + self.key if self.key else "")

    @property
    def request_id(self) -> str:
        """The id its answer carries (x-amz-request-id)."""
        return (self.request.responseHeaders.getRawHeaders(b"x-amz-request-id") or [b""])[0].decode("latin-1")


class Gateway:
    """Checks each request and runs its operation; called by each S3Request
    once its headers are in."""

    def __init__(self, depot: IDepot, keys: S3Keys, clock: IReactorTime, max_size: Optional[int] = None,
                 domain: Optional[str] = None) -> None:
        self.depot = depot
        self.domain = domain.lower().strip(".") if domain else None
        self.keys = keys
        self.clock = clock
        self.max_size = max_size
        self.multipart = Multipart(self)
        self.listings = Listings(self)
        self.copies = Copies(self)

    def __call__(self, request: S3Request, method: bytes, raw: bytes) -> None:
        defer.ensureDeferred(self.handle(request, method.decode("latin-1"), raw.decode("latin-1"))).addErrback(
            lambda f: log.failure("S3 {method} {raw}", f, method=method, raw=raw))

    async def handle(self, request: S3Request, method: str, raw: str) -> None:
        request_id = secrets.token_hex(8).upper()
        request.setHeader(b"x-amz-request-id", request_id.encode())
        request.setHeader(b"server", b"Deposito")
        request.setHeader(b"date", http_date(time.time()).encode())  # (the wall clock: see twisted_internals.steady_clock)
        raw_path, _, raw_query = raw.partition("?")
        try:
            if not raw_path.startswith("/"):
                raise S3Error("InvalidRequest", "The request line names no path")
            headers: dict[str, list[str]] = {}
            for name, values in request.requestHeaders.getAllRawHeaders():
                headers[name.decode("latin-1").lower()] = [header_text(v) for v in values]
            if "AWSAccessKeyId=" in raw_query or (headers.get("authorization") or [""])[0].startswith("AWS "):
                raise S3Error("AccessDenied", "Signature Version 2 is not accepted: sign with AWS Signature"
                              " Version 4 (boto3: Config(signature_version='s3v4'))")
            if method == "OPTIONS":  # a browser's CORS preflight, never signed: no bucket allows CORS
                raise S3Error("AccessForbidden" if "origin" in headers else "BadRequest")
            verified = sigv4.verify(method, raw_path, raw_query, headers, self.keys, time.time())
            if self.depot.closed_for_rebuild:
                raise Unavailable("rebuilding the catalog from the servers; try again shortly")
            bucket, key = _split(self.bucket_path(raw_path, headers))
            params = _params(raw_query)
            operation = self.route(method, bucket, key, params, headers)
            await operation(Call(request, verified, bucket, key, params, headers))
        except S3Error as e:
            await self.fail(request, method, e, raw_path, request_id)
        except DepositoError as e:
            await self.fail(request, method, s3_error(e), raw_path, request_id)
        except Exception:  # a bug: logged, and the client still gets an answer
            log.failure("S3 {method} {path}", method=method, path=raw_path)
            await self.fail(request, method, S3Error("InternalError"), raw_path, request_id)

    def bucket_path(self, raw_path: str, headers: dict[str, list[str]]) -> str:
        """The path-style path of a request: as sent, or, when its Host is
        ``B.<domain>`` (virtual-host style), ``/B`` followed by it."""
        host = (headers.get("host") or [""])[0].strip().lower()
        if self.domain is None or host.startswith("["):
            return raw_path
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
        if not name.endswith("." + self.domain):
            return raw_path
        return "/" + check_bucket(name[:-len(self.domain) - 1]) + raw_path

    def route(self, method: str, bucket: str, key: str, params: dict[str, str],
              headers: dict[str, list[str]]) -> Callable[[Call], Awaitable[None]]:
        if NOT_SERVED & params.keys() or ({"versioning", "versions"} & params.keys() and (key or method != "GET")):
            raise S3Error("NotImplemented", "This sub-resource is not served")
        if params.get("versionId", "null") != "null":  # only the current version is kept: S3 calls it null
            raise S3Error("NoSuchVersion", Key=key, VersionId=params["versionId"][:100])
        if any(name.startswith(ENCRYPTION) for name in headers):  # stored as sent: never claim otherwise
            raise S3Error("NotImplemented", "Server-side encryption is not served: objects are stored as sent")
        if (any(name.startswith(LOCK) for name in headers)
                or (headers.get("x-amz-bucket-object-lock-enabled") or [""])[0].strip().lower() == "true"):
            raise S3Error("NotImplemented", "Object lock is not served: any object may be deleted or replaced")
        if "x-amz-if-match-size" in headers or "x-amz-if-match-last-modified-time" in headers:
            raise S3Error("NotImplemented", UNSERVED_CONDITION)  # refused, never ignored
        if not bucket:
            if method == "GET":
                return self.listings.list_buckets
            raise S3Error("MethodNotAllowed")
        check_bucket(bucket)
        if not key:
            table: dict[str, Callable[[Call], Awaitable[None]]] = {
                "GET": self.get_bucket, "HEAD": self.head_bucket, "PUT": self.create_bucket,
                "DELETE": self.delete_bucket}
            if method == "POST" and "delete" in params:
                return self.delete_objects
            if method == "GET" and "uploads" in params:
                return self.multipart.list_uploads
        elif "uploads" in params:
            table = {"POST": self.multipart.create}
        elif "attributes" in params:
            table = {"GET": self.multipart.attributes}
        elif method in ("GET", "HEAD") and "uploadId" not in params:
            table = {method: self.get_object}  # partNumber alone: a part of the object
        elif MULTIPART & params.keys():
            if "uploadId" not in params:
                raise S3Error("InvalidRequest", "A multipart request names its upload (uploadId)")
            table = {"POST": self.multipart.complete, "PUT": self.multipart.upload_part,
                     "GET": self.multipart.list_parts, "DELETE": self.multipart.abort}
        else:
            table = {"GET": self.get_object, "HEAD": self.get_object, "DELETE": self.delete_object,
                     "PUT": self.copies.copy_object if "x-amz-copy-source" in headers else self.put_object}
        if method not in table:
            raise S3Error("MethodNotAllowed")
        return table[method]

    # -- answers

    async def ready(self, call_or_request: Any) -> bool:
        """Wait for the whole request (the body thrown away if nobody took
        it); False when the client has gone."""
        request = call_or_request.request if isinstance(call_or_request, Call) else call_or_request
        request.body.discard()
        request.answer_soon()
        return bool(await request.received) and not request.finished and not twisted_internals.request_gone(request)

    async def send(self, call: Call, status: int, body: bytes = b"", content_type: bytes = b"application/xml",
                   headers: Optional[dict[bytes, bytes]] = None) -> None:
        if not await self.ready(call):
            return
        request = call.request
        request.setResponseCode(status)
        for name, value in (headers or {}).items():
            request.setHeader(name, value)
        if body:
            request.setHeader(b"content-type", content_type)
        request.setHeader(b"content-length", b"%d" % len(body))
        if body and request.method != b"HEAD":
            request.write(body)
        request.finish()

    async def fail(self, request: S3Request, method: str, error: S3Error, resource: str, request_id: str) -> None:
        if not await self.ready(request):
            return
        if request.startedWriting:  # too late for an error document: the client must see a cut
            channel: Any = request.channel
            channel.transport.abortConnection()
            return
        if error.resource is None:
            error.resource = unquote(resource)
        body = b"" if method == "HEAD" else xmlwire.error_document(error, request_id)
        request.setResponseCode(error.status)
        request.setHeader(b"content-type", b"application/xml")
        request.setHeader(b"content-length", b"%d" % len(body))
        if body:
            request.write(body)
        request.finish()

    # -- buckets

    async def head_bucket(self, call: Call) -> None:
        await self.existing_bucket(call.bucket)
        await self.send(call, 200, headers={b"x-amz-bucket-region": b"us-east-1"})

    async def create_bucket(self, call: Call) -> None:
        body = await call.request.body.read(XML_BODY_LIMIT)
        xmlread.parse_create_bucket(BodyChecks(call).check_whole(body))
        if not await self.depot.create_bucket(check_new_bucket(call.bucket)):
            raise S3Error("BucketAlreadyOwnedByYou", BucketName=call.bucket)
        await self.send(call, 200, headers={b"location": b"/" + call.bucket.encode()})

    async def delete_bucket(self, call: Call) -> None:
        try:
            await self.depot.delete_bucket(call.bucket)
        except NotFound:
            raise S3Error("NoSuchBucket", BucketName=call.bucket) from None
        except NotEmpty:
            raise S3Error("BucketNotEmpty", await self._unnamed_file(call.bucket), BucketName=call.bucket) from None
        await self.send(call, 204)

    async def _unnamed_file(self, bucket: str) -> Optional[str]:
        """Why a bucket that lists empty is not: a file ``<bucket>/`` that the
        text protocol stored, whose key would be empty (None: no such file)."""
        try:
            await self.depot.lookup(bucket + "/")
        except NotFound:
            return None
        return (f"The bucket holds a file named '{bucket}/', whose key would be empty,"
                " so S3 cannot name it: delete it through the text protocol or HTTP")

    async def get_bucket(self, call: Call) -> None:
        if "location" in call.params:
            await self.existing_bucket(call.bucket)
            await self.send(call, 200, xmlwire.location_constraint(None))
        elif "versioning" in call.params:
            await self.existing_bucket(call.bucket)
            await self.send(call, 200, xmlwire.versioning_configuration())
        elif "versions" in call.params:
            await self.listings.list_versions(call)
        elif call.params.get("list-type") == "2":
            await self.listings.list_objects_v2(call)
        else:
            await self.listings.list_objects(call)

    async def existing_bucket(self, bucket: str) -> None:
        if await self.depot.bucket(bucket) is None:
            raise S3Error("NoSuchBucket", BucketName=bucket)

    # -- objects

    async def get_object(self, call: Call) -> None:
        record = await self.lookup(call.bucket, call.key)
        meta = ObjectMeta.of(record)
        request = call.request
        etag = xmlwire.quoted(meta.etag)
        modified = int(record.created)
        headers = {b"etag": etag.encode(), b"last-modified": http_date(modified).encode(),
                   b"accept-ranges": b"bytes"}
        condition = check_conditions(call, etag, modified)
        if condition == 304:
            await self.send(call, 304, headers=headers)
            return
        span = parse_range(call.header("range"), record.size)
        if span is not None and not if_range_holds(call.header("if-range"), etag, modified):
            span = None  # the client holds another version than this one: all of it (as S3 and RFC 9110 do)
        part = None
        if "partNumber" in call.params:  # one part of a multipart object (a whole other object is part 1)
            span, count, part = await self.multipart.part_span(call, record)
            if count is not None:
                headers[b"x-amz-mp-parts-count"] = b"%d" % count
        if span is None and record.size == 0 and call.header("range"):
            span = False  # no byte of an empty object can be asked for
        if span is False:
            raise S3Error("InvalidRange", ActualObjectSize=str(record.size), RangeRequested=call.header("range") or "")
        if (call.header("x-amz-checksum-mode") or "").upper() == "ENABLED":
            # the checksums of what is sent, for the client to check what it reads against: of the
            # whole object, or of the part asked for; a range has none
            sums = ObjectMeta.of(part).checksums if part is not None else {} if span else meta.checksums
            for algorithm, digest in sums.items():
                headers[b"x-amz-checksum-" + algorithm.encode()] = digest.encode()
            if sums:
                headers[b"x-amz-checksum-type"] = (meta.checksum_type or FULL_OBJECT).encode()
        start, end = span if isinstance(span, tuple) else (0, record.size - 1)
        length = end - start + 1
        if not await self.ready(call):
            return
        for header, text in headers.items():
            request.setHeader(header, text)
        sent: dict[str, Optional[str]] = {"content-type": meta.content_type, **meta.headers}
        for name in ("content-type",) + KEPT_HEADERS:  # a presigned URL's response-* overrides
            sent[name] = call.params.get("response-" + name, sent.get(name))
        for name, value in sent.items():
            if value is not None:
                request.setHeader(name.encode(), value.encode("latin-1", "replace"))
        for key, value in meta.user.items():
            request.setHeader(b"x-amz-meta-" + key.encode("latin-1", "replace"), mail_safe(value))
        if span:
            request.setResponseCode(206)
            request.setHeader(b"content-range", b"bytes %d-%d/%d" % (start, end, record.size))
        request.setHeader(b"content-length", b"%d" % length)
        if request.method == b"HEAD" or length == 0:
            request.finish()
            return
        error = await send_body(self.depot, request, record, start, length, f"S3 GET of {record.name}")
        if error is not None:  # (no byte was sent) an error document, with none of the object's headers
            log.warn("S3 GET of {name} failed: {why}", name=record.name, why=error)
            told = s3_error(error)
            request.setResponseCode(told.status)
            for name, _ in list(request.responseHeaders.getAllRawHeaders()):
                if name.lower() not in ANSWER_HEADERS:
                    request.responseHeaders.removeHeader(name)
            body = xmlwire.error_document(told, call.request_id)
            request.setHeader(b"content-type", b"application/xml")
            request.setHeader(b"content-length", b"%d" % len(body))
            request.write(body)
            request.finish()

    async def lookup(self, bucket: str, key: str) -> FileRecord:
        name = file_name(bucket, key)
        try:
            return await self.depot.lookup(name)
        except NotFound:
            await self.existing_bucket(bucket)
            raise S3Error("NoSuchKey", Key=key) from None

    async def put_object(self, call: Call) -> None:
        name = file_name(call.bucket, call.key)
        meta = ObjectMeta.given(call.headers)
        replicas = replicas_of(meta.user)
        size = self.body_size(call)
        await self.existing_bucket(call.bucket)
        expect = await self.write_condition(call, name)
        checks = self.body_checks(call)
        upload = await self.depot.begin_put(name, size, replicas)
        upload.expect, upload.bucket = expect, call.bucket
        try:
            record = await self.receive(call, upload, checks, meta)
        except NotFound:  # the bucket was deleted meanwhile: nothing is kept
            self.depot.abort_put(upload)
            raise S3Error("NoSuchBucket", BucketName=call.bucket) from None
        except BaseException:
            self.depot.abort_put(upload)
            raise
        headers = {name.encode(): value.encode() for name, value in checks.checksums_given().items()}
        headers[b"etag"] = xmlwire.quoted(ObjectMeta.of(record).etag).encode()
        await self.send(call, 200, headers=headers)

    async def write_condition(self, call: Call, name: str) -> Optional[Expect]:
        """The write's If-Match and If-None-Match (see conditions.write_condition),
        checked now, before any byte is taken, and to be checked again by the commit."""
        expect = write_condition(call)
        if expect is not None:
            try:
                current: Optional[FileRecord] = await self.depot.lookup(name)
            except NotFound:
                current = None
            expect(current)
        return expect

    def body_checks(self, call: Call) -> BodyChecks:
        return BodyChecks(call)

    def body_size(self, call: Call) -> int:
        """The object's size: the decoded length of an aws-chunked body, else Content-Length."""
        if call.verified.payload in sigv4.STREAMING_MODES:
            size = call.verified.decoded_length
        else:
            text = call.header("content-length")
            if text is not None and not digits(text.strip()):
                raise S3Error("InvalidArgument", "Content-Length must be a whole number of bytes",
                              ArgumentName="Content-Length")
            size = int(text) if text is not None else None
        if size is None:
            raise S3Error("MissingContentLength")
        if self.max_size is not None and size > self.max_size:
            raise S3Error("EntityTooLarge", f"Objects may be {self.max_size} bytes at most")
        return size

    async def receive(self, call: Call, upload: Upload, checks: BodyChecks, meta: ObjectMeta) -> FileRecord:
        """The body into ``upload`` through ``checks``; the version once committed."""
        request = call.request
        if twisted_internals.request_gone(request) or request.channel is None:
            raise S3Error("IncompleteBody")  # the client went away while the upload started
        upload.attach(request.channel.transport)  # paused while a server is slow

        def take(body: bytes) -> None:
            data = checks.feed(body)
            if upload.received + len(data) > upload.size:
                raise S3Error("InvalidRequest", "The body is longer than its stated length")
            if data:
                upload.write(data)

        request.body.take(take)
        if not await request.body.done:
            raise S3Error("IncompleteBody")  # the client went away
        if request.body.error is not None:
            raise request.body.error
        if upload.received != upload.size:
            raise S3Error("IncompleteBody")
        upload.meta = attrs.evolve(meta, etag=checks.finish(), checksums=checks.checksums_verified()).to_text()
        return await self.depot.finish_put(upload)

    async def delete_object(self, call: Call) -> None:
        name = file_name(call.bucket, call.key)
        await self.existing_bucket(call.bucket)
        try:
            await self.depot.delete(name, delete_condition(call.header("if-match")))
        except NotFound:
            pass  # S3 answers the same for a key that was not there
        await self.send(call, 204)

    async def delete_objects(self, call: Call) -> None:
        body = await call.request.body.read(xmlread.DELETE_BODY_LIMIT)  # 1000 keys of 1024 bytes, escaped
        objects, quiet = xmlread.parse_delete(BodyChecks(call).check_whole(body))
        await self.existing_bucket(call.bucket)
        deleted, failures = [], []
        for entry in objects:
            if entry.version_id not in (None, "null"):  # only the current version is kept: S3 calls it null
                missing = S3Error("NoSuchVersion")
                failures.append(xmlwire.DeleteFailure(entry.key, missing.code, missing.message, entry.version_id))
                continue
            try:
                await self.depot.delete(file_name(call.bucket, entry.key), delete_condition(entry.etag))
            except NotFound:
                pass
            except S3Error as e:
                failures.append(xmlwire.DeleteFailure(entry.key, e.code, e.message))
                continue
            except DepositoError as e:
                error = s3_error(e)
                failures.append(xmlwire.DeleteFailure(entry.key, error.code, error.message))
                continue
            deleted.append(xmlwire.Deleted(entry.key, entry.version_id))
        await self.send(call, 200, xmlwire.delete_result(deleted, failures, quiet))

def s3_site(depot: IDepot, keys: S3Keys, clock: IReactorTime, max_size: Optional[int] = None,
            domain: Optional[str] = None) -> Site:
    """The S3 API as a twisted.web Site. ``depot``: a MeteredDepot counting via s3."""
    site = _S3Site(Resource(), timeout=IDLE_TIMEOUT)
    site.requestFactory = S3Request
    site.gateway = Gateway(depot, keys, clock, max_size, domain)
    site.cap = ConnectionCap(MAX_CONNECTIONS, clock)
    return site


class _S3Site(Site):
    """No access log (the proxy's log is for what happens to the cluster);
    ``100 Continue`` sent when a request wants its body (see S3Request).
    Past MAX_CONNECTIONS open at once, a client gets 503 SlowDown, which S3
    clients retry."""

    noisy = False
    busy = http_busy("application/xml", xmlwire.error_document(
        S3Error("SlowDown", f"Too many connections ({MAX_CONNECTIONS}); please try again later."), "0"))
    timed_out = http_whole("400 Bad Request", "application/xml", xmlwire.error_document(
        S3Error("RequestTimeout", f"No byte of the body came for {IDLE_TIMEOUT:.0f} s."), "0"))
    cap: ConnectionCap
    gateway: Gateway
    protocol = twisted_internals.http_site_protocol

    def log(self, request: Any) -> None:
        pass


# -- helpers


def _params(raw_query: str) -> dict[str, str]:
    """The parameters of a query string, percent-decoded as UTF-8."""
    try:
        return dict(parse_qsl(raw_query, keep_blank_values=True, errors="strict"))
    except UnicodeDecodeError:
        raise S3Error("InvalidArgument", "The query string is not UTF-8 once percent-decoded") from None


def _split(raw_path: str) -> tuple[str, str]:
    """(bucket, key) of a path-style request path, percent-decoded as UTF-8."""
    path = raw_path[1:]
    bucket, _, key = path.partition("/")
    try:
        return unquote(bucket, errors="strict"), unquote(key, errors="strict")
    except UnicodeDecodeError:
        raise S3Error("InvalidArgument", "The path is not UTF-8") from None
