"""Group commit: work queued while a batch runs goes together in the next one."""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Generic, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.python.failure import Failure

T = TypeVar("T")
Results = list[tuple[bool, Any]]  # (True, result) or (False, exception), one per item


class Batches(Generic[T]):
    """Runs ``run(items)`` on a thread of its own for everything :meth:`submit`
    ted meanwhile: the items that arrive while one batch runs wait, and go
    together in the next (so, say, many commits share one flush). Each
    item's Deferred fires on the reactor with its own outcome."""

    def __init__(self, reactor: IReactorFromThreads, run: Callable[[list[T]], Results], name: str) -> None:
        self.reactor = reactor
        self.run = run
        self.name = name
        self._thread: threading.Thread | None = None
        self._wake: queue.SimpleQueue[bool] = queue.SimpleQueue()  # True: drain; False: stop
        self._lock = threading.Lock()
        self._queue: list[tuple[T, Deferred]] = []
        self._draining = False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Once what was submitted so far has run."""
        if self._thread is not None:
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
        self._wake.put(True)
        return d

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
