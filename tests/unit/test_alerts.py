"""Alerts: how rules judge a host's last known state, how the tick opens and resolves
alerts (once per rule and host) and queues one notice per channel and event, how a notice's
delivery is noted, and the API's rules on channels and rules (SQLite, in-memory broker;
the state columns are set directly, as the jobs that learn them would)."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest
from sqlalchemy import select, update

from controller import alerts, notify
from controller.alert_schemas import check_rule_fields
from controller.alerts import HostState, evaluate
from controller.db import db
from controller.models import Alert, AlertNotice, Host
from shared.errors import ValidationError
from tests.controller_client import Controller

SEEN = HostState(last_reachable=True)


# -- evaluation ----------------------------------------------------------------------------

@pytest.mark.parametrize(("count", "fires"), [(None, False), (50, False), (51, True)])
def test_queue_count_fires_above_its_threshold(count: int | None, fires: bool) -> None:
    detail = evaluate("queue_count", 50, None, HostState(True, queue_count=count))
    assert (detail is not None) is fires
    if fires:
        assert detail == {"queue_count": 51, "threshold": 50}


def test_oldest_age_fires_above_its_threshold_in_seconds() -> None:
    assert evaluate("oldest_age", 3600, None, HostState(True, queue_oldest_age_s=3600)) is None
    assert evaluate("oldest_age", 3600, None, HostState(True, queue_oldest_age_s=3601)) == {
        "queue_oldest_age_s": 3601, "threshold": 3600}


def test_unreachable_fires_at_its_number_of_checks_in_a_row() -> None:
    assert evaluate("unreachable", 3, None, HostState(False, unreachable_streak=2)) is None
    assert evaluate("unreachable", 3, None, HostState(False, unreachable_streak=3)) == {
        "unreachable_streak": 3, "threshold": 3}


def test_a_host_never_checked_does_not_fire_whatever_its_columns_say() -> None:
    unknown = HostState(None, queue_count=999, queue_oldest_age_s=99999, unreachable_streak=9,
                        drift=[{"field": "smarthost.host", "want": "a", "have": "b"}],
                        causes=[{"cause": "auth_failed", "count": 3, "sample": "535"}])
    for kind in ("queue_count", "oldest_age", "unreachable", "drift", "cause"):
        assert evaluate(kind, 1, None, unknown) is None


def test_drift_fires_only_on_a_difference() -> None:
    difference = [{"field": "smarthost.host", "want": "relay.x", "have": "relay.y"}]
    assert evaluate("drift", None, None, HostState(True, drift=None)) is None
    assert evaluate("drift", None, None, HostState(True, drift=[])) is None
    assert evaluate("drift", None, None, HostState(True, drift=difference)) == {
        "drift": difference}


def test_cause_fires_for_its_cause_or_any() -> None:
    causes = [{"cause": "auth_failed", "count": 4, "sample": "535 5.7.8 bad login"},
              {"cause": "tls_verify_failed", "count": 0, "sample": ""}]
    state = HostState(True, causes=causes)
    assert evaluate("cause", None, "auth_failed", state) == {"causes": [causes[0]]}
    assert evaluate("cause", None, "tls_verify_failed", state) is None  # count 0
    assert evaluate("cause", None, "relay_unreachable", state) is None
    assert evaluate("cause", None, None, state) == {"causes": [causes[0]]}
    assert evaluate("cause", None, None, HostState(True, causes=[])) is None


def test_descriptions_say_what_fired() -> None:
    assert "holds 57 messages" in alerts.describe("queue_count",
                                                  {"queue_count": 57, "threshold": 50})
    assert "want 'relay.x', have 'relay.y'" in alerts.describe(
        "drift", {"drift": [{"field": "smarthost.host", "want": "relay.x",
                             "have": "relay.y"}]})
    assert "auth_failed (4 messages" in alerts.describe(
        "cause", {"causes": [{"cause": "auth_failed", "count": 4, "sample": "535"}]})


def test_rule_fields_fit_their_kind() -> None:
    assert check_rule_fields("unreachable", None, None) == 3
    assert check_rule_fields("queue_count", 0, None) == 0
    assert check_rule_fields("drift", None, None) is None
    for kind, threshold, cause, field in [("queue_count", None, None, "threshold"),
                                          ("drift", 5, None, "threshold"),
                                          ("oldest_age", 10, "auth_failed", "cause"),
                                          ("unreachable", 0, None, "threshold")]:
        with pytest.raises(ValidationError) as caught:
            check_rule_fields(kind, threshold, cause)
        assert field in caught.value.errors


def test_target_hints_hide_an_incoming_webhooks_key() -> None:
    hint = notify.target_hint("slack", "https://hooks.slack.com/services/T0/B0/secretpart")
    assert hint == "https://hooks.slack.com/…"
    assert notify.target_hint("email", "noc@msp.example") == "noc@msp.example"


def test_smtp_url_forms() -> None:
    assert notify.smtp_endpoint("smtp://mail.msp.example") == ("smtp", "mail.msp.example", 25)
    assert notify.smtp_endpoint("smtp+starttls://mx:2525") == ("smtp+starttls", "mx", 2525)
    assert notify.smtp_endpoint("smtps://mx") == ("smtps", "mx", 465)
    for bad in ("", "http://mx", "smtp://"):
        with pytest.raises(ValueError, match="RELAYFLEET_SMTP_URL"):
            notify.smtp_endpoint(bad)


def test_email_without_a_server_is_a_clear_failure() -> None:
    from controller.config import Settings

    delivered, outcome = notify.send_email(Settings(database_url="sqlite://"), "a@b.example",
                                           notify.Notice("firing", {}, "s", "t"))
    assert not delivered
    assert "RELAYFLEET_SMTP_URL is not set" in outcome


def test_slack_and_teams_text_cannot_carry_markup() -> None:
    sample = "550 <!channel> see <https://evil.example|here> & [click](https://evil.example)"
    notice = notify.Notice("firing", {}, "[relayfleet] FIRING: q — pbx*1", sample)
    slack = notify.chat_text("slack", notice)
    assert "<" not in slack and ">" not in slack
    assert "&lt;!channel&gt;" in slack and "&amp; [click]" in slack
    assert slack.startswith("*[relayfleet] FIRING: q — pbx*1*\n")
    teams = notify.chat_text("teams", notice)
    assert "<" not in teams and "](" not in teams
    assert r"\[click\]\(https://evil.example\)" in teams
    assert teams.startswith(r"**\[relayfleet\] FIRING: q — pbx\*1**")


def test_chat_channels_post_the_escaped_text(monkeypatch: pytest.MonkeyPatch) -> None:
    from controller.config import Settings

    posted: list[bytes] = []
    monkeypatch.setattr(notify, "post", lambda settings, url, body, headers: (
        posted.append(body), (True, "HTTP 200"))[1])
    notice = notify.Notice("firing", {}, "s", "drift: want '<b>x</b>', have 'y'")
    for kind in ("slack", "teams"):
        notify.send(Settings(database_url="sqlite://"),
                    notify.Destination(kind, "https://hooks.example/x"), notice)
    assert all(b"<b>" not in body and b"&lt;b&gt;" in body for body in posted), posted


def test_an_smtp_login_needs_tls(monkeypatch: pytest.MonkeyPatch) -> None:
    from controller.config import Settings

    def no_connection(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("connected in clear with a password")

    monkeypatch.setattr(notify.smtplib, "SMTP", no_connection)
    settings = Settings(database_url="sqlite://", smtp_url="smtp://mail.msp.example",
                        smtp_username="relayfleet", smtp_password="pw-not-shown")
    delivered, outcome = notify.send_email(settings, "a@b.example",
                                           notify.Notice("firing", {}, "s", "t"))
    assert not delivered
    assert "smtps://" in outcome and "smtp+starttls://" in outcome
    assert "pw-not-shown" not in outcome


def test_a_refused_post_logs_the_host_only(caplog: pytest.LogCaptureFixture) -> None:
    from controller import callbacks
    from controller.config import Settings

    with caplog.at_level("INFO", logger="relayfleet.callbacks"):
        delivered, outcome = callbacks.post(
            Settings(database_url="sqlite://"),
            "http://127.0.0.1:8080/services/T0/B0/the-key", b"{}", {})
    assert not delivered and "egress" in outcome
    assert "127.0.0.1:8080" in caplog.text and "the-key" not in caplog.text


# -- the tick --------------------------------------------------------------------------------

class World:
    """A controller with a tenant, a site, hosts and two channels, and the tick's handles."""

    def __init__(self, controller: Controller) -> None:
        self.c = controller
        self.tenant = controller.tenant("Acme")
        self.site = controller.site(self.tenant, "Leeds")
        self.hosts = [controller.host(self.site, f"pbx{i}", tags=["pbx"] if i < 2 else [])["id"]
                      for i in range(3)]
        self.channels = [
            controller.ok("POST", "/v1/alert-channels", {
                "name": "hook", "tenant_id": self.tenant, "kind": "webhook",
                "url": "https://hooks.msp.example/relayfleet"}),
            controller.ok("POST", "/v1/alert-channels", {
                "name": "noc", "tenant_id": self.tenant, "kind": "email",
                "address": "noc@msp.example"})]

    def rule(self, **body: Any) -> dict[str, Any]:
        doc: dict[str, Any] = self.c.ok("POST", "/v1/alert-rules", {
            "tenant_id": self.tenant, "channels": ["hook", "noc"], **body}, expect=201)
        return doc

    def set_host(self, host_id: int, **values: Any) -> None:
        with self.c.app.app_context(), db.transaction() as session:
            session.execute(update(Host).where(Host.id == host_id).values(**values))

    def tick(self, now: dt.datetime | None = None) -> None:
        app = self.c.app
        with app.app_context():
            alerts.tick(app.extensions["relayfleet_db"], app.config["RELAYFLEET_SETTINGS"],
                        now)

    def rows(self) -> tuple[list[Alert], list[AlertNotice]]:
        with self.c.app.app_context(), db.transaction() as session:
            found = list(session.scalars(select(Alert).order_by(Alert.id)))
            notices = list(session.scalars(select(AlertNotice).order_by(AlertNotice.id)))
            session.expunge_all()
        return found, notices


