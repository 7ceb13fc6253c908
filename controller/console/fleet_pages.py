"""Fleet, host, jobs and job pages: what the API's reads answer, as HTML.

Every read goes through the same service functions as the API (:mod:`controller.inventory`,
:mod:`controller.jobs`) with the signed-in principal, so scoping is the API's: another
tenant's host or job is :class:`~controller.errors.NotFound` (the 404 page). The job
page's live part is one partial template: the page renders it, and ``/live`` answers it
alone for ``static/console.js`` to swap in every second until the job has finished.
Retry and cancel call the service functions the API's job routes call; the host page's
one-click reads start their job as the launch page does (``start_console_job``).

The host row keeps no oldest-message age: the fleet and host pages show the one the
host's last ``collect_status`` measured (with when), and only while no flush has run since.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flask import flash, redirect, render_template, request, url_for
from markupsafe import Markup
from marshmallow import Schema, fields, validate
from marshmallow import ValidationError as SchemaError
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from werkzeug.wrappers import Response

from controller import inventory as inv
from controller import jobs as svc
from controller import ledger, policy
from controller import schemas as s
from controller.api import audit_target
from controller.api import jobs as jobs_api
from controller.auth import Principal
from controller.client.summaries import age_text, relay_text, summarize
from controller.console import bp
from controller.console.launch_pages import start_console_job
from controller.console.session import principal, requires, signed_in
from controller.db import db, utcnow
from controller.errors import Conflict
from controller.ledger import RETRYABLE_UNIT_STATES, UnitState
from controller.models import TRANSPORTS, Host, Job, JobHost, Policy, Site, Tenant, Token
from shared.actions import JOB_ACTIONS
from shared.errors import RelayfleetError, ValidationError
from shared.schemas import WholeInteger
from shared.sendmail.maillog import outcome

#: the fleet's views: every host, and the two lists a NOC works through
FLEET_VIEWS = (("all", "Every host"), ("holding_mail", "Holding mail"),
               ("out_of_sync", "Out of sync"), ("drifted", "Drifted from policy"))
#: a job's host states that need someone's attention (listed first, as the CLI does)
BAD_UNIT_STATES = (*RETRYABLE_UNIT_STATES, UnitState.SKIPPED.value)
#: the job page shows this many hosts unless asked for all (each row may hold steps)
JOB_HOST_ROWS = 200
#: the actions whose last result the host page shows
HOST_RESULT_ACTIONS = ("collect_status", "queue_list", "read_log", "flush_queue", "diagnose")
#: how many of a host's recent jobs its page lists
HOST_JOBS = 20
#: the host page's one-click jobs: reads, started at once on the host alone
HOST_READS = {"collect_status": "Refresh status", "queue_list": "Show queue",
              "read_log": "Read log"}
#: the host page's jobs that act on mail: the launch page, prefilled with the host
HOST_LAUNCHES = (("flush_queue", "Flush…"),)


# -- small words the pages share with the CLI -------------------------------------------

def ago(moment: dt.datetime | None, never: str = "never") -> str:
    """``3h 12m ago`` (``never`` for none), as the CLI says it."""
    if moment is None:
        return never
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)  # the controller keeps UTC
    return f"{age_text(max((utcnow() - moment).total_seconds(), 0))} ago"


def yes_no(value: bool | None) -> str:
    """yes / NO (what needs attention is shouted, so it reads without colour) / -."""
    return "-" if value is None else "yes" if value else "NO"


def kind_text(host: Host) -> str:
    """The MTA kind as configured, and the kind found when it differs (``auto (postfix)``)."""
    found = host.mta_detected_kind
    return f"{host.mta_kind} ({found})" if found and found != host.mta_kind else host.mta_kind


def diff_lines(diff: str | None) -> list[tuple[str, str]]:
    """Each line of a unified diff with its CSS class (``add``, ``del``, ``hunk`` or ``''``)."""
    lines = []
    for line in (diff or "").splitlines():
        if line.startswith(("+++", "---")):
            css = ""
        elif line.startswith("+"):
            css = "add"
        elif line.startswith("-"):
            css = "del"
        elif line.startswith("@@"):
            css = "hunk"
        else:
            css = ""
        lines.append((css, line))
    return lines


def breakable(text: str, every: int = 16) -> Markup:
    """``text`` with a line-break opportunity every ``every`` characters (a fingerprint or
    key that would otherwise push a phone-width page sideways)."""
    return Markup("<wbr>").join(text[i:i + every] for i in range(0, len(text), every))


def host_key_text(line: str | None) -> str:
    """A pinned SSH host key as people compare it: ``ssh-ed25519 SHA256:...``."""
    from shared.ssh import fingerprint, parse_public_key

    if not line:
        return "not pinned"
    try:
        return f"{line.split()[0]} {fingerprint(parse_public_key(line))}"
    except RelayfleetError:
        return line


def option_text(value: Any) -> str:
    """A job option's value in words (``yes``, ``no``, ``-`` for none)."""
    return "-" if value is None else "yes" if value is True else "no" if value is False \
        else str(value)


