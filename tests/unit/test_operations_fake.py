"""The sendmail operations on fake hosts (shared.testing): fast, no root, no lab.

The first tests hold the fake to the real thing (LocalExecutor's semantics, the lab's
captures of mailq and ``sendmail -q -v``, m4's quoting); the rest drive
``SendmailOperations`` through set/remove smarthost, flush, status and log.
"""

from __future__ import annotations

import base64
import json
import os
import posixpath
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shared.errors import ExecutorError
from shared.executor import MISSING_CODE, Executor, FileMissing, LocalExecutor, read_command
from shared.mta import FlushRequest, MtaOperations, operations_for
from shared.profile import build_profile
from shared.sendmail.mc import MARK
from shared.sendmail.operations import SendmailOperations
from shared.testing import (
    SMMSP_GID,
    FakeExecutor,
    FakeSendmailHost,
    FileState,
    debian_sendmail_host,
    fake_m4,
    fixture_queue,
    fixture_text,
    rhel_sendmail_host,
)
from shared.validation import parse_smarthost_request

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sendmail"
LAB_FILES = Path(__file__).resolve().parents[1] / "lab" / "files"
MC, CF = "/etc/mail/sendmail.mc", "/etc/mail/sendmail.cf"
AUTHINFO = "/etc/mail/authinfo"
BACKUPS = "/etc/mail/.relayfleet-backup"
LOCK = "/etc/mail/.relayfleet.lock"
RESTART = ("/etc/init.d/sendmail", "restart")
SMARTHOST = {"host": "smarthost.lab.test", "port": 2525, "mx": False}
PASSWORD = "Fake-S3cret!pw"
#: what every operation says when sendmail.cf is not there
NO_CF = (f"cannot read {CF}: no such file: run make in /etc/mail to compile it from "
         "sendmail.mc, or check the profile's cf path")
CF_M4 = "include(`/usr/share/sendmail/cf/m4/cf.m4')dnl\n"


def ops_for(host: FakeSendmailHost) -> MtaOperations:
    return operations_for(host, build_profile("sendmail", host.flavour, {}))


def set_request(**extra: Any) -> Any:
    return parse_smarthost_request({**SMARTHOST, **extra})


def cf_lines(host: FakeSendmailHost, *starts: str) -> list[str]:
    return [ln for ln in host.read_text(CF).splitlines() if ln.startswith(starts)]


def config_state(host: FakeSendmailHost) -> dict[str, FileState]:
    """/etc/mail without the backups (which a change adds on purpose)."""
    return {p: s for p, s in host.snapshot("/etc/mail").items()
            if not p.startswith(BACKUPS)}


# -- the fake is faithful ------------------------------------------------------------------


def test_shipped_fixtures_are_the_test_captures() -> None:
    assert fixture_text("debian-sendmail.mc") == (FIXTURES / "debian-sendmail.mc").read_text()
    assert fixture_text("mail.log") == (FIXTURES / "mail.log").read_text()
    assert fixture_text("centos-sendmail.mc") == (LAB_FILES / "centos-sendmail.mc").read_text()


def test_mailq_and_queue_run_reproduce_the_lab_captures() -> None:
    host = debian_sendmail_host()
    assert host.run(["mailq"]).stdout_text() == (FIXTURES / "mailq-deferred.txt").read_text()
    local_only = debian_sendmail_host(messages=fixture_queue()[:2])
    run = local_only.run(["/usr/sbin/sendmail", "-OTimeout.hoststatus=0m", "-q", "-v"])
    assert run.ok and run.stdout_text() == (FIXTURES / "flush-v.txt").read_text()
    after = local_only.run(["mailq"]).stdout_text()
    assert after == (FIXTURES / "mailq-after-restart.txt").read_text()


