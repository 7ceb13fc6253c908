"""The web console in a real browser (Debian's headless chromium through chromedriver)
against a real API server (gunicorn), worker, Redis and lab hosts.

Tenant Acme (site Lyon: a sendmail host through its agent, a Postfix host over SSH) and
tenant Bravo (site Brest: a sendmail host through its agent) hold deferred voicemail. The
steps build on each other and run in file order on one fleet and one browser:

1. sign in by keyboard alone; a status job started on the launch page; the fleet's
   "holding mail" view lists the three hosts with their queues;
2. set the smarthost on Lyon: the dry-run preview shows the diff and changes nothing, the
   real run's job page updates live (no reload) until both hosts are done;
3. flush the site, by keyboard alone on the launch page; the host page shows the queue
   empty and, after its "Read log" button, the Sent line;
4. a viewer's session shows no launch link or button, and its forged POSTs are refused;
5. a form sent without its CSRF token is refused and starts nothing;
6. Acme's session cannot open Bravo's host (404) nor see it in the fleet;
7. every page photographed at laptop width (fleet and job at phone width too, without
   horizontal scroll), the API docs listing every route.

Screenshots go to ``$RELAYFLEET_ARTIFACTS_DIR/console`` (default
``/tmp/relayfleet-artifacts/console``).
"""

from __future__ import annotations

import contextlib
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.select import Select

from tests.browser import Browser, browser
from tests.lab.enrol import SshLogin, host_body
from tests.lab.lab import SINK_PORT, Lab, LabHost
from tests.lab.services import ApiServer, ControllerStack, lab_controller

# No skip without a browser: tests.browser.browser() fails saying what to install.
pytestmark = [pytest.mark.lab, pytest.mark.slow]

#: (lab name, MTA, transport, tenant, site)
FLEET = [("uia", "sendmail", "agent", "Acme", "Lyon"),
         ("uip", "postfix", "ssh", "Acme", "Lyon"),
         ("uib", "sendmail", "agent", "Bravo", "Brest")]
RELAY_HOST = "smarthost.lab.test"
AGENT_HOST, POSTFIX_HOST, BRAVO_HOST = (f"{name}.lab.test" for name, *_ in FLEET)
LYON = [AGENT_HOST, POSTFIX_HOST]
#: how long a job of a few lab hosts may take
JOB_TIMEOUT = 120


@dataclass
class ConsoleFleet:
    """The controller stack, its API server, the lab hosts and what the steps learn."""

    stack: ControllerStack
    server: ApiServer
    #: lab host by FQDN
    hosts: dict[str, LabHost]
    #: host id by FQDN
    ids: dict[str, int]
    tenants: dict[str, int]
    sites: dict[str, int]
    stamp: str
    #: what earlier steps learnt (job ids by what they did)
    jobs: dict[str, int] = field(default_factory=dict)

    def api(self, path: str) -> Any:
        """GET ``path`` through the in-process controller with the admin token."""
        return self.stack.controller.ok("GET", path)

    def token(self, role: str, tenant: str | None = None) -> str:
        """A fresh token with ``role`` (MSP-wide, or scoped to ``tenant``)."""
        return self.stack.controller.issue(role, self.tenants[tenant] if tenant else None)

    def job_total(self) -> int:
        """How many jobs the controller holds."""
        return int(self.api("/v1/jobs")["total"])


@pytest.fixture(scope="module")
def fleet(lab: Lab, client_keys: dict[str, tuple[str, str]], redis_server: Any,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleFleet]:
    """Three lab hosts in two tenants, enrolled, each holding one deferred voicemail, and
    an API server process."""
    workdir = tmp_path_factory.mktemp("console")
    private, public = client_keys["ed25519"]
    stamp = secrets.token_hex(4)
    with lab_controller(lab, redis_server, workdir, 6) as (stack, made):
        controller = stack.controller
        tenants: dict[str, int] = {}
        sites: dict[str, int] = {}
        hosts: dict[str, LabHost] = {}
        ids: dict[str, int] = {}
        for name, mta, transport, tenant, site in FLEET:
            if tenant not in tenants:
                tenants[tenant] = controller.tenant(tenant)
            if site not in sites:
                sites[site] = controller.site(tenants[tenant], site)
            host = lab.add_host(name, "debian", mta=mta)
            made.append(host)
            body = host_body(host, transport, login=SshLogin("root", private, public),
                             tags=["pbx", mta])
            ids[host.fqdn] = int(controller.ok("POST", "/v1/hosts",
                                               {**body, "site_id": sites[site]})["id"])
            hosts[host.fqdn] = host
            host.send_mail(["me@ourtest.com"], subject=f"voicemail {stamp} {host.fqdn}")
        for host in hosts.values():
            host.wait_deferred()
        with ApiServer(stack.env, workdir / "serve.log") as server:
            yield ConsoleFleet(stack, server, hosts, ids, tenants, sites, stamp)


