"""The proxy's end of the blob protocol (see deposito.protocols.blobwire)."""

from __future__ import annotations

from typing import Any, Protocol, cast

from twisted.internet import defer, error
from twisted.internet.interfaces import IDelayedCall, IPullProducer, IReactorTime, IUNIXTransport
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from deposito import twisted_internals
from deposito.errors import Denied, from_reply
from deposito.protocols.blobwire import PROXY_PROOF, SERVER_PROOF, ConnectionLost, body_count, range_request
from deposito.protocols.lines import LineProtocol, send_now, tune_for_streams
from deposito.protocols.words import fields, meta_word, parse_count, quote
from deposito.secret import nonce, proof, verify
from deposito.splice.relay import Relay
from deposito.splice.sockets import SourceLost
from deposito.twisted_internals import IStreamReactor, IStreamTransport

# A blob this small goes to its server as one message, its WRITE line, its
# bytes and END in one send, where it would be two or three.
HOLD_FIRST = 64 * 1024


class Sink(Protocol):
    """Where a READ's body goes."""

    def write(self, data: bytes) -> None: ...


class RelaySink(Sink, Protocol):
    """A sink that is also told of bytes relayed past it (see :meth:`BlobClient.read_blob`)."""

    def spliced(self, n: int) -> None: ...


@implementer(IPullProducer)
class _Drained:
    """Waits for a transport to have sent everything written to it (Twisted
    asks a pull producer for more each time its buffer runs empty)."""

    def __init__(self, client: BlobClient, target: IStreamTransport) -> None:
        self.client, self.target = client, target

    def resumeProducing(self) -> None:
        if twisted_internals.write_pending(self.client.reactor, self.target):
            return  # still sending: asked again once it is done
        self.target.unregisterProducer()
        self.client._draining = None
        self.client._start_relay(self.target)

    def stopProducing(self) -> None:  # the reader went away
        self.client.transport.abortConnection()


