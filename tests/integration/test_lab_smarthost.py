"""The seed story and the safety of config changes, on real sendmail in lab hosts."""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import OpsRunner
from tests.lab.lab import SINK_PORT, LabHost
from tests.lab.relay import Relay

pytestmark = [pytest.mark.lab, pytest.mark.slow]

SMARTHOST = {"host": "smarthost.lab.test", "port": SINK_PORT, "mx": False}
VOICEMAIL_TO = "me@ourtest.com"


def active_smart_host_defines(host: LabHost) -> list[str]:
    mc = (host.mail_dir / "sendmail.mc").read_text()
    return [ln for ln in mc.splitlines() if re.match(r"\s*define\(`SMART_HOST'", ln)]


def cf_text(host: LabHost) -> str:
    return (host.mail_dir / "sendmail.cf").read_text()


def mailer_args(cf: str, mailer: str) -> str:
    block = re.search(rf"^M{mailer},.*?(?=^M|\Z)", cf, re.S | re.M)
    assert block, f"no {mailer} mailer in sendmail.cf"
    args = re.search(r"A=(.*)$", block.group(0), re.M)
    assert args
    return args.group(1).strip()


def mta_pid(host: LabHost) -> int:
    pid_file = "/run/sendmail.pid" if host.layout == "centos" else "/run/sendmail/mta/sendmail.pid"
    return int((host.root / pid_file.removeprefix("/")).read_text().split()[0])


def mail_dir_state(host: LabHost) -> dict[str, tuple[int, bytes]]:
    """(mtime_ns, bytes) of every regular file in the host's /etc/mail, recursively."""
    state = {}
    for path in sorted(host.mail_dir.rglob("*")):
        if path.is_file() and not path.is_symlink():
            state[str(path.relative_to(host.mail_dir))] = (path.stat().st_mtime_ns,
                                                           path.read_bytes())
    return state


def test_seed_story(host: LabHost, ops: OpsRunner) -> None:
    """Deferred voicemail -> set smarthost -> flush -> delivered; again -> no change."""
    sink = host.lab.smarthost
    host.send_mail([VOICEMAIL_TO])
    queue_before = host.wait_deferred()
    assert "Deferred: Connection refused by mx.ourtest.com." in queue_before
    old_pid = mta_pid(host)

    code, result = ops("set-smarthost", body=SMARTHOST)
    assert code == 0, result
    assert result["ok"] and result["changed"] and not result["rolled_back"]
    assert result["data"]["smarthost"]["host"] == "smarthost.lab.test"
    assert result["data"]["smarthost"]["port"] == SINK_PORT
    assert result["data"]["config_in_sync"] is True
    step_names = [s["name"] for s in result["steps"]]
    for expected in ("compile", "validate", "backup", "swap", "make", "restart", "verify"):
        assert expected in step_names

    cf = cf_text(host)
    assert re.findall(r"^DS.*$", cf, re.M) == ["DS[smarthost.lab.test]"]
    assert mailer_args(cf, "relay") == f"TCP $h {SINK_PORT}"
    assert mailer_args(cf, "esmtp") == f"TCP $h {SINK_PORT}"
    assert len(active_smart_host_defines(host)) == 1
    assert mta_pid(host) != old_pid, "sendmail was not restarted"

    code, flushed = ops("flush")
    assert code == 0, flushed
    # The restart already runs the queue: the flush may find it empty, or find the
    # message locked by that run and leave it to it.
    assert flushed["data"]["before"] <= 1 and flushed["data"]["after"] <= 1
    host.wait_for(lambda: any(VOICEMAIL_TO.join("<>") in m["rcpts"] for m in sink.messages()),
                  30, "the voicemail at the sink")
    host.wait_for(lambda: ops("queue")[1]["data"]["count"] == 0, 30, "an empty queue")
    assert host.queue_files() == []

    before = mail_dir_state(host)
    code, again = ops("set-smarthost", body=SMARTHOST)
    assert code == 0 and again["ok"] and again["changed"] is False, again
    assert mail_dir_state(host) == before, "a no-change run touched files"
    assert [s["name"] for s in again["steps"]] == ["compare"]


