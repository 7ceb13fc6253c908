"""The console's launch (with its dry-run preview), audit, tokens and API docs pages, on a
real controller app (SQLite, in-memory broker) signed in through the sign-in form.

Jobs are checked through the API; a dry run is carried out by running its lane here
against scripted hosts (:class:`controller.testing.FakeTransports`).
"""

from __future__ import annotations

import html
import re
from typing import Any
from urllib.parse import urlsplit

import pytest
from flask.testing import FlaskClient

from controller.lanes import Lane
from controller.testing import FakeTransports
from shared.results import OperationResult, Step
from tests.controller_client import Controller

PASSWORD = "S3cret-relay-pw!"
HOSTILE = "x')esyscmd(`id')dnl"
DIFF = ("--- sendmail.mc\n+++ sendmail.mc\n-dnl no relay\n"
        "+define(`SMART_HOST', `[relay.example.net]')dnl\n")


class Browser:
    """A signed-in test client that keeps the session's CSRF token at hand."""

    def __init__(self, controller: Controller, token: str) -> None:
        self.client: FlaskClient = controller.app.test_client()
        answer = self.client.post("/ui/login", data={"token": token},
                                  headers={"Origin": "http://localhost"})
        assert answer.status_code == 303, answer.get_data(as_text=True)[:500]
        self.csrf = csrf_of(self.page("/ui/audit"))

    def get(self, path: str, **kwargs: Any) -> Any:
        """GET a page."""
        return self.client.get(path, **kwargs)

    def page(self, path: str, status: int = 200) -> str:
        """A page's HTML (its status checked)."""
        answer = self.client.get(path)
        assert answer.status_code == status, (path, answer.status_code)
        return answer.get_data(as_text=True)

    def post(self, path: str, data: dict[str, Any] | list[tuple[str, str]],
             csrf: bool = True) -> Any:
        """POST a form (with the session's CSRF token unless told)."""
        fields = list(data.items()) if isinstance(data, dict) else list(data)
        if csrf:
            fields.append(("csrf_token", self.csrf))
        body: dict[str, list[str]] = {}
        for name, value in fields:
            body.setdefault(name, []).append(str(value))
        return self.client.post(path, data=body)


def csrf_of(page: str) -> str:
    """The CSRF token in a page's forms."""
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found, "no CSRF field in the page"
    return html.unescape(found.group(1))


def hidden_fields(page: str) -> list[tuple[str, str]]:
    """Every hidden input of a page but the CSRF token, as (name, value)."""
    fields = re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', page)
    return [(name, html.unescape(value)) for name, value in fields if name != "csrf_token"]


def job_id_of(location: str, prefix: str) -> int:
    """The job id in a redirect to ``prefix<id>``."""
    path = urlsplit(location).path
    assert path.startswith(prefix), location
    return int(path[len(prefix):].split("/")[0])


def job_count(controller: Controller) -> int:
    """How many jobs the API lists."""
    return int(controller.ok("GET", "/v1/jobs")["total"])


@pytest.fixture
def fleet(memory_controller: Controller) -> dict[str, Any]:
    """Two tenants: Acme (Lyon: three hosts, one tagged pbx) and Beta (one host)."""
    c = memory_controller
    acme, beta = c.tenant("Acme"), c.tenant("Beta")
    lyon, paris, berlin = c.site(acme, "Lyon"), c.site(acme, "Paris"), c.site(beta, "Berlin")
    lyon_hosts = [int(c.host(lyon, f"pbx-lyon-{n}", tags=["pbx"] if n == 1 else [])["id"])
                  for n in range(1, 4)]
    paris_host = int(c.host(paris, "pbx-paris-1", tags=["pbx"])["id"])
    berlin_host = int(c.host(berlin, "pbx-berlin-1", tags=["beta-only"])["id"])
    return {"c": c, "acme": acme, "beta": beta, "lyon": lyon, "paris": paris,
            "berlin": berlin, "lyon_hosts": lyon_hosts, "paris_host": paris_host,
            "berlin_host": berlin_host}


