"""Action rules the controller applies: params checked at the API edge, the typed request
rebuilt from what a job stores, and what a host's result teaches about its last known
state. The rules themselves are the catalogue's (:mod:`shared.actions`)."""

from __future__ import annotations

from typing import Any

from controller.db import utcnow
from controller.doctor import host_causes
from controller.models import Host
from shared.actions import CHANGE_ACTIONS, Request, job_action
from shared.errors import ValidationError
from shared.profile import PROFILE_KINDS
from shared.results import OperationResult
from shared.validation import refusal


def _prefixed(exc: ValidationError, prefix: str) -> ValidationError:
    """The same refusal with every field named inside the job document (``params.host``)."""
    return refusal("params", {f"{prefix}{key}": reasons for key, reasons in exc.errors.items()})


def validate_params(action: str, params: dict[str, Any],
                    options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Check an action's params with the agent's own rules; return (public, secret) parts."""
    entry = job_action(action)
    if "dry_run" in params:
        raise ValidationError.for_field("params.dry_run", "use options.dry_run")
    if options.get("dry_run") and not entry.changes_host:
        raise ValidationError.for_field(
            "options.dry_run", f"only {' and '.join(CHANGE_ACTIONS)} have a dry run")
    try:
        request = entry.parse(params)
    except ValidationError as exc:
        raise _prefixed(exc, "params.") from None
    return entry.split(request)


def check_target_size(action: str, params: dict[str, Any], hosts: int) -> None:
    """Refuse a job whose params name one host (fix_hostname's fqdn) over more than one."""
    entry = job_action(action)
    given = [key for key in entry.one_host_params if params.get(key) is not None]
    if given and hosts > 1:
        raise ValidationError.for_field(
            f"params.{given[0]}", f"names one host, but the target matches {hosts} hosts: "
            f"target that host alone, or {entry.one_host_params[given[0]]}")


def stored_request(action: str, public: dict[str, Any],
                   secret: dict[str, Any] | None) -> Request:
    """The typed request of a stored job, from its public params and decrypted secret."""
    request: Request = job_action(action).stored(public, secret)
    return request


#: one more miss in a row, as SQL: concurrent units of a host count each miss, none lost
#: (one object, so that the ledger builds the statement that holds it once)
UNREACHABLE_STREAK_UP = Host.unreachable_streak + 1


def learned(job_id: int, job: dict[str, Any], *, status: str, error: str | None,
            result: OperationResult | None, mta_kind: str | None = None) -> dict[str, Any]:
    """What one result says about its host's last known state (for ``GET /v1/fleet``);
    ``mta_kind`` is the kind the transport drove the host as, when it knows (SSH)."""
    if status == "unreachable":
        return {"last_job_id": job_id, "last_reachable": False, "last_error": error,
                "unreachable_streak": UNREACHABLE_STREAK_UP}
    values: dict[str, Any] = {"last_job_id": job_id, "last_reachable": True,
                              "last_seen_at": utcnow(), "unreachable_streak": 0,
                              "last_error": error if status == "failed" else None}
    if mta_kind in PROFILE_KINDS:
        values["mta_detected_kind"] = mta_kind
    data = result.data if result else {}
    values.update(job_action(job["action"]).learn(
        status, data, bool(job["options"].get("dry_run"))))
    if job["action"] == "collect_status" and status == "succeeded":
        values["causes"] = host_causes(data, data.get("smarthost"))
    return values
