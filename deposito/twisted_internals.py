"""Every use Deposito makes of Twisted beyond its documented interfaces.

The fast paths (bytes sent without a turn of the reactor, relayed by
splice, received with recv_into, sent with sendfile, handed to another
process) and a few checks on a connection's state depend on how Twisted
builds its transports, its LineReceiver and its HTTP requests. Each such
fact is used here and nowhere else, in a function whose docstring names the
fact and what happens if a later Twisted no longer holds to it: the fast
path is skipped, or the behaviour falls back safely. tests/test_twisted_internals.py
checks each fact against the installed Twisted, so that an upgrade that
breaks one fails a test instead of silently slowing or breaking a path.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from twisted.internet import tcp
from twisted.internet.interfaces import IConsumer, IPushProducer, IReactorFDSet, IReactorTime, ITCPTransport
from twisted.web import http
from twisted.web.http_headers import Headers
from zope.interface import Attribute

_PLAIN_TCP = (tcp.Server, tcp.Client)


class IStreamReactor(IReactorTime, IReactorFDSet):
    """A reactor as the fast paths use it: a clock that also watches sockets.
    Every reactor Twisted ships is both."""


class IStreamTransport(ITCPTransport, IConsumer, IPushProducer):
    """A socket transport as the fast paths use it: what Twisted's own
    (abstract.FileDescriptor, tcp.Connection, unix.Connection) offer beyond
    ITCPTransport. Twisted declares no interface for these members; the
    test of :func:`is_plain_tcp`'s facts checks tcp.Server and tcp.Client
    have them."""

    connected = Attribute("True from the connection's start until it is lost")
    disconnecting = Attribute("True once the connection is being closed")
    producer = Attribute("The producer registered with it, or None")

    def fileno() -> int:
        """The socket's descriptor (-1 once it is closed)."""

    def getHandle() -> socket.socket:
        """The socket itself."""

    def startReading() -> None:
        """Watch the socket for bytes to read again."""

    def stopReading() -> None:
        """Stop reading the socket."""


# -- socket transports (twisted.internet.tcp, twisted.internet.abstract)


def is_plain_tcp(transport: Any) -> bool:
    """Whether ``transport`` is an open TCP connection of Twisted's own, made
    or accepted, carrying its bytes as they are (no TLS): its socket
    (``getHandle()``) may then be read and written by Deposito directly.

    Relies on tcp.Server and tcp.Client being the classes of plain TCP
    connections, on their ``TLS`` attribute turning true once TLS starts,
    and on ``connected``/``disconnecting``. The type is compared exactly: a
    wrapper or subclass may buffer or transform bytes. If Twisted renames
    the classes or drops ``TLS``, this is False and the ordinary path is
    taken."""
    return (type(transport) in _PLAIN_TCP and not getattr(transport, "TLS", True)
            and bool(transport.connected) and not transport.disconnecting)


def is_plain_tcp_server(transport: Any) -> bool:
    """:func:`is_plain_tcp` for a connection this process accepted (tcp.Server) only."""
    return type(transport) is tcp.Server and is_plain_tcp(transport)


def set_read_size(transport: Any, size: int) -> None:
    """Have ``transport`` ask its socket for up to ``size`` bytes per read.

    Relies on a socket transport (abstract.FileDescriptor) reading at most
    its ``bufferSize`` per recv (tcp.Connection.doRead), and pausing a
    streaming producer once more than ``bufferSize`` waits to be sent. A
    transport without ``bufferSize`` is left alone; if Twisted stops reading
    the attribute, its own default applies (more calls per byte, nothing
    else)."""
    if hasattr(transport, "bufferSize"):
        transport.bufferSize = size


def set_send_limit(transport: Any, size: int) -> None:
    """Have ``transport`` hand its socket up to ``size`` bytes per send.

    Relies on abstract.FileDescriptor.doWrite sending at most ``SEND_LIMIT``
    bytes per call. Only a transport that has ``bufferSize`` (a socket
    transport) is changed; if Twisted stops reading ``SEND_LIMIT``, its own
    default applies (more calls per byte, nothing else)."""
    if hasattr(transport, "bufferSize"):
        transport.SEND_LIMIT = size


