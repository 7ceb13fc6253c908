"""A rollback tells the truth.

Before: make and restart failures inside the rollback were swallowed and the answer said
"the previous configuration was restored" whatever happened; a failing copy or rename in
the rollback escaped with ``rolled_back`` unset; a failure between the two authinfo
renames left the map and its source out of step. Now the answer says which files are
byte-identical to the backup, whether the MTA runs, and what to do when it is not whole.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from shared.actions import ACTIONS
from shared.errors import ExecutorError
from shared.mta import MtaOperations, operations_for
from shared.profile import build_profile
from shared.results import OperationResult
from shared.testing import FakeSendmailHost, FileState, debian_sendmail_host
from shared.validation import parse_smarthost_request

MAIL = "/etc/mail"
MC, CF, AUTHINFO = f"{MAIL}/sendmail.mc", f"{MAIL}/sendmail.cf", f"{MAIL}/authinfo"
ACCESS = f"{MAIL}/access"
BACKUPS = f"{MAIL}/.relayfleet-backup"
RESTART = ("/etc/init.d/sendmail", "restart")
PASSWORD = "Fake-S3cret!pw"


def ops_for(host: FakeSendmailHost) -> MtaOperations:
    return operations_for(host, build_profile("sendmail", host.flavour, {}))


def config_state(host: FakeSendmailHost) -> dict[str, FileState]:
    return {p: s for p, s in host.snapshot(MAIL).items() if not p.startswith(BACKUPS)}


def change(host: FakeSendmailHost, auth: bool = False) -> OperationResult:
    extra = {"auth": {"username": "pbx", "password": PASSWORD}} if auth else {}
    return ops_for(host).set_smarthost(parse_smarthost_request(
        {"host": "smarthost.lab.test", "port": 2525, **extra}))


def answer(result: OperationResult) -> dict[str, Any]:
    """The agent's document for the result (what the controller sees too)."""
    doc = ACTIONS["set_smarthost"].document(result)
    assert PASSWORD not in json.dumps(doc)
    return doc


def fail_rename(host: FakeSendmailHost, when: Callable[[str, str], bool]) -> list[str]:
    """Make the first rename matching ``when(src, dst)`` fail; return the renames seen."""
    real = host.rename
    seen: list[str] = []
    spent: list[str] = []

    def rename(src: str, dst: str) -> None:
        seen.append(dst)
        if not spent and when(src, dst):
            spent.append(dst)
            raise ExecutorError(f"cannot rename {src} to {dst}: Input/output error")
        real(src, dst)

    host.rename = rename  # type: ignore[method-assign]
    return seen


def test_success_reports_the_mta_running_and_nothing_restored() -> None:
    host = debian_sendmail_host()
    doc = answer(change(host))
    assert doc["ok"] and doc["mta_running"] is True
    assert doc["restored"] == [] and doc["not_restored"] == [] and doc["rolled_back"] is False


def test_make_failing_during_the_rollback_is_reported() -> None:
    host = debian_sendmail_host()
    before = config_state(host)
    host.script(["make"], exit_code=2, stderr="make: *** [Makefile:10: all] Error 1", times=2)
    result = change(host)
    doc = answer(result)
    # the files are back byte for byte, but the answer does not pretend make worked
    assert doc["ok"] is False and doc["rolled_back"] is True and config_state(host) == before
    assert "make failed" in doc["error"] and "was restored" not in doc["error"]
    assert "restored byte for byte" in doc["error"]
    assert doc["restored"] == [MC, CF, AUTHINFO, f"{AUTHINFO}.db", ACCESS, f"{ACCESS}.db"]
    assert doc["mta_running"] is True and doc["backup"].startswith(BACKUPS)


def test_restart_failing_twice_reports_the_mta_down() -> None:
    host = debian_sendmail_host()
    before = config_state(host)
    host.stop_daemon()  # a restart that fails leaves sendmail stopped
    host.script(list(RESTART), exit_code=1, stderr="sm-mta failed to start", times=3)
    result = change(host)
    doc = answer(result)
    assert doc["ok"] is False and doc["rolled_back"] is True and config_state(host) == before
    assert doc["mta_running"] is False
    assert "restart failed twice" in doc["error"] and "NOT running" in doc["error"]
    assert "/etc/init.d/sendmail restart" in doc["error"]
    # the change's restart, then the rollback's and its one retry
    assert [s.name for s in result.steps].count("restart") == 3


