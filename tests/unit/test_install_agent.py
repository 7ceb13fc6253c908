"""install_agent's pure parts (params, install.sh's report line, its command line, its
failure messages) and how a lane records its switch of the host record: on SQLite, with a
scripted runner in place of SSH (the real thing: tests/integration/test_lab_install_agent.py)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from controller.agent_bundle import AgentBundle
from controller.agent_install import (
    AgentInstall,
    agent_url,
    failure_text,
    install_argv,
    parse_report,
)
from controller.client.errors import UsageProblem
from controller.crypto import SecretBox
from controller.db import db
from controller.job_params import validate_params
from controller.lanes import WORKER_RUNNERS, Lane
from controller.models import Host
from controller.transports import AgentSwitch, HostSpec, HostTransport
from shared.actions import WORKER_ACTIONS, InstallAgentRequest, job_action
from shared.errors import OperationError, ValidationError
from shared.executor import CommandResult
from shared.results import OperationResult
from tests.controller_client import Controller
from tests.unit.test_lanes import Sent

REPORT = {"version": "0.2.0", "previous": "0.1.0", "changed": True, "token": "written",
          "fingerprint": "sha256:" + "ab" * 32, "listen": "0.0.0.0:8587",
          "rolled_back": False, "service": "daemon"}
OPTIONS = {"concurrency": 20, "timeout_s": 600}


def line(**changes: Any) -> str:
    """install.sh's last line with some fields changed."""
    return "RELAYFLEET-INSTALL " + json.dumps({**REPORT, **changes})


def spec(**changes: Any) -> HostSpec:
    """An SSH host of the inventory."""
    values: dict[str, Any] = {"host_id": 1, "name": "pbx-1", "address": "192.0.2.10",
                              "transport": "ssh", "ssh_username": "rflab",
                              "ssh_private_key": "KEY", "ssh_host_key": "ssh-ed25519 AAAA",
                              "ssh_sudo": True}
    return HostSpec(**{**values, **changes})


# -- params -------------------------------------------------------------------------------

def test_params_defaults_and_the_typed_request() -> None:
    public, secret = validate_params("install_agent", {}, OPTIONS)
    assert public == {"version": None, "port": 8587, "rotate_token": False} and secret is None
    request = job_action("install_agent").stored(
        {"version": "0.2.0rc1", "port": 9000, "rotate_token": True}, None)
    assert request == InstallAgentRequest("0.2.0rc1", 9000, True)