def holds_unsent(transport: Any) -> bool:
    """Whether ``transport`` holds written bytes it has not yet given to the kernel.

    Relies on abstract.FileDescriptor keeping them in ``dataBuffer`` (being
    sent) and ``_tempDataBuffer`` (written since). Without
    ``_tempDataBuffer`` the answer is True: :func:`flush_now` then tries a
    send that finds nothing to do."""
    return bool(transport.dataBuffer or getattr(transport, "_tempDataBuffer", True))


def unsent_size(transport: Any) -> int:
    """How many written bytes ``transport`` holds that the kernel has not
    taken yet; for a wrapper such as TLS, those of the socket's transport
    beneath it (TLS hands each write, encrypted, to that one at once).

    Relies on abstract.FileDescriptor keeping them in ``dataBuffer`` from
    ``offset`` on and counting those written since in ``_tempDataLen``. If
    those attributes are gone the answer is 0: a client that sends requests
    and reads no replies is then no longer held back."""
    while not hasattr(transport, "dataBuffer") and hasattr(transport, "transport"):
        transport = transport.transport
    buffered = getattr(transport, "dataBuffer", b"")
    return len(buffered) - getattr(transport, "offset", 0) + getattr(transport, "_tempDataLen", 0)


def flush_now(transport: Any) -> None:
    """Hand what plain TCP ``transport`` holds to the kernel now rather than
    on the reactor's next turn.

    Relies on abstract.FileDescriptor.doWrite sending what is buffered (up
    to ``SEND_LIMIT``), leaving the rest to the reactor, which it stays
    registered with for writing (an error too is met there again), and on
    ``_writeDisconnecting`` being true while a half-close is under way (a
    send would then shut the socket's writing side, so none is made). If
    either attribute is gone, nothing is done here and the reactor sends
    the bytes on its next turn, as for any other transport."""
    if (is_plain_tcp(transport) and not getattr(transport, "_writeDisconnecting", True)
            and holds_unsent(transport)):
        transport.doWrite()


def write_now(transport: Any, *pieces: bytes) -> None:
    """Write ``pieces`` to ``transport``, handing them to the kernel in one
    send at once when the transport holds nothing unsent before them: no turn
    of the reactor and no change to its poll set. What the socket does not
    take, and anything written while bytes wait, goes through
    ``transport.writeSequence`` as usual, after them.

    Relies on what :func:`flush_now` relies on (the buffers, and
    ``_writeDisconnecting`` during a half-close), and on ``getHandle()``
    being the transport's socket. A send that fails (the socket full, or an
    error) leaves all the bytes to the transport, whose own send meets the
    error again and closes the connection as usual."""
    if (is_plain_tcp(transport) and not getattr(transport, "_writeDisconnecting", True)
            and not holds_unsent(transport)):
        try:
            sock = transport.getHandle()
            sent = sock.send(pieces[0]) if len(pieces) == 1 else sock.sendmsg(pieces)
        except OSError:
            sent = 0
        rest = list(pieces)
        while rest and sent >= len(rest[0]):
            sent -= len(rest.pop(0))
        if rest and sent:
            rest[0] = rest[0][sent:]
        pieces = tuple(rest)
    if pieces:
        transport.writeSequence(pieces)


def write_pending(reactor: IReactorFDSet, transport: Any) -> bool:
    """Whether socket transport ``transport`` still has bytes of Twisted's to
    send, so that nothing else may write into its socket yet.

    Relies on abstract.FileDescriptor adding itself to its reactor's
    writers (startWriting) while it has anything to send, and, once its
    buffer is empty, removing itself before it asks a registered pull
    producer for more (which is how a waiter learns the bytes are gone). If
    Twisted kept it registered, the fast paths that wait for this would
    wait or be skipped; if it left the writers while bytes wait, those bytes
    could be overtaken, which the tests catch."""
    return transport in reactor.getWriters()


def is_reading(reactor: IReactorFDSet, transport: Any) -> bool:
    """Whether socket transport ``transport`` is reading its socket (not paused).

    Relies on abstract.FileDescriptor.startReading adding the transport
    itself to its reactor's readers and stopReading removing it. If that
    no longer held, a transport paused by a fast path would be left
    unread after it, which the tests catch."""
    return transport in reactor.getReaders()


