"""Verified delivery and canary rollouts, with a real worker, Redis and SQLite, on sendmail
and Postfix lab hosts reached through agents and over SSH: a change to a relay that takes
the probe is ``delivery_verified: true`` (and rolls out wave after wave); a change to a
relay that accepts the connection but refuses the sender is ``delivery_verified: false``
with the relay's answer, rolled back, and as a canary it stops the rollout before any
other host is touched."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.lab.enrol import SshLogin, host_body
from tests.lab.lab import Lab, LabHost
from tests.lab.relay import Relay
from tests.lab.services import ControllerStack, lab_controller

pytestmark = [pytest.mark.lab, pytest.mark.slow]

PROBE_TO = "me@ourtest.com"
CUSTOMER = "ourtest.com"
REFUSAL = "550 5.7.1 Sender address rejected: not owned by a customer domain"
#: (name, MTA, transport), in enrolment (so job) order: the first is a canary of one
FLEET = [("vfsa", "sendmail", "agent"), ("vfps", "postfix", "ssh"),
         ("vfss", "sendmail", "ssh"), ("vfpa", "postfix", "agent")]
CONFIG = {"sendmail": ("sendmail.mc", "sendmail.cf"), "postfix": ("main.cf",)}


@pytest.fixture(scope="module")
def fleet(lab: Lab, client_keys: dict[str, tuple[str, str]], redis_server: Any,
          tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[tuple[ControllerStack, list[tuple[LabHost, int]], Relay, Relay]]:
    """The four hosts in one tenant, a relay that takes any sender and one that takes only
    the customer's domain (the hosts send as themselves)."""
    private, public = client_keys["ed25519"]
    good = lab.start_relay("vfy-good")
    bad = lab.start_relay("vfy-bad", senders_domain=CUSTOMER)
    try:
        with lab_controller(lab, redis_server, tmp_path_factory.mktemp("verify"), 8) as (
                stack, hosts):
            controller = stack.controller
            site = controller.site(controller.tenant("Verify"), "Canary")
            enrolled = []
            for name, mta, transport in FLEET:
                host = lab.add_host(name, "debian", mta=mta)
                hosts.append(host)
                body = host_body(host, transport, login=SshLogin("root", private, public))
                doc = controller.ok("POST", "/v1/hosts", {**body, "site_id": site})
                enrolled.append((host, int(doc["id"])))
            yield stack, enrolled, good, bad
    finally:
        lab.stop_relay(good)
        lab.stop_relay(bad)


def relay_params(relay: Relay) -> dict[str, Any]:
    return {"host": relay.fqdn, "port": relay.port, "verify": {"to": PROBE_TO}}


def snapshot(host: LabHost) -> dict[str, bytes | None]:
    return host.file_snapshot(*CONFIG[host.mta])


def run(stack: ControllerStack, body: dict[str, Any]) -> dict[str, Any]:
    job: dict[str, Any] = stack.controller.wait_job(stack.controller.start_job(body))
    return job


def test_probes_through_a_relay_that_takes_them_verify_each_wave(
        fleet: tuple[ControllerStack, list[tuple[LabHost, int]], Relay, Relay]) -> None:
    stack, enrolled, good, _bad = fleet
    ids = [host_id for _, host_id in enrolled]
    job = run(stack, {"action": "set_smarthost", "target": {"hosts": ids},
                      "params": relay_params(good),
                      "options": {"canary": "25%", "wave_size": 2, "concurrency": 4}})
    assert job["status"] == "succeeded", json.dumps(job["results"], indent=1)[:4000]
    assert [r["wave"] for r in job["results"]] == [0, 1, 1, 2]
    probes = []
    for result in job["results"]:
        data = result["data"]
        assert data["delivery_verified"] is True, result
        assert data["delivery"]["relay"].startswith(good.fqdn), data["delivery"]
        assert data["smarthost"]["host"] == good.fqdn
        probes.append(data["delivery"]["message_id"])
    # The relay holds each host's probe, under the Message-ID the host followed.
    received = "\n".join(message["data"] for message in good.messages())
    for message_id in probes:
        assert f"Message-ID: {message_id}" in received, message_id

    flush = run(stack, {"action": "flush_queue", "target": {"hosts": ids},
                        "params": {"verify": {"to": PROBE_TO}}})
    assert flush["status"] == "succeeded", json.dumps(flush["results"], indent=1)[:4000]
    assert {r["data"]["delivery_verified"] for r in flush["results"]} == {True}


