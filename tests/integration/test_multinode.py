"""Several controller nodes on one database and one Redis: 2 API servers, 3 Celery workers
and one beat, all real processes, as separate machines would run them (each its own data
directory; they share only the settings that must match: secret key, database, broker).

500 agent hosts, served by the real agent app from one process (tests.lab.agent_farm), are
enrolled through both APIs; one flush_queue job over all of them is started on one API and
followed on the other. Every host must run exactly once (the agents' own count), and the
hosts must be spread over the three workers (each worker's JSON log names the job and host
of every unit it recorded).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import TEST_SECRET_KEY
from tests.lab.services import (
    ApiServer,
    ControllerWorker,
    PostgresServer,
    RedisServer,
    free_port,
    ready_process,
)

HOSTS = 500
WORKERS = 3
#: 3 lanes (25 hosts each: the APIs' RELAYFLEET_LANE_THREADS): with one task slot per
#: worker, each worker takes one
CONCURRENCY = 75
LANE_THREADS = "25"
FLUSH = ("POST", "/v1/queue/flush")
#: written by Celery's signal handler straight to stdout, the one line that is not logged
CELERY_SHUTDOWN_NOTICE = re.compile(r"worker: (Warm|Cold) shutdown \(MainProcess\)")


def _address(number: int) -> str:
    """Host ``number``'s loopback address: 127.0.1.1, 127.0.1.2, ... (all of 127/8 is lo)."""
    return f"127.0.{1 + number // 250}.{1 + number % 250}"


@contextlib.contextmanager
def agent_farm(hosts: list[dict[str, str]], log: Path) -> Iterator[str]:
    """``tests.lab.agent_farm`` serving ``hosts``; yields its port."""
    port = free_port()
    with ready_process([sys.executable, "-m", "tests.lab.agent_farm", "--port", str(port)],
                       {"hosts": hosts}, log, "the farm"):
        yield str(port)


