"""The storage server: one device's blobs, served on its own port, joined to a proxy."""

from __future__ import annotations

import os
import secrets
import socket
import uuid
from typing import Any, Sequence, Union, cast

from twisted.application import service
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.logger import ILogObserver, Logger, globalLogPublisher
from zope.interface import implementer, provider
from twisted.python.failure import Failure

from twisted.internet import defer, task

from deposito.blobmeta import Corrupt
from deposito.blobstore import BlobStore, Stopped
from deposito.device import Device
from deposito.listening import end_process
from deposito.errors import NotFound
from deposito.interfaces import IDevice
from deposito.protocols.blobserver import BlobServerFactory
from deposito.protocols.cluster import JoinProtocol, check_label
from deposito.protocols.handoff import LocalBlobServerFactory
from deposito.servedcatalog import ServedCatalog, Verdict, judge


JOIN_RETRY = 2.0  # seconds between tries to join a proxy, at most


def node_id(data: str, name: str | None) -> str:
    """The server's stable id: given, or made once and kept in ``data``."""
    path = os.path.join(data, "node-id")
    if name:
        return check_label(name, "--name")
    try:
        with open(path) as f:
            return f.read().strip()
    except FileNotFoundError:
        made = "s-" + uuid.uuid4().hex[:10]
        os.makedirs(data, exist_ok=True)
        with open(path + ".tmp", "w") as f:
            f.write(made + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(path + ".tmp", path)
        return made


INVENTORY_CHUNK = 1000  # blobs per chunk of a listing or a scrub


class StorageNode:
    """What this server tells each proxy it joined: usage, inventory, corrupt
    copies, scrubs. Every join connection is served on its own (its own
    listing, paced by its own proxy), so a slow or gone proxy holds up no
    other. Only proxies of one catalog are served (deposito.servedcatalog)."""

    log = Logger()

    def __init__(self, device: IDevice, id: str, zone: str, host: str | None,
                 capacity: int | None, served: ServedCatalog) -> None:
        self.device = device
        self.served = served
        self.id = id
        self.zone = zone
        self.host = host
        self.port = 0
        self.local: tuple[str, str] | None = None  # the local port's "@name" and key, once listening
        self.configured_capacity = capacity
        self._no_room: str | None = None  # why --data could not be looked at, while it cannot
        self.connections: list[JoinProtocol] = []  # those a proxy welcomed, in the order they joined
        self.scrubbing: defer.Deferred | None = None
        self._listing: set[JoinProtocol] = set()  # connections with a listing under way
        self._list_again: set[JoinProtocol] = set()
        self.refresh_capacity()
        device.corrupt_listeners.append(self._report_corrupt)

    def serving(self) -> str | None:
        return self.served.id

    def welcome(self, connection: JoinProtocol) -> str | None:
        """Serve the proxy that welcomed us if its catalog is the one served
        (recording it first when this server serves none yet, or when the
        proxy rebuilds a lost catalog and no proxy of ours is joined); else
        say why not."""
        recorded, offered = self.served.id, connection.catalog
        joined = recorded is not None and any(c.catalog == recorded for c in self.connections)
        verdict = judge(recorded, offered, connection.full_listing, joined)
        if verdict is Verdict.REFUSE:
            return (f"it serves catalog {offered} and this server serves catalog {recorded}"
                    f" ({self.served.path}); a server serves one catalog, or each would delete"
                    f" the other's files as garbage")
        if verdict is Verdict.RECORD:
            assert offered is not None  # a proxy that names no catalog is served, never recorded
            try:
                self.served.record(offered)
            except OSError as e:
                return f"cannot record its catalog {offered} in {self.served.path}: {e}"
            if recorded is None:
                self.log.info("serving catalog {catalog}, as the proxy at {proxy} does", catalog=offered,
                              proxy=connection.proxy_address())
            else:
                self.log.warn("serving catalog {catalog} instead of {old}: the proxy at {proxy} takes in"
                              " this server's blobs (rebuilding from lost catalogs) and no proxy of {old}"
                              " is joined", catalog=offered, old=recorded, proxy=connection.proxy_address())
        return None

    def joined(self, connection: JoinProtocol) -> None:
        self.connections.append(connection)
        self._send_inventory(connection)

    def left(self, connection: JoinProtocol) -> None:
        if connection in self.connections:
            self.connections.remove(connection)
        self._list_again.discard(connection)

    def send_inventory(self) -> None:
        """List every blob to every proxy joined."""
        for connection in list(self.connections):
            self._send_inventory(connection)

    def _send_inventory(self, connection: JoinProtocol) -> None:
        """List every blob to one proxy; asked while a listing to it is under
        way, list again once that one is done (one listing at a time each)."""
        if connection in self._listing:
            self._list_again.add(connection)
            return
        self._listing.add(connection)
        listing = defer.ensureDeferred(self._list(connection))
        listing.addErrback(lambda f: self.log.failure("listing blobs", f))
        listing.addBoth(self._listed, connection)

    def _listed(self, _: object, connection: JoinProtocol) -> None:
        self._listing.discard(connection)
        if connection in self._list_again:
            self._list_again.discard(connection)
            if connection in self.connections:
                self._send_inventory(connection)

    async def _list(self, connection: JoinProtocol) -> None:
        """Chunks read from the disk while the one before goes out, each sent
        once the connection has taken the last."""
        connection.send_listing()
        cursor = self.device.inventory(INVENTORY_CHUNK, ids_only=not connection.full_listing)
        reading = cursor.next()
        more = True
        while more:
            entries, more = await reading
            if connection.lost:
                return
            if more:
                reading = cursor.next()
            await connection.send_inventory(entries, more)
            if connection.lost:
                if more:
                    await reading  # the reader thread is done with the cursor
                return

    def _report_corrupt(self, blob: str, why: str) -> None:
        for connection in self.connections:
            connection.send_bad(blob, why)

    def scrub(self) -> defer.Deferred:
        """Re-read every blob against its checksums; report to every proxy, then list again to each."""
        if self.scrubbing is None:
            self.scrubbing = defer.ensureDeferred(self._scrub())
            self.scrubbing.addErrback(lambda f: self.log.failure("scrubbing", f))
            self.scrubbing.addBoth(lambda _: setattr(self, "scrubbing", None))
        return self.scrubbing

    async def _scrub(self) -> None:
        checked = bad = 0
        cursor = self.device.inventory(INVENTORY_CHUNK, ids_only=True)  # a blob whose metadata is lost too
        more = True
        while more:
            entries, more = await cursor.next()
            for blob in entries:
                assert isinstance(blob, str)
                try:
                    await self.device.check(blob)
                    checked += 1
                except Corrupt as e:
                    bad += 1
                    await self.device.corrupt(blob, str(e))
                except NotFound:
                    pass  # deleted meanwhile
                except Stopped:
                    return  # the server is stopping
                except OSError as e:  # not the blob's fault (too many open files, say): the others are checked
                    self.log.warn("scrub: cannot check blob {blob} now: {why}", blob=blob, why=e)
        await self.device.sweep()
        self.log.info("scrub done: {checked} blobs good, {bad} corrupt", checked=checked, bad=bad)
        self.send_inventory()

    def refresh_capacity(self) -> None:
        """Capacity is the configured bound, never more than the disk can still take.
        A --data directory that cannot be looked at (removed, say) has no
        room: the proxies place nothing here meanwhile, and the server goes
        on answering them."""
        try:
            disk = self.device.room()
        except OSError as e:
            gone, self._no_room, disk = self._no_room is None, str(e), 0
            if gone:
                self.log.critical("cannot look at --data ({why}): no new copies come here until it is back",
                                  why=e)
                self.send_inventory()  # what it held is out of reach: said now, not at the next scrub
        else:
            if self._no_room is not None:
                self.log.info("--data can be looked at again")
                self._no_room = None
                self.send_inventory()  # its copies count again
        if self.device.cannot_write():
            disk = 0  # said by the device
        limit = disk if self.configured_capacity is None else min(self.configured_capacity, disk)
        self.device.capacity = limit

    def usage(self) -> tuple[int, int, int]:
        self.refresh_capacity()
        return self.device.capacity, self.device.used, self.device.count


class _JoinFactory(Factory):
    noisy = False  # it starts and stops with each try to join

    def __init__(self, node: StorageNode, clock: IReactorTime, secret: bytes | None) -> None:
        self.node, self.clock, self.secret = node, clock, secret
        self.said: set[str] = set()  # refusals said since this server last joined (see JoinProtocol)

    def buildProtocol(self, addr: IAddress | None) -> JoinProtocol:
        p = JoinProtocol(self.node, self.clock, self.secret)
        p.factory = self
        return p


@implementer(IStreamClientEndpoint)
class Reaching:
    """A proxy's endpoint that says in the log when the proxy cannot be
    reached, once until it can be again, and then says that."""

    log = Logger()

    def __init__(self, endpoint: IStreamClientEndpoint, address: str) -> None:
        self.endpoint = endpoint
        self.address = address
        self.down = False

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        return self.endpoint.connect(factory).addCallbacks(self._reached, self._failed)

    def _reached(self, protocol: IProtocol) -> IProtocol:
        if self.down:
            self.down = False
            self.log.info("the proxy at {proxy} can be reached again", proxy=self.address)
        return protocol

    def _failed(self, failure: Failure) -> Failure:
        if not self.down:
            self.down = True
            self.log.warn("cannot reach the proxy at {proxy} ({why}); trying again every {every:.0f} s",
                          proxy=self.address, why=failure.getErrorMessage(), every=JOIN_RETRY)
        return failure


@provider(ILogObserver)
def _quiet(event: dict[str, Any]) -> None:
    """Twisted's reconnecting client's log, less its line for each try (see Reaching)."""
    if not str(event.get("log_format", "")).startswith("Scheduling retry"):
        globalLogPublisher(event)


class _Joiner(ClientService):
    _log = Logger(namespace="deposito.storage.join", observer=_quiet)


class StorageService(service.MultiService):
    """Listens for blob traffic, then joins every proxy and keeps rejoining
    each: one reconnecting client per proxy, so each proxy sees this server
    up or down by its own connection alone."""

    log = Logger()

    def __init__(self, reactor: Any, data: str, listen: IStreamServerEndpoint,
                 proxies: IStreamClientEndpoint | Sequence[IStreamClientEndpoint], name: str | None,
                 zone: str | None, capacity: int | None, scrub_every: float = 86400.0,
                 secret: bytes | None = None, handoff: bool = True) -> None:
        super().__init__()
        self.reactor = reactor
        self.data = data
        self.listen_endpoint = listen
        self.proxy_endpoints = list(proxies) if isinstance(proxies, Sequence) else [proxies]
        self.name = name
        self.zone = zone or check_label(socket.gethostname()[:64], "host name as zone")
        self.capacity = capacity
        self.scrub_every = scrub_every
        self.secret = secret
        self.handoff = handoff
        self._scrubber: task.LoopingCall | None = None
        self.port: IListeningPort | None = None
        self.local_port: IListeningPort | None = None
        self.node: StorageNode | None = None

    def startService(self) -> None:
        store = BlobStore(self.data)
        device = Device(self.reactor, store, 0)
        device.start()
        self.node = StorageNode(device, node_id(self.data, self.name), self.zone, None, self.capacity,
                                ServedCatalog(self.data))
        self.log.info("storage server {id} holds {n} blobs ({used} bytes) in {data}",
                      id=self.node.id, n=store.count, used=store.used, data=store.root)
        super().startService()
        if self.handoff:
            self._listen_locally(device)
        d = self.listen_endpoint.listen(BlobServerFactory(self.reactor, device, self.secret))
        d.addCallback(self._listening)
        d.addErrback(self._listen_failed)

    def _listening(self, port: IListeningPort) -> None:
        assert self.node is not None  # made in startService
        self.port = port
        # a TCP port: the proxy is told host:port
        address = cast(Union[IPv4Address, IPv6Address], port.getHost())
        self.node.port = address.port
        if getattr(address, "host", "") not in ("0.0.0.0", "::", ""):
            self.node.host = address.host
        self.log.info("serving blobs on {host}:{port}", host=address.host, port=address.port)
        for proxy in self.proxy_endpoints:
            joiner = _Joiner(proxy, _JoinFactory(self.node, self.reactor, self.secret),
                             retryPolicy=backoffPolicy(initialDelay=0.2, maxDelay=JOIN_RETRY, factor=1.5),
                             clock=self.reactor)
            joiner.setServiceParent(self)
        self._scrubber = task.LoopingCall(self.node.scrub)
        self._scrubber.clock = self.reactor
        self._scrubber.start(self.scrub_every, now=False)

    def _listen_locally(self, device: IDevice) -> None:
        """The local port, where a proxy on this host passes a GET's socket
        for this server to write into (deposito.protocols.handoff): an
        abstract Unix socket, so nothing is left behind on disk."""
        assert self.node is not None  # made in startService
        name, key = f"@deposito-server/{self.node.id}/{secrets.token_hex(8)}", secrets.token_hex(16)
        try:
            self.local_port = self.reactor.listenUNIX(
                "\0" + name[1:], LocalBlobServerFactory(self.reactor, device, self.secret, key))
        except Exception as e:  # no abstract Unix sockets here: GETs go through the proxy
            self.log.info("no local port ({why}): every byte read goes through the proxy", why=str(e))
            return
        self.node.local = (name, key)

    def _listen_failed(self, failure: Failure) -> None:
        self.log.critical("cannot listen for blob traffic (--port): {why}; stopping", why=failure.getErrorMessage())
        end_process(self.reactor)

    def stopService(self) -> defer.Deferred[None] | None:
        d = super().stopService()
        if self._scrubber is not None and self._scrubber.running:
            self._scrubber.stop()
        for port in (self.port, self.local_port):
            if port is not None:
                port.stopListening()
        if self.node is not None:
            self.node.device.stop()
        return d
