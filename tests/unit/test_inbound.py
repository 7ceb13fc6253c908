"""Inbound ticketing hooks: signatures (Zendesk's and the generic one), JSON pointers, the
mapping from a payload to a job, and the API and CLI against the real controller app
(SQLite, in-memory broker): who may make hooks, what a signed request starts, what a
replay answers (the first job, nothing new), and what is refused (a bad signature, a
stale timestamp, an action or host outside the hook's reach)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy import select, update

from controller import inbound
from controller.client.api import ApiClient
from controller.client.config import Connection
from controller.client.context import Cli
from controller.client.errors import CliError
from controller.client.main import cli
from controller.config import load_settings
from controller.db import db, utcnow
from controller.models import AuditEvent, InboundDelivery, Job, Token
from shared.errors import ValidationError
from tests.controller_client import Answer, Controller

SECRET = b"s3cret-0123456789-abcdef"
NOW = dt.datetime(2026, 12, 3, 10, 0, 0, tzinfo=dt.UTC)
BODY = b'{"ticket": {"id": 4711, "host": "pbx1", "action": "flush_queue"}}'

MAPPING = {"actions": ["flush_queue", "collect_status"],
           "action": {"pointer": "/ticket/action"}, "host": {"pointer": "/ticket/host"},
           "params": {"reset_host_status": {"value": True}},
           "reference": {"pointer": "/ticket/id"}}


# -- signatures ----------------------------------------------------------------------------

def _zendesk_headers(secret: bytes, stamp: str, body: bytes) -> dict[str, str]:
    """What Zendesk sends, computed here from its documented formula (not the module's)."""
    mac = hmac.new(secret, stamp.encode() + body, hashlib.sha256).digest()
    return {"X-Zendesk-Webhook-Signature": base64.b64encode(mac).decode(),
            "X-Zendesk-Webhook-Signature-Timestamp": stamp}


def test_zendesk_signature_is_base64_hmac_over_timestamp_then_body() -> None:
    headers = _zendesk_headers(SECRET, "2026-12-03T10:00:00Z", BODY)
    verified = inbound.verify("zendesk", SECRET, headers, BODY, now=NOW, window_s=300)
    assert verified.timestamp == NOW
    assert inbound.sign("zendesk", SECRET, BODY, NOW) == headers
    # body then timestamp (the other order) is not Zendesk's signature
    mac = hmac.new(SECRET, BODY + b"2026-12-03T10:00:00Z", hashlib.sha256).digest()
    swapped = {**headers, "X-Zendesk-Webhook-Signature": base64.b64encode(mac).decode()}
    with pytest.raises(inbound.BadSignature):
        inbound.verify("zendesk", SECRET, swapped, BODY, now=NOW, window_s=300)


def test_generic_signature_is_the_callbacks_format() -> None:
    stamp = str(int(NOW.timestamp()))
    mac = hmac.new(SECRET, stamp.encode() + b"." + BODY, hashlib.sha256).hexdigest()
    headers = {"X-Relayfleet-Timestamp": stamp, "X-Relayfleet-Signature": f"sha256={mac}"}
    assert inbound.sign("generic", SECRET, BODY, NOW) == headers
    inbound.verify("generic", SECRET, headers, BODY, now=NOW, window_s=300)
    upper = {**headers, "X-Relayfleet-Signature": f"sha256={mac.upper()}"}
    inbound.verify("generic", SECRET, upper, BODY, now=NOW, window_s=300)


@pytest.mark.parametrize("fmt", ["zendesk", "generic"])
def test_a_changed_body_wrong_key_or_malformed_header_is_a_bad_signature(fmt: str) -> None:
    headers = inbound.sign(fmt, SECRET, BODY, NOW)
    signature = next(k for k in headers if k.endswith("Signature"))
    stamp = next(k for k in headers if k.endswith("Timestamp"))
    cases: list[tuple[dict[str, str], bytes, bytes]] = [
        (headers, BODY + b" ", SECRET),
        (headers, BODY, SECRET + b"x"),
        ({**headers, signature: headers[signature][:-4]}, BODY, SECRET),
        ({**headers, signature: "not base64 or hex!"}, BODY, SECRET),
        ({**headers, signature: ""}, BODY, SECRET),
        ({stamp: headers[stamp]}, BODY, SECRET),
        ({**headers, stamp: headers[stamp] + "0"}, BODY, SECRET),
        ({**headers, signature: "A" * 500}, BODY, SECRET),
    ]
    for sent, body, key in cases:
        with pytest.raises(inbound.BadSignature):
            inbound.verify(fmt, key, sent, body, now=NOW, window_s=300)


@pytest.mark.parametrize("fmt", ["zendesk", "generic"])
def test_a_timestamp_outside_the_window_is_refused_either_way(fmt: str) -> None:
    for offset, word in ((301, "behind"), (-301, "ahead of")):
        headers = inbound.sign(fmt, SECRET, BODY, NOW - dt.timedelta(seconds=offset))
        with pytest.raises(inbound.OutsideWindow, match=f"301 s {word}"):
            inbound.verify(fmt, SECRET, headers, BODY, now=NOW, window_s=300)
    headers = inbound.sign(fmt, SECRET, BODY, NOW - dt.timedelta(seconds=299))
    inbound.verify(fmt, SECRET, headers, BODY, now=NOW, window_s=300)


@pytest.mark.parametrize("stamp", ["999999999999", "253402300800"])
def test_a_signed_timestamp_beyond_any_date_is_outside_the_window(stamp: str) -> None:
    signature = "sha256=" + hmac.new(SECRET, stamp.encode() + b"." + BODY,
                                     hashlib.sha256).hexdigest()
    headers = {"X-Relayfleet-Timestamp": stamp, "X-Relayfleet-Signature": signature}
    with pytest.raises(inbound.OutsideWindow, match="ahead of"):
        inbound.verify("generic", SECRET, headers, BODY, now=NOW, window_s=300)


def test_the_replay_digest_is_the_same_for_the_same_request_only() -> None:
    one = inbound.verify("zendesk", SECRET, inbound.sign("zendesk", SECRET, BODY, NOW), BODY,
                         now=NOW, window_s=300)
    again = inbound.verify("zendesk", SECRET, inbound.sign("zendesk", SECRET, BODY, NOW),
                           BODY, now=NOW, window_s=300)
    later = NOW + dt.timedelta(seconds=1)
    other = inbound.verify("zendesk", SECRET, inbound.sign("zendesk", SECRET, BODY, later),
                           BODY, now=NOW, window_s=300)
    assert one.digest == again.digest != other.digest


# -- JSON pointers and the mapping ---------------------------------------------------------

def test_json_pointers_follow_rfc_6901() -> None:
    doc = {"a/b": {"m~n": [10, 20]}, "": 1, "list": [{"x": "y"}]}
    assert inbound.resolve_pointer(doc, "") == doc
    assert inbound.resolve_pointer(doc, "/a~1b/m~0n/1") == 20
    assert inbound.resolve_pointer(doc, "/") == 1
    assert inbound.resolve_pointer(doc, "/list/0/x") == "y"
    for missing in ("/nope", "/list/1", "/list/01", "/list/-", "/a~1b/m~0n/1/deeper",
                    "no-slash"):
        with pytest.raises(LookupError):
            inbound.resolve_pointer(doc, missing)


def test_a_payload_maps_to_a_job_document() -> None:
    payload = json.loads(BODY)
    job = inbound.build_job(MAPPING, payload, "https://bridge.example.net/rf?x=1")
    assert job == {"action": "flush_queue", "target": {"hosts": ["pbx1"]},
                   "params": {"reset_host_status": True}, "options": {},
                   "callback_url": "https://bridge.example.net/rf?x=1&reference=4711"}
    payload["ticket"]["host"] = ["pbx1", 7]
    assert inbound.build_job(MAPPING, payload, None)["target"] == {"hosts": ["pbx1", 7]}
    assert inbound.build_job(MAPPING, payload, None)["callback_url"] is None


@pytest.mark.parametrize(("change", "field", "reason"), [
    ({"action": "set_smarthost"}, "action", "set_smarthost is not an action this hook allows"),
    ({"action": ["flush_queue"]}, "action", "that value is not an action"),
    ({"host": []}, "host", "a list of 1-50"),
    ({"host": True}, "host", "a host name or id"),
    ({"host": {"name": "pbx1"}}, "host", "a host name or id"),
    ({"id": "4711&evil=1"}, "reference", "a ticket id"),
    ({"id": None}, "reference", "a ticket id"),
])
def test_a_payload_outside_the_mapping_is_refused_by_name(change: dict[str, Any], field: str,
                                                          reason: str) -> None:
    payload = json.loads(BODY)
    payload["ticket"].update(change)
    with pytest.raises(ValidationError) as caught:
        inbound.build_job(MAPPING, payload, "https://bridge.example.net/rf")
    assert reason in caught.value.errors[field][0]


def test_a_missing_payload_field_names_the_pointer() -> None:
    with pytest.raises(ValidationError) as caught:
        inbound.build_job(MAPPING, {"ticket": {"action": "flush_queue"}}, None)
    assert "the payload has nothing at /ticket/host" in caught.value.errors["host"][0]


# -- the API -------------------------------------------------------------------------------

@pytest.fixture
def controller(memory_controller: Controller) -> Controller:
    return memory_controller


@pytest.fixture
def fleet(controller: Controller) -> dict[str, Any]:
    """Acme with host pbx1, Globex with host gbx1 (agent hosts nothing answers for)."""
    acme, globex = controller.tenant("Acme"), controller.tenant("Globex")
    pbx1 = controller.host(controller.site(acme, "lyon"), "pbx1")
    gbx1 = controller.host(controller.site(globex, "paris"), "gbx1")
    return {"acme": acme, "globex": globex, "pbx1": pbx1["id"], "gbx1": gbx1["id"]}


def add_hook(controller: Controller, tenant: int, *, fmt: str = "generic",
             token: str | None = None, **fields: Any) -> Answer:
    body = {"name": "helpdesk", "tenant_id": tenant, "format": fmt, "mapping": MAPPING,
            "callback_url": "https://bridge.example.net/rf", **fields}
    return controller.post("/v1/inbound-hooks", body, token)


def deliver(controller: Controller, hook: dict[str, Any], secret: bytes,
            body: bytes = BODY, when: dt.datetime | None = None,
            headers: dict[str, str] | None = None) -> Answer:
    """POST a signed request to the hook, without a bearer token."""
    signed = inbound.sign(hook["format"], secret, body, when or utcnow())
    answer = controller.client.post(hook["url"], data=body, headers={
        "Content-Type": "application/json", **signed, **(headers or {})})
    return Answer(answer.status_code, answer.get_json(silent=True), answer.headers)


def _rows(controller: Controller, query: Any) -> list[Any]:
    with controller.app.app_context(), db.transaction() as session:
        rows = list(session.scalars(query))
        session.expunge_all()
        return rows


def test_a_hook_gets_its_own_operator_token_and_shows_its_secret_once(
        controller: Controller, fleet: dict[str, Any]) -> None:
    answer = add_hook(controller, fleet["acme"])
    assert answer.status == 201, answer
    hook = answer.json
    assert len(hook["secret"]) >= 32 and hook["url"].startswith("/v1/inbound/")
    assert hook["mapping"] == {**MAPPING, "options": {}} and hook["enabled"] is True
    token, = _rows(controller, select(Token).where(Token.id == hook["token_id"]))
    assert (token.role, token.tenant_id, token.name) == ("operator", fleet["acme"],
                                                         "inbound hook helpdesk")
    shown = controller.ok("GET", f"/v1/inbound-hooks/{hook['id']}")
    listed = controller.ok("GET", "/v1/inbound-hooks")["items"]
    assert "secret" not in shown and listed == [shown]
    assert hook["secret"] not in json.dumps(controller.ok("GET", "/v1/audit"))


def test_who_may_make_hooks_and_what_a_hook_must_say(controller: Controller,
                                                     fleet: dict[str, Any]) -> None:
    acme_admin = controller.issue("admin", fleet["acme"])
    operator = controller.issue("operator")
    assert add_hook(controller, fleet["acme"], token=operator).status == 403
    refused = add_hook(controller, fleet["globex"], token=acme_admin)
    # another tenant does not exist for a tenant's admin: 404, as alerts and inventory say
    assert refused.status == 404 and "tenant" in refused.json["message"]
    mine = add_hook(controller, fleet["acme"], token=acme_admin)
    assert mine.status == 201
    theirs = add_hook(controller, fleet["globex"]).json
    assert controller.get(f"/v1/inbound-hooks/{theirs['id']}", acme_admin).status == 404
    assert [h["id"] for h in controller.ok("GET", "/v1/inbound-hooks", token=acme_admin)[
        "items"]] == [mine.json["id"]]
    assert add_hook(controller, fleet["acme"]).status == 409  # the name is taken
    zendesk = add_hook(controller, fleet["acme"], fmt="zendesk", name="zd")
    assert zendesk.status == 422 and "Reveal secret" in zendesk.json["errors"]["secret"][0]
    given = add_hook(controller, fleet["acme"], fmt="zendesk", name="zd",
                     secret="zendesk-made-secret-123")
    assert given.status == 201 and given.json["secret"] is None
    for mapping, field in (
            ({**MAPPING, "actions": ["install_agent"]}, "mapping.actions.0"),
            ({**MAPPING, "action": {"value": "diagnose"}}, "mapping.action"),
            ({**MAPPING, "host": {"pointer": "ticket/host"}}, "mapping.host.pointer"),
            ({**MAPPING, "host": {"pointer": "/a", "value": "b"}}, "mapping.host.pointer"),
            ({**MAPPING, "params": {"Bad Key": {"value": 1}}}, "mapping.params")):
        bad = add_hook(controller, fleet["acme"], name="bad", mapping=mapping)
        assert bad.status == 422, (mapping, bad)
        assert any(key.startswith(field) for key in bad.json["errors"]), (field, bad.json)
    local = add_hook(controller, fleet["acme"], name="bad",
                     callback_url="http://user:pw@bridge.example.net/")
    assert local.status == 422


@pytest.mark.parametrize("url", ["http://[::1", "http://bridge.example.net:70000/",
                                 "http://bridge.example.net:0/", "https://", "ftp://x.example/"])
def test_malformed_callback_urls_are_422_for_hooks_and_jobs(
        controller: Controller, fleet: dict[str, Any], url: str) -> None:
    created = add_hook(controller, fleet["acme"], callback_url=url)
    assert created.status == 422 and "callback_url" in created.json["errors"], created
    hook = add_hook(controller, fleet["acme"], name="fine").json
    changed = controller.call("PATCH", f"/v1/inbound-hooks/{hook['id']}",
                              body={"callback_url": url})
    assert changed.status == 422 and "callback_url" in changed.json["errors"], changed
    job = controller.post("/v1/jobs", {"action": "collect_status",
                                       "target": {"hosts": ["pbx1"]}, "callback_url": url})
    assert job.status == 422 and "callback_url" in job.json["errors"], job


def test_a_signed_request_starts_the_mapped_job_as_the_hooks_token(
        controller: Controller, fleet: dict[str, Any]) -> None:
    hook = add_hook(controller, fleet["acme"]).json
    answer = deliver(controller, hook, hook["secret"].encode(),
                     when=utcnow() - dt.timedelta(seconds=5))
    assert answer.status == 202, answer
    job_id = answer.json["job"]["id"]
    assert answer.json["job"]["status"] == "queued" and answer.json["job"]["total"] == 1
    job, = _rows(controller, select(Job).where(Job.id == job_id))
    assert (job.origin, job.inbound_hook_id, job.token_id, job.tenant_id) == (
        "inbound", hook["id"], hook["token_id"], fleet["acme"])
    assert job.action == "flush_queue" and job.target == {"hosts": ["pbx1"]}
    assert job.params["reset_host_status"] is True
    assert job.callback_url == "https://bridge.example.net/rf?reference=4711"
    audit = _rows(controller, select(AuditEvent).where(AuditEvent.target == f"job:{job_id}"))
    assert [(a.token_id, a.outcome, a.detail["inbound_hook"]) for a in audit] == [
        (hook["token_id"], 202, hook["id"])]
    # the same signed request again (a sender retrying a lost answer) starts nothing and
    # answers 200 with the job the first one started
    replay_headers = inbound.sign("generic", hook["secret"].encode(), BODY, utcnow())
    first = controller.client.post(hook["url"], data=BODY, headers={
        "Content-Type": "application/json", **replay_headers})
    second = controller.client.post(hook["url"], data=BODY, headers={
        "Content-Type": "application/json", **replay_headers})
    assert first.status_code == 202 and first.get_json()["replayed"] is False
    assert second.status_code == 200, second.get_json()
    assert second.get_json()["replayed"] is True
    assert second.get_json()["job"]["id"] == first.get_json()["job"]["id"]
    assert len(_rows(controller, select(Job))) == 2  # the first request's, and this one's


def test_refusals_say_nothing_about_a_bad_signature(controller: Controller,
                                                    fleet: dict[str, Any]) -> None:
    hook = add_hook(controller, fleet["acme"]).json
    bad = deliver(controller, hook, b"not-the-secret-0123456789")
    unknown = deliver(controller, {**hook, "url": "/v1/inbound/" + "0" * 32},
                      hook["secret"].encode())
    assert bad.status == unknown.status == 401
    assert bad.json["message"] == unknown.json["message"] == (
        "not accepted: the request is not signed with this hook's secret")
    stale = deliver(controller, hook, hook["secret"].encode(),
                    when=utcnow() - dt.timedelta(seconds=400))
    assert stale.status == 401 and "check the sender's clock" in stale.json["message"]
    stamp = "999999999999"  # signed right, but past the dates a clock reads: not a 500
    far = deliver(controller, hook, b"", headers={
        "X-Relayfleet-Timestamp": stamp, "X-Relayfleet-Signature": "sha256=" + hmac.new(
            hook["secret"].encode(), stamp.encode() + b"." + BODY, hashlib.sha256).hexdigest()},
        body=BODY)
    assert far.status == 401 and "check the sender's clock" in far.json["message"]
    refused = _rows(controller, select(AuditEvent).where(
        AuditEvent.target == f"inbound_hook:{hook['id']}", AuditEvent.outcome == 401))
    assert refused and refused[0].token_id is None
    assert _rows(controller, select(Job)) == []


@pytest.mark.parametrize(("payload", "field"), [
    ({"ticket": {"id": 1, "host": "pbx1", "action": "diagnose"}}, "action"),
    ({"ticket": {"id": 1, "host": "gbx1", "action": "flush_queue"}}, "target.hosts"),
    ({"ticket": {"id": 1, "action": "flush_queue"}}, "host"),
    (["not", "an", "object"], "json"),
])
def test_a_signed_payload_the_job_rules_refuse_is_422_and_not_kept(
        controller: Controller, fleet: dict[str, Any], payload: Any, field: str) -> None:
    hook = add_hook(controller, fleet["acme"]).json
    body = json.dumps(payload).encode()
    answer = deliver(controller, hook, hook["secret"].encode(), body=body)
    assert answer.status == 422, answer
    assert field in answer.json["errors"], answer.json
    assert _rows(controller, select(InboundDelivery)) == []
    assert _rows(controller, select(Job)) == []


def test_the_job_document_is_checked_like_post_jobs(controller: Controller,
                                                    fleet: dict[str, Any]) -> None:
    mapping = {**MAPPING, "params": {"recipient": {"pointer": "/ticket/recipient"}},
               "options": {"timeout_s": {"pointer": "/ticket/timeout"}}}
    hook = add_hook(controller, fleet["acme"], mapping=mapping).json
    body = {"ticket": {"id": 1, "host": "pbx1", "action": "flush_queue",
                       "recipient": "x" * 400, "timeout": 1}}
    answer = deliver(controller, hook, hook["secret"].encode(),
                     body=json.dumps(body).encode())
    assert answer.status == 422, answer
    assert {"options.timeout_s"} <= set(answer.json["errors"]), answer.json


def test_disabled_rotated_and_removed_hooks(controller: Controller,
                                            fleet: dict[str, Any]) -> None:
    hook = add_hook(controller, fleet["acme"]).json
    old = hook["secret"].encode()
    controller.ok("PATCH", f"/v1/inbound-hooks/{hook['id']}", {"enabled": False})
    disabled = deliver(controller, hook, old)
    assert disabled.status == 403 and "disabled" in disabled.json["message"]
    controller.ok("PATCH", f"/v1/inbound-hooks/{hook['id']}", {"enabled": True})
    rotated = controller.ok("POST", f"/v1/inbound-hooks/{hook['id']}/rotate-secret")
    assert rotated["secret"] and rotated["secret"].encode() != old
    assert deliver(controller, hook, old).status == 401
    assert deliver(controller, hook, rotated["secret"].encode()).status == 202
    controller.ok("DELETE", f"/v1/inbound-hooks/{hook['id']}", expect=204)
    token, = _rows(controller, select(Token).where(Token.id == hook["token_id"]))
    assert token.revoked_at is not None
    assert deliver(controller, hook, rotated["secret"].encode()).status == 401


def test_a_revoked_hook_token_starts_nothing(controller: Controller,
                                             fleet: dict[str, Any]) -> None:
    hook = add_hook(controller, fleet["acme"]).json
    controller.ok("DELETE", f"/v1/tokens/{hook['token_id']}")
    answer = deliver(controller, hook, hook["secret"].encode())
    assert answer.status == 403 and "token was revoked" in answer.json["message"]


def test_deliveries_older_than_twice_the_window_are_purged(controller: Controller,
                                                           fleet: dict[str, Any]) -> None:
    hook = add_hook(controller, fleet["acme"]).json
    for when in (utcnow(), utcnow() - dt.timedelta(seconds=10)):
        assert deliver(controller, hook, hook["secret"].encode(), when=when).status == 202
    with controller.app.app_context(), db.transaction() as session:
        first = min(session.scalars(select(InboundDelivery.id)))
        # twice the window (300 s) and the minute's margin: one just inside, one past it
        session.execute(update(InboundDelivery).where(InboundDelivery.id == first).values(
            received_at=utcnow() - dt.timedelta(seconds=661)))
        session.execute(update(InboundDelivery).where(InboundDelivery.id != first).values(
            received_at=utcnow() - dt.timedelta(seconds=650)))
    settings = load_settings()
    with controller.app.app_context():
        assert inbound.purge_deliveries(db, settings) == 1
    assert len(_rows(controller, select(InboundDelivery))) == 1


# -- the CLI -------------------------------------------------------------------------------

def run(controller: Controller, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    """``relayfleet ARGS`` (admin token) through the real API; exit code, stdout, stderr."""
    client = ApiClient(Connection(api="http://controller", token=controller.admin,
                                  source="test"),
                       transport=httpx.WSGITransport(app=controller.app), retries=0)
    result = CliRunner().invoke(cli, list(args), obj=Cli(_api=client), input=stdin,
                                standalone_mode=False, catch_exceptions=True,
                                env={"COLUMNS": "250", "NO_COLOR": "1"})
    error = result.exception
    if isinstance(error, CliError):
        return error.exit_code, result.stdout, result.stderr + error.message
    if isinstance(error, click.ClickException):
        return 2, result.stdout, error.format_message()
    if error is not None:
        raise error
    return result.return_value, result.stdout, result.stderr


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.chdir(tmp_path)
    yield tmp_path


def test_cli_adds_lists_rotates_and_removes_hooks(controller: Controller,
                                                  fleet: dict[str, Any],
                                                  cli_env: Path) -> None:
    (cli_env / "zendesk-secret.txt").write_text("zendesk-made-secret-123\n")
    code, out, err = run(controller, "inbound", "add", "acme-zendesk", "--tenant", "Acme",
                         "--format", "zendesk", "--secret-file", "zendesk-secret.txt",
                         "--allow", "flush_queue", "--allow", "collect_status",
                         "--action-from", "/ticket/action", "--host-from", "/ticket/host",
                         "--param", "reset_host_status=true", "--reference-from",
                         "/ticket/id", "--callback-url", "https://bridge.example.net/rf")
    assert code == 0, err
    assert "added inbound hook acme-zendesk" in out and "POST http://controller/v1/inbound/" \
        in out and "zendesk-made-secret" not in out + err
    hook, = controller.ok("GET", "/v1/inbound-hooks")["items"]
    assert hook["mapping"] == {**MAPPING, "options": {}}
    code, out, err = run(controller, "inbound", "add", "glue", "--tenant", "Acme",
                         "--format", "generic", "--action", "collect_status", "--host",
                         "pbx1")
    assert code == 0, err
    secret = out.strip().splitlines()[-1]
    assert "shown only now" in err and len(secret) >= 32
    code, out, _ = run(controller, "inbound", "list")
    assert code == 0 and "acme-zendesk" in out and "glue" in out
    code, out, _ = run(controller, "--json", "inbound", "list", "--tenant", "Acme")
    assert [h["name"] for h in json.loads(out)["items"]] == ["acme-zendesk", "glue"]
    code, out, err = run(controller, "inbound", "rotate-secret", "glue")
    assert code == 0 and out.strip().splitlines()[-1] != secret, err
    code, _, err = run(controller, "inbound", "rotate-secret", "acme-zendesk")
    assert code == 3 and "reset the secret in Zendesk" in err
    code, _, err = run(controller, "inbound", "add", "x", "--tenant", "Acme", "--format",
                       "generic", "--host", "pbx1")
    assert code == 2 and "--action" in err
    code, out, _ = run(controller, "inbound", "remove", "glue")
    assert code == 0 and "its token is revoked" in out
    assert [h["name"] for h in controller.ok("GET", "/v1/inbound-hooks")["items"]] == [
        "acme-zendesk"]
    code, _, err = run(controller, "inbound", "remove", "nope")
    assert code == 2 and "no inbound hook 'nope'" in err
