"""The storage server's local port: a GET's bytes written straight into the client's socket.

A large GET through the proxy crosses two sockets, and on one host the
second hop costs as much CPU as everything else the proxy does. When the
server holding the copy runs on the proxy's own host, the proxy passes the
client's socket itself to that server (SCM_RIGHTS over a Unix socket); the
server writes the checked blocks into it, and the proxy drops out of the data
path until the blob has gone out. The proxy still counts every byte (from the
socket's own counters, see deposito.splice.sockets.written) and still moves on to the
next copy at the same offset when one fails.

The server listens on an abstract Unix socket (Linux; no file to leave behind)
and names it in its JOIN with a random key. The proxy hands sockets only to a
process of its own user (or root) that answers KEY with that key; the server
takes connections only from its own user (or root), and with a cluster secret
only after the blob protocol's handshake. Requests, besides the blob
protocol's own:

    KEY
        reply ``OK <key>``.
    OPEN <blob> <offset> [<length>]
        reply ``OK <count> size=<size>``: <count> bytes from <offset>, to the
        end or <length> of them, as for READ (a range not within the blob is
        an ERR); the blob stays open for SEND.
    SEND
        with one non-blocking stream socket passed alongside: those bytes of
        the opened blob, each block they touch checked (whole) before any of
        it is written into that socket; reply ``OK sent`` once all of it is in the socket, or
        ``ERR <code> <message>`` once nothing more will be written (a copy
        that failed its check, a read error, a socket that took no more).

Whatever happens, the server has closed its end of the passed socket before
it replies or lets go of the Unix connection, so the proxy may write to the
client again from then on.
"""

from __future__ import annotations

import fcntl
import os
import socket
import stat
from typing import Callable

from twisted.internet.interfaces import IAddress, IFileDescriptorReceiver, IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from deposito.blobmeta import BlobMeta
from deposito.diskio import Reader
from deposito.errors import BadArgs, BadCommand, Unavailable
from deposito.interfaces import IDevice
from deposito.protocols.blobserver import BlobServerFactory, BlobServerProtocol
from deposito.protocols.blobwire import body_reply
from deposito.sender import BlobSender
from deposito.splice.sockets import SocketWaiter, same_user
from deposito.twisted_internals import IStreamReactor


class PassedSocket:
    """A client's socket passed over by the proxy, written to as a
    :class:`BlobSender` writes to a transport. ``finished(None)`` once all
    written is in the socket and this end is closed (:meth:`loseConnection`),
    ``finished(why)`` once it is closed after a failure (:meth:`abortConnection`).
    """

    passed = True  # BlobSender: checked blocks are written from its read buffer (see write)

    def __init__(self, reactor: IStreamReactor, fd: int, finished: Callable[[str | None], None]) -> None:
        self.reactor, self.fd, self.finished = reactor, fd, finished
        self._socket = socket.socket(fileno=fd)  # owns fd from now on
        self.producer: IPushProducer | None = None
        self.connected = True
        self.disconnecting = False
        self._pending = b""
        self._sent = 0  # of _pending
        self._waiting = False
        self._writable = SocketWaiter(self, self._flush, lambda: self._close("the socket was lost"))

    def fileno(self) -> int:
        return self.fd if self.connected else -1

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes | memoryview) -> None:
        """``data`` may be a view of a buffer used again once this returns:
        what the socket does not take at once is copied."""
        if not self.connected:
            return
        if self._pending:
            self._pending, self._sent = self._pending[self._sent:] + bytes(data), 0
        else:
            try:
                sent = self._socket.send(data, socket.MSG_DONTWAIT)
            except BlockingIOError:
                sent = 0
            except OSError as e:
                self._close(f"the reader's socket refused bytes ({e.strerror})")
                return
            if sent == len(data):
                return
            # bytes are kept as they are; of a view, the rest is copied
            self._pending, self._sent = (data, sent) if isinstance(data, bytes) else (bytes(data[sent:]), 0)
        self._flush()

    def _flush(self) -> None:
        if not self.connected:
            return
        while self._sent < len(self._pending):
            try:
                self._sent += self._socket.send(memoryview(self._pending)[self._sent:], socket.MSG_DONTWAIT)
            except BlockingIOError:
                if not self._waiting:
                    self._waiting = True
                    self.reactor.addWriter(self._writable)
                    if self.producer is not None:
                        self.producer.pauseProducing()
                return
            except OSError as e:
                self._close(f"the reader's socket refused bytes ({e.strerror})")
                return
        self._pending, self._sent = b"", 0
        if self._waiting:
            self._waiting = False
            self.reactor.removeWriter(self._writable)
            if self.producer is not None:
                self.producer.resumeProducing()  # may write (and wait) again, or close
        if self.disconnecting and self.connected and not self._pending:
            self._close(None)

    def loseConnection(self) -> None:
        """Close once all written is in the socket."""
        self.disconnecting = True
        self._flush()

    def abortConnection(self) -> None:
        """The sender gave up: close now."""
        self._close("the server stopped sending this copy (its log tells why)")

    def _close(self, why: str | None) -> None:
        if self.close():
            self.finished(why)

    def close(self) -> bool:
        """Close this end, telling no one; False if it already was."""
        if not self.connected:
            return False
        self.connected = False
        if self._waiting:
            self._waiting = False
            self.reactor.removeWriter(self._writable)
        self._pending = b""
        self._socket.close()
        return True


