"""The relay-grade story on lab hosts, step by step, for the acceptance tests and the demo.

The smarthosts MSPs use want STARTTLS, AUTH with real passwords, senders from the
customer's domain and a host that greets with a fully qualified name. Each step here runs
one controller job (through any ``run_job(body) -> job document`` callable: the tests' API
client or the demo's) and returns what the tests assert on and the demo prints.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from tests.lab.lab import Lab, LabHost
from tests.lab.relay import Relay

#: the relay account; its password has a blank, a double quote and a backslash, as real ones do
USER = "pbx-relay@ourtest.com"
PASSWORD = 'p@ss "w rd\\x'
#: the customer's domain: the only senders the Google-style relay accepts
CUSTOMER_DOMAIN = "ourtest.com"
#: the domain the lab hosts' names are qualified with
HOST_DOMAIN = "lab.test"

RunJob = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass
class Relays:
    """The lab's relay-grade smarthosts."""

    #: STARTTLS (lab CA), AUTH after TLS, customer senders only, refuses unqualified EHLO
    google: Relay
    #: like google, but its certificate names another host
    wrong_name: Relay
    #: offers AUTH with no STARTTLS at all
    cleartext: Relay


def start_relays(lab: Lab) -> Relays:
    """Start the three relays on the lab's bridge."""
    credentials = (USER, PASSWORD)
    return Relays(
        google=lab.start_relay("gmail", "gmail", credentials=credentials,
                               refuse_unqualified_ehlo=True, senders_domain=CUSTOMER_DOMAIN),
        wrong_name=lab.start_relay("wrongname", "wrongname", credentials=credentials),
        cleartext=lab.start_relay("cleartext", "cleartext-auth", credentials=credentials))


def smarthost_params(relay: Relay, **extra: Any) -> dict[str, Any]:
    """set_smarthost params for ``relay`` with the relay account."""
    return {"host": relay.fqdn, "port": relay.port,
            "auth": {"username": USER, "password": PASSWORD}, **extra}


def unqualify(host: LabHost) -> None:
    """Give ``host`` the name a freshly installed PBX often has, one that is not fully
    qualified, and restart its MTA. sendmail: /etc/hosts names the host only on
    localhost's line (as in the seed's CentOS box), so sendmail takes the first dotted name
    there, ``localhost.localdomain``; Postfix: ``myhostname = NAME.localdomain``, RHEL's
    default. (A name with no dotted alias at all makes every sendmail command wait a
    minute before it gives up qualifying it.)"""
    if host.mta == "postfix":
        host.postconf("-e", f"myhostname={host.name}.localdomain")
        host.run(["postfix", "reload"], timeout=60)
        return
    host.fs("/etc/hosts").write_text(
        f"127.0.0.1 localhost localhost.localdomain {host.name}\n"
        "::1 localhost ip6-localhost ip6-loopback\n")
    host.stop_mta()
    host.start_mta()


def queue_voicemail(hosts: Iterable[LabHost]) -> dict[str, str]:
    """Submit one voicemail on each host; return its subject by host name."""
    stamp = secrets.token_hex(3)
    subjects = {}
    for host in hosts:
        subjects[host.name] = f"voicemail {stamp} from {host.name}"
        host.send_mail(["me@ourtest.com"], subject=subjects[host.name])
    return subjects


def subject_of(message: dict[str, Any]) -> str:
    """A relayed message's Subject header."""
    return next((line[9:] for line in message["data"].splitlines()
                 if line.startswith("Subject: ")), "")


def header(message: dict[str, Any], name: str) -> str:
    """A relayed message's header ``name`` (empty when absent)."""
    prefix = f"{name}: "
    return next((line[len(prefix):] for line in message["data"].splitlines()
                 if line.startswith(prefix)), "")


def wait_delivered(relay: Relay, subjects: Iterable[str], timeout: float = 60
                   ) -> list[dict[str, Any]]:
    """Wait until ``relay`` accepted a message with each subject; return those messages."""
    wanted = set(subjects)
    deadline = time.monotonic() + timeout
    while True:
        found = [m for m in relay.messages() if subject_of(m) in wanted]
        if {subject_of(m) for m in found} >= wanted or time.monotonic() > deadline:
            return found
        time.sleep(0.3)


def flush(run_job: RunJob, ids: Sequence[int]) -> dict[str, Any]:
    """Run every queue now."""
    return run_job({"action": "flush_queue", "target": {"hosts": list(ids)}})


def checks_by_host(job: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """A diagnose job's checks: host name -> check name -> check."""
    return {r["host"]: {c["name"]: c for c in (r["data"] or {}).get("checks", [])}
            for r in job["results"]}


def log_problems(job: dict[str, Any]) -> dict[str, set[str]]:
    """A read_log job's named problems per host."""
    return {r["host"]: {rec.get("problem") for rec in (r["data"] or {}).get("records", [])
                        if rec.get("problem")} for r in job["results"]}
