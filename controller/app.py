"""The controller's Flask app factory: API, auth, audit, metrics, Celery.

Views only validate and enqueue; jobs run in Celery workers (:mod:`controller.lanes`).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flask import Flask, current_app, g, request
from flask.views import MethodView
from flask_smorest import Blueprint, abort
from sqlalchemy import insert, update

from controller import console
from controller import errors as ctl_errors
from controller.api import (
    alerts,
    audit_row,
    committed_audit,
    doctor,
    fleet,
    inbound,
    inventory,
    jobs,
    policies,
    schedules,
)
from controller.auth import authenticate
from controller.celery_app import celery_init_app
from controller.config import load_settings
from controller.crypto import SecretBox, derive_key
from controller.db import db, utcnow
from controller.metrics import LATENCY, REQUESTS
from controller.models import AuditEvent
from shared import __version__
from shared import errors as rf_errors
from shared import schemas as agent_schemas
from shared.actions import JOB_ACTIONS, job_action, result_component_name
from shared.webapi import EnvelopeApi, register_error_handler

log = logging.getLogger("relayfleet.controller")
OPEN_PATHS = frozenset({"/v1/health"})
#: paths that authenticate by their own means, not a bearer token: an inbound ticketing
#: hook checks the HMAC signature its sender computed (controller.inbound)
OPEN_PREFIXES = ("/v1/inbound/",)
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: unauthenticated calls from one address are audited one by one only once per this
UNAUTHENTICATED_WINDOW_S = 60.0

_STATUS_FOR: dict[type[rf_errors.RelayfleetError], int] = {
    ctl_errors.NotFound: 404,
    ctl_errors.PermissionDenied: 403,
    ctl_errors.Conflict: 409,
    ctl_errors.Unavailable: 503,
    rf_errors.ValidationError: 422,
    rf_errors.NotSupported: 501,
}

health = Blueprint("health", __name__, url_prefix="/v1", description="Liveness.")


@health.route("/health")
class Health(MethodView):
    """Liveness, without authentication."""

    @health.response(200, agent_schemas.HealthSchema)
    def get(self) -> dict[str, str]:
        """Is the controller up, and which version is it."""
        return {"status": "ok", "version": __version__}


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the controller app; ``config`` overrides settings read from the environment."""
    settings = load_settings().with_overrides(config or {})
    app = Flask("relayfleet.controller")
    app.config.update(
        RELAYFLEET_SETTINGS=settings, MAX_CONTENT_LENGTH=settings.max_body_bytes,
        API_TITLE="relayfleet controller", API_VERSION=__version__, OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/", OPENAPI_JSON_PATH="openapi.json",
        API_SPEC_OPTIONS={"components": {"securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"}}},
            "security": [{"bearer": []}]},
    )
    db.init_app(app)
    app.extensions["relayfleet_unauthenticated"] = UnauthenticatedTally()
    app.extensions["relayfleet_secrets"] = SecretBox(settings.secret_key,
                                                     settings.old_secret_keys)
    app.extensions["relayfleet_fingerprint_key"] = derive_key(settings.secret_key,
                                                              "idempotency v1")
    api = EnvelopeApi(app)
    app.extensions["relayfleet_api"] = api
    for blueprint in (health, inventory.blp, jobs.blp, fleet.blp, policies.blp, schedules.blp,
                      alerts.blp, doctor.blp, inbound.blp, fleet.meta):
        api.register_blueprint(blueprint)
    _publish_action_results(api)
    celery_init_app(app)

    @app.before_request
    def authenticate_request() -> None:
        g.started = time.monotonic()
        if (request.path in OPEN_PATHS or request.path.startswith(OPEN_PREFIXES)
                or console.is_console_path(request.path)):
            return  # the console authenticates by its session cookie (console.session)
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        principal = authenticate(db.session, token.strip()) if (
            scheme.lower() == "bearer" and token.strip()) else None
        if principal is None:
            abort(401, message="missing, wrong or revoked bearer token: send "
                               "'Authorization: Bearer <token>' (make one with "
                               "`relayfleet-controller token create`)",
                  headers={"WWW-Authenticate": 'Bearer realm="relayfleet"'})
        g.principal = principal
        _refuse_nul()

    @app.after_request
    def account(response: Any) -> Any:
        route = request.url_rule.rule if request.url_rule else "unmatched"
        elapsed = time.monotonic() - g.get("started", time.monotonic())
        REQUESTS.labels(request.method, route, str(response.status_code)).inc()
        LATENCY.labels(route).observe(elapsed)
        if request.method in MUTATING:
            _audit(route, response.status_code)
        log.info("%s %s %s %.1fms", request.method, request.path, response.status_code,
                 elapsed * 1000)
        return response

    register_error_handler(app, api, _STATUS_FOR, log, not_json=console.is_console_path,
                           not_json_error=console.error_page)
    console.init_app(app)
    return app


