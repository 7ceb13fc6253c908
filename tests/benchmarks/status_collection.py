"""Status collection benchmarks: prints figures, asserts nothing.

``python -m tests.benchmarks.status_collection [round|spread|tick|all] [--runs 3]
[--hosts 200]`` (root; starts its own Redis and PostgreSQL, and for ``round`` and
``spread`` its own lab of agent hosts).

- **round**: one beat tick whose window covers the whole interval (beat was down), so it
  collects every one of N agent lab hosts in one ``collect_status`` job: wall time from
  the tick to the job's end, and the worker's CPU per host collected (from /proc);
  reference: the same agent calls made directly (a thread per host, no controller).
- **spread**: a real beat (2 s tick) and worker collecting N hosts every 60 s, for one
  interval: how many hosts each tick's job held (min / median / max; the even spread
  is N * 2 / 60), and worker + beat CPU per host collected.
- **tick**: beat's own cost: one tick's wall time (choosing the due hosts, accepting the
  job) over 10,000 inventory hosts of one tenant, for a 600 s interval (500 hosts a 30 s
  tick) and for a whole interval at once; reference: ``GET /v1/fleet?limit=1000``.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.benchmarks.controller_jobs import (
    _controller,
    _cpu_seconds,
    _env,
    _import_hosts,
    median,
)
from tests.lab.services import ControllerWorker, PostgresServer, RedisServer

#: the interval the spread benchmark uses (and its tick)
SPREAD_EVERY_S, SPREAD_TICK_S = 60, 2


def _tick(controller: Any, now: float) -> list[int]:
    """Run beat's status step in this process at ``now``; the jobs it started."""
    from controller import schedules
    from controller.crypto import SecretBox
    from controller.lanes import app_database, app_settings

    with controller.app.app_context():
        settings = app_settings()
        box = SecretBox(settings.secret_key, settings.old_secret_keys)
        return schedules.collect_statuses(app_database(), settings, box, now=now)


def _wait_finished(controller: Any, job_id: int) -> dict[str, Any]:
    while True:
        doc: dict[str, Any] = controller.ok("GET", f"/v1/jobs/{job_id}?results=false")
        if doc["finished_at"]:
            return doc
        time.sleep(0.05)


def _lab_hosts(controller: Any, lab: Any, site: int, count: int) -> list[Any]:
    from controller.transports import HostSpec

    specs = []
    for index in range(count):
        host = lab.add_host(f"s{index}", "debian")
        token = secrets.token_urlsafe(24)
        url = host.start_agent(token, tls=True)
        pin = host.agent_fingerprint
        doc = controller.ok("POST", "/v1/hosts", {
            "name": host.fqdn, "site_id": site, "address": host.address, "transport": "agent",
            "agent": {"url": url, "token": token, "tls_fingerprint": pin}})
        specs.append(HostSpec(doc["id"], host.fqdn, host.address, "agent", agent_url=url,
                              agent_token=token, agent_tls_fingerprint=pin))
    return specs


def _beat_was_down(controller: Any, tenant: int, every_s: int) -> None:
    """Set the tenant's mark as a beat stopped longer than the interval ago leaves it."""
    from controller.db import db
    from controller.models import SchedulerMark
    from controller.schedules import status_mark

    with controller.app.app_context(), db.transaction() as session:
        session.merge(SchedulerMark(name=status_mark(tenant), at=time.time() - every_s - 1))


def bench_lab(redis: RedisServer, pg: PostgresServer, workdir: Path, runs: int, hosts: int,
              which: tuple[str, ...]) -> None:
    """The lab benchmarks (``round``, ``spread``) over one lab of N agent hosts."""
    from tests.lab.lab import Lab

    env = {**_env(pg.new_database(), redis, workdir),
           "RELAYFLEET_SCHEDULER_TICK_S": str(SPREAD_TICK_S),
           "RELAYFLEET_MIN_STATUS_EVERY_S": "10"}
    controller = _controller(env)
    tenant = controller.tenant("Acme")
    controller.ok("PUT", f"/v1/tenants/{tenant}/status-collection", {"every_s": 0})
    site = controller.site(tenant, "Lab")
    worker = ControllerWorker(env, workdir / "worker.log", concurrency=8).start()
    with Lab(workdir / "lab") as lab:
        try:
            specs = _lab_hosts(controller, lab, site, hosts)
            if "round" in which:
                bench_round(controller, worker, specs, tenant, runs)
            if "spread" in which:
                bench_spread(controller, worker, env, workdir, tenant, hosts)
        finally:
            worker.stop()


def bench_round(controller: Any, worker: ControllerWorker, specs: list[Any], tenant: int,
                runs: int) -> None:
    """Every host in one tick: wall time and worker CPU per host; direct calls as reference."""
    from tests.lab.fanout import run_per_host

    hosts = len(specs)
    print(f"== round: one tick collecting all {hosts} agent lab hosts (beat was down)",
          flush=True)
    every = 600
    controller.ok("PUT", f"/v1/tenants/{tenant}/status-collection", {"every_s": every})
    cpu_per_host: list[float] = []

    def one_round() -> float:
        _beat_was_down(controller, tenant, every)
        cpu0 = _cpu_seconds(worker.proc.pid)  # type: ignore[union-attr]
        start = time.perf_counter()
        started = _tick(controller, time.time())
        if len(started) != 1:
            raise SystemExit(f"expected one job, beat started {started}")
        doc = _wait_finished(controller, started[0])
        took = time.perf_counter() - start
        if doc["status"] != "succeeded" or doc["counts"]["total"] != hosts:
            raise SystemExit(f"job {started[0]}: {doc['status']} {doc['counts']}")
        cpu = _cpu_seconds(worker.proc.pid) - cpu0  # type: ignore[union-attr]
        cpu_per_host.append(cpu / hosts)
        return took

    def direct() -> float:
        from controller.transports import AgentTransport

        def one(spec: Any) -> Any:
            with AgentTransport(spec) as transport:
                return transport.run("collect_status", {}, dry_run=False, timeout_s=60)

        start = time.perf_counter()
        outcomes = run_per_host(specs, one, concurrency=100)
        if any(o.status != "succeeded" for o in outcomes):
            raise SystemExit("a direct agent call failed")
        return time.perf_counter() - start

    one_round()  # warm-up: worker processes, connections
    cpu_per_host.clear()
    took, samples = median(one_round, runs)
    ref, _ = median(direct, runs)
    print(f"{hosts:4} hosts: tick to last status {took:.2f} s (samples "
          f"{', '.join(f'{s:.2f}' for s in samples)}); direct agent calls {ref:.2f} s "
          f"(100 at once); worker CPU per host {statistics.median(cpu_per_host) * 1000:.1f} ms",
          flush=True)
    controller.ok("PUT", f"/v1/tenants/{tenant}/status-collection", {"every_s": 0})