@pytest.fixture(scope="module")
def web(fleet: ConsoleFleet, request: pytest.FixtureRequest) -> Iterator[Browser]:
    """One headless chromium on the API server for the whole module; the screenshots'
    list is written to the terminal at the end."""
    plugins = request.config.pluginmanager
    reporter = plugins.get_plugin("terminalreporter")
    capture = plugins.get_plugin("capturemanager")

    def report(line: str) -> None:
        # past pytest's output capture, which would otherwise swallow it at teardown
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            if reporter is not None:
                reporter.write_line(line)
            else:
                print(line)

    with browser(fleet.server.url, report=report) as session:
        yield session


@pytest.fixture(autouse=True)
def _page_checks(request: pytest.FixtureRequest, web: Browser) -> Iterator[None]:
    """After each step: no page refused a script or style (the console's CSP) or threw,
    and a failed step leaves a screenshot of where the browser was."""
    failed_before = request.session.testsfailed
    web.console_errors()  # start afresh
    yield
    if request.session.testsfailed > failed_before:
        web.laptop()
        web.shot(f"failed-{request.node.name}")
        return
    broken = [line for line in web.console_errors()
              if "Content Security Policy" in line or "Uncaught" in line]
    assert not broken, broken


# -- helpers -------------------------------------------------------------------------------

def sign_out(web: Browser) -> None:
    """Press Sign out if a session is open; end on the sign-in page."""
    web.open("/ui/login")
    if not web.path.startswith("/ui/login"):
        web.button("Sign out").click()
        web.wait(lambda: web.path.startswith("/ui/login"), what="the sign-in page")


def sign_in(web: Browser, token: str) -> None:
    """Sign in with ``token`` through the form (signing out first); end on the fleet."""
    sign_out(web)
    web.by_label("API token").send_keys(token)
    web.button("Sign in").click()
    web.wait(lambda: web.path.startswith("/ui/fleet"), what="the fleet page after sign-in")


def job_id_of(web: Browser) -> int:
    """The id of the job whose page the browser shows."""
    found = re.fullmatch(r"/ui/jobs/(\d+)(\?.*)?", web.path)
    assert found, web.path
    return int(found[1])


def progress(web: Browser) -> str:
    """The job page's progress line (``running: 1 of 2 hosts done.``)."""
    return " ".join(web.text("#job-live [role=status]").split())


def wait_finished(web: Browser, what: str = "the job to finish") -> None:
    """Wait (the page updating itself) until the job page says its job has finished."""
    web.wait(lambda: web.find("#job-live").get_attribute("data-live") == "finished",
             timeout=JOB_TIMEOUT, what=what)


def launch(web: Browser, action_label: str) -> None:
    """Open the launch page and choose an action by its link."""
    web.open("/ui/launch")
    web.driver.find_element("link text", action_label).click()
    web.wait(lambda: web.find("h1").text.endswith(action_label), what=action_label)


def choose(select: WebElement, *texts: str) -> None:
    """Select the options of a list by their text."""
    chooser = Select(select)
    for text in texts:
        chooser.select_by_visible_text(text)


def row_of(web: Browser, host: str) -> WebElement:
    """The table row whose first cell names ``host``."""
    for row in web.find_all("tr"):
        cells = row.find_elements("css selector", "td")
        if cells and cells[0].text.strip() == host:
            return row
    raise AssertionError(f"no row for {host} on {web.path}")


def cell(row: WebElement, label: str) -> str:
    """A row's cell by its data-label."""
    return str(row.find_element("css selector", f'td[data-label="{label}"]').text).strip()


def subjects(lab: Lab) -> set[str]:
    """The Subject of every message the lab's smarthost sink accepted."""
    return {next((ln[9:] for ln in m["data"].splitlines() if ln.startswith("Subject: ")), "")
            for m in lab.smarthost.messages()}


def config_files(host: LabHost) -> dict[str, bytes | None]:
    """The MTA configuration a smarthost change edits."""
    if host.mta == "postfix":
        return host.file_snapshot("main.cf")
    return host.file_snapshot("sendmail.mc", "sendmail.cf")


# -- the steps -------------------------------------------------------------------------------

