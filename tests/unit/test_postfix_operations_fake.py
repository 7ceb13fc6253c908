"""The Postfix operations on the fake Postfix host (shared.testing): fast, no root, no lab.

The first tests hold the fake to the real thing (the lab's captures of ``postqueue -j``
and ``mailq``, postconf's editing of main.cf as Postfix 3.7.11 does it, the master and
its maillog lines); the rest drive ``PostfixOperations`` through set/remove smarthost,
SMTP AUTH, rollback, the reload marker, flush, log, status and diagnose.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from shared.actions import ACTIONS
from shared.mta import FlushRequest, MtaOperations, detect_kind, operations_for
from shared.postfix.maillog import parse_postfix_line
from shared.profile import build_profile
from shared.results import OperationResult
from shared.testing import (
    DEBIAN_POSTFIX_MAIN_CF,
    FAKE_DB_MAGIC,
    RHEL_POSTFIX_MAIN_CF,
    FakePostfixHost,
    FakePostfixMessage,
    FileState,
    debian_postfix_host,
    fixture_postfix_queue,
    rhel_postfix_host,
)
from shared.validation import parse_smarthost_request

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "postfix"
CONF = "/etc/postfix"
MAIN_CF, SASL = f"{CONF}/main.cf", f"{CONF}/sasl_passwd"
BACKUPS, LOCK = f"{CONF}/.relayfleet-backup", f"{CONF}/.relayfleet.lock"
MARKER = f"{CONF}/.relayfleet-reload-pending"
SMARTHOST = {"host": "smarthost.lab.test", "port": 2525, "mx": False}
RELAYHOST = "[smarthost.lab.test]:2525"
PASSWORD = "Fake-S3cret!pw"
AUTH = {"auth": {"username": "pbx", "password": PASSWORD}}
REFUSED = "connect to mx.ourtest.com[192.0.2.25]:25: Connection refused"


def ops_for(host: FakePostfixHost) -> MtaOperations:
    return operations_for(host, build_profile("postfix", host.flavour, {}))


def set_request(**extra: Any) -> Any:
    return parse_smarthost_request({**SMARTHOST, **extra})


def config_state(host: FakePostfixHost) -> dict[str, FileState]:
    """/etc/postfix without the backups (which a change adds on purpose)."""
    return {p: s for p, s in host.snapshot(CONF).items() if not p.startswith(BACKUPS)}


def answer(action: str, result: OperationResult) -> str:
    """The agent's answer document for the result, as JSON (what the controller sees)."""
    return json.dumps(ACTIONS[action].document(result))


def changed_lines(diff: str) -> list[str]:
    return [ln for ln in diff.splitlines()
            if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]


def leftovers(host: FakePostfixHost) -> list[str]:
    """Staging directories, temporary files and the lock a change must not leave."""
    return [p for p in host.list_dir(CONF) if p.startswith(".") and p != ".relayfleet-backup"]


# -- the fake is faithful ------------------------------------------------------------------


def test_main_cf_texts_are_the_lab_captures() -> None:
    assert (FIXTURES / "debian-main.cf").read_text() == DEBIAN_POSTFIX_MAIN_CF
    rhel = (FIXTURES / "centos-main.cf").read_text().splitlines()
    assert RHEL_POSTFIX_MAIN_CF.splitlines() == [
        ln for ln in rhel if ln.strip() and not ln.lstrip().startswith("#")]


def _capture(name: str) -> list[FakePostfixMessage]:
    """The messages of a ``postqueue -j`` capture."""
    lines = (FIXTURES / f"{name}.postqueue-j.jsonl").read_text().splitlines()
    return [FakePostfixMessage(d["queue_id"], d["sender"],
                               {r["address"]: r.get("delay_reason") for r in d["recipients"]},
                               d["arrival_time"], d["message_size"], d["queue_name"])
            for d in map(json.loads, lines)]


@pytest.mark.parametrize("name", ["empty", "one-deferred", "multi-recipient", "long-reason",
                                  "several-deferred", "flushed-deferred", "hold", "active"])
