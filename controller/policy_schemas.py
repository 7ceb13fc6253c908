"""marshmallow schemas of desired state: credentials, policies, drift and remediation.

A policy's smarthost fields are checked with the agent's own rules (:mod:`shared.schemas`
and :mod:`shared.validation`): a value the agent would refuse in a set_smarthost is
refused in a policy first.
"""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates, validates_schema

from controller.schemas import MAX_ID, OptionsSchema, TargetSchema, name_field
from shared import validation as rules
from shared.schemas import (
    AuthSchema,
    FullRegexp,
    MasqueradeSchema,
    StrictSchema,
    TlsSchema,
    WholeInteger,
    check_grammar,
)

# -- credentials ------------------------------------------------------------------------

class CredentialCreateSchema(AuthSchema):
    """POST /v1/credentials: a relay login policies name (the password is write-only)."""

    tenant_id = WholeInteger(load_default=None, allow_none=True,
                             validate=validate.Range(1, MAX_ID), metadata={
        "description": "the tenant it belongs to (a tenant's token: its own)"})
    name = name_field(required=True, metadata={"example": "acme-relay"})


class CredentialUpdateSchema(AuthSchema):
    """PATCH /v1/credentials/{id}: a new user name, password, or both."""

    username = fields.String()
    password = fields.String(load_only=True)

    @validates_schema
    def _something(self, data: dict[str, Any], **_: Any) -> None:
        if not data:
            raise ValidationError("give username, password or both", "_schema")


class CredentialSchema(Schema):
    """A credential (never its password)."""

    id = WholeInteger(required=True)
    tenant_id = WholeInteger(required=True)
    name = fields.String(required=True)
    username = fields.String(required=True)
    created_at = fields.DateTime(required=True)
    updated_at = fields.DateTime(allow_none=True, required=True)


class CredentialQuerySchema(StrictSchema):
    """GET /v1/credentials filters."""

    tenant_id = WholeInteger(validate=validate.Range(1, MAX_ID))


class CredentialListSchema(Schema):
    """GET /v1/credentials."""

    items = fields.List(fields.Nested(CredentialSchema), required=True)


# -- policies ---------------------------------------------------------------------------

class PolicySmarthostSchema(StrictSchema):
    """The smarthost fields one level sets; those left out come from the levels above."""

    host = fields.String(validate=FullRegexp(
        r"^(\[[0-9A-Za-z:.]{2,60}\]|[0-9A-Za-z:.-]{1,253})$"), metadata={
        "description": "RFC 1123 host name, or an address literal like [192.0.2.1]",
        "example": "relay.acme.example"})
    port = WholeInteger(strict=True, validate=validate.Range(1, 65535))
    mx = fields.Boolean(metadata={
        "description": "look up MX records for host (false: connect to it directly)"})
    tls = fields.Nested(TlsSchema)
    masquerade = fields.Nested(MasqueradeSchema, allow_none=True)

    @validates("host")
    def _host(self, value: str, **_: Any) -> None:
        check_grammar(rules.validate_hostname, value, "host")


class PolicyPutSchema(StrictSchema):
    """PUT /v1/{tenants,sites,hosts}/{id}/policy: what this level says. A field left out
    is inherited (host > site > tenant); ``smarthost: null`` says "no smarthost"."""

    smarthost = fields.Nested(PolicySmarthostSchema, allow_none=True, metadata={
        "description": "the relay this level wants (null: deliver directly, no smarthost)"})
    credential = name_field(allow_none=True, metadata={
        "description": "the name of one of the tenant's credentials (null: no SMTP AUTH)"})
    auto_remediate = fields.Boolean(allow_none=True, metadata={
        "description": "remediate drifted hosts without being asked"})
    remediate_per_hour = WholeInteger(allow_none=True, strict=True,
                                      validate=validate.Range(0, 10000), metadata={
        "description": "tenant only: at most this many hosts remediated automatically an "
                       "hour (default 20)"})


class PolicySchema(Schema):
    """One level's own policy (fields it does not set are absent)."""

    scope = fields.String(required=True, metadata={"example": "site:3"})
    level = fields.String(required=True, validate=validate.OneOf(("tenant", "site", "host")))
    object_id = WholeInteger(required=True)
    tenant_id = WholeInteger(required=True)
    smarthost = fields.Dict(allow_none=True)
    credential = fields.String(allow_none=True)
    auto_remediate = fields.Boolean(allow_none=True, required=True)
    remediate_per_hour = WholeInteger(allow_none=True, required=True)
    created_at = fields.DateTime(required=True)
    updated_at = fields.DateTime(allow_none=True, required=True)


