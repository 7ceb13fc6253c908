"""An inbound ticketing hook end to end: the real API server (gunicorn), a Celery worker,
Redis and a sendmail lab host whose voicemail sits deferred. The hook is made with the
installed ``relayfleet`` command (Zendesk format, with the secret Zendesk would show); a
request signed as Zendesk signs its webhooks flushes the host's queue, the voicemail
reaches the smarthost, and the callback receiver gets the job's result signed with the
tenant's callback secret, with the ticket's id in its URL. The same request again (Zendesk
retrying a delivery whose answer it lost) starts nothing and answers 200 with the first
job; a request signed with another key is refused (401).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import secrets
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from controller.inbound import sign
from tests.lab.enrol import host_body
from tests.lab.lab import SINK_PORT, Lab, LabHost
from tests.lab.services import ApiServer, ControllerStack, RelayfleetCli, lab_controller

pytestmark = [pytest.mark.lab, pytest.mark.slow]

#: what Zendesk would show as the webhook's signing secret (Zendesk makes it)
ZENDESK_SECRET = "dGhpc19pc19hX3plbmRlc2tfc2lnbmluZ19zZWNyZXQ="


class Receiver:
    """An HTTP endpoint on loopback that records every POST (path, headers, body)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.calls.append((self.path, dict(self.headers), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/zendesk/relayfleet"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@dataclass
class Setup:
    """The stack, its API server, the CLI, the lab host, the tenant's callback secret."""

    stack: ControllerStack
    server: ApiServer
    cli: RelayfleetCli
    host: LabHost
    callback_secret: str
    workdir: Path


@pytest.fixture(scope="module")
def setup(lab: Lab, redis_server: Any,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """A sendmail host (agent) of tenant Acme, enrolled; an API server process."""
    workdir = tmp_path_factory.mktemp("inbound")
    with lab_controller(lab, redis_server, workdir, 13) as (stack, made):
        host = lab.add_host("inb1", "debian")
        made.append(host)
        controller = stack.controller
        tenant = controller.ok("POST", "/v1/tenants", {"name": "Acme"})
        site = controller.site(tenant["id"], "Lyon")
        controller.ok("POST", "/v1/hosts", {**host_body(host, "agent"), "site_id": site})
        admin = workdir / "admin.token"
        admin.write_text(controller.admin + "\n")
        admin.chmod(0o600)
        with ApiServer(stack.env, workdir / "serve.log") as server:
            yield Setup(stack, server, RelayfleetCli(server.url, admin, workdir / "home"),
                        host, tenant["callback_secret"], workdir)


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    """POST without a bearer token; the status and decoded answer."""
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_a_zendesk_ticket_flushes_the_queue_and_gets_the_result_back(setup: Setup,
                                                                      lab: Lab) -> None:
    controller = setup.stack.controller
    host = setup.host
    subject = f"voicemail {secrets.token_hex(4)}"
    host.send_mail(["me@ourtest.com"], subject=subject)
    host.wait_deferred()
    # the relay is set first (as an operator would); the ticket then asks for a flush
    relay = controller.wait_job(controller.start_job({
        "action": "set_smarthost", "target": {"all": True},
        "params": {"host": "smarthost.lab.test", "port": SINK_PORT, "mx": False}}))
    assert relay["status"] == "succeeded", relay["results"]
    receiver = Receiver()
    try:
        secret_file = setup.workdir / "zendesk-secret.txt"
        secret_file.write_text(ZENDESK_SECRET + "\n")
        added = setup.cli(
            "--json", "inbound", "add", "acme-zendesk", "--tenant", "Acme", "--format",
            "zendesk", "--secret-file", str(secret_file), "--allow", "flush_queue",
            "--action-from", "/ticket/action", "--host-from", "/ticket/host",
            "--param", "reset_host_status=true", "--reference-from", "/ticket/id",
            "--callback-url", receiver.url)
        assert added.returncode == 0, added.stderr
        hook = json.loads(added.stdout)
        assert hook["secret"] is None and ZENDESK_SECRET not in added.stdout + added.stderr
        # what a Zendesk trigger's JSON body looks like once its placeholders are filled
        payload = json.dumps({"ticket": {"id": "4711", "action": "flush_queue",
                                         "host": host.fqdn,
                                         "subject": "Voicemail not arriving"}}).encode()
        headers = sign("zendesk", ZENDESK_SECRET.encode(), payload, dt.datetime.now(dt.UTC))
        status, answer = post(setup.server.url + hook["url"], payload, headers)
        assert status == 202, answer
        job_id = answer["job"]["id"]
        doc = controller.wait_job(job_id)
        assert doc["status"] == "succeeded", doc["results"]
        assert doc["action"] == "flush_queue" and doc["params"]["reset_host_status"] is True
        assert doc["results"][0]["data"]["after"] == 0, doc["results"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not _delivered(lab, subject):
            time.sleep(0.5)
        assert _delivered(lab, subject)
        # the result, posted back signed with the tenant's callback secret
        deadline = time.monotonic() + 60
        while not receiver.calls and time.monotonic() < deadline:
            time.sleep(0.2)
        path, sent_headers, body = receiver.calls[0]
        assert path == "/zendesk/relayfleet?reference=4711"
        expected = "sha256=" + hmac.new(
            setup.callback_secret.encode(),
            sent_headers["X-Relayfleet-Timestamp"].encode() + b"." + body,
            hashlib.sha256).hexdigest()
        assert hmac.compare_digest(sent_headers["X-Relayfleet-Signature"], expected)
        result = json.loads(body)
        assert result["id"] == job_id and result["status"] == "succeeded"
        assert result["results"][0]["host"] == host.fqdn
        # the same signed request again is a replay: the first job, nothing new started;
        # another key is refused outright
        status, answer = post(setup.server.url + hook["url"], payload, headers)
        assert status == 200 and answer["replayed"] is True, answer
        assert answer["job"]["id"] == job_id and answer["job"]["status"] == "succeeded"
        forged = sign("zendesk", b"someone-else-0123456789", payload,
                      dt.datetime.now(dt.UTC))
        status, answer = post(setup.server.url + hook["url"], payload, forged)
        assert status == 401 and "not accepted" in answer["message"], answer
        jobs = controller.ok("GET", "/v1/jobs")["items"]
        assert [j["id"] for j in jobs if j["action"] == "flush_queue"] == [job_id]
    finally:
        receiver.close()


def _delivered(lab: Lab, subject: str) -> bool:
    return any(f"Subject: {subject}" in message["data"]
               for message in lab.smarthost.messages())