def run_dry_run(controller: Controller, job_id: int) -> FakeTransports:
    """Carry out a job's lane here, every host answering with :data:`DIFF`."""
    fake = FakeTransports(default=OperationResult(
        "set_smarthost", steps=[Step("m4", ["m4", "sendmail.mc"], 0, 0.1, True, "")],
        data={"diff": DIFF, "changed": False, "dry_run": True, "smarthost": None,
              "config_in_sync": True, "rolled_back": False, "backup": None}))
    with controller.app.app_context():
        Lane(job_id, 0, transports=fake, send=lambda *a, **k: None).run()
    return fake


# -- launch -----------------------------------------------------------------------------

def test_the_launch_form_offers_only_what_the_principal_sees(fleet: dict[str, Any]) -> None:
    c = fleet["c"]
    acme_operator = Browser(c, c.issue("operator", fleet["acme"]))
    page = acme_operator.page("/ui/launch?action=flush_queue")
    for name in ("pbx-lyon-1", "pbx-paris-1", "Acme / Lyon", "pbx"):
        assert name in page
    for name in ("pbx-berlin-1", "Beta", "Berlin", "beta-only"):
        assert name not in page
    everything = Browser(c, c.admin).page("/ui/launch?action=flush_queue")
    assert "pbx-berlin-1" in everything and "Beta / Berlin" in everything


def test_the_launch_form_is_prefilled_from_the_query_string(fleet: dict[str, Any]) -> None:
    c = fleet["c"]
    host = fleet["paris_host"]
    page = Browser(c, c.admin).page(f"/ui/launch?action=flush_queue&hosts={host}"
                                    "&recipient=boss@acme.example")
    assert re.search(rf'<option value="{host}" selected>pbx-paris-1', page)
    assert 'value="boss@acme.example"' in page
    assert "Start flush queue" in page and "Preview (dry run" not in page


def test_a_flush_launch_starts_a_job_and_goes_to_its_page(fleet: dict[str, Any]) -> None:
    c = fleet["c"]
    browser = Browser(c, c.issue("operator"))
    key = re.search(r'name="launch_key" value="([^"]+)"',
                    browser.page("/ui/launch?action=flush_queue"))
    assert key
    form = {"action": "flush_queue", "sites": fleet["lyon"], "recipient": "acme.example",
            "concurrency": "5", "intent": "run", "launch_key": key.group(1)}
    answer = browser.post("/ui/launch", form)
    assert answer.status_code == 303
    job_id = job_id_of(answer.headers["Location"], "/ui/jobs/")
    doc = c.ok("GET", f"/v1/jobs/{job_id}")
    assert doc["action"] == "flush_queue" and doc["target"] == {"sites": [fleet["lyon"]]}
    assert doc["params"]["recipient"] == "acme.example"
    assert doc["options"]["concurrency"] == 5 and doc["counts"]["total"] == 3
    # the same form sent twice (a double click) starts one job, as an Idempotency-Key does
    again = browser.post("/ui/launch", form)
    assert job_id_of(again.headers["Location"], "/ui/jobs/") == job_id
    assert job_count(c) == 1
    audit = c.ok("GET", "/v1/audit?action=POST%20/ui/launch")["items"]
    assert audit[0]["target"] == f"job:{job_id}" and audit[0]["outcome"] == 303
    # the same form sent back with other values (Back, then a change) starts nothing
    changed = browser.post("/ui/launch", {**form, "recipient": "other.example"})
    assert changed.status_code == 422
    assert "this form already started a job with other values" in changed.get_data(
        as_text=True)
    assert job_count(c) == 1


def test_several_kinds_of_target_mean_the_hosts_they_share(fleet: dict[str, Any]) -> None:
    c = fleet["c"]
    browser = Browser(c, c.admin)
    answer = browser.post("/ui/launch", [("action", "collect_status"),
                                         ("tenants", str(fleet["acme"])), ("tags", "pbx"),
                                         ("intent", "run")])
    assert answer.status_code == 303
    doc = c.ok("GET", f"/v1/jobs/{job_id_of(answer.headers['Location'], '/ui/jobs/')}")
    assert doc["target"] == {"hosts": sorted([fleet["lyon_hosts"][0], fleet["paris_host"]])}
    nothing = browser.post("/ui/launch", [("action", "collect_status"), ("tags", "beta-only"),
                                          ("sites", str(fleet["lyon"])), ("intent", "run")])
    assert nothing.status_code == 422
    assert "no host is in all of the chosen" in nothing.get_data(as_text=True)


