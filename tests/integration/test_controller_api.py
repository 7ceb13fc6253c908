"""The controller's API on real databases (SQLite and PostgreSQL) and a real Redis:
auth, roles, tenant scoping, idempotency, hostile input, secrets, audit, paging.

No worker runs here: jobs are accepted and queued, not executed (see
test_controller_fleet.py for jobs run by a real worker on lab hosts).
"""

from __future__ import annotations

import contextlib
import json
import threading
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from tests.controller_client import Controller

SSH_KEY_LINE = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9"
                "GKJl")
AGENT_SECRET = "agent-secret-token-0123456789abcdef"
SSH_PASSWORD = "ssh-password-Zq8!x"
SMTP_PASSWORD = "smtp-password-K7#p"


@pytest.fixture
def fleet(controller: Controller) -> dict[str, Any]:
    """Two tenants, three sites, five hosts, and tenant-scoped tokens."""
    acme, globex = controller.tenant("Acme"), controller.tenant("Globex")
    leeds, york = controller.site(acme, "Leeds"), controller.site(acme, "York")
    paris = controller.site(globex, "Paris")
    hosts = {
        "a1": controller.host(leeds, "pbx-a1", tags=["pbx", "shared"]),
        "a2": controller.host(leeds, "pbx-a2", tags=["pbx"]),
        "a3": controller.host(york, "mail-a3", tags=["mail"]),
        "g1": controller.host(paris, "pbx-g1", tags=["pbx", "shared"]),
        "g2": controller.host(paris, "mail-g2", tags=["mail"]),
    }
    return {"acme": acme, "globex": globex, "sites": {"leeds": leeds, "york": york,
                                                     "paris": paris},
            "hosts": {k: v["id"] for k, v in hosts.items()},
            "acme_admin": controller.issue("admin", acme),
            "acme_operator": controller.issue("operator", acme),
            "acme_viewer": controller.issue("viewer", acme),
            "globex_operator": controller.issue("operator", globex)}


def test_health_is_open_and_everything_else_needs_a_token(controller: Controller) -> None:
    assert controller.client.get("/v1/health").get_json()["status"] == "ok"
    for path in ("/v1/hosts", "/v1/jobs", "/v1/fleet", "/v1/audit", "/openapi.json", "/docs",
                 "/metrics", "/v1/tokens"):
        answer = controller.client.get(path)
        assert answer.status_code == 401, path
        assert "Bearer" in answer.get_json()["message"]
        bad = controller.client.get(path, headers={"Authorization": "Bearer rft_nope_x"})
        assert bad.status_code == 401
    assert controller.post("/v1/jobs", {}, token="rft_0_wrong").status == 401


def test_revoked_token_stops_working(controller: Controller) -> None:
    token = controller.issue("viewer")
    assert controller.get("/v1/hosts", token).status == 200
    listed = controller.ok("GET", "/v1/tokens")["items"]
    token_id = next(t["id"] for t in listed if t["name"] == "test viewer")
    controller.ok("DELETE", f"/v1/tokens/{token_id}")
    assert controller.get("/v1/hosts", token).status == 401


def test_secrets_are_write_only_and_encrypted_at_rest(controller: Controller,
                                                      database_url: str) -> None:
    site = controller.site(controller.tenant("Acme"), "Leeds")
    agent = controller.host(site, "pbx1", agent={"url": "https://10.9.0.5:8587",
                                                 "token": AGENT_SECRET})
    import paramiko

    from controller.app import create_app  # noqa: F401  (the app made the key from env)

    key = paramiko.Ed25519Key.generate() if hasattr(paramiko.Ed25519Key, "generate") else None
    private = _private_key_text()
    ssh = controller.ok("POST", "/v1/hosts", {
        "name": "pbx2", "site_id": site, "address": "10.9.0.6", "transport": "ssh",
        "ssh": {"username": "root", "private_key": private, "host_key": SSH_KEY_LINE}})
    pw = controller.ok("POST", "/v1/hosts", {
        "name": "pbx3", "site_id": site, "address": "10.9.0.7", "transport": "ssh",
        "ssh": {"username": "ops", "password": SSH_PASSWORD, "host_key": SSH_KEY_LINE,
                "sudo": True}})
    del key
    assert agent["agent"] == {"url": "https://10.9.0.5:8587", "ca_cert": None,
                              "has_token": True}
    assert ssh["ssh"]["auth"] == "key" and pw["ssh"]["auth"] == "password"
    job = controller.start_job({"action": "set_smarthost", "target": {"all": True},
                                "params": {"host": "relay.example.net", "auth": {
                                    "username": "pbx", "password": SMTP_PASSWORD}}})
    seen = [controller.get(p).json for p in (
        "/v1/hosts", f"/v1/hosts/{agent['id']}", f"/v1/hosts/{ssh['id']}", "/v1/fleet",
        f"/v1/jobs/{job}", "/v1/jobs", "/v1/audit")]
    everything = json.dumps(seen)
    for secret in (AGENT_SECRET, SSH_PASSWORD, SMTP_PASSWORD, "PRIVATE KEY"):
        assert secret not in everything
    job_doc = controller.ok("GET", f"/v1/jobs/{job}")
    assert job_doc["params"]["auth"] == {"username": "pbx"}
    # at rest: the columns hold Fernet tokens, not the secrets
    engine = create_engine(database_url)
    with engine.connect() as conn:
        dump = json.dumps([list(map(str, row)) for table in ("hosts", "jobs", "audit_events")
                           for row in conn.execute(text(f"SELECT * FROM {table}"))])
    engine.dispose()
    for secret in (AGENT_SECRET, SSH_PASSWORD, SMTP_PASSWORD, "PRIVATE KEY"):
        assert secret not in dump
    assert "gAAAAA" in dump  # Fernet's version byte, base64