def unit_summary(action: str, unit: JobHost) -> str:
    """One host's result in a few words (the CLI's ``result`` column)."""
    return summarize(action, {"status": unit.status, "error": unit.error, "data": unit.data})


def page_url(**changes: Any) -> str:
    """This page's URL with some query arguments changed (``None`` drops one)."""
    args: dict[str, Any] = {**(request.view_args or {}), **{
        key: value for key, value in request.args.items() if value != ""}, **changes}
    return url_for(request.endpoint or "console.fleet",
                   **{key: value for key, value in args.items() if value is not None})


def _render(template: str, code: int = 200, /, **context: Any) -> tuple[str, int]:
    """A page of this module (HTTP status ``code``), with the helpers its templates use."""
    return render_template(template, ago=ago, yes_no=yes_no, relay_text=relay_text,
                           age_text=age_text, kind_text=kind_text, diff_lines=diff_lines,
                           unit_summary=unit_summary, page_url=page_url,
                           breakable=breakable, host_key_text=host_key_text,
                           option_text=option_text, **context), code


def _form(schema: Schema) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """A GET form checked by the API's query schema (empty fields are not set): its
    values, or the reasons per field it was refused for."""
    args = {key: value for key, value in request.args.items() if value.strip() != ""}
    # (PostgreSQL text cannot hold NUL: refused here as the API refuses it)
    refused = {key: ["NUL characters are not accepted"] for key, value in args.items()
               if "\x00" in value}
    if refused:
        return {}, refused
    try:
        loaded: dict[str, Any] = schema.load(args)
    except SchemaError as exc:
        messages = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
        return {}, {str(key): [str(reason) for reason in (
            reasons if isinstance(reasons, list) else [reasons])]
            for key, reasons in messages.items()}
    return loaded, {}


# -- reads the API answers in pieces -----------------------------------------------------

def last_results(session: Session, who: Principal, host_ids: list[int],
                 actions: tuple[str, ...]) -> dict[int, dict[str, JobHost]]:
    """Each host's most recent finished result that holds data, per action, among the
    jobs the principal may see (a tenant's page shows what its own jobs found)."""
    if not host_ids:
        return {}
    latest = inv.scoped(
        select(func.max(JobHost.id)).join(Job, Job.id == JobHost.job_id)
        .where(JobHost.host_id.in_(host_ids), Job.action.in_(actions),
               JobHost.finished_at.is_not(None), JobHost.data.is_not(None))
        .group_by(JobHost.host_id, Job.action), Job, who)
    found: dict[int, dict[str, JobHost]] = {}
    for unit, action in session.execute(
            select(JobHost, Job.action).join(Job, Job.id == JobHost.job_id)
            .where(JobHost.id.in_(latest))):
        found.setdefault(unit.host_id, {})[action] = unit
    return found


@dataclass(frozen=True)
class Measured:
    """A value a job's result reported, and which job said so when."""

    value: Any
    at: dt.datetime | None
    job_id: int


def oldest_message(host: Host, units: Mapping[str, JobHost]) -> Measured | None:
    """The age of the host's oldest queued message as its last status measured it, when
    the host holds mail and no flush has run since (the host row keeps no such column:
    only the status action reports it)."""
    status, flush = units.get("collect_status"), units.get("flush_queue")
    if not host.queue_count or status is None or status.status != "succeeded":
        return None
    if flush is not None and (flush.finished_at or utcnow()) > (status.finished_at or utcnow()):
        return None
    age = ((status.data or {}).get("queue") or {}).get("oldest_age_s")
    return None if age is None else Measured(age, status.finished_at, status.job_id)