def test_dry_run_changes_nothing(host: LabHost, ops: OpsRunner) -> None:
    before = mail_dir_state(host)
    code, result = ops("set-smarthost", "--dry-run", body=SMARTHOST)
    assert code == 0 and result["changed"] is True
    diff = result["data"]["diff"]
    assert diff.startswith("--- /etc/mail/sendmail.mc (current)")
    assert "+define(`SMART_HOST', ``[smarthost.lab.test]'')" in diff
    assert f"+define(`RELAY_MAILER_ARGS', `TCP $h {SINK_PORT}')" in diff
    assert mail_dir_state(host) == before


def test_remove_restores_direct_delivery(host: LabHost, ops: OpsRunner) -> None:
    code, result = ops("set-smarthost", body=SMARTHOST)
    assert code == 0, result
    code, removed = ops("remove-smarthost")
    assert code == 0 and removed["changed"] and removed["data"]["smarthost"] is None, removed
    assert re.findall(r"^DS.*$", cf_text(host), re.M) == ["DS"]
    assert active_smart_host_defines(host) == []
    host.send_mail([VOICEMAIL_TO], subject="after removal")
    assert "Deferred: Connection refused by mx.ourtest.com." in host.wait_deferred()
    code, again = ops("remove-smarthost")
    assert code == 0 and again["changed"] is False


def test_failing_restart_rolls_back_byte_identical(host: LabHost, ops: OpsRunner) -> None:
    before = host.file_snapshot("sendmail.mc", "sendmail.cf", "authinfo", "authinfo.db")
    init = "service sendmail restart" if host.layout == "centos" else "/etc/init.d/sendmail restart"
    # A restart that fails with the new configuration and works with the old one.
    failing_restart = ["sh", "-c", "if grep -q '^DS.' /etc/mail/sendmail.cf; then "
                       "echo 'sendmail: cannot start: configuration rejected' >&2; exit 1; fi; "
                       f"exec {init}"]
    code, result = ops("set-smarthost", body=SMARTHOST, profile={"restart": failing_restart})
    assert code == 1
    assert result["ok"] is False and result["rolled_back"] is True, result
    assert "restored" in result["error"]
    assert host.file_snapshot("sendmail.mc", "sendmail.cf", "authinfo", "authinfo.db") == before
    assert result["data"]["smarthost"] is None
    assert [s["name"] for s in result["steps"]].count("restart") == 2
    code, status = ops("status")
    assert status["data"]["mta"]["running"] is True


def test_cf_that_fails_validation_is_never_installed(host: LabHost, ops: OpsRunner) -> None:
    mc_path = host.mail_dir / "sendmail.mc"
    mc = mc_path.read_text()
    # A local rule set referring to a map class sendmail does not have: m4 is happy,
    # sendmail refuses the cf.
    broken = mc.replace("MAILER(", "LOCAL_CONFIG\nKbroken nosuchmapclass\nMAILER(", 1)
    mc_path.write_text(broken)
    before = host.file_snapshot("sendmail.mc", "sendmail.cf")
    code, result = ops("set-smarthost", body=SMARTHOST)
    assert code == 1 and result["ok"] is False and result["rolled_back"] is False, result
    assert result["error_kind"] == "compile"
    assert host.file_snapshot("sendmail.mc", "sendmail.cf") == before
    assert not list(host.mail_dir.glob(".sendmail.*relayfleet*")), "temporary files left behind"


def test_smtp_auth_map_is_private_and_password_never_shown(host: LabHost, ops: OpsRunner) -> None:
    password = "S3cret!pa55-word#x"
    # credentials go only over STARTTLS (tls.mode encrypt with auth): a relay that offers it
    relay = host.lab.start_relay(f"auth{host.name}", credentials=("pbx-relay@ourtest.com",
                                                                  password))
    try:
        check_auth_map(host, ops, relay, password)
    finally:
        host.lab.stop_relay(relay)


def check_auth_map(host: LabHost, ops: OpsRunner, relay: Relay, password: str) -> None:
    body = {"host": relay.fqdn, "port": relay.port,
            "auth": {"username": "pbx-relay@ourtest.com", "password": password}}
    code, result = ops("set-smarthost", body=body)
    assert code == 0, result
    for name in ("authinfo", "authinfo.db"):
        st = (host.mail_dir / name).stat()
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0, name
    assert f'AuthInfo:{relay.fqdn} "U:pbx-relay@ourtest.com"' in (
        host.mail_dir / "authinfo").read_text()
    mc = (host.mail_dir / "sendmail.mc").read_text()
    assert "FEATURE(`authinfo')" in mc
    assert result["data"]["smarthost"]["auth"] == {"username": "pbx-relay@ourtest.com"}

    host.send_mail([VOICEMAIL_TO], subject="with auth")
    code, flushed = ops("flush")
    host.wait_for(lambda: any(m["auth_user"] == "pbx-relay@ourtest.com"
                              for m in relay.messages()), 30,
                  "a message authenticated as the configured user")
    code, read = ops("read-smarthost")
    code, log = ops("log", "--lines", "500")
    _, dry = ops("set-smarthost", "--dry-run",
                             body={**body, "auth": {"username": "other", "password": "N3w-secret"}})
    everything = json.dumps([result, flushed, read, log, dry]) + host.read_maillog()
    assert password not in everything
    assert "N3w-secret" not in everything
    assert "credentials entry written (content not shown)" in dry["data"]["diff"]


