"""A flush over a simulated fleet of thousands of agent hosts: prints figures, asserts nothing.

``python -m tests.benchmarks.sim_fleet --hosts 1000 3000 10000 --runs N`` (root: its own
Redis and PostgreSQL). The real controller stack (PostgreSQL, Redis, the API under
gunicorn, 2 Celery workers) runs ``POST /v1/jobs`` ``flush_queue`` over every host of a
fleet served by :mod:`tests.lab.sim_agent` (recorded real agent answers, one process,
thousands of loopback addresses). Each size gets a fresh database (the hosts are enrolled
through ``POST /v1/hosts/import``; enrolment is not what is measured) and fresh API and
worker processes; then, per run:

- wall time from ``POST /v1/jobs`` to the job's final status (target: 10,000 hosts in 60 s
  with 2 workers);
- the workers' CPU per host (user+system of both workers' process groups, from /proc), and
  the API's, the simulator's and PostgreSQL's (its backends included), for comparison;
- database bytes per job-host: growth of ``pg_total_relation_size`` of jobs, job_hosts,
  audit_events and idempotency_keys over the run, divided by the hosts;
- peak RSS of the API (gunicorn, all processes) and of the workers (both, pool included),
  sampled every 0.2 s.

Settings (an MSP's choice for one fleet-wide job, printed with the figures): job
``concurrency`` 100 (the default ``RELAYFLEET_TENANT_MAX_RUNNING``: an MSP-wide job counts
as one tenant), so ``ceil(100 / lane_threads)`` lanes (one of 100 threads at the default
width); each worker ``--concurrency 2`` (4 task slots); the API 2 gunicorn processes x 4
threads. ``--concurrency``, ``--worker-concurrency`` and environment variables
(``RELAYFLEET_*``, inherited by every controller process) change them.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from tests.lab.services import ApiServer, ControllerWorker, PostgresServer, RedisServer, free_port
from tests.lab.sim_agent import DOMAIN, SimFleet, host_name, sim_fleet

SECRET = "relayfleet-benchmark-secret-key-0123456789"
TARGET_HOSTS, TARGET_S = 10_000, 60.0
#: what one job's run leaves in the database
JOB_TABLES = ("jobs", "job_hosts", "audit_events", "idempotency_keys")
IMPORT_CHUNK = 1000
REPO = Path(__file__).resolve().parents[2]


def _group_pids(root_pid: int) -> list[int]:
    """A process and everything in its process group (workers, pool children)."""
    found = subprocess.run(["pgrep", "-g", str(os.getpgid(root_pid))], capture_output=True,
                           text=True, check=False).stdout.split()
    return sorted({root_pid, *(int(pid) for pid in found)})


def _rss_bytes(root_pid: int) -> int:
    """Resident memory of a process group, summed."""
    total = 0
    for pid in _group_pids(root_pid):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def _cpu_seconds(root_pid: int, reaped: bool = False) -> float:
    """User+system CPU of a process group's live processes, summed (from /proc); with
    ``reaped``, also what the group leader's children that ended had used."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in _group_pids(root_pid):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
        if reaped and pid == root_pid:
            total += int(fields[13]) + int(fields[14])
    return total / tick


class PeakRss:
    """Samples the summed RSS of some process groups in a thread; keeps the peak of each."""

    def __init__(self, groups: dict[str, list[int]], every_s: float = 0.2) -> None:
        self.groups = groups
        self.every_s = every_s
        self.peak = dict.fromkeys(groups, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            for name, pids in self.groups.items():
                self.peak[name] = max(self.peak[name], sum(_rss_bytes(pid) for pid in pids))
            if self._stop.wait(self.every_s):
                return

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def _table_bytes(database_url: str) -> int:
    """pg_total_relation_size of the tables a job fills, summed."""
    import psycopg

    dsn = database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT " + " + ".join(
            f"pg_total_relation_size('{table}')" for table in JOB_TABLES)).fetchone()
    return int(row[0]) if row else 0


