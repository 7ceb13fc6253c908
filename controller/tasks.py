"""Celery tasks that run jobs: lanes claim hosts one by one; callbacks report the end.

How a job scales (10,000 hosts and more) without one message per host:

- Accepting a job inserts one ``job_hosts`` row (a *unit*) per host in one statement and
  enqueues ``ceil(concurrency / lane_threads)`` **lane** tasks: a few messages per job,
  never a chord over hosts.
- A lane runs up to ``lane_threads`` threads; each thread claims the next pending unit with
  one conditional UPDATE (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; SQLite serialises
  writers), runs it, and records the result. So at most ``concurrency`` hosts of a job run
  at once, however many workers there are.
- A lane stops claiming after ``lane_budget_s`` and re-enqueues itself (a continuation), so
  no task outlives the broker's visibility timeout and long jobs interleave with others.
- A claimed unit carries a lease (``timeout_s`` plus a margin). If its worker dies, the lane
  task comes back (``acks_late`` + ``reject_on_worker_lost``) and the unit is claimed again
  once the lease has run out. A finished unit is never claimed again, and the operations
  themselves are idempotent (the same smarthost again is ``changed: false`` and touches no
  file), so a redelivered unit never applies a change twice.
- The lane that sees no pending and no running unit left derives the job's status; a
  conditional UPDATE makes that happen once, and only then is the callback enqueued.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import requests
from celery import shared_task
from flask import current_app
from sqlalchemy import and_, func, or_, select, update

from controller.config import Settings
from controller.crypto import SecretBox, derive_key, sign_callback
from controller.db import Database, utcnow
from controller.jobs import counts, derive_status, job_document, purge_idempotency_keys
from controller.models import Host, Job, JobHost
from controller.transports import HostSpec, transport_for
from shared.errors import HostUnreachable, RelayfleetError
from shared.results import OperationResult

log = logging.getLogger("relayfleet.worker")
#: added to a unit's timeout for its lease: claiming, recording and clock slack
LEASE_MARGIN_S = 10
#: a host whose worker died this many times is not tried again (it may be what kills it)
MAX_ATTEMPTS = 3
CALLBACK_RETRIES = 8

#: the host columns a worker needs (no relationship loads)
_HOST_COLUMNS = (Host.id, Host.name, Host.address, Host.transport, Host.mta_kind,
                 Host.mta_flavour, Host.mta_overrides, Host.agent_url, Host.agent_token_sealed,
                 Host.agent_ca_cert, Host.ssh_port, Host.ssh_username,
                 Host.ssh_private_key_sealed, Host.ssh_passphrase_sealed,
                 Host.ssh_password_sealed, Host.ssh_host_key, Host.ssh_sudo)

_pool_lock = threading.Lock()
_pools: dict[int, Any] = {}


def _ssh_pool() -> Any:
    """This process's pool of warm SSH connections (made after fork, one per process)."""
    from shared.ssh import SshPool

    pid = os.getpid()
    with _pool_lock:
        if pid not in _pools:
            _pools[pid] = SshPool()
        return _pools[pid]


def _db() -> Database:
    database: Database = current_app.extensions["relayfleet_db"]
    return database


def _settings() -> Settings:
    settings: Settings = current_app.config["RELAYFLEET_SETTINGS"]
    return settings


def lanes_for(concurrency: int, total: int, lane_threads: int) -> int:
    """How many lane tasks a job needs to run ``concurrency`` hosts at once."""
    return max(1, math.ceil(min(concurrency, max(total, 1)) / lane_threads))


def enqueue_job(job_id: int, lanes: int) -> None:
    """Send a new job's lane tasks to the broker."""
    for lane in range(lanes):
        run_lane.apply_async(args=(job_id, lane))


@dataclass(frozen=True)
class Claim:
    """A unit a lane has taken: which attempt it is, and its host's row (still sealed)."""

    unit_id: int
    attempt: int
    host_id: int
    host: dict[str, Any] | None


