"""The storage server's end of the blob protocol (see deposito.protocols.blobwire).

The protocol frames and parses; a WRITE's bytes go to a
:class:`deposito.receiver.Receiver` and a READ's come from a
:class:`deposito.sender.BlobSender`, both handed the transport and the device.
"""

from __future__ import annotations

import os
import time

from collections import OrderedDict
from typing import Callable

import attrs
from twisted.internet.defer import FirstError, gatherResults
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from deposito import twisted_internals
from deposito.blobmeta import BlobMeta, Corrupt
from deposito.blobstore import check_blob_id
from deposito.diskio import Reader
from deposito.errors import BadArgs, BadCommand, Denied, DepositoError, Internal, NotFound, Unavailable
from deposito.interfaces import IDevice
from deposito.listening import peer
from deposito.protocols.blobwire import PROXY_PROOF, SERVER_PROOF, body_reply, parse_range, range_end
from deposito.protocols.lines import LineProtocol, handler_for, send_now, tune_for_streams
from deposito.protocols.words import check_stored_name, parse_count, parse_meta_word, quote, split
from deposito.receiver import Receiver
from deposito.secret import nonce, proof, verify
from deposito.sender import BlobSender, read_whole
from deposito.twisted_internals import IStreamReactor, IStreamTransport

Opened = Callable[[Reader, BlobMeta, int, int], None]  # (file, metadata, offset, end)

PROVE_WITHIN = 5.0  # seconds a connection has in all to prove the cluster secret, whatever it sends
UNPROVEN_MOST = 512  # connections that have not proved it yet, at once, at most (see BlobServerFactory.unproven)
PROVE_QUICKLY = 1.0  # seconds after which one of those may be closed to make room (a proxy takes a round trip)


