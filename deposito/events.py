"""What happens in the proxy, told to a person and to Prometheus.

The proxy's code reports what happens through twisted.logger, as usual; a log
event that matters to whoever runs the cluster carries an ``event`` key
(``join``, ``down``, ``dead``, ``corrupt``, ``inventory``, ``repaired``,
``drop``, ``repair_failed``, ``refused``, ``rebuilt``, ``denied``). From that
one stream:

- :class:`EventLog` keeps the last few such events for the status page;
- :class:`Metrics` counts them, and the requests that :class:`MeteredDepot`
  passes to the Depot, in a Prometheus registry of its own;
- :func:`json_log` gives twistd's ``--logger`` the whole log as JSON lines.
"""

from __future__ import annotations

import os
import sys
import time
import weakref
from collections import Counter as Tally, deque
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterable, cast

import attrs
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IReactorTime
from twisted.logger import FileLogObserver, ILogObserver, eventAsJSON, formatEvent
from zope.interface import implementer

from deposito.errors import DepositoError
from deposito.interfaces import IDepot
from deposito.splice.sockets import ReaderLost
from deposito.transfer import CountingConsumer

EVENT_KINDS = ("join", "down", "dead", "corrupt", "missing", "inventory", "repaired", "drop", "repair_failed",
               "refused", "rebuilt", "denied")
REPAIR_KINDS = {"repaired": "copy", "drop": "drop"}
RATE_WINDOW = 60

if TYPE_CHECKING:
    from deposito.catalog import FileRecord
    from deposito.catalog.listing import Listing
    from deposito.catalog.records import Expect
    from deposito.roster import Member
    from deposito.transfer import Upload


@attrs.frozen
class Event:
    """One thing that happened: when (seconds since the epoch, the last time
    if it happened ``repeats`` times in a row), what kind, in words."""

    time: float
    kind: str
    message: str
    fields: dict = attrs.field(factory=dict, eq=False)
    repeats: int = 1

    def as_json(self) -> dict[str, Any]:
        return {**self.fields, "time": self.time, "kind": self.kind, "message": self.message,
                "repeats": self.repeats}


def cluster_event(event: dict) -> Event | None:
    """The :class:`Event` a log event tells, or None if it is not one of ours."""
    kind = event.get("event")
    if not isinstance(kind, str) or not str(event.get("log_namespace", "")).startswith("deposito"):
        return None
    fields = {k: v for k, v in event.items()
              if not k.startswith("log_") and k != "event" and isinstance(v, (str, int, float, bool))}
    return Event(event.get("log_time", time.time()), kind, formatEvent(event), fields)


class RepairRate:
    """Repairs per minute over the last minute, in per-second buckets (bounded)."""

    def __init__(self, window: int = RATE_WINDOW) -> None:
        self.window = window
        self._buckets: deque[list[int]] = deque(maxlen=window + 1)

    def add(self, when: float) -> None:
        second = int(when)
        if self._buckets and self._buckets[-1][0] == second:
            self._buckets[-1][1] += 1
        else:
            self._buckets.append([second, 1])

    def per_minute(self, now: float) -> float:
        recent = sum(n for second, n in self._buckets if now - second <= self.window)
        return recent * 60.0 / self.window


@implementer(ILogObserver)
class EventLog:
    """The last ``size`` cluster events (a log observer). The same event
    again right after itself is counted, not kept twice, so a retry loop
    cannot push everything else out."""

    def __init__(self, size: int = 100) -> None:
        self._events: deque[Event] = deque(maxlen=size)
        self.counts: Tally[str] = Tally()  # every event since the start, by kind
        self.rate = RepairRate()
        self.listeners: list[Any] = []

    def __call__(self, event: dict) -> None:
        e = cluster_event(event)
        if e is None:
            return
        last = self._events[-1] if self._events else None
        if last is not None and (last.kind, last.message) == (e.kind, e.message):
            self._events[-1] = attrs.evolve(e, repeats=last.repeats + 1)
        else:
            self._events.append(e)
        self.counts[e.kind] += 1
        if e.kind in REPAIR_KINDS:
            self.rate.add(e.time)
        for listener in self.listeners:
            listener(e)

    def recent(self, n: int | None = None) -> list[Event]:
        """The newest first."""
        out = list(reversed(self._events))
        return out if n is None else out[:n]