def _private_key_text() -> str:
    import io

    import paramiko

    key = paramiko.RSAKey.generate(2048)
    out = io.StringIO()
    key.write_private_key(out)
    return out.getvalue()


def test_roles(controller: Controller, fleet: dict[str, Any]) -> None:
    body = {"action": "collect_status", "target": {"all": True}}
    viewer, operator = fleet["acme_viewer"], fleet["acme_operator"]
    answer = controller.post("/v1/jobs", body, viewer)
    assert answer.status == 403 and "operator" in answer.json["message"]
    assert controller.get("/v1/hosts", viewer).status == 200
    assert controller.post("/v1/hosts", {"name": "x", "site_id": fleet["sites"]["leeds"],
                                         "address": "192.0.2.1", "transport": "agent",
                                         "agent": {"url": "http://192.0.2.1:8587",
                                                   "token": "t" * 32}}, operator).status == 403
    assert controller.post("/v1/jobs", body, operator).status == 202
    assert controller.post("/v1/tenants", {"name": "New"}, fleet["acme_admin"]).status == 403
    assert controller.get("/v1/tokens", operator).status == 403


def test_tenant_scoped_tokens_see_and_touch_only_their_tenant(controller: Controller,
                                                              fleet: dict[str, Any]) -> None:
    hosts, sites = fleet["hosts"], fleet["sites"]
    admin, operator = fleet["acme_admin"], fleet["acme_operator"]
    listed = controller.ok("GET", "/v1/hosts", token=operator)
    assert {h["id"] for h in listed["items"]} == {hosts["a1"], hosts["a2"], hosts["a3"]}
    assert listed["total"] == 3
    assert {t["name"] for t in controller.ok("GET", "/v1/tenants", token=operator)["items"]} \
        == {"Acme"}
    assert {s["id"] for s in controller.ok("GET", "/v1/sites", token=operator)["items"]} == {
        sites["leeds"], sites["york"]}
    # another tenant's objects do not exist: 404, never 403
    for path in (f"/v1/hosts/{hosts['g1']}", f"/v1/sites/{sites['paris']}",
                 f"/v1/tenants/{fleet['globex']}"):
        assert controller.get(path, admin).status == 404, path
    assert controller.call("PATCH", f"/v1/hosts/{hosts['g1']}", admin,
                           {"address": "192.0.2.99"}).status == 404
    assert controller.call("DELETE", f"/v1/hosts/{hosts['g1']}", admin).status == 404
    assert controller.call("DELETE", f"/v1/sites/{sites['paris']}", admin).status == 404
    assert controller.post("/v1/sites", {"tenant_id": fleet["globex"], "name": "Evil"},
                           admin).status == 422
    assert controller.post("/v1/hosts", {"name": "x", "site_id": sites["paris"],
                                         "address": "192.0.2.1", "transport": "agent",
                                         "agent": {"url": "http://192.0.2.1:8587",
                                                   "token": "t" * 32}}, admin).status == 422
    # targets are cut down to the tenant: all, tags
    for target, expected in (({"all": True}, 3), ({"tags": ["shared"]}, 1),
                             ({"tags": ["pbx", "mail"]}, 3)):
        job = controller.start_job({"action": "collect_status", "target": target}, operator)
        doc = controller.ok("GET", f"/v1/jobs/{job}", token=operator)
        assert doc["counts"]["total"] == expected, target
        assert {r["host_id"] for r in doc["results"]} <= {hosts["a1"], hosts["a2"], hosts["a3"]}
    # naming another tenant's host, site or tenant is "not found"
    for target in ({"hosts": [hosts["g1"]]}, {"hosts": ["pbx-g1"]}, {"sites": [sites["paris"]]},
                   {"tenants": ["Globex"]}, {"tenants": [fleet["globex"]]}):
        answer = controller.post("/v1/jobs", {"action": "collect_status", "target": target},
                                 operator)
        assert answer.status == 422 and "not found" in json.dumps(answer.json), target
    # another tenant's job is 404 to read, cancel or retry
    other = controller.start_job({"action": "collect_status", "target": {"all": True}},
                                 fleet["globex_operator"])
    for method, path in (("GET", f"/v1/jobs/{other}"), ("POST", f"/v1/jobs/{other}/cancel"),
                         ("POST", f"/v1/jobs/{other}/retry")):
        assert controller.call(method, path, operator).status == 404
    assert other not in {j["id"] for j in controller.ok("GET", "/v1/jobs", token=operator)[
        "items"]}
    fleet_doc = controller.ok("GET", "/v1/fleet", token=operator)
    assert fleet_doc["summary"]["hosts"] == 3
    audit = controller.ok("GET", "/v1/audit", token=admin)["items"]
    assert audit and all(event["tenant_id"] == fleet["acme"] for event in audit)


def test_msp_wide_all_reaches_every_tenant(controller: Controller,
                                           fleet: dict[str, Any]) -> None:
    job = controller.start_job({"action": "collect_status", "target": {"all": True}})
    assert controller.ok("GET", f"/v1/jobs/{job}")["counts"]["total"] == 5
    job = controller.start_job({"action": "flush_queue", "target": {"sites": ["Leeds",
                                                                              "Paris"]}})
    assert controller.ok("GET", f"/v1/jobs/{job}")["counts"]["total"] == 4


