"""Desired state on a real sendmail lab host through a real Celery worker: drift found by
the worker, remediation by hand and by beat's step.

Its own module: the lab controller sets the process's environment (egress policy, broker)
for as long as its module-scoped fixture lives, which the API tests beside it must not see.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from typing import Any

import pytest
from flask import current_app
from sqlalchemy import select, update

from controller import policy
from controller.db import db, utcnow
from controller.models import Job
from tests.lab.enrol import host_body
from tests.lab.lab import SINK_PORT, Lab, LabHost
from tests.lab.services import ControllerStack, lab_controller


@pytest.fixture(scope="module")
def lab_stack(lab: Lab, redis_server: Any, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[tuple[ControllerStack, LabHost, int]]:
    """A controller with a worker process, and one sendmail lab host with its agent."""
    workdir = tmp_path_factory.mktemp("policies")
    with lab_controller(lab, redis_server, workdir, 12) as (stack, made):
        host = lab.add_host("pol1", "debian")
        made.append(host)
        controller = stack.controller
        tenant = controller.tenant("Lab")
        site = controller.site(tenant, "lab-site")
        host_id = int(controller.ok("POST", "/v1/hosts",
                                    {**host_body(host, "agent"), "site_id": site})["id"])
        yield stack, host, host_id


def _smart_host_lines(host: LabHost) -> list[str]:
    mc = (host.mail_dir / "sendmail.mc").read_text()
    return [line for line in mc.splitlines() if re.match(r"\s*define\(`SMART_HOST'", line)]


@pytest.mark.lab
@pytest.mark.slow
def test_a_real_host_drifts_and_is_brought_back_by_hand_and_by_beat(
        lab_stack: tuple[ControllerStack, LabHost, int]) -> None:
    stack, host, host_id = lab_stack
    c = stack.controller
    tenant = c.ok("GET", f"/v1/hosts/{host_id}")["tenant_id"]
    sink = {"host": "smarthost.lab.test", "port": SINK_PORT}
    c.ok("PUT", f"/v1/tenants/{tenant}/policy", {"smarthost": sink})
    status = c.wait_job(c.start_job({"action": "collect_status",
                                     "target": {"hosts": [host_id]}}))
    assert status["status"] == "succeeded", status
    desired = c.ok("GET", f"/v1/hosts/{host_id}/desired")
    assert desired["drift"] == [{"field": "smarthost", "want": f"smarthost.lab.test:{SINK_PORT}",
                                 "have": None}], desired
    # by hand: one set_smarthost job, and the worker finds the host in line after it
    answer = c.post("/v1/remediate", {"target": {"hosts": [host_id]}},
                    headers={"Idempotency-Key": "lab-fix-1"})
    assert answer.status == 202 and len(answer.json["jobs"]) == 1, answer
    job = c.wait_job(answer.json["jobs"][0]["id"])
    assert job["status"] == "succeeded", job
    assert c.ok("GET", f"/v1/hosts/{host_id}/desired")["drift"] == []
    assert _smart_host_lines(host) and "smarthost.lab.test" in _smart_host_lines(host)[0]
    # someone points the host elsewhere: the worker records the drift with that job
    moved = c.wait_job(c.start_job({"action": "set_smarthost", "target": {"hosts": [host_id]},
                                    "params": {"host": "smarthost.lab.test", "port": 25}}))
    assert moved["status"] == "succeeded", moved
    assert c.ok("GET", f"/v1/hosts/{host_id}/desired")["drift"] == [
        {"field": "port", "want": SINK_PORT, "have": 25}]
    # beat's step, with the policy saying so, puts it back through the worker
    c.ok("PUT", f"/v1/tenants/{tenant}/policy", {"smarthost": sink, "auto_remediate": True})

    def tick() -> int | None:
        """Beat's step once; the automatic remediation job it started, if any."""
        with c.app.app_context():
            policy.tick(db, current_app.config["RELAYFLEET_SETTINGS"])
            found: int | None = db.session.scalar(select(Job.id).where(
                Job.origin == "remediate", Job.token_id.is_(None)))
            return found

    # remediated by hand minutes ago: left alone for the quiet period
    assert tick() is None
    with c.app.app_context(), db.transaction() as session:
        session.execute(update(Job).where(Job.origin == "remediate").values(
            created_at=utcnow() - dt.timedelta(seconds=policy.REMEDIATE_QUIET_S + 60)))
    auto = tick()
    assert auto is not None
    assert c.wait_job(auto)["status"] == "succeeded"
    assert c.ok("GET", f"/v1/hosts/{host_id}/desired")["drift"] == []
    # what the host itself says now
    again = c.wait_job(c.start_job({"action": "collect_status", "target": {"hosts": [host_id]}}))
    assert again["results"][0]["data"]["smarthost"]["port"] == SINK_PORT
    assert c.ok("GET", f"/v1/hosts/{host_id}/desired")["drift"] == []


