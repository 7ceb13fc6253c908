"""Controller benchmarks: prints figures, asserts nothing.

``python -m tests.benchmarks.controller_jobs [accept|latency|fleet|all] [--runs 5]`` (root;
starts its own Redis and PostgreSQL, and for ``fleet`` its own lab).

- **accept**: wall time of ``POST /v1/jobs`` targeting ``{all: true}`` over 10,000
  inventory hosts (target under 1 s), on SQLite and on PostgreSQL; reference: the same
  call targeting 10 hosts, measured in the same run.
- **latency**: p50/p99 of ``POST /v1/jobs`` (3 hosts each, fresh Idempotency-Key) from 50
  concurrent clients against ``relayfleet-controller serve`` (gunicorn) on PostgreSQL
  (target p99 under 100 ms); reference: ``GET /v1/health`` under the same load.
- **fleet**: wall time from ``POST /v1/jobs`` to the final status of ``flush_queue`` on 50
  and 200 agent lab hosts with a real worker (target under 10 s for 200); reference: the
  same agent calls made directly (a thread per host, no controller), the two run in
  turns. Also the controller's CPU time per host-operation (worker processes, from
  /proc) beside the direct calls' own (this process), and where the job's time went (the
  first and last host started, a host's run, the job's end).
  The tenant's share of running hosts is set to the largest size, so the job runs at
  the direct calls' concurrency; ``RELAYFLEET_LANE_THREADS`` in the environment sets how
  wide its lanes are (printed).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from tests.lab.services import ControllerWorker, PostgresServer, RedisServer, free_port

SECRET = "relayfleet-benchmark-secret-key-0123456789"
#: the API server the latency benchmark runs (relayfleet-controller serve's defaults)
WORKERS, THREADS = 4, 4


def median(fn: Callable[[], float], runs: int) -> tuple[float, list[float]]:
    """Median of ``runs`` samples of what ``fn`` returns."""
    samples = [fn() for _ in range(runs)]
    return statistics.median(samples), samples


def interleaved(fn: Callable[[], float], reference: Callable[[], float],
                runs: int) -> tuple[tuple[float, list[float]], tuple[float, list[float]]]:
    """Medians and samples of ``fn`` and ``reference``, run in turns (one, the other, ...)
    so that the box getting slower or faster during the runs moves both alike."""
    pairs = [(fn(), reference()) for _ in range(runs)]
    ours, theirs = [a for a, _ in pairs], [b for _, b in pairs]
    return (statistics.median(ours), ours), (statistics.median(theirs), theirs)


def _env(database_url: str, redis: RedisServer, data: Path) -> dict[str, str]:
    # Egress: lab bridges (10.N.0.0/24), the documentation hosts of the accept figures and
    # loopback; nothing else.
    return {"RELAYFLEET_DATABASE_URL": database_url, "RELAYFLEET_BROKER_URL": redis.url,
            "RELAYFLEET_SECRET_KEY": SECRET, "RELAYFLEET_DATA_DIR": str(data),
            "RELAYFLEET_EGRESS_ALLOW": "loopback,10.0.0.0/8,192.0.2.0/24"}


def _controller(env: dict[str, str]) -> Any:
    from controller.migrate import upgrade
    from tests.controller_client import Controller

    os.environ.update(env)
    upgrade(env["RELAYFLEET_DATABASE_URL"])
    return Controller.create()


def _import_hosts(controller: Any, site: int, count: int, prefix: str = "h") -> None:
    for start in range(0, count, 1000):
        rows = [{"name": f"{prefix}{i:05}", "site_id": site, "address": f"10.{i // 65536}."
                 f"{i // 256 % 256}.{i % 256}", "transport": "agent",
                 "agent": {"url": "http://192.0.2.1:8587", "token": "t" * 32}}
                for i in range(start, min(count, start + 1000))]
        controller.ok("POST", "/v1/hosts/import", {"hosts": rows}, expect=201)


def bench_accept(redis: RedisServer, pg: PostgresServer, workdir: Path, runs: int) -> None:
    """Time to accept a job over 10,000 hosts, SQLite and PostgreSQL."""
    print("== accept: POST /v1/jobs {all: true} over 10,000 hosts (target < 1 s)")
    for kind in ("sqlite", "postgresql"):
        url = (f"sqlite:///{workdir / f'accept-{secrets.token_hex(3)}.db'}" if kind == "sqlite"
               else pg.new_database())
        controller = _controller(_env(url, redis, workdir))
        tenant = controller.tenant("Big")
        big, small = controller.site(tenant, "big"), controller.site(tenant, "small")
        _import_hosts(controller, big, 9990)
        _import_hosts(controller, small, 10, prefix="s")

        def post(target: dict[str, Any], controller: Any = controller) -> float:
            redis.flush()
            start = time.perf_counter()
            controller.start_job({"action": "flush_queue", "target": target})
            return time.perf_counter() - start

        all_s, samples = median(lambda: post({"all": True}), runs)
        ten_s, _ = median(lambda: post({"sites": ["small"]}), runs)
        print(f"{kind:10} 10,000 hosts: median {all_s * 1000:.0f} ms "
              f"(samples {', '.join(f'{s * 1000:.0f}' for s in samples)} ms); 10 hosts: "
              f"{ten_s * 1000:.1f} ms; ratio to the 1 s target {all_s:.2f}; "
              f"ratio to 10 hosts {all_s / ten_s:.1f}")


def _serve(env: dict[str, str], workdir: Path, workers: int, threads: int,
           bare_app: str | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """The API served as ``relayfleet-controller serve`` serves it; or, given ``bare_app``
    (``module:callable``), that WSGI app served by gunicorn in the same shape (threaded
    workers, the same timeout, no control socket): what the server costs without the API."""
    from gunicorn.config import Config

    from controller.gunicorn_conf import settings

    port = free_port()
    shape = settings(f"127.0.0.1:{port}", workers, threads, known=Config().settings)
    log = open(workdir / "serve.log", "ab")  # noqa: SIM115 (kept for the process)
    argv = ([sys.executable, "-m", "controller.cli", "serve", "--listen",
             f"127.0.0.1:{port}", "--workers", str(workers), "--threads", str(threads)]
            if bare_app is None else
            [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}",
             "--worker-class", shape["worker_class"], "--workers", str(workers),
             "--threads", str(threads), "--timeout", str(shape["timeout"]),
             *(["--no-control-socket"] if shape.get("control_socket_disable") else []),
             bare_app])
    proc = subprocess.Popen(argv, env={**os.environ, **env}, stdout=log, stderr=log,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            requests.get(f"{base}/v1/health", timeout=1)
            return proc, base
        except requests.RequestException:
            time.sleep(0.2)
    raise SystemExit("the API server did not start")


def _load(base: str, token: str, clients: int, per_client: int,
          request: Callable[[requests.Session, int], requests.Response],
          interval_s: float = 0.0) -> list[float]:
    """Latencies of ``clients`` threads each sending ``per_client`` requests, back to back
    (``interval_s`` 0: a closed loop) or one every ``interval_s`` seconds (paced)."""
    times: list[float] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token}"
        time.sleep(interval_s * index / clients)  # spread the paced clients out
        for n in range(per_client):
            start = time.perf_counter()
            answer = request(session, index * per_client + n)
            took = time.perf_counter() - start
            if answer.status_code >= 300:
                raise SystemExit(f"{answer.status_code}: {answer.text[:300]}")
            with lock:
                times.append(took)
            if interval_s:
                time.sleep(max(0.0, interval_s - took))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return times


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bench_latency(redis: RedisServer, pg: PostgresServer, workdir: Path, runs: int) -> None:
    """p50/p99 of POST /v1/jobs from 50 concurrent clients (gunicorn, PostgreSQL)."""
    print(f"== latency: POST /v1/jobs, 50 concurrent clients, gunicorn {WORKERS} processes x "
          f"{THREADS} threads, PostgreSQL (target p99 < 100 ms)")
    env = _env(pg.new_database(), redis, workdir)
    controller = _controller(env)
    site = controller.site(controller.tenant("Acme"), "Leeds")
    _import_hosts(controller, site, 3)
    proc, base = _serve(env, workdir, WORKERS, THREADS)
    try:
        body = {"action": "flush_queue", "target": {"sites": ["Leeds"]}}
        p50s, p99s, h50s, h99s = [], [], [], []
        stamp = secrets.token_hex(4)
        cpu_per_post = []
        for run in range(runs):
            redis.flush()
            cpu0 = _cpu_seconds(proc.pid)
            times = _load(base, controller.admin, 50, 10, lambda s, n, run=run: s.post(
                f"{base}/v1/jobs", json=body,
                headers={"Idempotency-Key": f"bench-{stamp}-{run}-{n}"}))
            cpu_per_post.append((_cpu_seconds(proc.pid) - cpu0) / len(times))
            p50s.append(_pct(times, 0.5))
            p99s.append(_pct(times, 0.99))
            health = _load(base, controller.admin, 50, 10,
                           lambda s, n: s.get(f"{base}/v1/health"))
            h50s.append(_pct(health, 0.5))
            h99s.append(_pct(health, 0.99))
        p50, p99 = statistics.median(p50s), statistics.median(p99s)
        print(f"POST /v1/jobs: p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms (median of "
              f"{runs} runs of 500 requests); p99 / 100 ms target = {p99 / 0.1:.2f}; API CPU "
              f"per POST {statistics.median(cpu_per_post) * 1000:.1f} ms")
        print(f"GET /v1/health under the same load: p50 {statistics.median(h50s) * 1000:.1f} "
              f"ms, p99 {statistics.median(h99s) * 1000:.1f} ms; POST p99 / health p99 = "
              f"{p99 / statistics.median(h99s):.1f}")
        for rate in (50, 100):
            interval = 50 / rate
            paced = [_load(base, controller.admin, 50, 10, lambda s, n, run=run, r=rate: s.post(
                f"{base}/v1/jobs", json=body,
                headers={"Idempotency-Key": f"paced-{stamp}-{r}-{run}-{n}"}), interval)
                for run in range(runs)]
            print(f"paced, 50 clients at {rate} requests/s in all: p50 "
                  f"{statistics.median(_pct(t, 0.5) for t in paced) * 1000:.1f} ms, p99 "
                  f"{statistics.median(_pct(t, 0.99) for t in paced) * 1000:.1f} ms")
    finally:
        proc.terminate()
        proc.wait(20)


def _cpu_seconds(root_pid: int) -> float:
    """User+system CPU of a process and its descendants (live ones)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pids = [root_pid]
    children = subprocess.run(["pgrep", "-g", str(os.getpgid(root_pid))], capture_output=True,
                              text=True, check=False).stdout.split()
    pids += [int(p) for p in children if int(p) != root_pid]
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def bench_fleet(redis: RedisServer, pg: PostgresServer, workdir: Path, runs: int,
                sizes: list[int]) -> None:
    """flush_queue on N agent lab hosts through the controller vs direct agent calls."""
    from controller.transports import AgentTransport, HostSpec
    from shared.actions import ACTIONS
    from tests.lab.fanout import run_per_host
    from tests.lab.lab import Lab

    # One tenant's job at the concurrency of the direct calls: its share of running hosts
    # (100 by default, so that one tenant cannot hold every worker) is raised to the
    # largest size, or its second hundred hosts would wait for the first.
    share = max(sizes)
    print("== fleet: flush_queue on agent lab hosts, POST to final status "
          f"(target < 10 s for 200; the tenant's share of running hosts: {share})")
    env = {**_env(pg.new_database(), redis, workdir),
           "RELAYFLEET_TENANT_MAX_RUNNING": str(share)}
    controller = _controller(env)
    print(f"   lanes of {controller.app.config['RELAYFLEET_SETTINGS'].lane_threads} threads "
          "(RELAYFLEET_LANE_THREADS), 8 worker processes")
    site = controller.site(controller.tenant("Acme"), "Lab")
    worker = ControllerWorker(env, workdir / "worker.log", concurrency=8).start()
    specs: list[HostSpec] = []
    flush = ACTIONS["flush_queue"].parse({})
    with Lab(workdir / "lab") as lab:
        try:
            for size in sizes:
                while len(specs) < size:
                    host = lab.add_host(f"a{len(specs)}", "debian")
                    token = secrets.token_urlsafe(24)
                    url = host.start_agent(token, tls=True)
                    pin = host.agent_fingerprint
                    doc = controller.ok("POST", "/v1/hosts", {
                        "name": host.fqdn, "site_id": site, "address": host.address,
                        "transport": "agent",
                        "agent": {"url": url, "token": token, "tls_fingerprint": pin},
                        "tags": ["bench"]})
                    specs.append(HostSpec(doc["id"], host.fqdn, host.address, "agent",
                                          agent_url=url, agent_token=token,
                                          agent_tls_fingerprint=pin))
                target = {"hosts": [s.host_id for s in specs[:size]]}

                cpu_per_host: list[float] = []
                timelines: list[dict[str, float]] = []

                def through_controller(target: dict[str, Any] = target, size: int = size,
                                       cpu_per_host: list[float] = cpu_per_host,
                                       timelines: list[dict[str, float]] = timelines) -> float:
                    cpu0 = _cpu_seconds(worker.proc.pid)  # type: ignore[union-attr]
                    posted = time.time()
                    start = time.perf_counter()
                    job = controller.start_job({"action": "flush_queue", "target": target,
                                                "options": {"concurrency": size}})
                    while True:
                        doc = controller.ok("GET", f"/v1/jobs/{job}?results=false")
                        if doc["finished_at"]:
                            break
                        time.sleep(0.05)
                    took = time.perf_counter() - start
                    cpu = _cpu_seconds(worker.proc.pid) - cpu0  # type: ignore[union-attr]
                    if doc["status"] != "succeeded":
                        raise SystemExit(f"job {job} ended {doc['status']}")
                    cpu_per_host.append(cpu / size)
                    timelines.append(_timeline(controller.ok("GET", f"/v1/jobs/{job}"),
                                               posted, took))
                    return took

                direct_hosts: list[float] = []
                direct_cpu: list[float] = []

                def direct(size: int = size, direct_hosts: list[float] = direct_hosts,
                           direct_cpu: list[float] = direct_cpu) -> float:
                    cpu0 = time.process_time()  # (the in-process API is idle meanwhile)
                    start = time.perf_counter()

                    def one(spec: HostSpec) -> Any:
                        began = time.perf_counter()
                        with AgentTransport(spec) as transport:
                            outcome = transport.run("flush_queue", flush, dry_run=False,
                                                    timeout_s=60)
                        direct_hosts.append(time.perf_counter() - began)
                        return outcome

                    outcomes = run_per_host(specs[:size], one, concurrency=size)
                    if any(o.status != "succeeded" for o in outcomes):
                        raise SystemExit("a direct agent call failed")
                    took = time.perf_counter() - start
                    direct_cpu.append((time.process_time() - cpu0) / size)
                    return took

                through_controller()  # warm-up: worker processes, connections
                cpu_per_host.clear()
                timelines.clear()
                (ctl, samples), (ref, ref_samples) = interleaved(through_controller, direct,
                                                                 runs)
                print(f"{size:4} hosts: controller {ctl:.2f} s (samples "
                      f"{', '.join(f'{s:.2f}' for s in samples)}); direct agent calls "
                      f"{ref:.2f} s (samples {', '.join(f'{s:.2f}' for s in ref_samples)}); "
                      f"controller / direct = {ctl / ref:.2f}; worker CPU per host-operation "
                      f"{statistics.median(cpu_per_host) * 1000:.1f} ms (the direct calls' "
                      f"own CPU per host {statistics.median(direct_cpu) * 1000:.1f} ms)")
                print("      where the controller's time goes (medians, s): " + ", ".join(
                    f"{label} {statistics.median(t[label] for t in timelines):.2f}"
                    for label in timelines[0]) + f"; a host's direct call "
                    f"{statistics.median(direct_hosts):.2f}")
        finally:
            worker.stop()


