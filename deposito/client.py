"""The Twisted client of the text protocol.

``connect(reactor, "tcp:127.0.0.1:7000")`` gives a :class:`DepositoClient`
whose methods return Deferreds. Requests on one connection are answered in
the order they were made; file bytes stream through fixed-size chunks in both
directions, so memory stays bounded whatever the file size.

Failures arrive as exceptions:

- an ``ERR <code>`` reply: the :mod:`deposito.errors` class for that code
  (:class:`~deposito.errors.NotFound`, :class:`~deposito.errors.Unavailable`, ...);
- the connection closed or broke before a reply was complete:
  :class:`ConnectionLost`, which is both a ``DepositoError`` and a
  ``ConnectionError`` (an ``OSError``); every request still waiting fails
  with it, and so does every later request on that client (but a
  connection the proxy closed while no request was under way, as its idle
  timeout does, is opened again for the next request);
- a reply the client cannot read: :class:`ProtocolError` (the connection is
  then closed, since what follows cannot be trusted);
- bytes whose sha256 differs from the one the proxy announced:
  :class:`ChecksumMismatch` (a GET's destination is then not to be trusted).

Connecting itself fails with Twisted's ``twisted.internet.error.ConnectError``
family (for example ``ConnectionRefusedError``).

Given several proxies, the client fails over by the rules of
:mod:`deposito.blocking`: a request not yet sent when its proxy is lost goes
to the next one; a read already sent is made again there (a GET only into a
path, or into a sink that received nothing yet); a PUT, DELETE or REPLICAS
already sent fails with :class:`OutcomeUnknown` and is not sent again.
If no proxy answers: :class:`~deposito.proxies.ProxiesUnreachable`.

The errors and reply values are those of :mod:`deposito.wire`, which the
blocking client (:mod:`deposito.blocking`) shares; they are named here too,
where users import them. Importing this module does not install a reactor.
"""

from __future__ import annotations

import builtins
import os
from typing import Any, Callable, Optional, Sequence, Union, cast

from attrs import define
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, clientFromString
from twisted.internet.interfaces import IConsumer, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure

from deposito.errors import Denied, DepositoError
from deposito.localfile import AsideFile, Sink, Source, open_source
from deposito.protocols.text_client import DepositoClientProtocol, Get, MultiLine, OneLine, Put, Quit, Request
from deposito.protocols.words import check_name
from deposito.proxies import ProxiesUnreachable, after, parse_address, reason, split_list
from deposito.wire import (
    CHUNK_SIZE,
    PAGE_SIZE,
    ChecksumMismatch,
    ConnectionLost,
    Download,
    Entry,
    OutcomeUnknown,
    Progress,
    ProtocolError,
    ReplicaCount,
    Server,
    Stat,
    Status,
    Stored,
    auth_line,
    check_reply,
    list_line,
    name_line,
    parse_deleted,
    parse_entry,
    parse_replicas,
    parse_server,
    parse_stat,
    parse_status,
    put_line,
    replicas_line,
)

__all__ = [
    "CHUNK_SIZE", "PAGE_SIZE", "ChecksumMismatch", "ConnectionLost", "DepositoClient", "DepositoClientProtocol",
    "Download", "Entry", "OutcomeUnknown", "ProtocolError", "ProxiesUnreachable", "ReplicaCount", "Server",
    "Stat", "Status", "Stored", "connect",
]

Endpoint = Union[str, IStreamClientEndpoint]
GREETING_TIMEOUT = 10.0  # seconds a proxy that accepted may take to greet before the next one is tried


@define
class FrontDoors:
    """The proxies a client may use, in order, and the token each new
    connection presents; ``at`` is the place of the one in use; ``clock``
    times each greeting (a proxy that accepts and is hung is given up)."""

    names: list[str]
    endpoints: list[IStreamClientEndpoint]
    token: Optional[str] = None
    at: int = 0
    clock: Any = None

    async def open(self, order: Sequence[int], failures: list[tuple[str, str]]) -> DepositoClientProtocol:
        """A greeted (and authenticated) connection to the first proxy in
        ``order`` that answers. A refused token is final, since every proxy
        holds the same tokens; with a single proxy, so is any failure."""
        for at in order:
            try:
                connected = await self.endpoints[at].connect(Factory.forProtocol(DepositoClientProtocol))
                protocol = cast(DepositoClientProtocol, connected)
            except Exception as e:
                if len(self.endpoints) == 1:
                    raise
                failures.append((self.names[at], reason(e)))
                continue
            hung = self.clock.callLater(GREETING_TIMEOUT, protocol.abandon) if self.clock is not None else None
            try:
                try:
                    await protocol.greeted
                finally:
                    if hung is not None and hung.active():
                        hung.cancel()
                if self.token is not None:
                    await protocol.request(OneLine(auth_line(self.token), check_reply))
            except Exception as e:
                protocol.abandon()
                await protocol.whenClosed()
                if len(self.endpoints) == 1 or isinstance(e, Denied):
                    raise
                failures.append((self.names[at], reason(e)))
                continue
            self.at = at
            return protocol
        raise ProxiesUnreachable(failures)


