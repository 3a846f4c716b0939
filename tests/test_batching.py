"""Group commit on a thread of its own: what arrives while a batch runs goes in the next."""

from __future__ import annotations

import threading

import pytest_twisted
from twisted.internet import defer, reactor, threads

from deposito.batching import Batches


@pytest_twisted.inlineCallbacks
def test_items_submitted_while_a_batch_runs_go_together_in_the_next():
    entered, gate = threading.Event(), threading.Event()
    batches_seen: list[list[int]] = []

    def run(items: list[int]) -> list[tuple[bool, object]]:
        entered.set()
        assert gate.wait(10)
        batches_seen.append(list(items))
        return [(True, i * 2) if i != 3 else (False, ValueError("three")) for i in items]

    b: Batches[int] = Batches(reactor, run, "test-batches")
    b.start()
    try:
        first = b.submit(1)
        assert (yield threads.deferToThread(entered.wait, 10))  # the first batch is running, held at the gate
        later = [b.submit(2), b.submit(3), b.submit(4)]
        gate.set()
        assert (yield first) == 2
        results = yield defer.DeferredList(later, consumeErrors=True)
        assert [ok for ok, _ in results] == [True, False, True]
        assert results[0][1] == 4 and results[2][1] == 8
        assert results[1][1].check(ValueError)  # a failed item fails alone
        assert batches_seen == [[1], [2, 3, 4]]
    finally:
        gate.set()
        b.stop()


@pytest_twisted.inlineCallbacks
def test_what_one_turn_of_the_reactor_submits_goes_in_one_batch():
    """The thread is woken on the reactor's next turn: items submitted one
    after the other, with no turn between, run together."""
    batches_seen: list[list[int]] = []

    def run(items: list[int]) -> list[tuple[bool, object]]:
        batches_seen.append(list(items))
        return [(True, i) for i in items]

    b: Batches[int] = Batches(reactor, run, "test-batches")
    b.start()
    try:
        results = yield defer.gatherResults([b.submit(i) for i in range(5)])
        assert results == [0, 1, 2, 3, 4]
        assert batches_seen == [[0, 1, 2, 3, 4]]
    finally:
        b.stop()


@pytest_twisted.inlineCallbacks
def test_stop_runs_what_was_submitted_and_a_raising_run_fails_its_batch():
    gate = threading.Event()
    ran: list[int] = []

    def run(items: list[int]) -> list[tuple[bool, object]]:
        assert gate.wait(10)
        ran.extend(items)
        if 5 in items:
            raise OSError("disk gone")
        return [(True, i) for i in items]

    b: Batches[int] = Batches(reactor, run, "test-batches")
    b.start()
    ds = [b.submit(i) for i in (4, 5)]
    gate.set()
    b.stop()  # returns once both have run
    assert sorted(ran) == [4, 5]
    results = yield defer.DeferredList(ds, consumeErrors=True)
    ok, failure = results[1]  # 5's batch failed: 4 with it, or alone before it
    assert not ok and failure.check(OSError)