def has_producer(transport: Any) -> bool:
    """Whether a producer is registered with ``transport``.

    Relies on abstract.FileDescriptor keeping it in ``producer`` (None when
    there is none). A transport without the attribute is taken to have none."""
    return getattr(transport, "producer", None) is not None


# -- LineReceiver (twisted.protocols.basic)


def holds_unparsed(protocol: Any) -> bool:
    """Whether LineReceiver ``protocol`` holds received bytes it has not
    handed on yet (the rest of a line, or lines held back while paused).

    Relies on LineReceiver keeping them in ``_buffer``. Without it the
    answer is True, the safe side: a fast path that needs nothing held
    back is skipped, and a connection is not reused."""
    buffer = getattr(protocol, "_buffer", None)
    return buffer is None or len(buffer) > 0


def unparsed_size(protocol: Any) -> int:
    """How many received bytes LineReceiver ``protocol`` holds (see
    :func:`holds_unparsed`). Without ``_buffer``, 0: a check that pauses
    the transport when too much is held back never pauses it."""
    return len(getattr(protocol, "_buffer", b""))


# -- twisted.web


def request_gone(request: Any) -> bool:
    """Whether the connection of twisted.web ``request`` has been lost.

    Relies on http.Request setting ``_disconnected`` in connectionLost.
    Without it the answer is False, and the reply goes to the request as to
    a live one (today's Twisted drops the bytes and raises from finish); the
    test of this fact fails first."""
    return bool(getattr(request, "_disconnected", False))


def transport_closing(transport: Any) -> bool:
    """Whether a TCP ``transport`` is being closed or aborted: its
    connectionLost comes only on the reactor's next turn, till then
    ``connected`` stays true. Relies on abortConnection setting
    ``_aborting`` (loseConnection sets the public ``disconnecting``);
    without it only a close is seen."""
    return bool(getattr(transport, "_aborting", False) or getattr(transport, "disconnecting", False))


def connection_closing(request: Any) -> bool:
    """Whether the connection of twisted.web ``request`` is lost or being
    closed: so is one whose body twisted.web could not parse (a bad chunk),
    which it answers with 400 by itself before closing. A request refused
    before its body (see :func:`answer_before_body`) is then answered no
    more. The channel is a :class:`ContinueWhenAsked` (it knows when it
    closes, lingering or not)."""
    channel = getattr(request, "channel", None)
    return request_gone(request) or (isinstance(channel, ContinueWhenAsked) and channel.closing)


def request_line(request: Any) -> tuple[bytes, bytes] | None:
    """The method and the raw path (with its query) of twisted.web
    ``request`` while its body is still arriving, before
    ``requestReceived`` gives them to it: what the S3 gateway needs to start
    a streaming upload when the headers are in.

    Relies on http.HTTPChannel keeping the request line in ``_command`` and
    ``_path`` until the whole body has arrived. Without them, None: the
    gateway then answers 501 to a request with a body, and the test of this
    fact fails first."""
    channel = getattr(request, "channel", None)
    command, path = getattr(channel, "_command", None), getattr(channel, "_path", None)
    if not isinstance(command, bytes) or not isinstance(path, bytes):
        return None
    return command, path


def take_http_socket(request: Any) -> Any:
    """The plain TCP transport under twisted.web ``request`` (see
    :func:`is_plain_tcp`), its HTTPChannel no longer registered as its
    producer, so that a response body can be written into it directly: by
    the kernel's paths (deposito.splice), or with a producer registered on
    it; or None, with nothing changed, when that cannot be. Give it back
    with :func:`give_back_http_socket` before the request is finished.

    Relies on http.HTTPChannel registering itself as its transport's
    streaming producer (in connectionMade) and using that only to pause the
    request's producer while the transport's buffer is full, which a body
    written to the transport, with its own producer there, does not need;
    and on a response with a Content-Length being sent as it is, not
    chunked (so one without, or to a HEAD, is never taken). If the channel
    is not the producer, None: the body goes through the request, as on TLS."""
    channel = getattr(request, "channel", None)
    transport: Any = getattr(channel, "transport", None)
    if (channel is None or not is_plain_tcp(transport) or getattr(transport, "producer", None) is not channel
            or not request.responseHeaders.hasHeader(b"content-length") or request.method == b"HEAD"):
        return None
    transport.unregisterProducer()
    return transport


