"""The cluster protocol: storage servers join the proxy and keep in touch.

    server: JOIN <id> zone=<zone> port=<port> [host=<host>] capacity=<n> used=<n> blobs=<n>
    proxy:  OK welcome heartbeat=<seconds>      (or ERR <code> <message>, then close)
    server: HB used=<n> capacity=<n> blobs=<n>  (every <seconds>; no reply)

A server whose lines stop is closed after a few missed heartbeats; the
proxy marks it down.
"""

from __future__ import annotations

import re
from typing import Any, Protocol as TypingProtocol

from twisted.internet import task
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from deposito.errors import BadArgs, DepositoError, from_reply
from deposito.protocols.lines import LineProtocol
from deposito.protocols.words import fields, parse_count, quote, split

SERVER_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
HEARTBEAT = 1.0
MISSED_HEARTBEATS = 5


def check_label(value: str, what: str) -> str:
    if not SERVER_ID.match(value):
        raise BadArgs(f"{what} must be 1 to 64 of A-Z a-z 0-9 . _ : -")
    return value


class NodeReport(TypingProtocol):
    """What a storage server tells the proxy about itself."""

    id: str
    zone: str
    host: str | None
    port: int

    def usage(self) -> tuple[int, int, int]:
        """(capacity, used, blobs)"""


class JoinProtocol(LineProtocol):
    """The storage server's end: join, then heartbeat until the line drops."""

    log = Logger()

    def __init__(self, node: NodeReport, clock: Any) -> None:
        self.node = node
        self.clock = clock
        self._beat: task.LoopingCall | None = None
        self.joined = False

    def connectionMade(self) -> None:
        capacity, used, blobs = self.node.usage()
        host = f" host={self.node.host}" if self.node.host else ""
        self.reply(f"JOIN {quote(self.node.id)} zone={quote(self.node.zone)} port={self.node.port}{host}"
                   f" capacity={capacity} used={used} blobs={blobs}")

    def textReceived(self, text: str) -> None:
        if self.joined:
            return
        if not text.startswith("OK"):
            err = from_reply(text)
            self.log.error("the proxy refused this server: {error}", error=str(err))
            self.transport.loseConnection()
            return
        self.joined = True
        try:
            every = float(fields(text).get("heartbeat", HEARTBEAT))
        except ValueError:
            every = HEARTBEAT
        self.log.info("joined the proxy as {id} (zone {zone})", id=self.node.id, zone=self.node.zone)
        self._beat = task.LoopingCall(self._heartbeat)
        self._beat.clock = self.clock
        self._beat.start(max(0.05, every), now=False)

    def _heartbeat(self) -> None:
        capacity, used, blobs = self.node.usage()
        self.reply(f"HB capacity={capacity} used={used} blobs={blobs}")

    def badLine(self, why: str) -> None:
        self.transport.loseConnection()

    def lineLengthExceeded(self, line: bytes) -> None:
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = None) -> None:
        if self._beat is not None and self._beat.running:
            self._beat.stop()
        if self.joined:
            self.log.warn("lost the proxy; joining again")


class MemberProtocol(LineProtocol, TimeoutMixin):
    """The proxy's end of one storage server's cluster connection."""

    log = Logger()

    def __init__(self, roster: Any, heartbeat: float) -> None:
        self.roster = roster
        self.heartbeat = heartbeat
        self.member_id: str | None = None

    def connectionMade(self) -> None:
        self.setTimeout(self.heartbeat * MISSED_HEARTBEATS)

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        super().dataReceived(data)

    def timeoutConnection(self) -> None:
        self.log.warn("storage server {id} missed its heartbeats", id=self.member_id)
        self.transport.abortConnection()

    def badLine(self, why: str) -> None:
        self.reply(BadArgs(why).reply())
        self.transport.loseConnection()

    def lineLengthExceeded(self, line: bytes) -> None:
        self.badLine("line too long")

    def textReceived(self, text: str) -> None:
        try:
            words = split(text)
            if not words:
                return
            command = words[0].upper()
            if self.member_id is None:
                if command != "JOIN" or len(words) < 2:
                    raise BadArgs("JOIN first")
                self._join(words[1], fields(text))
            elif command == "HB":
                f = fields(text)
                self.roster.heartbeat(self.member_id, *self._usage(f))
        except DepositoError as e:
            self.log.warn("refused a storage server from {peer}: {error}",
                          peer=str(self.transport.getPeer()), error=str(e))
            self.reply(e.reply())
            self.transport.loseConnection()

    @staticmethod
    def _usage(f: dict[str, str]) -> tuple[int, int, int]:
        return (parse_count(f.get("capacity", ""), "capacity"),
                parse_count(f.get("used", ""), "used"),
                parse_count(f.get("blobs", ""), "blobs"))

    def _join(self, member_id: str, f: dict[str, str]) -> None:
        check_label(member_id, "server id")
        zone = check_label(f.get("zone", ""), "zone")
        port = parse_count(f.get("port", ""), "port", 1, 65535)
        host = f.get("host") or self.transport.getPeer().host
        if host in ("0.0.0.0", "::", ""):
            host = self.transport.getPeer().host
        capacity, used, blobs = self._usage(f)
        self.roster.join(member_id, zone, host, port, capacity, used, blobs, self)
        self.member_id = member_id
        self.reply(f"OK welcome heartbeat={self.heartbeat}")

    def connectionLost(self, reason: Failure = None) -> None:
        self.setTimeout(None)
        if self.member_id is not None:
            self.roster.lost(self.member_id, self)


class MemberFactory(Factory):
    def __init__(self, roster: Any, heartbeat: float = HEARTBEAT) -> None:
        self.roster = roster
        self.heartbeat = heartbeat

    def buildProtocol(self, addr: Any) -> MemberProtocol:
        p = MemberProtocol(self.roster, self.heartbeat)
        p.factory = self
        return p
