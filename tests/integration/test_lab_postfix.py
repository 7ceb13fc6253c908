"""The seed story and the safety of changes on real Postfix lab hosts (Debian's package,
Debian- and RHEL-style layouts), through the local executor inside the host and over SSH
to a host without Python; SMTP AUTH through a relay that requires STARTTLS first."""

from __future__ import annotations

import base64
import json
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import OpsRunner, ssh_target_for
from tests.lab.lab import REPO_ROOT, SINK_PORT, Lab, LabHost, sh

pytestmark = [pytest.mark.lab, pytest.mark.slow]

SMARTHOST = {"host": "smarthost.lab.test", "port": SINK_PORT, "mx": False}
VOICEMAIL_TO = "me@ourtest.com"
RELAY_PORT = 587
RELAY_USER = "pbx-0042@customer.example"
RELAY_PASSWORD = "Vm!x9#q:Zt&7+relay"


@pytest.fixture
def make_postfix_host(make_host: Callable[..., LabHost]) -> Callable[[str], LabHost]:
    """Fresh Postfix lab hosts for one test, removed when it ends."""
    return lambda layout="debian": make_host(layout, mta="postfix")


@pytest.fixture(params=["debian", "centos"])
def pf_host(request: pytest.FixtureRequest, make_postfix_host: Callable[[str], LabHost]
            ) -> LabHost:
    """A running Postfix lab host of each layout."""
    return make_postfix_host(request.param)


@pytest.fixture(params=["local", "ssh"])
def pf_ops(request: pytest.FixtureRequest, pf_host: LabHost,
           client_keys: dict[str, tuple[str, str]]) -> OpsRunner:
    """Operations on ``pf_host``: inside it, or over SSH with its python made unavailable."""
    if request.param == "local":
        return OpsRunner(pf_host, None)
    target = ssh_target_for(pf_host, client_keys)
    pf_host.disable_python()
    return OpsRunner(pf_host, target)


def main_cf(host: LabHost) -> str:
    return (host.config_dir / "main.cf").read_text()


def postconf(host: LabHost, name: str) -> str:
    return host.run(["postconf", "-h", name]).stdout.decode().strip()


def delivered(host: LabHost, subject: str) -> Callable[[], bool]:
    sink = host.lab.smarthost
    return lambda: any(f"Subject: {subject}" in m["data"] for m in sink.messages())


def test_seed_story_on_postfix(pf_host: LabHost, pf_ops: OpsRunner) -> None:
    """Deferred voicemail -> relayhost [smarthost]:2525 -> flush -> delivered; repeat: no
    change; remove: direct delivery again."""
    host = pf_host
    subject = f"voicemail {host.name} {time.time_ns()}"
    host.send_mail([VOICEMAIL_TO], subject=subject)
    host.wait_deferred()
    code, queue = pf_ops("queue")
    assert code == 0 and queue["data"]["count"] == 1, queue
    message = queue["data"]["messages"][0]
    assert message["section"] == "deferred" and message["recipients"] == [VOICEMAIL_TO]
    assert "Connection refused" in (message["reason"] or ""), message

    code, result = pf_ops("set-smarthost", body=SMARTHOST)
    assert code == 0 and result["ok"] and result["changed"] and not result["rolled_back"], result
    # the CA file is read back as main.cf has it (RHEL's default main.cf names its bundle)
    ca_file = host.postconf("-h", "smtp_tls_CAfile").strip() or None
    assert result["data"]["smarthost"] == {"host": "smarthost.lab.test", "port": SINK_PORT,
                                           "mx": False, "mailer": "relay", "auth": None,
                                           "tls": {"mode": "may", "ca_file": ca_file},
                                           "masquerade": None}
    assert result["data"]["config_in_sync"] is True
    names = [s["name"] for s in result["steps"]]
    for expected in ("backup", "swap", "postfix check", "reload", "verify"):
        assert expected in names, names
    assert f"+relayhost = [smarthost.lab.test]:{SINK_PORT}" in result["data"]["diff"]
    assert postconf(host, "relayhost") == f"[smarthost.lab.test]:{SINK_PORT}"

    code, flushed = pf_ops("flush")
    assert code == 0 and flushed["ok"], flushed
    assert flushed["data"]["before"] == 1
    host.wait_for(delivered(host, subject), 30, "the voicemail at the sink")
    # the flush waited for Postfix's attempt and reports it from the maillog
    deliveries = flushed["data"]["deliveries"]
    assert [(d["recipient"], d["outcome"]) for d in deliveries] == [(VOICEMAIL_TO, "sent")], (
        flushed["data"])
    assert flushed["data"]["after"] == 0
    host.wait_for(lambda: pf_ops("queue")[1]["data"]["count"] == 0, 30, "an empty queue")

    before = main_cf(host)
    code, again = pf_ops("set-smarthost", body=SMARTHOST)
    assert code == 0 and again["ok"] and again["changed"] is False, again
    assert main_cf(host) == before
    assert "swap" not in [s["name"] for s in again["steps"]]

    code, removed = pf_ops("remove-smarthost")
    assert code == 0 and removed["changed"] and removed["data"]["smarthost"] is None, removed
    assert postconf(host, "relayhost") == ""
    host.send_mail([VOICEMAIL_TO], subject="after removal")
    host.wait_deferred()
    code, again = pf_ops("remove-smarthost")
    assert code == 0 and again["changed"] is False


