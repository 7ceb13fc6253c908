"""Sign-in, the session cookie, CSRF tokens, roles and error pages of the web console.

A person signs in at ``/ui/login`` with an API token. The console then keeps a session of
its own (:class:`~controller.models.ConsoleSession`): the cookie ``relayfleet_session``
holds a random secret, the database only its SHA-256, so a copy of the database opens no
session. Every request looks the session up again together with its token: a revoked
token ends its sessions at once, exactly as it stops the API. A session ends
``console_max_s`` after sign-in whatever happens and ``console_idle_s`` after its last use
(settings ``RELAYFLEET_CONSOLE_MAX_S`` / ``RELAYFLEET_CONSOLE_IDLE_S``).

Forgery: the cookie is ``SameSite=Strict`` (no other site's page makes the browser send
it), every unsafe request must carry the session's CSRF token (``csrf_field()`` in each
form, or the ``X-CSRF-Token`` header for scripts), and an ``Origin`` header naming another
site is refused. The sign-in form has no session yet: it relies on the ``Origin`` check
(``Referer`` when a browser sends no ``Origin``), which every current browser's cross-site
form post fails; a sign-in naming neither is refused too (browsers send ``Origin`` with
every form POST), so no page elsewhere can sign a browser in with the attacker's token.

Behind a reverse proxy (the TLS front): the origin check compares with ``request.host``,
so the front must pass the browser's ``Host`` header through (nginx: ``proxy_set_header
Host $host;``), and the cookie is ``Secure`` when ``request.is_secure``, which gunicorn
derives from the front's ``X-Forwarded-Proto`` for addresses in its
``forwarded_allow_ips`` (loopback by default). A front that cannot say so can have the
cookie always ``Secure`` with ``RELAYFLEET_CONSOLE_SECURE_COOKIE=always``.

Failed sign-ins are audited (``POST /ui/login``, outcome 401, the reason in the detail,
never the token text) through the app's rate-limited audit of unauthenticated calls
(:class:`controller.app.UnauthenticatedTally`): the first of a window per address is a
row, the rest one summary row, so failures from ever new addresses cannot fill the audit
log. They are counted for the pause by :class:`SignInFailures`: past
:data:`SIGN_IN_LIMIT` failures in :data:`SIGN_IN_WINDOW_S` from one address, a wrong
token from there answers 429 until the oldest counted failure is old enough. A right
token is let through a pause: tokens are 256-bit random, so the pause guards against no
guessing; it bounds the noise of failures, and behind a local TLS front every browser is
127.0.0.1, where someone else's typos must not lock out a person holding a good token.

Flash messages (``flask.flash``) live in Flask's signed cookie (``relayfleet_flash``, path
``/ui``), keyed from the controller's secret key; they never hold a secret.
"""

from __future__ import annotations

import datetime as dt
import functools
import hmac
import math
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast
from urllib.parse import unquote, urlsplit

