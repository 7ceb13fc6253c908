"""What beat starts: status collections spread over each tenant's interval, and operator
schedules (cron expressions in an IANA time zone).

Status collection: every host has a slot ``(host_id * 2654435761) % every_s`` seconds into
its tenant's interval (a multiplicative hash, so that consecutive ids land far apart and a
fleet spreads evenly). Each tick collects the hosts whose slot falls in the window
``[last tick, now)`` (modulo the interval) in one ``collect_status`` job per tenant; the
window's start is stored (:class:`~controller.models.SchedulerMark`), so that a restarted
beat neither repeats nor skips one, and a window longer than the interval (beat was down)
collects every host once.

Operator schedules: a job document (checked as ``POST /v1/jobs`` checks it) run as the
token that created the schedule, at the times a 5-field cron expression names in the
schedule's zone. Daylight saving time: a local time that does not exist (the hour clocks
skip) runs at the same moment it would have without the jump (02:30 on the
spring-forward day in Europe/Paris runs at 03:30 CEST); a local time that happens twice
runs at its first occurrence only, unless the hour field is ``*`` (every hour: both
occurrences run, as the hour really passes twice). So a 02:30 daily schedule runs once on
both days. A schedule missed while beat was down runs once when beat is back, then
follows its expression from then.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from controller.auth import Principal, system_principal
from controller.config import Settings
from controller.crypto import SecretBox
from controller.db import Database, utcnow
from controller.errors import Conflict, NotFound
from controller.inventory import commit_unique, get_scoped, scoped
from controller.jobs import check_job, load_body, open_params, start_job
from controller.ledger import JobOrigin, JobState, OriginKind, UnitState
from controller.ledger import purge_status_jobs as purge_status_jobs_batch
from controller.models import Host, Job, JobHost, Schedule, SchedulerMark, Tenant, Token
from shared.errors import RelayfleetError, ValidationError

log = logging.getLogger("relayfleet.beat")

#: Knuth's multiplicative hash constant (2**32 / golden ratio): spreads ids over the interval
SLOT_FACTOR = 2654435761
#: the name a beat-started status collection is recorded as (audit, job lists)
STATUS_COLLECTOR = "status collection"
#: how far ahead a cron expression is searched for its next time: the calendar's weekday
#: cycle, as a date on a given weekday can be years away (``0 0 */29 2 mon``, 1 February
#: on a Monday, since both day fields must match when one starts with ``*``: 2027, then
#: 2038). An expression that matches nothing within it is refused, and a schedule whose
#: next time falls beyond it is disabled with the reason.
SEARCH_YEARS = 28

# -- cron expressions ---------------------------------------------------------------------

_MONTHS = {name: number for number, name in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"),
    start=1)}
_DAYS = {name: number for number, name in enumerate(
    ("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
_MACROS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
           "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
           "@hourly": "0 * * * *"}
#: (name, lowest, highest, names) of the five fields
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}), ("hour", 0, 23, {}), ("day of month", 1, 31, {}),
    ("month", 1, 12, _MONTHS), ("day of week", 0, 7, _DAYS))
_PART = re.compile(r"^(?P<range>\*|[a-z0-9]+(?:-[a-z0-9]+)?)(?:/(?P<step>[0-9]+))?$")


class CronError(ValueError):
    """A cron expression this controller cannot read; the message says why."""


@dataclass(frozen=True)
class Cron:
    """A parsed 5-field cron expression (minute hour day-of-month month day-of-week)."""

    text: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    #: whether the day-of-month / day-of-week / hour field was ``*`` (cron's day rule:
    #: when both day fields are restricted, a day matching either runs)
    any_day: bool
    any_weekday: bool
    any_hour: bool

    def runs_on(self, day: dt.date) -> bool:
        """Whether the expression names this local date."""
        if day.month not in self.months:
            return False
        in_month = day.day in self.days
        in_week = (day.weekday() + 1) % 7 in self.weekdays
        if self.any_day or self.any_weekday:
            return in_month and in_week
        return in_month or in_week


def _value(text: str, field: tuple[str, int, int, dict[str, int]]) -> int:
    name, low, high, names = field
    if text in names:
        return names[text]
    if not text.isdigit():
        known = f" or a name ({', '.join(names)})" if names else ""
        raise CronError(f"{name}: {text!r} is not a number{known}")
    number = int(text)
    if not low <= number <= high:
        raise CronError(f"{name}: {number} is out of range {low}-{high}")
    return number


def _field_values(text: str, field: tuple[str, int, int, dict[str, int]]) -> set[int]:
    name, low, high, _ = field
    values: set[int] = set()
    for part in text.split(","):
        match = _PART.match(part)
        if not match:
            raise CronError(f"{name}: cannot read {part!r} (use N, N-M, *, */S, N-M/S or a "
                            "comma-separated list of those)")
        span, step_text = match["range"], match["step"]
        step = int(step_text) if step_text else 1
        if step < 1 or step > high:
            raise CronError(f"{name}: step {step} must be between 1 and {high}")
        if span == "*":
            first, last = low, high
        elif "-" in span:
            low_text, high_text = span.split("-")
            first, last = _value(low_text, field), _value(high_text, field)
            if high_text == "sun" and name == "day of week":
                last = 7  # mon-sun, sat-sun: Sunday ends the week (7 is Sunday too)
            if first > last:
                raise CronError(f"{name}: range {span} runs backwards (write the smaller "
                                "value first)")
        else:
            first = _value(span, field)
            # "5/15" is cron shorthand for "5-max/15"
            last = high if step_text else first
        values.update(range(first, last + 1, step))
    return values


def parse_cron(text: str) -> Cron:
    """Read a 5-field cron expression (names, ranges, steps, lists; ``@daily`` and the like);
    :class:`CronError` says what is wrong."""
    cleaned = " ".join(str(text).lower().split())
    if cleaned == "@reboot":
        raise CronError("@reboot has no time to run at on a controller: give a time, e.g. "
                        "'30 2 * * *' (02:30 every day)")
    expanded = _MACROS.get(cleaned, cleaned)
    parts = expanded.split(" ")
    if len(parts) != 5:
        raise CronError(f"a cron expression has 5 fields (minute hour day-of-month month "
                        f"day-of-week), this one has {len(parts)}: e.g. '30 2 * * *' is "
                        "02:30 every day")
    minute, hour, day, month, weekday = (
        _field_values(part, field) for part, field in zip(parts, _FIELDS, strict=True))
    if 7 in weekday:  # both 0 and 7 are Sunday
        weekday = (weekday - {7}) | {0}
    cron = Cron(text=cleaned, minutes=tuple(sorted(minute)), hours=tuple(sorted(hour)),
                days=frozenset(day), months=frozenset(month), weekdays=frozenset(weekday),
                any_day=parts[2].startswith("*"), any_weekday=parts[4].startswith("*"),
                any_hour=parts[1] == "*")
    longest = {2: 29, 4: 30, 6: 30, 9: 30, 11: 30}
    if cron.any_weekday and all(min(cron.days) > longest.get(m, 31) for m in cron.months):
        raise CronError(f"'{text}' never runs: no month it names has day {min(cron.days)}")
    return cron


@functools.cache
def _known_zones() -> frozenset[str]:
    return frozenset(available_timezones())


def zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name`` (:class:`ValidationError` when unknown)."""
    try:
        # only the names the tz database lists: no paths, and not ``localtime`` (the
        # controller host's own zone, which would change with the host it runs on)
        if name == "localtime" or name not in _known_zones():
            raise ValueError(name)
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValidationError.for_field(
            "timezone", f"{name[:64]!r} is not an IANA time zone (e.g. UTC, Europe/Paris, "
            "America/New_York)") from None


