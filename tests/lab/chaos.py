"""Chaos drivers: break real parts in the middle of real jobs and record what happened.

Shared by the chaos tests (which assert) and ``tests/benchmarks/chaos.py`` (which prints).
Nothing here is a fake: lab hosts run Debian's sendmail and the relayfleet agent, the
controller runs a real Celery worker and beat on a real Redis and PostgreSQL.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import secrets
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.hostlock import OWNERLESS_GRACE_S
from tests.controller_client import Controller
from tests.lab.lab import SINK_PORT, Lab, LabHost
from tests.lab.services import ControllerWorker

ACTIVE_DEFINE = re.compile(r"^define\(`SMART_HOST'", re.MULTILINE)
#: a short lease and a fast sweep, so that many kills fit in a few minutes
FAST_RECOVERY_ENV = {"RELAYFLEET_LEASE_S": "4", "RELAYFLEET_SWEEP_EVERY_S": "1",
                     "RELAYFLEET_LANE_BUDGET_S": "5", "RELAYFLEET_VISIBILITY_TIMEOUT_S": "120"}


@dataclass
class KillReport:
    """What repeated worker kills did to a series of set_smarthost jobs."""

    kills: int = 0
    jobs: int = 0
    hosts: int = 0
    jobs_lost: int = 0
    changed_twice: int = 0
    torn_configs: int = 0
    #: seconds from each kill (worker restarted at once) to the next host finishing
    recoveries_s: list[float] = field(default_factory=list)
    timeout_s: int = 0

    def lines(self) -> list[str]:
        """The figures, one per line."""
        rec = self.recoveries_s or [0.0]
        return [f"worker SIGKILLs survived: {self.kills} (jobs: {self.jobs}, hosts each: "
                f"{self.hosts})",
                f"jobs lost: {self.jobs_lost}",
                f"hosts changed twice: {self.changed_twice}",
                f"torn configs: {self.torn_configs}",
                f"recovery after a kill: median {statistics.median(rec):.1f} s, max "
                f"{max(rec):.1f} s (target <= 2 x timeout_s = {2 * self.timeout_s} s)"]


def agent_hosts(lab: Lab, controller: Controller, count: int, prefix: str = "k") -> list[
        tuple[LabHost, int]]:
    """``count`` Debian lab hosts with an agent, enrolled in one site: (host, host id)."""
    site = controller.site(controller.tenant(f"Chaos {prefix}"), "Lab")
    made = []
    for index in range(count):
        host = lab.add_host(f"{prefix}{index}", "debian")
        token = secrets.token_urlsafe(24)
        url = host.start_agent(token, tls=True)  # https, its certificate pinned below
        body: dict[str, Any] = {
            "name": host.fqdn, "site_id": site, "address": host.address,
            "transport": "agent", "tags": [f"chaos-{prefix}"],
            "agent": {"url": url, "token": token,
                      "tls_fingerprint": host.agent_fingerprint}}
        made.append((host, int(controller.ok("POST", "/v1/hosts", body)["id"])))
    return made


def _backups(host: LabHost) -> set[str]:
    root = host.mail_dir / ".relayfleet-backup"
    return {p.name for p in root.iterdir()} if root.exists() else set()


def _succeeded(controller: Controller, job: int) -> tuple[int, bool]:
    doc = controller.ok("GET", f"/v1/jobs/{job}?results=false")
    return doc["counts"]["succeeded"], doc["finished_at"] is not None


def kill_workers_during_changes(controller: Controller, worker: ControllerWorker,
                                hosts: list[tuple[LabHost, int]], smarthosts: list[str], *,
                                kills: int, timeout_s: int = 20, concurrency: int = 4,
                                seed: int = 1, job_deadline_s: float = 600) -> KillReport:
    """Run set_smarthost jobs over ``hosts`` (alternating ``smarthosts``) while SIGKILLing
    the worker's whole process group at random points and restarting it at once, until
    ``kills`` kills; check every job and every host afterwards."""
    rng = random.Random(seed)
    report = KillReport(hosts=len(hosts), timeout_s=timeout_s)
    while report.kills < kills:
        wanted = smarthosts[report.jobs % len(smarthosts)]
        before = {host_id: _backups(host) for host, host_id in hosts}
        job = controller.start_job({
            "action": "set_smarthost", "target": {"hosts": [h for _, h in hosts]},
            "params": {"host": wanted, "port": SINK_PORT},
            "options": {"concurrency": concurrency, "timeout_s": timeout_s}})
        report.jobs += 1
        deadline = time.monotonic() + job_deadline_s
        finished = False
        while time.monotonic() < deadline:
            done, finished = _succeeded(controller, job)
            if finished:
                break
            if report.kills < kills:
                time.sleep(rng.uniform(0.2, 2.5))
                worker.kill()
                report.kills += 1
                killed_at = time.monotonic()
                worker.start()
                # How long until the job moves again (a host finishes, or it ends).
                while time.monotonic() < deadline:
                    now_done, finished = _succeeded(controller, job)
                    if now_done > done or finished:
                        report.recoveries_s.append(time.monotonic() - killed_at)
                        break
                    time.sleep(0.1)
            else:
                time.sleep(0.2)
        if not finished:
            report.jobs_lost += 1
            continue
        doc = controller.ok("GET", f"/v1/jobs/{job}")
        if doc["status"] != "succeeded":
            report.jobs_lost += 1
        for host, host_id in hosts:
            mc = (host.mail_dir / "sendmail.mc").read_text()
            cf = (host.mail_dir / "sendmail.cf").read_text()
            ds_lines = [line for line in cf.splitlines() if line.startswith("DS")]
            # Torn: not exactly one smarthost in the mc, or a cf that is not the whole
            # compiled file for it (its DS line names another host, or it is cut short).
            if len(ACTIVE_DEFINE.findall(mc)) != 1 or wanted not in mc or \
                    len(ds_lines) != 1 or wanted not in ds_lines[0] or \
                    "\nMrelay," not in cf:
                report.torn_configs += 1
            # A change applied twice would have backed up the already-new sendmail.mc.
            for name in _backups(host) - before[host_id]:
                saved = host.mail_dir / ".relayfleet-backup" / name / "sendmail.mc"
                if saved.exists() and wanted in saved.read_text():
                    report.changed_twice += 1
    return report


def start_stack(env: dict[str, str], workdir: Path) -> tuple[ControllerWorker,
                                                              ControllerWorker]:
    """A worker and beat for ``env`` (the controller itself runs in-process)."""
    worker = ControllerWorker(env, workdir / "worker.log").start()
    beat = ControllerWorker(env, workdir / "beat.log", beat=True).start()
    return worker, beat


@dataclass
class RestartReport:
    """What restarting a service (Redis or PostgreSQL) mid-job did to set_smarthost jobs."""

    service: str
    restarts: int = 0
    jobs: int = 0
    hosts: int = 0
    jobs_lost: int = 0
    hosts_failed: int = 0
    changed_twice: int = 0
    torn_configs: int = 0
    #: restarts that came too late to be mid-job (the job had already finished)
    missed: int = 0
    #: seconds the service was down, per restart
    down_s: list[float] = field(default_factory=list)
    #: seconds from the last host finishing before the outage to the next one after it
    stalls_s: list[float] = field(default_factory=list)
    #: seconds from the service being back to the next host finishing (or the job ending)
    resumed_s: list[float] = field(default_factory=list)
    #: seconds from acceptance to finished_at, per job
    job_s: list[float] = field(default_factory=list)
    #: worker/beat exits the driver restarted, as systemd Restart=always would
    supervisor_restarts: list[str] = field(default_factory=list)
    #: API calls that failed while polling (after the service was back)
    api_errors: list[str] = field(default_factory=list)
    #: hosts that needed more than one attempt (a retry that changed nothing is fine)
    retried_hosts: int = 0
    #: hosts whose result said ``changed: false`` (0 expected: every job changes every host)
    unchanged_hosts: int = 0

    def lines(self) -> list[str]:
        """The figures, one per line."""
        def span(values: list[float]) -> str:
            return (f"median {statistics.median(values):.1f} s, max {max(values):.1f} s"
                    if values else "n/a")

        supervised = (f"{len(self.supervisor_restarts)} ("
                      + "; ".join(self.supervisor_restarts) + ")"
                      if self.supervisor_restarts else "0 (Celery reconnected by itself)")
        return [f"{self.service} restarts mid-job: {self.restarts} (jobs: {self.jobs}, hosts "
                f"each: {self.hosts}, restarts that missed the job: {self.missed})",
                f"jobs lost: {self.jobs_lost}",
                f"hosts failed: {self.hosts_failed}",
                f"hosts changed twice: {self.changed_twice}",
                f"torn configs: {self.torn_configs}",
                f"{self.service} down: {span(self.down_s)}",
                f"job stalled (last host before the outage -> next after): "
                f"{span(self.stalls_s)}",
                f"job moving again after {self.service} was back: {span(self.resumed_s)}",
                f"job duration: {span(self.job_s)}",
                f"hosts retried: {self.retried_hosts}, hosts that reported no change: "
                f"{self.unchanged_hosts}",
                f"worker/beat restarted by the driver as a supervisor would: {supervised}",
                f"API errors while polling: {len(self.api_errors)}"
                + (f" (first: {self.api_errors[0]})" if self.api_errors else "")]


def _check_hosts(hosts: list[tuple[LabHost, int]], before: dict[int, set[str]],
                 wanted: str) -> tuple[int, int]:
    """(torn configs, hosts changed twice) after a job that set ``wanted`` everywhere; the
    same checks as :func:`kill_workers_during_changes`."""
    torn = twice = 0
    for host, host_id in hosts:
        mc = (host.mail_dir / "sendmail.mc").read_text()
        cf = (host.mail_dir / "sendmail.cf").read_text()
        ds_lines = [line for line in cf.splitlines() if line.startswith("DS")]
        if len(ACTIVE_DEFINE.findall(mc)) != 1 or wanted not in mc or \
                len(ds_lines) != 1 or wanted not in ds_lines[0] or "\nMrelay," not in cf:
            torn += 1
        for name in _backups(host) - before[host_id]:
            saved = host.mail_dir / ".relayfleet-backup" / name / "sendmail.mc"
            if saved.exists() and wanted in saved.read_text():
                twice += 1
    return torn, twice


def restart_during_changes(controller: Controller, service: str,
                           restart: Callable[[], float], stack: list[ControllerWorker],
                           hosts: list[tuple[LabHost, int]], smarthosts: list[str], *,
                           jobs: int = 2, concurrency: int = 2, timeout_s: int = 20,
                           restart_after: int = 2,
                           job_deadline_s: float = 300) -> RestartReport:
    """Run ``jobs`` set_smarthost jobs over ``hosts`` (alternating ``smarthosts``); in each,
    once ``restart_after`` hosts are done, call ``restart`` (stops the service, waits,
    starts it on the same port; returns the seconds it was down). Any process of ``stack``
    (worker, beat) found exited is started again, as systemd ``Restart=always`` would, and
    noted. Every job must finish within ``job_deadline_s``; every host is checked after."""
    report = RestartReport(service=service, hosts=len(hosts))
    # Start with a value the hosts do not have yet, so that every job changes every host.
    active = [line for line in (hosts[0][0].mail_dir / "sendmail.mc").read_text().splitlines()
              if ACTIVE_DEFINE.match(line)]
    first = 1 if active and smarthosts[0] in active[0] else 0
    for _ in range(jobs):
        wanted = smarthosts[(first + report.jobs) % len(smarthosts)]
        before = {host_id: _backups(host) for host, host_id in hosts}
        accepted = time.monotonic()
        job = controller.start_job({
            "action": "set_smarthost", "target": {"hosts": [h for _, h in hosts]},
            "params": {"host": wanted, "port": SINK_PORT},
            "options": {"concurrency": concurrency, "timeout_s": timeout_s}})
        report.jobs += 1
        deadline = accepted + job_deadline_s
        done, finished, last_progress = 0, False, accepted
        restarted_at: float | None = None
        while time.monotonic() < deadline:
            for proc in stack:
                if proc.proc is not None and proc.proc.poll() is not None:
                    what = "beat" if proc.beat else "worker"
                    report.supervisor_restarts.append(
                        f"{what} exited rc={proc.proc.returncode} "
                        f"{time.monotonic() - accepted:.1f} s into job {report.jobs}")
                    proc.start()
            try:
                now_done, finished = _succeeded(controller, job)
            except Exception as exc:  # recorded: the figures say what broke
                report.api_errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")
                time.sleep(0.5)
                continue
            now = time.monotonic()
            if now_done > done or finished:
                if restarted_at is not None:
                    report.stalls_s.append(now - last_progress)
                    report.resumed_s.append(now - restarted_at)
                    restarted_at = None
                done, last_progress = now_done, now
            if finished:
                break
            if done >= restart_after and report.restarts < report.jobs:
                report.down_s.append(restart())
                report.restarts += 1
                restarted_at = time.monotonic()
            time.sleep(0.1)
        if report.restarts < report.jobs:
            report.missed += 1
        if not finished:
            report.jobs_lost += 1
            continue
        doc = controller.ok("GET", f"/v1/jobs/{job}")
        report.job_s.append(time.monotonic() - accepted)
        if doc["status"] != "succeeded":
            report.jobs_lost += 1
        for result in doc["results"]:
            report.hosts_failed += result["status"] != "succeeded"
            report.retried_hosts += result["attempts"] > 1
            report.unchanged_hosts += result["changed"] is False
        torn, twice = _check_hosts(hosts, before, wanted)
        report.torn_configs += torn
        report.changed_twice += twice
    return report


# -- the agent SIGKILLed mid-change ---------------------------------------------------------

@dataclass
class AgentKillReport:
    """What repeated agent kills in the middle of ``PUT /v1/smarthost`` did to one host."""

    #: kills that landed while a change was unanswered (the ones that count)
    kills: int = 0
    #: kills that came after the change had already answered (not counted above)
    late_kills: int = 0
    #: after a kill: sendmail.cf was still the one from before the change / the new one
    kept_old: int = 0
    got_new: int = 0
    torn_configs: int = 0
    #: GET /v1/smarthost or /v1/status not 200, or naming another smarthost than the cf
    #: while saying ``config_in_sync: true``
    lies: int = 0
    #: answers naming another smarthost than the cf (sendmail.mc's: killed between the mc
    #: and the cf renames) but saying ``config_in_sync: false``
    named_mc_not_cf: int = 0
    #: 409s within OWNERLESS_GRACE_S of a kill that left a lock naming nobody (expected)
    refused_within_grace: int = 0
    #: a change refused with 409 "another configuration change is running" after a kill
    refused_after_kill: int = 0
    #: other unexpected answers to a change (status and first words), for the report
    odd_answers: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        """The figures, one per line."""
        return [f"agent SIGKILLs mid-change survived: {self.kills} (plus {self.late_kills} "
                f"that came after the change answered; {self.seconds:.0f} s)",
                f"sendmail.cf after a kill: old {self.kept_old}, new {self.got_new}, torn "
                f"{self.torn_configs}",
                f"answers that lied (GET /v1/smarthost, /v1/status): {self.lies}",
                f"answers naming sendmail.mc's smarthost, not the cf's, with config_in_sync "
                f"false: {self.named_mc_not_cf}",
                f"changes refused with 409 after a kill: {self.refused_after_kill} (within "
                f"the {OWNERLESS_GRACE_S} s grace of a lock naming nobody: "
                f"{self.refused_within_grace})",
                f"other odd answers: {len(self.odd_answers)}"]


def _stamp_free(cf: bytes) -> bytes:
    """sendmail.cf without m4's "##### built by USER@HOST on DATE" line."""
    return b"\n".join(line for line in cf.split(b"\n") if not line.startswith(b"##### built by"))


