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

import html
import json
import re
import time
from typing import Any, Awaitable, Callable
from urllib.parse import quote as urlquote

from prometheus_client import generate_latest
from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

import deposito
from deposito import twisted_internals
from deposito.errors import BadArgs, DepositoError, NotFound, Unavailable
from deposito.events import EventLog, Event, Metrics, outcome
from deposito.interfaces import IDepot
from deposito.protocols.words import check_name, parse_count
from deposito.sizes import human_bytes
from deposito.transfer import stream_blob

log = Logger()

REFRESH_SECONDS = 5
EVENTS_SHOWN = 30
METRICS_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
FILES_PAGE = 1000  # files per /api/files page unless ?limit= says
MAX_FILES_PAGE = 10000  # the most a page holds, whatever ?limit= says


# -- the facts, gathered once per request


async def gather(depot: IDepot, events: EventLog, clock: IReactorTime) -> dict[str, Any]:
    """STATUS's counts, and what only a page or a scrape needs beside them."""
    status = dict(await depot.status(copies=True))
    status["repairs_done"] = events.counts["repaired"] + events.counts["drop"]
    status["repairs_per_minute"] = round(events.rate.per_minute(clock.seconds()), 1)
    return status


def server_json(m: Any) -> dict[str, Any]:
    return {"id": m.id, "address": f"{m.host}:{m.port}", "state": m.state, "zone": m.zone,
            "used": m.used, "capacity": m.capacity, "blobs": m.blobs}


def file_json(depot: IDepot, r: Any) -> dict[str, Any]:
    healthy = sorted(m.id for m in depot.healthy(r))
    return {"name": r.name, "size": r.size, "version": r.version, "sha256": r.sha256,
            "wanted": r.replicas, "have": len(healthy), "servers": healthy,
            "download": "/files/" + urlquote(r.name, safe="")}


# -- the status page


KIND_WORDS = {"join": "joined", "down": "down", "dead": "dead", "corrupt": "corrupt copy",
              "missing": "missing copy", "inventory": "inventory", "repaired": "copy made",
              "drop": "copy dropped", "repair_failed": "repair failed", "refused": "refused",
              "rebuilt": "catalog rebuilt", "denied": "wrong token"}
KIND_TONE = {"join": "good", "repaired": "info", "drop": "info", "inventory": "warn", "down": "warn",
             "dead": "bad", "corrupt": "bad", "missing": "bad", "repair_failed": "bad", "refused": "bad",
             "rebuilt": "info", "denied": "warn"}
STATE_TONE = {"up": "good", "down": "warn", "dead": "bad"}

STYLE = """
*{box-sizing:border-box}
body{font:15px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2330;background:#f4f5f7}
header{background:#1d2330;color:#fff;padding:.7em 1em;display:flex;flex-wrap:wrap;gap:.3em 1em;align-items:baseline}
header h1{font-size:1.2em;margin:0}
header .when{color:#aab1c0;font-size:.85em}
main{max-width:980px;margin:0 auto;padding:.8em}
.banner{padding:.6em .9em;border-radius:6px;margin-bottom:.8em;font-weight:600}
.banner.good{background:#dff3e4;color:#185c2c}.banner.warn{background:#fff1d6;color:#7a4b00}
.banner.bad{background:#fde2e1;color:#8a1c17}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(140px,1fr));gap:.6em;margin-bottom:1em}
section .cards{margin-bottom:.2em}section .card{box-shadow:none;background:#f4f5f7}
.card{background:#fff;border-radius:6px;padding:.55em .8em;box-shadow:0 1px 2px #0001}
.card .n{font-size:1.45em;font-weight:650}
.card .l{color:#5b6478;font-size:.85em}
.card.warn .n{color:#a05a00}.card.bad .n{color:#b3261e}
section{background:#fff;border-radius:6px;padding:.6em .8em;margin-bottom:1em;box-shadow:0 1px 2px #0001}
h2{font-size:1.05em;margin:.2em 0 .5em}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:.35em .5em;border-bottom:1px solid #eceef2;vertical-align:middle}
th{font-size:.8em;color:#5b6478;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.addr{display:block;color:#5b6478;font-size:.8em}
.state,.kind{display:inline-block;padding:.05em .5em;border-radius:1em;font-size:.85em;font-weight:600}
.good{background:#dff3e4;color:#185c2c}.warn{background:#fff1d6;color:#7a4b00}
.bad{background:#fde2e1;color:#8a1c17}.info{background:#e2ecfd;color:#1a4a9c}
.bar{background:#eceef2;border-radius:3px;height:.6em;min-width:90px;overflow:hidden}
.bar span{display:block;height:100%;background:#3b7be0}
.bar span.full{background:#d0442f}
.usage{font-size:.8em;color:#5b6478;white-space:nowrap}
ul.events{list-style:none;margin:0;padding:0}
ul.events li{padding:.35em 0;border-bottom:1px solid #eceef2;display:flex;gap:.5em;flex-wrap:wrap}
ul.events time{color:#5b6478;font-variant-numeric:tabular-nums}
ul.events .msg{flex:1 1 16em;overflow-wrap:anywhere}
.repeats{color:#5b6478;font-weight:600;font-size:.85em}
@media (max-width:560px){th,td{padding:.3em .3em}.usage{white-space:normal}.col-blobs{display:none}
main{padding:.5em}}
footer{color:#5b6478;font-size:.85em;padding:0 1em 1.5em;text-align:center}
footer a{color:#1a4a9c}
"""