def _instants(cron: Cron, tz: ZoneInfo, day: dt.date) -> Iterator[dt.datetime]:
    """The UTC instants ``cron`` names on one local date, in order."""
    for hour in cron.hours:
        for minute in cron.minutes:
            wall = dt.datetime(day.year, day.month, day.day, hour, minute, tzinfo=tz)
            # zoneinfo maps a skipped wall time with the offset before the jump (fold=0):
            # 02:30 on the spring-forward day becomes 03:30 summer time, the same moment.
            first = wall.astimezone(dt.UTC)
            yield first
            if cron.any_hour:
                second = wall.replace(fold=1).astimezone(dt.UTC)
                if second > first:  # a repeated wall time: every-hour schedules run twice
                    yield second


def next_run(cron: Cron, tz: ZoneInfo, after: dt.datetime) -> dt.datetime | None:
    """The first instant (UTC) strictly after ``after`` that ``cron`` names in ``tz``."""
    after = after.astimezone(dt.UTC)
    # start a day early: the local date of ``after`` may be behind in UTC terms
    day = after.astimezone(tz).date() - dt.timedelta(days=1)
    for _ in range(366 * SEARCH_YEARS):
        if cron.runs_on(day):
            found = [at for at in _instants(cron, tz, day) if at > after]
            if found:
                return min(found)
        day += dt.timedelta(days=1)
    return None