def test_a_refused_probe_rolls_back_and_a_bad_canary_stops_the_rollout(
        fleet: tuple[ControllerStack, list[tuple[LabHost, int]], Relay, Relay]) -> None:
    stack, enrolled, good, bad = fleet
    ids = [host_id for _, host_id in enrolled]
    # each host points at the good relay (the test above, or this one run alone)
    ready = run(stack, {"action": "set_smarthost", "target": {"hosts": ids},
                        "params": {"host": good.fqdn, "port": good.port}})
    assert ready["status"] == "succeeded", ready["results"]
    before = {host.name: snapshot(host) for host, _ in enrolled}

    job = run(stack, {"action": "set_smarthost", "target": {"hosts": ids},
                      "params": relay_params(bad), "options": {"canary": 1}})
    assert job["status"] == "failed", json.dumps(job["results"], indent=1)[:4000]
    canary, *rest = job["results"]
    canary_host = enrolled[0][0]
    assert canary["host"] == canary_host.fqdn and canary["status"] == "failed"
    data = canary["data"]
    # sendmail (through its agent) quotes the relay's answer to MAIL FROM
    assert data["delivery_verified"] is False and data["delivery"]["reply"] == REFUSAL, data
    assert data["delivery"]["relay"].startswith(bad.fqdn)
    assert f"answered: {REFUSAL}" in canary["error"]
    assert "the previous configuration was restored" in canary["error"]
    assert data["smarthost"]["host"] == good.fqdn  # rolled back
    for result in rest:
        assert result["status"] == "skipped" and result["wave"] == 1, result
        assert result["error"].startswith(
            f"not started: wave 0 failed: host {canary_host.fqdn}: delivery not verified")
        assert result["steps"] is None
    # Nothing changed anywhere: the canary was rolled back, the rest never started.
    assert {host.name: snapshot(host) for host, _ in enrolled} == before

    # Postfix (over SSH) refuses alike, quoting the relay's whole answer.
    postfix_host, postfix_id = enrolled[1]
    alone = run(stack, {"action": "set_smarthost", "target": {"hosts": [postfix_id]},
                        "params": relay_params(bad)})
    [result] = alone["results"]
    assert alone["status"] == "failed" and result["data"]["delivery_verified"] is False
    assert result["data"]["delivery"]["reply"] == (
        f"host {bad.fqdn}[{bad.address}] said: {REFUSAL} (in reply to MAIL FROM command)")
    assert snapshot(postfix_host) == before[postfix_host.name]
    # the relay saw exactly the two probes, each refused for its sender's domain
    assert [r["reason"] for r in bad.refusals()] == ["sender-domain", "sender-domain"]
    assert bad.messages() == []


def test_a_deferred_probe_is_taken_out_of_the_queue_before_the_rollback(
        fleet: tuple[ControllerStack, list[tuple[LabHost, int]], Relay, Relay]) -> None:
    stack, enrolled, good, _bad = fleet
    # sendmail through its agent, Postfix over SSH
    pair = [enrolled[0], enrolled[1]]
    queued = {host.name: set(host.queue_files()) for host, _ in pair}
    # nothing listens on that port: each MTA defers the probe (connection refused)
    job = run(stack, {"action": "set_smarthost", "target": {"hosts": [i for _, i in pair]},
                      "params": {"host": good.fqdn, "port": good.port + 1,
                                 "verify": {"to": PROBE_TO, "timeout_s": 30}},
                      "options": {"timeout_s": 90}})
    assert job["status"] == "failed", json.dumps(job["results"], indent=1)[:4000]
    for (host, _), result in zip(pair, job["results"], strict=True):
        data = result["data"]
        assert data["delivery_verified"] is False and result["status"] == "failed", result
        assert "the previous configuration was restored" in result["error"], result["error"]
        [removal] = [s for s in result["steps"] if s["name"] == "remove probe"]
        assert removal["ok"] and "removed the probe" in removal["output"], removal
        # the deferred probe would have been retried for days through the restored relay
        assert set(host.queue_files()) <= queued[host.name], host.mailq()
        assert data["smarthost"]["port"] != good.port + 1
