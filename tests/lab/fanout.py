"""Run one piece of work on many hosts at once, keeping every host's outcome.

For the SSH tests and the benchmarks: the controller's lanes do their own fan-out, so
this stays out of ``shared/`` (what the agent installs on a host).

A host that cannot be reached is ``unreachable``, one whose operation failed is ``failed``,
and neither holds the others back. Past ``max_failures`` no new host is started (the
rest are ``skipped``); hosts already running finish.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

from shared.errors import HostUnreachable, RelayfleetError
from shared.results import OperationResult

T = TypeVar("T")


@dataclass
class HostOutcome(Generic[T]):
    """What happened on one host."""

    item: T
    status: str
    error: str | None = None
    result: OperationResult | None = None
    started_at: float | None = None
    finished_at: float | None = None


def run_per_host(items: Sequence[T], work: Callable[[T], OperationResult], *,
                 concurrency: int = 10, max_failures: int | None = None) -> list[HostOutcome[T]]:
    """Run ``work`` for each item on up to ``concurrency`` threads; outcomes in item order."""
    failures = 0
    lock = threading.Lock()

    def one(item: T) -> HostOutcome[T]:
        nonlocal failures
        with lock:
            if max_failures is not None and failures > max_failures:
                return HostOutcome(item, "skipped", "not started: too many hosts failed")
        started = time.time()
        try:
            result = work(item)
        except HostUnreachable as exc:
            outcome = HostOutcome(item, "unreachable", exc.message, None, started, time.time())
        except RelayfleetError as exc:
            outcome = HostOutcome(item, "failed", exc.message, None, started, time.time())
        else:
            status = "succeeded" if result.ok else "failed"
            outcome = HostOutcome(item, status, result.error, result, started, time.time())
        if outcome.status != "succeeded":
            with lock:
                failures += 1
        return outcome

    if not items:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(items)))) as pool:
        return list(pool.map(one, items))
