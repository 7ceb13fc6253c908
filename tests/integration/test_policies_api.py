"""Desired state through the API: credentials, policies at three levels, drift computed
from what jobs learn, remediation by hand and by beat's step.

The first tests run on a real controller app (SQLite, the in-memory broker) with real
lanes run here against scripted hosts (:class:`controller.testing.FakeTransports`): the
host rows are the ones a worker writes. A real sendmail lab host through a real Celery
worker: tests/integration/test_lab_policies.py.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import re
from typing import Any

import pytest
from flask import current_app
from sqlalchemy import select, update

from controller import policy
from controller.db import db, utcnow
from controller.lanes import Lane
from controller.models import Host, Job
from controller.testing import FakeTransports
from shared.results import OperationResult
from tests.controller_client import Controller

RELAY = "relay.acme.example"
PASSWORD = "s3cret-relay-pw"
_keys = itertools.count()


def _status(smarthost: dict[str, Any] | None, in_sync: bool = True) -> OperationResult:
    return OperationResult("collect_status", data={
        "hostname": "pbx", "fqdn": "pbx.example.com",
        "mta": {"kind": "sendmail", "version": "8.17.1", "running": True},
        "smarthost": smarthost, "config_in_sync": in_sync,
        "queue": {"count": 0, "oldest_age_s": None},
        "hosts_file": {"ok": True, "problems": []}})


def _seen(host: str, port: int = 25, user: str | None = None,
          tls: str = "may") -> dict[str, Any]:
    """A smarthost as a host's status reports it."""
    return {"host": host, "port": port, "mx": False, "mailer": "relay",
            "auth": {"username": user} if user else None,
            "tls": {"mode": tls, "ca_file": None}, "masquerade": None}


def _changed(smarthost: dict[str, Any] | None) -> OperationResult:
    return OperationResult("set_smarthost", changed=True, data={
        "changed": True, "diff": "", "smarthost": smarthost, "config_in_sync": True,
        "rolled_back": False, "dry_run": False, "backup": None, "mta_running": True})


class World:
    """Two tenants: acme (sites lyon and paris, three hosts) and globex (one host)."""

    def __init__(self, controller: Controller) -> None:
        self.c = controller
        self.acme = controller.tenant("acme")
        self.globex = controller.tenant("globex")
        self.lyon = controller.site(self.acme, "lyon")
        self.paris = controller.site(self.acme, "paris")
        self.hosts = {name: int(controller.host(site, name)["id"]) for name, site in (
            ("pbx-lyon-1", self.lyon), ("pbx-lyon-2", self.lyon), ("pbx-paris-1", self.paris))}
        self.hosts["gx-1"] = int(controller.host(controller.site(self.globex, "hq"),
                                                 "gx-1")["id"])

    def run(self, job_id: int, fake: FakeTransports) -> dict[str, Any]:
        """Run a job's lane here to its end; its document."""
        with self.c.app.app_context():
            Lane(job_id, 0, transports=fake, send=lambda *args, **kwargs: None).run()
        return dict(self.c.ok("GET", f"/v1/jobs/{job_id}"))

    def status(self, fake: FakeTransports, *names: str) -> None:
        """A collect_status job on the named hosts, run here."""
        job = self.c.start_job({"action": "collect_status",
                                "target": {"hosts": [self.hosts[n] for n in names]}})
        self.run(job, fake)

    def fleet(self, **query: Any) -> dict[str, dict[str, Any]]:
        """The fleet's hosts by name."""
        args = "&".join(f"{key}={value}" for key, value in query.items())
        doc = self.c.ok("GET", f"/v1/fleet?{args}")
        return {item["name"]: item for item in doc["items"]}

    def remediate(self, body: dict[str, Any], token: str | None = None) -> dict[str, Any]:
        """POST /v1/remediate with a fresh key; its 202 answer."""
        answer = self.c.post("/v1/remediate", body, token,
                             headers={"Idempotency-Key": f"fix-{next(_keys)}"})
        assert answer.status == 202, answer
        return dict(answer.json)


@pytest.fixture
def world(memory_controller: Controller) -> World:
    """The two tenants' hosts, never seen yet."""
    return World(memory_controller)


