"""A change cut between two of its renames (its process killed) is undone by the next holder
of the change lock, from the backup the swap's journal names.

Before: the agent SIGKILLed between renaming sendmail.mc and sendmail.cf left the new mc
beside the old cf; the restarted agent then named the mc's smarthost with
``config_in_sync: false`` until some later change converged (found by the agent-kill chaos
driver). Here the kill is a ``BaseException`` raised by the fake host's rename: nothing in
the change catches it, so the files stay as a killed process leaves them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import pytest

from shared.change import SWAP_JOURNAL
from shared.errors import ExecutorError
from shared.mta import MtaOperations, operations_for
from shared.profile import build_profile
from shared.testing import FakeSendmailHost, debian_postfix_host, debian_sendmail_host
from shared.testing.executor import FakeExecutor
from shared.validation import parse_smarthost_request

MAIL = "/etc/mail"
MC, CF = f"{MAIL}/sendmail.mc", f"{MAIL}/sendmail.cf"
JOURNAL = f"{MAIL}/{SWAP_JOURNAL}"
FIRST, SECOND = "first.lab.test", "second.lab.test"
RESTART = ("/etc/init.d/sendmail", "restart")


class Killed(BaseException):
    """The process's end, as far as the change can tell (it cannot catch SIGKILL either)."""


def ops_for(host: FakeSendmailHost) -> MtaOperations:
    return operations_for(host, build_profile("sendmail", host.flavour, {}))


def point_at(host: FakeSendmailHost, smarthost: str) -> dict[str, object]:
    result = ops_for(host).set_smarthost(parse_smarthost_request({"host": smarthost}))
    assert result.ok, result.error
    return dict(result.data)


def killed_at_rename_of(host: FakeExecutor, path: str,
                        then: Callable[[], object]) -> None:
    """Run ``then`` with the process killed as it renames something over ``path``."""
    real = host.rename

    def rename(src: str, dst: str) -> None:
        if dst == path:
            raise Killed(dst)
        real(src, dst)

    host.rename = rename  # type: ignore[method-assign]
    with pytest.raises(Killed):
        then()
    host.rename = real  # type: ignore[method-assign]


def files(host: FakeSendmailHost) -> tuple[bytes, bytes]:
    return host.read_file(MC), host.read_file(CF)


@pytest.fixture
def cut_host() -> tuple[FakeSendmailHost, tuple[bytes, bytes]]:
    """A host pointed at FIRST, then killed between the mc and the cf renames of a change to
    SECOND: its files before that change, and the host."""
    host = debian_sendmail_host()
    point_at(host, FIRST)
    before = files(host)
    killed_at_rename_of(host, CF, lambda: point_at(host, SECOND))
    assert host.read_file(MC) != before[0] and host.read_file(CF) == before[1]  # torn pair
    assert host.exists(JOURNAL)
    return host, before


def test_the_next_agent_start_puts_the_files_back(
        cut_host: tuple[FakeSendmailHost, tuple[bytes, bytes]]) -> None:
    host, before = cut_host
    restarts = len(host.ran(*RESTART))
    undone = ops_for(host).finish_interrupted_change()
    assert undone is not None and "sendmail.mc" in undone and ".relayfleet-backup" in undone
    assert files(host) == before
    assert not host.exists(JOURNAL)
    assert len(host.ran(*RESTART)) == restarts + 1  # the MTA runs them again
    smarthost = ops_for(host).read_smarthost().data
    assert smarthost["config_in_sync"] is True and smarthost["smarthost"]["host"] == FIRST
    assert ops_for(host).finish_interrupted_change() is None  # nothing left to undo