# -- fleet -------------------------------------------------------------------------------

class FleetForm(s.HostQuerySchema):
    """The fleet page's filters: those of ``GET /v1/hosts`` and which view."""

    view = fields.String(load_default="all",
                         validate=validate.OneOf([key for key, _ in FLEET_VIEWS]))


@dataclass
class FleetGroup:
    """The hosts of one tenant's site on this page."""

    tenant: str
    site: str
    rows: list[tuple[Host, Measured | None]] = field(default_factory=list)


def _drifted_count(who: Principal) -> int | None:
    """How many hosts the principal sees drifted from their policy (None: it sees no
    policy, so nothing can drift and the count is not shown)."""
    if db.session.scalar(inv.scoped(select(Policy.id), Policy, who).limit(1)) is None:
        return None
    return int(db.session.scalar(select(func.count()).select_from(
        inv.host_query(who, {"drifted": True}).order_by(None).subquery())) or 0)


@bp.route("/fleet")
@signed_in
def fleet() -> tuple[str, int]:
    """Totals, then each host's last known state, per tenant and site; filters and views."""
    who = principal()
    form, errors = _form(FleetForm())
    view = form.pop("view", "all")
    limit, offset = form.pop("limit", 100), form.pop("offset", 0)
    tenants = {row.id: row.name for row in db.session.scalars(
        inv.scoped(select(Tenant), Tenant, who).order_by(Tenant.name))}
    sites = list(db.session.scalars(inv.scoped(select(Site), Site, who)
                                    .order_by(Site.tenant_id, Site.name)))
    site_names = {site.id: site.name for site in sites}
    groups: list[FleetGroup] = []
    result: dict[str, Any] = {"items": [], "total": 0, "limit": limit, "offset": offset}
    if not errors:
        filters = dict(form)
        if view != "all":
            filters[view] = True
        query = (inv.host_query(who, filters).order_by(None)
                 .join(Tenant, Tenant.id == Host.tenant_id).join(Site, Site.id == Host.site_id)
                 .order_by(Tenant.name, Site.name, Host.name, Host.id))
        result = inv.page(db.session, query, limit, offset)
        hosts: list[Host] = result["items"]
        last = last_results(db.session, who, [host.id for host in hosts],
                            ("collect_status", "flush_queue"))
        for host in hosts:
            tenant, site = tenants.get(host.tenant_id, "?"), site_names.get(host.site_id, "?")
            if not groups or (groups[-1].tenant, groups[-1].site) != (tenant, site):
                groups.append(FleetGroup(tenant, site))
            groups[-1].rows.append((host, oldest_message(host, last.get(host.id, {}))))
    return _render(
        "fleet.html", 422 if errors else 200, summary=inv.fleet_summary(db.session, who),
        drifted_count=_drifted_count(who),
        views=FLEET_VIEWS, view=view, form=form, errors=errors, groups=groups, page=result,
        tenants=tenants, sites=sites, transports=TRANSPORTS,
        filtered=any(form.get(key) is not None for key in
                     ("tenant_id", "site_id", "tag", "name", "transport")))


# -- host --------------------------------------------------------------------------------

@dataclass(frozen=True)
class QueueListing:
    """The host's queue as its most recent queue listing or flush left it."""

    action: str
    unit: JobHost
    count: int | None
    messages: list[dict[str, Any]]


def queue_listing(units: Mapping[str, JobHost]) -> QueueListing | None:
    """The newest of the last ``queue_list`` (its messages) and the last ``flush_queue``
    (what it left queued)."""
    listings = []
    if "queue_list" in units:
        data = units["queue_list"].data or {}
        listings.append(QueueListing("queue_list", units["queue_list"], data.get("count"),
                                     list(data.get("messages") or [])))
    if "flush_queue" in units and (units["flush_queue"].data or {}).get("after") is not None:
        data = units["flush_queue"].data or {}
        listings.append(QueueListing("flush_queue", units["flush_queue"], data.get("after"),
                                     list(data.get("remaining") or [])))
    if not listings:
        return None
    epoch = dt.datetime.min.replace(tzinfo=dt.UTC)
    return max(listings, key=lambda listing: (listing.unit.finished_at or epoch,
                                              listing.unit.id))


