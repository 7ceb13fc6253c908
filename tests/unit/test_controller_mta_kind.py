"""Hosts configured ``mta.kind = "auto"`` or ``"postfix"`` in the controller: the API checks
their settings, jobs teach the inventory which MTA a host runs, and the host and fleet
views show the configured kind beside the one found (SQLite, in-memory broker, scripted
hosts: fast, no root, no Redis)."""

from __future__ import annotations

from typing import Any

import pytest

from controller.lanes import Lane
from controller.testing import FakeTransports
from shared.profile import MTA_KINDS, PROFILE_KINDS
from shared.results import OperationResult
from tests.controller_client import Controller

SSH_KEY_LINE = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9"
                "GKJl")
POSTFIX_STATUS = {"hostname": "pbx-0", "fqdn": "pbx-0.example.net",
                  "mta": {"kind": "postfix", "version": "3.7.11", "running": True},
                  "smarthost": None, "config_in_sync": True,
                  "queue": {"count": 2, "oldest_age_s": 60},
                  "hosts_file": {"ok": True, "problems": []}}


@pytest.fixture
def controller(memory_controller: Controller) -> Controller:
    """A controller on a fresh SQLite file and an in-memory broker."""
    return memory_controller


@pytest.fixture
def site(controller: Controller) -> int:
    return controller.site(controller.tenant("Acme"), "Leeds")


def ssh_host(controller: Controller, site: int, name: str, mta: dict[str, Any]) -> Any:
    """Create an SSH host (a password login: no key to make) with ``mta``."""
    return controller.call("POST", "/v1/hosts", body={
        "name": name, "site_id": site, "address": "192.0.2.20", "transport": "ssh",
        "ssh": {"username": "root", "password": "ssh-password-Zq8!x",
                "host_key": SSH_KEY_LINE}, "mta": mta})


def run_job(controller: Controller, action: str, transports: FakeTransports) -> None:
    """Accept a job for every host and run its lane here, against scripted hosts."""
    job = controller.start_job({"action": action, "target": {"all": True}})
    with controller.app.app_context():
        Lane(job, 0, transports=transports, send=lambda *_a, **_k: None).run()


# -- settings ----------------------------------------------------------------------------

def test_hosts_configured_auto_and_postfix(controller: Controller, site: int) -> None:
    auto = controller.host(site, "pbx-auto", mta={"kind": "auto"})
    assert auto["mta"] == {"kind": "auto", "flavour": "debian", "overrides": {}}
    assert auto["last"]["mta_kind"] is None  # nothing found yet
    # auto may carry both kinds' settings: each kind reads its own
    both = ssh_host(controller, site, "pbx-both", {
        "kind": "auto", "flavour": "rhel",
        "overrides": {"mc": "custom.mc", "config_dir": "/etc/postfix-out"}})
    assert both.status == 201, both
    postfix = ssh_host(controller, site, "pbx-postfix", {
        "kind": "postfix", "overrides": {"main_cf": "main.cf",
                                         "reload": ["systemctl", "reload", "postfix"]}})
    assert postfix.status == 201, postfix
    assert postfix.json["mta"]["overrides"]["reload"] == ["systemctl", "reload", "postfix"]


@pytest.mark.parametrize(("mta", "field", "says"), [
    ({"kind": "postfix", "overrides": {"mc": "x"}}, "mta.overrides", "not a postfix setting"),
    ({"kind": "sendmail", "overrides": {"main_cf": "x.cf"}}, "mta.overrides",
     "not a sendmail setting"),
    ({"kind": "auto", "overrides": {"config_dir": "/srv/postfix"}}, "mta.overrides",
     "config_dir"),
    ({"kind": "auto", "overrides": {"surprise": "x"}}, "mta.overrides", "unknown mta setting"),
    ({"kind": "exim"}, "mta.kind", "Must be one of"),
])
def test_bad_mta_settings_are_422_naming_them(controller: Controller, site: int,
                                              mta: dict[str, Any], field: str,
                                              says: str) -> None:
    answer = ssh_host(controller, site, "pbx-bad", mta)
    assert answer.status == 422, answer
    assert says in " ".join(answer.json["errors"][field]), answer.json


