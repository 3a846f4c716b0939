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
  with it, and so does every later request on that client;
- a reply the client cannot read: :class:`ProtocolError` (the connection is
  then closed, since what follows cannot be trusted);
- bytes whose sha256 differs from the one the proxy announced:
  :class:`ChecksumMismatch` (a GET's destination is then not to be trusted).

Connecting itself fails with Twisted's ``twisted.internet.error.ConnectError``
family (for example ``ConnectionRefusedError``).

The errors and reply values are those of :mod:`deposito.wire`, which the
blocking client (:mod:`deposito.blocking`) shares; they are named here too,
where users import them. Importing this module does not install a reactor.
"""

from __future__ import annotations

import builtins
import os
from typing import Any, Callable, Generator, Optional, Union

from twisted.internet import defer
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IConsumer, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure

from deposito.errors import BadArgs, DepositoError
from deposito.localfile import AsideFile, Sink, Source, open_source
from deposito.protocols.text_client import DepositoClientProtocol, Get, MultiLine, OneLine, Put, Quit
from deposito.protocols.words import check_name, quote
from deposito.wire import (
    CHUNK_SIZE,
    PAGE_SIZE,
    ChecksumMismatch,
    ConnectionLost,
    Download,
    Entry,
    Progress,
    ProtocolError,
    ReplicaCount,
    Server,
    Stat,
    Status,
    Stored,
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
    "Download", "Entry", "ProtocolError", "ReplicaCount", "Server", "Stat", "Status", "Stored", "connect",
]


class DepositoClient:
    """A connected client; every method returns a Deferred of the parsed reply.

    Names are quoted on the wire as the protocol says; an invalid name fails
    with BadArgs before anything is sent.
    """

    def __init__(self, protocol: DepositoClientProtocol) -> None:
        self.protocol = protocol

    @property
    def greeting(self) -> Optional[str]:
        """The proxy's greeting line (``OK deposito <version> ready``)."""
        return self.protocol.greeting

    def _one(self, line: str, parse: Callable[[str], Any]) -> defer.Deferred[Any]:
        return self.protocol.request(OneLine(line, parse))

    def put(self, name: str, source: Source, replicas: Optional[int] = None,
            progress: Optional[Progress] = None, size: Optional[int] = None) -> defer.Deferred[Stored]:
        """Store ``source`` under ``name``; fires with :class:`Stored` once the proxy committed it.

        ``source`` is a path or a binary file object, read from its current
        position in chunks of CHUNK_SIZE bytes; a file that cannot seek needs
        ``size``. A path is opened and closed here; a file object is left open.
        ``replicas`` defaults to the proxy's count. The sha256 the proxy
        reports is checked against the bytes sent (ChecksumMismatch).
        If the upload breaks half way the connection is closed, since the
        proxy can no longer tell where the bytes end.
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
        return self.protocol.request(Put(line, file, length, close, progress))

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
        """
        aside: Optional[AsideFile] = None
        if isinstance(sink, (str, os.PathLike)):
            try:
                check_name(name)
                aside = AsideFile(sink)
            except Exception:
                return defer.fail()
            sink = aside
        try:
            d = self.protocol.request(Get(name, sink, progress))
        except DepositoError:
            if aside is not None:
                aside.discard()
            return defer.fail()
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
        return self._one(line, parse_stat)

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
        return self.protocol.request(MultiLine(line, parse_entry))

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
        with it, when ``have == count``, or Unavailable if the cluster cannot get there.
        """
        try:
            line = replicas_line(name, count, wait)
        except DepositoError:
            return defer.fail()
        return self._one(line, parse_replicas)

    def delete(self, name: str) -> defer.Deferred[str]:
        """Delete ``name``; fires with the name deleted, NotFound when absent."""
        try:
            line = name_line("DELETE", name)
        except DepositoError:
            return defer.fail()
        return self._one(line, parse_deleted)

    def servers(self) -> defer.Deferred[builtins.list[Server]]:
        """Every storage server the proxy knows, as :class:`Server` values."""
        return self.protocol.request(MultiLine("SERVERS", parse_server))

    def status(self) -> defer.Deferred[Status]:
        """Cluster-wide counts: :class:`Status`."""
        return self._one("STATUS", parse_status)

    def help(self) -> defer.Deferred[builtins.list[str]]:
        """The proxy's one-line summaries of its commands."""
        return self.protocol.request(MultiLine("HELP", lambda line: line))

    def auth(self, token: str) -> defer.Deferred[None]:
        """Present ``token``; Denied when the proxy does not accept it."""
        if not token or any(c in token for c in "\r\n"):
            return defer.fail(BadArgs("a token is one non-empty line"))
        return self._one(f"AUTH {quote(token)}", lambda line: check_reply(line) and None)

    def quit(self) -> defer.Deferred[None]:
        """Say QUIT after the requests already made; fires once the connection is closed."""
        d = self.protocol.request(Quit("QUIT"))
        d.addCallback(lambda _: self.protocol.whenClosed())
        return d

    def close(self) -> defer.Deferred[None]:
        """Close the connection now; requests still waiting fail with ConnectionLost."""
        self.protocol.abandon()
        return self.protocol.whenClosed()


@defer.inlineCallbacks
def connect(reactor: Any, endpoint: Union[str, IStreamClientEndpoint] = "tcp:127.0.0.1:7000",
            token: Optional[str] = None) -> Generator[defer.Deferred[Any], Any, DepositoClient]:
    """Connect to the proxy at ``endpoint`` (an endpoint string or object).

    Fires with a :class:`DepositoClient` once the proxy greeted it (and, with
    ``token``, accepted it). Fails with Twisted's ConnectError family when the
    proxy cannot be reached, ConnectionLost if it hangs up first, or the ERR
    class of a refusal. ``reactor`` is whatever reactor the endpoint string
    needs (TCP, UNIX, TLS): no one interface names them all.
    """
    point: IStreamClientEndpoint = clientFromString(reactor, endpoint) if isinstance(endpoint, str) else endpoint
    protocol: DepositoClientProtocol = yield point.connect(Factory.forProtocol(DepositoClientProtocol))
    yield protocol.greeted
    client = DepositoClient(protocol)
    if token is not None:
        try:
            yield client.auth(token)
        except BaseException:
            yield client.close()
            raise
    return client
