"""Relay-grade delivery on real sendmail and real Postfix, through agents and over SSH, from
the controller (real worker, Redis, database): the relays MSPs use want STARTTLS, AUTH
with real passwords, senders in the customer's domain and a fully qualified EHLO name.

The lab's relays (:mod:`tests.lab.relay`) are aiosmtpd with lab-CA certificates; the hosts
trust the lab CA. Each test runs its jobs on all four hosts at once: sendmail and Postfix,
each through its agent and over SSH.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.lab.enrol import SshLogin, host_body
from tests.lab.lab import Lab, LabHost
from tests.lab.relay_story import (
    CUSTOMER_DOMAIN,
    HOST_DOMAIN,
    PASSWORD,
    USER,
    Relays,
    checks_by_host,
    flush,
    header,
    log_problems,
    queue_voicemail,
    smarthost_params,
    start_relays,
    unqualify,
    wait_delivered,
)
from tests.lab.services import ControllerStack, lab_controller

pytestmark = [pytest.mark.lab, pytest.mark.slow]

#: (name, MTA, transport)
FLEET = [("rgsa", "sendmail", "agent"), ("rgss", "sendmail", "ssh"),
         ("rgpa", "postfix", "agent"), ("rgps", "postfix", "ssh")]




class Fleet:
    """The enrolled hosts and the controller that drives them."""

    def __init__(self, stack: ControllerStack, hosts: list[tuple[LabHost, int]],
                 relays: Relays) -> None:
        self.stack, self.hosts, self.relays = stack, hosts, relays
        self.ids = [host_id for _, host_id in hosts]

    def run_job(self, body: dict[str, Any]) -> dict[str, Any]:
        """Start a job on the controller and wait for its end."""
        doc: dict[str, Any] = self.stack.controller.wait_job(
            self.stack.controller.start_job(body))
        return doc

    def succeeded(self, body: dict[str, Any]) -> dict[str, Any]:
        """Run a job on every host; it must succeed on each."""
        body = {"target": {"hosts": self.ids}, "options": {"concurrency": 4}, **body}
        job = self.run_job(body)
        assert job["status"] == "succeeded", json.dumps(job["results"], indent=1)[:6000]
        return job

    def results(self, job: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """A job's results by host name."""
        return {r["host"]: r for r in job["results"]}