def test_fake_m4_quotes_and_expands_like_m4() -> None:
    # Single quotes: the define's value is rescanned when proto.m4 writes DS; double: not.
    single = fake_m4("define(`SMART_HOST', `esyscmd(`id')')dnl\n" + CF_M4)
    assert single.shell_calls == ["id"]
    double = fake_m4("define(`SMART_HOST', ``esyscmd(`id')'')dnl\n" + CF_M4)
    assert double.shell_calls == [] and "DSesyscmd(`id')" in double.output.splitlines()
    # A port defined after MAILER(`smtp') never reaches the mailer (as with sendmail-cf).
    late = fake_m4(CF_M4 + "MAILER(`smtp')dnl\ndefine(`RELAY_MAILER_ARGS', `TCP $h 587')dnl\n")
    early = fake_m4(CF_M4 + "define(`RELAY_MAILER_ARGS', `TCP $h 587')dnl\nMAILER(`smtp')dnl\n")
    assert "\t\tA=TCP $h 587" not in late.output and "\t\tA=TCP $h 587" in early.output
    broken = fake_m4("define(`SMART_HOST', `[x]\n", filename="/etc/mail/x.mc")
    assert broken.exit_code == 1 and "end of file in string" in broken.stderr


def _file_semantics(ex: Executor, root: str) -> list[object]:
    """The same file operations, observed: run against LocalExecutor and the fake."""
    seen: list[object] = []

    def attempt(step: Callable[[], object]) -> None:
        try:
            seen.append(step())
        except ExecutorError as exc:
            seen.append(type(exc).__name__)

    a, d, b = f"{root}/a", f"{root}/d", f"{root}/b"
    ex.write_file(a, b"one", mode=0o640)
    ex.write_file(a, b"two", mode=0o600)
    attempt(lambda: (ex.read_file(a), oct(ex.file_info(a).mode)))  # type: ignore[union-attr]
    attempt(lambda: (ex.make_dir(d), ex.make_dir(d)))
    attempt(lambda: ex.make_dir(f"{d}/x/y"))
    attempt(lambda: ex.rename(a, f"{d}/a2"))
    attempt(lambda: ex.rename(a, f"{d}/a3"))
    attempt(lambda: (ex.exists(a), ex.list_dir(d), ex.list_dir(f"{root}/nowhere")))
    ex.set_owner_mode(f"{d}/a2", mode=0o640, uid=-1, gid=-1)
    ex.copy_file(f"{d}/a2", b)
    source, copy = ex.file_info(f"{d}/a2"), ex.file_info(b)
    seen.append((copy == source, oct(copy.mode) if copy else None))
    attempt(lambda: ex.copy_file(f"{root}/missing", b))
    attempt(lambda: ex.read_file(f"{root}/missing"))
    seen.append(ex.read_file_if_exists(f"{root}/missing"))
    seen.append([(r.exit_code, r.stdout) for r in ex.run_many(
        [read_command(f"{root}/missing"), read_command(b)])])
    ex.write_file_atomic(b, b"three")
    seen.append((ex.read_file(b), oct(ex.file_info(b).mode)))  # type: ignore[union-attr]
    seen.append(posixpath.dirname(ex.temp_path_for(b)) == root)
    ex.remove(f"{root}/missing")
    ex.remove(b)
    ex.remove_dir(d)
    ex.remove_dir(f"{root}/missing")
    seen.append(sorted(ex.list_dir(root)))
    attempt(lambda: ex.open_tcp("127.0.0.1", 1, 2.0))
    return seen


def test_fake_files_behave_like_local_files(tmp_path: Path) -> None:
    local = _file_semantics(LocalExecutor(), str(tmp_path))
    fake = FakeExecutor(uid=os.getuid(), gid=os.getgid())
    fake.add_dir(str(tmp_path))
    assert _file_semantics(fake, str(tmp_path)) == local
    assert local[1] == (True, False) and "FileMissing" in local
    # What LocalExecutor says of a refused connection, the fake says too.
    with pytest.raises(ExecutorError, match="Connection refused"):
        fake.open_tcp("smarthost.lab.test", 25, 1.0)


def test_scripted_commands_are_recorded_and_scoped() -> None:
    fake = FakeExecutor()
    rule = fake.script(["make"], exit_code=2, stderr="make: *** Error 1", times=1)
    assert fake.run(["/usr/bin/make", "-C", "/"]).exit_code == 2
    with pytest.raises(ExecutorError, match="cannot run make"):
        fake.run(["make"])  # the rule is spent; the bare fake has no make
    fake.script(["hostname", "-f"], timeout=True)
    with pytest.raises(ExecutorError, match="did not finish"):
        fake.run(["hostname", "-f"])
    assert rule.calls == 1 and fake.ran("make") == [("/usr/bin/make", "-C", "/"), ("make",)]
    assert fake.run(["sh", "-c", f'[ -e "$1" ] || exit {MISSING_CODE}', "sh", "/x"]).exit_code \
        == MISSING_CODE
    with pytest.raises(FileMissing):
        fake.read_file("/x")


