"""One fleet of sendmail (Debian and CentOS layouts) and Postfix hosts (Debian and RHEL
layouts, two of them ``kind = "auto"``), reached through agents and over SSH, driven by
the controller with a real worker, Redis and database: the seed story for all at once."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.lab.delivered import wait_for_subjects
from tests.lab.enrol import SshLogin, host_body
from tests.lab.lab import SINK_PORT, Lab, LabHost
from tests.lab.services import ControllerStack, lab_controller

pytestmark = [pytest.mark.lab, pytest.mark.slow]

SMARTHOST = {"host": "smarthost.lab.test", "port": SINK_PORT, "mx": False}
#: (name, MTA, layout, transport, mta.kind as enrolled)
FLEET = [("mxsda", "sendmail", "debian", "agent", "sendmail"),
         ("mxscs", "sendmail", "centos", "ssh", "sendmail"),
         ("mxpda", "postfix", "debian", "agent", "auto"),
         ("mxpcs", "postfix", "centos", "ssh", "auto"),
         ("mxpds", "postfix", "debian", "ssh", "postfix")]


@pytest.fixture(scope="module")
def mixed_fleet(lab: Lab, client_keys: dict[str, tuple[str, str]], redis_server: Any,
                tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[tuple[ControllerStack, list[tuple[LabHost, int]]]]:
    """The five hosts enrolled in one tenant, and the controller stack (SQLite)."""
    user, _password = lab.ensure_ssh_user()
    private, public = client_keys["ed25519"]
    with lab_controller(lab, redis_server, tmp_path_factory.mktemp("mixed"), 2) as (stack,
                                                                                   hosts):
        controller = stack.controller
        site = controller.site(controller.tenant("Mixed"), "Everywhere")
        enrolled = []
        for name, mta, layout, transport, kind in FLEET:
            host = lab.add_host(name, layout, mta=mta)
            hosts.append(host)
            # The CentOS-style sendmail host logs in as a sudo user; the RHEL-style
            # Postfix host has no Python at all.
            sudo = mta == "sendmail" and layout == "centos"
            login = SshLogin(user if sudo else "root", private, public, sudo=sudo)
            body = host_body(host, transport, kind=kind, login=login)
            if transport == "ssh" and mta == "postfix" and layout == "centos":
                host.disable_python()
            doc = controller.ok("POST", "/v1/hosts", {**body, "site_id": site})
            enrolled.append((host, doc["id"]))
        yield stack, enrolled


def test_one_fleet_of_sendmail_and_postfix_hosts(
        mixed_fleet: tuple[ControllerStack, list[tuple[LabHost, int]]], lab: Lab) -> None:
    stack, enrolled = mixed_fleet
    controller = stack.controller
    stamp = secrets.token_hex(4)
    wanted = {f"voicemail {stamp} {host.name}" for host, _ in enrolled}
    for host, _ in enrolled:
        host.send_mail(["me@ourtest.com"], subject=f"voicemail {stamp} {host.name}")
    for host, _ in enrolled:
        host.wait_deferred()
    ids = [host_id for _, host_id in enrolled]

    job = controller.wait_job(controller.start_job(
        {"action": "set_smarthost", "target": {"hosts": ids}, "params": SMARTHOST,
         "options": {"concurrency": 5}}))
    assert job["status"] == "succeeded", json.dumps(job["results"], indent=1)[:4000]
    by_host = {r["host_id"]: r for r in job["results"]}
    for host, host_id in enrolled:
        result = by_host[host_id]
        assert result["changed"] is True, result
        assert result["data"]["smarthost"]["host"] == "smarthost.lab.test"
        assert result["data"]["smarthost"]["port"] == SINK_PORT
        names = {s["name"] for s in result["steps"]}
        expected = {"postfix check", "reload"} if host.mta == "postfix" else {"compile", "make"}
        assert expected | {"backup", "swap", "verify"} <= names, (host.name, names)

    # Every host's kind is known from the change itself (SSH: detected at first contact;
    # agent: named in its answers).
    found = {item["host_id"]: item["last"]["mta_kind"]
             for item in controller.ok("GET", "/v1/fleet")["items"]}
    assert [found[host_id] for _, host_id in enrolled] == [host.mta for host, _ in enrolled]

    flush = controller.wait_job(controller.start_job(
        {"action": "flush_queue", "target": {"hosts": ids}}))
    assert flush["status"] == "succeeded", json.dumps(flush["results"], indent=1)[:4000]
    wait_for_subjects(lab, wanted)

    # The fleet view says what each host runs: as enrolled, and as found.
    status = controller.wait_job(controller.start_job(
        {"action": "collect_status", "target": {"hosts": ids}}))
    assert status["status"] == "succeeded", status["results"]
    fleet = {item["host_id"]: item for item in controller.ok("GET", "/v1/fleet")["items"]}
    for (_host, host_id), (_name, mta, _layout, _transport, kind) in zip(enrolled, FLEET,
                                                                        strict=True):
        item = fleet[host_id]
        assert item["mta_kind"] == kind, item
        assert item["last"]["mta_kind"] == mta, item
        assert item["last"]["smarthost"]["host"] == "smarthost.lab.test", item
        assert item["last"]["queue_count"] == 0, item


@pytest.mark.parametrize("hostile", [
    "relay.example.com\nmydestination = evil.example", "$myhostname", "${mydomain}",
    "relay.example.com, other.example.com", "relay example.com", "relay=evil.example",
    "x')esyscmd(`id')dnl(`",
])
def test_hostile_relayhost_values_are_refused_before_anything_runs(
        mixed_fleet: tuple[ControllerStack, list[tuple[LabHost, int]]], hostile: str,
        tmp_path: Path) -> None:
    stack, enrolled = mixed_fleet
    postfix_ids = [host_id for host, host_id in enrolled if host.mta == "postfix"]
    before = {host.name: host.file_snapshot("main.cf") for host, _ in enrolled
              if host.mta == "postfix"}
    answer = stack.controller.post("/v1/jobs", {"action": "set_smarthost",
                                               "target": {"hosts": postfix_ids},
                                               "params": {"host": hostile}})
    assert answer.status == 422, answer
    assert any("host" in key for key in answer.json["errors"]), answer.json
    after = {host.name: host.file_snapshot("main.cf") for host, _ in enrolled
             if host.mta == "postfix"}
    assert after == before