def _writable_stream(fd: int) -> bool:
    """A non-blocking stream socket (the proxy's own, as it holds it)."""
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            return False
        with socket.socket(fileno=os.dup(fd)) as s:
            if s.type != socket.SOCK_STREAM:
                return False
        return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK)
    except OSError:
        return False


@implementer(IFileDescriptorReceiver)
class LocalBlobServerProtocol(BlobServerProtocol):
    """The blob protocol on the local port, with KEY, OPEN and SEND."""

    def __init__(self, reactor: IStreamReactor, device: IDevice, secret: bytes | None, key: str) -> None:
        super().__init__(reactor, device, secret)
        self.key = key
        self._fds: list[int] = []
        self._open: tuple[Reader, BlobMeta, int, int] | None = None  # (file, metadata, offset, end)
        self._passed: PassedSocket | None = None

    def connectionMade(self) -> None:
        if not same_user(self.transport):  # a reader's socket is no other user's business
            self.log.warn("refused a local connection from another user")
            self.transport.abortConnection()
            return
        super().connectionMade()

    def fileDescriptorReceived(self, descriptor: int) -> None:
        if not self.authenticated or self._fds:  # one socket per SEND, and only from the proxy
            os.close(descriptor)
            self.transport.loseConnection()
            return
        self._fds.append(descriptor)

    def do_KEY(self) -> None:
        self.reply(f"OK {self.key}")

    def do_OPEN(self, blob: str, offset: str, length: str = "") -> None:
        if self._open is not None or self._passed is not None:
            raise BadCommand("one OPEN at a time")
        self.open_blob(blob, offset, length, self._opened_for_send)

    def _opened_for_send(self, f: Reader, meta: BlobMeta, offset: int, end: int) -> None:
        if not self.transport.connected:
            self.device.close(f)
            return
        self._open = (f, meta, offset, end)
        self.reply(body_reply(end - offset, meta.size))
        self.resumeProducing()

    def do_SEND(self) -> None:
        fd = self._fds.pop() if self._fds else None
        if self._open is None:
            if fd is not None:
                os.close(fd)
            raise BadCommand("OPEN a blob first")
        if fd is None:
            raise BadArgs("SEND comes with the socket to send to (SCM_RIGHTS)")
        if not _writable_stream(fd):
            os.close(fd)
            raise BadArgs("what came with SEND is not a non-blocking stream socket")
        (f, meta, offset, end), self._open = self._open, None
        self.paused = True
        self._passed = PassedSocket(self.reactor, fd, self._sent_to_socket)
        self._sender = BlobSender(self.reactor, self.device, f, meta, offset, end, self._passed,
                                  self._passed.loseConnection, self.resetTimeout)
        self._sender.start()

    def _sent_to_socket(self, why: str | None) -> None:
        self._passed = None
        if self._sender is not None:
            self._sender.stopProducing()  # (it has stopped already unless the socket failed under it)
            self._sender = None
        if not self.transport.connected:
            return
        if why is None:
            self.reply("OK sent")
        else:
            self.fail(Unavailable(why))
        self.resumeProducing()

    def connectionLost(self, reason: Failure | None = None) -> None:
        super().connectionLost(reason)  # stops a sender
        if self._passed is not None:
            self._passed.close()
            self._passed = None
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        if self._open is not None:
            self.device.close(self._open[0])
            self._open = None


class LocalBlobServerFactory(BlobServerFactory):
    def __init__(self, reactor: IStreamReactor, device: IDevice, secret: bytes | None, key: str) -> None:
        super().__init__(reactor, device, secret)
        self.key = key

    def buildProtocol(self, addr: IAddress | None) -> LocalBlobServerProtocol:
        p = LocalBlobServerProtocol(self.reactor, self.device, self.secret, self.key)
        p.factory = self
        return p