# -- set smarthost ---------------------------------------------------------------------------


def test_set_smarthost_compiles_swaps_restarts_and_keeps_owners() -> None:
    host = debian_sendmail_host()
    old_mc = host.read_text(MC)
    result = ops_for(host).set_smarthost(set_request())
    assert result.ok and result.changed and not result.rolled_back, result.error
    assert result.data["smarthost"] == {"host": "smarthost.lab.test", "port": 2525, "mx": False,
                                        "mailer": "relay", "auth": None, "masquerade": None,
                                        "tls": {"mode": "may", "ca_file": None}}
    assert result.data["config_in_sync"] is True
    assert [s.name for s in result.steps] == [
        "write sendmail.mc (temporary)", "compile", "validate", "backup", "swap", "make",
        "restart", "verify"]
    assert f"+define(`SMART_HOST', ``[smarthost.lab.test]''){MARK}" in result.data["diff"]
    mc = host.read_text(MC)
    assert mc.count("define(`SMART_HOST'") == 1 and mc.replace(
        "".join(ln for ln in mc.splitlines(keepends=True) if ln.endswith(f"{MARK}\n")), "") \
        == old_mc
    assert cf_lines(host, "DS") == ["DS[smarthost.lab.test]"]
    assert "\t\tA=TCP $h 2525" in cf_lines(host, "\t\tA=")
    # sendmail.mc and sendmail.cf keep their mode and group; the daemon runs the new cf.
    for path in (MC, CF):
        state = host.state(path)
        assert state is not None and (state.mode, state.uid, state.gid) == (0o644, 0, SMMSP_GID)
    assert host.daemon_cf == host.read_file(CF) and host.restarts == 2
    backup = result.data["backup"]
    assert backup.startswith(BACKUPS) and host.list_dir(backup) == [
        "access", "access.db", "sendmail.cf", "sendmail.mc"]
    assert host.read_text(f"{backup}/sendmail.mc") == old_mc
    assert not host.exists(LOCK) and host.m4_shell_calls == []
    assert [p for p in host.list_dir("/etc/mail") if ".relayfleet-new" in p] == []


def test_set_smarthost_on_the_centos_template() -> None:
    host = rhel_sendmail_host()
    result = ops_for(host).set_smarthost(set_request(port=None, mx=True, mailer="esmtp"))
    assert result.ok, result.error
    assert "-dnl define(`SMART_HOST', `smtp.your.provider')dnl" in result.data["diff"]
    assert cf_lines(host, "DS") == ["DSesmtp:smarthost.lab.test"]
    assert host.ran("service", "sendmail", "restart") and not host.ran(*RESTART)


def test_set_smarthost_with_auth_writes_a_private_map_and_hides_the_secret() -> None:
    host = debian_sendmail_host()
    ops = ops_for(host)
    result = ops.set_smarthost(set_request(auth={"username": "pbx", "password": PASSWORD}))
    assert result.ok, result.error
    for path in (AUTHINFO, f"{AUTHINFO}.db"):
        state = host.state(path)
        assert state is not None and (state.mode, state.uid, state.gid) == (0o600, 0, 0), path
    assert host.read_text(AUTHINFO) == (
        f'AuthInfo:smarthost.lab.test "U:pbx" "I:pbx" '
        f'"P={base64.b64encode(PASSWORD.encode()).decode()}" "M:PLAIN LOGIN"\n')
    assert f"FEATURE(`authinfo'){MARK}" in host.read_text(MC)
    assert cf_lines(host, "Kauthinfo") == ["Kauthinfo hash -o /etc/mail/authinfo.db"]
    makemap = [c for c in host.commands if c.argv[0] == "makemap"]
    # authinfo (the password in sendmail's base64 form, on stdin only), then the access map
    secret = base64.b64encode(PASSWORD.encode())
    assert [secret in (c.input or b"") for c in makemap] == [True, False]
    assert PASSWORD not in json.dumps(result.to_dict())
    assert "credentials entry written (content not shown)" in result.data["diff"]
    assert ops.read_smarthost().data["smarthost"]["auth"] == {"username": "pbx"}
    # A queue run through the smarthost authenticates; the exchange never reaches the result.
    flush = ops.queue_flush(FlushRequest())
    assert flush.ok and flush.data["after"] == 2, flush.error
    dumped = json.dumps(flush.to_dict())
    token = base64.b64encode(f"\0pbx\0{PASSWORD}".encode()).decode()
    assert PASSWORD not in dumped and token not in dumped
    assert ">>> AUTH [exchange hidden]" in dumped


