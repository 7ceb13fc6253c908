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

# The API test needs PostgreSQL (root) but no lab host: ``lab`` is marked per test.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


@pytest.mark.lab
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


@pytest.mark.lab
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_redis_then_postgres_restarted_mid_job_lose_nothing(
        lab: Lab, postgres_server: Any, redis_server: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis restarted (saved, down ~2.5 s, same port) in the middle of set_smarthost jobs
    on ten agent hosts, then PostgreSQL (``pg_ctl stop -m fast``, down ~2.5 s, same port):
    every job finishes, every host succeeds once, every config is the new one whole."""
    from controller.migrate import upgrade
    from tests.lab.chaos import restart_during_changes

    database_url = postgres_server.new_database()
    upgrade(database_url)
    env = {"RELAYFLEET_DATABASE_URL": database_url,
           "RELAYFLEET_BROKER_URL": redis_server.url.rsplit("/", 1)[0] + "/5",
           "RELAYFLEET_SECRET_KEY": TEST_SECRET_KEY, "RELAYFLEET_DATA_DIR": str(tmp_path),
           **FAST_RECOVERY_ENV}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    controller = Controller.create()
    hosts = agent_hosts(lab, controller, 10, prefix="rs")
    worker, beat = start_stack(env, tmp_path)
    smarthosts = [f"[{lab.smarthost.address}]", "smarthost.lab.test"]
    try:
        reports = [restart_during_changes(controller, name, server.restart, [worker, beat],
                                          hosts, smarthosts, jobs=2)
                   for name, server in (("redis", redis_server),
                                        ("postgresql", postgres_server))]
    finally:
        worker.stop()
        beat.stop()
        for host, _ in hosts:
            host.close()
    for report in reports:
        print("\n".join(report.lines()))
    for report in reports:
        assert report.restarts == report.jobs == 2 and report.missed == 0, report
        assert report.jobs_lost == 0, report
        assert report.hosts_failed == 0, report
        assert report.changed_twice == 0, report
        assert report.torn_configs == 0, report
    for host, _ in hosts:
        assert not (host.mail_dir / ".relayfleet.lock").exists()


def test_api_sigkilled_mid_post_jobs_makes_one_job_per_idempotency_key(
        postgres_server: Any, redis_server: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGKILL ``relayfleet-controller serve`` (its process group) at random points of
    ``POST /v1/jobs`` over 2,000 hosts, 10 times; the client retries each request with the
    same Idempotency-Key until it is accepted: exactly one job per key."""
    from controller.migrate import upgrade
    from tests.lab.chaos import import_documentation_hosts, kill_api_during_job_posts

    database_url = postgres_server.new_database()
    upgrade(database_url)
    env = {"RELAYFLEET_DATABASE_URL": database_url,
           "RELAYFLEET_BROKER_URL": redis_server.url.rsplit("/", 1)[0] + "/4",
           "RELAYFLEET_SECRET_KEY": TEST_SECRET_KEY, "RELAYFLEET_DATA_DIR": str(tmp_path),
           "RELAYFLEET_EGRESS_ALLOW": "loopback,192.0.2.0/24"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    controller = Controller.create()
    site = controller.site(controller.tenant("Chaos API"), "Big")
    import_documentation_hosts(controller, site, 2000)
    report = kill_api_during_job_posts(
        env, tmp_path, controller.admin,
        {"action": "flush_queue", "target": {"sites": ["Big"]}}, kills=10)
    print("\n" + "\n".join(report.lines() + report.odd_answers))
    assert report.kills >= 10
    assert report.unanswered == 0
    assert report.jobs_per_key and set(report.jobs_per_key.values()) == {1}
    assert report.stray_jobs == 0
    assert not report.odd_answers


@pytest.mark.lab
def test_agent_sigkilled_50_times_mid_change_never_tears_a_config(lab: Lab) -> None:
    """The agent killed at random points of PUT /v1/smarthost: sendmail.cf is always the
    old or the new one whole, status tells the truth after each restart, and a dead
    agent's change lock never blocks the host past the grace of a lock naming nobody."""
    import secrets

    from tests.lab.chaos import kill_agent_during_changes

    host = lab.add_host("akill", "debian")
    try:
        token = secrets.token_urlsafe(24)
        url = host.start_agent(token, tls=True)
        report = kill_agent_during_changes(
            host, token, url, [f"[{lab.smarthost.address}]", "smarthost.lab.test"],
            kills=50, max_rounds=150)
        host.stop_agent()
        print("\n".join(report.lines()))
        assert report.kills >= 50
        assert report.torn_configs == 0
        assert report.lies == 0 and report.named_mc_not_cf == 0
        assert report.refused_after_kill == 0, report.details
        assert not (host.mail_dir / ".relayfleet.lock").exists()
    finally:
        host.close()