def test_idempotency_key(controller: Controller, fleet: dict[str, Any]) -> None:
    body = {"action": "flush_queue", "target": {"all": True}}
    first = controller.post("/v1/jobs", body, headers={"Idempotency-Key": "ticket-42"})
    again = controller.post("/v1/jobs", body, headers={"Idempotency-Key": "ticket-42"})
    assert first.status == again.status == 202
    assert first.json == again.json
    assert controller.ok("GET", "/v1/jobs")["total"] == 1
    other = controller.post("/v1/jobs", {**body, "action": "collect_status"},
                            headers={"Idempotency-Key": "ticket-42"})
    assert other.status == 422 and "Idempotency-Key" in other.json["errors"]
    # keys are per token: another token's same key is another job
    mine = controller.post("/v1/jobs", body, fleet["acme_operator"],
                           headers={"Idempotency-Key": "ticket-42"})
    assert mine.status == 202 and mine.json["id"] != first.json["id"]
    # a request still being handled under the key: 409
    from controller.db import db
    from controller.idempotency import request_fingerprint
    from controller.models import IdempotencyKey, Token

    with controller.app.app_context(), db.transaction() as session:
        token = session.query(Token).filter(Token.name == "test admin").first()
        session.add(IdempotencyKey(token_id=token.id, key="busy",
                                   request_sha256=request_fingerprint(
                                       controller.app.extensions["relayfleet_fingerprint_key"],
                                       "POST", "/v1/jobs", body),
                                   state="in_progress"))
    busy = controller.post("/v1/jobs", body, headers={"Idempotency-Key": "busy"})
    assert busy.status == 409 and "still being handled" in busy.json["message"]
    # a refused request does not burn its key
    bad = {"action": "set_smarthost", "target": {"all": True}, "params": {"host": "x..y"}}
    assert controller.post("/v1/jobs", bad, headers={"Idempotency-Key": "k2"}).status == 422
    fixed = {**bad, "params": {"host": "relay.example.net"}}
    assert controller.post("/v1/jobs", fixed, headers={"Idempotency-Key": "k2"}).status == 202
    # host creation too
    host = {"name": "pbx-idem", "site_id": fleet["sites"]["leeds"], "address": "192.0.2.3",
            "transport": "agent", "agent": {"url": "http://192.0.2.3:8587", "token": "t" * 32}}
    one = controller.post("/v1/hosts", host, headers={"Idempotency-Key": "h1"})
    two = controller.post("/v1/hosts", host, headers={"Idempotency-Key": "h1"})
    assert one.status == two.status == 201 and one.json["id"] == two.json["id"]


HOSTILE_SMARTHOSTS = ["x')esyscmd(`id')dnl(`", "relay.example.net`", "a b", "$1.example.com",
                      "relay.example.net\nDSevil", "[IPv6:fe80::1%x')esyscmd(`id')]", "-q",
                      "a" * 300]


@pytest.mark.parametrize("value", HOSTILE_SMARTHOSTS)
def test_hostile_smarthost_is_refused(controller: Controller, fleet: dict[str, Any],
                                      value: str) -> None:
    answer = controller.post("/v1/jobs", {"action": "set_smarthost", "target": {"all": True},
                                          "params": {"host": value}})
    assert answer.status == 422, answer
    assert "params.host" in answer.json["errors"]
    assert controller.ok("GET", "/v1/jobs")["total"] == 0


@pytest.mark.parametrize(("body", "field"), [
    ({"action": "set_smarthost", "target": {"all": True},
      "params": {"host": "relay.example.net", "auth": {"username": "u", "password": "a\nb"}}},
     "params.auth.password"),
    ({"action": "flush_queue", "target": {"all": True}, "params": {"recipient": "a;rm -rf /"}},
     "params.recipient"),
    ({"action": "flush_queue", "target": {"all": True},
      "params": {"queue_id": "abcdef12", "sender": "x@y"}}, "params.queue_id"),
    ({"action": "read_log", "target": {"all": True}, "params": {"lines": 10**9}},
     "params.lines"),
    ({"action": "collect_status", "target": {"all": True}, "params": {"x": 1}}, "params.x"),
    ({"action": "collect_status", "target": {"all": True}, "options": {"dry_run": True}},
     "options.dry_run"),
    ({"action": "collect_status", "target": {}}, "target.target"),
    ({"action": "collect_status", "target": {"all": True, "tags": ["x"]}}, "target.target"),
    ({"action": "collect_status", "target": {"all": False}}, "target.all"),
    ({"action": "collect_status", "target": {"hosts": [True]}}, "target.hosts"),
    ({"action": "collect_status", "target": {"hosts": ["../etc"]}}, "target.hosts"),
    ({"action": "collect_status", "target": {"hosts": [99999]}}, "target.hosts"),
    ({"action": "collect_status", "target": {"tags": ["nope"]}}, "target"),
    ({"action": "rm -rf", "target": {"all": True}}, "action"),
    ({"action": "collect_status", "target": {"all": True}, "options": {"timeout_s": 100000}},
     "options.timeout_s"),
    ({"action": "collect_status", "target": {"all": True}, "options": {"concurrency": 0}},
     "options.concurrency"),
    ({"action": "collect_status", "target": {"all": True},
      "callback_url": "file:///etc/passwd"}, "callback_url"),
    ({"action": "collect_status", "target": {"all": True}, "extra": 1}, "extra"),
])
def test_bad_job_requests_are_refused_with_the_field(controller: Controller,
                                                     fleet: dict[str, Any], body: Any,
                                                     field: str) -> None:
    answer = controller.post("/v1/jobs", body)
    assert answer.status == 422, answer
    assert field in answer.json["errors"], answer.json
    assert answer.json["message"]