def test_the_next_change_undoes_it_first_then_runs(
        cut_host: tuple[FakeSendmailHost, tuple[bytes, bytes]]) -> None:
    host, _before = cut_host
    result = ops_for(host).set_smarthost(parse_smarthost_request({"host": SECOND}))
    assert result.ok and result.changed, result.error
    names = [step.name for step in result.steps]
    assert names.index("interrupted change") < names.index("rollback") < names.index("swap")
    assert result.data["config_in_sync"] is True
    assert result.data["smarthost"]["host"] == SECOND  # type: ignore[index]
    assert not host.exists(JOURNAL)


def test_a_change_killed_before_its_first_rename_is_put_back_as_it_was() -> None:
    host = debian_sendmail_host()
    point_at(host, FIRST)
    before = files(host)
    killed_at_rename_of(host, MC, lambda: point_at(host, SECOND))
    assert files(host) == before
    restarts = len(host.ran(*RESTART))
    # the journal is there (written before the first rename); undoing it changes nothing
    assert ops_for(host).finish_interrupted_change() is not None
    assert files(host) == before and not host.exists(JOURNAL)
    assert len(host.ran(*RESTART)) == restarts + 1


@pytest.mark.parametrize("journal", [
    b'{"backup": "/etc/mail/.relayfleet-backup/2026', b"", b"[]",  # cut short, or not ours
    json.dumps({"backup": "/etc/mail/.relayfleet-backup/../../../root", "files": [MC]}).encode(),
    json.dumps({"backup": "/tmp/elsewhere", "files": [MC]}).encode(),
    json.dumps({"backup": "/etc/mail/.relayfleet-backup/.", "files": [MC]}).encode(),
    json.dumps({"backup": "/etc/mail/.relayfleet-backup/\x00x", "files": [MC]}).encode(),
    json.dumps({"backup": "/etc/mail/.relayfleet-backup/x", "files": ["../etc/shadow"]}).encode(),
])
def test_a_journal_that_is_not_whole_or_not_ours_restores_nothing(journal: bytes) -> None:
    host = debian_sendmail_host()
    point_at(host, FIRST)
    before = files(host)
    host.add_file(JOURNAL, journal)
    restarts = len(host.ran(*RESTART))
    assert ops_for(host).finish_interrupted_change() is None
    assert files(host) == before and not host.exists(JOURNAL)
    assert len(host.ran(*RESTART)) == restarts


def test_a_whole_change_leaves_no_journal() -> None:
    host = debian_sendmail_host()
    point_at(host, FIRST)
    point_at(host, SECOND)
    assert not host.exists(JOURNAL)
    assert ops_for(host).finish_interrupted_change() is None


def test_the_agent_undoes_it_before_it_serves(
        cut_host: tuple[FakeSendmailHost, tuple[bytes, bytes]],
        caplog: pytest.LogCaptureFixture) -> None:
    """``relayfleet-agent serve`` runs this before it listens (through the executor its
    operations use), and says so in its log."""
    from agent.cli import _finish_interrupted_change
    from agent.config import MtaSettings, ProfileResolver

    host, before = cut_host
    profiles = ProfileResolver(MtaSettings("sendmail", "debian"), lambda: host)
    with caplog.at_level(logging.WARNING):
        _finish_interrupted_change(profiles, logging.getLogger("relayfleet.agent"))
    assert files(host) == before and not host.exists(JOURNAL)
    assert "a configuration change was cut by the agent's end" in caplog.text
    caplog.clear()
    _finish_interrupted_change(profiles, logging.getLogger("relayfleet.agent"))
    assert "configuration change" not in caplog.text  # nothing to say the second time


def _journal_of(host: FakeSendmailHost) -> dict[str, object]:
    loaded: dict[str, object] = json.loads(host.read_file(JOURNAL))
    return loaded


def test_a_journal_whose_backup_is_gone_restores_and_removes_nothing(
        cut_host: tuple[FakeSendmailHost, tuple[bytes, bytes]]) -> None:
    """Read blindly, it would have removed every file it names (a backup without a copy of
    a file means the change created it)."""
    host, _before = cut_host
    torn = files(host)
    host.remove_dir(str(_journal_of(host)["backup"]))
    assert ops_for(host).finish_interrupted_change() is None
    assert files(host) == torn and not host.exists(JOURNAL)