def test_credentials_are_write_only_and_scoped_to_their_tenant(world: World) -> None:
    c = world.c
    made = c.ok("POST", "/v1/credentials", {"tenant_id": world.acme, "name": "acme-relay",
                                            "username": "pbx@acme.example",
                                            "password": PASSWORD}, expect=201)
    assert "password" not in made and PASSWORD not in json.dumps(made)
    assert c.post("/v1/credentials", {"tenant_id": world.acme, "name": "acme-relay",
                                      "username": "x", "password": "y"}).status == 409
    globex_admin = c.issue("admin", world.globex)
    assert c.get(f"/v1/credentials/{made['id']}", globex_admin).status == 404
    assert c.get("/v1/credentials", globex_admin).json["items"] == []
    assert c.get("/v1/credentials", c.issue("operator")).status == 403
    # a tenant's admin cannot put a credential in another tenant
    refused = c.post("/v1/credentials", {"tenant_id": world.acme, "name": "n",
                                         "username": "u", "password": "p"}, globex_admin)
    assert refused.status == 422 and "tenant_id" in refused.json["errors"]
    changed = c.ok("PATCH", f"/v1/credentials/{made['id']}", {"password": "another-pw"})
    assert changed["updated_at"] is not None and "password" not in changed
    audit = json.dumps(c.ok("GET", "/v1/audit?limit=50"))
    assert PASSWORD not in audit and "another-pw" not in audit


def test_policies_inherit_field_by_field_and_say_where_each_field_came_from(
        world: World) -> None:
    c = world.c
    c.ok("POST", "/v1/credentials", {"tenant_id": world.acme, "name": "acme-relay",
                                     "username": "pbx@acme.example", "password": PASSWORD})
    c.ok("PUT", f"/v1/tenants/{world.acme}/policy",
         {"smarthost": {"host": RELAY, "port": 587}, "credential": "acme-relay",
          "auto_remediate": False, "remediate_per_hour": 5})
    site = c.ok("PUT", f"/v1/sites/{world.lyon}/policy", {"smarthost": {"port": 2525}})
    assert site == {**site, "scope": f"site:{world.lyon}", "smarthost": {"port": 2525}}
    c.ok("PUT", f"/v1/hosts/{world.hosts['pbx-lyon-2']}/policy", {"smarthost": None})
    desired = c.ok("GET", f"/v1/hosts/{world.hosts['pbx-lyon-1']}/desired")
    assert desired["complete"] is True
    assert desired["smarthost"] == {"host": RELAY, "port": 2525, "mx": False,
                                    "tls": {"mode": "encrypt", "ca_file": None},
                                    "masquerade": None}
    assert desired["credential"] == "acme-relay"
    assert desired["username"] == "pbx@acme.example"
    assert desired["sources"] == {"smarthost.host": f"tenant:{world.acme}",
                                  "smarthost.port": f"site:{world.lyon}",
                                  "credential": f"tenant:{world.acme}",
                                  "auto_remediate": f"tenant:{world.acme}",
                                  "remediate_per_hour": f"tenant:{world.acme}"}
    assert PASSWORD not in json.dumps(desired)
    none = c.ok("GET", f"/v1/hosts/{world.hosts['pbx-lyon-2']}/desired")
    assert none["defined"] is True and none["smarthost"] is None
    assert none["drift"] is None  # never seen
    paris = c.ok("GET", f"/v1/hosts/{world.hosts['pbx-paris-1']}/desired")
    assert paris["smarthost"]["port"] == 587
    # the policies list, tenant first; a level without one is 404 with what to do
    listed = c.ok("GET", "/v1/policies")["items"]
    assert [p["scope"] for p in listed] == [f"tenant:{world.acme}", f"site:{world.lyon}",
                                            f"host:{world.hosts['pbx-lyon-2']}"]
    missing = c.get(f"/v1/sites/{world.paris}/policy")
    assert missing.status == 404 and "inherit" in missing.json["message"]
    # a credential in use cannot go
    credential_id = c.ok("GET", "/v1/credentials")["items"][0]["id"]
    in_use = c.call("DELETE", f"/v1/credentials/{credential_id}")
    assert in_use.status == 409 and f"tenant:{world.acme}" in in_use.json["message"]


@pytest.mark.parametrize(("path", "body", "field"), [
    ("tenants/{acme}", {"smarthost": {"host": "bad host!"}}, "smarthost.host"),
    ("tenants/{acme}", {"smarthost": {"host": RELAY, "port": 0}}, "smarthost.port"),
    ("tenants/{acme}", {"smarthost": {"host": RELAY, "tls": {"mode": "sometimes"}}},
     "smarthost.tls.mode"),
    ("tenants/{acme}", {"credential": "nope"}, "credential"),
    ("tenants/{acme}", {"smarthost": {"host": RELAY}, "mystery": 1}, "mystery"),
    ("sites/{lyon}", {"remediate_per_hour": 3}, "remediate_per_hour"),
])
def test_a_policy_the_agent_would_refuse_is_refused_naming_the_field(
        world: World, path: str, body: dict[str, Any], field: str) -> None:
    url = "/v1/" + path.format(acme=world.acme, lyon=world.lyon) + "/policy"
    answer = world.c.call("PUT", url, body=body)
    assert answer.status == 422, answer
    assert field in json.dumps(answer.json["errors"]), answer.json


