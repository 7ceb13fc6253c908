"""Alerts end to end through the API, real Redis and a real worker process: a rule fires
for a host whose queue is over its threshold and resolves when the queue empties, each
exactly once, to a signed webhook (a local HTTP receiver that refuses the first notice, so
the worker's retry delivers it), a Slack-style incoming webhook and email (the lab's SMTP
sink, with AUTH, behind a TLS front signed by a lab CA: RELAYFLEET_SMTP_URL is smtps://, as
a login needs). The host's state columns are set directly: the jobs that learn them are
tested elsewhere; here the tick, the queue and delivery are real.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import hashlib
import hmac
import json
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from controller import alerts
from controller.db import db
from controller.models import Host
from tests.controller_client import Controller
from tests.lab.labca import LabCA
from tests.lab.services import ControllerWorker, _wait_tcp, free_port

pytestmark = [pytest.mark.slow]

SMTP_USER, SMTP_PASSWORD = "relayfleet-alerts", "sink-pass-4417"



class Receiver:
    """An HTTP endpoint recording every POST by path; the next ``refuse[path]`` calls to
    a path answer 500."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, str], bytes]] = []
        self.refuse: dict[str, int] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.calls.append((self.path, dict(self.headers), body))
                failing = receiver.refuse.get(self.path, 0) > 0
                if failing:
                    receiver.refuse[self.path] -= 1
                self.send_response(500 if failing else 204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def at(self, path: str) -> list[tuple[dict[str, str], bytes]]:
        """The calls to ``path``, in order."""
        return [(headers, body) for got, headers, body in self.calls if got == path]


def _until(what: str, check: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout} s: {what}")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """The local HTTP receiver."""
    made = Receiver()
    yield made
    made.server.shutdown()


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """The lab SMTP sink on loopback, insisting on AUTH: its port and spool."""
    port, spool = free_port(), tmp_path / "spool"
    with open(tmp_path / "sink.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.lab.sink", "--listen", f"127.0.0.1:{port}",
             "--spool", str(spool), "--auth", "--credentials", f"{SMTP_USER}:{SMTP_PASSWORD}"],
            cwd=Path(__file__).resolve().parents[2], stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        _wait_tcp(port, proc, "the SMTP sink")
        yield port, spool
    finally:
        proc.terminate()
        proc.wait(10)


def _pump(source: socket.socket, target: socket.socket) -> None:
    """Copy bytes one way until either side closes."""
    try:
        while data := source.recv(65536):
            target.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, target):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def tls_front(sink: tuple[int, Path], tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """TLS in front of the sink (an smtps:// server for ``localhost``, its certificate
    signed by a lab CA): its port and the CA file a client trusts."""
    ca = LabCA(tmp_path / "ca")
    cert, key = ca.issue("smtp", ["localhost"])
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                secured = context.wrap_socket(client, server_side=True)
            except (OSError, ssl.SSLError):
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", sink[0]))
            for a, b in ((secured, upstream), (upstream, secured)):
                threading.Thread(target=_pump, args=(a, b), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield port, ca.cert
    finally:
        listener.close()


@pytest.fixture
def stack(controller_env: dict[str, str], tls_front: tuple[int, Path], tmp_path: Path,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[Controller]:
    """The API in-process and a worker process, both mailing through the sink over TLS
    with a login."""
    secret = tmp_path / "smtp-password"
    secret.write_text(SMTP_PASSWORD + "\n")
    env = {**controller_env, "RELAYFLEET_SMTP_URL": f"smtps://localhost:{tls_front[0]}",
           "RELAYFLEET_SMTP_FROM": "alerts@msp.example",
           "RELAYFLEET_SMTP_USERNAME": SMTP_USER,
           "RELAYFLEET_SMTP_PASSWORD_FILE": str(secret),
           "SSL_CERT_FILE": str(tls_front[1])}  # the worker trusts the lab CA
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    controller = Controller.create()
    worker = ControllerWorker(env, tmp_path / "worker.log", concurrency=2).start()
    try:
        yield controller
    finally:
        worker.stop()


def _mails(spool: Path) -> list[tuple[dict[str, Any], email.message.EmailMessage]]:
    found = []
    for path in sorted(spool.glob("*.json")):
        doc = json.loads(path.read_text())
        found.append((doc, email.message_from_string(doc["data"], policy=email.policy.default)))
    return found


def _verify(secret: str, headers: dict[str, str], body: bytes) -> None:
    stamp = headers["X-Relayfleet-Timestamp"]
    mac = hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-Relayfleet-Signature"], f"sha256={mac}")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_an_alert_fires_and_resolves_once_on_every_channel(
        stack: Controller, receiver: Receiver, sink: tuple[int, Path]) -> None:
    c, spool = stack, sink[1]
    tenant = c.tenant("Acme")
    host = c.host(c.site(tenant, "Lyon"), "pbx-lyon-1")["id"]
    hook = c.ok("POST", "/v1/alert-channels", {"name": "noc-hook", "tenant_id": tenant,
                                               "kind": "webhook",
                                               "url": f"{receiver.base}/hook"})
    c.ok("POST", "/v1/alert-channels", {"name": "chat", "tenant_id": tenant, "kind": "slack",
                                        "url": f"{receiver.base}/slack/T0/B0/key"})
    c.ok("POST", "/v1/alert-channels", {"name": "noc-mail", "tenant_id": tenant,
                                        "kind": "email", "address": "noc@msp.example"})

    # the test notice: sent by the API itself, signed with the secret shown at creation
    tested = c.ok("POST", f"/v1/alert-channels/{hook['id']}/test")
    assert tested == {"channel_id": hook["id"], "delivered": True, "outcome": "HTTP 204"}
    (headers, body), = receiver.at("/hook")
    _verify(hook["secret"], headers, body)
    assert headers["X-Relayfleet-Event"] == "alert.test"

    rule = c.ok("POST", "/v1/alert-rules", {
        "name": "queue over 50", "tenant_id": tenant, "kind": "queue_count",
        "threshold": 50, "channels": ["noc-hook", "chat", "noc-mail"]})
    app = c.app

    def set_queue(count: int) -> None:
        with app.app_context(), db.transaction() as session:
            session.execute(update(Host).where(Host.id == host).values(
                last_reachable=True, queue_count=count))

    def tick() -> None:
        with app.app_context():
            alerts.tick(app.extensions["relayfleet_db"], app.config["RELAYFLEET_SETTINGS"])

    def notices(state: str) -> list[dict[str, Any]]:
        found = c.ok("GET", f"/v1/alerts?state={state}&rule=queue over 50")["items"]
        return [n for a in found for n in a["notices"]]

    set_queue(60)
    receiver.refuse["/hook"] = 1  # the webhook's first firing notice fails: the worker retries it
    tick()
    tick()  # still over the threshold: nothing new
    sent = _until("the firing notices sent", lambda: len(notices("firing")) == 3 and all(
        n["state"] == "sent" for n in notices("firing")))
    assert sent
    by_channel = {n["channel"]: n for n in notices("firing")}
    assert by_channel["noc-hook"]["attempts"] == 2
    assert by_channel["chat"]["attempts"] == by_channel["noc-mail"]["attempts"] == 1

    firing = receiver.at("/hook")[1:]
    assert len(firing) == 2  # refused once, then delivered
    for headers, body in firing:
        _verify(hook["secret"], headers, body)
    doc = json.loads(firing[-1][1])
    assert doc["event"] == "firing" and headers["X-Relayfleet-Event"] == "alert.firing"
    assert doc["host"]["name"] == "pbx-lyon-1" and doc["tenant"]["name"] == "Acme"
    assert doc["rule"] == {"id": rule["id"], "name": "queue over 50", "kind": "queue_count",
                           "threshold": 50, "cause": None}
    assert doc["alert"]["detail"] == {"queue_count": 60, "threshold": 50}
    (_, slack), = receiver.at("/slack/T0/B0/key")
    assert "FIRING: queue over 50 — pbx-lyon-1" in json.loads(slack)["text"]
    (envelope, mail), = _mails(spool)
    assert envelope["auth_user"] == SMTP_USER and envelope["rcpts"] == ["<noc@msp.example>"]
    assert mail["Subject"] == "[relayfleet] FIRING: queue over 50 — pbx-lyon-1"
    assert "the queue holds 60 messages" in mail.get_content()

    set_queue(0)
    tick()
    tick()
    _until("the resolved notices sent", lambda: len(notices("resolved")) == 6 and all(
        n["state"] == "sent" for n in notices("resolved")))
    assert c.ok("GET", "/v1/alerts?state=firing")["total"] == 0
    resolved = receiver.at("/hook")[3:]
    assert [json.loads(body)["event"] for _, body in resolved] == ["resolved"]
    assert len(receiver.at("/slack/T0/B0/key")) == 2
    mails = _mails(spool)
    assert [m["Subject"] for _, m in mails] == [
        "[relayfleet] FIRING: queue over 50 — pbx-lyon-1",
        "[relayfleet] RESOLVED: queue over 50 — pbx-lyon-1"]
    assert "lasted" in mails[1][1].get_content()
    # one alert, six notices, whatever the ticks: a seventh would show in the API
    tick()
    assert len(notices("resolved")) == 6
    assert c.ok("GET", "/v1/alerts")["total"] == 1