@pytest.fixture
def world(memory_controller: Controller) -> World:
    """The controller and its small fleet."""
    return World(memory_controller)


def test_a_rule_fires_once_per_host_and_resolves_once(world: World) -> None:
    world.rule(name="queue over 50", kind="queue_count", threshold=50)
    first, second, never = world.hosts
    world.set_host(first, last_reachable=True, queue_count=60)
    world.set_host(second, last_reachable=True, queue_count=10)
    world.set_host(never, queue_count=500)  # no check ever recorded: unknown
    world.tick()
    world.tick()  # still over: the same alert, nothing new
    found, notices = world.rows()
    assert [a.host_id for a in found] == [first]
    assert found[0].detail == {"queue_count": 60, "threshold": 50}
    assert sorted((n.channel_id, n.event) for n in notices) == sorted(
        (c["id"], "firing") for c in world.channels)
    world.set_host(first, queue_count=0)
    world.tick()
    world.tick()
    found, notices = world.rows()
    assert found[0].resolved_at is not None
    assert sorted(n.event for n in notices) == ["firing", "firing", "resolved", "resolved"]
    world.set_host(first, queue_count=70)  # again: a new alert of its own
    world.tick()
    found, _ = world.rows()
    assert [a.resolved_at is None for a in found] == [False, True]


