"""LIST's reply lines, written as fast as the client takes them.

``OK <n>`` is followed by exactly n lines ``<size> <wanted> <have> <name>``.
:class:`ListReply` is a streaming producer registered with the client's
transport: it writes a batch of lines, and reads the next batch from the
listing only while the transport is not full, so a client that reads slowly
(or not at all) holds the listing back instead of filling the proxy's memory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Union

from twisted.internet import defer
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from deposito.protocols.words import quote

if TYPE_CHECKING:
    from deposito.catalog import FileRecord
    from deposito.catalog.listing import Listing


class ListBroken(Exception):
    """The listing failed after ``OK <n>`` was sent: the count cannot be kept."""


def entry_lines(records: list[FileRecord], have: Callable[[FileRecord], int]) -> bytes:
    """The LIST lines of ``records``, CRLF-ended, in one piece. ``have`` is
    asked once per distinct list of servers (it depends on nothing else)."""
    counts: dict[tuple[str, ...], int] = {}
    lines = []
    for r in records:
        h = counts.get(r.servers)
        if h is None:
            h = counts[r.servers] = have(r)
        lines.append(f"{r.size} {r.replicas} {h} {quote(r.name)}\r\n")
    return "".join(lines).encode("utf-8")


@implementer(IPushProducer)
class ListReply:
    """Writes a listing's lines to ``transport`` (``OK <n>`` is already
    sent). :meth:`start` gives a Deferred that fires once every line is
    written or the client left, and fails with ListBroken when the listing
    broke on the way (the connection must then be closed)."""

    log = Logger()

    def __init__(self, transport: IConsumer, listing: Listing, have: Callable[[FileRecord], int]) -> None:
        self.transport = transport
        self.listing = listing
        self.have = have
        self.sent = 0
        self.done: defer.Deferred[None] = defer.Deferred()
        self._paused = False
        self._waiting = False  # a batch is asked of the listing
        self._pumping = False
        self._over = False

    def start(self) -> defer.Deferred[None]:
        if self.listing.count == 0:
            self._finish()
            return self.done
        self.listing.on_expiry = self._expired
        self.transport.registerProducer(self, True)
        self._pump()
        return self.done

    # -- IPushProducer: the transport's side

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._pump()

    def stopProducing(self) -> None:
        """The connection is gone: nothing more to send."""
        if not self._over:
            self._end()
            self.done.callback(None)

    # -- the listing's side

    def _pump(self) -> None:
        """Ask for batches while the transport takes them; a batch that is
        ready at once is written in this loop rather than by recursion."""
        if self._pumping:
            return
        self._pumping = True
        try:
            while not (self._waiting or self._paused or self._over):
                self._waiting = True
                self.listing.next().addCallbacks(self._got, self._broke)
        finally:
            self._pumping = False

    def _got(self, records: list[FileRecord]) -> None:
        self._waiting = False
        if self._over:
            return
        if not records:
            self._broke(ListBroken(f"the listing ended after {self.sent} of {self.listing.count} names"))
            return
        self.sent += len(records)
        self.transport.write(entry_lines(records, self.have))
        if self.sent >= self.listing.count:
            self._finish()
        else:
            self._pump()

    def _broke(self, why: Union[Failure, BaseException]) -> None:
        self._waiting = False
        if self._over:
            return
        error = getattr(why, "value", why)
        self.log.warn("LIST broke after {sent} of {count} lines: {why}", sent=self.sent,
                      count=self.listing.count, why=str(error))
        self._end()
        self.done.errback(ListBroken(str(error)))

    def _expired(self) -> None:
        self._broke(ListBroken("the listing took too long"))

    def _finish(self) -> None:
        self._end()
        self.done.callback(None)

    def _end(self) -> None:
        self._over = True
        self.listing.close()
        if self.listing.count:
            self.transport.unregisterProducer()
