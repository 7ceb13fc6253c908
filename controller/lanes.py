"""How a job runs: lanes claim hosts one by one through the ledger, run them, record them.

How a job scales (10,000 hosts and more) without one message per host:

- Accepting a job inserts one unit per host in one statement and queues
  ``ceil(concurrency / lane_threads)`` **lane** tasks: a few messages per job, never a
  chord over hosts. Each message carries the lane's width (the accepting process's
  ``lane_threads``), and so do its continuations, so a worker configured differently
  still runs the job as it was split.
- A lane runs up to that many threads; each thread claims the next pending unit with
  one conditional UPDATE (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; SQLite serialises
  writers), runs it, and records the result. So at most ``concurrency`` hosts of a job run
  at once, however many workers there are.
- A lane stops claiming after ``lane_budget_s`` and queues its own continuation, so no
  task outlives the broker's visibility timeout and long jobs interleave with others.
- A claimed unit carries a short lease (:data:`controller.ledger.LEASE_S`) that its lane
  renews while the host runs (up to ``timeout_s`` plus a margin; the transport cuts the
  host at ``timeout_s``). If the worker dies, the lease lapses within ``LEASE_S`` and the
  sweeper (every few seconds, on beat) queues a lane that claims the unit again as its
  next attempt: recovery runs on the lease's clock, not the broker's visibility timeout
  (the dead worker's own message comes back much later and finds nothing to do). Each
  attempt holds the host's change lock under its own name; a later attempt of the same
  unit takes over what an earlier one left, and an attempt that loses its unit is cut.
  A finished unit is never claimed again, and the operations themselves are idempotent
  (the same smarthost again is ``changed: false`` and touches no file), so a unit run
  again never applies a change twice.
- The lane that sees no pending and no running unit left finishes the job (once: the
  ledger's transition is conditional), which queues the callback.

Every row change is the ledger's (:mod:`controller.ledger`); this module decides *when*.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from flask import current_app

from controller import dispatch, ledger, policy
from controller.config import Settings
from controller.crypto import SecretBox
from controller.db import Database
from controller.idempotency import purge_expired
from controller.job_params import learned, stored_request
from controller.ledger import MAX_ATTEMPTS, Claim, Outcome, UnitState
from controller.transports import AgentSwitch, HostSpec, HostTransport, transport_for
from shared.errors import HostUnreachable, RelayfleetError
from shared.results import OperationResult

log = logging.getLogger("relayfleet.worker")

#: makes the transport for one host (tests pass :class:`controller.testing.FakeTransports`)
TransportFactory = Callable[..., HostTransport]

def _install_agent(spec: HostSpec, pool: Any, *, settings: Settings,
                   seal: Callable[[str], str], lock_owner: str | None) -> HostTransport:
    from controller.agent_install import AgentInstall

    return AgentInstall(spec, pool, bundle_dir=settings.agent_bundle_dir, seal=seal,
                        lock_owner=lock_owner)


#: what runs each action the worker runs itself (shared.actions.WORKER_ACTIONS), by name
WORKER_RUNNERS: Mapping[str, TransportFactory] = {"install_agent": _install_agent}

#: how long a lane that could claim nothing (its tenant at its share) waits to look again
SHARE_WAIT_S = 2.0
#: how long a thread of a lane rolling out in waves waits, while the lane's other threads
#: finish the open wave, before it looks for the next wave's hosts
WAVE_WAIT_S = 0.5

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


def app_database() -> Database:
    """The current Flask app's database (in a worker: the app the task runs in)."""
    database: Database = current_app.extensions["relayfleet_db"]
    return database


def app_settings() -> Settings:
    """The current Flask app's settings."""
    settings: Settings = current_app.config["RELAYFLEET_SETTINGS"]
    return settings


@dataclass(frozen=True)
class JobPlan:
    """What every unit of a job runs: its action, typed request and options."""

    action: str
    request: Any
    options: dict[str, Any]
    total: int

    @property
    def dry_run(self) -> bool:
        """Whether the job only shows what it would change."""
        return bool(self.options.get("dry_run"))

    @property
    def timeout_s(self) -> float:
        """Each host's time box."""
        return float(self.options["timeout_s"])

    @property
    def waves(self) -> bool:
        """Whether the job rolls out in waves (a wave opens when the earlier ones end)."""
        return ledger.in_waves(self.options)