class Lane:
    """One lane of one job: threads that claim, run and record units until none is left."""

    def __init__(self, job_id: int, lane: int) -> None:
        self.job_id = job_id
        self.lane = lane
        self.db = _db()
        self.settings = _settings()
        self.box = SecretBox(self.settings.secret_key)

    # -- claiming -----------------------------------------------------------------------
    def claim(self, job: dict[str, Any]) -> Claim | None:
        """Take the next unit (pending, or running with a lapsed lease) and read its host,
        in one transaction."""
        now = time.time()
        with self.db.transaction() as session:
            state = session.scalar(select(Job.status).where(Job.id == self.job_id))
            if state not in ("queued", "running"):
                self._abandon_lapsed(session, now, "the job was cancelled")
                return None
            max_failures = job["options"].get("max_failures")
            if max_failures is not None:
                failed = session.scalar(select(func.count()).where(
                    JobHost.job_id == self.job_id,
                    JobHost.status.in_(("failed", "unreachable"))))
                if (failed or 0) > max_failures:
                    session.execute(update(JobHost).where(
                        JobHost.job_id == self.job_id, JobHost.status == "pending").values(
                        status="skipped", finished_at=utcnow(),
                        error=f"not started: more than {max_failures} hosts failed"))
                    self._abandon_lapsed(session, now,
                                         f"more than {max_failures} hosts failed")
                    return None
            candidate = (select(JobHost.id).where(
                JobHost.job_id == self.job_id,
                or_(JobHost.status == "pending",
                    and_(JobHost.status == "running", JobHost.lease_until < now)))
                .order_by(JobHost.id).limit(1).with_for_update(skip_locked=True)
                .scalar_subquery())
            lease = now + job["options"]["timeout_s"] + LEASE_MARGIN_S
            row = session.execute(
                update(JobHost).where(JobHost.id == candidate)
                .values(status="running", attempts=JobHost.attempts + 1, lease_until=lease,
                        started_at=func.coalesce(JobHost.started_at, utcnow()))
                .returning(JobHost.id, JobHost.attempts, JobHost.host_id)).first()
            if row is None:
                return None
            host = session.execute(select(*_HOST_COLUMNS).where(Host.id == row[2])).first()
            return Claim(int(row[0]), int(row[1]), int(row[2]),
                         dict(host._mapping) if host is not None else None)

    def _abandon_lapsed(self, session: Any, now: float, why: str) -> None:
        """Units whose worker died, in a job that may start no more hosts: not run again,
        so mark them failed (otherwise the job would wait for them for ever)."""
        session.execute(update(JobHost).where(
            JobHost.job_id == self.job_id, JobHost.status == "running",
            JobHost.lease_until < now).values(
            status="failed", lease_until=None, finished_at=utcnow(),
            error=f"the worker running this host stopped, and {why}: not run again"))

    # -- running ------------------------------------------------------------------------
    def _spec(self, host: Any) -> HostSpec:
        open_ = self.box.open
        return HostSpec(
            host_id=host["id"], name=host["name"], address=host["address"],
            transport=host["transport"], mta_kind=host["mta_kind"],
            mta_flavour=host["mta_flavour"], mta_overrides=dict(host["mta_overrides"] or {}),
            agent_url=host["agent_url"], agent_token=open_(host["agent_token_sealed"]),
            agent_ca_cert=host["agent_ca_cert"], ssh_port=host["ssh_port"],
            ssh_username=host["ssh_username"],
            ssh_private_key=open_(host["ssh_private_key_sealed"]),
            ssh_passphrase=open_(host["ssh_passphrase_sealed"]),
            ssh_password=open_(host["ssh_password_sealed"]), ssh_host_key=host["ssh_host_key"],
            ssh_sudo=host["ssh_sudo"])

    def run_unit(self, job: dict[str, Any], claim: Claim) -> None:
        """Run one host's part and record it (unless another attempt took the unit over)."""
        result: OperationResult | None = None
        error: str | None
        spec = None
        if claim.host is None:
            status, error = "failed", "the host was deleted from the inventory"
        elif claim.attempt > MAX_ATTEMPTS:
            status, error = "failed", (f"not run again: the worker running this host stopped "
                                       f"{claim.attempt - 1} times")
        else:
            try:
                spec = self._spec(claim.host)
            except RelayfleetError as exc:
                status, error = "failed", exc.message
        if spec is not None:
            params = dict(job["params"])
            if job["secret"]:
                params["auth"] = {**params.get("auth", {}), **job["secret"]}
            try:
                owner = f"relayfleet-job-{self.job_id}-host-{spec.host_id}"
                with transport_for(spec, _ssh_pool(), lock_owner=owner) as transport:
                    result = transport.run(job["action"], params,
                                           dry_run=bool(job["options"].get("dry_run")),
                                           timeout_s=job["options"]["timeout_s"])
                status = "succeeded" if result.ok else "failed"
                error = result.error
            except HostUnreachable as exc:
                status, error = "unreachable", exc.message
            except RelayfleetError as exc:
                status, error = "failed", exc.message
            except Exception as exc:  # a bug must cost one host, not the lane
                log.exception("job %s host %s: unexpected error", self.job_id, claim.host_id)
                status, error = "failed", f"internal error ({type(exc).__name__}); see the " \
                                          "worker log"
        self.record(job, claim, status=status, error=error, result=result)

    def record(self, job: dict[str, Any], claim: Claim, *, status: str,
               error: str | None, result: OperationResult | None) -> None:
        """Store a unit's outcome and what it taught us about the host (one transaction)."""
        with self.db.transaction() as session:
            done = session.execute(
                update(JobHost).where(JobHost.id == claim.unit_id,
                                      JobHost.attempts == claim.attempt,
                                      JobHost.status == "running")
                .values(status=status, error=_text(error), lease_until=None,
                        finished_at=utcnow(), changed=result.changed if result else None,
                        data=_jsonable(result.data) if result else None,
                        steps=_jsonable({"s": [s.to_dict() for s in result.steps]})["s"]
                        if result else None))
            if _rowcount(done) != 1:
                log.warning("job %s unit %s: attempt %s was overtaken; result dropped",
                            self.job_id, claim.unit_id, claim.attempt)
                return
            session.execute(update(Host).where(Host.id == claim.host_id).values(
                **learned(self.job_id, job, status=status, error=error, result=result)))
        log.info("job %s host %s: %s%s", self.job_id, claim.host_id, status,
                 f" ({error})" if error else "")

    # -- the lane -------------------------------------------------------------------------
    def load(self) -> dict[str, Any] | None:
        """The job's settings (marking it running), or ``None`` when it has finished."""
        with self.db.transaction() as session:
            row = session.get(Job, self.job_id)
            if row is None or row.finished_at is not None:
                return None
            row.heartbeat_at = time.time()
            if row.status == "queued":
                row.status, row.started_at = "running", utcnow()
            secret = json.loads(self.box.open(row.params_sealed) or "null")
            return {"action": row.action, "params": row.params, "options": row.options,
                    "secret": secret, "total": row.total}

    def run(self) -> None:
        """Work until the budget is spent or nothing is left; then hand over or finish."""
        job = self.load()
        if job is None:
            return
        concurrency = job["options"]["concurrency"]
        threads = max(1, min(self.settings.lane_threads,
                             concurrency - self.lane * self.settings.lane_threads,
                             job["total"]))
        deadline = time.monotonic() + self.settings.lane_budget_s

        def loop() -> None:
            while time.monotonic() < deadline:
                try:
                    claimed = self.claim(job)
                    if claimed is None:
                        return
                    self.run_unit(job, claimed)
                except Exception:
                    # The database hiccupped: this thread stops; the lease brings the unit
                    # back, and hand_over still runs for the lane.
                    log.exception("job %s lane %s: a thread stopped", self.job_id, self.lane)
                    return

        with ThreadPoolExecutor(max_workers=threads) as pool:
            for future in [pool.submit(loop) for _ in range(threads)]:
                future.result()
        self.hand_over()

    def hand_over(self) -> None:
        """Continue (work left), look again later (others still running), or finish."""
        with self.db.transaction() as session:
            job = session.get(Job, self.job_id)
            if job is None or job.finished_at is not None:
                return
            tally = counts(session, self.job_id)
            earliest = session.scalar(select(func.min(JobHost.lease_until)).where(
                JobHost.job_id == self.job_id, JobHost.status == "running"))
            job.heartbeat_at = time.time()
        if tally["pending"] and job.status in ("queued", "running"):
            run_lane.apply_async(args=(self.job_id, self.lane))
        elif tally["running"]:
            # Another lane is still on it, or a dead worker's lease has to run out first.
            wait = (earliest or time.time()) - time.time() + 1
            countdown = min(max(1.0, wait), self.settings.visibility_timeout_s / 2)
            run_lane.apply_async(args=(self.job_id, self.lane), countdown=countdown)
        else:
            finish_job(self.db, self.job_id)


