"""The cluster protocol: storage servers join the proxy and keep in touch.

A server may join several proxies (one connection to each, deposito.storage):
each connection is the whole of this exchange on its own, and each proxy
knows of the others nothing at all.

    server: JOIN <id> zone=<zone> port=<port> [host=<host>] capacity=<n> used=<n> blobs=<n> [nonce=<ns>]
                 [local=@<name> key=<key>]  (its local port, deposito.protocols.handoff)
                 [serves=<catalog id>]      (the catalog it serves, once it serves one)
    proxy:  CHALLENGE nonce=<np> proof=<hmac>   (only with a cluster secret; the server
    server: PROOF <hmac>                         checks the proxy's proof, then gives its own)
    proxy:  OK welcome heartbeat=<seconds> listing=<ids|full> catalog=<id>   (or ERR <code> <message>, then close)
    server: HB used=<n> capacity=<n> blobs=<n>  (every <seconds>; no reply)
    server: LISTING                             (about to list its blobs)
    server: INVENTORY <n> more                  a chunk, then n lines (more chunks follow):
            <blob>                                                 (listing=ids)
            <blob> <version> <size> <sha256> <replicas> <name>     (listing=full)
    server: INVENTORY <n>                       the last chunk (n may be 0), then n lines
    server: BAD <blob> <why>                    (a copy failed its checks)

A server lists its blobs after joining and after each scrub, one listing at
a time. A listing is one or more chunks of at most MAX_CHUNK lines, in
strictly increasing blob id order within and across its chunks, so each
chunk stands for a range of ids: after the previous chunk's last id, up to
its own last one (the last chunk: to the end). Heartbeats and BAD lines may
come between chunks. The proxy takes a chunk in before it reads on, and the
server sends the next chunk only once its connection has taken the last, so
neither side ever holds more than a chunk of a listing, whatever the number
of blobs.

A listing names only the blob ids, unless the proxy asks for each blob's
metadata too (``listing=full``): it does while it rebuilds its catalog from
them. Ids alone are read from the directories, without opening a blob.

The welcome names the proxy's catalog (proxies sharing a catalog name the
same id). A server serves one catalog: it records the first that welcomes
it, and closes the connection to a proxy of another at once, without a
word (deposito.servedcatalog). So the proxy counts a server joined, and
places copies on it, only once it speaks after the welcome (it lists its
blobs at once). A proxy that has not read its catalog's id yet (its
database down) answers ``ERR unavailable``; servers try again.

A server that serves another catalog than the proxy's (its JOIN says
which) is asked for a full listing, and switches to the proxy's catalog,
only when the proxy takes it in: the proxy rebuilds a lost catalog, or it
rebuilt one from the lost catalog that server serves (deposito.depot.Depot.takes_in).

A server whose lines stop is closed after a few missed heartbeats; the proxy
marks it down. The proxy does not count the time it spends taking a chunk in
(not reading meanwhile) against the server.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Callable, Protocol as TypingProtocol

from twisted.internet import task
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from deposito.errors import BadArgs, Denied, DepositoError, NoSpace, Unavailable, from_reply
from deposito.listening import MAX_CONNECTIONS, ConnectionCap, peer
from deposito.protocols.lines import LineProtocol
from deposito.protocols.words import (MAX_COUNT, check_stored_name, fields, meta_word, parse_count, parse_meta_word,
                                      quote, split)
from deposito.secret import nonce, proof, verify

if TYPE_CHECKING:
    from deposito.roster import Roster

SERVER_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
CATALOG_ID = SERVER_ID
# a server (its id, and the other catalog it serves, if any) joins: is its listing taken in?
TakesIn = Callable[[str, "str | None"], "Deferred[bool]"]
SHA256 = re.compile(r"^[0-9a-f]{64}$")
LOCAL_NAME = re.compile(r"^@[A-Za-z0-9._:/-]{1,100}$")
LOCAL_KEY = re.compile(r"^[0-9a-f]{32}$")
HEARTBEAT = 1.0
MISSED_HEARTBEATS = 5
RETAKE = 2.0  # seconds between tries to take in a chunk the catalog could not take in (see MemberProtocol._take)
SAID_PER_HOST = 5  # refusals said for one host, until a server from it joins (see MemberProtocol._refused)
SAID_MAX = 100  # refusals remembered as said (see JoinProtocol._first_time, MemberProtocol._refused)
MAX_CHUNK = 10_000  # inventory lines in one chunk, at most (servers send about 1000)


def check_blob(value: str) -> str:
    from deposito.blobstore import check_blob_id

    return check_blob_id(value)


def check_label(value: str, what: str) -> str:
    if not SERVER_ID.match(value):
        raise BadArgs(f"{what} must be 1 to 64 of A-Z a-z 0-9 . _ : -")
    return value


HOST = re.compile(r"[A-Za-z0-9._:%-]{1,253}\Z")  # a host name, or an IPv4 or IPv6 address (with its zone)


def check_host(value: str) -> str:
    """A joining server's host as it says it (shown by SERVERS and the status page, and connected to)."""
    if not HOST.match(value):
        raise BadArgs("host must be a host name or an IP address")
    return value