def test_queue_listings_reproduce_the_lab_captures(name: str) -> None:
    host = debian_postfix_host(messages=_capture(name))
    assert host.run(["postqueue", "-c", CONF, "-j"]).stdout_text() == (
        FIXTURES / f"{name}.postqueue-j.jsonl").read_text()
    assert host.run(["postqueue", "-p"]).stdout_text() == (
        FIXTURES / f"{name}.mailq.txt").read_text()


def test_the_default_queue_is_several_deferred() -> None:
    host = debian_postfix_host()
    assert host.run(["postqueue", "-j"]).stdout_text() == (
        FIXTURES / "several-deferred.postqueue-j.jsonl").read_text()
    assert [m.id for m in fixture_postfix_queue()] == [m.id for m in host.queue]


def test_postconf_edits_and_reads_main_cf_as_postconf_does() -> None:
    # Each expectation was checked against Postfix 3.7.11's postconf.
    host = debian_postfix_host()
    text = "a = 1\nrelayhost = old\n  cont1\n# comment\n\tcont2\nb=2\nrelayhost=dup\n"
    host.add_file("/tmp/pf/main.cf", text)
    assert host.run(["postconf", "-c", "/tmp/pf", "-e", "relayhost=new", "c="]).ok
    assert host.read_text("/tmp/pf/main.cf") == (
        "a = 1\nrelayhost = new\n# comment\nb=2\nrelayhost = new\nc = \n")
    assert host.run(["postconf", "-c", "/tmp/pf", "-X", "relayhost", "nosuch"]).ok
    assert host.read_text("/tmp/pf/main.cf") == "a = 1\n# comment\nb=2\nc = \n"
    shown = host.run(["postconf", "-c", "/tmp/pf", "relayhost", "smtp_sasl_auth_enable",
                      "smtp_tls_security_level", "default_database_type", "mail_version",
                      "myhostname", "mydomain", "unknown_thing"])
    assert shown.stdout_text() == (
        "relayhost =\nsmtp_sasl_auth_enable = no\nsmtp_tls_security_level =\n"
        "default_database_type = hash\nmail_version = 3.7.11\n"
        "myhostname = pbx-deb.localdomain\nmydomain = localdomain\n")
    assert b"unknown_thing: unknown parameter" in shown.stderr
    assert host.run(["postconf", "-h", "myhostname"]).stdout_text() == "pbx-deb.lab.test\n"
    # A file without a final newline gets the new line glued on, as postconf does it.
    host.add_file("/tmp/pf/main.cf", "a = 1\nb = 2")
    assert host.run(["postconf", "-c", "/tmp/pf", "-e", "c=3"]).ok
    assert host.read_text("/tmp/pf/main.cf") == "a = 1\nb = 2c = 3\n"
    # A line that is not name = value: postconf -e edits the text, reading it is fatal.
    host.add_file("/tmp/pf/main.cf", "a = 1\ngarbage\n")
    assert host.run(["postconf", "-c", "/tmp/pf", "-e", "a=2"]).ok
    bad = host.run(["postconf", "-c", "/tmp/pf", "a"])
    assert bad.exit_code == 1 and bad.stderr == (
        b"postconf: fatal: /tmp/pf/main.cf, line 2: missing '=' after attribute name: "
        b'"garbage"\n')
    missing = host.run(["postconf", "-c", "/tmp/nowhere", "-e", "a=1"])
    assert missing.exit_code == 1 and b"No such file or directory" in missing.stderr


def test_postmap_builds_the_map_beside_its_source() -> None:
    host = debian_postfix_host()
    host.add_file(SASL, "[relay.example]:587 pbx:pw\nmalformed\n", mode=0o600)
    built = host.run(["postmap", "-c", CONF, f"hash:{SASL}"])
    assert built.ok and built.stderr == (
        f"postmap: warning: {SASL}, line 2: expected format: key whitespace value\n".encode())
    assert host.read_file(f"{SASL}.db") == FAKE_DB_MAGIC + host.read_file(SASL)
    assert host.run(["postmap", f"nosuch:{SASL}"]).stderr == (
        b"postmap: fatal: unsupported dictionary type: nosuch\n")
    assert host.run(["postmap", "hash:/etc/postfix/absent"]).exit_code == 1


