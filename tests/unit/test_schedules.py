"""Beat's pure logic: cron expressions, time zones and DST, status collection slots."""

from __future__ import annotations

import datetime as dt
import itertools
import re
from collections import Counter
from typing import Any

import pytest
from sqlalchemy import select as sa_select

from controller import schedules as sch
from controller.db import db
from controller.models import Schedule
from shared.errors import ValidationError
from tests.controller_client import Controller

PARIS = sch.zone("Europe/Paris")
UTC = dt.UTC


def _local(runs: list[dt.datetime], tz: dt.tzinfo = PARIS) -> list[str]:
    return [at.astimezone(tz).isoformat() for at in runs]


def test_fields_names_ranges_steps_and_lists() -> None:
    cron = sch.parse_cron("*/15 9-17/4 1,15 JAN-mar mon-fri")
    assert cron.minutes == (0, 15, 30, 45)
    assert cron.hours == (9, 13, 17)
    assert cron.days == {1, 15} and cron.months == {1, 2, 3}
    assert cron.weekdays == {1, 2, 3, 4, 5}
    assert sch.parse_cron("0 0 * * 7").weekdays == {0}  # 7 is Sunday too
    assert sch.parse_cron("5/20 * * * *").minutes == (5, 25, 45)
    daily = sch.parse_cron("@daily")
    assert (daily.minutes, daily.hours, daily.text) == ((0,), (0,), "@daily")


@pytest.mark.parametrize(("text", "says"), [
    ("* * * *", "5 fields"), ("60 * * * *", "minute: 60 is out of range 0-59"),
    ("0 24 * * *", "hour: 24"), ("0 0 0 * *", "day of month: 0"),
    ("0 0 * 13 *", "month: 13"), ("0 0 * * 8", "day of week: 8"),
    ("5-1 * * * *", "runs backwards"), ("*/0 * * * *", "step 0"),
    ("0 0 * * funday", "not a number or a name"), ("0 0 30 2 *", "never runs"),
    ("0 0 ? * *", "cannot read"), ("@often", "5 fields")])
def test_what_it_cannot_read_is_refused_with_the_reason(text: str, says: str) -> None:
    with pytest.raises(sch.CronError, match=says):
        sch.parse_cron(text)


def test_both_day_fields_restricted_match_either() -> None:
    cron = sch.parse_cron("0 12 13 * fri")  # the 13th, and every Friday
    runs = sch.next_runs(cron, sch.zone("UTC"), dt.datetime(2026, 2, 1, tzinfo=UTC), 4)
    assert [at.date().isoformat() for at in runs] == [
        "2026-02-06", "2026-02-13", "2026-02-20", "2026-02-27"]
    only_day = sch.parse_cron("0 12 13 * *")
    assert sch.next_run(only_day, sch.zone("UTC"),
                        dt.datetime(2026, 2, 14, tzinfo=UTC)) == dt.datetime(
        2026, 3, 13, 12, tzinfo=UTC)


def test_a_zone_shifts_the_utc_time() -> None:
    cron = sch.parse_cron("0 9 * * mon-fri")
    new_york = sch.zone("America/New_York")
    at = sch.next_run(cron, new_york, dt.datetime(2026, 7, 3, 14, tzinfo=UTC))  # a Friday
    assert at == dt.datetime(2026, 7, 6, 13, tzinfo=UTC)  # Monday 09:00 EDT


def test_daily_0230_in_paris_runs_once_on_both_dst_days() -> None:
    cron = sch.parse_cron("30 2 * * *")
    spring = sch.next_runs(cron, PARIS, dt.datetime(2026, 3, 27, 12, tzinfo=UTC), 3)
    # 29 March 2026: 02:00 -> 03:00; the 02:30 that does not exist runs at 03:30 CEST
    assert _local(spring) == ["2026-03-28T02:30:00+01:00", "2026-03-29T03:30:00+02:00",
                              "2026-03-30T02:30:00+02:00"]
    autumn = sch.next_runs(cron, PARIS, dt.datetime(2026, 10, 24, 12, tzinfo=UTC), 3)
    # 25 October 2026: 03:00 -> 02:00; 02:30 happens twice and runs at the first only
    assert _local(autumn) == ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00",
                              "2026-10-27T02:30:00+01:00"]


