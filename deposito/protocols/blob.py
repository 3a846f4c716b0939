"""The blob protocol: a storage server's own port, spoken by the proxy.

Requests (one line each, words as in the text protocol):

    WRITE <blob> <size> <version> <replicas> <name> [cache]
        (``cache``: keep the blob in the page cache, as the copy reads go to
        first; other big blobs are written around it), then exactly <size> raw bytes, then ``END <sha256> <blocks>``, where
        <blocks> is the digest of the checksum (CRC-32C) of each 1 MiB block sent
        (blobstore.BlockSums); reply ``OK stored <blob> sha256=<hex>`` once
        the blob is durable and its block checksums match <blocks>.
    READ <blob> <offset>
        reply ``OK <remaining> size=<size>``, then <remaining> raw bytes.
    DELETE <blob>
        reply ``OK deleted`` or ``OK absent``.

Errors are ``ERR <code> <message>``, as on the client port. The server's
local port (deposito.protocols.handoff) speaks the same, plus KEY, OPEN and
SEND.

With a cluster secret, the server opens with ``HELLO <ns>``; the proxy answers
``AUTH <np> <hmac>`` and the server ``OK <hmac>``: both have proved they hold
the secret before any request (see deposito.secret).
"""

from __future__ import annotations

import os
from typing import Any, Callable

from twisted.internet import defer, error
from twisted.internet.interfaces import IDelayedCall, IPullProducer, IPushProducer, IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from deposito import diskio, twisted_internals
from deposito.blobstore import BLOCK, BlobMeta, Corrupt, check_blob_id
from deposito.errors import BadArgs, BadCommand, Denied, DepositoError, Internal, from_reply
from deposito.protocols.lines import LineProtocol, handler_for, send_now, tune_for_streams
from deposito.protocols.words import check_name, parse_count, quote, split
from deposito.secret import nonce, proof, verify
from deposito.splice.relay import Relay
from deposito.splice.sockets import SocketWaiter, SourceLost
from deposito.twisted_internals import IStreamReactor

_SENDFILE = getattr(os, "sendfile", None)
FLUSH_BYTES = 1 << 20  # hand bytes to the writer thread in pieces this big
WINDOW_BYTES = 2 << 20  # pause the sender when this much waits for the disk
RECEIVE_MIN = 4 << 20  # a WRITE with this much still to come is read straight into disk buffers


class ConnectionLost(DepositoError):
    code = "unavailable"