from flask import (
    Blueprint,
    Flask,
    Request,
    Response,
    current_app,
    flash,
    g,
    has_request_context,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.blueprints import BlueprintSetupState
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from markupsafe import Markup, escape
from sqlalchemy import delete, or_, select, update
from werkzeug.exceptions import HTTPException

from controller.auth import Principal, authenticate, check_role, sha256_hex
from controller.config import Settings
from controller.console import bp, console_headers, is_console_path
from controller.crypto import derive_key
from controller.db import db, utcnow
from controller.errors import Conflict, NotFound, PermissionDenied, Unavailable
from controller.models import ConsoleSession, Tenant, Token
from shared.errors import RelayfleetError, ValidationError

F = TypeVar("F", bound=Callable[..., Any])

#: the session cookie: only ever sent to the console's own paths
COOKIE = "relayfleet_session"
COOKIE_PATH = "/ui"
#: the form field (and, for scripts, the header) that carries the CSRF token
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
#: failed sign-ins from one address allowed in the window before sign-in pauses there
SIGN_IN_LIMIT = 5
SIGN_IN_WINDOW_S = 300
#: ``last_seen_at`` is written at most this often: a write at every page view would queue
#: every reader behind SQLite's one write lock. The idle time is this precise.
TOUCH_EVERY_S = 60
#: longer than any token relayfleet makes: longer input is not looked up at all
MAX_TOKEN_CHARS = 200
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: the console's pages in the navigation, with the least role that may use each
NAV: tuple[tuple[str, str, str], ...] = (
    ("console.fleet", "Fleet", "viewer"),
    ("console.jobs", "Jobs", "viewer"),
    ("console.launch", "Launch", "operator"),
    ("console.doctor", "Doctor", "viewer"),
    ("console.alerts", "Alerts", "viewer"),
    ("console.policies", "Policies", "viewer"),
    ("console.schedules", "Schedules", "viewer"),
    ("console.audit", "Audit", "viewer"),
    ("console.tokens", "Tokens", "admin"),
    ("console.docs", "API docs", "viewer"),
)
_ERROR_PAGES: tuple[tuple[type[RelayfleetError], int, str], ...] = (
    (NotFound, 404, "Not found"),
    (PermissionDenied, 403, "Not allowed"),
    (ValidationError, 422, "Cannot do that as asked"),
    (Conflict, 409, "Conflict"),
    (Unavailable, 503, "Unavailable"),
)


@dataclass(frozen=True)
class _Current:
    """The request's live session: its row id, CSRF token and principal."""

    session_id: int
    csrf_token: str
    principal: Principal


# -- sessions ----------------------------------------------------------------------------

def _settings() -> Settings:
    settings: Settings = current_app.config["RELAYFLEET_SETTINGS"]
    return settings


def _current() -> _Current | None:
    """The request's valid session (looked up once per request), or ``None``."""
    if "console_current" not in g:
        secret = request.cookies.get(COOKIE, "")
        g.console_current = _lookup(secret) if 0 < len(secret) <= 100 else None
    current: _Current | None = g.console_current
    return current


def _lookup(secret: str) -> _Current | None:
    """The session whose cookie secret this is, if it and its token are still good; an
    ended session's row is deleted on the way."""
    session = db.session
    # Looked up by the hash itself: an index probe's timing could at most tell an
    # attacker something about SHA-256 values, which leads back to no secret.
    found = session.execute(
        select(ConsoleSession, Token).join(Token, Token.id == ConsoleSession.token_id)
        .where(ConsoleSession.secret_sha256 == sha256_hex(secret))).first()
    if found is None:
        return None
    row, token = found
    now = utcnow()
    idle = (now - row.last_seen_at).total_seconds()
    # Statements, not ORM changes: two requests of one browser may both get here, and
    # the second must not fail on a row the first has already deleted.
    if token.revoked_at is not None or now >= row.expires_at or \
            idle >= _settings().console_idle_s:
        session.execute(delete(ConsoleSession).where(ConsoleSession.id == row.id))
        session.commit()
        return None
    if idle >= TOUCH_EVERY_S:
        session.execute(update(ConsoleSession).where(ConsoleSession.id == row.id)
                        .values(last_seen_at=now))
        session.commit()
    return _Current(row.id, row.csrf_token,
                    Principal(token.id, token.name, token.role, token.tenant_id))


def _open(principal: Principal) -> tuple[ConsoleSession, str]:
    """A new session for ``principal`` (a new secret every time: nothing a browser held
    before sign-in is ever a session) and the secret its cookie carries."""
    session = db.session
    settings = _settings()
    now = utcnow()
    # Ended sessions are deleted when they are next seen; those never seen again go here.
    session.execute(delete(ConsoleSession).where(or_(
        ConsoleSession.expires_at <= now,
        ConsoleSession.last_seen_at <= now - dt.timedelta(seconds=settings.console_idle_s))))
    old = request.cookies.get(COOKIE, "")
    if old:
        session.execute(delete(ConsoleSession).where(
            ConsoleSession.secret_sha256 == sha256_hex(old)))
    secret = secrets.token_urlsafe(32)
    row = ConsoleSession(secret_sha256=sha256_hex(secret), token_id=principal.token_id,
                         csrf_token=secrets.token_urlsafe(32), created_at=now,
                         expires_at=now + dt.timedelta(seconds=settings.console_max_s),
                         last_seen_at=now, remote_addr=_address())
    session.add(row)
    session.commit()
    return row, secret


def _address() -> str:
    """The browser's address as the audit log and the sign-in limit know it."""
    return (request.remote_addr or "unknown")[:64]


def _secure() -> bool:
    """Whether the console's cookies are ``Secure``: always if the setting says so, else
    whenever the browser came over TLS. The app trusts no proxy header itself; gunicorn
    turns a local TLS front's X-Forwarded-Proto into the request's scheme
    (forwarded_allow_ips, loopback by default), so request.is_secure covers that too."""
    return _settings().console_secure_cookie or request.is_secure


def _set_cookie(response: Response, secret: str) -> None:
    response.set_cookie(COOKIE, secret, max_age=_settings().console_max_s, path=COOKIE_PATH,
                        secure=_secure(), httponly=True, samesite="Strict")


def _clear_cookie(response: Response) -> None:
    response.delete_cookie(COOKIE, path=COOKIE_PATH, secure=_secure(),
                           httponly=True, samesite="Strict")


# -- what views and templates use ----------------------------------------------------------

def principal() -> Principal:
    """The signed-in principal of this request (only inside a signed-in view)."""
    who: Principal | None = g.get("principal")
    if who is None:
        raise RuntimeError("principal() called outside a signed-in console view")
    return who


def can(role: str) -> bool:
    """Whether the signed-in principal may do what ``role`` allows (``False`` signed out)."""
    who: Principal | None = g.get("principal")
    return who is not None and who.may(role)


def csrf_field() -> Markup:
    """The hidden input every ``<form method="post">`` of the console carries."""
    current = _current() if has_request_context() else None
    if current is None:
        return Markup("")
    return Markup('<input type="hidden" name="{}" value="{}">').format(
        CSRF_FIELD, escape(current.csrf_token))


def _here() -> str:
    return request.full_path.rstrip("?") if request.query_string else request.path


def _signed_out() -> Response:
    """The answer to a page asked for without a (valid) session."""
    login = url_for("console.login", next=_here())
    if request.headers.get("Sec-Fetch-Mode", "navigate") != "navigate":
        # a script's fetch (live parts of a page): a fragment it can show, not the form
        body = Markup('<p class="flash error" role="alert">Your session has ended: '
                      '<a href="{}">sign in again</a>.</p>').format(login)
        return Response(str(body), 401, mimetype="text/html")
    return cast(Response, redirect(login, 303))


def _enter() -> Response | None:
    """Make the request's principal known, or the answer for a browser not signed in."""
    current = _current()
    if current is None:
        return _signed_out()
    g.principal = current.principal
    return None


def signed_in(view: F) -> F:
    """View decorator: without a valid session, send the browser to sign in (and back here
    afterwards); with one, set ``g.principal`` and run the view."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        refused = _enter()
        if refused is not None:
            return refused
        return view(*args, **kwargs)

    return cast(F, wrapper)


def requires(role: str) -> Callable[[F], F]:
    """View decorator: the principal's role must be at least ``role`` (else the 403 page).
    Put it under ``@signed_in`` (it signs in by itself too, so the order is forgiving)."""
    check_role(role)

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if g.get("principal") is None:
                refused = _enter()
                if refused is not None:
                    return refused
            principal().require(role)
            return view(*args, **kwargs)

        return cast(F, wrapper)

    return decorate


def form_number(raw: str, limit: int = 2**31) -> int | None:
    """``raw`` as a number below ``limit`` if it is ASCII digits only (``None`` otherwise):
    ``"²".isdigit()`` is true but ``int("²")`` raises, so ``isdigit`` cannot guard ``int``."""
    if not re.fullmatch(r"[0-9]{1,10}", raw):
        return None
    number = int(raw)
    return number if number < limit else None


def nav_items() -> list[tuple[str, str]]:
    """The navigation for the signed-in principal: ``(endpoint, label)`` of each page its
    role may open (pages not served by this controller are left out)."""
    if g.get("principal") is None:
        return []
    views = current_app.view_functions
    return [(endpoint, label) for endpoint, label, role in NAV
            if endpoint in views and can(role)]


def tenant_name() -> str | None:
    """The signed-in principal's tenant, ``None`` for MSP-wide tokens (and signed out)."""
    who: Principal | None = g.get("principal")
    if who is None or who.tenant_id is None:
        return None
    if "console_tenant_name" not in g:
        g.console_tenant_name = db.session.scalar(
            select(Tenant.name).where(Tenant.id == who.tenant_id))
    name: str | None = g.console_tenant_name
    return name


def _context() -> dict[str, Any]:
    return {"principal": g.get("principal"), "tenant_name": tenant_name(),
            "nav_items": nav_items(), "csrf_field": csrf_field, "can": can}


def home_url() -> str:
    """Where a signed-in browser lands: the fleet page."""
    return url_for("console.fleet")


def safe_next(value: str | None) -> str | None:
    """``value`` if it is a console page on this site to go to after sign-in, else ``None``
    (no open redirect: no scheme, no host, nothing outside ``/ui/``)."""
    if not value or len(value) > 2000 or "\\" in value or \
            any(ord(char) < 32 or ord(char) == 127 for char in value):
        return None
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or not parts.path.startswith("/ui/"):
        return None
    # browsers resolve dot segments (also percent-encoded) before asking: refuse them
    segments = unquote(parts.path).split("/")
    if "." in segments or ".." in segments or "" in segments[1:-1]:
        return None
    if parts.path.rstrip("/") in (url_for("console.login"), url_for("console.logout")):
        return None
    return value


# -- forgery -------------------------------------------------------------------------------

def _same_origin(value: str) -> bool:
    """Whether an ``Origin`` (or ``Referer``) names this site (``request.host``: a reverse
    proxy in front must pass the browser's ``Host`` header through)."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False  # includes "null": a sandboxed frame, a file, a privacy redirect
    # https in the browser while the app sees http: a TLS front that does not say so
    scheme_ok = parts.scheme == request.scheme or (parts.scheme, request.scheme) == (
        "https", "http")
    return scheme_ok and parts.netloc.lower() == request.host.lower()


def _forgery_check() -> Response | None:
    """Before every console request: an unsafe request must come from this site's own
    pages and carry the session's CSRF token (the sign-in form: the origin alone)."""
    if request.method not in UNSAFE_METHODS:
        return None
    origin = request.headers.get("Origin")
    if origin is not None and not _same_origin(origin):
        return _error_page(400, "Refused", "This form was sent from another site. Open the "
                           "console directly and send it again from there.")
    if request.endpoint == "console.login":
        referer = request.headers.get("Referer")
        if origin is None and referer is None:
            # Login forgery: browsers send Origin with every form POST, so a sign-in
            # naming no page at all did not come from this site's form.
            return _error_page(400, "Refused", "This sign-in did not say which page it "
                               "came from, so it was not accepted. Open the console's "
                               "sign-in page and sign in there.")
        if origin is None and referer is not None and not _same_origin(referer):
            return _error_page(400, "Refused", "This sign-in came from another site. Open "
                               "the console directly and sign in there.")
        return None
    current = _current()
    if current is None:
        if request.endpoint == "console.logout":
            return cast(Response, redirect(url_for("console.login"), 303))
        return _error_page(401, "Signed out", "Your session has ended (or you were not "
                           "signed in), so this was not done. Sign in and try again.",
                           back=(url_for("console.login"), "Sign in"))
    g.principal = current.principal  # the audit row names who sent it, refused or not
    sent = request.form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER) or ""
    if not hmac.compare_digest(sent.encode("utf-8", "surrogateescape"),
                               current.csrf_token.encode()):
        return _error_page(400, "Refused", "This form is missing its security token or it "
                           "belongs to an older session, so nothing was done. Reload the "
                           "page and send it again.")
    return None


