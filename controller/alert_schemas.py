"""marshmallow schemas of alerts: channels, rules and the alerts they raised.

A channel's URL or address is write-only: answers show only its ``target_hint``. A webhook
channel's signing secret is in the answer to its creation only.
"""

from __future__ import annotations

import re
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates, validates_schema

from controller.schemas import (
    HOST_NAME_RE,
    MAX_ID,
    NAME_RE,
    TAG_RE,
    PageQuerySchema,
    PageSchema,
    check_http_url,
    name_field,
)
from shared import errors as rf_errors
from shared import validation as rules
from shared.schemas import FullRegexp, StrictSchema, WholeInteger

CHANNEL_KINDS = ("webhook", "email", "slack", "teams")
#: the kinds a channel's ``url`` is for (email takes ``address``)
URL_KINDS = ("webhook", "slack", "teams")
RULE_KINDS = ("queue_count", "oldest_age", "unreachable", "drift", "cause")
#: the rule kinds that compare a number with ``threshold``
THRESHOLD_KINDS = ("queue_count", "oldest_age", "unreachable")
ALERT_STATES = ("firing", "resolved")
#: the doctor's cause keys (controller.doctor.CAUSES)
CAUSE_RE = r"^[a-z][a-z0-9_]{0,39}$"
#: checks in a row an ``unreachable`` rule waits for when it names no threshold
DEFAULT_UNREACHABLE_CHECKS = 3
MAX_CHANNELS_PER_RULE = 20


def _ref_ok(ref: Any, pattern: str) -> bool:
    """An id (1..MAX_ID) or a name following ``pattern``."""
    if isinstance(ref, bool):
        return False
    if isinstance(ref, int):
        return 1 <= ref <= MAX_ID
    return isinstance(ref, str) and re.fullmatch(pattern, ref) is not None


_REF = fields.Raw(metadata={"description": "an id (integer) or a name (string)"})


# -- channels --------------------------------------------------------------------------------

class ChannelCreateSchema(StrictSchema):
    """POST /v1/alert-channels."""

    name = name_field(required=True, metadata={"example": "noc-webhook"})
    tenant_id = WholeInteger(load_default=None, allow_none=True,
                             validate=validate.Range(1, MAX_ID), metadata={
        "description": "the tenant it belongs to (a tenant's token: its own; null from an "
                       "MSP-wide token: an MSP-wide channel)"})
    kind = fields.String(required=True, validate=validate.OneOf(CHANNEL_KINDS))
    url = fields.String(load_only=True, metadata={
        "description": "webhook, slack, teams: where notices are POSTed (write-only: an "
                       "incoming webhook's URL is its key)"})
    address = fields.String(load_only=True, metadata={
        "description": "email: who gets the notices", "example": "noc@msp.example"})

    @validates("url")
    def _url(self, value: str, **_: Any) -> None:
        check_http_url(value, 2000)

    @validates("address")
    def _address(self, value: str, **_: Any) -> None:
        try:
            rules.validate_address(value, "address")
        except rf_errors.ValidationError as exc:
            raise ValidationError(exc.errors.get("address", [exc.message])) from None

    @validates_schema
    def _target(self, data: dict[str, Any], **_: Any) -> None:
        kind = data.get("kind")
        if kind in URL_KINDS:
            if "url" not in data:
                raise ValidationError(f"a {kind} channel needs its url", "url")
            if "address" in data:
                raise ValidationError(f"a {kind} channel takes a url, not an address",
                                      "address")
        elif kind == "email":
            if "address" not in data:
                raise ValidationError("an email channel needs its address", "address")
            if "url" in data:
                raise ValidationError("an email channel takes an address, not a url", "url")


class ChannelSchema(Schema):
    """An alert channel (never its URL, address or secret: ``target_hint`` only)."""

    id = WholeInteger(required=True)
    tenant_id = WholeInteger(allow_none=True, required=True)
    name = fields.String(required=True)
    kind = fields.String(required=True)
    target_hint = fields.String(required=True, metadata={
        "description": "what the channel points at, without its secret part"})
    created_at = fields.DateTime(required=True)
    secret = fields.String(metadata={
        "description": "webhook channels: the key notices are signed with "
                       "(X-Relayfleet-Signature); only in the answer to the creation"})


