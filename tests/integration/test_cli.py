"""The installed ``relayfleet`` command (a subprocess, as an operator runs it) against a real
API server (gunicorn), worker, Redis and lab hosts: a mixed fleet imported from CSV (all
rows or none, bad rows named by their line), the seed story (deferred voicemail, a
smarthost set on the site, a flush that delivers it), a cut-off host named by a flush that
exits 1, refused tokens and an unreachable controller (exit 3), and ``--json`` output equal
to the API's own job document.

The steps build on each other and run in file order on one fleet.
"""

from __future__ import annotations

import csv
import io
import json
import re
import secrets
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.lab.enrol import SshLogin, host_body
from tests.lab.lab import SINK_PORT, Lab, LabHost
from tests.lab.services import (
    ApiServer,
    ControllerStack,
    RelayfleetCli,
    free_port,
    lab_controller,
)

pytestmark = [pytest.mark.lab, pytest.mark.slow]

#: (lab name, MTA, transport): sendmail through its agent, sendmail and Postfix over SSH
FLEET = [("clisa", "sendmail", "agent"), ("cliss", "sendmail", "ssh"),
         ("clipf", "postfix", "ssh")]
TENANT, SITE = "Acme", "Lyon"
#: the lab's smarthost sink, as an operator types it
RELAY = f"smarthost.lab.test:{SINK_PORT}"
#: columns in an order of their own and in mixed case (both are free)
COLUMNS = ["Name", "Transport", "SITE", "address", "kind", "flavour", "tags", "agent_url",
           "agent_token_file", "agent_tls_fingerprint", "ssh_user", "ssh_key_file",
           "ssh_host_key", "ssh_sudo"]


