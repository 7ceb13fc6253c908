"""The web console's sign-in, session cookie, CSRF and origin checks, roles and error pages,
against the real controller app (SQLite file, in-memory broker) through Flask's client."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from flask import Blueprint, render_template
from sqlalchemy import select, update
from werkzeug.test import TestResponse

from controller import inventory
from controller.console.session import (
    COOKIE,
    SIGN_IN_LIMIT,
    SIGN_IN_WINDOW_S,
    SignInFailures,
    principal,
    protect,
    requires,
    signed_in,
)
from controller.db import db, utcnow
from controller.models import AuditEvent, ConsoleSession, Host, Token
from shared.errors import ConfigError, ValidationError
from tests.controller_client import Controller

HTTPS = "https://localhost"


def _test_pages() -> Blueprint:
    """Pages of a blueprint of the tests' own, under /ui/, with the console's protection."""
    pages = Blueprint("console_test", __name__, url_prefix="/ui/test-pages")
    protect(pages)

    @pages.route("/mine")
    @signed_in
    def mine() -> str:
        who = principal()
        return render_template("error.html", status=200, title="Mine",
                               message=f"token {who.name} role {who.role}", errors={},
                               back_url="/ui/fleet", back_label="Fleet")

    @pages.route("/operate", methods=["GET", "POST"])
    @signed_in
    @requires("operator")
    def operate() -> str:
        return "operated"

    @pages.route("/hosts/<int:host_id>")
    @signed_in
    def host(host_id: int) -> str:
        return inventory.get_scoped(db.session, Host, host_id, principal()).name

    @pages.route("/invalid")
    @signed_in
    def invalid() -> str:
        raise ValidationError.for_field("name", "must not be empty")

    return pages


@pytest.fixture
def console(memory_controller: Controller) -> Controller:
    """The controller with the test pages registered (before its first request)."""
    memory_controller.app.register_blueprint(_test_pages())
    return memory_controller


def sign_in(client: Any, token: str, **kwargs: Any) -> TestResponse:
    """POST the sign-in form (with the Origin header a browser sends, unless ``headers``
    says otherwise)."""
    data = {"token": token, **kwargs.pop("data", {})}
    kwargs.setdefault("headers", {"Origin": kwargs.get("base_url", "http://localhost")})
    response: TestResponse = client.post("/ui/login", data=data, **kwargs)
    return response


def session_cookie(response: TestResponse) -> str | None:
    """The Set-Cookie line of the session cookie, if the answer sets it."""
    lines = [line for line in response.headers.getlist("Set-Cookie")
             if line.startswith(f"{COOKIE}=")]
    assert len(lines) <= 1
    return lines[0] if lines else None


def csrf_of(client: Any) -> str:
    """The CSRF token a signed-in page carries in its forms."""
    page = client.get("/ui/test-pages/mine").get_data(as_text=True)
    match = re.search(r'<input type="hidden" name="csrf_token" value="([^"]+)">', page)
    assert match, page
    return match.group(1)


def token_id(controller: Controller, text: str) -> int:
    """The row id of a token given as text."""
    public_id = text.removeprefix("rft_").partition("_")[0]
    with controller.app.app_context():
        found = db.session.scalar(select(Token.id).where(Token.public_id == public_id))
    assert found is not None
    return found


def sessions(controller: Controller) -> list[ConsoleSession]:
    """Every console session row."""
    with controller.app.app_context():
        return list(db.session.scalars(select(ConsoleSession).order_by(ConsoleSession.id)))


def audit_rows(controller: Controller) -> list[AuditEvent]:
    """Every audit row, oldest first."""
    with controller.app.app_context():
        return list(db.session.scalars(select(AuditEvent).order_by(AuditEvent.id)))


def shift_session(controller: Controller, **changes: dt.datetime) -> None:
    """Rewrite the timestamps of every session (time passing, without waiting)."""
    with controller.app.app_context(), db.transaction() as session:
        session.execute(update(ConsoleSession).values(**changes))


# -- signing in ------------------------------------------------------------------------------

def test_the_sign_in_form_asks_for_the_token_as_a_password(console: Controller) -> None:
    page = console.app.test_client().get("/ui/login")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    field = re.search(r"<input id=\"token\"[^>]*>", html, re.S)
    assert field is not None
    assert 'type="password"' in field.group(0) and 'autocomplete="off"' in field.group(0)
    assert '<label for="token">' in html
    assert page.headers["Cache-Control"] == "no-store"


def test_sign_in_sets_an_http_only_strict_cookie_for_the_console_only(
        console: Controller) -> None:
    client = console.app.test_client()
    answer = sign_in(client, console.admin)
    assert answer.status_code == 303
    assert answer.headers["Location"] == "/ui/fleet"
    cookie = session_cookie(answer)
    assert cookie is not None
    attributes = [part.strip() for part in cookie.split(";")]
    assert "HttpOnly" in attributes and "SameSite=Strict" in attributes
    assert "Path=/ui" in attributes and "Max-Age=43200" in attributes
    assert "Secure" not in attributes  # plain http: a Secure cookie would never come back
    secret = attributes[0].partition("=")[2]
    # the database holds the secret's hash only
    [row] = sessions(console)
    assert row.secret_sha256 == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in json.dumps({k: str(v) for k, v in vars(row).items()})
    assert row.token_id == token_id(console, console.admin)
    assert (row.expires_at - row.created_at) == dt.timedelta(hours=12)
    # and the browser is signed in
    assert "role admin" in client.get("/ui/test-pages/mine").get_data(as_text=True)


def test_the_cookie_is_secure_over_https(console: Controller) -> None:
    client = console.app.test_client()
    answer = sign_in(client, console.admin, base_url=HTTPS)
    cookie = session_cookie(answer)
    assert cookie is not None and "Secure" in [part.strip() for part in cookie.split(";")]
    assert client.get("/ui/test-pages/mine", base_url=HTTPS).status_code == 200


def test_the_cookie_can_be_made_always_secure(memory_controller: Controller,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # for a TLS front that cannot tell the controller the browser's scheme
    monkeypatch.setenv("RELAYFLEET_CONSOLE_SECURE_COOKIE", "always")
    controller = Controller.create()
    answer = sign_in(controller.app.test_client(), controller.admin)
    cookie = session_cookie(answer)
    assert cookie is not None and "Secure" in [part.strip() for part in cookie.split(";")]
    monkeypatch.setenv("RELAYFLEET_CONSOLE_SECURE_COOKIE", "sometimes")
    with pytest.raises(ConfigError, match="RELAYFLEET_CONSOLE_SECURE_COOKIE"):
        Controller.create()


def test_a_wrong_token_is_401_audited_and_sets_no_cookie(console: Controller) -> None:
    client = console.app.test_client()
    wrong = console.admin[:-4] + "abcd"
    answer = sign_in(client, wrong)
    assert answer.status_code == 401
    html = answer.get_data(as_text=True)
    assert "not accepted" in html and wrong not in html
    assert session_cookie(answer) is None and sessions(console) == []
    rows = audit_rows(console)
    assert [(row.action, row.outcome, row.remote_addr, row.token_id) for row in rows] == [
        ("POST /ui/login", 401, "127.0.0.1", None)]
    assert rows[0].detail == {"event": "console sign-in failed",
                              "reason": "wrong, unknown or revoked token"}
    everything = json.dumps([{k: str(v) for k, v in vars(row).items()} for row in rows])
    assert wrong not in everything and wrong.partition("_")[2][-20:] not in everything


def fail_to_sign_in(client: Any, times: int, **kwargs: Any) -> TestResponse:
    """Sign in with a wrong token ``times`` times, each refused with 401; the last answer."""
    answer = None
    for attempt in range(times):
        answer = sign_in(client, f"rft_000000000000_wrong{attempt}", **kwargs)
        assert answer.status_code == 401, attempt
    assert answer is not None
    return answer


def test_sign_in_pauses_after_too_many_failures(console: Controller) -> None:
    client = console.app.test_client()
    answer = fail_to_sign_in(client, SIGN_IN_LIMIT)
    assert "now paused" in answer.get_data(as_text=True)
    # a wrong token is now refused without being counted, with the time to wait
    answer = sign_in(client, "rft_000000000000_wrong-again")
    assert answer.status_code == 429
    assert 0 < int(answer.headers["Retry-After"]) <= SIGN_IN_WINDOW_S
    assert "Try again in" in answer.get_data(as_text=True)
    assert session_cookie(answer) is None and sessions(console) == []
    # another address is not held up
    other = {"REMOTE_ADDR": "192.0.2.7"}
    assert sign_in(client, "rft_000000000000_wrong", environ_base=other).status_code == 401
    # the pause ends when the failures leave the window
    console.app.extensions["relayfleet_console_sign_in"].window_s = 0
    assert sign_in(client, "rft_000000000000_wrong-later").status_code == 401


def test_a_valid_token_signs_in_through_a_pause(console: Controller) -> None:
    # Behind a local TLS front every browser is 127.0.0.1: someone else's typos must not
    # lock out a person holding a good token (a right token proves nothing was guessed).
    client = console.app.test_client()
    fail_to_sign_in(client, SIGN_IN_LIMIT)
    assert sign_in(client, "rft_000000000000_wrong-again").status_code == 429
    operator = console.issue("operator")
    answer = sign_in(console.app.test_client(), operator)
    assert answer.status_code == 303 and session_cookie(answer) is not None
    assert [row.token_id for row in sessions(console)] == [token_id(console, operator)]
    # the pause still holds for wrong tokens
    assert sign_in(client, "rft_000000000000_wrong-more").status_code == 429


def test_failed_sign_ins_are_audited_through_the_unauthenticated_tally(
        console: Controller) -> None:
    client = console.app.test_client()
    fail_to_sign_in(client, SIGN_IN_LIMIT - 1)
    # the first failure of the window is a row, the others are counted for its summary
    assert [(row.action, row.outcome) for row in audit_rows(console)] == [
        ("POST /ui/login", 401)]
    tally = console.app.extensions["relayfleet_unauthenticated"]
    tally.window_s = 0.0  # the window ends: the next row comes with the summary
    fail_to_sign_in(client, 1)
    rows = audit_rows(console)
    summary = next(row for row in rows if row.action == "unauthenticated calls (summary)")
    assert summary.detail is not None and summary.detail["count"] == SIGN_IN_LIMIT - 2
    assert len(rows) == 3
    # failures from ever new addresses cost rows only up to the tally's bound on addresses
    from controller.app import UnauthenticatedTally
    console.app.extensions["relayfleet_unauthenticated"] = UnauthenticatedTally(
        max_addresses=2)
    for n in range(20):
        fail_to_sign_in(client, 1, environ_base={"REMOTE_ADDR": f"198.51.100.{n}"})
    assert len(audit_rows(console)) == 3 + 3  # two addresses, then one shared row "*"
    # with the rows summarized, the pause still counted every failure of 127.0.0.1
    assert sign_in(client, console.admin + "x").status_code == 429


def test_the_failure_count_bounds_the_addresses_it_tracks() -> None:
    failures = SignInFailures(limit=2, window_s=60, max_addresses=2)
    assert [failures.failed(address, 0.0) for address in "abc"] == [None, None, None]
    # past two addresses the others share one entry: c and d are paused together
    assert failures.failed("d", 1.0) == 59
    assert failures.retry_after("c", 1.0) == 59 and failures.retry_after("a", 1.0) is None
    # once the window is over, the addresses in it are forgotten and new ones tracked
    assert failures.failed("e", 61.0) is None and failures.failed("e", 62.0) == 59
    assert failures.retry_after("f", 62.0) is None


def test_a_successful_sign_in_is_audited_with_the_token(console: Controller) -> None:
    operator = console.issue("operator")
    sign_in(console.app.test_client(), operator)
    [row] = [row for row in audit_rows(console) if row.action == "POST /ui/login"]
    [made] = sessions(console)
    assert (row.outcome, row.token_id, row.token_name) == (
        303, token_id(console, operator), "test operator")
    assert row.target == f"console-session:{made.id}"


def test_a_page_without_session_sends_the_browser_to_sign_in_and_back(
        console: Controller) -> None:
    client = console.app.test_client()
    answer = client.get("/ui/test-pages/mine?x=1")
    assert answer.status_code == 303
    location = urlsplit(answer.headers["Location"])
    assert location.path == "/ui/login"
    assert parse_qs(location.query) == {"next": ["/ui/test-pages/mine?x=1"]}
    form = client.get(answer.headers["Location"]).get_data(as_text=True)
    assert '<input type="hidden" name="next" value="/ui/test-pages/mine?x=1">' in form
    answer = sign_in(client, console.admin, data={"next": "/ui/test-pages/mine?x=1"})
    assert answer.headers["Location"] == "/ui/test-pages/mine?x=1"
    # a script's request gets a fragment to show instead of the form
    client = console.app.test_client()
    fragment = client.get("/ui/test-pages/mine", headers={"Sec-Fetch-Mode": "cors"})
    assert fragment.status_code == 401 and "sign in again" in fragment.get_data(as_text=True)


@pytest.mark.parametrize("target", [
    "//evil.example/ui/fleet", "http://evil.example/ui/fleet", "https://evil.example",
    "/v1/tokens", "/ui/../v1/tokens", "/ui/%2e%2e/v1/tokens", "/\\evil.example",
    "/ui//evil.example", "/ui/fleet\r\nSet-Cookie: x=y", "/ui/login", "javascript:alert(1)"])
def test_next_outside_the_console_is_ignored(console: Controller, target: str) -> None:
    client = console.app.test_client()
    form = client.get("/ui/login", query_string={"next": target}).get_data(as_text=True)
    assert 'name="next"' not in form
    answer = sign_in(client, console.admin, data={"next": target})
    assert answer.status_code == 303 and answer.headers["Location"] == "/ui/fleet"


def test_a_session_opens_the_console_pages(console: Controller) -> None:
    client = console.app.test_client()
    sign_in(client, console.admin)
    assert client.get("/ui/fleet").status_code == 200
    # signed in, the sign-in page goes on to the fleet
    assert client.get("/ui/login").headers["Location"] == "/ui/fleet"


# -- how sessions end ----------------------------------------------------------------------

def test_revoking_the_token_ends_its_sessions_at_once(console: Controller) -> None:
    operator = console.issue("operator")
    client = console.app.test_client()
    sign_in(client, operator)
    assert client.get("/ui/test-pages/mine").status_code == 200
    console.ok("DELETE", f"/v1/tokens/{token_id(console, operator)}")
    answer = client.get("/ui/test-pages/mine")
    assert answer.status_code == 303 and answer.headers["Location"].startswith("/ui/login")
    assert sessions(console) == []


def test_an_expired_session_is_refused(console: Controller) -> None:
    client = console.app.test_client()
    sign_in(client, console.admin)
    shift_session(console, expires_at=utcnow() - dt.timedelta(seconds=1))
    assert client.get("/ui/test-pages/mine").status_code == 303
    assert sessions(console) == []


def test_an_idle_session_is_refused_and_a_used_one_kept(console: Controller) -> None:
    client = console.app.test_client()
    sign_in(client, console.admin)
    # used 29 minutes ago: still good, and now marked as used
    shift_session(console, last_seen_at=utcnow() - dt.timedelta(minutes=29))
    assert client.get("/ui/test-pages/mine").status_code == 200
    [row] = sessions(console)
    assert utcnow() - row.last_seen_at < dt.timedelta(minutes=1)
    shift_session(console, last_seen_at=utcnow() - dt.timedelta(minutes=30, seconds=1))
    assert client.get("/ui/test-pages/mine").status_code == 303
    assert sessions(console) == []


def test_the_idle_time_and_lifetime_are_settings(memory_controller: Controller,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAYFLEET_CONSOLE_IDLE_S", "120")
    monkeypatch.setenv("RELAYFLEET_CONSOLE_MAX_S", "3600")
    controller = Controller.create()
    controller.app.register_blueprint(_test_pages())
    client = controller.app.test_client()
    cookie = session_cookie(sign_in(client, controller.admin))
    assert cookie is not None and "Max-Age=3600" in cookie
    shift_session(controller, last_seen_at=utcnow() - dt.timedelta(seconds=121))
    assert client.get("/ui/test-pages/mine").status_code == 303


def test_sign_out_needs_the_csrf_token_and_ends_the_session(console: Controller) -> None:
    client = console.app.test_client()
    answer = sign_in(client, console.admin)
    secret = (session_cookie(answer) or "").split(";")[0].partition("=")[2]
    assert client.post("/ui/logout").status_code == 400
    assert client.post("/ui/logout", data={"csrf_token": "x" * 43}).status_code == 400
    assert client.get("/ui/test-pages/mine").status_code == 200  # still signed in
    answer = client.post("/ui/logout", data={"csrf_token": csrf_of(client)})
    assert answer.status_code == 303 and answer.headers["Location"] == "/ui/login"
    cleared = session_cookie(answer)
    assert cleared is not None and "Max-Age=0" in cleared
    assert sessions(console) == []
    assert "You are signed out." in client.get("/ui/login").get_data(as_text=True)
    # the old cookie, kept by someone, opens nothing
    client.set_cookie(COOKIE, secret, path="/ui")
    assert client.get("/ui/test-pages/mine").status_code == 303


def test_every_sign_in_gets_a_new_secret(console: Controller) -> None:
    client = console.app.test_client()
    client.set_cookie(COOKIE, "chosen-by-someone-else", path="/ui")
    first = session_cookie(sign_in(client, console.admin))
    assert first is not None and "chosen-by-someone-else" not in first
    second = session_cookie(sign_in(client, console.admin))
    assert second is not None and second != first
    assert len(sessions(console)) == 1  # the browser's previous session is gone


# -- forgery ---------------------------------------------------------------------------------

def test_a_post_without_the_csrf_token_is_refused(console: Controller) -> None:
    client = console.app.test_client()
    sign_in(client, console.admin)
    refused = client.post("/ui/test-pages/operate")
    assert refused.status_code == 400 and "security token" in refused.get_data(as_text=True)
    assert client.post("/ui/test-pages/operate",
                       data={"csrf_token": "forged"}).status_code == 400
    token = csrf_of(client)
    assert client.post("/ui/test-pages/operate", data={"csrf_token": token}).status_code == 200
    assert client.post("/ui/test-pages/operate",
                       headers={"X-CSRF-Token": token}).status_code == 200
    # the refusal is audited under the session's token
    [row, *_] = [row for row in audit_rows(console)
                 if row.action == "POST /ui/test-pages/operate"]
    assert (row.outcome, row.token_id) == (400, token_id(console, console.admin))


def test_a_post_without_a_session_is_401(console: Controller) -> None:
    answer = console.app.test_client().post("/ui/test-pages/operate",
                                            data={"csrf_token": "anything"})
    assert answer.status_code == 401 and "Sign in" in answer.get_data(as_text=True)


def test_another_sites_origin_is_refused(console: Controller) -> None:
    client = console.app.test_client()
    sign_in(client, console.admin)
    token = csrf_of(client)
    for origin in ("https://evil.example", "null", "http://localhost.evil.example"):
        answer = client.post("/ui/test-pages/operate", data={"csrf_token": token},
                             headers={"Origin": origin})
        assert answer.status_code == 400, origin
    assert client.post("/ui/test-pages/operate", data={"csrf_token": token},
                       headers={"Origin": "http://localhost"}).status_code == 200
    # the sign-in form has no session yet: its origin (or referrer) is what is checked
    fresh = console.app.test_client()
    answer = sign_in(fresh, console.admin, headers={"Origin": "https://evil.example"})
    assert answer.status_code == 400 and session_cookie(answer) is None
    answer = sign_in(fresh, console.admin,
                     headers={"Referer": "https://evil.example/login.html"})
    assert answer.status_code == 400 and session_cookie(answer) is None
    answer = sign_in(fresh, console.admin, headers={"Origin": "http://localhost",
                                                    "Referer": "http://localhost/ui/login"})
    assert answer.status_code == 303


def test_a_sign_in_that_names_no_origin_is_refused(console: Controller) -> None:
    # Login forgery: a browser always sends Origin with a form POST (and this site's
    # Referer with its own forms), so a sign-in naming neither came from no page of ours.
    client = console.app.test_client()
    answer = sign_in(client, console.admin, headers={})
    assert answer.status_code == 400 and session_cookie(answer) is None
    assert "did not say" in answer.get_data(as_text=True)
    assert sessions(console) == []
    answer = sign_in(client, console.admin, headers={"Referer": "http://localhost/ui/login"})
    assert answer.status_code == 303
    answer = sign_in(console.app.test_client(), console.admin,
                     headers={"Origin": "http://localhost"})
    assert answer.status_code == 303


# -- roles, tenants and error pages ------------------------------------------------------------

def test_a_viewer_gets_the_403_page_on_an_operator_view(console: Controller) -> None:
    client = console.app.test_client()
    sign_in(client, console.issue("viewer"))
    page = client.get("/ui/test-pages/operate")
    assert page.status_code == 403
    html = page.get_data(as_text=True)
    assert "operator role" in html and page.mimetype == "text/html"
    # a forged POST with a good CSRF token is refused by the server all the same
    assert client.post("/ui/test-pages/operate",
                       data={"csrf_token": csrf_of(client)}).status_code == 403
    fleet = client.get("/ui/fleet").get_data(as_text=True)
    assert 'href="/ui/launch"' not in fleet and 'href="/ui/tokens"' not in fleet
    assert 'href="/ui/jobs"' in fleet


def test_the_navigation_follows_the_role(console: Controller) -> None:
    client = console.app.test_client()
    sign_in(client, console.issue("operator"))
    page = client.get("/ui/fleet").get_data(as_text=True)
    assert 'href="/ui/launch"' in page and 'href="/ui/tokens"' not in page
    assert "test operator · operator · all tenants" in page
    client = console.app.test_client()
    sign_in(client, console.admin)
    assert 'href="/ui/tokens"' in client.get("/ui/fleet").get_data(as_text=True)


def test_another_tenants_host_is_the_404_page(console: Controller) -> None:
    acme, globex = console.tenant("Acme"), console.tenant("Globex")
    own = console.host(console.site(acme, "Paris"), "pbx-paris-1")["id"]
    theirs = console.host(console.site(globex, "Berlin"), "pbx-berlin-1")["id"]
    client = console.app.test_client()
    sign_in(client, console.issue("viewer", acme))
    assert client.get(f"/ui/test-pages/hosts/{own}").get_data(as_text=True) == "pbx-paris-1"
    for path in (f"/ui/test-pages/hosts/{theirs}", f"/ui/hosts/{theirs}"):
        page = client.get(path)
        assert page.status_code == 404 and page.mimetype == "text/html", path
        html = page.get_data(as_text=True)
        assert "Not found" in html and f"host {theirs} not found" in html
        assert "pbx-berlin-1" not in html
    assert "· Acme" in client.get("/ui/fleet").get_data(as_text=True)


CONSOLE_HEADERS = ("Content-Security-Policy", "X-Frame-Options", "X-Content-Type-Options",
                   "Referrer-Policy")


@pytest.mark.parametrize("path", ["/ui", "/ui/"])
def test_the_console_root_goes_to_the_fleet(console: Controller, path: str) -> None:
    answer = console.app.test_client().get(path)
    assert answer.status_code in (302, 303) and answer.headers["Location"] == "/ui/fleet"


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/ui/nope", 404), ("GET", "/ui/hosts/abc", 404), ("GET", "/ui/static/nope.css", 404),
    ("GET", "/ui/logout", 405), ("PUT", "/ui/fleet", 405), ("DELETE", "/", 405)])
def test_routing_errors_under_the_console_are_its_error_page(
        console: Controller, method: str, path: str, status: int, signed: bool) -> None:
    client = console.app.test_client()
    if signed:
        sign_in(client, console.issue("viewer"))
    answer = client.open(path, method=method)
    assert answer.status_code == status and answer.mimetype == "text/html"
    html = answer.get_data(as_text=True)
    assert f"(HTTP {status})" in html and '"code"' not in html
    assert answer.headers["Cache-Control"] == "no-store"
    for header in CONSOLE_HEADERS:
        assert header in answer.headers, header
    assert "script-src 'self'" in answer.headers["Content-Security-Policy"]
    if status == 405:
        assert answer.headers["Allow"]
    # signed in, the page has the navigation; signed out, it points to sign-in (the
    # session cookie is only sent to /ui/...)
    shows_session = signed and path.startswith("/ui/")
    assert ('href="/ui/jobs"' in html) is shows_session
    assert ('<a href="/ui/login">Sign in</a>' in html) is not shows_session


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/v1/nope", 404), ("DELETE", "/v1/health", 405), ("GET", "/nope", 404)])
def test_routing_errors_of_the_api_keep_its_envelope(
        console: Controller, method: str, path: str, status: int) -> None:
    answer = console.app.test_client().open(path, method=method,
                                            headers={"Authorization": f"Bearer {console.admin}"})
    assert answer.status_code == status and answer.mimetype == "application/json"
    body = answer.get_json()
    assert body["code"] == status and body["message"]
    assert "Content-Security-Policy" not in answer.headers


def test_a_validation_error_is_the_422_page(console: Controller) -> None:
    client = console.app.test_client()
    sign_in(client, console.admin)
    page = client.get("/ui/test-pages/invalid", headers={"Referer": "http://localhost/ui/jobs"})
    assert page.status_code == 422
    html = page.get_data(as_text=True)
    assert "<b>name</b>: must not be empty" in html
    assert '<a href="/ui/jobs">Back to the previous page</a>' in html