def test_the_master_runs_the_main_cf_it_last_read() -> None:
    host = debian_postfix_host()
    pid = host.master_pid
    assert host.run(["postfix", "status"]).ok and host.run(["postfix", "start"]).exit_code == 1
    host.run(["postconf", "-e", f"relayhost={RELAYHOST}"])
    assert host.running_config is not None and host.running_config["relayhost"] == ""
    assert host.run(["postfix", "-c", CONF, "reload"]).ok and host.master_pid == pid
    assert host.running_config["relayhost"] == RELAYHOST
    assert host.run(["postfix", "stop"]).ok and not host.running
    reload = host.run(["postfix", "reload"])
    assert reload.exit_code == 1 and reload.stdout == reload.stderr == b""  # no terminal
    # A bad main.cf: every postfix command refuses it, in the maillog only.
    host.add_file(MAIN_CF, DEBIAN_POSTFIX_MAIN_CF + "garbage\n")
    assert host.run(["postfix", "-c", CONF, "check"]).exit_code == 1
    assert host.run(["postfix", "start"]).exit_code == 1 and not host.running
    log = [parse_postfix_line(ln) for ln in host.read_text("/var/log/mail.log").splitlines()]
    assert [(r.program, r.message) for r in log if r is not None][-5:] == [
        ("postfix/postfix-script", "stopping the Postfix mail system"),
        ("postfix/master", "terminating on signal 15"),
        ("postfix/postfix-script", "fatal: the Postfix mail system is not running"),
        ("postfix", f"fatal: {MAIN_CF}, line 48: missing '=' after attribute name: "
                    '"garbage"'),
        ("postfix", f"fatal: {MAIN_CF}, line 48: missing '=' after attribute name: "
                    '"garbage"')]
    assert {r.kind for r in log if r is not None} >= {"daemon", "syserr"}


def test_detect_kind_finds_postfix_running_or_configured() -> None:
    host = debian_postfix_host()
    assert detect_kind(host) == "postfix"
    host.stop_master()
    assert detect_kind(host) == "postfix"  # configured: main.cf and postconf are there


# -- set smarthost -------------------------------------------------------------------------


def test_set_smarthost_edits_main_cf_reloads_and_verifies() -> None:
    host = debian_postfix_host()
    old_main = host.read_text(MAIN_CF)
    result = ops_for(host).set_smarthost(set_request())
    assert result.ok and result.changed and not result.rolled_back, result.error
    assert result.data["smarthost"] == {**SMARTHOST, "mailer": "relay", "auth": None,
                                        "tls": {"mode": "may", "ca_file": None},
                                        "masquerade": None}
    assert result.data["config_in_sync"] is True and result.data["mta_running"] is True
    assert changed_lines(result.data["diff"]) == ["-relayhost = ", f"+relayhost = {RELAYHOST}"]
    assert host.read_text(MAIN_CF) == old_main.replace("relayhost = \n",
                                                       f"relayhost = {RELAYHOST}\n")
    state = host.state(MAIN_CF)
    assert state is not None and (state.mode, state.uid, state.gid) == (0o644, 0, 0)
    names = [s.name for s in result.steps]
    assert names.index("postfix check") < names.index("swap") < names.index("reload") \
        < names.index("verify")
    assert host.running_config is not None and host.running_config["relayhost"] == RELAYHOST
    assert host.reloads == 1 and host.running
    backup = result.data["backup"]
    assert backup.startswith(BACKUPS) and host.read_text(f"{backup}/main.cf") == old_main
    assert leftovers(host) == []  # no lock, no staging directory, no marker
    # The same again: nothing swapped, nothing reloaded.
    before = config_state(host)
    host.file_ops.clear()
    host.commands.clear()
    again = ops_for(host).set_smarthost(set_request())
    assert again.ok and again.changed is False and again.data["diff"] == ""
    assert config_state(host) == before and host.reloads == 1
    assert "swap" not in [s.name for s in again.steps] and not host.ran("postfix")
    # Only the lock and the staged copy postconf edited (to compare) came and went.
    touched = {op[1] for op in host.file_ops if not op[1].startswith(f"{CONF}/.main.cf.")}
    assert touched <= {LOCK, f"{LOCK}/since", f"{LOCK}/owner"}


