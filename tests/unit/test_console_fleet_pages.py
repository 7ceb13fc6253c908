"""The console's fleet, host, jobs and job pages over a real controller app (SQLite, the
in-memory broker), signed in through the sign-in form like a browser.

What the hosts answered comes from real lanes run here against scripted hosts
(:class:`controller.testing.FakeTransports`): the host rows and job results the pages read
are the ones a worker would have written.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flask.testing import FlaskClient

from controller import inventory as inv
from controller.auth import Principal
from controller.db import db
from controller.lanes import Lane
from controller.testing import FakeTransports
from shared.errors import HostUnreachable
from shared.results import OperationResult, Step
from tests.controller_client import Controller

AGENT_TOKEN = "agent-token-" + "s3cr" * 6
RELAY = {"host": "relay.example.net", "port": 587, "mx": False, "tls": {"mode": "encrypt"}}
DEFERRED = "Deferred: Connection refused by relay.example.net."


def _status(count: int, oldest: int | None, *, smarthost: dict[str, Any] | None = None,
            in_sync: bool = True) -> OperationResult:
    return OperationResult("collect_status", data={
        "hostname": "pbx", "fqdn": "pbx.example.com",
        "mta": {"kind": "sendmail", "version": "8.17.1", "running": True},
        "smarthost": smarthost, "config_in_sync": in_sync,
        "queue": {"count": count, "oldest_age_s": oldest},
        "hosts_file": {"ok": True, "problems": []}})


def _record(stat: str, queue_id: str, dsn: str) -> dict[str, Any]:
    return {"timestamp": "2027-01-20T10:00:00", "host": "pbx", "program": "sm-mta",
            "pid": 42, "queue_id": queue_id, "kind": "delivery",
            "fields": {"to": "<voicemail@example.com>", "dsn": dsn, "stat": stat},
            "message": f"to=<voicemail@example.com>, dsn={dsn}, stat={stat}",
            "recipients": ["voicemail@example.com"], "problem": None}


@dataclass
class World:
    """Two tenants' hosts after a status run, and a signed-in browser per token."""

    controller: Controller
    hosts: dict[str, int]
    tenants: dict[str, int]
    sites: dict[str, int]
    private_key: str
    host_key_fingerprint: str
    status_job: int

    def browser(self, token: str | None = None) -> FlaskClient:
        """A test client signed in with ``token`` (the admin token by default)."""
        client: FlaskClient = self.controller.app.test_client()
        answer = client.post("/ui/login", data={"token": token or self.controller.admin},
                             headers={"Origin": "http://localhost"})
        assert answer.status_code == 303, answer.get_data(as_text=True)[:500]
        return client

    def run(self, body: dict[str, Any], fake: FakeTransports, token: str | None = None) -> int:
        """Start a job through the API and run it to its end here; its id."""
        job = self.controller.start_job(body, token)
        with self.controller.app.app_context():
            Lane(job, 0, transports=fake, send=lambda *args, **kwargs: None).run()
        return job


def page(client: FlaskClient, path: str, status: int = 200) -> str:
    """GET a page that must answer ``status``; its HTML."""
    answer = client.get(path)
    assert answer.status_code == status, (path, answer.status_code,
                                          answer.get_data(as_text=True)[:800])
    return answer.get_data(as_text=True)


def csrf(html: str) -> str:
    """The CSRF token a page's forms carry."""
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, "no CSRF field on the page"
    return found.group(1)


def rows(html: str) -> list[str]:
    """The host names the fleet table lists, in order."""
    return re.findall(r'<a href="/ui/hosts/\d+">([^<]+)</a>', html)