def next_runs(cron: Cron, tz: ZoneInfo, after: dt.datetime, count: int) -> list[dt.datetime]:
    """The next ``count`` instants (UTC) after ``after``."""
    runs: list[dt.datetime] = []
    at: dt.datetime | None = after
    while len(runs) < count and at is not None:
        at = next_run(cron, tz, at)
        if at is not None:
            runs.append(at)
    return runs


def check_cron(text: str, timezone: str) -> tuple[Cron, ZoneInfo]:
    """The parsed expression and zone, or a :class:`ValidationError` naming the field."""
    try:
        cron = parse_cron(text)
    except CronError as exc:
        raise ValidationError.for_field("cron", str(exc)) from None
    tz = zone(timezone)
    if next_run(cron, tz, utcnow()) is None:
        raise ValidationError.for_field("cron", f"'{text}' never runs")
    return cron, tz


# -- status collection ----------------------------------------------------------------------

def slot(host_id: int, every_s: int) -> int:
    """Seconds into its tenant's interval at which a host's status is collected."""
    return (host_id * SLOT_FACTOR) % every_s


def due(host_ids: Iterable[int], every_s: int, start: float, end: float) -> list[int]:
    """The hosts whose slot falls in ``[start, end)`` (epoch seconds, modulo ``every_s``);
    all of them once when the window is at least the interval."""
    length = end - start
    if length <= 0 or every_s <= 0:
        return []
    if length >= every_s:
        return list(host_ids)
    return [host_id for host_id in host_ids
            if (slot(host_id, every_s) - start) % every_s < length]


def status_mark(tenant_id: int) -> str:
    """The :class:`SchedulerMark` holding where a tenant's status collection left off."""
    return f"status:tenant:{tenant_id}"


def _rowcount(result: object) -> int:
    return int(getattr(result, "rowcount", 0))


def _advance_mark(session: Session, name: str, now: float, first_window_s: float) -> float | None:
    """Move a mark to ``now``; the window's start, or ``None`` if another tick moved it
    first (two ticks at once must not both collect a window)."""
    row = session.get(SchedulerMark, name)
    if row is None:
        try:
            with session.begin_nested():
                session.add(SchedulerMark(name=name, at=now))
        except IntegrityError:
            return None
        return now - first_window_s
    start = row.at
    if start >= now:  # a clock that went back: wait until it passes the mark
        return None
    moved = _rowcount(session.execute(update(SchedulerMark).where(
        SchedulerMark.name == name, SchedulerMark.at == start).values(at=now)))
    return start if moved == 1 else None


def _busy_hosts(session: Session, tenant_id: int) -> set[int]:
    """The tenant's hosts with a ``collect_status`` unit still pending or running."""
    # any collect_status job counts (an operator's too), not only beat's
    rows = session.scalars(
        select(JobHost.host_id).join(Job, Job.id == JobHost.job_id)
        .join(Host, Host.id == JobHost.host_id)
        .where(Host.tenant_id == tenant_id, Job.action == "collect_status",
               Job.status.in_((JobState.QUEUED.value, JobState.RUNNING.value)),
               JobHost.status.in_((UnitState.PENDING.value, UnitState.RUNNING.value))))
    return set(rows)