# -- error pages ---------------------------------------------------------------------------

def _back_link() -> tuple[str, str]:
    """Where an error page points: the page the browser came from if it is a console page
    of this site, else the fleet (the sign-in page when signed out)."""
    referrer = request.referrer
    if referrer and _same_origin(referrer):
        parts = urlsplit(referrer)
        local = safe_next(parts.path + (f"?{parts.query}" if parts.query else ""))
        if local and local != _here():
            return local, "Back to the previous page"
    if g.get("principal") is not None and "console.fleet" in current_app.view_functions:
        return home_url(), "Back to the fleet"
    return url_for("console.login"), "Sign in"


def _error_page(status: int, title: str, message: str, *,
                errors: dict[str, list[str]] | None = None,
                back: tuple[str, str] | None = None) -> Response:
    back_url, back_label = back or _back_link()
    # the context given here too: a request no console view matched has no blueprint
    # whose context processor would add it
    body = render_template("error.html", **_context(), status=status, title=title,
                           message=message, errors=errors or {}, back_url=back_url,
                           back_label=back_label)
    return console_headers(Response(body, status, mimetype="text/html"))


def _relayfleet_error(exc: RelayfleetError) -> Response:
    for kind, status, title in _ERROR_PAGES:
        if isinstance(exc, kind):
            errors = exc.errors if isinstance(exc, ValidationError) else None
            return _error_page(status, title, exc.message, errors=errors)
    current_app.logger.error("console request failed: %s", exc.message)
    db.session.rollback()
    return _error_page(500, "Something went wrong", exc.message)


