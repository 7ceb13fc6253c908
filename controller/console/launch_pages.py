"""Launch (with a dry-run preview on the first host), audit, tokens and the API docs.

Jobs start through :func:`controller.api.jobs.submit`, the code path of ``POST /v1/jobs``
(checks, scoping, audit target, Idempotency-Key); tokens through
:mod:`controller.inventory`, as ``/v1/tokens`` does. A password typed into the launch form
is sent on to the job and never written back into a page: the real run after a preview
asks for it again.

The real run after a preview is the dry-run job's own action, params and options (only
the password is typed again) on the target the preview was made for: the preview's link
and its form carry that target with a seal (an HMAC over the job id and the target, keyed
from the controller's secret key), and a link or form whose target or seal differ is
refused.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

import swagger_ui_bundle  # type: ignore[import-untyped]
from flask import (
    Response,
    abort,
    current_app,
    flash,
    jsonify,
    make_response,
    redirect,
    render_template,
    request,
    send_from_directory,
    url_for,
)
from marshmallow import ValidationError as MarshmallowError
from sqlalchemy import func, select

from controller import inventory as inv
from controller import jobs as svc
from controller import schemas as s
from controller.api import audit_target
from controller.api import jobs as jobs_api
from controller.auth import Principal
from controller.client.summaries import relay_text, summarize
from controller.config import Settings
from controller.console import VERSIONED_ASSETS, bp
from controller.console.session import principal, requires, signed_in
from controller.crypto import derive_key
from controller.db import db
from controller.errors import Conflict, Unavailable
from controller.job_params import check_target_size
from controller.models import ROLES, AuditEvent, Host, HostTag, Site, Tenant, Token
from shared.actions import CHANGE_ACTIONS, JOB_ACTIONS, job_action
from shared.errors import ValidationError
from shared.schemas import flatten_errors
from shared.validation import refusal

# -- the launch form ------------------------------------------------------------------------

#: what each action is called on the page (the catalogue's summary says what it does)
LABELS: Mapping[str, str] = {
    "set_smarthost": "Set smarthost", "remove_smarthost": "Remove smarthost",
    "flush_queue": "Flush queue", "collect_status": "Collect status",
    "diagnose": "Diagnose", "fix_hostname": "Fix hostname", "read_log": "Read log",
    "queue_list": "List queue",
}
TARGET_KINDS = ("tenants", "sites", "tags", "hosts")
#: more hosts than this are not listed one by one (sites and tags still reach them)
MAX_LISTED_HOSTS = 5000
_NUMBER = re.compile(r"[0-9]{1,9}")


def label(action: str) -> str:
    """An action's name on the page."""
    return LABELS.get(action, action.replace("_", " ").capitalize())


@dataclass(frozen=True)
class FormField:
    """One input of the launch form: its name (and element id ``f-<name>``), its label,
    the job field its errors are named after, and how it is drawn."""

    name: str
    label: str
    error_key: str
    kind: str = "text"  # text, number, checkbox, password, select
    hint: str = ""
    placeholder: str = ""
    choices: tuple[tuple[str, str], ...] = ()