def _banner(status: dict[str, Any]) -> tuple[str, str]:
    troubles = []
    if status["servers_up"] == 0:
        return "bad", "No storage server is up: files cannot be stored or read."
    not_up = status["servers_down"]
    if not_up:
        troubles.append(f"{not_up} server{'s' * (not_up != 1)} not up")
    if status["under"]:
        troubles.append(f"{status['under']} file{'s' * (status['under'] != 1)} below the wanted copies")
    if troubles:
        return "warn", "; ".join(troubles).capitalize() + "."
    if status["over"]:
        return "good", "Every file has its wanted copies; extra copies are being dropped."
    return "good", "Every file has its wanted copies."


def _clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(t))


def _times(repeats: int) -> str:
    return f' <span class="repeats" title="{repeats} times in a row">\u00d7{repeats}</span>' if repeats > 1 else ""


def render_page(status: dict[str, Any], servers: list[Any], events: list[Event], now: float) -> bytes:
    """The status page: what a person needs to see at a glance, in plain HTML."""
    e = html.escape
    tone, words = _banner(status)

    def card(label: str, value: Any, warn: bool = False, bad: bool = False) -> str:
        cls = "card bad" if bad else "card warn" if warn else "card"
        return f'<div class="{cls}"><div class="n">{e(str(value))}</div><div class="l">{e(label)}</div></div>'

    total = len(servers)
    cards = "".join([
        card("files", status["files"]),
        card("stored", human_bytes(status["bytes"])),
        card("servers up", f"{status['servers_up']} / {total}", warn=status["servers_up"] < total,
             bad=status["servers_up"] == 0),
        card("under-replicated", status["under"], warn=status["under"] > 0),
        card("over-replicated", status["over"]),
        card("healthy / wanted copies", f"{status['copies_healthy']} / {status['copies_wanted']}",
             warn=status["copies_healthy"] < status["copies_wanted"]),
    ])
    repairs = "".join([
        card("queued", status["repairs_queued"]),
        card("running", status["repairs_running"]),
        card("per minute (last minute)", status["repairs_per_minute"]),
        card("done since the proxy started", status["repairs_done"]),
    ])

    rows = []
    for m in servers:
        pct = 100.0 * m.used / m.capacity if m.capacity else 0.0
        full = " full" if pct >= 90 else ""
        rows.append(
            f'<tr><td><b>{e(m.id)}</b><span class="addr">{e(m.host)}:{m.port}</span></td>'
            f'<td><span class="state {STATE_TONE.get(m.state, "warn")}">{e(m.state)}</span></td>'
            f"<td>{e(m.zone)}</td>"
            f'<td><div class="bar" title="{pct:.1f}%"><span class="{full.strip()}" style="width:{min(pct, 100):.1f}%">'
            f'</span></div><span class="usage">{human_bytes(m.used)} of {human_bytes(m.capacity)}'
            f" ({pct:.0f}%)</span></td>"
            f'<td class="num col-blobs">{m.blobs}</td></tr>')
    table = ('<div class="scroll"><table id="servers"><thead><tr><th>server</th><th>state</th><th>zone</th>'
             '<th>used / capacity</th><th class="col-blobs">blobs</th></tr></thead><tbody>' + "".join(rows)
             + "</tbody></table></div>"
             if rows else "<p>No storage server has joined yet.</p>")

    items = []
    for ev in events:
        kind = KIND_TONE.get(ev.kind, "info")
        items.append(
            f'<li><time datetime="{time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ev.time))}">{_clock(ev.time)}'
            f'</time><span class="kind {kind}">{e(KIND_WORDS.get(ev.kind, ev.kind))}</span>'
            f'<span class="msg">{e(ev.message)}{_times(ev.repeats)}</span></li>')
    feed = f'<ul class="events" id="events">{"".join(items)}</ul>' if items else "<p>Nothing has happened yet.</p>"

    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<meta http-equiv="refresh" content="{REFRESH_SECONDS}">