def kill_agent_during_changes(host: LabHost, token: str, url: str, smarthosts: list[str], *,
                              kills: int, seed: int = 1, max_delay_s: float | None = None,
                              max_rounds: int | None = None) -> AgentKillReport:
    """SIGKILL ``host``'s TLS agent (its process group) at a random point (0 to
    ``max_delay_s`` seconds; by default the longest of the whole changes made first, so
    that the kills spread over a change however long it takes on this host) of
    ``PUT /v1/smarthost`` changes alternating between the two ``smarthosts``, restarting
    it at once with the same certificate, until ``kills`` kills landed while a change was
    unanswered. After each kill and restart: sendmail.cf must be
    byte-identical to the cf from before the change or to the complete cf of the new value
    (both recorded from changes that ran whole; m4's build stamp aside), ``GET
    /v1/smarthost`` and ``GET /v1/status`` must answer 200 naming the smarthost that cf
    holds, and the next change must not be refused with 409."""
    import signal
    import threading

    import requests

    rng = random.Random(seed)
    report = AgentKillReport()
    started = time.monotonic()
    cert = (host.root / "agent.crt", host.root / "agent.key")
    verify = str(cert[0])
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    cf_path = host.mail_dir / "sendmail.cf"

    def call(method: str, path: str, body: Any = None) -> requests.Response:
        # verify per request: REQUESTS_CA_BUNDLE in the environment beats session.verify
        return session.request(method, url + path, json=body, timeout=240, verify=verify)

    def change(value: str) -> requests.Response:
        return call("PUT", "/v1/smarthost", {"host": value, "port": SINK_PORT, "mx": False})

    def readings() -> list[tuple[Any, Any]]:
        """(smarthost, config_in_sync) from GET /v1/smarthost and GET /v1/status."""
        said = []
        for path in ("/v1/smarthost", "/v1/status"):
            got = call("GET", path)
            doc = got.json() if got.status_code == 200 else {}
            said.append((doc.get("smarthost", f"HTTP {got.status_code}"),
                         doc.get("config_in_sync")))
        return said

    def judge(where: str, cf_value: str) -> None:
        """Count what the agent says against what sendmail.cf holds."""
        for smarthost, in_sync in readings():
            if smarthost == known_answer[cf_value]:
                continue
            if in_sync is False and not isinstance(smarthost, str):
                report.named_mc_not_cf += 1
                report.details.append(f"{where}: cf holds {cf_value}; the agent named "
                                      f"{smarthost} with config_in_sync false")
            else:
                report.lies += 1
                report.details.append(f"{where}: cf holds {cf_value}; the agent said "
                                      f"{smarthost} (config_in_sync {in_sync})")

    # Each value's whole cf and what the agent says about it, from changes that ran whole.
    known_cf: dict[str, bytes] = {}
    known_answer: dict[str, Any] = {}
    whole_s: list[float] = []
    for value in smarthosts:
        began = time.monotonic()
        answer = change(value)
        whole_s.append(time.monotonic() - began)
        if answer.status_code != 200 or not answer.json().get("ok"):
            raise RuntimeError(f"a change to {value} failed: {answer.status_code} "
                               f"{answer.text[:300]}")
        known_cf[value] = _stamp_free(cf_path.read_bytes())
        said = readings()
        if said[0][0] != said[1][0] or not all(in_sync for _, in_sync in said):
            raise RuntimeError(f"after a whole change to {value} the agent said {said}")
        known_answer[value] = said[0][0]
    if len(set(known_cf.values())) != len(smarthosts):
        raise RuntimeError("the smarthost values compile to the same sendmail.cf")
    if max_delay_s is None:
        max_delay_s = max(whole_s)

    def held_by(cf: bytes) -> str | None:
        stripped = _stamp_free(cf)
        return next((v for v, whole in known_cf.items() if whole == stripped), None)

    held = smarthosts[-1]
    rounds = 0
    last_kill_at = 0.0
    while report.kills < kills and (max_rounds is None or rounds < max_rounds):
        rounds += 1
        wanted = next(v for v in smarthosts if v != held)
        before = cf_path.read_bytes()
        result: dict[str, Any] = {}

        def put(value: str = wanted, out: dict[str, Any] = result) -> None:
            try:
                out["answer"] = change(value)
            except requests.RequestException as exc:
                out["error"] = exc

        thread = threading.Thread(target=put, daemon=True)
        round_began = time.monotonic()
        since_last_kill = round_began - last_kill_at  # (the previous round's kill)
        thread.start()
        time.sleep(rng.uniform(0, max_delay_s))
        answered = "answer" in result
        assert host.agent is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(host.agent.pid, signal.SIGKILL)
        host.agent.wait(timeout=30)
        last_kill_at = time.monotonic()
        thread.join(timeout=60)
        host.agent = None
        host.start_agent(token, tls=cert)
        if answered:
            report.late_kills += 1
        else:
            report.kills += 1
        answer = result.get("answer")
        if answer is not None and answer.status_code == 409 and \
                since_last_kill < OWNERLESS_GRACE_S + 2:
            # The previous kill landed between making the lock and naming its holder: such a
            # lock is taken over once it has named nobody for OWNERLESS_GRACE_S.
            report.refused_within_grace += 1
        elif answer is not None and answer.status_code == 409:
            # This change followed the previous kill: its lock should have been taken over.
            report.refused_after_kill += 1
            report.details.append(f"round {rounds}: 409 {answer.text[:200]}")
        elif answer is not None and (answer.status_code != 200 or not answer.json().get("ok")):
            doc = answer.json() if answer.status_code == 200 else {}
            report.odd_answers.append(f"round {rounds}: {answer.status_code}, ok "
                                      f"{doc.get('ok')}, errors {str(doc.get('errors'))[:300]}")
        cf = cf_path.read_bytes()
        now_held = held_by(cf)
        if cf == before:
            report.kept_old += 1
        elif now_held == wanted:
            report.got_new += 1
        else:
            report.torn_configs += 1
            report.details.append(f"round {rounds}: torn sendmail.cf ({len(cf)} bytes)")
        if now_held is not None:
            judge(f"round {rounds}", now_held)
            held = now_held
    # One last change, not killed: it must go through whole (no lock left behind).
    wanted = next(v for v in smarthosts if v != held)
    answer = change(wanted)
    now_held = held_by(cf_path.read_bytes())
    if answer.status_code == 409:
        report.refused_after_kill += 1
        report.details.append(f"final change: 409 {answer.text[:200]}")
    elif answer.status_code != 200 or not answer.json().get("ok") or now_held != wanted:
        doc = answer.json() if answer.status_code == 200 else {}
        report.odd_answers.append(
            f"final change to {wanted}: {answer.status_code}, ok {doc.get('ok')}, rolled_back "
            f"{doc.get('rolled_back')}, errors {str(doc.get('errors'))[:300]}; cf holds "
            f"{now_held}")
    if now_held is None:
        report.torn_configs += 1
        report.details.append("final change: torn sendmail.cf")
    else:
        judge("final change", now_held)
    report.seconds = time.monotonic() - started
    return report