class Lane:
    """One lane of one job: threads that claim, run and record units until none is left."""

    def __init__(self, job_id: int, lane: int, *, database: Database | None = None,
                 settings: Settings | None = None,
                 transports: TransportFactory = transport_for,
                 send: Callable[..., None] = dispatch.send,
                 runners: Mapping[str, TransportFactory] | None = None,
                 width: int | None = None) -> None:
        self.job_id = job_id
        self.lane = lane
        self.db = database or app_database()
        self.settings = settings or app_settings()
        #: hosts this lane works on at once, as the job was split into lanes (a lane the
        #: sweeper queues again carries none: this worker's own setting then)
        self.width = width or self.settings.lane_threads
        self.box = SecretBox(self.settings.secret_key, self.settings.old_secret_keys)
        self.transports = transports
        #: what runs the actions the worker runs itself (tests pass fakes)
        self.runners = WORKER_RUNNERS if runners is None else runners
        self.send = send
        self._held_lock = threading.Lock()
        #: units this lane runs now: unit id -> (attempt, renew until (monotonic), transport)
        self._held: dict[int, tuple[int, float, HostTransport | None]] = {}
        #: decrypted host secrets by their sealed text (see _open)
        self._secrets: dict[str, str | None] = {}

    def load(self) -> JobPlan | None:
        """The job's plan (marking it running), or ``None`` when it has finished."""
        with self.db.transaction() as session:
            job = ledger.start(session, self.job_id)
            if job is None:
                return None
            secret = json.loads(self.box.open(job.params_sealed) or "null")
            return JobPlan(job.action, stored_request(job.action, job.params, secret),
                           dict(job.options), job.total)

    def claim(self, plan: JobPlan) -> Claim | None:
        """Take the next unit and read its host, in one transaction (the job's options
        are the plan's: they never change once the job is stored)."""
        with self.db.transaction() as session:
            return self._claim_in(session, plan)

    def claim_start(self, plan: JobPlan, count: int) -> list[Claim]:
        """The first units of the lane's ``count`` threads, taken in one transaction (a
        claim each would be a burst of transactions just as the hosts start working, and
        the last thread would start its host late); empty when :meth:`claim` finds
        nothing."""
        with self.db.transaction() as session:
            first = self._claim_in(session, plan)
            if first is None:
                return []
            return [first, *ledger.claim_more(
                session, self.job_id, count - 1, timeout_s=plan.timeout_s,
                lease_s=self.settings.lease_s,
                tenant_max_running=self.settings.tenant_max_running, options=plan.options)]

    def _claim_in(self, session: Any, plan: JobPlan) -> Claim | None:
        return ledger.claim(session, self.job_id, timeout_s=plan.timeout_s,
                            max_failures=plan.options.get("max_failures"),
                            lease_s=self.settings.lease_s,
                            tenant_max_running=self.settings.tenant_max_running,
                            options=plan.options)

    def _open(self, sealed: str | None) -> str | None:
        """A host's secret, decrypted once per lane. Keyed by the sealed text, which the
        claim has just read from the host's row: a secret changed since (a new token, a
        rotated key) is another sealed text, so what is used is always the row's current
        secret; only the decryption is saved."""
        if sealed is None:
            return None
        with self._held_lock:
            plain = self._secrets.get(sealed)
        if plain is None:
            plain = self.box.open(sealed)
            with self._held_lock:
                self._secrets[sealed] = plain
        return plain

    def _spec(self, host: Any) -> HostSpec:
        """What reaches the host, from the row its claim read (never a cached row: an
        edit of the host applies to its next unit)."""
        open_ = self._open
        return HostSpec(
            host_id=host["id"], name=host["name"], address=host["address"],
            transport=host["transport"], mta_kind=host["mta_kind"],
            mta_flavour=host["mta_flavour"], mta_overrides=dict(host["mta_overrides"] or {}),
            mta_detected_kind=host["mta_detected_kind"],
            agent_url=host["agent_url"], agent_token=open_(host["agent_token_sealed"]),
            agent_ca_cert=host["agent_ca_cert"],
            agent_tls_fingerprint=host["agent_tls_fingerprint"],
            agent_insecure_http=bool(host["agent_insecure_http"]), ssh_port=host["ssh_port"],
            ssh_username=host["ssh_username"],
            ssh_private_key=open_(host["ssh_private_key_sealed"]),
            ssh_passphrase=open_(host["ssh_passphrase_sealed"]),
            ssh_password=open_(host["ssh_password_sealed"]), ssh_host_key=host["ssh_host_key"],
            ssh_sudo=host["ssh_sudo"])

    def run_unit(self, plan: JobPlan, claim: Claim) -> None:
        """Run one host's part and record it (unless another attempt took the unit over)."""
        result: OperationResult | None = None
        status: str
        error: str | None
        spec = None
        mta_kind: str | None = None
        if claim.host is None:
            status, error = UnitState.FAILED, "the host was deleted from the inventory"
        elif claim.attempt > MAX_ATTEMPTS:
            status, error = UnitState.FAILED, (
                f"not run again: the worker running this host stopped "
                f"{claim.attempt - 1} times")
        else:
            try:
                spec = self._spec(claim.host)
            except RelayfleetError as exc:
                status, error = UnitState.FAILED, exc.message
        switch: AgentSwitch | None = None
        if spec is not None:
            try:
                with self._transport(plan, spec, claim) as transport:
                    self._hold(claim, plan, transport)
                    try:
                        result = transport.run(plan.action, plan.request,
                                               dry_run=plan.dry_run, timeout_s=plan.timeout_s)
                    finally:
                        # (a failed install may still have given the agent a new token)
                        mta_kind, switch = transport.mta_kind, transport.agent_switch
                status = UnitState.SUCCEEDED if result.ok else UnitState.FAILED
                error = result.error
            except HostUnreachable as exc:
                status, error = UnitState.UNREACHABLE, exc.message
            except RelayfleetError as exc:
                status, error = UnitState.FAILED, exc.message
            except Exception as exc:  # a bug must cost one host, not the lane
                log.exception("job %s host %s: unexpected error", self.job_id, claim.host_id,
                              extra={"job_id": self.job_id, "host": claim.host_id})
                status, error = UnitState.FAILED, (f"internal error ({type(exc).__name__}); "
                                                   "see the worker log")
        try:
            self.record(plan, claim, status=status, error=error, result=result,
                        mta_kind=mta_kind, switch=switch)
        finally:
            # Held until stored: till then the unit still runs as far as the ledger knows
            # (its wave is still the open one), and the lane's other threads must wait for
            # the next wave rather than find nothing to take and quit.
            self._release(claim)

    def _transport(self, plan: JobPlan, spec: HostSpec, claim: Claim) -> HostTransport:
        """What runs the unit: the host's transport, or the worker's own runner for an
        action the worker runs itself (install_agent)."""
        owner = lock_owner(self.job_id, spec.host_id, claim.attempt)
        runner = self.runners.get(plan.action)
        if runner is not None:
            return runner(spec, _ssh_pool(), settings=self.settings, seal=self.box.seal,
                          lock_owner=owner)
        return self.transports(spec, _ssh_pool(), lock_owner=owner)

    # -- leases -----------------------------------------------------------------------------
    def _hold(self, claim: Claim, plan: JobPlan, transport: HostTransport | None) -> None:
        """Keep the unit's lease alive while it runs, up to its time box and a margin."""
        until = time.monotonic() + plan.timeout_s + ledger.LEASE_MARGIN_S
        with self._held_lock:
            self._held[claim.unit_id] = (claim.attempt, until, transport)

    def _release(self, claim: Claim) -> None:
        with self._held_lock:
            self._held.pop(claim.unit_id, None)

    def _running_here(self) -> bool:
        """Whether this lane runs a unit now."""
        with self._held_lock:
            return bool(self._held)

    def renew(self) -> None:
        """Renew the leases of the units running now; cut the ones another attempt took."""
        now = time.monotonic()
        with self._held_lock:
            due = {unit: (attempt, transport)
                   for unit, (attempt, until, transport) in self._held.items() if until > now}
        if not due:
            return
        with self.db.transaction() as session:
            kept = ledger.renew_leases(session, self.job_id,
                                       [(unit, attempt) for unit, (attempt, _) in due.items()],
                                       self.settings.lease_s)
        for unit, (attempt, transport) in due.items():
            if unit not in kept and transport is not None:
                log.warning("job %s unit %s: attempt %s was taken over; cutting it",
                            self.job_id, unit, attempt, extra={"job_id": self.job_id})
                transport.cut()

    def _keep_leases(self, stop: threading.Event) -> None:
        while not stop.wait(self.settings.lease_s / 3):
            try:
                self.renew()
            except Exception:
                # A database hiccup: the next tick tries again (the lease outlives two).
                log.exception("job %s lane %s: renewing leases failed", self.job_id,
                              self.lane, extra={"job_id": self.job_id})

    def record(self, plan: JobPlan, claim: Claim, *, status: str, error: str | None,
               result: OperationResult | None, mta_kind: str | None = None,
               switch: AgentSwitch | None = None) -> None:
        """Store a unit's outcome and what it taught us about the host (one transaction);
        ``mta_kind``: the kind the transport drove the host as, when it knows;
        ``switch``: what the run changed in the host's record (install_agent's), written
        with the outcome or not at all."""
        # (data and steps made plain JSON in one pass)
        plain = _jsonable({"d": result.data, "s": [s.to_dict() for s in result.steps]}
                          ) if result else None
        outcome = Outcome(
            UnitState(status), error=_text(error),
            changed=result.changed if result else None,
            data=plain["d"] if plain else None, steps=plain["s"] if plain else None)
        host_state = learned(self.job_id, {"action": plan.action, "options": plan.options},
                             status=status, error=error, result=result, mta_kind=mta_kind)
        with self.db.transaction() as session:
            stored = ledger.record(session, claim, outcome, host_state, switch=switch)
            if stored:
                # what the unit taught about the host may put it in or out of line (a
                # savepoint: a failure there never loses the unit's result)
                policy.refresh_drift_after(session, plan.action, claim.host_id)
        if not stored:
            log.warning("job %s unit %s: attempt %s was overtaken; result dropped",
                        self.job_id, claim.unit_id, claim.attempt,
                        extra={"job_id": self.job_id, "host": claim.host_id})
            return
        log.info("job %s host %s: %s%s", self.job_id, claim.host_id, status,
                 f" ({error})" if error else "",
                 extra={"job_id": self.job_id, "host": claim.host_id, "status": str(status)})

    def run(self) -> None:
        """Work until the budget is spent or nothing is left; then hand over or finish."""
        plan = self.load()
        if plan is None:
            return
        concurrency = plan.options["concurrency"]
        threads = max(1, min(self.width, concurrency - self.lane * self.width,
                             plan.total))
        deadline = time.monotonic() + self.settings.lane_budget_s
        took: list[int] = []  # units claimed in this run
        refused: list[bool] = []  # a claim found nothing to take now

        def work(claimed: Claim) -> None:
            took.append(claimed.unit_id)
            # held from the claim on, so that the lane's other threads wait for the wave
            # it belongs to (the transport is noted when it is made)
            self._hold(claimed, plan, None)
            try:
                self.run_unit(plan, claimed)
            finally:
                # (a run that broke must not keep its lease renewed, nor the other
                # threads waiting for its wave)
                self._release(claimed)

        def loop(first: Claim | None) -> None:
            try:
                if first is not None:
                    work(first)
            except Exception:
                log.exception("job %s lane %s: a thread stopped", self.job_id, self.lane,
                              extra={"job_id": self.job_id})
                return
            while time.monotonic() < deadline:
                if refused and not plan.waves:
                    # A sibling found nothing to take: the job has no free unit now (or
                    # its tenant is at its share). Asking again would cost each thread a
                    # transaction that finds nothing too; hand_over queues the
                    # continuation that takes what frees up later.
                    return
                try:
                    claimed = self.claim(plan)
                    if claimed is None and plan.waves and self._running_here():
                        # the open wave still runs in this lane: its end opens the next
                        # one, which this thread then works on (concurrency kept)
                        time.sleep(WAVE_WAIT_S)
                        continue
                    if claimed is None:
                        refused.append(True)
                        return
                    work(claimed)
                except Exception:
                    # The database hiccupped: this thread stops; the lease brings the unit
                    # back, and hand_over still runs for the lane.
                    log.exception("job %s lane %s: a thread stopped", self.job_id, self.lane,
                                  extra={"job_id": self.job_id})
                    return

        firsts: list[Claim | None] = []
        try:
            for claimed in (self.claim_start(plan, threads)
                            if time.monotonic() < deadline else []):
                self._hold(claimed, plan, None)  # (renewed from now on)
                firsts.append(claimed)
        except Exception:
            # The database hiccupped (its transaction took nothing): the threads claim
            # one by one, as they would after their first unit
            log.exception("job %s lane %s: the first claims failed", self.job_id, self.lane,
                          extra={"job_id": self.job_id})
        firsts += [None] * (threads - len(firsts))
        stop = threading.Event()
        keeper = threading.Thread(target=self._keep_leases, args=(stop,), daemon=True,
                                  name=f"lease-keeper-{self.job_id}-{self.lane}")
        keeper.start()
        try:
            with ThreadPoolExecutor(max_workers=threads) as pool:
                for future in [pool.submit(loop, first) for first in firsts]:
                    future.result()
        finally:
            stop.set()
            keeper.join()
        self.hand_over(idle=bool(refused) and not took, waves=plan.waves)

    def hand_over(self, idle: bool = False, waves: bool = False) -> None:
        """Continue (work left), look again later (others still running, or this run could
        claim nothing: its tenant is at its share, or the open wave of a job rolled out in
        waves runs in another lane), or finish."""
        with self.db.transaction() as session:
            progress = ledger.heartbeat(session, self.job_id)
        if progress is None:
            return
        if progress.tally[UnitState.PENDING] and progress.state in ledger.ACTIVE_JOB_STATES:
            countdown: float | None = None
            if idle and waves and progress.earliest_lease is not None:
                # The open wave runs elsewhere; the lane running it goes on to the next
                # wave itself. Look again when its first lease would lapse (a dead
                # worker's unit is then free), not every SHARE_WAIT_S through the broker.
                countdown = self._until_lease(progress)
            elif idle:
                # A run that took nothing though hosts wait (its tenant is at its share)
                # looks again a moment later: no busy loop through the broker.
                countdown = SHARE_WAIT_S
            self.send(dispatch.RUN_LANE, self.job_id, self.lane, self.width,
                      countdown=countdown)
        elif progress.tally[UnitState.RUNNING]:
            # Another lane is still on it, or a dead worker's lease has to run out first.
            self.send(dispatch.RUN_LANE, self.job_id, self.lane, self.width,
                      countdown=self._until_lease(progress))
        else:
            finish_job(self.db, self.job_id)

    def _until_lease(self, progress: ledger.Progress) -> float:
        """Seconds until just after the job's first running unit's lease ends (at least
        one, at most half the broker's visibility timeout)."""
        wait = (progress.earliest_lease or time.time()) - time.time() + 1
        return min(max(1.0, wait), self.settings.visibility_timeout_s / 2)