def log_lines(data: Mapping[str, Any]) -> list[tuple[dict[str, Any], str, str | None]]:
    """Each maillog record with its delivery outcome (``sent``, ``deferred``, ``bounced``,
    ``other``; ``''`` for lines that are not a delivery) and its relay problem's label."""
    labels = {problem.get("problem"): problem.get("label")
              for problem in (data.get("summary") or {}).get("problems") or []}
    lines = []
    for record in data.get("records") or []:
        stat = (record.get("fields") or {}).get("stat")
        result = outcome(stat, (record.get("fields") or {}).get("dsn")) if stat else ""
        lines.append((record, result, labels.get(record.get("problem")) or record.get("problem")))
    return lines


@bp.route("/hosts/<int(max=2147483647):host_id>")
@signed_in
def host(host_id: int) -> tuple[str, int]:
    """A host: its settings (never a secret), last known state, queue, log and jobs."""
    who = principal()
    row = inv.get_scoped(db.session, Host, host_id, who)
    units = last_results(db.session, who, [row.id], HOST_RESULT_ACTIONS).get(row.id, {})
    jobs = db.session.execute(inv.scoped(
        select(Job, JobHost).join(JobHost, JobHost.job_id == Job.id)
        .where(JobHost.host_id == row.id).order_by(Job.id.desc()).limit(HOST_JOBS),
        Job, who)).all()
    # the job the host's state was last learnt from, when the principal may open it
    learnt_from = db.session.scalar(inv.scoped(
        select(Job.id).where(Job.id == row.last_job_id), Job, who)) \
        if row.last_job_id is not None else None
    return _render(
        "host.html", host=row, settings=s.HostSchema().dump(row), learnt_from=learnt_from,
        tenant=db.session.get(Tenant, row.tenant_id), site=db.session.get(Site, row.site_id),
        status=units.get("collect_status"), queue=queue_listing(units),
        flush=units.get("flush_queue"), log=units.get("read_log"),
        log_lines=log_lines((units["read_log"].data or {}) if "read_log" in units else {}),
        diagnose=units.get("diagnose"), jobs=jobs,
        oldest=oldest_message(row, units), reads=HOST_READS, launches=HOST_LAUNCHES,
        desired=policy.effective_policies(db.session, [row.id])[row.id].doc())


@bp.route("/hosts/<int(max=2147483647):host_id>/run", methods=["POST"])
@signed_in
@requires("operator")
def host_run(host_id: int) -> Response:
    """Start one of the host page's reads on this host (as ``POST /v1/jobs`` would) and
    go to its job page."""
    who = principal()
    row = inv.get_scoped(db.session, Host, host_id, who)
    action = request.form.get("action", "")
    if action not in HOST_READS:
        raise ValidationError.for_field("action", f"one of {', '.join(HOST_READS)}")
    job_id = start_console_job(action, {"hosts": [row.id]}, {}, {})
    return redirect(url_for("console.job", job_id=job_id), code=303)


# -- jobs --------------------------------------------------------------------------------

class JobsForm(s.JobQuerySchema):
    """The jobs page's filters: those of ``GET /v1/jobs``, 50 to a page."""

    limit = WholeInteger(load_default=50, validate=validate.Range(1, 1000))


@bp.route("/jobs")
@signed_in
def jobs() -> tuple[str, int]:
    """Jobs, newest first: status, action, how many hosts succeeded and failed, who."""
    who = principal()
    form, errors = _form(JobsForm())
    limit, offset = form.pop("limit", 50), form.pop("offset", 0)
    result: dict[str, Any] = {"items": [], "total": 0, "limit": limit, "offset": offset}
    names: dict[int, str] = {}
    if not errors:
        stmt = inv.filtered(inv.scoped(select(Job), Job, who).order_by(Job.id.desc()), Job,
                            form, "status", "action")
        result = inv.page(db.session, stmt, limit, offset)
        result["items"] = [svc.report(db.session, job, with_results=False)
                           for job in result["items"]]
        token_ids = {job.token_id for job in result["items"] if job.token_id is not None}
        if token_ids:
            names = {int(row[0]): str(row[1]) for row in db.session.execute(
                select(Token.id, Token.name).where(Token.id.in_(token_ids)))}
    return _render("jobs.html", 422 if errors else 200, page=result, form=form,
                   errors=errors, names=names, states=[state.value for state in ledger.JobState],
                   actions=JOB_ACTIONS)


