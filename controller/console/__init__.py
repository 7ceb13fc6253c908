"""The web console: server-rendered pages under ``/ui/`` over the same service layer as the
API (no business logic in templates), signed in with a token that becomes a session
cookie, every asset served from here (NOCs are often offline from the public internet).

Modules: :mod:`~controller.console.session` (sign-in, the session cookie, CSRF, roles,
error pages), :mod:`~controller.console.fleet_pages` (fleet, host, jobs, job with live
progress), :mod:`~controller.console.launch_pages` (launch with a dry-run preview, audit,
tokens, the API docs).

Routing errors under the console's paths (an unknown ``/ui/...`` page, a wrong method) are
the console's HTML error page with its headers, not the API's JSON envelope:
:func:`error_page` is what the app's HTTP error handler calls for those paths
(:func:`shared.webapi.register_error_handler`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, Response, redirect, request, url_for
from werkzeug.exceptions import HTTPException

STATIC = Path(__file__).with_name("static")

bp = Blueprint("console", __name__, url_prefix="/ui", template_folder="templates",
               static_folder="static", static_url_path="/static")


def asset_version() -> str:
    """A short hash of every static file: asset URLs change when any of them does, so
    browsers may cache them for a long time."""
    digest = hashlib.sha256()
    for path in sorted(STATIC.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(STATIC).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def is_console_path(path: str) -> bool:
    """Whether a request path belongs to the console (it authenticates by session, not by
    bearer token)."""
    return path in {"/", "/ui"} or path.startswith("/ui/")


#: computed once per process: the static files do not change while it runs
ASSET_VERSION = asset_version()


def asset(filename: str) -> str:
    """The URL of a static file, versioned for caching."""
    return url_for("console.static", filename=filename, v=ASSET_VERSION)


#: endpoints serving files whose URLs carry a version (``?v=``): endpoint -> the version
VERSIONED_ASSETS: dict[str, str] = {"console.static": ASSET_VERSION}


@bp.after_request
def console_headers(response: Response) -> Response:
    """The console's security and caching headers (every console answer, error pages of
    requests no console view matched included)."""
    version = VERSIONED_ASSETS.get(request.endpoint or "")
    if version is not None and request.args.get("v") == version \
            and response.status_code < 400:
        # a versioned asset never changes under its URL: cached for good
        response.cache_control.no_store = False
        response.cache_control.no_cache = None  # send_file's revalidation is not needed
        response.cache_control.public = True
        response.cache_control.max_age = 31536000
        response.cache_control.immutable = True
    elif version is None or response.status_code >= 400:
        # pages show live state and per-user data: never cached
        response.cache_control.no_store = True
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
    return response


def _root() -> Any:
    return redirect(url_for("console.fleet"))


# /ui and /ui/ (strict_slashes off: one rule answers both) go to the fleet as / does
bp.add_url_rule("/", "home", _root, strict_slashes=False)


def error_page(exc: HTTPException) -> Any:
    """The console's HTML page for an HTTP error no console view handled (routing errors:
    an unknown path under ``/ui/``, a method a page does not take)."""
    from controller.console.session import http_error_page  # session imports this module

    return http_error_page(exc)


def init_app(app: Flask) -> None:
    """Register the console's pages, its assets and the ``/`` redirect."""
    # importing them adds their routes to bp (once per process, before any registration)
    from controller.console import (  # noqa: F401
        alert_pages,
        doctor_pages,
        fleet_pages,
        launch_pages,
        policy_pages,
        schedule_pages,
        session,
    )

    app.jinja_env.globals["asset"] = asset
    app.register_blueprint(bp)
    app.add_url_rule("/", "console_root", _root)
