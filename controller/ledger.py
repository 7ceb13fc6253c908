"""The ledger: the one owner of every state change of jobs and their units.

A *job* is one action on a set of hosts; each targeted host is one *unit* (a ``job_hosts``
row). This module is the only code that writes ``jobs`` and ``job_hosts``; everything else
(the API, the lanes, the sweeper, the callbacks) asks it by name::

    unit:  pending ──claim──▶ running ──record──▶ succeeded | failed | unreachable
              │                  │ lease lapsed (worker died) ──claim again──▶ running
              │                  └─abandon_lapsed (job may start no more hosts)──▶ failed
              └─skip_pending (cancelled, too many failures, queue down)──▶ skipped

    host:  (install_agent) switch_to_agent: transport agent, its URL, pinned certificate,
           new token | keep_agent_token: the token an agent now has, host left on its
           transport (the agent was installed, but did not answer from the worker)

    job:   queued ──start──▶ running ──finish──▶ succeeded | partial | failed
              │                 └──cancel──▶ cancelled ──finish──▶ cancelled (finished_at set)
              └─fail_undispatched (the queue was unreachable)──▶ failed

Every transition is one conditional statement, so two workers (or a worker and a cancel)
racing for the same row cannot both win. Functions take a session and never commit: the
caller's transaction decides what happens together.
"""

from __future__ import annotations

import datetime as dt
import enum
import functools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ClauseElement,
    ColumnElement,
    Float,
    Integer,
    Update,
    and_,
    bindparam,
    case,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session, make_transient_to_detached
from sqlalchemy.sql.selectable import ScalarSelect

from controller import dispatch
from controller.db import Database, table_of, utcnow
from controller.models import Host, Job, JobHost
from controller.precompiled import Precompiled, RowsInsert
from controller.transports import AgentSwitch

#: added to a unit's timeout: claiming, recording and clock slack
LEASE_MARGIN_S = 10
#: how long a claim lasts unless its lane renews it (``Settings.lease_s``): a lane renews
#: the leases of the units it runs every third of this, so a dead worker's units are free
#: again within this time
LEASE_S = 30
#: a host whose worker died this many times is not tried again (it may be what kills it)
MAX_ATTEMPTS = 3


class JobState(enum.StrEnum):
    """Where a job is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    PARTIAL = "partial"
    CANCELLED = "cancelled"


class UnitState(enum.StrEnum):
    """Where one host's part of a job is."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    UNREACHABLE = "unreachable"
    SKIPPED = "skipped"


#: (plain strings, for SQL: a driver may dump an enum by its name)
#: states a job may still start hosts in
ACTIVE_JOB_STATES = (JobState.QUEUED.value, JobState.RUNNING.value)
FINISHED_JOB_STATES = (JobState.SUCCEEDED.value, JobState.FAILED.value,
                       JobState.PARTIAL.value, JobState.CANCELLED.value)
#: a unit in one of these states is done for good
FINISHED_UNIT_STATES = (UnitState.SUCCEEDED.value, UnitState.FAILED.value,
                        UnitState.UNREACHABLE.value, UnitState.SKIPPED.value)
#: what a retry starts again
RETRYABLE_UNIT_STATES = (UnitState.FAILED.value, UnitState.UNREACHABLE.value)


class SkipReason(enum.Enum):
    """Why a host of a job was never started (the text each skipped unit carries)."""

    CANCELLED = "cancelled before it started"
    QUEUE_UNREACHABLE = "not started: the job queue was unreachable"
    TOO_MANY_FAILURES = "not started: more than {max_failures} hosts failed"
    WAVE_FAILED = "not started: wave {wave} failed: host {host}: {error}"

    def text(self, **facts: object) -> str:
        """The reason as a unit shows it."""
        return str(self.value).format(**facts)


class OriginKind(enum.StrEnum):
    """What started a job."""

    API = "api"
    SCHEDULE = "schedule"
    REMEDIATE = "remediate"
    INBOUND = "inbound"


@dataclass(frozen=True)
class JobOrigin:
    """What started a job: a token's call (the API, CLI, console), a schedule, a
    remediation, or an inbound ticketing hook (with that schedule's or hook's id)."""

    kind: OriginKind = OriginKind.API
    schedule_id: int | None = None
    inbound_hook_id: int | None = None


@dataclass(frozen=True)
class Claim:
    """A unit a lane has taken: which attempt it is, and its host's row (still sealed)."""

    unit_id: int
    attempt: int
    host_id: int
    host: dict[str, Any] | None


@dataclass(frozen=True)
class Outcome:
    """What one attempt at a unit found: its final state and the host's answer."""

    status: UnitState
    error: str | None = None
    changed: bool | None = None
    data: dict[str, Any] | None = None
    steps: list[dict[str, Any]] | None = None


