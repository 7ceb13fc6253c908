"""Status collection intervals and operator schedules (cron, time zones)."""

from __future__ import annotations

from typing import Any

from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint

from controller import schedule_schemas as ss
from controller import schedules as svc
from controller.api import audit_target, who
from controller.config import Settings
from controller.crypto import SecretBox
from controller.db import db
from controller.inventory import filtered, page
from controller.models import Schedule
from controller.schemas import ErrorSchema

blp = Blueprint("schedules", __name__, url_prefix="/v1",
                description=(
                    "Status collection intervals and operator schedules (cron, time zones)."))


def _box() -> SecretBox:
    box: SecretBox = current_app.extensions["relayfleet_secrets"]
    return box


def _settings() -> Settings:
    settings: Settings = current_app.config["RELAYFLEET_SETTINGS"]
    return settings


class Detail:
    """A schedule as ``GET /v1/schedules/{id}`` shows it: the row and its next runs."""

    def __init__(self, schedule: Schedule) -> None:
        self.schedule = schedule
        self.next_runs = svc.upcoming(schedule)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.schedule, name)


def detail(schedule: Schedule) -> Detail:
    """A schedule with its next five runs (in its zone and UTC)."""
    return Detail(schedule)


@blp.route("/tenants/<int(max=2147483647):tenant_id>/status-collection")
class StatusCollection(MethodView):
    """How often beat collects a tenant's hosts' status."""

    @blp.response(200, ss.StatusCollectionSchema)
    def get(self, tenant_id: int) -> dict[str, Any]:
        """The tenant's status interval, its hosts and how many each tick collects."""
        return svc.status_collection(db.session, who(), tenant_id, _settings())

    @blp.arguments(ss.StatusCollectionUpdateSchema)
    @blp.response(200, ss.StatusCollectionSchema)
    def put(self, body: dict[str, Any], tenant_id: int) -> dict[str, Any]:
        """Set the interval (admin): every host is collected once per ``every_s`` seconds,
        spread evenly over it; 0 turns collection off."""
        audit_target(f"tenant:{tenant_id}", status_every_s=body["every_s"])
        return svc.set_status_collection(db.session, who(), tenant_id, body["every_s"],
                                         _settings())


@blp.route("/schedules")
class Schedules(MethodView):
    """Operator schedules."""

    @blp.arguments(ss.ScheduleQuerySchema, location="query")
    @blp.response(200, ss.SchedulePageSchema)
    def get(self, query: dict[str, Any]) -> dict[str, Any]:
        """List the schedules this token sees (filter by enabled, action)."""
        stmt = filtered(svc.schedule_query(who()), Schedule, query, "enabled", "action")
        return page(db.session, stmt, query["limit"], query["offset"])

    @blp.arguments(ss.ScheduleCreateSchema)
    @blp.response(201, ss.ScheduleDetailSchema)
    @blp.alt_response(409, schema=ErrorSchema, description="a schedule has this name")
    def post(self, body: dict[str, Any]) -> Detail:
        """Add a schedule (operator): the job is checked as ``POST /v1/jobs`` checks it,
        the target must match hosts now, and it runs as this token."""
        schedule = svc.create_schedule(db.session, who(), body, _box(),
                                       max_timeout_s=_settings().max_timeout_s)
        audit_target(f"schedule:{schedule.id}", name=schedule.name, action=schedule.action,
                     cron=schedule.cron, timezone=schedule.timezone)
        return detail(schedule)


@blp.route("/schedules/<int(max=2147483647):schedule_id>")
class ScheduleById(MethodView):
    """One schedule."""

    @blp.response(200, ss.ScheduleDetailSchema)
    def get(self, schedule_id: int) -> Detail:
        """Read a schedule and its next five runs."""
        return detail(svc.get_schedule(db.session, who(), schedule_id))

    @blp.arguments(ss.ScheduleUpdateSchema)
    @blp.response(200, ss.ScheduleDetailSchema)
    @blp.alt_response(409, schema=ErrorSchema, description="a schedule has this name")
    def patch(self, body: dict[str, Any], schedule_id: int) -> Detail:
        """Change a schedule (operator); it then runs as this token."""
        audit_target(f"schedule:{schedule_id}", changed=sorted(body))
        return detail(svc.update_schedule(
            db.session, who(), schedule_id, body, _box(),
            max_timeout_s=_settings().max_timeout_s))

    @blp.response(204)
    def delete(self, schedule_id: int) -> None:
        """Delete a schedule (operator); the jobs it started stay."""
        audit_target(f"schedule:{schedule_id}")
        who().require("operator")
        db.session.delete(svc.get_schedule(db.session, who(), schedule_id))
        db.session.commit()
