"""Lanes and the ledger on SQLite with fake transports: fast, no root, no Redis.

The broker is kombu's in-memory transport, so accepting a job through the API really
queues its lanes; the lanes are then run here, in the test, against scripted hosts.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from sqlalchemy import select, update

from controller import dispatch, ledger
from controller.db import db
from controller.lanes import Lane
from controller.ledger import JobState, SkipReason, UnitState
from controller.models import Host, Job, JobHost
from controller.testing import Call, FakeTransports
from shared.errors import HostUnreachable, OperationError
from shared.results import OperationResult, Step
from tests.controller_client import Controller


@pytest.fixture
def controller(memory_controller: Controller) -> Controller:
    """A controller on a fresh SQLite file and an in-memory broker."""
    return memory_controller


@pytest.fixture
def hosts(controller: Controller) -> list[int]:
    """Four agent hosts on one site."""
    site = controller.site(controller.tenant("Acme"), "Leeds")
    return [int(controller.host(site, f"pbx-{n}")["id"]) for n in range(4)]


class Sent:
    """Records the tasks a lane queues instead of sending them."""

    def __init__(self) -> None:
        self.tasks: list[tuple[str, tuple[Any, ...], float | None]] = []

    def __call__(self, task: str, *args: Any, countdown: float | None = None) -> None:
        self.tasks.append((task, args, countdown))


def run_lane(controller: Controller, job_id: int, transports: FakeTransports,
             sent: Sent | None = None) -> Sent:
    """Run lane 0 of the job to the end in this thread."""
    sent = sent or Sent()
    with controller.app.app_context():
        Lane(job_id, 0, transports=transports, send=sent).run()
    return sent


def test_a_lane_runs_every_host_once_and_finishes_the_job(
        controller: Controller, hosts: list[int]) -> None:
    job = controller.start_job({"action": "flush_queue", "target": {"all": True},
                                "params": {"recipient": "example.com"}})
    data = {"before": 3, "after": 0, "deliveries": [], "remaining": []}
    fake = FakeTransports(default=OperationResult(
        "flush_queue", steps=[Step("flush", ["sendmail", "-q"], 0, 0.1, True, "")], data=data))
    sent = run_lane(controller, job, fake)
    assert sorted(fake.hosts_called()) == [f"pbx-{n}" for n in range(4)]
    call = fake.calls[0]
    assert call.action == "flush_queue" and call.request.recipient == "example.com"
    assert call.lock_owner and call.lock_owner.startswith(f"relayfleet-job-{job}-host-")
    assert sent.tasks == []  # finished by the lane itself: nothing handed over
    doc = controller.ok("GET", f"/v1/jobs/{job}")
    assert doc["status"] == "succeeded" and doc["finished_at"]
    assert doc["counts"]["succeeded"] == 4
    assert doc["results"][0]["data"] == data
    assert doc["results"][0]["steps"][0]["argv"] == ["sendmail", "-q"]
    fleet = controller.ok("GET", "/v1/fleet")
    assert {item["last"]["queue_count"] for item in fleet["items"]} == {0}


def test_results_per_host_keep_partial_success(controller: Controller,
                                               hosts: list[int]) -> None:
    job = controller.start_job({"action": "collect_status", "target": {"all": True}})
    fake = FakeTransports(answers={
        "pbx-1": HostUnreachable("pbx-1: cannot reach the agent"),
        "pbx-2": OperationResult("collect_status", ok=False, error="mailq failed"),
        "pbx-3": OperationError("pbx-3: the agent answered 500"),
    })
    run_lane(controller, job, fake)
    doc = controller.ok("GET", f"/v1/jobs/{job}")
    by_host = {r["host"]: r for r in doc["results"]}
    assert doc["status"] == "partial"
    assert by_host["pbx-0"]["status"] == "succeeded"
    assert by_host["pbx-1"]["status"] == "unreachable"
    assert by_host["pbx-2"]["status"] == "failed" and by_host["pbx-2"]["error"] == "mailq failed"
    assert by_host["pbx-3"]["error"] == "pbx-3: the agent answered 500"


def test_a_bug_in_one_host_costs_that_host_only(controller: Controller,
                                                hosts: list[int]) -> None:
    def boom(call: Call) -> OperationResult:
        raise KeyError("bug")

    job = controller.start_job({"action": "collect_status", "target": {"all": True}})
    run_lane(controller, job, FakeTransports(answers={"pbx-0": boom}))
    doc = controller.ok("GET", f"/v1/jobs/{job}")
    assert doc["counts"]["succeeded"] == 3
    assert doc["results"][0]["error"] == "internal error (KeyError); see the worker log"


def test_max_failures_skips_the_rest_with_one_reason(controller: Controller,
                                                     hosts: list[int]) -> None:
    job = controller.start_job({"action": "collect_status", "target": {"all": True},
                                "options": {"max_failures": 0, "concurrency": 1}})
    fake = FakeTransports(default=HostUnreachable("down"))
    run_lane(controller, job, fake)
    doc = controller.ok("GET", f"/v1/jobs/{job}")
    assert len(fake.calls) == 1
    assert doc["status"] == "failed"
    skipped = [r["error"] for r in doc["results"] if r["status"] == "skipped"]
    assert skipped == [SkipReason.TOO_MANY_FAILURES.text(max_failures=0)] * 3


def test_dry_run_and_secret_reach_the_transport_typed(controller: Controller,
                                                      hosts: list[int]) -> None:
    job = controller.start_job({
        "action": "set_smarthost", "target": {"hosts": [hosts[0]]},
        "params": {"host": "relay.example.net", "port": 587,
                   "auth": {"username": "pbx", "password": "s3cret!"}},
        "options": {"dry_run": True}})
    fake = FakeTransports()
    run_lane(controller, job, fake)
    (call,) = fake.calls
    assert call.dry_run is True
    assert call.request.host == "relay.example.net" and call.request.port == 587
    assert call.request.auth.password == "s3cret!"
    doc = controller.ok("GET", f"/v1/jobs/{job}")
    assert "s3cret" not in str(doc)


def test_a_lane_out_of_budget_hands_over_to_a_continuation(controller: Controller,
                                                           hosts: list[int]) -> None:
    job = controller.start_job({"action": "collect_status", "target": {"all": True}})
    with controller.app.app_context():
        settings = controller.app.config["RELAYFLEET_SETTINGS"]
        sent = Sent()
        lane = Lane(job, 0, settings=settings.with_overrides({"lane_budget_s": 0}),
                    transports=FakeTransports(), send=sent)
        lane.run()
    assert sent.tasks == [(dispatch.RUN_LANE, (job, 0, settings.lane_threads), None)]
    assert controller.ok("GET", f"/v1/jobs/{job}")["counts"]["pending"] == 4


def test_a_lane_runs_as_wide_as_its_message_says_and_its_continuation_too(
        controller: Controller, hosts: list[int]) -> None:
    # The API split the job into lanes of 4; this worker's own setting is 1. The lane keeps
    # the job's split (4 hosts at once) and hands it on to its continuation.
    job = controller.start_job({"action": "flush_queue", "target": {"all": True},
                                "options": {"concurrency": 4}})
    lock = threading.Lock()
    running: list[int] = [0]
    peak: list[int] = [0]

    def answer(_call: Call) -> OperationResult:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.2)
        with lock:
            running[0] -= 1
        return OperationResult("flush_queue", data={"before": 0, "after": 0,
                                                    "deliveries": [], "remaining": []})

    with controller.app.app_context():
        narrow = controller.app.config["RELAYFLEET_SETTINGS"].with_overrides(
            {"lane_threads": 1})
        sent = Sent()
        Lane(job, 0, settings=narrow, transports=FakeTransports(default=answer),
             send=sent, width=4).run()
    assert peak[0] == 4
    assert controller.ok("GET", f"/v1/jobs/{job}")["counts"]["succeeded"] == 4
    assert sent.tasks == []  # finished: nothing to hand on
    again = controller.start_job({"action": "collect_status", "target": {"all": True}})
    with controller.app.app_context():
        sent = Sent()
        Lane(again, 0, settings=narrow.with_overrides({"lane_budget_s": 0}),
             transports=FakeTransports(), send=sent, width=4).run()
    assert sent.tasks == [(dispatch.RUN_LANE, (again, 0, 4), None)]


def test_cancel_skips_pending_hosts_and_finishes_the_job(controller: Controller,
                                                         hosts: list[int]) -> None:
    job = controller.start_job({"action": "collect_status", "target": {"all": True}})
    doc = controller.ok("POST", f"/v1/jobs/{job}/cancel")
    assert doc["status"] == "cancelled" and doc["finished_at"]
    assert {r["error"] for r in doc["results"]} == {SkipReason.CANCELLED.text()}
    fake = FakeTransports()
    run_lane(controller, job, fake)
    assert fake.calls == []
    assert controller.call("POST", f"/v1/jobs/{job}/cancel").status == 409


def test_retry_runs_only_the_failed_hosts(controller: Controller, hosts: list[int]) -> None:
    job = controller.start_job({"action": "collect_status", "target": {"all": True}})
    run_lane(controller, job, FakeTransports(answers={"pbx-2": HostUnreachable("down")}))
    retry = controller.ok("POST", f"/v1/jobs/{job}/retry", expect=202)
    fake = FakeTransports()
    run_lane(controller, int(retry["id"]), fake)
    assert fake.hosts_called() == ["pbx-2"]
    assert controller.ok("GET", f"/v1/jobs/{retry['id']}")["retry_of"] == job


def test_queue_down_fails_the_job_and_keeps_its_key(controller: Controller,
                                                    hosts: list[int]) -> None:
    controller.app.extensions["celery"].conf.broker_url = "redis://127.0.0.1:1/0"
    controller.app.extensions["celery"].conf.broker_connection_retry = False
    controller.app.extensions["celery"].conf.broker_connection_max_retries = 0
    headers = {"Idempotency-Key": "down-1"}
    body = {"action": "collect_status", "target": {"all": True}}
    first = controller.post("/v1/jobs", body, headers=headers)
    assert first.status == 503 and "RELAYFLEET_BROKER_URL" in first.json["message"]
    again = controller.post("/v1/jobs", body, headers=headers)
    assert again.status == 503
    with controller.app.app_context():
        jobs = db.session.scalars(select(Job)).all()
        assert len(jobs) == 1 and jobs[0].status == JobState.FAILED
        units = db.session.scalars(select(JobHost)).all()
        assert {u.error for u in units} == {SkipReason.QUEUE_UNREACHABLE.text()}


def test_the_ledger_finishes_a_job_once(controller: Controller, hosts: list[int]) -> None:
    job = controller.start_job({"action": "collect_status", "target": {"all": True}})
    with controller.app.app_context():
        with db.transaction() as session:
            ledger.cancel(session, job)
        assert ledger.finish_job(db, job) == JobState.CANCELLED
        assert ledger.finish_job(db, job) is None
        with db.transaction() as session:
            assert ledger.counts(session, job)[UnitState.SKIPPED] == 4
            host = session.get(Host, hosts[0])
            assert host is not None and host.last_job_id is None


@pytest.mark.parametrize(("job", "tally", "expected"), [
    ("running", {"pending": 1}, JobState.RUNNING),
    ("queued", {"running": 1}, JobState.QUEUED),
    ("running", {"succeeded": 2}, JobState.SUCCEEDED),
    ("running", {"succeeded": 1, "failed": 1}, JobState.PARTIAL),
    ("running", {"unreachable": 2}, JobState.FAILED),
    ("cancelled", {"skipped": 2}, JobState.CANCELLED),
])
def test_derive_status(job: str, tally: dict[str, int], expected: JobState) -> None:
    full = {state.value: 0 for state in UnitState} | tally
    full["total"] = sum(tally.values())
    assert ledger.derive_status(job, full) is expected


def test_a_lane_renews_its_leases_and_cuts_a_unit_another_attempt_took(
        controller: Controller, hosts: list[int]) -> None:
    job = controller.start_job({"action": "collect_status", "target": {"hosts": hosts[:2]}})
    fake = FakeTransports()
    with controller.app.app_context():
        lane = Lane(job, 0, transports=fake, send=Sent())
        plan = lane.load()
        assert plan is not None
        kept, lost = lane.claim(plan), lane.claim(plan)
        assert kept is not None and lost is not None and kept.host and lost.host
        transports = {claim.unit_id: fake(lane._spec(claim.host)) for claim in (kept, lost)}
        for claim in (kept, lost):
            lane._hold(claim, plan, transports[claim.unit_id])
        with db.transaction() as session:  # a second attempt took the other unit over
            session.execute(update(JobHost).where(JobHost.id == lost.unit_id)
                            .values(attempts=JobHost.attempts + 1, lease_until=0))
        before = time.time()
        lane.renew()
        with db.transaction() as session:
            lease = session.scalar(select(JobHost.lease_until)
                                   .where(JobHost.id == kept.unit_id))
            heard = session.scalar(select(Job.heartbeat_at).where(Job.id == job))
    assert lease is not None and lease >= before + ledger.LEASE_S - 1
    assert heard is not None and heard >= before
    assert transports[lost.unit_id].cut_at_least_once
    assert not transports[kept.unit_id].cut_at_least_once


def test_the_sweep_gives_a_dead_workers_unit_a_lane_within_a_lease(
        controller: Controller, hosts: list[int]) -> None:
    from controller.lanes import sweep

    job = controller.start_job({"action": "collect_status", "target": {"all": True}})
    with controller.app.app_context():
        settings = controller.app.config["RELAYFLEET_SETTINGS"]
        lane = Lane(job, 0, transports=FakeTransports(), send=Sent())
        plan = lane.load()
        assert plan is not None
        dead = lane.claim(plan)  # its worker is SIGKILLed: nothing renews the lease
        assert dead is not None
        assert sweep(db, settings) == []  # the lease still runs, the job was just heard from
        with db.transaction() as session:  # a lease later
            session.execute(update(JobHost).where(JobHost.id == dead.unit_id)
                            .values(lease_until=time.time() - 1))
            session.execute(update(Job).where(Job.id == job)
                            .values(heartbeat_at=time.time() - ledger.LEASE_S - 1))
        assert sweep(db, settings) == [job]
        assert sweep(db, settings) == []  # one lane per lease, not one per sweep
        fake = FakeTransports()
        Lane(job, 0, transports=fake, send=Sent()).run()
    doc = controller.ok("GET", f"/v1/jobs/{job}")
    assert doc["status"] == "succeeded" and len(fake.calls) == 4
    again = next(r for r in doc["results"] if r["host_id"] == dead.host_id)
    assert again["attempts"] == 2
    owners = {call.lock_owner for call in fake.calls}
    assert f"relayfleet-job-{job}-host-{dead.host_id}-attempt-2" in owners


def test_one_tenant_at_its_share_does_not_stop_another_tenants_hosts(
        controller: Controller) -> None:
    """Before, a tenant's lanes claimed as many hosts as its jobs' concurrency allowed,
    however many of the workers' slots that took from the other tenants."""
    from controller import lanes

    tokens, jobs = {}, {}
    for name, count in (("Acme", 4), ("Brill", 2)):
        tenant = controller.tenant(name)
        site = controller.site(tenant, "Leeds")
        for n in range(count):
            controller.host(site, f"{name.lower()}-{n}")
        tokens[name] = controller.issue("operator", tenant)
        jobs[name] = controller.start_job(
            {"action": "collect_status", "target": {"all": True}}, token=tokens[name])
    msp_job = controller.start_job({"action": "collect_status",
                                    "target": {"hosts": ["acme-0"]}})
    with controller.app.app_context():
        settings = controller.app.config["RELAYFLEET_SETTINGS"].with_overrides(
            {"tenant_max_running": 2})
        big = Lane(jobs["Acme"], 0, settings=settings, transports=FakeTransports(),
                   send=Sent())
        plan = big.load()
        assert plan is not None
        running = [big.claim(plan), big.claim(plan)]  # Acme's hosts at work: its share
        assert all(claim is not None for claim in running)
        assert big.claim(plan) is None  # nothing more for Acme now
        sent = Sent()  # a second lane of Acme's job waits instead of spinning
        Lane(jobs["Acme"], 1, settings=settings, transports=FakeTransports(),
             send=sent).run()
        assert sent.tasks == [(dispatch.RUN_LANE, (jobs["Acme"], 1, settings.lane_threads),
                               lanes.SHARE_WAIT_S)]
        for job in (jobs["Brill"], msp_job):  # another tenant, and MSP-wide jobs, go on
            Lane(job, 0, settings=settings, transports=FakeTransports(), send=Sent()).run()
    for job in (jobs["Brill"], msp_job):
        assert controller.ok("GET", f"/v1/jobs/{job}")["status"] == "succeeded"
    assert controller.ok("GET", f"/v1/jobs/{jobs['Acme']}")["counts"]["pending"] == 2