#: the host columns a worker needs (no relationship loads)
HOST_COLUMNS = (Host.id, Host.name, Host.address, Host.transport, Host.mta_kind,
                Host.mta_flavour, Host.mta_overrides, Host.mta_detected_kind, Host.agent_url,
                Host.agent_token_sealed, Host.agent_ca_cert, Host.agent_tls_fingerprint,
                Host.agent_insecure_http, Host.ssh_port, Host.ssh_username,
                Host.ssh_private_key_sealed, Host.ssh_passphrase_sealed,
                Host.ssh_password_sealed, Host.ssh_host_key, Host.ssh_sudo)


#: the tables themselves, for the statements a lane runs per host (claim, record, renew):
#: plain SQL statements built once, without the ORM's per-statement work (no objects of
#: these rows are ever loaded in a lane's sessions, so there is nothing to synchronise)
_UNITS = table_of(JobHost)
_JOBS = table_of(Job)
_HOSTS = table_of(Host)
#: HOST_COLUMNS, as table columns
_HOST_TABLE_COLUMNS = tuple(_HOSTS.c[column.key] for column in HOST_COLUMNS)
#: the names a claimed host's row is keyed by
_HOST_KEYS = tuple(column.key for column in HOST_COLUMNS)


def _rowcount(result: object) -> int:
    """Rows an UPDATE matched (a CursorResult attribute the generic Result type lacks)."""
    return int(getattr(result, "rowcount", 0))


# -- rollout waves -----------------------------------------------------------------------

#: how much of a failed host's error a skipped unit quotes
_WAVE_ERROR_CHARS = 300
#: what the text of every unit skipped with SkipReason.WAVE_FAILED looks like (SQL LIKE)
_WAVE_FAILED_PATTERN = SkipReason.WAVE_FAILED.text(wave="%", host="%", error="%")


def canary_size(total: int, canary: int | str) -> int:
    """How many of ``total`` hosts the canary wave holds: ``N`` hosts or ``"P%"`` of them
    (rounded up), at least one and at most all."""
    count = (math.ceil(total * int(canary.rstrip("%")) / 100) if isinstance(canary, str)
             else canary)
    return max(1, min(total, count))


