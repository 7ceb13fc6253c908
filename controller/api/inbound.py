"""Inbound ticketing webhooks that start jobs: the hooks (admins) and the signed endpoint
a ticketing system posts to (no bearer token: the hook's HMAC signature instead)."""

from __future__ import annotations

import json
from typing import Any, NoReturn

from flask import current_app, g, request
from flask.views import MethodView
from flask_smorest import Blueprint, abort
from sqlalchemy.exc import IntegrityError

from controller import dispatch
from controller import inbound as svc
from controller import inbound_schemas as s
from controller import jobs as job_svc
from controller.api import audit_target, who
from controller.config import Settings
from controller.crypto import SecretBox
from controller.db import db, utcnow
from controller.inventory import page
from controller.ledger import JobOrigin, OriginKind
from controller.models import InboundHook
from controller.schemas import ErrorSchema
from shared.errors import ValidationError

blp = Blueprint("inbound", __name__, url_prefix="/v1",
                description="Inbound ticketing webhooks that start jobs.")

#: what every refused signature answers: nothing about which part was wrong
NOT_ACCEPTED = "not accepted: the request is not signed with this hook's secret"
_SIGNATURE_HEADERS = (svc.ZENDESK_SIGNATURE, svc.ZENDESK_TIMESTAMP, svc.GENERIC_SIGNATURE,
                      svc.GENERIC_TIMESTAMP)


def _box() -> SecretBox:
    box: SecretBox = current_app.extensions["relayfleet_secrets"]
    return box


def hook_doc(hook: InboundHook, **extra: Any) -> dict[str, Any]:
    """A hook as the API shows it (its URL; never its secret)."""
    return {"id": hook.id, "name": hook.name, "tenant_id": hook.tenant_id,
            "format": hook.format, "url": svc.hook_url(hook), "mapping": hook.mapping,
            "callback_url": hook.callback_url, "enabled": hook.enabled,
            "token_id": hook.token_id, "created_at": hook.created_at, **extra}


@blp.route("/inbound-hooks")
class InboundHooks(MethodView):
    """A tenant's ticketing webhooks."""

    @blp.arguments(s.InboundHookQuerySchema, location="query")
    @blp.response(200, s.InboundHookPageSchema)
    def get(self, query: dict[str, Any]) -> dict[str, Any]:
        """List the hooks this admin sees (filter by tenant_id)."""
        who().require("admin")
        result = page(db.session, svc.hook_query(who(), query.get("tenant_id")),
                      query["limit"], query["offset"])
        result["items"] = [hook_doc(hook) for hook in result["items"]]
        return result

    @blp.arguments(s.InboundHookCreateSchema)
    @blp.response(201, s.InboundHookCreatedSchema)
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Add a hook: it gets its own operator token for the tenant (its jobs run as it)
        and a signing secret. A generic hook's secret is made here and shown only now; a
        zendesk hook takes the one Zendesk made (``secret``)."""
        hook, secret = svc.create_hook(db.session, who(), body, _box())
        audit_target(f"inbound_hook:{hook.id}", name=hook.name, tenant_id=hook.tenant_id)
        return hook_doc(hook, secret=secret)


@blp.route("/inbound-hooks/<int(max=2147483647):hook_id>")
class InboundHookById(MethodView):
    """One hook."""

    @blp.response(200, s.InboundHookSchema)
    def get(self, hook_id: int) -> dict[str, Any]:
        """Read a hook (never its secret)."""
        who().require("admin")
        return hook_doc(svc.get_hook(db.session, who(), hook_id))

    @blp.arguments(s.InboundHookUpdateSchema)
    @blp.response(200, s.InboundHookSchema)
    def patch(self, body: dict[str, Any], hook_id: int) -> dict[str, Any]:
        """Change a hook's name, mapping, callback URL, or enable/disable it."""
        audit_target(f"inbound_hook:{hook_id}", changed=sorted(body))
        return hook_doc(svc.update_hook(db.session, who(), hook_id, body))

    @blp.response(204)
    def delete(self, hook_id: int) -> None:
        """Remove a hook and revoke its token (its jobs keep their results)."""
        audit_target(f"inbound_hook:{hook_id}")
        svc.delete_hook(db.session, who(), hook_id)