def http_error_page(exc: HTTPException) -> Response | HTTPException:
    """The error page of an HTTP error in a console view, or under a console path that no
    view matched (routing errors: unknown page, wrong method)."""
    if exc.code is None or exc.code < 400:
        return exc
    if exc.code >= 500:
        db.session.rollback()  # whatever failed may have left the session unusable
    elif g.get("principal") is None and request.path.startswith(f"{COOKIE_PATH}/"):
        # No view ran (a routing error): the page shows the navigation when signed in.
        current = _current()
        if current is not None:
            g.principal = current.principal
    data = getattr(exc, "data", None) or {}
    message = data.get("message") if isinstance(data, dict) else None
    response = _error_page(exc.code, exc.name, str(message or exc.description or exc.name))
    for name, value in exc.get_headers():
        if name.lower() != "content-type":  # Allow (405), Retry-After, ...
            response.headers[name] = value
    return response


def protect(blueprint: Blueprint) -> None:
    """Give ``blueprint`` the console's forgery checks, template context and error pages
    (the console's own blueprint has them; a page of another blueprint under ``/ui/``
    would need them too)."""
    blueprint.before_request(_forgery_check)
    blueprint.context_processor(_context)
    blueprint.register_error_handler(RelayfleetError, _relayfleet_error)
    blueprint.register_error_handler(HTTPException, http_error_page)