@dataclass
class Sample:
    """One run's figures."""

    wall_s: float
    worker_cpu_s: float
    api_cpu_s: float
    sim_cpu_s: float
    #: PostgreSQL's (postmaster and backends, those that ended included)
    pg_cpu_s: float
    db_bytes: int
    api_rss: int
    worker_rss: int
    #: TCP (or TLS) connections the workers opened to the simulated agents
    connections: int


@dataclass
class SizeResult:
    """Every run at one fleet size."""

    hosts: int
    samples: list[Sample] = field(default_factory=list)
    enrol_s: float = 0.0

    def median(self, name: str) -> float:
        """Median of one figure over the runs."""
        return float(statistics.median(getattr(s, name) for s in self.samples))


def _env(database_url: str, redis: RedisServer, data: Path) -> dict[str, str]:
    return {"RELAYFLEET_DATABASE_URL": database_url, "RELAYFLEET_BROKER_URL": redis.url,
            "RELAYFLEET_SECRET_KEY": SECRET, "RELAYFLEET_DATA_DIR": str(data),
            "RELAYFLEET_EGRESS_ALLOW": "loopback"}


def _enrol(env: dict[str, str], sim: SimFleet, count: int, fingerprint: str | None) -> str:
    """Migrate, create a site and import ``count`` simulated hosts; return an admin token."""
    from controller.migrate import upgrade
    from tests.controller_client import Controller

    os.environ.update(env)
    upgrade(env["RELAYFLEET_DATABASE_URL"])
    controller = Controller.create()
    site = controller.site(controller.tenant("Sim"), "Fleet")
    for start in range(0, count, IMPORT_CHUNK):
        rows = [sim.import_row(n, site, fingerprint)
                for n in range(start, min(count, start + IMPORT_CHUNK))]
        controller.ok("POST", "/v1/hosts/import", {"hosts": rows}, expect=201)
    return str(controller.admin)


class Api:
    """A session with the API server."""

    def __init__(self, base: str, token: str) -> None:
        self.base = base
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"

    def job(self, target: dict[str, Any], concurrency: int, deadline_s: float = 1800
            ) -> dict[str, Any]:
        """Start flush_queue over ``target``; wait for its final status; return the job."""
        answer = self.session.post(f"{self.base}/v1/jobs", json={
            "action": "flush_queue", "target": target,
            "options": {"concurrency": concurrency}},
            headers={"Idempotency-Key": f"sim-{secrets.token_hex(8)}"}, timeout=120)
        if answer.status_code != 202:
            raise SystemExit(f"POST /v1/jobs: {answer.status_code} {answer.text[:500]}")
        job_id = answer.json()["id"]
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            doc = self.session.get(f"{self.base}/v1/jobs/{job_id}?results=false",
                                   timeout=60).json()
            if doc["finished_at"] is not None:
                return dict(doc)
            time.sleep(0.2)
        raise SystemExit(f"job {job_id} did not finish within {deadline_s} s")


@contextmanager
def _stack(env: dict[str, str], workdir: Path, workers: int, worker_concurrency: int
           ) -> Iterator[tuple[ApiServer, list[ControllerWorker]]]:
    api = ApiServer(env, workdir / "api.log", workers=2, threads=4)
    nodes = [ControllerWorker(env, workdir / f"worker{n}.log", concurrency=worker_concurrency)
             for n in range(1, workers + 1)]
    started: list[ApiServer | ControllerWorker] = []
    processes: list[ApiServer | ControllerWorker] = [api, *nodes]
    try:
        for process in processes:
            started.append(process.start())
        yield api, nodes
    finally:
        for process in reversed(started):
            process.stop()


