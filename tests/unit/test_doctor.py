"""The fleet doctor: status's reasons and recent-log summary, the causes named from them,
what a status result teaches the host row, and ``GET /v1/doctor`` with its CLI and console.

The reason texts are the ones real sendmail 8.17 and Postfix 3.7 lab hosts logged and
queued against the lab's relays (tests/unit/test_maillog_problems.py has the lines). The
API, CLI and console run against the real controller app (SQLite, in-memory broker);
collect_status results are recorded by real lanes from scripted hosts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pytest
from flask.testing import FlaskClient

from controller.db import db
from controller.doctor import CAUSES, classify, host_causes
from controller.lanes import Lane
from controller.models import Host
from controller.testing import FakeTransports
from shared.errors import HostUnreachable
from shared.mta import operations_for
from shared.postfix.maillog import parse_any_line
from shared.profile import build_profile
from shared.reasons import MAX_REASONS, queue_reasons, recent_summary
from shared.results import OperationResult
from shared.schemas import StatusSchema
from shared.sendmail.mailq import QueuedMessage
from shared.testing import debian_postfix_host, debian_sendmail_host
from tests.controller_client import Controller
from tests.unit.test_cli_inventory import run as run_cli

RELAY = {"host": "relay.example.net", "port": 587, "mx": False, "tls": {"mode": "encrypt"}}

#: (text, has a smarthost, the cause)
TEXTS = [
    ("Deferred: Connection refused by mx.ourtest.com.", False, "no_smarthost"),
    ("Deferred: 550 5.7.1 Client host rejected: listed in a block list", False,
     "no_smarthost"),
    ("Deferred: 421 4.7.0 Try again later, closing connection. (EHLO) unqualified host name",
     True, "ehlo_refused"),
    ("host 10.202.0.8[10.202.0.8] refused to talk to me: 421 4.7.0 Try again later, closing "
     "connection. (EHLO) unqualified host name", True, "ehlo_refused"),
    ("Deferred: 454 4.7.0 CN other.lab.test does not match relay-wrong.lab.test", True,
     "tls_verify_failed"),
    ("Deferred: 454 4.7.0 authentication failed", True, "tls_verify_failed"),
    ("Server certificate not verified", True, "tls_verify_failed"),
    ("TLS is required, but was not offered by host smarthost.lab.test[10.202.0.3]", True,
     "tls_required"),
    ("SASL authentication failed; server 10.202.0.7[10.202.0.7] said: 535 5.7.8 "
     "Authentication credentials invalid", True, "auth_failed"),
    ("Service unavailable: 530 5.7.0 Authentication required", True, "auth_failed"),
    ("Host unknown (Name server: relay.nowhere.test: host not found)", True,
     "host_lookup_failed"),
    ("Deferred: Connection refused by relay.example.net.", True, "relay_unreachable"),
    # the MSP's hand-off to the host's own MTA (sm-mta stopped, or above its RefuseLA)
    ("Deferred: Connection refused by [127.0.0.1]", True, "local_mta_refused"),
    ("Deferred: Connection refused by [127.0.0.1]", False, "local_mta_refused"),
    ("Deferred: Connection refused by [IPv6:::1]", True, "local_mta_refused"),
    ("Deferred: Connection refused by [127.0.0.10]", True, "relay_unreachable"),
    ("connect to 10.202.0.99[10.202.0.99]:587: Connection timed out", True,
     "relay_unreachable"),
    ("host 10.202.0.9[10.202.0.9] said: 550 5.7.1 Sender address rejected: not owned by a "
     "customer domain (in reply to MAIL FROM command)", True, "sender_refused"),
    ("Service unavailable: 554 5.7.1 Relaying denied by lab sink", True, "relaying_denied"),
    ("Deferred: 451 4.3.0 Temporary system problem", True, "other"),
]

#: a sendmail host's maillog: a refusal by the relay, then a bounce (wrong password), the
#: MSP's hand-off to the MTA, and (in LATER) the relay accepting a message
LOG = [
    "Dec  2 14:18:21 smx1 sm-mta[26078]: 6B2EILbh026076: to=<me@ourtest.com>, "
    "delay=00:00:00, xdelay=00:00:00, mailer=relay, pri=30284, "
    "relay=relay.lab.test. [10.202.0.7], dsn=5.0.0, reply=530 5.7.0 Authentication "
    "required, stat=Service unavailable",
    "Dec  2 14:19:25 smx1 sm-mta[31899]: 6B2EJPPZ031895: to=<me@ourtest.com>, "
    "delay=00:00:00, xdelay=00:00:00, mailer=relay, pri=30284, "
    "relay=relay-ehlo.lab.test. [10.202.0.8], dsn=4.5.0, reply=421 4.7.0 Try again "
    "later, closing connection. (EHLO) unqualified host name, stat=Deferred: 421 4.7.0 "
    "Try again later, closing connection. (EHLO) unqualified host name",
    "Dec  2 14:19:30 smx1 sm-msp-queue[31900]: 6B2EJUaa031900: to=me@ourtest.com, "
    "ctladdr=root (0/0), delay=00:00:00, xdelay=00:00:00, mailer=relay, pri=30000, "
    "relay=[127.0.0.1] [127.0.0.1], dsn=2.0.0, stat=Sent (6B2EJUab031901 Message accepted "
    "for delivery)",
    "Dec  2 14:19:31 smx1 kernel: something else entirely",
]
LATER = [
    "Dec  2 14:20:00 smx1 sm-mta[31950]: 6B2EK0aa031950: to=<me@ourtest.com>, "
    "delay=00:00:01, xdelay=00:00:01, mailer=relay, pri=30284, "
    "relay=relay.lab.test. [10.202.0.7], dsn=2.0.0, stat=Sent (Ok: queued by the lab relay)",
]


# -- the agent's side --------------------------------------------------------------------

def _message(qid: str, reasons: dict[str, str], reason: str | None = None) -> QueuedMessage:
    return QueuedMessage(id=qid, size=100, queued_at=None, sender="pbx@example.com",
                         recipients=list(reasons), reason=reason, reasons=reasons)


def test_queue_reasons_count_messages_per_text_most_first() -> None:
    refused = "Deferred: Connection refused by relay.example.net."
    messages = [
        _message("A1", {"a@x": refused}, refused),
        # two recipients with the same reason: one message
        _message("A2", {"a@x": refused, "b@x": refused}, refused),
        _message("A3", {"a@x": "Deferred: 451 4.3.0 busy", "b@x": refused}),
        _message("A4", {}, "  Operating   system error "),
        _message("A5", {}),  # never tried: no reason
    ]
    assert queue_reasons(messages) == [
        {"text": refused, "count": 3},
        # equal counts: the first seen first
        {"text": "Deferred: 451 4.3.0 busy", "count": 1},
        {"text": "Operating system error", "count": 1}]
    many = [_message(f"B{i}", {}, f"Deferred: reason {i}") for i in range(MAX_REASONS + 5)]
    assert len(queue_reasons(many)) == MAX_REASONS
    long = queue_reasons([_message("C1", {}, "x" * 1000)])[0]["text"]
    assert len(long) == 300 and long.endswith("...")


def test_recent_summary_counts_the_tail_and_keeps_failures_since_the_last_relay_delivery(
        ) -> None:
    summary = recent_summary(LOG, parse_any_line)
    assert summary["lines"] == 4
    assert (summary["deliveries"], summary["sent"], summary["deferred"], summary["bounced"],
            summary["local_handoffs"]) == (3, 1, 1, 1, 1)
    assert {p["problem"] for p in summary["problems"]} == {"auth_failed", "ehlo_refused"}
    # the MSP's hand-off to the local MTA is no delivery by a relay: failures stay
    assert sorted((u["outcome"], u["problem"]) for u in summary["unresolved"]) == [
        ("bounced", "auth_failed"), ("deferred", "ehlo_refused")]
    bounced = next(u for u in summary["unresolved"] if u["outcome"] == "bounced")
    # sendmail's bare "Service unavailable" gets the relay's reply that says why
    assert bounced["text"] == "Service unavailable: 530 5.7.0 Authentication required"
    # once the relay accepted a message, what failed before is history
    later = recent_summary(LOG + LATER, parse_any_line)
    assert later["unresolved"] == [] and later["sent"] == 2
    # the schema the agent answers with takes it
    doc = {"hostname": "smx1", "fqdn": "smx1.lab.test",
           "mta": {"kind": "sendmail", "version": "8.17.1.9", "running": True},
           "smarthost": None, "config_in_sync": True,
           "queue": {"count": 0, "oldest_age_s": None, "reasons": []},
           "hosts_file": {"ok": True, "problems": []}, "recent": summary}
    assert StatusSchema().load(doc)["recent"]["unresolved"] == summary["unresolved"]


@pytest.mark.parametrize("mta", ["sendmail", "postfix"])
def test_status_reports_the_queues_reasons_and_the_recent_log(mta: str) -> None:
    host = debian_postfix_host() if mta == "postfix" else debian_sendmail_host()
    ops = operations_for(host, build_profile(mta, "debian", {}))
    result = ops.status()
    assert result.ok, result.error
    data = StatusSchema().load(result.data)  # what the controller takes from an agent
    queue, recent = data["queue"], data["recent"]
    assert queue["count"] >= 1 and sum(r["count"] for r in queue["reasons"]) >= 1
    assert queue["reasons"] == sorted(queue["reasons"], key=lambda r: -r["count"])
    # (the Postfix capture's maillog holds no delivery line yet)
    assert recent["lines"] >= 1
    assert recent["deliveries"] >= recent["deferred"] >= (1 if mta == "sendmail" else 0)
    # the tail is data: the step keeps its size only, never the log's lines
    step = next(step for step in result.steps if step.name == "tail maillog")
    assert step.output.endswith("bytes read)")
    # each host's causes follow from it
    assert host_causes(result.data, result.data["smarthost"])
    # a maillog that cannot be read leaves the look without it, not failed
    host.remove(ops.profile.maillog)
    missing = ops.status()
    assert missing.ok and missing.data["recent"] is None


# -- causes ------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "has_smarthost", "cause"), TEXTS)
def test_each_reason_names_its_cause(text: str, has_smarthost: bool, cause: str) -> None:
    assert classify(text, has_smarthost) == cause


def test_every_cause_has_a_title_and_a_hint_and_the_fixable_ones_an_action() -> None:
    assert set(CAUSES) == {cause for _, _, cause in TEXTS}
    for cause in CAUSES.values():
        assert cause.title and cause.hint
        assert cause.action in (None, "set_smarthost", "fix_hostname")
    assert CAUSES["ehlo_refused"].action == "fix_hostname"
    assert CAUSES["no_smarthost"].action == "set_smarthost"
    assert "masquerade" in CAUSES["sender_refused"].hint


def _status(count: int, reasons: list[tuple[str, int]], *, smarthost: dict[str, Any] | None,
            unresolved: list[dict[str, Any]] | None = None, oldest: int | None = None
            ) -> dict[str, Any]:
    return {"hostname": "pbx", "fqdn": "pbx.example.com",
            "mta": {"kind": "sendmail", "version": "8.17.1", "running": True},
            "smarthost": smarthost, "config_in_sync": True,
            "queue": {"count": count, "oldest_age_s": oldest,
                      "reasons": [{"text": t, "count": n} for t, n in reasons]},
            "hosts_file": {"ok": True, "problems": []},
            "recent": None if unresolved is None else {
                "lines": 10, "deliveries": 1, "sent": 0, "deferred": 0, "bounced": 1,
                "by_stat": {}, "problems": [], "unresolved": unresolved}}


def test_host_causes_add_the_queue_and_the_bounces_since_the_last_delivery() -> None:
    data = _status(4, [("Deferred: Connection refused by relay.example.net.", 3),
                       ("Deferred: 421 4.7.0 Try again later, closing connection. (EHLO) "
                        "unqualified host name", 1)], smarthost=RELAY,
                   unresolved=[
                       {"text": "Service unavailable: 530 5.7.0 Authentication required",
                        "outcome": "bounced", "problem": "auth_failed", "count": 2},
                       # deferred attempts are the queued messages: not counted twice
                       {"text": "Deferred: Connection refused by relay.example.net.",
                        "outcome": "deferred", "problem": None, "count": 7}])
    assert host_causes(data, RELAY) == [
        {"cause": "relay_unreachable", "count": 3,
         "sample": "Deferred: Connection refused by relay.example.net."},
        {"cause": "auth_failed", "count": 2,
         "sample": "Service unavailable: 530 5.7.0 Authentication required"},
        {"cause": "ehlo_refused", "count": 1, "sample": data["queue"]["reasons"][1]["text"]}]
    # the same refusal without a smarthost: the recipients' servers refuse the host
    direct = _status(2, [("Deferred: Connection refused by mx.ourtest.com.", 2)],
                     smarthost=None)
    assert [c["cause"] for c in host_causes(direct, None)] == ["no_smarthost"]
    # sendmail's mailq cuts long reasons: the whole text logged names the cause
    ehlo = ("Deferred: 421 4.7.0 Try again later, closing connection. (EHLO) unqualified "
            "host name")
    cut = _status(1, [(ehlo[:60], 1)], smarthost=RELAY, unresolved=[
        {"text": ehlo, "outcome": "deferred", "problem": "ehlo_refused", "count": 3}])
    assert classify(ehlo[:60], True) == "other"
    assert host_causes(cut, RELAY) == [{"cause": "ehlo_refused", "count": 1, "sample": ehlo}]
    # nothing failing (an agent from before the reasons, too): no cause
    assert host_causes(_status(0, [], smarthost=RELAY), RELAY) == []
    assert host_causes({"queue": {"count": 3, "oldest_age_s": 5}}, None) == []


# -- the controller ----------------------------------------------------------------------

def _result(data: dict[str, Any]) -> OperationResult:
    return OperationResult("collect_status", data=data)


@dataclass
class Fleet:
    """Two tenants' hosts after one status look."""

    controller: Controller
    hosts: dict[str, int]
    tenants: dict[str, int]
    sites: dict[str, int]

    def run(self, body: dict[str, Any], fake: FakeTransports) -> int:
        """Start a job through the API and run its lane here."""
        job = self.controller.start_job(body)
        with self.controller.app.app_context():
            Lane(job, 0, transports=fake, send=lambda *args, **kwargs: None).run()
        return job

    def row(self, name: str) -> Host:
        with self.controller.app.app_context():
            host = db.session.get(Host, self.hosts[name])
            assert host is not None
            db.session.expunge(host)
            return host