def test_set_smarthost_on_rhel_appends_relayhost() -> None:
    host = rhel_postfix_host()
    result = ops_for(host).set_smarthost(set_request(port=None, mx=True))
    assert result.ok, result.error
    assert changed_lines(result.data["diff"]) == ["+relayhost = smarthost.lab.test"]
    assert host.read_text(MAIN_CF) == RHEL_POSTFIX_MAIN_CF + "relayhost = smarthost.lab.test\n"
    assert host.running_config is not None
    assert host.running_config["relayhost"] == "smarthost.lab.test"


def test_set_smarthost_on_a_main_cf_without_a_final_newline() -> None:
    host = rhel_postfix_host(main_cf=RHEL_POSTFIX_MAIN_CF.rstrip("\n"))
    result = ops_for(host).set_smarthost(set_request())
    assert result.ok, result.error
    assert host.read_text(MAIN_CF).endswith(
        f"shlib_directory = /usr/lib64/postfix\nrelayhost = {RELAYHOST}\n")


def test_dry_run_shows_the_diff_and_changes_nothing() -> None:
    host = debian_postfix_host()
    before = host.snapshot()
    result = ops_for(host).set_smarthost(set_request(**AUTH), dry_run=True)
    assert result.ok and result.changed and result.data["dry_run"] is True, result.error
    assert f"+relayhost = {RELAYHOST}" in changed_lines(result.data["diff"])
    assert "credentials entry written (content not shown)" in result.data["diff"]
    assert host.snapshot() == before and leftovers(host) == []
    assert not host.ran("postmap") and not host.ran("postfix") and host.reloads == 0
    assert PASSWORD not in answer("set_smarthost", result)


def test_set_smarthost_with_auth_writes_a_private_map_and_hides_the_secret() -> None:
    host = debian_postfix_host()
    ops = ops_for(host)
    result = ops.set_smarthost(set_request(**AUTH))
    assert result.ok and result.changed, result.error
    for path in (SASL, f"{SASL}.db"):
        state = host.state(path)
        assert state is not None and (state.mode, state.uid, state.gid) == (0o600, 0, 0), path
    assert host.read_text(SASL) == f"{RELAYHOST} pbx:{PASSWORD}\n"
    assert host.read_file(f"{SASL}.db") == FAKE_DB_MAGIC + host.read_file(SASL)
    values = host.run(["postconf", "-h", "smtp_tls_security_level", "smtp_sasl_auth_enable",
                       "smtp_sasl_password_maps", "smtp_sasl_security_options"])
    assert values.stdout_text().split() == ["encrypt", "yes", f"hash:{SASL}", "noanonymous"]
    assert "+smtp_tls_security_level = encrypt" in changed_lines(result.data["diff"])
    assert result.data["diff"].endswith(
        f"--- {SASL} (current)\n+++ {SASL} (new)\n"
        "@@ credentials entry written (content not shown) @@\n")
    assert result.data["smarthost"]["auth"] == {"username": "pbx"}
    assert ops.read_smarthost().data["smarthost"]["auth"] == {"username": "pbx"}
    assert PASSWORD not in answer("set_smarthost", result)
    # The running smtp client logs in with the compiled map.
    flush = ops.queue_flush(FlushRequest())
    assert flush.ok and flush.data["after"] == 0, flush.error
    assert {r.sasl_username for r in host.relayed} == {"pbx"}
    assert PASSWORD not in answer("flush_queue", flush)
    assert PASSWORD not in host.read_text("/var/log/mail.log")