@pytest.fixture
def world(memory_controller: Controller) -> World:
    """Acme (Lyon: two agent hosts and an SSH host) and Bravo (Brest: one agent host),
    after a status run: lyon-1 holds 3 messages, lyon-2 relays through a smarthost and is
    out of sync, the SSH host is unreachable, brest-1 holds 5."""
    c = memory_controller
    tenants = {"Acme": c.tenant("Acme"), "Bravo": c.tenant("Bravo")}
    sites = {"Lyon": c.site(tenants["Acme"], "Lyon"), "Brest": c.site(tenants["Bravo"], "Brest")}
    agent = {"url": "http://192.0.2.10:8587", "token": AGENT_TOKEN, "insecure_http": True}
    key = Ed25519PrivateKey.generate()
    private_key = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.OpenSSH,
                                    serialization.NoEncryption()).decode()
    host_public = Ed25519PrivateKey.generate().public_key()
    host_key = host_public.public_bytes(serialization.Encoding.OpenSSH,
                                        serialization.PublicFormat.OpenSSH).decode()
    raw = host_public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    # the OpenSSH fingerprint: SHA-256 of the key's wire form, base64 without padding
    wire = b"".join(len(part).to_bytes(4, "big") + part for part in (b"ssh-ed25519", raw))
    fingerprint = "SHA256:" + base64.b64encode(hashlib.sha256(wire).digest()).decode().rstrip("=")
    hosts = {
        "pbx-lyon-1": c.host(sites["Lyon"], "pbx-lyon-1", agent=agent, tags=["pbx"])["id"],
        "pbx-lyon-2": c.host(sites["Lyon"], "pbx-lyon-2", agent=agent)["id"],
        "pbx-lyon-ssh": c.host(sites["Lyon"], "pbx-lyon-ssh", transport="ssh", agent=None,
                               ssh={"username": "relay", "private_key": private_key,
                                    "host_key": host_key, "port": 2222})["id"],
        "pbx-brest-1": c.host(sites["Brest"], "pbx-brest-1", agent=agent)["id"],
    }
    world = World(c, hosts, tenants, sites, private_key, fingerprint, 0)
    world.status_job = world.run(
        {"action": "collect_status", "target": {"all": True}},
        FakeTransports(answers={
            "pbx-lyon-1": _status(3, 7200 + 12 * 60),
            "pbx-lyon-2": _status(0, None, smarthost=RELAY, in_sync=False),
            "pbx-lyon-ssh": HostUnreachable("pbx-lyon-ssh: connection refused"),
            "pbx-brest-1": _status(5, 60)}))
    return world


# -- fleet ---------------------------------------------------------------------------------

def test_the_fleet_counts_every_host_and_lists_them_per_tenant_and_site(world: World) -> None:
    html = page(world.browser(), "/ui/fleet")
    counts = dict((label, int(n)) for n, label in re.findall(r"<b>(\d+)</b> ([a-z ]+)<", html))
    assert counts == {"hosts": 4, "holding mail": 2, "queued messages": 8, "unreachable": 1,
                      "without smarthost": 2, "out of sync": 1, "never seen": 1}
    hosts = html[html.index('<table class="responsive fleet">'):]
    assert hosts.index("Acme · Lyon") < hosts.index("pbx-lyon-1") < hosts.index("Bravo · Brest")
    assert rows(html) == ["pbx-lyon-1", "pbx-lyon-2", "pbx-lyon-ssh", "pbx-brest-1"]
    lyon2 = html[html.index("pbx-lyon-2</a>"):html.index("pbx-lyon-ssh</a>")]
    assert "[relay.example.net]:587 tls=encrypt" in lyon2
    assert '<td data-label="In sync" class="bad">NO</td>' in lyon2
    lyon1 = html[html.index("pbx-lyon-1</a>"):html.index("pbx-lyon-2</a>")]
    # the oldest message's age is what the status measured (the host row has no column)
    assert '<td data-label="Queue" class="warn">3</td>' in lyon1
    assert "2h 12m <small>(status" in lyon1 and "direct (no smarthost)" in lyon1
    ssh = html[html.index("pbx-lyon-ssh</a>"):html.index("pbx-brest-1</a>")]
    assert '<td data-label="Reachable" class="bad">NO</td>' in ssh
    assert '<td data-label="Last seen">never</td>' in ssh


def test_holding_mail_and_out_of_sync_views(world: World) -> None:
    browser = world.browser()
    holding = page(browser, "/ui/fleet?view=holding_mail")
    assert rows(holding) == ["pbx-lyon-1", "pbx-brest-1"]
    assert 'href="/ui/fleet?view=holding_mail" aria-current="page"' in holding
    assert rows(page(browser, "/ui/fleet?view=out_of_sync")) == ["pbx-lyon-2"]
    # a flush that empties lyon-1 takes it out of the view (the API's holding_mail query)
    world.run({"action": "flush_queue", "target": {"hosts": [world.hosts["pbx-lyon-1"]]}},
              FakeTransports(default=OperationResult("flush_queue", data={
                  "before": 3, "after": 0, "deliveries": [], "remaining": []})))
    holding = page(browser, "/ui/fleet?view=holding_mail")
    assert rows(holding) == ["pbx-brest-1"]
    assert "<b>1</b> holding mail" in holding