def test_restart_failing_once_in_the_rollback_is_retried() -> None:
    host = debian_sendmail_host()
    before, old_cf = config_state(host), host.read_file(CF)
    host.script(list(RESTART), exit_code=1, stderr="sm-mta failed to start", times=2)
    result = change(host)
    doc = answer(result)
    assert doc["ok"] is False and doc["rolled_back"] is True and doc["mta_running"] is True
    assert "the previous configuration was restored" in doc["error"]
    assert [s.name for s in result.steps].count("restart") == 3
    assert config_state(host) == before and host.daemon_cf == old_cf


def test_a_copy_failing_mid_rollback_does_not_escape() -> None:
    host = debian_sendmail_host()
    host.script(["make"], exit_code=2, stderr="make: *** Error 1", times=1)
    # the backup's copies pass; the rollback's copy of sendmail.cf fails
    host.script(lambda argv: argv[0] == "cp" and ".sendmail.cf.relayfleet-restore" in argv[-1],
                exit_code=1, stderr="cp: error writing: No space left on device", times=1)
    result = change(host)
    doc = answer(result)
    assert doc["ok"] is False and doc["rolled_back"] is False
    assert doc["not_restored"] == [CF] and CF not in doc["restored"] and MC in doc["restored"]
    assert f"{CF} not restored" in doc["error"] and "No space left" in doc["error"]
    assert "by hand" in doc["error"] and doc["backup"] in doc["error"]
    assert not [p for p in host.snapshot(MAIL) if "relayfleet-restore" in p]


def test_a_rename_failing_mid_rollback_does_not_escape() -> None:
    host = debian_sendmail_host()
    before = config_state(host)
    host.script(["make"], exit_code=2, stderr="make: *** Error 1", times=1)
    fail_rename(host, lambda src, dst: "relayfleet-restore" in src and dst == MC)
    result = change(host)
    doc = answer(result)
    assert doc["ok"] is False and doc["rolled_back"] is False
    assert doc["not_restored"] == [MC] and CF in doc["restored"]
    assert "Input/output error" in doc["error"] and "by hand" in doc["error"]
    # the one file left is the new mc: the answer says so; make did not compile it over
    # the restored cf, and sendmail still runs (restart was not tried over half a config)
    assert config_state(host)[CF] == before[CF]
    assert config_state(host)[MC].data != before[MC].data
    assert "make and restart were not run" in doc["error"] and doc["mta_running"] is True
    assert [s.name for s in result.steps][-2:] == ["make", "rollback"]


def test_a_failure_between_the_authinfo_renames_is_rolled_back() -> None:
    host = debian_sendmail_host()
    before = config_state(host)
    assert AUTHINFO not in before
    fail_rename(host, lambda src, dst: dst == AUTHINFO and "restore" not in src)
    result = change(host, auth=True)
    doc = answer(result)
    assert doc["ok"] is False and doc["rolled_back"] is True, doc["error"]
    # the map that was already renamed in is gone again: neither half of the pair stays
    assert config_state(host) == before
    assert doc["restored"] == [MC, CF, AUTHINFO, f"{AUTHINFO}.db", ACCESS, f"{ACCESS}.db"]
    assert "the previous configuration was restored" in doc["error"]


@pytest.mark.parametrize("auth", [False, True], ids=["plain", "auth"])
def test_a_rolled_back_change_is_byte_identical(auth: bool) -> None:
    host = debian_sendmail_host()
    before = config_state(host)
    host.script(list(RESTART), exit_code=1, stderr="sm-mta failed to start", times=1)
    doc = answer(change(host, auth=auth))
    assert doc["rolled_back"] is True and doc["mta_running"] is True
    assert config_state(host) == before  # content, mode, owner and mtime