# -- the API SIGKILLed mid-POST /v1/jobs ----------------------------------------------------

@dataclass
class ApiKillReport:
    """What SIGKILLing ``relayfleet-controller serve`` mid-``POST /v1/jobs`` did."""

    #: kills that landed while a POST was unanswered (the ones that count)
    kills: int = 0
    #: kills that came after the POST had already answered
    late_kills: int = 0
    #: Idempotency-Keys used (each with its own request body)
    keys: int = 0
    #: keys that never got a 202 before the deadline
    unanswered: int = 0
    #: 409 "still being handled" answers waited through, and the longest wait for one key
    conflicts: int = 0
    longest_wait_s: float = 0.0
    #: jobs found (GET /v1/jobs) for each key, by key
    jobs_per_key: dict[str, int] = field(default_factory=dict)
    #: jobs that match no key, and answers other than 202/409
    stray_jobs: int = 0
    odd_answers: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        """The figures, one per line."""
        counts = sorted(set(self.jobs_per_key.values())) or [0]
        return [f"API SIGKILLs mid-POST /v1/jobs survived: {self.kills} (plus "
                f"{self.late_kills} after the answer; {self.seconds:.0f} s)",
                f"Idempotency-Keys: {self.keys}; jobs per key: "
                f"{'/'.join(str(c) for c in counts)} (must be 1 each); keys with != 1 job: "
                f"{sum(1 for c in self.jobs_per_key.values() if c != 1)}; stray jobs: "
                f"{self.stray_jobs}",
                f"keys never answered: {self.unanswered}; 409 'still being handled' waited "
                f"through: {self.conflicts} (longest wait for one key "
                f"{self.longest_wait_s:.0f} s)",
                f"other answers: {len(self.odd_answers)}"]


