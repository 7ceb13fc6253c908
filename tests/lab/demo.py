"""The seed story on lab hosts, through relayfleet's operations, printed as it happens.

``python -m tests.lab.demo [--keep]``: builds a Debian-layout and a CentOS-style lab host,
sends a voicemail from each (deferred: the MX refuses), sets the smarthost on both
(non-25 port, no MX lookup), flushes the queues and shows what reached the smarthost.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from tests.lab.lab import SINK_PORT, Lab, LabHost

SMARTHOST = {"host": "smarthost.lab.test", "port": SINK_PORT, "mx": False}


def say(text: str) -> None:
    """Print one line of the story."""
    print(text, flush=True)


def table(rows: list[list[str]], header: list[str]) -> None:
    """Print rows as an aligned table."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, ["-" * w for w in widths], *rows]:
        say("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))


def story(lab: Lab) -> int:
    """Run the seed story; return a process exit code."""
    hosts: list[LabHost] = [lab.add_host("pbx-debian", "debian"),
                            lab.add_host("pbx-centos", "centos")]
    say(f"lab: {len(hosts)} hosts on 10.{lab.net}.0.0/24, smarthost sink at "
        f"{lab.smarthost.address}:{SINK_PORT}\n")
    for host in hosts:
        host.send_mail(["me@ourtest.com"], subject=f"voicemail from {host.name}")
    for host in hosts:
        host.wait_deferred()
    rows = []
    for host in hosts:
        _, queue = host.ops("queue")
        for msg in queue["data"]["messages"]:
            rows.append([host.name, msg["id"], ",".join(msg["recipients"]), msg["reason"] or ""])
    say("1. voicemail is stuck in the queues:")
    table(rows, ["host", "queue id", "recipients", "reason"])
    say("")
    say(f"2. set smarthost {SMARTHOST} on every host:")
    rows = []
    failures = 0
    for host in hosts:
        start = time.monotonic()
        code, result = host.ops("set-smarthost", body=SMARTHOST)
        failures += code != 0
        rows.append([host.name, "ok" if result.get("ok") else f"FAILED: {result.get('error')}",
                     str(result.get("changed")), " > ".join(s["name"] for s in result["steps"]),
                     f"{time.monotonic() - start:.1f}s"])
    table(rows, ["host", "result", "changed", "steps", "took"])
    say("")
    say("3. flush the queues (sendmail -OTimeout.hoststatus=0m -q -v):")
    rows = []
    for host in hosts:
        code, result = host.ops("flush")
        failures += code != 0
        data = result.get("data", {})
        rows.append([host.name, str(data.get("before")), str(data.get("after"))])
    table(rows, ["host", "queued before", "queued after"])
    say("")
    deadline = time.monotonic() + 30
    while len(lab.smarthost.messages()) < len(hosts) and time.monotonic() < deadline:
        time.sleep(0.2)
    say("4. what the smarthost received:")
    table([[m["peer"], m["mail_from"], ",".join(m["rcpts"]),
            next((ln[9:] for ln in m["data"].splitlines() if ln.startswith("Subject: ")), "")]
           for m in lab.smarthost.messages()], ["from host", "sender", "recipients", "subject"])
    delivered = len(lab.smarthost.messages()) >= len(hosts)
    say("")
    say("done: every voicemail delivered" if delivered and not failures
        else "done, with problems (see above)")
    return 0 if delivered and not failures else 1


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, help="where the lab keeps its files")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="relayfleet-lab-"))
    with Lab(workdir) as lab:
        raise SystemExit(story(lab))


if __name__ == "__main__":
    main()