class BlobServerProtocol(LineProtocol, TimeoutMixin):
    """Serves WRITE, READ and DELETE for one device."""

    log = Logger()
    idle_timeout = 120

    def __init__(self, reactor: IStreamReactor, device: Any, secret: bytes | None = None) -> None:
        self.reactor = reactor
        self.device = device
        self.secret = secret
        self.authenticated = secret is None
        self._nonce = ""
        self._incoming = None
        self._remaining = 0
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._in_flight = 0
        self._write_error: Failure | None = None
        self._last_write: defer.Deferred = defer.succeed(None)
        self._flushed = False  # some of this WRITE's bytes went to the writer thread
        self._paused_for_disk = False
        self._sender: BlobSender | None = None
        self._receiver: _Receiver | None = None

    def connectionMade(self) -> None:
        tune_for_streams(self.transport)
        self.setTimeout(self.idle_timeout)
        if self.secret is not None:
            self._nonce = nonce()
            self.reply(f"HELLO {self._nonce}")

    def _authenticate(self, words: list[str]) -> None:
        if words[0].upper() != "AUTH" or len(words) != 3:
            raise Denied("AUTH <nonce> <proof> first: this server holds a cluster secret")
        theirs, given = words[1], words[2]
        if not verify(self.secret, given, "proxy-blob", self._nonce, theirs):
            self.log.warn("refused a blob connection from {peer}: wrong proof", peer=str(self.transport.getPeer()))
            raise Denied("wrong proof of the cluster secret")
        self.authenticated = True
        self.reply("OK " + proof(self.secret, "server-blob", theirs, self._nonce))

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        super().dataReceived(data)
        if self.paused and twisted_internals.unparsed_size(self) > self.MAX_LENGTH:
            self.transport.pauseProducing()  # a READ is under way: no more than a line waits
        send_now(self.transport)  # what these requests answered at once

    def timeoutConnection(self) -> None:
        self.log.info("blob connection idle, closing")
        self.transport.abortConnection()

    def fail(self, err: DepositoError, close: bool = False) -> None:
        self.reply(err.reply())
        if close:
            self.transport.loseConnection()

    def textReceived(self, text: str) -> None:
        words: list[str] = []
        try:
            words = split(text)
            if not words:
                return
            if not self.authenticated:
                try:
                    self._authenticate(words)
                except DepositoError as e:
                    self.fail(e, close=True)
                return
            if self._incoming is not None and words[0].upper() != "END":
                raise BadCommand("END expected after the bytes of a WRITE")
            handler_for(self, words)(*words[1:])
        except DepositoError as e:
            # bytes may follow a refused WRITE: the stream cannot be trusted
            writing = bool(words) and words[0].upper() == "WRITE"
            self.fail(e, close=writing or self._incoming is not None)

    # -- WRITE

    def do_WRITE(self, blob: str, size: str, version: str, replicas: str, name: str, cache: str = "") -> None:
        if self._incoming is not None:
            raise BadCommand("WRITE before the last one ended")
        if cache not in ("", "cache"):
            raise BadArgs("the word after the name can only be 'cache'")
        meta = BlobMeta(
            blob=check_blob_id(blob), name=check_name(name),
            version=parse_count(version, "version", 1),
            size=parse_count(size, "size"), sha256="",
            replicas=parse_count(replicas, "replicas", 1, 16),
        )
        self.device.reserve(meta.size)
        self._incoming = self.device.begin(meta, cache=bool(cache))
        self._remaining = meta.size
        self._write_error = None
        self._last_write = defer.succeed(None)
        self._flushed = False
        self.setRawMode()

    def rawDataReceived(self, data: bytes) -> None:
        take = data[: self._remaining]
        rest = data[len(take):]
        self._remaining -= len(take)
        if self._write_error is None:
            self._pending.append(take)
            self._pending_size += len(take)
            # A blob that arrives whole before anything was written waits for
            # END, to be written and committed in one go (see do_END).
            if self._pending_size >= FLUSH_BYTES or self._remaining == 0 and self._flushed:
                self._flush()
        if self._remaining == 0:
            self.setLineMode(rest)
        elif (self._remaining >= RECEIVE_MIN and not twisted_internals.holds_unparsed(self)
              and _Receiver.can_take(self.transport)):
            # The rest goes from the socket straight into the disk's buffers.
            self._flush()
            self._receiver = _Receiver(self, self._remaining)
            self._receiver.start()

    def _received(self) -> None:
        """The receiver has read the last byte: END comes next."""
        self._receiver = None
        self._remaining = 0
        self.setLineMode(b"")
        if self.transport.connected and not self.paused:
            self.transport.startReading()

    def _flush(self) -> None:
        pieces, size = self._pending, self._pending_size
        self._pending = []
        self._pending_size = 0
        if not size:
            return
        self._flushed = True
        self._in_flight += size
        d = self.device.write(self._incoming, pieces)
        d.addCallbacks(self._written, self._write_failed, callbackArgs=(size,), errbackArgs=(size,))
        self._last_write = d
        if self._in_flight > WINDOW_BYTES and not self._paused_for_disk:
            self._paused_for_disk = True
            self.transport.pauseProducing()

    def _written(self, _: object, size: int) -> None:
        self._in_flight -= size
        if self._paused_for_disk and self._in_flight <= WINDOW_BYTES // 2:
            self._paused_for_disk = False
            if not self.paused:  # still paused for a commit: that resumes it
                self.transport.resumeProducing()

    def _write_failed(self, failure: Failure, size: int) -> None:
        self._written(None, size)
        if self._write_error is None:
            self._write_error = failure

    def do_END(self, sha256: str, blocks: str) -> None:
        incoming, self._incoming = self._incoming, None
        if incoming is None:
            raise BadCommand("END without WRITE")
        if self._pending:  # a small blob, all here: one trip to a disk thread
            data = b"".join(self._pending)
            self._pending.clear()
            self._pending_size = 0
            d = self.device.commit(incoming, sha256, blocks, last=data)
        else:
            d = self._last_write  # writes are in order: the last one done means all are

            def written(_: object) -> Any:
                if self._write_error is not None:
                    return self._write_error
                return self.device.commit(incoming, sha256, blocks)

            d.addCallback(written)
        self.pauseProducing()  # first: a failed write answers at once, and that resumes
        d.addBoth(self._committed, incoming)

    def _committed(self, result: Any, incoming: Any) -> None:
        self.device.release(incoming.meta.size)
        if isinstance(result, Failure):
            err = result.value if isinstance(result.value, DepositoError) else None
            if err is None:
                self.log.failure("writing blob {blob}", result, blob=incoming.meta.blob)
                err = Internal("write failed")
            self.device.abort(incoming)
            self.fail(err)
        else:
            self.reply(f"OK stored {result.blob} sha256={result.sha256}")
        if self.transport.connected:
            self.resumeProducing()

    # -- READ

    def do_READ(self, blob: str, offset: str) -> None:
        self.open_blob(blob, offset, self._opened)

    def open_blob(self, blob: str, offset: str, then: Callable[[Any, BlobMeta, int], None]) -> None:
        """Open ``blob`` for a request, with the lines after it waiting (the
        socket is still read till a sender takes over); then ``then(f, meta,
        offset)``. A missing blob or an offset past its end is answered here."""
        start = parse_count(offset, "offset")
        d = self.device.open(check_blob_id(blob))
        self.paused = True
        d.addCallbacks(self._check_offset, self._open_failed, callbackArgs=(start, then))

    def _check_offset(self, opened: Any, offset: int, then: Callable[[Any, BlobMeta, int], None]) -> None:
        f, meta = opened
        if offset > meta.size:
            self.device.close(f)
            self.fail(BadArgs("offset past the end"))
            self.resumeProducing()
            return
        then(f, meta, offset)

    def _opened(self, f: Any, meta: BlobMeta, offset: int) -> None:
        if meta.size <= BLOCK and offset < meta.size and self._send_whole(f, meta, offset):
            return
        self.reply(f"OK {meta.size - offset} size={meta.size}")
        self.pauseProducing()  # the socket unread now: the sender may wait on it for writing
        self._sender = BlobSender(self.reactor, self.device, f, meta, offset, self.transport, self._sent,
                                   self.resetTimeout)
        self._sender.start()

    def _send_whole(self, f: Any, meta: BlobMeta, offset: int) -> bool:
        """A blob of one block that is all in memory: read, checked and sent
        with its reply at once. False, with nothing sent, for anything else
        (the sender then reads it, and deals with rot or a failing read)."""
        try:
            view = self.device.read_block_now(f, meta, 0)
        except (Corrupt, OSError):
            return False
        if view is None:
            return False
        self.reply(f"OK {meta.size - offset} size={meta.size}")
        self.transport.write(bytes(view[offset:]))
        self.device.close(f)
        self._sent()
        return True

    def _open_failed(self, failure: Failure) -> None:
        err = failure.value if isinstance(failure.value, DepositoError) else Internal("cannot open blob")
        self.fail(err)
        self.resumeProducing()

    def _sent(self) -> None:
        self._sender = None
        if self.transport.connected:
            self.resumeProducing()

    # -- DELETE

    def do_DELETE(self, blob: str) -> None:
        d = self.device.delete(check_blob_id(blob))
        self.pauseProducing()

        def done(existed: bool) -> None:
            self.reply("OK deleted" if existed else "OK absent")
            self.resumeProducing()

        def failed(failure: Failure) -> None:
            self.log.failure("deleting blob {blob}", failure, blob=blob)
            self.fail(Internal("delete failed"))
            self.resumeProducing()

        d.addCallbacks(done, failed)

    def connectionLost(self, reason: Failure = None) -> None:
        self.setTimeout(None)
        if self._receiver is not None:
            self._receiver.stop()
            self._receiver = None
        if self._incoming is not None:
            incoming, self._incoming = self._incoming, None
            self.device.release(incoming.meta.size)
            self.device.abort(incoming)
        if self._sender is not None:
            self._sender.stopProducing()