def test_auth_without_sasl_plugins_is_refused_before_anything_changes() -> None:
    host = debian_postfix_host(sasl_plugins=False)
    before = config_state(host)
    result = ops_for(host).set_smarthost(set_request(**AUTH))
    assert result.ok is False and result.error_kind == "config" and not result.rolled_back
    assert "libsasl2-modules" in (result.error or "") and "nothing was changed" in (
        result.error or "")
    assert config_state(host) == before and leftovers(host) == []
    assert not host.ran("postmap") and host.reloads == 0
    assert PASSWORD not in answer("set_smarthost", result)
    # On RHEL too (cyrus-sasl-plain); with the plugins the same request goes through.
    assert "cyrus-sasl-plain" in (ops_for(rhel_postfix_host(sasl_plugins=False)).set_smarthost(
        set_request(**AUTH)).error or "")
    assert ops_for(rhel_postfix_host()).set_smarthost(set_request(**AUTH)).ok


def test_postfix_check_refusing_the_new_main_cf_touches_nothing() -> None:
    host = debian_postfix_host()
    before = config_state(host)
    host.script(lambda argv: argv[0] == "postfix" and argv[-1] == "check", exit_code=1,
                stderr="postfix: fatal: refused by the test\n")
    result = ops_for(host).set_smarthost(set_request(**AUTH))
    assert result.ok is False and result.error_kind == "compile" and not result.rolled_back
    assert "refused by the test" in (result.error or "")
    assert "swap" not in [s.name for s in result.steps]
    assert config_state(host) == before and leftovers(host) == []
    assert host.running and host.reloads == 0 and result.data["smarthost"] is None


@pytest.mark.parametrize("auth", [False, True], ids=["plain", "auth"])
@pytest.mark.parametrize("failure", [
    {"exit_code": 1, "stderr": "reload: broken\n"},
    {"timeout": True},
], ids=["reload-fails", "reload-times-out"])
def test_a_failed_reload_rolls_back_byte_for_byte(failure: dict[str, Any], auth: bool) -> None:
    host = debian_postfix_host()
    before = config_state(host)
    host.script(["postfix", "reload"], **failure, times=1)
    result = ops_for(host).set_smarthost(set_request(**(AUTH if auth else {})))
    assert result.ok is False and result.rolled_back is True, result.error
    error = result.error or ""
    assert ("reload: broken" in error if "stderr" in failure else "did not finish" in error)
    assert "the previous configuration was restored and Postfix runs it" in error
    assert config_state(host) == before  # content, mode, owner, mtime; no marker, no map
    assert result.data["mta_running"] is True and result.data["smarthost"] is None
    assert host.running and host.running_config is not None
    assert host.running_config["relayhost"] == ""  # reloaded with the restored main.cf
    assert [s.name for s in result.steps][-2:] == ["rollback", "reload"]
    assert PASSWORD not in answer("set_smarthost", result)


def test_a_crash_between_swap_and_reload_is_finished_by_the_retry() -> None:
    host = debian_postfix_host()
    ops = ops_for(host)
    real_run = host.run

    def crash_at_reload(argv: Any, **kwargs: Any) -> Any:
        if list(argv) == ["postfix", "reload"]:
            raise SystemExit("the agent was killed")
        return real_run(argv, **kwargs)

    host.run = crash_at_reload  # type: ignore[method-assign]
    with pytest.raises(SystemExit):
        ops.set_smarthost(set_request())
    host.run = real_run  # type: ignore[method-assign]
    # main.cf is swapped in, the master still runs the old one, the marker says so.
    assert host.exists(MARKER) and f"relayhost = {RELAYHOST}\n" in host.read_text(MAIN_CF)
    assert host.running_config is not None and host.running_config["relayhost"] == ""
    retry = ops.set_smarthost(set_request())
    assert retry.ok and retry.changed is False, retry.error
    assert "reload" in [s.name for s in retry.steps] and "swap" not in [
        s.name for s in retry.steps]
    assert not host.exists(MARKER) and host.running_config["relayhost"] == RELAYHOST
    # Finished: the next one has nothing left to do.
    third = ops.set_smarthost(set_request())
    assert third.ok and "reload" not in [s.name for s in third.steps] and host.reloads == 1