def bench_spread(controller: Any, worker: ControllerWorker, env: dict[str, str],
                 workdir: Path, tenant: int, hosts: int) -> None:
    """A real beat over one interval: hosts per tick and CPU per host collected."""
    print(f"== spread: beat ({SPREAD_TICK_S} s tick) collecting {hosts} agent lab hosts "
          f"every {SPREAD_EVERY_S} s, one interval", flush=True)
    beat = ControllerWorker(env, workdir / "beat.log", beat=True).start()
    try:
        # one interval to settle (first ticks, warm processes), one to measure
        controller.ok("PUT", f"/v1/tenants/{tenant}/status-collection",
                      {"every_s": SPREAD_EVERY_S})
        time.sleep(SPREAD_EVERY_S)
        first = max((j["id"] for j in controller.ok("GET", "/v1/jobs?limit=1")["items"]),
                    default=0)
        pids = (worker.proc.pid, beat.proc.pid)  # type: ignore[union-attr]
        cpu0 = sum(_cpu_seconds(pid) for pid in pids)
        time.sleep(SPREAD_EVERY_S)
        cpu = sum(_cpu_seconds(pid) for pid in pids) - cpu0
        jobs = [j for j in controller.ok(
            "GET", "/v1/jobs?limit=1000&action=collect_status")["items"] if j["id"] > first]
    finally:
        beat.stop()
    sizes = sorted(j["counts"]["total"] for j in jobs)
    if not sizes:
        raise SystemExit("beat started no collection")
    collected = sum(sizes)
    print(f"{hosts:4} hosts: {len(jobs)} jobs, {collected} host collections in "
          f"{SPREAD_EVERY_S} s; hosts per tick min {sizes[0]} / median "
          f"{statistics.median(sizes):.0f} / max {sizes[-1]} (even: "
          f"{hosts * SPREAD_TICK_S / SPREAD_EVERY_S:.1f}); worker + beat CPU per host "
          f"collected {cpu / collected * 1000:.1f} ms", flush=True)


def bench_tick(redis: RedisServer, pg: PostgresServer, workdir: Path, runs: int) -> None:
    """Beat's own cost over 10,000 inventory hosts (no worker: the jobs are only accepted)."""
    print("== tick: one status tick over 10,000 inventory hosts of one tenant")
    env = {**_env(pg.new_database(), redis, workdir),
           "RELAYFLEET_BROKER_URL": redis.url.rsplit("/", 1)[0] + "/9"}
    controller = _controller(env)
    tenant = controller.tenant("Big")
    site = controller.site(tenant, "Everywhere")
    _import_hosts(controller, site, 10_000)
    controller.ok("PUT", f"/v1/tenants/{tenant}/status-collection", {"every_s": 600})
    clock = [time.time()]
    sizes: list[int] = []

    def tick(advance: float) -> float:
        clock[0] += advance
        start = time.perf_counter()
        started = _tick(controller, clock[0])
        took = time.perf_counter() - start
        for job_id in started:  # the next tick must not find them busy
            controller.post(f"/v1/jobs/{job_id}/cancel")
            sizes.append(controller.ok("GET", f"/v1/jobs/{job_id}?results=false")[
                "counts"]["total"])
        return took

    tick(30)  # the first tick makes the tenant's mark
    sizes.clear()
    regular, _ = median(lambda: tick(30), runs)
    per_tick = statistics.median(sizes)
    sizes.clear()
    whole, _ = median(lambda: tick(601), runs)

    def fleet() -> float:
        start = time.perf_counter()
        controller.ok("GET", "/v1/fleet?limit=1000")
        return time.perf_counter() - start

    ref, _ = median(fleet, runs)
    print(f"30 s tick of a 600 s interval ({per_tick:.0f} hosts): {regular * 1000:.0f} ms; "
          f"a whole interval (10,000 hosts): {whole * 1000:.0f} ms; reference GET "
          f"/v1/fleet?limit=1000: {ref * 1000:.0f} ms")


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", nargs="?", default="all",
                        choices=("round", "spread", "tick", "all"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--hosts", type=int, default=200)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="relayfleet-bench-"))
    redis = RedisServer(workdir / "redis").start()
    pg = PostgresServer().start()
    try:
        if args.which in ("tick", "all"):
            bench_tick(redis, pg, workdir, args.runs)
        lab_parts = tuple(part for part in ("round", "spread") if args.which in (part, "all"))
        if lab_parts:
            bench_lab(redis, pg, workdir, args.runs, args.hosts, lab_parts)
    finally:
        redis.stop()
        pg.stop()


if __name__ == "__main__":
    main()
