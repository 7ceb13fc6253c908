"""The seed story across a small fleet, through a running controller's REST API.

``python -m tests.lab.fleet_demo --api URL --token TOKEN`` (root): builds a mixed fleet of
six lab hosts (sendmail and Postfix, agent and SSH, Debian and CentOS/RHEL layouts; the
Postfix ones enrolled with ``kind = "auto"``), queues a voicemail on each (deferred: the MX
refuses), then does what an engineer would with the ``relayfleet`` CLI: imports the hosts,
sets the smarthost (a dry run on one host first), flushes every queue and shows the fleet
view; finally what reached the smarthost.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import subprocess
import sys
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
        self.token = token
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


def relayfleet(api: Api, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the operator CLI as a person would (printed first; its live progress and tables
    go straight to this terminal); stop the demo if it exits 2 or 3."""
    say(f"\n$ relayfleet {' '.join(shlex.quote(a) for a in args)}")
    env = {**os.environ, "RELAYFLEET_API_URL": api.base, "RELAYFLEET_TOKEN": api.token}
    command = str(Path(sys.executable).with_name("relayfleet"))
    proc = subprocess.run([command, *args], env=env, text=True, check=False)
    if proc.returncode >= 2:
        raise SystemExit(f"relayfleet {args[0]} exited {proc.returncode}")
    return proc


def story(lab: Lab, api: Api) -> int:
    """Run the story; return a process exit code."""
    hosts = build(lab)
    for host, _ in hosts:
        host.send_mail(["me@ourtest.com"], subject=f"voicemail from {host.name}")
    for host, _ in hosts:
        host.wait_deferred()
    say(f"1. voicemail deferred on {len(hosts)} hosts (the MX of ourtest.com refuses)")
    stamp = secrets.token_hex(2)
    acme = api.call("POST", "/v1/tenants", {"name": f"Acme {stamp}"})
    globex = api.call("POST", "/v1/tenants", {"name": f"Globex {stamp}"})
    sites = {"UK": api.call("POST", "/v1/sites", {"tenant_id": acme["id"], "name": "UK"}),
             "France": api.call("POST", "/v1/sites", {"tenant_id": globex["id"],
                                                      "name": "France"})}
    # This run's hosts carry a tag, so the commands below touch only them even when the
    # controller keeps hosts from earlier runs.
    tag = f"demo-{stamp}"
    rows = [{**body, "tags": [tag], "site_id": sites[
        "France" if host.name.endswith(("paris", "lyon", "nice")) else "UK"]["id"]}
        for host, body in hosts]
    inventory = Path(tempfile.mkdtemp()) / "fleet.json"
    inventory.write_text(json.dumps(rows))
    inventory.chmod(0o600)
    say(f"2. {len(hosts)} hosts in 2 tenants (sendmail and Postfix enrolled as kind auto, "
        "agent and SSH), imported with the CLI:")
    relayfleet(api, "hosts", "import", str(inventory))
    say(f"\n3. the smarthost on every host of this run (tag {tag}): a dry run, then for real")
    relay = f"{SMARTHOST['host']}:{SMARTHOST['port']}"
    relayfleet(api, "smarthost", "set", relay, "--no-mx", "--tag", tag, "--dry-run",
               "--host", rows[0]["name"])
    changed = relayfleet(api, "smarthost", "set", relay, "--no-mx", "--tag", tag)
    say("\n4. flush every queue (sendmail -OTimeout.hoststatus=0m -q -v; postqueue -f):")
    flushed = relayfleet(api, "flush", "--tag", tag)
    deadline = time.monotonic() + 30
    while len(lab.smarthost.messages()) < len(hosts) and time.monotonic() < deadline:
        time.sleep(0.3)
    say("\n5. the fleet view:")
    relayfleet(api, "fleet", "--tag", tag)
    say(f"\n6. the smarthost received {len(lab.smarthost.messages())} message(s):")
    table([[m["peer"], ",".join(m["rcpts"]),
            next((ln[9:] for ln in m["data"].splitlines() if ln.startswith("Subject: ")), "")]
           for m in lab.smarthost.messages()], ["from", "recipients", "subject"])
    ok = (len(lab.smarthost.messages()) >= len(hosts) and changed.returncode == 0
          and flushed.returncode == 0)
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