def serve_api(env: dict[str, str], log: Path, workers: int = 2,
              threads: int = 4) -> tuple[Any, str]:
    """``relayfleet-controller serve`` (gunicorn) in a session of its own on a free
    loopback port: (process, base URL), once ``/v1/health`` answers."""
    import subprocess
    import sys

    import requests

    from tests.lab.services import free_port

    port = free_port()
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "controller.cli", "serve", "--listen",
                                 f"127.0.0.1:{port}", "--workers", str(workers), "--threads",
                                 str(threads)], env={**os.environ, **env}, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the API server exited {proc.returncode} (see {log})")
        try:
            if requests.get(f"{base}/v1/health", timeout=1).status_code == 200:
                return proc, base
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the API server did not start (see {log})")


def kill_api_during_job_posts(env: dict[str, str], workdir: Path, token: str,
                              job: dict[str, Any], *, kills: int, seed: int = 1,
                              answer_deadline_s: float = 400) -> ApiKillReport:
    """SIGKILL the API server's process group at a random point of ``POST /v1/jobs`` (body
    ``job``, each key with its own ``options.concurrency`` so that its jobs can be told
    apart), ``kills`` times, restarting it at once; each key is retried (same key, same
    body) until it answers 202 — a 409 "still being handled" is waited through — and then
    the jobs of each key are counted in ``GET /v1/jobs``."""
    import signal
    import threading

    import requests

    rng = random.Random(seed)
    report = ApiKillReport()
    started = time.monotonic()
    stamp = secrets.token_hex(4)
    headers = {"Authorization": f"Bearer {token}"}
    log = workdir / "api-serve.log"
    proc, base = serve_api(env, log)
    bodies: dict[str, dict[str, Any]] = {}
    answered: dict[str, int] = {}
    first_try: dict[str, float] = {}

    def post(key: str, timeout: float = 120) -> requests.Response:
        return requests.post(f"{base}/v1/jobs", json=bodies[key], timeout=timeout,
                             headers={**headers, "Idempotency-Key": key})

    def new_key() -> str:
        key = f"chaos-{stamp}-{len(bodies)}"
        bodies[key] = {**job, "options": {**job.get("options", {}),
                                          "concurrency": len(bodies) + 1}}
        return key

    def settle(key: str, answer: requests.Response) -> None:
        if answer.status_code == 202:
            answered[key] = int(answer.json()["id"])
            report.longest_wait_s = max(report.longest_wait_s,
                                        time.monotonic() - first_try[key])
        elif answer.status_code == 409:
            report.conflicts += 1
        else:
            report.odd_answers.append(f"{key}: {answer.status_code} {answer.text[:200]}")

    def retry_pending() -> None:
        for key in bodies:
            if key not in answered:
                with contextlib.suppress(requests.RequestException):
                    settle(key, post(key))

    try:
        # How long one POST takes, so that the kills land inside one.
        key = new_key()
        first_try[key] = time.monotonic()
        t0 = time.monotonic()
        settle(key, post(key))
        took = time.monotonic() - t0
        while report.kills < kills:
            key = new_key()
            result: dict[str, Any] = {}

            def send(key: str = key, out: dict[str, Any] = result) -> None:
                try:
                    out["answer"] = post(key)
                except requests.RequestException as exc:
                    out["error"] = exc

            first_try[key] = time.monotonic()
            thread = threading.Thread(target=send, daemon=True)
            thread.start()
            time.sleep(rng.uniform(0, took))
            done = "answer" in result
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            thread.join(timeout=60)
            if done:
                report.late_kills += 1
            else:
                report.kills += 1
            if "answer" in result:
                settle(key, result["answer"])
            proc, base = serve_api(env, log)
            retry_pending()
        deadline = time.monotonic() + answer_deadline_s
        while len(answered) < len(bodies) and time.monotonic() < deadline:
            time.sleep(2)
            retry_pending()
        report.keys = len(bodies)
        report.unanswered = len(bodies) - len(answered)
        by_concurrency = {body["options"]["concurrency"]: key for key, body in bodies.items()}
        report.jobs_per_key = dict.fromkeys(bodies, 0)
        offset = 0
        while True:
            page = requests.get(f"{base}/v1/jobs", params={"limit": 1000, "offset": offset},
                                headers=headers, timeout=60).json()
            for item in page["items"]:
                owner = by_concurrency.get(item["options"].get("concurrency"))
                if owner is None:
                    report.stray_jobs += 1
                else:
                    report.jobs_per_key[owner] += 1
                    if answered.get(owner) not in (None, item["id"]):
                        report.odd_answers.append(f"{owner}: answered job {answered[owner]} "
                                                  f"but job {item['id']} has its body")
            offset += len(page["items"])
            if not page["items"] or offset >= page.get("total", offset):
                break
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(Exception):
            proc.wait(timeout=20)
    report.seconds = time.monotonic() - started
    return report


def import_documentation_hosts(controller: Controller, site: int, count: int,
                               prefix: str = "doc") -> None:
    """``count`` agent hosts in ``site`` via ``POST /v1/hosts/import``, all pointing at a
    documentation address (192.0.2.1): enough to make a job big, never reached."""
    for start in range(0, count, 1000):
        rows = [{"name": f"{prefix}{i:05}", "site_id": site,
                 "address": f"10.{i // 65536}.{i // 256 % 256}.{i % 256}",
                 "transport": "agent",
                 "agent": {"url": "http://192.0.2.1:8587", "token": "t" * 32,
                           "insecure_http": True}}
                for i in range(start, min(count, start + 1000))]
        controller.ok("POST", "/v1/hosts/import", {"hosts": rows}, expect=201)
