"""SSH fan-out: flush and collect-status on N lab hosts, cold and warm, against ansible and
parallel OpenSSH measured in the same run.

``python -m tests.benchmarks.ssh_fleet [--hosts 20 50] [--runs 5]`` (root; builds its own
lab). For each N it times, as median wall time over the runs:

- relayfleet ``queue_flush`` (mailq, ``sendmail -OTimeout.hoststatus=0m -q -v``, mailq) and
  ``status`` over SSH, **cold** (a new connection per host, as on first contact) and **warm**
  (the same hosts again through an :class:`~shared.ssh.SshPool`);
- ``ansible all -m shell`` and ``-m raw`` running ``sendmail -OTimeout.hoststatus=0m -q;
  mailq`` (ansible-core from PyPI in its own virtualenv, forks = N, pipelining and
  ControlPersist on);
- N parallel OpenSSH ``ssh`` clients running the same command (the handshake-bound floor);
- the **floor**: the host-side commands of the flush (mailq, both queue runs, mailq) run
  directly inside every host's namespaces at once, with no transport at all.

It prints every figure and the ratios: warm flush vs the floor, cold flush vs parallel
OpenSSH, ``ansible -m shell`` vs warm (``--no-ansible`` skips ansible). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from shared.mta import FlushRequest, operations_for
from shared.profile import HostProfile, build_profile
from shared.results import OperationResult
from shared.ssh import SshExecutor, SshPool, SshTarget
from tests.lab.fanout import run_per_host
from tests.lab.lab import Lab, LabHost, sh

COMMAND = "sendmail -OTimeout.hoststatus=0m -q; mailq"
ANSIBLE_VENV = Path("/var/tmp/relayfleet-bench-ansible")


def median_time(fn: Callable[[], object], runs: int) -> tuple[float, list[float]]:
    """Median wall time of ``fn`` over ``runs`` calls (and every sample)."""
    samples = []
    for _ in range(runs):
        start = time.monotonic()
        fn()
        samples.append(time.monotonic() - start)
    return statistics.median(samples), samples


def ensure_ansible() -> Path:
    """ansible-core in a virtualenv of its own (installed from PyPI on first use)."""
    ansible = ANSIBLE_VENV / "bin" / "ansible"
    if not ansible.exists():
        subprocess.run([sys.executable, "-m", "venv", str(ANSIBLE_VENV)], check=True)
        subprocess.run([str(ANSIBLE_VENV / "bin" / "pip"), "install", "-q", "ansible-core"],
                       check=True)
    return ansible


def build(lab: Lab, count: int, key_dir: Path) -> tuple[list[LabHost], list[SshTarget]]:
    """``count`` running lab hosts with sshd, a root key authorised on each."""
    key = key_dir / "id_ed25519"
    if not key.exists():
        sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)])
    public = " ".join(Path(f"{key}.pub").read_text().split()[:2])
    hosts, targets = [], []
    known = []
    for i in range(len(lab.hosts), count):
        host = lab.add_host(f"b{i}", "debian")
        host.ssh_host_key = host.start_sshd()
        host.authorize("root", public)
        hosts.append(host)
    for host in lab.hosts[:count]:
        targets.append(SshTarget(host.address, "root", host.ssh_host_key,
                                 private_key=key.read_text(), label=host.name))
        known.append(f"{host.address} {host.ssh_host_key}")
    (key_dir / "known_hosts").write_text("\n".join(known) + "\n")
    return lab.hosts[:count], targets


def relayfleet_run(targets: list[SshTarget], op: str, pool: SshPool | None) -> None:
    """One relayfleet fan-out of ``op`` (flush or status) over every target."""
    profile = build_profile()

    def work(target: SshTarget) -> OperationResult:
        with SshExecutor(target, pool) as ex:
            ops = operations_for(ex, profile)
            return ops.queue_flush(FlushRequest()) if op == "flush" else ops.status()

    bad = [o for o in run_per_host(targets, work, concurrency=len(targets))
           if o.status != "succeeded"]
    if bad:
        raise SystemExit(f"{len(bad)} hosts failed: {bad[0].error}")


def ansible_run(ansible: Path, inventory: Path, key_dir: Path, forks: int, module: str) -> None:
    """``ansible all -m MODULE -a COMMAND`` with pipelining and ControlPersist."""
    env = {**os.environ, "ANSIBLE_PIPELINING": "True", "ANSIBLE_HOST_KEY_CHECKING": "True",
           "ANSIBLE_SSH_ARGS": "-o ControlMaster=auto -o ControlPersist=60s "
                               f"-o UserKnownHostsFile={key_dir / 'known_hosts'}",
           "ANSIBLE_PYTHON_INTERPRETER": "/usr/bin/python3"}
    subprocess.run([str(ansible), "all", "-i", str(inventory), "-u", "root", "--private-key",
                    str(key_dir / "id_ed25519"), "-f", str(forks), "-m", module, "-a", COMMAND],
                   env=env, check=True, capture_output=True)


def parallel_ssh(hosts: list[LabHost], key_dir: Path) -> None:
    """N OpenSSH clients at once, one per host, no connection sharing."""
    procs = [subprocess.Popen(
        ["ssh", "-i", str(key_dir / "id_ed25519"), "-o", "BatchMode=yes",
         "-o", f"UserKnownHostsFile={key_dir / 'known_hosts'}", "-o", "ControlMaster=no",
         f"root@{h.address}", COMMAND],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for h in hosts]
    if any(p.wait() != 0 for p in procs):
        raise SystemExit("an ssh client failed")


def flush_commands(profile: HostProfile) -> list[list[str]]:
    """The host-side commands of ``queue_flush`` with its defaults (the floor runs them)."""
    run = [profile.sendmail, "-OTimeout.hoststatus=0m", "-q", "-v"]
    return [list(profile.mailq), run, [run[0], "-Ac", *run[1:]], list(profile.mailq)]


def floor_run(hosts: list[LabHost]) -> None:
    """The flush's commands inside every host's namespaces at once, one after the other
    per host as the flush runs them, with no transport: what any transport adds to."""
    script = "; ".join(shlex.join(argv) for argv in flush_commands(build_profile()))
    procs = [subprocess.Popen(h.nsenter(["sh", "-c", script]), stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for h in hosts]
    if any(p.wait() != 0 for p in procs):
        raise SystemExit("a flush failed inside a host")


def measure(lab: Lab, count: int, key_dir: Path, ansible: Path | None,
            runs: int) -> dict[str, float]:
    """Every figure for ``count`` hosts (ansible's only when ``ansible`` is given)."""
    hosts, targets = build(lab, count, key_dir)
    figures: dict[str, float] = {}
    for op in ("flush", "status"):
        figures[f"relayfleet {op} cold"], _ = median_time(
            partial(relayfleet_run, targets, op, None), runs)
        pool = SshPool()
        relayfleet_run(targets, op, pool)  # first contact fills the pool
        figures[f"relayfleet {op} warm"], _ = median_time(
            partial(relayfleet_run, targets, op, pool), runs)
        pool.close()
    inventory = key_dir / f"inventory-{count}"
    inventory.write_text("[lab]\n" + "\n".join(h.address for h in hosts) + "\n")
    for module in ("shell", "raw"):
        if ansible is not None:
            figures[f"ansible -m {module}"], _ = median_time(
                partial(ansible_run, ansible, inventory, key_dir, count, module), runs)
    figures["parallel OpenSSH"], _ = median_time(lambda: parallel_ssh(hosts, key_dir), runs)
    figures["floor (no transport)"], _ = median_time(lambda: floor_run(hosts), runs)
    return figures


def main() -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, nargs="+", default=[20, 50])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-ansible", action="store_true",
                        help="skip the ansible figures (no ansible-core install either)")
    args = parser.parse_args()
    ansible = None if args.no_ansible else ensure_ansible()
    with tempfile.TemporaryDirectory(prefix="rf-bench-") as tmp, Lab(Path(tmp) / "lab") as lab:
        for count in sorted(args.hosts):
            figures = measure(lab, count, Path(tmp), ansible, args.runs)
            print(f"\n== {count} hosts, median of {args.runs} runs ==")
            for name, value in figures.items():
                print(f"  {name:<28} {value:7.2f} s")
            warm = figures["relayfleet flush warm"]
            print(f"  warm flush / floor              "
                  f"{warm / figures['floor (no transport)']:5.2f}  (target <= 1.3)")
            print(f"  cold flush / parallel OpenSSH   "
                  f"{figures['relayfleet flush cold'] / figures['parallel OpenSSH']:5.2f}  "
                  "(target <= 1.3)")
            if "ansible -m shell" in figures:
                shell = figures["ansible -m shell"]
                print(f"  ansible -m shell / warm flush   {shell / warm:5.2f}  (target >= 10)")
                print(f"  ansible -m shell / warm status  "
                      f"{shell / figures['relayfleet status warm']:5.2f}")
            print(f"  load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} "
                  f"{os.getloadavg()[2]:.2f} (1, 5, 15 min)", flush=True)


if __name__ == "__main__":
    main()
