"""Every job action on one lab host over both transports (its agent, and SSH to the same
host): the result documents have the same shape and agree on what is deterministic."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest

from controller.transports import HostSpec, HostTransport, transport_for
from shared.actions import ACTIONS, JOB_ACTIONS, WORKER_ACTIONS
from shared.results import OperationResult
from tests.conftest import ssh_target_for
from tests.lab.lab import SINK_PORT, LabHost

pytestmark = [pytest.mark.lab, pytest.mark.slow]

SMARTHOST = {"host": "smarthost.lab.test", "port": SINK_PORT, "mx": False}
TIMEOUT_S = 240.0
STEP_KEYS = {"name", "argv", "exit_code", "duration_s", "ok", "output"}


@dataclass
class Pair:
    """One lab host reached both ways."""

    host: LabHost
    agent: HostSpec
    ssh: HostSpec

    def run(self, transport: str, action: str, params: dict[str, Any] | None = None, *,
            dry_run: bool = False) -> OperationResult:
        spec = self.agent if transport == "agent" else self.ssh
        request = ACTIONS[action].parse(params or {})
        with transport_for(spec, lock_owner=f"parity-{transport}") as runner:
            assert isinstance(runner, HostTransport)
            return runner.run(action, request, dry_run=dry_run, timeout_s=TIMEOUT_S)

    def both(self, action: str, params: dict[str, Any] | None = None, *,
             dry_run: bool = False) -> tuple[OperationResult, OperationResult]:
        """The action over the agent, then over SSH; the two have the same shape."""
        by_agent = self.run("agent", action, params, dry_run=dry_run)
        by_ssh = self.run("ssh", action, params, dry_run=dry_run)
        assert_same_shape(by_agent, by_ssh)
        return by_agent, by_ssh


def assert_same_shape(one: OperationResult, other: OperationResult) -> None:
    """Same operation name, data keys and step shape (and a document the schema accepts)."""
    assert one.operation == other.operation
    assert set(one.data) == set(other.data), (sorted(one.data), sorted(other.data))
    for result in (one, other):
        assert all(set(step.to_dict()) == STEP_KEYS for step in result.steps)
        doc = {**result.data, "ok": result.ok, "error": result.error,
               "error_kind": result.error_kind, "changed": result.changed,
               "rolled_back": result.rolled_back,
               "steps": [step.to_dict() for step in result.steps]}
        schema = ACTIONS[result.operation].result_schema()
        assert schema.validate({k: v for k, v in doc.items() if k in schema.fields}) == {}
    # An operation with steps has them either way; status and log answers carry none.
    assert bool(one.steps) == bool(other.steps)


@pytest.fixture(params=["debian", "centos"])
def pair(request: pytest.FixtureRequest, make_host: Callable[..., LabHost],
         client_keys: dict[str, tuple[str, str]]) -> Iterator[Pair]:
    host = make_host(request.param)
    token = secrets.token_urlsafe(24)
    url = host.start_agent(token, tls=True)
    target = ssh_target_for(host, client_keys)
    by_agent = HostSpec(1, host.fqdn, host.address, "agent", mta_flavour=host.flavour,
                        agent_url=url, agent_token=token,
                        agent_tls_fingerprint=host.agent_fingerprint)
    yield Pair(host, by_agent, replace(by_agent, transport="ssh", ssh_username=target.username,
                                       ssh_private_key=target.private_key,
                                       ssh_host_key=target.host_key))


def test_every_job_action_is_covered() -> None:
    # (install_agent is the worker's own, over SSH: tests/integration/test_lab_install_agent.py)
    assert set(JOB_ACTIONS) - set(WORKER_ACTIONS) == {
        "set_smarthost", "remove_smarthost", "flush_queue", "collect_status", "diagnose",
        "read_log", "fix_hostname", "queue_list"}


def test_reads_agree(pair: Pair) -> None:
    by_agent, by_ssh = pair.both("collect_status")
    assert by_agent.ok and by_ssh.ok and not by_agent.steps
    for key in ("hostname", "fqdn", "mta", "smarthost", "config_in_sync", "queue",
                "hosts_file"):
        if key != "queue":
            assert by_agent.data[key] == by_ssh.data[key], key
    assert by_agent.data["queue"]["count"] == by_ssh.data["queue"]["count"] == 0
    assert by_agent.data["fqdn"] == pair.host.fqdn and by_agent.data["mta"]["running"]

    by_agent, by_ssh = pair.both("diagnose", {"domain": "ourtest.com",
                                              "public_ip": pair.host.address})
    assert [c["name"] for c in by_agent.data["checks"]] == \
        [c["name"] for c in by_ssh.data["checks"]]
    assert [c["ok"] for c in by_agent.data["checks"]] == [c["ok"] for c in by_ssh.data["checks"]]
    assert by_agent.ok == by_ssh.ok

    by_agent, by_ssh = pair.both("flush_queue")
    assert by_agent.ok and by_ssh.ok
    assert (by_agent.data["before"], by_agent.data["after"]) == \
        (by_ssh.data["before"], by_ssh.data["after"]) == (0, 0)
    assert [s.name for s in by_agent.steps] == [s.name for s in by_ssh.steps]

    by_agent, by_ssh = pair.both("queue_list")
    assert by_agent.data == by_ssh.data and by_agent.data["count"] == 0

    by_agent, by_ssh = pair.both("read_log", {"lines": 50})
    assert set(by_agent.data["summary"]) == set(by_ssh.data["summary"])
    assert not by_agent.steps and not by_ssh.steps


def test_changes_agree(pair: Pair) -> None:
    # A dry run is the same diff either way, and changes nothing.
    by_agent, by_ssh = pair.both("set_smarthost", SMARTHOST, dry_run=True)
    assert by_agent.changed and by_ssh.changed
    assert by_agent.data["diff"] == by_ssh.data["diff"] and "SMART_HOST" in by_agent.data["diff"]
    assert by_agent.data["dry_run"] is by_ssh.data["dry_run"] is True
    assert by_agent.data["smarthost"] is by_ssh.data["smarthost"] is None

    first = pair.run("ssh", "set_smarthost", SMARTHOST)
    assert first.ok and first.changed and first.data["backup"], first
    # The same settings again change nothing, whichever way they come.
    by_agent, by_ssh = pair.both("set_smarthost", SMARTHOST)
    assert_same_shape(first, by_ssh)
    for result in (by_agent, by_ssh):
        assert result.ok and not result.changed and not result.rolled_back
        assert result.data["config_in_sync"] is True and result.data["diff"] == ""
        assert result.data["smarthost"] == {**SMARTHOST, "mailer": "relay", "auth": None,
                                            "tls": {"mode": "may", "ca_file": None},
                                            "masquerade": None}
        assert result.data["backup"] is None and result.data["dry_run"] is False
    assert [s.name for s in by_agent.steps] == [s.name for s in by_ssh.steps]

    by_agent, by_ssh = pair.both("remove_smarthost", dry_run=True)
    assert by_agent.changed and by_agent.data["diff"] == by_ssh.data["diff"]

    removed = pair.run("agent", "remove_smarthost")
    assert removed.ok and removed.changed and removed.data["smarthost"] is None
    by_agent, by_ssh = pair.both("remove_smarthost")
    assert not by_agent.changed and not by_ssh.changed
    assert by_agent.data["smarthost"] is by_ssh.data["smarthost"] is None
    assert by_agent.data["config_in_sync"] is by_ssh.data["config_in_sync"] is True


def test_fix_hostname_agrees(pair: Pair) -> None:
    # The lab host is already qualified: nothing to do, whichever way it is asked.
    by_agent, by_ssh = pair.both("fix_hostname", {"domain": "lab.test"})
    for result in (by_agent, by_ssh):
        assert result.ok and not result.changed and result.data["diff"] == "", result
    # Another domain: the same diff either way, and a dry run changes nothing.
    before = pair.host.fs("/etc/hosts").read_bytes()
    by_agent, by_ssh = pair.both("fix_hostname", {"domain": "ourtest.com"}, dry_run=True)
    assert by_agent.changed and by_ssh.changed
    assert by_agent.data["diff"] == by_ssh.data["diff"]
    assert f"{pair.host.name}.ourtest.com {pair.host.name}" in by_agent.data["diff"]
    assert pair.host.fs("/etc/hosts").read_bytes() == before