def test_dry_run_shows_the_diff_and_changes_nothing() -> None:
    host = debian_sendmail_host()
    before = host.snapshot()
    result = ops_for(host).set_smarthost(set_request(), dry_run=True)
    assert result.ok and result.changed and result.data["dry_run"] is True
    assert "+define(`SMART_HOST', ``[smarthost.lab.test]'')" in result.data["diff"]
    assert "+define(`RELAY_MAILER_ARGS', `TCP $h 2525')" in result.data["diff"]
    assert host.snapshot() == before and host.file_ops == [] and host.commands == []


def test_the_same_settings_again_change_and_touch_nothing() -> None:
    host = debian_sendmail_host()
    ops = ops_for(host)
    assert ops.set_smarthost(set_request()).ok
    before, restarts = config_state(host), host.restarts
    host.commands.clear()
    host.file_ops.clear()
    again = ops.set_smarthost(set_request())
    assert again.ok and again.changed is False and again.data["diff"] == ""
    assert config_state(host) == before and host.restarts == restarts
    # Only the change lock came and went: no config file was written, nothing compiled.
    assert {op[1] for op in host.file_ops} <= {LOCK, f"{LOCK}/since", f"{LOCK}/owner"}
    assert not host.ran("m4") and not host.ran(*RESTART)


def test_a_retry_restarts_a_daemon_that_died_after_the_swap() -> None:
    host = debian_sendmail_host()
    ops = ops_for(host)
    assert ops.set_smarthost(set_request()).ok
    host.stop_daemon(keep_pid_file=True)  # died between the swap and the restart
    retry = ops.set_smarthost(set_request())
    assert retry.ok and retry.changed is False
    assert "not running" in retry.data["note"] and host.daemon_pid in host.processes


@pytest.mark.parametrize("failure", [
    {"match": ["make"], "exit_code": 2, "stderr": "make: *** [Makefile:10: all] Error 1"},
    {"match": list(RESTART), "exit_code": 1, "stderr": "sm-mta failed to start"},
    {"match": list(RESTART), "timeout": True},
], ids=["make", "restart", "restart-timeout"])
@pytest.mark.parametrize("auth", [False, True], ids=["plain", "auth"])
def test_a_failure_after_the_swap_rolls_back_byte_for_byte(failure: dict[str, Any],
                                                           auth: bool) -> None:
    host = debian_sendmail_host()
    before, old_cf = config_state(host), host.read_file(CF)
    host.script(**failure, times=1)
    extra = {"auth": {"username": "pbx", "password": PASSWORD}} if auth else {}
    result = ops_for(host).set_smarthost(set_request(**extra))
    assert result.ok is False and result.rolled_back is True
    assert "the previous configuration was restored" in (result.error or "")
    assert config_state(host) == before  # content, mode, owner and mtime
    assert not host.exists(AUTHINFO) and result.data["smarthost"] is None
    # The rollback made and restarted again: sendmail runs the old configuration.
    assert [s.name for s in result.steps][-3:] == ["rollback", "make", "restart"]
    assert host.daemon_cf == old_cf and host.daemon_pid in host.processes
    assert PASSWORD not in json.dumps(result.to_dict())


def test_a_sendmail_that_does_not_come_up_after_the_restart_is_rolled_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    host = debian_sendmail_host()
    before = config_state(host)
    # the init script says it restarted, but sendmail died (only the first restart)
    def dies(argv: tuple[str, ...]) -> bool:
        if argv != RESTART:
            return False
        host.stop_daemon()
        return True

    host.script(dies, exit_code=0, times=1)
    # no time waited for a daemon that is not coming
    monkeypatch.setattr(SendmailOperations, "_wait_running",
                        lambda self, wait_s=10.0: self._mta_running())
    result = ops_for(host).set_smarthost(set_request())
    assert result.ok is False and result.rolled_back is True
    assert (result.error or "").startswith(
        "sendmail is not running after the restart; the previous configuration was restored "
        "and sendmail runs it")
    assert config_state(host) == before and host.daemon_pid in host.processes