class ChannelQuerySchema(PageQuerySchema):
    """GET /v1/alert-channels filters."""

    tenant_id = WholeInteger(validate=validate.Range(1, MAX_ID))


class ChannelPageSchema(PageSchema):
    """GET /v1/alert-channels."""

    items = fields.List(fields.Nested(ChannelSchema), required=True)


class ChannelTestSchema(Schema):
    """POST /v1/alert-channels/{id}/test: how the test notice went."""

    channel_id = WholeInteger(required=True)
    delivered = fields.Boolean(required=True)
    outcome = fields.String(required=True, metadata={
        "description": "HTTP status, 'sent', or why it failed (never a secret)"})


# -- rules -----------------------------------------------------------------------------------

class RuleScopeSchema(StrictSchema):
    """Which of the tenant's hosts a rule watches (nothing given: all of them)."""

    sites = fields.List(_REF, validate=validate.Length(max=1000), metadata={
        "description": "only hosts of these sites (ids or names)"})
    tags = fields.List(fields.String(validate=FullRegexp(TAG_RE)),
                       validate=validate.Length(max=100), metadata={
        "description": "only hosts with at least one of these tags"})

    @validates("sites")
    def _sites(self, value: list[Any], **_: Any) -> None:
        if not all(_ref_ok(ref, NAME_RE) for ref in value):
            raise ValidationError("each item must be a site id or name")


class _RuleFields(StrictSchema):
    name = name_field(metadata={"example": "queue over 50"})
    threshold = WholeInteger(allow_none=True, validate=validate.Range(0, 10**9), metadata={
        "description": "queue_count: fires above this many messages; oldest_age: above "
                       "this many seconds; unreachable: at this many failed checks in a "
                       f"row (default {DEFAULT_UNREACHABLE_CHECKS})"})
    cause = fields.String(allow_none=True, validate=FullRegexp(
        CAUSE_RE, error="a cause key of the doctor, such as relay_unreachable"), metadata={
        "description": "kind cause: the doctor's cause key (null: any cause)"})
    scope = fields.Nested(RuleScopeSchema)
    channels = fields.List(_REF, validate=validate.Length(max=MAX_CHANNELS_PER_RULE),
                           metadata={"description": "channel ids or names"})
    enabled = fields.Boolean()

    @validates("channels")
    def _channels(self, value: list[Any], **_: Any) -> None:
        if not all(_ref_ok(ref, NAME_RE) for ref in value):
            raise ValidationError("each item must be a channel id or name")


def check_rule_fields(kind: str, threshold: int | None, cause: str | None) -> int | None:
    """The threshold a rule of ``kind`` keeps (a default for ``unreachable``), or a 422
    saying which field does not fit the kind."""
    if kind in THRESHOLD_KINDS:
        if cause is not None:
            raise rf_errors.ValidationError.for_field(
                "cause", f"only rules of kind cause name a cause, not {kind}")
        if threshold is None:
            if kind == "unreachable":
                return DEFAULT_UNREACHABLE_CHECKS
            raise rf_errors.ValidationError.for_field(
                "threshold", f"a {kind} rule needs a threshold ("
                + ("messages" if kind == "queue_count" else "seconds") + ")")
        if kind == "unreachable" and threshold < 1:
            raise rf_errors.ValidationError.for_field(
                "threshold", "an unreachable rule needs at least 1 failed check")
        return threshold
    if threshold is not None:
        raise rf_errors.ValidationError.for_field(
            "threshold", f"a {kind} rule takes no threshold: leave it out")
    if kind == "drift" and cause is not None:
        raise rf_errors.ValidationError.for_field(
            "cause", "only rules of kind cause name a cause, not drift")
    return None


