"""Chaos drivers: break real parts in the middle of real jobs and record what happened.

Shared by the chaos tests (which assert) and ``tests/benchmarks/chaos.py`` (which prints).
Nothing here is a fake: lab hosts run Debian's sendmail and the relayfleet agent, the
controller runs a real Celery worker and beat on a real Redis and PostgreSQL.
"""

from __future__ import annotations

import random
import re
import secrets
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