LATENCY_BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300)
PHASE_BUCKETS = (.0001, .00025, .0005, *LATENCY_BUCKETS)  # a phase of a small PUT may take a tenth of a millisecond
PUT_PHASES = ("place", "body", "copies", "commit")
SERVER_STATES = ("up", "down", "dead")


class Metrics:
    """The proxy's Prometheus series (``deposito_*``), in a registry of its own.

    Counters move as things happen; the gauges are set from the cluster's
    state by :meth:`refresh` just before each scrape.
    """

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("deposito_requests", "Client requests by command, way in and outcome"
                                " (a GET counts once its file is found)",
                                ["command", "via", "outcome"], registry=r)
        self.latency = Histogram("deposito_request_duration_seconds",
                                 "Time from request to answer (for PUT and GET, to the last byte)",
                                 ["command", "via"], buckets=LATENCY_BUCKETS, registry=r)
        self._requests: dict[tuple[str, str, str], tuple[Any, Any]] = {}  # the labelled pair, by labels
        self.put_phases = Histogram("deposito_put_phase_seconds",
                                    "Where the time of a PUT that stored its file (not a part of a multipart"
                                    " upload) went, one after the other:"
                                    " place (servers picked and reached), body (the client's bytes, while the"
                                    " catalog allocates the version), copies (from the last byte until every"
                                    " copy is durable and verified, after the version if it came later),"
                                    " commit (the catalog's commit)",
                                    ["phase", "via"], buckets=PHASE_BUCKETS, registry=r)
        self.received = Counter("deposito_received_bytes", "File bytes received from clients (PUT)",
                                ["via"], registry=r)
        self.sent = Counter("deposito_sent_bytes", "File bytes sent to clients (GET, HTTP downloads)",
                            ["via"], registry=r)
        self.events = Counter("deposito_events", "Cluster events by kind (see the status page)",
                              ["kind"], registry=r)
        self.repairs_done = Counter("deposito_repairs_done", "Copies made or dropped by the reconciler",
                                    ["action"], registry=r)
        self.bad_copies = Counter("deposito_bad_copies", "Copies found corrupt (by a scrub or a read)"
                                  " or missing (by a server's inventory)", ["reason"], registry=r)
        for kind in EVENT_KINDS:
            self.events.labels(kind)
        for action in REPAIR_KINDS.values():
            self.repairs_done.labels(action)
        for reason in ("corrupt", "missing"):
            self.bad_copies.labels(reason)
        for via in ("text",):
            self.received.labels(via)
        for via in ("text", "http"):
            self.sent.labels(via)

        def gauge(name: str, doc: str, labels: Iterable[str] = ()) -> Gauge:
            return Gauge(name, doc, list(labels), registry=r)

        self.files = gauge("deposito_files", "Files (names with a committed version)")
        self.bytes = gauge("deposito_stored_bytes", "Bytes of the newest versions, counted once per file")
        self.under = gauge("deposito_files_under_replicated", "Files with fewer healthy copies than wanted")
        self.over = gauge("deposito_files_over_replicated", "Files with more healthy copies than wanted")
        self.copies_wanted = gauge("deposito_copies_wanted", "Copies wanted, summed over all files")
        self.copies_healthy = gauge("deposito_copies_healthy", "Healthy copies (on up servers), summed over all files")
        self.repairs_queued = gauge("deposito_repairs_queued", "Copy or delete tasks waiting")
        self.repairs_running = gauge("deposito_repairs_running", "Copy or delete tasks in progress")
        self.servers = gauge("deposito_servers", "Storage servers by state", ["state"])
        self.server_state = gauge("deposito_server_state", "1 for the state the server is in, else 0",
                                  ["server", "zone", "state"])
        self.server_used = gauge("deposito_server_used_bytes", "Bytes a storage server holds", ["server"])
        self.server_capacity = gauge("deposito_server_capacity_bytes", "The most bytes a server may hold",
                                     ["server"])
        self.server_blobs = gauge("deposito_server_blobs", "Blobs a storage server holds", ["server"])

    def event(self, e: Event) -> None:
        """An :class:`EventLog` listener."""
        self.events.labels(e.kind).inc()
        if e.kind in REPAIR_KINDS:
            self.repairs_done.labels(REPAIR_KINDS[e.kind]).inc()
        elif e.kind == "corrupt":
            self.bad_copies.labels("corrupt").inc()
        elif e.kind == "missing":
            self.bad_copies.labels("missing").inc()
        elif e.kind == "inventory" and isinstance(e.fields.get("missing"), int):
            self.bad_copies.labels("missing").inc(e.fields["missing"])

    def request(self, command: str, via: str, seconds: float, outcome: str = "ok") -> None:
        key = (command, via, outcome)  # few of them: commands, ways in, ERR codes
        counted = self._requests.get(key)
        if counted is None:
            counted = self._requests[key] = (self.requests.labels(*key), self.latency.labels(command, via))
        counted[0].inc()
        counted[1].observe(seconds)

    def put_done(self, via: str, times: tuple[float, float, float, float, float]) -> None:
        """A stored PUT: the clock's reading at its request, its streams
        open, its last byte in, its copies made and its answer."""
        for phase, start, end in zip(PUT_PHASES, times, times[1:]):
            self.put_phases.labels(phase, via).observe(end - start)

    def refresh(self, status: dict[str, Any], servers: list[Any]) -> None:
        """Set the gauges from :func:`deposito.web.gather`'s facts."""
        self.files.set(status["files"])
        self.bytes.set(status["bytes"])
        self.under.set(status["under"])
        self.over.set(status["over"])
        self.copies_wanted.set(status["copies_wanted"])
        self.copies_healthy.set(status["copies_healthy"])
        self.repairs_queued.set(status["repairs_queued"])
        self.repairs_running.set(status["repairs_running"])
        for gauge in (self.server_state, self.server_used, self.server_capacity, self.server_blobs):
            gauge.clear()
        for state in SERVER_STATES:
            self.servers.labels(state).set(sum(m.state == state for m in servers))
        for m in servers:
            for state in SERVER_STATES:
                self.server_state.labels(m.id, m.zone, state).set(int(m.state == state))
            self.server_used.labels(m.id).set(m.used)
            self.server_capacity.labels(m.id).set(m.capacity)
            self.server_blobs.labels(m.id).set(m.blobs)


