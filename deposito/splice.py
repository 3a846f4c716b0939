"""Relaying a blob's bytes from a storage server to a client inside the kernel.

A GET through the proxy crosses two sockets. Copying each byte up into the
proxy and down again is most of the proxy's work on a large GET; Linux's
splice() moves the pages from one socket to a pipe and on to the other
socket without that copy. The proxy still counts every byte, pauses on a
slow client (the pipe fills, the server's socket is left unread), and gives
up on a server that goes quiet.

Only for plain TCP on both sides (a TLS client needs its bytes encrypted in
the proxy) and where os.splice exists; everything else takes the ordinary
path.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import select
import socket
import struct
import termios
from typing import Any, Callable

from twisted.internet import defer, task
from twisted.internet.interfaces import IPullProducer, IPushProducer, IReadDescriptor, IWriteDescriptor
from twisted.logger import Logger
from zope.interface import implementer

from deposito import twisted_internals
from deposito.diskio import libc_function
from deposito.errors import DepositoError
from deposito.protocols.lines import send_now

PIPE_SIZE = 1 << 20
_SPLICE = getattr(os, "splice", None)
_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", None)


class SourceLost(DepositoError):
    """The storage server stopped sending mid-relay."""

    code = "unavailable"


class ReaderLost(DepositoError):
    """The client went away mid-relay."""

    code = "unavailable"


def can_splice(source: Any, target: Any) -> bool:
    """Whether bytes can go from transport ``source`` to ``target`` by splice."""
    return _SPLICE is not None and all(twisted_internals.is_plain_tcp(t) for t in (source, target))


@implementer(IReadDescriptor, IWriteDescriptor)
class SocketWaiter:
    """Stands in for a socket transport in the reactor while something other
    than Twisted reads or writes its socket: ``ready()`` when the socket can
    be read or written (whichever the waiter was added for), ``lost()`` when
    the reactor gives up on it. The caller removes the waiter when done."""

    def __init__(self, transport: Any, ready: Callable[[], None], lost: Callable[[], None]) -> None:
        self.transport, self.ready, self.lost = transport, ready, lost

    def fileno(self) -> int:
        return self.transport.fileno()  # -1 once that socket is closed

    def doRead(self) -> None:
        self.ready()

    def doWrite(self) -> None:
        self.ready()

    def connectionLost(self, reason: Any) -> None:
        self.lost()

    def logPrefix(self) -> str:
        return "socket-waiter"


@implementer(IPushProducer)
class Relay:
    """Moves ``count`` bytes from socket transport ``source`` to ``target``.

    Both transports stop reading for the time of the relay, and those that
    were reading read again after (each must have nothing left to write); :attr:`done` fires with the byte count once every
    byte is in the target's socket, or fails with SourceLost or ReaderLost;
    :attr:`moved` counts the bytes the target has, whatever happens. The
    relay is the target's producer meanwhile, so a target that goes away
    stops it; whoever owns the source calls :meth:`fail` if it goes away.
    """

    log = Logger()

    def __init__(self, reactor: Any, source: Any, target: Any, count: int, idle_timeout: float) -> None:
        self.reactor, self.source, self.target = reactor, source, target
        self.count = count
        self.idle_timeout = idle_timeout
        self.moved = 0  # bytes written to the target
        self.taken = 0  # bytes taken from the source (the difference waits in the pipe)
        self.done: defer.Deferred = defer.Deferred()
        self.reading = False
        self.writing = False
        self._readable = SocketWaiter(source, self.pump, lambda: self.fail(SourceLost("storage server connection lost")))
        self._writable = SocketWaiter(target, self._can_write, lambda: self.fail(ReaderLost("the reader went away")))
        self._pipe: tuple[int, int] | None = None
        self._idle: Any = None
        self._was_reading: list[Any] = []

    def start(self) -> defer.Deferred:
        if any(twisted_internals.write_pending(self.reactor, t) for t in (self.source, self.target)):
            raise RuntimeError("a relay needs both sockets to have sent all that was written to them")
        self._was_reading = [t for t in (self.source, self.target)  # read again after
                             if twisted_internals.is_reading(self.reactor, t)]
        self.source.stopReading()
        self.target.stopReading()
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._pipe = (r, w)
        if _F_SETPIPE_SZ is not None:
            try:
                fcntl.fcntl(w, _F_SETPIPE_SZ, PIPE_SIZE)
            except OSError:
                pass  # the system's limit: the default size works too
        self._idle = self.reactor.callLater(self.idle_timeout, self._timed_out)
        self.target.registerProducer(self, True)
        self.pump()
        return self.done

    # IPushProducer, as the target's producer: its buffer stays empty, so
    # only its loss matters.
    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        self.fail(ReaderLost("the reader went away"))

    def pump(self) -> None:
        """Move what can be moved now; then wait for the target to take more
        when bytes wait in the pipe, else for the source to send more."""
        if self.done.called or self._pipe is None:
            return
        r, w = self._pipe
        progressed = False
        while self.moved < self.count:
            moved = False
            if self.taken < self.count and self.taken - self.moved < PIPE_SIZE:
                try:
                    n = _SPLICE(self.source.fileno(), w, min(PIPE_SIZE - (self.taken - self.moved),
                                                             self.count - self.taken), flags=_FLAGS)
                except BlockingIOError:
                    n = -1
                except OSError as e:
                    return self.fail(SourceLost(f"reading from the storage server: {e.strerror}"))
                if n == 0:
                    return self.fail(SourceLost("the storage server closed the connection mid-blob"))
                if n > 0:
                    self.taken += n
                    moved = True
            if self.taken > self.moved:
                try:
                    n = _SPLICE(r, self.target.fileno(), self.taken - self.moved, flags=_FLAGS)
                except BlockingIOError:
                    n = -1
                except OSError as e:
                    return self.fail(ReaderLost(f"the reader went away ({e.strerror})"))
                if n > 0:
                    self.moved += n
                    moved = True
            if not moved:
                break
            progressed = True
        if self.moved == self.count:
            return self._finish()
        if progressed and self._idle is not None and self._idle.active():
            self._idle.reset(self.idle_timeout)
        # Bytes in the pipe: the target is full, wait until it takes more. An
        # empty pipe: the source had nothing, wait until it sends more.
        want_write = self.taken > self.moved
        if want_write and not self.writing:
            self.reactor.addWriter(self._writable)
            self.writing = True
        if want_write == self.reading:
            if self.reading:
                self.reactor.removeReader(self._readable)
            else:
                self.reactor.addReader(self._readable)
            self.reading = not self.reading

    def _can_write(self) -> None:
        self.reactor.removeWriter(self._writable)
        self.writing = False
        self.pump()

    def _timed_out(self) -> None:
        self._idle = None
        self.fail(SourceLost(f"no byte from the storage server for {self.idle_timeout:.0f} s"))

    def _stop(self) -> None:
        if self.reading:
            self.reactor.removeReader(self._readable)
            self.reading = False
        if self.writing:
            self.reactor.removeWriter(self._writable)
            self.writing = False
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None
        if self._pipe is not None:
            for fd in self._pipe:
                os.close(fd)
            self._pipe = None
        if getattr(self.target, "producer", None) is self:
            self.target.unregisterProducer()

    def _read_again(self, transport: Any) -> None:
        if transport in self._was_reading and transport.connected and not transport.disconnecting:
            transport.startReading()

    def _finish(self) -> None:
        self._stop()
        self._read_again(self.source)
        self._read_again(self.target)
        self.done.callback(self.moved)

    def fail(self, err: DepositoError) -> None:
        """Give up. The source connection is cut (its blob is half read); so
        is the target when the reader went away, else it reads again."""
        if self.done.called:
            return
        self._stop()
        if self.source.connected:
            self.source.abortConnection()
        if isinstance(err, ReaderLost):
            if self.target.connected:
                self.target.abortConnection()
        else:
            self._read_again(self.target)
        self.done.errback(err)


_TEE = libc_function("tee", [ctypes.c_int, ctypes.c_int, ctypes.c_size_t, ctypes.c_uint], ctypes.c_ssize_t)
_F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", None)
_ABSORBED = bytearray()  # where FanOut copies each piece up for hashing (the reactor thread's, shared)


class TargetGone(DepositoError):
    """A fan-out target stopped taking bytes."""

    code = "unavailable"


def can_fan_out(source: Any, targets: list) -> bool:
    """Whether bytes can go from ``source`` to every one of ``targets`` by splice and tee."""
    return _TEE is not None and _F_GETPIPE_SZ is not None and bool(targets) and all(
        can_splice(source, t) for t in targets)


class FanOut:
    """Moves ``count`` bytes from socket transport ``source`` to every socket
    transport in ``targets`` inside the kernel, and one copy up to ``absorb``.

    Each piece is spliced from the source into an intake pipe, tee'd into one
    pipe per target (page references, not copies), read up once for
    ``absorb`` (the hashes), and spliced on to each target. The next piece is
    read only when every target has taken the last one, so a slow target
    pauses the source, as with Twisted's producers. A target that takes
    nothing for ``stall_timeout`` seconds, or whose socket fails, is left
    (``dropped(i)``) and the rest go on; so is one for which ``live(i)``
    turns false. Every transport stops reading for the time of the fan-out;
    those that were reading read again after.

    :attr:`done` fires with ``count`` once every byte is in the targets'
    sockets, or fails with ReaderLost when the source goes away (its
    connection is then cut).
    """

    burst = 4  # pieces moved in one go before other connections get a turn
    poll = 0.002  # how often to look whether the targets have sent Twisted's bytes

    def __init__(self, reactor: Any, source: Any, targets: list, count: int,
                 absorb: Callable[[memoryview], None], progress: Callable[[], None],
                 live: Callable[[int], bool], dropped: Callable[[int, DepositoError], None],
                 stall_timeout: float) -> None:
        self.reactor, self.source, self.targets, self.count = reactor, source, targets, count
        self.absorb, self.progress, self.live, self.dropped = absorb, progress, live, dropped
        self.stall_timeout = stall_timeout
        self.taken = 0  # bytes read from the source
        self.pending = [0] * len(targets)  # bytes of the last piece each target has still to take
        self.gone = [False] * len(targets)
        self.done: defer.Deferred = defer.Deferred()
        self._readable = SocketWaiter(source, self.pump, lambda: self.fail(ReaderLost("the client went away")))
        self._writable = [SocketWaiter(t, self._can_write, lambda i=i: self._drop(i, TargetGone("connection lost")))
                          for i, t in enumerate(targets)]
        self._writing: set[int] = set()
        self.reading = False
        self._intake: tuple[int, int] | None = None
        self._pipes: list[tuple[int, int] | None] = []
        self._piece = 0  # the most a piece can be: what the smallest pipe holds
        self._stall: Any = None
        self._again: Any = None
        self._sent = False  # the targets have sent what Twisted held for them
        self._was_reading: list[Any] = []

    def start(self) -> defer.Deferred:
        """Begin, once each target has sent what Twisted still holds for it.

        The source must have nothing left to send (its socket is then the
        fan-out's alone); OSError when the pipes cannot be made, with nothing
        changed."""
        if twisted_internals.write_pending(self.reactor, self.source):
            raise RuntimeError("a fan-out needs its source to have sent all that was written to it")
        pipes: list[tuple[int, int]] = []
        try:
            for _ in range(len(self.targets) + 1):
                pipes.append(_pipe())
        except OSError:
            for fd in (fd for pipe in pipes for fd in pipe):
                os.close(fd)
            raise
        self._intake, self._pipes = pipes[0], list(pipes[1:])
        everyone = [self.source, *self.targets]
        self._was_reading = [t for t in everyone if twisted_internals.is_reading(self.reactor, t)]
        for t in everyone:
            t.stopReading()
        # A tee moves whole pipe buffers: every target's pipe must hold all
        # that the intake holds, so the intake is made the smallest.
        self._piece = min(fcntl.fcntl(w, _F_GETPIPE_SZ) for _, w in [self._intake, *self._pipes])  # type: ignore[misc]
        if fcntl.fcntl(self._intake[1], _F_GETPIPE_SZ) > self._piece:
            fcntl.fcntl(self._intake[1], _F_SETPIPE_SZ, self._piece)
        if len(_ABSORBED) < self._piece:
            _ABSORBED.extend(bytes(self._piece - len(_ABSORBED)))
        self._stall = self.reactor.callLater(self.stall_timeout, self._stalled)
        self._when_sent()
        return self.done

    def _still_sending(self) -> list[int]:
        return [i for i, t in enumerate(self.targets)
                if not self.gone[i] and twisted_internals.write_pending(self.reactor, t)]

    def _when_sent(self) -> None:
        """Pump once no target has bytes of Twisted's left to send (they go
        out on the reactor's next turns); until then the source waits."""
        self._again = None
        if self.done.called:
            return
        if self._still_sending():
            self._again = self.reactor.callLater(self.poll, self._when_sent)
        else:
            self._sent = True
            self.pump()

    def pump(self) -> None:
        """Move what can be moved now, then wait: for the targets that have
        not taken the last piece, else for the source to send more."""
        self._again = None
        if self.done.called or not self._sent:
            return
        for _ in range(self.burst):
            if not self._drain():
                break
            if self.taken == self.count:
                return self._finish()
            if not self._take():
                break
        else:
            self._again = self.reactor.callLater(0, self.pump)
            return
        if self.done.called:
            return
        want_read = self.taken < self.count and not any(self.pending)
        if want_read != self.reading:
            if want_read:
                self.reactor.addReader(self._readable)
            else:
                self.reactor.removeReader(self._readable)
            self.reading = want_read

    def _drain(self) -> bool:
        """Splice each target's share on; whether all of them took all of it."""
        for i, target in enumerate(self.targets):
            if self.done.called:
                return False
            if self.gone[i] or not self.pending[i]:
                continue
            if not self.live(i):
                self._drop(i, None)
                continue
            pipe = self._pipes[i]
            assert pipe is not None
            try:
                n = _SPLICE(pipe[0], target.fileno(), self.pending[i], flags=_FLAGS)
            except BlockingIOError:
                n = 0
            except OSError as e:
                self._drop(i, TargetGone(e.strerror or "send failed"))
                continue
            if n:
                self.pending[i] -= n
                self._stall.reset(self.stall_timeout)
            if self.pending[i] and i not in self._writing:
                self.reactor.addWriter(self._writable[i])
                self._writing.add(i)
        return not any(self.pending)

    def _take(self) -> bool:
        """Read the next piece from the source and hand it to every target;
        False when the source has nothing now (or went away)."""
        assert self._intake is not None
        r, w = self._intake
        try:
            n = _SPLICE(self.source.fileno(), w, min(self._piece, self.count - self.taken), flags=_FLAGS)
        except BlockingIOError:
            return False
        except OSError as e:
            self.fail(ReaderLost(f"the client went away ({e.strerror})"))
            return False
        if n == 0:
            self.fail(ReaderLost("the client closed the connection mid-upload"))
            return False
        for i, pipe in enumerate(self._pipes):
            if self.done.called:
                return False
            if self.gone[i]:
                continue
            if not self.live(i):
                self._drop(i, None)
                continue
            assert pipe is not None
            copied = _TEE(r, pipe[1], n, _FLAGS)
            if copied != n:  # cannot happen with the pipes sized as they are; never send a short piece
                self._drop(i, TargetGone(f"tee gave {copied} of {n} bytes"))
                continue
            self.pending[i] = n
        if self.done.called:
            return False
        with memoryview(_ABSORBED) as whole, whole[:n] as view:
            got = 0
            while got < n:
                got += os.readv(r, [view[got:]])
            self.taken += n
            self.absorb(view)
        self._stall.reset(self.stall_timeout)
        self.progress()
        return not self.done.called

    def _can_write(self) -> None:
        for i in list(self._writing):
            self.reactor.removeWriter(self._writable[i])
        self._writing.clear()
        self.pump()

    def _drop(self, i: int, why: DepositoError | None) -> None:
        """Leave target ``i``: it failed (``why``), or is no longer wanted."""
        if self.gone[i]:
            return
        self.gone[i] = True
        self.pending[i] = 0
        if i in self._writing:
            self.reactor.removeWriter(self._writable[i])
            self._writing.discard(i)
        pipe, self._pipes[i] = self._pipes[i], None
        if pipe is not None:
            for fd in pipe:
                os.close(fd)
        if why is not None:
            self.dropped(i, why)
        if not self.done.called and self._again is None and self._sent:
            self._again = self.reactor.callLater(0, self.pump)  # what waited on it may go on

    def _stalled(self) -> None:
        self._stall = None
        stuck = [i for i, n in enumerate(self.pending) if n] if self._sent else self._still_sending()
        for i in stuck:
            self._drop(i, TargetGone(f"took no byte for {self.stall_timeout:.0f} s"))
        if not self.done.called:
            # the source is slow: the client's own timeout deals with that
            self._stall = self.reactor.callLater(self.stall_timeout, self._stalled)

    def _stop(self) -> None:
        if self.reading:
            self.reactor.removeReader(self._readable)
            self.reading = False
        for i in self._writing:
            self.reactor.removeWriter(self._writable[i])
        self._writing.clear()
        for call in (self._stall, self._again):
            if call is not None and call.active():
                call.cancel()
        self._stall = self._again = None
        for pipe in [self._intake, *self._pipes]:
            if pipe is not None:
                for fd in pipe:
                    os.close(fd)
        self._intake, self._pipes = None, [None] * len(self.targets)

    def _read_again(self) -> None:
        for t in self._was_reading:
            if t.connected and not t.disconnecting:
                t.startReading()

    def _finish(self) -> None:
        self._stop()
        self._read_again()
        self.done.callback(self.taken)

    def fail(self, err: DepositoError) -> None:
        """Give up: the source's connection is cut (its upload is half read)."""
        if self.done.called:
            return
        self._stop()
        self._read_again()
        if self.source.connected:
            self.source.abortConnection()
        self.done.errback(err)


# -- handing the reader's socket to the server (deposito.protocols.handoff)

_BYTES_ACKED = 120  # offset of tcpi_bytes_acked in Linux's struct tcp_info (4.2 on)
_SIOCOUTQ = getattr(termios, "TIOCOUTQ", None)  # SIOCOUTQ for a socket


def written(sock: socket.socket) -> int | None:
    """How many bytes were ever written into TCP socket ``sock``: those the
    peer acknowledged, plus those still queued. Exact while no one writes to
    it (acknowledgements may arrive meanwhile); None where the system cannot
    tell."""
    if _SIOCOUTQ is None or not hasattr(socket, "TCP_INFO"):
        return None
    try:
        for _ in range(16):
            acked = _acked(sock)
            queued = struct.unpack("i", fcntl.ioctl(sock.fileno(), _SIOCOUTQ, b"\0" * 4))[0]
            if acked is None:
                return None
            if _acked(sock) == acked:  # no acknowledgement in between: the sum is exact
                return acked + queued
    except OSError:
        pass
    return None


def _acked(sock: socket.socket) -> int | None:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    if len(info) < _BYTES_ACKED + 8:
        return None
    return struct.unpack_from("Q", info, _BYTES_ACKED)[0]


def reader_gone(sock: socket.socket) -> bool:
    """Whether the peer of ``sock`` has gone (reset, or closed both ways)."""
    p = select.poll()
    p.register(sock.fileno(), select.POLLHUP | select.POLLERR)
    try:
        return any(events & (select.POLLHUP | select.POLLERR) for _, events in p.poll(0))
    except OSError:
        return True


def same_user(transport: Any) -> bool:
    """Whether the peer of Unix socket ``transport`` runs as this process's user, or as root."""
    try:
        _, uid, _ = struct.unpack("3i", transport.getHandle().getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    except (OSError, AttributeError):
        return False
    return uid in (0, os.geteuid())


def can_hand_off(target: Any) -> bool:
    """Whether the reader's transport ``target`` can be handed to a storage server on this host."""
    return twisted_internals.is_plain_tcp_server(target) and written(target.getHandle()) is not None


@implementer(IPullProducer)
class _WhenSent:
    def __init__(self, reactor: twisted_internals.IStreamReactor, target: Any, d: defer.Deferred) -> None:
        self.reactor, self.target, self.d = reactor, target, d

    def resumeProducing(self) -> None:
        if twisted_internals.write_pending(self.reactor, self.target):
            return  # still sending: asked again once it is done
        self.target.unregisterProducer()
        self.d.callback(None)

    def stopProducing(self) -> None:
        if not self.d.called:
            self.d.errback(ReaderLost("the reader went away"))

    def give_up(self, timeout: float) -> None:
        if not self.d.called:
            self.target.unregisterProducer()
            self.d.errback(ReaderLost(f"the reader took nothing for {timeout:.0f} s"))


def sent(reactor: twisted_internals.IStreamReactor, target: Any, timeout: float) -> defer.Deferred:
    """Fires once socket transport ``target`` has handed the kernel all that
    was written to it; fails with ReaderLost if that takes ``timeout`` seconds."""
    send_now(target)
    if not twisted_internals.write_pending(reactor, target):
        return defer.succeed(None)
    d: defer.Deferred = defer.Deferred()
    waiter = _WhenSent(reactor, target, d)
    target.registerProducer(waiter, False)
    if not d.called:
        deadline = reactor.callLater(timeout, waiter.give_up, timeout)

        def settled(result: Any) -> Any:
            if deadline.active():
                deadline.cancel()
            return result

        d.addBoth(settled)
    return d


class HandOff:
    """The storage server behind ``client``, on this host, writes the blob
    it opened (``client.open_blob``) straight into the reader's socket
    (transport ``target``), after what was written to that first.

    :meth:`run` returns once the server is done with the socket. It raises
    ReaderLost when the reader went away or took nothing for
    ``idle_timeout`` seconds (the reader's connection must then go), and the
    server's reason when the copy failed (the next copy may go on).
    :attr:`moved` counts the bytes that went into the socket, by the
    socket's own counters, whatever happens.
    """

    def __init__(self, client: Any, target: Any, idle_timeout: float) -> None:
        self.client, self.target, self.idle_timeout = client, target, idle_timeout
        self.moved = 0
        self._stalled = False

    async def run(self) -> None:
        target = self.target
        await sent(self.client.reactor, target, self.idle_timeout)
        if not target.connected or target.disconnecting:
            raise ReaderLost("the reader went away")
        sock = target.getHandle()
        start = written(sock)
        if start is None:
            raise ReaderLost("the reader's socket cannot be counted")
        fd = os.dup(sock.fileno())  # the server's: this one may close meanwhile
        reading = twisted_internals.is_reading(self.client.reactor, target)
        target.stopReading()  # nothing of the reader's is read or written here meanwhile
        seen = [start]
        watch = task.LoopingCall(self._watch, sock, seen)
        watch.clock = self.client.reactor
        watch.start(self.idle_timeout, now=False)
        failed: DepositoError | None = None
        try:
            await self.client.send_to(fd)
        except DepositoError as e:
            failed = e
        finally:
            if watch.running:
                watch.stop()
            os.close(fd)
            now = written(sock) if target.connected else None
            if now is not None:
                self.moved = now - start
            if reading and target.connected and not target.disconnecting:
                target.startReading()
        lost = None
        if self._stalled:
            lost = ReaderLost(f"nothing went to the reader for {self.idle_timeout:.0f} s")
        elif failed is not None and self.client.lending:
            # This end cut the server off (it was taken for down) before it
            # let go of the socket: alive, it may yet write into it, so no
            # other copy may go on. One that answered, or closed the
            # connection from its end (a dead one has), writes no more.
            lost = ReaderLost(f"the storage server stopped answering mid-blob ({failed})")
        elif now is None or (failed is not None and reader_gone(sock)):
            lost = ReaderLost("the reader went away")
        if lost is not None:
            try:
                # Closing this end would not close the socket while the server
                # holds it: shut it down for both, so the reader hears at once
                # and the server can write no more.
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            raise lost
        if failed is not None:
            raise failed

    def _watch(self, sock: socket.socket, seen: list[int]) -> None:
        now = written(sock)
        if now is None or now == seen[0]:
            # The server may still be writing into the socket when this end
            # cuts it off: the stream cannot go on from another copy.
            self._stalled = True
            self.client.transport.abortConnection()
        else:
            seen[0] = now


def _pipe() -> tuple[int, int]:
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    if _F_SETPIPE_SZ is not None:
        try:
            fcntl.fcntl(w, _F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass  # the system's limit: a smaller pipe works too
    return r, w