def test_a_credential_with_tls_may_inherited_is_refused(world: World) -> None:
    c = world.c
    c.ok("POST", "/v1/credentials", {"tenant_id": world.acme, "name": "acme-relay",
                                     "username": "pbx@acme.example", "password": PASSWORD})
    c.ok("PUT", f"/v1/tenants/{world.acme}/policy",
         {"smarthost": {"host": RELAY, "tls": {"mode": "may"}}})
    answer = c.call("PUT", f"/v1/sites/{world.lyon}/policy", body={"credential": "acme-relay"})
    assert answer.status == 422 and "tls.mode" in answer.json["message"], answer.json
    assert c.get(f"/v1/sites/{world.lyon}/policy").status == 404  # nothing stored


def test_roles_and_tenants(world: World) -> None:
    c = world.c
    operator, viewer = c.issue("operator"), c.issue("viewer")
    body = {"smarthost": {"host": RELAY}}
    assert c.call("PUT", f"/v1/tenants/{world.acme}/policy", operator, body).status == 403
    c.ok("PUT", f"/v1/tenants/{world.acme}/policy", body)
    assert c.get(f"/v1/tenants/{world.acme}/policy", viewer).status == 200
    globex = c.issue("admin", world.globex)
    assert c.get(f"/v1/tenants/{world.acme}/policy", globex).status == 404
    assert c.call("PUT", f"/v1/hosts/{world.hosts['pbx-lyon-1']}/policy", globex,
                  body).status == 404
    assert c.get(f"/v1/hosts/{world.hosts['pbx-lyon-1']}/desired", globex).status == 404
    assert c.get("/v1/policies", globex).json["items"] == []
    refused = c.post("/v1/remediate", {"target": {"all": True}}, viewer)
    assert refused.status == 403


def test_drift_follows_what_jobs_learn_and_what_policies_say(world: World) -> None:
    c = world.c
    c.ok("PUT", f"/v1/tenants/{world.acme}/policy", {"smarthost": {"host": RELAY}})
    world.status(FakeTransports(answers={
        "pbx-lyon-1": _status(_seen(RELAY)),
        "pbx-lyon-2": _status(_seen("old.relay.example", 2525)),
        "pbx-paris-1": _status(_seen(RELAY), in_sync=False),
        "gx-1": _status(None)}), "pbx-lyon-1", "pbx-lyon-2", "pbx-paris-1", "gx-1")
    fleet = world.fleet()
    assert fleet["pbx-lyon-1"]["drift"] == [] and fleet["pbx-lyon-1"]["drifted"] is False
    assert fleet["pbx-lyon-2"]["drift"] == [
        {"field": "host", "want": RELAY, "have": "old.relay.example"},
        {"field": "port", "want": 25, "have": 2525}]
    assert fleet["pbx-paris-1"]["drift"] == [
        {"field": "config_in_sync", "want": True, "have": False}]
    assert fleet["gx-1"]["drift"] is None  # globex has no policy
    assert set(world.fleet(drifted="true")) == {"pbx-lyon-2", "pbx-paris-1"}
    assert set(world.fleet(drifted="false")) == {"pbx-lyon-1", "gx-1"}
    # a policy change is drift computed again at once, for that level's hosts only
    c.ok("PUT", f"/v1/sites/{world.lyon}/policy",
         {"smarthost": {"host": "old.relay.example", "port": 2525}})
    fleet = world.fleet()
    assert fleet["pbx-lyon-2"]["drift"] == []
    assert [d["field"] for d in fleet["pbx-lyon-1"]["drift"]] == ["host", "port"]
    c.ok("DELETE", f"/v1/sites/{world.lyon}/policy")
    assert world.fleet()["pbx-lyon-1"]["drift"] == []
    # an unreachable host keeps what it was last known to be
    world.status(FakeTransports(answers={"pbx-lyon-1": ConnectionError("down")}),
                 "pbx-lyon-1")
    assert world.fleet()["pbx-lyon-1"]["drift"] == []