def _endpoint(reactor: Any, endpoint: Endpoint) -> tuple[str, IStreamClientEndpoint]:
    """An endpoint string (``tcp:HOST:PORT``, ``unix:PATH``...) or, as the
    command line writes it, ``HOST:PORT``; or an endpoint object."""
    if not isinstance(endpoint, str):
        return repr(endpoint), endpoint
    try:
        host, port = parse_address(endpoint)
    except ValueError:  # tcp:HOST:PORT and the like
        return endpoint, clientFromString(reactor, endpoint)
    return endpoint, HostnameEndpoint(reactor, host, port)


def _anytime(request: Request) -> bool:
    return True


class DepositoClient:
    """A connected client; every method returns a Deferred of the parsed reply.

    Names are quoted on the wire as the protocol says; an invalid name fails
    with BadArgs before anything is sent.
    """

    def __init__(self, protocol: DepositoClientProtocol, doors: Optional[FrontDoors] = None) -> None:
        self.protocol = protocol
        self.doors = doors
        self._closed = False
        self._waiting: list[defer.Deferred[DepositoClientProtocol]] = []

    @property
    def greeting(self) -> Optional[str]:
        """The proxy's greeting line (``OK deposito <version> ready``)."""
        return self.protocol.greeting

    def _several(self) -> bool:
        return self.doors is not None and len(self.doors.endpoints) > 1

    def _ready(self, tried: set[int], failures: list[tuple[str, str]]) -> defer.Deferred[DepositoClientProtocol]:
        """The connection for the next request: the one in use while it
        lasts, else one to the next proxy that answers (requests waiting
        meanwhile go there in the order they were made)."""
        if self._closed or self.protocol.usable or self.doors is None:
            return defer.succeed(self.protocol)
        if not self.protocol.lost and self.protocol.cutting:  # a GET cut off unread: closed on the next turn
            return self.protocol.whenClosed().addCallback(lambda _: self._ready(tried, failures))
        if not self._several() and not self.protocol.lost_idle:  # lost mid-request: the client is closed
            return defer.succeed(self.protocol)
        waiter: defer.Deferred[DepositoClientProtocol] = defer.Deferred()
        self._waiting.append(waiter)
        if len(self._waiting) == 1:
            if self._several():  # (a request lost on this proxy put it in tried)
                order = [at for at in after(self.doors.at, len(self.doors.endpoints)) if at not in tried]
            else:  # the one proxy closed it while idle: opened again
                order = [self.doors.at]
            defer.ensureDeferred(self.doors.open(order, failures)).addBoth(self._switched)
        return waiter

    def _switched(self, result: Union[DepositoClientProtocol, Failure]) -> None:
        if not isinstance(result, Failure):
            if self._closed:
                result.abandon()
            self.protocol = result
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    def _request(self, command: str, make: Callable[[], Request],
                 retry: Optional[Callable[[Request], bool]] = None) -> defer.Deferred[Any]:
        """Make a request as the failover rules say. ``retry`` is given for
        reads: asked once a read was cut off after it was sent, it says
        whether it may be made again on another proxy (and gets ready for
        it). A write cut off after it was sent fails with OutcomeUnknown."""
        return defer.ensureDeferred(self._attempt(command, make, retry))

    async def _attempt(self, command: str, make: Callable[[], Request],
                       retry: Optional[Callable[[Request], bool]]) -> Any:
        tried: set[int] = set()
        failures: list[tuple[str, str]] = []
        while True:
            protocol = await self._ready(tried, failures)
            request = make()
            try:
                return await protocol.request(request)
            except ConnectionLost as e:
                sent = request.protocol is not None
                if sent and retry is None:
                    raise OutcomeUnknown.after(e, command) from None
                if not self._several() or self._closed or (sent and retry is not None and not retry(request)):
                    raise
                assert self.doors is not None
                tried.add(self.doors.at)
                failures.append((self.doors.names[self.doors.at], e.message))

    def _one(self, command: str, line: str, parse: Callable[[str], Any], read: bool = True) -> defer.Deferred[Any]:
        return self._request(command, lambda: OneLine(line, parse), _anytime if read else None)

    def put(self, name: str, source: Source, replicas: Optional[int] = None,
            progress: Optional[Progress] = None, size: Optional[int] = None) -> defer.Deferred[Stored]:
        """Store ``source`` under ``name``; fires with :class:`Stored` once the proxy committed it.

        ``source`` is a path or a binary file object, read from its current
        position in chunks of CHUNK_SIZE bytes; a file that cannot seek needs
        ``size``. A path is opened and closed here; a file object is left open.
        ``replicas`` defaults to the proxy's count. The sha256 the proxy
        reports is checked against the bytes sent (ChecksumMismatch).
        If the upload breaks half way the connection is closed, since the
        proxy can no longer tell where the bytes end; if it breaks after the
        request was sent, OutcomeUnknown (it is not sent again).
        """
        try:
            file, length, close = open_source(source, size)
        except Exception:
            return defer.fail()
        try:
            line = put_line(name, length, replicas)
        except DepositoError:
            if close:
                file.close()
            return defer.fail()
        d = self._request("PUT", lambda: Put(line, file, length, False, progress))
        if close:
            def closed(result: Any) -> Any:
                file.close()
                return result
            d.addBoth(closed)
        return d

    def get(self, name: str, sink: Union[IConsumer, Sink],
            progress: Optional[Progress] = None) -> defer.Deferred[Download]:
        """Write the newest version of ``name`` into ``sink``; fires with :class:`Download`.

        ``sink`` is a binary file object (written to, left open), an
        ``IConsumer`` (registered with the connection as a streaming producer,
        so it may pause the transfer), or a path: the bytes then go to a file
        beside it, renamed onto it only when complete and verified.
        The bytes are checked against the announced sha256; on a mismatch the
        Deferred fails with ChecksumMismatch (after the bytes were written to
        a file object or consumer, which must then be discarded).
        Cut off by a lost proxy, it starts again on the next one when the
        bytes go to a path (or an :class:`AsideFile`), or when ``sink`` has
        received nothing yet: no byte reaches a caller's sink twice.
        """
        aside: Optional[AsideFile] = None
        try:
            check_name(name)
            if isinstance(sink, (str, os.PathLike)):
                aside = AsideFile(sink)
                sink = aside
        except Exception:
            return defer.fail()
        into = sink

        def again(request: Request) -> bool:
            if isinstance(into, AsideFile):
                into.restart()
                return True
            assert isinstance(request, Get)
            return request.size - request.remaining == 0

        d = self._request("GET", lambda: Get(name, into, progress), again)
        if aside is not None:
            def settle(result: Any) -> Any:
                if isinstance(result, Failure):
                    aside.discard()
                else:
                    aside.commit()
                return result
            d.addBoth(settle)
        return d

    def stat(self, name: str) -> defer.Deferred[Stat]:
        """The newest version of ``name``: :class:`Stat`; NotFound when absent."""
        try:
            line = name_line("STAT", name)
        except DepositoError:
            return defer.fail()
        return self._one("STAT", line, parse_stat)

    def list_page(self, prefix: str = "", after: str = "",
                  limit: int = PAGE_SIZE) -> defer.Deferred[list[Entry]]:
        """One page of names: at most ``limit`` of those starting with
        ``prefix`` that sort after ``after``, in name order, as :class:`Entry`
        values. The next page starts after the last name of this one; a page
        shorter than ``limit`` is the last. This is the call whose memory is
        bounded, whatever the number of names."""
        try:
            line = list_line(prefix, after, limit)
        except DepositoError:
            return defer.fail()
        return self._request("LIST", lambda: MultiLine(line, parse_entry, limit), _anytime)

    def list(self, prefix: str = "") -> defer.Deferred[list[Entry]]:
        """Every name starting with ``prefix``, in name order, as :class:`Entry` values.

        Asks for pages of PAGE_SIZE names one after the other (see
        :meth:`list_page`) and fires with all of them in one list, so it holds
        every name in memory: for a listing of any size, call
        :meth:`list_page` and keep only a page at a time. Requests made while
        it pages are answered between its pages.
        """
        return defer.ensureDeferred(self._every_page(prefix))

    async def _every_page(self, prefix: str) -> builtins.list[Entry]:
        entries: list[Entry] = []
        after = ""
        while True:
            page = await self.list_page(prefix, after, PAGE_SIZE)
            entries += page
            if len(page) < PAGE_SIZE:
                return entries
            after = page[-1].name

    def replicas(self, name: str, count: int, wait: bool = False) -> defer.Deferred[ReplicaCount]:
        """Set the wanted copy count of ``name``.

        Without ``wait`` it fires at once (copies change in the background);
        with it, when ``have == count``, or Unavailable if the cluster cannot
        get there; it waits without a timeout.
        """
        try:
            line = replicas_line(name, count, wait)
        except DepositoError:
            return defer.fail()

        def make() -> Request:
            request = OneLine(line, parse_replicas)
            request.patient = wait
            return request
        return self._request("REPLICAS", make)

    def delete(self, name: str) -> defer.Deferred[str]:
        """Delete ``name``; fires with the name deleted, NotFound when absent."""
        try:
            line = name_line("DELETE", name)
        except DepositoError:
            return defer.fail()
        return self._one("DELETE", line, parse_deleted, read=False)

    def servers(self) -> defer.Deferred[builtins.list[Server]]:
        """Every storage server the proxy knows, as :class:`Server` values."""
        return self._request("SERVERS", lambda: MultiLine("SERVERS", parse_server), _anytime)

    def status(self) -> defer.Deferred[Status]:
        """Cluster-wide counts: :class:`Status`."""
        return self._one("STATUS", "STATUS", parse_status)

    def help(self) -> defer.Deferred[builtins.list[str]]:
        """The proxy's one-line summaries of its commands."""
        return self._request("HELP", lambda: MultiLine("HELP", lambda line: line), _anytime)

    def auth(self, token: str) -> defer.Deferred[None]:
        """Present ``token``; Denied when the proxy does not accept it.
        It is presented again on each connection the client makes later."""
        try:
            line = auth_line(token)
        except DepositoError:
            return defer.fail()

        def accepted(_: Any) -> None:
            if self.doors is not None:
                self.doors.token = token
        return self._one("AUTH", line, check_reply).addCallback(accepted)

    def quit(self) -> defer.Deferred[None]:
        """Say QUIT after the requests already made; fires once the connection
        is closed (at once when it is lost already)."""
        self._closed = True
        if not self.protocol.usable:
            return self.protocol.whenClosed()
        d = self.protocol.request(Quit("QUIT"))
        d.addCallback(lambda _: self.protocol.whenClosed())
        return d

    def close(self) -> defer.Deferred[None]:
        """Close the connection now; requests still waiting fail with ConnectionLost."""
        self._closed = True
        self.protocol.abandon()
        return self.protocol.whenClosed()