def finish_job(database: Database, job_id: int) -> None:
    """End a job whose hosts are all done, once; its callback is queued after that."""
    final = ledger.finish_job(database, job_id)
    if final is not None:
        log.info("job %s finished: %s", job_id, final.value,
                 extra={"job_id": job_id, "status": final.value})


def lock_owner(job_id: int, host_id: int, attempt: int) -> str:
    """The name one attempt holds a host's change lock under (a later attempt of the same
    job and host may take over what an earlier one left)."""
    return f"relayfleet-job-{job_id}-host-{host_id}-attempt-{attempt}"


def sweep(database: Database, settings: Settings) -> list[int]:
    """Jobs no live lane works on, each now due a lane: a unit whose worker died (its
    lease lapsed), a running job silent for a lane's budget and two leases, a queued job
    never started within the broker's visibility timeout (the API died between storing it
    and queueing it, or a message was lost). Expired Idempotency-Keys go too."""
    now = time.time()
    with database.transaction() as session:
        stale = ledger.jobs_needing_lanes(
            session, silent_since=now - settings.lane_budget_s - 2 * settings.lease_s,
            never_started_since=now - settings.visibility_timeout_s
            - 2 * settings.lane_budget_s, lease_s=settings.lease_s)
        purged = purge_expired(session)
    if purged:
        log.info("forgot %s expired idempotency keys", purged)
    return stale


def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    """Plain JSON without NUL characters (PostgreSQL text cannot hold them)."""
    text = json.dumps(data, default=str)
    result: dict[str, Any] = json.loads(text)
    # (a NUL can only be there escaped: the walk is for the rare answer that has one)
    return _without_nul(result) if "\\u0000" in text else result


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
