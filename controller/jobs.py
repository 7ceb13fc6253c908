"""Job service: validate, resolve targets, create (idempotently), read, cancel, retry.

A job is one row plus one ``job_hosts`` row per targeted host (its *unit*), inserted in
one statement when the job is accepted. Workers claim units one at a time (see
:mod:`controller.tasks`); the job's status is derived from its units' states.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from marshmallow import ValidationError as SchemaError
from sqlalchemy import delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from controller.auth import Principal
from controller.crypto import SecretBox
from controller.db import utcnow
from controller.errors import Conflict
from controller.inventory import get_scoped, scoped
from controller.models import (
    UNIT_STATES,
    Host,
    HostTag,
    IdempotencyKey,
    Job,
    JobHost,
    Site,
    Tenant,
)
from shared import schemas as agent_schemas
from shared.errors import RelayfleetError, ValidationError
from shared.mta import parse_flush_request
from shared.validation import parse_smarthost_request

#: how long an Idempotency-Key is remembered (the contract says at least 24 h)
IDEMPOTENCY_TTL = dt.timedelta(hours=48)
#: a key whose first request never finished (the API process died) may be reused after this
IDEMPOTENCY_ABANDONED = dt.timedelta(seconds=120)
FINISHED_JOB_STATES = ("succeeded", "failed", "partial", "cancelled")

_PARAM_SCHEMAS: dict[str, Any] = {
    "set_smarthost": agent_schemas.SmarthostRequestSchema,
    "remove_smarthost": agent_schemas.StrictSchema,
    "flush_queue": agent_schemas.FlushRequestSchema,
    "collect_status": agent_schemas.StrictSchema,
    "diagnose": agent_schemas.DiagnoseRequestSchema,
    "read_log": agent_schemas.LogQuerySchema,
}
_DRY_RUN_ACTIONS = ("set_smarthost", "remove_smarthost")


def _prefixed(errors: Any, prefix: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key, value in (errors.items() if isinstance(errors, dict) else [("_", errors)]):
        if isinstance(value, dict):
            out.update(_prefixed(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = [str(v) for v in value]
    return out


def validate_params(action: str, params: dict[str, Any],
                    options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Check an action's params with the agent's own rules; return (public, secret) parts."""
    if "dry_run" in params:
        raise ValidationError.for_field("params.dry_run", "use options.dry_run")
    if options.get("dry_run") and action not in _DRY_RUN_ACTIONS:
        raise ValidationError.for_field("options.dry_run",
                                        "only set_smarthost and remove_smarthost have a dry run")
    try:
        loaded = _PARAM_SCHEMAS[action]().load(params)
    except SchemaError as exc:
        raise ValidationError("invalid params", _prefixed(exc.messages, "params.")) from None
    secret = None
    if action == "set_smarthost":
        loaded.pop("dry_run", None)
        if loaded.get("auth") is None:
            loaded.pop("auth", None)
        try:
            request = parse_smarthost_request(loaded)
        except ValidationError as exc:
            raise ValidationError(exc.message, _prefixed(exc.errors, "params.")) from None
        loaded = {"host": request.host, "port": request.port, "mx": request.mx,
                  "mailer": request.mailer}
        if request.auth is not None:
            loaded["auth"] = {"username": request.auth.username}
            secret = {"password": request.auth.password}
    elif action == "flush_queue":
        try:
            parse_flush_request(loaded)
        except ValidationError as exc:
            raise ValidationError(exc.message, _prefixed(exc.errors, "params.")) from None
    return loaded, secret


def _split_refs(refs: list[Any]) -> tuple[list[int], list[str]]:
    ids = [ref for ref in refs if isinstance(ref, int)]
    return ids, [ref for ref in refs if isinstance(ref, str)]


def resolve_target(session: Session, who: Principal, target: dict[str, Any]) -> list[
        tuple[int, str]]:
    """(host id, name) of every host the target names that the principal may touch."""
    query = scoped(select(Host.id, Host.name), Host, who)
    (kind, refs), = target.items()
    if kind == "all":
        pass
    elif kind == "tags":
        query = query.where(Host.id.in_(select(HostTag.host_id).where(HostTag.tag.in_(refs))))
    else:
        model: Any = {"hosts": Host, "sites": Site, "tenants": Tenant}[kind]
        ids, names = _split_refs(refs)
        found = session.execute(scoped(
            select(model.id, model.name), model, who).where(
            or_(model.id.in_(ids), model.name.in_(names)))).all()
        known_ids = {row[0] for row in found}
        known_names = {row[1] for row in found}
        missing = [str(r) for r in ids if r not in known_ids] + [
            r for r in names if r not in known_names]
        if missing:
            shown = ", ".join(missing[:20]) + (" ..." if len(missing) > 20 else "")
            raise ValidationError.for_field(f"target.{kind}", f"not found: {shown}")
        column = {"hosts": Host.id, "sites": Host.site_id, "tenants": Host.tenant_id}[kind]
        query = query.where(column.in_(known_ids))
    rows = [(int(r[0]), str(r[1])) for r in session.execute(query.order_by(Host.id))]
    if not rows:
        raise ValidationError.for_field("target", "matches no host this token may touch")
    return rows


