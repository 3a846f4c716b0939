"""Connections from the proxy to storage servers, kept open between transfers.

A connection that finished its request cleanly (reply read, body consumed,
no producer left on it) goes back to the pool and serves the next transfer to
the same server; anything else is closed. Idle connections are closed well
before the servers' own idle timeout.
"""

from __future__ import annotations

import weakref
from typing import Any, Union, cast

from twisted.internet import error, task
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint, UNIXClientEndpoint
from twisted.internet.interfaces import IAddress, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from deposito.protocols.blobclient import BlobClient
from deposito.roster import Member
from deposito.splice.sockets import same_user
from deposito.twisted_internals import IStreamReactor

# Connections are pooled by where they go: a server's (host, port), or
# ("local", server id, path) for its local port (see connect_local).
PoolKey = Union[tuple[str, int], tuple[str, str, str]]

def client_endpoint(reactor: Any, host: str, port: int, timeout: float) -> IStreamClientEndpoint:
    """An endpoint to a storage server; IP literals skip the resolver thread.
    ``reactor``: one that does TCP and name resolution."""
    if isIPAddress(host):
        return TCP4ClientEndpoint(reactor, host, port, timeout=timeout)
    if isIPv6Address(host):
        return TCP6ClientEndpoint(reactor, host, port, timeout=timeout)
    return HostnameEndpoint(reactor, host, port, timeout=timeout)


class _BlobClients(Factory):
    noisy = False  # connections come and go with transfers: no log line for each

    def __init__(self, reactor: IStreamReactor, secret: bytes | None) -> None:
        self.reactor = reactor
        self.secret = secret

    def buildProtocol(self, addr: IAddress | None) -> BlobClient:
        return BlobClient(self.reactor, self.secret)


class BlobPool:
    log = Logger()

    let_go_grace = 2.0  # a down server's time to show it let go of a reader's socket (it died)

    def __init__(self, reactor: Any, connect_timeout: float = 5.0, per_server: int = 64,
                 idle_seconds: float = 10.0, secret: bytes | None = None) -> None:
        self.reactor = reactor
        self.secret = secret
        self.connect_timeout = connect_timeout
        self.per_server = per_server
        self.idle_seconds = idle_seconds
        self._idle: dict[PoolKey, list[tuple[BlobClient, float]]] = {}
        self._open: dict[PoolKey, weakref.WeakSet[BlobClient]] = {}
        self._keys: weakref.WeakKeyDictionary[BlobClient, PoolKey] = weakref.WeakKeyDictionary()
        self._sweeper = task.LoopingCall(self.sweep)
        self._sweeper.clock = reactor

    def start(self) -> None:
        self._sweeper.start(self.idle_seconds, now=False)

    def stop(self) -> None:
        if self._sweeper.running:
            self._sweeper.stop()
        self.sweep(everything=True)

    def idle(self, member: Member) -> BlobClient | None:
        """An idle connection to ``member``, if one is open."""
        return self._take_idle((member.host, member.port))

    def _take_idle(self, key: PoolKey) -> BlobClient | None:
        idle = self._idle.get(key)
        while idle:
            client, _ = idle.pop()
            if client.reusable:
                return client
            client.transport.loseConnection()
        return None

    async def connect(self, member: Member) -> BlobClient:
        """An idle connection to ``member``, or a new one."""
        client = self.idle(member)
        if client is not None:
            return client
        key: PoolKey = (member.host, member.port)
        endpoint = client_endpoint(self.reactor, member.host, member.port, self.connect_timeout)
        client = cast(BlobClient, await endpoint.connect(_BlobClients(self.reactor, self.secret)))
        self._keys[client] = key
        self._open.setdefault(key, weakref.WeakSet()).add(client)
        return await client.ready

    async def connect_local(self, member: Member) -> BlobClient | None:
        """An idle or new connection to the local port of ``member`` (see
        deposito.protocols.handoff), or None when that server is not on this
        host (it is not tried again until it joins again) or not run by this
        user (or root)."""
        if member.local is None:
            return None
        key: PoolKey = ("local", member.id, member.local)
        client = self._take_idle(key)
        if client is not None:
            return client
        endpoint = UNIXClientEndpoint(self.reactor, "\0" + member.local[1:], timeout=self.connect_timeout)
        try:
            client = cast(BlobClient, await endpoint.connect(_BlobClients(self.reactor, self.secret)))
        except error.ConnectionRefusedError as e:  # no such port on this host
            self.log.info("storage server {id} is not on this host ({why}): its bytes go through the proxy",
                          id=member.id, why=str(e))
            member.local = None
            return None
        self._keys[client] = key
        self._open.setdefault(key, weakref.WeakSet()).add(client)  # cut with the rest if it goes down
        if not same_user(client.transport):
            self.log.warn("the local port of storage server {id} is held by another user: not used", id=member.id)
        else:
            await client.ready
            if await client.key() == member.local_key:
                if len(self._open[key]) == 1:
                    self.log.info("storage server {id} is on this host: it writes GETs into readers' sockets"
                                  " itself", id=member.id)
                return client
            self.log.warn("the local port of storage server {id} answers with another key: not used",
                          id=member.id)
        client.transport.loseConnection()
        member.local = None
        return None

    def abort(self, member: Member) -> None:
        """The server is down: cut every connection to it, busy or idle, so no
        transfer waits on a server that stopped answering. One over which it
        holds a reader's socket is cut after ``let_go_grace`` seconds unless
        the server closes it first (see BlobClient.cut)."""
        keys = [k for k in self._open if k == (member.host, member.port) or k[:2] == ("local", member.id)]
        for key in keys:
            self._idle.pop(key, None)
            for client in list(self._open.pop(key, ())):
                if client.transport is not None and client.transport.connected:
                    client.cut(self.reactor, self.let_go_grace)

    def release(self, client: BlobClient) -> None:
        """A transfer is done with ``client``: keep it if it is clean, else close
        it (one this pool did not open is closed: nothing would take it again)."""
        key = self._keys.get(client)
        idle = self._idle.setdefault(key, []) if key is not None else None
        if idle is not None and client.reusable and len(idle) < self.per_server and self._sweeper.running:
            client.transport.resumeProducing()  # a consumer may have paused it last
            idle.append((client, self.reactor.seconds()))
        elif client.transport.connected:
            client.transport.loseConnection()

    def sweep(self, everything: bool = False) -> None:
        """Close connections idle too long (all of them when ``everything``)."""
        now = self.reactor.seconds()
        for key, idle in list(self._idle.items()):
            keep = []
            for client, since in idle:
                if not everything and client.reusable and now - since < self.idle_seconds:
                    keep.append((client, since))
                elif client.transport.connected:
                    client.transport.loseConnection()
            self._idle[key] = keep

    def idle_count(self) -> int:
        return sum(len(v) for v in self._idle.values())
