"""Console pages for alerts: what fires now, what resolved lately, the rules and the
channels; admins test a channel and switch a rule on or off from here.

Reads and changes go through :mod:`controller.alerts` with the signed-in principal, as the
API's routes do: another tenant's rule or channel is the 404 page.
"""

from __future__ import annotations

from typing import Any

from flask import current_app, flash, redirect, render_template, url_for
from sqlalchemy import select

from controller import alerts as svc
from controller import inventory as inv
from controller.api import audit_target
from controller.config import Settings
from controller.console import bp
from controller.console.session import principal, requires, signed_in
from controller.db import db
from controller.models import Tenant

#: how many alerts of each list the page shows
ALERT_ROWS = 100


@bp.route("/alerts")
@signed_in
def alerts() -> Any:
    """Firing alerts, recently resolved ones, the rules and the channels."""
    who = principal()
    firing = svc.alert_docs(db.session, db.session.scalars(
        svc.alerts_query(db.session, who, {"state": "firing"}).limit(ALERT_ROWS)))
    resolved = svc.alert_docs(db.session, db.session.scalars(
        svc.alerts_query(db.session, who, {"state": "resolved"}).limit(ALERT_ROWS)))
    rules = svc.rule_docs(db.session, db.session.scalars(svc.rules_query(who)))
    channels = list(db.session.scalars(svc.channels_query(who)))
    tenants = dict(db.session.execute(
        inv.scoped(select(Tenant.id, Tenant.name), Tenant, who)).all())
    return render_template("alerts.html", firing=firing, resolved=resolved, rules=rules,
                           channels=channels, tenants=tenants,
                           condition=_condition, describe=svc.describe, rows=ALERT_ROWS)


def _condition(rule: dict[str, Any]) -> str:
    """A rule's condition in words."""
    kind, threshold = str(rule["kind"]), rule.get("threshold")
    texts = {"queue_count": f"more than {threshold} messages queued",
             "oldest_age": f"oldest queued message older than {threshold} s",
             "unreachable": f"{threshold} status checks in a row failed to reach the host",
             "drift": "the host differs from its policy",
             "cause": f"the doctor names {rule.get('cause') or 'any cause'}"}
    return texts.get(kind, kind)


@bp.route("/alerts/channels/<int(max=2147483647):channel_id>/test", methods=["POST"])
@signed_in
@requires("admin")
def alert_channel_test(channel_id: int) -> Any:
    """Send a test notice to a channel now and say how it went."""
    audit_target(f"alert-channel:{channel_id}", change="test notice")
    settings: Settings = current_app.config["RELAYFLEET_SETTINGS"]
    delivered, outcome = svc.send_test(db.session, settings, principal(), channel_id)
    audit_target(f"alert-channel:{channel_id}", delivered=delivered)
    if delivered:
        flash(f"The test notice was delivered ({outcome}).", "success")
    else:
        flash(f"The test notice was not delivered: {outcome}.", "error")
    return redirect(url_for("console.alerts") + "#channels", 303)


@bp.route("/alerts/rules/<int(max=2147483647):rule_id>/toggle", methods=["POST"])
@signed_in
@requires("admin")
def alert_rule_toggle(rule_id: int) -> Any:
    """Switch a rule off (its open alerts resolve at the next tick) or back on."""
    audit_target(f"alert-rule:{rule_id}")
    rule = svc.get_rule(db.session, principal(), rule_id)
    rule = svc.update_rule(db.session, principal(), rule_id, {"enabled": not rule.enabled})
    audit_target(f"alert-rule:{rule_id}", enabled=rule.enabled)
    flash(f"The rule {rule.name!r} is {'on' if rule.enabled else 'off'}"
          + ("." if rule.enabled else ": its open alerts resolve at the next tick."),
          "success")
    return redirect(url_for("console.alerts") + "#rules", 303)