def create_job(session: Session, who: Principal, body: dict[str, Any], box: SecretBox, *,
               max_timeout_s: int, host_rows: list[tuple[int, str]] | None = None,
               retry_of: int | None = None) -> Job:
    """Validate and store a job and its units (status ``queued``); the caller enqueues it."""
    who.require("operator")
    options = dict(body["options"])
    if options["timeout_s"] > max_timeout_s:
        raise ValidationError.for_field(
            "options.timeout_s", f"at most {max_timeout_s} s on this controller (a lane "
            "must finish within the broker's visibility timeout)")
    params, secret = validate_params(body["action"], dict(body.get("params") or {}), options)
    hosts = host_rows if host_rows is not None else resolve_target(session, who, body["target"])
    job = Job(tenant_id=who.tenant_id, token_id=who.token_id, action=body["action"],
              target=body["target"], params=params,
              params_sealed=box.seal(json.dumps(secret)) if secret else None,
              options=options, callback_url=body.get("callback_url"), retry_of=retry_of,
              total=len(hosts), status="queued", heartbeat_at=time.time())
    session.add(job)
    session.flush()
    # One multi-row INSERT for every unit: 10,000 hosts are one statement, not 10,000.
    session.execute(insert(JobHost), [
        {"job_id": job.id, "host_id": host_id, "host_name": name, "status": "pending",
         "attempts": 0} for host_id, name in hosts])
    return job


def counts(session: Session, job_id: int) -> dict[str, int]:
    """How many of the job's hosts are in each state."""
    result = dict.fromkeys(UNIT_STATES, 0)
    for state, number in session.execute(
            select(JobHost.status, func.count()).where(JobHost.job_id == job_id)
            .group_by(JobHost.status)):
        result[state] = number
    result["total"] = sum(result.values())
    return result


def derive_status(job_status: str, tally: dict[str, int]) -> str:
    """The job's status from its units (a cancelled job stays cancelled)."""
    if job_status == "cancelled":
        return "cancelled"
    if tally["pending"] or tally["running"]:
        return job_status if job_status in ("queued", "running") else "running"
    if tally["succeeded"] == tally["total"]:
        return "succeeded"
    if tally["succeeded"] == 0:
        return "failed"
    return "partial"


def job_links(job_id: int) -> dict[str, str]:
    """Where to look at and act on a job."""
    base = f"/v1/jobs/{job_id}"
    return {"self": base, "cancel": f"{base}/cancel", "retry": f"{base}/retry"}


def job_document(session: Session, job: Job, *, with_results: bool = True) -> dict[str, Any]:
    """The job as the API (and the callback) shows it."""
    doc: dict[str, Any] = {
        "id": job.id, "action": job.action, "status": job.status, "tenant_id": job.tenant_id,
        "target": job.target, "params": job.params, "options": job.options,
        "callback_url": job.callback_url, "callback_state": job.callback_state,
        "retry_of": job.retry_of, "counts": counts(session, job.id),
        "created_at": job.created_at, "started_at": job.started_at,
        "finished_at": job.finished_at, "links": job_links(job.id)}
    if with_results:
        units = session.scalars(select(JobHost).where(JobHost.job_id == job.id)
                                .order_by(JobHost.id))
        doc["results"] = [{
            "host_id": unit.host_id, "host": unit.host_name, "status": unit.status,
            "error": unit.error, "changed": unit.changed, "attempts": unit.attempts,
            "data": unit.data, "steps": unit.steps, "started_at": unit.started_at,
            "finished_at": unit.finished_at} for unit in units]
    return doc


def get_job(session: Session, who: Principal, job_id: int) -> Job:
    """A job the principal may see (404 otherwise)."""
    return get_scoped(session, Job, job_id, who)


def cancel_job(session: Session, who: Principal, job_id: int) -> Job:
    """Stop starting hosts: pending units become ``skipped``; running ones finish. The
    caller then lets :func:`controller.tasks.finish_job` end the job if nothing runs."""
    who.require("operator")
    job = get_job(session, who, job_id)
    # Conditional, so that a job a worker finishes at this very moment stays finished.
    done = session.execute(update(Job).where(Job.id == job.id, Job.finished_at.is_(None))
                           .values(status="cancelled"))
    if int(getattr(done, "rowcount", 0)) != 1:
        session.rollback()
        raise Conflict(f"job {job_id} has already finished ({job.status})")
    session.execute(update(JobHost).where(JobHost.job_id == job.id,
                                          JobHost.status == "pending")
                    .values(status="skipped", error="cancelled before it started",
                            finished_at=utcnow()))
    session.commit()
    return job


