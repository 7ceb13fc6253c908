"""marshmallow schemas of inbound ticketing hooks (``/v1/inbound-hooks``, ``/v1/inbound``)."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates, validates_schema

from controller.inbound import FORMATS, INBOUND_ACTIONS, MAX_HOSTS
from controller.schemas import (
    MAX_ID,
    NAME_RE,
    JobAcceptedSchema,
    PageQuerySchema,
    PageSchema,
    check_http_url,
)
from shared.schemas import FullRegexp, StrictSchema, WholeInteger

#: a JSON pointer (RFC 6901): "" or "/a/b~1c" (~0 is "~", ~1 is "/")
POINTER_RE = r"^(/([^~/]|~[01])*)*$"
#: a param or option name (the job's own schemas say which exist)
KEY_RE = r"^[a-z][a-z0-9_]{0,63}$"
_NAME_ERROR = ("1-100 letters, digits, spaces, '.', '_' or '-', starting with a letter or "
               "digit")


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float) or (
        isinstance(value, str) and len(value) <= 500)


class SourceSchema(StrictSchema):
    """Where a mapped field's value comes from: ``pointer`` into the payload, or a fixed
    ``value`` (exactly one)."""

    pointer = fields.String(validate=[validate.Length(max=200), FullRegexp(
        POINTER_RE, error="a JSON pointer such as /ticket/id ('~1' for '/', '~0' for '~')")],
        metadata={"example": "/ticket/host"})
    value = fields.Raw(allow_none=True, metadata={
        "description": "a fixed JSON value: a string, number, boolean, null, or a list of "
                       f"up to {MAX_HOSTS} of them"})

    @validates_schema
    def _one(self, data: dict[str, Any], **_: Any) -> None:
        if ("pointer" in data) == ("value" in data):
            raise ValidationError("give exactly one of pointer, value", "pointer")
        value = data.get("value")
        if "value" in data and not (_scalar(value) or (
                isinstance(value, list) and len(value) <= MAX_HOSTS
                and all(_scalar(item) for item in value))):
            raise ValidationError("a string (up to 500 characters), number, boolean, null, "
                                  f"or a list of up to {MAX_HOSTS} of them", "value")


_SOURCES = fields.Dict(keys=fields.String(validate=FullRegexp(KEY_RE)),
                       values=fields.Nested(SourceSchema), load_default=dict,
                       validate=validate.Length(max=20))


class MappingSchema(StrictSchema):
    """How a payload becomes a job: the allowed actions, and where the action, the hosts,
    the params, the options and the ticket reference come from."""

    actions = fields.List(fields.String(validate=validate.OneOf(INBOUND_ACTIONS)),
                          required=True, validate=validate.Length(1, len(INBOUND_ACTIONS)),
                          metadata={"description": "the allow-list: a payload naming any "
                                                   "other action is refused"})
    action = fields.Nested(SourceSchema, required=True)
    host = fields.Nested(SourceSchema, required=True, metadata={
        "description": f"a host name or id, or a list of up to {MAX_HOSTS} (the job's target "
                       "hosts; only the hook's tenant's hosts exist for it)"})
    params = _SOURCES
    options = _SOURCES
    reference = fields.Nested(SourceSchema, metadata={
        "description": "a ticket id: added to the callback URL as ?reference=ID"})

    @validates_schema
    def _fixed_action_allowed(self, data: dict[str, Any], **_: Any) -> None:
        action = data.get("action") or {}
        if "value" in action and action["value"] not in data.get("actions", []):
            raise ValidationError("the fixed action must be one of actions", "action")


def _callback_url(value: str | None) -> None:
    if value is not None:
        check_http_url(value, 1500)


class InboundHookCreateSchema(StrictSchema):
    """POST /v1/inbound-hooks."""

    name = fields.String(required=True, validate=FullRegexp(NAME_RE, error=_NAME_ERROR),
                         metadata={"example": "acme zendesk"})
    tenant_id = WholeInteger(required=True, strict=True, validate=validate.Range(1, MAX_ID))
    format = fields.String(required=True, validate=validate.OneOf(FORMATS), metadata={
        "description": "zendesk: X-Zendesk-Webhook-Signature; generic: X-Relayfleet-Signature"})
    mapping = fields.Nested(MappingSchema, required=True)
    callback_url = fields.String(load_default=None, allow_none=True, metadata={
        "description": "gets each job's final document, signed with the tenant's callback "
                       "secret (X-Relayfleet-Signature)"})
    secret = fields.String(load_only=True, validate=validate.Length(16, 200), metadata={
        "description": "the signing secret (required for zendesk: Zendesk makes it; generic: "
                       "made by the controller and shown once when left out)"})

    @validates("callback_url")
    def _callback(self, value: str | None, **_: Any) -> None:
        _callback_url(value)


class InboundHookUpdateSchema(StrictSchema):
    """PATCH /v1/inbound-hooks/{id}: any of these."""

    name = fields.String(validate=FullRegexp(NAME_RE, error=_NAME_ERROR))
    mapping = fields.Nested(MappingSchema)
    callback_url = fields.String(allow_none=True)
    enabled = fields.Boolean()

    @validates("callback_url")
    def _callback(self, value: str | None, **_: Any) -> None:
        _callback_url(value)


class InboundHookSchema(Schema):
    """An inbound hook (never its secret)."""

    id = WholeInteger(required=True)
    name = fields.String(required=True)
    tenant_id = WholeInteger(required=True)
    format = fields.String(required=True)
    url = fields.String(required=True, metadata={
        "description": "the path the ticketing system posts to (after the controller's URL)"})
    mapping = fields.Dict(required=True)
    callback_url = fields.String(allow_none=True, required=True)
    enabled = fields.Boolean(required=True)
    token_id = WholeInteger(allow_none=True, required=True, metadata={
        "description": "the hook's own operator token: its jobs run as it"})
    created_at = fields.DateTime(required=True)


class InboundHookCreatedSchema(InboundHookSchema):
    """POST /v1/inbound-hooks: the hook and, when the controller made it, its secret."""

    secret = fields.String(allow_none=True, required=True, metadata={
        "description": "the signing secret, shown only now (null: the one you gave)"})


class InboundSecretSchema(StrictSchema):
    """POST /v1/inbound-hooks/{id}/rotate-secret body."""

    secret = fields.String(load_only=True, validate=validate.Length(16, 200), metadata={
        "description": "the new secret (required for zendesk hooks: reset it in Zendesk, "
                       "then send it here); generic: left out, the controller makes one"})


class InboundSecretRotatedSchema(Schema):
    """POST /v1/inbound-hooks/{id}/rotate-secret answer."""

    id = WholeInteger(required=True)
    secret = fields.String(allow_none=True, required=True, metadata={
        "description": "the new secret, shown only now (null: the one you gave)"})


class InboundHookQuerySchema(PageQuerySchema):
    """GET /v1/inbound-hooks filters."""

    tenant_id = WholeInteger(validate=validate.Range(1, MAX_ID))


class InboundHookPageSchema(PageSchema):
    """GET /v1/inbound-hooks."""

    items = fields.List(fields.Nested(InboundHookSchema), required=True)


class InboundAcceptedSchema(Schema):
    """POST /v1/inbound/{public_id}: 202 with the job started, or 200 with the job a
    replayed request started before (nothing new is started)."""

    job = fields.Nested(JobAcceptedSchema, required=True)
    replayed = fields.Boolean(required=True, metadata={
        "description": "true (200): this signed request was accepted before and started "
                       "this job; nothing new was started (a sender retrying a delivery "
                       "whose answer it lost gets its answer)"})
