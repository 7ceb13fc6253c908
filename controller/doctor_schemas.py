"""Schemas of the fleet doctor (``GET /v1/doctor``)."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from controller.doctor import CAUSES, DEFAULT_HOSTS_PER_CAUSE, MAX_HOSTS_PER_CAUSE
from controller.schemas import MAX_ID
from shared.schemas import StrictSchema, WholeInteger


class DoctorQuerySchema(StrictSchema):
    """GET /v1/doctor filters."""

    tenant = WholeInteger(validate=validate.Range(1, MAX_ID), metadata={
        "description": "only this tenant's hosts (its id)"})
    site = WholeInteger(validate=validate.Range(1, MAX_ID), metadata={
        "description": "only this site's hosts (its id)"})
    hosts_per_cause = WholeInteger(
        load_default=DEFAULT_HOSTS_PER_CAUSE, validate=validate.Range(0, MAX_HOSTS_PER_CAUSE),
        metadata={"description": "how many example hosts each cause lists (most messages "
                                 "first)"})


class CauseActionSchema(Schema):
    """What fixes a cause."""

    action = fields.String(allow_none=True, required=True, metadata={
        "description": "the job action that fixes it (null: nothing relayfleet changes; "
                       "the hint says what to check)"})
    hint = fields.String(required=True)


class CauseExampleSchema(Schema):
    """One host showing a cause."""

    id = WholeInteger(required=True)
    name = fields.String(required=True)
    site = fields.String(required=True)
    count = WholeInteger(required=True, metadata={
        "description": "messages on the host showing the cause (queued, or bounced since "
                       "the last delivery)"})
    sample = fields.String(required=True, metadata={"description": "one of their reasons"})


class FleetCauseSchema(Schema):
    """One cause and the hosts showing it."""

    cause = fields.String(required=True, validate=validate.OneOf(list(CAUSES)))
    title = fields.String(required=True)
    action = fields.Nested(CauseActionSchema, required=True)
    hosts = WholeInteger(required=True)
    messages = WholeInteger(required=True)
    examples = fields.List(fields.Nested(CauseExampleSchema), required=True)


class DoctorSchema(Schema):
    """GET /v1/doctor."""

    examined = WholeInteger(required=True, metadata={"description": "hosts looked at"})
    healthy = WholeInteger(required=True, metadata={
        "description": "hosts whose last status showed no failing mail"})
    # ``unknown`` is a Schema setting: the field is declared under another name
    unknown_ = WholeInteger(required=True, attribute="unknown", data_key="unknown", metadata={
        "description": "hosts never looked at (run collect_status)"})
    unreachable = WholeInteger(required=True, metadata={
        "description": "hosts the last job could not reach (their causes are the last seen)"})
    causes = fields.List(fields.Nested(FleetCauseSchema), required=True, metadata={
        "description": "most hosts first"})
