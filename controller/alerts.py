"""Alert rules over the fleet's last known state, and their notices.

A rule watches one tenant's hosts (or, made by an MSP-wide admin without a tenant, every
tenant's) for one condition on what the controller last learnt of each host: the queue
holding more than ``threshold`` messages (``queue_count``), its oldest message older than
``threshold`` seconds (``oldest_age``), ``threshold`` status checks in a row that could not
reach the host (``unreachable``), the host differing from its policy (``drift``), or the
doctor naming a cause in its queue or maillog (``cause``). A host nothing has been learnt
of yet never fires.

:func:`tick` (beat, every ``RELAYFLEET_SCHEDULER_TICK_S``) opens one :class:`Alert` per rule
and newly matching host and resolves the open ones that no longer match (a deleted host, a
host now out of the rule's scope, a disabled rule: all resolve). At most one alert per rule
and host is open (a partial unique index): a second tick racing this one fails on it and
leaves the work to the first. Each event (firing, resolved) queues one :class:`AlertNotice`
per channel of the rule (unique per alert, channel and event), which the worker delivers
with retries (:func:`deliver`).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from controller import dispatch, notify
from controller import inventory as inv
from controller.alert_schemas import THRESHOLD_KINDS, check_rule_fields
from controller.auth import Principal
from controller.callbacks import retry_delay_s
from controller.client.summaries import age_text
from controller.config import Settings
from controller.crypto import SecretBox, new_callback_secret
from controller.db import Database, utcnow
from controller.errors import Conflict, NotFound
from controller.models import (
    Alert,
    AlertChannel,
    AlertNotice,
    AlertRule,
    Host,
    HostTag,
    Site,
    Tenant,
)
from controller.schemas import MAX_ID
from shared.errors import ValidationError

#: how many times a notice is retried before it is given up: on the callbacks' backoff
#: (2 s doubling, at most 10 min apart) the last attempt comes ~57 min after the first, so
#: a Slack, Teams or SMTP outage of half an hour is ridden out
NOTICE_RETRIES = 13
#: a pending notice no worker has touched this long past its next attempt lost its
#: message (the broker was down at the commit, a retry was never published, a worker
#: died while sending): the tick queues it again; a worker's claim older than this is
#: taken to be a dead worker's
LOST_NOTICE_S = 600
#: what a notice never tried notes when the tick queues it again
REQUEUED = "queued again: the first message never reached a worker"
#: what a notice notes of a failure outside the send itself (the details go to the log:
#: they may hold a URL or an address)
INTERNAL_FAILURE = "the notice could not be prepared or sent (see the controller's log)"

log = logging.getLogger("relayfleet.alerts")


# -- evaluation (pure) -------------------------------------------------------------------

@dataclass(frozen=True)
class HostState:
    """What the controller last learnt of a host, as rules read it."""

    last_reachable: bool | None
    queue_count: int | None = None
    queue_oldest_age_s: int | None = None
    unreachable_streak: int = 0
    drift: list[dict[str, Any]] | None = None
    causes: list[dict[str, Any]] | None = None

    @property
    def known(self) -> bool:
        """Whether any check has told something about the host (never seen: unknown)."""
        return self.last_reachable is not None


def _cause_count(entry: Mapping[str, Any]) -> int:
    count = entry.get("count")
    return count if isinstance(count, int) and not isinstance(count, bool) else 1


def evaluate(kind: str, threshold: int | None, cause: str | None,
             state: HostState) -> dict[str, Any] | None:
    """What makes a rule fire for a host (the alert's ``detail``), or ``None`` when it
    does not (nor when the host's state, or the value the rule reads, is not known)."""
    if not state.known:
        return None
    limit = threshold if threshold is not None else 0
    if kind == "queue_count":
        if state.queue_count is not None and state.queue_count > limit:
            return {"queue_count": state.queue_count, "threshold": limit}
    elif kind == "oldest_age":
        if state.queue_oldest_age_s is not None and state.queue_oldest_age_s > limit:
            return {"queue_oldest_age_s": state.queue_oldest_age_s, "threshold": limit}
    elif kind == "unreachable":
        if state.unreachable_streak >= max(limit, 1):
            return {"unreachable_streak": state.unreachable_streak, "threshold": limit}
    elif kind == "drift":
        if state.drift:
            return {"drift": list(state.drift)}
    elif kind == "cause":
        found = [entry for entry in state.causes or []
                 if isinstance(entry, Mapping) and _cause_count(entry) > 0
                 and (cause is None or entry.get("cause") == cause)]
        if found:
            return {"causes": found}
    return None


def describe(kind: str, detail: Mapping[str, Any] | None) -> str:
    """One sentence on what fired, for people."""
    detail = detail or {}
    if kind == "queue_count":
        return (f"the queue holds {detail.get('queue_count')} messages (the rule fires above "
                f"{detail.get('threshold')})")
    if kind == "oldest_age":
        return (f"the oldest queued message is {age_text(detail.get('queue_oldest_age_s'))} "
                f"old (the rule fires above {age_text(detail.get('threshold'))})")
    if kind == "unreachable":
        return (f"{detail.get('unreachable_streak')} status checks in a row could not reach "
                f"the host")
    if kind == "drift":
        parts = [f"{item.get('field')}: want {item.get('want')!r}, have {item.get('have')!r}"
                 for item in detail.get("drift", []) if isinstance(item, Mapping)]
        return "the host differs from its policy: " + ("; ".join(parts) or "(no detail)")
    if kind == "cause":
        parts = [f"{item.get('cause')} ({_cause_count(item)} messages"
                 + (f", e.g. {str(item['sample'])[:200]!r}" if item.get("sample") else "")
                 + ")" for item in detail.get("causes", []) if isinstance(item, Mapping)]
        return "the doctor names " + ("; ".join(parts) or "a cause")
    return kind


# -- channels ----------------------------------------------------------------------------

def _box(settings: Settings) -> SecretBox:
    return SecretBox(settings.secret_key, settings.old_secret_keys)


def owner_tenant(session: Session, who: Principal, tenant_id: int | None) -> int | None:
    """The tenant a new channel or rule belongs to: a tenant's token's own (another
    tenant does not exist for it), or the one an MSP-wide token names (None: MSP-wide)."""
    who.require("admin")
    if who.tenant_id is not None:
        if tenant_id is not None and tenant_id != who.tenant_id:
            raise NotFound(f"tenant {tenant_id} not found")
        return who.tenant_id
    if tenant_id is not None:
        inv.get_scoped(session, Tenant, tenant_id, who)
    return tenant_id


def _unique_name(session: Session, model: Any, tenant_id: int | None, name: str, *,
                 what: str, own_id: int | None = None) -> None:
    # NULL tenants are distinct to the unique constraint: MSP-wide names are checked here
    clash = session.scalar(select(model.id).where(
        model.name == name, model.id != (own_id or 0),
        model.tenant_id.is_(None) if tenant_id is None else model.tenant_id == tenant_id))
    if clash is not None:
        raise Conflict(f"{what} {name!r} already exists: names must be unique (per tenant)")


def create_channel(session: Session, who: Principal, body: Mapping[str, Any],
                   box: SecretBox) -> tuple[AlertChannel, str | None]:
    """Add a channel; also answer a webhook's signing secret (shown only now)."""
    tenant_id = owner_tenant(session, who, body.get("tenant_id"))
    _unique_name(session, AlertChannel, tenant_id, body["name"], what="alert channel")
    target = body["address"] if body["kind"] == "email" else body["url"]
    secret = new_callback_secret() if body["kind"] == "webhook" else None
    channel = AlertChannel(tenant_id=tenant_id, name=body["name"], kind=body["kind"],
                           target_sealed=box.seal(target),
                           target_hint=notify.target_hint(body["kind"], target)[:200],
                           secret_sealed=box.seal(secret) if secret else None)
    session.add(channel)
    inv.commit_unique(session, f"alert channel {body['name']!r}")
    return channel, secret


def get_channel(session: Session, who: Principal, channel_id: int) -> AlertChannel:
    """A channel the principal sees (404 otherwise)."""
    row = session.scalar(inv.scoped(select(AlertChannel).where(AlertChannel.id == channel_id),
                                    AlertChannel, who))
    if row is None:
        raise NotFound(f"alert channel {channel_id} not found")
    channel: AlertChannel = row
    return channel


def channels_query(who: Principal, tenant_id: int | None = None) -> Any:
    """The channels the principal sees, by id."""
    stmt = inv.scoped(select(AlertChannel), AlertChannel, who).order_by(AlertChannel.id)
    if tenant_id is not None:
        stmt = stmt.where(AlertChannel.tenant_id == tenant_id)
    return stmt


def delete_channel(session: Session, who: Principal, channel_id: int) -> None:
    """Remove a channel (admins); rules stop sending to it, its notices go with it."""
    who.require("admin")
    channel = get_channel(session, who, channel_id)
    for rule in session.scalars(select(AlertRule)):
        if channel.id in (rule.channel_ids or []):
            rule.channel_ids = [cid for cid in rule.channel_ids if cid != channel.id]
    session.delete(channel)
    session.commit()


def destination(channel: AlertChannel, box: SecretBox) -> notify.Destination:
    """Where ``channel`` sends, its secrets opened."""
    key = box.open(channel.secret_sealed)
    return notify.Destination(channel.kind, box.open(channel.target_sealed) or "",
                              key.encode() if key else None)


def trial_notice(channel: AlertChannel, tenant: str | None) -> notify.Notice:
    """The notice ``POST /v1/alert-channels/{id}/test`` sends."""
    at = utcnow()
    text = (f"A test notice from relayfleet to the channel {channel.name!r} at "
            f"{at:%Y-%m-%d %H:%M:%S} UTC: alerts of the rules that use this channel "
            f"will arrive like this.")
    document = {"event": "test", "alert": None, "rule": None, "host": None,
                "tenant": {"id": channel.tenant_id, "name": tenant}
                if channel.tenant_id is not None else None,
                "channel": {"id": channel.id, "name": channel.name},
                "at": at.isoformat()}
    return notify.Notice("test", document, f"[relayfleet] TEST: {channel.name}", text)


# -- rules -------------------------------------------------------------------------------

def _resolve_channels(session: Session, who: Principal, tenant_id: int | None,
                      refs: Sequence[Any]) -> list[int]:
    """Channel ids from ids or names: the rule's tenant's channels, or MSP-wide ones (an
    MSP-wide rule may use only those: another tenant's hosts must not reach a tenant's
    channel)."""
    allowed = inv.scoped(select(AlertChannel), AlertChannel, who)
    if tenant_id is None:
        allowed = allowed.where(AlertChannel.tenant_id.is_(None))
    else:
        allowed = allowed.where((AlertChannel.tenant_id == tenant_id)
                                | AlertChannel.tenant_id.is_(None))
    channels = list(session.scalars(allowed))
    ids: list[int] = []
    whose = "MSP-wide" if tenant_id is None else f"tenant {tenant_id}'s or MSP-wide"
    for index, ref in enumerate(refs):
        found = [c for c in channels if (c.id == ref if isinstance(ref, int) else c.name == ref)]
        if len(found) > 1:  # one of the tenant's and an MSP-wide one of the same name
            found = [c for c in found if c.tenant_id == tenant_id]
        if not found:
            raise ValidationError.for_field(
                f"channels.{index}", f"no {whose} alert channel {ref!r}: see GET "
                f"/v1/alert-channels (relayfleet alerts channels list)")
        if found[0].id not in ids:
            ids.append(found[0].id)
    return ids


def _resolve_scope(session: Session, who: Principal, tenant_id: int | None,
                   scope: Mapping[str, Any]) -> dict[str, Any]:
    """The stored scope: site ids (from ids or names, of the rule's tenant) and tags."""
    out: dict[str, Any] = {}
    if scope.get("sites"):
        stmt = inv.scoped(select(Site), Site, who)
        if tenant_id is not None:
            stmt = stmt.where(Site.tenant_id == tenant_id)
        sites = list(session.scalars(stmt))
        ids: list[int] = []
        for index, ref in enumerate(scope["sites"]):
            found = [s for s in sites if (s.id == ref if isinstance(ref, int) else s.name == ref)]
            if len(found) != 1:
                why = ("names sites of several tenants: give its id" if found
                       else "is not a site of the rule's tenant (relayfleet sites list)")
                raise ValidationError.for_field(f"scope.sites.{index}", f"{ref!r} {why}")
            if found[0].id not in ids:
                ids.append(found[0].id)
        out["sites"] = ids
    if scope.get("tags"):
        out["tags"] = sorted(set(scope["tags"]))
    return out


def create_rule(session: Session, who: Principal, body: Mapping[str, Any]) -> AlertRule:
    """Add a rule (admins)."""
    tenant_id = owner_tenant(session, who, body.get("tenant_id"))
    threshold = check_rule_fields(body["kind"], body.get("threshold"), body.get("cause"))
    _unique_name(session, AlertRule, tenant_id, body["name"], what="alert rule")
    rule = AlertRule(tenant_id=tenant_id, name=body["name"], kind=body["kind"],
                     threshold=threshold, cause=body.get("cause"),
                     scope=_resolve_scope(session, who, tenant_id, body.get("scope") or {}),
                     channel_ids=_resolve_channels(session, who, tenant_id, body["channels"]),
                     enabled=body.get("enabled", True))
    session.add(rule)
    inv.commit_unique(session, f"alert rule {body['name']!r}")
    return rule


def get_rule(session: Session, who: Principal, rule_id: int) -> AlertRule:
    """A rule the principal sees (404 otherwise)."""
    row = session.scalar(inv.scoped(select(AlertRule).where(AlertRule.id == rule_id),
                                    AlertRule, who))
    if row is None:
        raise NotFound(f"alert rule {rule_id} not found")
    rule: AlertRule = row
    return rule


def update_rule(session: Session, who: Principal, rule_id: int,
                body: Mapping[str, Any]) -> AlertRule:
    """Change a rule's name, threshold, cause, scope, channels or whether it is enabled
    (admins); the next tick judges the hosts by the rule as it is now."""
    who.require("admin")
    rule = get_rule(session, who, rule_id)
    threshold = body.get("threshold", rule.threshold)
    cause = body.get("cause", rule.cause)
    rule.threshold = check_rule_fields(rule.kind, threshold, cause)
    rule.cause = cause
    if "name" in body:
        _unique_name(session, AlertRule, rule.tenant_id, body["name"], what="alert rule",
                     own_id=rule.id)
        rule.name = body["name"]
    if "scope" in body:
        rule.scope = _resolve_scope(session, who, rule.tenant_id, body["scope"])
    if "channels" in body:
        if not body["channels"]:
            raise ValidationError.for_field("channels", "a rule needs at least one channel")
        rule.channel_ids = _resolve_channels(session, who, rule.tenant_id, body["channels"])
    if "enabled" in body:
        rule.enabled = body["enabled"]
    inv.commit_unique(session, f"alert rule {rule.name!r}")
    return rule


def delete_rule(session: Session, who: Principal, rule_id: int) -> None:
    """Remove a rule and its alerts (admins); no resolved notice is sent for them."""
    who.require("admin")
    rule = get_rule(session, who, rule_id)
    session.delete(rule)
    session.commit()


def rules_query(who: Principal, tenant_id: int | None = None) -> Any:
    """The rules the principal sees, by id."""
    stmt = inv.scoped(select(AlertRule), AlertRule, who).order_by(AlertRule.id)
    if tenant_id is not None:
        stmt = stmt.where(AlertRule.tenant_id == tenant_id)
    return stmt


def rule_docs(session: Session, rules: Iterable[AlertRule]) -> list[dict[str, Any]]:
    """Rules as the API shows them: their channels named, and how many alerts are open."""
    rules = list(rules)
    ids = {cid for rule in rules for cid in rule.channel_ids or []}
    channels = {c.id: c for c in session.scalars(
        select(AlertChannel).where(AlertChannel.id.in_(ids)))} if ids else {}
    firing = dict(session.execute(
        select(Alert.rule_id, func.count()).where(
            Alert.rule_id.in_([r.id for r in rules]), Alert.resolved_at.is_(None))
        .group_by(Alert.rule_id)).all()) if rules else {}
    return [{"id": r.id, "tenant_id": r.tenant_id, "name": r.name, "kind": r.kind,
             "threshold": r.threshold, "cause": r.cause, "scope": r.scope or {},
             "channels": [{"id": cid, "name": channels[cid].name, "kind": channels[cid].kind}
                          for cid in r.channel_ids or [] if cid in channels],
             "enabled": r.enabled, "firing": firing.get(r.id, 0),
             "created_at": r.created_at} for r in rules]


# -- alerts ------------------------------------------------------------------------------

def _as_id(digits: str) -> int:
    """An id from digits; a number no id can have is 0 (matches nothing, and does not
    overflow a database integer)."""
    value = int(digits[:12])
    return value if len(digits) <= 10 and value <= MAX_ID else 0


def alerts_query(session: Session, who: Principal, filters: Mapping[str, Any]) -> Any:
    """The alerts the principal sees, newest first (resolved ones: last resolved first),
    filtered by state, rule, host, tenant. A tenant's token sees the alerts of its own
    tenant's rules only: an MSP-wide rule, its channels and its notices are the MSP's,
    even where it watches the tenant's hosts."""
    stmt = select(Alert)
    if who.tenant_id is not None:
        stmt = stmt.where(Alert.tenant_id == who.tenant_id, Alert.rule_id.in_(
            rules_query(who).with_only_columns(AlertRule.id).order_by(None)))
    if filters.get("tenant_id") is not None:
        stmt = stmt.where(Alert.tenant_id == filters["tenant_id"])
    state = filters.get("state")
    if state == "firing":
        stmt = stmt.where(Alert.resolved_at.is_(None))
    elif state == "resolved":
        stmt = stmt.where(Alert.resolved_at.is_not(None))
    stmt = stmt.order_by(Alert.resolved_at.desc(), Alert.id.desc()) if state == "resolved" \
        else stmt.order_by(Alert.fired_at.desc(), Alert.id.desc())
    rule = filters.get("rule")
    if rule:
        rules = rules_query(who).with_only_columns(AlertRule.id)
        rules = rules.where(AlertRule.id == _as_id(rule)) if rule.isdigit() \
            else rules.where(AlertRule.name == rule)
        stmt = stmt.where(Alert.rule_id.in_(rules))
    host = filters.get("host")
    if host:
        # deleted hosts' alerts stay listed: a host's column, not inventory scoping
        hosts = select(Host.id).where(Host.id == _as_id(host)) if host.isdigit() \
            else select(Host.id).where(Host.name == host)
        stmt = stmt.where(Alert.host_id.in_(hosts))
    return stmt


def alert_docs(session: Session, alerts: Iterable[Alert]) -> list[dict[str, Any]]:
    """Alerts as the API shows them: rule, host and site named, with their notices."""
    alerts = list(alerts)
    if not alerts:
        return []
    rules = {r.id: r for r in session.scalars(
        select(AlertRule).where(AlertRule.id.in_({a.rule_id for a in alerts})))}
    hosts = {h.id: h for h in session.scalars(
        select(Host).where(Host.id.in_({a.host_id for a in alerts})))}
    sites = dict(session.execute(select(Site.id, Site.name).where(
        Site.id.in_({h.site_id for h in hosts.values()}))).all())
    notices: dict[int, list[dict[str, Any]]] = {}
    rows = session.execute(
        select(AlertNotice, AlertChannel.name).join(
            AlertChannel, AlertChannel.id == AlertNotice.channel_id, isouter=True)
        .where(AlertNotice.alert_id.in_([a.id for a in alerts])).order_by(AlertNotice.id))
    for notice, channel in rows:
        notices.setdefault(notice.alert_id, []).append({
            "channel_id": notice.channel_id, "channel": channel, "event": notice.event,
            "state": notice.state, "attempts": notice.attempts,
            "last_error": notice.last_error, "sent_at": notice.sent_at})
    docs = []
    for alert in alerts:
        rule, host = rules[alert.rule_id], hosts[alert.host_id]
        docs.append({"id": alert.id, "state": "firing" if alert.resolved_at is None
                     else "resolved", "rule_id": rule.id, "rule": rule.name,
                     "kind": rule.kind, "host_id": host.id, "host": host.name,
                     "host_deleted": host.deleted_at is not None,
                     "site": sites.get(host.site_id), "tenant_id": alert.tenant_id,
                     "detail": alert.detail, "fired_at": alert.fired_at,
                     "resolved_at": alert.resolved_at,
                     "notices": notices.get(alert.id, [])})
    return docs


# -- the tick ----------------------------------------------------------------------------

def _watched(rule: AlertRule) -> Any:
    """The live hosts a rule watches, with the columns it reads."""
    stmt = select(Host.id, Host.tenant_id, Host.last_reachable, Host.queue_count,
                  Host.queue_oldest_age_s, Host.unreachable_streak, Host.drift,
                  Host.causes).where(Host.deleted_at.is_(None))
    if rule.tenant_id is not None:
        stmt = stmt.where(Host.tenant_id == rule.tenant_id)
    scope = rule.scope or {}
    if scope.get("sites"):
        stmt = stmt.where(Host.site_id.in_(scope["sites"]))
    if scope.get("tags"):
        stmt = stmt.where(Host.id.in_(select(HostTag.host_id)
                                      .where(HostTag.tag.in_(scope["tags"]))))
    if rule.kind in THRESHOLD_KINDS and rule.kind != "unreachable":
        column = Host.queue_count if rule.kind == "queue_count" else Host.queue_oldest_age_s
        # the obvious non-matches stay in the database (10,000 hosts, most of them fine)
        stmt = stmt.where(column > (rule.threshold or 0))
    return stmt


def _queue_notices(session: Session, rule: AlertRule, alert: Alert, event: str) -> int:
    """One notice per existing channel of ``rule`` for ``alert``'s ``event`` (resolved:
    also to each channel its firing notice went to, should the rule's channels have
    changed since), each queued for the worker once this transaction commits."""
    ids = set(rule.channel_ids or [])
    if event == "resolved":
        ids.update(session.scalars(select(AlertNotice.channel_id).where(
            AlertNotice.alert_id == alert.id, AlertNotice.event == "firing")))
    if not ids:
        return 0
    queued = 0
    for channel_id in session.scalars(select(AlertChannel.id).where(AlertChannel.id.in_(ids))
                                      .order_by(AlertChannel.id)):
        notice = AlertNotice(alert_id=alert.id, channel_id=channel_id, event=event,
                             state="pending", attempts=0)
        session.add(notice)
        session.flush()
        # not required: a notice whose message is lost stays pending, and the tick
        # queues it again (LOST_NOTICE_S)
        dispatch.send_after_commit(session, dispatch.SEND_NOTICE, notice.id, required=False)
        queued += 1
    return queued


def judge_rule(session: Session, rule_id: int, now: dt.datetime) -> tuple[int, int]:
    """Open and resolve ``rule_id``'s alerts against the hosts' state now; how many fired
    and how many resolved."""
    rule = session.get(AlertRule, rule_id)
    if rule is None:
        return 0, 0
    open_alerts = {alert.host_id: alert for alert in session.scalars(
        select(Alert).where(Alert.rule_id == rule.id, Alert.resolved_at.is_(None)))}
    matching: dict[int, tuple[int, dict[str, Any]]] = {}
    if rule.enabled:
        for row in session.execute(_watched(rule)):
            state = HostState(row.last_reachable, row.queue_count, row.queue_oldest_age_s,
                              row.unreachable_streak or 0, row.drift, row.causes)
            detail = evaluate(rule.kind, rule.threshold, rule.cause, state)
            if detail is not None:
                matching[row.id] = (row.tenant_id, detail)
    fired = resolved = 0
    for host_id, (tenant_id, detail) in matching.items():
        if host_id in open_alerts:
            continue
        alert = Alert(rule_id=rule.id, host_id=host_id, tenant_id=tenant_id, detail=detail,
                      fired_at=now)
        session.add(alert)
        session.flush()  # a racing tick's open alert fails here, on the unique index
        _queue_notices(session, rule, alert, "firing")
        fired += 1
    for host_id, alert in open_alerts.items():
        if host_id not in matching:
            alert.resolved_at = now
            _queue_notices(session, rule, alert, "resolved")
            resolved += 1
    return fired, resolved


def _requeue_lost(session: Session, now: dt.datetime) -> int:
    """Queue once more the pending notices whose message was lost: untouched for
    :data:`LOST_NOTICE_S` past their next attempt (a retry waits at most its backoff), or
    claimed that long ago by a worker that never noted how it went."""
    stale = []
    for notice in session.scalars(select(AlertNotice).where(
            AlertNotice.state == "pending",
            func.coalesce(AlertNotice.touched_at, AlertNotice.created_at)
            < now - dt.timedelta(seconds=LOST_NOTICE_S))):
        touched = notice.touched_at or notice.created_at
        waits = 0 if notice.claimed_at is not None or not notice.attempts \
            else retry_delay_s(notice.attempts - 1)
        if touched < now - dt.timedelta(seconds=LOST_NOTICE_S + waits):
            stale.append(notice)
    for notice in stale:
        notice.claimed_at = None
        notice.touched_at = now
        if not notice.attempts:
            notice.last_error = REQUEUED
        dispatch.send_after_commit(session, dispatch.SEND_NOTICE, notice.id, required=False)
    return len(stale)


def tick(database: Database, settings: Settings, now: dt.datetime | None = None) -> None:
    """Fire and resolve alerts: every rule, each in a transaction of its own."""
    now = now or utcnow()
    with database.transaction() as session:
        rule_ids = list(session.scalars(select(AlertRule.id).order_by(AlertRule.id)))
    for rule_id in rule_ids:
        try:
            with database.transaction() as session:
                fired, resolved = judge_rule(session, rule_id, now)
        except IntegrityError:
            # another tick opened the same alert (or notice) first: it has this rule
            log.info("alert rule %s: judged by another tick at the same time", rule_id)
            continue
        except OperationalError as exc:
            # SQLite refuses a write after another writer's commit (a racing tick); the
            # other rules still get their turn, and the next tick judges this one again
            log.warning("alert rule %s: not judged this tick (%s)", rule_id,
                        type(exc.orig).__name__)
            continue
        if fired or resolved:
            log.info("alert rule %s: %d fired, %d resolved", rule_id, fired, resolved)
    with database.transaction() as session:
        _requeue_lost(session, now)


# -- delivery ----------------------------------------------------------------------------

def compose(event: str, alert: Alert, rule: AlertRule, host: Host, *, site: str | None,
            tenant: Tenant | None, now: dt.datetime) -> notify.Notice:
    """The notice of ``alert``'s ``event``: the webhook document and the human text."""
    lasted = None
    if alert.resolved_at is not None:
        lasted = int((alert.resolved_at - alert.fired_at).total_seconds())
    document = {
        "event": event,
        "alert": {"id": alert.id, "state": "firing" if alert.resolved_at is None
                  else "resolved", "fired_at": alert.fired_at.isoformat(),
                  "resolved_at": alert.resolved_at.isoformat() if alert.resolved_at
                  else None, "lasted_s": lasted, "detail": alert.detail},
        "rule": {"id": rule.id, "name": rule.name, "kind": rule.kind,
                 "threshold": rule.threshold, "cause": rule.cause},
        "host": {"id": host.id, "name": host.name, "site_id": host.site_id, "site": site,
                 "deleted": host.deleted_at is not None},
        "tenant": {"id": tenant.id, "name": tenant.name} if tenant is not None else None,
        "at": now.isoformat()}
    where = f"{host.name} (site {site or host.site_id}"
    where += f", tenant {tenant.name})" if tenant is not None else ")"
    what = describe(rule.kind, alert.detail)
    if event == "firing":
        subject = f"[relayfleet] FIRING: {rule.name} — {host.name}"
        text = (f"The alert rule {rule.name!r} fired for {where} at "
                f"{alert.fired_at:%Y-%m-%d %H:%M:%S} UTC: {what}.")
    else:
        subject = f"[relayfleet] RESOLVED: {rule.name} — {host.name}"
        why = " (the host was removed from the inventory)" if host.deleted_at else ""
        text = (f"Recovered: the alert rule {rule.name!r} no longer fires for {where}"
                f"{why}. It fired at {alert.fired_at:%Y-%m-%d %H:%M:%S} UTC and lasted "
                f"{age_text(lasted)}. When it fired: {what}.")
    return notify.Notice(event, document, subject, text)


def _claim(database: Database, notice_id: int) -> tuple[dt.datetime, int] | None:
    """Take a pending notice for one attempt, atomically: its claim stamp and the attempt's
    number, or ``None`` when it is sent, given up, gone, or another worker holds it (a
    duplicate message: a claim older than :data:`LOST_NOTICE_S` is a dead worker's)."""
    now = utcnow()
    with database.transaction() as session:
        taken = session.execute(
            update(AlertNotice).where(
                AlertNotice.id == notice_id, AlertNotice.state == "pending",
                AlertNotice.claimed_at.is_(None)
                | (AlertNotice.claimed_at < now - dt.timedelta(seconds=LOST_NOTICE_S)))
            .values(claimed_at=now, touched_at=now, attempts=AlertNotice.attempts + 1)
            .returning(AlertNotice.attempts)).scalar_one_or_none()
    return None if taken is None else (now, int(taken))


def _send_claimed(database: Database, settings: Settings,
                  notice_id: int) -> tuple[bool, str] | None:
    """Compose and send a claimed notice: how it went, or ``None`` when its channel,
    alert, rule or host went meanwhile."""
    with database.transaction() as session:
        notice = session.get(AlertNotice, notice_id)
        if notice is None:
            return None
        channel = session.get(AlertChannel, notice.channel_id)
        alert = session.get(Alert, notice.alert_id)
        if channel is None or alert is None:
            return None
        rule = session.get(AlertRule, alert.rule_id)
        host = session.get(Host, alert.host_id)
        if rule is None or host is None:
            return None
        site = session.scalar(select(Site.name).where(Site.id == host.site_id))
        tenant = session.get(Tenant, host.tenant_id)
        message = compose(notice.event, alert, rule, host, site=site, tenant=tenant,
                          now=utcnow())
        where = destination(channel, _box(settings))
    return notify.send(settings, where, message)


def deliver(database: Database, settings: Settings, notice_id: int, attempt: int) -> bool:
    """Send one notice once (attempt ``attempt`` of the message; the notice counts its
    own), note how it went on the notice, and say whether it is done: delivered, given up
    after 1 + :data:`NOTICE_RETRIES` attempts, gone, or held by another worker (nothing
    for this message to retry). The notice is claimed before it is sent: a duplicate
    message sends nothing."""
    claim = _claim(database, notice_id)
    if claim is None:
        return True
    stamp, tries = claim
    try:
        result = _send_claimed(database, settings, notice_id)
    except Exception:
        # a bad stored target, SMTP_FROM, a bug: noted and retried like a failed send
        log.exception("alert notice %s: attempt %d (message attempt %d) failed before or "
                      "while sending", notice_id, tries, attempt)
        result = (False, INTERNAL_FAILURE)
    delivered, outcome = result if result is not None else (True, "")
    with database.transaction() as session:
        values: dict[str, Any] = {"claimed_at": None, "touched_at": utcnow()}
        if result is None:  # what it was about went meanwhile: nothing to send, ever
            values.update(state="failed", last_error="its channel, rule or host was removed")
        elif delivered:
            values.update(state="sent", sent_at=utcnow(), last_error=None)
        elif tries > NOTICE_RETRIES:
            values.update(state="failed",
                          last_error=f"gave up after {tries} attempts (last: {outcome})")
        else:
            values.update(last_error=f"attempt {tries} failed ({outcome})")
        # only this claim's outcome: a dead worker's claim taken over is not undone
        session.execute(update(AlertNotice).where(AlertNotice.id == notice_id,
                                                  AlertNotice.state == "pending",
                                                  AlertNotice.claimed_at == stamp)
                        .values(**values))
    if not delivered:
        log.info("alert notice %s: attempt %d failed (%s)", notice_id, tries, outcome)
    return delivered or tries > NOTICE_RETRIES


def send_test(session: Session, settings: Settings, who: Principal,
              channel_id: int) -> tuple[bool, str]:
    """Send a test notice to a channel now (admins); whether it arrived and how it went.
    The session's transaction ends before anything is sent (a slow receiver must not hold
    a database lock)."""
    who.require("admin")
    channel = get_channel(session, who, channel_id)
    tenant = session.get(Tenant, channel.tenant_id) if channel.tenant_id else None
    message = trial_notice(channel, tenant.name if tenant else None)
    where = destination(channel, _box(settings))
    session.rollback()
    try:
        return notify.send(settings, where, message)
    except Exception:
        # a bad RELAYFLEET_SMTP_FROM, a bug: the admin gets an answer, the log the detail
        log.exception("alert channel %s: the test notice failed", channel_id)
        return False, INTERNAL_FAILURE