def connect(reactor: Any, endpoint: Union[Endpoint, Sequence[Endpoint]] = "tcp:127.0.0.1:7000",
            token: Optional[str] = None) -> defer.Deferred[DepositoClient]:
    """Connect to the proxy at ``endpoint``: an endpoint string
    (``tcp:HOST:PORT``, ``unix:PATH``, ...), ``HOST:PORT``, or an endpoint
    object; or to the first that answers of several proxies, given as a
    list of those or as one string separated by commas (the client then
    fails over between them, see the module's docstring).

    Fires with a :class:`DepositoClient` once the proxy greeted it (and, with
    ``token``, accepted it; the token is presented on every connection the
    client makes). With a single proxy it fails with Twisted's ConnectError
    family when the proxy cannot be reached, ConnectionLost if it hangs up
    first, or the ERR class of a refusal; with several, ProxiesUnreachable
    when none answers, or Denied. ``reactor`` is whatever reactor the
    endpoint strings need (TCP, UNIX, TLS): no one interface names them all.
    """
    try:
        if isinstance(endpoint, str):
            items: list[Endpoint] = list(split_list(endpoint))
        elif isinstance(endpoint, Sequence):
            items = list(endpoint)
        else:
            items = [endpoint]
        if not items:
            raise ValueError("no proxy given")
        if token is not None:
            auth_line(token)
        named = [_endpoint(reactor, item) for item in items]
    except Exception:
        return defer.fail()
    doors = FrontDoors([name for name, _ in named], [point for _, point in named], token, clock=reactor)
    d = defer.ensureDeferred(doors.open(range(len(named)), []))
    return d.addCallback(DepositoClient, doors)