def test_remediate_starts_one_job_per_desired_state_with_the_credential(
        world: World) -> None:
    c = world.c
    c.ok("POST", "/v1/credentials", {"tenant_id": world.acme, "name": "acme-relay",
                                     "username": "pbx@acme.example", "password": PASSWORD})
    c.ok("PUT", f"/v1/tenants/{world.acme}/policy",
         {"smarthost": {"host": RELAY, "port": 587}, "credential": "acme-relay"})
    c.ok("PUT", f"/v1/hosts/{world.hosts['pbx-paris-1']}/policy", {"smarthost": None})
    world.status(FakeTransports(answers={
        "pbx-lyon-1": _status(None), "pbx-lyon-2": _status(None),
        "pbx-paris-1": _status(_seen("old.relay.example"))}),
        "pbx-lyon-1", "pbx-lyon-2", "pbx-paris-1")
    answer = world.remediate({"target": {"tenants": [world.acme]}})
    assert answer["in_line"] == 0 and answer["unknown"] == 0
    jobs = {job["action"]: job for job in answer["jobs"]}
    assert set(jobs) == {"set_smarthost", "remove_smarthost"}
    assert jobs["set_smarthost"]["hosts"] == 2 and jobs["remove_smarthost"]["hosts"] == 1
    job = c.ok("GET", f"/v1/jobs/{jobs['set_smarthost']['id']}")
    assert job["params"]["host"] == RELAY and job["params"]["port"] == 587
    assert job["params"]["auth"] == {"username": "pbx@acme.example"}
    assert PASSWORD not in json.dumps(job)
    with c.app.app_context():
        row = db.session.get(Job, jobs["set_smarthost"]["id"])
        assert row is not None and row.origin == "remediate"
    # the hosts answer the change: in line
    fixed = _changed(_seen(RELAY, 587, "pbx@acme.example", "encrypt"))
    world.run(jobs["set_smarthost"]["id"], FakeTransports(default=fixed))
    world.run(jobs["remove_smarthost"]["id"], FakeTransports(default=_changed(None)))
    assert {name: host["drift"] for name, host in world.fleet().items()} == {
        "pbx-lyon-1": [], "pbx-lyon-2": [], "pbx-paris-1": [], "gx-1": None}
    again = world.remediate({"target": {"all": True}})
    assert again == {"jobs": [], "in_line": 3, "unknown": 1, "skipped": []}


def test_beat_remediates_when_the_policy_says_so_within_the_hourly_budget(
        world: World) -> None:
    c = world.c
    c.ok("PUT", f"/v1/tenants/{world.acme}/policy",
         {"smarthost": {"host": RELAY}, "remediate_per_hour": 2})
    world.status(FakeTransports(default=_status(_seen("old.relay.example"))),
                 "pbx-lyon-1", "pbx-lyon-2", "pbx-paris-1")

    def tick() -> list[tuple[int, str, int, int | None]]:
        """Beat's step once; every remediation job since the test began."""
        with c.app.app_context():
            policy.tick(db, current_app.config["RELAYFLEET_SETTINGS"])
            return [(job.id, job.action, job.total, job.token_id) for job in db.session.scalars(
                select(Job).where(Job.origin == "remediate").order_by(Job.id))]

    assert tick() == []  # auto_remediate is off
    c.ok("PUT", f"/v1/sites/{world.lyon}/policy", {"auto_remediate": True})
    c.ok("PUT", f"/v1/sites/{world.paris}/policy", {"auto_remediate": True})
    jobs = tick()
    assert [job[1:] for job in jobs] == [("set_smarthost", 2, None)]
    assert tick() == jobs  # the hour's budget is spent; the hosts are being remediated
    # the budget grows: the hosts of the running job are still left alone
    c.ok("PUT", f"/v1/tenants/{world.acme}/policy",
         {"smarthost": {"host": RELAY}, "remediate_per_hour": 10})
    later = tick()
    assert len(later) == 2 and later[1][2] == 1
    results = c.ok("GET", f"/v1/jobs/{later[1][0]}")["results"]
    assert [row["host"] for row in results] == ["pbx-paris-1"]
    # done and in line: nothing more to do
    for job in later:
        world.run(job[0], FakeTransports(default=_changed(_seen(RELAY))))
    assert tick() == later


def _browser(c: Controller, token: str) -> Any:
    """A console client signed in with ``token``."""
    client = c.app.test_client()
    answer = client.post("/ui/login", data={"token": token},
                         headers={"Origin": "http://localhost"})
    assert answer.status_code == 303
    return client


