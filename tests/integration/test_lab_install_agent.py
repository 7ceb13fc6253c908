"""install_agent on a lab site of SSH hosts (sendmail Debian- and CentOS-style, Postfix),
reached as the non-root sudo login with pinned host keys, through the real CLI, API, Redis
and Celery worker: the hosts become agent hosts, the seed story then runs through their
agents, a re-run changes nothing, an upgrade keeps the token, and a broken version is
rolled back with the host still on its agent. What install_agent refuses (another port than
the kept agent.toml's, a kept plain-HTTP agent.toml, a host whose change lock is held) it
refuses before install.sh runs: nothing on the host changes."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import select

from agent.config import certificate_fingerprint
from controller.agent_bundle import AgentBundle, agent_sources, build_bundle
from controller.db import db
from controller.models import Host
from shared.hostlock import LOCK_NAME
from tests.lab.agent_install import (
    WHEEL_CACHE,
    agent_pid,
    host_python,
    restart_worker,
    serve_bundles,
    stop_daemon,
)
from tests.lab.delivered import wait_for_subjects
from tests.lab.enrol import SshLogin, host_body
from tests.lab.lab import SINK_PORT, Lab, LabHost
from tests.lab.services import ApiServer, ControllerStack, RelayfleetCli, lab_controller

# (the CLI waits up to 900 s for a job: past pytest-timeout's 300 s default)
pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.timeout(1800)]

SMARTHOST = {"host": "smarthost.lab.test", "port": SINK_PORT, "mx": False}
#: (name, MTA, layout)
SITE = [("iasd", "sendmail", "debian"), ("iasc", "sendmail", "centos"),
        ("iapd", "postfix", "debian")]
FIRST, SECOND, BROKEN = "0.9.0", "0.9.1", "0.9.2"
#: an agent that starts and dies at once: its health check fails
BROKEN_CLI = b"import sys\n\n\ndef main() -> None:\n    sys.exit('broken on purpose')\n"
AGENT_TOML = "/etc/relayfleet/agent.toml"
TOKEN_FILE = "/etc/relayfleet/agent.token"


@dataclass
class Site:
    """The site's hosts, their ids, the controller, the CLI and the bundles."""

    stack: ControllerStack
    cli: RelayfleetCli
    hosts: list[tuple[LabHost, int]]
    bundles: dict[str, AgentBundle]
    #: each host's ``ssh`` object as enrolled (PATCH /v1/hosts needs it whole)
    logins: dict[int, dict[str, Any]]

    def rows(self) -> dict[int, Host]:
        """Every host row as stored now."""
        with self.stack.controller.app.app_context():
            db.session.expire_all()
            return {row.id: row for row in db.session.scalars(select(Host))}

    def install(self, *args: str) -> tuple[int, dict[str, Any]]:
        """``relayfleet --json hosts install-agent --site lab-site --yes ARGS``: exit code and
        the job document."""
        done = self.cli("--json", "hosts", "install-agent", "--site", "lab-site", "--yes",
                        *args, timeout=900)
        assert done.stdout.strip(), done.stderr
        return done.returncode, json.loads(done.stdout)

    def box(self) -> Any:
        """The controller's secret box."""
        return self.stack.controller.app.extensions["relayfleet_secrets"]

    def install_one(self, host_id: int, *args: str) -> tuple[int, dict[str, Any]]:
        """install_agent on one host through the CLI: exit code and that host's result."""
        done = self.cli("--json", "hosts", "install-agent", "--host", str(host_id), "--yes",
                        *args, timeout=900)
        assert done.stdout.strip(), done.stderr
        return done.returncode, results(json.loads(done.stdout))[host_id]

    def collect_status_succeeds(self, ids: list[int] | None = None) -> None:
        """collect_status through the controller works on ``ids`` (default: every host)."""
        controller = self.stack.controller
        status = controller.wait_job(controller.start_job(
            {"action": "collect_status",
             "target": {"hosts": ids or [i for _, i in self.hosts]}}))
        assert status["status"] == "succeeded", status["results"]

    def untouched(self, host: LabHost) -> dict[str, Any]:
        """What an install that was refused must leave as it was: the agent's process,
        token, configuration and version."""
        return {"pid": agent_pid(host), "token": host.fs(TOKEN_FILE).read_text(),
                "config": host.fs(AGENT_TOML).read_text(),
                "version": host.fs("/opt/relayfleet/current/VERSION").read_text()}