def smarthost_form(fleet: dict[str, Any], **extra: str) -> dict[str, Any]:
    """A set_smarthost launch on the Lyon site with AUTH."""
    return {"action": "set_smarthost", "sites": fleet["lyon"],
            "relay_host": "relay.example.net", "relay_port": "587", "tls_mode": "encrypt",
            "auth_username": "pbx@acme.example", "auth_password": PASSWORD, **extra}


def test_a_smarthost_preview_dry_runs_the_first_host_then_offers_the_real_run(
        fleet: dict[str, Any]) -> None:
    c = fleet["c"]
    browser = Browser(c, c.issue("operator"))
    answer = browser.post("/ui/launch", smarthost_form(fleet, intent="preview"))
    assert answer.status_code == 303
    location = answer.headers["Location"]
    assert PASSWORD not in location and "auth_password" not in location
    job_id = job_id_of(location, "/ui/launch/preview/")
    doc = c.ok("GET", f"/v1/jobs/{job_id}")
    assert doc["options"]["dry_run"] is True
    assert doc["target"] == {"hosts": [fleet["lyon_hosts"][0]]}
    assert doc["counts"]["total"] == 1 and PASSWORD not in str(doc)

    waiting = browser.page(location)
    assert 'data-live="running"' in waiting and "Run for real" not in waiting
    assert "pbx-lyon-1, pbx-lyon-2, pbx-lyon-3" in waiting
    fake = run_dry_run(c, job_id)
    (call,) = fake.calls
    assert call.dry_run and call.host == "pbx-lyon-1"
    assert call.request.auth.password == PASSWORD  # the dry run had the password
    live = browser.page(urlsplit(location).path + "/live?" + urlsplit(location).query)
    assert live.lstrip().startswith('<section id="launch-preview"')
    assert 'data-live="finished"' in live

    page = browser.page(location)
    assert "Run for real on 3 hosts" in page
    assert '<span class="add">+define(`SMART_HOST&#39;, `[relay.example.net]&#39;)dnl</span>' \
        in page
    assert PASSWORD not in page
    assert re.search(r'<input type="password" id="f-auth_password" name="auth_password"', page)
    # the form names the dry run and its sealed hosts; the settings stay in the job
    carried = dict(hidden_fields(page))
    assert carried["preview"] == str(job_id) and carried["sites"] == str(fleet["lyon"])
    assert re.fullmatch(r"[0-9a-f]{64}", carried["seal"])
    assert not {"relay_host", "auth_username", "auth_password", "action"} & set(carried)
    change = re.search(r'<a href="([^"]+)">Change the hosts or settings</a>', page)
    assert change
    prefilled = browser.page(html.unescape(change.group(1)))
    assert 'value="relay.example.net"' in prefilled and 'value="587"' in prefilled
    assert re.search(rf'<option value="{fleet["lyon"]}" selected>', prefilled)


def test_run_for_real_starts_the_change_on_the_whole_target(fleet: dict[str, Any]) -> None:
    c = fleet["c"]
    browser = Browser(c, c.issue("operator"))
    location = browser.post("/ui/launch", smarthost_form(fleet, intent="preview")
                            ).headers["Location"]
    run_dry_run(c, job_id_of(location, "/ui/launch/preview/"))
    page = browser.page(location)
    fields = hidden_fields(page)
    without_password = browser.post("/ui/launch", [*fields, ("intent", "run")])
    assert without_password.status_code == 422  # AUTH needs its password again
    assert PASSWORD not in without_password.get_data(as_text=True)

    answer = browser.post("/ui/launch", [*fields, ("auth_password", PASSWORD),
                                         ("intent", "run")])
    assert answer.status_code == 303
    job_id = job_id_of(answer.headers["Location"], "/ui/jobs/")
    doc = c.ok("GET", f"/v1/jobs/{job_id}")
    assert doc["action"] == "set_smarthost" and doc["options"]["dry_run"] is False
    assert doc["target"] == {"sites": [fleet["lyon"]]} and doc["counts"]["total"] == 3
    assert doc["params"]["host"] == "relay.example.net" and doc["params"]["port"] == 587
    assert doc["params"]["auth"] == {"username": "pbx@acme.example"}
    assert PASSWORD not in str(doc)
    assert PASSWORD not in browser.page(answer.headers["Location"])