class BlobServerProtocol(LineProtocol, TimeoutMixin):
    """Serves WRITE, READ, DELETE and WANT for one device."""

    log = Logger()
    idle_timeout = 120
    transport: IStreamTransport

    def __init__(self, reactor: IStreamReactor, device: IDevice, secret: bytes | None = None) -> None:
        self.reactor = reactor
        self.device = device
        self.secret = secret
        self.authenticated = secret is None
        self._nonce = ""
        self._receiver: Receiver | None = None  # the WRITE under way, till its END
        self._sender: BlobSender | None = None

    def connectionMade(self) -> None:
        tune_for_streams(self.transport)
        self.setTimeout(self.idle_timeout if self.authenticated else PROVE_WITHIN)
        if self.secret is not None:
            self.factory.unproven(self)
            self._nonce = nonce()
            self.reply(f"HELLO {self._nonce}")

    def _authenticate(self, words: list[str]) -> None:
        assert self.secret is not None
        if words[0].upper() != "AUTH" or len(words) != 3:
            raise Denied("AUTH <nonce> <proof> first: this server holds a cluster secret")
        theirs, given = words[1], words[2]
        if not verify(self.secret, given, PROXY_PROOF, self._nonce, theirs):
            self.log.warn("refused a blob connection from {peer}: wrong proof", peer=peer(self.transport.getPeer()))
            raise Denied("wrong proof of the cluster secret")
        self.authenticated = True
        self.factory.proven(self)
        self.setTimeout(self.idle_timeout)
        self.reply("OK " + proof(self.secret, SERVER_PROOF, theirs, self._nonce))

    def dataReceived(self, data: bytes) -> None:
        if self.authenticated:  # before, it has PROVE_WITHIN in all
            self.resetTimeout()
        super().dataReceived(data)
        if self.paused and twisted_internals.unparsed_size(self) > self.MAX_LENGTH:
            self.transport.pauseProducing()  # a request is under way: no more than a line waits
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
            if self._receiver is not None and words[0].upper() != "END":
                raise BadCommand("END expected after the bytes of a WRITE")
            handler_for(self, words)(*words[1:])
        except DepositoError as e:
            # bytes may follow a refused WRITE: the stream cannot be trusted
            writing = bool(words) and words[0].upper() == "WRITE"
            self.fail(e, close=writing or self._receiver is not None)

    # -- WRITE

    def do_WRITE(self, blob: str, size: str, version: str, replicas: str, name: str, cache: str = "") -> None:
        if self._receiver is not None:
            raise BadCommand("WRITE before the last one ended")
        if cache not in ("", "cache"):
            raise BadArgs("the word after the name can only be 'cache'")
        meta = BlobMeta(
            blob=check_blob_id(blob), name=check_stored_name(name),
            version=parse_count(version, "version", 1),
            size=parse_count(size, "size"), sha256="",
            replicas=parse_count(replicas, "replicas", 1, 16),
        )
        self._receiver = Receiver(self.reactor, self.device, meta, bool(cache), self.transport, self.resetTimeout)
        self.setRawMode()

    def rawDataReceived(self, data: bytes) -> None:
        receiver = self._receiver
        assert receiver is not None
        rest = receiver.take(data)
        if receiver.remaining == 0:
            self.setLineMode(rest)
        elif not twisted_internals.holds_unparsed(self):
            receiver.read_socket(self._received)  # the rest straight from the socket, where it can

    def _received(self) -> None:
        """The receiver has read the last byte from the socket: END comes next."""
        self.setLineMode(b"")
        if self.transport.connected and not self.paused:
            self.transport.startReading()

    def do_END(self, sha256: str, blocks: str, meta: str = "") -> None:
        receiver, self._receiver = self._receiver, None
        if receiver is None:
            raise BadCommand("END without WRITE")
        if meta:  # kept with the blob, so that a rebuilt catalog has it again
            receiver.incoming.meta = attrs.evolve(receiver.incoming.meta, meta=parse_meta_word(meta))
        d = receiver.finish(sha256, blocks)
        self.paused = True  # lines wait (first: a failed write answers at once, and that resumes)
        d.addCallbacks(self._committed, self._not_committed)

    def _committed(self, meta: BlobMeta) -> None:
        self.reply(f"OK stored {meta.blob} sha256={meta.sha256}")
        if self.transport.connected:
            self.resumeProducing()

    def _not_committed(self, failure: Failure) -> None:
        err = failure.value
        self.fail(err if isinstance(err, DepositoError) else Internal("write failed"))
        if self.transport.connected:
            self.resumeProducing()

    # -- READ

    def do_READ(self, blob: str, offset: str, length: str = "") -> None:
        self.open_blob(blob, offset, length, self._opened)

    def open_blob(self, blob: str, offset: str, length: str, then: Opened) -> None:
        """Open ``blob`` for a request, with the lines after it waiting (the
        socket is still read till a sender takes over); then ``then(f, meta,
        offset, end)``. A missing blob or a range not within it is answered
        here."""
        start, count = parse_range(offset, length)
        d = self.device.open(check_blob_id(blob))
        self.paused = True
        d.addCallbacks(self._check_range, self._open_failed, callbackArgs=(start, count, then),
                       errbackArgs=(blob,))

    def _check_range(self, opened: tuple[Reader, BlobMeta], offset: int, length: int | None, then: Opened) -> None:
        f, meta = opened
        try:
            end = range_end(offset, length, meta.size)
        except BadArgs as e:
            self.device.close(f)
            self.fail(e)
            self.resumeProducing()
            return
        then(f, meta, offset, end)

    def _opened(self, f: Reader, meta: BlobMeta, offset: int, end: int) -> None:
        try:
            whole = read_whole(self.device, f, meta, offset, end)
        except Corrupt as e:  # refused as a missing copy before any reply: the reader goes to another
            self.device.close(f)
            self.refuse_corrupt(meta.blob, str(e))
            return
        if whole is not None:  # all in memory: sent with its reply at once
            self.reply(body_reply(end - offset, meta.size), whole)
            self.device.close(f)
            self._sent()
            return
        # A bigger range's reply goes out first, so that the kernel may send the blob's pages
        # after it while the reader takes the reply in: its first block is checked after
        # (checking it before cost a 1 MiB read 3 %), and rot there cuts the read.
        self.reply(body_reply(end - offset, meta.size))
        self.pauseProducing()  # the socket unread now: the sender may wait on it for writing
        self._sender = BlobSender(self.reactor, self.device, f, meta, offset, end, self.transport, self._sent,
                                  self.resetTimeout)
        self._sender.start()

    def do_RESCUE(self, blob: str, offset: str, length: str = "") -> None:
        """READ from a copy moved aside as corrupt: its blocks are sent, each
        checked, up to the first bad one, where the connection is cut (and
        nothing more is reported). See deposito.transfer.rescue_blob."""
        start, count = parse_range(offset, length)
        d = self.device.open_set_aside(check_blob_id(blob))
        self.paused = True
        d.addCallbacks(self._check_range, self._set_aside_failed, callbackArgs=(start, count, self._rescuing))

    def _rescuing(self, f: Reader, meta: BlobMeta, offset: int, end: int) -> None:
        self.reply(body_reply(end - offset, meta.size))
        self.pauseProducing()
        self._sender = BlobSender(self.reactor, self.device, f, meta, offset, end, self.transport, self._sent,
                                  self.resetTimeout, report=False)
        self._sender.start()

    def _set_aside_failed(self, failure: Failure) -> None:
        if failure.check(Corrupt):
            err: DepositoError = NotFound(f"no such blob set aside can be read ({failure.getErrorMessage()})")
        else:
            err = failure.value if isinstance(failure.value, DepositoError) else Internal("cannot open blob")
        self.fail(err)
        self.resumeProducing()

    def _open_failed(self, failure: Failure, blob: str) -> None:
        if failure.check(Corrupt):  # its metadata is lost: moved aside and reported, like rot
            self.refuse_corrupt(blob, failure.getErrorMessage())
            return
        self.fail(failure.value if isinstance(failure.value, DepositoError) else Internal("cannot open blob"))
        self.resumeProducing()

    def refuse_corrupt(self, blob: str, why: str) -> None:
        """The copy was found bad before anything of it was answered: moved
        aside and reported, and the request answered as for a missing copy
        (the reader goes to another one)."""
        self.device.corrupt(blob, why)
        self.fail(NotFound(f"no such blob (it was corrupt: {why})"))
        self.resumeProducing()

    def _sent(self) -> None:
        self._sender = None
        if self.transport.connected:
            self.resumeProducing()

    # -- META

    def do_META(self, blob: str) -> None:
        """What a blob's metadata says it is a copy of (a proxy asks of a
        blob its catalog does not know: see ICatalog.judge_unknown)."""
        d = self.device.open(check_blob_id(blob))
        self.paused = True  # lines wait
        d.addCallbacks(self._told_meta, self._open_failed, errbackArgs=(blob,))

    def _told_meta(self, opened: tuple[Reader, BlobMeta]) -> None:
        f, meta = opened
        try:
            age = max(0, int(time.time() - os.fstat(f.fd).st_mtime))  # (an open file's inode: no wait on the disk)
        finally:
            self.device.close(f)
        self.reply(f"OK version={meta.version} name={quote(meta.name)} age={age}")
        self.resumeProducing()

    # -- DELETE

    def do_DELETE(self, blob: str, *more: str) -> None:
        blobs = [check_blob_id(b) for b in (blob, *more)]
        d = gatherResults([self.device.delete(b) for b in blobs], consumeErrors=True)
        self.paused = True  # lines wait

        def done(existed: list[bool]) -> None:
            self.reply(f"OK deleted={sum(existed)} absent={len(existed) - sum(existed)}")
            self.resumeProducing()

        def failed(failure: Failure) -> None:
            if isinstance(failure.value, FirstError):
                failure = failure.value.subFailure
            told = self.device.failed(failure)
            if told is None:
                self.log.failure("deleting {count} blobs from {first}", failure, count=len(blobs), first=blob)
                told = Internal("delete failed")
            self.fail(told)
            self.resumeProducing()

        d.addCallbacks(done, failed)

    # -- WANT

    def do_WANT(self, blob: str, replicas: str) -> None:
        """The copy keeps ``replicas`` as its wanted count once it was read
        whole and found good (Device.checked): a proxy drops a file's extra
        copies only once those it keeps took the count. A bad one is moved
        aside, reported, and answered as missing; a big one not read lately
        is answered ``ERR unavailable`` while it is read (the proxy asks
        again later, and keeps the extra copies meanwhile)."""
        count = parse_count(replicas, "replicas", 1, 16)
        blob = check_blob_id(blob)
        d = self.device.checked(blob).addCallback(lambda _: self.device.set_wanted(blob, count))
        self.paused = True  # lines wait

        def done(here: bool) -> None:
            self.reply("OK" if here else NotFound("no such blob").reply())
            self.resumeProducing()

        def failed(failure: Failure) -> None:
            if failure.check(Corrupt):
                self.refuse_corrupt(blob, failure.getErrorMessage())
                return
            if failure.check(NotFound):
                done(False)
                return
            told = failure.value if isinstance(failure.value, Unavailable) else self.device.failed(failure)
            if told is None:
                self.log.failure("keeping the wanted count of {blob}", failure, blob=blob)
                told = Internal("the wanted count could not be kept")
            self.fail(told)
            self.resumeProducing()

        d.addCallbacks(done, failed)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.setTimeout(None)
        self.factory.proven(self)
        if self._receiver is not None:
            receiver, self._receiver = self._receiver, None
            receiver.stop()
        if self._sender is not None:
            self._sender.stopProducing()