def test_the_console_shows_policies_and_drift_and_remediates(world: World) -> None:
    c = world.c
    c.ok("PUT", f"/v1/tenants/{world.acme}/policy", {"smarthost": {"host": RELAY}})
    world.status(FakeTransports(answers={"pbx-lyon-1": _status(_seen("old.relay.example"))},
                                default=_status(_seen(RELAY))),
                 "pbx-lyon-1", "pbx-lyon-2")
    viewer = _browser(c, c.issue("viewer"))
    html = viewer.get("/ui/policies").get_data(as_text=True)
    assert "tenant acme" in html and RELAY in html
    assert "pbx-lyon-1" in html and "want relay.acme.example" in html
    assert "old.relay.example" in html and "pbx-lyon-2" not in html
    assert "Remediate" not in html  # a viewer only reads
    fleet = viewer.get("/ui/fleet?view=drifted").get_data(as_text=True)
    assert "<b>1</b> drifted from policy" in fleet
    assert re.findall(r'<a href="/ui/hosts/\d+">([^<]+)</a>', fleet) == ["pbx-lyon-1"]
    host = viewer.get(f"/ui/hosts/{world.hosts['pbx-lyon-1']}").get_data(as_text=True)
    assert "Wanted smarthost" in host and f"smarthost.host: tenant:{world.acme}" in host
    assert "old.relay.example" in host
    operator = _browser(c, c.issue("operator"))
    html = operator.get(f"/ui/hosts/{world.hosts['pbx-lyon-1']}").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert token is not None and "Remediate this host" in html
    done = operator.post("/ui/policies/remediate", data={
        "csrf_token": token.group(1), "host_id": world.hosts["pbx-lyon-1"]},
        headers={"Origin": "http://localhost"})
    assert done.status_code == 303 and "/ui/jobs/" in done.headers["Location"]
    job_id = int(done.headers["Location"].rsplit("/", 1)[1])
    job = c.ok("GET", f"/v1/jobs/{job_id}")
    assert job["action"] == "set_smarthost" and [r["host"] for r in job["results"]] == [
        "pbx-lyon-1"]


def test_the_cli_sets_policies_shows_drift_and_remediates(world: World,
                                                            tmp_path: Any) -> None:
    from tests.unit.test_cli_inventory import run

    c = world.c
    secret = tmp_path / "pw"
    secret.write_text(PASSWORD + "\n")
    made = run(c, None, "credentials", "add", "acme-relay", "--tenant", "acme",
               "--username", "pbx@acme.example", "--password-file", str(secret))
    assert made.code == 0, made.err
    listed = run(c, None, "credentials", "list")
    assert "acme-relay" in listed.out and PASSWORD not in listed.out
    done = run(c, None, "policy", "set", "--tenant", "acme", "--relay", f"{RELAY}:587",
               "--credential", "acme-relay")
    assert done.code == 0, done.err
    # set changes only the fields given
    assert run(c, None, "policy", "set", "--tenant", "acme", "--port", "2525").code == 0
    own = c.ok("GET", f"/v1/tenants/{world.acme}/policy")
    assert own["smarthost"] == {"host": RELAY, "port": 2525}
    assert own["credential"] == "acme-relay"
    refused = run(c, None, "policy", "set", "--site", "lyon", "--per-hour", "3")
    assert refused.code != 0 and "tenant" in refused.err
    world.status(FakeTransports(default=_status(_seen("old.relay.example"))), "pbx-lyon-1")
    drift = run(c, None, "drift")
    assert drift.code == 1 and "pbx-lyon-1" in drift.out and "old.relay.example" in drift.out
    shown = run(c, None, "policy", "show", "--host", "pbx-lyon-1")
    assert f"tenant:{world.acme}" in shown.out and "auth.username" in shown.out, shown.out
    started = run(c, None, "--json", "remediate", "--tenant", "acme", "--no-wait")
    assert started.code == 0, started.err
    assert [job["hosts"] for job in started.json()["jobs"]] == [1]
    assert run(c, None, "policy", "clear", "--tenant", "acme").code == 0
    assert run(c, None, "drift").code == 0


