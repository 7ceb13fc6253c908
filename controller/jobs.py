"""Job service: validate, resolve targets, start (idempotently), read, cancel, retry.

Every state change goes through :mod:`controller.ledger`; lanes are queued after the
job's transaction commits (:mod:`controller.dispatch`), so views neither touch rows nor
import tasks. How the job then runs is :mod:`controller.lanes`.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from typing import Any

from marshmallow import Schema
from marshmallow import ValidationError as MarshmallowError
from sqlalchemy import ColumnElement, and_, bindparam, or_, select
from sqlalchemy.orm import Session

from controller import dispatch, ledger
from controller.auth import Principal
from controller.crypto import SecretBox
from controller.db import Database, table_of
from controller.errors import Conflict
from controller.inventory import get_scoped, scope_conditions, scoped
from controller.job_params import check_target_size, validate_params
from controller.ledger import JobOrigin
from controller.models import Host, HostTag, Job, JobHost, Site, Tenant
from controller.precompiled import Precompiled
from shared.actions import job_action
from shared.errors import ValidationError
from shared.schemas import flatten_errors
from shared.validation import refusal


def _split_refs(refs: list[Any]) -> tuple[list[int], list[str]]:
    ids = [ref for ref in refs if isinstance(ref, int)]
    return ids, [ref for ref in refs if isinstance(ref, str)]


def _refuse_ambiguous_names(kind: str, names: list[str], found: Any) -> None:
    """A name several rows have (sites are named per tenant, hosts per site) would target
    all of them: refuse it, naming the ids to choose from."""
    by_name: dict[str, list[int]] = {}
    for row_id, row_name in found:
        if row_name in names:
            by_name.setdefault(row_name, []).append(int(row_id))
    for name in names:
        ids = sorted(by_name.get(name, []))
        if len(ids) > 1:
            shown = ", ".join(str(i) for i in ids[:10]) + (", ..." if len(ids) > 10 else "")
            raise ValidationError.for_field(
                f"target.{kind}", f"'{name}' names {len(ids)} {kind} (ids {shown}): give the id")


_HOSTS = table_of(Host)
#: the kinds of target that name rows of another table, with the host column naming them
_OWNER_OF: dict[str, tuple[Any, Any, Any]] = {
    "sites": (Site, table_of(Site), _HOSTS.c.site_id),
    "tenants": (Tenant, table_of(Tenant), _HOSTS.c.tenant_id),
}


def _live_hosts(tenant_scoped: bool) -> list[ColumnElement[bool]]:
    """:func:`controller.inventory.scoped`'s conditions on hosts, the tenant bound as
    ``tenant_id`` (for a tenant's token)."""
    return scope_conditions(Host, _HOSTS.c, bindparam("tenant_id") if tenant_scoped else None)


@functools.cache
def _target_statement(kind: str, tenant_scoped: bool) -> Precompiled:
    """:func:`_target_query`, precompiled (it runs on every job created)."""
    return Precompiled(_target_query(kind, tenant_scoped))


def _target_query(kind: str, tenant_scoped: bool) -> Any:
    """The one statement that resolves a target of ``kind`` (built once per kind and
    scope: building a statement costs more than sending it). Its parameters: ``ids`` and
    ``names`` (hosts, sites, tenants), ``tags`` (tags), ``tenant_id`` (when scoped).

    Of sites and tenants it reads, in one go, every named row the principal sees joined
    with its live hosts: (row id, row name, host id or NULL, host name)."""
    if kind == "hosts":
        return (select(_HOSTS.c.id, _HOSTS.c.name)
                .where(*_live_hosts(tenant_scoped),
                       or_(_HOSTS.c.id.in_(bindparam("ids", expanding=True)),
                           _HOSTS.c.name.in_(bindparam("names", expanding=True)))))
    if kind in _OWNER_OF:
        model, owner, column = _OWNER_OF[kind]
        query = (select(owner.c.id, owner.c.name, _HOSTS.c.id, _HOSTS.c.name)
                 .select_from(owner.outerjoin(_HOSTS, and_(
                     column == owner.c.id, *_live_hosts(tenant_scoped))))
                 .where(or_(owner.c.id.in_(bindparam("ids", expanding=True)),
                            owner.c.name.in_(bindparam("names", expanding=True)))))
        if tenant_scoped:
            query = query.where(*scope_conditions(model, owner.c, bindparam("tenant_id")))
        return query.order_by(_HOSTS.c.id)
    query = select(_HOSTS.c.id, _HOSTS.c.name).where(*_live_hosts(tenant_scoped))
    if kind == "tags":
        query = query.where(_HOSTS.c.id.in_(
            select(table_of(HostTag).c.host_id)
            .where(table_of(HostTag).c.tag.in_(bindparam("tags", expanding=True)))))
    return query.order_by(_HOSTS.c.id)


def resolve_target(session: Session, who: Principal, target: dict[str, Any]) -> list[
        tuple[int, str]]:
    """(host id, name) of every host the target names that the principal may touch."""
    (kind, refs), = target.items()
    values: dict[str, Any] = {"tenant_id": who.tenant_id}
    if kind == "tags":
        values["tags"] = list(refs)
    elif kind != "all":
        values["ids"], values["names"] = ids, names = _split_refs(refs)
    statement = _target_statement(kind, who.tenant_id is not None)
    found: list[Any] = statement.execute(session, values).all()
    if kind in ("hosts", *_OWNER_OF):
        # the named rows: with their hosts (sites, tenants), each row once per host
        named = found if kind == "hosts" else list(dict.fromkeys((r[0], r[1]) for r in found))
        known_ids = {row[0] for row in named}
        known_names = {row[1] for row in named}
        missing = [str(r) for r in ids if r not in known_ids] + [
            r for r in names if r not in known_names]
        if missing:
            shown = ", ".join(missing[:20]) + (" ..." if len(missing) > 20 else "")
            raise ValidationError.for_field(f"target.{kind}", f"not found: {shown}")
        _refuse_ambiguous_names(kind, names, named)
        if kind == "hosts":
            # the hosts found are the target (scoped as every target is)
            return sorted({(int(r[0]), str(r[1])) for r in found})
        # a named site or tenant without a live host adds none (the row's host is NULL)
        found = [(r[2], r[3]) for r in found if r[2] is not None]
    rows = [(int(r[0]), str(r[1])) for r in found]
    if not rows:
        raise ValidationError.for_field("target", "matches no host this token may touch")
    return rows


@functools.cache
def job_create_schema() -> Schema:
    """The one ``JobCreateSchema`` every job document is loaded with (a schema keeps no
    state between loads; building one costs more than a load)."""
    # imported here: controller.schemas imports controller.policy, which imports this module
    from controller.schemas import JobCreateSchema

    return JobCreateSchema()


def load_body(raw: dict[str, Any]) -> dict[str, Any]:
    """A job document checked as ``POST /v1/jobs`` checks it (defaults filled in); errors
    are named as the API names them (``target``, ``options.concurrency``)."""
    try:
        body: dict[str, Any] = job_create_schema().load(raw)
    except MarshmallowError as exc:
        raise refusal("job", flatten_errors(exc.messages)) from None
    return body


def lanes_for(concurrency: int, total: int, lane_threads: int) -> int:
    """How many lane tasks a job needs to run ``concurrency`` hosts at once."""
    return max(1, math.ceil(min(concurrency, max(total, 1)) / lane_threads))


def check_job(session: Session, who: Principal, body: dict[str, Any], max_timeout_s: int,
              *, host_rows: list[tuple[int, str]] | None = None) -> tuple[
        dict[str, Any], dict[str, Any], dict[str, Any] | None, list[tuple[int, str]]]:
    """The checks every job passes before it is stored (role, timeout limit, params, target
    and its size): (options, public params, secret params, host rows). A schedule is
    checked with them too, so that it is refused when made, not at every run."""
    who.require(job_action(body["action"]).role)
    options = dict(body["options"])
    if options["timeout_s"] > max_timeout_s:
        raise ValidationError.for_field(
            "options.timeout_s", f"at most {max_timeout_s} s on this controller (a lane "
            "must finish within the broker's visibility timeout)")
    params, secret = validate_params(body["action"], dict(body.get("params") or {}), options)
    hosts = host_rows if host_rows is not None else resolve_target(session, who, body["target"])
    check_target_size(body["action"], params, len(hosts))
    return options, params, secret, hosts


def start_job(session: Session, who: Principal, body: dict[str, Any], box: SecretBox,
              database: Database, *, max_timeout_s: int, lane_threads: int,
              host_rows: list[tuple[int, str]] | None = None,
              retry_of: int | None = None, origin: JobOrigin | None = None) -> Job:
    """Validate and store a job and its units (``queued``, not committed); its lanes are
    queued when the session commits (if they cannot be, the job ends ``failed`` and the
    commit raises :class:`controller.dispatch.NotQueued`)."""
    options, params, secret, hosts = check_job(session, who, body, max_timeout_s,
                                               host_rows=host_rows)
    job = ledger.accept(session, tenant_id=who.tenant_id, token_id=who.token_id or None,
                        action=body["action"], target=body["target"], params=params,
                        params_sealed=box.seal(json.dumps(secret)) if secret else None,
                        options=options, callback_url=body.get("callback_url"),
                        retry_of=retry_of, hosts=hosts, origin=origin or JobOrigin())
    job_id = job.id

    def not_queued() -> None:
        with database.transaction() as own:
            ledger.fail_undispatched(own, job_id)

    for lane in range(lanes_for(options["concurrency"], len(hosts), lane_threads)):
        dispatch.send_after_commit(session, dispatch.RUN_LANE, job_id, lane, lane_threads,
                                   on_failure=not_queued)
    return job


def accepted(job: Job) -> dict[str, Any]:
    """The answer to a job just accepted."""
    return {"id": job.id, "status": ledger.JobState.QUEUED.value, "total": job.total,
            "links": job_links(job.id)}


def job_links(job_id: int) -> dict[str, str]:
    """Where to look at and act on a job."""
    base = f"/v1/jobs/{job_id}"
    return {"self": base, "cancel": f"{base}/cancel", "retry": f"{base}/retry"}


class JobReport:
    """A job as the API (and its callback) shows it: the row, its counts, its links, and
    its units when asked for (the schema leaves ``results`` out otherwise)."""

    def __init__(self, job: Job, counts: dict[str, int],
                 units: list[JobHost] | None = None, next_page: str | None = None,
                 paged: bool = False) -> None:
        self.job = job
        self.counts = counts
        self._units = units
        self._next_page = next_page
        self._paged = paged

    def __getattr__(self, name: str) -> Any:
        return getattr(self.job, name)

    @property
    def links(self) -> dict[str, str]:
        """Where to look at and act on the job."""
        return job_links(self.job.id)

    @property
    def results(self) -> list[JobHost]:
        """Every host's unit, in the order they were targeted."""
        if self._units is None:
            raise AttributeError("results")
        return self._units

    @property
    def results_next(self) -> str | None:
        """The next page of results (``None`` on the last; absent when not paged)."""
        if self._units is None or not self._paged:
            raise AttributeError("results_next")
        return self._next_page


@dataclass(frozen=True)
class ResultsPage:
    """Which of a job's results to show: the hosts in one state, and a page of them in
    target order (``limit`` results after position ``after``); all of them by default."""

    host_status: str | None = None
    limit: int | None = None
    after: int = 0

    def link(self, job_id: int, after: int) -> str:
        """The URL of the page that follows position ``after``."""
        query = f"results_limit={self.limit}&results_after={after}"
        if self.host_status:
            query += f"&host_status={self.host_status}"
        return f"{job_links(job_id)['self']}?{query}"


def report(session: Session, job: Job, *, with_results: bool = True,
           page: ResultsPage = ResultsPage()) -> JobReport:
    """The job, its counts and (``with_results``) its units, ready for ``JobSchema``: all
    of them, or the ``page`` asked for (a job of 100,000 hosts is 200 MB of results)."""
    if not with_results:
        return JobReport(job, ledger.counts(session, job.id))
    query = select(JobHost).where(JobHost.job_id == job.id, JobHost.id > page.after)
    if page.host_status:
        query = query.where(JobHost.status == page.host_status)
    query = query.order_by(JobHost.id)
    if page.limit is not None:
        query = query.limit(page.limit + 1)  # one more: is there a next page?
    units = list(session.scalars(query))
    next_page = None
    if page.limit is not None and len(units) > page.limit:
        units = units[:page.limit]
        next_page = page.link(job.id, units[-1].id)
    return JobReport(job, ledger.counts(session, job.id), units, next_page,
                     paged=page.limit is not None)


def get_job(session: Session, who: Principal, job_id: int) -> Job:
    """A job the principal may see (404 otherwise)."""
    return get_scoped(session, Job, job_id, who)


def cancel_job(session: Session, who: Principal, job_id: int, database: Database) -> Job:
    """Start no more hosts (pending ones are skipped; running ones finish); the job ends
    at once if none is running."""
    who.require("operator")
    job = get_job(session, who, job_id)
    if not ledger.cancel(session, job.id):
        session.rollback()
        raise Conflict(f"job {job_id} has already finished ({job.status})")
    session.commit()
    # Its own transaction: the request's is over (SQLite has one writer at a time).
    ledger.finish_job(database, job_id)
    session.expire_all()
    return job


def retry_hosts(session: Session, who: Principal, job_id: int) -> list[tuple[int, str]]:
    """The failed and unreachable hosts of a finished job, still visible to the principal;
    in a job rolled out in waves also the hosts a failed wave left unstarted (the retry
    rolls them out again, in waves)."""
    who.require("operator")
    job = get_job(session, who, job_id)
    if job.status not in ledger.FINISHED_JOB_STATES:
        raise Conflict(f"job {job_id} is still {job.status}: retry it when it has finished")
    rows = session.execute(
        scoped(select(Host.id, Host.name), Host, who)
        .join(JobHost, JobHost.host_id == Host.id)
        .where(JobHost.job_id == job.id, ledger.retryable(job.options))
        .order_by(Host.id)).all()
    if not rows:
        raise ValidationError.for_field("job", f"job {job_id} has no failed or unreachable "
                                               "host to retry")
    return [(int(r[0]), str(r[1])) for r in rows]


def open_params(public: dict[str, Any], sealed: str | None, box: SecretBox) -> dict[str, Any]:
    """Stored params made whole again: the public part with the sealed secret opened into
    ``auth`` (a job's or a schedule's)."""
    params = dict(public)
    secret = json.loads(box.open(sealed) or "null")
    if secret:
        params["auth"] = {**params.get("auth", {}), **secret}
    return params


def retry_body(job: Job, box: SecretBox, hosts: list[tuple[int, str]]) -> dict[str, Any]:
    """A new job's body: the same action, params (secret included) and options."""
    return {"action": job.action, "target": {"hosts": [host_id for host_id, _ in hosts]},
            "params": open_params(job.params, job.params_sealed, box),
            "options": job.options, "callback_url": job.callback_url}
