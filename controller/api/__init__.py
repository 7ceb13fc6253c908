"""The controller's REST API: blueprints for inventory, jobs, fleet and audit."""

from __future__ import annotations

from typing import Any

from flask import Response, current_app, g, jsonify, make_response, request

from controller.auth import Principal
from controller.idempotency import request_fingerprint


def who() -> Principal:
    """The principal of the current request (set by the authentication hook)."""
    principal: Principal = g.principal
    return principal


def audit_target(target: str, **detail: object) -> None:
    """Name the object a mutating call acted on, for the audit log."""
    g.audit_target = target
    if detail:
        g.audit_detail = {**g.get("audit_detail", {}), **detail}


def stored_answer(doc: dict[str, Any], status: int) -> Response:
    """An answer that is already plain JSON (a replayed idempotent answer): sent as it is,
    not dumped through a schema again."""
    return make_response(jsonify(doc), status)


def fingerprint() -> str:
    """The Idempotency-Key fingerprint of the current request."""
    key: bytes = current_app.extensions["relayfleet_fingerprint_key"]
    return request_fingerprint(key, request.method, request.path, request.get_json())
