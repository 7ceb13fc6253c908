"""install_agent: the bundle's size, and how long installing it over SSH takes per host.

``python -m tests.benchmarks.agent_install [--hosts 10]`` (root; builds its own lab, Redis
and controller on SQLite). N sendmail lab hosts (Debian and CentOS layouts alternating),
enrolled over SSH as the non-root sudo login, are converted by **one** install_agent job
running them all in parallel (concurrency N) with a real worker. It prints the bundle's
size and build time (dependency wheels from the lab's cache), every host's install time
(its unit's started_at to finished_at: upload, install.sh, the worker's health and status
checks), their median, and the job's wall time from ``POST /v1/jobs`` to its final state.
Nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from controller.agent_bundle import build_bundle
from tests.lab.agent_install import WHEEL_CACHE, host_python, serve_bundles, stop_daemon
from tests.lab.enrol import SshLogin, host_body
from tests.lab.lab import Lab
from tests.lab.services import RedisServer, lab_controller

VERSION = "0.9.0"


def client_key(directory: Path) -> tuple[str, str]:
    """A fresh ed25519 client key: (private key text, public key line)."""
    path = directory / "client"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
                   check=True)
    return path.read_text(), " ".join(Path(f"{path}.pub").read_text().split()[:2])


def seconds(start: str, end: str) -> float:
    """The time between two of the API's timestamps."""
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def run(hosts_wanted: int) -> None:
    """Build the lab and the bundle, convert every host with one job, print the figures."""
    with tempfile.TemporaryDirectory(prefix="relayfleet-bench-install-") as scratch:
        workdir = Path(scratch)
        redis = RedisServer(workdir / "redis").start()
        try:
            with Lab(workdir / "lab") as lab:
                user, _password = lab.ensure_ssh_user()
                private, public = client_key(workdir)
                (workdir / "controller").mkdir()
                with lab_controller(lab, redis, workdir / "controller", 0) as (stack, made):
                    try:
                        controller = stack.controller
                        site = controller.site(controller.tenant("Bench"), "bench")
                        ids = []
                        for index in range(hosts_wanted):
                            host = lab.add_host(f"inst{index}", "debian" if index % 2 == 0
                                                else "centos")
                            made.append(host)
                            body = host_body(host, "ssh", login=SshLogin(user, private, public,
                                                                         sudo=True))
                            ids.append(controller.ok("POST", "/v1/hosts",
                                                     {**body, "site_id": site})["id"])
                        start = time.monotonic()
                        bundle = build_bundle(workdir / "bundles", version=VERSION,
                                              pythons=(host_python(made[0]),),
                                              cache_dir=WHEEL_CACHE)
                        built = time.monotonic() - start
                        serve_bundles(stack, workdir / "bundles")
                        start = time.monotonic()
                        job = controller.wait_job(controller.start_job(
                            {"action": "install_agent", "target": {"hosts": ids},
                             "options": {"concurrency": hosts_wanted, "timeout_s": 600}}),
                            timeout=900)
                        wall = time.monotonic() - start
                        report(job, bundle.size, built, wall)
                    finally:
                        for host in made:
                            stop_daemon(host)
        finally:
            redis.stop()


def report(job: dict[str, Any], size: int, built: float, wall: float) -> None:
    """Print the bundle's figures, each host's install time, their median and the job's."""
    print(f"bundle: {size / 1e6:.2f} MB ({size} bytes), built in {built:.1f} s "
          "(dependency wheels cached)")
    durations = []
    for result in job["results"]:
        took = seconds(result["started_at"], result["finished_at"])
        durations.append(took)
        print(f"  {result['host']:<24} {result['status']:<10} {took:6.1f} s"
              + (f"  {result['error']}" if result["error"] else ""))
    print(f"job {job['id']}: {job['status']}, {job['counts']['succeeded']}/"
          f"{job['counts']['total']} hosts")
    print(f"per-host install time: median {statistics.median(durations):.1f} s "
          f"(min {min(durations):.1f}, max {max(durations):.1f}) over {len(durations)} hosts")
    print(f"job wall time (POST to final state): {wall:.1f} s")


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=10, help="lab hosts (default 10)")
    run(parser.parse_args().hosts)


if __name__ == "__main__":
    main()
