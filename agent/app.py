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
from collections.abc import Callable, Mapping
from typing import Any

from flask import Flask, g, request
from flask.views import MethodView
from flask_smorest import Blueprint, abort

from agent.config import AgentConfig, MtaUndetected, ProfileResolver
from shared import __version__
from shared import errors as rf_errors
from shared import schemas as s
from shared.actions import ACTIONS, Action, schema_instance
from shared.executor import Executor, LocalExecutor
from shared.mta import MtaOperations
from shared.mta_kind import MTA_HEADER
from shared.results import OperationResult
from shared.webapi import EnvelopeApi, register_error_handler

log = logging.getLogger("relayfleet.agent")
OPEN_PATHS = frozenset({"/v1/health"})
MAX_BODY = 64 * 1024

#: first match wins: MtaUndetected before its base NotSupported
_STATUS_FOR = {
    MtaUndetected: 503,
    rf_errors.ValidationError: 422,
    rf_errors.ChangeInProgress: 409,
    rf_errors.NotSupported: 501,
    rf_errors.ConfigError: 500,
}


#: the catalogue action each route serves, by (method, URL rule)
_BY_ROUTE: dict[tuple[str, str], Action[Any]] = {
    (action.route.method, action.route.path): action for action in ACTIONS.values()}

blp = Blueprint("agent", __name__, url_prefix="/v1",
                description="Drive this host's MTA: smarthost, queue, log, diagnose.")


def _ops() -> MtaOperations:
    profiles: ProfileResolver = g.profiles
    return profiles.operations()


def _one_change_at_a_time(run: Callable[[], OperationResult]) -> OperationResult:
    lock: threading.Lock = g.change_lock
    if not lock.acquire(blocking=False):
        abort(409, message="another configuration change is running on this host; "
                           "try again when it has finished")
    try:
        return run()
    finally:
        lock.release()


def _perform(body: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Run the catalogue action this route serves on the request its schema loaded, and
    answer the action's document.

    A change (not a dry run) holds the agent's change lock; one that could not start
    because another change holds the host's lock answers 409 too.
    """
    action = _BY_ROUTE[(request.method, request.url_rule.rule if request.url_rule else "")]
    loaded = dict(body) if body is not None else schema_instance(action.params_schema).load({})
    dry_run = bool(loaded.get("dry_run", False))
    request_obj = action.from_loaded(loaded)
    ops = _ops()

    def run() -> OperationResult:
        return action.run(ops, request_obj, dry_run=dry_run)

    result = _one_change_at_a_time(run) if action.changes_host and not dry_run else run()
    if result.error_kind == "conflict":
        abort(409, message=result.error or "another configuration change is running")
    for step in result.steps:
        # Names, exit codes and timings only: outputs stay in the answer (redacted there).
        log.info("%s step %s exit=%s %.3fs%s", result.operation, step.name, step.exit_code,
                 step.duration_s, "" if step.ok else " FAILED")
    return action.answer(result)


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
        return _perform()


@blp.route("/smarthost")
class Smarthost(MethodView):
    """The smarthost outbound mail goes through."""

    @blp.response(200, s.SmarthostReadSchema)
    def get(self) -> dict[str, Any]:
        """The configured smarthost and whether sendmail.mc and sendmail.cf agree."""
        return _perform()

    @blp.arguments(s.SmarthostRequestSchema)
    @blp.response(200, s.ChangeResultSchema)
    @blp.alt_response(409, schema=s.ErrorSchema, description="another change is running")
    def put(self, body: dict[str, Any]) -> dict[str, Any]:
        """Set the smarthost: validate, compile, check, swap, make, restart, verify."""
        return _perform(body)

    @blp.arguments(s.DryRunSchema, required=False)
    @blp.response(200, s.ChangeResultSchema)
    @blp.alt_response(409, schema=s.ErrorSchema, description="another change is running")
    def delete(self, body: dict[str, Any] | None) -> dict[str, Any]:
        """Remove the smarthost (back to direct delivery), with the same safety."""
        return _perform(body)


@blp.route("/queue")
class Queue(MethodView):
    """The mail queue."""

    @blp.response(200, s.QueueSchema)
    def get(self) -> dict[str, Any]:
        """Every queued message with its recipients and deferral reason."""
        return _perform()


@blp.route("/queue/flush")
class QueueFlush(MethodView):
    """Run the queue now."""

    @blp.arguments(s.FlushRequestSchema, required=False)
    @blp.response(200, s.FlushResultSchema)
    def post(self, body: dict[str, Any] | None) -> dict[str, Any]:
        """``sendmail -OTimeout.hoststatus=0m -q -v`` (or by queue id, recipient, sender)."""
        return _perform(body)


@blp.route("/log")
class Log(MethodView):
    """The mail log."""

    @blp.arguments(s.LogQuerySchema, location="query")
    @blp.response(200, s.LogSchema)
    def get(self, query: dict[str, Any]) -> dict[str, Any]:
        """The last ``lines`` maillog lines, parsed, and a summary by stat."""
        return _perform(query)


@blp.route("/diagnose")
class Diagnose(MethodView):
    """The delivery checklist."""

    @blp.arguments(s.DiagnoseRequestSchema, required=False)
    @blp.response(200, s.DiagnoseSchema)
    def post(self, body: dict[str, Any] | None) -> dict[str, Any]:
        """Hostname, /etc/hosts, MTA, config sync, smarthost DNS + SMTP, SPF."""
        return _perform(body)


@blp.route("/hostname")
class Hostname(MethodView):
    """The host's own name, as the MTA greets relays with it."""

    @blp.arguments(s.HostnameRequestSchema)
    @blp.response(200, s.ChangeResultSchema)
    @blp.alt_response(409, schema=s.ErrorSchema, description="another change is running")
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Make the name fully qualified in /etc/hosts (the seed's first step), tell the MTA."""
        return _perform(body)


def create_app(config: AgentConfig, *,
               executor_factory: Callable[[], Executor] = LocalExecutor) -> Flask:
    """Build the agent's Flask app for ``config``; operations run through executors made
    by ``executor_factory`` (this machine; tests pass :class:`shared.testing.FakeExecutor`).

    The app's :class:`~agent.config.ProfileResolver` (``app.extensions["relayfleet_profiles"]``)
    makes the host profile once; with ``[mta] kind = "auto"`` it detects the MTA at first use
    through the same executors, and until it can, operations answer 503 saying what to fix.
    """
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
    served = {(method, rule.rule) for rule in app.url_map.iter_rules()
              for method in rule.methods or ()}
    missing = sorted(f"{a.name}: {a.route.method} {a.route.path}" for a in ACTIONS.values()
                     if (a.route.method, a.route.path) not in served)
    if missing:
        raise RuntimeError(f"no agent route for {', '.join(missing)}")
    change_lock = threading.Lock()
    profiles = ProfileResolver(config.mta, executor_factory)
    app.extensions["relayfleet_profiles"] = profiles

    @app.before_request
    def authenticate() -> None:
        g.started = time.monotonic()
        g.config = config
        g.change_lock = change_lock
        g.profiles = profiles
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
        # Every answer says which MTA the agent drives, so that the controller learns a
        # host's kind from whatever it asked (an auto host's kind once it was detected).
        kind = profiles.known_kind
        if kind is not None:
            response.headers[MTA_HEADER] = kind
        started = g.get("started", time.monotonic())
        log.info("%s %s %s %.1fms", request.method, request.path, response.status_code,
                 (time.monotonic() - started) * 1000)
        return response

    register_error_handler(app, api, _STATUS_FOR, log)

    return app