@pytest.mark.parametrize("failure, kind", [
    ({"match": ["/usr/sbin/sendmail", "-C"], "exit_code": 70,
      "stderr": '/etc/mail/.sendmail.cf.x: line 12: unknown configuration line "x"'}, "compile"),
    ({"match": ["m4"], "exit_code": 1, "stderr": "m4:sendmail.mc:3: ERROR: end of file"},
     "compile"),
    ({"match": ["m4"], "timeout": True}, "timeout"),
], ids=["validate", "m4", "m4-timeout"])
def test_a_failure_before_the_swap_touches_nothing(failure: dict[str, Any], kind: str) -> None:
    host = debian_sendmail_host()
    before = config_state(host)
    host.script(**failure)
    result = ops_for(host).set_smarthost(set_request())
    assert result.ok is False and result.rolled_back is False and result.error_kind == kind
    assert config_state(host) == before and not host.ran("make") and host.restarts == 1


def test_a_change_in_progress_elsewhere_is_a_conflict() -> None:
    host = debian_sendmail_host()
    host.add_dir(LOCK, mode=0o700)
    host.add_file(f"{LOCK}/since", str(int(host.now())))
    result = ops_for(host).set_smarthost(set_request())
    assert result.ok is False and result.error_kind == "conflict"
    assert not host.ran("m4") and host.exists(LOCK)


@pytest.mark.parametrize("dry_run", [False, True], ids=["apply", "dry-run"])
@pytest.mark.parametrize("change", ["set", "remove"])
def test_a_host_without_sendmail_cf_gets_a_failed_result(change: str, dry_run: bool) -> None:
    host = debian_sendmail_host()
    host.remove(CF)
    before = config_state(host)
    ops = ops_for(host)
    result = (ops.set_smarthost(set_request(), dry_run=dry_run) if change == "set"
              else ops.remove_smarthost(dry_run=dry_run))
    assert result.ok is False and result.error_kind == "config" and result.error == NO_CF
    assert result.changed is False and result.rolled_back is False
    assert result.data["smarthost"] is None and result.data["config_in_sync"] is False
    # Refused before anything ran: nothing compiled or restarted, no file touched, no lock.
    assert config_state(host) == before and not host.exists(LOCK)
    assert not host.ran("m4") and host.restarts == 1


def test_an_unreadable_sendmail_cf_says_why() -> None:
    host = debian_sendmail_host()
    host.remove(CF)
    host.add_dir(CF)
    ops = ops_for(host)
    for result in (ops.set_smarthost(set_request()), ops.remove_smarthost(),
                   ops.read_smarthost(), ops.status()):
        assert result.ok is False and result.error_kind == "config", result.operation
        assert (result.error or "").startswith(f"cannot read {CF}: ")
        assert "Is a directory" in (result.error or "") and (result.error or "").endswith(
            "or check the profile's cf path")
        assert result.data["config_in_sync"] is False


def test_a_profile_cf_path_that_does_not_exist_is_named() -> None:
    host = debian_sendmail_host()
    cf = "/etc/mail/main.cf"
    ops = operations_for(host, build_profile("sendmail", "debian", {"cf": cf}))
    for result in (ops.set_smarthost(set_request()), ops.remove_smarthost(),
                   ops.read_smarthost(), ops.status()):
        assert result.ok is False and result.error == NO_CF.replace(CF, cf), result.operation
        assert result.data["config_in_sync"] is False
    assert not host.ran("m4") and not host.exists(cf)


def test_a_missing_sendmail_mc_is_named_too() -> None:
    host = debian_sendmail_host()
    host.remove(MC)
    ops = ops_for(host)
    for result in (ops.set_smarthost(set_request()), ops.remove_smarthost(),
                   ops.read_smarthost(), ops.status()):
        assert result.ok is False and result.error_kind == "config", result.operation
        assert result.error == (f"cannot read {MC}: no such file: restore it (relayfleet keeps "
                                f"copies in {BACKUPS}), or check the profile's mc path")
        assert result.data["smarthost"] is None and result.data["config_in_sync"] is False
    assert not host.ran("m4") and not host.exists(LOCK)