def test_drift_and_cause_rules_read_the_columns_others_fill(world: World) -> None:
    world.rule(name="drifted", kind="drift")
    world.rule(name="bad login", kind="cause", cause="auth_failed")
    first, second, _ = world.hosts
    world.set_host(first, last_reachable=True, drift=[
        {"field": "smarthost.host", "want": "relay.x", "have": "relay.y"}])
    world.set_host(second, last_reachable=True, drift=[], causes=[
        {"cause": "auth_failed", "count": 2, "sample": "535 5.7.8 Authentication failed"}])
    world.tick()
    found, _ = world.rows()
    assert sorted(a.host_id for a in found) == [first, second]
    world.set_host(first, drift=[])
    world.set_host(second, causes=[])
    world.tick()
    found, notices = world.rows()
    assert all(a.resolved_at is not None for a in found)
    assert len(notices) == 2 * 2 * 2  # two alerts, two channels, firing and resolved


def test_scope_narrows_and_a_deleted_host_or_disabled_rule_resolves(world: World) -> None:
    rule = world.rule(name="pbx queues", kind="queue_count", threshold=0,
                      scope={"tags": ["pbx"], "sites": ["Leeds"]})
    for host_id in world.hosts:
        world.set_host(host_id, last_reachable=True, queue_count=5)
    world.tick()
    found, _ = world.rows()
    assert sorted(a.host_id for a in found) == world.hosts[:2]  # the third has no tag
    world.c.ok("DELETE", f"/v1/hosts/{world.hosts[0]}")
    world.tick()
    found, _ = world.rows()
    assert [(a.host_id, a.resolved_at is None) for a in found] == [
        (world.hosts[0], False), (world.hosts[1], True)]
    world.c.ok("PATCH", f"/v1/alert-rules/{rule['id']}", {"enabled": False})
    world.tick()
    found, _ = world.rows()
    assert all(a.resolved_at is not None for a in found)