def test_the_drifted_filter_and_beat_step_on_each_database(controller: Controller) -> None:
    """SQLite and PostgreSQL: the drift list's length is read in SQL."""
    world = World(controller)
    controller.ok("PUT", f"/v1/tenants/{world.acme}/policy", {"smarthost": {"host": RELAY}})
    with controller.app.app_context(), db.transaction() as session:
        policy.refresh_drift(session, world.hosts.values())  # never seen: unknown
        session.execute(update(Host).where(Host.id == world.hosts["pbx-lyon-1"]).values(
            last_seen_at=utcnow(), smarthost=_seen("old.relay.example")))
        session.execute(update(Host).where(Host.id == world.hosts["pbx-lyon-2"]).values(
            last_seen_at=utcnow(), smarthost=_seen(RELAY)))
        policy.refresh_drift(session, world.hosts.values())
    assert set(world.fleet(drifted="true")) == {"pbx-lyon-1"}
    assert set(world.fleet(drifted="false")) == {"pbx-lyon-2", "pbx-paris-1", "gx-1"}
    controller.ok("PUT", f"/v1/tenants/{world.acme}/policy",
                  {"smarthost": {"host": RELAY}, "auto_remediate": True})
    with controller.app.app_context():
        policy.tick(db, current_app.config["RELAYFLEET_SETTINGS"])
        jobs = [(job.action, job.total) for job in db.session.scalars(
            select(Job).where(Job.origin == "remediate"))]
    assert jobs == [("set_smarthost", 1)]


# -- what a review found ----------------------------------------------------------------

def _tick(c: Controller) -> list[tuple[int, str, int]]:
    """Beat's step once; every automatic remediation job so far (id, action, hosts)."""
    with c.app.app_context():
        policy.tick(db, current_app.config["RELAYFLEET_SETTINGS"])
        return [(job.id, job.action, job.total) for job in db.session.scalars(
            select(Job).where(Job.origin == "remediate", Job.token_id.is_(None))
            .order_by(Job.id))]


def test_a_host_moved_to_another_tenant_leaves_its_policy_and_credential_behind(
        world: World) -> None:
    c = world.c
    c.ok("POST", "/v1/credentials", {"tenant_id": world.acme, "name": "acme-relay",
                                     "username": "pbx@acme.example", "password": PASSWORD})
    moved = world.hosts["pbx-lyon-1"]
    c.ok("PUT", f"/v1/hosts/{moved}/policy",
         {"smarthost": {"host": RELAY, "tls": {"mode": "encrypt"}}, "credential": "acme-relay"})
    world.status(FakeTransports(default=_status(_seen("old.relay.example"))), "pbx-lyon-1")
    globex_site = c.ok("GET", f"/v1/sites?tenant_id={world.globex}")["items"][0]["id"]
    c.ok("PATCH", f"/v1/hosts/{moved}", {"site_id": globex_site})
    assert c.get(f"/v1/hosts/{moved}/policy").status == 404
    desired = c.ok("GET", f"/v1/hosts/{moved}/desired")
    assert desired["credential"] is None and desired["drift"] is None
    globex_admin = c.issue("admin", world.globex)
    assert c.ok("GET", "/v1/policies", token=globex_admin)["items"] == []
    answer = c.post("/v1/remediate", {"target": {"hosts": [moved]}}, globex_admin,
                    headers={"Idempotency-Key": "moved-1"})
    assert answer.status == 202 and answer.json["jobs"] == [], answer
    # a PUT of the moved host's policy is its new tenant's, with that tenant's credentials
    c.ok("PUT", f"/v1/hosts/{moved}/policy", {"smarthost": {"host": RELAY}})
    own = c.ok("GET", f"/v1/hosts/{moved}/policy", token=globex_admin)
    assert own["tenant_id"] == world.globex
    refused = c.call("PUT", f"/v1/hosts/{moved}/policy", body={"credential": "acme-relay"})
    assert refused.status == 422 and "credential" in refused.json["errors"]


def test_remediate_refuses_rollout_options_naming_them_without_the_password(
        world: World) -> None:
    c = world.c
    c.ok("POST", "/v1/credentials", {"tenant_id": world.acme, "name": "acme-relay",
                                     "username": "pbx@acme.example", "password": PASSWORD})
    c.ok("PUT", f"/v1/tenants/{world.acme}/policy",
         {"smarthost": {"host": RELAY}, "credential": "acme-relay"})
    world.status(FakeTransports(default=_status(None)), "pbx-lyon-1", "pbx-lyon-2")
    for option in ({"canary": 1}, {"wave_size": 1}):
        answer = c.post("/v1/remediate", {"target": {"all": True}, "options": option},
                        headers={"Idempotency-Key": f"canary-{next(_keys)}"})
        assert answer.status == 422, answer
        assert f"options.{next(iter(option))}" in answer.json["errors"], answer.json
        assert PASSWORD not in json.dumps(answer.json)


