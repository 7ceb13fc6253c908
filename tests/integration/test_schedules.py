"""Beat end to end: real Redis, a real worker and a real beat process (a 2 s tick), SQLite,
two agent lab hosts. Status collection comes round by itself and a restarted beat picks
up where it left off; an operator schedule runs as its token and stops when that token is
revoked."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import select, update

from controller.db import db
from controller.models import Job, JobHost, Schedule, SchedulerMark
from controller.schedules import status_mark
from tests.lab.enrol import host_body
from tests.lab.lab import Lab
from tests.lab.services import ControllerStack, ControllerWorker, lab_controller

pytestmark = [pytest.mark.lab, pytest.mark.slow]

EVERY_S = 10


@pytest.fixture(scope="module")
def beat_stack(lab: Lab, redis_server: Any, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[tuple[ControllerStack, int, list[int]]]:
    """A controller with a worker and beat, one tenant and two agent hosts: (stack, tenant
    id, host ids)."""
    workdir = tmp_path_factory.mktemp("beat")
    with lab_controller(lab, redis_server, workdir, 11, beat=True) as (stack, hosts):
        controller = stack.controller
        tenant = controller.tenant("Beat")
        # no collection until the hosts are in: the test turns it on
        controller.ok("PUT", f"/v1/tenants/{tenant}/status-collection", {"every_s": 0})
        site = controller.site(tenant, "Lyon")
        ids = []
        for name in ("bta", "btb"):
            host = lab.add_host(name, "debian")
            hosts.append(host)
            doc = controller.ok("POST", "/v1/hosts", {**host_body(host, "agent"),
                                                      "site_id": site})
            ids.append(doc["id"])
        yield stack, tenant, ids


def _read(stack: ControllerStack, fn: Callable[[Any], Any]) -> Any:
    """Read the controller's database (what the API's rows are) in a fresh session."""
    with stack.controller.app.app_context(), db.transaction() as session:
        return fn(session)


def _beat_jobs(stack: ControllerStack, tenant: int) -> list[tuple[Job, list[int], list[str]]]:
    """The tenant's status collections beat started: (job, its host ids, their states)."""
    def read(session: Any) -> list[tuple[Job, list[int], list[str]]]:
        jobs = list(session.scalars(select(Job).where(
            Job.tenant_id == tenant, Job.action == "collect_status",
            Job.origin == "schedule").order_by(Job.id)))
        out = []
        for job in jobs:
            units = list(session.scalars(select(JobHost).where(JobHost.job_id == job.id)))
            out.append((job, [u.host_id for u in units], [u.status for u in units]))
        return out
    found: list[tuple[Job, list[int], list[str]]] = _read(stack, read)
    return found


def _wait(what: str, check: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout} s")


def _all_finished(stack: ControllerStack, tenant: int) -> bool:
    return all(job.finished_at is not None for job, _, _ in _beat_jobs(stack, tenant))


def test_status_collection_comes_round_and_a_restarted_beat_picks_up(
        beat_stack: tuple[ControllerStack, int, list[int]]) -> None:
    stack, tenant, ids = beat_stack
    controller = stack.controller
    answer = controller.call("PUT", f"/v1/tenants/{tenant}/status-collection",
                             body={"every_s": 5})
    assert answer.status == 422 and "at least 10 s" in answer.json["message"]
    doc = controller.ok("PUT", f"/v1/tenants/{tenant}/status-collection",
                        {"every_s": EVERY_S})
    assert doc["every_s"] == EVERY_S and doc["hosts"] == 2 and doc["tick_s"] == 2

    def both_collected() -> bool:
        done = {host for job, hosts, states in _beat_jobs(stack, tenant)
                for host, state in zip(hosts, states, strict=True) if state == "succeeded"}
        return done >= set(ids)

    _wait("both hosts collected by beat", both_collected, timeout=90)
    jobs = _beat_jobs(stack, tenant)
    for job, hosts, _ in jobs:
        # the controller's own jobs: no token, the tenant's, each host once per job
        assert job.token_id is None and job.schedule_id is None
        assert len(hosts) == len(set(hosts)) and set(hosts) <= set(ids)
    fleet = controller.ok("GET", "/v1/fleet")
    assert all(item["last"]["reachable"] is True for item in fleet["items"]), fleet
    assert controller.ok("GET", f"/v1/tenants/{tenant}/status-collection")["last_tick_at"]

    # Beat stops for longer than the interval: when it is back, its first window reaches
    # back to where it stopped, so every host is collected (once), none skipped.
    assert stack.beat is not None
    stack.beat.stop()
    while True:  # (a tick beat queued before it stopped may still run: let it)
        _wait("the collections in flight finished", lambda: _all_finished(stack, tenant))
        stopped_at = _read(stack, lambda s: s.get(SchedulerMark, status_mark(tenant)).at)
        while time.time() < stopped_at + EVERY_S + 1:
            time.sleep(0.5)
        if _read(stack, lambda s: s.get(SchedulerMark, status_mark(tenant)).at) == stopped_at:
            break
    last_job = max(job.id for job, _, _ in _beat_jobs(stack, tenant))
    stack.beat = ControllerWorker(stack.env, stack.beat.log, beat=True).start()
    new = _wait("a collection after the restart", lambda: [
        entry for entry in _beat_jobs(stack, tenant) if entry[0].id > last_job])
    _, first_hosts, _ = new[0]
    assert sorted(first_hosts) == sorted(ids), new
    mark = _read(stack, lambda s: s.get(SchedulerMark, status_mark(tenant)).at)
    assert mark > stopped_at + EVERY_S
    controller.ok("PUT", f"/v1/tenants/{tenant}/status-collection", {"every_s": 0})
    assert controller.ok("GET", f"/v1/tenants/{tenant}/status-collection")["enabled"] is False