def give_back_http_socket(request: Any, transport: Any) -> None:
    """Undoes :func:`take_http_socket`: the channel is the transport's
    producer again (if the connection is still open and no producer was
    left registered)."""
    if transport.connected and not transport.disconnecting and transport.producer is None:
        transport.registerProducer(request.channel, True)


HEAD_TIMEOUT = 60.0  # seconds a request's line and headers may take to come, in all


class HeadDeadline(http.HTTPChannel):
    """An HTTP connection that gives each request's line and headers
    HEAD_TIMEOUT seconds in all to come: twisted.web's own timeout only
    counts silence, so headers sent a byte at a time would hold a
    connection open for ever. Past the deadline the connection is cut.

    Relies on http.HTTPChannel reading a request's line and headers in line
    mode (LineReceiver's ``line_mode``) and nothing else (a body, and the
    next request's bytes while one is handled, in raw mode), and calling
    ``allHeadersReceived`` once they are in. If a later Twisted read bodies
    in line mode, a slow body would be cut too; the test of this fact fails
    first.

    With ``body_in_deadline`` (a port whose requests carry small bodies at
    most), the body must come within the same deadline: the deadline ends
    when http.HTTPChannel calls ``allContentReceived``, the whole request in."""

    body_in_deadline = False
    _head_deadline: Any = None

    def dataReceived(self, data: bytes) -> None:
        if self.line_mode and self._head_deadline is None:
            self._head_deadline = self.callLater(HEAD_TIMEOUT, self._head_too_slow)
        super().dataReceived(data)

    def allHeadersReceived(self) -> None:
        if not self.body_in_deadline:
            self._end_head_deadline()
        super().allHeadersReceived()

    def allContentReceived(self) -> None:
        self._end_head_deadline()
        super().allContentReceived()

    def lineLengthExceeded(self, line: bytes) -> None:
        """A line of a request's head longer than MAX_LENGTH: answered 400,
        where LineReceiver would close without a word."""
        body = f"a request line or header longer than {self.MAX_LENGTH} bytes\n".encode("ascii")
        write_now(self.transport, b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: %d"
                  b"\r\nConnection: close\r\n\r\n%s" % (len(body), body))
        getattr(self.transport, "loseConnection")()

    def _head_too_slow(self) -> None:
        self._head_deadline = None
        if (self.line_mode or self.body_in_deadline) and self.transport is not None:
            getattr(self.transport, "abortConnection")()

    def _end_head_deadline(self) -> None:
        if self._head_deadline is not None:
            if self._head_deadline.active():
                self._head_deadline.cancel()
            self._head_deadline = None

    def connectionLost(self, reason: Any = None) -> None:
        self._end_head_deadline()
        super().connectionLost(reason)


LINGER = 5.0  # seconds a connection answered before its request's body was read goes on being read, at most
LINGER_BYTES = 64 << 20  # bytes read (and dropped) meanwhile, at most