ANSWERS: dict[str, Any] = {
    "lyon-direct": _result(_status(2, [("Deferred: Connection refused by mx.ourtest.com.", 2)],
                                   smarthost=None, oldest=7200)),
    "lyon-ehlo": _result(_status(1, [("Deferred: 421 4.7.0 Try again later, closing "
                                      "connection. (EHLO) unqualified host name", 1)],
                                 smarthost=RELAY, oldest=60)),
    "lyon-down": _result(_status(5, [("Deferred: Connection refused by relay.example.net.",
                                      5)], smarthost=RELAY, oldest=600)),
    "lyon-ok": _result(_status(0, [], smarthost=RELAY)),
    "lyon-gone": HostUnreachable("lyon-gone: connection refused"),
    "brest-direct": _result(_status(1, [("Deferred: Connection refused by mx.ourtest.com.",
                                         1)], smarthost=None, oldest=30)),
}


@pytest.fixture
def fleet(memory_controller: Controller) -> Fleet:
    """Acme (Lyon: six hosts, one never looked at) and Bravo (Brest: one), after a status
    look: lyon-direct and brest-direct have no smarthost, lyon-ehlo's name is refused,
    lyon-down's relay refuses connections, lyon-ok is fine, lyon-gone is unreachable."""
    c = memory_controller
    tenants = {"Acme": c.tenant("Acme"), "Bravo": c.tenant("Bravo")}
    sites = {"Lyon": c.site(tenants["Acme"], "Lyon"), "Brest": c.site(tenants["Bravo"], "Brest")}
    agent = {"url": "http://192.0.2.10:8587", "token": "agent-token-" + "x" * 24,
             "insecure_http": True}
    hosts = {name: c.host(sites["Brest" if name.startswith("brest") else "Lyon"], name,
                          agent=agent)["id"]
             for name in [*ANSWERS, "lyon-new"]}
    world = Fleet(c, hosts, tenants, sites)
    world.run({"action": "collect_status",
               "target": {"hosts": [hosts[name] for name in ANSWERS]}},
              FakeTransports(answers=ANSWERS))
    return world