# -- remove smarthost ------------------------------------------------------------------------


def test_remove_smarthost_goes_back_to_direct_delivery() -> None:
    host = debian_sendmail_host()
    ops = ops_for(host)
    assert ops.set_smarthost(set_request(auth={"username": "pbx", "password": PASSWORD})).ok
    dry = ops.remove_smarthost(dry_run=True)
    assert dry.changed and "-define(`SMART_HOST'" in dry.data["diff"]
    assert cf_lines(host, "DS") == ["DS[smarthost.lab.test]"]
    removed = ops.remove_smarthost()
    assert removed.ok and removed.changed and removed.data["smarthost"] is None, removed.error
    assert cf_lines(host, "DS") == ["DS"] and "\t\tA=TCP $h 2525" not in host.read_text(CF)
    assert MARK not in host.read_text(MC)  # the authinfo feature lines went too
    assert "smarthost.lab.test" not in host.read_text(AUTHINFO)
    assert removed.data["config_in_sync"] is True and host.daemon_cf == host.read_file(CF)
    again = ops.remove_smarthost()
    assert again.ok and again.changed is False


# -- queue ---------------------------------------------------------------------------------


@pytest.mark.parametrize("request_, after, sent, argv", [
    (FlushRequest(), 2, ["me@ourtest.com", "b@ourtest.com", "a@ourtest.com"],
     ("-OTimeout.hoststatus=0m", "-q", "-v")),
    (FlushRequest(queue_id="6AP4jQbT009721"), 3, ["me@ourtest.com"],
     ("-OTimeout.hoststatus=0m", "-qI6AP4jQbT009721", "-v")),
    (FlushRequest(recipient="a@ourtest"), 3, ["b@ourtest.com", "a@ourtest.com"],
     ("-OTimeout.hoststatus=0m", "-qRa@ourtest", "-v")),
    (FlushRequest(sender="root@lab1", reset_host_status=False), 2,
     ["me@ourtest.com", "b@ourtest.com", "a@ourtest.com"], ("-qSroot@lab1", "-v")),
], ids=["all", "queue_id", "recipient", "sender"])
def test_queue_flush_through_the_smarthost(request_: FlushRequest, after: int, sent: list[str],
                                           argv: tuple[str, ...]) -> None:
    host = debian_sendmail_host()
    ops = ops_for(host)
    assert ops.set_smarthost(set_request()).ok
    host.commands.clear()
    result = ops.queue_flush(request_)
    assert result.ok, result.error
    assert (result.data["before"], result.data["after"]) == (4, after)
    assert [d["recipient"] for d in result.data["deliveries"] if d["outcome"] == "sent"] == sent
    assert len(result.data["remaining"]) == after
    assert host.ran("/usr/sbin/sendmail", *argv) and host.ran("/usr/sbin/sendmail", "-Ac", *argv)
    assert [s.name for s in result.steps] == ["mailq (before)", "flush", "flush client queue",
                                              "mailq (after)"]


def test_queue_flush_without_a_smarthost_defers_and_runs_the_client_queue() -> None:
    host = debian_sendmail_host()
    host.queue_message(["voicemail@ourtest.com"], sender="asterisk@lab1.lab.test", section="msp")
    result = ops_for(host).queue_flush(FlushRequest())
    assert result.ok and (result.data["before"], result.data["after"]) == (5, 5)
    outcomes = {d["recipient"]: d["outcome"] for d in result.data["deliveries"]}
    assert outcomes == {"root@lab1.lab.test": "deferred", "me@ourtest.com": "deferred",
                        "b@ourtest.com": "deferred", "a@ourtest.com": "deferred",
                        "voicemail@ourtest.com": "sent"}  # handed from the MSP to the MTA
    assert {m["section"] for m in result.data["remaining"]} == {"mta"}
    assert len(host.queues["msp"]) == 0 and len(host.queues["mta"]) == 5


def test_queue_flush_that_times_out_still_counts_the_queue() -> None:
    host = debian_sendmail_host()
    host.script(["/usr/sbin/sendmail", "-OTimeout.hoststatus=0m", "-q"], timeout=True)
    result = ops_for(host).queue_flush(FlushRequest())
    assert result.ok is False and result.error_kind == "timeout"
    assert result.data["before"] is None and result.data["after"] == 4