def test_a_master_that_is_down_is_started_by_the_change() -> None:
    host = debian_postfix_host(running=False)
    result = ops_for(host).set_smarthost(set_request())
    assert result.ok and "start" in [s.name for s in result.steps], result.error
    assert host.running and host.running_config is not None
    assert host.running_config["relayhost"] == RELAYHOST


# -- remove smarthost ------------------------------------------------------------------------


def test_remove_smarthost_goes_back_to_direct_delivery() -> None:
    host = debian_postfix_host()
    ops = ops_for(host)
    assert ops.set_smarthost(set_request(**AUTH)).ok
    dry = ops.remove_smarthost(dry_run=True)
    assert dry.changed and f"-relayhost = {RELAYHOST}" in changed_lines(dry.data["diff"])
    assert host.running_config is not None and host.running_config["relayhost"] == RELAYHOST
    removed = ops.remove_smarthost()
    assert removed.ok and removed.changed and removed.data["smarthost"] is None, removed.error
    assert set(changed_lines(removed.data["diff"])) == {
        f"-relayhost = {RELAYHOST}", "-smtp_sasl_auth_enable = yes",
        f"-smtp_sasl_password_maps = hash:{SASL}", "-smtp_sasl_security_options = noanonymous",
        "-smtp_tls_security_level = encrypt", "+smtp_tls_security_level = may"}
    # The relayhost line and the SASL settings are gone; the TLS level the credentials
    # raised goes back to may (encrypt would refuse every MX without STARTTLS).
    assert host.read_text(MAIN_CF) == DEBIAN_POSTFIX_MAIN_CF.replace(
        "relayhost = \n", "").replace("smtp_tls_security_level=may",
                                      "smtp_tls_security_level = may")
    assert host.read_text(SASL) == "" and host.read_file(f"{SASL}.db") == FAKE_DB_MAGIC
    assert host.running_config["relayhost"] == "" and removed.data["config_in_sync"] is True
    again = ops.remove_smarthost()
    assert again.ok and again.changed is False and leftovers(host) == []


# -- queue ---------------------------------------------------------------------------------


def test_queue_list_reads_postqueue_json() -> None:
    for host in (debian_postfix_host(), rhel_postfix_host()):
        result = ops_for(host).queue_list()
        assert result.ok and result.data["count"] == 4, result.error
        message = result.data["messages"][0]
        assert (message["id"], message["section"], message["recipients"]) == (
            "22C37216D98", "deferred", ["someone@ourtest.com"])
        assert message["reason"] == "connect to mx.ourtest.com[10.201.0.2]:25: Connection refused"
        assert host.ran("sh") and not host.ran("postqueue")  # through the -j/-p script


def fax_host() -> tuple[FakePostfixHost, str]:
    """The four voicemails and a fax to another domain, tried once on arrival (deferred)."""
    host = debian_postfix_host()
    fax = host.queue_message(["alice@example.net"], sender="fax@pbx-deb.lab.test")
    assert fax.recipients == {
        "alice@example.net": "connect to mx.example.net[192.0.2.25]:25: Connection refused"}
    return host, fax.id