def previewed(browser: Browser, c: Controller, form: dict[str, Any]) -> tuple[int, str]:
    """Preview ``form``, carry out its dry run, and answer (its job id, the preview URL)."""
    answer = browser.post("/ui/launch", {**form, "intent": "preview"})
    assert answer.status_code == 303, answer.get_data(as_text=True)[:500]
    location = answer.headers["Location"]
    job_id = job_id_of(location, "/ui/launch/preview/")
    run_dry_run(c, job_id)
    return job_id, location


GOOD = {"relay_host": "good.example.net", "relay_port": "", "auth_username": "",
        "auth_password": "", "tls_mode": ""}
EVIL = "evil.example.org"


def test_a_changed_preview_link_cannot_change_what_runs_for_real(
        fleet: dict[str, Any]) -> None:
    c = fleet["c"]
    browser = Browser(c, c.issue("operator"))
    job_id, location = previewed(browser, c, smarthost_form(fleet, **GOOD))
    # the link the review showed: another relay and every host, on the same dry run
    forged = (f"/ui/launch/preview/{job_id}?action=set_smarthost&all=1"
              f"&relay_host={EVIL}&relay_port=2525")
    for path in (forged, forged.replace("?", "/live?")):
        answer = browser.get(path)
        assert answer.status_code == 400, path
        page = answer.get_data(as_text=True)
        assert EVIL not in page and "run-for-real" not in page
        assert "not the ones it was made for" in page
    # the genuine link with its hosts widened (its seal kept) is refused the same way
    query = urlsplit(location).query
    widened = f"/ui/launch/preview/{job_id}?" + re.sub(r"sites=[0-9]+", "all=1", query)
    assert browser.get(widened).status_code == 400
    # settings added to the genuine link are not read: the page is the dry run's
    page = browser.page(f"{location}&relay_host={EVIL}&relay_port=2525&concurrency=999")
    assert EVIL not in page and "2525" not in page
    assert "relay [good.example.net]" in page and "Run for real on 3 hosts" in page
    answer = browser.post("/ui/launch", [*hidden_fields(page), ("intent", "run")])
    assert answer.status_code == 303
    doc = c.ok("GET", f"/v1/jobs/{job_id_of(answer.headers['Location'], '/ui/jobs/')}")
    assert doc["params"]["host"] == "good.example.net" and doc["params"]["port"] is None
    assert doc["target"] == {"sites": [fleet["lyon"]]} and doc["counts"]["total"] == 3
    assert doc["options"]["concurrency"] == 20 and doc["options"]["dry_run"] is False


