"""POST /v1/jobs's one path through the database: the job, its units, its Idempotency-Key
answer and its audit row commit together, and what the call ends as is what the audit row
says (SQLite, kombu's in-memory broker)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import func, select, update

from controller import dispatch
from controller.db import db
from controller.models import AuditEvent, IdempotencyKey, Job, JobHost, Token
from tests.controller_client import Controller


@pytest.fixture
def fleet(memory_controller: Controller) -> dict[str, Any]:
    c = memory_controller
    acme, beta = c.tenant("Acme"), c.tenant("Beta")
    leeds, paris = c.site(acme, "Leeds"), c.site(beta, "Paris")
    hosts = [c.host(leeds, f"pbx{i}")["id"] for i in (3, 1, 2)]
    other = c.host(paris, "pbx1")["id"]
    return {"c": c, "acme": acme, "hosts": hosts, "other": other}


def _audit(c: Controller, action: str = "POST /v1/jobs") -> list[AuditEvent]:
    with c.app.app_context():
        return list(db.session.scalars(select(AuditEvent).where(AuditEvent.action == action)
                                       .order_by(AuditEvent.id)))


def _count(c: Controller, model: Any) -> int:
    with c.app.app_context():
        return int(db.session.scalar(select(func.count()).select_from(model)) or 0)


def _post(c: Controller, body: dict[str, Any], key: str | None = None,
          token: str | None = None) -> Any:
    return c.call("POST", "/v1/jobs", token, body,
                  headers={"Idempotency-Key": key} if key else None)


BODY = {"action": "flush_queue", "target": {"sites": ["Leeds"]}}


def test_a_job_commits_with_its_units_key_and_one_audit_row(fleet: dict[str, Any]) -> None:
    c = fleet["c"]
    answer = _post(c, BODY, "k1")
    assert answer.status == 202, answer
    job = answer.json["id"]
    assert answer.json == {"id": job, "status": "queued", "total": 3, "links": {
        "self": f"/v1/jobs/{job}", "cancel": f"/v1/jobs/{job}/cancel",
        "retry": f"/v1/jobs/{job}/retry"}}
    (row,) = _audit(c)
    assert (row.target, row.outcome, row.detail) == (f"job:{job}", 202,
                                                     {"action": "flush_queue", "hosts": 3})
    assert row.token_name == "test admin" and row.remote_addr
    doc = c.ok("GET", f"/v1/jobs/{job}")
    assert [r["host_id"] for r in doc["results"]] == sorted(fleet["hosts"])
    assert doc["origin"] == "api" and doc["callback_state"] is None
    with c.app.app_context():
        key = db.session.scalar(select(IdempotencyKey))
        assert key is not None and (key.state, key.status_code) == ("done", 202)
        assert key.response == answer.json


def test_the_same_key_replays_and_another_body_is_refused(fleet: dict[str, Any]) -> None:
    c = fleet["c"]
    first = _post(c, BODY, "k2")
    again = _post(c, BODY, "k2")
    assert (again.status, again.json) == (first.status, first.json)
    other = _post(c, {**BODY, "options": {"concurrency": 2}}, "k2")
    assert other.status == 422 and "different request" in other.json["message"]
    assert _count(c, Job) == 1 and _count(c, JobHost) == 3
    rows = _audit(c)
    assert [(r.outcome, r.target) for r in rows] == [
        (202, f"job:{first.json['id']}"), (202, f"job:{first.json['id']}"), (422, None)]
    assert rows[1].detail is None  # the replay started nothing


def test_a_refused_job_leaves_no_key_and_is_audited(fleet: dict[str, Any]) -> None:
    c = fleet["c"]
    answer = _post(c, {"action": "flush_queue", "target": {"sites": ["Nowhere"]}}, "k3")
    assert answer.status == 422 and "not found: Nowhere" in answer.json["message"]
    assert _count(c, Job) == 0 and _count(c, IdempotencyKey) == 0
    assert [r.outcome for r in _audit(c)] == [422]
    # the key is free again
    assert _post(c, BODY, "k3").status == 202


def test_an_unreachable_queue_fails_the_job_and_the_audit_row_says_503(
        fleet: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    c = fleet["c"]

    def down(task: str, *args: Any, countdown: float | None = None) -> None:
        raise dispatch.NotQueued("the job queue (Redis) cannot be reached")

    monkeypatch.setattr(dispatch, "send", down)
    answer = _post(c, BODY, "k4")
    assert answer.status == 503, answer
    (row,) = _audit(c)
    assert row.outcome == 503 and row.target and row.target.startswith("job:")
    job = int(row.target.split(":")[1])
    doc = c.ok("GET", f"/v1/jobs/{job}")
    assert doc["status"] == "failed" and doc["counts"]["skipped"] == 3
    # the key answers as the call did, and starts nothing more
    again = _post(c, BODY, "k4")
    assert again.status == 503 and _count(c, Job) == 1


def test_a_retry_is_audited_once_with_the_job_it_retries(fleet: dict[str, Any]) -> None:
    c = fleet["c"]
    job = _post(c, BODY, "k5").json["id"]
    with c.app.app_context():
        db.session.execute(update(JobHost).where(JobHost.job_id == job).values(
            status="failed"))
        db.session.execute(update(Job).where(Job.id == job).values(
            status="failed", finished_at=dt.datetime.now(dt.UTC)))
        db.session.commit()
    answer = c.call("POST", f"/v1/jobs/{job}/retry", headers={"Idempotency-Key": "r1"})
    assert answer.status == 202, answer
    (row,) = _audit(c, "POST /v1/jobs/{job_id}/retry")
    assert (row.target, row.outcome, row.detail) == (
        f"job:{answer.json['id']}", 202, {"action": "flush_queue", "hosts": 3,
                                          "retry_of": job})


def test_a_hosts_target_is_sorted_and_scoped(fleet: dict[str, Any]) -> None:
    c = fleet["c"]
    names = {"hosts": ["pbx3", fleet["hosts"][1], "pbx2"]}
    acme_op = c.issue("operator", fleet["acme"])
    job = _post(c, {"action": "flush_queue", "target": names}, token=acme_op).json["id"]
    doc = c.ok("GET", f"/v1/jobs/{job}")
    assert [r["host_id"] for r in doc["results"]] == sorted(fleet["hosts"])
    # Beta's pbx1 does not exist for an Acme token; for an MSP token the name is ambiguous
    refused = _post(c, {"action": "flush_queue", "target": {"hosts": [fleet["other"]]}},
                    token=acme_op)
    assert refused.status == 422 and "not found" in refused.json["message"]
    ambiguous = _post(c, {"action": "flush_queue", "target": {"hosts": ["pbx1"]}})
    assert ambiguous.status == 422 and "names 2 hosts" in ambiguous.json["message"]


def test_a_token_use_is_written_at_most_once_a_minute(fleet: dict[str, Any]) -> None:
    c = fleet["c"]
    token = c.issue("viewer")
    public_id = token.split("_")[1]

    def last_used() -> dt.datetime | None:
        with c.app.app_context():
            return db.session.scalar(select(Token.last_used_at)
                                     .where(Token.public_id == public_id))

    assert last_used() is None
    c.ok("GET", "/v1/jobs", token=token)
    first = last_used()
    assert first is not None
    c.ok("GET", "/v1/jobs", token=token)
    assert last_used() == first
    with c.app.app_context():
        db.session.execute(update(Token).where(Token.public_id == public_id).values(
            last_used_at=first - dt.timedelta(minutes=2)))
        db.session.commit()
    c.ok("GET", "/v1/jobs", token=token)
    later = last_used()
    assert later is not None and later > first - dt.timedelta(seconds=1)


def test_a_revoked_token_is_refused_at_once(fleet: dict[str, Any]) -> None:
    c = fleet["c"]
    token = c.issue("operator")
    assert _post(c, BODY, token=token).status == 202
    with c.app.app_context():
        db.session.execute(update(Token).where(Token.public_id == token.split("_")[1])
                           .values(revoked_at=dt.datetime.now(dt.UTC)))
        db.session.commit()
    assert _post(c, BODY, token=token).status == 401