def test_malformed_and_huge_bodies(controller: Controller, fleet: dict[str, Any]) -> None:
    raw = controller.client.post("/v1/jobs", data="{not json", headers={
        "Authorization": f"Bearer {controller.admin}", "Content-Type": "application/json"})
    assert raw.status_code in (400, 422) and raw.get_json()["message"]
    huge = {"action": "collect_status", "target": {"hosts": ["h" * 200] * 30000}}
    answer = controller.post("/v1/jobs", huge)
    assert answer.status == 413 and answer.json["code"] == 413
    assert controller.post("/v1/jobs", [1, 2, 3]).status == 422


def test_hosts_validation(controller: Controller, fleet: dict[str, Any]) -> None:
    leeds = fleet["sites"]["leeds"]
    base = {"name": "pbx-new", "site_id": leeds, "address": "192.0.2.5", "transport": "agent",
            "agent": {"url": "http://192.0.2.5:8587", "token": "t" * 32}}
    for change, field in (({"address": "a;id"}, "address"),
                          ({"transport": "telnet"}, "transport"),
                          ({"agent": {"url": "http://u:p@h:1", "token": "t" * 32}}, "agent.url"),
                          ({"agent": {"url": "http://192.0.2.5:8587"}}, "agent.token"),
                          ({"transport": "ssh", "ssh": {"username": "root",
                                                       "password": "x",
                                                       "host_key": "not a key"}},
                           "ssh.host_key"),
                          ({"transport": "ssh", "ssh": {"username": "root",
                                                       "host_key": SSH_KEY_LINE}},
                           "ssh.private_key"),
                          ({"mta": {"overrides": {"restart": "rm -rf /"}}}, "mta.overrides"),
                          ({"mta": {"overrides": {"mail_dir": "../../etc"}}}, "mta.overrides"),
                          ({"tags": ["ok", "not ok"]}, "tags.1"),
                          ({"site_id": 99999}, "site_id")):
        answer = controller.post("/v1/hosts", {**base, **change})
        assert answer.status == 422, (change, answer)
        assert field in answer.json["errors"], (field, answer.json)
    assert controller.post("/v1/hosts", base).status == 201
    duplicate = controller.post("/v1/hosts", base)
    assert duplicate.status == 409 and "already exists" in duplicate.json["message"]


def test_bulk_import_is_all_or_nothing(controller: Controller, fleet: dict[str, Any]) -> None:
    leeds = fleet["sites"]["leeds"]

    def row(i: int, **extra: Any) -> dict[str, Any]:
        return {"name": f"bulk-{i:03}", "site_id": leeds,
                "address": f"10.20.{i // 250}.{i % 250 + 1}",
                "transport": "agent", "tags": ["bulk"],
                "agent": {"url": f"http://10.20.0.{i % 250 + 1}:8587", "token": "t" * 32},
                **extra}

    rows = [row(i) for i in range(300)]
    rows[7]["address"] = "bad address"
    rows[42] = {**rows[42], "site_id": fleet["sites"]["paris"]}
    rows[99] = dict(rows[98])
    answer = controller.post("/v1/hosts/import", {"hosts": rows}, fleet["acme_admin"])
    assert answer.status == 422
    assert {"hosts.7.address", "hosts.42.site_id", "hosts.99.name"} <= set(answer.json["errors"])
    assert controller.ok("GET", "/v1/hosts?tag=bulk")["total"] == 0
    good = [row(i) for i in range(300)]
    done = controller.ok("POST", "/v1/hosts/import", {"hosts": good}, fleet["acme_admin"],
                         expect=201)
    assert done["created"] == 300
    page = controller.ok("GET", "/v1/hosts?tag=bulk&limit=50&offset=100")
    assert page["total"] == 300 and len(page["items"]) == 50
    assert page["items"][0]["name"] == "bulk-100"
    assert controller.ok("GET", "/v1/hosts?name=bulk-29")["total"] == 10
    assert controller.get("/v1/hosts?limit=100000").status == 422


def test_cancel_and_retry_rules(controller: Controller, fleet: dict[str, Any]) -> None:
    job = controller.start_job({"action": "collect_status", "target": {"all": True}})
    assert controller.post(f"/v1/jobs/{job}/retry").status == 409
    cancelled = controller.ok("POST", f"/v1/jobs/{job}/cancel")
    assert cancelled["status"] == "cancelled"
    assert cancelled["counts"]["skipped"] == 5 and cancelled["finished_at"]
    assert {r["error"] for r in cancelled["results"]} == {"cancelled before it started"}
    assert controller.post(f"/v1/jobs/{job}/cancel").status == 409
    assert controller.post(f"/v1/jobs/{job}/cancel", token=fleet["acme_viewer"]).status in (
        403, 404)
    assert controller.post(f"/v1/jobs/{job}/retry").status == 422  # nothing failed


def test_audit_log_records_mutations(controller: Controller, fleet: dict[str, Any]) -> None:
    viewer = fleet["acme_viewer"]
    controller.post("/v1/jobs", {"action": "collect_status", "target": {"all": True}}, viewer)
    job = controller.start_job({"action": "flush_queue", "target": {"all": True}})
    events = controller.ok("GET", "/v1/audit")["items"]
    started = next(e for e in events if e["target"] == f"job:{job}")
    assert started["action"] == "POST /v1/jobs" and started["outcome"] == 202
    assert started["token_name"] == "test admin"
    assert started["detail"] == {"action": "flush_queue", "hosts": 5}
    refused = next(e for e in events if e["outcome"] == 403)
    assert refused["action"] == "POST /v1/jobs" and refused["tenant_id"] == fleet["acme"]
    made = [e for e in events if e["action"] == "POST /v1/hosts"]
    assert len(made) == 5 and all(e["outcome"] == 201 for e in made)
    assert controller.ok("GET", "/v1/audit?action=POST /v1/tenants")["total"] == 2