def bench_size(size: int, args: argparse.Namespace, sim: SimFleet, redis: RedisServer,
               pg: PostgresServer, workdir: Path, fingerprint: str | None) -> SizeResult:
    """Every run at one fleet size, on a fresh database and fresh controller processes."""
    result = SizeResult(size)
    data = workdir / f"n{size}"
    data.mkdir()
    redis.flush()
    env = _env(pg.new_database(), redis, data)
    enrolling = time.monotonic()
    token = _enrol(env, sim, size, fingerprint)
    result.enrol_s = time.monotonic() - enrolling
    with _stack(env, data, args.workers, args.worker_concurrency) as (api_server, nodes):
        api = Api(api_server.url, token)
        # Warm-up (not measured): worker pools, connections, the first import of each module.
        api.job({"hosts": [f"{host_name(n)}.{DOMAIN}" for n in range(min(size, 20))]},
                args.concurrency)
        roots = [node.proc.pid for node in nodes if node.proc is not None]
        api_pid = api_server.proc.pid if api_server.proc is not None else 0
        pg_pid = pg.postmaster_pid()
        runs = args.large_runs if size >= TARGET_HOSTS and args.large_runs else args.runs
        for run in range(runs):
            db0 = _table_bytes(env["RELAYFLEET_DATABASE_URL"])
            cpu0 = sum(_cpu_seconds(pid) for pid in roots)
            api0, sim0 = _cpu_seconds(api_pid), _cpu_seconds(sim.proc.pid)
            pg0 = _cpu_seconds(pg_pid, reaped=True) if pg_pid else 0.0
            connections0 = int(sim.counts()["connections"])
            with PeakRss({"api": [api_pid], "workers": roots}) as rss:
                start = time.monotonic()
                doc = api.job({"all": True}, args.concurrency)
                wall = time.monotonic() - start
            if doc["status"] != "succeeded" or doc["counts"]["succeeded"] != size:
                raise SystemExit(f"{size} hosts, run {run + 1}: job ended {doc['status']} "
                                 f"{doc['counts']}")
            sample = Sample(wall, sum(_cpu_seconds(pid) for pid in roots) - cpu0,
                            _cpu_seconds(api_pid) - api0, _cpu_seconds(sim.proc.pid) - sim0,
                            (_cpu_seconds(pg_pid, reaped=True) - pg0) if pg_pid else 0.0,
                            _table_bytes(env["RELAYFLEET_DATABASE_URL"]) - db0,
                            rss.peak["api"], rss.peak["workers"],
                            int(sim.counts()["connections"]) - connections0)
            result.samples.append(sample)
            print(f"  {size:6} hosts run {run + 1}: {wall:.1f} s, worker CPU "
                  f"{sample.worker_cpu_s / size * 1000:.2f} ms/host, PostgreSQL CPU "
                  f"{sample.pg_cpu_s / size * 1000:.2f} ms/host, DB "
                  f"{sample.db_bytes / size:.0f} B/host, uptime: {_uptime()}", flush=True)
    return result


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True,
                          check=False).stdout.strip()


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                          check=False).stdout.strip()


def _tls(workdir: Path) -> tuple[tuple[Path, Path], str]:
    """One certificate for every simulated host (the agent installer's make-cert.sh); the
    controller pins its fingerprint, which alone decides trust."""
    from agent.config import certificate_fingerprint

    cert, key = workdir / "sim.crt", workdir / "sim.key"
    subprocess.run(["sh", str(REPO / "deploy" / "agent" / "make-cert.sh"), str(cert), str(key),
                    DOMAIN, "127.0.0.1"], check=True)
    return (cert, key), certificate_fingerprint(cert.read_text())


