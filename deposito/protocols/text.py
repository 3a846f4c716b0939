"""The client-facing text protocol of the proxy (docs/protocol.md).

This module frames and parses: one request line, one reply line (or ``OK <n>``
and n lines), raw mode for file bytes. The work is the depot's (an IDepot).
"""

from __future__ import annotations

import inspect
from typing import Any, cast

from twisted.internet import defer
from twisted.internet.interfaces import IHalfCloseableProtocol, IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

import deposito
from deposito import twisted_internals
from deposito.catalog import FileRecord
from deposito.errors import BadArgs, Denied, DepositoError, Internal, TooLarge, Unavailable
from deposito.listening import MAX_CONNECTIONS, ConnectionCap, Progress, peer
from deposito.interfaces import IDepot
from deposito.protocols.lines import MAX_LINE, LineProtocol, handler_for, send_now, tune_for_streams
from deposito.protocols.listreply import ListBroken, ListReply
from deposito.protocols.words import check_name, parse_count, quote, split

MAX_REPLICAS = 16
WRONG_TOKEN_DELAY = 1.0  # seconds before a wrong token is answered
REPLY_BACKLOG = 256 << 10  # replies a client has not read beyond this: its next requests wait
BACKLOG_CHECK = 0.02  # seconds between looks at such a backlog
LAST_WORD_WITHIN = 5.0  # seconds a connection closed with a last word has to take it, before it is cut

USAGE = {
    "HELP": "HELP",
    "PUT": "PUT <name> <size> [<replicas>]",
    "GET": "GET <name>",
    "STAT": "STAT <name>",
    "LIST": "LIST [<prefix> [<after> [<limit>]]]",
    "DELETE": "DELETE <name>",
    "SERVERS": "SERVERS",
    "REPLICAS": "REPLICAS <name> <count> [WAIT]",
    "STATUS": "STATUS",
    "AUTH": "AUTH <token>",
    "QUIT": "QUIT",
}

HELP = [
    "PUT <name> <size> [<replicas>]  store a file: after 'OK send', send <size> raw bytes",
    "GET <name>                      'OK <size> sha256=.. version=..' then <size> raw bytes",
    "STAT <name>                     size, checksum, version, wanted and healthy copies",
    "LIST [<prefix> [<after> [<limit>]]]  'OK <n>' then n '<size> <wanted> <have> <name>' lines in name order",
    "DELETE <name>                   remove a file",
    "REPLICAS <name> <count> [WAIT]  change the wanted copies; WAIT answers once they exist",
    "SERVERS                         the storage servers and their state",
    "STATUS                          files, servers, and the repair work still to do",
    "AUTH <token>                    authenticate (when the proxy asks for tokens)",
    "HELP                            this list",
    "QUIT                            close the connection",
]


