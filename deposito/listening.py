"""A port the process serves on, or else the process ends: a proxy or server
that cannot listen where it was told to (the port taken, say) must not go
on running without it, looking up but out of reach."""

from __future__ import annotations

import os
import resource
import signal
import socket
from collections import OrderedDict
from typing import Any, Optional, Protocol

import attrs
from twisted.application import service
from twisted.internet.interfaces import (IListeningPort, IProtocolFactory, IReactorCore, IReactorTime,
                                         IStreamServerEndpoint)
from twisted.logger import Logger
from twisted.python.failure import Failure

from deposito.splice.sockets import taken
from deposito.twisted_internals import is_plain_tcp


class Listening(service.Service):
    """Listens on ``endpoint`` with ``factory`` while running. If that fails,
    it says so in one line and ends the process as a SIGTERM would: the
    services stop, the pidfile goes, and the exit status is not 0."""

    log = Logger()

    def __init__(self, reactor: IReactorCore, endpoint: IStreamServerEndpoint, factory: IProtocolFactory, what: str) -> None:
        self.reactor = reactor
        self.endpoint = endpoint
        self.factory = factory
        self.what = what  # "the client port (--port)", as the log line says it
        self.port: Optional[IListeningPort] = None

    def startService(self) -> None:
        super().startService()
        self.endpoint.listen(self.factory).addCallbacks(self._listening, self._failed)

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        if not self.running:
            port.stopListening()

    def _failed(self, failure: Failure) -> None:
        self.log.critical("cannot listen on {what}: {why}; stopping", what=self.what, why=failure.getErrorMessage())
        end_process(self.reactor)

    def stopService(self) -> Any:
        super().stopService()
        port, self.port = self.port, None
        return port.stopListening() if port is not None else None


def end_process(reactor: IReactorCore) -> None:
    """End the process once its reactor runs, as ``kill -TERM`` would: twistd
    stops every service, removes its pidfile and exits with a status that is not 0."""
    reactor.callWhenRunning(os.kill, os.getpid(), signal.SIGTERM)


MAX_CONNECTIONS = 1024  # connections open at once on a client port (text, HTTP, S3) at most
WANTED_DESCRIPTORS = 8192  # open files a process should be allowed: its ports' caps, and the servers' connections