class NodeReport(TypingProtocol):
    """What a storage server tells the proxy about itself."""

    id: str
    zone: str
    host: str | None
    port: int
    local: tuple[str, str] | None  # its local port's name and key, if it has one

    def usage(self) -> tuple[int, int, int]:
        """(capacity, used, blobs)"""

    def serving(self) -> str | None:
        """The id of the catalog this server serves (None: none yet)."""

    def welcome(self, connection: JoinProtocol) -> str | None:
        """The proxy welcomed us (``connection.catalog`` names its catalog):
        None to serve it, else why this server will not."""

    def joined(self, connection: JoinProtocol) -> None:
        """The proxy accepted us, and we serve it: time to send the inventory."""

    def left(self, connection: JoinProtocol) -> None:
        """The connection to the proxy is gone."""


@implementer(IPushProducer)
class SendBuffer:
    """Says when a transport has sent what it was given: registered as its
    producer, it is paused while the transport's buffer is full."""

    def __init__(self) -> None:
        self.full = False
        self._waiting: list[Deferred[None]] = []

    def pauseProducing(self) -> None:
        self.full = True

    def resumeProducing(self) -> None:
        self.full = False
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)

    def stopProducing(self) -> None:
        self.resumeProducing()  # the connection is gone: nobody waits on it

    def drained(self) -> Deferred[None]:
        """Fires once the buffer is no longer full (at once if it is not)."""
        if not self.full:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiting.append(d)
        return d