def finish_job(database: Database, job_id: int) -> None:
    """Derive and store the final status once; then enqueue the callback."""
    with database.transaction() as session:
        job = session.get(Job, job_id)
        if job is None or job.finished_at is not None:
            return
        tally = counts(session, job_id)
        if tally["pending"] or tally["running"]:
            return
        final = derive_status(job.status, tally)
        done = session.execute(update(Job).where(Job.id == job_id, Job.finished_at.is_(None))
                               .values(status=final, finished_at=utcnow()))
        callback = _rowcount(done) == 1 and job.callback_url is not None
    log.info("job %s finished: %s %s", job_id, final, tally)
    if callback:
        send_callback.apply_async(args=(job_id,))


def learned(job_id: int, job: dict[str, Any], *, status: str, error: str | None,
            result: OperationResult | None) -> dict[str, Any]:
    """What one result says about its host's last known state (for ``GET /v1/fleet``)."""
    action, dry_run = job["action"], bool(job["options"].get("dry_run"))
    if status == "unreachable":
        return {"last_job_id": job_id, "last_reachable": False, "last_error": error}
    values: dict[str, Any] = {"last_job_id": job_id, "last_reachable": True,
                              "last_seen_at": utcnow(),
                              "last_error": error if status == "failed" else None}
    data = result.data if result else {}
    if action == "collect_status" and status == "succeeded":
        values.update(queue_count=(data.get("queue") or {}).get("count"),
                      smarthost=data.get("smarthost"),
                      config_in_sync=data.get("config_in_sync"),
                      mta_running=(data.get("mta") or {}).get("running"))
    elif action == "flush_queue" and data.get("after") is not None:
        values["queue_count"] = data["after"]
    elif action in ("set_smarthost", "remove_smarthost") and not dry_run and \
            "smarthost" in data and (status == "succeeded" or data.get("rolled_back")):
        values.update(smarthost=data["smarthost"], config_in_sync=data.get("config_in_sync"))
    return values