def test_filters_paging_and_refused_filters(world: World) -> None:
    browser = world.browser()
    lyon = world.sites["Lyon"]
    assert rows(page(browser, f"/ui/fleet?site_id={lyon}&name=&tag=")) == [
        "pbx-lyon-1", "pbx-lyon-2", "pbx-lyon-ssh"]
    assert rows(page(browser, f"/ui/fleet?tenant_id={world.tenants['Bravo']}")) == [
        "pbx-brest-1"]
    assert rows(page(browser, "/ui/fleet?tag=pbx")) == ["pbx-lyon-1"]
    assert rows(page(browser, "/ui/fleet?name=ssh")) == ["pbx-lyon-ssh"]
    assert rows(page(browser, "/ui/fleet?transport=ssh&view=holding_mail")) == []
    first = page(browser, "/ui/fleet?limit=2")
    assert rows(first) == ["pbx-lyon-1", "pbx-lyon-2"]
    assert 'href="/ui/fleet?limit=2&amp;offset=2" rel="next"' in first
    assert rows(page(browser, "/ui/fleet?limit=2&offset=2")) == ["pbx-lyon-ssh", "pbx-brest-1"]
    refused = page(browser, "/ui/fleet?transport=ftp&view=sideways", 422)
    assert "transport:" in refused and "view:" in refused and rows(refused) == []
    assert "name: NUL characters are not accepted" in page(browser, "/ui/fleet?name=a%00b", 422)


def test_out_of_sync_is_a_service_filter_as_the_summary_counts_it(world: World) -> None:
    with world.controller.app.app_context():
        who = Principal(0, "test", "viewer", None)
        names = {flag: sorted(host.name for host in db.session.scalars(
            inv.host_query(who, {"out_of_sync": flag}))) for flag in (True, False)}
        summary = inv.fleet_summary(db.session, who)
    assert names[True] == ["pbx-lyon-2"] and summary["out_of_sync"] == 1
    # never seen is not known to be out of sync
    assert names[False] == ["pbx-brest-1", "pbx-lyon-1", "pbx-lyon-ssh"]


def test_a_tenant_sees_only_its_hosts_and_jobs(world: World) -> None:
    c = world.controller
    bravo_job = c.start_job({"action": "collect_status", "target": {"all": True}},
                            c.issue("operator", world.tenants["Bravo"]))
    acme = world.browser(c.issue("viewer", world.tenants["Acme"]))
    html = page(acme, "/ui/fleet")
    assert rows(html) == ["pbx-lyon-1", "pbx-lyon-2", "pbx-lyon-ssh"]
    assert "<b>3</b> hosts" in html and "Bravo" not in html
    assert page(acme, f"/ui/fleet?tenant_id={world.tenants['Bravo']}").count("/ui/hosts/") == 0
    page(acme, f"/ui/hosts/{world.hosts['pbx-brest-1']}", 404)
    page(acme, f"/ui/jobs/{bravo_job}", 404)
    page(acme, f"/ui/jobs/{bravo_job}/live", 404)
    # the MSP's own job is not the tenant's either, as in the API
    page(acme, f"/ui/jobs/{world.status_job}", 404)
    assert f"/ui/jobs/{bravo_job}\"" not in page(acme, "/ui/jobs")
    # its own host's page: the host's state, but no result of a job it may not open
    lyon = page(acme, f"/ui/hosts/{world.hosts['pbx-lyon-1']}")
    assert "3 messages" in lyon and "No job has included this host yet." in lyon
    assert "/ui/jobs/" not in lyon.replace('href="/ui/jobs"', "")
    assert f"/ui/jobs/{bravo_job}\"" in page(world.browser(), "/ui/jobs")


def test_signed_out_pages_send_the_browser_to_sign_in(world: World) -> None:
    answer = world.controller.app.test_client().get("/ui/fleet?view=holding_mail")
    assert answer.status_code == 303
    assert answer.headers["Location"].startswith("/ui/login?next=")


# -- host ------------------------------------------------------------------------------------

