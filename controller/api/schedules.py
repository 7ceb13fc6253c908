"""Status collection intervals and operator schedules (cron, time zones)."""

from __future__ import annotations

from flask_smorest import Blueprint

blp = Blueprint("schedules", __name__, url_prefix="/v1",
                description=(
                    "Status collection intervals and operator schedules (cron, time zones)."))
