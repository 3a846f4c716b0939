"""The proxy's HTTP side (README, "Status page and metrics"), off unless ``--http`` is given.

- ``/``: the status page, rendered on the server, refreshing itself;
- ``/metrics``: the Prometheus series of :class:`deposito.events.Metrics`;
- ``/api/status``, ``/api/servers``, ``/api/files?prefix=P&after=A&limit=L``: the
  same facts as JSON (files a page at a time);
- ``/files/<name>``: the newest version of a file, streamed from its copies
  with failover like GET, with Content-Length, ETag (the sha256) and Range.

Nothing here holds a file in memory: downloads pass through the storage
servers' connections, paused by the HTTP client's.
"""

from __future__ import annotations

import io
import json
import re
import time
from typing import Any, Callable, Coroutine
from urllib.parse import quote as urlquote

from prometheus_client import generate_latest
from twisted.internet import defer
from twisted.internet.interfaces import IConsumer, IReactorTime
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

import deposito
from deposito import twisted_internals
from deposito.catalog import FileRecord
from deposito.errors import BadArgs, DepositoError, NoSpace, NotFound, Unavailable
from deposito.events import EventLog, Metrics
from deposito.interfaces import IDepot
from deposito.listening import MAX_CONNECTIONS, ConnectionCap, http_busy, peer
from deposito.protocols.text import WRONG_TOKEN_DELAY
from deposito.protocols.words import check_name, parse_count
from deposito.statuspage import render_page

log = Logger()

EVENTS_SHOWN = 30
METRICS_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
FILES_PAGE = 1000  # files per /api/files page unless ?limit= says
# the most a page holds, whatever ?limit= says: a page is built whole, on the reactor's thread, and held
# until its client reads it (10000 names of 1 KiB made pages of 50 MB, each building for 0.3 s)
MAX_FILES_PAGE = 1000


# -- the facts, gathered once per request


async def gather(depot: IDepot, events: EventLog) -> dict[str, Any]:
    """STATUS's counts, and what only a page or a scrape needs beside them."""
    status: dict[str, Any] = dict(await depot.status(copies=True))
    status["repairs_done"] = events.counts["repaired"] + events.counts["drop"]
    status["repairs_per_minute"] = round(events.rate.per_minute(time.time()), 1)  # (events' times are the wall clock's)
    return status


def server_json(m: Any) -> dict[str, Any]:
    return {"id": m.id, "address": f"{m.host}:{m.port}", "state": m.state, "zone": m.zone,
            "used": m.used, "capacity": m.capacity, "blobs": m.blobs}


def file_json(depot: IDepot, r: Any) -> dict[str, Any]:
    healthy = sorted(m.id for m in depot.healthy(r))
    return {"name": r.name, "size": r.size, "version": r.version, "sha256": r.sha256,
            "wanted": r.replicas, "have": len(healthy), "servers": healthy,
            "download": "/files/" + urlquote(r.name, safe="")}


# -- resources


def _async(request: Any, work: Callable[[], Coroutine[Any, Any, None]]) -> Any:
    """Run ``work`` for a request; the catalog out of reach (or being
    rebuilt) becomes a 503 saying so, an unexpected error a 500."""
    def failed(failure: Any) -> None:
        if failure.check(Unavailable, NoSpace):
            if not request.startedWriting:
                _send(request, 503, b"text/plain; charset=utf-8", f"{failure.value}\n".encode("utf-8"))
            return
        log.failure("HTTP {uri}", failure, uri=request.uri.decode("latin-1"))
        if not request.startedWriting:
            _send(request, 500, b"text/plain; charset=utf-8", b"the proxy hit an error; see its log\n")

    defer.ensureDeferred(work()).addErrback(failed)
    return NOT_DONE_YET


def _send(request: Any, code: int, content_type: bytes, body: bytes) -> None:
    if twisted_internals.request_gone(request) or request.finished:
        return
    request.setResponseCode(code)
    request.setHeader(b"content-type", content_type)
    request.setHeader(b"content-length", b"%d" % len(body))
    request.setHeader(b"cache-control", b"no-store")
    request.write(body)
    request.finish()


