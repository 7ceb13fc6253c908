"""The controller end to end: real Redis, a real Celery worker process, real databases and
six real lab hosts (agent and SSH, Debian and CentOS layouts) in two tenants and three
sites. The seed story across the fleet, a host down (partial, then retry), a signed
callback, and a worker SIGKILLed in the middle of a job.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.controller_client import Controller
from tests.lab.enrol import SshLogin, host_body
from tests.lab.lab import SINK_PORT, Lab, LabHost
from tests.lab.services import ControllerStack, ControllerWorker, controller_stack

pytestmark = [pytest.mark.lab, pytest.mark.slow]

SMARTHOST = {"host": "smarthost.lab.test", "port": SINK_PORT, "mx": False}
ACTIVE_DEFINE = re.compile(r"^define\(`SMART_HOST'", re.MULTILINE)


@dataclass
class FleetHost:
    """A lab host and how the controller reaches it."""

    lab_host: LabHost
    transport: str
    site: str
    body: dict[str, Any]
    agent_token: str = ""
    host_id: int = 0


@pytest.fixture(scope="module")
def fleet_hosts(lab: Lab, client_keys: dict[str, tuple[str, str]]) -> Iterator[list[FleetHost]]:
    """Six lab hosts: three with an agent, three over SSH (one as a sudo user, one with
    python made unavailable), Debian and CentOS layouts."""
    made: list[FleetHost] = []
    plan = [("agent", "debian", "Leeds"), ("agent", "centos", "York"),
            ("agent", "debian", "Paris"), ("ssh", "debian", "Leeds"),
            ("ssh", "centos", "York"), ("ssh", "debian", "Paris")]
    user, _password = lab.ensure_ssh_user()
    try:
        for index, (transport, layout, site) in enumerate(plan):
            host = lab.add_host(f"f{transport[0]}{layout[0]}{index}", layout)
            sudo = layout == "centos"
            private, public = client_keys["ed25519"]
            login = SshLogin(user if sudo else "root", private, public, sudo=sudo)
            body = host_body(host, transport, login=login, tags=[transport, layout])
            if transport == "ssh" and index == 5:
                host.disable_python()
            made.append(FleetHost(host, transport, site, body, body.get("agent", {}).get(
                "token", "")))
        yield made
    finally:
        for entry in made:
            entry.lab_host.close()


def _enrol(controller: Controller, hosts: list[FleetHost]) -> None:
    acme, globex = controller.tenant("Acme"), controller.tenant("Globex")
    sites = {"Leeds": controller.site(acme, "Leeds"), "York": controller.site(acme, "York"),
             "Paris": controller.site(globex, "Paris")}
    for entry in hosts:
        doc = controller.ok("POST", "/v1/hosts", {**entry.body, "site_id": sites[entry.site]})
        entry.host_id = doc["id"]


@pytest.fixture(scope="module")
def stack(fleet_hosts: list[FleetHost], postgres_server: Any, redis_server: Any, lab: Lab,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControllerStack]:
    """The controller on PostgreSQL with the six hosts enrolled, and a worker."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        built = controller_stack(postgres_server.new_database(),
                                 tmp_path_factory.mktemp("stack"), redis_server, monkeypatch,
                                 lab.network)
        try:
            _enrol(built.controller, fleet_hosts)
            yield built
        finally:
            built.worker.stop()


