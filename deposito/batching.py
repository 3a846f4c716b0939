"""Group commit: work queued while a batch runs goes together in the next one."""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Generic, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorFromThreads, IReactorTime
from twisted.python.failure import Failure

T = TypeVar("T")
Results = list[tuple[bool, Any]]  # (True, result) or (False, exception), one per item


class IBatchReactor(IReactorTime, IReactorFromThreads):
    """A reactor as batches use it: a clock, to wake their thread on its
    next turn, and the thread's results handed back. Every reactor Twisted
    ships is both."""


class Batches(Generic[T]):
    """Runs ``run(items)`` on a thread of its own for everything :meth:`submit`
    ted meanwhile: the items that arrive while one batch runs wait, and go
    together in the next (so, say, many commits share one flush). Each
    item's Deferred fires on the reactor with its own outcome.

    The thread is woken on the reactor's next turn, not at the first
    submit: what the rest of the turn submits joins the same batch, and the
    reactor's thread, which holds the GIL while it works, is not put off its
    core by the thread it wakes (see bench/PROFILE.md)."""

    def __init__(self, reactor: IBatchReactor, run: Callable[[list[T]], Results], name: str) -> None:
        self.reactor = reactor
        self.run = run
        self.name = name
        self._thread: threading.Thread | None = None
        self._wake: queue.SimpleQueue[bool] = queue.SimpleQueue()  # True: drain; False: stop
        self._lock = threading.Lock()
        self._queue: list[tuple[T, Deferred]] = []
        self._draining = False
        self._waking: IDelayedCall | None = None  # the thread is to be woken on the next turn

    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Once what was submitted so far has run."""
        if self._thread is not None:
            if self._waking is not None and self._waking.active():
                self._waking.cancel()
            self._waking = None
            self._wake.put(True)  # what was submitted runs first
            self._wake.put(False)
            self._thread.join()
            self._thread = None

    def _serve(self) -> None:
        while self._wake.get():
            self._drain()

    def submit(self, item: T) -> Deferred:
        d: Deferred = Deferred()
        with self._lock:
            self._queue.append((item, d))
            if self._draining:
                return d
            self._draining = True
        self._waking = self.reactor.callLater(0, self._wake_up)
        return d

    def _wake_up(self) -> None:
        self._waking = None
        self._wake.put(True)

    def _drain(self) -> None:
        while True:
            with self._lock:
                batch, self._queue = self._queue, []
                if not batch:
                    self._draining = False
                    return
            try:
                results = self.run([item for item, _ in batch])
            except Exception as e:
                results = [(False, e)] * len(batch)
            self.reactor.callFromThread(_fire, [d for _, d in batch], results)


def _fire(deferreds: list[Deferred], results: Results) -> None:
    for d, (ok, value) in zip(deferreds, results):
        if ok:
            d.callback(value)
        else:
            d.errback(Failure(value))