def _controller_command(env: dict[str, str], *args: str) -> str:
    """``relayfleet-controller ARGS`` with ``env``; its stdout."""
    done = subprocess.run([sys.executable, "-m", "controller.cli", *args],
                          env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def json_log(log: Path) -> list[dict[str, Any]]:
    """Every record of a node's log: each line one JSON object (RELAYFLEET_LOG_FORMAT),
    but for Celery's shutdown notice."""
    entries = []
    for line in log.read_text().splitlines():
        if line.strip() and not CELERY_SHUTDOWN_NOTICE.fullmatch(line):
            entries.append(json.loads(line))
    return entries


def _units_per_worker(log: Path, job_id: int) -> Counter[int]:
    """Hosts whose result this worker recorded for the job (from its JSON log)."""
    hosts: Counter[int] = Counter()
    for entry in json_log(log):
        if (entry.get("job_id"), entry.get("status")) == (job_id, "succeeded") and (
                "host" in entry):
            hosts[entry["host"]] += 1
    return hosts


@pytest.mark.slow
@pytest.mark.timeout(1200)  # (the job alone may take up to 600 s: see the deadline below)
def test_two_apis_three_workers_and_beat_share_one_database_and_redis(
        postgres_server: PostgresServer, redis_server: RedisServer, tmp_path: Path) -> None:
    redis_server.flush()
    shared = {"RELAYFLEET_DATABASE_URL": postgres_server.new_database(),
              "RELAYFLEET_BROKER_URL": redis_server.url,
              "RELAYFLEET_SECRET_KEY": TEST_SECRET_KEY,
              "RELAYFLEET_EGRESS_ALLOW": "loopback", "RELAYFLEET_LOG_FORMAT": "json",
              # lanes hand over every few seconds: continuations go to any worker
              "RELAYFLEET_LANE_BUDGET_S": "5"}
    node_numbers = itertools.count(1)

    def node_env() -> dict[str, str]:
        # Each node its own data directory: nothing but the settings above is shared.
        data = tmp_path / f"node{next(node_numbers)}"
        data.mkdir()
        return {**shared, "RELAYFLEET_DATA_DIR": str(data)}

    print(_controller_command(node_env(), "init-db").strip())
    admin = _controller_command(node_env(), "token", "create", "--role",
                                "admin").splitlines()[-1]
    hosts = [{"address": _address(n), "token": secrets.token_urlsafe(24)}
             for n in range(HOSTS)]
    # The APIs split the job into lanes of 25; the workers keep the default width (100),
    # and still run each lane 25 wide: the width travels in the lane's messages.
    apis = [ApiServer({**node_env(), "RELAYFLEET_LANE_THREADS": LANE_THREADS},
                      tmp_path / f"api{n}.log", workers=2, threads=8)
            for n in (1, 2)]
    workers = [ControllerWorker(node_env(), tmp_path / f"worker{n}.log", concurrency=1)
               for n in range(1, WORKERS + 1)]
    beat = ControllerWorker(node_env(), tmp_path / "beat.log", beat=True)
    started: list[Any] = []
    try:
        with agent_farm(hosts, tmp_path / "farm.log") as port:
            for process in [*apis, *workers, beat]:
                started.append(process.start())
            sessions = [requests.Session() for _ in apis]
            for session in sessions:
                session.headers["Authorization"] = f"Bearer {admin}"

            def call(api: int, method: str, path: str, body: Any = None,
                     expect: int = 200, **headers: str) -> Any:
                answer = sessions[api].request(method, f"{apis[api].url}{path}", json=body,
                                               headers=headers, timeout=60)
                assert answer.status_code == expect, answer.text
                return answer.json()

            tenant = call(0, "POST", "/v1/tenants", {"name": "Multi"}, 201)["id"]
            site = call(1, "POST", "/v1/sites", {"tenant_id": tenant, "name": "Farm"},
                        201)["id"]

            def enrol(number: int) -> int:
                host = hosts[number]
                body = {"name": f"farm{number:03}", "site_id": site,
                        "address": host["address"], "transport": "agent",
                        "agent": {"url": f"http://{host['address']}:{port}",
                                  "token": host["token"], "insecure_http": True}}
                # Even hosts through the first API, odd ones through the second.
                return int(call(number % 2, "POST", "/v1/hosts", body, 201)["id"])

            enrolling = time.monotonic()
            with ThreadPoolExecutor(max_workers=8) as pool:
                ids = list(pool.map(enrol, range(HOSTS)))
            print(f"enrolled {HOSTS} hosts through 2 APIs in "
                  f"{time.monotonic() - enrolling:.1f} s")
            assert len(set(ids)) == HOSTS
            listed = call(1, "GET", "/v1/hosts?limit=1")
            assert listed["total"] == HOSTS

            accepted = call(0, "POST", "/v1/jobs", {
                "action": "flush_queue", "target": {"all": True},
                "options": {"concurrency": CONCURRENCY}}, 202,
                **{"Idempotency-Key": "multinode-flush"})
            job_id, started_at = accepted["id"], time.monotonic()
            assert accepted["total"] == HOSTS
            deadline = time.monotonic() + 600
            while True:
                doc = call(1, "GET", f"/v1/jobs/{job_id}?results=false")
                if doc["finished_at"] is not None:
                    break
                assert time.monotonic() < deadline, doc
                time.sleep(1)
            print(f"flush_queue over {HOSTS} hosts: {time.monotonic() - started_at:.1f} s "
                  "from POST to finished")
            doc = call(1, "GET", f"/v1/jobs/{job_id}")
            counts = requests.get(f"http://127.0.0.1:{port}/_farm/counts", timeout=30).json()
    finally:
        for process in reversed(started):
            process.stop()

    others = [(r["host"], r["status"], r["error"]) for r in doc["results"]
              if r["status"] != "succeeded"]
    assert doc["status"] == "succeeded", (doc["counts"], others[:5])
    assert doc["counts"]["succeeded"] == HOSTS
    assert sorted(result["host_id"] for result in doc["results"]) == sorted(ids)
    assert all(result["attempts"] == 1 for result in doc["results"])
    # The agents' own count: each host's flush ran exactly once.
    flushes = Counter({address: count for address, method, path, count in counts
                       if (method, path) == FLUSH})
    assert flushes == Counter({host["address"]: 1 for host in hosts})
    per_worker = [_units_per_worker(worker.log, job_id) for worker in workers]
    print("hosts per worker:", [sum(hosts.values()) for hosts in per_worker])
    assert sum(per_worker, Counter()) == Counter(dict.fromkeys(ids, 1))
    assert all(per_worker), "a worker ran no host: the lanes were not spread"
    # Three lanes of 25 threads share the work; lanes run at the workers' own width would
    # be one of 75 threads and two of one, whose workers would run a few hosts each.
    assert min(sum(hosts.values()) for hosts in per_worker) >= HOSTS // 10
    # Beat ran (the sweeper's schedule) and ticked; it and the APIs logged JSON lines too.
    assert (Path(beat.env["RELAYFLEET_DATA_DIR"]) / "beat-heartbeat").exists()
    assert any(entry["message"].startswith("beat: Starting") for entry in json_log(beat.log))
    for api in apis:
        assert any(entry["logger"].startswith("gunicorn") for entry in json_log(api.log))