def test_the_sweep_finishes_a_cancelled_job_whose_worker_died(
        controller: Controller, hosts: list[int]) -> None:
    """Before, the sweeper looked at queued and running jobs only: a job cancelled while a
    dead worker's host was running stayed unfinished for ever."""
    from controller.lanes import sweep

    job = controller.start_job({"action": "collect_status", "target": {"all": True}})
    with controller.app.app_context():
        settings = controller.app.config["RELAYFLEET_SETTINGS"]
        lane = Lane(job, 0, transports=FakeTransports(), send=Sent())
        plan = lane.load()
        assert plan is not None
        dead = lane.claim(plan)  # its worker is SIGKILLed, and with it the job's lane
        assert dead is not None
    assert controller.ok("POST", f"/v1/jobs/{job}/cancel")["finished_at"] is None
    with controller.app.app_context():
        with db.transaction() as session:  # a lease later
            session.execute(update(JobHost).where(JobHost.id == dead.unit_id)
                            .values(lease_until=time.time() - 1))
            session.execute(update(Job).where(Job.id == job)
                            .values(heartbeat_at=time.time() - ledger.LEASE_S - 1))
        assert sweep(db, settings) == [job]
        fake = FakeTransports()
        Lane(job, 0, transports=fake, send=Sent()).run()
    doc = controller.ok("GET", f"/v1/jobs/{job}")
    assert doc["status"] == "cancelled" and doc["finished_at"] and fake.calls == []
    gone = next(r for r in doc["results"] if r["host_id"] == dead.host_id)
    assert gone["status"] == "failed" and "cancelled" in gone["error"]


def test_a_lane_decrypts_a_sealed_secret_once_and_a_changed_one_anew(
        controller: Controller, hosts: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    job = controller.start_job({"action": "flush_queue", "target": {"all": True}})
    with controller.app.app_context():
        lane = Lane(job, 0, transports=FakeTransports(), send=Sent())
        old, new = lane.box.seal("old-token"), lane.box.seal("new-token")
        opened: list[str | None] = []
        real_open = lane.box.open

        def counted(sealed: str | None) -> str | None:
            opened.append(sealed)
            return real_open(sealed)

        monkeypatch.setattr(lane.box, "open", counted)
        assert [lane._open(old), lane._open(old), lane._open(new)] == [
            "old-token", "old-token", "new-token"]
        assert opened == [old, new]  # (the row's sealed text is the key: never stale)