def test_queue_list_on_both_layouts() -> None:
    for host in (debian_sendmail_host(), rhel_sendmail_host()):
        data = ops_for(host).queue_list().data
        assert data["count"] == 4 and data["messages"][2]["recipients"] == ["me@ourtest.com"]
        assert data["messages"][2]["reason"] == "Deferred: Connection refused by mx.ourtest.com."
    assert data["sections"] == {"mta": 4}  # CentOS: no MSP section


# -- status and log --------------------------------------------------------------------------


def test_status_reads_everything_in_one_batch() -> None:
    host = debian_sendmail_host()
    result = ops_for(host).status()
    assert result.ok, result.error
    data = result.data
    assert (data["hostname"], data["fqdn"]) == ("lab1", "lab1.lab.test")
    assert data["mta"] == {"kind": "sendmail", "version": "8.17.1.9", "running": True}
    assert data["smarthost"] is None and data["config_in_sync"] is True
    assert data["queue"]["count"] == 4 and data["queue"]["oldest_age_s"] > 0
    assert data["hosts_file"] == {"ok": True, "problems": []}
    host.stop_daemon(keep_pid_file=True)
    host.add_file(CF, host.read_text(CF).replace("DS\n", "DS[elsewhere.example]\n"))
    data = ops_for(host).status().data
    assert data["mta"]["running"] is False and data["config_in_sync"] is False


def test_read_smarthost_status_and_diagnose_report_a_missing_sendmail_cf() -> None:
    host = debian_sendmail_host()
    ops = ops_for(host)
    assert ops.set_smarthost(set_request()).ok
    host.remove(CF)
    read = ops.read_smarthost()
    assert read.ok is False and read.error_kind == "config" and read.error == NO_CF
    # sendmail.mc still says which smarthost is configured; no compiled cf agrees with it.
    assert read.data["smarthost"] == {**SMARTHOST, "mailer": "relay", "auth": None,
                                      "tls": {"mode": "may", "ca_file": None}, "masquerade": None}
    assert read.data["config_in_sync"] is False and read.data["compiled"] is None
    status = ops.status()
    assert status.ok is False and status.error_kind == "config" and status.error == NO_CF
    data = status.data
    assert data["smarthost"] == read.data["smarthost"] and data["config_in_sync"] is False
    # The rest of the look is still reported.
    assert (data["hostname"], data["mta"]["running"], data["queue"]["count"]) == ("lab1", True, 4)
    assert data["hosts_file"] == {"ok": True, "problems": []}
    diagnose = ops.diagnose()
    checks = {c["name"]: c for c in diagnose.data["checks"]}
    assert diagnose.ok is False
    assert checks["config_in_sync"] == {"name": "config_in_sync", "ok": False, "detail": NO_CF,
                                        "data": {}}
    # The smarthost sendmail.mc names is still probed.
    assert checks["smarthost_resolves"]["data"]["host"] == "smarthost.lab.test"


def test_read_log_parses_the_maillog_and_sees_new_deliveries() -> None:
    host = debian_sendmail_host()
    ops = ops_for(host)
    tail = ops.read_log(5)
    assert len(tail.data["records"]) == 5 and host.ran("tail", "-n", "5", "/var/log/mail.log")
    whole = ops.read_log(500).data
    # the capture's lines, and the daemon's start when the fake host booted
    assert len(whole["records"]) == len(fixture_text("mail.log").splitlines()) + 1
    assert "Deferred: Connection refused by mx.ourtest.com." in whole["summary"]["by_stat"]
    assert ops.set_smarthost(set_request()).ok and ops.queue_flush(FlushRequest()).ok
    later = ops.read_log(500).data["summary"]
    # the flush: three sent through the smarthost, two local failures again
    assert later["sent"] == whole["summary"]["sent"] + 3
    assert later["deferred"] == whole["summary"]["deferred"] + 2


def test_threads_share_one_fake_host_safely() -> None:
    host = debian_sendmail_host()
    results: list[int] = []

    def read() -> None:
        results.append(ops_for(host).queue_list().data["count"])

    threads = [threading.Thread(target=read) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [4] * 8