def _publish_action_results(api: EnvelopeApi) -> None:
    """Publish each job action's result schema (the data of its host results) as a
    component named after the action, e.g. ``SetSmarthostResult``."""
    published: dict[type, str] = {}
    for name in JOB_ACTIONS:
        schema, component = job_action(name).result_schema, result_component_name(name)
        if schema in published:
            # Actions that share a schema (set and remove) point at its one component:
            # apispec warns, and may resolve references wrongly, if a schema is added twice.
            api.spec.components.schema(
                component, {"$ref": f"#/components/schemas/{published[schema]}"})
        else:
            api.spec.components.schema(component, schema=schema)
            published[schema] = component


def _refuse_nul() -> None:
    """No stored value may hold NUL (PostgreSQL text cannot): refuse it up front."""
    if any("\x00" in key or "\x00" in value for key, value in request.args.items(multi=True)):
        raise rf_errors.ValidationError.for_field("query", "NUL characters are not accepted")
    if request.content_length and b"\\u0000" in request.get_data(cache=True):
        raise rf_errors.ValidationError.for_field("json", "NUL characters (\\u0000) are not "
                                                          "accepted")


@dataclass
class _RefusedWindow:
    """Unauthenticated calls from one address, counted from ``start`` on."""

    start: float
    started_at: dt.datetime
    counted: int = 0


class UnauthenticatedTally:
    """Refused (401) mutating calls per remote address and window (per process).

    The first refused call of a window is audited as it happens (auditors see it at once);
    the rest are only counted, and written as one summary row once the window is over. A
    flood of bad tokens thus costs the database (SQLite: its one write lock) two rows per
    address per minute, not one per request. Past ``max_addresses`` addresses at once,
    the others share one entry (``*``), so that the memory used stays bounded.
    """

    def __init__(self, window_s: float = UNAUTHENTICATED_WINDOW_S,
                 max_addresses: int = 10_000) -> None:
        self.window_s = window_s
        self.max_addresses = max_addresses
        self._lock = threading.Lock()
        self._windows: dict[str, _RefusedWindow] = {}

    def refused(self, address: str, now: float) -> bool:
        """Count a refused call; ``True`` if it opens a window (audit it as it is).
        Call :meth:`ended` first: a window found here that is already over (another
        thread's) takes the call into the summary the next :meth:`ended` writes."""
        with self._lock:
            if address not in self._windows and len(self._windows) >= self.max_addresses:
                address = "*"
            window = self._windows.get(address)
            if window is None:
                self._windows[address] = _RefusedWindow(now, utcnow())
                return True
            window.counted += 1
            return False

    def ended(self, now: float) -> list[tuple[str, _RefusedWindow]]:
        """Windows that are over and counted calls not yet written (they are forgotten)."""
        with self._lock:
            over = [(address, window) for address, window in self._windows.items()
                    if now - window.start >= self.window_s]
            for address, _window in over:
                del self._windows[address]
        return [(address, window) for address, window in over if window.counted]


def _summary_row(address: str, window: _RefusedWindow, window_s: float) -> dict[str, Any]:
    return dict(at=utcnow(), action="unauthenticated calls (summary)", target=None,
                outcome=401, remote_addr=None if address == "*" else address,
                detail={"count": window.counted, "since": window.started_at.isoformat(),
                        "window_s": window_s,
                        "note": "refused calls after the first of the window, counted"})


def _audit(route: str, status: int) -> None:
    """Record a mutating call in its own transaction (whatever became of the request's);
    unauthenticated calls are rate-limited into summaries (:class:`UnauthenticatedTally`).
    A call whose row went in with the request's own transaction (:func:`audit_with`) only
    has that row corrected when it ended otherwise than the row says."""
    principal = g.get("principal")
    tally: UnauthenticatedTally = current_app.extensions["relayfleet_unauthenticated"]
    now = time.monotonic()
    rows = [_summary_row(address, window, tally.window_s)
            for address, window in tally.ended(now)]
    written = committed_audit(g.get("db_session"))
    correction: tuple[int, dict[str, Any]] | None = None
    # Calls refused without a principal (the API's 401s, the console's 400/429 before a
    # session) are rate-limited into summaries: a flood must not write a row per request.
    signed_out_refusal = principal is None and 400 <= status < 500
    if not signed_out_refusal or tally.refused(request.remote_addr or "?", now):
        row = audit_row(status)
        if written is None:
            rows.append({**row, "at": utcnow()})
        elif written[1] != row:
            correction = (written[0], row)
    if not rows and correction is None:
        return
    try:
        # The request's own session: on SQLite a second connection would wait for this
        # one's transaction. Whatever the view left uncommitted is not kept.
        session = db.session
        session.rollback()
        if rows:
            session.execute(insert(AuditEvent), rows)
        if correction is not None:
            session.execute(update(AuditEvent).where(AuditEvent.id == correction[0])
                            .values(correction[1]))
        session.commit()
    except Exception:
        log.exception("could not write the audit record for %s %s", request.method, route)
