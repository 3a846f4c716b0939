"""A WRITE's bytes on their way to a storage server's disk.

The blob protocol frames a WRITE; a :class:`Receiver` takes its bytes to the
device. The device writes them on one ordered writer thread, so the receiver
only has to keep the order, bound what waits for the disk (the sender is
paused, not buffered: invariant 3), and commit once the last write is done.
"""

from __future__ import annotations

import mmap
from typing import Callable, cast

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from deposito import diskio, twisted_internals
from deposito.blobmeta import BlobMeta
from deposito.errors import DepositoError, Internal, NoSpace
from deposito.interfaces import IDevice
from deposito.splice.sockets import SocketWaiter
from deposito.twisted_internals import IStreamReactor, IStreamTransport

FLUSH_BYTES = 1 << 20  # hand bytes to the writer thread in pieces this big...
EARLY_BYTES = 256 << 10  # ...or this big, for a blob smaller than a write-behind window (see take)
WINDOW_BYTES = 2 << 20  # pause the sender when this much waits for the disk
RECEIVE_MIN = 4 << 20  # a WRITE with this much still to come is read straight into disk buffers


class Receiver:
    """The bytes of one WRITE, handed to ``device`` in order.

    Room for the blob is claimed on the device here (NoSpace otherwise), and
    given back once it is committed or thrown away. Bytes Twisted read come
    through :meth:`take` and go to the writer thread FLUSH_BYTES at a time
    (EARLY_BYTES for a blob under diskio.WRITE_BEHIND),
    the last ones with the commit (one trip to the disk for both); the rest
    of a big blob on plain TCP may be read from the socket straight into
    the disk's buffers (:meth:`read_socket`). While more than
    WINDOW_BYTES wait for the disk, ``transport`` is paused. After a failed
    write the rest is read and dropped, and :meth:`finish` reports the error.
    """

    log = Logger()

    def __init__(self, reactor: IStreamReactor, device: IDevice, meta: BlobMeta, cache: bool,
                 transport: IStreamTransport, progress: Callable[[], None]) -> None:
        device.reserve(meta.size)
        self.reactor, self.device, self.transport, self.progress = reactor, device, transport, progress
        self.incoming = device.begin(meta, cache=cache)
        self.size = meta.size
        self.remaining = meta.size  # bytes still to come
        self._flush_at = EARLY_BYTES if meta.size < diskio.WRITE_BEHIND else FLUSH_BYTES
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._in_flight = 0
        self._write_error: Failure | None = None
        self._last_write: defer.Deferred[None] = defer.succeed(None)
        self._paused_for_disk = False
        self._ending = False  # END came: the protocol pauses and resumes the transport from now on
        self._direct: _DirectRead | None = None

    def take(self, data: bytes) -> bytes:
        """Bytes Twisted read: the blob's go on; returns those that follow it."""
        take = data[: self.remaining]
        self.remaining -= len(take)
        if self._write_error is None:
            self._pending.append(take)
            self._pending_size += len(take)
            # The last bytes wait for END, to be written and committed in one
            # trip to the disk (see finish): a blob that arrives whole, all of it.
            # A blob of a few MiB goes in small pieces, each started on its way to
            # the disk while the next arrives (see diskio.Appender.start_out):
            # its fsync at the commit then has little left to do.
            if self._pending_size >= self._flush_at and self.remaining:
                self._flush()
        return data[len(take):]

    def read_socket(self, done: Callable[[], None]) -> bool:
        """Read the rest from the socket straight into the disk's buffers, if
        it is big enough and the socket is plain TCP; ``done()`` once the
        last byte is in (the transport has stopped reading meanwhile). The
        caller must hold no byte of the socket's unparsed."""
        if (self._direct is not None or self.remaining < RECEIVE_MIN
                or not twisted_internals.is_plain_tcp_server(self.transport)):
            return False
        self._flush()
        self._direct = _DirectRead(self, done)
        self._direct.start()
        return True

    def _flush(self) -> None:
        pieces, size = self._pending, self._pending_size
        self._pending = []
        self._pending_size = 0
        if not size:
            return
        self._in_flight += size
        d = self.device.write(self.incoming, pieces)
        d.addCallbacks(self._written, self._write_failed, callbackArgs=(size,), errbackArgs=(size,))
        self._last_write = d
        if self._in_flight > WINDOW_BYTES and not self._paused_for_disk:
            self._paused_for_disk = True
            self.transport.pauseProducing()

    def _write_piece(self, buffer: mmap.mmap, length: int) -> defer.Deferred[None] | None:
        """Hand a filled disk buffer to the writer; None when it is to be
        dropped (a write failed, or the blob is done with)."""
        if self._write_error is not None or self._ending:
            return None
        d = self.device.write_piece(self.incoming, buffer, length)
        self._last_write = d
        return d

    def _written(self, _: object, size: int) -> None:
        self._in_flight -= size
        if self._paused_for_disk and self._in_flight <= WINDOW_BYTES // 2:
            self._paused_for_disk = False
            if not self._ending:  # else paused for the commit: the protocol resumes it
                self.transport.resumeProducing()

    def _write_failed(self, failure: Failure, size: int) -> None:
        self._written(None, size)
        if self._write_error is None:
            self._write_error = failure

    def finish(self, sha256: str, blocks: str) -> defer.Deferred[BlobMeta]:
        """END: commit once every write is done. Fires with the blob's
        metadata, or fails with a DepositoError (the blob is thrown away)."""
        self._ending = True
        last = b"".join(self._pending)  # written on the way to the commit, in the same trip
        self._pending.clear()
        self._pending_size = 0

        def written(_: None) -> defer.Deferred[BlobMeta]:
            if self._write_error is not None:
                return defer.fail(self._write_error)
            return self.device.commit(self.incoming, sha256, blocks, last=last)

        # writes are in order: the last one done means all are
        d = self._last_write.addCallback(written)
        return d.addCallbacks(self._committed, self._not_committed)

    def _committed(self, meta: BlobMeta) -> BlobMeta:
        self.device.release(self.size)
        return meta

    def _not_committed(self, failure: Failure) -> defer.Deferred[BlobMeta]:
        self.device.release(self.size)
        if isinstance(failure.value, NoSpace) or not isinstance(failure.value, DepositoError):
            told = self.device.failed(failure)  # (a disk found full is held off: see Device.failed)
            if told is None:
                self.log.failure("writing blob {blob}", failure, blob=self.incoming.meta.blob)
                told = Internal("write failed")
            failure = Failure(told)
        # told once its bytes are thrown away: a writer told ERR finds nothing left of it
        thrown = self.device.abort(self.incoming).addCallback(lambda _: failure)  # (a Failure returned: an error)
        return cast("defer.Deferred[BlobMeta]", thrown)

    def stop(self) -> None:
        """The connection is gone before END: the blob is thrown away."""
        if self._direct is not None:
            self._direct.stop()
            self._direct = None
        if not self._ending:
            self._ending = True
            self.device.release(self.size)
            self.device.abort(self.incoming)