@pytest.fixture(scope="module")
def site(lab: Lab, client_keys: dict[str, tuple[str, str]], redis_server: Any,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """The three SSH hosts enrolled as the sudo login, three bundles (a good one, its next
    version, a broken one), an API server, and the CLI with an admin token."""
    user, _password = lab.ensure_ssh_user()
    private, public = client_keys["ed25519"]
    workdir = tmp_path_factory.mktemp("install-agent")
    bundle_dir = workdir / "bundles"
    with lab_controller(lab, redis_server, workdir, 7) as (stack, made):
        controller = stack.controller
        site_id = controller.site(controller.tenant("Lab"), "lab-site")
        enrolled, logins = [], {}
        for name, mta, layout in SITE:
            host = lab.add_host(name, layout, mta=mta)
            made.append(host)
            body = host_body(host, "ssh", login=SshLogin(user, private, public, sudo=True))
            host_id = int(controller.ok("POST", "/v1/hosts", {**body, "site_id": site_id})["id"])
            enrolled.append((host, host_id))
            logins[host_id] = body["ssh"]
        python = host_python(enrolled[0][0])
        bundles = {version: build_bundle(bundle_dir, version=version, pythons=(python,),
                                         cache_dir=WHEEL_CACHE)
                   for version in (FIRST, SECOND)}
        serve_bundles(stack, bundle_dir)
        admin = workdir / "admin.token"
        admin.write_text(controller.admin + "\n")
        admin.chmod(0o600)
        try:
            with ApiServer(stack.env, workdir / "serve.log") as server:
                yield Site(stack, RelayfleetCli(server.url, admin, workdir / "home"),
                           enrolled, bundles, logins)
        finally:
            for host, _ in enrolled:
                stop_daemon(host)


def results(job: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """A job's host results by host id."""
    return {r["host_id"]: r for r in job["results"]}


def test_1_a_dry_run_says_what_it_would_do_and_does_nothing(site: Site) -> None:
    code, job = site.install("--version", FIRST, "--dry-run")
    assert code == 0, job
    for host, host_id in site.hosts:
        data = results(job)[host_id]["data"]
        assert data["dry_run"] is True and data["version"] == FIRST, data
        assert data["previous"] is None and data["transport"] == "ssh"
        assert not host.fs("/opt/relayfleet/current").exists()
    assert {row.transport for row in site.rows().values()} == {"ssh"}
    # as an operator reads it
    done = site.cli("hosts", "install-agent", "--site", "lab-site", "--version", FIRST,
                    "--dry-run", timeout=900)
    assert done.returncode == 0, done.stderr
    for host, _ in site.hosts:
        assert any(host.fqdn in text and f"would install agent {FIRST} (installed: none)" in text
                   for text in done.stdout.splitlines()), done.stdout


def test_2_the_site_becomes_agent_hosts(site: Site) -> None:
    code, job = site.install("--version", FIRST)
    assert code == 0 and job["status"] == "succeeded", json.dumps(job["results"], indent=1)
    rows = site.rows()
    for host, host_id in site.hosts:
        result = results(job)[host_id]
        data = result["data"]
        assert result["changed"] is True
        assert data["version"] == FIRST and data["token"] == "written", data
        assert data["transport"] == "agent" and data["service"] == "daemon"
        row = rows[host_id]
        pinned = certificate_fingerprint(host.fs("/etc/relayfleet/agent.crt").read_text())
        assert row.transport == "agent"
        assert row.agent_url == f"https://{host.address}:8587"
        assert row.agent_tls_fingerprint == pinned.removeprefix("sha256:")
        token = host.fs("/etc/relayfleet/agent.token").read_text().strip()
        assert site.box().open(row.agent_token_sealed) == token
        assert row.ssh_username == "rflab" and row.ssh_private_key_sealed  # kept
        # the token is nowhere in the job's documents, nor in the worker's log
        assert token not in json.dumps(job)
        assert token not in site.stack.worker.log.read_text(errors="replace")
        assert host.fs("/opt/relayfleet/current/VERSION").read_text().strip() == FIRST


def test_3_the_seed_story_runs_through_the_agents(site: Site, lab: Lab) -> None:
    controller = site.stack.controller
    stamp = f"voicemail {time.time_ns()}"
    for host, _ in site.hosts:
        host.send_mail(["me@ourtest.com"], subject=f"{stamp} {host.name}")
    for host, _ in site.hosts:
        host.wait_deferred()
    ids = [host_id for _, host_id in site.hosts]
    job = controller.wait_job(controller.start_job(
        {"action": "set_smarthost", "target": {"hosts": ids}, "params": SMARTHOST}))
    assert job["status"] == "succeeded", json.dumps(job["results"], indent=1)[:4000]
    flush = controller.wait_job(controller.start_job(
        {"action": "flush_queue", "target": {"hosts": ids}}))
    assert flush["status"] == "succeeded", flush["results"]
    wait_for_subjects(lab, {f"{stamp} {host.name}" for host, _ in site.hosts})
    site.collect_status_succeeds()
    fleet = {item["host_id"]: item for item in controller.ok("GET", "/v1/fleet")["items"]}
    for host, host_id in site.hosts:
        assert fleet[host_id]["transport"] == "agent", fleet[host_id]
        assert fleet[host_id]["last"]["queue_count"] == 0
        assert fleet[host_id]["last"]["mta_kind"] == host.mta


def test_4_a_rerun_changes_nothing(site: Site) -> None:
    before = {host_id: agent_pid(host) for host, host_id in site.hosts}
    code, job = site.install("--version", FIRST)
    assert code == 0, job
    for host, host_id in site.hosts:
        result = results(job)[host_id]
        assert result["changed"] is False, result
        assert [step["name"] for step in result["steps"]] == ["check the agent"]
        assert agent_pid(host) == before[host_id]  # not restarted


def test_5_an_upgrade_keeps_the_token(site: Site) -> None:
    before = site.rows()
    tokens = {host_id: host.fs("/etc/relayfleet/agent.token").read_text()
              for host, host_id in site.hosts}
    code, job = site.install()  # the newest bundle: SECOND
    assert code == 0, json.dumps(job["results"], indent=1)
    after = site.rows()
    for host, host_id in site.hosts:
        data = results(job)[host_id]["data"]
        assert (data["previous"], data["version"], data["token"]) == (FIRST, SECOND, "kept")
        assert host.fs("/etc/relayfleet/agent.token").read_text() == tokens[host_id]
        assert after[host_id].agent_token_sealed == before[host_id].agent_token_sealed
        assert after[host_id].agent_tls_fingerprint == before[host_id].agent_tls_fingerprint
        assert host.fs("/opt/relayfleet/current/VERSION").read_text().strip() == SECOND
    # the agents answer as SECOND through the controller
    site.collect_status_succeeds()


def test_6_a_broken_version_is_rolled_back(site: Site) -> None:
    bundle_dir = site.bundles[FIRST].path.parent
    sources = [(name, BROKEN_CLI if name == "agent/cli.py" else data)
               for name, data in agent_sources()]
    build_bundle(bundle_dir, version=BROKEN, pythons=(host_python(site.hosts[0][0]),),
                 cache_dir=WHEEL_CACHE, agent_sources=sources)
    before = site.rows()
    code, job = site.install("--version", BROKEN)
    assert code == 1 and job["status"] == "failed", job
    after = site.rows()
    for host, host_id in site.hosts:
        result = results(job)[host_id]
        assert result["status"] == "failed"
        assert result["error"].startswith("the new version failed its health check and was "
                                          f"rolled back to {SECOND}"), result["error"]
        assert after[host_id].transport == "agent"
        assert after[host_id].agent_token_sealed == before[host_id].agent_token_sealed
        assert host.fs("/opt/relayfleet/current/VERSION").read_text().strip() == SECOND
    site.collect_status_succeeds()


def test_7_a_token_the_controller_lacks_needs_rotate_token(site: Site) -> None:
    host, host_id = site.hosts[0]
    # the host put back on SSH through the API: the agent's token is not the way in any more
    site.stack.controller.ok("PATCH", f"/v1/hosts/{host_id}",
                             {"transport": "ssh", "ssh": site.logins[host_id]})
    old_token = host.fs(TOKEN_FILE).read_text()
    code, result = site.install_one(host_id, "--version", SECOND)
    assert code == 1, result
    assert result["error"] == (
        "an agent is already installed with a token the controller does not have: rerun "
        "with rotate_token")
    assert site.rows()[host_id].transport == "ssh"

    code, result = site.install_one(host_id, "--version", SECOND, "--rotate-token")
    assert code == 0, result
    assert result["data"]["token"] == "rotated"
    new_token = host.fs(TOKEN_FILE).read_text()
    assert new_token != old_token
    row = site.rows()[host_id]
    assert row.transport == "agent" and site.box().open(row.agent_token_sealed) == new_token.strip()
    site.collect_status_succeeds([host_id])


def test_8_another_port_than_the_kept_config_is_refused_before_anything_changes(
        site: Site) -> None:
    host, host_id = site.hosts[1]
    before, row = site.untouched(host), site.rows()[host_id]
    # (--rotate-token: install.sh would replace the token first thing)
    code, result = site.install_one(host_id, "--version", SECOND, "--port", "8600",
                                    "--rotate-token")
    assert code == 1, result
    assert result["error"].startswith(
        f"the agent's {AGENT_TOML} says listen = '0.0.0.0:8587', not port 8600: rerun with "
        "port 8587"), result["error"]
    assert site.untouched(host) == before
    after = site.rows()[host_id]
    assert (after.agent_url, after.agent_token_sealed) == (row.agent_url,
                                                           row.agent_token_sealed)
    site.collect_status_succeeds([host_id])


def test_9_a_kept_plain_http_config_is_refused_before_anything_changes(site: Site) -> None:
    host, host_id = site.hosts[1]
    config = host.fs(AGENT_TOML)
    kept = config.read_text()
    plain = "".join(line + "\n" for line in kept.splitlines()
                    if not line.startswith(("tls_cert", "tls_key")))
    config.write_text("plain_http = true\n" + plain)
    try:
        before = site.untouched(host)
        code, result = site.install_one(host_id, "--version", SECOND, "--rotate-token")
        assert code == 1, result
        assert result["error"].startswith(
            f"the agent's {AGENT_TOML} serves plain HTTP (plain_http = true), and "
            "install_agent pins a TLS certificate"), result["error"]
        assert site.untouched(host) == before
    finally:
        config.write_text(kept)


def test_10_a_host_whose_change_lock_is_held_is_not_touched(site: Site) -> None:
    host, host_id = site.hosts[2]
    # someone else's change on the host (the lock MTA changes take, in the MTA's directory)
    lock = host.fs(f"/etc/postfix/{LOCK_NAME}")
    lock.mkdir()
    (lock / "since").write_text(str(int(time.time())))
    (lock / "owner").write_text("relayfleet-ops on the console")
    try:
        before = site.untouched(host)
        code, result = site.install_one(host_id, "--version", SECOND, "--rotate-token")
        assert code == 1, result
        assert result["error"].startswith("another change is running on this host"), (
            result["error"])
        assert site.untouched(host) == before
        assert (lock / "owner").read_text() == "relayfleet-ops on the console"
    finally:
        for item in lock.iterdir():
            item.unlink()
        lock.rmdir()
    # free again: the same install goes through, and lets the lock go
    code, result = site.install_one(host_id, "--version", SECOND, "--rotate-token")
    assert code == 0, result
    assert result["data"]["token"] == "rotated" and not lock.exists()
    assert "change lock" in [step["name"] for step in result["steps"]]


def test_11_a_token_installed_before_a_failed_check_is_kept(site: Site) -> None:
    host, host_id = site.hosts[0]
    row = site.rows()[host_id]
    old_token = site.box().open(row.agent_token_sealed)
    # The worker may reach only a network the lab is not on over HTTP (SSH is not
    # egress-policed): install.sh rotates the token, then the check from the worker fails.
    allowed = site.stack.env["RELAYFLEET_EGRESS_ALLOW"]
    restart_worker(site.stack, RELAYFLEET_EGRESS_ALLOW="loopback,192.0.2.0/24")
    try:
        code, result = site.install_one(host_id, "--version", SECOND, "--rotate-token")
    finally:
        restart_worker(site.stack, RELAYFLEET_EGRESS_ALLOW=allowed)
    assert code == 1 and result["status"] == "unreachable", result
    new_token = host.fs(TOKEN_FILE).read_text().strip()
    assert new_token != old_token
    after = site.rows()[host_id]
    # the controller has the token the agent has now; the host's record is otherwise as it was
    assert site.box().open(after.agent_token_sealed) == new_token
    assert (after.transport, after.agent_url, after.agent_tls_fingerprint) == (
        row.transport, row.agent_url, row.agent_tls_fingerprint)
    site.collect_status_succeeds([host_id])