def test_sign_in_by_keyboard_and_see_the_hosts_holding_mail(fleet: ConsoleFleet,
                                                          web: Browser) -> None:
    web.open("/")
    assert web.path.startswith("/ui/login?next="), web.path
    web.shot("login")
    # The token field has the focus on arrival and is reached by Tab from the page's top.
    assert web.active().get_attribute("id") == "token"
    web.js("document.activeElement.blur()")
    web.tab_to(lambda element: element.get_attribute("id") == "token")
    web.keys(fleet.stack.controller.admin, Keys.ENTER)
    web.wait(lambda: web.path.startswith("/ui/fleet"), what="the fleet after sign-in")
    cookie = web.driver.get_cookie("relayfleet_session")
    assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict", cookie
    assert web.js("return document.cookie").find("relayfleet_session") < 0
    for host in fleet.hosts:
        assert host in web.text("main"), host

    # Collect every host's status from the launch page.
    launch(web, "Collect status")
    web.by_label("All hosts this account may touch").click()
    web.button("Start collect status").click()
    web.wait(lambda: web.path.startswith("/ui/jobs/"), what="the job page")
    fleet.jobs["status"] = job_id_of(web)
    wait_finished(web)
    assert progress(web).startswith("succeeded: 3 of 3 hosts done"), progress(web)

    web.open("/ui/fleet")
    counts = " ".join(web.text(".counts").split())
    assert "3 hosts" in counts and "3 holding mail" in counts, counts
    web.driver.find_element("partial link text", "holding mail").click()
    web.wait(lambda: "view=holding_mail" in web.path, what="the holding-mail view")
    for host in fleet.hosts:
        row = row_of(web, host)
        assert cell(row, "Queue") == "1", (host, row.text)
        assert cell(row, "Reachable") == "yes", (host, row.text)
        assert cell(row, "Smarthost").startswith("direct"), (host, row.text)
    web.shot("fleet-holding-mail")


def test_set_smarthost_preview_then_run_with_live_progress(fleet: ConsoleFleet,
                                                         web: Browser) -> None:
    assert "status" in fleet.jobs, "the sign-in step comes first"
    before = {name: config_files(fleet.hosts[name]) for name in LYON}
    launch(web, "Set smarthost")
    choose(web.by_label("Sites"), "Acme / Lyon")
    web.by_label("Relay host").send_keys(RELAY_HOST)
    web.by_label("Port").send_keys(str(SINK_PORT))
    mx = web.by_label("Look up the relay's MX records")
    assert not mx.is_selected()
    # one host at a time: the real run lasts long enough to be watched
    web.by_label("Hosts at once").send_keys("1")
    web.shot("launch")
    web.button("Preview").click()

    # The dry run on the first host: its diff, live, then the button for the real run.
    web.wait(lambda: web.path.startswith("/ui/launch/preview/"), what="the preview")
    run = web.wait(lambda: web.find("#run-for-real"), timeout=JOB_TIMEOUT,
                   what="the dry run to finish")
    diff = web.text("#launch-preview pre.diff")
    assert re.search(r"^\+define\(`SMART_HOST', ``?\[smarthost\.lab\.test\]", diff, re.M), diff
    assert f"{AGENT_HOST}" in web.text("#launch-preview h2"), web.text("#launch-preview")
    assert run.text == "Run for real on 2 hosts", run.text
    web.shot("preview")
    assert {name: config_files(fleet.hosts[name]) for name in LYON} == before, \
        "the dry run changed a host"

    # The real run: the job page follows it without reloading.
    run.click()
    web.wait(lambda: web.path.startswith("/ui/jobs/"), what="the job page")
    job_id = job_id_of(web)
    fleet.jobs["smarthost"] = job_id
    loaded_as = web.find("#job-live").get_attribute("data-live")
    web.js("window.relayfleetTestMark = 'loaded once'")
    seen = [progress(web)]

    def done() -> bool:
        line = progress(web)
        if line != seen[-1]:
            seen.append(line)
        return web.find("#job-live").get_attribute("data-live") == "finished"

    web.wait(done, timeout=JOB_TIMEOUT, what="the job to finish")
    # The fragment can be swapped between done()'s two reads; once finished it stays.
    done()
    assert loaded_as == "running", f"the job had ended before its page loaded: {seen}"
    assert web.js("return window.relayfleetTestMark") == "loaded once", "the page reloaded"
    assert job_id_of(web) == job_id
    assert len(seen) >= 2 and not seen[0].startswith("succeeded"), seen
    assert seen[-1].startswith("succeeded: 2 of 2 hosts done"), seen
    for name in LYON:
        row = row_of(web, name)
        assert cell(row, "Status") == "succeeded", row.text
        assert cell(row, "Result").startswith(f"changed; now [{RELAY_HOST}]:{SINK_PORT}"), \
            row.text
    # The agent host's diff, opened as a reader does.
    row_of(web, AGENT_HOST).find_element("css selector", "details summary").click()
    diff = web.text("#job-live pre.diff")
    assert re.search(r"^\+define\(`SMART_HOST', ``?\[smarthost\.lab\.test\]", diff, re.M), diff
    web.shot("job")
    doc = fleet.api(f"/v1/jobs/{job_id}")
    assert doc["status"] == "succeeded" and doc["counts"]["succeeded"] == 2, doc
    assert {name: config_files(fleet.hosts[name]) for name in LYON} != before


