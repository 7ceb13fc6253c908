"""The fleet doctor: Deferred and bounce reasons grouped into named causes."""

from __future__ import annotations

from flask_smorest import Blueprint

blp = Blueprint("doctor", __name__, url_prefix="/v1",
                description=(
                    "The fleet doctor: Deferred and bounce reasons grouped into named causes."))