def _make_due(stack: ControllerStack, schedule_id: int) -> None:
    """Bring a schedule's time to now (its cron names 03:00; the test does not wait)."""
    def write(session: Any) -> None:
        session.execute(update(Schedule).where(Schedule.id == schedule_id).values(
            next_run_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)))
    _read(stack, write)


def test_a_schedule_runs_as_its_token_and_stops_when_it_is_revoked(
        beat_stack: tuple[ControllerStack, int, list[int]]) -> None:
    stack, tenant, ids = beat_stack
    controller = stack.controller
    made = controller.ok("POST", "/v1/tokens", {"role": "operator", "tenant_id": tenant,
                                                "name": "night shift"})
    body = {"name": "nightly flush", "action": "flush_queue", "target": {"hosts": ids},
            "cron": "0 3 * * *", "timezone": "Europe/Paris"}
    schedule = controller.ok("POST", "/v1/schedules", body, token=made["token"], expect=201)
    assert len(schedule["next_runs"]) == 5
    assert all(run["local"][11:16] == "03:00" for run in schedule["next_runs"])
    assert schedule["token_id"] == made["id"] and schedule["tenant_id"] == tenant
    again = controller.call("POST", "/v1/schedules", made["token"], body)
    assert again.status == 409
    next_time = schedule["next_run_at"]

    _make_due(stack, schedule["id"])
    ran = _wait("the schedule ran", lambda: controller.ok(
        "GET", f"/v1/schedules/{schedule['id']}")["last_job_id"] and controller.ok(
        "GET", f"/v1/schedules/{schedule['id']}"))
    job = controller.wait_job(ran["last_job_id"])
    assert job["action"] == "flush_queue" and job["status"] == "succeeded", job
    assert {r["host_id"] for r in job["results"]} == set(ids)
    row = _read(stack, lambda s: s.get(Job, ran["last_job_id"]))
    assert (row.origin, row.schedule_id, row.token_id) == ("schedule", schedule["id"],
                                                           made["id"])
    assert ran["next_run_at"] == next_time and ran["last_error"] is None

    controller.ok("DELETE", f"/v1/tokens/{made['id']}")
    _make_due(stack, schedule["id"])
    stopped = _wait("the schedule disabled", lambda: (doc := controller.ok(
        "GET", f"/v1/schedules/{schedule['id']}"))["enabled"] is False and doc)
    assert "revoked" in stopped["last_error"]
    assert stopped["last_job_id"] == ran["last_job_id"] and stopped["next_run_at"] is None
    # an admin takes it over: it runs as the admin's token from now on
    enabled = controller.ok("PATCH", f"/v1/schedules/{schedule['id']}", {"enabled": True})
    assert enabled["enabled"] is True and enabled["last_error"] is None
    assert enabled["token_id"] != made["id"] and enabled["next_run_at"] == next_time
    controller.ok("DELETE", f"/v1/schedules/{schedule['id']}", expect=204)