def test_a_null_policy_body_is_refused_and_empties_nothing(world: World) -> None:
    c = world.c
    c.ok("PUT", f"/v1/tenants/{world.acme}/policy", {"smarthost": {"host": RELAY}})
    answer = c.client.open(f"/v1/tenants/{world.acme}/policy", method="PUT", data="null",
                           content_type="application/json",
                           headers={"Authorization": f"Bearer {c.admin}"})
    assert answer.status_code == 422, answer.get_json()
    assert c.ok("GET", f"/v1/tenants/{world.acme}/policy")["smarthost"] == {"host": RELAY}


def test_a_put_is_refused_only_for_a_problem_it_brings_and_names_the_host(
        world: World) -> None:
    c = world.c
    c.ok("POST", "/v1/credentials", {"tenant_id": world.acme, "name": "acme-relay",
                                     "username": "pbx@acme.example", "password": PASSWORD})
    c.ok("PUT", f"/v1/tenants/{world.acme}/policy", {"smarthost": {"host": RELAY}})
    c.ok("PUT", f"/v1/hosts/{world.hosts['pbx-lyon-2']}/policy",
         {"smarthost": {"tls": {"mode": "may"}}})
    # the credential would need TLS on pbx-lyon-2, whose own policy says "may"
    answer = c.call("PUT", f"/v1/tenants/{world.acme}/policy",
                    body={"smarthost": {"host": RELAY}, "credential": "acme-relay"})
    assert answer.status == 422 and "pbx-lyon-2" in answer.json["message"], answer.json
    # a problem stored before (a rule made stricter since) does not block other changes
    with c.app.app_context(), db.transaction() as session:
        session.add(policy.Policy(scope=f"host:{world.hosts['pbx-paris-1']}",
                                  tenant_id=world.acme, host_id=world.hosts["pbx-paris-1"],
                                  settings={"smarthost": {"port": 0}}))
    c.ok("PUT", f"/v1/tenants/{world.acme}/policy",
         {"smarthost": {"host": RELAY}, "auto_remediate": True})


def test_remediation_skips_busy_hosts_and_dry_runs_do_not_quiet_beat(world: World) -> None:
    c = world.c
    c.ok("PUT", f"/v1/tenants/{world.acme}/policy", {"smarthost": {"host": RELAY}})
    world.status(FakeTransports(default=_status(_seen("old.relay.example"))),
                 "pbx-lyon-1", "pbx-lyon-2")
    # an operator's change on pbx-lyon-1, not finished yet
    rollout = c.start_job({"action": "set_smarthost", "target": {"hosts": [
        world.hosts["pbx-lyon-1"]]}, "params": {"host": "other.relay.example"}})
    answer = world.remediate({"target": {"tenants": [world.acme]}})
    assert [job["hosts"] for job in answer["jobs"]] == [1]
    assert answer["skipped"] == [{"host": "pbx-lyon-1",
                                  "reason": f"job {rollout} (set_smarthost) is still "
                                            "running on it"}]
    # a dry run is not a remediation: beat's step does not wait for it
    world.run(answer["jobs"][0]["id"], FakeTransports(default=_changed(_seen(RELAY))))
    _age_remediations(c)
    world.status(FakeTransports(default=_status(_seen("old.relay.example"))), "pbx-lyon-2")
    dry = world.remediate({"target": {"tenants": [world.acme]},
                           "options": {"dry_run": True}})
    assert [job["hosts"] for job in dry["jobs"]] == [1]
    world.run(dry["jobs"][0]["id"], FakeTransports(default=_changed(
        _seen("old.relay.example"))))
    c.ok("PUT", f"/v1/tenants/{world.acme}/policy",
         {"smarthost": {"host": RELAY}, "auto_remediate": True})
    assert [job[1:] for job in _tick(c)] == [("set_smarthost", 1)]  # pbx-lyon-2 only


def _age_remediations(c: Controller) -> None:
    """Make every remediation older than the quiet period."""
    with c.app.app_context(), db.transaction() as session:
        session.execute(update(Job).where(Job.origin == "remediate").values(
            created_at=utcnow() - dt.timedelta(seconds=policy.REMEDIATE_QUIET_S + 60)))


