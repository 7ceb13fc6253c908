"""The seed story across a small fleet, through a running controller's REST API.

``python -m tests.lab.fleet_demo --api URL --token TOKEN`` (root): builds a mixed fleet of
six lab hosts (sendmail and Postfix, agent and SSH, Debian and CentOS/RHEL layouts; the
Postfix ones enrolled with ``kind = "auto"``), queues a voicemail on each (deferred: the MX
refuses), enrols them, runs ``set_smarthost`` and ``flush_queue`` jobs on them, and prints
each job's per-host results, the fleet view (with each host's MTA) and what reached the
smarthost.
"""

from __future__ import annotations

import argparse
import secrets
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from tests.lab.demo import SMARTHOST, say, table
from tests.lab.enrol import SshLogin, host_body
from tests.lab.lab import Lab, LabHost


class Api:
    """A small client for the controller's API."""

    def __init__(self, base: str, token: str) -> None:
        self.base = base.rstrip("/")
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"

    def call(self, method: str, path: str, body: Any = None, **headers: str) -> Any:
        """One call; a 4xx/5xx stops the demo with the controller's message."""
        answer = self.session.request(method, self.base + path, json=body, headers=headers,
                                      timeout=60)
        if answer.status_code >= 400:
            raise SystemExit(f"{method} {path}: {answer.status_code} {answer.text[:500]}")
        return answer.json()

    def run_job(self, body: dict[str, Any]) -> dict[str, Any]:
        """Start a job and follow it to the end, printing its progress."""
        job = self.call("POST", "/v1/jobs", body, **{"Idempotency-Key": secrets.token_hex(8)})
        while True:
            doc: dict[str, Any] = self.call("GET", f"/v1/jobs/{job['id']}")
            counts = doc["counts"]
            done = counts["total"] - counts["pending"] - counts["running"]
            print(f"\r  job {doc['id']} {doc['action']}: {done}/{counts['total']} hosts done "
                  f"[{'#' * done}{'.' * (counts['total'] - done)}] {doc['status']}   ",
                  end="", flush=True)
            if doc["finished_at"]:
                print()
                return doc
            time.sleep(0.5)


#: (name, layout, transport, MTA) of the demo's hosts
FLEET = (("pbx-leeds", "debian", "agent", "sendmail"), ("pbx-york", "centos", "agent", "sendmail"),
         ("mail-paris", "debian", "ssh", "sendmail"), ("pbx-lyon", "centos", "ssh", "sendmail"),
         ("freepbx-bath", "debian", "agent", "postfix"),
         ("freepbx-nice", "centos", "ssh", "postfix"))


def ssh_login() -> SshLogin:
    """A fresh key pair for root logins to the demo's SSH hosts."""
    key = Path(tempfile.mkdtemp()) / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return SshLogin("root", key.read_text(), " ".join(Path(f"{key}.pub").read_text().split()[:2]))


def build(lab: Lab) -> list[tuple[LabHost, dict[str, Any]]]:
    """The demo's lab hosts and the POST /v1/hosts body for each."""
    login = ssh_login()
    hosts = []
    for name, layout, transport, mta in FLEET:
        host = lab.add_host(name, layout, mta=mta)
        kind = "auto" if mta == "postfix" else mta
        hosts.append((host, host_body(host, transport, kind=kind, login=login)))
    return hosts


def story(lab: Lab, api: Api) -> int:
    """Run the story; return a process exit code."""
    hosts = build(lab)
    for host, _ in hosts:
        host.send_mail(["me@ourtest.com"], subject=f"voicemail from {host.name}")
    for host, _ in hosts:
        host.wait_deferred()
    say(f"1. voicemail deferred on {len(hosts)} hosts (the MX of ourtest.com refuses)")
    acme = api.call("POST", "/v1/tenants", {"name": f"Acme {secrets.token_hex(2)}"})
    globex = api.call("POST", "/v1/tenants", {"name": f"Globex {secrets.token_hex(2)}"})
    sites = {"UK": api.call("POST", "/v1/sites", {"tenant_id": acme["id"], "name": "UK"}),
             "France": api.call("POST", "/v1/sites", {"tenant_id": globex["id"],
                                                      "name": "France"})}
    ids = []
    for host, body in hosts:
        site = sites["France" if host.name.endswith(("paris", "lyon", "nice")) else "UK"]
        ids.append(api.call("POST", "/v1/hosts", {**body, "site_id": site["id"]})["id"])
    say(f"2. enrolled {len(hosts)} hosts in 2 tenants: sendmail and Postfix (kind auto), "
        "agent and SSH\n")
    say(f"3. set_smarthost {SMARTHOST} on every host:")
    target = {"hosts": ids}
    doc = api.run_job({"action": "set_smarthost", "target": target, "params": SMARTHOST})
    table([[r["host"], r["status"], str(r["changed"]),
            " > ".join(s["name"] for s in r["steps"] or []), r["error"] or ""]
           for r in doc["results"]], ["host", "status", "changed", "steps", "error"])
    say("\n4. flush_queue on every host (sendmail -OTimeout.hoststatus=0m -q -v; "
        "postqueue -f):")
    doc = api.run_job({"action": "flush_queue", "target": target})
    table([[r["host"], r["status"], str((r["data"] or {}).get("before")),
            str((r["data"] or {}).get("after"))] for r in doc["results"]],
          ["host", "status", "queued before", "queued after"])
    deadline = time.monotonic() + 30
    while len(lab.smarthost.messages()) < len(hosts) and time.monotonic() < deadline:
        time.sleep(0.3)
    say("\n5. GET /v1/fleet:")
    fleet = api.call("GET", "/v1/fleet")
    table([[i["name"], i["transport"], f"{i['mta_kind']} -> {i['last']['mta_kind'] or '?'}",
            str(i["last"]["queue_count"]), (i["last"]["smarthost"] or {}).get("host", "-"),
            str(i["last"]["reachable"])]
           for i in fleet["items"] if i["host_id"] in ids],
          ["host", "transport", "mta (enrolled -> found)", "queued", "smarthost", "reachable"])
    say(f"\n6. the smarthost received {len(lab.smarthost.messages())} message(s):")
    table([[m["peer"], ",".join(m["rcpts"]),
            next((ln[9:] for ln in m["data"].splitlines() if ln.startswith("Subject: ")), "")]
           for m in lab.smarthost.messages()], ["from", "recipients", "subject"])
    ok = len(lab.smarthost.messages()) >= len(hosts) and doc["status"] == "succeeded"
    say("\ndone: every voicemail delivered" if ok else "\ndone, with problems (see above)")
    return 0 if ok else 1


def run_demo(description: str | None, story_of: Callable[[Lab, Api], int]) -> None:
    """A demo's command line: ``--api URL --token TOKEN``; run ``story_of`` in a fresh lab."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--api", default="http://127.0.0.1:8080")
    parser.add_argument("--token", required=True)
    args = parser.parse_args()
    with Lab(Path(tempfile.mkdtemp(prefix="relayfleet-lab-"))) as lab:
        raise SystemExit(story_of(lab, Api(args.api, args.token)))


def main() -> None:
    """Entry point."""
    run_demo(__doc__, story)


if __name__ == "__main__":
    main()
