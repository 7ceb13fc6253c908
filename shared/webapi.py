"""What the agent's and the controller's HTTP APIs share: the one error envelope.

Imported only by the web apps (it needs Flask and flask-smorest, the ``agent`` extra).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from flask import Flask, request
from flask_smorest import Api, abort
from werkzeug.exceptions import HTTPException

from shared import errors as rf_errors
from shared import schemas as rf_schemas


class EnvelopeApi(Api):  # type: ignore[misc]
    """flask-smorest's Api with relayfleet's flat error envelope."""

    # Document every error answer with the envelope relayfleet actually sends.
    ERROR_SCHEMA = rf_schemas.ErrorSchema

    def handle_http_exception(self, error: HTTPException) -> Any:
        """Render every HTTP error as ``{code, status, message, errors}``."""
        data = getattr(error, "data", None) or {}
        raw = data.get("errors") or data.get("messages") or {}
        errors: dict[str, list[str]] = {}
        for location, fields in raw.items():
            # webargs nests by location ({"json": {"host": [...]}}): flatten it.
            if isinstance(fields, dict):
                for key, reasons in _flatten(fields).items():
                    errors.setdefault(key, []).extend(reasons)
            else:
                errors[str(location)] = [str(r) for r in fields]
        message = data.get("message") or (
            "invalid request: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in errors.items())
            if errors else error.description or error.name)
        payload: dict[str, Any] = {"code": error.code, "status": error.name, "message": message}
        if errors:
            payload["errors"] = errors
        return payload, error.code, data.get("headers", {})


def _flatten(fields: dict[str, Any], prefix: str = "") -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key, value in fields.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = [str(v) for v in (value if isinstance(value, list) else [value])]
    return out


def _refuse_unreadable_json() -> None:
    """A body that is not JSON is a 415 (it would otherwise be read as no body at all),
    and a JSON body the parser cannot hold (an integer of thousands of digits, nesting
    thousands deep) a 400, not an error escaping the request parser as a 500."""
    if not request.content_length:
        return
    if not request.is_json:
        abort(415, message="send the body as JSON (Content-Type: application/json)")
    try:
        json.loads(request.get_data(cache=True))
    except json.JSONDecodeError:
        return  # webargs answers these itself (400, "Invalid JSON body.")
    except (ValueError, RecursionError) as exc:
        reason = ("nested too deeply" if isinstance(exc, RecursionError)
                  else "holds a number too long to read")
        abort(400, message=f"the JSON body {reason}")


def register_error_handler(app: Flask, api: EnvelopeApi,
                           status_for: Mapping[type[rf_errors.RelayfleetError], int],
                           log: logging.Logger, *,
                           not_json: Callable[[str], bool] | None = None,
                           not_json_error: Callable[[HTTPException], Any] | None = None,
                           ) -> None:
    """Answer every uncaught relayfleet error with the envelope and its mapped status, and
    refuse JSON bodies the parser cannot hold (400); paths ``not_json`` accepts (HTML
    forms) are left to their views, and their HTTP errors no blueprint handled (routing
    errors: an unknown path, a wrong method) to ``not_json_error`` when given."""

    @app.before_request
    def _refuse_unreadable() -> None:
        if not_json is None or not not_json(request.path):
            _refuse_unreadable_json()

    if not_json is not None and not_json_error is not None:
        is_page, page = not_json, not_json_error

        # Replaces the handler flask-smorest registered (one per app and class); the API's
        # paths still get exactly its envelope.
        @app.errorhandler(HTTPException)
        def http_error(error: HTTPException) -> Any:
            if is_page(request.path):
                return page(error)
            return api.handle_http_exception(error)

    @app.errorhandler(rf_errors.RelayfleetError)
    def relayfleet_error(exc: rf_errors.RelayfleetError) -> Any:
        status = next((code for cls, code in status_for.items() if isinstance(exc, cls)), 500)
        errors = exc.errors if isinstance(exc, rf_errors.ValidationError) else None
        if status >= 500:
            log.error("request failed: %s", exc.message)
        try:
            abort(status, message=exc.message, **({"errors": {"json": errors}} if errors else {}))
        except HTTPException as http_exc:
            return api.handle_http_exception(http_exc)
        raise AssertionError("unreachable")  # pragma: no cover
