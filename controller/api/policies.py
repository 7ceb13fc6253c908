"""Desired state: smarthost policies, relay credentials, drift and remediation."""

from __future__ import annotations

from flask_smorest import Blueprint

blp = Blueprint("policies", __name__, url_prefix="/v1",
                description=(
                    "Desired state: smarthost policies, relay credentials, drift and remediation."))