@dataclass
class CliFleet:
    """The lab hosts, the controller stack and API server, the CLI, the CSV's directory."""

    stack: ControllerStack
    server: ApiServer
    cli: RelayfleetCli
    hosts: dict[str, LabHost]
    bodies: dict[str, dict[str, Any]]
    csv_dir: Path
    #: what earlier steps learnt (host ids by name)
    ids: dict[str, int] = field(default_factory=dict)

    def api(self, path: str) -> Any:
        """GET ``path`` from the API server with the admin token; the decoded answer."""
        request = urllib.request.Request(
            self.server.url + path,
            headers={"Authorization": f"Bearer {self.stack.controller.admin}"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.loads(answer.read())


@pytest.fixture(scope="module")
def fleet(lab: Lab, client_keys: dict[str, tuple[str, str]], redis_server: Any,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliFleet]:
    """Three lab hosts with their agent or sshd running (nothing enrolled yet), the agent
    token and SSH key in files next to where the CSV goes, and an API server process."""
    workdir = tmp_path_factory.mktemp("cli")
    private, public = client_keys["ed25519"]
    csv_dir = workdir / "fleet"
    (csv_dir / "keys").mkdir(parents=True)
    (csv_dir / "tokens").mkdir()
    key_file = csv_dir / "keys" / "pbx_ed25519"
    key_file.write_text(private)
    key_file.chmod(0o600)
    with lab_controller(lab, redis_server, workdir, 4) as (stack, made):
        hosts, bodies = {}, {}
        for name, mta, transport in FLEET:
            host = lab.add_host(name, "debian", mta=mta)
            made.append(host)
            body = host_body(host, transport, kind=mta, login=SshLogin("root", private, public))
            if transport == "agent":
                token_file = csv_dir / "tokens" / f"{name}.token"
                token_file.write_text(body["agent"]["token"] + "\n")
                token_file.chmod(0o600)
            hosts[host.fqdn], bodies[host.fqdn] = host, body
        admin = workdir / "admin.token"
        admin.write_text(stack.controller.admin + "\n")
        admin.chmod(0o600)
        with ApiServer(stack.env, workdir / "serve.log") as server:
            yield CliFleet(stack, server, RelayfleetCli(server.url, admin, workdir / "home"),
                           hosts, bodies, csv_dir)


def csv_cells(fleet: CliFleet, host: str, /, **changes: str) -> list[str]:
    """One CSV row (in :data:`COLUMNS` order) for a host, from its POST /v1/hosts body;
    ``changes`` replace cells (by lower-case column name)."""
    body = fleet.bodies[host]
    short = host.split(".", maxsplit=1)[0]
    cells = {"name": host, "transport": body["transport"], "site": SITE,
             "address": body["address"], "kind": body["mta"]["kind"],
             "flavour": body["mta"]["flavour"], "tags": f"pbx;{body['mta']['kind']} lyon"}
    if body["transport"] == "agent":
        cells.update(agent_url=body["agent"]["url"],
                     agent_token_file=f"tokens/{short}.token",
                     agent_tls_fingerprint=body["agent"]["tls_fingerprint"])
    else:
        cells.update(ssh_user=body["ssh"]["username"], ssh_key_file="keys/pbx_ed25519",
                     ssh_host_key=body["ssh"]["host_key"], ssh_sudo="no")
    cells.update(changes)
    return [cells.get(column.lower(), "") for column in COLUMNS]


def csv_line(cells: list[str]) -> str:
    """One CSV record as a line (quoted where needed)."""
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(cells)
    return out.getvalue()


def write_csv(fleet: CliFleet, file_name: str, lines: list[str]) -> Path:
    """The header and ``lines`` as ``file_name`` in the CSV directory."""
    path = fleet.csv_dir / file_name
    path.write_text("\n".join([csv_line(COLUMNS), *lines]) + "\n")
    return path


def bare(fingerprint: str) -> str:
    """A SHA-256 fingerprint as hex digits alone (``sha256:AB:CD...`` -> ``abcd...``)."""
    return fingerprint.lower().removeprefix("sha256:").replace(":", "")


def subjects(lab: Lab) -> set[str]:
    """The Subject of every message the lab's smarthost sink accepted."""
    return {next((ln[9:] for ln in m["data"].splitlines() if ln.startswith("Subject: ")), "")
            for m in lab.smarthost.messages()}


def wait_delivered(lab: Lab, wanted: set[str], timeout: float = 60) -> None:
    """Wait until every subject in ``wanted`` reached the sink."""
    deadline = time.monotonic() + timeout
    while not wanted <= subjects(lab) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert wanted <= subjects(lab), sorted(wanted - subjects(lab))


def test_csv_import_is_all_rows_or_none_with_bad_rows_named_by_line(fleet: CliFleet) -> None:
    cli = fleet.cli
    for args in (["tenants", "add", TENANT], ["sites", "add", SITE, "--tenant", TENANT]):
        made = cli(*args)
        assert made.returncode == 0, (args, made.stdout, made.stderr)
    agent, ssh_sendmail, ssh_postfix = (f"{name}.lab.test" for name, _, _ in FLEET)

    # Two rows the CLI finds wrong itself (a key file that is not there, a site that does
    # not exist): both named by their line in the file, comment and blank lines counted.
    bad = write_csv(fleet, "bad.csv", [
        "# Acme Lyon: the PBXs",                                                   # line 2
        csv_line(csv_cells(fleet, agent)),                                         # line 3
        csv_line(csv_cells(fleet, ssh_sendmail, name="pbx-nokey.lab.test",
                           ssh_key_file="keys/missing_ed25519")),                  # line 4
        "",                                                                        # line 5
        csv_line(csv_cells(fleet, ssh_sendmail)),                                  # line 6
        csv_line(csv_cells(fleet, agent, name="pbx-nosite.lab.test",
                           site="Nowhere")),                                       # line 7
        csv_line(csv_cells(fleet, ssh_postfix)),                                   # line 8
    ])
    answer = cli("hosts", "import", str(bad))
    assert answer.returncode == 2, (answer.stdout, answer.stderr)
    assert re.search(r"line 4 \(pbx-nokey\.lab\.test\): ssh_key_file: .*missing_ed25519",
                     answer.stderr), answer.stderr
    assert re.search(r"line 7 \(pbx-nosite\.lab\.test\): site: .*Nowhere", answer.stderr), (
        answer.stderr)
    assert not re.search(r"\bline [3568]\b", answer.stderr), answer.stderr
    assert fleet.api("/v1/hosts")["total"] == 0

    # A row only the controller can refuse (its egress policy: a link-local agent URL, the
    # cloud metadata address): exit 3, the API's error mapped back to the row's line.
    refused = write_csv(fleet, "refused.csv", [
        csv_line(csv_cells(fleet, agent)),                                         # line 2
        csv_line(csv_cells(fleet, agent, name="pbx-metadata.lab.test",
                           agent_url="https://169.254.169.254:8587")),             # line 3
        csv_line(csv_cells(fleet, ssh_postfix)),                                   # line 4
    ])
    answer = cli("hosts", "import", str(refused))
    assert answer.returncode in (2, 3), (answer.stdout, answer.stderr)
    assert re.search(r"line 3 \(pbx-metadata\.lab\.test\): agent_url: .*egress",
                     answer.stderr), answer.stderr
    assert not re.search(r"\bline [24]\b", answer.stderr), answer.stderr
    assert fleet.api("/v1/hosts")["total"] == 0

    good = write_csv(fleet, "fleet.csv", [
        "# Acme Lyon: the PBXs", csv_line(csv_cells(fleet, agent)), "",
        csv_line(csv_cells(fleet, ssh_sendmail)), csv_line(csv_cells(fleet, ssh_postfix))])
    answer = cli("hosts", "import", str(good))
    assert answer.returncode == 0, (answer.stdout, answer.stderr)
    assert "created 3 hosts" in answer.stdout, answer.stdout
    for name in fleet.hosts:
        assert name in answer.stdout
    items = {h["name"]: h for h in fleet.api("/v1/hosts")["items"]}
    assert sorted(items) == sorted(fleet.hosts)
    for name, host in items.items():
        body = fleet.bodies[name]
        assert host["transport"] == body["transport"]
        assert host["address"] == body["address"]
        assert host["mta"]["kind"] == body["mta"]["kind"]
        assert sorted(host["tags"]) == sorted(["pbx", body["mta"]["kind"], "lyon"]), host
        if host["transport"] == "agent":
            assert host["agent"]["url"] == body["agent"]["url"]
            assert host["agent"]["has_token"] is True
            assert bare(host["agent"]["tls_fingerprint"]) == bare(
                body["agent"]["tls_fingerprint"])
        else:
            assert host["ssh"]["host_key"] == body["ssh"]["host_key"]
            assert host["ssh"]["auth"] == "key" and host["ssh"]["username"] == "root"
        fleet.ids[name] = host["id"]


def test_seed_story_voicemail_delivered_after_smarthost_set_and_flush(
        fleet: CliFleet, lab: Lab) -> None:
    cli = fleet.cli
    assert len(fleet.ids) == len(FLEET), "the CSV import (the test above) enrols the fleet"
    stamp = secrets.token_hex(4)
    wanted = {f"voicemail {stamp} {name}" for name in fleet.hosts}
    for name, host in fleet.hosts.items():
        host.send_mail(["me@ourtest.com"], subject=f"voicemail {stamp} {name}")
    for host in fleet.hosts.values():
        host.wait_deferred()

    # --json (before the command): the API's job document, exactly.
    status = cli("--json", "status", "--all")
    assert status.returncode == 0, (status.stdout, status.stderr)
    doc = json.loads(status.stdout)
    assert doc == fleet.api(f"/v1/jobs/{doc['id']}")
    assert doc["action"] == "collect_status" and doc["status"] == "succeeded"
    assert all(r["data"]["queue"]["count"] >= 1 for r in doc["results"]), doc["results"]

    holding = cli("fleet", "--holding-mail")
    assert holding.returncode == 0, holding.stderr
    assert "3 holding mail" in holding.stdout, holding.stdout
    for name in fleet.hosts:
        assert name in holding.stdout, holding.stdout

    for name in ("clisa.lab.test", "clipf.lab.test"):
        queue = cli("queue", name)
        assert queue.returncode == 0, (queue.stdout, queue.stderr)
        assert re.search(r"\b1 queued\b", queue.stdout), queue.stdout
        assert f"voicemail@{name}" in queue.stdout and "me@ourtest.com" in queue.stdout

    # A viewer may look but not change: the API's own words, exit 3, no job made.
    jobs_before = fleet.api("/v1/jobs")["total"]
    made = cli("tokens", "create", "--role", "viewer", "-q")
    assert made.returncode == 0, made.stderr
    viewer = fleet.csv_dir.parent / "viewer.token"
    viewer.write_text(made.stdout)
    refused = cli("smarthost", "set", RELAY, "--no-mx", "--site", SITE, token_file=viewer)
    assert refused.returncode == 3, (refused.stdout, refused.stderr)
    assert "this needs a token with the operator role" in refused.stderr, refused.stderr
    assert fleet.api("/v1/jobs")["total"] == jobs_before

    # --dry-run: each host's diff, nothing changed.
    before = {name: host.file_snapshot("main.cf" if host.mta == "postfix" else "sendmail.mc")
              for name, host in fleet.hosts.items()}
    dry = cli("smarthost", "set", RELAY, "--no-mx", "--site", SITE, "--dry-run")
    assert dry.returncode == 0, (dry.stdout, dry.stderr)
    for name in fleet.hosts:
        assert f"--- {name}\n" in dry.stdout, dry.stdout
    assert "+define(`SMART_HOST', ``[smarthost.lab.test]'')" in dry.stdout, dry.stdout
    assert re.search(rf"^\+relayhost = \[smarthost\.lab\.test\]:{SINK_PORT}$", dry.stdout,
                     re.M), dry.stdout
    assert {name: host.file_snapshot(*before[name]) for name, host in
            fleet.hosts.items()} == before

    changed = cli("smarthost", "set", RELAY, "--no-mx", "--site", SITE)
    assert changed.returncode == 0, (changed.stdout, changed.stderr)
    for name in fleet.hosts:
        assert re.search(rf"^{re.escape(name)}: succeeded — changed; now "
                         rf"\[smarthost\.lab\.test\]:{SINK_PORT}", changed.stdout, re.M), (
            changed.stdout)

    # --json after the command this time.
    flushed = cli("flush", "--all", "--json")
    assert flushed.returncode == 0, (flushed.stdout, flushed.stderr)
    doc = json.loads(flushed.stdout)
    assert doc["action"] == "flush_queue" and doc["status"] == "succeeded", doc
    assert doc == fleet.api(f"/v1/jobs/{doc['id']}")
    wait_delivered(lab, wanted)

    after = cli("fleet", "--holding-mail")
    assert after.returncode == 0, after.stderr
    assert "0 holding mail" in after.stdout and "no hosts hold mail" in after.stdout, (
        after.stdout)
    for name in fleet.hosts:
        assert name not in after.stdout, after.stdout

    # Each maillog, through the controller: the voicemail Sent through the smarthost (the
    # submission's own local "Sent" to the MTA does not count).
    for name in fleet.hosts:
        log = cli("log", name)
        assert log.returncode == 0, (log.stdout, log.stderr)
        assert re.search(r"^\S+ \S+ .*to=<?me@ourtest\.com>?, .*relay=smarthost\.lab\.test\.?"
                         r"[\[ ].*(stat=Sent|status=sent)", log.stdout, re.M), log.stdout
        assert re.search(r"^[1-9]\d* sent, ", log.stdout, re.M), log.stdout


def test_a_cut_off_host_makes_the_flush_exit_1_and_is_named(fleet: CliFleet,
                                                           lab: Lab) -> None:
    cli = fleet.cli
    assert len(fleet.ids) == len(FLEET), "the CSV import (the first test) enrols the fleet"
    cut = fleet.hosts["clisa.lab.test"]
    cut.stop_agent()  # its agent's service is down: the controller cannot reach it
    stamp = secrets.token_hex(4)
    others = {name: host for name, host in fleet.hosts.items() if host is not cut}
    for name, host in others.items():
        host.send_mail(["me@ourtest.com"], subject=f"voicemail {stamp} {name}",
                       queue_only=True)

    flushed = cli("flush", "--all")
    assert flushed.returncode == 1, (flushed.stdout, flushed.stderr)
    assert re.search(r"^clisa\.lab\.test: unreachable — .*cannot reach the agent",
                     flushed.stdout, re.M), flushed.stdout
    for name in others:
        assert re.search(rf"^{re.escape(name)}: succeeded — ", flushed.stdout, re.M)
    # The final table: failures first, each with its reason.
    title = flushed.stdout.index("flush_queue: partial")
    rows = [line for line in flushed.stdout[title:].splitlines()
            if line.split(" ", 1)[0] in fleet.hosts]
    assert rows[0].startswith("clisa.lab.test") and "unreachable" in rows[0], rows
    assert "cannot reach the agent" in rows[0], rows
    assert re.search(r"job \d+ partial: 2 succeeded, 1 unreachable", flushed.stdout), (
        flushed.stdout)
    assert "relayfleet jobs retry" in flushed.stderr, flushed.stderr
    wait_delivered(lab, {f"voicemail {stamp} {name}" for name in others})


def test_refused_tokens_and_an_unreachable_controller_exit_3(fleet: CliFleet,
                                                            tmp_path: Path) -> None:
    cli = fleet.cli
    whoami = cli("whoami")
    assert whoami.returncode == 0, whoami.stderr
    assert "admin" in whoami.stdout, whoami.stdout

    wrong = tmp_path / "wrong.token"
    wrong.write_text("rf_" + secrets.token_urlsafe(32) + "\n")
    for args in (["jobs", "list"], ["flush", "--all"]):
        answer = cli(*args, token_file=wrong)
        assert answer.returncode == 3, (args, answer.stdout, answer.stderr)
        assert "missing, wrong or revoked bearer token" in answer.stderr, answer.stderr
        assert "try: check the token" in answer.stderr, answer.stderr
        assert answer.stdout == ""

    closed = f"http://127.0.0.1:{free_port()}"
    answer = cli("status", "--all", api_url=closed)
    assert answer.returncode == 3, (answer.stdout, answer.stderr)
    assert f"controller unreachable at {closed}" in answer.stderr, answer.stderr