def test_the_host_page_shows_state_queue_log_and_jobs(world: World) -> None:
    host = world.hosts["pbx-lyon-1"]
    target = {"hosts": [host]}
    world.run({"action": "queue_list", "target": target},
              FakeTransports(default=OperationResult("queue_list", data={
                  "count": 1, "sections": {"mqueue": 1}, "messages": [{
                      "id": "50KAbc012345", "size": 2048, "queued_at": "2027-01-20T08:00:00",
                      "sender": "pbx@example.com", "recipients": ["voicemail@example.com"],
                      "reason": DEFERRED, "flags": "", "section": "mqueue",
                      "quarantine": None, "reasons": {}, "processing": False}]})))
    log_job = world.run({"action": "read_log", "target": target},
                        FakeTransports(default=OperationResult("read_log", data={
                            "records": [_record(DEFERRED, "50KAbc012345", "4.0.0"),
                                        _record("Sent (Ok: queued)", "50KAbd000001", "2.0.0")],
                            "summary": {"deliveries": 2, "by_stat": {}, "sent": 1,
                                        "deferred": 1, "bounced": 0, "other": 0,
                                        "local_handoffs": 0, "problems": []}})))
    html = page(world.browser(), f"/ui/hosts/{host}")
    assert "Acme · Lyon" in html and "tags: pbx" in html
    assert "3 messages; oldest 2h 12m" in html
    queue = html[html.index('id="h-queue"'):html.index('id="h-log"')]
    assert "50KAbc012345" in queue and f'<strong class="bad">{DEFERRED}</strong>' in queue
    log = html[html.index('id="h-log"'):html.index('id="h-jobs"')]
    assert "1 sent, 1 deferred, 0 bounced" in log
    assert '<td data-label="Outcome" class="bad">deferred' in log
    assert '<td data-label="Outcome" class="ok">✓ sent' in log
    assert f'href="/ui/jobs/{log_job}"' in log
    jobs = html[html.index('id="h-jobs"'):]
    assert [int(j) for j in re.findall(r'href="/ui/jobs/(\d+)">job', jobs)] == sorted(
        [log_job, log_job - 1, world.status_job], reverse=True)
    # an admin may run jobs: the host's buttons open the launch page prefilled
    assert f'href="/ui/launch?action=flush_queue&amp;hosts={host}"' in html


def test_after_a_flush_the_queue_is_empty_and_the_sent_line_shows(world: World) -> None:
    host = world.hosts["pbx-brest-1"]
    world.run({"action": "flush_queue", "target": {"hosts": [host]}},
              FakeTransports(default=OperationResult("flush_queue", data={
                  "before": 5, "after": 0, "remaining": [],
                  "deliveries": [{"queue_id": "50KAbc012345", "recipient": "voicemail@ex.com",
                                  "outcome": "sent", "text": "Sent (2.0.0 Ok: queued)"}]})))
    html = page(world.browser(), f"/ui/hosts/{host}")
    assert "The queue is empty" in html and "queue 5 → 0, 1 sent" in html
    assert '<td data-label="Outcome" class="ok">✓ sent</td>' in html
    assert "Sent (2.0.0 Ok: queued)" in html
    # no status since the flush: the fleet does not show the age it measured before it
    fleet = page(world.browser(), "/ui/fleet?view=all")
    assert "(status" not in fleet[fleet.index("pbx-brest-1</a>"):]


def test_the_host_page_shows_settings_and_never_a_secret(world: World) -> None:
    browser = world.browser()
    ssh = page(browser, f"/ui/hosts/{world.hosts['pbx-lyon-ssh']}")
    assert "relay@192.0.2.10 port 2222 · by key" in ssh
    # the pinned key as people compare it: its fingerprint
    assert f"ssh-ed25519 {world.host_key_fingerprint}" in ssh.replace("<wbr>", "")
    assert "Last error" in ssh and "connection refused" in ssh
    agent = page(browser, f"/ui/hosts/{world.hosts['pbx-lyon-2']}")
    assert "http://192.0.2.10:8587 · token: stored" in agent
    for html in (ssh, agent, page(browser, "/ui/fleet"),
                 page(browser, f"/ui/jobs/{world.status_job}")):
        assert AGENT_TOKEN not in html
        assert "PRIVATE KEY" not in html
        assert world.private_key.splitlines()[1] not in html


def test_an_unknown_host_is_404(world: World) -> None:
    page(world.browser(), "/ui/hosts/999999", 404)