def collect_tenant(session: Session, settings: Settings, box: SecretBox, database: Database,
                   *, tenant: Tenant, now: float) -> Job | None:
    """The status collection job for one tenant's hosts due in this tick (``None``: none)."""
    window = _advance_mark(session, status_mark(tenant.id), now,
                           float(settings.scheduler_tick_s))
    if window is None:
        return None
    hosts = session.execute(select(Host.id, Host.name).where(
        Host.tenant_id == tenant.id, Host.deleted_at.is_(None)).order_by(Host.id)).all()
    names = {int(row[0]): str(row[1]) for row in hosts}
    wanted = due(names, tenant.status_every_s, window, now)
    if not wanted:
        return None
    busy = _busy_hosts(session, tenant.id)
    rows = [(host_id, names[host_id]) for host_id in wanted if host_id not in busy]
    if not rows:
        return None
    # a tick's share of the fleet at once, up to 100: a whole interval's worth (beat was
    # down) must not open thousands of connections in one go
    body = _job_body({"action": "collect_status", "target": {"hosts": [rows[0][0]]},
                      "params": {}, "options": {"concurrency": min(len(rows), 100)}})
    # the host rows are passed as a retry passes them: the API's cap on a target's length
    # (MAX_TARGET_ITEMS) must not refuse a large tenant's window, which would then roll
    # its mark back on every tick
    body["target"] = {"hosts": [row[0] for row in rows]}
    return start_job(session, system_principal(tenant.id, STATUS_COLLECTOR),
                     body, box, database, max_timeout_s=settings.max_timeout_s,
                     lane_threads=settings.lane_threads, host_rows=rows,
                     origin=JobOrigin(OriginKind.SCHEDULE))


def collect_statuses(database: Database, settings: Settings, box: SecretBox,
                     now: float | None = None) -> list[int]:
    """Start the status collections due now, one job per tenant; their ids."""
    now = time.time() if now is None else now
    with database.transaction() as session:
        tenants = list(session.scalars(select(Tenant.id).where(Tenant.status_every_s > 0)))
    started = []
    for tenant_id in tenants:
        try:
            with database.transaction() as session:
                tenant = session.get(Tenant, tenant_id)
                if tenant is None or tenant.status_every_s <= 0:
                    continue
                job = collect_tenant(session, settings, box, database, tenant=tenant, now=now)
                if job is not None:
                    started.append(job.id)
        except Exception:  # one tenant's failure must not stop the others
            log.exception("status collection for tenant %s failed; its next tick tries "
                          "again", tenant_id)
    return started


# -- operator schedules -----------------------------------------------------------------------

def _job_body(raw: dict[str, Any]) -> dict[str, Any]:
    """A job document checked as ``POST /v1/jobs`` checks it (and its errors so named)."""
    return load_body(raw)