def test_beat_leaves_a_host_alone_once_two_remediations_did_not_change_its_drift(
        world: World) -> None:
    c = world.c
    c.ok("PUT", f"/v1/tenants/{world.acme}/policy",
         {"smarthost": {"host": RELAY}, "auto_remediate": True})
    host = world.hosts["pbx-lyon-1"]

    def seen(relay: str) -> None:
        world.status(FakeTransports(default=_status(_seen(relay))), "pbx-lyon-1")

    def remediated(job_id: int, relay: str) -> None:
        """The job runs; the host still points at ``relay`` after it."""
        world.run(job_id, FakeTransports(default=_changed(_seen(relay))))
        _age_remediations(c)

    def stuck() -> bool:
        return bool(c.ok("GET", f"/v1/hosts/{host}/desired")["stuck"])

    seen("old.relay.example")
    for _ in range(policy.REMEDIATE_TRIES):
        remediated(_tick(c)[-1][0], "old.relay.example")
    assert stuck() and len(_tick(c)) == 2  # left alone
    viewer = _browser(c, c.issue("viewer"))
    assert "stuck" in viewer.get("/ui/policies").get_data(as_text=True)
    # back in line, then the same drift again: a fresh count
    seen(RELAY)
    seen("old.relay.example")
    assert not stuck()
    # the drift changes: beat tries again, twice
    seen("other.relay.example")
    assert not stuck()
    for _ in range(policy.REMEDIATE_TRIES):
        remediated(_tick(c)[-1][0], "other.relay.example")
    assert stuck() and len(_tick(c)) == 4
    # an operator's remediation: beat may try again
    by_hand = world.remediate({"target": {"hosts": [host]}})["jobs"][0]["id"]
    assert not stuck()
    remediated(by_hand, "other.relay.example")
    assert len(_tick(c)) == 5


def test_a_changed_password_is_drift_until_the_host_gets_it(world: World) -> None:
    c = world.c
    made = c.ok("POST", "/v1/credentials", {"tenant_id": world.acme, "name": "acme-relay",
                                            "username": "pbx@acme.example",
                                            "password": PASSWORD})
    c.ok("PUT", f"/v1/tenants/{world.acme}/policy",
         {"smarthost": {"host": RELAY}, "credential": "acme-relay"})
    with_login = _seen(RELAY, user="pbx@acme.example", tls="encrypt")
    world.status(FakeTransports(default=_status(with_login)), "pbx-lyon-1")
    host = world.hosts["pbx-lyon-1"]
    assert c.ok("GET", f"/v1/hosts/{host}/desired")["drift"] == []
    c.ok("PATCH", f"/v1/credentials/{made['id']}", {"password": "a-new-relay-pw"})
    drift = c.ok("GET", f"/v1/hosts/{host}/desired")["drift"]
    assert drift == [{"field": "auth.password", "want": policy.STALE_LOGIN_NOTE,
                      "have": "the password before the change"}]
    assert "a-new-relay-pw" not in json.dumps(world.fleet())
    # a status says nothing about the password: still drift
    world.status(FakeTransports(default=_status(with_login)), "pbx-lyon-1")
    assert c.ok("GET", f"/v1/hosts/{host}/desired")["drift"] == drift
    answer = world.remediate({"target": {"hosts": [host]}})
    world.run(answer["jobs"][0]["id"], FakeTransports(default=_changed(with_login)))
    assert c.ok("GET", f"/v1/hosts/{host}/desired")["drift"] == []


def test_a_remediation_keeps_the_hosts_mailer_and_its_own_masquerade(world: World) -> None:
    c = world.c
    c.ok("PUT", f"/v1/tenants/{world.acme}/policy", {"smarthost": {"host": RELAY}})
    own = {**_seen("old.relay.example"), "mailer": "esmtp",
           "masquerade": {"domain": "pbx.acme.example", "envelope": True}}
    world.status(FakeTransports(default=_status(own)), "pbx-lyon-1")
    host = world.hosts["pbx-lyon-1"]
    assert [d["field"] for d in c.ok("GET", f"/v1/hosts/{host}/desired")["drift"]] == ["host"]
    answer = world.remediate({"target": {"hosts": [host]}})
    params = c.ok("GET", f"/v1/jobs/{answer['jobs'][0]['id']}")["params"]
    assert params["mailer"] == "esmtp"
    assert params["masquerade"] == {"domain": "pbx.acme.example", "envelope": True}


def test_a_failing_drift_refresh_never_loses_a_units_result(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    c = world.c
    c.ok("PUT", f"/v1/tenants/{world.acme}/policy", {"smarthost": {"host": RELAY}})

    def broken(*_: Any) -> None:
        raise RuntimeError("drift could not be computed")

    monkeypatch.setattr(policy, "refresh_drift", broken)
    job = c.start_job({"action": "collect_status",
                       "target": {"hosts": [world.hosts["pbx-lyon-1"]]}})
    done = world.run(job, FakeTransports(default=_status(_seen(RELAY))))
    assert done["status"] == "succeeded" and done["results"][0]["status"] == "succeeded"
    assert world.fleet()["pbx-lyon-1"]["last"]["smarthost"]["host"] == RELAY