class JoinProtocol(LineProtocol):
    """The storage server's end: join, then heartbeat until the line drops."""

    log = Logger()

    def __init__(self, node: NodeReport, clock: IReactorTime, secret: bytes | None = None) -> None:
        self.node = node
        self.clock = clock
        self.secret = secret
        self._nonce = nonce() if secret else ""
        self._proxy_proved = False
        self._beat: task.LoopingCall | None = None
        self.joined = False
        self.lost = False
        self.full_listing = True  # the proxy asks for each blob's metadata in listings (its welcome says)
        self.catalog: str | None = None  # the proxy's catalog, as its welcome names it (None: it names none)
        self.sending = SendBuffer()
        self._told = False  # a refusal, either way, came on this connection

    def connectionMade(self) -> None:
        self.transport.registerProducer(self.sending, True)
        capacity, used, blobs = self.node.usage()
        host = f" host={self.node.host}" if self.node.host else ""
        challenge = f" nonce={self._nonce}" if self.secret else ""
        local = f" local={self.node.local[0]} key={self.node.local[1]}" if self.node.local else ""
        serving = self.node.serving()
        serves = f" serves={serving}" if serving else ""
        self.reply(f"JOIN {quote(self.node.id)} zone={quote(self.node.zone)} port={self.node.port}{host}"
                   f" capacity={capacity} used={used} blobs={blobs}{challenge}{local}{serves}")

    def _refuse_proxy(self, why: str) -> None:
        self._told = True
        if self._first_time(why):
            self.log.error("not joining the proxy at {proxy}: {why}", proxy=self.proxy_address(), why=why)
        self.transport.loseConnection()

    def _said(self) -> set[str] | None:
        """What was said of this proxy since this server last joined it (kept
        by the factory, from one try to the next)."""
        return getattr(getattr(self, "factory", None), "said", None)

    def _first_time(self, why: str) -> bool:
        """Whether ``why`` (a refusal, either way) is said for the first time
        since this server last joined this proxy: a refused server tries
        again every second or two while the cause lasts, and says it once."""
        said = self._said()
        if said is None:
            return True
        if why in said:
            return False
        if len(said) >= SAID_MAX:
            said.clear()
        said.add(why)
        return True

    def textReceived(self, text: str) -> None:
        if self.joined:
            return
        if text.startswith("CHALLENGE"):
            f = fields(text)
            if self.secret is None:
                self._refuse_proxy("it asks for a cluster secret and this server has none (--secret)")
            elif not verify(self.secret, f.get("proof", ""), "proxy", self._nonce, f.get("nonce", ""), self.node.id):
                self._refuse_proxy("it could not prove it holds the cluster secret")
            else:
                self._proxy_proved = True
                self.reply("PROOF " + proof(self.secret, "server", f.get("nonce", ""), self._nonce, self.node.id))
            return
        if text.startswith("OK") and not text.startswith("OK welcome"):
            self._refuse_proxy(f"it is not a proxy's cluster port: it answered {text[:60]!r}"
                               " (a client port? point --proxy at the proxy's --cluster-port)")
            return
        if text.startswith("OK") and self.secret is not None and not self._proxy_proved:
            self._refuse_proxy("it does not hold the cluster secret (it asked for no proof)")
            return
        if not text.startswith("OK"):
            err = from_reply(text)
            self._told = True
            if self._first_time(str(err)):  # a proxy not ready yet (unavailable) is a passing thing
                (self.log.warn if isinstance(err, Unavailable) else self.log.error)(
                    "the proxy at {proxy} refused this server: {error} (said once while it lasts)",
                    proxy=self.proxy_address(), error=str(err))
            self.transport.loseConnection()
            return
        welcome = fields(text)
        self.catalog = welcome.get("catalog")
        if self.catalog is not None and not CATALOG_ID.match(self.catalog):
            self._refuse_proxy("its welcome names no valid catalog id")
            return
        self.full_listing = welcome.get("listing", "full") != "ids"
        refusal = self.node.welcome(self)
        if refusal is not None:
            self._refuse_proxy(refusal)
            return
        self.joined = True
        said = self._said()
        if said is not None:
            said.clear()
        try:
            every = float(welcome.get("heartbeat", HEARTBEAT))
        except ValueError:
            every = HEARTBEAT
        self.log.info("joined the proxy at {proxy} as {id} (zone {zone})", proxy=self.proxy_address(),
                      id=self.node.id, zone=self.node.zone)
        self._beat = task.LoopingCall(self._heartbeat)
        self._beat.clock = self.clock
        self._beat.start(max(0.05, every), now=False)
        self.node.joined(self)

    def proxy_address(self) -> str:
        """The proxy's address, for the log: a server may join several."""
        peer = self.transport.getPeer()
        host, port = getattr(peer, "host", None), getattr(peer, "port", None)
        return f"{host}:{port}" if host is not None else str(peer)

    def send_inventory(self, entries: list[Any], more: bool = False) -> Deferred:
        """One chunk of a listing: blob ids (or BlobMeta, when the proxy asked
        for ``full_listing``) in increasing id order, after those of the chunks
        before (LISTING must have been sent before the first was read). Fires
        once the connection has taken it: then send the next."""
        lines = [f"INVENTORY {len(entries)}" + (" more" if more else "")] + [
            m if isinstance(m, str) else
            f"{m.blob} {m.version} {m.size} {m.sha256} {m.replicas} {quote(m.name)} {meta_word(m.meta)}".rstrip()
            for m in entries]
        self.transport.writeSequence([line.encode("utf-8") + b"\r\n" for line in lines])
        return self.sending.drained()

    def send_listing(self) -> None:
        self.reply("LISTING")

    def send_bad(self, blob: str, why: str) -> None:
        self.reply(f"BAD {blob} {why}")

    def _heartbeat(self) -> None:
        capacity, used, blobs = self.node.usage()
        self.reply(f"HB capacity={capacity} used={used} blobs={blobs}")

    def badLine(self, why: str) -> None:
        self.transport.loseConnection()

    def lineLengthExceeded(self, line: bytes) -> None:
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = True
        self.sending.stopProducing()
        if self._beat is not None and self._beat.running:
            self._beat.stop()
        if self.joined:
            self.node.left(self)
            self.log.warn("lost the proxy at {proxy}; joining again", proxy=self.proxy_address())
        elif not self._told and self._first_time("it closed the connection before welcoming this server"):
            self.log.error("the proxy at {proxy} closed the connection before welcoming this server (is it a"
                           " Deposito proxy's cluster port?); joining again", proxy=self.proxy_address())


