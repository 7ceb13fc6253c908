"""A real controller stack (PostgreSQL, Redis, a Celery worker) flushes a simulated fleet:
a few hundred agent hosts answered by one process from recorded real agent answers
(:mod:`tests.lab.sim_agent`). Every host succeeds with its own recorded answer, and each
host's agent was asked exactly once."""

from __future__ import annotations

import json
import secrets
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from controller.migrate import upgrade
from tests.conftest import TEST_SECRET_KEY
from tests.controller_client import Controller
from tests.lab.services import ControllerWorker, PostgresServer, RedisServer, free_port
from tests.lab.sim_agent import (
    DOMAIN,
    FIXTURE,
    Simulator,
    fleet,
    host_address,
    host_name,
    host_token,
    parse_head,
    sim_fleet,
)

pytestmark = [pytest.mark.slow]

HOSTS = 300
#: one lane of 100 threads, the default tenant share (100 hosts at once)
CONCURRENCY = 100
FLUSH = ("POST", "/v1/queue/flush")


def _expected(seed: str) -> dict[str, dict[str, Any]]:
    """Each host's recorded flush answer, with its own names, by host name."""
    sim = Simulator.from_fixture(json.loads(FIXTURE.read_text()), fleet(seed, HOSTS))
    expected = {}
    for number in range(HOSTS):
        address = host_address(number)
        request = parse_head(f"POST /v1/queue/flush HTTP/1.1\r\nAuthorization: Bearer "
                             f"{host_token(seed, address)}\r\n\r\n".encode())
        answer, host = sim.answer(address, request, b"{}")
        assert answer.status == 200
        expected[f"{host_name(number)}.{DOMAIN}"] = json.loads(answer.body(host))
    return expected


@pytest.mark.timeout(900)
def test_a_flush_over_a_simulated_fleet_runs_each_host_once_with_its_answer(
        postgres_server: PostgresServer, redis_server: RedisServer, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    redis_server.flush()
    url = postgres_server.new_database()
    upgrade(url)
    env = {"RELAYFLEET_DATABASE_URL": url, "RELAYFLEET_BROKER_URL": redis_server.url,
           "RELAYFLEET_SECRET_KEY": TEST_SECRET_KEY, "RELAYFLEET_DATA_DIR": str(tmp_path),
           "RELAYFLEET_EGRESS_ALLOW": "loopback"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    controller = Controller.create()
    site = controller.site(controller.tenant("Sim"), "Fleet")
    seed = secrets.token_urlsafe(16)
    worker = ControllerWorker(env, tmp_path / "worker.log", concurrency=4).start()
    try:
        with sim_fleet(HOSTS, tmp_path / "sim.log", port=free_port(), seed=seed) as sim:
            created = controller.ok("POST", "/v1/hosts/import", {
                "hosts": [sim.import_row(n, site) for n in range(HOSTS)]}, expect=201)
            assert created["created"] == HOSTS
            job = controller.start_job({"action": "flush_queue", "target": {"all": True},
                                        "options": {"concurrency": CONCURRENCY}})
            doc = controller.wait_job(job, timeout=600)
            counts = sim.counts()
    finally:
        worker.stop()

    others = [(r["host"], r["status"], r["error"]) for r in doc["results"]
              if r["status"] != "succeeded"]
    assert doc["status"] == "succeeded", (doc["counts"], others[:5])
    assert len(doc["results"]) == HOSTS
    expected = _expected(seed)
    for result in doc["results"]:
        answer = expected[result["host"]]
        assert result["attempts"] == 1
        # The stored result is the recorded answer, with this host's own names in it.
        for key in ("before", "after", "deliveries", "remaining"):
            assert result["data"][key] == answer[key], (result["host"], key)
        assert answer["remaining"][0]["sender"] == f"voicemail@{result['host']}"
    # The simulator's own count: each host's flush was asked for exactly once.
    flushes = Counter({address: count for address, method, path, count in counts["requests"]
                       if (method, path) == FLUSH})
    assert flushes == Counter({host_address(n): 1 for n in range(HOSTS)})