def test_every_hour_runs_each_real_hour_across_dst() -> None:
    cron = sch.parse_cron("30 * * * *")
    autumn = sch.next_runs(cron, PARIS, dt.datetime(2026, 10, 24, 23, tzinfo=UTC), 4)
    assert _local(autumn) == ["2026-10-25T01:30:00+02:00", "2026-10-25T02:30:00+02:00",
                              "2026-10-25T02:30:00+01:00", "2026-10-25T03:30:00+01:00"]
    spring = sch.next_runs(cron, PARIS, dt.datetime(2026, 3, 28, 23, tzinfo=UTC), 3)
    assert _local(spring) == ["2026-03-29T00:30:00+01:00", "2026-03-29T01:30:00+01:00",
                              "2026-03-29T03:30:00+02:00"]
    assert len({at for at in spring}) == 3


@pytest.mark.parametrize("name", ["Europe/Pariss", "", "../etc/passwd", "/etc/localtime",
                                  "UTC "])
def test_unknown_zones_are_refused(name: str) -> None:
    with pytest.raises(ValidationError, match="IANA time zone"):
        sch.zone(name)


def test_check_cron_names_the_field() -> None:
    with pytest.raises(ValidationError) as caught:
        sch.check_cron("61 * * * *", "UTC")
    assert list(caught.value.errors) == ["cron"]
    with pytest.raises(ValidationError) as caught:
        sch.check_cron("0 * * * *", "Mars/Olympus")
    assert list(caught.value.errors) == ["timezone"]