@pytest.mark.parametrize("selector, flushed", [
    ({}, 5), ({"queue_id": "256A7216D9C"}, 1), ({"recipient": "ALICE@"}, 1),
    ({"recipient": "ourtest"}, 4), ({"sender": "fax@"}, 1), ({"sender": "nobody"}, 0),
], ids=["all", "queue_id", "recipient", "recipient-domain", "sender", "no-match"])
def test_queue_flush_through_the_smarthost(selector: dict[str, str], flushed: int) -> None:
    host, _fax = fax_host()
    ops = ops_for(host)
    assert ops.set_smarthost(set_request()).ok
    host.commands.clear()
    result = ops.queue_flush(FlushRequest(**selector))
    assert result.ok, result.error
    assert (result.data["before"], result.data["after"]) == (5, 5 - flushed)
    assert len(result.data["remaining"]) == 5 - flushed
    deliveries = result.data["deliveries"]
    assert len(deliveries) == flushed and {d["outcome"] for d in deliveries} <= {"sent"}
    assert all(d["text"] == "Sent (2.0.0 Ok: queued)" for d in deliveries)
    assert len(host.relayed) == flushed
    assert {r.relay for r in host.relayed} <= {"smarthost.lab.test[192.0.2.25]:2525"}
    flushes = host.ran("postqueue", "-c", CONF, "-f") + host.ran("postqueue", "-c", CONF, "-i")
    assert len(flushes) == (1 if not selector else flushed)


def test_queue_flush_without_a_smarthost_defers_again() -> None:
    host, fax = fax_host()
    result = ops_for(host).queue_flush(FlushRequest())
    assert result.ok and (result.data["before"], result.data["after"]) == (5, 5), result.error
    deliveries = {d["queue_id"]: d for d in result.data["deliveries"]}
    assert len(deliveries) == 5 and {d["outcome"] for d in deliveries.values()} == {"deferred"}
    assert deliveries["22C37216D98"]["text"] == f"Deferred: {REFUSED}"
    assert deliveries[fax]["recipient"] == "alice@example.net"
    reasons = {m["id"]: m["reasons"] for m in result.data["remaining"]}
    assert reasons["22C37216D98"] == {"someone@ourtest.com": REFUSED}
    assert host.relayed == []
    # the attempts in the maillog, in Postfix's words
    tried = [ln for ln in host.read_text("/var/log/mail.log").splitlines()
             if "22C37216D98: to=" in ln]
    assert tried and re.search(
        r" pbx-deb postfix/smtp\[\d+\]: 22C37216D98: to=<someone@ourtest.com>, relay=none, "
        r"delay=[\d.]+, delays=[\d.]+/0.01/0.02/0, dsn=4.4.1, status=deferred "
        rf"\({re.escape(REFUSED)}\)$", tried[-1])


def test_queue_flush_with_the_master_down_says_so_and_still_counts() -> None:
    host = debian_postfix_host()
    host.stop_master()
    result = ops_for(host).queue_flush(FlushRequest())
    assert result.ok is False and "mail system is down" in (result.error or "")
    assert (result.data["before"], result.data["after"]) == (4, 4)


# -- log, status, diagnose -----------------------------------------------------------------


def test_read_log_summarises_the_attempts() -> None:
    host, _fax = fax_host()
    ops = ops_for(host)
    first = ops.read_log(200).data
    assert first["summary"]["deferred"] == 1 and first["summary"]["sent"] == 0
    assert ops.queue_flush(FlushRequest()).ok
    deferred = ops.read_log(200).data["summary"]
    assert deferred["deferred"] == 6 and deferred["by_stat"][f"Deferred: {REFUSED}"] == 4
    assert ops.set_smarthost(set_request()).ok and ops.queue_flush(FlushRequest()).ok
    tail = ops.read_log(200)
    assert tail.ok and host.ran("tail", "-n", "200", "/var/log/mail.log")
    summary = tail.data["summary"]
    assert (summary["sent"], summary["deferred"]) == (5, 6)
    assert summary["by_stat"]["Sent (Ok: queued)"] == 5  # the DSN code dropped, as sendmail's
    kinds = {r["kind"] for r in tail.data["records"]}
    assert {"delivery", "received", "daemon", "other"} <= kinds
    assert len(ops.read_log(3).data["records"]) == 3


