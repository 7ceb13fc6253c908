"""Chaos: a worker SIGKILLed again and again in the middle of set_smarthost jobs on twenty
lab hosts, with a real Celery worker and beat, Redis and PostgreSQL. Every job finishes,
every host ends with the new configuration whole, none is changed twice.

The figures (including how long a job takes to move again after a kill) are printed by
``python -m tests.benchmarks.chaos worker-kills``; tests assert outcomes, not timings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TEST_SECRET_KEY
from tests.controller_client import Controller
from tests.lab.chaos import FAST_RECOVERY_ENV, agent_hosts, kill_workers_during_changes, start_stack
from tests.lab.lab import Lab

pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.timeout(1200)]


def test_worker_sigkilled_30_times_loses_no_job_and_changes_no_host_twice(
        lab: Lab, postgres_server: Any, redis_server: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from controller.migrate import upgrade

    database_url = postgres_server.new_database()
    upgrade(database_url)
    env = {"RELAYFLEET_DATABASE_URL": database_url,
           "RELAYFLEET_BROKER_URL": redis_server.url.rsplit("/", 1)[0] + "/3",
           "RELAYFLEET_SECRET_KEY": TEST_SECRET_KEY, "RELAYFLEET_DATA_DIR": str(tmp_path),
           **FAST_RECOVERY_ENV}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    controller = Controller.create()
    hosts = agent_hosts(lab, controller, 20)
    worker, beat = start_stack(env, tmp_path)
    try:
        report = kill_workers_during_changes(
            controller, worker, hosts, [f"[{lab.smarthost.address}]", "smarthost.lab.test"],
            kills=30, timeout_s=20)
    finally:
        worker.stop()
        beat.stop()
        for host, _ in hosts:
            host.close()
    print("\n".join(report.lines()))
    assert report.kills >= 30 and report.jobs >= 1
    assert report.jobs_lost == 0
    assert report.changed_twice == 0
    assert report.torn_configs == 0
    for host, _ in hosts:
        assert not (host.mail_dir / ".relayfleet.lock").exists()