@pytest.fixture(scope="module")
def fleet(lab: Lab, client_keys: dict[str, tuple[str, str]], redis_server: Any,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """Four hosts that trust the lab CA, enrolled in one tenant; the lab's relays."""
    private, public = client_keys["ed25519"]
    login = SshLogin("root", private, public)
    relays = start_relays(lab)
    try:
        with lab_controller(lab, redis_server, tmp_path_factory.mktemp("relay-grade"), 3) as (
                stack, hosts):
            controller = stack.controller
            site = controller.site(controller.tenant("Relay grade"), "PBXes")
            enrolled = []
            for name, mta, transport in FLEET:
                host = lab.add_host(name, "debian", mta=mta, trust_lab_ca=True)
                hosts.append(host)
                body = host_body(host, transport, kind=mta, login=login)
                enrolled.append((host, controller.ok("POST", "/v1/hosts",
                                                     {**body, "site_id": site})["id"]))
            yield Fleet(stack, enrolled, relays)
    finally:
        for relay in (relays.google, relays.wrong_name, relays.cleartext):
            lab.stop_relay(relay)


def _deferred_everywhere(fleet: Fleet, subjects: dict[str, str]) -> None:
    """Each host still holds its voicemail after a flush."""
    status = fleet.succeeded({"action": "collect_status"})
    for name, result in fleet.results(status).items():
        assert result["data"]["queue"]["count"] >= 1, (name, result["data"]["queue"])


def test_a_relay_offering_auth_without_starttls_never_receives_the_password(
        fleet: Fleet) -> None:
    relay = fleet.relays.cleartext
    job = fleet.succeeded({"action": "set_smarthost", "params": smarthost_params(relay)})
    for name, result in fleet.results(job).items():
        # with credentials and no tls given, the policy is "encrypt"
        assert result["data"]["smarthost"]["tls"]["mode"] == "encrypt", (name, result["data"])
        assert PASSWORD not in json.dumps(result), name
    subjects = queue_voicemail(host for host, _ in fleet.hosts)
    flush(fleet.run_job, fleet.ids)
    relay.wait_sessions(len(fleet.hosts))
    assert relay.messages() == []
    assert not relay.received_secret(PASSWORD)
    assert not any(r.get("command", "").upper().startswith("AUTH")
                   for r in relay.refusals()), relay.refusals()
    _deferred_everywhere(fleet, subjects)
    problems = log_problems(fleet.succeeded({"action": "read_log", "params": {"lines": 400}}))
    for name, found in problems.items():
        assert "tls_required" in found, (name, found)


def test_verify_keeps_mail_from_a_relay_whose_certificate_names_another_host(
        fleet: Fleet) -> None:
    relay = fleet.relays.wrong_name
    fleet.succeeded({"action": "set_smarthost",
                     "params": smarthost_params(relay, tls={"mode": "verify"})})
    subjects = queue_voicemail(host for host, _ in fleet.hosts)
    flush(fleet.run_job, fleet.ids)
    relay.wait_sessions(len(fleet.hosts))
    assert relay.messages() == []
    _deferred_everywhere(fleet, subjects)

    diagnose = fleet.run_job({"action": "diagnose", "target": {"hosts": fleet.ids}})
    for name, checks in checks_by_host(diagnose).items():
        tls = checks["smarthost_tls"]
        assert tls["ok"] is False, (name, tls)
        assert "certificate" in tls["detail"] and relay.fqdn in tls["detail"], (name, tls)
    problems = log_problems(fleet.succeeded({"action": "read_log", "params": {"lines": 400}}))
    for name, found in problems.items():
        assert "tls_verify_failed" in found, (name, found)

    # encrypt (no certificate check) delivers through the same relay
    fleet.succeeded({"action": "set_smarthost",
                     "params": smarthost_params(relay, tls={"mode": "encrypt"})})
    flush(fleet.run_job, fleet.ids)
    delivered = wait_delivered(relay, subjects.values())
    assert {m["auth_user"] for m in delivered} == {USER}, delivered
    assert len(delivered) == len(fleet.hosts)


def test_google_style_relay_after_fix_hostname_gets_tls_auth_and_the_customer_sender(
        fleet: Fleet) -> None:
    relay = fleet.relays.google
    for host, _ in fleet.hosts:
        unqualify(host)
    params = smarthost_params(relay, tls={"mode": "verify"},
                              masquerade={"domain": CUSTOMER_DOMAIN})
    job = fleet.succeeded({"action": "set_smarthost", "params": params})
    for name, result in fleet.results(job).items():
        assert result["data"]["smarthost"]["masquerade"]["domain"] == CUSTOMER_DOMAIN, name
    subjects = queue_voicemail(host for host, _ in fleet.hosts)
    flush(fleet.run_job, fleet.ids)
    relay.wait_sessions(len(fleet.hosts))
    assert relay.messages() == []
    assert any("EHLO" in r.get("command", "").upper() for r in relay.refusals())
    _deferred_everywhere(fleet, subjects)

    # diagnose names the cause and the fix
    diagnose = fleet.run_job({"action": "diagnose", "target": {"hosts": fleet.ids}})
    for name, checks in checks_by_host(diagnose).items():
        smtp = checks["smarthost_smtp"]
        assert smtp["ok"] is False and "fix_hostname" in smtp["detail"], (name, smtp)
    problems = log_problems(fleet.succeeded({"action": "read_log", "params": {"lines": 400}}))
    for name, found in problems.items():
        assert "ehlo_refused" in found, (name, found)

    # the seed's first step, done: a dry run shows the diff and changes nothing...
    dry = fleet.succeeded({"action": "fix_hostname", "params": {"domain": HOST_DOMAIN},
                           "options": {"dry_run": True}})
    for name, result in fleet.results(dry).items():
        short = name.split(".")[0]
        assert result["data"]["dry_run"] is True, (name, result["data"])
        assert f"+127.0.1.1 {short}.{HOST_DOMAIN} {short}" in result["data"]["diff"] or \
            f"+myhostname = {short}.{HOST_DOMAIN}" in result["data"]["diff"], result["data"]
    # ...then for real, and the voicemail goes out
    fixed = fleet.succeeded({"action": "fix_hostname", "params": {"domain": HOST_DOMAIN}})
    assert all(r["changed"] for r in fixed["results"]), fixed["results"]
    flush(fleet.run_job, fleet.ids)
    delivered = wait_delivered(relay, subjects.values())
    assert len(delivered) == len(fleet.hosts), [m["data"][:200] for m in delivered]
    for message in delivered:
        assert message["tls"], message
        assert message["auth_user"] == USER
        assert message["mail_from"].endswith(f"@{CUSTOMER_DOMAIN}"), message["mail_from"]
        assert f"@{CUSTOMER_DOMAIN}" in header(message, "From"), header(message, "From")
    again = fleet.succeeded({"action": "fix_hostname", "params": {"domain": HOST_DOMAIN}})
    assert not any(r["changed"] for r in again["results"]), again["results"]
