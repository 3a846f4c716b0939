"""An S3 request on twisted.web whose body streams.

twisted.web hands a resource its request once the whole body has arrived,
spooled to a temporary file: an upload of 5 GiB would be written to the
proxy's disk before a byte reached a storage server. :class:`S3Request`
instead starts its gateway as soon as the headers are in (``gotLength``)
and passes the body on as it comes (:class:`Body`), pausing the connection
while nobody takes it. The answer is written only once the whole request
has been read (``process``), as HTTP/1.1 on a kept-alive connection needs;
or, to a client that waits to be told to send its body (``Expect:
100-continue``, as botocore sends with bodies over 1 MB), as soon as the
request is refused, the body never asked for and the connection closed after
the answer. A refused request whose body comes anyway is answered once more
than DISCARD_LIMIT of it was thrown away, and the connection closed after
the answer, what still comes read and dropped a while first (see
twisted_internals.ContinueWhenAsked.loseConnection).
"""

from __future__ import annotations

import io
from collections import deque
from typing import Any, Callable, Iterator, Optional, Sequence

from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.server import Request

from deposito import twisted_internals
from deposito.s3.errors import S3Error

HOLD = 256 * 1024  # body bytes held for a reader not there yet before the connection is paused
DISCARD_LIMIT = 1 << 20  # body bytes read and thrown away after an error before it is answered and the connection closed
DISCARD_WAIT = 5.0  # seconds a body nobody wants may take to come before it is answered and the connection closed


