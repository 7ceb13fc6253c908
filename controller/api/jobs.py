"""Jobs: start one (idempotently), follow it, cancel it, retry its failed hosts."""

from __future__ import annotations

from typing import Any

from flask import current_app, request
from flask.views import MethodView
from flask_smorest import Blueprint
from sqlalchemy import select

from controller import jobs as svc
from controller import schemas as s
from controller.api import audit_target, audit_with, fingerprint, stored_answer, who
from controller.auth import Principal
from controller.config import Settings
from controller.crypto import SecretBox
from controller.db import db
from controller.idempotency import Created, idempotent, request_fingerprint
from controller.inventory import filtered, page, scoped
from controller.models import Job

blp = Blueprint("jobs", __name__, url_prefix="/v1",
                description="Run an action on many hosts and follow each host's result.")


def _box() -> SecretBox:
    box: SecretBox = current_app.extensions["relayfleet_secrets"]
    return box


def start(principal: Principal, body: dict[str, Any],
          host_rows: list[tuple[int, str]] | None = None,
          retry_of: int | None = None) -> Created:
    """Store a job (its lanes go out when it commits) with the call's audit row (they commit
    together); answer 202 and the job."""
    settings: Settings = current_app.config["RELAYFLEET_SETTINGS"]
    job = svc.start_job(db.session, principal, body, _box(), db,
                        max_timeout_s=settings.max_timeout_s,
                        lane_threads=settings.lane_threads, host_rows=host_rows,
                        retry_of=retry_of)
    audit_target(f"job:{job.id}", action=job.action, hosts=job.total,
                 **({"retry_of": retry_of} if retry_of is not None else {}))
    audit_with(db.session, 202)
    return 202, svc.accepted(job)


def create_job(principal: Principal, body: dict[str, Any], key: str | None,
               request_sha256: str) -> Created:
    """Start a job from a loaded body, once per Idempotency-Key: what ``POST /v1/jobs``
    does, and what the web console's launch page does through :func:`submit`."""
    principal.require("operator")
    status, doc = idempotent(db.session, principal, key, request_sha256,
                             lambda: start(principal, body))
    audit_target(f"job:{doc.get('id')}")
    return status, doc


def submit(principal: Principal, raw: dict[str, Any], key: str | None = None) -> Created:
    """Start a job from a document built outside an API request (the web console): the
    same checks, scoping, audit target and idempotency as ``POST /v1/jobs``."""
    body = svc.load_body(raw)
    fingerprint_key: bytes = current_app.extensions["relayfleet_fingerprint_key"]
    return create_job(principal, body, key,
                      request_fingerprint(fingerprint_key, "POST", "/v1/jobs", raw))


def retry(principal: Principal, job_id: int, key: str | None) -> tuple[int, dict[str, Any], int]:
    """Start a job for a job's failed and unreachable hosts (the API's retry and the
    console's): (status, the accepted document, hosts retried). The same key again answers
    the same new job."""
    rows = svc.retry_hosts(db.session, principal, job_id)
    old = svc.get_job(db.session, principal, job_id)
    body = svc.retry_body(old, _box(), rows)
    # the request has no body: the job retried is the request
    fingerprint_key: bytes = current_app.extensions["relayfleet_fingerprint_key"]
    status, doc = idempotent(db.session, principal, key,
                             request_fingerprint(fingerprint_key, "POST",
                                                 f"/v1/jobs/{job_id}/retry", None),
                             lambda: start(principal, body, host_rows=rows, retry_of=old.id))
    audit_target(f"job:{doc['id']}", retry_of=old.id)
    return status, doc, len(rows)


@blp.route("/jobs")
class Jobs(MethodView):
    """Jobs."""

    @blp.arguments(s.JobQuerySchema, location="query")
    @blp.response(200, s.JobPageSchema)
    def get(self, query: dict[str, Any]) -> dict[str, Any]:
        """List jobs, newest first (filter by status, action); no per-host results."""
        stmt = filtered(scoped(select(Job), Job, who()).order_by(Job.id.desc()), Job, query,
                        "status", "action")
        result = page(db.session, stmt, query["limit"], query["offset"])
        result["items"] = [svc.report(db.session, job, with_results=False)
                           for job in result["items"]]
        return result

    # an instance, not the class: webargs would build a schema per request from a class
    @blp.arguments(svc.job_create_schema())
    @blp.response(202, s.JobAcceptedSchema)
    @blp.alt_response(409, schema=s.ErrorSchema,
                      description="the same Idempotency-Key is still being handled")
    @blp.alt_response(503, schema=s.ErrorSchema, description="the job queue is unreachable")
    def post(self, body: dict[str, Any]) -> Any:
        """Start a job. Send ``Idempotency-Key``: the same key and body again answer the
        same job; the same key with another body is 422."""
        status, doc = create_job(who(), body, request.headers.get("Idempotency-Key"),
                                 fingerprint())
        return stored_answer(doc, status)


@blp.route("/jobs/<int(max=2147483647):job_id>")
class JobById(MethodView):
    """One job."""

    @blp.arguments(s.JobGetQuerySchema, location="query")
    @blp.response(200, s.JobSchema)
    def get(self, query: dict[str, Any], job_id: int) -> svc.JobReport:
        """The job, its counts and every host's result with its steps
        (``results=false``: without the per-host results; ``host_status`` and
        ``results_limit`` for some of them, page by page through ``results_next``)."""
        page = svc.ResultsPage(query.get("host_status"), query.get("results_limit"),
                               query.get("results_after", 0))
        return svc.report(db.session, svc.get_job(db.session, who(), job_id),
                          with_results=query["results"], page=page)


@blp.route("/jobs/<int(max=2147483647):job_id>/cancel")
class JobCancel(MethodView):
    """Stop a job."""

    @blp.response(200, s.JobSchema)
    def post(self, job_id: int) -> svc.JobReport:
        """Start no more hosts (those running finish); the job ends ``cancelled``."""
        audit_target(f"job:{job_id}")
        job = svc.cancel_job(db.session, who(), job_id, db)
        return svc.report(db.session, job)


@blp.route("/jobs/<int(max=2147483647):job_id>/retry")
class JobRetry(MethodView):
    """Try again where it failed."""

    @blp.response(202, s.JobAcceptedSchema)
    @blp.alt_response(409, schema=s.ErrorSchema,
                      description="the same Idempotency-Key is still being handled")
    def post(self, job_id: int) -> Any:
        """A new job with the same action and params for the failed and unreachable hosts.
        Send ``Idempotency-Key``: the same key again answers the same new job."""
        status, doc, _ = retry(who(), job_id, request.headers.get("Idempotency-Key"))
        return doc, status