class _Receiver:
    """Reads the rest of a WRITE's bytes from the socket straight into the
    disk's aligned buffers (recv_into), each handed whole to the writer
    thread, instead of through Twisted's reads and a copy into the buffer.

    A few buffers per blob: while one fills, the others are being written.
    With none free, the socket is left unread (the sender is paused by TCP).
    After a failed write the rest is read and dropped, and END reports the
    error, as on the ordinary path. The transport stops reading meanwhile
    and reads again (the END line) once the last byte is in.
    """

    depth = 3  # buffers per blob
    burst = 4 << 20  # bytes read in one go before other connections get a turn

    def __init__(self, protocol: BlobServerProtocol, count: int) -> None:
        self.protocol = protocol
        self.reactor = protocol.reactor
        self.transport = protocol.transport
        self.remaining = count
        self._at = protocol._incoming.meta.size - count  # where in the blob the next buffer starts
        self._buffer: Any = None  # the one being filled
        self._filled = 0
        self._limit = 0  # how much it takes: up to the next whole PIECE of the blob
        self._free: list[Any] = []
        self._out = 0  # buffers with the writer thread
        self._readable = SocketWaiter(self.transport, self.pump, self._lost)
        self.reading = False
        self.stopped = False

    @staticmethod
    def can_take(transport: Any) -> bool:
        return twisted_internals.is_plain_tcp_server(transport)

    def start(self) -> None:
        self.transport.stopReading()
        self.pump()

    def pump(self) -> None:
        if self.stopped:
            return
        sock = self.transport.getHandle()
        taken = 0
        while self.remaining and taken < self.burst:
            if self._buffer is None:
                if not self._free and self._out >= self.depth:
                    break  # every buffer is being written: wait for one
                self._buffer = self._free.pop() if self._free else diskio.take_buffer()
                self._filled = 0
                # Buffers end where the blob's PIECEs do, so after the first
                # (which tops up what the ordinary path left staged) each goes
                # to the disk straight from where it was read.
                self._limit = diskio.PIECE - self._at % diskio.PIECE
            want = min(self._limit - self._filled, self.remaining)
            try:
                with memoryview(self._buffer) as whole, whole[self._filled:self._filled + want] as view:
                    n = sock.recv_into(view)
            except BlockingIOError:
                break
            except OSError:
                n = 0
            if n == 0:  # the proxy went away mid-blob
                self._lost()
                return
            self._filled += n
            self.remaining -= n
            taken += n
            if self._filled == self._limit or not self.remaining:
                self._hand_over()
        if taken:
            self.protocol.resetTimeout()
        if not self.remaining:
            self._stop_reading()
            self._finish()
            return
        # A buffer to fill: wait for bytes (the reactor calls again, after
        # its other work when a burst was cut short). None: wait for a write.
        if self._buffer is not None or self._free or self._out < self.depth:
            if not self.reading:
                self.reactor.addReader(self._readable)
                self.reading = True
        else:
            self._stop_reading()

    def _hand_over(self) -> None:
        buffer, length, self._buffer = self._buffer, self._filled, None
        self._at += length
        p = self.protocol
        if p._write_error is not None or p._incoming is None:
            self._free.append(buffer)  # dropped: END reports the error
            return
        self._out += 1
        p._flushed = True
        d = p.device.write_piece(p._incoming, buffer, length)
        d.addBoth(self._written, buffer)
        p._last_write = d

    def _written(self, result: Any, buffer: Any) -> None:
        self._out -= 1
        if isinstance(result, Failure):
            # Its traceback may still see the buffer: not used again; and no
            # traceback kept for END to report.
            result.cleanFailure()
            self.protocol._write_failed(result, 0)
        elif self.stopped:
            diskio.give_back(buffer)
        else:
            self._free.append(buffer)
        if not self.stopped and self.remaining and not self.reading:
            self.pump()

    def _finish(self) -> None:
        self.stopped = True
        for buffer in self._free:
            diskio.give_back(buffer)
        self._free.clear()
        self.protocol._received()

    def _lost(self) -> None:
        if not self.stopped:
            self.stop()
            self.transport.abortConnection()

    def _stop_reading(self) -> None:
        if self.reading:
            self.reactor.removeReader(self._readable)
            self.reading = False

    def stop(self) -> None:
        """The connection is gone: give the buffers back (those with the writer, once written)."""
        if self.stopped:
            return
        self.stopped = True
        self._stop_reading()
        for buffer in self._free + ([self._buffer] if self._buffer is not None else []):
            diskio.give_back(buffer)
        self._free.clear()
        self._buffer = None


