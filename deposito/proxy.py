"""The proxy service: the catalog, the roster, and the client, cluster and HTTP ports."""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.internet import task
from twisted.internet.defer import ensureDeferred
from twisted.logger import Logger, globalLogPublisher
from twisted.python.failure import Failure

from deposito.catalog import Catalog, CatalogThread, backend_for
from deposito.catalog.schema import NewerSchema
from deposito.depot import Depot
from deposito.events import EventLog, MeteredDepot, Metrics
from deposito.listening import Listening, end_process
from deposito.protocols.cluster import HEARTBEAT, MemberFactory
from deposito.protocols.text import DepotFactory
from deposito.roster import Roster
from deposito.web import status_site


class ProxyService(service.MultiService):
    log = Logger()

    def __init__(self, reactor: Any, data: str, client_endpoint: Any, cluster_endpoint: Any,
                 replicas: int, dead_after: float = 300.0, heartbeat: float = HEARTBEAT,
                 http_endpoint: Any = None, tokens: Any = None, max_size: int | None = None,
                 secret: bytes | None = None, rebuild: bool = False, collect_rate: float = 1000.0,
                 catalog: str = "sqlite:", lease: float = 30.0, s3_endpoint: Any = None,
                 s3_keys: Any = None, upload_expiry: float = 7 * 86400.0, s3_domain: str | None = None) -> None:
        super().__init__()
        self.reactor = reactor
        self.data = data
        self.catalog_url = catalog
        self.db = CatalogThread(reactor, Catalog(backend_for(catalog, data), among_proxies=True, clock=reactor.seconds))
        self.roster = Roster(reactor, dead_after=dead_after)
        self.secret = secret
        self.depot = Depot(reactor, self.db, self.roster, default_replicas=replicas, secret=secret,
                           rebuild=rebuild, collect_rate=collect_rate, lease=lease, upload_expiry=upload_expiry)
        self._deaths = task.LoopingCall(self.roster.check)
        self._deaths.clock = reactor
        self.events = EventLog()
        self.metrics = Metrics()
        self.events.listeners.append(self.metrics.event)
        front = MeteredDepot(self.depot, self.metrics, reactor)
        Listening(reactor, client_endpoint, DepotFactory(front, tokens=tokens, max_size=max_size, clock=reactor),
                  "the client port (--port)").setServiceParent(self)
        members = MemberFactory(self.roster, heartbeat, secret, full_listing=lambda: self.depot.rebuilding,
                                catalog_id=lambda: self.depot.catalog_id, takes_in=self.depot.rebuilder.takes_in)
        Listening(reactor, cluster_endpoint, members, "the cluster port (--cluster-port)").setServiceParent(self)
        if http_endpoint is not None:
            downloads = MeteredDepot(self.depot, self.metrics, reactor, via="http")
            site = status_site(downloads, self.events, self.metrics, reactor, tokens)
            Listening(reactor, http_endpoint, site, "the HTTP port (--http)").setServiceParent(self)
        if s3_endpoint is not None:
            from deposito.s3.gateway import s3_site  # only when asked for: it weighs about 10 MiB

            objects = MeteredDepot(self.depot, self.metrics, reactor, via="s3")
            Listening(reactor, s3_endpoint, s3_site(objects, s3_keys, reactor, max_size, s3_domain),
                      "the S3 port (--s3)").setServiceParent(self)

    def startService(self) -> None:
        globalLogPublisher.addObserver(self.events)
        self.db.start()
        ensureDeferred(self.depot.start()).addErrback(self._not_started)
        if self.db.catalog.backend.shared:
            self.log.info("proxy catalog in PostgreSQL at {url}", url=_without_password(self.catalog_url))
        else:
            self.log.info("proxy catalog in {data}", data=self.data)
        if self.secret is None:
            self.log.warn("no --secret: any process that reaches the cluster port can join as a storage server")
        self._deaths.start(min(1.0, self.roster.dead_after / 4), now=False)
        super().startService()

    def _not_started(self, failure: Failure) -> None:
        if failure.check(NewerSchema):  # (a SQLite catalog is opened before: see proxy_tap)
            self.log.critical("{why}; stopping", why=failure.getErrorMessage())
            end_process(self.reactor)
        else:
            self.log.failure("starting the depot", failure)

    async def _stop(self) -> None:
        await super().stopService()
        if self._deaths.running:
            self._deaths.stop()
        await self.depot.stop()
        self.db.stop()
        globalLogPublisher.removeObserver(self.events)

    def stopService(self) -> Any:
        return ensureDeferred(self._stop())


def _without_password(url: str) -> str:
    """A URL to log: its password, if any, left out."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))