def outcome(error: BaseException | str | None) -> str:
    """A request's outcome as a label: ``ok``, an ERR code, or what went wrong."""
    if error is None:
        return "ok"
    if isinstance(error, str):
        return error
    return error.code if isinstance(error, DepositoError) else "error"


@implementer(IDepot)
class MeteredDepot:
    """A depot as a gateway sees it, with PUT, GET and REPLICAS counted and
    timed under the gateway's name (``via``: text, http, s3). Everything else
    goes straight through."""

    def __init__(self, depot: IDepot, metrics: Metrics, clock: IReactorTime, via: str = "text") -> None:
        self._depot = depot
        self._metrics = metrics
        self._clock = clock
        self._via = via
        self._puts: dict[int, tuple[float, float]] = {}  # an upload's PUT: when asked, when its streams opened
        self._finished: weakref.WeakSet[Upload] = weakref.WeakSet()  # counted by finish_put (see abort_put)
        self._received, self._sent = metrics.received.labels(via), metrics.sent.labels(via)

    @property
    def closed_for_rebuild(self) -> bool:
        return self._depot.closed_for_rebuild

    @property
    def uploads(self) -> Any:
        """The multipart uploads (an IMultipart), straight through: their
        parts are counted as PUTs when finished through this depot."""
        return self._depot.uploads

    def _done(self, command: str, began: float, error: BaseException | str | None = None) -> None:
        self._metrics.request(command, self._via, self._clock.seconds() - began, outcome(error))

    async def begin_put(self, name: str, size: int, replicas: int | None) -> Upload:
        began = self._clock.seconds()
        try:
            upload = await self._depot.begin_put(name, size, replicas)
        except BaseException as e:
            self._done("PUT", began, e)
            raise
        self._puts[id(upload)] = (began, self._clock.seconds())
        return upload

    async def finish_put(self, upload: Upload) -> FileRecord:
        received = self._clock.seconds()
        begun = self._puts.pop(id(upload), None)  # None: begun elsewhere (a part of a multipart upload)
        began = received if begun is None else begun[0]
        self._received.inc(upload.received)
        self._finished.add(upload)
        try:
            record = await self._depot.finish_put(upload)
        except BaseException as e:
            self._done("PUT", began, e)
            raise
        answered = self._clock.seconds()
        self._metrics.request("PUT", self._via, answered - began)
        if begun is not None and upload.copied_at is not None:  # timed from its start: its phases too
            self._metrics.put_done(self._via, (began, begun[1], received, upload.copied_at, answered))
        return record

    def abort_put(self, upload: Upload) -> None:
        """Counted as aborted, unless :meth:`finish_put` counted it already
        (an S3 copy aborts what it could not finish)."""
        if upload not in self._finished:
            now = self._clock.seconds()
            began, _ = self._puts.pop(id(upload), (now, now))
            self._received.inc(upload.received)
            self._done("PUT", began, "aborted")
        self._depot.abort_put(upload)

    async def read(self, record: FileRecord, consumer: IConsumer, offset: int = 0, length: int | None = None,
                   started: Callable[[], None] = lambda: None) -> None:
        """A GET (or an HTTP download, whole or a range): its bytes counted,
        and "aborted" when the reader went away before the end."""
        began = self._clock.seconds()
        counted = CountingConsumer(consumer)
        error: BaseException | None = None
        try:
            # a CountingConsumer is an IConsumer (and stream_blob counts spliced bytes through it)
            await self._depot.read(record, cast(IConsumer, counted), offset, length, started=started)
        except BaseException as e:
            error = e
            raise
        finally:
            self._sent.inc(counted.count)
            left = counted.disconnected or isinstance(error, ReaderLost)  # the reader went away
            self._done("GET", began, "aborted" if left else error)

    def read_small(self, record: FileRecord) -> Deferred | None:
        """Counted when it succeeds; on failure the read that follows counts."""
        began = self._clock.seconds()
        d = self._depot.read_small(record)
        if d is None:
            return None

        def counted(parts: Any) -> Any:
            self._sent.inc(record.size)
            self._done("GET", began)
            return parts

        return d.addCallback(counted)

    async def replicas(self, name: str, count: int, wait: bool) -> tuple[FileRecord, int]:
        began = self._clock.seconds()
        try:
            result = await self._depot.replicas(name, count, wait)
        except BaseException as e:
            self._done("REPLICAS", began, e)
            raise
        self._done("REPLICAS", began)
        return result

    # -- straight through (the depot's own awaitables, not wrapped)

    def lookup(self, name: str) -> Awaitable[FileRecord]:
        return self._depot.lookup(name)

    def recent(self, name: str) -> FileRecord | None:
        return self._depot.recent(name)

    def guess(self, name: str) -> FileRecord | None:
        return self._depot.guess(name)

    def healthy(self, record: FileRecord) -> list[Member]:
        return self._depot.healthy(record)

    def copy_missing(self, member: Member, blob: str) -> None:
        self._depot.copy_missing(member, blob)

    def listing(self, prefix: str, after: str, limit: int | None) -> Awaitable[Listing]:
        return self._depot.listing(prefix, after, limit)

    def delete(self, name: str, expect: Expect | None = None) -> Awaitable[FileRecord]:
        return self._depot.delete(name, expect)

    def servers(self) -> list[Member]:
        return self._depot.servers()

    def status(self, copies: bool = False) -> Awaitable[dict[str, int]]:
        return self._depot.status(copies)

    def create_bucket(self, name: str) -> Awaitable[bool]:
        return self._depot.create_bucket(name)

    def delete_bucket(self, name: str) -> Awaitable[None]:
        return self._depot.delete_bucket(name)

    def bucket(self, name: str) -> Awaitable[float | None]:
        return self._depot.bucket(name)

    def buckets(self, prefix: str, after: str, limit: int) -> Awaitable[list[tuple[str, float]]]:
        return self._depot.buckets(prefix, after, limit)


def json_log() -> FileLogObserver:
    """For ``twistd --logger deposito.events.json_log``: every log event as one
    line of JSON, appended to the file named by ``$DEPOSITO_JSON_LOG``, or
    written to standard output when it is not set."""
    path = os.environ.get("DEPOSITO_JSON_LOG")
    out = open(path, "a", encoding="utf-8", buffering=1) if path else sys.stdout
    return FileLogObserver(out, lambda event: eventAsJSON(event) + "\n")
