"""The health probes the compose file runs (``python -m controller.healthcheck``) against
real processes: healthy while the API, worker and beat run, unhealthy with the reason
once they do not (or the schema is behind)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import TEST_SECRET_KEY
from tests.lab.services import ApiServer, ControllerWorker, RedisServer


def probe(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m controller.healthcheck ARGS`` with ``env``."""
    return subprocess.run([sys.executable, "-m", "controller.healthcheck", *args],
                          env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=60, check=False)


@pytest.fixture
def env(migrated_sqlite: Path, redis_server: RedisServer, tmp_path: Path) -> dict[str, str]:
    """A controller node's environment: migrated SQLite, the tests' Redis, JSON logs."""
    redis_server.flush()
    database = tmp_path / "relayfleet.db"
    shutil.copyfile(migrated_sqlite, database)
    (tmp_path / "data").mkdir()
    return {"RELAYFLEET_DATABASE_URL": f"sqlite:///{database}",
            "RELAYFLEET_BROKER_URL": redis_server.url,
            "RELAYFLEET_SECRET_KEY": TEST_SECRET_KEY,
            "RELAYFLEET_DATA_DIR": str(tmp_path / "data"), "RELAYFLEET_LOG_FORMAT": "json"}


@pytest.mark.slow
def test_api_and_database_probes(env: dict[str, str], tmp_path: Path) -> None:
    with ApiServer(env, tmp_path / "api.log") as api:
        answer = probe(env, "api", "--url", f"{api.url}/v1/health")
        assert answer.returncode == 0, answer.stderr
    down = probe(env, "api", "--url", f"{api.url}/v1/health")
    assert down.returncode == 1 and down.stderr.startswith("unhealthy: ")
    assert probe(env, "db").returncode == 0
    empty = {**env, "RELAYFLEET_DATABASE_URL": f"sqlite:///{tmp_path / 'empty.db'}"}
    behind = probe(empty, "db")
    assert behind.returncode == 1 and "run relayfleet-controller init-db" in behind.stderr


@pytest.mark.slow
def test_worker_probe_pings_this_hosts_worker_through_the_broker(env: dict[str, str],
                                                                 tmp_path: Path) -> None:
    worker = ControllerWorker(env, tmp_path / "worker.log", concurrency=1).start()
    try:
        alive = probe(env, "worker")
        assert alive.returncode == 0, alive.stderr
        assert "pong" in alive.stdout
    finally:
        worker.stop()
    gone = probe(env, "worker")
    assert gone.returncode == 1 and "did not answer a ping" in gone.stderr


@pytest.mark.slow
def test_beat_probe_reads_the_heartbeat_of_every_tick(env: dict[str, str],
                                                      tmp_path: Path) -> None:
    heartbeat = Path(env["RELAYFLEET_DATA_DIR"]) / "beat-heartbeat"
    missing = probe(env, "beat")
    assert missing.returncode == 1 and "has not ticked yet" in missing.stderr
    # a sweep every second: the scheduler ticks (and touches the file) that often
    beat = ControllerWorker({**env, "RELAYFLEET_SWEEP_EVERY_S": "1"}, tmp_path / "beat.log",
                            beat=True).start()
    try:
        deadline = time.monotonic() + 40
        while not heartbeat.exists():  # "beat: Starting" comes just before the first tick
            assert time.monotonic() < deadline, "beat never ticked"
            time.sleep(0.2)
        first = heartbeat.stat().st_mtime
        assert probe(env, "beat").returncode == 0
        # The next sweep is due a second later: the scheduler ticks again.
        while heartbeat.stat().st_mtime == first:
            assert time.monotonic() < deadline, "beat did not tick again"
            time.sleep(0.5)
    finally:
        beat.stop()
    stale = time.time() - 3600
    os.utime(heartbeat, (stale, stale))
    old = probe(env, "beat")
    assert old.returncode == 1 and "last ticked" in old.stderr
