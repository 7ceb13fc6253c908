"""Per-host time of a smarthost change and a queue flush on Postfix against sendmail,
measured in the same run on lab hosts of both kinds.

``python -m tests.benchmarks.postfix_vs_sendmail [--runs 5] [--transport ssh|local]``
(root; builds its own lab: one Debian-layout host of each MTA). Each run queues a
voicemail (deferred: the MX refuses), then times on each host, over SSH (default) or
through ``relayfleet-ops`` inside the host:

- ``set_smarthost`` ([smarthost]:2525) — sendmail: m4, validate, make, restart, verify;
  Postfix: postconf on a staged copy, postfix check, reload, verify;
- ``queue_flush`` — sendmail: ``sendmail -OTimeout.hoststatus=0m -q -v``; Postfix:
  ``postqueue -f`` and waiting for the flushed message's outcome in the maillog;
- ``remove_smarthost`` (to start the next run from direct delivery).

It prints the median of each figure per MTA and the Postfix/sendmail ratio. Nothing is
asserted.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.lab.demo import table
from tests.lab.lab import SINK_PORT, Lab, LabHost, sh

SMARTHOST = {"host": "smarthost.lab.test", "port": SINK_PORT, "mx": False}
STEPS = ("set_smarthost", "queue_flush", "remove_smarthost")


def _runner(host: LabHost, transport: str, key: Path) -> Callable[..., dict[str, Any]]:
    """relayfleet-ops on ``host``: inside it, or over SSH from here (no Python needed there)."""
    if transport == "local":
        def local(command: str, body: Any = None) -> dict[str, Any]:
            code, doc = host.ops(command, body=body)
            if code != 0:
                raise SystemExit(f"{host.name} {command}: {doc}")
            return doc
        return local

    from shared.cli import run as run_ops
    from shared.ssh import SshExecutor, SshTarget

    if host.sshd is None:
        host.ssh_host_key = host.start_sshd()
    host.authorize("root", " ".join(Path(f"{key}.pub").read_text().split()[:2]))
    target = SshTarget(host.address, "root", host.ssh_host_key, private_key=key.read_text(),
                       connect_timeout_s=5, label=host.name)

    def remote(command: str, body: Any = None) -> dict[str, Any]:
        import json

        argv = ["--flavour", host.flavour, "--mta", host.mta, command]
        if body is not None:
            argv += ["--json", json.dumps(body)]
        with SshExecutor(target) as executor:
            code, doc = run_ops(argv, executor=executor)
        if code != 0:
            raise SystemExit(f"{host.name} {command}: {doc}")
        return doc
    return remote


def one_run(host: LabHost, ops: Callable[..., dict[str, Any]]) -> dict[str, float]:
    """Queue a voicemail, then time set, flush and remove on one host."""
    host.send_mail(["me@ourtest.com"], subject=f"benchmark {time.time_ns()}")
    host.wait_deferred()
    times = {}
    for step, command, body in (("set_smarthost", "set-smarthost", SMARTHOST),
                                ("queue_flush", "flush", None),
                                ("remove_smarthost", "remove-smarthost", None)):
        start = time.monotonic()
        ops(command, body)
        times[step] = time.monotonic() - start
    return times


def main() -> None:
    """Build the lab, measure, print."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--transport", choices=("ssh", "local"), default="ssh")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="relayfleet-bench-"))
    key = workdir / "id_ed25519"
    sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)])
    with Lab(workdir / "lab") as lab:
        hosts = {mta: lab.add_host(f"bench{mta[0]}", "debian", mta=mta)
                 for mta in ("sendmail", "postfix")}
        runners = {mta: _runner(host, args.transport, key) for mta, host in hosts.items()}
        samples: dict[str, dict[str, list[float]]] = {m: {s: [] for s in STEPS} for m in hosts}
        for run in range(args.runs):
            for mta, host in hosts.items():  # interleaved: both MTAs see the same machine load
                for step, seconds in one_run(host, runners[mta]).items():
                    samples[mta][step].append(seconds)
            print(f"run {run + 1}/{args.runs} done", flush=True)
    medians = {m: {s: statistics.median(v) for s, v in steps.items()}
               for m, steps in samples.items()}
    print(f"\nper-host time over {args.transport}, median of {args.runs} runs (seconds):")
    table([[step, f"{medians['sendmail'][step]:.2f}", f"{medians['postfix'][step]:.2f}",
            f"{medians['postfix'][step] / medians['sendmail'][step]:.2f}"] for step in STEPS],
          ["step", "sendmail", "postfix", "postfix/sendmail"])


if __name__ == "__main__":
    main()