def test_a_lost_notice_is_queued_again_once(world: World) -> None:
    world.rule(name="queue", kind="queue_count", threshold=0)
    world.set_host(world.hosts[0], last_reachable=True, queue_count=1)
    world.tick()
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=alerts.LOST_NOTICE_S + 5)
    world.tick(later)
    world.tick(later)
    _, notices = world.rows()
    assert [n.last_error for n in notices] == [alerts.REQUEUED] * 2


def test_a_resolved_notice_goes_where_the_firing_one_went(world: World) -> None:
    rule = world.rule(name="queue", kind="queue_count", threshold=0)
    world.set_host(world.hosts[0], last_reachable=True, queue_count=1)
    world.tick()
    world.c.ok("PATCH", f"/v1/alert-rules/{rule['id']}", {"channels": ["noc"]})
    world.set_host(world.hosts[0], queue_count=0)
    world.tick()
    _, notices = world.rows()
    hook, noc = (c["id"] for c in world.channels)
    assert sorted((n.channel_id, n.event) for n in notices) == sorted(
        [(hook, "firing"), (noc, "firing"), (hook, "resolved"), (noc, "resolved")])


def test_a_pending_notice_whose_message_was_lost_is_queued_again(world: World) -> None:
    world.rule(name="queue", kind="queue_count", threshold=0)
    world.set_host(world.hosts[0], last_reachable=True, queue_count=1)
    world.tick()
    start = dt.datetime.now(dt.UTC).replace(microsecond=0)
    _, (hook, mail) = world.rows()
    lost = start - dt.timedelta(seconds=alerts.LOST_NOTICE_S + 700)
    with world.c.app.app_context(), db.transaction() as session:
        # hook: tried once, its retry never published; mail: tried once, its retry due soon
        session.execute(update(AlertNotice).where(AlertNotice.id == hook.id).values(
            attempts=1, last_error="attempt 1 failed (HTTP 503)", touched_at=lost))
        session.execute(update(AlertNotice).where(AlertNotice.id == mail.id).values(
            attempts=1, last_error="attempt 1 failed (refused)", touched_at=start))
    world.tick(start)
    _, (hook, mail) = world.rows()
    assert hook.touched_at is not None and hook.touched_at >= start - dt.timedelta(seconds=1)
    assert hook.last_error == "attempt 1 failed (HTTP 503)"  # the reason stays
    assert mail.touched_at == start  # untouched: its retry is still to come
    # a worker that died while sending leaves its claim: taken as lost past LOST_NOTICE_S
    with world.c.app.app_context(), db.transaction() as session:
        session.execute(update(AlertNotice).where(AlertNotice.id == mail.id).values(
            claimed_at=lost, touched_at=lost))
    world.tick(start)
    _, (_, mail) = world.rows()
    assert mail.claimed_at is None and mail.touched_at == start


# -- delivery --------------------------------------------------------------------------------