def _send_json(request: Any, value: Any, code: int = 200, compact: bool = False) -> None:
    """``value`` as the JSON answer: indented for a person reading it,
    ``compact`` for a long page (json's C encoder does not indent)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":")) if compact else \
        json.dumps(value, ensure_ascii=False, indent=1)
    body = text.encode("utf-8") + b"\n"
    _send(request, code, b"application/json; charset=utf-8", body)


class _Page(Resource):
    isLeaf = True

    def __init__(self, depot: IDepot, events: EventLog, metrics: Metrics, clock: IReactorTime,
                 tokens: Any = None) -> None:
        super().__init__()
        self.depot, self.events, self.metrics, self.clock = depot, events, metrics, clock
        self.tokens = tokens

    def recent(self, request: Any, n: int | None = None) -> list[Any]:
        """The newest events first; with --tokens, those that name a file
        only for a request that holds a token (file names are theirs alone)."""
        events = self.events.recent(n)
        if self.tokens is None or _authorized(request, self.tokens):
            return events
        return [e for e in events if "name" not in e.fields]

    def render_GET(self, request: Any) -> Any:
        return _async(request, lambda: self.respond(request))

    async def respond(self, request: Any) -> None:
        raise NotImplementedError


class StatusPage(_Page):
    async def respond(self, request: Any) -> None:
        status = await gather(self.depot, self.events)
        page = render_page(status, self.depot.servers(), self.recent(request, EVENTS_SHOWN), time.time())
        _send(request, 200, b"text/html; charset=utf-8", page)


class MetricsPage(_Page):
    async def respond(self, request: Any) -> None:
        status = await gather(self.depot, self.events)
        self.metrics.refresh(status, self.depot.servers())
        _send(request, 200, METRICS_TYPE, generate_latest(self.metrics.registry))


class StatusAPI(_Page):
    async def respond(self, request: Any) -> None:
        status = await gather(self.depot, self.events)
        status["version"] = deposito.__version__
        status["events"] = [ev.as_json() for ev in self.recent(request)]
        _send_json(request, status)


class ServersAPI(_Page):
    async def respond(self, request: Any) -> None:
        _send_json(request, {"servers": [server_json(m) for m in self.depot.servers()]})


class FilesAPI(_Page):
    """``/api/files?prefix=P&after=A&limit=L``: a page of LIST as JSON. Its
    ``next`` is the ``after`` of the next page, null after the last one."""

    async def respond(self, request: Any) -> None:
        try:
            prefix, after = _text_arg(request, b"prefix"), _text_arg(request, b"after")
            limit = _text_arg(request, b"limit")
            count = min(parse_count(limit, "limit", 1), MAX_FILES_PAGE) if limit else FILES_PAGE
            if self.depot.closed_for_rebuild:  # as LIST is
                raise Unavailable("rebuilding the catalog from the servers; try again shortly")
            listing = await self.depot.listing(prefix, after, count + 1)  # one more: is there a next page?
        except BadArgs as e:
            _send_json(request, {"error": "badargs", "message": e.message}, 400)
            return
        records = await listing.collect()
        more = len(records) > count
        records = records[:count]
        _send_json(request, {"prefix": prefix, "after": after, "limit": count,
                             "files": [file_json(self.depot, r) for r in records],
                             "next": records[-1].name if more else None}, compact=True)


def _text_arg(request: Any, key: bytes) -> str:
    try:
        return request.args.get(key, [b""])[0].decode("utf-8")
    except UnicodeDecodeError:
        raise BadArgs(f"{key.decode()} is not UTF-8") from None


# -- downloads

_RANGE = re.compile(r"^bytes=([0-9]*)-([0-9]*)$")
MAX_POSITION_DIGITS = 19  # 2**63 has 19: a longer number is past the end of any file


def parse_range(header: str | None, size: int) -> tuple[int, int] | None | bool:
    """A Range header against a file of ``size`` bytes: ``(start, end)``
    inclusive, None to send the whole file (no header, or one we may ignore:
    several ranges, another unit), False when it cannot be satisfied."""
    if not header or size == 0:
        return None
    m = _RANGE.match(header.strip().replace(" ", ""))
    if not m:
        return None
    first, last = m.groups()
    if not first and not last:
        return None
    if not first:  # the last N bytes
        n = _position(last)
        return (max(0, size - n), size - 1) if n else False
    start = _position(first)
    end = min(_position(last), size - 1) if last else size - 1
    if start >= size:
        return False
    if end < start:
        return None
    return start, end


def _position(digits: str) -> int:
    """A byte position in a Range header, never handed to int() whole when
    it is longer than any size (int() refuses thousands of digits); leading
    zeros count for nothing."""
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= MAX_POSITION_DIGITS else 1 << 64


@implementer(IConsumer)
class ResponseConsumer:
    """The HTTP request as a consumer of a file's bytes (where the
    connection's transport cannot take them itself: see :func:`send_body`);
    once the client has left, producers handed to it are stopped at once,
    and the read sees it ``disconnected`` (no other copy is tried for it)."""

    def __init__(self, request: Any) -> None:
        self.request = request
        # notifyFinish() on a request whose connection is already lost never fires
        self.gone = twisted_internals.request_gone(request)
        self._producing = False
        request.notifyFinish().addErrback(self._left)

    def _left(self, _: Any) -> None:
        self.gone = True

    @property
    def disconnected(self) -> bool:
        return self.gone

    def write(self, data: bytes) -> None:
        self.request.write(data)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if self.gone:
            producer.stopProducing()
            return
        self.request.registerProducer(producer, streaming)
        self._producing = True

    def unregisterProducer(self) -> None:
        if self._producing:
            self._producing = False
            if not self.gone:  # else the request has let go of its channel
                self.request.unregisterProducer()


async def send_body(depot: IDepot, request: Any, record: FileRecord, start: int, length: int,
                    what: str) -> DepositoError | None:
    """Sends bytes ``[start, start + length)`` of ``record`` as the body of
    the response to ``request`` (its headers set, Content-Length among
    them) and finishes it. On plain TCP the body is written to the
    connection's own transport, lent by the request's channel for the read
    (twisted_internals.take_http_socket), so that a copy's bytes are relayed
    or handed off into the client's socket as a text GET's are
    (deposito.transfer); otherwise (TLS) they go through the request.

    Returns the error when the read failed before its first byte: nothing
    was sent, and the caller answers it. A read that breaks after that
    aborts the connection, since a short body would be taken for the whole
    file (``what`` names the request in the log); a client that left is
    left alone."""
    if twisted_internals.request_gone(request):  # the client left while the read was being set up
        return None
    socket = twisted_internals.take_http_socket(request)
    consumer = socket if socket is not None else ResponseConsumer(request)
    error: DepositoError | None = None
    try:
        await depot.read(record, consumer, start, length, started=lambda: request.write(b""))
    except DepositoError as e:
        error = e
    finally:
        if socket is not None:
            twisted_internals.give_back_http_socket(request, socket)
    if twisted_internals.request_gone(request):
        return None
    if error is None:
        request.finish()
    elif not request.startedWriting:
        return error
    else:  # the byte count cannot be kept: the client must see a cut
        log.warn("{what} broke mid-stream: {why}", what=what, why=str(error))
        request.channel.transport.abortConnection()
    return None


def _header(request: Any, name: bytes) -> str | None:
    """A request header as text, whatever bytes it holds (a header is
    ASCII; other bytes are read as Latin-1, and match nothing expected)."""
    value = request.getHeader(name)
    return value.decode("latin-1") if value is not None else None


def _etag_matches(header: bytes | None, etag: str, weak: bool = True) -> bool:
    """Whether ``etag`` is among the header's tags (``*`` matches any); with
    ``weak`` (If-None-Match), its weak form too, where If-Match compares strongly."""
    if not header:
        return False
    tags = [t.strip() for t in header.decode("latin-1").split(",")]
    return "*" in tags or etag in tags or (weak and f"W/{etag}" in tags)


class Downloads(Resource):
    """``/files/<name>``: the name percent-encoded; an encoded or a plain ``/``
    in it are the same character."""

    isLeaf = True

    def __init__(self, depot: IDepot) -> None:
        super().__init__()
        self.depot = depot  # metered: downloads count as GETs via http

    def render_GET(self, request: Any) -> Any:
        return _async(request, lambda: self.serve(request, body=True))

    def render_HEAD(self, request: Any) -> Any:
        return _async(request, lambda: self.serve(request, body=False))

    async def serve(self, request: Any, body: bool) -> None:
        try:
            name = check_name(b"/".join(request.postpath).decode("utf-8"))
        except (UnicodeDecodeError, BadArgs):
            _send(request, 400, b"text/plain; charset=utf-8", b"not a file name\n")
            return
        try:
            if self.depot.closed_for_rebuild:
                raise Unavailable("rebuilding the catalog from the servers; try again shortly")
            record = await self.depot.lookup(name)
        except NotFound:
            _send(request, 404, b"text/plain; charset=utf-8", f"no file named {name}\n".encode("utf-8"))
            return
        etag = f'"{record.sha256}"'
        request.setHeader(b"etag", etag.encode("ascii"))
        request.setHeader(b"accept-ranges", b"bytes")
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"x-deposito-version", b"%d" % record.version)
        request.setHeader(b"x-content-type-options", b"nosniff")
        if_match = request.getHeader(b"if-match")
        if if_match is not None and not _etag_matches(if_match, etag, weak=False):
            _send(request, 412, b"text/plain; charset=utf-8", b"the file is not the version If-Match names\n")
            return
        if _etag_matches(request.getHeader(b"if-none-match"), etag):
            request.setResponseCode(304)
            request.finish()
            return
        span = parse_range(_header(request, b"range"), record.size)
        if_range = _header(request, b"if-range")
        if if_range is not None and if_range.strip() != etag:
            span = None  # a different version than the client holds: all of it
        if span is False:
            request.setHeader(b"content-range", b"bytes */%d" % record.size)
            _send(request, 416, b"text/plain; charset=utf-8", b"range not satisfiable\n")
            return
        request.setHeader(b"content-type", b"application/octet-stream")  # never run on this origin
        filename = urlquote(name.rsplit("/", 1)[-1], safe="")
        request.setHeader(b"content-disposition", f"attachment; filename*=UTF-8''{filename}".encode("ascii"))
        start, end = span if isinstance(span, tuple) else (0, record.size - 1)
        length = end - start + 1
        if span:
            request.setResponseCode(206)
            request.setHeader(b"content-range", b"bytes %d-%d/%d" % (start, end, record.size))
        request.setHeader(b"content-length", b"%d" % length)
        if not body or length == 0:
            request.finish()
            return
        error = await send_body(self.depot, request, record, start, length, f"HTTP download of {name}")
        if error is not None:  # (no byte was sent) none of the file's headers go with the error
            for header in (b"etag", b"accept-ranges", b"x-deposito-version", b"content-range", b"content-disposition"):
                request.responseHeaders.removeHeader(header)
            _send(request, 404 if isinstance(error, NotFound) else 503, b"text/plain; charset=utf-8",
                  f"{error}\n".encode("utf-8"))


def status_site(depot: IDepot, events: EventLog, metrics: Metrics, clock: IReactorTime,
                tokens: Any = None) -> Site:
    """The whole HTTP side, as a twisted.web Site. ``depot``: a MeteredDepot
    counting via http, so that downloads are counted like GETs."""
    root = _Folder()
    root.putChild(b"", StatusPage(depot, events, metrics, clock, tokens))
    root.putChild(b"metrics", MetricsPage(depot, events, metrics, clock))
    api = _Folder()
    api.putChild(b"status", StatusAPI(depot, events, metrics, clock, tokens))
    api.putChild(b"servers", ServersAPI(depot, events, metrics, clock))
    api.putChild(b"files", _Guarded(FilesAPI(depot, events, metrics, clock), tokens))
    root.putChild(b"api", api)
    root.putChild(b"files", _Guarded(Downloads(depot), tokens))
    site = _QuietSite(root, timeout=IDLE_TIMEOUT)
    site.clock = clock
    site.cap = ConnectionCap(MAX_CONNECTIONS, clock)
    return site


class _NotFound(Resource):
    """404 for any method, HEAD included, without a body twisted.web would
    log about (its NoResource answers HEAD with a body: a log line each)."""

    isLeaf = True

    def render(self, request: Any) -> bytes:
        request.setResponseCode(404)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        body = b"no such page\n"
        request.setHeader(b"content-length", b"%d" % len(body))
        return b"" if request.method == b"HEAD" else body


class _Folder(Resource):
    """A folder of pages (``/``, ``/api``): an unknown child, or the folder
    itself (``/api``, also with HEAD, where twisted.web's Resource raises
    AttributeError: no render_GET), is a quiet 404."""

    def getChild(self, path: bytes, request: Any) -> Resource:
        return _NotFound()

    def render(self, request: Any) -> bytes:
        return _NotFound().render(request)


class _Guarded(Resource):
    """With --tokens, file names and bytes need ``Authorization: Bearer <token>``."""

    isLeaf = True

    def __init__(self, inner: Resource, tokens: Any) -> None:
        super().__init__()
        self.inner, self.tokens = inner, tokens

    def render(self, request: Any) -> Any:
        if self.tokens is not None and not _authorized(request, self.tokens):
            if request.getHeader(b"authorization") is None:
                self._refuse(request)
                return NOT_DONE_YET
            # a wrong token: said in the log and on the status page, and answered
            # WRONG_TOKEN_DELAY later, as the text port's AUTH is: guessing is slow
            log.warn("an HTTP client from {peer} gave a wrong token", peer=peer(request.getClientAddress()),
                     event="denied")
            request.site.clock.callLater(WRONG_TOKEN_DELAY, self._refuse, request)
            return NOT_DONE_YET
        return self.inner.render(request)

    @staticmethod
    def _refuse(request: Any) -> None:
        request.setHeader(b"www-authenticate", b'Bearer realm="deposito"')
        _send(request, 401, b"text/plain; charset=utf-8", b"a token is needed: Authorization: Bearer <token>\n")


def _authorized(request: Any, tokens: Any) -> bool:
    """Whether ``request`` holds one of ``tokens`` (``Authorization: Bearer <token>``)."""
    scheme, _, given = (_header(request, b"authorization") or "").strip().partition(" ")
    given = given.strip() if scheme.lower() == "bearer" else ""  # a scheme's case does not matter
    return bool(given) and bool(tokens.check(given))


BODY_LIMIT = 64 << 10  # the HTTP side is read-only: a request body bigger than this is refused unread
IDLE_TIMEOUT = 60  # seconds a connection may send nothing between requests


class _ReadOnlyRequest(Request):
    """A request to the read-only HTTP side. twisted.web would store a body
    of any size (in a temporary file past 100 KB) before a page sees the
    request; a body over BODY_LIMIT, or of unknown length, is refused with
    413 instead, before it is read (a client waiting for ``100 Continue``
    is never asked for it), and the connection closed after the answer."""

    refused = False

    def gotLength(self, length: int | None) -> None:
        if length is not None and length <= BODY_LIMIT:
            super().gotLength(length)
            return
        self.refused = True
        self.content = io.BytesIO()  # stays empty
        twisted_internals.answer_before_body(self)
        getattr(self.channel, "transport").pauseProducing()  # nothing more of the connection is read
        # answered on the next turn, once twisted.web is done with these headers
        getattr(self.channel, "site").clock.callLater(0, self._refuse)

    def continue_later(self, send: Callable[[], None]) -> None:
        """``Expect: 100-continue`` (see twisted_internals.ContinueWhenAsked): the body is asked for unless refused."""
        if not self.refused:
            send()

    def handleContentChunk(self, data: bytes) -> None:
        if not self.refused:
            super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if not self.refused:
            super().requestReceived(command, path, version)

    def render(self, resrc: Any) -> None:
        # twisted.web answers a POST 405 itself, with what the page allows, and any
        # other method it does not know 501 "Huh?"
        if self.method not in (b"GET", b"HEAD", b"POST"):
            self.setHeader(b"allow", b"GET, HEAD")
            _send(self, 405, b"text/plain; charset=utf-8", b"this port is read-only: GET and HEAD only\n")
            return
        super().render(resrc)

    def _refuse(self) -> None:
        if twisted_internals.connection_closing(self):
            return  # twisted.web answered a body it could not read (400) and closes
        _send(self, 413, b"text/plain; charset=utf-8", b"this port is read-only: a request body is refused\n")


class _QuietSite(Site):
    """No access log: the page refreshes itself and Prometheus scrapes often;
    the proxy's log is for what happens to the cluster. Requests are
    :class:`_ReadOnlyRequest`, their answers sent at once (PromptChannel).
    A request, body included, must come within a minute (HeadDeadline),
    and past MAX_CONNECTIONS open at once a client gets 503."""

    noisy = False
    body_in_deadline = True
    busy = http_busy("text/plain; charset=utf-8",
                     f"too many connections ({MAX_CONNECTIONS}); try again later\n".encode("ascii"))
    cap: ConnectionCap
    clock: IReactorTime
    requestFactory = _ReadOnlyRequest
    protocol = twisted_internals.http_site_protocol

    def log(self, request: Any) -> None:
        pass
