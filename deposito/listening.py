"""A port the process serves on, or else the process ends: a proxy or server
that cannot listen where it was told to (the port taken, say) must not go
on running without it, looking up but out of reach."""

from __future__ import annotations

import os
import signal
from typing import Any, Optional

import attrs
from twisted.application import service
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IReactorCore, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure


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


@attrs.define
class ConnectionCap:
    """At most ``most`` connections open at once on one port: past it, a
    client is told to come back later (how, each port says)."""

    most: int
    open: int = 0

    def enter(self) -> bool:
        """A connection opens: False when it is one too many (it is not counted)."""
        if self.open >= self.most:
            return False
        self.open += 1
        return True

    def leave(self) -> None:
        self.open -= 1


def http_busy(content_type: str, body: bytes) -> bytes:
    """The whole HTTP answer of a port past its cap: 503, try again in a second."""
    return (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}"
            "\r\nRetry-After: 1\r\nConnection: close\r\n\r\n").encode("ascii") + body