class Body:
    """A request's body as it arrives. Until a reader takes it (:meth:`take`),
    up to HOLD bytes are held and the connection is paused beyond that.
    A reader that fails (its ``sink`` raises) gets the rest thrown away."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.received = 0
        # True once the whole body is in or its reader refused it (see error), False
        # if the connection is lost first (never a failure: nobody may be waiting for it)
        self.done: defer.Deferred[bool] = defer.Deferred()
        self.error: Optional[BaseException] = None  # what the sink raised, if it did
        self._held: deque[bytes] = deque()
        self._held_size = 0
        self._paused = False
        self._sink: Optional[Callable[[bytes], None]] = None
        self._discarding = False
        self._discarded = 0
        self.waiting: Optional[Callable[[], None]] = None  # tells a client that waits (100-continue) to send
        self.unsent: Optional[Callable[[], None]] = None  # called if the body is given up before that
        self.too_much: Optional[Callable[[], None]] = None  # called once DISCARD_LIMIT was thrown away

    def feed(self, data: bytes) -> None:
        self.received += len(data)
        # a client asked to be told to send (100-continue) and sent all the same: it is
        # answered as one that never asked, once its body is in (or answer_soon's wait is out)
        self.waiting = self.unsent = None
        if self._discarding:
            self._discarded += len(data)
            if self._discarded > DISCARD_LIMIT and self.too_much is not None:
                # not worth reading: the answer (an error) goes now, and the connection is closed after it
                too_much, self.too_much = self.too_much, None
                too_much()
            return
        if self._sink is None:
            self._held.append(data)
            self._held_size += len(data)
            if self._held_size > HOLD and not self._paused:
                self._paused = True
                self.transport.pauseProducing()
            return
        self._give(data)

    @property
    def taken(self) -> bool:
        """A reader has taken the body."""
        return self._sink is not None

    @property
    def given_up(self) -> bool:
        """Nobody wants the rest (see :meth:`discard`)."""
        return self._discarding

    def take(self, sink: Callable[[bytes], None]) -> None:
        """From now on every byte goes to ``sink``, those held first."""
        self._sink = sink
        if self.waiting is not None:
            send, self.waiting, self.unsent = self.waiting, None, None
            send()
        while self._held and not self._discarding:
            self._give(self._held.popleft())
        self._held.clear()
        self._held_size = 0
        if self._paused:
            self._paused = False
            self.transport.resumeProducing()

    def discard(self) -> None:
        """Nobody wants the rest: read it and throw it away (a little of it);
        or, if the client still waits to be told to send it, tell it nothing."""
        if self.unsent is not None:
            given_up, self.waiting, self.unsent = self.unsent, None, None
            given_up()
        self._discarding = True
        self._held.clear()
        if self._paused:
            self._paused = False
            self.transport.resumeProducing()

    async def read(self, limit: int) -> bytes:
        """The whole body, for small ones (XML): MalformedXML-like
        EntityTooLarge when it is bigger than ``limit``."""
        pieces: list[bytes] = []
        size = 0

        def keep(data: bytes) -> None:
            nonlocal size
            size += len(data)
            if size > limit:
                raise S3Error("EntityTooLarge", f"The body is larger than {limit} bytes")
            pieces.append(data)

        self.take(keep)
        if not await self.done:
            raise S3Error("IncompleteBody")
        if self.error is not None:
            raise self.error
        return b"".join(pieces)

    def _give(self, data: bytes) -> None:
        assert self._sink is not None
        try:
            self._sink(data)
        except Exception as e:
            self.error = e
            self.discard()
            if not self.done.called:  # its reader is told now, not once the rest has come
                self.done.callback(True)

    def end(self) -> None:
        if not self.done.called:
            self.done.callback(True)

    def lost(self) -> None:
        if not self.done.called:
            self.done.callback(False)


class S3Headers(Headers):
    """Response headers whose ``x-amz-*`` names go out in lower case, as S3
    sends them: S3 clients take user metadata's names from them as written
    (twisted.web would write ``X-Amz-Meta-Camera``)."""

    def getAllRawHeaders(self) -> Iterator[tuple[bytes, Sequence[bytes]]]:
        for name, values in super().getAllRawHeaders():
            yield (name.lower() if name.lower().startswith(b"x-amz-") else name), values


class S3Request(Request):
    """A request whose gateway starts when its headers are in. The site's
    ``gateway`` is called with the request, its method and raw path; it
    takes the body from :attr:`body`, and answers once :attr:`received`
    has fired True (False: the client has gone)."""

    body: Body
    received: defer.Deferred[bool]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.responseHeaders = S3Headers()

    def gotLength(self, length: Optional[int]) -> None:
        self.content = io.BytesIO()  # stays empty: the body goes to self.body
        self.body = Body(self.channel.transport)
        self.body.too_much = self._answer_now
        self.received = defer.Deferred()
        self.notifyFinish().addErrback(self._lost)
        line = twisted_internals.request_line(self)
        method, path = line if line is not None else (b"", b"")
        getattr(self.channel, "site").gateway(self, method, path)  # the S3 site (deposito.s3.gateway.s3_site)

    def continue_later(self, send: Callable[[], None]) -> None:
        """``Expect: 100-continue`` (see twisted_internals.ContinueWhenAsked):
        ``send()`` tells the client to send its body, once it is wanted. A
        request refused before that is answered at once, and its connection
        closed after the answer, the body never sent."""
        if self.body.taken:
            send()
        elif self.body.given_up:  # refused already
            self._answer_now()
        else:
            self.body.waiting = send
            self.body.unsent = self._answer_now

    def answer_soon(self) -> None:
        """The body is not wanted (see Body.discard): if it has not all come
        within DISCARD_WAIT seconds, answer then, before the rest, and close
        the connection after the answer (a client sending a byte now and then
        would hold its connection for good otherwise)."""
        if not self.received.called and self.channel is not None:  # (None: the client has gone)
            later = getattr(self.channel, "site").gateway.clock.callLater(DISCARD_WAIT, self._answer_now)
            self.received.addBoth(lambda result: (later.cancel() if later.active() else None, result)[1])

    def _answer_now(self) -> None:
        """Answered before the body is read (refused), the connection closed after."""
        twisted_internals.answer_before_body(self)
        # the whole request, as far as the answer is concerned; on the next turn, once twisted.web
        # has done with what it was reading (it may be this request's headers)
        getattr(self.channel, "site").gateway.clock.callLater(0, self._all_received)

    def _all_received(self) -> None:
        if not self.received.called:
            self.received.callback(True)

    def handleContentChunk(self, data: bytes) -> None:
        self.body.feed(data)

    def process(self) -> None:
        """The whole request is in: its gateway may answer now."""
        self.body.end()
        if not self.received.called:
            self.received.callback(True)

    def _lost(self, reason: Failure) -> None:
        self.body.lost()
        if not self.received.called:
            self.received.callback(False)
