"""Fanning an upload's bytes out to its storage servers inside the kernel.

The client's bytes are spliced once into a pipe and tee'd to one pipe per
server (page references, not copies); the proxy reads one copy up for the
hashes. Only for plain TCP everywhere and where splice and tee exist.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
from typing import Callable

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall

from deposito import twisted_internals
from deposito.diskio import libc_function
from deposito.errors import DepositoError
from deposito.splice.relay import can_splice
from deposito.splice.sockets import TEE_FLAGS, ReaderLost, SocketWaiter, make_pipe, set_pipe_size, splice
from deposito.twisted_internals import IStreamReactor, IStreamTransport

_TEE = libc_function("tee", [ctypes.c_int, ctypes.c_int, ctypes.c_size_t, ctypes.c_uint], ctypes.c_ssize_t)
_F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", None)
_ABSORBED = bytearray()  # where FanOut copies each piece up for hashing (the reactor thread's, shared)


def _pipe_size(fd: int) -> int:
    assert _F_GETPIPE_SZ is not None
    return fcntl.fcntl(fd, _F_GETPIPE_SZ)


class TargetGone(DepositoError):
    """A fan-out target stopped taking bytes."""

    code = "unavailable"


def can_fan_out(source: object, targets: list[IStreamTransport]) -> bool:
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
    connection is then cut, unless it only shut its sending side: its
    protocol then hears of it from Twisted, as of any half-close).
    """

    burst = 4  # pieces moved in one go before other connections get a turn
    poll = 0.002  # how often to look whether the targets have sent Twisted's bytes

    def __init__(self, reactor: IStreamReactor, source: IStreamTransport, targets: list[IStreamTransport], count: int,
                 absorb: Callable[[memoryview], None], progress: Callable[[int], None],
                 live: Callable[[int], bool], dropped: Callable[[int, DepositoError], None],
                 stall_timeout: float) -> None:
        self.reactor, self.source, self.targets, self.count = reactor, source, targets, count
        self.absorb, self.progress, self.live, self.dropped = absorb, progress, live, dropped
        self.stall_timeout = stall_timeout
        self.taken = 0  # bytes read from the source
        self.pending = [0] * len(targets)  # bytes of the last piece each target has still to take
        self.gone = [False] * len(targets)
        self.done: defer.Deferred[int] = defer.Deferred()
        self._readable = SocketWaiter(source, self.pump, lambda: self.fail(ReaderLost("the client went away")))
        self._writable = [SocketWaiter(t, self._can_write, self._dropper(i)) for i, t in enumerate(targets)]
        self._writing: set[int] = set()
        self.reading = False
        self._intake: tuple[int, int] | None = None
        self._pipes: list[tuple[int, int] | None] = []
        self._piece = 0  # the most a piece can be: what the smallest pipe holds
        self._stall: IDelayedCall | None = None
        self._again: IDelayedCall | None = None
        self._sent = False  # the targets have sent what Twisted held for them
        self._was_reading: list[IStreamTransport] = []

    def _dropper(self, i: int) -> Callable[[], None]:
        return lambda: self._drop(i, TargetGone("connection lost"))

    def _stall_reset(self) -> None:
        if self._stall is not None:
            self._stall.reset(self.stall_timeout)

    def start(self) -> defer.Deferred[int]:
        """Begin, once each target has sent what Twisted still holds for it.

        The source must have nothing left to send (its socket is then the
        fan-out's alone); OSError when the pipes cannot be made, with nothing
        changed."""
        if twisted_internals.write_pending(self.reactor, self.source):
            raise RuntimeError("a fan-out needs its source to have sent all that was written to it")
        pipes: list[tuple[int, int]] = []
        try:
            for _ in range(len(self.targets) + 1):
                pipes.append(make_pipe())
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
        self._piece = min(_pipe_size(w) for _, w in pipes)
        if _pipe_size(self._intake[1]) > self._piece:
            set_pipe_size(self._intake[1], self._piece)
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
                n = splice(pipe[0], target.fileno(), self.pending[i])
            except BlockingIOError:
                n = 0
            except OSError as e:
                self._drop(i, TargetGone(e.strerror or "send failed"))
                continue
            if n:
                self.pending[i] -= n
                self._stall_reset()
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
            n = splice(self.source.fileno(), w, min(self._piece, self.count - self.taken))
        except BlockingIOError:
            return False
        except OSError as e:
            self.fail(ReaderLost(f"the client went away ({e.strerror})"))
            return False
        if n == 0:  # the client shut its sending side: Twisted, reading again, tells its protocol
            self.fail(ReaderLost("the client closed the connection mid-upload"), cut=False)
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
            copied = _TEE(r, pipe[1], n, TEE_FLAGS)
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
        self._stall_reset()
        self.progress(n)
        return not self.done.called

    def _can_write(self) -> None:
        for i in list(self._writing):
            self.reactor.removeWriter(self._writable[i])
        self._writing.clear()
        self.pump()

    def leave(self, i: int) -> None:
        """Target ``i``'s connection is gone: stop waiting on it (its socket
        may be closed already, and the reactor would never say it is writable)."""
        self._drop(i, None)

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

    def fail(self, err: DepositoError, cut: bool = True) -> None:
        """Give up: the source's connection is cut (its upload is half read),
        unless ``cut`` is False (it has sent all it will)."""
        if self.done.called:
            return
        self._stop()
        self._read_again()
        if cut and self.source.connected:
            self.source.abortConnection()
        self.done.errback(err)