def retry_hosts(session: Session, who: Principal, job_id: int) -> list[tuple[int, str]]:
    """The failed and unreachable hosts of a finished job, still visible to the principal."""
    who.require("operator")
    job = get_job(session, who, job_id)
    if job.status not in FINISHED_JOB_STATES:
        raise Conflict(f"job {job_id} is still {job.status}: retry it when it has finished")
    rows = session.execute(
        scoped(select(Host.id, Host.name), Host, who)
        .join(JobHost, JobHost.host_id == Host.id)
        .where(JobHost.job_id == job.id, JobHost.status.in_(("failed", "unreachable")))
        .order_by(Host.id)).all()
    if not rows:
        raise ValidationError.for_field("job", f"job {job_id} has no failed or unreachable "
                                               "host to retry")
    return [(int(r[0]), str(r[1])) for r in rows]


# -- idempotency -----------------------------------------------------------------------

def request_fingerprint(key: bytes, method: str, path: str, body: Any) -> str:
    """HMAC-SHA256 (keyed, so a stored fingerprint reveals nothing about secrets in the
    body) of the method, path and canonical JSON body."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hmac.new(key, f"{method} {path}\n{canonical}".encode(), hashlib.sha256).hexdigest()


#: what an idempotent create returns: status, answer, and work to do once it is committed
Created = tuple[int, dict[str, Any], Callable[[], None] | None]


def idempotent(session: Session, who: Principal, key: str | None, fingerprint: str,
               create: Callable[[], Created]) -> tuple[int, dict[str, Any]]:
    """Run ``create`` once per (token, key); replay its answer for the same request.

    ``create`` stores its object without committing; its answer is stored under the key in
    the same commit, and its follow-up (queueing the job) runs after that commit. The same
    key with another request is 422; while the first request is still being handled, 409.
    Keys are kept :data:`IDEMPOTENCY_TTL`.
    """
    if key is None:
        status, response, after = create()
        session.commit()
        if after is not None:
            after()
        return status, response
    if not 1 <= len(key) <= 255 or not key.isprintable():
        raise ValidationError.for_field("Idempotency-Key", "must be 1-255 printable characters")
    now = utcnow()
    row = IdempotencyKey(token_id=who.token_id, key=key, request_sha256=fingerprint,
                         state="in_progress", created_at=now)
    session.add(row)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        existing = session.scalar(select(IdempotencyKey).where(
            IdempotencyKey.token_id == who.token_id, IdempotencyKey.key == key))
        if existing is None:  # purged between our insert and this read: go again
            return idempotent(session, who, key, fingerprint, create)
        if existing.request_sha256 != fingerprint:
            raise ValidationError.for_field(
                "Idempotency-Key", "this key was already used with a different request; "
                                   "use a new key for a new request") from None
        if existing.state != "done":
            if now - existing.created_at < IDEMPOTENCY_ABANDONED:
                raise Conflict("a request with this Idempotency-Key is still being handled; "
                               "retry in a moment") from None
            session.delete(existing)
            session.commit()
            return idempotent(session, who, key, fingerprint, create)
        return existing.status_code or 200, existing.response or {}

    def forget_key() -> None:
        session.rollback()
        session.execute(delete(IdempotencyKey).where(IdempotencyKey.id == row.id))
        session.commit()

    try:
        status, response, after = create()
        session.execute(update(IdempotencyKey).where(IdempotencyKey.id == row.id).values(
            state="done", status_code=status,
            response=json.loads(json.dumps(response, default=str))))
        session.commit()
    except BaseException:
        forget_key()
        raise
    if after is not None:
        try:
            after()
        except RelayfleetError as exc:
            # The object is committed: the key keeps naming it, and answers as this call did
            # (a retry with the same key must not make a second one).
            code = int(getattr(exc, "status", 500))
            session.rollback()
            session.execute(update(IdempotencyKey).where(IdempotencyKey.id == row.id).values(
                status_code=code, response={"code": code, "status": HTTPStatus(code).phrase,
                                            "message": exc.message}))
            session.commit()
            raise
    return status, response


def purge_idempotency_keys(session: Session) -> int:
    """Forget keys older than :data:`IDEMPOTENCY_TTL` (the sweeper calls this)."""
    done = session.execute(delete(IdempotencyKey).where(
        IdempotencyKey.created_at < utcnow() - IDEMPOTENCY_TTL))
    return int(getattr(done, "rowcount", 0))