def test_a_status_result_teaches_the_host_its_causes_age_and_streak(fleet: Fleet) -> None:
    down = fleet.row("lyon-down")
    assert down.causes == [{"cause": "relay_unreachable", "count": 5,
                            "sample": "Deferred: Connection refused by relay.example.net."}]
    assert down.queue_oldest_age_s == 600 and down.unreachable_streak == 0
    assert fleet.row("lyon-ok").causes == []
    assert fleet.row("lyon-new").causes is None
    gone = fleet.row("lyon-gone")
    assert gone.unreachable_streak == 1 and gone.causes is None
    # any job's unreachable result adds one; a reachable one starts again from 0
    fleet.run({"action": "flush_queue", "target": {"hosts": [fleet.hosts["lyon-gone"]]}},
              FakeTransports(default=HostUnreachable("lyon-gone: connection refused")))
    assert fleet.row("lyon-gone").unreachable_streak == 2
    fleet.run({"action": "queue_list", "target": {"hosts": [fleet.hosts["lyon-gone"]]}},
              FakeTransports(default=OperationResult("queue_list", data={
                  "count": 0, "messages": []})))
    assert fleet.row("lyon-gone").unreachable_streak == 0
    # the fleet's rows say it too
    items = {h["name"]: h["last"] for h in fleet.controller.ok("GET", "/v1/fleet")["items"]}
    assert items["lyon-down"]["causes"] == down.causes
    assert items["lyon-down"]["queue_oldest_age_s"] == 600
    assert items["lyon-gone"]["unreachable_streak"] == 0