PARAM_FIELDS: Mapping[str, tuple[FormField, ...]] = {
    "set_smarthost": (
        FormField("relay_host", "Relay host", "params.host",
                  hint="a host name, or an address literal like [192.0.2.1]",
                  placeholder="smtp-relay.example.net"),
        FormField("relay_port", "Port", "params.port", "number", hint="empty: 25"),
        FormField("relay_mx", "Look up the relay's MX records", "params.mx", "checkbox",
                  hint="unchecked: connect to the relay host itself"),
        FormField("tls_mode", "TLS", "params.tls.mode", "select", choices=(
            ("", "default"), ("may", "may"), ("encrypt", "encrypt"), ("verify", "verify")),
                  hint="may: STARTTLS when offered; encrypt: mail waits without it; verify: "
                       "the relay's certificate must verify too. Default: may, or encrypt "
                       "with AUTH"),
        FormField("tls_ca_file", "CA file on the host", "params.tls.ca_file",
                  hint="to verify the relay with; empty: the host's own bundle",
                  placeholder="/etc/ssl/certs/ca-certificates.crt"),
        FormField("auth_username", "AUTH user", "params.auth.username",
                  hint="empty: no SMTP AUTH"),
        FormField("auth_password", "AUTH password", "params.auth.password", "password",
                  hint="never shown in a page; asked again for the real run"),
        FormField("masquerade_domain", "Masquerade as domain", "params.masquerade.domain",
                  hint="send the hosts' own mail as @domain (relays check the sender "
                       "domain); empty: no masquerading"),
        FormField("masquerade_envelope", "Masquerade rewrites", "params.masquerade.envelope",
                  "select", choices=(("1", "headers and envelope"), ("0", "headers only"))),
        FormField("verify_to", "Verify delivery to", "params.verify.to",
                  hint="after the change each host sends a probe here and waits for the "
                       "relay's verdict; not delivered: the change is rolled back. Needed "
                       "for a canary", placeholder="probe@example.com"),
    ),
    "flush_queue": (
        FormField("queue_id", "Queue id", "params.queue_id", hint="only this message"),
        FormField("recipient", "Recipient", "params.recipient",
                  hint="only messages to this address or domain"),
        FormField("sender", "Sender", "params.sender",
                  hint="only messages from this address or domain"),
        FormField("keep_host_status", "Keep remembered relay failures",
                  "params.reset_host_status", "checkbox",
                  hint="unchecked: forget them first, so every message is tried now"),
        FormField("verify_to", "Verify delivery to", "params.verify.to",
                  hint="after the run each host sends a probe here and waits for the "
                       "relay's verdict. Needed for a canary", placeholder="probe@example.com"),
    ),
    "diagnose": (
        FormField("domain", "Sender domain", "params.domain",
                  hint="also check this domain's SPF record"),
        FormField("public_ip", "Public address", "params.public_ip",
                  hint="the hosts' public address, for SPF"),
    ),
    "fix_hostname": (
        FormField("fqdn", "Full host name", "params.fqdn",
                  hint="one host: its current short name, qualified",
                  placeholder="pbx-lyon-1.example.com"),
        FormField("domain", "Or: domain", "params.domain",
                  hint="qualify each host's own short name with this domain"),
    ),
    "read_log": (
        FormField("lines", "Lines", "params.lines", "number",
                  hint="how much of the log's tail to read"),
    ),
}
OPTION_FIELDS: tuple[FormField, ...] = (
    FormField("concurrency", "Hosts at once", "options.concurrency", "number",
              placeholder="20"),
    FormField("max_failures", "Stop after this many failed hosts", "options.max_failures",
              "number", hint="empty: never stop early"),
    FormField("timeout_s", "Time box per host (seconds)", "options.timeout_s", "number",
              placeholder="120"),
    FormField("canary", "Canary: hosts first", "options.canary",
              hint="N hosts or P% (e.g. 10%): the rest start only when these succeeded; "
                   "changes and flush only; empty: all at once", placeholder="10%"),
    FormField("wave_size", "Hosts per later wave", "options.wave_size", "number",
              hint="empty: all the rest in one wave"),
)
#: errors about these keys go next to the field that sets them
_ERROR_ALIASES = {"params.auth": "auth_username", "params.tls": "tls_mode",
                  "params.masquerade": "masquerade_domain", "params.verify": "verify_to"}
_SECRET_FIELDS = frozenset({"auth_password"})


def _number(text: str) -> int | str:
    """Digits as an integer; anything else as it is (the job's checks name the field)."""
    return int(text) if _NUMBER.fullmatch(text) else text