def test_a_forged_run_for_real_is_refused_and_starts_nothing(fleet: dict[str, Any]) -> None:
    c = fleet["c"]
    browser = Browser(c, c.issue("operator"))
    job_id, location = previewed(browser, c, smarthost_form(fleet, **GOOD, concurrency="5"))
    fields = [*hidden_fields(browser.page(location)), ("intent", "run")]
    other_id, other = previewed(browser, c, {"action": "remove_smarthost",
                                             "hosts": fleet["paris_host"]})
    other_fields = dict(hidden_fields(browser.page(other)))
    status_job = c.start_job({"action": "collect_status", "target": {"all": True}})
    before = job_count(c)
    forgeries = {
        "another relay": [("relay_host", EVIL), ("relay_port", "2525"), *fields],
        "another action": [("action", "remove_smarthost"), *fields],
        "other options": [*fields, ("concurrency", "1000")],
        "every host": [(n, v) for n, v in fields if n != "sites"] + [("all", "1")],
        "one more site": [*fields, ("sites", str(fleet["paris"]))],
        "another preview's hosts": [(n, other_fields["hosts"] if n == "sites" else v)
                                    for n, v in fields if n != "sites"]
                                   + [("hosts", other_fields["hosts"])],
        "another preview's seal": [(n, other_fields["seal"] if n == "seal" else v)
                                   for n, v in fields],
        "no seal": [(n, v) for n, v in fields if n != "seal"],
        "not a dry run": [(n, str(status_job) if n == "preview" else v) for n, v in fields],
        "no such job": [(n, "999999" if n == "preview" else v) for n, v in fields],
    }
    for what, form in forgeries.items():
        answer = browser.post("/ui/launch", form)
        page = answer.get_data(as_text=True)
        assert answer.status_code in (400, 404), (what, answer.status_code)
        assert "nothing was started" in page.lower() or answer.status_code == 404, what
        assert EVIL not in page, what
    assert job_count(c) == before
    # the other preview still runs as it was made: its own action on its own host
    answer = browser.post("/ui/launch", [*other_fields.items(), ("intent", "run")])
    doc = c.ok("GET", f"/v1/jobs/{job_id_of(answer.headers['Location'], '/ui/jobs/')}")
    assert doc["action"] == "remove_smarthost" and doc["target"] == {
        "hosts": [fleet["paris_host"]]} and other_id != job_id
    answer = browser.post("/ui/launch", fields)
    doc = c.ok("GET", f"/v1/jobs/{job_id_of(answer.headers['Location'], '/ui/jobs/')}")
    assert doc["params"]["host"] == "good.example.net"
    assert doc["target"] == {"sites": [fleet["lyon"]]} and doc["options"]["concurrency"] == 5


def test_a_preview_of_shared_hosts_runs_on_those_hosts(fleet: dict[str, Any]) -> None:
    c = fleet["c"]
    browser = Browser(c, c.admin)
    _, location = previewed(browser, c, {"action": "remove_smarthost",
                                         "tenants": fleet["acme"], "tags": "pbx"})
    page = browser.page(location)
    assert "Run for real on 2 hosts" in page
    answer = browser.post("/ui/launch", [*hidden_fields(page), ("intent", "run")])
    doc = c.ok("GET", f"/v1/jobs/{job_id_of(answer.headers['Location'], '/ui/jobs/')}")
    assert doc["target"] == {"hosts": sorted([fleet["lyon_hosts"][0], fleet["paris_host"]])}


def test_a_hostile_relay_is_refused_next_to_its_field_and_starts_nothing(
        fleet: dict[str, Any]) -> None:
    c = fleet["c"]
    browser = Browser(c, c.issue("operator"))
    answer = browser.post("/ui/launch", smarthost_form(fleet, relay_host=HOSTILE,
                                                       intent="preview"))
    assert answer.status_code == 422
    page = answer.get_data(as_text=True)
    field = re.search(r'<input type="text" id="f-relay_host"[^>]*>', page)
    assert field and 'aria-invalid="true"' in field.group(0)
    assert 'id="e-relay_host-1"' in page and 'href="#f-relay_host">Relay host</a>' in page
    shown = re.search(r'value="([^"]*)"', field.group(0))
    assert shown and html.unescape(shown.group(1)) == HOSTILE  # shown back (escaped) to fix
    assert PASSWORD not in page
    assert job_count(c) == 0


def test_a_password_with_a_bad_character_is_never_shown_back(fleet: dict[str, Any]) -> None:
    c = fleet["c"]
    browser = Browser(c, c.issue("operator"))
    secret = "bad\tpassword-xyz"
    answer = browser.post("/ui/launch", smarthost_form(fleet, auth_password=secret,
                                                       intent="preview"))
    assert answer.status_code == 422
    page = answer.get_data(as_text=True)
    assert "bad\tpassword" not in page and "password-xyz" not in page
    assert 'id="e-auth_password-1"' in page
    assert job_count(c) == 0


