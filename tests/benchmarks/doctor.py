"""Fleet doctor benchmark: prints figures, asserts nothing.

``python -m tests.benchmarks.doctor [--hosts 10000] [--runs 7] [--db sqlite postgresql]``
(PostgreSQL: root, it starts its own server).

Server time of ``GET /v1/doctor`` over 10,000 hosts' stored summaries (the controller app
in process: no network, the time the API spends answering), median of several runs; as
reference, ``GET /v1/fleet?limit=1000`` on the same data in the same run. The hosts'
summaries are what collect_status leaves: about 70% healthy, 5% never looked at, the rest
with one to three causes drawn from every kind, as a large MSP fleet on a bad day.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

SECRET = "relayfleet-benchmark-secret-key-0123456789"
SAMPLES = {
    "no_smarthost": "Deferred: Connection refused by mx.ourtest.com.",
    "ehlo_refused": "Deferred: 421 4.7.0 Try again later, closing connection. (EHLO) "
                    "unqualified host name",
    "tls_verify_failed": "Server certificate not verified",
    "tls_required": "TLS is required, but was not offered by host relay.example.net",
    "auth_failed": "SASL authentication failed; server relay.example.net said: 535 5.7.8 "
                   "Authentication credentials invalid",
    "host_lookup_failed": "Host unknown (Name server: relay.nowhere.test: host not found)",
    "relay_unreachable": "Deferred: Connection refused by relay.example.net.",
    "sender_refused": "550 5.7.1 Sender address rejected: not owned by a customer domain",
    "relaying_denied": "Service unavailable: 554 5.7.1 Relaying denied",
    "other": "Deferred: 451 4.3.0 Temporary system problem",
}


def median(fn: Callable[[], float], runs: int) -> tuple[float, list[float]]:
    """Median of ``runs`` samples of what ``fn`` returns (one warm-up call first)."""
    fn()
    samples = [fn() for _ in range(runs)]
    return statistics.median(samples), samples


def _controller(database_url: str, data: Path) -> Any:
    from controller.migrate import upgrade
    from tests.controller_client import Controller

    os.environ.update({"RELAYFLEET_DATABASE_URL": database_url,
                       "RELAYFLEET_BROKER_URL": "memory://",
                       "RELAYFLEET_SECRET_KEY": SECRET, "RELAYFLEET_DATA_DIR": str(data)})
    upgrade(database_url)
    return Controller.create()


def _fill(controller: Any, count: int) -> None:
    """``count`` hosts over 20 sites of one tenant, each with a status look's summary."""
    from controller.db import db, utcnow
    from controller.models import Host

    tenant = controller.tenant("Big")
    sites = [controller.site(tenant, f"site-{n:02}") for n in range(20)]
    for start in range(0, count, 1000):
        rows = [{"name": f"h{i:05}", "site_id": sites[i % len(sites)],
                 "address": f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", "transport": "agent",
                 "agent": {"url": "http://192.0.2.1:8587", "token": "t" * 32}}
                for i in range(start, min(count, start + 1000))]
        controller.ok("POST", "/v1/hosts/import", {"hosts": rows}, expect=201)
    pick = random.Random(16)
    with controller.app.app_context(), db.transaction() as session:
        ids = list(session.scalars(select(Host.id)))
        now, values = utcnow(), []
        for host_id in ids:
            roll = pick.random()
            if roll < 0.05:
                continue  # never looked at
            causes = [] if roll < 0.75 else [
                {"cause": key, "count": pick.randint(1, 40), "sample": SAMPLES[key]}
                for key in pick.sample(list(SAMPLES), pick.randint(1, 3))]
            values.append({"id": host_id, "causes": causes, "last_seen_at": now,
                           "last_reachable": pick.random() > 0.02,
                           "queue_count": sum(c["count"] for c in causes),
                           "queue_oldest_age_s": 600 if causes else None})
        session.execute(update(Host), values)


def _timed(controller: Any, path: str) -> float:
    start = time.perf_counter()
    answer = controller.get(path)
    took = time.perf_counter() - start
    if answer.status != 200:
        raise SystemExit(f"{path}: {answer}")
    return took


def bench(kind: str, url: str, workdir: Path, hosts: int, runs: int) -> None:
    """Fill a database and time the doctor and the fleet page on it."""
    controller = _controller(url, workdir / f"data-{kind}")
    started = time.perf_counter()
    _fill(controller, hosts)
    filled = time.perf_counter() - started
    report = controller.ok("GET", "/v1/doctor")
    doctor_s, samples = median(lambda: _timed(controller, "/v1/doctor"), runs)
    fleet_s, _ = median(lambda: _timed(controller, "/v1/fleet?limit=1000"), runs)
    print(f"{kind:10} {hosts:,} hosts (filled in {filled:.0f} s; {report['healthy']:,} "
          f"healthy, {report['unknown']:,} unknown, {len(report['causes'])} causes): "
          f"GET /v1/doctor median {doctor_s * 1000:.0f} ms (samples "
          f"{', '.join(f'{s * 1000:.0f}' for s in samples)} ms); GET /v1/fleet?limit=1000 "
          f"median {fleet_s * 1000:.0f} ms; doctor / fleet page = {doctor_s / fleet_s:.2f}")


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--db", nargs="+", default=["sqlite", "postgresql"],
                        choices=("sqlite", "postgresql"))
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="relayfleet-bench-"))
    print(f"== doctor: GET /v1/doctor over {args.hosts:,} hosts' summaries (server time, "
          "in process); reference GET /v1/fleet?limit=1000")
    if "sqlite" in args.db:
        bench("sqlite", f"sqlite:///{workdir / f'doctor-{secrets.token_hex(3)}.db'}", workdir,
              args.hosts, args.runs)
    if "postgresql" in args.db:
        from tests.lab.services import PostgresServer

        pg = PostgresServer().start()
        try:
            bench("postgresql", pg.new_database(), workdir, args.hosts, args.runs)
        finally:
            pg.stop()


if __name__ == "__main__":
    main()
