"""The fleet doctor on real sendmail and Postfix hosts, through agents and over SSH, from the
controller (real worker, Redis, database).

Five hosts each hold a voicemail for a different reason: one has no smarthost (the seed
domain's MX refuses connections), one greets the Google-style relay with an unqualified
name, one is told to verify a relay whose certificate names another host, one logs in with
a wrong password, one points at a relay port where nothing listens. One collect_status job
later, ``GET /v1/doctor`` names each cause with the right host and the action that fixes
it; the proposed fix (fix_hostname) run on its host takes the host out of the report.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.lab.enrol import SshLogin, host_body
from tests.lab.lab import Lab, LabHost
from tests.lab.relay import Relay
from tests.lab.relay_story import (
    CUSTOMER_DOMAIN,
    HOST_DOMAIN,
    PASSWORD,
    USER,
    queue_voicemail,
    unqualify,
)
from tests.lab.services import ControllerStack, lab_controller

pytestmark = [pytest.mark.lab, pytest.mark.slow]

#: host -> (MTA, transport, the cause the doctor must name)
FLEET = {"ddirect": ("sendmail", "agent", "no_smarthost"),
         "dehlo": ("sendmail", "ssh", "ehlo_refused"),
         "dcert": ("postfix", "agent", "tls_verify_failed"),
         "dpass": ("postfix", "ssh", "auth_failed"),
         "ddown": ("sendmail", "agent", "relay_unreachable")}
#: a port of the relay's address where nothing listens
CLOSED_PORT = 2599


class Fleet:
    """The enrolled hosts, their relays and the controller that drives them."""

    def __init__(self, stack: ControllerStack, google: Relay, wrong_name: Relay) -> None:
        self.stack, self.google, self.wrong_name = stack, google, wrong_name
        self.hosts: dict[str, tuple[LabHost, int]] = {}

    def job(self, body: dict[str, Any]) -> dict[str, Any]:
        """Run a job on the controller until its end; every host must succeed."""
        controller = self.stack.controller
        doc: dict[str, Any] = controller.wait_job(controller.start_job(body))
        assert doc["status"] == "succeeded", json.dumps(doc["results"], indent=1)[:6000]
        return doc

    def on(self, names: list[str], action: str, params: dict[str, Any] | None = None
           ) -> dict[str, Any]:
        """Run ``action`` on the named hosts."""
        return self.job({"action": action, "params": params or {},
                         "target": {"hosts": [self.hosts[n][1] for n in names]},
                         "options": {"concurrency": 5}})

    def doctor(self) -> dict[str, Any]:
        """GET /v1/doctor."""
        report: dict[str, Any] = self.stack.controller.ok("GET", "/v1/doctor")
        return report


@pytest.fixture(scope="module")
def fleet(lab: Lab, client_keys: dict[str, tuple[str, str]], redis_server: Any,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """The five hosts enrolled in one tenant (they trust the lab CA), and two relays."""
    private, public = client_keys["ed25519"]
    login = SshLogin("root", private, public)
    google = lab.start_relay("dgmail", "gmail", credentials=(USER, PASSWORD),
                             refuse_unqualified_ehlo=True, senders_domain=CUSTOMER_DOMAIN)
    wrong_name = lab.start_relay("dwrong", "wrongname", credentials=(USER, PASSWORD))
    try:
        with lab_controller(lab, redis_server, tmp_path_factory.mktemp("doctor"), 13) as (
                stack, hosts):
            controller = stack.controller
            site = controller.site(controller.tenant("Doctor"), "PBXes")
            fleet = Fleet(stack, google, wrong_name)
            for name, (mta, transport, _) in FLEET.items():
                host = lab.add_host(name, "debian", mta=mta, trust_lab_ca=True)
                hosts.append(host)
                body = host_body(host, transport, kind=mta, login=login)
                fleet.hosts[name] = (host, controller.ok("POST", "/v1/hosts",
                                                         {**body, "site_id": site})["id"])
            yield fleet
    finally:
        lab.stop_relay(google)
        lab.stop_relay(wrong_name)


def _relay(relay: Relay, **extra: Any) -> dict[str, Any]:
    return {"host": relay.fqdn, "port": relay.port, "tls": {"mode": "verify"},
            "masquerade": {"domain": CUSTOMER_DOMAIN},
            "auth": {"username": USER, "password": PASSWORD}, **extra}


def _samples(report: dict[str, Any]) -> list[tuple[str, list[tuple[str, str]]]]:
    """Each cause's hosts and sample reasons (for a failure's message)."""
    return [(c["cause"], [(e["name"], e["sample"]) for e in c["examples"]])
            for c in report["causes"]]


def _hosts_by_cause(report: dict[str, Any]) -> dict[str, set[str]]:
    return {c["cause"]: {e["name"].split(".")[0] for e in c["examples"]}
            for c in report["causes"]}


def test_the_doctor_names_each_hosts_cause_and_its_fix_clears_it(fleet: Fleet) -> None:
    google, wrong = fleet.google, fleet.wrong_name
    fleet.on(["dehlo"], "set_smarthost", _relay(google))
    fleet.on(["dcert"], "set_smarthost", _relay(wrong))
    fleet.on(["dpass"], "set_smarthost", _relay(
        google, auth={"username": USER, "password": PASSWORD + "-old"}))
    fleet.on(["ddown"], "set_smarthost", {"host": google.fqdn, "port": CLOSED_PORT})
    unqualify(fleet.hosts["dehlo"][0])
    queue_voicemail(host for host, _ in fleet.hosts.values())
    for host, _ in fleet.hosts.values():
        host.wait_deferred(1, timeout=60)

    status = fleet.on(list(FLEET), "collect_status")
    for result in status["results"]:
        # what the hosts answered: the queue's reasons and the maillog's recent summary
        assert result["data"]["queue"]["reasons"], result["data"]["queue"]
        assert result["data"]["recent"]["deferred"] >= 1, (result["host"],
                                                           result["data"]["recent"])
    report = fleet.doctor()
    assert (report["examined"], report["healthy"], report["unknown"]) == (5, 0, 0), report
    found = _hosts_by_cause(report)
    for name, (_, _, cause) in FLEET.items():
        assert name in found.get(cause, set()), (name, cause, _samples(report))
    # each host shows its one cause, with the action that fixes it
    assert sorted(found) == sorted(cause for _, _, cause in FLEET.values()), found
    actions = {c["cause"]: c["action"]["action"] for c in report["causes"]}
    assert actions["ehlo_refused"] == "fix_hostname"
    assert actions["no_smarthost"] == "set_smarthost"
    # the API's host rows carry what the doctor read
    fleet_items = {h["name"].split(".")[0]: h["last"]
                   for h in fleet.stack.controller.ok("GET", "/v1/fleet")["items"]}
    assert fleet_items["dcert"]["causes"][0]["cause"] == "tls_verify_failed"
    assert all(last["queue_oldest_age_s"] is not None for last in fleet_items.values())

    # the proposed fix: the host's name qualified, its queue flushed, the next look is clean
    fleet.on(["dehlo"], "fix_hostname", {"domain": HOST_DOMAIN})
    fleet.on(["dehlo"], "flush_queue")
    fleet.on(["dehlo"], "collect_status")
    after = fleet.doctor()
    assert after["healthy"] == 1, after
    assert "ehlo_refused" not in _hosts_by_cause(after), after
    assert "dehlo" not in set().union(*_hosts_by_cause(after).values())