def test_a_viewer_gets_no_launch_and_its_forged_posts_are_refused(
        fleet: dict[str, Any]) -> None:
    c = fleet["c"]
    viewer = Browser(c, c.issue("viewer"))
    assert 'href="/ui/launch"' not in viewer.page("/ui/audit")
    assert viewer.get("/ui/launch?action=flush_queue").status_code == 403
    form = {"action": "flush_queue", "all": "1", "intent": "run"}
    assert viewer.post("/ui/launch", form).status_code == 403
    assert viewer.post("/ui/launch", form, csrf=False).status_code == 400
    operator = Browser(c, c.issue("operator"))
    assert operator.post("/ui/launch", form, csrf=False).status_code == 400
    assert job_count(c) == 0
    assert operator.post("/ui/launch", form).status_code == 303


def test_another_tenants_preview_is_not_found(fleet: dict[str, Any]) -> None:
    c = fleet["c"]
    admin = Browser(c, c.admin)
    location = admin.post("/ui/launch", {"action": "remove_smarthost",
                                         "hosts": fleet["berlin_host"],
                                         "intent": "preview"}).headers["Location"]
    acme = Browser(c, c.issue("operator", fleet["acme"]))
    assert acme.get(location).status_code == 404


# -- audit ------------------------------------------------------------------------------

def test_the_audit_page_is_scoped_to_the_tenant_and_filters(fleet: dict[str, Any]) -> None:
    c = fleet["c"]
    acme_op, beta_op = c.issue("operator", fleet["acme"]), c.issue("operator", fleet["beta"])
    acme_job = c.start_job({"action": "collect_status", "target": {"all": True}}, acme_op)
    beta_job = c.start_job({"action": "collect_status", "target": {"all": True}}, beta_op)
    acme_page = Browser(c, c.issue("viewer", fleet["acme"])).page("/ui/audit")
    assert f"job:{acme_job}" in acme_page and f"job:{beta_job}" not in acme_page
    admin = Browser(c, c.admin)
    everything = admin.page("/ui/audit")
    assert f"job:{acme_job}" in everything and f"job:{beta_job}" in everything
    assert everything.index(f"job:{beta_job}") < everything.index(f"job:{acme_job}")
    filtered = admin.page(f"/ui/audit?target=job:{beta_job}")
    assert f"job:{beta_job}" in filtered and f"job:{acme_job}" not in filtered
    assert "POST /v1/tenants" not in admin.page("/ui/audit?action=/v1/jobs")
    assert "POST /v1/tenants" in admin.page("/ui/audit?action=/v1/tenants")


# -- tokens -----------------------------------------------------------------------------

def test_an_admin_makes_a_token_shown_once_and_revokes_it(fleet: dict[str, Any]) -> None:
    c = fleet["c"]
    admin = Browser(c, c.admin)
    answer = admin.post("/ui/tokens", {"name": "noc ticketing", "role": "operator",
                                       "tenant_id": fleet["acme"]})
    assert answer.status_code == 201
    page = answer.get_data(as_text=True)
    (text,) = set(re.findall(r"rft_[0-9a-f]+_[A-Za-z0-9_-]+", page))
    assert page.count(text) == 1 and "shown this once" in page
    who = c.ok("GET", "/v1/whoami", token=text)
    assert who["role"] == "operator" and who["tenant_id"] == fleet["acme"]
    listing = admin.page("/ui/tokens")
    assert "noc ticketing" in listing and text not in listing

    token_id = who["token_id"]
    confirm = admin.page(f"/ui/tokens?revoke={token_id}")
    assert f'action="/ui/tokens/{token_id}/revoke"' in confirm
    assert "Revoke token “noc ticketing”" in confirm
    revoked = admin.post(f"/ui/tokens/{token_id}/revoke", {})
    assert revoked.status_code == 303
    assert c.get("/v1/whoami", token=text).status == 401
    assert "revoked" in admin.page("/ui/tokens")


