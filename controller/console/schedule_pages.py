"""Console page for schedules: each tenant's status collection interval, the operator
schedules with their next runs, and (for operators) buttons to enable, disable and delete.

Reads and changes go through :mod:`controller.schedules` with the signed-in principal, so
scoping and roles are the API's.
"""

from __future__ import annotations

from flask import current_app, flash, redirect, request, url_for
from sqlalchemy import func, select
from werkzeug.wrappers import Response

from controller import inventory as inv
from controller import schedules as svc
from controller.api import audit_target
from controller.config import Settings
from controller.console import bp
from controller.console.fleet_pages import _render
from controller.console.session import form_number, principal, requires, signed_in
from controller.crypto import SecretBox
from controller.db import db
from controller.errors import NotFound
from controller.models import Host, Tenant
from shared.errors import RelayfleetError, ValidationError


@bp.route("/schedules")
@signed_in
def schedules() -> tuple[str, int]:
    """Status collection per tenant and every schedule the principal sees."""
    who = principal()
    settings: Settings = current_app.config["RELAYFLEET_SETTINGS"]
    tenants = list(db.session.scalars(inv.scoped(select(Tenant), Tenant, who)
                                      .order_by(Tenant.name)))
    hosts = {int(row[0]): int(row[1]) for row in db.session.execute(
        inv.scoped(select(Host.tenant_id, func.count()), Host, who).group_by(Host.tenant_id))}
    rows = list(db.session.scalars(svc.schedule_query(who)))
    names = {tenant.id: tenant.name for tenant in tenants}
    return _render("schedules.html", tenants=tenants, hosts=hosts, rows=rows, names=names,
                   upcoming=svc.upcoming, settings=settings)


def _schedule_id() -> int:
    number = form_number(request.form.get("schedule_id", ""))
    if not number:
        raise ValidationError.for_field("schedule_id", "a schedule's id")
    return number


@bp.route("/schedules/change", methods=["POST"])
@signed_in
@requires("operator")
def schedule_change() -> Response:
    """Enable, disable or delete a schedule, as ``PATCH``/``DELETE /v1/schedules/{id}``."""
    who = principal()
    schedule_id = _schedule_id()
    what = request.form.get("what", "")
    audit_target(f"schedule:{schedule_id}", change=what[:16])
    box: SecretBox = current_app.extensions["relayfleet_secrets"]
    try:
        if what == "delete":
            db.session.delete(svc.get_schedule(db.session, who, schedule_id))
            db.session.commit()
            flash(f"Schedule {schedule_id} deleted; the jobs it started stay.", "success")
        elif what in ("enable", "disable"):
            settings: Settings = current_app.config["RELAYFLEET_SETTINGS"]
            row = svc.update_schedule(db.session, who, schedule_id,
                                      {"enabled": what == "enable"}, box,
                                      max_timeout_s=settings.max_timeout_s)
            flash(f"Schedule {row.name} {what}d"
                  + (" (it now runs as your token)." if what == "enable" else "."), "success")
        else:
            raise ValidationError.for_field("what", "enable, disable or delete")
    except NotFound:
        raise
    except RelayfleetError as exc:
        db.session.rollback()
        flash(f"Schedule {schedule_id} unchanged: {exc}", "error")
    return redirect(url_for("console.schedules"), code=303)


@bp.route("/schedules/status-collection", methods=["POST"])
@signed_in
@requires("admin")
def status_collection_set() -> Response:
    """Set a tenant's status interval, as ``PUT /v1/tenants/{id}/status-collection``."""
    who = principal()
    settings: Settings = current_app.config["RELAYFLEET_SETTINGS"]
    raw_tenant, raw_every = request.form.get("tenant_id", ""), request.form.get("every_s", "")
    tenant_id = form_number(raw_tenant)
    if not tenant_id:
        raise ValidationError.for_field("tenant_id", "a tenant's id")
    audit_target(f"tenant:{tenant_id}", status_every_s=raw_every[:10])
    try:
        every_s = form_number(raw_every.strip(), 7 * 86400 + 1)
        if every_s is None:
            raise ValidationError.for_field("every_s", "a whole number of seconds (0: off)")
        svc.set_status_collection(db.session, who, tenant_id, every_s, settings)
    except ValidationError as exc:
        db.session.rollback()
        flash(f"Interval unchanged: {exc}", "error")
    else:
        flash("Status collection interval saved.", "success")
    return redirect(url_for("console.schedules"), code=303)