def seal_params(box: SecretBox, action: str, params: dict[str, Any],
                options: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """(public params, sealed secret part) of a schedule's params, checked as a job's are."""
    from controller.job_params import validate_params

    public, secret = validate_params(action, dict(params), options)
    return public, box.seal(json.dumps(secret)) if secret else None


def job_document(schedule: Schedule, box: SecretBox) -> dict[str, Any]:
    """The job a schedule starts (secret params opened), checked as ``POST /v1/jobs``."""
    return _job_body({"action": schedule.action, "target": schedule.target,
                      "params": open_params(schedule.params, schedule.params_sealed, box),
                      "options": schedule.options})


def acting_for(who: Principal, tenant_id: int | None) -> Principal | None:
    """``who`` narrowed to a schedule's tenant (``None``: a token of another tenant, which
    may not run it): an MSP-wide token changing a tenant's schedule must not make it run
    across every tenant."""
    if tenant_id is None:
        return who
    if who.tenant_id not in (None, tenant_id):
        return None
    return replace(who, tenant_id=tenant_id)


def principal_of(session: Session, schedule: Schedule) -> Principal | None:
    """The principal a schedule runs as: its token scoped to the schedule's tenant, unless
    the token was revoked or deleted or belongs to another tenant."""
    token = session.get(Token, schedule.token_id) if schedule.token_id is not None else None
    if token is None or token.revoked_at is not None:
        return None
    return acting_for(Principal(token.id, token.name, token.role, token.tenant_id),
                      schedule.tenant_id)


def check_schedule(session: Session, who: Principal, doc: dict[str, Any],
                   box: SecretBox, *, max_timeout_s: int) -> dict[str, Any]:
    """Check a schedule's document (job, cron, zone) as its token would run it; the columns
    to store (params split, secret sealed, ``next_run_at``)."""
    who.require("operator")
    raw = {"action": doc["action"], "target": doc["target"], "params": doc.get("params") or {},
           "options": doc.get("options") or {}}
    body = _job_body(raw)
    # every run applies these checks: a schedule that would fail each time is refused now
    check_job(session, who, body, max_timeout_s)
    public, sealed = seal_params(box, body["action"], body["params"], body["options"])
    cron, tz = check_cron(doc["cron"], doc.get("timezone") or "UTC")
    return {"action": body["action"], "target": body["target"], "params": public,
            "params_sealed": sealed, "options": raw["options"], "cron": cron.text,
            "timezone": tz.key, "next_run_at": next_run(cron, tz, utcnow())}


def get_schedule(session: Session, who: Principal, schedule_id: int) -> Schedule:
    """A schedule the principal sees (404 otherwise: another tenant's does not exist)."""
    row = session.scalar(scoped(select(Schedule).where(Schedule.id == schedule_id), Schedule,
                                who))
    if row is None:
        raise NotFound(f"schedule {schedule_id} not found: list them with GET /v1/schedules")
    return cast(Schedule, row)


def _unique_name(session: Session, tenant_id: int | None, name: str,
                 schedule_id: int | None = None) -> None:
    # NULL tenants (MSP-wide schedules) escape the unique index: check by hand
    stmt = select(func.count()).select_from(Schedule).where(Schedule.name == name)
    stmt = stmt.where(Schedule.tenant_id.is_(None) if tenant_id is None
                      else Schedule.tenant_id == tenant_id)
    if schedule_id is not None:
        stmt = stmt.where(Schedule.id != schedule_id)
    if session.scalar(stmt):
        raise Conflict(f"a schedule named {name!r} already exists: choose another name or "
                       "change that one")


def create_schedule(session: Session, who: Principal, doc: dict[str, Any],
                    box: SecretBox, *, max_timeout_s: int) -> Schedule:
    """Store a schedule that runs as ``who``'s token (committed)."""
    columns = check_schedule(session, who, doc, box, max_timeout_s=max_timeout_s)
    _unique_name(session, who.tenant_id, doc["name"])
    schedule = Schedule(tenant_id=who.tenant_id, token_id=who.token_id or None,
                        name=doc["name"], enabled=doc.get("enabled", True), **columns)
    if not schedule.enabled:
        schedule.next_run_at = None
    session.add(schedule)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise Conflict(f"a schedule named {doc['name']!r} already exists: choose another "
                       "name") from None
    return schedule


def update_schedule(session: Session, who: Principal, schedule_id: int,
                    changes: dict[str, Any], box: SecretBox, *,
                    max_timeout_s: int) -> Schedule:
    """Change a schedule (its job checked again as it would now run); enabling it again
    clears ``last_error`` and makes it run as the token that enabled it."""
    who.require("operator")
    schedule = get_schedule(session, who, schedule_id)
    if set(changes) <= {"enabled", "name"} and not changes.get("enabled", False):
        # stopping (or renaming a stopped) schedule needs no check of the job it would
        # run: a schedule whose hosts are gone must still be easy to stop
        if "name" in changes:
            _unique_name(session, schedule.tenant_id, changes["name"], schedule.id)
            schedule.name = changes["name"]
        if "enabled" in changes:
            schedule.enabled, schedule.next_run_at = False, None
        commit_unique(session, f"a schedule named {schedule.name!r}")
        return schedule
    doc = {"action": schedule.action, "target": schedule.target,
           "params": job_document(schedule, box)["params"], "options": schedule.options,
           "cron": schedule.cron, "timezone": schedule.timezone, **changes}
    # checked as it will run: as this token, within the schedule's tenant
    scoped_who = acting_for(who, schedule.tenant_id)
    if scoped_who is None:  # get_schedule found it, so the token sees its tenant
        raise NotFound(f"schedule {schedule_id} not found: list them with GET /v1/schedules")
    columns = check_schedule(session, scoped_who, doc, box, max_timeout_s=max_timeout_s)
    if "name" in changes:
        _unique_name(session, schedule.tenant_id, changes["name"], schedule.id)
        schedule.name = changes["name"]
    for key, value in columns.items():
        setattr(schedule, key, value)
    schedule.enabled = changes.get("enabled", schedule.enabled)
    # whoever changes a schedule vouches for it from now on: it runs as their token
    schedule.token_id = who.token_id or None
    schedule.last_error = None if schedule.enabled else schedule.last_error
    if not schedule.enabled:
        schedule.next_run_at = None
    # two renames at once: the unique index refuses the second (409, not a 500)
    commit_unique(session, f"a schedule named {schedule.name!r}")
    return schedule


def _disable(schedule: Schedule, reason: str) -> None:
    schedule.enabled = False
    schedule.next_run_at = None
    schedule.last_error = reason


def run_schedule(session: Session, settings: Settings, box: SecretBox, database: Database,
                 *, schedule: Schedule, now: dt.datetime) -> Job | None:
    """Start one due schedule's job and move it to its next time (a failure to start is
    kept in ``last_error``; the schedule keeps its times; one with no next time is
    disabled, saying why)."""
    cron, tz = parse_cron(schedule.cron), zone(schedule.timezone)
    schedule.next_run_at = next_run(cron, tz, now)
    schedule.last_run_at = now
    job = _start_scheduled(session, settings, box, database, schedule=schedule, now=now)
    if schedule.enabled and schedule.next_run_at is None:
        # silently never running again would look like a working schedule
        _disable(schedule, f"'{schedule.cron}' names no time within {SEARCH_YEARS} years "
                           f"after {now:%Y-%m-%d %H:%M} UTC: change its cron expression")
    return job


def _start_scheduled(session: Session, settings: Settings, box: SecretBox,
                     database: Database, *, schedule: Schedule,
                     now: dt.datetime) -> Job | None:
    """Start the schedule's job as its token; ``None`` (and why, in ``last_error``) if not."""
    who = principal_of(session, schedule)
    if who is None:
        _disable(schedule, "the token this schedule runs as was revoked or deleted, or "
                           "belongs to another tenant: enable it again (PATCH enabled=true) "
                           "with a valid operator token of the schedule's tenant")
        return None
    try:
        with session.begin_nested():
            job = start_job(session, who, job_document(schedule, box), box, database,
                            max_timeout_s=settings.max_timeout_s,
                            lane_threads=settings.lane_threads,
                            origin=JobOrigin(OriginKind.SCHEDULE, schedule_id=schedule.id))
    except RelayfleetError as exc:
        # the target may match no host now, or the token's role may have changed
        schedule.last_error = f"not started at {now:%Y-%m-%d %H:%M} UTC: {exc}"[:2000]
        return None
    schedule.last_job_id = job.id
    schedule.last_error = None
    return job


def run_due_schedules(database: Database, settings: Settings, box: SecretBox,
                      now: dt.datetime | None = None) -> list[int]:
    """Start every enabled schedule whose time has come; the jobs' ids."""
    now = now or utcnow()
    with database.transaction() as session:
        due_ids = list(session.scalars(select(Schedule.id).where(
            Schedule.enabled.is_(True), Schedule.next_run_at <= now).order_by(
            Schedule.next_run_at)))
    started = []
    for schedule_id in due_ids:
        try:
            with database.transaction() as session:
                schedule = session.get(Schedule, schedule_id)
                if schedule is None or not schedule.enabled or schedule.next_run_at is None:
                    continue
                # claim it: a second tick running at once sees next_run_at moved and skips
                claimed = _rowcount(session.execute(update(Schedule).where(
                    Schedule.id == schedule_id, Schedule.next_run_at == schedule.next_run_at,
                    Schedule.next_run_at <= now).values(next_run_at=None)))
                if claimed != 1:
                    continue
                session.refresh(schedule)
                job = run_schedule(session, settings, box, database, schedule=schedule, now=now)
                if job is not None:
                    started.append(job.id)
        except Exception:
            log.exception("schedule %s could not be run; the next tick tries again",
                          schedule_id)
    return started


#: jobs deleted per transaction, and transactions per tick, when old status jobs are purged
PURGE_BATCH = 500
PURGE_BATCHES_PER_TICK = 20


def purge_status_jobs(database: Database, settings: Settings,
                      now: dt.datetime | None = None) -> int:
    """Delete beat's status collection jobs finished more than
    ``status_job_retention_days`` ago, in short transactions (a bounded number per tick: a
    backlog drains over the next ticks); how many."""
    cutoff = (now or utcnow()) - dt.timedelta(days=settings.status_job_retention_days)
    purged = 0
    for _ in range(PURGE_BATCHES_PER_TICK):
        with database.transaction() as session:
            count = purge_status_jobs_batch(session, cutoff, PURGE_BATCH)
        purged += count
        if count < PURGE_BATCH:
            break
    return purged


def tick(database: Database, settings: Settings) -> None:
    """Beat's step for this module: start due status collections, then due schedules, then
    delete old status collection jobs."""
    box = SecretBox(settings.secret_key, settings.old_secret_keys)
    collect_statuses(database, settings, box)
    run_due_schedules(database, settings, box)
    try:
        purge_status_jobs(database, settings)
    except Exception:  # a failed purge must not stop beat: the next tick tries again
        log.exception("old status collection jobs could not be deleted; the next tick "
                      "tries again")


# -- reading ------------------------------------------------------------------------------

def schedule_query(who: Principal) -> Any:
    """The schedules the principal sees, by name."""
    return scoped(select(Schedule), Schedule, who).order_by(Schedule.name, Schedule.id)


def upcoming(schedule: Schedule, count: int = 5) -> list[dict[str, str]]:
    """The schedule's next ``count`` times, in its zone and in UTC."""
    try:
        cron, tz = parse_cron(schedule.cron), zone(schedule.timezone)
    except (CronError, ValidationError):
        return []
    start = utcnow() if schedule.next_run_at is None else (
        schedule.next_run_at - dt.timedelta(seconds=1))
    return [{"local": at.astimezone(tz).isoformat(), "utc": at.isoformat()}
            for at in next_runs(cron, tz, start, count)]


def status_collection(session: Session, who: Principal, tenant_id: int,
                      settings: Settings) -> dict[str, Any]:
    """A tenant's status collection: its interval, hosts and how many each tick collects."""
    tenant = get_scoped(session, Tenant, tenant_id, who)
    hosts = session.scalar(select(func.count()).select_from(Host).where(
        Host.tenant_id == tenant.id, Host.deleted_at.is_(None))) or 0
    mark = session.get(SchedulerMark, status_mark(tenant.id))
    every = tenant.status_every_s
    return {"tenant_id": tenant.id, "every_s": every, "enabled": every > 0, "hosts": hosts,
            "tick_s": settings.scheduler_tick_s, "min_every_s": settings.min_status_every_s,
            "hosts_per_tick": (round(hosts * min(1.0, settings.scheduler_tick_s / every), 1)
                               if every > 0 else 0),
            "last_tick_at": (dt.datetime.fromtimestamp(mark.at, dt.UTC) if mark else None)}


def set_status_collection(session: Session, who: Principal, tenant_id: int, every_s: int,
                          settings: Settings) -> dict[str, Any]:
    """Set a tenant's status interval (0: off; otherwise at least ``min_status_every_s``)."""
    who.require("admin")
    tenant = get_scoped(session, Tenant, tenant_id, who)
    if 0 < every_s < settings.min_status_every_s:
        raise ValidationError.for_field(
            "every_s", f"at least {settings.min_status_every_s} s on this controller (or 0 to "
            "turn status collection off)")
    if tenant.status_every_s <= 0 < every_s:
        # turned back on: the old mark would make the first window span the whole time it
        # was off, collecting every host at once; a fresh mark starts with one tick
        session.execute(delete(SchedulerMark).where(
            SchedulerMark.name == status_mark(tenant.id)))
    tenant.status_every_s = every_s
    session.commit()
    return status_collection(session, who, tenant_id, settings)