def test_the_doctor_groups_the_fleet_by_cause(fleet: Fleet) -> None:
    report = fleet.controller.ok("GET", "/v1/doctor")
    assert (report["examined"], report["healthy"], report["unknown"],
            report["unreachable"]) == (7, 1, 2, 1)
    causes = {c["cause"]: c for c in report["causes"]}
    assert list(causes) == ["no_smarthost", "relay_unreachable", "ehlo_refused"]
    direct = causes["no_smarthost"]
    assert (direct["hosts"], direct["messages"]) == (2, 3)
    assert direct["action"]["action"] == "set_smarthost"
    assert [(e["name"], e["site"], e["count"]) for e in direct["examples"]] == [
        ("lyon-direct", "Lyon", 2), ("brest-direct", "Brest", 1)]
    assert causes["ehlo_refused"]["action"]["action"] == "fix_hostname"
    assert causes["relay_unreachable"]["action"]["action"] is None
    assert causes["relay_unreachable"]["title"] == CAUSES["relay_unreachable"].title
    # filters: a tenant, a site, fewer examples
    acme = fleet.controller.ok("GET", f"/v1/doctor?tenant={fleet.tenants['Acme']}")
    assert acme["examined"] == 6 and acme["causes"][0]["hosts"] == 1
    brest = fleet.controller.ok("GET", f"/v1/doctor?site={fleet.sites['Brest']}")
    assert [(c["cause"], c["hosts"]) for c in brest["causes"]] == [("no_smarthost", 1)]
    one = fleet.controller.ok("GET", "/v1/doctor?hosts_per_cause=1")
    assert [len(c["examples"]) for c in one["causes"]] == [1, 1, 1]
    assert one["causes"][0]["examples"][0]["name"] == "lyon-direct"