def test_a_journal_older_than_the_last_backup_restores_nothing(
        cut_host: tuple[FakeSendmailHost, tuple[bytes, bytes]]) -> None:
    """Something that does not read journals changed the files since: the cut change's
    backup would undo that too."""
    host, _before = cut_host
    torn = files(host)
    host.add_dir(f"{MAIL}/.relayfleet-backup/29991231T000000.000000Z", mode=0o700)
    assert ops_for(host).finish_interrupted_change() is None
    assert files(host) == torn and not host.exists(JOURNAL)


def test_a_journal_naming_a_file_the_mta_does_not_own_restores_nothing(
        cut_host: tuple[FakeSendmailHost, tuple[bytes, bytes]]) -> None:
    host, _before = cut_host
    host.add_file("/etc/motd", "keep me")
    doc = _journal_of(host)
    host.add_file(JOURNAL, json.dumps({**doc, "files": [MC, "/etc/motd"]}))
    assert ops_for(host).finish_interrupted_change() is None
    assert host.read_file("/etc/motd") == b"keep me" and not host.exists(JOURNAL)


def test_a_rollback_in_the_change_itself_leaves_no_journal() -> None:
    """A restart that fails after the swap: the change rolls back and closes the journal."""
    host = debian_sendmail_host()
    point_at(host, FIRST)
    before = files(host)
    host.script(RESTART, exit_code=1, stderr="Starting MTA: failed\n", times=1)
    result = ops_for(host).set_smarthost(parse_smarthost_request({"host": SECOND}))
    assert not result.ok and result.rolled_back, result.error
    assert files(host) == before and not host.exists(JOURNAL)


def test_an_undo_that_cannot_put_the_files_back_keeps_the_journal_and_says_so(
        cut_host: tuple[FakeSendmailHost, tuple[bytes, bytes]]) -> None:
    host, _before = cut_host
    real = host.rename

    def rename(src: str, dst: str) -> None:
        if dst == MC:
            raise ExecutorError(f"cannot rename {src} to {dst}: Read-only file system")
        real(src, dst)

    host.rename = rename  # type: ignore[method-assign]
    result = ops_for(host).set_smarthost(parse_smarthost_request({"host": SECOND}))
    assert not result.ok and "could not be undone" in (result.error or "")
    assert f"delete {JOURNAL}" in (result.error or "")
    assert host.exists(JOURNAL)  # the next change tries again


def test_postfix_a_change_cut_between_its_map_and_main_cf_is_undone() -> None:
    """Postfix's change renames the credentials map before main.cf: cut between them, the
    next change puts the map back before it runs."""
    host = debian_postfix_host()
    main_cf, sasl = "/etc/postfix/main.cf", "/etc/postfix/sasl_passwd"
    ops = operations_for(host, build_profile("postfix", "debian", {}))
    assert ops.set_smarthost(parse_smarthost_request({"host": FIRST})).ok
    before = host.read_file(main_cf), host.read_file_if_exists(sasl)
    with_auth = parse_smarthost_request(
        {"host": SECOND, "auth": {"username": "pbx", "password": "Fake-S3cret!pw"}})
    killed_at_rename_of(host, main_cf, lambda: ops.set_smarthost(with_auth))
    assert host.read_file_if_exists(sasl) != before[1]  # the map went in, main.cf did not
    assert host.exists(f"/etc/postfix/{SWAP_JOURNAL}")
    undone = operations_for(host, build_profile("postfix", "debian", {})
                            ).finish_interrupted_change()
    assert undone is not None and "sasl_passwd" in undone
    assert (host.read_file(main_cf), host.read_file_if_exists(sasl)) == before
    assert not host.exists(f"/etc/postfix/{SWAP_JOURNAL}")