@implementer(IHalfCloseableProtocol)
class DepotProtocol(LineProtocol, TimeoutMixin):
    """One client connection."""

    log = Logger()
    USAGE = USAGE

    OPEN_COMMANDS = {"HELP", "AUTH", "QUIT"}  # what a client may do before AUTH
    WHILE_REBUILDING = OPEN_COMMANDS | {"SERVERS", "STATUS"}

    def __init__(self, depot: IDepot, idle_timeout: float, stall_timeout: float,
                 tokens: Any = None, max_size: int | None = None) -> None:
        self.depot = depot
        self.tokens = tokens
        self.authenticated = tokens is None
        self.max_size = max_size
        self.idle_timeout = idle_timeout
        self.stall_timeout = stall_timeout
        self._progress = Progress()  # of the upload under way (see dataReceived)
        self._cut: Any = None  # the cut that follows a last word (see _close_after_last_word)
        self._upload: Any = None
        self._remaining = 0
        self._broken = False
        self._waiting: defer.Deferred | None = None
        self._sent_all = False  # the client half-closed: it sends nothing more
        self._parsing = 0  # dataReceived calls under way (an answer given at once parses the next lines within)
        self._backlog: Any = None  # the next look at replies the client has not read (see _hold_for_backlog)
        self._counted = False  # among the port's connections (see DepotFactory.cap)

    # -- framing

    def connectionMade(self) -> None:
        tune_for_streams(self.transport)
        factory = getattr(self, "factory", None)
        if factory is not None:
            self._counted = factory.cap.enter(self)
            if not self._counted:
                self.reply(f"ERR unavailable too many connections ({factory.cap.most}); try again later")
                self._broken = True
                self._close_after_last_word()
                return
        self.setTimeout(self.idle_timeout)
        self.reply(f"OK deposito {deposito.__version__} ready")

    def dataReceived(self, data: bytes) -> None:
        if self._broken:  # refused or broken: nothing more is read
            return
        # a line never finished, a byte at a time, is idle; a body, unless it moves (see Progress)
        if self.line_mode and b"\n" in data:
            self._moved()
        elif not self.line_mode:
            self._body_came(len(data))
        self._parsing += 1
        try:
            super().dataReceived(data)
        finally:
            self._parsing -= 1
        if self._parsing:
            return  # the call that parses the lines goes on with them, then does what follows
        if self.paused and twisted_internals.unparsed_size(self) > MAX_LINE:
            self.transport.pauseProducing()  # a client sending ahead waits: no more than a line is kept
        elif self._sent_all and not self.paused:  # every line the client sent is answered
            self._all_taken()
        send_now(self.transport)  # what these requests answered at once

    def _heard(self) -> None:
        if self._counted:
            self.factory.cap.heard(self)

    def _moved(self) -> None:
        self.resetTimeout()
        self._heard()

    def _body_came(self, nbytes: int) -> None:
        """Bytes of an upload came, read here or moved in the kernel (see
        rawDataReceived): its stall timer starts again only while it moves."""
        if self._progress.came(nbytes):
            self._moved()

    def between_requests(self) -> bool:
        """Nothing asked is being answered, and no upload is under way (see ConnectionCap)."""
        return not self.paused and self._upload is None

    def answers_a_client(self) -> bool:
        return True

    def give_way(self) -> None:
        """The port is full and this connection idles: it closes to make room, saying so."""
        self.reply("ERR unavailable closed to make room: the proxy is full and this connection was idle")
        self._broken = True
        self._close_after_last_word()

    def _close_after_last_word(self) -> None:
        """Close once what was written is sent, and cut the connection if it
        is still open LAST_WORD_WITHIN later: over TLS, Twisted sends the last
        word on its next turn, and holds it, and the close, for good while
        the handshake never finishes; a peer that stopped reading holds it too."""
        self.transport.loseConnection()
        if self._cut is None:
            self._cut = self.callLater(LAST_WORD_WITHIN, self._cut_now)

    def _cut_now(self) -> None:
        self._cut = None
        if self.transport.connected:
            self.transport.abortConnection()

    def hold(self) -> None:
        """Lines wait until the request in hand is answered (:meth:`_resume`).
        The socket is still read, so a request costs no change to the
        reactor's poll set, until more than a line waits (see dataReceived)."""
        self.paused = True

    def readConnectionLost(self) -> None:
        """The client sends nothing more (it half-closed, as ``nc -N`` does):
        what it asked is answered, then the connection closes. Cut in the
        middle of an upload, the upload is dropped, and the client told."""
        self._sent_all = True
        if not self.paused:
            self._all_taken()

    def _all_taken(self) -> None:
        """The client half-closed and everything it sent has been taken:
        the connection closes, with a word if an upload is still short."""
        if self._upload is not None:
            self.reply(f"ERR badargs upload cut short: the client sent less than {self._upload.size} bytes, closing")
        self.transport.loseConnection()  # (connectionLost drops an upload left)

    def writeConnectionLost(self) -> None:
        pass  # this end never half-closes

    def lineReceived(self, line: bytes) -> None:
        super().lineReceived(line)
        if not self.paused:  # answered at once
            self._hold_for_backlog()

    def _hold_for_backlog(self) -> bool:
        """If more than REPLY_BACKLOG of replies wait to be sent, lines wait
        and the socket is not read until they are mostly gone: a client that
        asks and never reads costs a bounded buffer, and is cut after the
        stall timeout without progress."""
        unsent = twisted_internals.unsent_size(self.transport)
        if unsent <= REPLY_BACKLOG:
            return False
        self.pauseProducing()
        self.setTimeout(self.stall_timeout)
        self._backlog = self.callLater(BACKLOG_CHECK, lambda: self._look_at_backlog(unsent))
        return True

    def _look_at_backlog(self, before: int) -> None:
        self._backlog = None
        unsent = twisted_internals.unsent_size(self.transport)
        if unsent > REPLY_BACKLOG // 2:
            if unsent < before:  # the client reads: it is not stalled
                self.resetTimeout()
            self._backlog = self.callLater(BACKLOG_CHECK, lambda: self._look_at_backlog(unsent))
        else:
            self._resume(None)

    def timeoutConnection(self) -> None:
        if self._upload is not None:
            self.reply("ERR badargs upload stalled, closing")
            self._close_after_last_word()
        else:
            self.transport.abortConnection()  # silent: a peer that stopped reading would keep a close waiting

    def lineLengthExceeded(self, line: bytes) -> None:
        self.reply("ERR badargs line too long")
        self.transport.loseConnection()

    def badLine(self, why: str) -> None:
        self.reply(BadArgs(why).reply())

    def textReceived(self, text: str) -> None:
        try:
            words = split(text)
            if not words:
                return
            if not self.authenticated and words[0].upper() not in self.OPEN_COMMANDS:
                raise Denied("AUTH <token> first")
            if self.depot.closed_for_rebuild and words[0].upper() not in self.WHILE_REBUILDING:
                raise Unavailable("rebuilding the catalog from the servers; try again shortly")
            result = handler_for(self, words)(*words[1:])
        except DepositoError as e:
            self.reply(e.reply())
            return
        if inspect.iscoroutine(result):
            self.hold()
            self._answer(defer.ensureDeferred(result))

    def _answer(self, d: defer.Deferred) -> None:
        """The request is answered when ``d`` fires; lines wait till then."""
        d.addErrback(self._failed)
        d.addBoth(self._resume)

    def _failed(self, failure: Failure) -> None:
        if failure.check(defer.CancelledError):  # the client left during REPLICAS ... WAIT
            return
        if isinstance(failure.value, DepositoError):
            err = failure.value
        else:
            self.log.failure("request failed", failure)
            err = Internal("the proxy hit an error; see its log")
        if self.transport.connected:
            self.reply(err.reply())

    def _resume(self, _: object) -> None:
        if self._broken:
            if self.transport.connected:  # (over TLS, an abort after the connection is lost raises)
                self.transport.abortConnection()
        elif self.transport.connected and not self._hold_for_backlog():
            self.setTimeout(self.idle_timeout)
            self._heard()
            self.resumeProducing()  # the lines that waited are parsed (see dataReceived)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.setTimeout(None)
        if self._backlog is not None:
            self._backlog.cancel()
            self._backlog = None
        if self._cut is not None:
            self._cut.cancel()
            self._cut = None
        if self._counted:
            self.factory.cap.leave(self)
        if self._waiting is not None:  # only the wait ends; the wanted count stays
            self._waiting.cancel()
        if self._upload is not None:
            upload, self._upload = self._upload, None
            self.log.info("client left during the upload of {name}", name=upload.name)
            self.depot.abort_put(upload)

    # -- commands

    def do_HELP(self) -> None:
        self.reply(f"OK {len(HELP)}")
        for line in HELP:
            self.reply(line)

    def do_QUIT(self) -> None:
        self.reply("OK bye")
        self.transport.loseConnection()

    def do_AUTH(self, token: str) -> Any:
        if self.tokens is not None and not self.tokens.check(token):
            self.log.warn("a client from {peer} gave a wrong token", peer=peer(self.transport.getPeer()),
                          event="denied")
            return self._wrong_token()
        self.authenticated = True
        self.reply("OK")
        return None

    async def _wrong_token(self) -> None:
        """Answered WRONG_TOKEN_DELAY later, the connection's next lines
        waiting meanwhile: guessing tokens is slow."""
        later: defer.Deferred[None] = defer.Deferred()
        self.callLater(WRONG_TOKEN_DELAY, lambda: later.callback(None))
        await later
        raise Denied("wrong token")

    async def do_PUT(self, name: str, size: str, replicas: str | None = None) -> None:
        check_name(name)
        nbytes = parse_count(size, "size")
        if self.max_size is not None and nbytes > self.max_size:
            raise TooLarge(f"the largest file this proxy takes is {self.max_size} bytes")
        count = parse_count(replicas, "replicas", 1, MAX_REPLICAS) if replicas is not None else None
        upload = await self.depot.begin_put(name, nbytes, count)
        if not self.transport.connected:
            self.depot.abort_put(upload)
            return
        self.reply(f"OK send {nbytes}")
        self._upload, self._remaining = upload, nbytes
        self._done: defer.Deferred[None] = defer.Deferred()
        if nbytes:
            upload.attach(self.transport)
            self.setTimeout(self.stall_timeout)
            self._progress = Progress()
            self.setRawMode()
            self.paused = False  # let raw bytes flow; lines wait until the reply
            self.transport.resumeProducing()
            if twisted_internals.holds_unparsed(self):
                self.dataReceived(b"")
            elif self._sent_all:  # it half-closed while the upload was being set up
                self._all_taken()
        else:
            self._done.callback(None)
        await self._done
        self._upload = None
        self.setTimeout(None)  # the copies may take a while to be made durable: not a stall
        record = await self.depot.finish_put(upload)
        self.reply(f"OK stored name={quote(record.name)} version={record.version} size={record.size}"
                   f" sha256={record.sha256} replicas={len(record.servers)}")

    def rawDataReceived(self, data: bytes) -> None:
        if self._upload is None:
            return
        take = data if len(data) <= self._remaining else data[: self._remaining]
        self._remaining -= len(take)
        self._upload.write(take)
        if self._remaining == 0:
            self._received_all(data[len(take):])
        elif not twisted_internals.holds_unparsed(self):
            # The rest can go from socket to sockets inside the kernel, once
            # the servers' connections have sent what was written to them.
            d = self._upload.splice_from(self.transport, self._remaining, self._body_came)
            if d is not None:
                d.addCallbacks(self._spliced, lambda _: None)  # failed: the connection is cut

    def _spliced(self, count: int) -> None:
        self._remaining -= count
        if self._upload is not None:
            self._received_all(b"")

    def _received_all(self, rest: bytes) -> None:
        self._upload.detach()
        self.hold()
        self.setLineMode(rest)
        self._done.callback(None)

    def do_GET(self, name: str) -> Any:
        record = self.depot.recent(check_name(name))
        if record is None:  # a small file may be read from the copy guessed while the catalog is asked
            guess = self.depot.guess(name)
            return self._get(name, guess, self.depot.read_small(guess) if guess is not None else None)
        small = self.depot.read_small(record)
        if small is None:
            return self._get(name)
        self.setTimeout(None)
        self.hold()
        self._answer(small.addCallbacks(self._send_small, self._read_anyway, callbackArgs=(record,),
                                        errbackArgs=(record,)))
        return None

    async def _get(self, name: str, guess: FileRecord | None = None,
                   small: defer.Deferred[list[bytes]] | None = None) -> None:
        """GET from the catalog's answer; ``small``: the bytes of the version
        ``guess`` names, being read meanwhile, sent only if that version is
        the one the catalog answers."""
        try:
            record = await self.depot.lookup(name)
        except BaseException:
            if small is not None:
                small.addErrback(lambda _: None)  # not wanted: nor is its failure
            raise
        if small is not None and guess is not None and (guess.version, guess.blob) == (record.version, record.blob):
            try:
                parts = await small
            except Exception:
                pass  # nothing was sent: every copy is tried below
            else:
                self.setTimeout(None)
                self._send_small(parts, record)
                return
        elif small is not None:
            small.addErrback(lambda _: None)  # an older version's bytes: not wanted
        await self._read(record)

    def _send_small(self, parts: list[bytes], record: Any) -> None:
        self.reply(_header(record), *parts)

    def _read_anyway(self, failure: Failure, record: Any) -> defer.Deferred:
        """The small read failed with nothing sent: every copy is tried, streamed."""
        return defer.ensureDeferred(self._read(record))

    async def _read(self, record: Any) -> None:
        self.setTimeout(None)
        header = _header(record)
        sent = []

        def started() -> None:
            sent.append(True)
            self.reply(header)

        try:
            await self.depot.read(record, self.transport, started=started)
        except DepositoError as e:
            if sent:  # the byte count cannot be kept: the connection must go
                self.log.warn("GET {name} broke mid-stream: {why}", name=record.name, why=str(e))
                self._broken = True
                return
            raise

    async def do_STAT(self, name: str) -> None:
        record = await self.depot.lookup(check_name(name))
        healthy = sorted(m.id for m in self.depot.healthy(record))
        self.reply(f"OK name={quote(record.name)} size={record.size} sha256={record.sha256}"
                   f" version={record.version} replicas={record.replicas} have={len(healthy)}"
                   f" servers={','.join(healthy) or '-'}")

    async def do_LIST(self, prefix: str = "", after: str = "", limit: str | None = None) -> None:
        count = parse_count(limit, "limit", 1) if limit is not None else None
        listing = await self.depot.listing(prefix, after, count)
        if not self.transport.connected:
            listing.close()
            return
        self.reply(f"OK {listing.count}")
        self.setTimeout(None)  # a slow reader is the listing's to time out (see deposito.catalog.listing)
        try:
            await ListReply(self.transport, listing, lambda r: len(self.depot.healthy(r))).start()
        except ListBroken:  # after OK <n>, fewer lines would be misread: the connection must go
            self._broken = True

    async def do_DELETE(self, name: str) -> None:
        record = await self.depot.delete(check_name(name))
        self.reply(f"OK deleted name={quote(record.name)}")

    async def do_REPLICAS(self, name: str, count: str, wait: str | None = None) -> None:
        check_name(name)
        n = parse_count(count, "count", 1, MAX_REPLICAS)
        if wait is not None and wait.upper() != "WAIT":
            raise BadArgs(f"usage: {USAGE['REPLICAS']}")
        if wait is not None:
            self.setTimeout(None)
        async def replicas() -> tuple[FileRecord, int]:  # a Deferred, so that connectionLost can cancel it
            return await self.depot.replicas(name, n, wait is not None)

        self._waiting = defer.ensureDeferred(replicas())
        try:
            record, have = await self._waiting
        finally:
            self._waiting = None
        self.reply(f"OK name={quote(record.name)} replicas={n} have={have}")

    async def do_STATUS(self) -> None:
        counts = await self.depot.status()
        self.reply("OK " + " ".join(f"{k}={v}" for k, v in counts.items()))

    def do_SERVERS(self) -> None:
        members = self.depot.servers()
        self.reply(f"OK {len(members)}")
        for m in members:
            self.reply(f"{m.id} {m.host}:{m.port} {m.state} used={m.used} capacity={m.capacity}"
                       f" blobs={m.blobs} zone={m.zone}")


class DepotFactory(Factory):
    def __init__(self, depot: IDepot, idle_timeout: float = 300.0, stall_timeout: float = 60.0,
                 tokens: Any = None, max_size: int | None = None, clock: IReactorTime | None = None,
                 max_connections: int = MAX_CONNECTIONS) -> None:
        if clock is None:
            from twisted.internet import reactor

            clock = cast(IReactorTime, reactor)
        self.depot = depot
        self.idle_timeout = idle_timeout
        self.stall_timeout = stall_timeout
        self.tokens = tokens
        self.max_size = max_size
        self.cap = ConnectionCap(max_connections, clock)  # past it one idling gives way, or the client is turned away

    def buildProtocol(self, addr: Any) -> DepotProtocol:
        p = DepotProtocol(self.depot, self.idle_timeout, self.stall_timeout, self.tokens, self.max_size)
        p.factory = self
        return p


def _header(record: FileRecord) -> str:
    """The reply line that comes before a file's bytes."""
    return f"OK {record.size} sha256={record.sha256} version={record.version}"