class _DirectRead:
    """Reads the rest of a WRITE's bytes from the socket straight into the
    disk's aligned buffers (recv_into), each handed whole to the writer
    thread, instead of through Twisted's reads and a copy into the buffer.

    A few buffers per blob: while one fills, the others are being written.
    With none free, the socket is left unread (the sender is paused by TCP).
    The transport stops reading meanwhile; ``done()`` once the last byte is
    in, and the protocol reads the END line again.
    """

    depth = 3  # buffers per blob
    burst = 4 << 20  # bytes read in one go before other connections get a turn

    def __init__(self, receiver: Receiver, done: Callable[[], None]) -> None:
        self.receiver, self.done = receiver, done
        self.reactor = receiver.reactor
        self.transport = receiver.transport
        self._at = receiver.size - receiver.remaining  # where in the blob the next buffer starts
        self._buffer: mmap.mmap | None = None  # the one being filled
        self._filled = 0
        self._limit = 0  # how much it takes: up to the next whole PIECE of the blob
        self._free: list[mmap.mmap] = []
        self._out = 0  # buffers with the writer thread
        self._readable = SocketWaiter(self.transport, self.pump, self._lost)
        self.reading = False
        self.stopped = False

    def start(self) -> None:
        self.transport.stopReading()
        self.pump()

    def pump(self) -> None:
        if self.stopped:
            return
        sock = self.transport.getHandle()
        r = self.receiver
        taken = 0
        while r.remaining and taken < self.burst:
            if self._buffer is None:
                if not self._free and self._out >= self.depth:
                    break  # every buffer is being written: wait for one
                self._buffer = self._free.pop() if self._free else diskio.take_buffer()
                self._filled = 0
                # Buffers end where the blob's PIECEs do, so after the first
                # (which tops up what the ordinary path left staged) each goes
                # to the disk straight from where it was read.
                self._limit = diskio.PIECE - self._at % diskio.PIECE
            want = min(self._limit - self._filled, r.remaining)
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
            r.remaining -= n
            taken += n
            if self._filled == self._limit or not r.remaining:
                self._hand_over()
        if taken:
            r.progress()
        if not r.remaining:
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
        assert buffer is not None
        self._at += length
        d = self.receiver._write_piece(buffer, length)
        if d is None:
            self._free.append(buffer)  # dropped: END reports the error
            return
        self._out += 1
        d.addBoth(self._written, buffer)

    def _written(self, result: None | Failure, buffer: mmap.mmap) -> None:
        self._out -= 1
        if isinstance(result, Failure):
            # Its traceback may still see the buffer: not used again; and no
            # traceback kept for END to report.
            result.cleanFailure()
            self.receiver._write_failed(result, 0)
        elif self.stopped:
            diskio.give_back(buffer)
        else:
            self._free.append(buffer)
        if not self.stopped and self.receiver.remaining and not self.reading:
            self.pump()

    def _finish(self) -> None:
        self.stopped = True
        for buffer in self._free:
            diskio.give_back(buffer)
        self._free.clear()
        self.receiver._direct = None
        self.done()

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