def test_delivery_is_noted_retried_and_given_up(world: World,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    world.rule(name="queue", kind="queue_count", threshold=0)
    world.set_host(world.hosts[0], last_reachable=True, queue_count=3)
    world.tick()
    _, (hook, mail) = world.rows()
    sent: list[tuple[notify.Destination, notify.Notice]] = []
    outcomes = iter([(False, "HTTP 503"), (True, "HTTP 204")])

    def fake_send(settings: Any, where: notify.Destination,
                  notice: notify.Notice) -> tuple[bool, str]:
        sent.append((where, notice))
        return next(outcomes) if where.kind == "webhook" else (False, "refused")

    monkeypatch.setattr(notify, "send", fake_send)
    app = world.c.app
    database, settings = app.extensions["relayfleet_db"], app.config["RELAYFLEET_SETTINGS"]
    with app.app_context():
        assert alerts.deliver(database, settings, hook.id, attempt=1) is False
        assert alerts.deliver(database, settings, hook.id, attempt=2) is True
        assert alerts.deliver(database, settings, hook.id, attempt=3) is True  # already sent
        for attempt in range(1, alerts.NOTICE_RETRIES + 2):
            alerts.deliver(database, settings, mail.id, attempt=attempt)
    assert len(sent) == 2 + alerts.NOTICE_RETRIES + 1
    where, notice = sent[0]
    assert where.target == "https://hooks.msp.example/relayfleet" and where.key
    assert notice.subject == "[relayfleet] FIRING: queue — pbx0"
    assert notice.document["host"]["name"] == "pbx0"
    assert notice.document["tenant"] == {"id": world.tenant, "name": "Acme"}
    _, (hook, mail) = world.rows()
    assert (hook.state, hook.attempts, hook.last_error) == ("sent", 2, None)
    assert mail.state == "failed" and mail.attempts == alerts.NOTICE_RETRIES + 1
    assert mail.last_error == f"gave up after {alerts.NOTICE_RETRIES + 1} attempts (last: refused)"


def _deliver(world: World, notice_id: int, attempt: int = 1) -> bool:
    app = world.c.app
    with app.app_context():
        return alerts.deliver(app.extensions["relayfleet_db"],
                              app.config["RELAYFLEET_SETTINGS"], notice_id, attempt=attempt)


def test_a_notice_is_claimed_before_it_is_sent_so_a_duplicate_sends_nothing(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    world.rule(name="queue", kind="queue_count", threshold=0)
    world.set_host(world.hosts[0], last_reachable=True, queue_count=3)
    world.tick()
    _, (hook, _) = world.rows()
    sent: list[str] = []
    duplicate: list[bool] = []

    def slow_send(settings: Any, where: notify.Destination,
                  notice: notify.Notice) -> tuple[bool, str]:
        sent.append(where.kind)
        if len(sent) == 1:  # a second message for the notice arrives while this one sends
            duplicate.append(_deliver(world, hook.id))
        return True, "HTTP 204"

    monkeypatch.setattr(notify, "send", slow_send)
    assert _deliver(world, hook.id) is True
    assert sent == ["webhook"] and duplicate == [True]
    _, (hook, _) = world.rows()
    assert (hook.state, hook.attempts, hook.claimed_at) == ("sent", 1, None)


def test_a_failure_outside_the_send_is_noted_and_retried(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    world.rule(name="queue", kind="queue_count", threshold=0)
    world.set_host(world.hosts[0], last_reachable=True, queue_count=3)
    world.tick()
    _, (hook, _) = world.rows()

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("a secret-bearing detail https://hooks.example/key")

    monkeypatch.setattr(alerts, "destination", broken)
    assert _deliver(world, hook.id) is False  # Celery retries it
    _, (hook, _) = world.rows()
    assert (hook.state, hook.attempts, hook.claimed_at) == ("pending", 1, None)
    assert hook.last_error == f"attempt 1 failed ({alerts.INTERNAL_FAILURE})"
    monkeypatch.undo()
    monkeypatch.setattr(notify, "send", lambda *args: (True, "HTTP 204"))
    assert _deliver(world, hook.id, attempt=2) is True
    _, (hook, _) = world.rows()
    assert (hook.state, hook.attempts) == ("sent", 2)


def test_a_resolved_notice_says_how_long_it_lasted(world: World) -> None:
    world.rule(name="queue", kind="queue_count", threshold=0)
    world.set_host(world.hosts[0], last_reachable=True, queue_count=3)
    start = dt.datetime.now(dt.UTC)
    world.tick(start)
    world.set_host(world.hosts[0], queue_count=0)
    world.tick(start + dt.timedelta(minutes=12, seconds=5))
    with world.c.app.app_context(), db.transaction() as session:
        alert = session.scalars(select(Alert)).one()
        from controller.models import AlertRule, Tenant

        rule = session.get(AlertRule, alert.rule_id)
        host = session.get(Host, alert.host_id)
        assert rule is not None and host is not None
        notice = alerts.compose("resolved", alert, rule, host, site="Leeds",
                                tenant=session.get(Tenant, world.tenant), now=start)
    assert notice.subject == "[relayfleet] RESOLVED: queue — pbx0"
    assert "lasted 12m 5s" in notice.text
    assert notice.document["alert"]["lasted_s"] == 725


# -- the API's rules -------------------------------------------------------------------------

def test_channel_secrets_are_shown_once_and_targets_never(world: World) -> None:
    hook = world.channels[0]
    assert len(hook["secret"]) >= 32
    assert "secret" not in world.channels[1]
    again = world.c.ok("GET", f"/v1/alert-channels/{hook['id']}")
    assert "secret" not in again and "url" not in again
    assert again["target_hint"] == "https://hooks.msp.example/…"
    listed = world.c.ok("GET", "/v1/alert-channels")
    assert "hooks.msp.example/relayfleet" not in str(listed)


def test_channels_and_rules_belong_to_a_tenant(world: World) -> None:
    other = world.c.tenant("Globex")
    admin = world.c.issue("admin", tenant_id=other)
    viewer = world.c.issue("viewer", tenant_id=world.tenant)
    hook = world.channels[0]["id"]
    assert world.c.get(f"/v1/alert-channels/{hook}", token=admin).status == 404
    assert world.c.get("/v1/alert-channels", token=admin).json["total"] == 0
    assert world.c.get(f"/v1/alert-channels/{hook}", token=viewer).status == 200
    made = world.c.post("/v1/alert-channels", {"name": "x", "kind": "email",
                                               "address": "a@b.example"}, token=viewer)
    assert made.status == 403
    # another tenant's channel is not one a rule may use
    refused = world.c.post("/v1/alert-rules", {"name": "r", "kind": "drift",
                                               "channels": ["hook"]}, token=admin)
    assert refused.status == 422 and "channels.0" in str(refused.json)
    assert world.c.call("DELETE", f"/v1/alert-channels/{hook}", token=admin).status == 404


@pytest.mark.parametrize(("body", "field"), [
    ({"kind": "webhook", "address": "a@b.example"}, "url"),
    ({"kind": "email", "url": "https://x.example/"}, "address"),
    ({"kind": "email", "address": "not an address"}, "address"),
    ({"kind": "slack", "url": "ftp://x.example/"}, "url"),
    ({"kind": "webhook", "url": "http://user:pw@x.example/"}, "url"),
    ({"kind": "pager", "url": "https://x.example/"}, "kind"),
])
def test_bad_channels_are_refused_by_field(world: World, body: dict[str, Any],
                                           field: str) -> None:
    answer = world.c.post("/v1/alert-channels", {"name": "bad", **body})
    assert answer.status == 422, answer
    assert field in str(answer.json)


def test_rule_names_are_unique_and_kinds_checked(world: World) -> None:
    world.rule(name="drifted", kind="drift")
    assert world.c.post("/v1/alert-rules", {"tenant_id": world.tenant, "name": "drifted",
                                            "kind": "drift", "channels": ["hook"]}).status == 409
    answer = world.c.post("/v1/alert-rules", {"tenant_id": world.tenant, "name": "q",
                                              "kind": "queue_count", "channels": ["hook"]})
    assert answer.status == 422 and "threshold" in str(answer.json)
    answer = world.c.post("/v1/alert-rules", {"tenant_id": world.tenant, "name": "q",
                                              "kind": "drift", "channels": ["nope"]})
    assert answer.status == 422 and "no tenant" in str(answer.json)
    listed = world.c.ok("GET", "/v1/alert-rules")
    assert [(r["name"], [c["name"] for c in r["channels"]], r["firing"])
            for r in listed["items"]] == [("drifted", ["hook", "noc"], 0)]


def test_alerts_list_filters_by_state_rule_and_host(world: World) -> None:
    world.rule(name="queue", kind="queue_count", threshold=0)
    world.set_host(world.hosts[0], last_reachable=True, queue_count=1)
    world.set_host(world.hosts[1], last_reachable=True, queue_count=1)
    world.tick()
    world.set_host(world.hosts[1], queue_count=0)
    world.tick()
    firing = world.c.ok("GET", "/v1/alerts?state=firing")
    assert [(a["host"], a["state"], a["site"]) for a in firing["items"]] == [
        ("pbx0", "firing", "Leeds")]
    assert {n["channel"] for n in firing["items"][0]["notices"]} == {"hook", "noc"}
    assert world.c.ok("GET", "/v1/alerts?state=resolved&host=pbx1")["total"] == 1
    assert world.c.ok("GET", "/v1/alerts?rule=queue")["total"] == 2
    assert world.c.ok("GET", "/v1/alerts?rule=other")["total"] == 0
    other = world.c.issue("viewer", tenant_id=world.c.tenant("Globex"))
    assert world.c.ok("GET", "/v1/alerts", token=other)["total"] == 0


def test_a_tenant_sees_the_alerts_of_its_own_rules_only(world: World) -> None:
    world.c.ok("POST", "/v1/alert-channels", {"name": "msp noc", "kind": "email",
                                              "address": "noc@msp.example"})
    world.c.ok("POST", "/v1/alert-rules", {"name": "msp queues", "kind": "queue_count",
                                           "threshold": 0, "channels": ["msp noc"]})
    world.rule(name="acme queues", kind="queue_count", threshold=0)
    world.set_host(world.hosts[0], last_reachable=True, queue_count=1)
    world.tick()
    assert world.c.ok("GET", "/v1/alerts")["total"] == 2
    viewer = world.c.issue("viewer", tenant_id=world.tenant)
    mine = world.c.ok("GET", "/v1/alerts", token=viewer)
    assert [a["rule"] for a in mine["items"]] == ["acme queues"]
    assert world.c.ok("GET", "/v1/alerts?rule=msp%20queues", token=viewer)["total"] == 0
    html = _browser(world, viewer).get("/ui/alerts").get_data(as_text=True)
    assert "acme queues" in html and "msp queues" not in html and "msp noc" not in html


# -- the console -----------------------------------------------------------------------------

def _browser(world: World, token: str | None = None) -> Any:
    client = world.c.app.test_client()
    answer = client.post("/ui/login", data={"token": token or world.c.admin},
                         headers={"Origin": "http://localhost"})
    assert answer.status_code == 303, answer.get_data(as_text=True)[:500]
    return client


def test_the_console_page_shows_alerts_rules_and_channels(world: World) -> None:
    world.rule(name="queue over 2", kind="queue_count", threshold=2)
    world.set_host(world.hosts[0], last_reachable=True, queue_count=9)
    world.tick()
    viewer = world.c.issue("viewer", tenant_id=world.tenant)
    html = _browser(world, viewer).get("/ui/alerts").get_data(as_text=True)
    assert "the queue holds 9 messages" in html
    assert "more than 2 messages queued" in html
    assert "https://hooks.msp.example/…" in html
    assert "hooks.msp.example/relayfleet" not in html
    assert "Send a test notice" not in html  # admins only
    other = world.c.issue("viewer", tenant_id=world.c.tenant("Globex"))
    assert "pbx0" not in _browser(world, other).get("/ui/alerts").get_data(as_text=True)


def test_the_console_lists_the_last_resolved_first_and_removed_hosts_unlinked(
        world: World) -> None:
    world.rule(name="queue", kind="queue_count", threshold=0)
    first, second, _ = world.hosts
    start = dt.datetime.now(dt.UTC)
    world.set_host(first, last_reachable=True, queue_count=1)
    world.tick(start)  # pbx0 fires first
    world.set_host(second, last_reachable=True, queue_count=1)
    world.tick(start + dt.timedelta(minutes=1))
    world.set_host(second, queue_count=0)
    world.tick(start + dt.timedelta(minutes=2))  # pbx1 resolves first
    world.c.ok("DELETE", f"/v1/hosts/{first}")
    world.tick(start + dt.timedelta(minutes=3))  # pbx0 resolves last: its host removed
    html = _browser(world).get("/ui/alerts").get_data(as_text=True)
    resolved = html[html.index('id="resolved"'):html.index('id="rules"')]
    assert resolved.index("pbx0") < resolved.index("pbx1")
    assert f"/ui/hosts/{first}" not in resolved and "pbx0 (removed)" in resolved
    assert f"/ui/hosts/{second}" in resolved
    listed = world.c.ok("GET", "/v1/alerts?state=resolved")["items"]
    assert [(a["host"], a["host_deleted"]) for a in listed] == [("pbx0", True),
                                                                ("pbx1", False)]


def test_an_admin_switches_a_rule_off_from_the_console(world: World) -> None:
    rule = world.rule(name="drifted", kind="drift")
    client = _browser(world)
    html = client.get("/ui/alerts").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert token is not None
    answer = client.post(f"/ui/alerts/rules/{rule['id']}/toggle",
                         data={"csrf_token": token.group(1)},
                         headers={"Origin": "http://localhost"})
    assert answer.status_code == 303
    assert world.c.ok("GET", f"/v1/alert-rules/{rule['id']}")["enabled"] is False


@pytest.mark.parametrize("url", ["http://[::1", "http://x.example:70000/", "https://"])
def test_malformed_urls_are_422_not_500(world: World, url: str) -> None:
    answer = world.c.post("/v1/alert-channels", {"name": "bad", "kind": "webhook", "url": url})
    assert answer.status == 422, answer


def test_huge_ids_in_filters_match_nothing(world: World) -> None:
    assert world.c.ok("GET", "/v1/alerts?rule=" + "9" * 40 + "&host=" + "9" * 60)["total"] == 0


# -- the CLI ---------------------------------------------------------------------------------

def test_the_cli_adds_channels_and_rules_and_lists_alerts(
        world: World, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.unit.test_cli_inventory import run

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    slack = "https://hooks.slack.example/services/T0/B0/XYZ"
    made = run(world.c, None, "alerts", "channels", "add", "chat", "--kind", "slack",
               "--url-file", "-", "--tenant", "Acme", stdin=slack + "\n")
    assert made.code == 0, made.err
    listed = run(world.c, None, "alerts", "channels", "list")
    assert "https://hooks.slack.example/…" in listed.out and "XYZ" not in listed.out
    hook = run(world.c, None, "alerts", "channels", "add", "hook2", "--kind", "webhook",
               "--url", "https://hooks.msp.example/two", "--tenant", "Acme")
    assert hook.code == 0 and len(hook.out.strip().splitlines()[-1]) >= 32  # the secret
    added = run(world.c, None, "alerts", "rules", "add", "queue over 5", "--kind",
                "queue_count", "--threshold", "5", "--channel", "chat", "--tenant", "Acme",
                "--tag", "pbx")
    assert added.code == 0, added.err
    assert "queue > 5 messages -> chat" in added.out
    world.set_host(world.hosts[0], last_reachable=True, queue_count=6)
    world.tick()
    firing = run(world.c, None, "alerts", "list", "--firing")
    assert firing.code == 1 and "queue over 5" in firing.out and "pbx0" in firing.out
    rules = run(world.c, None, "alerts", "rules", "list", "--json").json()
    assert [(r["name"], r["firing"]) for r in rules["items"]] == [("queue over 5", 1)]
    refused = run(world.c, None, "alerts", "rules", "add", "x", "--kind", "drift",
                  "--channel", "nope")
    assert refused.code == 3 and "channels.0" in refused.err
    assert run(world.c, None, "alerts", "rules", "remove", "queue over 5").code == 0
    assert run(world.c, None, "alerts", "list", "--firing").code == 0
    assert run(world.c, None, "alerts", "channels", "remove", "chat").code == 0
