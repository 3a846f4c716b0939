"""Peers for in-process tests: client sockets against a port with a
connection cap (deposito.listening.ConnectionCap), and connections of a
factory's protocol on a StringTransport."""

from __future__ import annotations

import socket
from typing import Any, Iterable

from twisted.internet import defer, reactor, task
from twisted.internet.testing import StringTransport


def read_to_end(peer: socket.socket) -> int:
    """How many bytes come before ``peer`` is closed or reset."""
    got = 0
    try:
        while chunk := peer.recv(65536):
            got += len(chunk)
    except ConnectionResetError:
        pass
    return got


@defer.inlineCallbacks
def let_go(peers: Iterable[socket.socket], cap: Any, port: Any) -> Any:
    """Close ``peers``, wait (5 s at most) until the port counts none of them, and stop listening."""
    for peer in peers:
        peer.close()
    for _ in range(500):
        if cap.open == 0:
            break
        yield task.deferLater(reactor, 0.01, lambda: None)
    yield port.stopListening()


def on_string_transport(factory: Any, clock: task.Clock) -> tuple[Any, StringTransport]:
    """A connection of ``factory``'s protocol, its timeouts on ``clock``: (protocol, transport)."""
    proto = factory.buildProtocol(None)
    proto.callLater = clock.callLater
    tr = StringTransport()
    proto.makeConnection(tr)
    return proto, tr