def _timeline(doc: dict[str, Any], posted: float, took: float) -> dict[str, float]:
    """Where a job's wall time went, from its hosts' start and end times (seconds): from
    the POST to the first and last host started, a host's own run, from the last host's
    end to the job's, and from that to the poll that saw it."""
    def at(stamp: str) -> float:
        return dt.datetime.fromisoformat(stamp).replace(tzinfo=dt.UTC).timestamp()

    starts = sorted(at(r["started_at"]) for r in doc["results"])
    ends = sorted(at(r["finished_at"]) for r in doc["results"])
    finished = at(doc["finished_at"])
    return {"first host started": starts[0] - posted, "last started": starts[-1] - posted,
            "a host's run": statistics.median(e - s for s, e in zip(starts, ends,
                                                                     strict=True)),
            "last host end to job end": finished - ends[-1],
            "job end to seen": posted + took - finished}


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", nargs="?", default="all",
                        choices=("accept", "latency", "fleet", "all"))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--hosts", type=int, nargs="+", default=[50, 200])
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="relayfleet-bench-"))
    redis = RedisServer(workdir / "redis").start()
    pg = PostgresServer().start()
    try:
        if args.which in ("accept", "all"):
            bench_accept(redis, pg, workdir, args.runs)
        if args.which in ("latency", "all"):
            bench_latency(redis, pg, workdir, args.runs)
        if args.which in ("fleet", "all"):
            bench_fleet(redis, pg, workdir, args.runs, sorted(args.hosts))
    finally:
        redis.stop()
        pg.stop()


if __name__ == "__main__":
    main()