class BlobClient(LineProtocol, TimeoutMixin):
    """The proxy's end of a blob connection: one request at a time.

    ``write_blob``/``send``/``end`` upload a blob; ``read_blob`` streams one
    into a sink; ``delete_blobs`` removes some. Each returns a Deferred that fails
    with a DepositoError on an ERR reply or ConnectionLost.
    """

    request_timeout = 60.0  # no reply, or no byte of a body, for this long: the server is hung
    transport: IStreamTransport

    def __init__(self, reactor: IStreamReactor, secret: bytes | None = None) -> None:
        self.reactor = reactor
        self.secret = secret
        self.ready: defer.Deferred[BlobClient] = defer.Deferred()  # fires with self once usable
        self._handshake: tuple[str, str] | None = None
        self._waiting: defer.Deferred[Any] | None = None  # the reply's text; a READ's, its byte count
        self._sink: Sink | None = None
        self._remaining = 0
        self._body: defer.Deferred[None] | None = None
        self._relay_to: IStreamTransport | None = None  # a socket transport to splice a READ's body into
        self._relay: Relay | None = None
        self._draining: _Drained | None = None  # waits for the relay's target to send what it holds
        self.lost = False
        self.hung = False  # cut because the server stopped answering (or reading)
        self.holding = False  # a blob is open for SEND on the server (the local port)
        # The server holds a reader's socket that came with SEND and has not
        # shown that it let go of it: no reply yet, and the connection not
        # closed from its end (see deposito.protocols.handoff).
        self.lending = False
        self._cutting = False  # this end is cutting the connection (see cut)
        self._cut_later: IDelayedCall | None = None
        self.refused = False
        # A small upload's WRITE line and bytes, held to go in one send with END
        self._held: list[bytes] | None = None
        self._held_size = 0

    def connectionMade(self) -> None:
        tune_for_streams(self.transport)
        if self.secret is None:
            self.ready.callback(self)
        else:
            self._handshake = ("hello", "")
            self.setTimeout(self.request_timeout)

    def _shake(self, text: str) -> None:
        """The secret handshake: HELLO <ns> -> AUTH <np> <proof> -> OK <proof>."""
        assert self._handshake is not None and self.secret is not None
        step, mine = self._handshake
        words = text.split()
        if step == "hello" and len(words) == 2 and words[0] == "HELLO":
            mine = nonce()
            self._handshake = ("proof", mine + " " + words[1])
            self.reply(f"AUTH {mine} {proof(self.secret, PROXY_PROOF, words[1], mine)}")
            return
        if step == "proof" and len(words) == 2 and words[0] == "OK":
            np, ns = mine.split()
            if verify(self.secret, words[1], SERVER_PROOF, np, ns):
                self._handshake = None
                self.setTimeout(None)
                self.ready.callback(self)
                return
        self._handshake = None
        self.transport.abortConnection()
        if not self.ready.called:
            self.ready.errback(Denied("the storage server did not prove it holds the cluster secret"))

    @property
    def reusable(self) -> bool:
        """Connected, between requests, with nothing half-read: fit for the next request."""
        t = self.transport
        return (not self.lost and not self.refused and t is not None and t.connected and not t.disconnecting
                and self._waiting is None and self._body is None and self._sink is None and self._relay is None
                and not self.holding and not self._cutting
                and bool(self.line_mode) and not twisted_internals.holds_unparsed(self)
                and not twisted_internals.has_producer(t))

    def _expect(self, deadline: bool = True) -> defer.Deferred[Any]:
        if self.lost:
            return defer.fail(ConnectionLost("storage server connection lost"))
        self._waiting = defer.Deferred()
        if deadline:
            self.setTimeout(self.request_timeout)
        return self._waiting

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        sink = self._sink
        super().dataReceived(data)
        if self._relay_to is not None and self._body is not None and self._remaining:
            self._begin_relay()  # what came with the reply went to the sink; the rest by splice
        else:
            reader = getattr(sink, "transport", None)  # a reader's (transfer.CountingConsumer)
            if callable(reader):
                send_now(reader())  # the bytes that came, on to the reader

    def timeoutConnection(self) -> None:
        self.hung = True
        self.transport.abortConnection()

    def badLine(self, why: str) -> None:
        self.transport.abortConnection()

    def lineLengthExceeded(self, line: bytes) -> None:
        self.transport.abortConnection()

    def textReceived(self, text: str) -> None:
        if self._handshake is not None:
            self._shake(text)
            return
        if text.startswith("HELLO ") and self._waiting is None and self.secret is None:
            self.transport.abortConnection()  # the server wants a secret this proxy lacks
            return
        d, self._waiting = self._waiting, None
        if self._sink is None or not text.startswith("OK"):
            self.setTimeout(None)  # answered; a READ's body keeps the deadline per byte
        if d is None:
            self.transport.abortConnection()
            return
        if text.startswith("OK"):
            if self._sink is not None:
                self._start_body(text, d)
            else:
                d.callback(text)
        else:
            self._sink = None
            self.refused = True  # after a refused WRITE the server closes: never reuse
            d.errback(from_reply(text))

    def write_blob(self, blob: str, size: int, version: int, replicas: int, name: str,
                   cache: bool = False) -> defer.Deferred[str]:
        """Start an upload; ``cache`` asks the server to keep the blob in its
        page cache (the copy reads go to first)."""
        d = self._expect(deadline=False)  # the upload's own stall watch covers the bytes; END arms it
        line = f"WRITE {blob} {size} {version} {replicas} {quote(name)}" + (" cache" if cache else "")
        if size <= HOLD_FIRST:  # sent with the bytes and END, in one message
            self._held, self._held_size = [line.encode("utf-8") + b"\r\n"], 0
        else:  # at once: the server readies its disk buffers while the bytes come
            self.reply(line)
        return d

    def send(self, data: bytes) -> None:
        if self._held is None:
            self.transport.write(data)
            return
        self._held.append(data)
        self._held_size += len(data)
        if self._held_size > HOLD_FIRST:  # more than it said: the server will refuse it
            self.flush_held()

    def flush_held(self) -> None:
        """Send the WRITE line and the bytes held after it now (before the
        bytes go to the socket some other way)."""
        if self._held is not None:
            held, self._held = self._held, None
            twisted_internals.write_now(self.transport, *held)

    def end(self, sha256: str, blocks: str, meta: str = "") -> None:
        """The last bytes are sent: the file's sha256, the digest of its block
        checksums, and the version's gateway metadata to keep with the blob."""
        line = f"END {sha256} {blocks} {meta_word(meta)}".rstrip().encode("utf-8") + b"\r\n"
        if self._held is not None:
            self._held.append(line)
            self.flush_held()
        else:
            twisted_internals.write_now(self.transport, line)
        send_now(self.transport)
        self.setTimeout(self.request_timeout)

    def delete_blobs(self, blobs: list[str]) -> defer.Deferred[str]:
        """Delete ``blobs`` (DELETES_PER_LINE at most); fires with the reply line."""
        d = self._expect()
        self.reply("DELETE " + " ".join(blobs))
        return d

    def meta(self, blob: str) -> defer.Deferred[tuple[str, int, int]]:
        """The name and version ``blob``'s metadata says it is a copy of, and
        the seconds since its file was written (META)."""
        d = self._expect()
        self.reply(f"META {blob}")

        def read(reply: str) -> tuple[str, int, int]:
            f = fields(reply)
            return f["name"], int(f["version"]), int(f["age"])
        return d.addCallback(read)

    def want(self, blob: str, replicas: int) -> defer.Deferred[str]:
        """Make ``replicas`` the wanted count kept with the blob (WANT); fires with the reply line."""
        d = self._expect()
        self.reply(f"WANT {blob} {replicas}")
        return d

    def read_blob(self, blob: str, offset: int, sink: Sink, relay_to: IStreamTransport | None = None,
                  length: int | None = None, set_aside: bool = False) -> defer.Deferred[int]:
        """Ask for the blob's bytes from ``offset`` to its end, or ``length``
        of them. Fires with the byte count to come once the server accepts;
        then :attr:`body` fires when the last byte has gone to ``sink.write``.

        With ``relay_to`` (a plain TCP transport, see deposito.splice.relay), the
        bytes after those that came with the reply go straight from this
        socket to that one, and ``sink.spliced(n)`` counts them (``sink`` is
        then a :class:`RelaySink`). With ``set_aside``, from the copy the
        server moved aside as corrupt, up to its first bad block (RESCUE)."""
        d = self._expect()
        self._sink = sink
        self._relay_to = relay_to
        self.reply(range_request("RESCUE" if set_aside else "READ", blob, offset, length))
        send_now(self.transport)
        return d

    # The local port only (deposito.protocols.handoff)

    def key(self) -> defer.Deferred[str]:
        """Fires with the key the server gave in its JOIN."""
        d = self._expect()
        self.reply("KEY")
        return d.addCallback(lambda text: text.split()[1] if len(text.split()) == 2 else "")

    def open_blob(self, blob: str, offset: int, length: int | None = None) -> defer.Deferred[int]:
        """Fires with the byte count to send (from ``offset`` to the end, or
        ``length``) once the server has the blob open for :meth:`send_to`."""
        d = self._expect()
        self.reply(range_request("OPEN", blob, offset, length))

        def opened(text: str) -> int:
            self.holding = True  # till SEND: not fit for another request meanwhile
            return parse_count(text.split()[1], "byte count")

        return d.addCallback(opened)

    def send_to(self, fd: int) -> defer.Deferred[str]:
        """Pass socket ``fd`` to the server, which writes the opened blob into
        it; fires once the server is done with it, or fails with the reason it
        stopped early. :attr:`lending` tells, after a failure, whether the
        server may still hold the socket (this end cut the connection first)."""
        if self.lost or self._cutting:  # the socket never goes over
            self.holding = False
            return defer.fail(ConnectionLost("storage server connection lost"))
        cast(IUNIXTransport, self.transport).sendFileDescriptor(fd)  # the local port is a Unix socket
        d = self._expect(deadline=False)  # the hand-off watches the socket's progress itself
        self.lending = True
        self.reply("SEND")

        def done(result: str | Failure) -> str | Failure:
            self.holding = False
            if not self.lost:  # the server answered: it has let go of the socket
                self.lending = False
                if self._cut_later is not None:  # its server is down: cut now
                    self._cut_now()
            return result

        return d.addBoth(done)

    def cut(self, clock: IReactorTime, grace: float) -> None:
        """Cut this connection: its server was taken for down.

        While the server holds a reader's socket (:attr:`lending`), it first
        has ``grace`` seconds to close the connection from its end, as the
        kernel does at once for a process that died: then it can write no
        more into that socket, and another copy may go on from what reached
        it. A server silent past that may yet write: the hand-off ends the
        reader's connection (deposito.splice.handoff.HandOff)."""
        if self.lost or self._cutting:
            return
        if self.lending:
            if self._cut_later is None:
                self._cut_later = clock.callLater(grace, self._cut_now)
            return
        self._cut_now()

    def _cut_now(self) -> None:
        if self._cut_later is not None and self._cut_later.active():
            self._cut_later.cancel()
        self._cut_later = None
        self._cutting = True
        self.transport.abortConnection()

    def _begin_relay(self) -> None:
        target, self._relay_to = self._relay_to, None
        assert target is not None
        self.transport.stopReading()  # nothing more into the target's buffer: wait till it is sent
        self.setTimeout(None)  # the relay keeps its own deadline
        self._draining = _Drained(self, target)
        target.registerProducer(self._draining, False)

    def _start_relay(self, target: IStreamTransport) -> None:
        if self._body is None or self.lost:
            return
        self._relay = Relay(self.reactor, self.transport, target, self._remaining, self.request_timeout)
        self._relay.start().addCallbacks(self._relayed, self._relay_failed)

    def _relayed(self, moved: int) -> None:
        self._relay = None
        cast(RelaySink, self._sink).spliced(moved)
        self._remaining = 0
        self._end_body()

    def _relay_failed(self, failure: Failure) -> None:
        relay, self._relay = self._relay, None
        assert relay is not None
        cast(RelaySink, self._sink).spliced(relay.moved)  # the source was cut: its connectionLost fails the body
        self._remaining -= relay.moved

    def _start_body(self, text: str, d: defer.Deferred[int]) -> None:
        try:
            self._remaining = body_count(text)
        except ValueError:
            self.transport.abortConnection()
            d.errback(ConnectionLost("bad reply from storage server"))
            return
        self._body = defer.Deferred()
        d.callback(self._remaining)
        if self._remaining == 0:
            self._end_body()
        else:
            self.setRawMode()

    @property
    def body(self) -> defer.Deferred[None]:
        assert self._body is not None
        return self._body

    def rawDataReceived(self, data: bytes) -> None:
        take = data[: self._remaining] if len(data) > self._remaining else data
        self._remaining -= len(take)
        assert self._sink is not None
        self._sink.write(take)
        if self._remaining == 0:
            self._end_body()
            if len(take) < len(data):
                self.setLineMode(data[len(take):])

    def _end_body(self) -> None:
        self.setTimeout(None)
        self._relay_to = None
        body, self._body, self._sink = self._body, None, None
        self.setLineMode()
        if body is not None:
            body.callback(None)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost = True
        if reason is None or reason.check(error.ConnectionAborted) is None:
            # Closed from the server's end: a live server closes a reader's
            # socket right after, writing nothing between; a dead one's
            # sockets all close once none of its threads is in a system call.
            self.lending = False
        if self._cut_later is not None and self._cut_later.active():
            self._cut_later.cancel()
        self._cut_later = None
        self.setTimeout(None)
        if self._relay is not None:  # count what it moved before the body fails
            self._relay.fail(SourceLost("storage server connection lost"))
        if self._draining is not None:  # the reader's transport is free for the next copy
            drained, self._draining = self._draining, None
            if getattr(drained.target, "producer", None) is drained:
                drained.target.unregisterProducer()
        err = ConnectionLost("storage server connection lost")
        if not self.ready.called:
            self.ready.errback(err)
        for d in (self._waiting, self._body):
            if d is not None and not d.called:
                d.errback(err)
        self._waiting = self._body = None