def test_one_click_reads_start_a_job_on_the_host_alone(world: World) -> None:
    c = world.controller
    host = world.hosts["pbx-lyon-1"]
    operator = world.browser(c.issue("operator", world.tenants["Acme"]))
    html = page(operator, f"/ui/hosts/{host}")
    assert html.count(f'action="/ui/hosts/{host}/run"') == 3
    answer = operator.post(f"/ui/hosts/{host}/run",
                           data={"csrf_token": csrf(html), "action": "queue_list"})
    assert answer.status_code == 303
    job = int(answer.headers["Location"].rsplit("/", 1)[1])
    doc = c.ok("GET", f"/v1/jobs/{job}")
    assert doc["action"] == "queue_list" and doc["target"] == {"hosts": [host]}
    assert [r["host"] for r in doc["results"]] == ["pbx-lyon-1"]
    assert operator.post(f"/ui/hosts/{host}/run", data={
        "csrf_token": csrf(html), "action": "flush_queue"}).status_code == 422
    assert operator.post(f"/ui/hosts/{world.hosts['pbx-brest-1']}/run", data={
        "csrf_token": csrf(html), "action": "queue_list"}).status_code == 404
    viewer = world.browser(c.issue("viewer"))
    seen = page(viewer, f"/ui/hosts/{host}")
    assert "/run" not in seen and "/ui/launch?" not in seen
    assert viewer.post(f"/ui/hosts/{host}/run", data={
        "csrf_token": csrf(seen), "action": "queue_list"}).status_code == 403
    assert c.ok("GET", "/v1/jobs")["total"] == 2


# -- jobs ------------------------------------------------------------------------------------

def test_the_jobs_list_is_newest_first_with_counts_and_who(world: World) -> None:
    queued = world.controller.start_job({"action": "diagnose", "target": {"all": True}})
    browser = world.browser()
    html = page(browser, "/ui/jobs")
    assert [int(j) for j in re.findall(r'href="/ui/jobs/(\d+)">job', html)] == [
        queued, world.status_job]
    status_row = html[html.index(f">job {world.status_job}<"):]
    assert '<td data-label="Status" class="state-partial">partial</td>' in status_row
    assert "3 of 4" in status_row and "1 (1 unreachable)" in status_row
    assert "test admin" in status_row
    assert f">job {queued}<" not in page(browser, "/ui/jobs?status=partial")
    assert f">job {queued}<" in page(browser, "/ui/jobs?action=diagnose&status=")
    assert "status:" in page(browser, "/ui/jobs?status=sleeping", 422)


def test_a_queued_job_page_is_live_and_its_fragment_is_the_same_part(world: World) -> None:
    job = world.controller.start_job({"action": "collect_status",
                                      "target": {"sites": [world.sites["Lyon"]]}})
    browser = world.browser()
    html = page(browser, f"/ui/jobs/{job}")
    assert f'data-live-url="/ui/jobs/{job}/live" data-live="running"' in html
    assert '<progress id="job-bar" max="3" value="0">' in html
    assert '<li class="state-pending"><b>3</b> pending</li>' in html
    assert 'href="/ui/jobs/' in html and "refresh</a>" in html
    live = page(browser, f"/ui/jobs/{job}/live")
    assert live.lstrip().startswith('<section id="job-live"') and "<html" not in live
    assert live.strip() in html.replace("\r\n", "\n")
    # the job runs: the fragment now says it has finished (the script stops polling)
    with world.controller.app.app_context():
        Lane(job, 0, transports=FakeTransports(answers={
            "pbx-lyon-ssh": HostUnreachable("pbx-lyon-ssh: connection refused")},
            default=_status(2, 30)), send=lambda *a, **k: None).run()
    live = page(browser, f"/ui/jobs/{job}/live")
    assert 'data-live="finished"' in live and '<progress id="job-bar" max="3" value="3">' in live
    # failures first, with their reason
    assert live.index("pbx-lyon-ssh") < live.index("pbx-lyon-1")
    assert '<td data-label="Status" class="state-unreachable">unreachable</td>' in live
    assert "pbx-lyon-ssh: connection refused" in live
    assert "2 queued (oldest 30s); direct (no smarthost)" in live


