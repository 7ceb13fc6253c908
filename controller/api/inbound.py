"""Inbound ticketing webhooks that start jobs."""

from __future__ import annotations

from flask_smorest import Blueprint

blp = Blueprint("inbound", __name__, url_prefix="/v1",
                description="Inbound ticketing webhooks that start jobs.")