class MemberProtocol(LineProtocol, TimeoutMixin):
    """The proxy's end of one storage server's cluster connection."""

    log = Logger()

    def __init__(self, roster: Roster, heartbeat: float, secret: bytes | None = None,
                 full_listing: Callable[[], bool] = lambda: True, *,
                 catalog_id: Callable[[], str | None], takes_in: TakesIn = lambda member, serves: succeed(False),
                 told: set[tuple[str, str]] | None = None,
                 refusals: set[tuple[str, str, str]] | None = None) -> None:
        self.roster = roster
        self.heartbeat = heartbeat
        self.secret = secret
        self.full_listing = full_listing  # whether to ask for each blob's metadata in listings
        self.catalog_id = catalog_id  # the catalog's id; None until it is read
        self.takes_in = takes_in  # whether a server's listing is taken in (Rebuilder.takes_in)
        self.told = told if told is not None else set()  # (server, catalog) refused and said so in the log
        self.refusals = refusals if refusals is not None else set()  # (host, server, reason) said (see _refused)
        self._full = True  # what was asked of this server
        self._adopted = False  # its listing is taken in rather than judged
        self._serves: str | None = None  # the catalog it serves, when not ours
        self._deciding = False  # whether to take it in is being decided: nothing is read meanwhile
        self._welcomed: tuple[Any, ...] | None = None  # roster.join's arguments, until the server speaks again
        self._challenge: tuple[str, dict[str, str], str] | None = None
        self.member_id: str | None = None
        self._listing_since: float | None = None
        self._after: str | None = None  # in a listing: the last blob id of its chunks so far ("" for none)
        # a chunk of a listing: (blob,) each, or with ``full`` listings (blob, version, size, sha256, replicas, name)
        self._chunk: list[tuple[str] | tuple[str, int, int, str, int, str, str]] | None = None
        self._expected = 0
        self._more = False
        self._lost = False
        self._retake: IDelayedCall | None = None  # a chunk to hand to the roster again (see _take)
        self._claimed = ""  # the id its JOIN names, before it is checked (for the log)
        self._counted = False  # among the port's connections (see MemberFactory.cap)
        self._timed_out = False  # cut for want of joining in time (see timeoutConnection)

    def connectionMade(self) -> None:
        cap = getattr(getattr(self, "factory", None), "cap", None)
        self._counted = cap is None or cap.enter(self)
        if not self._counted:
            self.reply(f"ERR unavailable too many connections ({MAX_CONNECTIONS}); try again later")
            self.transport.loseConnection()
            return
        self.setTimeout(self.heartbeat * MISSED_HEARTBEATS)

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        if self.member_id is not None:
            self.resetTimeout()  # before, it has that long in all to join, whatever it sends (see _welcome)
        cap = getattr(getattr(self, "factory", None), "cap", None)
        if cap is not None:
            cap.heard(self)

    def between_requests(self) -> bool:
        """A connection not joined yet may be closed to make room (ConnectionCap); a server's never is."""
        return self.member_id is None

    def give_way(self) -> None:
        self.transport.loseConnection()

    def answers_a_client(self) -> bool:
        return False  # a storage server's connection is never cut to make room

    def timeoutConnection(self) -> None:
        if self.member_id is not None:
            self.log.warn("storage server {id} missed its heartbeats", id=self.member_id)
        else:
            self._timed_out = True
            within = f"within {self.heartbeat * MISSED_HEARTBEATS:.0f} s"
            self._refused(Unavailable(f"silent {within} of its welcome" if self._welcomed is not None
                                      else f"not joined {within} of its JOIN" if self._claimed else f"no JOIN {within}"))
        self.transport.abortConnection()

    def textReceived(self, text: str) -> None:
        try:
            words = split(text)
            if not words:
                return
            command = words[0].upper() if words[0].isascii() else ""  # ("ınventory".upper() is INVENTORY)
            if self._deciding:
                raise BadArgs("nothing is read before the welcome")
            if self._chunk is not None:
                self._inventory_line(words)
            elif self._challenge is not None:
                if command != "PROOF" or len(words) != 2:
                    raise Denied("PROOF expected")
                member_id, f, mine = self._challenge
                self._challenge = None
                assert self.secret is not None  # a challenge is made only with a secret
                if not verify(self.secret, words[1], "server", mine, f.get("nonce", ""), member_id):
                    raise Denied("wrong proof of the cluster secret")
                self._join(member_id, f)
            elif self.member_id is None and self._welcomed is None:
                if command != "JOIN" or len(words) < 2:
                    raise BadArgs("JOIN first")
                self._claimed = words[1][:64]
                if self.secret is None:
                    self._join(words[1], fields(text))
                else:
                    self._challenge_server(words[1], fields(text))
            elif command == "HB":
                usage = self._usage(fields(text))
                self.roster.heartbeat(self._member(), *usage)
            elif command == "LISTING" and len(words) == 1:
                if self._after is not None:
                    raise BadArgs("LISTING before the last chunk of the listing under way")
                self._member()
                self._listing_since = self.roster.clock.seconds()
                self._after = ""
            elif command == "INVENTORY" and (len(words) == 2 or len(words) == 3 and words[2].lower() == "more"):
                self._expected = parse_count(words[1], "inventory chunk size", 0, MAX_CHUNK)
                self._more = len(words) == 3
                self._chunk = []
                if self._after is None:  # a listing without LISTING: it judges nothing as made after it
                    self._after = ""
                self._chunk_done()
            elif command == "BAD" and len(words) >= 2:
                blob = check_blob(words[1])
                self.roster.corrupt(self._member(), blob, " ".join(words[2:])[:200])
            else:
                raise BadArgs(f"unexpected {command[:20]!r}")
        except DepositoError as e:
            self._refused(e)
            self.reply(e.reply())
            self.transport.loseConnection()

    def _forget_refusals(self, which: Callable[[tuple[str, str, str]], bool]) -> None:
        """Forget having said the refusals of servers from this host that ``which`` picks."""
        host = self._peer_host()
        self.refusals.difference_update([said for said in self.refusals if said[0] == host and which(said)])

    def _peer_host(self) -> str:
        peer = self.transport.getPeer()
        return str(getattr(peer, "host", peer))

    def _refused(self, e: DepositoError) -> None:
        """Say a refusal once per host, server and reason until another
        server from that host joins, or this one's listing goes through: a
        refused server comes back every second or two.
        Past a few of them from one host, the rest are not said (a client
        trying one id after another would fill the log)."""
        host = self._peer_host()
        said = (host, self._claimed, str(e))
        if said in self.refusals or sum(1 for h, _, _ in self.refusals if h == host) >= SAID_PER_HOST:
            return
        if len(self.refusals) >= SAID_MAX:
            self.refusals.clear()
        self.refusals.add(said)
        self.log.warn("refused a storage server from {peer}: {error} (said once while it lasts)",
                      peer=peer(self.transport.getPeer()), error=str(e), event="refused")

    def _inventory_line(self, words: list[str]) -> None:
        assert self._chunk is not None and self._after is not None
        if not self._full:
            if len(words) != 1:
                raise BadArgs("inventory line: <blob>")
        elif len(words) not in (6, 7):
            raise BadArgs("inventory line: <blob> <version> <size> <sha256> <replicas> <name> [meta=<base64>]")
        elif not SHA256.match(words[3]):
            raise BadArgs("inventory line: bad sha256")
        blob = words[0]
        if check_blob(blob) <= (self._chunk[-1][0] if self._chunk else self._after):
            raise BadArgs("inventory line: blob ids out of order")
        if self._full:
            _, version, size, sha256, replicas, name = words[:6]
            self._chunk.append((blob, parse_count(version, "version", 0, MAX_COUNT), parse_count(size, "size", 0, MAX_COUNT),
                                sha256, parse_count(replicas, "replicas", 0, 16), check_stored_name(name),
                                parse_meta_word(words[6]) if len(words) == 7 else ""))
        else:
            self._chunk.append((blob,))
        self._chunk_done()

    def _chunk_done(self) -> None:
        """A whole chunk: hand it to the roster, and read no further until it is taken in."""
        if self._chunk is None or len(self._chunk) != self._expected:
            return
        entries, self._chunk = self._chunk, None
        since = self._listing_since if self._listing_since is not None else 0.0
        more = self._more
        if more:
            self._after = entries[-1][0] if entries else self._after
        else:
            self._after = self._listing_since = None
            self._forget_refusals(lambda said: True)
        self._take(entries, since, more)

    def _take(self, entries: list[Any], since: float, more: bool) -> None:
        """Hand a whole chunk to the roster, and read no further until it is
        taken in. One the catalog cannot take in for now (out of reach, or
        its disk full) is handed again every RETAKE seconds meanwhile, the
        server kept up: every blob of a chunk must be in the catalog before
        the next chunk is read (see Rebuilder.take)."""
        taking = self.roster.inventory(self._member(), entries, since, more)
        if isinstance(taking, Deferred):
            taking.addErrback(self._not_taken, entries, since, more)
            if not taking.called or self._retake is not None:
                self.pauseProducing()
                self.setTimeout(None)  # the proxy is the one not reading: no heartbeat is missed
                taking.addBoth(self._taken)

    def _not_taken(self, failure: Failure, entries: list[Any], since: float, more: bool) -> None:
        if not failure.check(Unavailable, NoSpace):
            self.log.failure("taking in an inventory chunk of {id}", failure, id=self.member_id)
            return
        if self._retake is None:  # said once until it is taken in
            self.log.warn("the blobs storage server {id} listed cannot be taken in yet ({why}); tried again"
                          " every {s:.0f} s", id=self.member_id, why=str(failure.value), s=RETAKE)
        if not self._lost:
            self._retake = self.callLater(RETAKE, lambda: self._take(entries, since, more))

    def _taken(self, _: object) -> None:
        if self._lost or (self._retake is not None and self._retake.active()):
            return  # gone, or handed again later
        if self._retake is not None:
            self._retake = None
            self.log.info("the blobs storage server {id} listed are taken in again", id=self.member_id)
        self.setTimeout(self.heartbeat * MISSED_HEARTBEATS)
        self.resumeProducing()

    @staticmethod
    def _usage(f: dict[str, str]) -> tuple[int, int, int]:
        return (parse_count(f.get("capacity", ""), "capacity", 0, MAX_COUNT),
                parse_count(f.get("used", ""), "used", 0, MAX_COUNT),
                parse_count(f.get("blobs", ""), "blobs", 0, MAX_COUNT))

    def _challenge_server(self, member_id: str, f: dict[str, str]) -> None:
        check_label(member_id, "server id")
        theirs = f.get("nonce", "")
        if not re.fullmatch(r"[0-9a-f]{32}", theirs):
            raise Denied("this cluster needs its secret: start the server with --secret")
        mine = nonce()
        assert self.secret is not None  # a challenge is made only with a secret
        self._challenge = (member_id, f, mine)
        self.reply(f"CHALLENGE nonce={mine} proof={proof(self.secret, 'proxy', theirs, mine, member_id)}")

    def _join(self, member_id: str, f: dict[str, str]) -> None:
        check_label(member_id, "server id")
        zone = check_label(f.get("zone", ""), "zone")
        port = parse_count(f.get("port", ""), "port", 1, 65535)
        host = check_host(f["host"]) if f.get("host") else self.transport.getPeer().host
        if host in ("0.0.0.0", "::"):
            host = self.transport.getPeer().host
        capacity, used, blobs = self._usage(f)
        local = None
        if LOCAL_NAME.match(f.get("local", "")) and LOCAL_KEY.match(f.get("key", "")):
            local = (f["local"], f["key"])
        catalog = self.catalog_id()
        if catalog is None:
            raise Unavailable("the catalog is not read yet; try again shortly")
        held = self.roster.get(member_id)
        if held is not None and held.connection is not None:
            raise Denied(f"a server named {member_id} is already joined")
        self._welcomed = (member_id, zone, host, port, capacity, used, blobs, self, local)
        serves = f.get("serves", "")
        self._serves = serves if CATALOG_ID.match(serves) and serves != catalog else None
        self._deciding = True
        self.setTimeout(None)  # the catalog's time, not the server's (see _welcome)
        deciding = self.takes_in(member_id, self._serves)
        deciding.addCallback(self._decided, catalog)
        deciding.addErrback(self._not_decided)

    def _decided(self, taken_in: bool, catalog: str) -> None:
        self._deciding = False
        self._adopted = taken_in
        if not self._lost:
            self._welcome(catalog, taken_in or self.full_listing())

    def _not_decided(self, failure: Failure) -> None:
        self._deciding = False
        self._welcomed = None
        self.log.warn("storage server from {peer}: whether to take its blobs in is not known ({why});"
                      " it joins again", peer=peer(self.transport.getPeer()), why=failure.getErrorMessage())
        if not self._lost:
            self.reply(Unavailable("the catalog is unavailable; try again shortly").reply())
            self.transport.loseConnection()

    def _welcome(self, catalog: str, full: bool) -> None:
        self._full = full
        self.setTimeout(self.heartbeat * MISSED_HEARTBEATS)  # to say its first words, which make it a member
        self.reply(f"OK welcome heartbeat={self.heartbeat} listing={'full' if full else 'ids'}"
                   f" catalog={catalog}")

    def _member(self) -> str:
        """The server's id, once it is in the roster: it enters with the first
        thing it tells after our welcome that checks out (a heartbeat, the
        start of a listing, a whole inventory chunk, a bad copy), since that shows it serves this
        proxy's catalog; from then on it is up. (One serving another catalog
        closes the connection instead, and one refused at its first words
        never enters: no copy is ever placed on either.)"""
        if self._welcomed is not None:
            welcomed, self._welcomed = self._welcomed, None
            member = self.roster.join(*welcomed)
            # a server from that host serves: the others' refusals may be said again (this
            # one's once its listing is all in: one refused in the middle of it, an older
            # server whose lines this proxy cannot read, joins again every second or two)
            self._forget_refusals(lambda said: said[1] != welcomed[0])
            member.adopted, member.serves = self._adopted, self._serves
            self.member_id = welcomed[0]
            if self._adopted and self._serves is not None:
                self.log.info("storage server {id} served catalog {lost}, lost: its blobs are taken in",
                              id=self.member_id, lost=self._serves)
        assert self.member_id is not None
        return self.member_id

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = True
        self.setTimeout(None)
        if self._counted:
            cap = getattr(getattr(self, "factory", None), "cap", None)
            if cap is not None:
                cap.leave(self)
        if self._retake is not None and self._retake.active():
            self._retake.cancel()
        if self.member_id is not None:
            self.roster.lost(self.member_id, self)
        elif self._welcomed is not None and self._serves is not None and not self._deciding:
            if (self._welcomed[0], self._serves) not in self.told:  # once: it comes back every few seconds
                self.told.add((self._welcomed[0], self._serves))
                self.log.error("storage server {id} serves catalog {lost}, not this proxy's: it is not taken in."
                               " If it belongs to another cluster, point it at that cluster's proxy; if it held"
                               " files of a catalog this one replaces, restart this proxy with --rebuild to take"
                               " them in", id=self._welcomed[0], lost=self._serves, event="refused")
        elif self._challenge is not None:  # it could not check this proxy's proof: another secret
            self._refused(Denied("it left at the secret's challenge: its --secret is not this proxy's"))
        elif self._welcomed is not None and not self._timed_out:
            self._refused(Denied("it left when welcomed: it may hold a --secret this proxy has none of, or serve"
                                 " another catalog (see its log)"))


class MemberFactory(Factory):
    def __init__(self, roster: Roster, heartbeat: float = HEARTBEAT, secret: bytes | None = None,
                 full_listing: Callable[[], bool] = lambda: True, *,
                 catalog_id: Callable[[], str | None], takes_in: TakesIn = lambda member, serves: succeed(False)) -> None:
        self.roster = roster
        self.heartbeat = heartbeat
        self.secret = secret
        self.full_listing = full_listing
        self.catalog_id = catalog_id  # None until the proxy has read it: joins wait meanwhile
        self.takes_in = takes_in
        self.told: set[tuple[str, str]] = set()
        self.refusals: set[tuple[str, str, str]] = set()
        self.cap = ConnectionCap(MAX_CONNECTIONS, roster.clock)  # servers and whatever else connects, at once

    def buildProtocol(self, addr: Any) -> MemberProtocol:
        p = MemberProtocol(self.roster, self.heartbeat, self.secret, self.full_listing,
                           catalog_id=self.catalog_id, takes_in=self.takes_in, told=self.told,
                           refusals=self.refusals)
        p.factory = self
        return p