@pytest.mark.parametrize("hostile", [
    "x')esyscmd(`touch SENTINEL')dnl(`",
    "smarthost.lab.test`touch SENTINEL`",
    "smarthost.lab.test; touch SENTINEL",
    "$(touch SENTINEL)",
    "smarthost.lab.test\ndefine(`X',`touch SENTINEL')",
    "a" * 300,
])
def test_hostile_host_is_refused_before_m4(make_host: Callable[..., LabHost], tmp_path: Path,
                                           hostile: str) -> None:
    host = make_host("debian")
    sentinel = tmp_path / "pwned"
    before = mail_dir_state(host)
    code, result = host.ops("set-smarthost",
                            body={"host": hostile.replace("SENTINEL", str(sentinel)), "port": 25})
    assert code == 2, result
    assert "host" in result["errors"]
    assert not sentinel.exists()
    assert mail_dir_state(host) == before


@pytest.mark.parametrize("body, field", [
    ({"host": "smarthost.lab.test", "port": 0}, "port"),
    ({"host": "smarthost.lab.test", "port": "25; id"}, "port"),
    ({"host": "smarthost.lab.test", "auth": {"username": "u", "password": "a\nb"}},
     "auth.password"),
    ({"host": "smarthost.lab.test", "extra": 1}, "extra"),
])
def test_bad_values_are_refused(make_host: Callable[..., LabHost], body: dict[str, object],
                                field: str) -> None:
    host = make_host("centos")
    before = mail_dir_state(host)
    code, result = host.ops("set-smarthost", body=body)
    assert code == 2 and field in result["errors"], result
    assert mail_dir_state(host) == before


def test_queue_lock_refuses_a_second_change(host: LabHost, ops: OpsRunner) -> None:
    lock = host.mail_dir / ".relayfleet.lock"
    lock.mkdir()
    (lock / "since").write_text(str(int(os.path.getmtime(lock))))
    code, result = ops("set-smarthost", body=SMARTHOST)
    assert code == 1 and result["error_kind"] == "conflict", result
    lock.joinpath("since").unlink()
    lock.rmdir()


@pytest.mark.parametrize("host", ["centos"], indirect=True)
def test_retried_change_finishes_an_interrupted_restart(host: LabHost, ops: OpsRunner) -> None:
    """A change cut off between its swap and its restart, retried: the files are right
    (``changed: false``) but the MTA runs the old config, or is down; the retry restarts it."""
    code, first = ops("set-smarthost", body=SMARTHOST)
    assert code == 0 and first["changed"] is True
    pid_path = host.root / ("run/sendmail.pid" if host.layout == "centos"
                            else "run/sendmail/mta/sendmail.pid")
    # the daemon "started" an hour before the current sendmail.cf was installed
    hour_ago = pid_path.stat().st_mtime - 3600
    os.utime(pid_path, (hour_ago, hour_ago))
    old_pid = mta_pid(host)
    code, again = ops("set-smarthost", body=SMARTHOST)
    assert code == 0 and again["changed"] is False
    assert "started before the current sendmail.cf" in again["data"]["note"]
    assert "restart" in [step["name"] for step in again["steps"]]
    assert mta_pid(host) != old_pid
    # the MTA down: the retry starts it
    host.stop_mta()
    code, third = ops("set-smarthost", body=SMARTHOST)
    assert code == 0 and third["changed"] is False
    assert "not running" in third["data"]["note"]
    assert os.path.exists(f"/proc/{mta_pid(host)}")
    # and when all is well, nothing is restarted
    pid = mta_pid(host)
    code, quiet = ops("set-smarthost", body=SMARTHOST)
    assert code == 0 and quiet["changed"] is False and "note" not in quiet["data"]
    assert mta_pid(host) == pid
