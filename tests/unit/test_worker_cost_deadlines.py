"""One deadline thread per process (controller.egress.Deadlines) instead of a timer
thread per agent request: calls come in deadline order, cancelled ones never, and a
forked worker process gets a working one of its own."""

from __future__ import annotations

import multiprocessing
import threading
import time

from controller.egress import DEADLINES, Deadlines


def test_calls_come_in_deadline_order_and_cancelled_ones_never() -> None:
    deadlines = Deadlines()
    fired: list[str] = []
    done = threading.Event()
    now = time.monotonic()
    deadlines.call_at(now + 0.3, lambda: (fired.append("last"), done.set()))
    deadlines.call_at(now + 0.2, lambda: fired.append("second"))
    skipped = deadlines.call_at(now + 0.1, lambda: fired.append("cancelled"))
    # added last but due first: the waiting thread is woken for it
    deadlines.call_at(now + 0.05, lambda: fired.append("first"))
    skipped.cancel()
    assert done.wait(10)
    assert fired == ["first", "second", "last"]
    assert deadlines.pending() == 0


def test_cancelled_calls_do_not_pile_up() -> None:
    deadlines = Deadlines()
    far = time.monotonic() + 3600
    for _ in range(1000):
        deadlines.call_at(far, lambda: None).cancel()
    assert deadlines.pending() == 0
    assert len(deadlines._heap) <= 200  # rebuilt without the cancelled ones


def test_one_thread_serves_every_deadline() -> None:
    deadlines = Deadlines()
    before = threading.active_count()
    done = [threading.Event() for _ in range(20)]
    for n, event in enumerate(done):
        deadlines.call_at(time.monotonic() + 0.01 * n, event.set)
    assert all(event.wait(10) for event in done)
    assert threading.active_count() <= before + 1


def test_a_failing_call_does_not_stop_later_ones() -> None:
    deadlines = Deadlines()
    done = threading.Event()

    def broken() -> None:
        raise RuntimeError("bug")

    deadlines.call_at(time.monotonic(), broken)
    deadlines.call_at(time.monotonic() + 0.05, done.set)
    assert done.wait(10)


def _in_child(queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    done = threading.Event()
    DEADLINES.call_at(time.monotonic() + 0.01, done.set)
    queue.put(done.wait(10))


def test_a_forked_process_gets_a_deadline_thread_of_its_own() -> None:
    started = threading.Event()
    DEADLINES.call_at(time.monotonic(), started.set)  # the parent's thread runs
    assert started.wait(10)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_in_child, args=(queue,))
    child.start()
    assert queue.get(timeout=30) is True
    child.join(30)
    assert child.exitcode == 0
