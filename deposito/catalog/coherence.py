"""Records kept in memory by proxies sharing a catalog, answered as if
asked of the database: a change answered through one proxy shows at once
through every other (CONTRACT section 7).

The proxies talk through the database, on its notification channel
(PostgreSQL's LISTEN/NOTIFY: a message reaches every listening proxy, after
its transaction commits, in the order of the commits). The messages:

- ``c <proxy> <seq> <names>``: sent in every transaction that changes
  records (see :meth:`deposito.catalog.Catalog.announce`); ``names`` is a
  JSON list, or ``*`` for all. Another proxy forgets those records, then
  acks: ``k <proxy> <origin> <seq>``.
- ``i <proxy> <n>``: a ping, every PING seconds. Another proxy counts the
  pinger from then on, and answers ``o <proxy> <pinger> <n>``. The first
  ping after the pinger began to listen says ``fresh``: it forgot every
  record it kept, so every change the other committed so far is as good as
  acked (whatever it trusts later comes after them: see below).

A proxy answers a change to its client only once every proxy it counts has
acked it. One that does not ack within ACK_WAIT is counted no more (until
it pings again), and the change waits until LEASE + MARGIN seconds after
that: by then the silent proxy answers nothing from memory, for...

...a proxy answers from the records it keeps only while every other proxy
in the catalog (as its last beat read them, less than TRUST ago) answered a
ping of its own sent less than LEASE ago. A proxy that joins is in nobody's
view until their next beat, but makes no change until WAIT > TRUST seconds
after its row went in (see Catalog.change_delay); it counts the others by
then (they ping every PING seconds).

Times are durations on each proxy's own clock: only clocks' rates matter,
and MARGIN leaves room for them. A lost connection to the channel forgets
every record kept (messages may have been missed) and answers none until
pings go round again.
"""

from __future__ import annotations

import json
import math
import select
import socket
import threading
import time
from typing import Any, Callable, Iterable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from deposito.batching import IBatchReactor

# On a shared catalog, a proxy that finds no other proxy there when it beats
# answers lookups from the records it keeps for TRUST seconds from the start
# of that beat (deposito.catalog.thread.CatalogThread.seen_proxies); a proxy that
# joins (or comes back after it was retired) changes no record for WAIT
# seconds after its row is in, so none of its changes can be missed that
# way. Beats come every 2 seconds at most (deposito.depot.liveness); both
# times are taken on the safe side (the trust from before the beat is sent,
# the wait from after the row's commit returned), and WAIT leaves half a
# second more for two clocks' rates.
TRUST = 3.0
WAIT = TRUST + 0.5

CHANNEL = "deposito_records"
PING = 0.5  # seconds between a proxy's pings
LEASE = 2.0  # a ping's answers let records be answered from memory this long after it was sent
ACK_WAIT = 1.0  # a counted proxy silent this long about a change is counted no more
MARGIN = 0.5  # for two clocks' rates
RETRY = 1.0  # seconds between tries to listen again after the connection was lost
LONGEST = 7000  # bytes of names in one message, at most (the database takes 8000): more forgets all

log = Logger()


def change_messages(proxy: str, seq: int, names: list[str] | None) -> list[str]:
    """What a transaction that changes the records of ``names`` (None: any)
    says: one message, or (names too long for one) several, of which only
    the last is acked."""
    if names is None:
        return [f"c {proxy} {seq} *"]
    pieces: list[list[str]] = [[]]
    size = 0
    for name in sorted(set(names)):
        length = len(json.dumps(name)) + 2
        if size + length > LONGEST and pieces[-1]:
            pieces.append([])
            size = 0
        pieces[-1].append(name)
        size += length
    return [f"{'c' if i == len(pieces) - 1 else 'c+'} {proxy} {seq} {json.dumps(piece)}"
            for i, piece in enumerate(pieces)]


class _Waiter:
    """A change of this proxy (number ``seq``) waiting to be answered."""

    def __init__(self, seq: int, pending: set[str], let_go: dict[str, float], since: float) -> None:
        self.seq = seq
        self.pending = pending  # proxies whose ack it waits for...
        self.let_go = let_go  # ...or, for those let go, the time their trust ran out surely
        self.since = since
        self.done: Deferred[None] = Deferred()