def test_metrics_docs_and_openapi(controller: Controller, fleet: dict[str, Any]) -> None:
    controller.start_job({"action": "flush_queue", "target": {"all": True}})
    metrics = controller.client.get("/metrics", headers={
        "Authorization": f"Bearer {controller.admin}"}).get_data(as_text=True)
    assert 'relayfleet_jobs{action="flush_queue",status="queued"} 1.0' in metrics
    assert 'relayfleet_fleet{measure="hosts"} 5.0' in metrics
    assert "relayfleet_http_requests_total" in metrics
    docs = controller.client.get("/docs", headers={
        "Authorization": f"Bearer {controller.admin}"}).get_data(as_text=True)
    spec = controller.ok("GET", "/openapi.json")
    for path in spec["paths"]:
        assert f"<code>{path.replace('{', '{')}</code>" in docs
    for path in ("/v1/jobs", "/v1/jobs/{job_id}/retry", "/v1/hosts/import", "/v1/fleet",
                 "/v1/audit", "/v1/tokens"):
        assert path in spec["paths"]
    assert "password" not in json.dumps(spec["components"]["schemas"]["Host"])


def test_lanes_claim_each_host_once_and_stop_past_max_failures(
        controller: Controller, fleet: dict[str, Any]) -> None:
    """The claiming rules on a real database (the lab tests run them through a worker)."""
    import time

    from sqlalchemy import update

    from controller.db import db
    from controller.lanes import Lane, finish_job
    from controller.models import JobHost

    job = controller.start_job({"action": "collect_status", "target": {"all": True},
                                "options": {"max_failures": 1, "timeout_s": 30}})
    with controller.app.app_context():
        lane = Lane(job, 0)
        settings = lane.load()
        assert settings is not None
        first = lane.claim(settings)
        second = lane.claim(settings)
        assert first and second and first.unit_id != second.unit_id
        assert first.attempt == second.attempt == 1
        assert first.host and lane._spec(first.host).agent_token == "t" * 32
        # a claimed unit whose lease ran out (its worker died) is claimed again
        with db.transaction() as session:
            session.execute(update(JobHost).where(JobHost.id == first.unit_id)
                            .values(lease_until=time.time() - 1))
        again = lane.claim(settings)
        assert again and (again.unit_id, again.attempt) == (first.unit_id, 2)
        # two hosts failed (more than max_failures=1): nothing new starts
        lane.record(settings, again, status="failed", error="boom", result=None)
        lane.record(settings, second, status="unreachable", error="down", result=None)
        # a late result of an attempt that was overtaken is dropped
        lane.record(settings, first, status="succeeded", error=None, result=None)
        assert lane.claim(settings) is None
        finish_job(db, job)
    doc = controller.ok("GET", f"/v1/jobs/{job}")
    assert doc["status"] == "failed"
    assert doc["counts"] == {"total": 5, "pending": 0, "running": 0, "succeeded": 0,
                             "failed": 1, "unreachable": 1, "skipped": 3}
    skipped = [r for r in doc["results"] if r["status"] == "skipped"]
    assert {r["error"] for r in skipped} == {"not started: more than 1 hosts failed"}
    failed = next(r for r in doc["results"] if r["status"] == "failed")
    assert failed["attempts"] == 2 and failed["error"] == "boom"
    fleet_doc = controller.ok("GET", "/v1/fleet")
    assert fleet_doc["summary"]["unreachable"] == 1
    down = next(i for i in fleet_doc["items"] if i["host_id"] == second.host_id)
    assert down["last"]["reachable"] is False and down["last"]["error"] == "down"
    light = controller.ok("GET", f"/v1/jobs/{job}?results=false")
    assert "results" not in light and light["counts"]["skipped"] == 3


def test_a_dead_workers_host_does_not_hold_a_cancelled_job_open(
        controller: Controller, fleet: dict[str, Any]) -> None:
    import time

    from sqlalchemy import update

    from controller.db import db
    from controller.lanes import Lane, finish_job
    from controller.ledger import MAX_ATTEMPTS
    from controller.models import JobHost

    job = controller.start_job({"action": "collect_status", "target": {"all": True},
                                "options": {"timeout_s": 30}})
    with controller.app.app_context():
        lane = Lane(job, 0)
        settings = lane.load()
        assert settings is not None
        dead = lane.claim(settings)  # its worker "dies": never recorded
        assert dead is not None
    cancelled = controller.ok("POST", f"/v1/jobs/{job}/cancel")
    assert cancelled["status"] == "cancelled" and cancelled["finished_at"] is None
    assert cancelled["counts"]["running"] == 1
    with controller.app.app_context():
        with db.transaction() as session:
            session.execute(update(JobHost).where(JobHost.id == dead.unit_id)
                            .values(lease_until=time.time() - 1))
        assert lane.claim(settings) is None
        finish_job(db, job)
    doc = controller.ok("GET", f"/v1/jobs/{job}")
    assert doc["status"] == "cancelled" and doc["finished_at"]
    lost = next(r for r in doc["results"] if r["host_id"] == dead.host_id)
    assert lost["status"] == "failed" and "the job was cancelled" in lost["error"]
    # a host whose worker died MAX_ATTEMPTS times is not run again
    job2 = controller.start_job({"action": "collect_status", "target": {"all": True},
                                 "options": {"timeout_s": 30}})
    with controller.app.app_context():
        lane = Lane(job2, 0)
        settings = lane.load()
        assert settings is not None
        claim = None
        for _ in range(MAX_ATTEMPTS + 1):
            claim = lane.claim(settings)
            assert claim is not None
            with db.transaction() as session:
                session.execute(update(JobHost).where(JobHost.id == claim.unit_id)
                                .values(lease_until=time.time() - 1))
        assert claim is not None and claim.attempt == MAX_ATTEMPTS + 1
        lane.run_unit(settings, claim)
    result = next(r for r in controller.ok("GET", f"/v1/jobs/{job2}")["results"]
                  if r["host_id"] == claim.host_id)
    assert result["status"] == "failed" and "stopped 3 times" in result["error"]