def test_the_openapi_document_follows_the_kinds(controller: Controller) -> None:
    schemas = controller.ok("GET", "/openapi.json")["components"]["schemas"]
    assert schemas["Mta"]["properties"]["kind"]["enum"] == list(MTA_KINDS)
    assert "auto" in schemas["Mta"]["properties"]["kind"]["description"]
    found = schemas["HostLast"]["properties"]["mta_kind"]
    assert found["enum"] == [*PROFILE_KINDS, None] and found["nullable"]
    assert "found running" in found["description"]
    assert "configured" in schemas["FleetHost"]["properties"]["mta_kind"]["description"]


# -- what jobs teach ---------------------------------------------------------------------------

def test_the_kind_found_shows_in_host_and_fleet_views(controller: Controller,
                                                      site: int) -> None:
    agent = controller.host(site, "pbx-0", mta={"kind": "auto"})
    ssh = ssh_host(controller, site, "pbx-1", {"kind": "auto"}).json
    # the agent's status says what it runs; the SSH transport says what it detected
    run_job(controller, "collect_status", FakeTransports(
        answers={"pbx-0": OperationResult("collect_status", data=POSTFIX_STATUS)},
        kinds={"pbx-1": "sendmail"}))
    shown = controller.ok("GET", f"/v1/hosts/{agent['id']}")
    assert shown["mta"]["kind"] == "auto" and shown["last"]["mta_kind"] == "postfix"
    fleet = {item["name"]: item for item in controller.ok("GET", "/v1/fleet")["items"]}
    assert fleet["pbx-0"]["mta_kind"] == "auto"
    assert fleet["pbx-0"]["last"]["mta_kind"] == "postfix"
    assert fleet["pbx-1"]["last"]["mta_kind"] == "sendmail"
    assert fleet["pbx-0"]["last"]["queue_count"] == 2
    # any action over SSH teaches it, not only the status
    run_job(controller, "flush_queue", FakeTransports(kinds={"pbx-1": "postfix"}))
    assert controller.ok("GET", f"/v1/hosts/{ssh['id']}")["last"]["mta_kind"] == "postfix"


def test_later_ssh_runs_get_the_remembered_kind_until_the_host_changes(
        controller: Controller, site: int) -> None:
    host = ssh_host(controller, site, "pbx-1", {"kind": "auto"}).json
    run_job(controller, "flush_queue", FakeTransports(kinds={"pbx-1": "postfix"}))
    job = controller.start_job({"action": "flush_queue", "target": {"all": True}})
    with controller.app.app_context():
        lane = Lane(job, 0, send=lambda *_a, **_k: None)
        plan = lane.load()
        assert plan is not None
        claim = lane.claim(plan)
        assert claim is not None and claim.host is not None
        assert lane._spec(claim.host).mta_detected_kind == "postfix"
    # a host told something new about its MTA detects again
    patched = controller.ok("PATCH", f"/v1/hosts/{host['id']}",
                            {"mta": {"kind": "auto", "flavour": "rhel"}})
    assert patched["last"]["mta_kind"] is None
    run_job(controller, "flush_queue", FakeTransports(kinds={"pbx-1": "sendmail"}))
    renamed = controller.ok("PATCH", f"/v1/hosts/{host['id']}", {"name": "pbx-1b"})
    assert renamed["last"]["mta_kind"] == "sendmail"  # a new name changes nothing
    moved = controller.ok("PATCH", f"/v1/hosts/{host['id']}", {"address": "192.0.2.21"})
    assert moved["last"]["mta_kind"] is None


def test_an_unreachable_host_keeps_the_kind_it_was_found_running(controller: Controller,
                                                                 site: int) -> None:
    from shared.errors import HostUnreachable

    host = ssh_host(controller, site, "pbx-1", {"kind": "auto"}).json
    run_job(controller, "flush_queue", FakeTransports(kinds={"pbx-1": "postfix"}))
    run_job(controller, "flush_queue", FakeTransports(default=HostUnreachable("down")))
    shown = controller.ok("GET", f"/v1/hosts/{host['id']}")
    assert shown["last"]["reachable"] is False and shown["last"]["mta_kind"] == "postfix"
