"""Where a worker's CPU goes per host-operation: prints figures, asserts nothing.

``python -m tests.benchmarks.worker_profile [--hosts 40] [--jobs 3] [--top 25] [--plain 0]``
(root; starts its own PostgreSQL and lab). Builds ``--hosts`` agent lab hosts (https, pinned
certificate), then runs ``--jobs`` ``flush_queue`` jobs over all of them, each through a
real :class:`controller.lanes.Lane` in this process (the lane's threads, the real ledger on
PostgreSQL, the real agent transport; the broker is kombu's in-memory one, and the lane's
continuations are noted rather than queued). Every thread is profiled with cProfile on
its own CPU clock (``time.thread_time``), so the figures are CPU, not waiting; the first
job warms up (imports, connections) and is left out.

Prints the process CPU per host-operation, then the functions with the most cumulative and
the most own CPU per host-operation, and the calls per host-operation of what is counted
(transactions, statements, TLS handshakes, decryptions, connections made).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import secrets
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from tests.benchmarks.controller_jobs import SECRET
from tests.lab.services import PostgresServer

#: what is counted per host-operation: (label, substring of a pstats function key)
COUNTED = (
    ("transactions (Database.transaction)", ("controller/db.py", "transaction")),
    ("SQL statements executed", ("sqlalchemy/engine/base.py", "_execute_context")),
    ("TLS handshakes", ("ssl.py", "do_handshake")),
    ("TCP connects", ("~", "<method 'connect' of '_socket.socket' objects>")),
    ("secrets opened (SecretBox.open)", ("controller/crypto.py", "open")),
    ("log records emitted", ("logging/__init__.py", "handle")),
)

#: the packages whose functions the third table lists
OURS = ("controller", "shared", "agent")


class _Sent:
    """Records the continuations a lane would queue."""

    def __init__(self) -> None:
        self.tasks: list[tuple[str, tuple[Any, ...]]] = []

    def __call__(self, task: str, *args: Any, countdown: float | None = None) -> None:
        self.tasks.append((task, args))


class ThreadProfiles:
    """A cProfile profiler per thread (on the thread's CPU clock), merged at the end."""

    def __init__(self) -> None:
        self.profiles: list[cProfile.Profile] = []
        self._lock = threading.Lock()

    def _start(self, *_: Any) -> None:
        profile = cProfile.Profile(time.thread_time)
        with self._lock:
            self.profiles.append(profile)
        profile.enable()  # (replaces this hook for the thread)

    def __enter__(self) -> ThreadProfiles:
        threading.setprofile(self._start)
        self._start()
        return self

    def __exit__(self, *exc: object) -> None:
        threading.setprofile(None)
        for profile in self.profiles:
            profile.disable()

    def stats(self) -> pstats.Stats:
        """The merged statistics of every thread profiled."""
        merged = pstats.Stats(self.profiles[0])
        for profile in self.profiles[1:]:
            profile.create_stats()
            merged.add(profile)
        return merged


def _build(hosts: int, workdir: Path, lab: Any, pg: PostgresServer) -> tuple[Any, list[int]]:
    """A controller on a fresh PostgreSQL database with ``hosts`` agent lab hosts."""
    from controller.migrate import upgrade
    from tests.controller_client import Controller

    url = pg.new_database()
    os.environ.update({"RELAYFLEET_DATABASE_URL": url, "RELAYFLEET_BROKER_URL": "memory://",
                       "RELAYFLEET_SECRET_KEY": SECRET, "RELAYFLEET_DATA_DIR": str(workdir),
                       "RELAYFLEET_EGRESS_ALLOW": f"loopback,{lab.network}"})
    upgrade(url)
    controller = Controller.create()
    site = controller.site(controller.tenant("Acme"), "Lab")
    ids = []
    for n in range(hosts):
        host = lab.add_host(f"p{n}", "debian")
        token = secrets.token_urlsafe(24)
        url = host.start_agent(token, tls=True)
        doc = controller.ok("POST", "/v1/hosts", {
            "name": host.fqdn, "site_id": site, "address": host.address, "transport": "agent",
            "agent": {"url": url, "token": token, "tls_fingerprint": host.agent_fingerprint}})
        ids.append(int(doc["id"]))
    return controller, ids


def _run_job(controller: Any, ids: list[int]) -> tuple[float, float, float]:
    """Run one flush_queue job over ``ids`` through lane 0 here: (wall s, process CPU s,
    of which in the kernel s)."""
    from controller.lanes import Lane

    job = controller.start_job({"action": "flush_queue", "target": {"hosts": ids},
                                "options": {"concurrency": len(ids)}})
    sent = _Sent()
    wall0, cpu0, sys0 = time.perf_counter(), time.process_time(), os.times().system
    with controller.app.app_context():
        lane = Lane(job, 0, send=sent)
        lane.run()
        while any(task[1] == (job, 0) for task in sent.tasks):  # a budget ran out
            sent.tasks.clear()
            lane.run()
    took = (time.perf_counter() - wall0, time.process_time() - cpu0,
            os.times().system - sys0)
    doc = controller.ok("GET", f"/v1/jobs/{job}?results=false")
    if doc["status"] != "succeeded":
        raise SystemExit(f"job {job} ended {doc['status']}")
    return took


def _count(stats: pstats.Stats, needle: tuple[str, str]) -> int:
    calls = 0
    for (path, _line, name), (primitive, *_rest) in stats.stats.items():  # type: ignore[attr-defined]
        if path.endswith(needle[0]) and name == needle[1]:
            calls += primitive
    return calls


def _report(stats: pstats.Stats, operations: int, top: int) -> None:
    rows = list(stats.stats.items())  # type: ignore[attr-defined]
    total = sum(own for _key, (_cc, _nc, own, _cum, _callers) in rows)
    print(f"profiled CPU (all threads, thread clocks): {total / operations * 1000:.2f} ms per "
          "host-operation")
    ours = [row for row in rows if any(f"/{part}/" in row[0][0] for part in OURS)]
    for title, index, chosen in (("cumulative", 3, rows), ("own", 2, rows),
                                 ("cumulative, relayfleet's own code", 3, ours)):
        print(f"-- top {top} by {title} CPU per host-operation (ms, calls per operation)")
        ranked = sorted(chosen, key=lambda item: item[1][index], reverse=True)[:top]
        for (path, line, name), figures in ranked:
            where = f"{Path(path).parent.name}/{Path(path).name}:{line}" if line else path
            print(f"{figures[index] / operations * 1000:8.3f} ms {figures[1] / operations:7.1f}x"
                  f"  {name}  ({where})")
    print("-- counted per host-operation")
    for label, needle in COUNTED:
        print(f"{_count(stats, needle) / operations:8.2f}  {label}")


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=40)
    parser.add_argument("--jobs", type=int, default=3, help="jobs run (the first warms up)")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--plain", type=int, default=0,
                        help="jobs run without the profiler after the warm-up (their process "
                             "CPU is the figure to compare with a worker's)")
    parser.add_argument("--save", type=Path, default=None,
                        help="also write the merged profile here (pstats, for callers)")
    args = parser.parse_args()
    from tests.lab.lab import Lab

    workdir = Path(tempfile.mkdtemp(prefix="relayfleet-profile-"))
    pg = PostgresServer().start()
    with Lab(workdir / "lab") as lab:
        try:
            controller, ids = _build(args.hosts, workdir, lab, pg)
            wall, cpu, _kernel = _run_job(controller, ids)
            print(f"warm-up job: {len(ids)} hosts in {wall:.2f} s, process CPU "
                  f"{cpu / len(ids) * 1000:.1f} ms per host-operation")
            for n in range(args.plain):
                wall, cpu, kernel = _run_job(controller, ids)
                print(f"plain job {n + 1}: {len(ids)} hosts in {wall:.2f} s, process CPU "
                      f"{cpu / len(ids) * 1000:.1f} ms per host-operation, of which "
                      f"{kernel / len(ids) * 1000:.1f} ms in the kernel (no profiler)")
            with ThreadProfiles() as profiles:
                runs = [_run_job(controller, ids) for _ in range(max(1, args.jobs - 1))]
            operations = len(ids) * len(runs)
            for n, (wall, cpu, _kernel) in enumerate(runs, 1):
                print(f"profiled job {n}: {len(ids)} hosts in {wall:.2f} s, process CPU "
                      f"{cpu / len(ids) * 1000:.1f} ms per host-operation (under the profiler)")
            stats = profiles.stats()
            _report(stats, operations, args.top)
            if args.save is not None:
                stats.dump_stats(args.save)
        finally:
            pg.stop()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
