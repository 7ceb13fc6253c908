"""Alert rules, channels and the alerts they raised."""

from __future__ import annotations

from typing import Any

from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint

from controller import alert_schemas as a
from controller import alerts as svc
from controller import inventory as inv
from controller.api import audit_target, who
from controller.config import Settings
from controller.crypto import SecretBox
from controller.db import db
from controller.models import AlertChannel

blp = Blueprint("alerts", __name__, url_prefix="/v1",
                description="Alert rules, channels and the alerts they raised.")


def _box() -> SecretBox:
    box: SecretBox = current_app.extensions["relayfleet_secrets"]
    return box


def _channel_doc(channel: AlertChannel, secret: str | None = None) -> dict[str, Any]:
    doc = {"id": channel.id, "tenant_id": channel.tenant_id, "name": channel.name,
           "kind": channel.kind, "target_hint": channel.target_hint,
           "created_at": channel.created_at}
    if secret is not None:
        doc["secret"] = secret
    return doc


@blp.route("/alert-channels")
class Channels(MethodView):
    """Where alert notices go."""

    @blp.arguments(a.ChannelQuerySchema, location="query")
    @blp.response(200, a.ChannelPageSchema)
    def get(self, query: dict[str, Any]) -> dict[str, Any]:
        """List the channels this token sees (never their URL, address or key)."""
        result = inv.page(db.session, svc.channels_query(who(), query.get("tenant_id")),
                          query["limit"], query["offset"])
        result["items"] = [_channel_doc(channel) for channel in result["items"]]
        return result

    @blp.arguments(a.ChannelCreateSchema)
    @blp.response(201, a.ChannelSchema)
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Add a channel (admins): ``webhook`` (signed POSTs; the answer holds its signing
        secret, shown only now), ``email`` (through the controller's SMTP server),
        ``slack`` or ``teams`` (an incoming webhook's URL)."""
        channel, secret = svc.create_channel(db.session, who(), body, _box())
        audit_target(f"alert-channel:{channel.id}", name=channel.name, kind=channel.kind)
        return _channel_doc(channel, secret)


@blp.route("/alert-channels/<int(max=2147483647):channel_id>")
class ChannelById(MethodView):
    """One channel."""

    @blp.response(200, a.ChannelSchema)
    def get(self, channel_id: int) -> dict[str, Any]:
        """Read a channel (its target as a hint only)."""
        return _channel_doc(svc.get_channel(db.session, who(), channel_id))

    @blp.response(204)
    def delete(self, channel_id: int) -> None:
        """Remove a channel (admins): rules stop sending to it."""
        audit_target(f"alert-channel:{channel_id}")
        svc.delete_channel(db.session, who(), channel_id)


@blp.route("/alert-channels/<int(max=2147483647):channel_id>/test")
class ChannelTest(MethodView):
    """Check a channel end to end."""

    @blp.response(200, a.ChannelTestSchema)
    def post(self, channel_id: int) -> dict[str, Any]:
        """Send a test notice now (admins; within 10 s) and say how it went: a channel
        that did not take it answers ``delivered: false`` with the reason."""
        audit_target(f"alert-channel:{channel_id}", change="test notice")
        settings: Settings = current_app.config["RELAYFLEET_SETTINGS"]
        delivered, outcome = svc.send_test(db.session, settings, who(), channel_id)
        audit_target(f"alert-channel:{channel_id}", delivered=delivered)
        return {"channel_id": channel_id, "delivered": delivered, "outcome": outcome}


@blp.route("/alert-rules")
class Rules(MethodView):
    """Conditions on the fleet's last known state."""

    @blp.arguments(a.RuleQuerySchema, location="query")
    @blp.response(200, a.RulePageSchema)
    def get(self, query: dict[str, Any]) -> dict[str, Any]:
        """List the rules this token sees, with how many alerts each has open."""
        result = inv.page(db.session, svc.rules_query(who(), query.get("tenant_id")),
                          query["limit"], query["offset"])
        result["items"] = svc.rule_docs(db.session, result["items"])
        return result

    @blp.arguments(a.RuleCreateSchema)
    @blp.response(201, a.RuleSchema)
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Add a rule (admins). ``queue_count`` fires above ``threshold`` messages,
        ``oldest_age`` above ``threshold`` seconds, ``unreachable`` at ``threshold`` failed
        checks in a row (default 3), ``drift`` when the host differs from its policy,
        ``cause`` when the doctor names ``cause`` (or any cause) on the host. Alerts fire
        and resolve at beat's next tick."""
        rule = svc.create_rule(db.session, who(), body)
        audit_target(f"alert-rule:{rule.id}", name=rule.name, kind=rule.kind)
        return svc.rule_docs(db.session, [rule])[0]


@blp.route("/alert-rules/<int(max=2147483647):rule_id>")
class RuleById(MethodView):
    """One rule."""

    @blp.response(200, a.RuleSchema)
    def get(self, rule_id: int) -> dict[str, Any]:
        """Read a rule."""
        return svc.rule_docs(db.session, [svc.get_rule(db.session, who(), rule_id)])[0]

    @blp.arguments(a.RuleUpdateSchema)
    @blp.response(200, a.RuleSchema)
    def patch(self, body: dict[str, Any], rule_id: int) -> dict[str, Any]:
        """Change a rule (admins): name, threshold, cause, scope, channels, enabled. A
        disabled rule's open alerts resolve at the next tick."""
        audit_target(f"alert-rule:{rule_id}")
        rule = svc.update_rule(db.session, who(), rule_id, body)
        return svc.rule_docs(db.session, [rule])[0]

    @blp.response(204)
    def delete(self, rule_id: int) -> None:
        """Remove a rule and its alerts (admins)."""
        audit_target(f"alert-rule:{rule_id}")
        svc.delete_rule(db.session, who(), rule_id)


@blp.route("/alerts")
class Alerts(MethodView):
    """What the rules raised."""

    @blp.arguments(a.AlertQuerySchema, location="query")
    @blp.response(200, a.AlertPageSchema)
    def get(self, query: dict[str, Any]) -> dict[str, Any]:
        """List alerts, newest first (``state=firing`` for the open ones), with each
        one's notices and how their delivery went."""
        result = inv.page(db.session, svc.alerts_query(db.session, who(), query),
                          query["limit"], query["offset"])
        result["items"] = svc.alert_docs(db.session, result["items"])
        return result