@implementer(IPushProducer)
class BlobSender:
    """Sends a blob block by block, each checked against its checksum first.

    A block all in the page cache is read and checked on the reactor thread
    (a read that never waits on the disk); any other is read on a reader
    thread, one block ahead of the one being sent, so the disk and the
    network work at the same time. A checked block of a cached copy goes out
    with sendfile, from the same pages and with no copy through this process.
    The peer's transport pauses the sending (the read ahead waits). A block
    that fails its check is never sent: the copy is reported corrupt and the
    connection is cut, so the reader moves to another copy.
    """

    burst = 8  # blocks moved in one go before other connections get a turn

    def __init__(self, reactor: IStreamReactor, device: Any, f: Any, meta: BlobMeta, offset: int, transport: Any,
                 done: Callable[[], None], progress: Callable[[], None]) -> None:
        self.reactor = reactor
        self.device, self.f, self.meta, self.offset = device, f, meta, offset
        self.transport, self.done, self.progress = transport, done, progress
        self._read_at = offset  # where the next block read starts
        # Read and checked, not yet sent: the bytes, or (offset, length) in the
        # file when the kernel is to send them.
        self._ready: bytes | tuple[int, int] | None = None
        self._sending: tuple[int, int] | None = None  # (file offset, length) the kernel is sending
        self._writable = SocketWaiter(transport, self._can_write, self._lost)
        self._again: Any = None  # the call that goes on after a burst
        self.paused = False
        self.reading = False
        self.stopped = False

    def start(self) -> None:
        self.transport.registerProducer(self, True)
        self._pump()

    def _pump(self) -> None:
        """Send what is ready and read what comes next, as far as can be done
        without waiting; a burst at most, then the reactor's other work."""
        self._again = None
        for _ in range(self.burst):
            if self.stopped:
                return
            moved = False
            if self._ready is not None and self._sending is None and not self.paused:
                self._send()
                moved = True
            if self.stopped or self._ready is not None or self.reading:
                if not moved:
                    return
                continue
            if self._read_at >= self.meta.size:
                if self._sending is None:
                    self._finish()
                return
            try:
                if not self._read_now():
                    self._read_on_thread()
                    return
            except Corrupt as e:
                self._corrupt(str(e))
                return
            except OSError:
                BlobServerProtocol.log.failure("reading blob {blob}", blob=self.meta.blob)
                self.stopProducing()
                self.transport.abortConnection()
                return
        self._again = self.reactor.callLater(0, self._pump)

    def _read_now(self) -> bool:
        """Read and check the next block here, if it is all in memory."""
        if not getattr(self.f, "through_cache", False):
            return False
        index, skip = divmod(self._read_at, BLOCK)
        view = self.device.read_block_now(self.f, self.meta, index)
        if view is None:
            return False
        length = len(view) - skip
        if self._kernel_can_send():  # and it still can when the block's turn comes: only we write
            self._ready = (self._read_at, length)
        else:
            self._ready = bytes(view[skip:])
        self._read_at += length
        return True

    def _read_on_thread(self) -> None:
        self.reading = True
        d = self.device.read_block(self.f, self.meta, self._read_at // BLOCK)
        d.addCallbacks(self._got, self._failed)

    def _got(self, block: bytes) -> None:
        self.reading = False
        if self.stopped:
            self.device.close(self.f)  # closed only now: it was being read
            return
        skip = self._read_at % BLOCK
        self._ready = block[skip:] if skip else block
        self._read_at += len(self._ready)
        self._pump()

    def _send(self) -> None:
        ready, self._ready = self._ready, None
        assert ready is not None
        if isinstance(ready, tuple):
            self._sending = ready
        elif self._kernel_can_send():
            # The block was read and checked from the page cache: the kernel
            # sends those same pages, with no copy through this process.
            self._sending = (self._read_at - len(ready), len(ready))
        else:
            self.offset += len(ready)
            self.progress()
            self.transport.write(ready)  # may pause us: the next block is read all the same
            return
        self.offset += self._sending[1]
        self.progress()
        self._send_file()

    def _kernel_can_send(self) -> bool:
        t = self.transport
        if _SENDFILE is None or not getattr(self.f, "through_cache", False):
            return False
        if getattr(t, "passed", False):  # a reader's socket the proxy passed over (deposito.protocols.handoff)
            return bool(t.idle)
        return (twisted_internals.is_plain_tcp_server(t)
                and not twisted_internals.write_pending(self.reactor, t))  # nothing of Twisted's waits to go first

    def _can_write(self) -> None:
        self.reactor.removeWriter(self._writable)
        if self._sending is not None and not self.stopped:
            self._send_file()
            if self._sending is None:
                self._pump()

    def _send_file(self) -> None:
        """Go on sending the block in :attr:`_sending`; wait when the socket is full."""
        assert self._sending is not None
        start, length = self._sending
        while length:
            try:
                n = _SENDFILE(self.transport.fileno(), self.f.fd, start, length)
            except BlockingIOError:
                self._sending = (start, length)
                self.reactor.addWriter(self._writable)
                return
            except OSError:
                n = 0
            if n == 0:  # the peer is gone, or the file shrank under us
                self._sending = None
                self.stopProducing()
                self.transport.abortConnection()
                return
            start, length = start + n, length - n
        self._sending = None

    def _lost(self) -> None:
        """The socket was lost while a block waited to go into it."""
        self.stopProducing()
        self.transport.abortConnection()

    def _failed(self, failure: Failure) -> None:
        self.reading = False
        if self.stopped:  # the reader went away meanwhile: not the blob's fault
            self.device.close(self.f)
            return
        if failure.check(Corrupt):
            self._corrupt(failure.getErrorMessage())
            return
        BlobServerProtocol.log.failure("reading blob {blob}", failure, blob=self.meta.blob)
        self.stopProducing()
        self.transport.abortConnection()

    def _corrupt(self, why: str) -> None:
        self.device.corrupt(self.meta.blob, why)
        self.stopProducing()
        self.transport.abortConnection()

    def _finish(self) -> None:
        self.stopped = True
        self.transport.unregisterProducer()
        self.device.close(self.f)
        self.done()

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        if not self.stopped and self._again is None:
            self._pump()

    def stopProducing(self) -> None:
        if not self.stopped:
            self.stopped = True
            self._ready = None
            if self._again is not None:
                self._again.cancel()
                self._again = None
            if self._sending is not None:
                self._sending = None
                self.reactor.removeWriter(self._writable)
            if not self.reading:  # else closed when the read in progress returns
                self.device.close(self.f)


@implementer(IPullProducer)
class _Drained:
    """Waits for a transport to have sent everything written to it (Twisted
    asks a pull producer for more each time its buffer runs empty)."""

    def __init__(self, client: BlobClient, target: Any) -> None:
        self.client, self.target = client, target

    def resumeProducing(self) -> None:
        if twisted_internals.write_pending(self.client.reactor, self.target):
            return  # still sending: asked again once it is done
        self.target.unregisterProducer()
        self.client._draining = None
        self.client._start_relay(self.target)

    def stopProducing(self) -> None:  # the reader went away
        self.client.transport.abortConnection()


class BlobServerFactory(Factory):
    def __init__(self, reactor: IStreamReactor, device: Any, secret: bytes | None = None) -> None:
        self.reactor = reactor
        self.device = device
        self.secret = secret

    def buildProtocol(self, addr: Any) -> BlobServerProtocol:
        p = BlobServerProtocol(self.reactor, self.device, self.secret)
        p.factory = self
        return p


class BlobClient(LineProtocol, TimeoutMixin):
    """The proxy's end of a blob connection: one request at a time.

    ``write_blob``/``send``/``end`` upload a blob; ``read_blob`` streams one
    into a sink; ``delete_blob`` removes one. Each returns a Deferred that fails
    with a DepositoError on an ERR reply or ConnectionLost.
    """

    request_timeout = 60.0  # no reply, or no byte of a body, for this long: the server is hung

    def __init__(self, reactor: IStreamReactor, secret: bytes | None = None) -> None:
        self.reactor = reactor
        self.secret = secret
        self.ready: defer.Deferred = defer.Deferred()  # fires with self once usable
        self._handshake: tuple[str, str] | None = None
        self._waiting: defer.Deferred | None = None
        self._sink: Any = None
        self._remaining = 0
        self._body: defer.Deferred | None = None
        self._relay_to: Any = None  # a socket transport to splice a READ's body into
        self._relay: Any = None
        self._draining: _Drained | None = None  # waits for the relay's target to send what it holds
        self.lost = False
        self.holding = False  # a blob is open for SEND on the server (the local port)
        # The server holds a reader's socket that came with SEND and has not
        # shown that it let go of it: no reply yet, and the connection not
        # closed from its end (see deposito.protocols.handoff).
        self.lending = False
        self._cutting = False  # this end is cutting the connection (see cut)
        self._cut_later: IDelayedCall | None = None
        self.refused = False

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
            self.reply(f"AUTH {mine} {proof(self.secret, 'proxy-blob', words[1], mine)}")
            return
        if step == "proof" and len(words) == 2 and words[0] == "OK":
            np, ns = mine.split()
            if verify(self.secret, words[1], "server-blob", np, ns):
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

    def _expect(self, deadline: bool = True) -> defer.Deferred:
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
        elif callable(getattr(sink, "transport", None)):  # a reader's (transfer.CountingConsumer)
            send_now(sink.transport())  # the bytes that came, on to the reader

    def timeoutConnection(self) -> None:
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
                   cache: bool = False) -> defer.Deferred:
        """Start an upload; ``cache`` asks the server to keep the blob in its
        page cache (the copy reads go to first)."""
        d = self._expect(deadline=False)  # the upload's own stall watch covers the bytes; END arms it
        self.reply(f"WRITE {blob} {size} {version} {replicas} {quote(name)}" + (" cache" if cache else ""))
        return d

    def send(self, data: bytes) -> None:
        self.transport.write(data)

    def end(self, sha256: str, blocks: str) -> None:
        """The last bytes are sent: the file's sha256 and the digest of its block checksums."""
        self.reply(f"END {sha256} {blocks}")
        send_now(self.transport)
        self.setTimeout(self.request_timeout)

    def delete_blob(self, blob: str) -> defer.Deferred:
        d = self._expect()
        self.reply(f"DELETE {blob}")
        return d

    def read_blob(self, blob: str, offset: int, sink: Any, relay_to: Any = None) -> defer.Deferred:
        """Fires with the byte count to come once the server accepts; then
        :attr:`body` fires when the last byte has gone to ``sink.write``.

        With ``relay_to`` (a plain TCP transport, see deposito.splice.relay), the
        bytes after those that came with the reply go straight from this
        socket to that one, and ``sink.spliced(n)`` counts them."""
        d = self._expect()
        self._sink = sink
        self._relay_to = relay_to
        self.reply(f"READ {blob} {offset}")
        send_now(self.transport)
        return d

    # The local port only (deposito.protocols.handoff)

    def key(self) -> defer.Deferred:
        """Fires with the key the server gave in its JOIN."""
        d = self._expect()
        self.reply("KEY")
        return d.addCallback(lambda text: text.split()[1] if len(text.split()) == 2 else "")

    def open_blob(self, blob: str, offset: int) -> defer.Deferred:
        """Fires with the byte count from ``offset`` once the server has the blob open for :meth:`send_to`."""
        d = self._expect()
        self.reply(f"OPEN {blob} {offset}")

        def opened(text: str) -> int:
            self.holding = True  # till SEND: not fit for another request meanwhile
            return parse_count(text.split()[1], "byte count")

        return d.addCallback(opened)

    def send_to(self, fd: int) -> defer.Deferred:
        """Pass socket ``fd`` to the server, which writes the opened blob into
        it; fires once the server is done with it, or fails with the reason it
        stopped early. :attr:`lending` tells, after a failure, whether the
        server may still hold the socket (this end cut the connection first)."""
        if self.lost or self._cutting:  # the socket never goes over
            self.holding = False
            return defer.fail(ConnectionLost("storage server connection lost"))
        self.transport.sendFileDescriptor(fd)
        d = self._expect(deadline=False)  # the hand-off watches the socket's progress itself
        self.lending = True
        self.reply("SEND")

        def done(result: Any) -> Any:
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
        self.transport.stopReading()  # nothing more into the target's buffer: wait till it is sent
        self.setTimeout(None)  # the relay keeps its own deadline
        self._draining = _Drained(self, target)
        target.registerProducer(self._draining, False)

    def _start_relay(self, target: Any) -> None:
        if self._body is None or self.lost:
            return
        self._relay = Relay(self.reactor, self.transport, target, self._remaining, self.request_timeout)
        self._relay.start().addCallbacks(self._relayed, self._relay_failed)

    def _relayed(self, moved: int) -> None:
        self._relay = None
        self._sink.spliced(moved)
        self._remaining = 0
        self._end_body()

    def _relay_failed(self, failure: Failure) -> None:
        relay, self._relay = self._relay, None
        self._sink.spliced(relay.moved)  # the source was cut: its connectionLost fails the body
        self._remaining -= relay.moved

    def _start_body(self, text: str, d: defer.Deferred) -> None:
        words = text.split()
        try:
            self._remaining = int(words[1])
        except (IndexError, ValueError):
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
    def body(self) -> defer.Deferred:
        assert self._body is not None
        return self._body

    def rawDataReceived(self, data: bytes) -> None:
        take = data[: self._remaining] if len(data) > self._remaining else data
        self._remaining -= len(take)
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

    def connectionLost(self, reason: Failure = None) -> None:
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