class BlobServerFactory(Factory):
    def __init__(self, reactor: IStreamReactor, device: IDevice, secret: bytes | None = None) -> None:
        self.reactor = reactor
        self.device = device
        self.secret = secret
        self._unproven: OrderedDict[BlobServerProtocol, float] = OrderedDict()  # when each came, oldest first

    def unproven(self, connection: BlobServerProtocol) -> None:
        """A connection that must prove the cluster secret first. Past
        UNPROVEN_MOST of them, the oldest is closed if it has had
        PROVE_QUICKLY to do it (a proxy proves it in one round trip, also in
        a burst of hundreds), else the new one is: a host without the
        secret holds few descriptors, and never a proxy's."""
        now = self.reactor.seconds()
        if len(self._unproven) >= UNPROVEN_MOST:
            oldest, came = next(iter(self._unproven.items()))
            if now - came < PROVE_QUICKLY:
                connection.transport.abortConnection()
                return
            del self._unproven[oldest]
            oldest.transport.abortConnection()
        self._unproven[connection] = now

    def proven(self, connection: BlobServerProtocol) -> None:
        self._unproven.pop(connection, None)

    def buildProtocol(self, addr: IAddress | None) -> BlobServerProtocol:
        p = BlobServerProtocol(self.reactor, self.device, self.secret)
        p.factory = self
        return p
