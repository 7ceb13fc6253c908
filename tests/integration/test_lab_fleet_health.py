"""Fleet health in the lab: a real worker AND beat (2 s tick, 10 s status interval), SQLite,
one sendmail lab host whose tenant's policy says relay X (the lab's smarthost).

Someone edits the host's sendmail.mc by hand (SMART_HOST pointed elsewhere, rebuilt,
restarted) and its mail starts to queue: beat's status collection flags it drifted, with
its difference; the drift and queue rules fire to a signed webhook and to email (the
lab's SMTP sink as the controller's SMTP server); ``POST /v1/remediate`` and a flush put
it back, the next collection shows it in line, and both alerts resolve. Each notice
arrives exactly once.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest
from sqlalchemy import select

from controller.db import db
from controller.models import Job
from tests.lab.enrol import host_body
from tests.lab.lab import SINK_PORT, Lab, LabHost
from tests.lab.services import ControllerStack, lab_controller

pytestmark = [pytest.mark.lab, pytest.mark.slow]

RELAY_X = {"host": "smarthost.lab.test", "port": SINK_PORT, "mx": False}
EVERY_S = 10
SMART_HOST_LINE = re.compile(r"^define\(`SMART_HOST'.*$", re.MULTILINE)


class WebhookReceiver:
    """A local HTTP endpoint that answers 204 and records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.calls.append((dict(self.headers), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/noc/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[tuple[str, str]]:
        """(event, rule name) of every call, in order."""
        docs = [json.loads(body) for _, body in self.calls]
        return [(doc["event"], doc["rule"]["name"]) for doc in docs]

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture(scope="module")
def health_stack(lab: Lab, redis_server: Any, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[tuple[ControllerStack, LabHost, int, int]]:
    """The stack (worker, beat, the lab's sink as SMTP server) and one sendmail host with an
    agent, pointed at relay X: (stack, host, host id, tenant id)."""
    workdir = tmp_path_factory.mktemp("fleet-health")
    with lab_controller(lab, redis_server, workdir, 12, beat=True,
                        RELAYFLEET_SMTP_URL=f"smtp://{lab.smarthost.address}:{SINK_PORT}",
                        RELAYFLEET_SMTP_FROM="relayfleet@lab.test") as (stack, hosts):
        controller = stack.controller
        tenant = controller.tenant("Health")
        controller.ok("PUT", f"/v1/tenants/{tenant}/status-collection", {"every_s": 0})
        site = controller.site(tenant, "Lyon")
        host = lab.add_host("fhs", "debian")
        hosts.append(host)
        doc = controller.ok("POST", "/v1/hosts", {**host_body(host, "agent"), "site_id": site})
        job = controller.wait_job(controller.start_job({
            "action": "set_smarthost", "target": {"hosts": [doc["id"]]}, "params": RELAY_X}))
        assert job["status"] == "succeeded", job
        yield stack, host, doc["id"], tenant


def _wait(what: str, check: Callable[[], Any], timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout} s")


def _collections_after(stack: ControllerStack, job_id: int) -> list[Job]:
    """Beat's status collections started after job ``job_id``, finished."""
    with stack.controller.app.app_context(), db.transaction() as session:
        return list(session.scalars(select(Job).where(
            Job.id > job_id, Job.action == "collect_status", Job.origin == "schedule",
            Job.finished_at.is_not(None)).order_by(Job.id)))


def _last_job(stack: ControllerStack) -> int:
    with stack.controller.app.app_context(), db.transaction() as session:
        return int(session.scalar(select(Job.id).order_by(Job.id.desc()).limit(1)) or 0)


def _wait_collections(stack: ControllerStack, after: int, count: int = 1) -> list[Job]:
    """Wait until beat has finished ``count`` status collections started after ``after``."""
    found: list[Job] = _wait(f"{count} status collection(s) by beat", lambda: (
        jobs if len(jobs := _collections_after(stack, after)) >= count else None))
    return found


def _point_elsewhere_by_hand(host: LabHost, relay: str) -> None:
    """What someone with a shell does: SMART_HOST changed in sendmail.mc, the .cf rebuilt
    with m4, sendmail restarted."""
    mc = host.mail_dir / "sendmail.mc"
    text = mc.read_text()
    edited, found = SMART_HOST_LINE.subn(f"define(`SMART_HOST', `{relay}')dnl", text, count=1)
    assert found == 1, text
    mc.write_text(edited)
    host.run(["sh", "-c", "m4 /etc/mail/sendmail.mc > /etc/mail/sendmail.cf.new && "
                          "mv /etc/mail/sendmail.cf.new /etc/mail/sendmail.cf"])
    host.stop_mta()
    host.start_mta()


def _emails(lab: Lab, stamp: str) -> list[str]:
    """Subjects of the alert emails of this test the sink received."""
    subjects = []
    for message in lab.smarthost.messages():
        subject = str(email.message_from_string(message["data"],
                                                policy=email.policy.default)["Subject"] or "")
        if subject.startswith("[relayfleet]") and stamp in subject:
            subjects.append(subject)
    return subjects


def test_a_hand_edited_host_drifts_alerts_is_remediated_and_resolves(
        health_stack: tuple[ControllerStack, LabHost, int, int], lab: Lab) -> None:
    stack, host, host_id, tenant = health_stack
    controller = stack.controller
    stamp = secrets.token_hex(3)
    controller.ok("PUT", f"/v1/tenants/{tenant}/policy", {"smarthost": RELAY_X})
    receiver = WebhookReceiver()
    try:
        hook = controller.ok("POST", "/v1/alert-channels", {
            "name": f"noc-hook-{stamp}", "tenant_id": tenant, "kind": "webhook",
            "url": receiver.url}, expect=201)
        assert hook["secret"] and receiver.url not in json.dumps(hook)
        controller.ok("POST", "/v1/alert-channels", {
            "name": f"noc-mail-{stamp}", "tenant_id": tenant, "kind": "email",
            "address": "noc@ourtest.com"}, expect=201)
        channels = [f"noc-hook-{stamp}", f"noc-mail-{stamp}"]
        drift_rule, queue_rule = f"drift {stamp}", f"queue {stamp}"
        controller.ok("POST", "/v1/alert-rules", {"name": drift_rule, "tenant_id": tenant,
                                                  "kind": "drift", "channels": channels},
                      expect=201)
        controller.ok("POST", "/v1/alert-rules", {"name": queue_rule, "tenant_id": tenant,
                                                  "kind": "queue_count", "threshold": 0,
                                                  "channels": channels}, expect=201)
        # beat collects the host every 10 s: in line, nothing queued, nothing fires
        start = _last_job(stack)
        controller.ok("PUT", f"/v1/tenants/{tenant}/status-collection", {"every_s": EVERY_S})
        _wait_collections(stack, start)
        assert controller.ok("GET", f"/v1/hosts/{host_id}/desired")["drift"] == []
        assert controller.ok("GET", "/v1/alerts")["items"] == []

        # by hand, behind the controller's back: relay moved, and mail starts to queue
        elsewhere = f"[{lab.gateway}]"
        _point_elsewhere_by_hand(host, elsewhere)
        subject = f"voicemail {stamp}"
        host.send_mail(["me@ourtest.com"], subject=subject)
        host.wait_deferred()
        edited_at = _last_job(stack)
        _wait_collections(stack, edited_at)
        desired = controller.ok("GET", f"/v1/hosts/{host_id}/desired")
        assert any("smarthost.lab.test" in json.dumps(d["want"]) and lab.gateway in json.dumps(
            d["have"]) for d in desired["drift"]), desired
        drifted = controller.ok("GET", "/v1/fleet?drifted=true")["items"]
        assert [item["host_id"] for item in drifted] == [host_id]
        assert drifted[0]["drifted"] is True and drifted[0]["drift"] == desired["drift"]
        firing = _wait("both rules firing", lambda: (
            items if len(items := controller.ok("GET", "/v1/alerts?state=firing")["items"]) == 2
            else None))
        assert {a["rule"] for a in firing} == {drift_rule, queue_rule}
        assert {a["host"] for a in firing} == {host.fqdn}

        # remediated through the API, the queue flushed: the next collection is in line
        answer = controller.post("/v1/remediate", {"target": {"hosts": [host_id]}},
                                 headers={"Idempotency-Key": f"health-{stamp}"})
        assert answer.status == 202 and len(answer.json["jobs"]) == 1, answer
        fixed = controller.wait_job(answer.json["jobs"][0]["id"])
        assert fixed["status"] == "succeeded", fixed
        flush = controller.wait_job(controller.start_job(
            {"action": "flush_queue", "target": {"hosts": [host_id]}}))
        assert flush["status"] == "succeeded", flush
        _wait("the queued mail delivered through relay X", lambda: any(
            subject in message["data"] for message in lab.smarthost.messages()))
        remediated_at = _last_job(stack)
        collected = _wait_collections(stack, remediated_at)
        assert controller.ok("GET", f"/v1/jobs/{collected[0].id}")["status"] == "succeeded"
        assert controller.ok("GET", f"/v1/hosts/{host_id}/desired")["drift"] == []
        resolved = _wait("both alerts resolved", lambda: (
            items if len(items := controller.ok("GET", "/v1/alerts?state=resolved")["items"])
            == 2 else None))
        assert {a["rule"] for a in resolved} == {drift_rule, queue_rule}

        # every notice sent; then two more collections and alert rounds add none
        _wait("the four webhook notices", lambda: len(receiver.calls) >= 4)
        _wait("the four emails", lambda: len(_emails(lab, stamp)) >= 4)
        _wait_collections(stack, _last_job(stack), count=2)
        assert sorted(receiver.events()) == sorted([
            ("firing", drift_rule), ("firing", queue_rule),
            ("resolved", drift_rule), ("resolved", queue_rule)])
        for headers, body in receiver.calls:
            expected = "sha256=" + hmac.new(
                hook["secret"].encode(), headers["X-Relayfleet-Timestamp"].encode() + b"."
                + body, hashlib.sha256).hexdigest()
            assert hmac.compare_digest(headers["X-Relayfleet-Signature"], expected)
            assert json.loads(body)["host"]["id"] == host_id
        assert sorted(_emails(lab, stamp)) == sorted(
            f"[relayfleet] {event}: {rule} — {host.fqdn}"
            for event in ("FIRING", "RESOLVED") for rule in (drift_rule, queue_rule))
        for alert in controller.ok("GET", "/v1/alerts")["items"]:
            assert sorted((n["event"], n["state"]) for n in alert["notices"]) == [
                ("firing", "sent"), ("firing", "sent"), ("resolved", "sent"),
                ("resolved", "sent")], alert
    finally:
        receiver.close()
        controller.ok("PUT", f"/v1/tenants/{tenant}/status-collection", {"every_s": 0})
