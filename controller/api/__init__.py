"""The controller's REST API: blueprints for inventory, jobs, fleet and audit."""

from __future__ import annotations

import functools
import re
from typing import Any, cast

from flask import Request, Response, current_app, g, jsonify, make_response, request
from sqlalchemy import event, insert
from sqlalchemy.orm import Session

from controller.auth import Principal
from controller.db import table_of, utcnow
from controller.idempotency import request_fingerprint
from controller.models import AuditEvent
from controller.precompiled import Precompiled

_ROUTE_ARG = re.compile(r"<(?:[^:<>]+:)?(\w+)>")
#: session.info keys: the audit row written in the session's open transaction, and the one
#: that transaction committed
_AUDIT_PENDING = "relayfleet_audit_pending"
_AUDIT_COMMITTED = "relayfleet_audit_committed"
_AUDIT_INSERT = Precompiled(insert(table_of(AuditEvent)).returning(table_of(AuditEvent).c.id))


def who() -> Principal:
    """The principal of the current request (set by the authentication hook)."""
    principal: Principal = g.principal
    return principal


def audit_target(target: str, **detail: object) -> None:
    """Name the object a mutating call acted on, for the audit log."""
    g.audit_target = target
    if detail:
        g.audit_detail = {**g.get("audit_detail", {}), **detail}


def audit_row(status: int) -> dict[str, Any]:
    """The audit row of the current call, ended with ``status`` (no ``at``)."""
    # The request and its globals, looked up once: every use of Flask's proxies looks them
    # up again, and a mutating call's row is made twice (written, then checked).
    current: Request = cast(Any, request)._get_current_object()
    state = cast(Any, g)._get_current_object()
    principal: Principal | None = state.get("principal")
    route = current.url_rule.rule if current.url_rule else "unmatched"
    target = state.get("audit_target") or (
        ",".join(f"{k}={v}" for k, v in (current.view_args or {}).items()) or None)
    return dict(token_id=principal.token_id if principal else None,
                token_name=principal.name if principal else None,
                tenant_id=principal.tenant_id if principal else None,
                action=_audit_action(current.method, route),
                target=target, outcome=status, detail=state.get("audit_detail"),
                remote_addr=current.remote_addr)


@functools.lru_cache(maxsize=1024)
def _audit_action(method: str, route: str) -> str:
    """How the audit log names a call: ``POST /v1/jobs/{job_id}/retry`` (bounded: a client
    may send any method, to an unmatched path)."""
    return f"{method} {_ROUTE_ARG.sub(_braced, route)}"


def _braced(match: re.Match[str]) -> str:
    return "{" + match.group(1) + "}"


def audit_with(session: Session, status: int) -> None:
    """Write the current call's audit row (as it stands, ended with ``status``) in
    ``session``'s open transaction: a create commits with its audit row, and the
    after-request hook writes none of its own (it corrects this one if the call ended
    otherwise, and writes its own if this transaction did not commit)."""
    row = audit_row(status)
    row_id = _AUDIT_INSERT.execute(session, {**row, "at": utcnow()}).scalar_one()
    session.info[_AUDIT_PENDING] = (row_id, row)


def committed_audit(session: Session | None) -> tuple[int, dict[str, Any]] | None:
    """(id, row) of the audit row :func:`audit_with` wrote in a transaction of ``session``
    that committed, if any (forgotten once asked)."""
    if session is None:
        return None
    written: tuple[int, dict[str, Any]] | None = session.info.pop(_AUDIT_COMMITTED, None)
    return written


@event.listens_for(Session, "after_commit")
def _audit_committed(session: Session) -> None:
    pending = session.info.pop(_AUDIT_PENDING, None)
    if pending is not None:
        session.info[_AUDIT_COMMITTED] = pending


@event.listens_for(Session, "after_rollback")
def _audit_rolled_back(session: Session) -> None:
    session.info.pop(_AUDIT_PENDING, None)


def stored_answer(doc: dict[str, Any], status: int) -> Response:
    """An answer that is already plain JSON (a replayed idempotent answer): sent as it is,
    not dumped through a schema again."""
    return make_response(jsonify(doc), status)


def fingerprint() -> str:
    """The Idempotency-Key fingerprint of the current request."""
    key: bytes = current_app.extensions["relayfleet_fingerprint_key"]
    return request_fingerprint(key, request.method, request.path, request.get_json())
