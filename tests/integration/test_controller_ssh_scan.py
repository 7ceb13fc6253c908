"""The controller asks a lab host's real sshd for its key (``POST /v1/ssh/host-key-scan``)
and pins a reinstalled host's new key (``PUT /v1/hosts/{id}/ssh/host-key``): the key and
fingerprint are the ones ssh-keygen reads from the host's key file, a job refuses the
changed key until it is pinned and then runs, and a port without sshd is a 502."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from controller.lanes import Lane
from tests.controller_client import Controller
from tests.lab.enrol import SshLogin, host_body
from tests.lab.lab import Lab, LabHost

pytestmark = [pytest.mark.lab, pytest.mark.slow]


@pytest.fixture
def controller(memory_controller: Controller, lab: Lab) -> Controller:
    """A controller (SQLite, in-memory broker) whose egress allow-list is the lab subnet."""
    return Controller.create(egress_allow=lab.network)


def keygen_fingerprint(key_file: Path) -> str:
    """The SHA256 fingerprint ssh-keygen prints for a key file."""
    out = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(key_file)],
                         capture_output=True, text=True, check=True).stdout
    return out.split()[1]


def scan(controller: Controller, host: LabHost, port: int = 22) -> Any:
    return controller.post("/v1/ssh/host-key-scan", {"address": host.address, "port": port})


def run_job(controller: Controller, host_id: int) -> dict[str, Any]:
    """collect_status on one host, its lane run here over real SSH; the host's result."""
    job = controller.start_job({"action": "collect_status", "target": {"hosts": [host_id]},
                                "options": {"timeout_s": 60}})
    with controller.app.app_context():
        Lane(job, 0, send=lambda *_a, **_k: None).run()
    result: dict[str, Any] = controller.ok("GET", f"/v1/jobs/{job}")["results"][0]
    return result


def test_scan_reads_the_real_key_and_pin_re_enrols_a_reinstalled_host(
        controller: Controller, make_host: Callable[..., LabHost],
        client_keys: dict[str, tuple[str, str]]) -> None:
    host = make_host("debian")
    private, public = client_keys["ed25519"]
    body = host_body(host, "ssh", login=SshLogin("root", private, public))
    site = controller.site(controller.tenant("Acme"), "Leeds")
    host_id = controller.ok("POST", "/v1/hosts", {**body, "site_id": site})["id"]
    key_file = host.root / "ssh_host_ed25519_key"

    answer = scan(controller, host)
    assert answer.status == 200, answer
    old_print = keygen_fingerprint(key_file)
    assert answer.json == {"address": host.address, "port": 22,
                           "host_key": host.ssh_host_key, "fingerprint": old_print}
    assert run_job(controller, host_id)["status"] == "succeeded"

    # The host is reinstalled: sshd comes back with a new key.
    host.stop_sshd()
    for path in (key_file, Path(f"{key_file}.pub")):
        path.unlink()
    host.ssh_host_key = host.start_sshd()
    result = run_job(controller, host_id)
    assert result["status"] == "unreachable" and "HOST KEY CHANGED" in result["error"], result

    answer = scan(controller, host)
    new_print = keygen_fingerprint(key_file)
    assert answer.status == 200 and new_print != old_print, answer
    assert (answer.json["host_key"], answer.json["fingerprint"]) == (host.ssh_host_key,
                                                                     new_print)
    doc = controller.ok("PUT", f"/v1/hosts/{host_id}/ssh/host-key",
                        {"host_key": answer.json["host_key"]})
    assert doc["ssh"]["host_key"] == host.ssh_host_key and doc["ssh"]["auth"] == "key"
    # The stored private key still logs in: nothing but the key was sent again.
    assert run_job(controller, host_id)["status"] == "succeeded"
    audit = controller.ok("GET", "/v1/audit?action=PUT /v1/hosts/{host_id}/ssh/host-key")
    assert audit["items"][0]["detail"] == {"change": "ssh host key pinned",
                                           "old_fingerprint": old_print,
                                           "new_fingerprint": new_print}


def test_scan_without_sshd_is_502_and_the_allow_list_applies(
        controller: Controller, make_host: Callable[..., LabHost]) -> None:
    host = make_host("debian", start=False)
    host.start_sshd()
    closed = scan(controller, host, port=2222)
    assert closed.status == 502, closed
    assert f"{host.address}:2222" in closed.json["message"]
    assert "connection refused" in closed.json["message"], closed
    host.stop_sshd()
    stopped = scan(controller, host)
    assert stopped.status == 502 and f"{host.address}:22" in stopped.json["message"], stopped
    elsewhere = Controller.create(egress_allow="192.0.2.0/24")
    refused = scan(elsewhere, host)
    assert refused.status == 422 and "egress policy" in refused.json["message"], refused
