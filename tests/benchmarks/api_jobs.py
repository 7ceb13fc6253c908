"""API CPU per ``POST /v1/jobs``: prints figures, asserts nothing.

``python -m tests.benchmarks.api_jobs [--runs 5] [--requests 20]`` (root; starts its own
Redis and PostgreSQL). Serves the controller with ``relayfleet-controller serve``
(gunicorn, its default 4 processes x 4 threads) on PostgreSQL and sends ``POST /v1/jobs``
(3 hosts each, a fresh Idempotency-Key each) from 50 clients in a closed loop. Per run:
the CPU the server's processes spent (user + system, from /proc) per request, the
throughput (requests/s) and p50/p99 latency. The reference, measured in the same runs
under the same load: ``GET /v1/health`` (no database). Then the server's own floor: a
bare WSGI app (:func:`bare_app`, one fixed answer) served by gunicorn in the same shape
under the same load, i.e. what serving any request costs before the app runs. Target
(printed): at most 2.5 ms of CPU per POST.

``--against REV [--runs 3]`` compares instead: this checkout and REV (a git worktree, given
a copy of this script) each served and measured in a fresh process with its own servers,
in turns; it prints both medians and their ratio, then the server's floor (the same for
both trees: it runs no code of theirs). The issue that set the target measured 7.6 ms this
way on the tree before its work (``378bc73``), so the target is a ratio of 0.33 to that
tree on whatever day this box runs.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from tests.benchmarks.against import compare, figures_line, median_of, side_by_side
from tests.benchmarks.controller_jobs import (
    THREADS,
    WORKERS,
    _controller,
    _cpu_seconds,
    _env,
    _import_hosts,
    _load,
    _pct,
    _serve,
)
from tests.lab.services import PostgresServer, RedisServer

CLIENTS = 50
TARGET_CPU_MS = 2.5
BODY: dict[str, Any] = {"action": "flush_queue", "target": {"sites": ["Leeds"]}}


@dataclass(frozen=True)
class Run:
    """One closed-loop run: CPU per request, throughput, latency percentiles."""

    cpu_ms: float
    per_s: float
    p50_ms: float
    p99_ms: float


def _run(pid: int, base: str, token: str, per_client: int,
         request: Callable[[requests.Session, int], requests.Response]) -> Run:
    cpu0, start = _cpu_seconds(pid), time.perf_counter()
    times = _load(base, token, CLIENTS, per_client, request)
    wall, cpu = time.perf_counter() - start, _cpu_seconds(pid) - cpu0
    return Run(cpu / len(times) * 1000, len(times) / wall, _pct(times, 0.5) * 1000,
               _pct(times, 0.99) * 1000)


def bare_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """A WSGI app that answers every request with one fixed JSON document: the floor."""
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(_BARE_ANSWER)))])
    return [_BARE_ANSWER]


_BARE_ANSWER = b'{"status": "ok"}'


def _floor(runs: int, per_client: int, workers: int, threads: int) -> Run:
    """CPU per request of :func:`bare_app` served in the API's shape, under the same load;
    print and return the median of ``runs`` runs."""
    workdir = Path(tempfile.mkdtemp(prefix="relayfleet-bench-"))
    # by its module's name: run as a script, this module is __main__
    proc, base = _serve({}, workdir, workers, threads,
                        bare_app="tests.benchmarks.api_jobs:bare_app")
    try:
        _run(proc.pid, base, "", 4, lambda s, n: s.get(base))  # warm-up
        return _summary(f"a bare WSGI app, gunicorn {workers} x {threads} (the server's "
                        "floor)", [_run(proc.pid, base, "", per_client,
                                        lambda s, n: s.get(base)) for _ in range(runs)])
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(60)  # a loaded machine may take a while to stop the workers
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _summary(name: str, runs: list[Run]) -> Run:
    mid = Run(*(statistics.median(getattr(r, f) for r in runs)
                for f in ("cpu_ms", "per_s", "p50_ms", "p99_ms")))
    print(f"{name}: CPU {mid.cpu_ms:.2f} ms per request (runs "
          f"{', '.join(f'{r.cpu_ms:.2f}' for r in runs)}); {mid.per_s:.0f} requests/s; "
          f"p50 {mid.p50_ms:.1f} ms, p99 {mid.p99_ms:.1f} ms")
    return mid


def _measured(runs: int, per_client: int, workers: int = WORKERS,
              threads: int = THREADS) -> tuple[Run, Run]:
    """Serve the controller on fresh servers and measure ``runs`` runs of POSTs and of
    health checks, in turns; print and return both medians."""
    workdir = Path(tempfile.mkdtemp(prefix="relayfleet-bench-"))
    redis = RedisServer(workdir / "redis").start()
    pg = PostgresServer().start()
    try:
        env = _env(pg.new_database(), redis, workdir)
        controller = _controller(env)
        site = controller.site(controller.tenant("Acme"), "Leeds")
        _import_hosts(controller, site, 3)
        proc, base = _serve(env, workdir, workers, threads)
        print(f"== POST /v1/jobs (3 hosts, fresh Idempotency-Key), {CLIENTS} clients in a "
              f"closed loop, gunicorn {workers} processes x {threads} threads, PostgreSQL; "
              f"{runs} runs of {CLIENTS * per_client} requests, medians")
        stamp = secrets.token_hex(4)
        try:
            def post_job(prefix: str) -> Callable[[requests.Session, int], requests.Response]:
                return lambda s, n: s.post(f"{base}/v1/jobs", json=BODY, headers={
                    "Idempotency-Key": f"{prefix}-{stamp}-{n}"})

            # warm-up: every worker process imports, connects and compiles its statements
            _run(proc.pid, base, controller.admin, 4, post_job("warm-up"))
            posts, healths = [], []
            for run in range(runs):
                redis.flush()
                posts.append(_run(proc.pid, base, controller.admin, per_client,
                                  post_job(f"run{run}")))
                healths.append(_run(proc.pid, base, controller.admin, per_client,
                                    lambda s, n: s.get(f"{base}/v1/health")))
            return (_summary("POST /v1/jobs", posts),
                    _summary("GET /v1/health (reference)", healths))
        finally:
            _stop(proc)
    finally:
        redis.stop()
        pg.stop()


def _compare(rev: str, per_client: int, runs: int) -> None:
    """Served CPU per POST of this checkout and of ``rev``, in turns; print the ratio."""
    ours, theirs = compare(rev, "tests.benchmarks.api_jobs", runs, "--runs", "1",
                           "--requests", str(per_client))
    print(f"POST /v1/jobs served ({CLIENTS} clients, {CLIENTS * per_client} requests a run, "
          f"medians of {runs} runs in turns), server CPU per request: "
          f"{side_by_side(ours, theirs, rev)} (the target, {TARGET_CPU_MS} ms where the issue "
          f"measured 7.6 ms, is a ratio of {TARGET_CPU_MS / 7.6:.2f}). Requests/s: "
          f"{median_of(ours, 'per_s'):.0f} and {median_of(theirs, 'per_s'):.0f}. "
          f"GET /v1/health: {median_of(ours, 'health'):.2f} ms and "
          f"{median_of(theirs, 'health'):.2f} ms.", flush=True)
    floor = _floor(runs, per_client, WORKERS, THREADS).cpu_ms
    mine, old = median_of(ours, "POST") - floor, median_of(theirs, "POST") - floor
    print(f"The server's floor, the same for both trees: {floor:.2f} ms per request; POST "
          f"CPU above it: {mine:.2f} ms and {old:.2f} ms, ratio {mine / old:.2f}.")


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--requests", type=int, default=20, help="per client and run")
    parser.add_argument("--workers", type=int, default=WORKERS,
                        help=f"gunicorn processes (default {WORKERS})")
    parser.add_argument("--threads", type=int, default=THREADS,
                        help=f"threads per process (default {THREADS})")
    parser.add_argument("--figures", action="store_true",
                        help="end with one line of figures (what --against runs in each "
                             "tree)")
    parser.add_argument("--against", metavar="REV",
                        help="measure this checkout and REV (each a fresh process with "
                             "--runs 1) in turns, --runs times, and print the ratio")
    args = parser.parse_args()
    if args.against:
        _compare(args.against, args.requests, args.runs)
        return
    post, health = _measured(args.runs, args.requests, args.workers, args.threads)
    print(f"POST CPU / {TARGET_CPU_MS} ms target = {post.cpu_ms / TARGET_CPU_MS:.2f}; "
          f"POST CPU / health CPU = {post.cpu_ms / health.cpu_ms:.1f}", flush=True)
    if args.figures:
        # (the floor runs none of the tree's code: --against measures it once, here)
        print(figures_line({"POST": (post.cpu_ms, "ms"), "health": (health.cpu_ms, "ms"),
                            "per_s": (post.per_s, "")}))
        return
    floor = _floor(args.runs, args.requests, args.workers, args.threads)
    print(f"POST CPU above the server's floor: {post.cpu_ms - floor.cpu_ms:.2f} ms")


if __name__ == "__main__":
    main()