<title>Deposito: {status['servers_up']}/{total} up, {status['files']} files</title>
<style>{STYLE}</style></head>
<body><header><h1>Deposito</h1><span class="when">proxy {e(deposito.__version__)} \u00b7 updated {_clock(now)} UTC \u00b7
refreshes every {REFRESH_SECONDS}\u00a0s</span></header>
<main>
<div class="banner {tone}" id="summary">{e(words)}</div>
<div class="cards" id="counts">{cards}</div>
<section><h2>Storage servers</h2>{table}</section>
<section><h2>Repairs (copies made or dropped)</h2><div class="cards" id="repairs">{repairs}</div></section>
<section><h2>Recent events</h2>{feed}</section>
</main>
<footer><a href="/metrics">metrics</a> \u00b7 <a href="/api/status">status</a> \u00b7
<a href="/api/servers">servers</a> \u00b7 <a href="/api/files">files</a> (JSON)</footer>
</body></html>
"""
    return page.encode("utf-8")


# -- resources


def _async(request: Any, work: Callable[[], Awaitable[None]]) -> Any:
    """Run ``work`` for a request; an unexpected error becomes a 500."""
    def failed(failure: Any) -> None:
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


def _send_json(request: Any, value: Any, code: int = 200) -> None:
    body = json.dumps(value, ensure_ascii=False, indent=1).encode("utf-8") + b"\n"
    _send(request, code, b"application/json; charset=utf-8", body)


class _Page(Resource):
    isLeaf = True

    def __init__(self, depot: IDepot, events: EventLog, metrics: Metrics, clock: IReactorTime) -> None:
        super().__init__()
        self.depot, self.events, self.metrics, self.clock = depot, events, metrics, clock

    def render_GET(self, request: Any) -> Any:
        return _async(request, lambda: self.respond(request))

    async def respond(self, request: Any) -> None:
        raise NotImplementedError


class StatusPage(_Page):
    async def respond(self, request: Any) -> None:
        status = await gather(self.depot, self.events, self.clock)
        page = render_page(status, self.depot.servers(), self.events.recent(EVENTS_SHOWN), self.clock.seconds())
        _send(request, 200, b"text/html; charset=utf-8", page)


class MetricsPage(_Page):
    async def respond(self, request: Any) -> None:
        status = await gather(self.depot, self.events, self.clock)
        self.metrics.refresh(status, self.depot.servers())
        _send(request, 200, METRICS_TYPE, generate_latest(self.metrics.registry))


class StatusAPI(_Page):
    async def respond(self, request: Any) -> None:
        status = await gather(self.depot, self.events, self.clock)
        status["version"] = deposito.__version__
        status["events"] = [ev.as_json() for ev in self.events.recent()]
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
        except BadArgs as e:
            _send_json(request, {"error": "badargs", "message": e.message}, 400)
            return
        listing = await self.depot.listing(prefix, after, count + 1)  # one more: is there a next page?
        records = await listing.collect()
        more = len(records) > count
        records = records[:count]
        _send_json(request, {"prefix": prefix, "after": after, "limit": count,
                             "files": [file_json(self.depot, r) for r in records],
                             "next": records[-1].name if more else None})


def _text_arg(request: Any, key: bytes) -> str:
    try:
        return request.args.get(key, [b""])[0].decode("utf-8")
    except UnicodeDecodeError:
        raise BadArgs(f"{key.decode()} is not UTF-8") from None


# -- downloads

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


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
        n = int(last)
        return (max(0, size - n), size - 1) if n else False
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size:
        return False
    if end < start:
        return None
    return start, end


async def read_range(depot: IDepot, record: Any, start: int, length: int, consumer: Any,
                     gone: Callable[[], bool] = lambda: False) -> None:
    """Like :meth:`Depot.read`, for ``length`` bytes from ``start`` on."""
    sources = depot.healthy(record)
    if not sources:
        raise Unavailable(f"no copy of {record.name} is on a live server")

    async def connect(member: Any) -> Any:
        if gone():
            raise ConnectionDone("the HTTP client left")
        return await depot.connect(member)

    await stream_blob(connect, sources, record.blob, start, length, consumer, missing=depot.copy_missing)


class _Response:
    """The HTTP request as a consumer of a file's bytes, counting them; once
    the client has left, producers handed to it are stopped at once."""

    def __init__(self, request: Any) -> None:
        self.request = request
        self.count = 0
        self.gone = False
        self._producing = False
        request.notifyFinish().addErrback(self._left)

    def _left(self, _: Any) -> None:
        self.gone = True

    def write(self, data: bytes) -> None:
        self.count += len(data)
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


def _etag_matches(header: bytes | None, etag: str) -> bool:
    if not header:
        return False
    tags = [t.strip() for t in header.decode("latin-1").split(",")]
    return "*" in tags or etag in tags or f"W/{etag}" in tags


class Downloads(Resource):
    """``/files/<name>``: the name percent-encoded; an encoded or a plain ``/``
    in it are the same character."""

    isLeaf = True

    def __init__(self, depot: IDepot, metrics: Metrics, clock: IReactorTime) -> None:
        super().__init__()
        self.depot, self.metrics, self.clock = depot, metrics, clock

    def render_GET(self, request: Any) -> Any:
        return _async(request, lambda: self.serve(request, body=True))

    def render_HEAD(self, request: Any) -> Any:
        return _async(request, lambda: self.serve(request, body=False))

    async def serve(self, request: Any, body: bool) -> None:
        began = self.clock.seconds()
        try:
            name = check_name(b"/".join(request.postpath).decode("utf-8"))
        except (UnicodeDecodeError, BadArgs):
            _send(request, 400, b"text/plain; charset=utf-8", b"not a file name\n")
            return
        try:
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
        if _etag_matches(request.getHeader(b"if-none-match"), etag):
            request.setResponseCode(304)
            request.finish()
            return
        span = parse_range(request.getHeader("range"), record.size)
        if_range = request.getHeader("if-range")
        if if_range is not None and if_range.strip() != etag:
            span = None  # a different version than the client holds: all of it
        if span is False:
            request.setHeader(b"content-range", b"bytes */%d" % record.size)
            _send(request, 416, b"text/plain; charset=utf-8", b"range not satisfiable\n")
            return
        request.setHeader(b"content-type", b"application/octet-stream")  # never run on this origin
        filename = urlquote(name.rsplit("/", 1)[-1], safe="")
        request.setHeader(b"content-disposition", f"attachment; filename*=UTF-8''{filename}".encode("ascii"))
        start, end = span if span else (0, record.size - 1)
        length = end - start + 1
        if span:
            request.setResponseCode(206)
            request.setHeader(b"content-range", b"bytes %d-%d/%d" % (start, end, record.size))
        request.setHeader(b"content-length", b"%d" % length)
        if not body or length == 0:
            request.finish()
            return
        response = _Response(request)
        error: BaseException | None = None
        try:
            if span:
                await read_range(self.depot, record, start, length, response, lambda: response.gone)
            else:
                await self.depot.read(record, response, lambda: None)
        except DepositoError as e:
            error = e
        finally:
            self.metrics.sent.labels("http").inc(response.count)
        self.metrics.request("GET", "http", self.clock.seconds() - began,
                             "aborted" if response.gone else outcome(error))
        if response.gone:
            return
        if error is not None:
            if not request.startedWriting:
                for header in (b"content-range", b"content-disposition"):
                    request.responseHeaders.removeHeader(header)
                _send(request, 503, b"text/plain; charset=utf-8", f"{error}\n".encode("utf-8"))
            else:  # the byte count cannot be kept: the client must see a cut
                log.warn("HTTP download of {name} broke mid-stream", name=name)
                request.channel.transport.abortConnection()
            return
        request.finish()


def status_site(depot: IDepot, events: EventLog, metrics: Metrics, clock: IReactorTime,
                tokens: Any = None) -> Site:
    """The whole HTTP side, as a twisted.web Site."""
    root = Resource()
    root.putChild(b"", StatusPage(depot, events, metrics, clock))
    root.putChild(b"metrics", MetricsPage(depot, events, metrics, clock))
    api = Resource()
    api.putChild(b"status", StatusAPI(depot, events, metrics, clock))
    api.putChild(b"servers", ServersAPI(depot, events, metrics, clock))
    api.putChild(b"files", _Guarded(FilesAPI(depot, events, metrics, clock), tokens))
    root.putChild(b"api", api)
    root.putChild(b"files", _Guarded(Downloads(depot, metrics, clock), tokens))
    site = _QuietSite(root)
    return site


class _Guarded(Resource):
    """With --tokens, file names and bytes need ``Authorization: Bearer <token>``."""

    isLeaf = True

    def __init__(self, inner: Resource, tokens: Any) -> None:
        super().__init__()
        self.inner, self.tokens = inner, tokens

    def render(self, request: Any) -> Any:
        if self.tokens is not None:
            given = (request.getHeader("authorization") or "").partition("Bearer ")[2].strip()
            if not given or not self.tokens.check(given):
                request.setResponseCode(401)
                request.setHeader(b"www-authenticate", b'Bearer realm="deposito"')
                request.setHeader(b"content-type", b"text/plain; charset=utf-8")
                return b"a token is needed: Authorization: Bearer <token>\n"
        return self.inner.render(request)


class _QuietSite(Site):
    """No access log: the page refreshes itself and Prometheus scrapes often;
    the proxy's log is for what happens to the cluster."""

    noisy = False

    def log(self, request: Any) -> None:
        pass