def test_dry_run_shows_the_main_cf_diff_and_changes_nothing(
        make_postfix_host: Callable[[str], LabHost]) -> None:
    host = make_postfix_host("debian")
    before = host.file_snapshot("main.cf", "sasl_passwd", "sasl_passwd.db")
    code, result = host.ops("set-smarthost", "--dry-run", body=SMARTHOST)
    assert code == 0 and result["changed"] is True and result["data"]["dry_run"], result
    assert result["data"]["diff"].startswith("--- /etc/postfix/main.cf (current)")
    assert host.file_snapshot("main.cf", "sasl_passwd", "sasl_passwd.db") == before
    assert not [p.name for p in host.config_dir.iterdir() if "relayfleet" in p.name
                and p.name != ".relayfleet-backup"]


@pytest.fixture
def tls_relay(lab: Lab, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A relay on the lab bridge that offers AUTH only after STARTTLS and records the
    bytes clients sent it."""
    address = lab.ip(6)
    sh(["ip", "addr", "add", f"{address}/24", "dev", lab.bridge])
    cert, key = tmp_path / "relay.crt", tmp_path / "relay.key"
    sh(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
        "-out", str(cert), "-days", "2", "-subj", "/CN=relay.lab.test",
        "-addext", f"subjectAltName=IP:{address}"])
    credentials = tmp_path / "credentials"
    credentials.write_text(f"{RELAY_USER}:{RELAY_PASSWORD}\n")
    spool = tmp_path / "relay-spool"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.lab.relay", "--listen", f"{address}:{RELAY_PORT}",
         "--spool", str(spool), "--cert", str(cert), "--key", str(key),
         "--credentials", str(credentials)],
        cwd=REPO_ROOT, stdout=(tmp_path / "relay.log").open("wb"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while sh(["ss", "-ltn", f"sport = :{RELAY_PORT}"], check=False).stdout.count(
                address.encode()) == 0:
            assert proc.poll() is None and time.monotonic() < deadline, (
                (tmp_path / "relay.log").read_text())
            time.sleep(0.1)
        yield {"address": address, "spool": spool}
    finally:
        proc.kill()
        proc.wait(timeout=10)
        sh(["ip", "addr", "del", f"{address}/24", "dev", lab.bridge], check=False)


@pytest.mark.parametrize("transport", ["local", "ssh"])
def test_auth_goes_only_over_tls_and_the_password_stays_secret(
        make_postfix_host: Callable[[str], LabHost], tls_relay: dict[str, Any],
        transport: str, client_keys: dict[str, tuple[str, str]]) -> None:
    host = make_postfix_host("debian")
    ops = OpsRunner(host, ssh_target_for(host, client_keys) if transport == "ssh" else None)
    body = {"host": tls_relay["address"], "port": RELAY_PORT,
            "auth": {"username": RELAY_USER, "password": RELAY_PASSWORD}}
    code, result = ops("set-smarthost", body=body)
    assert code == 0 and result["ok"] and result["changed"], result
    assert result["data"]["smarthost"]["auth"] == {"username": RELAY_USER}
    for name in ("sasl_passwd", "sasl_passwd.db"):
        info = (host.config_dir / name).stat()
        assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (0, 0, 0o600), name
    assert postconf(host, "smtp_tls_security_level") == "encrypt"
    assert postconf(host, "smtp_sasl_auth_enable") == "yes"
    assert postconf(host, "smtp_sasl_security_options") == "noanonymous"

    subject = f"voicemail over tls {time.time_ns()}"
    host.send_mail([VOICEMAIL_TO], subject=subject)
    code, flushed = ops("flush")
    assert code == 0, flushed

    def arrived() -> list[dict[str, Any]]:
        docs = [json.loads(p.read_text()) for p in sorted(tls_relay["spool"].glob("*.json"))]
        return [d for d in docs if f"Subject: {subject}" in d["data"]]

    host.wait_for(lambda: bool(arrived()), 30, "the voicemail at the TLS relay")
    message = arrived()[0]
    assert message["auth_user"] == RELAY_USER and message["tls"], message
    # The password in no answer, no step, no log, and never on the wire in clear (AUTH
    # PLAIN/LOGIN would carry it base64-encoded).
    secrets = [RELAY_PASSWORD.encode(), base64.b64encode(RELAY_PASSWORD.encode()),
               base64.b64encode(f"\0{RELAY_USER}\0{RELAY_PASSWORD}".encode())]
    wire = (tls_relay["spool"] / "wire.bin").read_bytes()
    assert wire and not any(s in wire for s in secrets)
    for text in (json.dumps(result), json.dumps(flushed), host.read_maillog()):
        assert RELAY_PASSWORD not in text
    code, read = ops("read-smarthost")
    assert RELAY_PASSWORD not in json.dumps(read)
    # Back to direct delivery: no credentials left, and TLS no longer required of every MX.
    code, removed = ops("remove-smarthost")
    assert code == 0 and removed["ok"], removed
    assert postconf(host, "smtp_tls_security_level") == "may"
    assert postconf(host, "smtp_sasl_auth_enable") == "no"
    assert RELAY_PASSWORD not in (host.config_dir / "sasl_passwd").read_text()


def _wrapper(host: LabHost, name: str, script: str) -> str:
    """An executable in the host's /run (its own directory) that stands in for a tool."""
    path = host.root / "run" / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    return f"/run/{name}"


@pytest.mark.parametrize("failure", ["reload", "check"])
def test_a_failed_change_is_rolled_back_byte_for_byte(
        make_postfix_host: Callable[[str], LabHost], failure: str) -> None:
    host = make_postfix_host("debian")
    code, first = host.ops("set-smarthost", body=SMARTHOST)
    assert code == 0 and first["ok"], first
    before = host.file_snapshot("main.cf", "sasl_passwd", "sasl_passwd.db")
    if failure == "reload":
        profile = {"reload": [_wrapper(host, "bad-reload", "echo 'reload: broken' >&2; exit 1\n")]}
    else:
        profile = {"postfix": _wrapper(host, "picky-postfix", (
            'if [ "$3" = check ]; then echo "postfix: fatal: refused by the test" >&2; exit 1; fi\n'
            'exec /usr/sbin/postfix "$@"\n'))}
    code, result = host.ops("set-smarthost", body={**SMARTHOST, "port": 2526}, profile=profile)
    assert code != 0 and result["ok"] is False, result
    names = [s["name"] for s in result["steps"]]
    if failure == "reload":  # swapped in, refused by the reload: rolled back
        assert result["rolled_back"] is True and result["data"]["mta_running"] is True, result
        assert "reload: broken" in result["error"] and "rollback" in names
    else:  # refused by postfix check on the staged copy: nothing went live
        assert "refused by the test" in result["error"] and "swap" not in names, result
    assert host.file_snapshot("main.cf", "sasl_passwd", "sasl_passwd.db") == before
    assert postconf(host, "relayhost") == f"[smarthost.lab.test]:{SINK_PORT}"
    # Postfix still delivers through the smarthost it had.
    subject = f"after a failed {failure} {time.time_ns()}"
    host.send_mail([VOICEMAIL_TO], subject=subject)
    host.ops("flush")
    host.wait_for(delivered(host, subject), 30, "the voicemail at the sink")


def test_status_log_and_diagnose_on_postfix(make_postfix_host: Callable[[str], LabHost]) -> None:
    host = make_postfix_host("centos")
    host.send_mail([VOICEMAIL_TO], subject="for the log")
    host.wait_deferred()
    code, status = host.ops("status")
    assert code == 0 and status["ok"], status
    assert status["data"]["mta"]["kind"] == "postfix" and status["data"]["mta"]["running"]
    assert status["data"]["mta"]["version"].startswith("3.")
    assert status["data"]["queue"]["count"] == 1
    code, log = host.ops("log", "--lines", "200")
    assert code == 0, log
    deferred = [r for r in log["data"]["records"]
                if r["kind"] == "delivery" and r["fields"].get("status") == "deferred"]
    assert deferred and "Connection refused" in deferred[0]["fields"]["reason"]
    code, auto = host.ops("status", kind="auto")
    assert code == 0 and auto["data"]["mta"]["kind"] == "postfix", auto
    code, diagnosis = host.ops("diagnose")
    checks = {c["name"]: c for c in diagnosis["data"]["checks"]}
    assert checks["mta_running"]["ok"] is True, checks
    assert checks["smarthost_smtp"]["ok"] is False  # no smarthost yet
    # RHEL's main.cf leaves myhostname to the system's short name: Postfix greets as
    # NAME.localdomain, which relays refuse; qualified, the check passes.
    assert checks["myhostname"]["ok"] is False, checks["myhostname"]
    assert "localdomain" in checks["myhostname"]["detail"]
    host.run(["postconf", "-e", f"myhostname={host.fqdn}"])
    checks = {c["name"]: c for c in host.ops("diagnose")[1]["data"]["checks"]}
    assert checks["myhostname"]["ok"] is True, checks["myhostname"]