def test_the_doctor_is_tenant_scoped_and_refuses_bad_filters(fleet: Fleet) -> None:
    c = fleet.controller
    bravo = c.issue("viewer", fleet.tenants["Bravo"])
    report = c.ok("GET", "/v1/doctor", token=bravo)
    assert report["examined"] == 1
    assert [e["name"] for cause in report["causes"] for e in cause["examples"]] == [
        "brest-direct"]
    # another tenant's tenant or site is not found, as everywhere
    for query in (f"tenant={fleet.tenants['Acme']}", f"site={fleet.sites['Lyon']}"):
        answer = c.get(f"/v1/doctor?{query}", token=bravo)
        assert answer.status == 404, answer.json
    for query in ("hosts_per_cause=101", "tenant=0", "site=x"):
        answer = c.get(f"/v1/doctor?{query}")
        assert answer.status == 422, (query, answer.json)
        assert answer.json["message"]


def test_cli_doctor_prints_causes_with_hosts_and_fixes(fleet: Fleet) -> None:
    result = run_cli(fleet.controller, None, "doctor")
    assert result.code == 0, result.err
    assert "7 hosts examined · 1 healthy · 3 causes · 1 unreachable · 2 never looked at" \
        in result.out
    assert "[no_smarthost]: 2 hosts, 3 messages" in result.out
    assert "fix: fix_hostname:" in result.out and "brest-direct" in result.out
    lyon = run_cli(fleet.controller, None, "doctor", "--site", "Lyon", "--hosts-per-cause",
                   "0", "--json")
    assert lyon.code == 0, lyon.err
    doc = lyon.json()
    assert doc["examined"] == 6 and all(c["examples"] == [] for c in doc["causes"])
    unknown = run_cli(fleet.controller, None, "doctor", "--tenant", "Nobody")
    assert unknown.code == 2 and "no tenant named 'Nobody'" in unknown.err