def test_flush_the_site_by_keyboard_then_the_host_shows_its_queue_empty_and_sent(
        fleet: ConsoleFleet, web: Browser, lab: Lab) -> None:
    assert "smarthost" in fleet.jobs, "the smarthost step comes first"
    # The launch form by keyboard alone: Tab to the action, Enter; Tab to the sites list,
    # Home picks its first (Acme / Lyon); Tab to the start button, Enter.
    web.open("/ui/launch")
    web.js("document.activeElement.blur()")
    web.tab_to(lambda element: element.text.strip() == "Flush queue")
    web.keys(Keys.ENTER)
    web.wait(lambda: "action=flush_queue" in web.path, what="the flush form")
    web.js("document.activeElement.blur()")
    web.tab_to(lambda element: element.get_attribute("id") == "f-sites")
    web.keys(Keys.HOME)
    chosen = [o.text for o in Select(web.find("#f-sites")).all_selected_options]
    assert chosen == ["Acme / Lyon"], chosen
    web.tab_to(lambda element: element.text.startswith("Start flush queue"))
    web.keys(Keys.ENTER)
    web.wait(lambda: web.path.startswith("/ui/jobs/"), what="the flush job's page")
    fleet.jobs["flush"] = job_id_of(web)
    wait_finished(web)
    assert progress(web).startswith("succeeded: 2 of 2 hosts done"), progress(web)
    assert BRAVO_HOST not in web.text("#job-live")
    wanted = {f"voicemail {fleet.stamp} {name}" for name in LYON}
    web.wait(lambda: wanted <= subjects(lab), timeout=60, what="the voicemail at the sink")

    # The agent host's page: its queue as the flush left it.
    web.driver.find_element("link text", AGENT_HOST).click()
    web.wait(lambda: web.path == f"/ui/hosts/{fleet.ids[AGENT_HOST]}", what="the host page")
    assert "The queue is empty" in web.text("section[aria-labelledby=h-queue]")
    # Its "Read log" button (a job on this host alone), then back to it from the job.
    web.button("Read log").click()
    web.wait(lambda: web.path.startswith("/ui/jobs/"), what="the read-log job's page")
    wait_finished(web)
    assert progress(web).startswith("succeeded: 1 of 1 host done"), progress(web)
    web.driver.find_element("link text", AGENT_HOST).click()
    web.wait(lambda: web.path == f"/ui/hosts/{fleet.ids[AGENT_HOST]}", what="the host page")
    log = web.text("section[aria-labelledby=h-log]")
    assert re.search(r"\b[1-9]\d* sent\b", log), log
    # the voicemail's delivery through the smarthost (not its local submission's "Sent")
    sent = [cell(row, "Line") for row in web.find_all("table.log tbody tr")
            if cell(row, "Outcome").startswith("✓ sent")]
    assert any(re.search(r"to=<?me@ourtest\.com>?, .*relay=smarthost\.lab\.test\.?[\[ ].*"
                         r"stat=Sent", line) for line in sent), (sent, log)
    assert "The queue is empty" in web.text("section[aria-labelledby=h-queue]")
    web.shot("host")