class RuleCreateSchema(_RuleFields):
    """POST /v1/alert-rules."""

    name = name_field(required=True, metadata={"example": "queue over 50"})
    tenant_id = WholeInteger(load_default=None, allow_none=True,
                             validate=validate.Range(1, MAX_ID), metadata={
        "description": "the tenant whose hosts it watches (a tenant's token: its own; null "
                       "from an MSP-wide token: every tenant's hosts)"})
    kind = fields.String(required=True, validate=validate.OneOf(RULE_KINDS))
    channels = fields.List(_REF, required=True,
                           validate=validate.Length(1, MAX_CHANNELS_PER_RULE),
                           metadata={"description": "channel ids or names"})
    enabled = fields.Boolean(load_default=True)
    scope = fields.Nested(RuleScopeSchema, load_default=dict)


class RuleUpdateSchema(_RuleFields):
    """PATCH /v1/alert-rules/{id}: the fields to change (the kind stays)."""

    @validates_schema
    def _something(self, data: dict[str, Any], **_: Any) -> None:
        if not data:
            raise ValidationError("give at least one field to change", "_schema")


class RuleSchema(Schema):
    """An alert rule."""

    id = WholeInteger(required=True)
    tenant_id = WholeInteger(allow_none=True, required=True)
    name = fields.String(required=True)
    kind = fields.String(required=True)
    threshold = WholeInteger(allow_none=True, required=True)
    cause = fields.String(allow_none=True, required=True)
    scope = fields.Dict(required=True, metadata={"description": "{sites: [ids], tags: [...]}"})
    channels = fields.List(fields.Dict(), required=True, metadata={
        "description": "[{id, name, kind}]"})
    enabled = fields.Boolean(required=True)
    firing = WholeInteger(required=True, metadata={"description": "alerts open now"})
    created_at = fields.DateTime(required=True)


class RuleQuerySchema(PageQuerySchema):
    """GET /v1/alert-rules filters."""

    tenant_id = WholeInteger(validate=validate.Range(1, MAX_ID))


class RulePageSchema(PageSchema):
    """GET /v1/alert-rules."""

    items = fields.List(fields.Nested(RuleSchema), required=True)


# -- alerts ----------------------------------------------------------------------------------

class AlertQuerySchema(PageQuerySchema):
    """GET /v1/alerts filters."""

    state = fields.String(validate=validate.OneOf(ALERT_STATES))
    rule = fields.String(validate=FullRegexp(NAME_RE), metadata={
        "description": "a rule's id or name"})
    host = fields.String(validate=FullRegexp(HOST_NAME_RE), metadata={
        "description": "a host's id or name"})
    tenant_id = WholeInteger(validate=validate.Range(1, MAX_ID))


class NoticeSchema(Schema):
    """One notice of an alert to one channel."""

    channel_id = WholeInteger(required=True)
    channel = fields.String(allow_none=True, required=True)
    event = fields.String(required=True)
    state = fields.String(required=True, metadata={"description": "pending, sent or failed"})
    attempts = WholeInteger(required=True)
    last_error = fields.String(allow_none=True, required=True)
    sent_at = fields.DateTime(allow_none=True, required=True)


class AlertSchema(Schema):
    """One rule firing for one host."""

    id = WholeInteger(required=True)
    state = fields.String(required=True, validate=validate.OneOf(ALERT_STATES))
    rule_id = WholeInteger(required=True)
    rule = fields.String(required=True)
    kind = fields.String(required=True)
    host_id = WholeInteger(required=True)
    host = fields.String(required=True)
    host_deleted = fields.Boolean(required=True, metadata={
        "description": "the host was removed from the inventory since"})
    site = fields.String(allow_none=True, required=True)
    tenant_id = WholeInteger(allow_none=True, required=True)
    detail = fields.Dict(allow_none=True, required=True, metadata={
        "description": "what the host showed when the alert fired"})
    fired_at = fields.DateTime(required=True)
    resolved_at = fields.DateTime(allow_none=True, required=True)
    notices = fields.List(fields.Nested(NoticeSchema), required=True)


class AlertPageSchema(PageSchema):
    """GET /v1/alerts."""

    items = fields.List(fields.Nested(AlertSchema), required=True)
