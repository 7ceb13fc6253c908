"""Console pages for desired state: every level's policy, the hosts that drifted from it
(with the difference), and a Remediate button for operators.

Reads go through :mod:`controller.policy` with the signed-in principal, so scoping is the
API's; Remediate starts the same jobs as ``POST /v1/remediate``.
"""

from __future__ import annotations

from typing import Any

from flask import current_app, flash, redirect, request, url_for
from sqlalchemy import select
from werkzeug.wrappers import Response

from controller import inventory as inv
from controller import policy as svc
from controller.api import audit_target
from controller.config import Settings
from controller.console import bp
from controller.console.fleet_pages import _render
from controller.console.session import form_number, principal, requires, signed_in
from controller.crypto import SecretBox
from controller.db import db
from controller.dispatch import commit
from controller.errors import Conflict
from controller.models import Host, Site, Tenant
from shared.errors import ValidationError

#: drifted hosts listed on the page (the fleet's Drifted view pages through them all)
DRIFTED_ROWS = 200


@bp.route("/policies")
@signed_in
def policies() -> tuple[str, int]:
    """Every policy the principal sees, and the hosts that drifted from theirs."""
    who = principal()
    tenants = {row.id: row.name for row in db.session.scalars(
        inv.scoped(select(Tenant), Tenant, who))}
    sites = {row.id: row.name for row in db.session.scalars(inv.scoped(select(Site), Site, who))}
    rows = svc.list_policies(db.session, who)
    host_ids = [int(row.scope.split(":")[1]) for row in rows if row.scope.startswith("host:")]
    host_names = {host.id: host.name for host in db.session.scalars(
        select(Host).where(Host.id.in_(host_ids)))} if host_ids else {}
    docs = [svc.policy_doc(db.session, row) for row in rows]
    drifted = list(db.session.scalars(inv.host_query(who, {"drifted": True})
                                      .limit(DRIFTED_ROWS + 1)))
    total_drifted = len(drifted)
    shown = drifted[:DRIFTED_ROWS]
    stuck = svc.stuck_hosts(db.session, [host.id for host in shown])
    return _render("policies.html", policies=docs, tenants=tenants, sites=sites,
                   host_names=host_names, drifted=shown, stuck=stuck,
                   more=total_drifted > DRIFTED_ROWS)


def _target() -> dict[str, Any]:
    """What the Remediate form names: one host, one tenant, or every drifted host."""
    for key, kind in (("host_id", "hosts"), ("tenant_id", "tenants")):
        raw = request.form.get(key, "")
        if raw:
            number = form_number(raw)
            if not number:
                raise ValidationError.for_field(key, "must be an id")
            return {kind: [number]}
    return {"all": True}


@bp.route("/policies/remediate", methods=["POST"])
@signed_in
@requires("operator")
def policy_remediate() -> Response:
    """Remediate the drifted hosts of the form's target, as ``POST /v1/remediate``."""
    who = principal()
    target = _target()
    audit_target("remediate", of=target)
    settings: Settings = current_app.config["RELAYFLEET_SETTINGS"]
    box: SecretBox = current_app.extensions["relayfleet_secrets"]
    try:
        answer = svc.remediate(db.session, who, box=box, database=db, settings=settings,
                               target=target, options={})
        commit(db.session)
    except (Conflict, ValidationError) as exc:
        db.session.rollback()
        flash(exc.message, "error")
        # a fixed page: the Referer is the browser's to say, not a place to send it back to
        return redirect(url_for("console.policies"), code=303)
    jobs = answer["jobs"]
    for skip in answer["skipped"]:
        flash(f"{skip['host']} left alone: {skip['reason']}.", "error")
    if not jobs:
        flash(f"Nothing to remediate: {answer['in_line']} in line, {answer['unknown']} with "
              f"no complete policy or never seen, {len(answer['skipped'])} busy.", "success")
        return redirect(url_for("console.policies"), code=303)
    flash(f"Remediation started: {len(jobs)} job{'s' if len(jobs) != 1 else ''} for "
          f"{sum(job['hosts'] for job in jobs)} drifted host"
          f"{'s' if sum(job['hosts'] for job in jobs) != 1 else ''}.", "success")
    if len(jobs) == 1:
        return redirect(url_for("console.job", job_id=jobs[0]["id"]), code=303)
    return redirect(url_for("console.jobs"), code=303)
