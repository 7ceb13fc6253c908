"""Alert rules, channels and the alerts they raised."""

from __future__ import annotations

from flask_smorest import Blueprint

blp = Blueprint("alerts", __name__, url_prefix="/v1",
                description="Alert rules, channels and the alerts they raised.")