def test_a_dry_run_shows_each_hosts_diff_and_steps(world: World) -> None:
    diff = "--- a/sendmail.mc\n+++ b/sendmail.mc\n@@ -1 +1 @@\n-dnl\n+define(`SMART_HOST')\n"
    job = world.run({"action": "set_smarthost", "target": {"hosts": [world.hosts["pbx-lyon-1"]]},
                     "params": {"host": "relay.example.net", "port": 587,
                                "auth": {"username": "pbx", "password": "pw-never-shown"}},
                     "options": {"dry_run": True}},
                    FakeTransports(default=OperationResult(
                        "set_smarthost", changed=False,
                        steps=[Step("render", ["m4", "sendmail.mc"], 0, 0.2, True, "ok")],
                        data={"diff": diff, "dry_run": True})))
    html = page(world.browser(), f"/ui/jobs/{job}")
    assert "set_smarthost (dry run)" in html and "pw-never-shown" not in html
    assert '<span class="del">-dnl</span>' in html
    assert "<span class=\"add\">+define(`SMART_HOST&#39;)</span>" in html
    assert '<span>+++ b/sendmail.mc</span>' in html
    assert "would change (2 lines)" in html
    assert re.search(r'<details id="steps-\d+">\s*<summary>1 step</summary>', html)
    assert "<code>m4 sendmail.mc</code>" in html


# -- retry and cancel --------------------------------------------------------------------------

def test_a_viewer_sees_no_buttons_and_its_posts_are_refused(world: World) -> None:
    job = world.controller.start_job({"action": "collect_status", "target": {"all": True}})
    viewer = world.browser(world.controller.issue("viewer"))
    html = page(viewer, f"/ui/jobs/{job}")
    assert "job-cancel" not in html and "/cancel" not in html
    answer = viewer.post(f"/ui/jobs/{job}/cancel", data={"csrf_token": csrf(html)})
    assert answer.status_code == 403
    assert world.controller.ok("GET", f"/v1/jobs/{job}")["status"] == "queued"
    failed = page(viewer, f"/ui/jobs/{world.status_job}")
    assert "job-retry" not in failed
    assert viewer.post(f"/ui/jobs/{world.status_job}/retry",
                       data={"csrf_token": csrf(failed)}).status_code == 403
    assert world.controller.ok("GET", "/v1/jobs")["total"] == 2


def test_an_operator_cancels_a_running_job_and_retries_failed_hosts(world: World) -> None:
    job = world.controller.start_job({"action": "collect_status", "target": {"all": True}})
    operator = world.browser(world.controller.issue("operator"))
    html = page(operator, f"/ui/jobs/{job}")
    assert 'id="job-cancel"' in html and "job-retry" not in html
    answer = operator.post(f"/ui/jobs/{job}/cancel", data={"csrf_token": csrf(html)})
    assert answer.status_code == 303 and answer.headers["Location"] == f"/ui/jobs/{job}"
    assert world.controller.ok("GET", f"/v1/jobs/{job}")["status"] == "cancelled"
    after = page(operator, f"/ui/jobs/{job}")
    assert "cancelled" in after and 'data-live="finished"' in after
    assert 'id="job-cancel"' not in after
    # cancelling again: the service's refusal is said on the page, nothing breaks
    again = operator.post(f"/ui/jobs/{job}/cancel", data={"csrf_token": csrf(after)},
                          follow_redirects=True)
    assert "has already finished" in again.get_data(as_text=True)

    failed = page(operator, f"/ui/jobs/{world.status_job}")
    assert "Retry the 1 failed or unreachable host" in failed
    answer = operator.post(f"/ui/jobs/{world.status_job}/retry",
                           data={"csrf_token": csrf(failed)})
    assert answer.status_code == 303
    retry = int(answer.headers["Location"].rsplit("/", 1)[1])
    doc = world.controller.ok("GET", f"/v1/jobs/{retry}")
    assert doc["retry_of"] == world.status_job
    assert [r["host"] for r in doc["results"]] == ["pbx-lyon-ssh"]
    shown = page(operator, f"/ui/jobs/{retry}")
    assert f'href="/ui/jobs/{world.status_job}">job {world.status_job}</a>' in shown
    audit = world.controller.ok("GET", "/v1/audit")["items"]
    assert {"action": "POST /ui/jobs/{job_id}/retry", "target": f"job:{retry}"}.items() <= \
        audit[0].items()


def test_a_post_without_its_csrf_token_is_refused(world: World) -> None:
    job = world.controller.start_job({"action": "collect_status", "target": {"all": True}})
    operator = world.browser(world.controller.issue("operator"))
    assert operator.post(f"/ui/jobs/{job}/cancel").status_code == 400
    assert world.controller.ok("GET", f"/v1/jobs/{job}")["status"] == "queued"