class ContinueWhenAsked(HeadDeadline):
    """An HTTP connection that answers ``Expect: 100-continue`` only when its
    request wants the body: it hands the sending of ``100 Continue`` to the
    request's ``continue_later(send)`` (when the request has one), so that a
    request refused from its headers alone is answered at once and its body
    never sent (see :func:`answer_before_body`).

    Relies on http.HTTPChannel calling ``_send100Continue`` from
    allHeadersReceived, after the request's gotLength, for the request at
    the end of ``requests``. If a later Twisted no longer calls it, the
    client waits its own timeout (a second for botocore) and sends the body
    anyway: slower, not wrong; the test of this fact fails first."""

    lingers = False  # answered before its body was read (see answer_before_body): closes lingering
    _lingering: Any = None  # the call that ends the lingering
    _dropped = 0

    def _send100Continue(self) -> None:
        later = getattr(self.requests[-1], "continue_later", None) if self.requests else None
        if later is None:
            super()._send100Continue()
        else:
            later(super()._send100Continue)

    def loseConnection(self) -> None:
        """Closed with the client perhaps still sending a body: the answer
        goes out and this end's half is shut, and what the client still
        sends is read and dropped (for LINGER seconds or LINGER_BYTES at
        most) before the connection closes. Closed at once, the kernel
        would answer those bytes with a reset, and the client could lose
        the answer it had not read yet.

        Relies on http.HTTPChannel closing a connection that is not kept
        alive through its own ``loseConnection`` once the answer is done; if
        a later Twisted no longer did, the connection would close at once,
        as before; the test of this fact fails first."""
        shut_writing = getattr(self.transport, "loseWriteConnection", None)  # a socket's transport (TCP, TLS)
        if not self.lingers or shut_writing is None or self._lingering is not None:
            super().loseConnection()
            return
        self._lingering = self.callLater(LINGER, getattr(self.transport, "abortConnection"))
        getattr(self.transport, "resumeProducing")()  # it may have been paused not to read the body
        shut_writing()

    @property
    def closing(self) -> bool:
        """Whether :meth:`loseConnection` was called (the connection lingers or closes).

        Relies on TCP transports setting ``disconnecting`` in
        loseConnection; without it, a connection closed at once (not
        lingering) is not taken for closing; the test of this fact fails
        first."""
        return self._lingering is not None or bool(getattr(self.transport, "disconnecting", False))

    def dataReceived(self, data: bytes) -> None:
        if self._lingering is not None:  # answered and closing: the rest of what the client sends is dropped
            self._dropped += len(data)
            if self._dropped > LINGER_BYTES:
                getattr(self.transport, "abortConnection")()
            return
        super().dataReceived(data)

    def connectionLost(self, reason: Any = None) -> None:
        if self._lingering is not None and self._lingering.active():
            self._lingering.cancel()
        super().connectionLost(reason)


class PromptChannel(ContinueWhenAsked):
    """An HTTP connection whose answers go to the socket at once (see
    :func:`write_now`): a short answer in one send, with no turn of the
    reactor and no change to its poll set, where twisted.web would hold it
    for the next turn.

    Relies on http.Request writing its status line and headers through the
    channel's ``writeHeaders`` and its body through its ``write`` and
    ``writeSequence``, and on http.HTTPChannel turning Nagle's delay off
    (a body sent after its headers is not held back); the headers are
    serialised here as twisted.web does (a Headers instance, its values
    already checked). The test of these facts fails first.

    With a ``cap``, a connection past it is answered ``busy`` (a whole
    HTTP answer) and closed before a byte of it is read."""

    cap: Any = None  # the site's ConnectionCap (deposito.listening), or None
    busy = b""
    timed_out = b""  # the whole answer to a request whose body stopped coming (see timeoutConnection), if any
    _counted = False
    _progress: Any = None  # of the body being read (deposito.listening.Progress)
    _moved = True  # whether what is being read starts the silence timer again

    def connectionMade(self) -> None:
        super().connectionMade()
        if self.cap is None:
            return
        self._counted = self.cap.enter(self)
        if not self._counted:
            write_now(self.transport, self.busy)
            self.lingers = True  # its request, unread, must not turn the close into a reset
            self.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        """A body's bytes start the site's silence timer again only while the
        body moves (see deposito.listening.Progress): a byte now and then
        holds the connection no longer than silence would.

        Relies on http.HTTPChannel calling ``resetTimeout`` from its
        ``dataReceived``, and on ``_transferDecoder`` being set while a
        body is read; the test of these facts fails first."""
        from deposito.listening import Progress

        if self._transferDecoder is not None:  # a body's bytes; a head counts once it is whole
            if self._progress is None:
                self._progress = Progress()
            self._moved = self._progress.came(len(data))
            if self._counted and self._moved:
                self.cap.heard(self)
        else:
            self._progress = None
        try:
            super().dataReceived(data)
        finally:
            self._moved = True

    def resetTimeout(self) -> None:
        if self._moved:
            super().resetTimeout()

    def allHeadersReceived(self) -> None:
        super().allHeadersReceived()
        if self._counted:
            self.cap.heard(self)

    def requestDone(self, request: Any) -> None:
        super().requestDone(request)
        if self._counted:
            self.cap.heard(self)

    def timeoutConnection(self) -> None:
        """Silent too long (the site's timeout): closed, as twisted.web does,
        with the site's ``timed_out`` answer first when a request's body
        had stopped coming (the client is told, rather than left to guess)."""
        answering = bool(self.requests) and self.requests[-1].startedWriting  # (refused before its body)
        if self.timed_out and self._transferDecoder is not None and not answering:
            write_now(self.transport, self.timed_out)
        super().timeoutConnection()

    def between_requests(self) -> bool:
        """No request is being answered, nor its body read: at most a head
        is coming (see ConnectionCap)."""
        return not self._handlingRequest and self._transferDecoder is None

    def give_way(self) -> None:
        self.loseConnection()

    def answers_a_client(self) -> bool:
        return True

    def connectionLost(self, reason: Any = None) -> None:
        if self._counted:
            self._counted = False
            self.cap.leave(self)
        super().connectionLost(reason)

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Any) -> None:
        if not isinstance(headers, Headers):
            super().writeHeaders(version, code, reason, headers)
            return
        lines = [version, b" ", code, b" ", reason, b"\r\n"]
        for name, values in headers.getAllRawHeaders():
            for value in values:
                lines.extend((name, b": ", value, b"\r\n"))
        lines.append(b"\r\n")
        write_now(self.transport, b"".join(lines))

    def write(self, data: bytes) -> None:
        if data:
            write_now(self.transport, data)

    def writeSequence(self, iovec: Any) -> None:
        pieces = [piece for piece in iovec if piece]
        if pieces:
            write_now(self.transport, *pieces)


