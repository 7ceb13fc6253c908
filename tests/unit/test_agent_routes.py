"""The agent's HTTP routes over a fake sendmail host (Flask's test client; no root, no lab).

Only answers and status codes are checked (the README's table and error envelope), never
how agent/app.py gets there; the fake's recorded commands show what reached the host.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from agent.app import create_app
from agent.config import AgentConfig, MtaSettings
from shared import __version__
from shared.schemas import StatusSchema
from shared.testing import FakeSendmailHost, debian_sendmail_host

TOKEN = "fake-agent-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SMARTHOST = {"host": "smarthost.lab.test", "port": 2525, "mx": False}
PASSWORD = "Route-S3cret!pw"
HOSTILE_HOST = "x')esyscmd(`id')dnl(`"
CF = "/etc/mail/sendmail.cf"
#: the error an operation gives when sendmail.cf is not there
NO_CF = (f"cannot read {CF}: no such file: run make in /etc/mail to compile it from "
         "sendmail.mc, or check the profile's cf path")
#: every route but /v1/health, with a body that would be valid
ROUTES = [("GET", "/v1/status", None), ("GET", "/v1/smarthost", None),
          ("PUT", "/v1/smarthost", SMARTHOST), ("DELETE", "/v1/smarthost", {}),
          ("GET", "/v1/queue", None), ("POST", "/v1/queue/flush", {}),
          ("GET", "/v1/log?lines=10", None), ("POST", "/v1/diagnose", {}),
          ("GET", "/openapi.json", None)]


@pytest.fixture
def host() -> FakeSendmailHost:
    return debian_sendmail_host()


@pytest.fixture
def app(host: FakeSendmailHost) -> Flask:
    config = AgentConfig("127.0.0.1", 8587, hashlib.sha256(TOKEN.encode()).hexdigest(),
                         MtaSettings("sendmail", "debian"))
    return create_app(config, executor_factory=lambda: host)


@pytest.fixture
def client(app: Flask) -> Iterator[FlaskClient]:
    with app.test_client() as test_client:
        yield test_client


def call(client: FlaskClient, method: str, path: str, body: Any = None,
         headers: dict[str, str] | None = None) -> tuple[int, Any]:
    response = client.open(path, method=method, json=body,
                           headers=AUTH if headers is None else headers)
    return response.status_code, response.get_json()


def assert_envelope(doc: Any, code: int) -> None:
    assert doc["code"] == code and isinstance(doc["status"], str) and doc["message"]


# -- happy paths -----------------------------------------------------------------------------


def test_health_needs_no_token(client: FlaskClient, host: FakeSendmailHost) -> None:
    assert call(client, "GET", "/v1/health", headers={}) == (
        200, {"status": "ok", "version": __version__})
    assert host.commands == []


def test_status(client: FlaskClient) -> None:
    code, doc = call(client, "GET", "/v1/status")
    assert code == 200, doc
    assert doc == {"hostname": "lab1", "fqdn": "lab1.lab.test",
                   "mta": {"kind": "sendmail", "version": "8.17.1.9", "running": True},
                   "smarthost": None, "config_in_sync": True,
                   "queue": {"count": 4, "oldest_age_s": doc["queue"]["oldest_age_s"],
                             "reasons": doc["queue"]["reasons"]},
                   "hosts_file": {"ok": True, "problems": []}, "recent": doc["recent"]}
    # the queued messages' reasons, most messages first, and the maillog's recent tail
    assert doc["queue"]["reasons"][0] == {"text": "Operating system error", "count": 2}
    assert sum(r["count"] for r in doc["queue"]["reasons"]) == 4
    assert doc["recent"]["deliveries"] >= doc["recent"]["deferred"] >= 1


def test_smarthost_set_read_again_and_remove(client: FlaskClient,
                                             host: FakeSendmailHost) -> None:
    assert call(client, "GET", "/v1/smarthost") == (
        200, {"smarthost": None, "config_in_sync": True})
    code, put = call(client, "PUT", "/v1/smarthost",
                     {**SMARTHOST, "auth": {"username": "pbx", "password": PASSWORD}})
    assert code == 200 and put["ok"] and put["changed"] and not put["rolled_back"], put
    assert put["smarthost"] == {**SMARTHOST, "mailer": "relay", "auth": {"username": "pbx"},
                                "tls": {"mode": "encrypt", "ca_file": None}, "masquerade": None}
    assert put["config_in_sync"] and put["backup"] and put["dry_run"] is False
    assert [s["name"] for s in put["steps"]][-3:] == ["make", "restart", "verify"]
    assert "DS[smarthost.lab.test]" in host.read_text("/etc/mail/sendmail.cf").splitlines()
    code, read = call(client, "GET", "/v1/smarthost")
    assert code == 200 and read["smarthost"]["auth"] == {"username": "pbx"}
    code, again = call(client, "PUT", "/v1/smarthost",
                       {**SMARTHOST, "auth": {"username": "pbx", "password": PASSWORD}})
    assert code == 200 and again["ok"] and again["changed"] is False and again["diff"] == ""
    code, removed = call(client, "DELETE", "/v1/smarthost")
    assert code == 200 and removed["ok"] and removed["smarthost"] is None, removed
    assert all(PASSWORD not in json.dumps(d) for d in (put, read, again, removed))


def test_dry_run_changes_nothing(client: FlaskClient, host: FakeSendmailHost) -> None:
    before = host.snapshot()
    code, doc = call(client, "PUT", "/v1/smarthost", {**SMARTHOST, "dry_run": True})
    assert code == 200 and doc["dry_run"] is True and doc["changed"] is True
    assert "+define(`SMART_HOST', ``[smarthost.lab.test]'')" in doc["diff"]
    assert host.snapshot() == before and not host.ran("m4")


def test_a_failed_change_is_200_with_ok_false(client: FlaskClient,
                                              host: FakeSendmailHost) -> None:
    host.script(["/etc/init.d/sendmail", "restart"], exit_code=1, stderr="failed", times=1)
    code, doc = call(client, "PUT", "/v1/smarthost", SMARTHOST)
    assert code == 200 and doc["ok"] is False and doc["rolled_back"] is True
    assert doc["smarthost"] is None and "restored" in doc["error"]


@pytest.mark.parametrize("method, body", [("PUT", SMARTHOST), ("DELETE", {}),
                                          ("PUT", {**SMARTHOST, "dry_run": True})],
                         ids=["put", "delete", "dry-run"])
def test_a_change_on_a_host_without_sendmail_cf_is_200_with_ok_false(
        client: FlaskClient, host: FakeSendmailHost, method: str, body: Any) -> None:
    host.remove(CF)
    code, doc = call(client, method, "/v1/smarthost", body)
    assert code == 200, doc
    assert doc["ok"] is False and doc["error_kind"] == "config" and doc["error"] == NO_CF
    assert (doc["changed"], doc["rolled_back"], doc["smarthost"], doc["config_in_sync"]) == (
        False, False, None, False)
    assert not host.ran("m4") and not host.exists(CF)


def test_reads_of_a_host_without_sendmail_cf_say_it_is_out_of_sync(
        client: FlaskClient, host: FakeSendmailHost) -> None:
    assert call(client, "PUT", "/v1/smarthost", SMARTHOST)[0] == 200
    host.remove(CF)
    # GET /v1/smarthost and /v1/status have no ok or error: they answer 200 with what
    # sendmail.mc configures and config_in_sync false, in their documented shape.
    configured = {**SMARTHOST, "mailer": "relay", "auth": None,
                  "tls": {"mode": "may", "ca_file": None}, "masquerade": None}
    code, read = call(client, "GET", "/v1/smarthost")
    assert (code, read) == (200, {"smarthost": configured, "config_in_sync": False})
    code, status = call(client, "GET", "/v1/status")
    assert code == 200 and StatusSchema().validate(status) == {}, status
    assert status["smarthost"] == configured and status["config_in_sync"] is False
    assert status["mta"]["running"] is True and status["queue"]["count"] == 4
    code, diagnose = call(client, "POST", "/v1/diagnose", {})
    checks = {c["name"]: c for c in diagnose["checks"]}
    assert code == 200 and diagnose["ok"] is False
    assert checks["config_in_sync"]["ok"] is False and checks["config_in_sync"]["detail"] == NO_CF


def test_queue_and_flush(client: FlaskClient, host: FakeSendmailHost) -> None:
    code, queue = call(client, "GET", "/v1/queue")
    assert code == 200 and queue["count"] == 4 and queue["sections"] == {"msp": 0, "mta": 4}
    assert [m["id"] for m in queue["messages"]] == [
        "6AP4mD19010500", "6AP4mDlP010506", "6AP4jQbT009721", "6AP4mD19010498"]
    code, flush = call(client, "POST", "/v1/queue/flush", {"queue_id": "6AP4jQbT009721"})
    assert code == 200 and flush["ok"] and (flush["before"], flush["after"]) == (4, 4), flush
    assert [d["outcome"] for d in flush["deliveries"]] == ["deferred"]
    assert call(client, "PUT", "/v1/smarthost", SMARTHOST)[0] == 200
    code, flush = call(client, "POST", "/v1/queue/flush")
    assert code == 200 and (flush["before"], flush["after"]) == (4, 2)
    assert len(flush["remaining"]) == 2 and host.ran("/usr/sbin/sendmail", "-Ac")


def test_log(client: FlaskClient) -> None:
    code, doc = call(client, "GET", "/v1/log?lines=5")
    assert code == 200 and len(doc["records"]) == 5
    assert set(doc["summary"]) >= {"deliveries", "by_stat", "sent", "deferred", "bounced"}


def test_diagnose(client: FlaskClient, host: FakeSendmailHost) -> None:
    code, doc = call(client, "POST", "/v1/diagnose", {})
    assert code == 200 and doc["ok"] is False  # no smarthost yet
    checks = {c["name"]: c for c in doc["checks"]}
    assert checks["hostname_fqdn"]["ok"] and checks["mta_running"]["ok"]
    assert checks["smarthost_resolves"]["ok"] is False
    host.listen_smtp("smarthost.lab.test", 2525, address="10.77.0.3")
    assert call(client, "PUT", "/v1/smarthost", SMARTHOST)[0] == 200
    code, doc = call(client, "POST", "/v1/diagnose")
    checks = {c["name"]: c for c in doc["checks"]}
    assert code == 200 and checks["smarthost_smtp"]["ok"] is True, checks
    assert checks["smarthost_smtp"]["data"]["starttls"] is True
    assert host.connections == [("smarthost.lab.test", 2525)]


def test_openapi_document(client: FlaskClient) -> None:
    code, doc = call(client, "GET", "/openapi.json")
    assert code == 200 and {"/v1/smarthost", "/v1/queue/flush"} <= set(doc["paths"])


# -- the error envelope ------------------------------------------------------------------------


@pytest.mark.parametrize("method, path, body", ROUTES)
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-token-xxxxxxxx"},
                                     {"Authorization": f"Basic {TOKEN}"},
                                     {"Authorization": "Bearer"}],
                         ids=["missing", "wrong", "scheme", "empty"])
def test_every_route_needs_the_token(client: FlaskClient, host: FakeSendmailHost, method: str,
                                     path: str, body: Any, headers: dict[str, str]) -> None:
    response = client.open(path, method=method, json=body, headers=headers)
    assert response.status_code == 401
    assert_envelope(response.get_json(), 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert host.commands == [] and host.file_ops == []


@pytest.mark.parametrize("method, path", [("PUT", "/v1/smarthost"),
                                          ("POST", "/v1/queue/flush"),
                                          ("POST", "/v1/diagnose")])
def test_malformed_json_is_400(client: FlaskClient, host: FakeSendmailHost, method: str,
                               path: str) -> None:
    response = client.open(path, method=method, data='{"host": ', headers={
        **AUTH, "Content-Type": "application/json"})
    assert response.status_code == 400
    assert_envelope(response.get_json(), 400)
    assert host.commands == []


def test_a_body_over_64_kib_is_413(client: FlaskClient, host: FakeSendmailHost) -> None:
    code, doc = call(client, "PUT", "/v1/smarthost", {**SMARTHOST, "pad": "x" * 70_000})
    assert code == 413
    assert_envelope(doc, 413)
    assert host.commands == []


@pytest.mark.parametrize("method, path, body, field", [
    ("PUT", "/v1/smarthost", {"host": HOSTILE_HOST}, "host"),
    ("PUT", "/v1/smarthost", {"host": "relay.example.net`'"}, "host"),
    ("PUT", "/v1/smarthost", {"host": "relay.example.net\ndefine(`X')"}, "host"),
    ("PUT", "/v1/smarthost", {"host": "$1.example.net"}, "host"),
    ("PUT", "/v1/smarthost", {**SMARTHOST, "port": 70000}, "port"),
    ("PUT", "/v1/smarthost", {**SMARTHOST, "mailer": "prog"}, "mailer"),
    ("PUT", "/v1/smarthost", {**SMARTHOST, "auth": {"username": "u",
                                                    "password": "a\"b')\ndnl"}}, "auth.password"),
    ("PUT", "/v1/smarthost", {**SMARTHOST, "auth": {"username": "u", "password": "pw"},
                              "tls": {"mode": "may"}}, "tls.mode"),
    ("PUT", "/v1/smarthost", {**SMARTHOST, "tls": {"ca_file": "/x/../etc/shadow"}},
     "tls.ca_file"),
    ("PUT", "/v1/smarthost", {**SMARTHOST, "masquerade": {"domain": HOSTILE_HOST}},
     "masquerade.domain"),
    ("POST", "/v1/hostname", {"fqdn": HOSTILE_HOST}, "fqdn"),
    ("POST", "/v1/hostname", {"fqdn": "pbx.example.com", "domain": "example.com"}, None),
    ("POST", "/v1/hostname", {}, "fqdn"),
    ("PUT", "/v1/smarthost", {**SMARTHOST, "shell": "id"}, "shell"),
    ("DELETE", "/v1/smarthost", {"dry_run": "maybe"}, "dry_run"),
    ("POST", "/v1/queue/flush", {"queue_id": "6AP4jQbT009721", "sender": "root"}, None),
    ("POST", "/v1/queue/flush", {"recipient": "a;id"}, "recipient"),
    ("POST", "/v1/queue/flush", {"queue_id": "-C/tmp/evil.cf"}, "queue_id"),
    ("POST", "/v1/queue/flush", {"everything": True}, "everything"),
    ("GET", "/v1/log?lines=0", None, "lines"),
    ("GET", "/v1/log?lines=1;id", None, "lines"),
    ("POST", "/v1/diagnose", {"domain": "x$(id).example"}, "domain"),
], ids=lambda v: v if isinstance(v, str) and len(v) < 30 else None)
def test_bad_and_hostile_values_are_422_and_never_reach_the_host(
        client: FlaskClient, host: FakeSendmailHost, method: str, path: str, body: Any,
        field: str | None) -> None:
    before = host.snapshot()
    code, doc = call(client, method, path, body)
    assert code == 422, doc
    assert_envelope(doc, 422)
    assert doc["errors"] and (field is None or field in doc["errors"]), doc["errors"]
    # Nothing ran, nothing changed, and m4 was never asked to run a shell command.
    assert host.commands == [] and host.file_ops == [] and host.snapshot() == before
    assert host.m4_inputs == [] and host.m4_shell_calls == []


# -- one change at a time ----------------------------------------------------------------------


def test_a_change_while_another_runs_is_409(app: Flask, host: FakeSendmailHost) -> None:
    release = threading.Event()
    m4 = host.script(["m4"], wait=release, times=1)
    first: dict[str, Any] = {}

    def change() -> None:
        with app.test_client() as own:
            first["code"], first["doc"] = call(own, "PUT", "/v1/smarthost", SMARTHOST)

    runner = threading.Thread(target=change)
    runner.start()
    try:
        assert m4.entered.wait(10), "the first change never reached m4"
        with app.test_client() as other:
            for method, body in (("PUT", {**SMARTHOST, "port": 587}), ("DELETE", None)):
                code, doc = call(other, method, "/v1/smarthost", body)
                assert code == 409, doc
                assert_envelope(doc, 409)
            # Reading is never blocked by a change.
            assert call(other, "GET", "/v1/queue")[0] == 200
    finally:
        release.set()
        runner.join(10)
    assert first["code"] == 200 and first["doc"]["ok"], first
    assert len(host.ran("m4")) == 1 and "\t\tA=TCP $h 587" not in host.read_text(
        "/etc/mail/sendmail.cf")


def test_a_lock_left_on_the_host_by_another_change_is_409(client: FlaskClient,
                                                          host: FakeSendmailHost) -> None:
    host.add_dir("/etc/mail/.relayfleet.lock", mode=0o700)
    host.add_file("/etc/mail/.relayfleet.lock/since", str(int(host.now())))
    code, doc = call(client, "PUT", "/v1/smarthost", SMARTHOST)
    assert code == 409, doc
    assert_envelope(doc, 409)
    assert not host.ran("m4")