def test_slots_spread_10000_hosts_evenly_over_the_interval() -> None:
    every, tick = 600, 30
    per_tick = Counter(sch.slot(host_id, every) // tick for host_id in range(1, 10_001))
    assert len(per_tick) == every // tick
    # 500 hosts per tick on average: no tick takes more than 10 % above it
    assert max(per_tick.values()) <= 550 and min(per_tick.values()) >= 450


def test_consecutive_windows_collect_every_host_exactly_once_per_interval() -> None:
    hosts = list(range(1, 2001))
    every, start = 600, 1_764_000_017.25
    seen: Counter[int] = Counter()
    edges = [start + step * 29.5 for step in range(0, 20)]  # ticks of uneven length
    edges.append(start + every)
    for left, right in itertools.pairwise(edges):
        seen.update(sch.due(hosts, every, left, right))
    assert set(seen) == set(hosts) and set(seen.values()) == {1}


def test_a_window_as_long_as_the_interval_collects_everyone_once() -> None:
    hosts = [3, 5, 8]
    assert sch.due(hosts, 60, 100.0, 160.0) == hosts
    assert sch.due(hosts, 60, 100.0, 1000.0) == hosts
    assert sch.due(hosts, 60, 100.0, 100.0) == []
    assert sch.due(hosts, 0, 100.0, 200.0) == []


def test_a_window_is_found_modulo_the_interval() -> None:
    every = 100
    host = next(h for h in range(1, 1000) if sch.slot(h, every) == 95)
    assert sch.due([host], every, 1090.0, 1110.0) == [host]  # wraps past 1100
    assert sch.due([host], every, 1096.0, 1110.0) == []
    assert sch.due([host], every, 1195.0, 1196.0) == [host]


# -- the API and the console over a real app (SQLite, the in-memory broker) ---------------

def _schedule(target: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {"name": "nightly flush", "action": "flush_queue", "target": target,
            "cron": "30 2 * * *", "timezone": "Europe/Paris", **changes}


def test_the_api_checks_a_schedule_as_a_job_and_scopes_it_by_tenant(
        memory_controller: Controller) -> None:
    c = memory_controller
    acme, globex = c.tenant("Acme"), c.tenant("Globex")
    pbx = c.host(c.site(acme, "Lyon"), "pbx1")["id"]
    c.host(c.site(globex, "Paris"), "gx1")
    acme_ops, globex_ops = c.issue("operator", acme), c.issue("operator", globex)
    refused = {
        "cron": _schedule({"hosts": [pbx]}, cron="30 2 * *"),
        "timezone": _schedule({"hosts": [pbx]}, timezone="Europe/Pariss"),
        "target.hosts": _schedule({"hosts": [pbx + 100]}),
        "params.host": _schedule({"hosts": [pbx]}, action="set_smarthost",
                                 params={"host": "bad host"}),
    }
    for field, body in refused.items():
        answer = c.call("POST", "/v1/schedules", acme_ops, body)
        assert answer.status == 422 and field in answer.json["errors"], (field, answer)
    # another tenant's host does not exist for this token
    assert c.call("POST", "/v1/schedules", globex_ops,
                  _schedule({"hosts": [pbx]})).status == 422
    assert c.call("POST", "/v1/schedules", c.issue("viewer", acme),
                  _schedule({"hosts": [pbx]})).status == 403
    made = c.ok("POST", "/v1/schedules", _schedule(
        {"hosts": [pbx]}, action="set_smarthost",
        params={"host": "relay.example.net", "auth": {"username": "pbx",
                                                      "password": "s3cret-pw"}}),
        token=acme_ops, expect=201)
    assert "s3cret-pw" not in str(made) and made["params"]["auth"] == {"username": "pbx"}
    assert [run["local"][11:16] for run in made["next_runs"]] == ["02:30"] * 5
    assert c.call("POST", "/v1/schedules", acme_ops, _schedule({"hosts": [pbx]})).status == 409
    assert c.call("GET", f"/v1/schedules/{made['id']}", globex_ops).status == 404
    assert c.ok("GET", "/v1/schedules", token=globex_ops)["total"] == 0
    changed = c.ok("PATCH", f"/v1/schedules/{made['id']}", {"cron": "@hourly"}, token=acme_ops)
    assert changed["cron"] == "@hourly" and changed["params"]["auth"] == {"username": "pbx"}
    # the sealed password survived the change: the job it starts has it
    with c.app.app_context():
        row = db.session.get(Schedule, made["id"])
        assert row is not None
        doc = sch.job_document(row, c.app.extensions["relayfleet_secrets"])
    assert doc["params"]["auth"]["password"] == "s3cret-pw"


def test_status_collection_is_an_admins_setting_with_a_floor(
        memory_controller: Controller) -> None:
    c = memory_controller
    acme, globex = c.tenant("Acme"), c.tenant("Globex")
    path = f"/v1/tenants/{acme}/status-collection"
    assert c.ok("GET", path)["every_s"] == 600
    assert c.call("PUT", path, c.issue("operator", acme), {"every_s": 300}).status == 403
    assert c.call("PUT", path, body={"every_s": 59}).status == 422
    assert c.call("GET", path, c.issue("admin", globex)).status == 404
    assert c.ok("PUT", path, {"every_s": 0})["enabled"] is False
    assert c.ok("PUT", path, {"every_s": 60})["every_s"] == 60


def test_the_console_lists_schedules_and_an_operator_disables_one(
        memory_controller: Controller) -> None:
    c = memory_controller
    acme = c.tenant("Acme")
    pbx = c.host(c.site(acme, "Lyon"), "pbx1")["id"]
    made = c.ok("POST", "/v1/schedules", _schedule({"hosts": [pbx]}), expect=201)
    browser = c.app.test_client()
    assert browser.post("/ui/login", data={"token": c.admin},
                        headers={"Origin": "http://localhost"}).status_code == 303
    html = browser.get("/ui/schedules").get_data(as_text=True)
    assert "nightly flush" in html and "Europe/Paris" in html and "02:30" in html
    assert "Acme" in html and "600 s" in html
    token = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert token is not None
    answer = browser.post("/ui/schedules/change", data={
        "csrf_token": token[1], "schedule_id": str(made["id"]), "what": "disable"},
        headers={"Origin": "http://localhost"})
    assert answer.status_code == 303
    doc = c.ok("GET", f"/v1/schedules/{made['id']}")
    assert doc["enabled"] is False and doc["next_run_at"] is None
    assert "Enable nightly flush" in browser.get("/ui/schedules").get_data(as_text=True)


def test_the_cli_adds_shows_disables_and_removes_schedules(
        memory_controller: Controller) -> None:
    from tests.unit.test_cli_inventory import run

    c = memory_controller
    acme = c.tenant("Acme")
    c.host(c.site(acme, "Lyon"), "pbx1", tags=["pbx"])
    added = run(c, None, "schedules", "add", "weekday-status", "--action", "collect_status",
                "--tag", "pbx", "--cron", "0 8 * * mon-fri", "--timezone", "Europe/Paris")
    assert added.code == 0, added.err
    assert "added schedule weekday-status" in added.out and "+01:00" in added.out
    bad = run(c, None, "schedules", "add", "bad", "--action", "collect_status", "--all",
              "--cron", "0 25 * * *")
    assert bad.code != 0 and "hour: 25 is out of range 0-23" in bad.err
    listed = run(c, None, "schedules", "list")
    assert "weekday-status" in listed.out and "0 8 * * mon-fri" in listed.out
    shown = run(c, None, "--json", "schedules", "show", "weekday-status").json()
    assert shown["target"] == {"tags": ["pbx"]} and len(shown["next_runs"]) == 5
    assert run(c, None, "schedules", "disable", "weekday-status").code == 0
    assert c.ok("GET", f"/v1/schedules/{shown['id']}")["enabled"] is False
    enabled = run(c, None, "schedules", "enable", str(shown["id"]))
    assert enabled.code == 0 and "next run" in enabled.out
    assert run(c, None, "schedules", "remove", "weekday-status").code == 0
    assert c.ok("GET", "/v1/schedules")["total"] == 0
    assert "every 600 s" in run(c, None, "status-collection", "show", "Acme").out
    assert run(c, None, "status-collection", "set", "Acme", "0").out.startswith(
        "tenant Acme: status collection is off")


def test_a_schedule_whose_hosts_are_gone_can_still_be_stopped(
        memory_controller: Controller) -> None:
    c = memory_controller
    pbx = c.host(c.site(c.tenant("Acme"), "Lyon"), "pbx1")["id"]
    made = c.ok("POST", "/v1/schedules", _schedule({"hosts": [pbx]}), expect=201)
    c.ok("DELETE", f"/v1/hosts/{pbx}", expect=204)
    answer = c.call("PATCH", f"/v1/schedules/{made['id']}", body={"enabled": True})
    assert answer.status == 422 and "target.hosts" in answer.json["errors"]
    stopped = c.ok("PATCH", f"/v1/schedules/{made['id']}", {"enabled": False,
                                                             "name": "old flush"})
    assert stopped["enabled"] is False and stopped["name"] == "old flush"


def test_a_tick_collects_the_due_hosts_once_and_skips_those_still_being_collected(
        memory_controller: Controller) -> None:
    from controller.crypto import SecretBox
    from controller.lanes import app_database, app_settings
    from controller.models import Job

    c = memory_controller
    acme = c.tenant("Acme")
    site = c.site(acme, "Lyon")
    ids = [c.host(site, f"pbx{n}")["id"] for n in range(6)]
    c.ok("PUT", f"/v1/tenants/{acme}/status-collection", {"every_s": 60})

    def tick(now: float) -> list[Job]:
        with c.app.app_context():
            settings = app_settings()
            box = SecretBox(settings.secret_key, settings.old_secret_keys)
            started = sch.collect_statuses(app_database(), settings, box, now=now)
            return [job for job in (db.session.get(Job, i) for i in started) if job]

    start = 1_800_000_000.0
    first = tick(start)  # a new mark: the window is one tick long
    assert all(job.total < len(ids) for job in first)
    for job in first:
        c.ok("POST", f"/v1/jobs/{job.id}/cancel")
    (whole,) = tick(start + 61)  # beat was down longer than the interval: everyone once
    assert (whole.total, whole.origin, whole.token_id, whole.tenant_id) == (
        len(ids), "schedule", None, acme)
    # those hosts are still queued (no worker here): the next windows skip them
    assert tick(start + 200) == []
    c.ok("POST", f"/v1/jobs/{whole.id}/cancel")
    (again,) = tick(start + 300)
    assert again.total == len(ids)
    assert tick(start + 300) == []  # the same instant again: an empty window


# -- review fixes ---------------------------------------------------------------------------

def _beat(c: Controller) -> tuple[Any, Any, Any]:
    from controller.crypto import SecretBox
    from controller.lanes import app_database, app_settings

    settings = app_settings()
    return app_database(), settings, SecretBox(settings.secret_key, settings.old_secret_keys)


def test_a_tenants_schedule_changed_by_an_msp_token_still_runs_in_that_tenant_only(
        memory_controller: Controller) -> None:
    from controller.auth import Principal
    from controller.models import Job

    c = memory_controller
    acme, globex = c.tenant("Acme"), c.tenant("Globex")
    c.host(c.site(acme, "Lyon"), "pbx1")
    gx1 = c.host(c.site(globex, "Paris"), "gx1")["id"]
    made = c.ok("POST", "/v1/schedules", _schedule({"all": True}),
                token=c.issue("operator", acme), expect=201)
    assert made["tenant_id"] == acme
    # the MSP-wide admin (c.admin) changes it: it now runs as that token, within Acme
    c.ok("PATCH", f"/v1/schedules/{made['id']}", {"cron": "@hourly"})
    refused = c.call("PATCH", f"/v1/schedules/{made['id']}", body={"target": {"hosts": [gx1]}})
    assert refused.status == 422 and "target.hosts" in refused.json["errors"]
    with c.app.app_context():
        database, settings, box = _beat(c)
        later = sch.utcnow() + dt.timedelta(hours=2)
        (job_id,) = sch.run_due_schedules(database, settings, box, now=later)
        job = db.session.get(Job, job_id)
        assert job is not None and (job.total, job.tenant_id) == (1, acme)
    msp = Principal(1, "msp", "operator", None)
    assert sch.acting_for(msp, acme) == Principal(1, "msp", "operator", acme)
    assert sch.acting_for(Principal(2, "gx", "operator", globex), acme) is None
    assert sch.acting_for(msp, None) == msp


def test_a_token_of_another_tenant_disables_the_schedule_at_run_time(
        memory_controller: Controller) -> None:
    from controller.models import Token

    c = memory_controller
    acme, globex = c.tenant("Acme"), c.tenant("Globex")
    c.host(c.site(acme, "Lyon"), "pbx1")
    made = c.ok("POST", "/v1/schedules", _schedule({"all": True}),
                token=c.issue("operator", acme), expect=201)
    c.issue("operator", globex)
    with c.app.app_context():
        other = db.session.scalars(sa_select(Token).where(Token.tenant_id == globex)).one()
        row = db.session.get(Schedule, made["id"])
        assert row is not None
        row.token_id = other.id
        db.session.commit()
        database, settings, box = _beat(c)
        later = sch.utcnow() + dt.timedelta(days=2)
        assert sch.run_due_schedules(database, settings, box, now=later) == []
    doc = c.ok("GET", f"/v1/schedules/{made['id']}")
    assert doc["enabled"] is False and "another tenant" in doc["last_error"]


def test_a_schedule_is_refused_when_made_for_what_every_run_would_refuse(
        memory_controller: Controller) -> None:
    c = memory_controller
    pbx = c.host(c.site(c.tenant("Acme"), "Lyon"), "pbx1")["id"]
    answer = c.call("POST", "/v1/schedules", body=_schedule(
        {"hosts": [pbx]}, options={"timeout_s": 3600}))
    assert answer.status == 422 and "options.timeout_s" in answer.json["errors"]
    made = c.ok("POST", "/v1/schedules", _schedule({"hosts": [pbx]}), expect=201)
    answer = c.call("PATCH", f"/v1/schedules/{made['id']}", body={"options": {"timeout_s": 3600}})
    assert answer.status == 422 and "options.timeout_s" in answer.json["errors"]


def test_a_tenant_with_more_hosts_than_a_target_may_name_is_still_collected(
        memory_controller: Controller) -> None:
    from sqlalchemy import insert

    from controller.models import Host, Job
    from controller.schemas import MAX_TARGET_ITEMS

    c = memory_controller
    acme = c.tenant("Acme")
    site = c.site(acme, "Lyon")
    count = MAX_TARGET_ITEMS + 5
    with c.app.app_context():
        db.session.execute(insert(Host), [
            {"tenant_id": acme, "site_id": site, "name": f"pbx{n}", "address": "192.0.2.10",
             "transport": "agent"} for n in range(count)])
        db.session.commit()
        database, settings, box = _beat(c)
        first = sch.collect_statuses(database, settings, box, now=1_800_000_000.0)
    for job_id in first:  # a new mark's one-tick window: free those hosts again
        c.ok("POST", f"/v1/jobs/{job_id}/cancel")
    with c.app.app_context():
        (job_id,) = sch.collect_statuses(database, settings, box, now=1_800_010_000.0)
        job = db.session.get(Job, job_id)
        assert job is not None and job.total == count


def test_old_status_jobs_are_purged_and_other_jobs_kept(memory_controller: Controller) -> None:
    from sqlalchemy import update

    from controller.models import Job

    c = memory_controller
    acme = c.tenant("Acme")
    pbx = c.host(c.site(acme, "Lyon"), "pbx1")["id"]
    operator_job = c.ok("POST", "/v1/jobs", {"action": "flush_queue",
                                             "target": {"hosts": [pbx]}}, expect=202)["id"]
    with c.app.app_context():
        database, settings, box = _beat(c)
        # the host is due in one of the two windows (the second spans the whole interval)
        (status_job,) = (sch.collect_statuses(database, settings, box, now=1_800_000_000.0)
                         + sch.collect_statuses(database, settings, box, now=1_800_010_000.0))
        old = sch.utcnow() - dt.timedelta(days=settings.status_job_retention_days + 1)
        db.session.execute(update(Job).values(status="cancelled", finished_at=old))
        db.session.commit()
        assert settings.status_job_retention_days == 7
        assert sch.purge_status_jobs(database, settings) == 1
        db.session.expire_all()
        assert db.session.get(Job, status_job) is None
        assert db.session.get(Job, operator_job) is not None
        db.session.rollback()  # end this read: SQLite's writer waits for readers
        assert sch.purge_status_jobs(database, settings) == 0


def test_a_rare_expression_is_found_and_one_without_a_next_time_is_disabled(
        memory_controller: Controller, monkeypatch: pytest.MonkeyPatch) -> None:
    # a 1 February that is a Monday: 2038 after 2027, beyond the old 9-year search
    rare = sch.parse_cron("0 0 */29 2 mon")
    assert sch.next_run(rare, sch.zone("UTC"), dt.datetime(2027, 3, 1, tzinfo=UTC)) == (
        dt.datetime(2038, 2, 1, tzinfo=UTC))
    c = memory_controller
    pbx = c.host(c.site(c.tenant("Acme"), "Lyon"), "pbx1")["id"]
    made = c.ok("POST", "/v1/schedules", _schedule({"hosts": [pbx]}, cron="0 0 29 2 *",
                                                   timezone="UTC"), expect=201)
    monkeypatch.setattr(sch, "SEARCH_YEARS", 1)
    with c.app.app_context():
        database, settings, box = _beat(c)
        now = dt.datetime(2040, 3, 1, tzinfo=UTC)  # the next 29 February is 2044's
        assert len(sch.run_due_schedules(database, settings, box, now=now)) == 1
    doc = c.ok("GET", f"/v1/schedules/{made['id']}")
    assert doc["enabled"] is False and "no time within 1 years" in doc["last_error"]


def test_unicode_digits_are_refused_not_a_500(memory_controller: Controller) -> None:
    c = memory_controller
    browser = c.app.test_client()
    origin = {"Origin": "http://localhost"}
    assert browser.post("/ui/login", data={"token": c.admin}, headers=origin).status_code == 303
    html = browser.get("/ui/schedules").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert token is not None
    for path, form in (("/ui/schedules/change", {"schedule_id": "²", "what": "disable"}),
                       ("/ui/schedules/status-collection", {"tenant_id": "²", "every_s": "60"}),
                       ("/ui/policies/remediate", {"host_id": "²"})):
        answer = browser.post(path, data={"csrf_token": token[1], **form}, headers=origin)
        assert 400 <= answer.status_code < 500, (path, answer.status_code)
    from controller.console.schedule_pages import form_number
    assert [form_number(raw) for raw in ("12", "²", "1" * 11, "", " 1", "2147483648")] == [
        12, None, None, None, None, None]


def test_the_cli_asks_which_when_a_number_is_also_a_schedules_name(
        memory_controller: Controller) -> None:
    from tests.unit.test_cli_inventory import run

    c = memory_controller
    pbx = c.host(c.site(c.tenant("Acme"), "Lyon"), "pbx1")["id"]
    made = c.ok("POST", "/v1/schedules", _schedule({"hosts": [pbx]}, name="2024"), expect=201)
    shown = run(c, None, "schedules", "show", "2024")
    assert shown.code != 0 and "id:2024" in shown.err and "name:2024" in shown.err
    by_name = run(c, None, "--json", "schedules", "show", "name:2024")
    assert by_name.code == 0 and by_name.json()["id"] == made["id"]
    by_id = run(c, None, "--json", "schedules", "show", f"id:{made['id']}")
    assert by_id.code == 0 and by_id.json()["name"] == "2024"


def test_turning_collection_back_on_starts_a_fresh_window(memory_controller: Controller) -> None:
    from controller.models import SchedulerMark

    c = memory_controller
    acme = c.tenant("Acme")
    c.host(c.site(acme, "Lyon"), "pbx1")
    path = f"/v1/tenants/{acme}/status-collection"
    with c.app.app_context():
        database, settings, box = _beat(c)
        sch.collect_statuses(database, settings, box, now=1_800_000_000.0)
        assert db.session.get(SchedulerMark, sch.status_mark(acme)) is not None
    c.ok("PUT", path, {"every_s": 0})
    c.ok("PUT", path, {"every_s": 600})
    with c.app.app_context():
        db.session.expire_all()
        assert db.session.get(SchedulerMark, sch.status_mark(acme)) is None


def test_week_ranges_may_end_on_sunday_and_odd_inputs_are_refused_by_name() -> None:
    assert sch.parse_cron("0 0 * * mon-sun").weekdays == set(range(7))
    assert sch.parse_cron("0 0 * * sat-sun").weekdays == {6, 0}
    assert sch.parse_cron("0 0 * * sun-sat").weekdays == set(range(7))
    with pytest.raises(sch.CronError, match="@reboot"):
        sch.parse_cron("@reboot")
    with pytest.raises(ValidationError, match="IANA time zone"):
        sch.zone("localtime")


def test_a_rename_that_loses_a_race_is_a_409(memory_controller: Controller,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    c = memory_controller
    acme = c.tenant("Acme")
    pbx = c.host(c.site(acme, "Lyon"), "pbx1")["id"]
    ops = c.issue("operator", acme)
    c.ok("POST", "/v1/schedules", _schedule({"hosts": [pbx]}), token=ops, expect=201)
    other = c.ok("POST", "/v1/schedules", _schedule({"hosts": [pbx]}, name="other"),
                 token=ops, expect=201)
    # the other rename commits between this one's check and its commit
    monkeypatch.setattr(sch, "_unique_name", lambda *args, **kwargs: None)
    for change in ({"name": "nightly flush"}, {"name": "nightly flush", "cron": "@hourly"}):
        answer = c.call("PATCH", f"/v1/schedules/{other['id']}", ops, change)
        assert answer.status == 409, answer