def more_descriptors() -> int:
    """Raise the process's limit on open files (its soft limit) as far as
    its hard limit allows, and return it. Under the soft limit many systems
    start a process with (1024), idle connections on one port would take
    the descriptors every port needs before that port's cap makes room
    (MAX_CONNECTIONS): below WANTED_DESCRIPTORS, that is said in the log."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, 1 << 16) if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < WANTED_DESCRIPTORS:
        Logger().warn("this process may open only {n} files (ulimit -n): give it {wanted} or more, or idle"
                      " connections may keep clients out", n=soft, wanted=WANTED_DESCRIPTORS)
    return soft


PROGRESS_BYTES = 64 << 10  # bytes of a body that must come, at least, for its stall timer to start again


class Progress:
    """Whether an upload's body moves: its stall timer starts again only
    once PROGRESS_BYTES more have come, so a byte now and then holds a
    connection, and the room its upload reserved, no longer than a silent
    one (an upload must bring 64 KiB per stall timeout: about 1 KiB/s at 60 s)."""

    def __init__(self) -> None:
        self._since = 0

    def came(self, nbytes: int) -> bool:
        """``nbytes`` more came: whether the stall timer starts again."""
        self._since += nbytes
        if self._since < PROGRESS_BYTES:
            return False
        self._since = 0
        return True


MAKE_ROOM_AFTER = 2.0  # seconds a client connection must have been silent, and between requests, to give way
STOPPED_AFTER = 20.0  # seconds a client must have taken no byte of an answer waiting for it, to be cut off
# (a client reading slowly is acknowledged a window at a time, a few segments: on loopback, 64 KiB or
# more, so a reader of 10 KiB/s may go 10 s with nothing acknowledged)


class Capped(Protocol):
    """A connection a :class:`ConnectionCap` counts, and may close to make room."""

    transport: Any

    def between_requests(self) -> bool:
        """Whether no request of it is under way (none being received or answered)."""

    def give_way(self) -> None:
        """Close, to make room for a new connection: the port is full and this one idles."""

    def answers_a_client(self) -> bool:
        """Whether a client reads its answers, so that one which stops
        taking them may be cut off to make room (a storage server's
        connection is never)."""


@attrs.define
class ConnectionCap:
    """At most ``most`` connections open at once on one port.

    A new connection past the cap closes the one that has been silent
    longest, if it has sent nothing for MAKE_ROOM_AFTER seconds and either
    no request of it is under way, or its client has taken no byte of the
    answer for STOPPED_AFTER seconds while the answer's bytes waited in its
    socket (it stopped reading): idle connections, however many, cannot
    keep clients out.
    Only when none of them qualifies is the new one told to come back later
    (how, each port says).
    """

    log = Logger()

    most: int
    clock: IReactorTime
    _heard: OrderedDict[Capped, float] = attrs.field(factory=OrderedDict)  # when each last sent a byte; oldest first
    # bytes its client had acknowledged, bytes of its answer waiting, since when (looked at while some waited)
    _taken: dict[Capped, tuple[int, float]] = attrs.field(factory=dict)

    @property
    def open(self) -> int:
        return len(self._heard)

    def enter(self, connection: Capped) -> bool:
        """A connection opens: False when it is one too many (it is not counted)."""
        if len(self._heard) >= self.most and not self._make_room():
            return False
        self._heard[connection] = self.clock.seconds()
        return True

    def heard(self, connection: Capped) -> None:
        """``connection`` sent bytes, or had a request answered: it is not idle."""
        if connection in self._heard:
            self._heard[connection] = self.clock.seconds()
            self._heard.move_to_end(connection)

    def leave(self, connection: Capped) -> None:
        self._heard.pop(connection, None)
        self._taken.pop(connection, None)

    def _make_room(self) -> bool:
        now = self.clock.seconds()
        for _ in range(min(len(self._heard), 64)):  # those under way go to the back; a few looked at, at most
            connection, heard = next(iter(self._heard.items()))
            if now - heard < MAKE_ROOM_AFTER:
                return False  # the most silent one is not silent enough: none is
            if connection.between_requests():
                self.leave(connection)
                connection.give_way()
                return True
            if self._stopped_reading(connection):
                self.leave(connection)
                self.log.info("the port is full: cut off {peer}, which took nothing of its answer for"
                              " {seconds:.0f} s", peer=peer(connection.transport.getPeer()), seconds=STOPPED_AFTER)
                cut_off(connection.transport)
                return True
            self.heard(connection)  # a long request, answered slowly: not idle
        return False

    def _stopped_reading(self, connection: Capped) -> bool:
        """Whether ``connection``'s client took no byte of its answer, whose
        bytes waited in its socket, over looks STOPPED_AFTER apart at least."""
        if not connection.answers_a_client() or not is_plain_tcp(connection.transport):
            return False  # (the bytes of TLS cannot be told apart here: its stall timeout ends it)
        counts = taken(connection.transport.getHandle())
        if counts is None or counts[1] == 0:  # nothing waits for the client: it is not holding anything up
            self._taken.pop(connection, None)
            return False
        acknowledged, now = counts[0], self.clock.seconds()
        before, since = self._taken.get(connection, (None, now))
        if before != acknowledged:
            self._taken[connection] = (acknowledged, now)
            return False
        return now - since >= STOPPED_AFTER


def peer(address: Any) -> str:
    """An address as logs and events show it: ``host:port`` (a Unix socket's path, or what str gives)."""
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    if host is None or port is None:
        name = getattr(address, "name", None)
        return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name or address)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def cut_off(transport: Any) -> None:
    """Closes a plain TCP connection at once, whoever else writes into its
    socket meanwhile (a storage server it was handed to, deposito.splice.handoff)."""
    try:
        transport.getHandle().shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    transport.abortConnection()


def http_busy(content_type: str, body: bytes) -> bytes:
    """The whole HTTP answer of a port past its cap: 503, try again in a second."""
    return http_whole("503 Service Unavailable", content_type, body, "Retry-After: 1")


def http_whole(status: str, content_type: str, body: bytes, *headers: str) -> bytes:
    """A whole HTTP answer, sent as the connection closes: ``status`` is its code and reason."""
    head = "".join(f"{h}\r\n" for h in headers)
    return (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n{head}"
            "Connection: close\r\n\r\n").encode("ascii") + body
