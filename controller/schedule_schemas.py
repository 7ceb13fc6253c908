"""Schemas of status collection intervals and operator schedules."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from controller.schemas import NAME_RE, PageQuerySchema, PageSchema
from shared.actions import JOB_ACTIONS
from shared.schemas import FullRegexp, StrictSchema, WholeInteger

_NAME = FullRegexp(NAME_RE, error="1-100 letters, digits, spaces, '.', '_' or '-', starting "
                                  "with a letter or digit")
_CRON = ("5 fields: minute hour day-of-month month day-of-week; numbers, names (jan, mon), "
         "ranges (1-5), steps (*/15), lists (1,15); or @hourly, @daily, @weekly, @monthly, "
         "@yearly. A day matches when day-of-month OR day-of-week matches if both are "
         "restricted (cron's rule)")


class StatusCollectionSchema(Schema):
    """A tenant's status collection (beat's ``collect_status`` jobs spread over the
    interval)."""

    tenant_id = WholeInteger(required=True)
    every_s = WholeInteger(required=True, metadata={
        "description": "each host's status is collected once per this many seconds (0: off)"})
    enabled = fields.Boolean(required=True)
    hosts = WholeInteger(required=True)
    hosts_per_tick = fields.Float(required=True, metadata={
        "description": "how many hosts one tick collects on average"})
    tick_s = WholeInteger(required=True, metadata={"description": "beat's tick"})
    min_every_s = WholeInteger(required=True)
    last_tick_at = fields.DateTime(allow_none=True, required=True)


class StatusCollectionUpdateSchema(StrictSchema):
    """PUT /v1/tenants/{id}/status-collection."""

    every_s = WholeInteger(required=True, strict=True, validate=validate.Range(0, 7 * 86400),
                           metadata={"description": "seconds (0: off; at least the "
                                                    "controller's minimum otherwise)",
                                     "example": 600})


class ScheduleCreateSchema(StrictSchema):
    """POST /v1/schedules: a job document (as ``POST /v1/jobs`` takes it) and when to run
    it. It runs as the token that creates it (its role and tenant scope)."""

    name = fields.String(required=True, validate=_NAME, metadata={"example": "nightly flush"})
    action = fields.String(required=True, validate=validate.OneOf(JOB_ACTIONS))
    target = fields.Dict(required=True, metadata={
        "description": "as in POST /v1/jobs", "example": {"tags": ["pbx"]}})
    params = fields.Dict(keys=fields.String(), load_default=dict, metadata={
        "description": "as in POST /v1/jobs (secrets are stored sealed)"})
    options = fields.Dict(keys=fields.String(), load_default=dict,
                          metadata={"description": "as in POST /v1/jobs"})
    cron = fields.String(required=True, validate=validate.Length(1, 200), metadata={
        "description": _CRON, "example": "30 2 * * *"})
    timezone = fields.String(load_default="UTC", validate=validate.Length(1, 64), metadata={
        "description": "IANA time zone the cron expression is read in", "example":
            "Europe/Paris"})
    enabled = fields.Boolean(load_default=True)


class ScheduleUpdateSchema(StrictSchema):
    """PATCH /v1/schedules/{id}: the fields to change. The schedule then runs as the token
    that changed it; enabling it clears ``last_error``."""

    name = fields.String(validate=_NAME)
    action = fields.String(validate=validate.OneOf(JOB_ACTIONS))
    target = fields.Dict()
    params = fields.Dict(keys=fields.String())
    options = fields.Dict(keys=fields.String())
    cron = fields.String(validate=validate.Length(1, 200), metadata={"description": _CRON})
    timezone = fields.String(validate=validate.Length(1, 64))
    enabled = fields.Boolean()


class NextRunSchema(Schema):
    """One coming run of a schedule."""

    local = fields.String(required=True, metadata={
        "description": "in the schedule's zone (ISO 8601 with its offset)"})
    utc = fields.String(required=True)


class ScheduleSchema(Schema):
    """A schedule (its secret params never shown)."""

    id = WholeInteger(required=True)
    tenant_id = WholeInteger(allow_none=True, required=True)
    token_id = WholeInteger(allow_none=True, required=True, metadata={
        "description": "the token it runs as"})
    name = fields.String(required=True)
    action = fields.String(required=True)
    target = fields.Dict(required=True)
    params = fields.Dict(required=True)
    options = fields.Dict(required=True)
    cron = fields.String(required=True)
    timezone = fields.String(required=True)
    enabled = fields.Boolean(required=True)
    next_run_at = fields.DateTime(allow_none=True, required=True)
    last_run_at = fields.DateTime(allow_none=True, required=True)
    last_job_id = WholeInteger(allow_none=True, required=True)
    last_error = fields.String(allow_none=True, required=True)
    created_at = fields.DateTime(required=True)


class ScheduleDetailSchema(ScheduleSchema):
    """GET /v1/schedules/{id}: the schedule and its next five runs."""

    next_runs = fields.List(fields.Nested(NextRunSchema), required=True)


class ScheduleQuerySchema(PageQuerySchema):
    """GET /v1/schedules."""

    enabled = fields.Boolean(load_default=None, allow_none=True)
    action = fields.String(load_default=None, allow_none=True,
                           validate=validate.OneOf(JOB_ACTIONS))


class SchedulePageSchema(PageSchema):
    """GET /v1/schedules."""

    items = fields.List(fields.Nested(ScheduleSchema), required=True)