def test_token_pages_refuse_bad_input_self_revocation_and_non_admins(
        fleet: dict[str, Any]) -> None:
    c = fleet["c"]
    admin = Browser(c, c.admin)
    bad = admin.post("/ui/tokens", {"name": "", "role": "root"})
    assert bad.status_code == 422
    assert 'id="e-name-1"' in bad.get_data(as_text=True)
    assert 'id="e-role-1"' in bad.get_data(as_text=True)
    me = c.ok("GET", "/v1/whoami")["token_id"]
    assert admin.post(f"/ui/tokens/{me}/revoke", {}).status_code == 409
    assert c.get("/v1/whoami").status == 200
    operator = Browser(c, c.issue("operator"))
    assert operator.get("/ui/tokens").status_code == 403
    assert operator.post("/ui/tokens", {"name": "x", "role": "admin"}).status_code == 403
    assert operator.post(f"/ui/tokens/{me}/revoke", {}).status_code == 403
    assert admin.post("/ui/tokens", {"name": "x", "role": "viewer"},
                      csrf=False).status_code == 400
    assert len(c.ok("GET", "/v1/tokens")["items"]) == 2  # the admin's and the operator's


def test_a_tenant_admin_sees_and_makes_only_its_tenants_tokens(
        fleet: dict[str, Any]) -> None:
    c = fleet["c"]
    c.issue("viewer", fleet["beta"])
    acme_admin = Browser(c, c.issue("admin", fleet["acme"]))
    listing = acme_admin.page("/ui/tokens")
    assert 'name="tenant_id"' not in listing and "Beta" not in listing
    answer = acme_admin.post("/ui/tokens", {"name": "acme robot", "role": "viewer",
                                            "tenant_id": fleet["beta"]})
    assert answer.status_code == 201
    (text,) = set(re.findall(r"rft_[0-9a-f]+_[A-Za-z0-9_-]+", answer.get_data(as_text=True)))
    assert c.ok("GET", "/v1/whoami", token=text)["tenant_id"] == fleet["acme"]


# -- API docs ---------------------------------------------------------------------------

def test_the_docs_page_loads_swagger_from_local_assets(fleet: dict[str, Any]) -> None:
    c = fleet["c"]
    browser = Browser(c, c.issue("viewer"))
    answer = browser.get("/ui/docs")
    assert answer.status_code == 200
    # Swagger UI 4 styles itself through the CSSOM: the console's strict policy holds here
    csp = answer.headers["Content-Security-Policy"]
    assert "style-src 'self';" in csp and "script-src 'self';" in csp
    assert "unsafe" not in csp
    page = answer.get_data(as_text=True)
    assets = re.findall(r'(?:src|href)="(/ui/[^"?]+\.(?:js|css)(?:\?[^"]*)?)"', page)
    assert any("swagger-ui-bundle.js" in a for a in assets)
    assert any("swagger-ui.css" in a for a in assets)
    assert any("docs-init.js" in a for a in assets)
    for asset in assets:
        fetched = c.app.test_client().get(html.unescape(asset))
        assert fetched.status_code == 200, asset
        if "/vendor/swagger/" in asset:
            assert fetched.headers["Cache-Control"].startswith("public")
            assert "immutable" in fetched.headers["Cache-Control"]
            assert "no-store" not in fetched.headers["Cache-Control"]
    assert "https://" not in " ".join(assets)
    assert c.app.test_client().get("/ui/vendor/swagger/index.html").status_code == 404
    assert "Authorize" in page and "not accepted by" in page


def test_the_openapi_document_needs_the_session(fleet: dict[str, Any]) -> None:
    c = fleet["c"]
    anonymous = c.app.test_client().get("/ui/openapi.json")
    assert anonymous.status_code == 303 and "/ui/login" in anonymous.headers["Location"]
    spec = Browser(c, c.issue("viewer")).get("/ui/openapi.json").get_json()
    assert "/v1/jobs" in spec["paths"] and "/v1/tokens" in spec["paths"]
    with c.app.app_context():
        assert spec == c.app.extensions["relayfleet_api"].spec.to_dict()


def test_query_strings_from_a_link_cannot_break_the_pages(fleet: dict[str, Any]) -> None:
    c = fleet["c"]
    browser = Browser(c, c.admin)
    assert browser.get("/ui/audit?action=%00").status_code == 422
    assert browser.get("/ui/audit?offset=-3&token=abc").status_code == 200
    page = browser.page("/ui/launch?action=nonsense&hosts=<script>")
    assert "<script>" not in page.split("</head>")[1]