def http_site_protocol(site: Any) -> Any:
    """The protocol of one connection to twisted.web ``site``, its channel a
    :class:`PromptChannel` (assign as the site's ``protocol`` method).

    Relies on Site building each connection's protocol by calling its
    ``protocol`` attribute, twisted.web's own being an HTTPChannel inside a
    _GenericHTTPChannelProtocol (which also serves HTTP/2 where it is
    installed); the test of this fact fails first. The site's ``cap``,
    ``busy`` and ``timed_out``, and its ``body_in_deadline``, go to the channel (see
    :class:`PromptChannel`, :class:`HeadDeadline`)."""
    channel = PromptChannel()
    channel.cap = getattr(site, "cap", None)
    channel.busy = getattr(site, "busy", b"")
    channel.timed_out = getattr(site, "timed_out", b"")
    channel.body_in_deadline = getattr(site, "body_in_deadline", False)
    return http._GenericHTTPChannelProtocol(channel)


def answer_before_body(request: Any) -> None:
    """Make twisted.web ``request`` ready to be answered before its body has
    come (a request refused before its client was told to send the body),
    and its connection closed once the answer is written, the body unread.

    Relies on http.HTTPChannel keeping the request line in ``_command``,
    ``_path`` and ``_version`` until the whole body has arrived (the request
    takes them only then, in requestReceived, and writes its status line
    with its ``clientproto``), and closing a connection whose ``persistent``
    is False when a request is done; the test of this fact fails first. The
    answer says ``Connection: close``, as HTTP/1.1 asks of a server that
    closes after it."""
    channel = request.channel
    request.method, request.uri, request.clientproto = channel._command, channel._path, channel._version
    channel.persistent = False
    channel.lingers = True  # what the client still sends of the body is read and dropped (ContinueWhenAsked)
    request.setHeader(b"connection", b"close")  # the client must not send its next request on this one


# -- the reactor's clock


def steady_clock(reactor: Any, wall: Any = time.time, monotonic: Any = time.monotonic) -> None:
    """Run ``reactor``'s timers (callLater, LoopingCall, the protocols'
    timeouts) on a clock that a step of the machine's wall clock does not
    move: the monotonic clock, plus the wall clock's time when this is
    called, so that it starts as the wall clock does. Call it before any
    timer is set (first thing in a plugin's makeService).

    Relies on ReactorBase reading the time through ``self.seconds`` alone
    (callLater, the poll's timeout, runUntilCurrent; DelayedCall through
    the ``seconds`` it is given, the reactor's), by default
    ``time.time``: a wall clock stepped back an hour held every timer up
    for that hour (heartbeats, leases, retries), and stepped forward it cut
    every idle connection and took servers for down. If a later Twisted
    reads the time another way, its timers follow the wall clock again, as
    before; the test of this fact fails first. Times kept (a file's
    version, a copy made) are the catalog's, which converts the reactor's
    clock to its database's at every beat (see
    deposito.catalog.changes.Changes._on_db_clock); what must be the wall
    clock itself (S3's dates and signatures) reads time.time()."""
    offset = wall() - monotonic()
    reactor.seconds = lambda: monotonic() + offset