def test_a_viewer_sees_no_launch_and_its_forged_posts_are_refused(fleet: ConsoleFleet,
                                                                web: Browser) -> None:
    assert "flush" in fleet.jobs, "the flush step comes first"
    sign_in(web, fleet.token("viewer"))
    assert "Launch" not in web.links(), web.links()
    web.open(f"/ui/hosts/{fleet.ids[AGENT_HOST]}")
    assert web.buttons() == ["Sign out"], web.buttons()
    assert not [text for text in web.links() if text.startswith("Flush")], web.links()
    web.open(f"/ui/jobs/{fleet.jobs['smarthost']}")
    assert web.buttons() == ["Sign out"], web.buttons()
    web.open("/ui/launch")
    assert "(HTTP 403)" in web.text("h1"), web.text("main")
    web.shot("viewer-launch-403")

    # A forged launch: the session's own cookie and CSRF token, sent by a script.
    web.open("/ui/fleet")
    csrf = web.find("input[name=csrf_token]").get_attribute("value") or ""
    assert csrf
    jobs_before = fleet.job_total()
    form = {"csrf_token": csrf, "action": "flush_queue", "all": "1", "intent": "run",
            "launch_key": f"console-{secrets.token_hex(16)}"}
    status, page = web.fetch("/ui/launch", "POST", form)
    assert status == 403, (status, page[:500])
    status, page = web.fetch(f"/ui/jobs/{fleet.jobs['flush']}/retry", "POST",
                             {"csrf_token": csrf})
    assert status == 403, (status, page[:500])
    assert fleet.job_total() == jobs_before


def test_a_form_without_its_csrf_token_is_refused(fleet: ConsoleFleet, web: Browser) -> None:
    sign_in(web, fleet.stack.controller.admin)
    jobs_before = fleet.job_total()
    launch(web, "Collect status")
    web.by_label("All hosts this account may touch").click()
    removed = web.js("""
        const form = document.querySelector("main form[method=post]");
        const field = form.querySelector("input[name=csrf_token]");
        field.remove();
        return form.querySelectorAll("input[name=csrf_token]").length;""")
    assert removed == 0
    web.button("Start collect status").click()
    web.wait(lambda: "(HTTP 400)" in web.text("h1"), what="the refusal")
    assert "missing its security token" in web.text("main"), web.text("main")
    web.shot("csrf-400")
    assert fleet.job_total() == jobs_before


def test_a_tenant_session_cannot_open_another_tenants_host(fleet: ConsoleFleet,
                                                         web: Browser) -> None:
    sign_in(web, fleet.token("operator", "Acme"))
    fleet_text = web.text("main")
    for name in LYON:
        assert name in fleet_text, name
    assert BRAVO_HOST not in fleet_text
    bravo = fleet.ids[BRAVO_HOST]
    web.open(f"/ui/hosts/{bravo}")
    assert "(HTTP 404)" in web.text("h1"), web.text("main")
    assert BRAVO_HOST not in web.text("body")
    web.shot("tenant-404")
    status, page = web.fetch(f"/ui/hosts/{bravo}")
    assert status == 404 and BRAVO_HOST not in page, status
    # Its own host opens.
    web.open(f"/ui/hosts/{fleet.ids[AGENT_HOST]}")
    assert web.text("h1") == AGENT_HOST


def test_every_page_at_laptop_width_fleet_and_job_at_phone_width(fleet: ConsoleFleet,
                                                               web: Browser) -> None:
    assert "smarthost" in fleet.jobs, "the smarthost step comes first"
    sign_in(web, fleet.stack.controller.admin)
    pages = {"fleet": "/ui/fleet", "jobs": "/ui/jobs", "audit": "/ui/audit",
             "tokens": "/ui/tokens", "launch-form": "/ui/launch?action=set_smarthost",
             "job-finished": f"/ui/jobs/{fleet.jobs['smarthost']}",
             "host-postfix": f"/ui/hosts/{fleet.ids[POSTFIX_HOST]}"}
    web.laptop()
    for name, path in pages.items():
        web.open(path)
        assert "(HTTP" not in web.text("h1"), (path, web.text("main"))
        web.shot(name)

    # The API docs: Swagger UI from the controller itself, every route of the API.
    spec = fleet.api("/openapi.json")
    operations = sorted(f"{method.upper()} {path}" for path, item in spec["paths"].items()
                        for method in item if method != "parameters")
    web.open("/ui/docs")
    web.wait(lambda: len(web.find_all(".opblock")) == len(operations), timeout=30,
             what=f"{len(operations)} operations in Swagger UI")
    shown = sorted(web.js("""
        return Array.from(document.querySelectorAll(".opblock"), block =>
            block.querySelector(".opblock-summary-method").textContent.trim() + " " +
            block.querySelector(".opblock-summary-path").getAttribute("data-path"));"""))
    assert shown == operations, set(shown) ^ set(operations)
    web.shot("docs")

    # A phone: the same pages, nothing wider than the screen.
    web.phone()
    try:
        for name, path in (("fleet", "/ui/fleet"),
                           ("job", f"/ui/jobs/{fleet.jobs['smarthost']}")):
            web.open(path)
            assert web.horizontal_overflow() <= 1, (path, web.horizontal_overflow())
            web.shot(f"{name}-phone")
    finally:
        web.laptop()