def report(results: list[SizeResult], args: argparse.Namespace) -> None:
    """The table, the target and the growth from the smallest to the largest size."""
    mb = 1024 * 1024
    print()
    print(f"flush_queue over a simulated fleet ({'https, pinned' if args.tls else 'http'}; "
          f"scenario {args.scenario}; job concurrency {args.concurrency}; {args.workers} "
          f"workers x --concurrency {args.worker_concurrency}; API 2 x 4 threads); medians; "
          "samples listed per size")
    print(f"{'hosts':>6} {'wall s':>8} {'hosts/s':>8} {'worker ms/host':>15} "
          f"{'API ms/host':>12} {'sim ms/host':>12} {'PG ms/host':>11} {'DB B/job-host':>14} "
          f"{'API RSS MB':>11} {'workers RSS MB':>15} {'conns/host':>10}  samples (s)")
    for r in results:
        n = r.hosts
        print(f"{n:6} {r.median('wall_s'):8.1f} {n / r.median('wall_s'):8.0f} "
              f"{r.median('worker_cpu_s') / n * 1000:15.2f} "
              f"{r.median('api_cpu_s') / n * 1000:12.3f} "
              f"{r.median('sim_cpu_s') / n * 1000:12.3f} {r.median('pg_cpu_s') / n * 1000:11.2f} "
              f"{r.median('db_bytes') / n:14.0f} "
              f"{r.median('api_rss') / mb:11.0f} {r.median('worker_rss') / mb:15.0f} "
              f"{r.median('connections') / n:10.2f}  "
              f"{', '.join(f'{s.wall_s:.1f}' for s in r.samples)}")
    for r in results:
        if r.hosts == TARGET_HOSTS:
            wall = r.median("wall_s")
            print(f"target: {TARGET_HOSTS} hosts in <= {TARGET_S:.0f} s with 2 workers: "
                  f"{wall:.1f} s ({wall / TARGET_S:.2f} x the target)")
    if len(results) > 1:
        small, big = results[0], results[-1]
        print(f"growth {small.hosts} -> {big.hosts} hosts (x{big.hosts / small.hosts:.0f}): "
              f"wall x{big.median('wall_s') / small.median('wall_s'):.1f}, worker CPU/host "
              f"x{big.median('worker_cpu_s') / big.hosts / (small.median('worker_cpu_s') / small.hosts):.2f}, "  # noqa: E501
              f"PostgreSQL CPU/host "
              f"x{big.median('pg_cpu_s') / big.hosts / max(small.median('pg_cpu_s') / small.hosts, 1e-9):.2f}, "  # noqa: E501
              f"worker peak RSS x{big.median('worker_rss') / small.median('worker_rss'):.2f}")
    print("enrolment (not measured, POST /v1/hosts/import): "
          + ", ".join(f"{r.hosts} in {r.enrol_s:.0f} s" for r in results))
    print(f"revision {_git('rev-parse', '--short', 'HEAD')}; uncommitted: "
          f"{_git('diff', '--stat').splitlines()[-1:] or ['none']}")
    print(f"uptime: {_uptime()}")


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, nargs="+", default=[1000, 3000, 10000])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--large-runs", type=int, default=0,
                        help="runs at 10,000 hosts and more (default: --runs)")
    parser.add_argument("--concurrency", type=int, default=100, help="the job's concurrency")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker-concurrency", type=int, default=2,
                        help="task slots per worker (celery --concurrency)")
    parser.add_argument("--scenario", choices=("queued", "empty"), default="queued")
    parser.add_argument("--delay", type=float, default=0.0,
                        help="seconds each simulated flush takes (a real host's time)")
    parser.add_argument("--tls", action="store_true",
                        help="https with one pinned certificate (the TLS cost)")
    args = parser.parse_args()
    sizes = sorted(args.hosts)
    workdir = Path(tempfile.mkdtemp(prefix="relayfleet-simbench-"))
    redis = RedisServer(workdir / "redis").start()
    pg = PostgresServer().start()
    tls, fingerprint = _tls(workdir) if args.tls else (None, None)
    print(f"revision {_git('rev-parse', '--short', 'HEAD')}, sizes {sizes}, runs {args.runs}; "
          f"uptime: {_uptime()}", flush=True)
    try:
        with sim_fleet(sizes[-1], workdir / "sim.log", port=free_port(),
                       seed=secrets.token_urlsafe(16), scenario=args.scenario,
                       delays={"flush_queue": args.delay} if args.delay else None,
                       tls=tls) as sim:
            results = [bench_size(size, args, sim, redis, pg, workdir, fingerprint)
                       for size in sizes]
        report(results, args)
    finally:
        redis.stop()
        pg.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