def test_host_patch(controller: Controller, fleet: dict[str, Any]) -> None:
    host_id = fleet["hosts"]["a1"]
    path = f"/v1/hosts/{host_id}"
    # partial nested objects are refused with the field, never a 500
    for body, field in (({"ssh": {"host_key": SSH_KEY_LINE}}, "ssh.username"),
                        ({"agent": {"token": "u" * 32}}, "agent.url"),
                        ({"transport": "ssh", "ssh": {"username": "root",
                                                      "host_key": SSH_KEY_LINE}},
                         "ssh.private_key")):
        answer = controller.call("PATCH", path, body=body)
        assert answer.status == 422 and field in answer.json["errors"], (body, answer)
    # the stored token is not sent to a new URL unless it is given again
    moved = controller.call("PATCH", path, body={"agent": {"url": "http://203.0.113.9:80"}})
    assert moved.status == 422 and "agent.token" in moved.json["errors"]
    same = controller.ok("PATCH", path, {"agent": {"url": "http://192.0.2.10:8587"},
                                         "tags": ["changed"]})
    assert same["agent"]["has_token"] and same["tags"] == ["changed"]
    again = controller.ok("PATCH", path, {"agent": {"url": "https://192.0.2.10:8587",
                                                    "token": "v" * 32}, "name": "pbx-a1b"})
    assert again["agent"]["url"] == "https://192.0.2.10:8587" and again["name"] == "pbx-a1b"
    assert controller.call("PATCH", path, body={"name": "bad name!"}).status == 422


def test_ids_of_deleted_objects_are_never_reused(controller: Controller) -> None:
    """A new tenant must not inherit a deleted one's id (and with it audit rows)."""
    old = controller.tenant("Old")
    controller.ok("DELETE", f"/v1/tenants/{old}")
    new = controller.tenant("New")
    assert new > old
    token = controller.issue("viewer", new)
    assert all(e["tenant_id"] == new for e in controller.ok("GET", "/v1/audit",
                                                              token=token)["items"])