protect(bp)


# -- flash messages --------------------------------------------------------------------------

class _FlashCookie(SecureCookieSessionInterface):
    """Flask's signed cookie session, used by the console for flash messages only:
    ``Secure`` whenever the request came over TLS, and not opened outside the console."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(has_request_context() and _secure())

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        # The cookie's path is the console's, so no API call carries it: opening it there
        # would only build its signer for nothing (on every API call).
        if not is_console_path(request.path):
            return self.make_null_session(app)
        return super().open_session(app, request)


@bp.record_once
def _setup(state: BlueprintSetupState) -> None:
    app = cast(Flask, state.app)
    settings: Settings = app.config["RELAYFLEET_SETTINGS"]
    app.extensions["relayfleet_console_sign_in"] = SignInFailures()
    app.secret_key = derive_key(settings.secret_key, "console flash v1")
    app.config.update(SESSION_COOKIE_NAME="relayfleet_flash", SESSION_COOKIE_PATH=COOKIE_PATH,
                      SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Strict")
    app.session_interface = _FlashCookie()


# -- sign-in and sign-out ----------------------------------------------------------------------

class SignInFailures:
    """Failed sign-ins per address in the last ``window_s`` seconds, in this process.

    The audit rows cannot count them: failed sign-ins are summarized like every
    unauthenticated call (:class:`controller.app.UnauthenticatedTally`). Kept in memory,
    not in a table: nothing to write per failure and no schema, at the price that with
    several controller processes (gunicorn workers) each pauses on its own failures, so an
    address may fail up to ``limit`` times per process before it is paused everywhere. That
    is enough: the pause bounds noise, not guessing (tokens are 256-bit random). At most
    ``max_addresses`` addresses are tracked; past that (once those out of the window are
    forgotten), the others share one entry (``*``).
    """

    def __init__(self, limit: int = SIGN_IN_LIMIT, window_s: float = SIGN_IN_WINDOW_S,
                 max_addresses: int = 10_000) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_addresses = max_addresses
        self._lock = threading.Lock()
        self._failures: dict[str, deque[float]] = {}
        self._pruned_at = -math.inf

    def retry_after(self, address: str, now: float) -> int | None:
        """Seconds until ``address`` may fail again, ``None`` if it is not paused."""
        with self._lock:
            return self._retry_after(self._key(address, now), now)

    def failed(self, address: str, now: float) -> int | None:
        """Count a failed sign-in; the seconds of the pause it starts (``None``: none).

        Two requests at once may both pass :meth:`retry_after` before either is counted:
        the limit can be passed by the requests in flight, never more."""
        with self._lock:
            key = self._key(address, now)
            self._failures.setdefault(key, deque(maxlen=self.limit)).append(now)
            return self._retry_after(key, now)

    def _key(self, address: str, now: float) -> str:
        if address in self._failures or len(self._failures) < self.max_addresses:
            return address
        if now - self._pruned_at >= 1.0:  # at most once a second: it walks every entry
            self._pruned_at = now
            for stale in [key for key, times in self._failures.items()
                          if now - times[-1] >= self.window_s]:
                del self._failures[stale]
        return address if len(self._failures) < self.max_addresses else "*"

    def _retry_after(self, key: str, now: float) -> int | None:
        recent = [at for at in self._failures.get(key, ()) if now - at < self.window_s]
        if len(recent) < self.limit:
            return None
        # free again once the oldest of the last ``limit`` failures leaves the window
        return max(1, math.ceil(recent[-self.limit] + self.window_s - now))


def _failures() -> SignInFailures:
    failures: SignInFailures = current_app.extensions["relayfleet_console_sign_in"]
    return failures


def _wait_text(seconds: int) -> str:
    minutes = math.ceil(seconds / 60)
    return f"{minutes} minute{'s' if minutes != 1 else ''}" if seconds > 60 else \
        f"{seconds} second{'s' if seconds != 1 else ''}"


def _too_many(retry: int) -> Response:
    response = _error_page(
        429, "Too many failed sign-ins",
        f"There were {SIGN_IN_LIMIT} failed sign-ins from your address in the last "
        f"{SIGN_IN_WINDOW_S // 60} minutes, so sign-in is paused there. Try again in "
        f"{_wait_text(retry)}.", back=(url_for("console.login"), "Back to sign-in"))
    response.headers["Retry-After"] = str(retry)
    return response


def _login_form(status: int, target: str | None, error: str | None = None) -> Response:
    body = render_template("login.html", next=target or "", error=error)
    return Response(body, status, mimetype="text/html")


@bp.route("/login", methods=["GET", "POST"])
def login() -> Response:
    """The sign-in form; a good token opens a session and goes on to ``next``."""
    target = safe_next(request.values.get("next"))
    if request.method != "POST":
        if _current() is not None:
            return cast(Response, redirect(target or home_url(), 303))
        return _login_form(200, target)
    address, now = _address(), time.monotonic()
    presented = request.form.get("token", "").strip()
    who = None
    # Looked up whether or not the address is paused: a right token goes through a pause
    # (see the module's docstring); authenticate() compares in constant time as ever.
    if presented and len(presented) <= MAX_TOKEN_CHARS and "\x00" not in presented:
        who = authenticate(db.session, presented)
    if who is None:
        failures = _failures()
        retry = failures.retry_after(address, now)
        if retry is not None:
            # not counted: the pause would otherwise never end under a steady stream
            g.audit_detail = {"event": "console sign-in refused: paused",
                              "retry_after_s": retry}
            return _too_many(retry)
        reason = "no token given" if not presented else "wrong, unknown or revoked token"
        retry = failures.failed(address, now)
        # written (or summarized) by the app's audit of unauthenticated calls
        g.audit_detail = {"event": "console sign-in failed", "reason": reason}
        if retry is not None:
            g.audit_detail["paused_s"] = retry
        paused = "" if retry is None else (
            f" Sign-in from your address is now paused for {_wait_text(retry)}: there were "
            f"{SIGN_IN_LIMIT} failed attempts in {SIGN_IN_WINDOW_S // 60} minutes.")
        return _login_form(401, target, "That token was not accepted: it is wrong, unknown "
                           "or revoked. Paste the whole token (it starts with rft_)." + paused)
    row, secret = _open(who)
    g.principal = who
    g.audit_target = f"console-session:{row.id}"
    g.audit_detail = {"event": "console sign-in"}
    response = cast(Response, redirect(target or home_url(), 303))
    _set_cookie(response, secret)
    return response


@bp.route("/logout", methods=["POST"])
def logout() -> Response:
    """End the session (the forgery check has made sure this browser asked for it)."""
    current = _current()
    if current is not None:
        db.session.execute(delete(ConsoleSession).where(
            ConsoleSession.id == current.session_id))
        db.session.commit()
        g.audit_target = f"console-session:{current.session_id}"
        g.audit_detail = {"event": "console sign-out"}
    flash("You are signed out.", "success")
    response = cast(Response, redirect(url_for("console.login"), 303))
    _clear_cookie(response)
    return response