def _job_context(job_id: int) -> dict[str, Any]:
    """What the job page and its live part show."""
    who = principal()
    job = svc.get_job(db.session, who, job_id)
    report = svc.report(db.session, job)
    counts = report.counts
    units = sorted(report.results, key=lambda unit: (unit.status not in BAD_UNIT_STATES,
                                                     unit.id))
    show_all = request.args.get("all") == "1"
    shown = units if show_all else units[:JOB_HOST_ROWS]
    extra: dict[str, Any] = {"all": "1"} if show_all else {}
    linked = set(db.session.scalars(inv.scoped(select(Host.id), Host, who).where(
        Host.id.in_([unit.host_id for unit in shown])))) if shown else set()
    done = sum(counts.get(state, 0) for state in ledger.FINISHED_UNIT_STATES)
    return {
        "job": job, "counts": counts, "units": shown, "hidden": len(units) - len(shown),
        "linked": linked, "done": done, "total": counts.get("total", 0),
        "running": job.finished_at is None,
        "dry_run": bool((job.options or {}).get("dry_run")),
        "retryable": sum(counts.get(state, 0) for state in ledger.RETRYABLE_UNIT_STATES),
        "live_url": url_for("console.job_live", job_id=job.id, **extra),
        "refresh_url": url_for("console.job", job_id=job.id, **extra),
        "show_all": show_all,
    }


@bp.route("/jobs/<int(max=2147483647):job_id>")
@signed_in
def job(job_id: int) -> tuple[str, int]:
    """A job: what it was asked, its live progress, each host's result, steps and diff."""
    context = _job_context(job_id)
    job_row: Job = context["job"]
    by = db.session.get(Token, job_row.token_id) if job_row.token_id is not None else None
    return _render("job.html", by=by.name if by is not None else None, **context)


@bp.route("/jobs/<int(max=2147483647):job_id>/live")
@signed_in
def job_live(job_id: int) -> tuple[str, int]:
    """The job page's live part alone (an HTML fragment), for the page's script."""
    return _render("_job_live.html", **_job_context(job_id))


@bp.route("/jobs/<int(max=2147483647):job_id>/cancel", methods=["POST"])
@signed_in
@requires("operator")
def job_cancel(job_id: int) -> Response:
    """Start no more hosts of the job (those running finish), as the API's cancel."""
    audit_target(f"job:{job_id}")
    try:
        svc.cancel_job(db.session, principal(), job_id, db)
    except Conflict as exc:
        flash(exc.message, "error")
    else:
        flash(f"Job {job_id} cancelled: no more hosts start; those running finish.",
              "success")
    return redirect(url_for("console.job", job_id=job_id), code=303)


@bp.route("/jobs/<int(max=2147483647):job_id>/retry", methods=["POST"])
@signed_in
@requires("operator")
def job_retry(job_id: int) -> Response:
    """A new job for the failed and unreachable hosts, as the API's retry."""
    who = principal()
    audit_target(f"job:{job_id}")
    try:
        # one retry per job and token from the console: a double click, or Retry on a job
        # already retried, leads to that retry job (retry the retry to go again)
        _, doc, retried = jobs_api.retry(who, job_id, f"console-retry-{job_id}")
    except (Conflict, ValidationError) as exc:
        flash(exc.message, "error")
        return redirect(url_for("console.job", job_id=job_id), code=303)
    new_id = int(doc["id"])
    flash(f"Retrying {retried} host{'s' if retried != 1 else ''} of job {job_id} "
          f"as job {new_id}.", "success")
    return redirect(url_for("console.job", job_id=new_id), code=303)

