"""The agent's HTTP API: thin views over the shared MTA operations.

``create_app(config)`` builds the Flask app. Every route but ``/v1/health`` needs
``Authorization: Bearer TOKEN`` (compared in constant time against the configured
SHA-256). Errors use the one relayfleet envelope ``{code, status, message, errors}``.
A completed operation answers 200 with ``ok`` saying whether it worked, even when the
host refused the change and rolled back: the HTTP status describes the request, the
document describes the host.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from flask import Flask, g, request
from flask.views import MethodView
from flask_smorest import Blueprint, abort

from agent.config import AgentConfig
from shared import __version__
from shared import errors as rf_errors
from shared import schemas as s
from shared.executor import LocalExecutor
from shared.mta import FlushRequest, MtaOperations, operations_for
from shared.results import OperationResult
from shared.validation import parse_smarthost_request
from shared.webapi import EnvelopeApi, register_error_handler

log = logging.getLogger("relayfleet.agent")
OPEN_PATHS = frozenset({"/v1/health"})
MAX_BODY = 64 * 1024

_STATUS_FOR = {
    rf_errors.ValidationError: 422,
    rf_errors.ChangeInProgress: 409,
    rf_errors.NotSupported: 501,
    rf_errors.ConfigError: 500,
}


blp = Blueprint("agent", __name__, url_prefix="/v1",
                description="Drive this host's MTA: smarthost, queue, log, diagnose.")


def _ops() -> MtaOperations:
    config: AgentConfig = g.config
    return operations_for(LocalExecutor(), config.profile)


def _fail_on(result: OperationResult) -> None:
    """Turn an operation that could not start into the matching HTTP error."""
    if result.error_kind == "conflict":
        abort(409, message=result.error or "another configuration change is running")


def _operation_doc(result: OperationResult) -> dict[str, Any]:
    for step in result.steps:
        # Names, exit codes and timings only: outputs stay in the answer (redacted there).
        log.info("%s step %s exit=%s %.3fs%s", result.operation, step.name, step.exit_code,
                 step.duration_s, "" if step.ok else " FAILED")
    return {"ok": result.ok, "error": result.error, "error_kind": result.error_kind,
            "steps": [step.to_dict() for step in result.steps]}


def _change_doc(result: OperationResult) -> dict[str, Any]:
    data = result.data
    return {**_operation_doc(result), "changed": result.changed, "diff": data.get("diff", ""),
            "smarthost": data.get("smarthost"), "config_in_sync": data.get("config_in_sync", False),
            "rolled_back": result.rolled_back, "dry_run": bool(data.get("dry_run")),
            "backup": data.get("backup")}


def _one_change_at_a_time(run: Callable[[], OperationResult], dry_run: bool) -> OperationResult:
    lock: threading.Lock = g.change_lock
    if dry_run:
        return run()
    if not lock.acquire(blocking=False):
        abort(409, message="another configuration change is running on this host; "
                           "try again when it has finished")
    try:
        return run()
    finally:
        lock.release()


@blp.route("/health")
class Health(MethodView):
    """Liveness, without authentication."""

    @blp.response(200, s.HealthSchema)
    def get(self) -> dict[str, Any]:
        """Is the agent up, and which version is it."""
        return {"status": "ok", "version": __version__}


@blp.route("/status")
class Status(MethodView):
    """One look at the host."""

    @blp.response(200, s.StatusSchema)
    def get(self) -> dict[str, Any]:
        """Hostname, MTA state, smarthost, config sync, queue size, /etc/hosts health."""
        return _ops().status().data


@blp.route("/smarthost")
class Smarthost(MethodView):
    """The smarthost outbound mail goes through."""

    @blp.response(200, s.SmarthostReadSchema)
    def get(self) -> dict[str, Any]:
        """The configured smarthost and whether sendmail.mc and sendmail.cf agree."""
        data = _ops().read_smarthost().data
        return {"smarthost": data["smarthost"], "config_in_sync": data["config_in_sync"]}

    @blp.arguments(s.SmarthostRequestSchema)
    @blp.response(200, s.ChangeResultSchema)
    @blp.alt_response(409, schema=s.ErrorSchema, description="another change is running")
    def put(self, body: dict[str, Any]) -> dict[str, Any]:
        """Set the smarthost: validate, compile, check, swap, make, restart, verify."""
        dry_run = body.pop("dry_run")
        if body.get("auth") is None:
            body.pop("auth", None)
        request_obj = parse_smarthost_request(body)
        result = _one_change_at_a_time(
            lambda: _ops().set_smarthost(request_obj, dry_run=dry_run), dry_run)
        _fail_on(result)
        return _change_doc(result)

    @blp.arguments(s.DryRunSchema, required=False)
    @blp.response(200, s.ChangeResultSchema)
    @blp.alt_response(409, schema=s.ErrorSchema, description="another change is running")
    def delete(self, body: dict[str, Any] | None) -> dict[str, Any]:
        """Remove the smarthost (back to direct delivery), with the same safety."""
        dry_run = bool((body or {}).get("dry_run", False))
        result = _one_change_at_a_time(lambda: _ops().remove_smarthost(dry_run=dry_run), dry_run)
        _fail_on(result)
        return _change_doc(result)


@blp.route("/queue")
class Queue(MethodView):
    """The mail queue."""

    @blp.response(200, s.QueueSchema)
    def get(self) -> dict[str, Any]:
        """Every queued message with its recipients and deferral reason."""
        return _ops().queue_list().data


@blp.route("/queue/flush")
class QueueFlush(MethodView):
    """Run the queue now."""

    @blp.arguments(s.FlushRequestSchema, required=False)
    @blp.response(200, s.FlushResultSchema)
    def post(self, body: dict[str, Any] | None) -> dict[str, Any]:
        """``sendmail -OTimeout.hoststatus=0m -q -v`` (or by queue id, recipient, sender)."""
        body = body or {}
        chosen = [k for k in ("queue_id", "recipient", "sender") if body.get(k)]
        if len(chosen) > 1:
            abort(422, errors={"json": {chosen[1]: ["give at most one of queue_id, recipient, "
                                                    "sender"]}})
        result = _ops().queue_flush(FlushRequest(
            reset_host_status=body.get("reset_host_status", True),
            queue_id=body.get("queue_id"), recipient=body.get("recipient"),
            sender=body.get("sender")))
        return {**_operation_doc(result), "before": result.data["before"],
                "after": result.data["after"], "deliveries": result.data["deliveries"],
                "remaining": result.data["remaining"]}


@blp.route("/log")
class Log(MethodView):
    """The mail log."""

    @blp.arguments(s.LogQuerySchema, location="query")
    @blp.response(200, s.LogSchema)
    def get(self, query: dict[str, Any]) -> dict[str, Any]:
        """The last ``lines`` maillog lines, parsed, and a summary by stat."""
        return _ops().read_log(query["lines"]).data


@blp.route("/diagnose")
class Diagnose(MethodView):
    """The delivery checklist."""

    @blp.arguments(s.DiagnoseRequestSchema, required=False)
    @blp.response(200, s.DiagnoseSchema)
    def post(self, body: dict[str, Any] | None) -> dict[str, Any]:
        """Hostname, /etc/hosts, MTA, config sync, smarthost DNS + SMTP, SPF."""
        body = body or {}
        result = _ops().diagnose(domain=body.get("domain"), public_ip=body.get("public_ip"))
        return {**_operation_doc(result), "checks": result.data["checks"]}


def create_app(config: AgentConfig) -> Flask:
    """Build the agent's Flask app for ``config``."""
    app = Flask("relayfleet.agent")
    app.config.update(
        API_TITLE="relayfleet agent", API_VERSION=__version__, OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/", OPENAPI_JSON_PATH="openapi.json",
        MAX_CONTENT_LENGTH=MAX_BODY, JSON_SORT_KEYS=False,
        API_SPEC_OPTIONS={"components": {"securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"}}},
            "security": [{"bearer": []}]},
    )
    api = EnvelopeApi(app)
    api.register_blueprint(blp)
    change_lock = threading.Lock()

    @app.before_request
    def authenticate() -> None:
        g.started = time.monotonic()
        g.config = config
        g.change_lock = change_lock
        if request.path in OPEN_PATHS:
            return
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token or not config.token_matches(token.strip()):
            abort(401, message="missing or wrong bearer token: send "
                               "'Authorization: Bearer <token>'",
                  headers={"WWW-Authenticate": 'Bearer realm="relayfleet-agent"'})

    @app.after_request
    def access_log(response: Any) -> Any:
        started = g.get("started", time.monotonic())
        log.info("%s %s %s %.1fms", request.method, request.path, response.status_code,
                 (time.monotonic() - started) * 1000)
        return response

    register_error_handler(app, api, _STATUS_FOR, log)

    return app