def readable(fds: Iterable[Any], timeout: float) -> bool:
    """Whether any of ``fds`` (descriptors, or what has ``fileno()``) has
    something to read, or is closed, within ``timeout`` seconds. By poll(),
    not select(): a proxy with many clients has descriptors past 1024."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    return bool(poller.poll(math.ceil(timeout * 1000)))


class Coherence:
    """One proxy's part in keeping records among proxies (see the module's
    docstring): a thread listening on the channel (and sending pings and
    acks on the same connection), what this proxy's records may be trusted
    until (:attr:`trusted_until`), and the wait of each change (:meth:`after`).

    ``connect()`` opens a psycopg connection in autocommit mode; ``me()`` is
    this proxy's id (it may change: see Catalog.beat); ``announced()`` the
    number of its last change committed (see Catalog.announce); ``forget(names)``
    (names None: all) is called on the listening thread and must be safe there."""

    def __init__(self, reactor: IBatchReactor, connect: Callable[[], Any], me: Callable[[], str],
                 announced: Callable[[], int], forget: Callable[[list[str] | None], None]) -> None:
        self.reactor = reactor
        self.connect = connect
        self.me = me
        self.announced = announced
        self.forget = forget
        self.trusted_until = 0.0  # time.monotonic(): records kept may be answered till then
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        # reading: the other proxies as the last beat saw them (ids, when it began), and this one's pings
        self._view: tuple[frozenset[str], float] | None = None
        self._pings: dict[int, tuple[float, set[str]]] = {}  # n: (sent at, who answered, this proxy too)
        self._n = 0
        # writing: the proxies counted, what each acked of this one's changes, who was let go and till when
        self._counted: set[str] = set()
        self._acked: dict[str, int] = {}
        self._silent_until: dict[str, float] = {}
        self._waiters: list[_Waiter] = []
        self._gone: set[str] = set()  # proxies that said they stopped
        self._renamed: dict[str, str] = {}  # old id: new id, of proxies that said so
        self._stopped = False  # this proxy stopped: it answers nothing from memory again
        self._former: set[str] = set()  # this proxy's ids before it was renamed (see Catalog.beat)
        self._timer: IDelayedCall | None = None

    # -- on the reactor's thread

    def start(self) -> None:
        self._wake, self._waker = socket.socketpair()  # stop() wakes the listening thread's wait at once
        self._thread = threading.Thread(target=self._listen, name="deposito-coherence", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Answer nothing from memory again, and tell the others so (they wait for it no more)."""
        self._stopped = True
        self.trusted_until = 0.0
        self._stopping.set()
        if self._thread is not None:
            self._waker.send(b"x")
            self._thread.join(PING + 1)
            if not self._thread.is_alive():  # (else it may still wait on them)
                self._wake.close()
                self._waker.close()
            self._thread = None
        if self._timer is not None and self._timer.active():
            self._timer.cancel()

    def view(self, others: Iterable[str], began: float) -> None:
        """The other proxies in the catalog, as a beat that began at ``began`` (time.monotonic()) read them."""
        with self._lock:
            self._view = (frozenset(others), began)

    def trusted(self) -> bool:
        return not self._stopped and time.monotonic() < self.trusted_until

    def after(self, seq: int) -> Deferred[None]:
        """Fires once change ``seq`` of this proxy (and those before it) may
        be answered: every proxy counted acked it, or was let go (see the
        module's docstring)."""
        now = time.monotonic()
        with self._lock:
            pending = {p for p in self._counted if self._acked.get(p, 0) < seq}
            let_go = {p: until for p, until in self._silent_until.items() if until > now}
        if not pending and not let_go:
            return succeed(None)
        self._waiters.append(_Waiter(seq, pending | set(let_go), let_go, now))
        waiter = self._waiters[-1]
        self._check()
        return waiter.done

    def _check(self) -> None:
        """Answer the waiters that may be; let go of a proxy silent about one
        past ACK_WAIT. A waiter waits for a proxy let go only till its trust
        ran out, even if it is counted again meanwhile (it pinged): whatever
        it trusts then comes after this change (see the module's docstring)."""
        now = time.monotonic()
        soonest: float | None = None
        with self._lock:
            for waiter in self._waiters:
                for p in [p for p in waiter.pending if p in self._renamed]:
                    waiter.pending.discard(p)
                    if p not in waiter.let_go:
                        waiter.pending.add(self._renamed[p])
                for p in list(waiter.pending):
                    if p in self._gone or self._acked.get(p, 0) >= waiter.seq:
                        waiter.pending.discard(p)
                    elif p not in waiter.let_go and now >= waiter.since + ACK_WAIT:
                        if p in self._counted:
                            self._counted.discard(p)
                            self._silent_until[p] = now + LEASE + MARGIN
                            log.warn("proxy {p} did not acknowledge a change for {s}s: changes wait {w}s for it,"
                                     " then go on without it", p=p, s=ACK_WAIT, w=LEASE + MARGIN)
                        waiter.let_go[p] = self._silent_until.get(p, now)
                    if p in waiter.let_go and now >= waiter.let_go[p]:
                        waiter.pending.discard(p)
                    if p in waiter.pending:
                        at = waiter.let_go.get(p, waiter.since + ACK_WAIT)
                        soonest = at if soonest is None else min(soonest, at)
            done = [w for w in self._waiters if not w.pending]
            self._waiters = [w for w in self._waiters if w.pending]
            for p in [p for p, until in self._silent_until.items() if until <= now and p not in self._counted]:
                del self._silent_until[p]
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if soonest is not None:
            self._timer = self.reactor.callLater(max(0.0, soonest - now) + 0.01, self._check)
        for waiter in done:
            waiter.done.callback(None)

    # -- on the listening thread

    def _listen(self) -> None:
        said = False
        while not self._stopping.is_set():
            try:
                conn = self.connect()
            except Exception as e:
                if not said:
                    said = True
                    log.warn("cannot listen to the other proxies' changes ({why}): lookups ask the catalog",
                             why=str(e))
                self._stopping.wait(RETRY)
                continue
            try:
                conn.execute("SET synchronous_commit = off")  # pings and acks need no disk
                conn.execute(f"LISTEN {CHANNEL}")
                with self._lock:  # what was kept may have missed messages: from scratch
                    self._pings.clear()
                self.forget(None)
                if said:
                    said = False
                    log.info("listening to the other proxies' changes again")
                self._serve(conn)
            except Exception as e:
                self.trusted_until = 0.0
                if not self._stopping.is_set():
                    if not said:
                        said = True
                        log.warn("lost the connection listening to the other proxies' changes ({why})",
                                 why=str(e))
                    self._stopping.wait(RETRY)
            finally:
                try:
                    conn.close()
                except Exception:
                    pass

    def _serve(self, conn: Any) -> None:
        next_ping, fresh, me = 0.0, " fresh", self.me()
        while not self._stopping.is_set():
            out: list[str] = []
            if self.me() != me:  # renamed (see Catalog.beat)
                out.append(f"r {me} {self.me()}")
                self._former.add(me)
                me = self.me()
            now = time.monotonic()
            if now >= next_ping:
                next_ping = now + PING
                self._n += 1
                with self._lock:
                    self._pings[self._n] = (now, set())
                    for n in [n for n, (sent, _) in self._pings.items() if sent < now - LEASE]:
                        del self._pings[n]
                out.append(f"i {self.me()} {self._n}{fresh}")
                fresh = ""
            else:
                for note in conn.notifies(timeout=0):  # come since, or with the last statement's answer
                    try:
                        out += self._heard(note.payload)
                    except ValueError:  # not ours, or garbled: whatever it changed is forgotten
                        log.warn("a message on {channel} is not understood: {m!r}", channel=CHANNEL,
                                 m=note.payload[:200])
                        self.forget(None)
                if not out:  # a message, the next ping or stop(), whichever comes first: no wake-ups between
                    readable([conn.fileno(), self._wake], max(0.0, next_ping - now))
            if out:
                self._send(conn, out)
        self._send(conn, [f"b {self.me()}"])

    @staticmethod
    def _send(conn: Any, messages: list[str]) -> None:
        conn.execute(f"SELECT pg_notify('{CHANNEL}', m) FROM unnest(%s::text[]) AS m", (messages,))

    def _heard(self, payload: str) -> list[str]:
        """A message on the channel: what to answer."""
        me = self.me()
        kind, _, rest = payload.partition(" ")
        sender, _, rest = rest.partition(" ")
        if kind in ("c", "c+") and sender != me:
            seq, _, names = rest.partition(" ")
            self.forget(None if names == "*" else json.loads(names))
            return [f"k {me} {sender} {seq}"] if kind == "c" else []
        if kind == "b" and sender != me:  # it stopped, and answers nothing from memory again
            with self._lock:
                self._gone.add(sender)
                self._counted.discard(sender)
            self.reactor.callFromThread(self._check)
        elif kind == "r" and sender != me:  # it goes on under a new id (see Catalog.beat): its acks with it
            new = rest
            with self._lock:
                self._renamed[sender] = new
                if sender in self._counted:
                    self._counted.discard(sender)
                    self._counted.add(new)
                self._acked[new] = max(self._acked.get(new, 0), self._acked.pop(sender, 0))
            self.reactor.callFromThread(self._check)
        elif kind == "k":
            to, _, seq = rest.partition(" ")
            if to == me or to in self._former:
                with self._lock:
                    self._acked[sender] = max(self._acked.get(sender, 0), int(seq))
                self.reactor.callFromThread(self._check)
        elif kind == "i":
            n, _, fresh = rest.partition(" ")
            if sender == me:
                self._answered(int(n), me)
                return []
            with self._lock:
                self._counted.add(sender)
                if fresh:  # it forgot all it kept (see _listen): every change of ours so far is as good as acked
                    self._acked[sender] = max(self._acked.get(sender, 0), self.announced())
            if fresh:
                self.reactor.callFromThread(self._check)
            return [f"o {me} {sender} {n}"]
        elif kind == "o":
            to, _, n = rest.partition(" ")
            if to == me or to in self._former:
                self._answered(int(n), sender)
        return []

    def _answered(self, n: int, who: str) -> None:
        """Ping ``n`` was answered by ``who`` (this proxy: it came back):
        once every other proxy in view did, records kept may be answered."""
        with self._lock:
            ping = self._pings.get(n)
            if ping is None or self._view is None:
                return
            sent, answered = ping
            answered.add(who)
            others, began = self._view
            if not others | {self.me()} <= answered:
                return
            lapsed = time.monotonic() >= self.trusted_until
            self.trusted_until = max(self.trusted_until, min(sent + LEASE, began + TRUST))
        if lapsed and self.trusted():
            log.info("every other proxy acknowledges this one's pings: lookups are answered from the records kept",
                     event="trusted")