@pytest.mark.parametrize(("params", "field"), [
    ({"version": "../../etc"}, "params.version"),
    ({"version": "0.2.0; reboot"}, "params.version"),
    ({"version": "0.2.0\n"}, "params.version"),
    ({"version": "0.2.0+local"}, "params.version"),
    ({"version": "01.2"}, "params.version"),
    ({"version": "1" * 65}, "params.version"),
    ({"port": 0}, "params.port"),
    ({"port": 65536}, "params.port"),
    ({"port": 1.5}, "params.port"),
    ({"rotate_token": "sometimes"}, "params.rotate_token"),
    ({"token": "x"}, "params.token"),
])
def test_bad_params_are_refused_by_field(params: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as refused:
        validate_params("install_agent", params, OPTIONS)
    assert field in refused.value.errors


def test_it_has_a_dry_run_and_needs_an_admin() -> None:
    validate_params("install_agent", {}, {**OPTIONS, "dry_run": True})
    assert job_action("install_agent").role == "admin"
    assert job_action("set_smarthost").role == "operator"


def test_its_time_box_is_300_s_at_least_and_by_default(memory_controller: Controller) -> None:
    site = memory_controller.site(memory_controller.tenant("Acme"), "Leeds")
    memory_controller.host(site, "pbx-1")
    short = memory_controller.post("/v1/jobs", {"action": "install_agent",
                                                "target": {"all": True},
                                                "options": {"timeout_s": 120}})
    assert short.status == 422, short.json
    assert "install_agent needs at least 300 s per host" in json.dumps(short.json)
    given = memory_controller.start_job({"action": "install_agent", "target": {"all": True}})
    assert memory_controller.ok("GET", f"/v1/jobs/{given}")["options"]["timeout_s"] == 300
    other = memory_controller.start_job({"action": "collect_status", "target": {"all": True}})
    assert memory_controller.ok("GET", f"/v1/jobs/{other}")["options"]["timeout_s"] == 120


def test_every_worker_action_has_a_runner() -> None:
    assert set(WORKER_RUNNERS) == set(WORKER_ACTIONS)


def test_an_operator_token_may_not_start_it(memory_controller: Controller) -> None:
    site = memory_controller.site(memory_controller.tenant("Acme"), "Leeds")
    memory_controller.host(site, "pbx-1")
    operator = memory_controller.issue("operator")
    answer = memory_controller.post("/v1/jobs", {"action": "install_agent",
                                                 "target": {"all": True}}, token=operator)
    assert answer.status == 403, answer.json
    assert "admin role" in answer.json["message"]


# -- install.sh's report line and command line --------------------------------------------

def test_the_report_is_the_last_line_of_its_kind() -> None:
    out = "\n".join(["installing...", line(version="0.1.9"), "more", line(), ""])
    report = parse_report(out)
    assert report is not None and report.version == "0.2.0" and report.previous == "0.1.0"
    assert not report.kept_token and report.service == "daemon" and report.port == 8587
    assert parse_report(line(listen="[::]:9000")).port == 9000  # type: ignore[union-attr]
    assert parse_report(line(token="kept", previous=None)).kept_token  # type: ignore[union-attr]


@pytest.mark.parametrize("out", [
    "", "RELAYFLEET-INSTALL not json", line(token="printed-token"),
    "RELAYFLEET-INSTALL " + json.dumps({"version": "0.2.0"}),
    "RELAYFLEET-INSTALL [1, 2]",
])
def test_a_report_that_is_not_the_documented_one_is_none(out: str) -> None:
    assert parse_report(out) is None


def test_the_command_line_carries_no_token() -> None:
    bundle = AgentBundle(Path("/b/relayfleet-agent-0.2.0.tar.gz"), "0.2.0", "cd" * 32, 10)
    argv = install_argv("/tmp/x", bundle, InstallAgentRequest(None, 9000, True),
                        spec(mta_kind="postfix", mta_flavour="rhel"), 230)
    # (``timeout`` ends install.sh before the host's time box cuts the connection under it)
    assert argv == ["timeout", "-k", "60", "230", "sh", "/tmp/x/install.sh", "--bundle",
                    "/tmp/x/relayfleet-agent-0.2.0.tar.gz", "--sha256", "cd" * 32,
                    "--token-stdin", "--rotate-token", "--listen", "0.0.0.0:9000", "--mta",
                    "postfix", "--flavour", "rhel"]
    plain = install_argv("/tmp/x", bundle, InstallAgentRequest(), spec(), 230)
    assert "--rotate-token" not in plain and "0.0.0.0:8587" in plain


def test_agent_urls() -> None:
    assert agent_url("192.0.2.10", 8587) == "https://192.0.2.10:8587"
    assert agent_url("2001:db8::1", 8587) == "https://[2001:db8::1]:8587"
    assert agent_url("pbx.example.net", 443) == "https://pbx.example.net:443"


def test_failure_messages_say_what_happened() -> None:
    rolled = CommandResult(("sh",), 3, line(rolled_back=True).encode(), b"health failed", 1.0)
    text = failure_text(rolled, parse_report(rolled.stdout.decode()), "0.0.9")
    assert text.startswith("the new version failed its health check and was rolled back to "
                           "0.1.0")
    assert text.endswith("see /var/log/relayfleet-agent.log on the host")
    under_systemd = CommandResult(("sh",), 3, line(rolled_back=True, service="systemd")
                                  .encode(), b"", 1.0)
    assert failure_text(under_systemd, parse_report(under_systemd.stdout.decode()), None
                        ).endswith("see journalctl -u relayfleet-agent on the host")
    bare = CommandResult(("sh",), 3, b"", b"", 1.0)
    assert "rolled back to 0.0.9" in failure_text(bare, None, "0.0.9")
    stopped = CommandResult(("timeout",), 124, b"", b"waiting for the agent", 230.0)
    assert failure_text(stopped, None, None, 230).startswith(
        "install.sh did not finish within 230 s and was stopped (give the job a longer "
        "timeout_s)")
    usage = CommandResult(("sh",), 2, b"", b"unknown option --frob", 0.1)
    assert failure_text(usage, None, None) == ("install.sh refused its command line (exit 2): "
                                               "unknown option --frob")
    busy = CommandResult(("sh",), 4, b"", b"install.sh: busy", 0.1)
    assert failure_text(busy, None, None).startswith("another change is running on this host")
    other = CommandResult(("sh",), 1, b"", b"python3 not found: install python3", 0.1)
    assert "exit 1" in failure_text(other, None, None)


def test_a_host_without_an_ssh_login_is_refused_before_anything_runs(tmp_path: Path) -> None:
    agent_host = spec(transport="agent", ssh_private_key=None, ssh_password=None)
    runner = AgentInstall(agent_host, None, bundle_dir=tmp_path, seal=str)
    with pytest.raises(OperationError) as refused:
        runner.run("install_agent", InstallAgentRequest(), dry_run=False, timeout_s=60)
    assert refused.value.message.startswith("install_agent needs the host's SSH login: no "
                                            "SSH key or password")
    unpinned = AgentInstall(spec(ssh_host_key=None), None, bundle_dir=tmp_path, seal=str)
    with pytest.raises(OperationError, match="no SSH host key is pinned"):
        unpinned.run("install_agent", InstallAgentRequest(), dry_run=False, timeout_s=60)


# -- the lane records the switch with the result, or only the agent's new token ------------

class ScriptedInstall(HostTransport):
    """A runner that answers as scripted and proposes a switch to the agent: checked (the
    success), or not (the agent got the new token, then failed its check)."""

    def __init__(self, spec_: HostSpec, pool: Any, *, settings: Any, seal: Any,
                 lock_owner: str | None, ok: bool, token: str) -> None:
        self.spec, self.ok = spec_, ok
        self.agent_switch = AgentSwitch("https://192.0.2.10:8587", "ab" * 32, seal(token),
                                        checked=ok)

    def run(self, action: str, request: Any, *, dry_run: bool,
            timeout_s: float) -> OperationResult:
        """The scripted outcome: a success, or the failed check raised."""
        if not self.ok:
            raise OperationError("the agent at https://192.0.2.10:8587 answers, but its "
                                 "status failed; the host stays on its transport")
        return OperationResult(action, ok=True, data={"version": "0.2.0", "token": "written"})

    def close(self) -> None:
        """Nothing to close."""


@pytest.mark.parametrize("ok", [True, False])
def test_the_switch_is_recorded_with_a_success_and_a_new_token_always(
        memory_controller: Controller, ok: bool, caplog: pytest.LogCaptureFixture) -> None:
    controller = memory_controller
    site = controller.site(controller.tenant("Acme"), "Leeds")
    before = controller.host(site, "pbx-1")
    host_id = int(before["id"])
    job = controller.start_job({"action": "install_agent", "target": {"all": True}})
    token = "the-fresh-agent-token-" + "x" * 20

    def runner(spec_: HostSpec, pool: Any, **kwargs: Any) -> HostTransport:
        return ScriptedInstall(spec_, pool, ok=ok, token=token, **kwargs)

    with controller.app.app_context(), caplog.at_level(logging.INFO, "relayfleet.worker"):
        Lane(job, 0, send=Sent(), runners={"install_agent": runner}).run()
        row = db.session.execute(select(Host).where(Host.id == host_id)).scalar_one()
        box: SecretBox = controller.app.extensions["relayfleet_secrets"]
        opened = box.open(row.agent_token_sealed)
    doc = controller.ok("GET", f"/v1/jobs/{job}")
    status = "succeeded" if ok else "failed"
    assert doc["results"][0]["status"] == status
    assert token not in json.dumps(doc) and token not in caplog.text
    # the agent has the new token either way: the controller keeps it
    assert opened == token
    if ok:
        assert (row.transport, row.agent_url) == ("agent", "https://192.0.2.10:8587")
        assert row.agent_tls_fingerprint == "ab" * 32
    else:
        assert (row.transport, row.agent_url) == (before["transport"],
                                                  before["agent"]["url"])
    # the worker's record of the unit carries its job, host and status as fields
    (recorded,) = [r for r in caplog.records
                   if getattr(r, "status", None) == status and hasattr(r, "host")]
    assert (getattr(recorded, "job_id", None), getattr(recorded, "host", None)) == (
        job, host_id)


def test_the_console_offers_it_to_admins_only(memory_controller: Controller) -> None:
    from tests.unit.test_console_launch_pages import Browser

    admin = Browser(memory_controller, memory_controller.admin).page("/ui/launch")
    operator = Browser(memory_controller, memory_controller.issue("operator")).page("/ui/launch")
    assert "action=install_agent" in admin
    assert "action=install_agent" not in operator and "action=set_smarthost" in operator


def test_the_cli_says_what_each_host_got() -> None:
    from controller.client.summaries import summarize

    done = {"status": "succeeded", "data": {"version": "0.2.0", "previous": "0.1.0",
                                            "token": "kept", "agent_url": "https://h:8587"}}
    assert summarize("install_agent", done) == ("agent 0.1.0 → 0.2.0, token kept; now via "
                                                "https://h:8587")
    dry = {"status": "succeeded", "data": {"dry_run": True, "version": "0.2.0",
                                           "previous": None, "transport": "ssh"}}
    assert summarize("install_agent", dry) == "would install agent 0.2.0 (installed: none)"


def test_the_cli_starts_it_once_confirmed(memory_controller: Controller) -> None:
    from tests.unit.test_cli_jobs import invoke, wsgi_cli

    site = memory_controller.site(memory_controller.tenant("Acme"), "lyon")
    memory_controller.host(site, "pbx-1")
    state = wsgi_cli(memory_controller)
    with pytest.raises(UsageProblem, match="no terminal to ask on"):
        invoke(state, "hosts", "install-agent", "--site", "lyon", "--no-wait")
    assert memory_controller.ok("GET", "/v1/jobs")["items"] == []
    result = invoke(state, "hosts", "install-agent", "--site", "lyon", "--version", "0.2.0",
                    "--port", "9000", "--rotate-token", "--yes", "--no-wait")
    assert result.return_value == 0, result.output
    job = memory_controller.ok("GET", f"/v1/jobs/{int(result.output.split()[0])}")
    assert job["action"] == "install_agent"
    assert job["params"] == {"version": "0.2.0", "port": 9000, "rotate_token": True}
    assert job["options"]["timeout_s"] == 600
    # a dry run asks nothing
    dry = invoke(state, "hosts", "install-agent", "--site", "lyon", "--dry-run", "--no-wait")
    assert dry.return_value == 0, dry.output