def test_status_document() -> None:
    host = debian_postfix_host()
    ops = ops_for(host)
    assert ops.set_smarthost(set_request(**AUTH)).ok
    result = ops.status()
    assert result.ok, result.error
    data = result.data
    assert (data["hostname"], data["fqdn"]) == ("pbx-deb", "pbx-deb.lab.test")
    assert data["mta"] == {"kind": "postfix", "version": "3.7.11", "running": True}
    assert data["smarthost"] == {**SMARTHOST, "mailer": "relay", "auth": {"username": "pbx"},
                                 "tls": {"mode": "encrypt", "ca_file": None}, "masquerade": None}
    assert data["config_in_sync"] is True and data["queue"]["count"] == 4
    assert isinstance(data["queue"]["oldest_age_s"], int)
    assert data["hosts_file"] == {"ok": True, "problems": []}
    assert PASSWORD not in answer("collect_status", result)
    # Down, and the map older than its source: both said.
    host.stop_master()
    host.add_file(SASL, host.read_text(SASL), mode=0o600)
    data = ops.status().data
    assert data["mta"]["running"] is False and data["config_in_sync"] is False


def test_diagnose_checks_myhostname() -> None:
    host = debian_postfix_host()
    ops = ops_for(host)
    checks = {c["name"]: c for c in ops.diagnose().data["checks"]}
    assert checks["myhostname"]["ok"] is True and checks["mta_running"]["ok"] is True
    assert checks["myhostname"]["data"]["myhostname"] == "pbx-deb.lab.test"
    assert host.run(["postconf", "-e", "myhostname=pbx-deb"]).ok
    result = ops.diagnose()
    checks = {c["name"]: c for c in result.data["checks"]}
    assert result.ok is False and checks["myhostname"]["ok"] is False
    assert "'pbx-deb'" in checks["myhostname"]["detail"]
    assert "fully" in checks["myhostname"]["detail"]
    # RHEL's main.cf leaves myhostname to the system's short name: pbx-rhel.localdomain.
    rhel = {c["name"]: c for c in ops_for(rhel_postfix_host()).diagnose().data["checks"]}
    assert rhel["myhostname"]["data"]["myhostname"] == "pbx-rhel.localdomain"


# -- what a review found ----------------------------------------------------------------------


def test_a_flush_leaves_held_messages_alone_and_does_not_wait_for_them() -> None:
    host = debian_postfix_host()
    host.queue[0].queue_name = "hold"
    ops = ops_for(host)
    assert ops.set_smarthost(set_request()).ok
    result = ops.queue_flush(FlushRequest())
    assert result.ok
    assert any(s.name == "hold" and "1 held message" in s.output for s in result.steps)
    assert result.data["after"] == 1 and result.data["remaining"][0]["section"] == "hold"


def test_a_change_swapped_in_but_not_reloaded_is_not_in_sync() -> None:
    host = debian_postfix_host()
    ops = ops_for(host)
    assert ops.read_smarthost().data["config_in_sync"] is True
    host.add_file(MARKER, b"", mode=0o600)
    assert ops.read_smarthost().data["config_in_sync"] is False


def test_a_compiled_map_older_than_its_source_is_rebuilt() -> None:
    host = debian_postfix_host()
    ops = ops_for(host)
    assert ops.set_smarthost(set_request(**AUTH)).ok
    host.add_file(SASL, host.read_file(SASL), mode=0o600)  # edited after the map was built
    assert ops.read_smarthost().data["config_in_sync"] is False
    again = ops.set_smarthost(set_request(**AUTH))
    assert again.ok and "build sasl_passwd map" in [s.name for s in again.steps], again.error
    assert again.data["config_in_sync"] is True


def test_status_without_main_cf_still_looks_at_the_host() -> None:
    host = debian_postfix_host()
    host.remove(MAIN_CF)
    result = ops_for(host).status()
    assert result.ok is False and result.error
    assert result.data["hostname"] == "pbx-deb" and result.data["config_in_sync"] is False