def _given(pairs: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    return {key: value for key, value in pairs if value}


def _smarthost_params(v: Mapping[str, str]) -> dict[str, Any]:
    params: dict[str, Any] = {"mx": v.get("relay_mx") == "1", **_given(
        (("host", v.get("relay_host", "")),))}
    if v.get("relay_port"):
        params["port"] = _number(v["relay_port"])
    tls = _given((("mode", v.get("tls_mode", "")), ("ca_file", v.get("tls_ca_file", ""))))
    if tls:
        params["tls"] = tls
    auth = _given((("username", v.get("auth_username", "")),
                   ("password", v.get("auth_password", ""))))
    if auth:
        params["auth"] = auth
    if v.get("masquerade_domain"):
        params["masquerade"] = {"domain": v["masquerade_domain"],
                                "envelope": v.get("masquerade_envelope") != "0"}
    return _verify_param(params, v)


def _verify_param(params: dict[str, Any], v: Mapping[str, str]) -> dict[str, Any]:
    """``params`` with ``verify`` when the form names a probe address."""
    if v.get("verify_to"):
        params["verify"] = {"to": v["verify_to"]}
    return params


def _flush_params(v: Mapping[str, str]) -> dict[str, Any]:
    params: dict[str, Any] = _given(tuple((key, v.get(key, ""))
                                          for key in ("queue_id", "recipient", "sender")))
    if v.get("keep_host_status") == "1":
        params["reset_host_status"] = False
    return _verify_param(params, v)


def _log_params(v: Mapping[str, str]) -> dict[str, Any]:
    return {"lines": _number(v["lines"])} if v.get("lines") else {}


_PARAMS: Mapping[str, Callable[[Mapping[str, str]], dict[str, Any]]] = {
    "set_smarthost": _smarthost_params,
    "flush_queue": _flush_params,
    "diagnose": lambda v: _given((("domain", v.get("domain", "")),
                                  ("public_ip", v.get("public_ip", "")))),
    "fix_hostname": lambda v: _given((("fqdn", v.get("fqdn", "")),
                                      ("domain", v.get("domain", "")))),
    "read_log": _log_params,
}


@dataclass
class LaunchForm:
    """What the launch form (or a query string prefilling it) says."""

    action: str
    values: dict[str, str]
    target: dict[str, list[str]]
    all_hosts: bool
    key: str | None

    @classmethod
    def read(cls, source: Mapping[str, Any]) -> LaunchForm:
        """Read a form or query string (a MultiDict); unknown names are ignored."""
        action = str(source.get("action", ""))
        fields = [*PARAM_FIELDS.get(action, ()), *OPTION_FIELDS]
        values = {}
        for field in fields:
            raw = str(source.get(field.name, ""))
            # a password is taken as typed (its rules refuse blanks at the ends)
            values[field.name] = raw if field.kind == "password" else raw.strip()
        getlist: Callable[[str], list[Any]] = getattr(source, "getlist", lambda _name: [])
        target = {kind: [str(v).strip() for v in getlist(kind) if str(v).strip()]
                  for kind in TARGET_KINDS}
        key = str(source.get("launch_key", ""))
        return cls(action=action if action in JOB_ACTIONS else "", values=values,
                   target=target, all_hosts=source.get("all") == "1",
                   key=key if re.fullmatch(r"console-[0-9a-f]{32}", key) else None)

    def params(self) -> dict[str, Any]:
        """The action's params as the job takes them."""
        build = _PARAMS.get(self.action)
        return build(self.values) if build else {}

    def options(self) -> dict[str, Any]:
        """The job's options that were given (the others take the API's defaults)."""
        return {field.name: _number(self.values[field.name]) for field in OPTION_FIELDS
                if self.values.get(field.name)}

    def carried(self) -> dict[str, Any]:
        """Every value but a password: for a link back to a prefilled form."""
        carried: dict[str, Any] = {"action": self.action}
        if self.all_hosts:
            carried["all"] = "1"
        carried.update({kind: refs for kind, refs in self.target.items() if refs})
        carried.update({name: value for name, value in self.values.items()
                        if value and name not in _SECRET_FIELDS})
        return carried

    def job_target(self, who: Principal) -> dict[str, Any]:
        """The job's target: one kind as it is, several kinds their intersection (as the
        CLI does), or every host the principal may touch."""
        given = {kind: refs for kind, refs in self.target.items() if refs}
        if self.all_hosts:
            if given:
                raise ValidationError.for_field(
                    "target", "choose either all hosts or tenants, sites, tags and hosts")
            return {"all": True}
        if not given:
            raise ValidationError.for_field(
                "target", "choose the hosts: all hosts, or tenants, sites, tags or hosts")
        refs_of = {kind: refs if kind == "tags" else [_number(ref) for ref in refs]
                   for kind, refs in given.items()}
        if len(refs_of) == 1:
            return refs_of
        chosen: set[int] | None = None
        for kind, refs in refs_of.items():
            ids = {host_id for host_id, _ in svc.resolve_target(db.session, who,
                                                                 {kind: refs})}
            chosen = ids if chosen is None else chosen & ids
        if not chosen:
            raise ValidationError.for_field(
                "target", "no host is in all of the chosen " + ", ".join(refs_of) +
                          ": choose fewer kinds, or other ones")
        return {"hosts": sorted(chosen)}


def _new_launch_key() -> str:
    """A new key for one launch form: submitting it twice starts one job."""
    return f"console-{secrets.token_hex(16)}"


def _start(action: str, target: dict[str, Any], params: dict[str, Any],
           options: dict[str, Any], key: str | None) -> dict[str, Any]:
    status, doc = jobs_api.submit(principal(), {"action": action, "target": target,
                                                "params": params, "options": options}, key)
    if status != HTTPStatus.ACCEPTED:
        # the same launch key answered a failure before (the queue was down): say it again
        raise Unavailable(str(doc.get("message") or "the job could not be queued"))
    return doc


def _refusal(exc: ValidationError, had_password: bool) -> tuple[dict[str, list[str]], str]:
    """A refused launch as the form shows it: the field errors, and the sentence asking for
    the password again when one was typed (it is never written back into a page)."""
    errors = exc.errors or {"": [exc.message]}
    if "Idempotency-Key" in errors:
        # this form's key already started a job with other values (Back, then a change)
        errors = {"": ["this form already started a job with other values; the form "
                       "below is a fresh one: check it and send it again"]}
    retype = (" Type the AUTH password again: a password is never written back into a "
              "page." if had_password else "")
    return errors, retype


def start_console_job(action: str, target: dict[str, Any], params: dict[str, Any],
                      options: dict[str, Any], *, key: str | None = None) -> int:
    """Start a job for the signed-in principal exactly as ``POST /v1/jobs`` would (the
    same checks, scoping, audit target; ``key`` acts as its Idempotency-Key); answer its
    id. Refusals raise :class:`shared.errors.ValidationError` with the API's field names
    (``params.host``, ``target``, ``options.concurrency``)."""
    return int(_start(action, target, params, options, key)["id"])


def _inventory(who: Principal) -> dict[str, Any]:
    """What the target lists offer: the tenants, sites, tags and hosts the principal sees."""
    tenants = list(db.session.scalars(inv.scoped(select(Tenant), Tenant, who)
                                      .order_by(Tenant.name)))
    tenant_names = {tenant.id: tenant.name for tenant in tenants}
    sites = [(site.id, f"{tenant_names.get(site.tenant_id, '?')} / {site.name}")
             for site in db.session.scalars(inv.scoped(select(Site), Site, who))]
    visible = inv.scoped(select(Host.id), Host, who)
    tags = list(db.session.scalars(select(HostTag.tag).where(HostTag.host_id.in_(visible))
                                   .distinct().order_by(HostTag.tag)))
    site_names = dict(sites)
    hosts = [(host.id, f"{host.name} ({site_names.get(host.site_id, '?')})")
             for host in db.session.scalars(inv.host_query(who, {}).order_by(None)
                                            .order_by(Host.name)
                                            .limit(MAX_LISTED_HOSTS + 1))]
    return {"tenants": [(tenant.id, tenant.name) for tenant in tenants],
            "sites": sorted(sites, key=lambda item: item[1]), "tags": [(t, t) for t in tags],
            "hosts": hosts[:MAX_LISTED_HOSTS], "hosts_cut": len(hosts) > MAX_LISTED_HOSTS}


def _field_errors(errors: Mapping[str, list[str]], action: str) -> tuple[
        dict[str, list[str]], list[tuple[str, str, str]]]:
    """Errors by form field, and every error as (field name or "", its label, reason) for
    the summary at the top of the form."""
    fields = (*PARAM_FIELDS.get(action, ()), *OPTION_FIELDS)
    by_key = {field.error_key: field for field in fields}
    by_name = {field.name: field for field in fields}
    by_field: dict[str, list[str]] = {}
    summary = []
    for key, reasons in errors.items():
        field = by_key.get(key) or by_name.get(_ERROR_ALIASES.get(key, ""))
        if field is not None:
            name, what = field.name, field.label
        elif key.split(".")[0] == "target":
            name, what = "target", "Hosts"
        else:
            name, what = "", key or "The form"
        for reason in reasons:
            if name:
                by_field.setdefault(name, []).append(reason)
            summary.append((name, what, reason))
    return by_field, summary


def _render_launch(form: LaunchForm, *, errors: Mapping[str, list[str]] | None = None,
                   message: str | None = None, status: int = 200) -> Response:
    who = principal()
    by_field, summary = _field_errors(errors or {}, form.action)
    page = render_template(
        "launch.html", form=form, action=form.action, action_label=label(form.action),
        actions=[(name, label(name), job_action(name).summary) for name in JOB_ACTIONS
                 if who.may(job_action(name).role)],
        change_actions=CHANGE_ACTIONS, param_fields=PARAM_FIELDS.get(form.action, ()),
        option_fields=OPTION_FIELDS, inventory=_inventory(who), field_errors=by_field,
        errors_listed=summary, message=message, launch_key=_new_launch_key(),
        target_only={kind: refs for kind, refs in form.carried().items()
                     if kind in (*TARGET_KINDS, "all")})
    return make_response(page, status)


@bp.route("/launch", methods=["GET", "POST"])
@signed_in
@requires("operator")
def launch() -> Any:
    """The launch form (prefilled from the query string); POST previews a change on the
    first host (a dry run) or starts the job."""
    if request.method == "GET":
        return _render_launch(LaunchForm.read(request.args))
    if "preview" in request.form:
        return _run_previewed(request.form["preview"])
    form = LaunchForm.read(request.form)
    intent = request.form.get("intent", "run")
    try:
        if not form.action:
            raise ValidationError.for_field("action", "choose one of " + ", ".join(
                label(name) for name in JOB_ACTIONS))
        target = form.job_target(principal())
        params = form.params()
        if intent == "preview":
            return _preview(form, target, params)
        doc = _start(form.action, target, params, form.options(), form.key)
    except ValidationError as exc:
        errors, retype = _refusal(exc, bool(form.values.get("auth_password")))
        return _render_launch(form, errors=errors,
                              message="Nothing was started: correct the fields below." + retype,
                              status=422)
    except Conflict as exc:
        return _render_launch(form, message=exc.message, status=409)
    total = doc.get("total")
    flash(f"Job {doc['id']} started: {label(form.action)} on {total} "
          f"host{'' if total == 1 else 's'}.", "success")
    return redirect(url_for("console.job", job_id=doc["id"]), 303)


def _preview(form: LaunchForm, target: dict[str, Any], params: dict[str, Any]) -> Any:
    """Dry-run the change on the first host of the target (the whole target is checked
    first), then show it with the form that runs it for real."""
    hosts = svc.resolve_target(db.session, principal(), target)
    check_target_size(form.action, params, len(hosts))
    doc = _start(form.action, {"hosts": [hosts[0][0]]}, params,
                 {**form.options(), "dry_run": True}, form.key)
    return redirect(url_for("console.launch_preview", job_id=doc["id"],
                            **_bound_fields(int(doc["id"]), target)), 303)


# -- the target a preview was made for -----------------------------------------------------

#: the only fields of the form that runs a preview for real: the action, params and
#: options come from the dry-run job, never from the form
_RUN_FIELDS = frozenset({"csrf_token", "intent", "preview", "seal", "launch_key",
                         *TARGET_KINDS, "all"})
_UNBOUND = ("This preview's hosts are not the ones it was made for (the link or the form "
            "was changed, or it was made before the controller's key changed): nothing was "
            "started. Preview the change again from the launch page.")


def _seal(job_id: int, target: Mapping[str, Any]) -> str:
    """The HMAC that binds a dry-run job to the target its real run covers."""
    settings: Settings = current_app.config["RELAYFLEET_SETTINGS"]
    key = derive_key(settings.secret_key, "console launch preview v1")
    message = json.dumps({"job": job_id, "target": target}, sort_keys=True,
                         separators=(",", ":"))
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def _target_fields(target: Mapping[str, Any]) -> dict[str, Any]:
    """A job target as the launch form's fields (one kind's refs, or all=1)."""
    if target.get("all"):
        return {"all": "1"}
    return {kind: [str(ref) for ref in refs] for kind, refs in target.items()}


def _bound_fields(job_id: int, target: Mapping[str, Any]) -> dict[str, Any]:
    """What a preview's link and its form carry: the target and its seal."""
    return {**_target_fields(target), "seal": _seal(job_id, target)}


def _bound_target(job_id: int, source: Mapping[str, Any]) -> dict[str, Any]:
    """The target a preview was made for, read from its link or form; refused (400)
    unless the seal sent with it is the one the preview made for this job."""
    try:
        target = LaunchForm.read(source).job_target(principal())
    except ValidationError:
        abort(400, _UNBOUND)
    if not hmac.compare_digest(str(source.get("seal", "")).encode("utf-8", "replace"),
                               _seal(job_id, target).encode()):
        abort(400, _UNBOUND)
    return target


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _values_of(action: str, params: Mapping[str, Any],
               options: Mapping[str, Any]) -> dict[str, str]:
    """The launch form's values that make these params and options (a password aside):
    the preview's way back to the form, from the dry-run job rather than from its link."""
    if action == "set_smarthost":
        tls, auth = params.get("tls") or {}, params.get("auth") or {}
        masquerade = params.get("masquerade") or {}
        values = {"relay_host": _text(params.get("host")),
                  "relay_port": _text(params.get("port")),
                  "relay_mx": "1" if params.get("mx") else "",
                  "tls_mode": _text(tls.get("mode")), "tls_ca_file": _text(tls.get("ca_file")),
                  "auth_username": _text(auth.get("username")),
                  "masquerade_domain": _text(masquerade.get("domain")),
                  "masquerade_envelope": "" if not masquerade else
                  "1" if masquerade.get("envelope", True) else "0"}
    elif action == "flush_queue":
        values = {key: _text(params.get(key)) for key in ("queue_id", "recipient", "sender")}
        values["keep_host_status"] = "1" if params.get("reset_host_status") is False else ""
    else:
        values = {field.name: _text(params.get(field.name))
                  for field in PARAM_FIELDS.get(action, ())}
    values.update({field.name: _text(options.get(field.name)) for field in OPTION_FIELDS})
    return values


def _preview_context(job: Any, target: dict[str, Any]) -> dict[str, Any]:
    """What the preview page and its live part show: the dry run's unit, and the hosts
    the real run would cover (the bound target's, never the link's own words)."""
    who = principal()
    params = job.params or {}
    fields = _target_fields(target)
    form = LaunchForm(action=job.action, values=_values_of(job.action, params,
                                                            job.options or {}),
                      target={kind: list(fields.get(kind, [])) for kind in TARGET_KINDS},
                      all_hosts="all" in fields, key=None)
    report = svc.report(db.session, job)
    unit = report.results[0] if report.results else None
    names: list[str] = []
    target_error = None
    try:
        names = [name for _, name in svc.resolve_target(db.session, who, target)]
    except ValidationError as exc:
        target_error = exc.message
    bound = _bound_fields(job.id, target)
    return {
        "job": job, "unit": unit, "form": form, "action_label": label(job.action),
        "finished": job.finished_at is not None,
        "summary": summarize(job.action, {"status": unit.status, "error": unit.error,
                                          "data": unit.data}) if unit else "",
        "what": _what(job.action, params), "names": names, "target_error": target_error,
        "auth_username": (params.get("auth") or {}).get("username"),
        "launch_key": _new_launch_key(),
        "run_fields": [("preview", str(job.id)), *[
            (name, str(item)) for name, value in bound.items()
            for item in (value if isinstance(value, list) else [value])]],
        "run_errors": [], "run_message": None,
        "live_url": url_for("console.launch_preview_live", job_id=job.id, **bound),
        "refresh_url": url_for("console.launch_preview", job_id=job.id, **bound),
    }


def _render_preview(job: Any, target: dict[str, Any], *, status: int = 200,
                    errors: Mapping[str, list[str]] | None = None,
                    message: str | None = None) -> Response:
    context = _preview_context(job, target)
    _, summary = _field_errors(errors or {}, job.action)
    # only the password is a field of this page: other errors are named, not linked
    context["run_errors"] = [(name if name == "auth_password" else "", what, reason)
                             for name, what, reason in summary]
    context["run_message"] = message
    return make_response(render_template("_launch_preview.html", **context), status)


def _run_previewed(job_text: str) -> Any:
    """Run a previewed change for real: the dry-run job's action, params and options (the
    password typed again) on the target its preview was made for, and nothing else."""
    who = principal()
    if not _NUMBER.fullmatch(job_text):
        abort(400, "The preview to run is not a job number: nothing was started.")
    job = svc.get_job(db.session, who, int(job_text))
    if not (job.options or {}).get("dry_run"):
        abort(400, f"Job {job.id} is not a dry run, so there is no preview to run for real: "
                   "nothing was started.")
    params = dict(job.params or {})
    allowed = _RUN_FIELDS | ({"auth_password"} if params.get("auth") else set())
    if any(name not in allowed for name in request.form):
        abort(400, f"A run for real takes its action, settings and hosts from its dry run "
                   f"(job {job.id}), but this form sends other fields: nothing was started. "
                   "Open the preview again and run it from there.")
    target = _bound_target(job.id, request.form)
    if job.finished_at is None:
        raise Conflict(f"the dry run (job {job.id}) has not finished: read its outcome "
                       "before running the change for real")
    password = request.form.get("auth_password", "")
    if params.get("auth") and password:
        params["auth"] = {**params["auth"], "password": password}
    options = {key: value for key, value in (job.options or {}).items() if key != "dry_run"}
    key = LaunchForm.read(request.form).key
    try:
        doc = _start(job.action, target, params, options, key)
    except ValidationError as exc:
        errors, retype = _refusal(exc, bool(params.get("auth")))
        return _render_preview(job, target, errors=errors, status=422,
                               message="Nothing was started." + retype)
    except Conflict as exc:
        return _render_preview(job, target, message=exc.message, status=409)
    total = doc.get("total")
    flash(f"Job {doc['id']} started: {label(job.action)} on {total} "
          f"host{'' if total == 1 else 's'}.", "success")
    return redirect(url_for("console.job", job_id=doc["id"]), 303)


@bp.route("/launch/preview/<int(max=2147483647):job_id>")
@signed_in
@requires("operator")
def launch_preview(job_id: int) -> Any:
    """A dry run's outcome on its host and, once it is known, the form that runs the same
    change on the target it was made for (a password, if any, is asked for again)."""
    job = svc.get_job(db.session, principal(), job_id)
    if not (job.options or {}).get("dry_run"):
        return redirect(url_for("console.job", job_id=job_id))
    return _render_preview(job, _bound_target(job.id, request.args))


@bp.route("/launch/preview/<int(max=2147483647):job_id>/live")
@signed_in
@requires("operator")
def launch_preview_live(job_id: int) -> Any:
    """The preview's live part alone (an HTML fragment, swapped in by console.js)."""
    job = svc.get_job(db.session, principal(), job_id)
    return render_template("_launch_preview_live.html",
                           **_preview_context(job, _bound_target(job.id, request.args)))


def _what(action: str, params: Mapping[str, Any]) -> str:
    """The change in words (the CLI's relay notation for a smarthost)."""
    if action == "set_smarthost":
        return f"relay {relay_text(params)}"
    if action == "fix_hostname":
        return (f"host name {params['fqdn']}" if params.get("fqdn")
                else f"each host's short name + .{params.get('domain')}")
    if action == "remove_smarthost":
        return "direct delivery (no smarthost)"
    return ", ".join(f"{key}={value}" for key, value in params.items())


# -- audit ----------------------------------------------------------------------------------

AUDIT_PAGE = 50


def _query_text(name: str, limit: int = 100) -> str:
    value = request.args.get(name, "").strip()
    if "\x00" in value:
        raise ValidationError.for_field(name, "NUL characters are not accepted")
    return value[:limit]


def _detail_text(detail: Mapping[str, Any] | None) -> str:
    if not detail:
        return ""
    text = ", ".join(f"{key}={value if isinstance(value, str) else json.dumps(value)}"
                     for key, value in detail.items())
    return text if len(text) <= 300 else text[:299] + "…"


def _outcome_text(code: int) -> str:
    try:
        return f"{code} {HTTPStatus(code).phrase}"
    except ValueError:
        return str(code)


@bp.route("/audit")
@signed_in
def audit() -> Any:
    """Who did what, newest first, scoped like ``GET /v1/audit`` (a tenant's tokens see
    their tenant's rows only); filter by action or target text and by token."""
    who = principal()
    action_text, target_text = _query_text("action"), _query_text("target")
    token = _query_text("token")
    token_id = int(token) if _NUMBER.fullmatch(token) else None
    offset_text = _query_text("offset")
    offset = min(int(offset_text), 10**9) if _NUMBER.fullmatch(offset_text) else 0
    stmt = select(AuditEvent).order_by(AuditEvent.id.desc())
    if who.tenant_id is not None:
        stmt = stmt.where(AuditEvent.tenant_id == who.tenant_id)
    tokens_stmt = (select(AuditEvent.token_id, func.max(AuditEvent.token_name))
                   .where(AuditEvent.token_id.is_not(None)).group_by(AuditEvent.token_id)
                   .order_by(AuditEvent.token_id).limit(500))
    if who.tenant_id is not None:
        tokens_stmt = tokens_stmt.where(AuditEvent.tenant_id == who.tenant_id)
    if action_text:
        stmt = stmt.where(AuditEvent.action.contains(action_text, autoescape=True))
    if target_text:
        stmt = stmt.where(AuditEvent.target.contains(target_text, autoescape=True))
    if token_id is not None:
        stmt = stmt.where(AuditEvent.token_id == token_id)
    result = inv.page(db.session, stmt, AUDIT_PAGE, offset)
    filters = _given((("action", action_text), ("target", target_text),
                      ("token", str(token_id) if token_id is not None else "")))
    rows = [{"event": event, "outcome": _outcome_text(event.outcome),
             "detail": _detail_text(event.detail)} for event in result["items"]]
    return render_template(
        "audit.html", rows=rows, total=result["total"], offset=offset, page=AUDIT_PAGE,
        filters=filters, token_id=token_id,
        tokens=[(token, name or f"token {token}")
                for token, name in db.session.execute(tokens_stmt)
                if token is not None])


# -- tokens ---------------------------------------------------------------------------------

def _render_tokens(*, created: tuple[Token, str] | None = None,
                   errors: Mapping[str, list[str]] | None = None,
                   message: str | None = None, entered: Mapping[str, str] | None = None,
                   status: int = 200) -> Response:
    who = principal()
    tokens = list(db.session.scalars(inv.scoped(select(Token), Token, who)
                                     .order_by(Token.id)))
    tenants = list(db.session.scalars(inv.scoped(select(Tenant), Tenant, who)
                                      .order_by(Tenant.name)))
    confirm = request.args.get("revoke", "")
    confirming = next((token for token in tokens if str(token.id) == confirm
                       and token.revoked_at is None), None)
    page = render_template(
        "tokens.html", tokens=tokens, tenants=tenants,
        tenant_names={tenant.id: tenant.name for tenant in tenants}, roles=ROLES,
        created=created, errors=errors or {}, message=message, entered=entered or {},
        confirming=confirming, own_token_id=who.token_id)
    return make_response(page, status)


@bp.route("/tokens", methods=["GET", "POST"])
@signed_in
@requires("admin")
def tokens() -> Any:
    """API tokens (admins): list, make one (its secret shown on this answer only)."""
    if request.method == "GET":
        return _render_tokens()
    who = principal()
    entered = {key: request.form.get(key, "").strip() for key in ("name", "role", "tenant_id")}
    tenant = entered["tenant_id"]
    raw = {"name": entered["name"], "role": entered["role"],
           "tenant_id": _number(tenant) if tenant and who.tenant_id is None else None}
    try:
        try:
            body = s.TokenCreateSchema().load(raw)
        except MarshmallowError as exc:
            raise refusal("token", flatten_errors(exc.messages)) from None
        row, text = inv.create_token(db.session, who, name=body["name"], role=body["role"],
                                     tenant_id=body["tenant_id"])
    except ValidationError as exc:
        return _render_tokens(errors=exc.errors, entered=entered, status=422,
                              message="No token was made: correct the fields below.")
    audit_target(f"token:{row.id}", name=row.name, role=row.role)
    return _render_tokens(created=(row, text), status=201)


@bp.route("/tokens/<int(max=2147483647):token_id>/revoke", methods=["POST"])
@signed_in
@requires("admin")
def token_revoke(token_id: int) -> Any:
    """Revoke a token: programs that use it are refused from now on."""
    audit_target(f"token:{token_id}")
    try:
        row = inv.revoke_token(db.session, principal(), token_id)
    except Conflict as exc:
        return _render_tokens(message=exc.message, status=409)
    flash(f"Token {row.name!r} is revoked: programs that use it are refused from now on.",
          "success")
    return redirect(url_for("console.tokens"), 303)


# -- API docs -------------------------------------------------------------------------------

SWAGGER_DIR = Path(swagger_ui_bundle.swagger_ui_path)
SWAGGER_VERSION = SWAGGER_DIR.name.removeprefix("swagger-ui-")
#: the two files the docs page loads (the package holds more; nothing else is served)
SWAGGER_FILES = frozenset({"swagger-ui-bundle.js", "swagger-ui.css"})
VERSIONED_ASSETS["console.swagger_asset"] = SWAGGER_VERSION
@bp.route("/vendor/swagger/<path:filename>")
def swagger_asset(filename: str) -> Response:
    """Swagger UI's script and style, from the installed package (no CDN)."""
    if filename not in SWAGGER_FILES:
        abort(404)
    return send_from_directory(SWAGGER_DIR, filename)


@bp.route("/docs")
@signed_in
def docs() -> Response:
    """The API reference: Swagger UI over the API's OpenAPI document."""
    page = render_template(
        "docs.html", spec_url=url_for("console.openapi"),
        swagger_js=url_for("console.swagger_asset", filename="swagger-ui-bundle.js",
                           v=SWAGGER_VERSION),
        swagger_css=url_for("console.swagger_asset", filename="swagger-ui.css",
                            v=SWAGGER_VERSION))
    # Swagger UI 4 sets its styles through the CSSOM, which CSP allows: the page runs
    # under the console's strict policy (no inline script or style) like every other one.
    return make_response(page)


@bp.route("/openapi.json")
@signed_in
def openapi() -> Response:
    """The API's OpenAPI document, for the signed-in session (the docs page reads it)."""
    return jsonify(current_app.extensions["relayfleet_api"].spec.to_dict())