def test_nul_characters_are_refused_not_a_server_error(controller: Controller,
                                                       fleet: dict[str, Any]) -> None:
    for path in ("/v1/hosts?name=%00", "/v1/fleet?name=a%00b", "/v1/audit?action=%00"):
        answer = controller.get(path)
        assert answer.status == 422 and "NUL" in answer.json["message"], path
    raw = controller.client.post("/v1/tenants", data='{"name": "a\\u0000b"}', headers={
        "Authorization": f"Bearer {controller.admin}", "Content-Type": "application/json"})
    assert raw.status_code == 422
    answer = controller.post("/v1/jobs", {"action": "collect_status", "target": {"all": True},
                                          "callback_url": "http://a\x00b.example/"})
    assert answer.status == 422


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_broker_down_is_503_and_the_key_keeps_that_answer(
        controller_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.lab.services import free_port

    monkeypatch.setenv("RELAYFLEET_BROKER_URL", f"redis://127.0.0.1:{free_port()}/0")
    controller = Controller.create()
    site = controller.site(controller.tenant("Acme"), "Leeds")
    controller.host(site, "pbx1")
    body = {"action": "flush_queue", "target": {"all": True}}
    first = controller.post("/v1/jobs", body, headers={"Idempotency-Key": "down"})
    assert first.status == 503 and "RELAYFLEET_BROKER_URL" in first.json["message"]
    again = controller.post("/v1/jobs", body, headers={"Idempotency-Key": "down"})
    assert again.status == 503 and again.json == first.json
    jobs = controller.ok("GET", "/v1/jobs")["items"]
    assert len(jobs) == 1 and jobs[0]["status"] == "failed"
    assert jobs[0]["counts"]["skipped"] == 1


def test_tenant_admins_cannot_set_commands_or_see_everyones_http_metrics(
        controller: Controller, fleet: dict[str, Any]) -> None:
    admin = fleet["acme_admin"]
    body = {"name": "pbx-cmd", "site_id": fleet["sites"]["leeds"], "address": "192.0.2.7",
            "transport": "agent", "agent": {"url": "http://192.0.2.7:8587", "token": "t" * 32},
            "mta": {"overrides": {"restart": ["/bin/sh", "-c", "id"]}}}
    answer = controller.post("/v1/hosts", body, admin)
    assert answer.status == 403 and "restart" in answer.json["message"]
    # no overrides at all: paths are root-level power too (test_tenant_admins_cannot_set_paths)
    allowed = {**body, "mta": {"overrides": {}}}
    assert controller.post("/v1/hosts", allowed, admin).status == 201
    assert controller.post("/v1/hosts", {**body, "name": "pbx-cmd2"}).status == 201
    scoped = controller.client.get("/metrics", headers={"Authorization": f"Bearer {admin}"})
    assert b"relayfleet_http_requests_total" not in scoped.data
    assert b'relayfleet_fleet{measure="hosts"} 5.0' in scoped.data


def test_tenant_admins_cannot_set_paths(controller: Controller, fleet: dict[str, Any]) -> None:
    """Profile paths are root-level power: an mc pointed at the authinfo file
    ran a password through m4 as root; only MSP-wide admins set any override."""
    admin = fleet["acme_admin"]
    chain = {"mc": "/etc/mail/authinfo"}
    paths = [{"maillog": "/var/log/maillog"}, {"pid_file": "/run/sendmail.pid"},
             {"mail_dir": "/etc/mail2"}]
    body = {"name": "pbx-paths", "site_id": fleet["sites"]["leeds"], "address": "192.0.2.8",
            "transport": "agent", "agent": {"url": "http://192.0.2.8:8587", "token": "t" * 32}}
    for overrides in paths:
        created = controller.post("/v1/hosts", {**body, "mta": {"overrides": overrides}}, admin)
        assert created.status == 403, (overrides, created)
        assert "MSP-wide admin" in created.json["message"]
        imported = controller.post("/v1/hosts/import",
                                   {"hosts": [{**body, "mta": {"overrides": overrides}}]}, admin)
        assert imported.status == 403, (overrides, imported)
    host = fleet["hosts"]["a1"]
    patched = controller.call("PATCH", f"/v1/hosts/{host}", admin,
                              {"mta": {"overrides": paths[0]}})
    assert patched.status == 403 and "MSP-wide admin" in patched.json["message"]
    # An MSP-wide admin may set them; the tenant admin may then send them back unchanged.
    set_by_msp = controller.ok("PATCH", f"/v1/hosts/{host}", {"mta": {"overrides": paths[0]}})
    assert set_by_msp["mta"]["overrides"] == paths[0]
    controller.ok("PATCH", f"/v1/hosts/{host}", {"mta": {"overrides": paths[0]},
                                                 "tags": ["kept"]}, admin)
    # Nobody may point a path outside what its key means: 422 naming the key.
    for overrides, key in ((chain, "mc"), ({"pid_file": "/etc/shadow"}, "pid_file"),
                           ({"cf": "/etc/cron.d/x"}, "cf"), ({"mail_dir": "/tmp/mail"},
                                                             "mail_dir"),
                           ({"maillog": "/var/log/../../etc/shadow"}, "maillog"),
                           ({"queue_dir": "/var/spool/mqueue\n"}, "queue_dir")):
        for token in (None, admin):
            refused = controller.post("/v1/hosts", {**body, "mta": {"overrides": overrides}},
                                      token)
            assert refused.status == 422, (overrides, refused)
            assert f"mta.{key}" in json.dumps(refused.json["errors"]), refused.json
    assert controller.ok("GET", "/v1/hosts?name=pbx-paths")["total"] == 0


def test_deleted_hosts_leave_inventory_and_targets_but_keep_their_job_results(
        controller: Controller, fleet: dict[str, Any]) -> None:
    a1 = fleet["hosts"]["a1"]
    job = controller.start_job({"action": "collect_status", "target": {"hosts": [a1]}})
    controller.ok("DELETE", f"/v1/hosts/{a1}")
    assert controller.get(f"/v1/hosts/{a1}").status == 404
    assert a1 not in [h["id"] for h in controller.ok("GET", "/v1/hosts?limit=100")["items"]]
    fleet_doc = controller.ok("GET", "/v1/fleet?limit=100")
    assert a1 not in [h["host_id"] for h in fleet_doc["items"]]
    assert fleet_doc["summary"]["hosts"] == 4
    targeted = controller.post("/v1/jobs", {"action": "collect_status",
                                            "target": {"hosts": ["pbx-a1"]}})
    assert targeted.status == 422
    everything = controller.start_job({"action": "collect_status", "target": {"all": True}})
    assert len(controller.ok("GET", f"/v1/jobs/{everything}")["results"]) == 4
    results = controller.ok("GET", f"/v1/jobs/{job}")["results"]
    assert [(r["host_id"], r["host"]) for r in results] == [(a1, "pbx-a1")]
    again = controller.host(fleet["sites"]["leeds"], "pbx-a1")
    assert again["id"] != a1


# PostgreSQL only: on SQLite (one writer) a second request simply waits for the first.
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_an_idempotency_key_is_not_taken_over_while_its_request_works(
        controller: Controller, fleet: dict[str, Any], database_url: str) -> None:
    body = {"action": "flush_queue", "target": {"all": True}}
    first = controller.post("/v1/jobs", body, headers={"Idempotency-Key": "long"})
    assert first.status == 202
    engine = create_engine(database_url)
    try:
        with engine.begin() as conn:  # a first request that started long ago, still working
            conn.execute(text("UPDATE idempotency_keys SET state = 'in_progress', "
                              "created_at = created_at - interval '1 hour' WHERE key = 'long'"))
        with engine.connect() as owner:
            owner.begin()
            owner.execute(text("SELECT id FROM idempotency_keys WHERE key = 'long' "
                               "FOR UPDATE"))
            assert controller.post("/v1/jobs", body,
                                   headers={"Idempotency-Key": "long"}).status == 409
            owner.rollback()
        # its owner gone (the lock went with its connection): the key is taken over
        taken = controller.post("/v1/jobs", body, headers={"Idempotency-Key": "long"})
        assert taken.status == 202 and taken.json["id"] != first.json["id"]
    finally:
        engine.dispose()


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
@pytest.mark.parametrize("first_ends", ["commits", "fails"])
def test_a_second_request_under_a_key_waits_for_the_first_and_answers_as_it_did(
        controller: Controller, database_url: str, first_ends: str) -> None:
    """The key is taken in the create's own transaction: a second request under it, sent
    while the first works, waits for the first to end. If the first commits, the second
    answers the first's answer and creates nothing; if it fails, the second creates."""
    from controller.auth import Principal
    from controller.db import db
    from controller.idempotency import idempotent

    who = Principal(token_id=1, name="admin", role="admin", tenant_id=None)
    created: list[str] = []
    inside, release = threading.Event(), threading.Event()

    def first() -> None:
        def create() -> tuple[int, dict[str, Any]]:
            created.append("first")
            inside.set()
            assert release.wait(30)
            if first_ends == "fails":
                raise RuntimeError("the first request fails")
            return 202, {"made_by": "first"}

        with controller.app.app_context(), contextlib.suppress(RuntimeError):
            idempotent(db.session, who, "race", "f" * 64, create)

    def second(answers: list[tuple[int, dict[str, Any]]]) -> None:
        def create() -> tuple[int, dict[str, Any]]:
            created.append("second")
            return 202, {"made_by": "second"}

        with controller.app.app_context():
            answers.append(idempotent(db.session, who, "race", "f" * 64, create))

    answers: list[tuple[int, dict[str, Any]]] = []
    owner = threading.Thread(target=first)
    owner.start()
    assert inside.wait(30)
    retry = threading.Thread(target=second, args=(answers,))
    retry.start()
    retry.join(1.0)
    # still waiting for the first: however long it works, the second creates nothing
    assert retry.is_alive() and created == ["first"]
    release.set()
    owner.join(30)
    retry.join(30)
    assert not owner.is_alive() and not retry.is_alive()
    if first_ends == "commits":
        assert answers == [(202, {"made_by": "first"})] and created == ["first"]
    else:
        assert answers == [(202, {"made_by": "second"})] and created == ["first", "second"]


# -- egress policy and agent TLS ----------------------------------------------------------

REFUSED_URLS = ["http://127.0.0.1:8587", "https://127.1:8587", "http://localhost:8587",
                "http://169.254.169.254", "https://[fe80::1]:8587",
                "https://[::ffff:169.254.169.254]:8587", "http://0.0.0.0:8587",
                "http://[::1]:8587", "http://224.0.0.1:8587"]


@pytest.mark.parametrize("url", REFUSED_URLS)
def test_internal_addresses_are_refused_as_agent_and_callback_urls(
        controller: Controller, url: str) -> None:
    strict = Controller.create(egress_allow="")  # the default policy, not the tests' own
    site = strict.site(strict.tenant("Acme"), "Leeds")
    body = {"name": "pbx1", "site_id": site, "address": "192.0.2.10", "transport": "agent",
            "agent": {"url": url, "token": "t" * 32}}
    created = strict.post("/v1/hosts", body)
    assert created.status == 422, created
    assert "refused by egress policy" in created.json["errors"]["agent.url"][0]
    imported = strict.post("/v1/hosts/import", {"hosts": [body]})
    assert imported.status == 422 and "hosts.0.agent.url" in imported.json["errors"]
    host = strict.host(site, "pbx2")
    patched = strict.call("PATCH", f"/v1/hosts/{host['id']}",
                          body={"agent": {"url": url, "token": "t" * 32}})
    assert patched.status == 422 and "agent.url" in patched.json["errors"]
    job = strict.post("/v1/jobs", {"action": "collect_status", "target": {"all": True},
                                   "callback_url": url + "/hook"},
                      headers={"Idempotency-Key": "egress"})
    assert job.status == 422, job
    assert "refused by egress policy" in job.json["errors"]["callback_url"][0]


def test_private_addresses_stay_allowed_and_the_allow_list_narrows(
        controller: Controller) -> None:
    strict = Controller.create(egress_allow="")
    site = strict.site(strict.tenant("Acme"), "Leeds")
    for n, url in enumerate(["https://10.1.2.3:8587", "https://192.168.7.7:8587",
                             "https://pbx.customer.example:8587"]):
        strict.host(site, f"pbx{n}", agent={"url": url, "token": "t" * 32})
    narrow = Controller.create(egress_allow="10.8.0.0/16,hooks.example.net")
    body = {"action": "collect_status", "target": {"all": True}}
    outside = narrow.post("/v1/jobs", {**body, "callback_url": "https://203.0.113.5/h"},
                          headers={"Idempotency-Key": "narrow"})
    assert outside.status == 422
    assert "refused by egress policy" in outside.json["errors"]["callback_url"][0]
    # loopback needs the word itself; the tests' own controller has it
    assert controller.host(controller.site(controller.tenant("Local"), "Box"), "pbx-local",
                           agent={"url": "http://127.0.0.1:8587", "token": "t" * 32,
                                  "insecure_http": True})["agent"]["insecure_http"] is True


def test_the_agents_certificate_fingerprint_is_pinned_per_host(
        controller: Controller) -> None:
    site = controller.site(controller.tenant("Acme"), "Leeds")
    pin = "AB:" * 31 + "CD"
    host = controller.host(site, "pbx1", agent={"url": "https://10.9.0.5:8587",
                                                "token": "t" * 32,
                                                "tls_fingerprint": f"sha256:{pin}"})
    assert host["agent"]["tls_fingerprint"] == "ab" * 31 + "cd"
    assert "insecure_http" not in host["agent"]
    bad = controller.call("PATCH", f"/v1/hosts/{host['id']}",
                          body={"agent": {"url": "https://10.9.0.5:8587",
                                          "tls_fingerprint": "not-a-fingerprint"}})
    assert bad.status == 422 and "agent.tls_fingerprint" in bad.json["errors"]
    cleared = controller.ok("PATCH", f"/v1/hosts/{host['id']}",
                            {"agent": {"url": "https://10.9.0.5:8587",
                                       "tls_fingerprint": None}})
    assert "tls_fingerprint" not in cleared["agent"]