def _rowcount(result: object) -> int:
    """Rows an UPDATE matched (a CursorResult attribute the generic Result type lacks)."""
    return int(getattr(result, "rowcount", 0))


def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    """Plain JSON without NUL characters (PostgreSQL text cannot hold them)."""
    result: dict[str, Any] = _without_nul(json.loads(json.dumps(data, default=str)))
    return result


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, list):
        return [_without_nul(item) for item in value]
    if isinstance(value, dict):
        return {_without_nul(key): _without_nul(item) for key, item in value.items()}
    return value


def _text(value: str | None) -> str | None:
    return value.replace("\x00", "") if value else value


@shared_task(name="relayfleet.run_lane", acks_late=True, reject_on_worker_lost=True,
             ignore_result=True)
def run_lane(job_id: int, lane: int) -> None:
    """Run one lane of a job (see the module docstring)."""
    Lane(job_id, lane).run()


@shared_task(name="relayfleet.sweep", acks_late=True, reject_on_worker_lost=True,
             ignore_result=True)
def sweep() -> None:
    """Periodic (beat): give a lane back to unfinished jobs whose lanes went silent (the
    API died between storing a job and queueing it, or a broker lost a message), and
    forget expired Idempotency-Keys."""
    settings, database = _settings(), _db()
    silent_since = time.time() - settings.visibility_timeout_s - 2 * settings.lane_budget_s
    with database.transaction() as session:
        stale = list(session.scalars(select(Job.id).where(
            Job.finished_at.is_(None), Job.status.in_(("queued", "running")),
            Job.heartbeat_at < silent_since)))
        if stale:
            session.execute(update(Job).where(Job.id.in_(stale))
                            .values(heartbeat_at=time.time()))
        purged = purge_idempotency_keys(session)
    for job_id in stale:
        log.warning("job %s: no lane heard from since %.0f s; queueing one", job_id,
                    settings.visibility_timeout_s)
        run_lane.apply_async(args=(job_id, 0))
    if purged:
        log.info("forgot %s expired idempotency keys", purged)


def callback_key(settings: Settings) -> bytes:
    """The key callbacks are signed with."""
    if settings.callback_secret:
        return settings.callback_secret.encode()
    return derive_key(settings.secret_key, "callbacks v1").hex().encode()


@shared_task(name="relayfleet.send_callback", bind=True, acks_late=True,
             reject_on_worker_lost=True, ignore_result=True, max_retries=CALLBACK_RETRIES)
def send_callback(self: Any, job_id: int) -> None:
    """POST the final job document to its ``callback_url``, signed; retry with backoff."""
    from controller.schemas import JobSchema

    database, settings = _db(), _settings()
    with database.transaction() as session:
        job = session.get(Job, job_id)
        if job is None or job.callback_url is None:
            return
        body = json.dumps(JobSchema().dump(job_document(session, job))).encode()
        url = job.callback_url
    stamp = str(int(time.time()))
    headers = {"Content-Type": "application/json", "User-Agent": "relayfleet-controller",
               "X-Relayfleet-Event": "job.finished", "X-Relayfleet-Timestamp": stamp,
               "X-Relayfleet-Signature": sign_callback(callback_key(settings), stamp, body)}
    attempt = self.request.retries + 1
    try:
        answer = requests.post(url, data=body, headers=headers, timeout=10,
                               allow_redirects=False)
        outcome = f"HTTP {answer.status_code}"
        delivered = 200 <= answer.status_code < 300
    except requests.exceptions.RequestException as exc:
        outcome, delivered = type(exc).__name__, False
    state = (f"delivered on attempt {attempt} ({outcome})" if delivered
             else f"attempt {attempt} failed ({outcome})")
    if not delivered and self.request.retries >= CALLBACK_RETRIES:
        state = f"gave up after {attempt} attempts (last: {outcome})"
    with database.transaction() as session:
        session.execute(update(Job).where(Job.id == job_id).values(callback_state=state))
    if not delivered and self.request.retries < CALLBACK_RETRIES:
        raise self.retry(countdown=min(600, 2 * 2 ** self.request.retries))
