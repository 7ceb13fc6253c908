"""Profile ``POST /v1/jobs`` in-process: prints figures, asserts nothing.

``python -m tests.benchmarks.api_profile [--requests 500] [--top 25] [--show-sql]`` (root;
starts its own Redis and PostgreSQL; ``--show-sql`` prints the statements of one request
instead). The controller app runs in this process, against PostgreSQL and a real Redis
broker, so the figures include the SQL round trips and the Celery publish of the lanes.
Each request (3 hosts, a fresh Idempotency-Key) is built before the clock starts and handed
to the app as a WSGI server hands it a parsed request: the CPU measured is the app's, from
the WSGI call to the last byte of the answer. For each request it prints: that CPU, the SQL
statements and transactions sent, and the functions that cost most (cProfile, per
request), then the same for ``GET /v1/health`` as the reference. It also prints the CPU
with Flask's test client building each request inside the clock (how rounds before the
sixth measured it: that adds the client's own work, about 0.1 ms).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import secrets
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import event
from werkzeug.test import EnvironBuilder

from tests.benchmarks.controller_jobs import _controller, _env, _import_hosts
from tests.lab.services import PostgresServer, RedisServer

BODY = {"action": "flush_queue", "target": {"sites": ["Leeds"]}}


class SqlTally:
    """Statements and commits the engine sends, counted by an event listener."""

    def __init__(self, engine: Any) -> None:
        self.statements = 0
        self.commits = 0
        #: the statements' text, while set (``--show-sql``)
        self.shown: list[str] | None = None
        event.listen(engine, "before_cursor_execute", self._statement)
        event.listen(engine, "commit", self._commit)

    def _statement(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        self.statements += 1
        if self.shown is not None:
            self.shown.append(" ".join(statement.split()))

    def _commit(self, *_args: Any) -> None:
        self.commits += 1
        if self.shown is not None:
            self.shown.append("COMMIT")


#: makes request ``n`` ready to send (not timed) and returns what sends it (timed)
Prepare = Callable[[int], Callable[[], Any]]


def _cpu_per_call(calls: list[Callable[[], Any]]) -> float:
    """CPU seconds of this process per call, the calls run one after another.

    CPU time, not wall time: waiting for PostgreSQL or Redis costs the API nothing."""
    cpu0 = time.process_time()
    for call in calls:
        call()
    return (time.process_time() - cpu0) / len(calls)


def _measure(name: str, prepare: Prepare, count: int, tally: SqlTally,
             top: int, save: Path | None = None) -> float:
    """Send ``count`` prepared requests under cProfile, then ``count`` without it; print
    per-request figures."""
    _cpu_per_call([prepare(-1 - n) for n in range(20)])  # warm-up: caches, connections
    statements, commits = tally.statements, tally.commits
    calls = [prepare(n) for n in range(count)]
    profile = cProfile.Profile(time.process_time)
    profile.enable()
    cpu_profiled = _cpu_per_call(calls)
    profile.disable()
    if save is not None:
        profile.dump_stats(save)
    # the same without the profiler's overhead
    cpu = _cpu_per_call([prepare(count + n) for n in range(count)])
    print(f"== {name}: {cpu * 1000:.2f} ms CPU per request ({cpu_profiled * 1000:.2f} ms "
          f"under cProfile); {(tally.statements - statements) / (2 * count):.1f} SQL "
          f"statements and {(tally.commits - commits) / (2 * count):.1f} commits per request")
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    # (the one figure here that the machine's load does not move)
    print(f"{stats.total_calls / count:.0f} Python function calls per request")  # type: ignore[attr-defined]
    stats.sort_stats("tottime").print_stats(top)
    print(f"-- top {top} by own time (seconds over {count} requests; divide by {count})")
    print(_trimmed(out.getvalue()))
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.sort_stats("cumulative").print_stats(top)
    print(f"-- top {top} by cumulative time")
    print(_trimmed(out.getvalue()))
    return cpu


def _wsgi_call(app: Any, expected: int, request: dict[str, Any]) -> Callable[[], Any]:
    """A request built now (a WSGI environ, as a server makes of a parsed request) and
    what hands it to ``app`` and reads the whole answer (which must be ``expected``)."""
    environ = EnvironBuilder(**request).get_environ()

    def call() -> bytes:
        statuses: list[str] = []
        answer = app(environ, lambda status, _headers, _exc_info=None: statuses.append(status))
        try:
            body = b"".join(answer)
        finally:
            getattr(answer, "close", lambda: None)()
        _check(int(statuses[0].split()[0]) if statuses else 0, expected, body)
        return body

    return call


def _check(status: int, expected: int, body: bytes) -> None:
    """Stop the run at the first answer that is not ``expected``."""
    if status != expected:
        raise SystemExit(f"{status}: {body[:500]!r}")


def _trimmed(text: str) -> str:
    """pstats' table without its preamble."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls")), 0)
    return "\n".join(line for line in lines[start:] if line.strip())


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--show-sql", action="store_true",
                        help="print the SQL one POST sends (after the warm-up), then stop")
    parser.add_argument("--save", type=Path, help="also write the POST profile here "
                                                  "(pstats format)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="relayfleet-profile-"))
    redis = RedisServer(workdir / "redis").start()
    pg = PostgresServer().start()
    try:
        controller = _controller(_env(pg.new_database(), redis, workdir))
        site = controller.site(controller.tenant("Acme"), "Leeds")
        _import_hosts(controller, site, 3)
        from controller.db import db

        with controller.app.app_context():
            tally = SqlTally(db.engine)
        stamp = secrets.token_hex(4)
        headers = {"Authorization": f"Bearer {controller.admin}"}

        def post_kwargs(n: int) -> dict[str, Any]:
            return {"path": "/v1/jobs", "method": "POST", "json": BODY,
                    "headers": {**headers, "Idempotency-Key": f"prof-{stamp}-{n}"}}

        def post(n: int) -> Callable[[], Any]:
            return _wsgi_call(controller.app, 202, post_kwargs(n))

        if args.show_sql:
            _cpu_per_call([post(-100 - n) for n in range(20)])  # warm-up, as measured
            tally.shown = []
            post(-1000)()
            print("\n".join(tally.shown))
            return

        def post_by_test_client(n: int) -> Callable[[], Any]:
            def send() -> Any:
                answer = controller.client.open(**post_kwargs(n))
                _check(answer.status_code, 202, answer.get_data())
                return answer
            return send

        def health(_n: int) -> Callable[[], Any]:
            return _wsgi_call(controller.app, 200, {"path": "/v1/health"})

        post_cpu = _measure("POST /v1/jobs (3 hosts, fresh Idempotency-Key)", post,
                            args.requests, tally, args.top, args.save)
        # (keys _measure did not use)
        by_client = _cpu_per_call([post_by_test_client(10 * args.requests + n)
                                   for n in range(args.requests)])
        redis.flush()
        health_cpu = _measure("GET /v1/health (reference)", health, args.requests, tally,
                              args.top)
        print(f"POST /v1/jobs {post_cpu * 1000:.2f} ms CPU per request in the app "
              f"(with the test client building each request: {by_client * 1000:.2f} ms); "
              f"GET /v1/health {health_cpu * 1000:.2f} ms; ratio "
              f"{post_cpu / health_cpu:.1f}")
    finally:
        redis.stop()
        pg.stop()


if __name__ == "__main__":
    main()