@blp.route("/inbound-hooks/<int(max=2147483647):hook_id>/rotate-secret")
class InboundHookSecret(MethodView):
    """A hook's signing secret."""

    @blp.arguments(s.InboundSecretSchema, required=False)
    @blp.response(200, s.InboundSecretRotatedSchema)
    def post(self, body: dict[str, Any], hook_id: int) -> dict[str, Any]:
        """Give the hook a new signing secret; requests signed with the old one are refused
        from now on. A generic hook's new secret is made here and shown only now."""
        audit_target(f"inbound_hook:{hook_id}", change="secret rotated")
        secret = svc.rotate_secret(db.session, who(), hook_id, _box(), body.get("secret"))
        return {"id": hook_id, "secret": secret}


@blp.route("/inbound/<string(maxlength=64):public_id>")
class InboundRequest(MethodView):
    """Where a ticketing system posts (signed; no bearer token)."""

    @blp.doc(security=[], requestBody={"required": True, "content": {"application/json": {
        "schema": {"type": "object", "description": "the ticketing system's JSON object; "
                                                    "the hook's mapping reads it"}}}},
             parameters=[{"in": "header", "name": name, "required": False,
                          "schema": {"type": "string", "maxLength": 200}}
                         for name in _SIGNATURE_HEADERS])
    @blp.response(202, s.InboundAcceptedSchema, description="the job started (replayed: "
                                                           "false)")
    @blp.alt_response(200, schema=s.InboundAcceptedSchema,
                      description="this signed request was accepted before (a sender's "
                                  "retry): the job it started, replayed: true; nothing new "
                                  "starts")
    @blp.alt_response(401, schema=ErrorSchema,
                      description="not signed with the hook's secret, or too old")
    @blp.alt_response(403, schema=ErrorSchema,
                      description="the hook is disabled or its token revoked")
    @blp.alt_response(409, schema=ErrorSchema, description="this signed request was "
                                                           "accepted before and its job is "
                                                           "gone")
    def post(self, public_id: str) -> Any:
        """Start the job a signed ticketing payload maps to (zendesk:
        ``X-Zendesk-Webhook-Signature`` + ``-Timestamp``; generic:
        ``X-Relayfleet-Signature`` + ``X-Relayfleet-Timestamp``). The job runs as the
        hook's token, checked as ``POST /v1/jobs`` checks one; its result goes to the
        hook's callback URL, signed. The same signed request again starts nothing: it
        answers 200 with the job the first one started (``replayed: true``)."""
        settings: Settings = current_app.config["RELAYFLEET_SETTINGS"]
        session = db.session
        hook = svc.find_hook(session, public_id)
        if hook is None:
            _refuse(NOT_ACCEPTED)
        audit_target(f"inbound_hook:{hook.id}")
        body = request.get_data(cache=True)
        headers = {name: request.headers.get(name, "") for name in _SIGNATURE_HEADERS}
        secret = (_box().open(hook.secret_sealed) or "").encode()
        try:
            verified = svc.verify(hook.format, secret, headers, body, now=utcnow(),
                                  window_s=settings.inbound_window_s)
        except svc.BadSignature:
            _refuse(NOT_ACCEPTED)
        except svc.OutsideWindow as exc:
            _refuse(str(exc))
        principal = svc.hook_principal(session, hook)
        g.principal = principal  # the audit row names the hook's token
        try:
            delivery = svc.record_delivery(session, hook, verified)
        except IntegrityError:
            session.rollback()
            job = svc.replayed_job(session, hook.id, verified)
            return {"job": {**job_svc.accepted(job), "status": job.status},
                    "replayed": True}, 200
        payload = _payload(body)
        raw = svc.build_job(hook.mapping, payload, hook.callback_url)
        job = job_svc.start_job(
            session, principal, job_svc.load_body(raw), _box(), db,
            max_timeout_s=settings.max_timeout_s, lane_threads=settings.lane_threads,
            origin=JobOrigin(OriginKind.INBOUND, inbound_hook_id=hook.id))
        delivery.job_id = job.id
        audit_target(f"job:{job.id}", inbound_hook=hook.id, action=job.action,
                     hosts=job.total)
        dispatch.commit(session)
        return {"job": job_svc.accepted(job), "replayed": False}, 202


def _refuse(message: str) -> NoReturn:
    """401: the request does not prove it comes from the hook's sender."""
    abort(401, message=message)
    raise AssertionError("unreachable")  # pragma: no cover (abort raises)


def _payload(body: bytes) -> dict[str, Any]:
    """The signed body as a JSON object (422 otherwise)."""
    if b"\\u0000" in body:
        raise ValidationError.for_field("json", "NUL characters (\\u0000) are not accepted")
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        payload = None
    if not isinstance(payload, dict):
        raise ValidationError.for_field("json", "the body must be a JSON object")
    return payload