class PolicyQuerySchema(StrictSchema):
    """GET /v1/policies filters."""

    tenant_id = WholeInteger(validate=validate.Range(1, MAX_ID))


class PolicyListSchema(Schema):
    """GET /v1/policies."""

    items = fields.List(fields.Nested(PolicySchema), required=True)


class DriftSchema(Schema):
    """One way a host differs from its policy."""

    field = fields.String(required=True, metadata={
        "description": "smarthost, host, port, mx, auth.username, auth.password (the "
                       "credential's password changed since the host got it; never shown), "
                       "tls.mode, tls.ca_file, masquerade.domain, masquerade.envelope (only "
                       "when a level sets masquerade) or config_in_sync"})
    want = fields.Raw(allow_none=True, required=True)
    have = fields.Raw(allow_none=True, required=True)


class DesiredSchema(Schema):
    """GET /v1/hosts/{id}/desired: the effective policy and where each field came from."""

    host_id = WholeInteger(required=True)
    defined = fields.Boolean(required=True, metadata={
        "description": "some level says what the host's smarthost must be"})
    complete = fields.Boolean(required=True, metadata={
        "description": "the levels combined make a valid smarthost (or none): drift is "
                       "computed only then"})
    problem = fields.String(allow_none=True, required=True)
    smarthost = fields.Dict(allow_none=True, required=True)
    credential = fields.String(allow_none=True, required=True)
    username = fields.String(allow_none=True, required=True)
    auto_remediate = fields.Boolean(required=True)
    remediate_per_hour = WholeInteger(required=True)
    sources = fields.Dict(keys=fields.String(), values=fields.String(), required=True,
                          metadata={"description": "field -> the level it came from "
                                                   "(tenant:1, site:2, host:3)"})
    drift = fields.List(fields.Nested(DriftSchema), allow_none=True, required=True)
    drift_checked_at = fields.DateTime(allow_none=True, required=True)
    stuck = fields.Boolean(required=True, metadata={
        "description": "the drift outlived the host's last two automatic remediations: they "
                       "leave it alone until its drift changes or an operator remediates it"})


# -- remediation ------------------------------------------------------------------------

class RemediateSchema(StrictSchema):
    """POST /v1/remediate (send an Idempotency-Key header)."""

    target = fields.Nested(TargetSchema, required=True)
    options = fields.Nested(OptionsSchema, load_default=dict, metadata={
        "description": "as a job's (dry_run: show the diff, change nothing); no canary or "
                       "wave_size: a remediation is one job per desired state"})

    @validates_schema
    def _no_rollout(self, data: dict[str, Any], **_: Any) -> None:
        for key in ("canary", "wave_size"):
            if (data.get("options") or {}).get(key) is not None:
                raise ValidationError(
                    "a remediation has no rollout in waves: leave it out, or start a "
                    "set_smarthost job with it (POST /v1/jobs)", f"options.{key}")


class RemediationJobSchema(Schema):
    """One job a remediation started."""

    id = WholeInteger(required=True)
    action = fields.String(required=True)
    hosts = WholeInteger(required=True)
    links = fields.Dict(keys=fields.String(), values=fields.String(), required=True)


class RemediationSkipSchema(Schema):
    """A drifted host a remediation left alone, and why."""

    host = fields.String(required=True)
    reason = fields.String(required=True, metadata={
        "example": "job 12 (set_smarthost) is still running on it"})


class RemediationSchema(Schema):
    """202 answer to POST /v1/remediate."""

    jobs = fields.List(fields.Nested(RemediationJobSchema), required=True)
    in_line = WholeInteger(required=True, metadata={
        "description": "hosts of the target already in line with their policy"})
    # (a field named "unknown" would shadow the schema's own setting of that name)
    unknown_hosts = WholeInteger(required=True, data_key="unknown", attribute="unknown",
                                 metadata={
        "description": "hosts with no complete policy, or never seen: left alone"})
    skipped = fields.List(fields.Nested(RemediationSkipSchema), required=True, metadata={
        "description": "drifted hosts left alone: a change still runs on them"})