def wave_numbers(total: int, canary: int | str | None, wave_size: int | None) -> list[int]:
    """Each unit's rollout wave, in the job's host order: wave 0 is the canary (without
    one, the first ``wave_size`` hosts), then waves of ``wave_size`` hosts (without it, all
    the rest in one wave). No canary and no wave size: every unit is in wave 0."""
    if total <= 0 or (canary is None and wave_size is None):
        return [0] * max(total, 0)
    first = canary_size(total, canary) if canary is not None else min(total, wave_size or total)
    size = max(1, wave_size or (total - first))
    return [0 if index < first else 1 + (index - first) // size for index in range(total)]


def in_waves(options: dict[str, Any] | None) -> bool:
    """Whether a job's options roll it out in waves."""
    if not options:
        return False
    return options.get("canary") is not None or options.get("wave_size") is not None


def _skip_after_wave_failure(session: Session, job_id: int, now: float) -> bool:
    """When a unit of a job rolled out in waves failed: skip its pending units (naming the
    wave and the host that failed), give up units whose worker died, and say so."""
    failed = session.execute(
        select(JobHost.wave, JobHost.host_name, JobHost.status, JobHost.error)
        .where(JobHost.job_id == job_id, JobHost.status.in_(RETRYABLE_UNIT_STATES))
        .order_by(JobHost.wave, JobHost.id).limit(1)).first()
    if failed is None:
        return False
    error = (failed[3] or failed[2])[:_WAVE_ERROR_CHARS]
    skip_pending(session, job_id, SkipReason.WAVE_FAILED, wave=failed[0], host=failed[1],
                 error=error)
    abandon_lapsed(session, job_id, now, f"wave {failed[0]} failed")
    return True


def retryable(options: dict[str, Any] | None) -> ColumnElement[bool]:
    """The units a retry starts again: failed and unreachable ones, and in a job rolled
    out in waves the ones skipped because a wave failed (they never ran)."""
    condition = JobHost.status.in_(RETRYABLE_UNIT_STATES)
    if not in_waves(options):
        return condition
    return or_(condition, and_(JobHost.status == UnitState.SKIPPED.value,
                               JobHost.error.like(_WAVE_FAILED_PATTERN)))


# -- accepting -------------------------------------------------------------------------

def accept(session: Session, *, tenant_id: int | None, token_id: int | None, action: str,
           target: dict[str, Any], params: dict[str, Any], params_sealed: str | None,
           options: dict[str, Any], callback_url: str | None, retry_of: int | None,
           hosts: list[tuple[int, str]], origin: JobOrigin | None = None) -> Job:
    """Store a job (``queued``) and one ``pending`` unit per host, each in its rollout wave
    (``options.canary``, ``options.wave_size``; see :func:`wave_numbers`)."""
    origin = origin or JobOrigin()
    waves = wave_numbers(len(hosts), options.get("canary"), options.get("wave_size"))
    # Every column given: the row goes in by a plain INSERT (an ORM flush costs several
    # times more CPU), and the object made of the same values needs no reload.
    values: dict[str, Any] = dict(
        tenant_id=tenant_id, token_id=token_id, action=action, target=target, params=params,
        params_sealed=params_sealed, options=options, callback_url=callback_url,
        callback_state=None, retry_of=retry_of, total=len(hosts),
        status=JobState.QUEUED.value, heartbeat_at=time.time(), origin=origin.kind.value,
        schedule_id=origin.schedule_id, inbound_hook_id=origin.inbound_hook_id,
        created_at=utcnow(), started_at=None, finished_at=None)
    job = Job(id=_INSERT_JOB.execute(session, values).scalar_one(), **values)
    make_transient_to_detached(job)
    session.add(job)
    pending = UnitState.PENDING.value
    _INSERT_UNITS.execute(session, [(job.id, host_id, name, wave, pending, 0)
                                    for (host_id, name), wave in zip(hosts, waves, strict=True)])
    return job


#: accept's statements, built once (building one costs more than sending it)
_INSERT_JOB = Precompiled(insert(_JOBS).returning(_JOBS.c.id))
_INSERT_UNITS = RowsInsert(_UNITS, ("job_id", "host_id", "host_name", "wave", "status",
                                     "attempts"))


def fail_undispatched(session: Session, job_id: int) -> None:
    """The job's lanes could not be queued: it ends ``failed``, its hosts ``skipped``."""
    skip_pending(session, job_id, SkipReason.QUEUE_UNREACHABLE)
    session.execute(update(Job).where(Job.id == job_id, Job.finished_at.is_(None)).values(
        status=JobState.FAILED.value, finished_at=utcnow()))


# -- running ---------------------------------------------------------------------------

def start(session: Session, job_id: int) -> Job | None:
    """A lane begins work: the job (now ``running``), or ``None`` if it has finished."""
    job = session.get(Job, job_id)
    if job is None or job.finished_at is not None:
        return None
    job.heartbeat_at = time.time()
    if job.status == JobState.QUEUED:
        job.status, job.started_at = JobState.RUNNING.value, utcnow()
    return job


def claim(session: Session, job_id: int, *, timeout_s: float, max_failures: int | None,
          lease_s: float = LEASE_S, tenant_max_running: int | None = None,
          options: dict[str, Any] | None = None) -> Claim | None:
    """Take the next unit (pending, or running with a lapsed lease) and read its host.

    ``None`` when there is nothing to take, or the job may start no more hosts (cancelled,
    or more than ``max_failures`` failed: then its pending units are skipped, and units
    whose worker died are given up), or nothing *now*: the job's tenant already runs
    ``tenant_max_running`` units (its fair share; a lane looks again a moment later).

    A job rolled out in waves (``options.canary``/``wave_size``) starts a host only in its
    open wave (:func:`_in_open_wave`): the next wave opens when every host of the earlier
    ones succeeded; after a failure its pending hosts are skipped, with a reason that names
    the wave and the host (checked before ``max_failures``, whose reason would not).

    ``options``: the job's options when the caller has them (they never change once the
    job is stored); else they are read. A job neither in waves nor with ``max_failures`` is
    claimed in one conditional UPDATE (the job still active, its tenant under its share,
    the unit free) and one read of the host; its state is read only when nothing was taken.
    """
    now = time.time()
    checked = False
    if options is None or in_waves(options) or max_failures is not None:
        job_row = session.execute(select(_JOBS.c.status, _JOBS.c.options)
                                  .where(_JOBS.c.id == job_id)).first()
        state, options = (job_row[0], job_row[1]) if job_row is not None else (None, None)
        if state not in ACTIVE_JOB_STATES:
            abandon_lapsed(session, job_id, now, "the job was cancelled")
            return None
        checked = True
        if in_waves(options) and _skip_after_wave_failure(session, job_id, now):
            return None
        if max_failures is not None:
            failed = session.scalar(select(func.count()).select_from(_UNITS).where(
                _UNITS.c.job_id == job_id, _UNITS.c.status.in_(RETRYABLE_UNIT_STATES)))
            if (failed or 0) > max_failures:
                skip_pending(session, job_id, SkipReason.TOO_MANY_FAILURES,
                             max_failures=max_failures)
                abandon_lapsed(session, job_id, now, f"more than {max_failures} hosts failed")
                return None
    # SQLite's RETURNING may not name another table: the host is read after the claim
    with_host = _on_postgres(session)
    statement = _claim_statement(in_waves(options), tenant_max_running is not None,
                                 with_host)
    row = statement.execute(session, _claim_values(job_id, now, timeout_s, lease_s,
                                                   tenant_max_running)).first()
    if row is None:
        if not checked:
            state = session.scalar(select(_JOBS.c.status).where(_JOBS.c.id == job_id))
            if state not in ACTIVE_JOB_STATES:
                abandon_lapsed(session, job_id, now, "the job was cancelled")
        return None
    return _claimed(session, row, with_host)


def claim_more(session: Session, job_id: int, count: int, *, timeout_s: float,
               lease_s: float = LEASE_S, tenant_max_running: int | None = None,
               options: dict[str, Any]) -> list[Claim]:
    """Up to ``count`` more pending units in one statement, in the order :func:`claim`
    takes them, for a lane whose threads all start at once; to be called after a
    :func:`claim` that took a unit in the same transaction (which checked the job: still
    active, its waves and ``max_failures``). The tenant's share holds for the batch."""
    if count < 1:
        return []
    with_host = _on_postgres(session)
    statement = _claim_statement(in_waves(options), tenant_max_running is not None,
                                 with_host, batch=True)
    values = _claim_values(job_id, time.time(), timeout_s, lease_s, tenant_max_running)
    rows = statement.execute(session, {**values, "b_count": count}).all()
    # (an UPDATE's RETURNING comes in no set order: the rollout's order is the unit's id)
    return [_claimed(session, row, with_host) for row in sorted(rows, key=lambda r: r[0])]


def _claim_values(job_id: int, now: float, timeout_s: float, lease_s: float,
                  tenant_max_running: int | None) -> dict[str, Any]:
    """The parameters of :func:`_claim_statement`."""
    return {"b_job_id": job_id, "b_now": now, "b_started": utcnow(),
            "b_lease_until": now + min(lease_s, timeout_s + LEASE_MARGIN_S),
            "b_max_running": tenant_max_running or 0}


def _claimed(session: Session, row: Sequence[Any], with_host: bool) -> Claim:
    """The claim a row of :func:`_claim_statement` stands for, with its live host's row."""
    live: Sequence[Any] | None
    if with_host:  # the host's row came with the claim
        deleted_at, *host = row[3:]
        live = None if deleted_at is not None else host
    else:
        live = _LIVE_HOST.execute(session, {"b_host_id": row[2]}).first()
    return Claim(int(row[0]), int(row[1]), int(row[2]),
                 dict(zip(_HOST_KEYS, live, strict=True)) if live is not None else None)


@functools.lru_cache(maxsize=16)
def _claim_statement(waves: bool, tenant_limited: bool, with_host: bool,
                     batch: bool = False) -> Precompiled:
    """The claim's one UPDATE (built once per kind): the job's next free unit becomes
    ``running`` under a lease, provided the job is still active (a cancel committed
    before it shows) and, when ``tenant_limited``, its tenant runs fewer than
    ``b_max_running`` units. Its parameters: ``b_job_id``, ``b_now``, ``b_lease_until``,
    ``b_started``, ``b_max_running`` (a bound name may not be a column's).

    It returns the unit's id, attempt and host id; ``with_host`` (PostgreSQL), then its
    host's ``deleted_at`` and row (:data:`_HOST_TABLE_COLUMNS`), read in the same
    statement (``UPDATE … FROM hosts``), not by a second one.

    ``batch``: up to ``b_count`` pending units at once instead of one (no lapsed ones:
    :func:`claim` takes those first), and when ``tenant_limited`` no more than the
    tenant's share leaves room for (the share is counted once for the whole statement)."""
    job_id, now = bindparam("b_job_id", type_=Integer), bindparam("b_now", type_=Float)
    conditions: list[ColumnElement[bool]] = [exists().where(
        _JOBS.c.id == job_id, _JOBS.c.status.in_(ACTIVE_JOB_STATES))]
    if tenant_limited:
        tenant = select(_JOBS.c.tenant_id).where(_JOBS.c.id == job_id).scalar_subquery()
        # (of unfinished jobs only: a finished job runs nothing, and a tenant may have run
        # thousands; ix_jobs_unfinished_tenant finds these)
        same_tenant = select(_JOBS.c.id).where(_JOBS.c.finished_at.is_(None), or_(
            _JOBS.c.tenant_id == tenant, and_(_JOBS.c.tenant_id.is_(None), tenant.is_(None))))
        others = _UNITS.alias("tenant_units")
        running = select(func.count()).select_from(others).where(
            others.c.status == UnitState.RUNNING.value, others.c.lease_until >= now,
            others.c.job_id.in_(same_tenant)).scalar_subquery()
        conditions.append(running < bindparam("b_max_running", type_=Integer))
    in_wave = _in_open_wave(job_id) if waves else []
    if batch:
        count: Any = bindparam("b_count", type_=Integer)
        if tenant_limited:
            room = bindparam("b_max_running", type_=Integer) - running
            count = case((room < count, room), else_=count)  # (SQLite has no least())
        pending = (select(_UNITS.c.id).where(_UNITS.c.job_id == job_id, *in_wave,
                                             _UNITS.c.status == UnitState.PENDING.value)
                   .order_by(_UNITS.c.wave, _UNITS.c.id).limit(count)
                   .with_for_update(skip_locked=True))
        return Precompiled(_claiming(_UNITS.c.id.in_(pending), conditions, with_host))

    def first_unit(*where: ColumnElement[bool]) -> ScalarSelect[Any]:
        return (select(_UNITS.c.id).where(_UNITS.c.job_id == job_id, *in_wave, *where)
                .order_by(_UNITS.c.wave, _UNITS.c.id).limit(1)
                .with_for_update(skip_locked=True).scalar_subquery())

    # Two lookups, not one with OR, each in the order of the ix_job_hosts_claim index
    # (job_id, status, wave, id), so each stops at its first row and a claim costs the same
    # at the last unit of a 10,000-host job as at the first. With OR, or ordered by id
    # alone, PostgreSQL chose to walk the primary key past every unit already done (its
    # estimate assumes pending units are spread evenly; they are all at the end). Wave
    # first is the rollout's own order. A unit whose worker died goes before pending ones.
    candidate = func.coalesce(
        first_unit(_UNITS.c.status == UnitState.RUNNING.value, _UNITS.c.lease_until < now),
        first_unit(_UNITS.c.status == UnitState.PENDING.value))
    return Precompiled(_claiming(_UNITS.c.id == candidate, conditions, with_host))


def _claiming(which: ColumnElement[bool], conditions: list[ColumnElement[bool]],
              with_host: bool) -> Update:
    """The claim's UPDATE of the units ``which`` picks (see :func:`_claim_statement`)."""
    if with_host:
        conditions = [*conditions, _HOSTS.c.id == _UNITS.c.host_id]
    returned = (_UNITS.c.id, _UNITS.c.attempts, _UNITS.c.host_id,
                *((_HOSTS.c.deleted_at, *_HOST_TABLE_COLUMNS) if with_host else ()))
    return (update(_UNITS).where(which, *conditions)
            .values(status=UnitState.RUNNING.value, attempts=_UNITS.c.attempts + 1,
                    lease_until=bindparam("b_lease_until"),
                    started_at=func.coalesce(_UNITS.c.started_at, bindparam(
                        "b_started", type_=_UNITS.c.started_at.type)))
            .returning(*returned))


#: a claimed unit's host, unless deleted (where the claim cannot read it itself)
_LIVE_HOST = Precompiled(select(*_HOST_TABLE_COLUMNS).where(
    _HOSTS.c.id == bindparam("b_host_id"), _HOSTS.c.deleted_at.is_(None)))


def _in_open_wave(job_id: Any) -> list[ColumnElement[bool]]:
    """Conditions on a job's unit that hold only in its open wave: no unit of the job
    failed, and the unit is in the lowest wave with a unit pending or running. Part of the
    claim's one UPDATE, so they and the claim see the same rows: a failure committed while
    a claim decides either shows (nothing is claimed) or not (the failed unit was still
    running, which keeps its wave the open one)."""
    failed = _UNITS.alias("failed_units")
    lowest = _UNITS.alias("wave_units")
    open_wave = select(func.min(lowest.c.wave)).where(
        lowest.c.job_id == job_id,
        lowest.c.status.in_((UnitState.PENDING.value, UnitState.RUNNING.value)))
    return [~exists().where(failed.c.job_id == job_id,
                            failed.c.status.in_(RETRYABLE_UNIT_STATES)),
            _UNITS.c.wave == open_wave.scalar_subquery()]


def record(session: Session, claim_: Claim, outcome: Outcome,
           host_state: dict[str, Any], switch: AgentSwitch | None = None) -> bool:
    """Store an attempt's outcome and what it taught about the host, and what the attempt
    changed in the host's record (``switch``: install_agent's, see :func:`apply_switch`),
    all or nothing; ``False`` (nothing stored) when a later attempt has taken the unit
    over."""
    values = {
        "b_unit_id": claim_.unit_id, "b_attempt": claim_.attempt,
        "b_status": outcome.status.value, "b_error": outcome.error, "b_finished_at": utcnow(),
        "b_changed": outcome.changed, "b_data": outcome.data, "b_steps": outcome.steps}
    postgres = _on_postgres(session)
    host_update, host_values = _host_update(host_state, postgres)
    if postgres:
        # one statement: the host is updated by the unit's update's own RETURNING, so
        # only when the unit was (PostgreSQL runs DML in a WITH; SQLite does not)
        if host_update.execute(session, {**values, **host_values}).first() is None:
            return False
    else:
        if _RECORD_UNIT.execute(session, values).rowcount != 1:
            return False
        host_update.execute(session, {**host_values, "b_host_id": claim_.host_id})
    if switch is not None:
        apply_switch(session, claim_.host_id, switch)
    return True


#: record's UPDATE of the unit, built once: only the attempt that holds the unit stores
_RECORD = (update(_UNITS).where(_UNITS.c.id == bindparam("b_unit_id"),
                                _UNITS.c.attempts == bindparam("b_attempt"),
                                _UNITS.c.status == UnitState.RUNNING.value)
           .values(status=bindparam("b_status"), error=bindparam("b_error"), lease_until=None,
                   finished_at=bindparam("b_finished_at"), changed=bindparam("b_changed"),
                   data=bindparam("b_data"), steps=bindparam("b_steps")))
_RECORD_RETURNING_HOST = _RECORD.returning(_UNITS.c.host_id)
_RECORD_UNIT = Precompiled(_RECORD)


_RECORD_DONE = _RECORD_RETURNING_HOST.cte("done")

#: record's host UPDATEs by the shape of what was learned: (database kind, each key with
#: the id of its value when that is an SQL expression) -> the statement, and the
#: expressions it holds (kept alive with it, so an id in the key is never reused)
_HOST_UPDATES: dict[tuple[Any, ...], tuple[Precompiled, tuple[Any, ...]]] = {}
#: shapes kept at most (learned() makes a few dozen)
_HOST_UPDATES_MAX = 256


def _host_update(host_state: dict[str, Any], postgres: bool) -> tuple[Precompiled,
                                                                        dict[str, Any]]:
    """record's UPDATE of the host for ``host_state`` and its parameters: built once per
    shape with every plain value bound (building a statement costs more CPU than sending
    it); a value that is an SQL expression (``Host.unreachable_streak + 1``, whose misses
    concurrent units must each count) stays in the statement. On PostgreSQL it is driven
    by the unit's UPDATE (parameters ``b_*`` of :data:`_RECORD`); on SQLite it takes
    ``b_host_id``."""
    expressions = tuple(value for value in host_state.values()
                        if isinstance(value, ClauseElement))
    shape = (postgres, *((key, id(value) if isinstance(value, ClauseElement) else 0)
                         for key, value in host_state.items()))
    cached = _HOST_UPDATES.get(shape)
    if cached is None:
        columns = {key: value if isinstance(value, ClauseElement)
                   else bindparam(f"h_{key}", type_=_HOSTS.c[key].type)
                   for key, value in host_state.items()}
        statement = (update(_HOSTS).where(_HOSTS.c.id.in_(select(_RECORD_DONE.c.host_id)))
                     .values(columns).returning(_HOSTS.c.id) if postgres
                     else update(_HOSTS).where(_HOSTS.c.id == bindparam(
                         "b_host_id", type_=Integer)).values(columns))
        if len(_HOST_UPDATES) >= _HOST_UPDATES_MAX:
            _HOST_UPDATES.clear()
        cached = _HOST_UPDATES[shape] = (Precompiled(statement), expressions)
    return cached[0], {f"h_{key}": value for key, value in host_state.items()
                       if not isinstance(value, ClauseElement)}


def _on_postgres(session: Session) -> bool:
    """Whether the session's database is PostgreSQL (where a claim and a record are one
    statement each)."""
    return session.get_bind().dialect.name == "postgresql"


def apply_switch(session: Session, host_id: int, switch: AgentSwitch) -> None:
    """:func:`switch_to_agent` when the agent was checked, else :func:`keep_agent_token`
    when the installer gave it a new token."""
    if switch.checked:
        switch_to_agent(session, host_id, switch)
    elif switch.sealed_token is not None:
        keep_agent_token(session, host_id, switch.sealed_token)


def switch_to_agent(session: Session, host_id: int, switch: AgentSwitch) -> None:
    """The host is managed through its agent from now on: its URL, the pinned certificate
    (no CA, never plain HTTP) and, when the installer gave it one, its new token."""
    values: dict[str, Any] = {"transport": "agent", "agent_url": switch.url,
                              "agent_tls_fingerprint": switch.fingerprint,
                              "agent_ca_cert": None, "agent_insecure_http": False}
    if switch.sealed_token is not None:
        values["agent_token_sealed"] = switch.sealed_token
    session.execute(update(Host).where(Host.id == host_id).values(**values))


def keep_agent_token(session: Session, host_id: int, sealed_token: str) -> None:
    """The agent on the host now has this token (the installer wrote or rotated it), though
    the host stays on its transport: store it, so a later run can still talk to it."""
    session.execute(update(Host).where(Host.id == host_id).values(
        agent_token_sealed=sealed_token))


def renew_leases(session: Session, job_id: int, held: list[tuple[int, int]],
                 lease_s: float = LEASE_S) -> set[int]:
    """Extend the leases of the units a live lane runs, given as (unit id, attempt); the
    ids still held come back (a unit missing was taken over: its runner must stop). The
    job is heard from too."""
    if not held:
        return set()
    now = time.time()
    rows = session.execute(
        update(_UNITS).where(
            _UNITS.c.job_id == job_id, _UNITS.c.status == UnitState.RUNNING.value,
            or_(*(and_(_UNITS.c.id == unit, _UNITS.c.attempts == attempt)
                  for unit, attempt in held)))
        .values(lease_until=now + lease_s).returning(_UNITS.c.id)).all()
    session.execute(update(_JOBS).where(_JOBS.c.id == job_id).values(heartbeat_at=now))
    return {int(row[0]) for row in rows}


def skip_pending(session: Session, job_id: int, reason: SkipReason, **facts: object) -> None:
    """Units not started yet will not be: ``skipped``, with the reason's text."""
    session.execute(update(JobHost).where(
        JobHost.job_id == job_id, JobHost.status == UnitState.PENDING.value).values(
        status=UnitState.SKIPPED.value, finished_at=utcnow(), error=reason.text(**facts)))


def abandon_lapsed(session: Session, job_id: int, now: float, why: str) -> None:
    """Units whose worker died, in a job that may start no more hosts: not run again, so
    mark them failed (otherwise the job would wait for them for ever)."""
    session.execute(update(JobHost).where(
        JobHost.job_id == job_id, JobHost.status == UnitState.RUNNING.value,
        JobHost.lease_until < now).values(
        status=UnitState.FAILED.value, lease_until=None, finished_at=utcnow(),
        error=f"the worker running this host stopped, and {why}: not run again"))


@dataclass(frozen=True)
class Progress:
    """How far an unfinished job is, as a lane about to hand over sees it."""

    state: JobState
    tally: dict[str, int]
    #: when the first running unit's lease ends (epoch seconds), if any runs
    earliest_lease: float | None


def heartbeat(session: Session, job_id: int) -> Progress | None:
    """A lane is alive: note it, and say how far the job is (``None`` if finished)."""
    job = session.get(Job, job_id)
    if job is None or job.finished_at is not None:
        return None
    job.heartbeat_at = time.time()
    earliest = session.scalar(select(func.min(JobHost.lease_until)).where(
        JobHost.job_id == job_id, JobHost.status == UnitState.RUNNING.value))
    return Progress(JobState(job.status), counts(session, job_id), earliest)


def jobs_needing_lanes(session: Session, *, silent_since: float, never_started_since: float,
                       lease_s: float = LEASE_S) -> list[int]:
    """Unfinished jobs that no live lane is working on, each marked as heard from now (so
    one sweep queues one lane for it): a running unit whose lease lapsed (its worker
    died) in a job not heard from for a lease, a running job no lane has been heard from
    since ``silent_since``, or a queued job never started since ``never_started_since``
    (its first lanes were lost). A cancelled job whose worker died is due one too: its
    lane gives the lapsed units up and finishes it."""
    now = time.time()
    lapsed = select(JobHost.job_id).where(JobHost.status == UnitState.RUNNING.value,
                                          JobHost.lease_until < now)
    due = list(session.scalars(select(Job.id).where(
        Job.finished_at.is_(None),
        # (a cancelled job whose lane was lost waits for a lane to give up its lapsed units)
        or_(Job.status.in_(ACTIVE_JOB_STATES),
            and_(Job.status == JobState.CANCELLED.value, Job.id.in_(lapsed))),
        # (a live lane of the job renews its heartbeat and claims lapsed units itself)
        or_(and_(Job.id.in_(lapsed), Job.heartbeat_at < now - lease_s),
            and_(Job.status == JobState.RUNNING.value, Job.heartbeat_at < silent_since),
            and_(Job.status == JobState.QUEUED.value,
                 Job.heartbeat_at < never_started_since)))))
    if due:
        session.execute(update(Job).where(Job.id.in_(due)).values(heartbeat_at=now))
    return due


# -- ending ------------------------------------------------------------------------------

def counts(session: Session, job_id: int) -> dict[str, int]:
    """How many of the job's hosts are in each state (and ``total``)."""
    result = dict.fromkeys((state.value for state in UnitState), 0)
    for state, number in session.execute(
            select(JobHost.status, func.count()).where(JobHost.job_id == job_id)
            .group_by(JobHost.status)):
        result[state] = number
    result["total"] = sum(result.values())
    return result


def derive_status(job_status: str, tally: dict[str, int]) -> JobState:
    """The job's status from its units (a cancelled job stays cancelled)."""
    if job_status == JobState.CANCELLED:
        return JobState.CANCELLED
    if tally[UnitState.PENDING] or tally[UnitState.RUNNING]:
        return JobState(job_status) if job_status in ACTIVE_JOB_STATES else JobState.RUNNING
    if tally[UnitState.SUCCEEDED] == tally["total"]:
        return JobState.SUCCEEDED
    if tally[UnitState.SUCCEEDED] == 0:
        return JobState.FAILED
    return JobState.PARTIAL


def finish(session: Session, job_id: int) -> JobState | None:
    """End the job if none of its hosts is pending or running: its final state, once (the
    call that ended it gets the state; every other call gets ``None``)."""
    job = session.get(Job, job_id)
    if job is None or job.finished_at is not None:
        return None
    tally = counts(session, job_id)
    if tally[UnitState.PENDING] or tally[UnitState.RUNNING]:
        return None
    final = derive_status(job.status, tally)
    done = session.execute(update(Job).where(Job.id == job_id, Job.finished_at.is_(None))
                           .values(status=final.value, finished_at=utcnow()))
    return final if _rowcount(done) == 1 else None


def finish_job(database: Database, job_id: int) -> JobState | None:
    """:func:`finish` in a transaction of its own; the job's callback is queued once that
    commits."""
    with database.transaction() as session:
        final = finish(session, job_id)
        url = session.scalar(select(Job.callback_url).where(Job.id == job_id))
        if final is not None and url is not None:
            def not_queued() -> None:
                with database.transaction() as own:
                    note_callback(own, job_id, CALLBACK_NOT_QUEUED)

            dispatch.send_after_commit(session, dispatch.SEND_CALLBACK, job_id,
                                       on_failure=not_queued, required=False)
    return final


def purge_status_jobs(session: Session, before: dt.datetime, batch: int = 500) -> int:
    """Delete up to ``batch`` of beat's own status collections (origin ``schedule``, no
    operator schedule, action ``collect_status``) finished before ``before``, with their
    units; how many. Beat starts one per tenant per tick, so without this the job table
    grows without limit; a host's last status is kept on the host, not in these jobs."""
    ids = list(session.scalars(
        select(Job.id).where(Job.origin == OriginKind.SCHEDULE.value,
                             Job.schedule_id.is_(None), Job.action == "collect_status",
                             Job.finished_at.is_not(None), Job.finished_at < before)
        .order_by(Job.id).limit(batch)))
    if not ids:
        return 0
    # units first: SQLite enforces the cascade only when its foreign keys are on
    session.execute(delete(JobHost).where(JobHost.job_id.in_(ids)))
    session.execute(delete(Job).where(Job.id.in_(ids)))
    return len(ids)


def cancel(session: Session, job_id: int) -> bool:
    """Start no more hosts of the job; ``False`` if it had already finished."""
    # Conditional, so that a job a worker finishes at this very moment stays finished.
    done = session.execute(update(Job).where(Job.id == job_id, Job.finished_at.is_(None))
                           .values(status=JobState.CANCELLED.value))
    if _rowcount(done) != 1:
        return False
    skip_pending(session, job_id, SkipReason.CANCELLED)
    return True


def note_callback(session: Session, job_id: int, state: str) -> None:
    """How the job's callback delivery went (shown as ``callback_state``)."""
    session.execute(update(Job).where(Job.id == job_id).values(callback_state=state[:200]))


#: the ``callback_state`` of a finished job whose callback message never reached the queue
CALLBACK_NOT_QUEUED = "not sent: the job queue was unreachable"


def callbacks_not_queued(session: Session, limit: int = 500) -> list[int]:
    """Finished jobs whose callback could not be queued (the sweeper queues it again)."""
    return list(session.scalars(
        select(Job.id).where(Job.finished_at.is_not(None), Job.callback_url.is_not(None),
                             Job.callback_state == CALLBACK_NOT_QUEUED)
        .order_by(Job.id).limit(limit)))
