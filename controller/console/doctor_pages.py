"""Console pages for doctors: the fleet doctor's causes, hosts and proposed actions.

The page reads :func:`controller.doctor.fleet_report` with the signed-in principal, as
``GET /v1/doctor`` does (another tenant's tenant or site is the 404 page). An operator
gets a link per cause to the launch page with the proposed action.
"""

from __future__ import annotations

from typing import Any

from flask import render_template, request
from marshmallow import ValidationError as SchemaError
from sqlalchemy import select

from controller import doctor
from controller import inventory as inv
from controller.console import bp
from controller.console.session import can, principal, signed_in
from controller.db import db
from controller.doctor_schemas import DoctorQuerySchema
from controller.models import Site, Tenant

#: the page form's own fields: left at "any" they are sent empty, which means unset
_FORM_FIELDS = ("tenant", "site")


def _filters() -> tuple[dict[str, Any], dict[str, list[str]]]:
    """The page's filters checked by the API's query schema, as ``GET /v1/doctor`` checks
    them: an unknown key is ignored, an empty value is refused; except that the form's
    own fields left at "any" (sent empty) are not set."""
    known = DoctorQuerySchema().fields
    args = {key: value for key, value in request.args.items()
            if key in known and not (key in _FORM_FIELDS and value.strip() == "")}
    if any("\x00" in value for value in args.values()):
        return {}, {key: ["NUL characters are not accepted"] for key, value in args.items()
                    if "\x00" in value}
    try:
        loaded: dict[str, Any] = DoctorQuerySchema().load(args)
    except SchemaError as exc:
        messages = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
        return {}, {str(key): [str(r) for r in (reasons if isinstance(reasons, list)
                                                else [reasons])]
                    for key, reasons in messages.items()}
    return loaded, {}


@bp.route("/doctor", endpoint="doctor")
@signed_in
def doctor_page() -> tuple[str, int]:
    """Why mail waits, fleet-wide: each cause with its hosts and the action that fixes it."""
    who = principal()
    filters, errors = _filters()
    tenants = {row.id: row.name for row in db.session.scalars(
        inv.scoped(select(Tenant), Tenant, who).order_by(Tenant.name))}
    sites = list(db.session.scalars(inv.scoped(select(Site), Site, who)
                                    .order_by(Site.tenant_id, Site.name)))
    report = None if errors else doctor.fleet_report(db.session, who, filters)
    return render_template("doctor.html", report=report, filters=filters, errors=errors,
                           tenants=tenants, sites=sites,
                           can_launch=can("operator")), 422 if errors else 200