def _browser(controller: Controller, token: str | None = None) -> FlaskClient:
    client: FlaskClient = controller.app.test_client()
    answer = client.post("/ui/login", data={"token": token or controller.admin},
                         headers={"Origin": "http://localhost"})
    assert answer.status_code == 303
    return client


def test_console_doctor_page(fleet: Fleet) -> None:
    answer = _browser(fleet.controller).get("/ui/doctor")
    assert answer.status_code == 200
    html = answer.get_data(as_text=True)
    assert '<a href="/ui/doctor"' in html  # the navigation names the page
    titles = re.findall(r'<h2 id="cause-([a-z_]+)">', html)
    assert titles == ["no_smarthost", "relay_unreachable", "ehlo_refused"]
    assert f"/ui/launch?action=fix_hostname&amp;hosts={fleet.hosts['lyon-ehlo']}" in html
    assert "Deferred: Connection refused by mx.ourtest.com." in html
    viewer = fleet.controller.issue("viewer", fleet.tenants["Bravo"])
    mine = _browser(fleet.controller, viewer).get("/ui/doctor").get_data(as_text=True)
    assert "brest-direct" in mine and "lyon-direct" not in mine
    assert "/ui/launch" not in mine  # viewers launch nothing
    refused = _browser(fleet.controller).get("/ui/doctor?hosts_per_cause=500")
    assert refused.status_code == 422
    assert "hosts_per_cause:" in refused.get_data(as_text=True)


def test_console_doctor_reads_its_query_as_the_api_does(fleet: Fleet) -> None:
    """Before, the page refused a key it does not know (the API ignores it) and took an
    empty hosts_per_cause for the default (the API refuses it)."""
    browser = _browser(fleet.controller)
    for query in ("utm_source=mail", "hosts_per_cause=2&later=1"):
        assert fleet.controller.get(f"/v1/doctor?{query}").status == 200
        answer = browser.get(f"/ui/doctor?{query}")
        assert answer.status_code == 200, (query, answer.get_data(as_text=True)[:2000])
        assert '<h2 id="cause-no_smarthost">' in answer.get_data(as_text=True)
    assert fleet.controller.get("/v1/doctor?hosts_per_cause=").status == 422
    refused = browser.get("/ui/doctor?hosts_per_cause=")
    assert refused.status_code == 422
    assert "hosts_per_cause:" in refused.get_data(as_text=True)
    # the form's own fields left at "any" are sent empty: the whole fleet
    whole = browser.get("/ui/doctor?tenant=&site=")
    assert whole.status_code == 200
    assert "lyon-direct" in whole.get_data(as_text=True)