class CallbackReceiver:
    """An HTTP endpoint that fails its first call (500) and records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.calls.append((dict(self.headers), body))
                self.send_response(500 if len(receiver.calls) == 1 else 204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/relayfleet"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def test_seed_story_across_the_fleet(stack: ControllerStack, fleet_hosts: list[FleetHost],
                                     lab: Lab) -> None:
    controller = stack.controller
    stamp = secrets.token_hex(4)
    subjects = {f"voicemail {stamp} {e.lab_host.name}" for e in fleet_hosts}
    for entry in fleet_hosts:
        entry.lab_host.send_mail(["me@ourtest.com"],
                                 subject=f"voicemail {stamp} {entry.lab_host.name}")
    for entry in fleet_hosts:
        entry.lab_host.wait_deferred()
    receiver = CallbackReceiver()
    try:
        job = controller.start_job({"action": "set_smarthost", "target": {"all": True},
                                    "params": SMARTHOST, "options": {"concurrency": 6},
                                    "callback_url": receiver.url})
        doc = controller.wait_job(job)
        assert doc["status"] == "succeeded", json.dumps(doc["results"], indent=1)[:3000]
        assert doc["counts"] == {"total": 6, "pending": 0, "running": 0, "succeeded": 6,
                                 "failed": 0, "unreachable": 0, "skipped": 0}
        for result in doc["results"]:
            names = [step["name"] for step in result["steps"]]
            assert result["changed"] is True
            assert {"compile", "validate", "backup", "swap"} <= set(names), names
            assert result["data"]["smarthost"]["host"] == "smarthost.lab.test"
            assert result["started_at"] and result["finished_at"]
        flush = controller.wait_job(controller.start_job(
            {"action": "flush_queue", "target": {"all": True}}))
        assert flush["status"] == "succeeded", flush["results"]
        assert all(r["data"]["after"] == 0 for r in flush["results"])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            got = {_subject(m) for m in lab.smarthost.messages()}
            if subjects <= got:
                break
            time.sleep(0.5)
        assert subjects <= {_subject(m) for m in lab.smarthost.messages()}
        fleet = controller.ok("GET", "/v1/fleet")
        assert fleet["summary"]["hosts"] == 6 and fleet["summary"]["queued_messages"] == 0
        for item in fleet["items"]:
            assert item["last"]["queue_count"] == 0, item
            assert item["last"]["smarthost"]["host"] == "smarthost.lab.test", item
            assert item["last"]["reachable"] is True
        # the callback: retried after a 500, signed with HMAC-SHA256
        deadline = time.monotonic() + 60
        while len(receiver.calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(receiver.calls) == 2
        headers, body = receiver.calls[-1]
        from controller.callbacks import callback_key
        from controller.config import load_settings

        key = callback_key(load_settings())
        expected = "sha256=" + hmac.new(
            key, headers["X-Relayfleet-Timestamp"].encode() + b"." + body,
            hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["X-Relayfleet-Signature"], expected)
        sent = json.loads(body)
        assert sent["id"] == job and sent["status"] == "succeeded" and len(sent["results"]) == 6
        assert "password" not in body.decode() and "token" not in json.dumps(sent["params"])
        # The receiver records a call before it answers: the worker notes the outcome after.
        deadline = time.monotonic() + 10
        state = ""
        while not state.startswith("delivered") and time.monotonic() < deadline:
            state = controller.ok("GET", f"/v1/jobs/{job}")["callback_state"] or ""
            time.sleep(0.1)
        assert state.startswith("delivered on attempt 2"), state
    finally:
        receiver.close()


def _subject(message: dict[str, Any]) -> str:
    return next((ln[9:] for ln in message["data"].splitlines() if ln.startswith("Subject: ")),
                "")


def test_stopped_hosts_make_the_job_partial_and_retry_targets_only_them(
        stack: ControllerStack, fleet_hosts: list[FleetHost]) -> None:
    controller = stack.controller
    agent_host = fleet_hosts[0]
    sshd_host = fleet_hosts[3]
    net_host = fleet_hosts[4]
    agent_host.lab_host.stop_agent()
    sshd_host.lab_host.stop_sshd()
    net_host.lab_host.link_down()
    try:
        job = controller.start_job({"action": "collect_status", "target": {"all": True},
                                    "options": {"timeout_s": 30}})
        doc = controller.wait_job(job)
    finally:
        net_host.lab_host.link_up()
    assert doc["status"] == "partial"
    by_id = {r["host_id"]: r for r in doc["results"]}
    down = {agent_host.host_id, sshd_host.host_id, net_host.host_id}
    for host_id, result in by_id.items():
        if host_id in down:
            assert result["status"] == "unreachable", result
            assert result["error"]
        else:
            assert result["status"] == "succeeded", result
            assert result["data"]["queue"]["count"] == 0
    assert "cannot reach the agent" in by_id[agent_host.host_id]["error"]
    fleet = controller.ok("GET", "/v1/fleet")
    assert fleet["summary"]["unreachable"] == 3
    # bring them back; retry targets only the three
    agent_host.lab_host.start_agent(agent_host.agent_token, tls=True)  # same certificate
    sshd_host.lab_host.ssh_host_key = sshd_host.lab_host.start_sshd()
    retry = controller.post(f"/v1/jobs/{job}/retry")
    assert retry.status == 202 and retry.json["total"] == 3
    again = controller.wait_job(retry.json["id"])
    assert again["retry_of"] == job
    assert {r["host_id"] for r in again["results"]} == down
    assert again["status"] == "succeeded", again["results"]
    assert controller.ok("GET", "/v1/fleet")["summary"]["unreachable"] == 0


def test_worker_killed_mid_job_loses_nothing_and_applies_nothing_twice(
        fleet_hosts: list[FleetHost], redis_server: Any, lab: Lab,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # SQLite this time (the PostgreSQL stack ran the tests above); short broker timeouts
    # so that the dead worker's task comes back within the test.
    built = controller_stack(f"sqlite:///{tmp_path / 'relayfleet.db'}", tmp_path, redis_server,
                             monkeypatch, lab.network, redis_db=1,
                             RELAYFLEET_VISIBILITY_TIMEOUT_S="40", RELAYFLEET_LANE_BUDGET_S="5")
    controller = built.controller
    try:
        _enrol(controller, fleet_hosts)
        wanted = f"[{lab.smarthost.address}]"
        backups_before = {e.host_id: _backups(e.lab_host) for e in fleet_hosts}
        job = controller.start_job({"action": "set_smarthost", "target": {"all": True},
                                    "params": {"host": wanted, "port": SINK_PORT},
                                    "options": {"concurrency": 2, "timeout_s": 15}})
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            counts = controller.ok("GET", f"/v1/jobs/{job}")["counts"]
            if counts["succeeded"] >= 1 and counts["running"] >= 1:
                break
            time.sleep(0.1)
        built.worker.kill()
        killed_at = controller.ok("GET", f"/v1/jobs/{job}")["counts"]
        assert killed_at["pending"] + killed_at["running"] > 0, killed_at
        built.worker = ControllerWorker(built.env, tmp_path / "worker.log").start()
        doc = controller.wait_job(job, timeout=240)
        assert doc["status"] == "succeeded", json.dumps(doc["results"], indent=1)[:3000]
        assert doc["counts"]["succeeded"] == 6 and len(doc["results"]) == 6
        assert any(r["attempts"] > 1 for r in doc["results"]) or killed_at["running"] == 0
        for entry in fleet_hosts:
            mc = (entry.lab_host.mail_dir / "sendmail.mc").read_text()
            defines = ACTIVE_DEFINE.findall(mc)
            assert len(defines) == 1, mc
            assert wanted in mc
            # A change applied twice would have backed up the already-new sendmail.mc.
            new_backups = _backups(entry.lab_host) - backups_before[entry.host_id]
            assert 1 <= len(new_backups) <= 2, new_backups
            for name in new_backups:
                saved = (entry.lab_host.mail_dir / ".relayfleet-backup" / name / "sendmail.mc")
                assert wanted not in saved.read_text(), name
            assert not (entry.lab_host.mail_dir / ".relayfleet.lock").exists()
    finally:
        built.worker.stop()


def _backups(host: LabHost) -> set[str]:
    root = host.mail_dir / ".relayfleet-backup"
    return {p.name for p in root.iterdir()} if root.exists() else set()
