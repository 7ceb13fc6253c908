"""The fleet doctor: Deferred and bounce reasons grouped into named causes."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint

from controller import doctor
from controller import doctor_schemas as ds
from controller.api import who
from controller.db import db

blp = Blueprint("doctor", __name__, url_prefix="/v1",
                description=(
                    "The fleet doctor: Deferred and bounce reasons grouped into named causes."))


@blp.route("/doctor")
class Doctor(MethodView):
    """Why mail waits, fleet-wide."""

    @blp.arguments(ds.DoctorQuerySchema, location="query")
    @blp.response(200, ds.DoctorSchema)
    def get(self, query: dict[str, Any]) -> dict[str, Any]:
        """The hosts' last known Deferred and bounce reasons grouped into named causes
        (no smarthost, EHLO refused, certificate, TLS, login, DNS, relay unreachable,
        sender refused, relaying denied, other), each with its hosts and the action that
        fixes it; from each host's last collect_status (any token; tenant-scoped)."""
        return doctor.fleet_report(db.session, who(), query)
