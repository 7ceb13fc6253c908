"""fix_hostname on the fake sendmail and Postfix hosts (shared.testing): the /etc/hosts edit,
the MTA told, dry run, backup, rollback, a bind-mounted /etc/hosts, and the refusals.

The fake hosts here resolve their own name from /etc/hosts (``resolve_from_hosts``) and
their DNS does not know them (``fqdn = None``), like the seed's PBX: ``hostname -f`` and
sendmail's ``$j`` are what /etc/hosts says.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from agent.app import create_app
from agent.config import AgentConfig, MtaSettings
from shared import diagnose as diag
from shared.actions import ACTIONS
from shared.errors import ExecutorError, ValidationError
from shared.mta import HostnameRequest, MtaOperations, operations_for
from shared.profile import build_profile
from shared.results import OperationResult
from shared.testing import (
    FakeExecutor,
    FakePostfixHost,
    FakeSendmailHost,
    debian_postfix_host,
    debian_sendmail_host,
    rhel_postfix_host,
)

HOSTS = "/etc/hosts"
#: lab1's /etc/hosts as a Debian installer writes it without a domain, plus the PBX's
#: comment in Latin-1 (a byte that is not UTF-8 must come back as it was)
UNQUALIFIED = (b"127.0.0.1\tlocalhost lab1\n# PBX \xe9quipe\n"
               b"::1\tlocalhost ip6-localhost ip6-loopback\n")
FIXED = (b"127.0.0.1\tlocalhost\n127.0.1.1\tlab1.lab.test lab1\n# PBX \xe9quipe\n"
         b"::1\tlocalhost ip6-localhost ip6-loopback\n")
FIX = HostnameRequest(domain="lab.test")


def _unknown_to_dns(host: FakeExecutor, hosts: bytes | None = UNQUALIFIED) -> None:
    host.resolve_from_hosts = True
    host.fqdn = None
    if hosts is None:
        host.remove(HOSTS)
    else:
        host.add_file(HOSTS, hosts)


def sendmail_host(hosts: bytes | None = UNQUALIFIED) -> FakeSendmailHost:
    host = debian_sendmail_host()
    _unknown_to_dns(host, hosts)
    return host


def ops_for(host: FakeSendmailHost | FakePostfixHost) -> MtaOperations:
    kind = "postfix" if isinstance(host, FakePostfixHost) else "sendmail"
    return operations_for(host, build_profile(kind, host.flavour, {}))


def fix(host: FakeSendmailHost | FakePostfixHost, request: HostnameRequest = FIX, *,
        dry_run: bool = False) -> OperationResult:
    return ACTIONS["fix_hostname"].run(ops_for(host), request, dry_run=dry_run)


def document(result: OperationResult) -> dict[str, Any]:
    """The agent's answer (ChangeResultSchema) for ``result``."""
    return ACTIONS["fix_hostname"].document(result)


def names(result: OperationResult) -> list[str]:
    return [step.name for step in result.steps]


def j_macro(host: FakeSendmailHost) -> str:
    out = host.run(["sendmail", "-d0.1", "-bv", "root"]).stdout_text()
    return out.split("(canonical domain name) $j = ")[1].split()[0]


def outside_backups(host: FakeExecutor) -> dict[str, Any]:
    return {p: s for p, s in host.snapshot().items() if ".relayfleet-backup" not in p}


# -- sendmail ----------------------------------------------------------------------------


def assert_hosts_file_restored(host: Any, result: Any) -> None:
    """The rollback put /etc/hosts back as it was, and the MTA runs."""
    doc = document(result)
    assert doc["restored"] == [HOSTS] and doc["not_restored"] == []
    assert doc["mta_running"] is True
    assert host.read_file(HOSTS) == UNQUALIFIED


def test_the_fake_resolves_its_name_from_etc_hosts() -> None:
    host = sendmail_host()
    assert host.run(["hostname", "-f"]).stdout_text() == "localhost\n"
    assert j_macro(host) == "localhost"  # sendmail would greet relays as localhost
    check = diag.check_hosts_file(host, "lab1", "lab1.lab.test")
    assert check.ok is False and check.detail.endswith(f"to fix: {diag.hosts.FIX_HOSTS_HINT}")


def test_dry_run_shows_the_diff_and_changes_nothing() -> None:
    host = sendmail_host()
    before = host.snapshot()
    result = fix(host, dry_run=True)
    assert result.ok and result.changed and result.data["dry_run"] is True
    assert host.snapshot() == before
    assert not host.ran("/etc/init.d/sendmail") and not host.ran("sendmail", "-d0.1")
    doc = document(result)
    assert doc["diff"] == (
        "--- /etc/hosts (current)\n+++ /etc/hosts (new)\n@@ -1,3 +1,4 @@\n"
        "-127.0.0.1\tlocalhost lab1\n+127.0.0.1\tlocalhost\n"
        "+127.0.1.1\tlab1.lab.test lab1\n # PBX \ufffdquipe\n"
        " ::1\tlocalhost ip6-localhost ip6-loopback\n")
    assert doc["backup"] is None and doc["smarthost"] is None


def test_fix_qualifies_the_name_and_restarts_sendmail() -> None:
    host = sendmail_host()
    old_pid = host.daemon_pid
    result = fix(host)
    assert result.ok, result.error
    assert host.read_file(HOSTS) == FIXED
    assert host.run(["hostname", "-f"]).stdout_text() == "lab1.lab.test\n"
    assert j_macro(host) == "lab1.lab.test"
    assert host.daemon_pid not in (None, old_pid)
    assert names(result) == ["read /etc/hosts", "write hosts (temporary)", "backup", "swap",
                             "hostname -f", "verify name", "restart", "sendmail's name",
                             "verify"]
    doc = document(result)
    assert doc["changed"] and not doc["rolled_back"] and doc["mta_running"] is True
    assert doc["config_in_sync"] is True and doc["diff"].startswith("--- /etc/hosts")
    # the backup holds /etc/hosts as it was; nothing else was backed up
    assert host.list_dir(doc["backup"]) == ["hosts"]
    assert host.read_file(f"{doc['backup']}/hosts") == UNQUALIFIED
    # /etc/hostname and the kernel's name are not this action's
    assert not host.ran("hostname", "lab1.lab.test") and host.state("/etc/hostname") is None
    assert diag.check_hosts_file(host, "lab1", "lab1.lab.test").ok


def test_a_second_run_changes_nothing() -> None:
    host = sendmail_host()
    assert fix(host).ok
    before, restarts = host.snapshot(), len(host.ran("/etc/init.d/sendmail"))
    again = fix(host, HostnameRequest(fqdn="lab1.lab.test"))
    assert again.ok and not again.changed and document(again)["diff"] == ""
    assert host.snapshot() == before and len(host.ran("/etc/init.d/sendmail")) == restarts
    assert [s.output for s in again.steps if s.name == "compare"] == [
        "already fully qualified: the host resolves lab1 to lab1.lab.test and sendmail has "
        "that name; no file touched"]


def test_a_right_file_newer_than_sendmail_restarts_it() -> None:
    # /etc/hosts was fixed by hand after sendmail started: sendmail still has the old name
    host = sendmail_host()
    host.add_file(HOSTS, FIXED)
    result = fix(host)
    assert result.ok and not result.changed
    assert host.ran("/etc/init.d/sendmail", "restart")
    assert result.data["note"] == ("sendmail was started before /etc/hosts last changed; "
                                   "restarted so that it runs it")
    restarts = len(host.ran("/etc/init.d/sendmail"))
    assert fix(host).ok and len(host.ran("/etc/init.d/sendmail")) == restarts


def _etc_writes(host: FakeExecutor, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every path directly in /etc that the host is asked to create, write or rename."""
    written: list[str] = []
    for method in ("write_file", "rename", "copy_file", "make_dir", "set_owner_mode"):
        real = getattr(host, method)

        def recording(*args: Any, _real: Any = real, **kwargs: Any) -> Any:
            written.extend(path for path in args if isinstance(path, str)
                           and path.rsplit("/", 1)[0] == "/etc")
            return _real(*args, **kwargs)
        monkeypatch.setattr(host, method, recording)
    return written


@pytest.mark.parametrize("mounted", [False, True])
def test_etc_hosts_is_written_in_place_and_nothing_else_in_etc(
        mounted: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """/etc/hosts is never renamed over, and no temp file goes beside it: the agent's unit
    keeps /etc read-only and /etc/hosts may be a bind mount."""
    host = sendmail_host()
    if mounted:
        host.mount_points.add(HOSTS)
    written = _etc_writes(host, monkeypatch)
    result = fix(host)
    assert result.ok, result.error
    assert host.read_file(HOSTS) == FIXED
    (swap,) = [s.output for s in result.steps if s.name == "swap"]
    assert swap == ("installed new /etc/hosts; /etc/hosts is never renamed over: its "
                    "content was replaced in place")
    assert set(written) == {HOSTS}
    assert not [p for p in host.snapshot("/etc") if ".hosts.relayfleet" in p]


def test_an_etc_hosts_that_cannot_be_written_is_reported_and_left_as_it_was(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent's /etc/hosts turns read-only when something else renames a new one in:
    the change fails saying so, and the rollback reports the file as it is (untouched)."""
    host = sendmail_host()
    real = host.write_file

    def write_file(path: str, data: bytes, *, mode: int = 0o600) -> None:
        if path == HOSTS:
            raise ExecutorError(f"cannot write {path}: Read-only file system")
        real(path, data, mode=mode)
    monkeypatch.setattr(host, "write_file", write_file)
    result = fix(host)
    assert not result.ok and result.rolled_back
    assert "cannot write /etc/hosts: Read-only file system" in (result.error or "")
    assert_hosts_file_restored(host, result)


@pytest.mark.parametrize("mounted", [False, True])
def test_a_failed_restart_rolls_back_byte_for_byte(mounted: bool) -> None:
    host = sendmail_host()
    if mounted:
        host.mount_points.add(HOSTS)
    before = outside_backups(host)
    host.script(["/etc/init.d/sendmail", "restart"], exit_code=1,
                stderr="sendmail: cannot start", times=1)
    result = fix(host)
    assert not result.ok and result.rolled_back
    assert "the previous configuration was restored and sendmail runs it" in (result.error or "")
    assert_hosts_file_restored(host, result)
    after = outside_backups(host)
    assert after[HOSTS].data == before[HOSTS].data and after[HOSTS].mode == before[HOSTS].mode
    assert j_macro(host) == "localhost"
    assert names(result)[-3:] == ["rollback", "make", "restart"]


def test_a_resolver_that_does_not_read_etc_hosts_rolls_back() -> None:
    host = sendmail_host()
    host.resolve_from_hosts = False  # e.g. hosts: dns files in /etc/nsswitch.conf
    result = fix(host)
    assert not result.ok and result.rolled_back
    assert result.error is not None and result.error.startswith(
        "after the change the host resolves its name to 'nothing', not lab1.lab.test: its "
        "resolver does not answer from /etc/hosts first")
    assert host.read_file(HOSTS) == UNQUALIFIED
    # sendmail was not restarted for a name it could not have taken; the rollback's restart
    assert len(host.ran("/etc/init.d/sendmail")) == 1


def test_sendmail_that_keeps_another_name_rolls_back() -> None:
    host = sendmail_host()
    host.script(["sendmail", "-d0.1", "-bv", "root"], exit_code=0,
                stdout="  (canonical domain name) $j = mail.elsewhere.test\n", times=1)
    result = fix(host)
    assert not result.ok and result.rolled_back
    assert "sendmail calls itself 'mail.elsewhere.test' ($j), not lab1.lab.test" in (
        result.error or "")
    assert host.read_file(HOSTS) == UNQUALIFIED


def test_a_missing_etc_hosts_is_created_and_a_link_refused() -> None:
    host = sendmail_host(hosts=None)
    result = fix(host)
    assert result.ok and host.read_file(HOSTS) == (
        b"127.0.0.1\tlocalhost\n127.0.1.1\tlab1.lab.test lab1\n"
        b"::1\tlocalhost ip6-localhost ip6-loopback\n")
    linked = sendmail_host()
    linked.add_symlink(HOSTS, "/run/hosts")
    before = linked.snapshot()
    refused = fix(linked)
    assert not refused.ok and refused.error_kind == "config"
    assert refused.error == ("/etc/hosts is a symbolic link to /run/hosts: relayfleet does not "
                             "follow links out of where a file belongs; edit /run/hosts by hand")
    assert linked.snapshot() == before


@pytest.mark.parametrize("request_data, field, reason", [
    ({"fqdn": "pbx9.lab.test"}, "fqdn",
     "pbx9.lab.test does not start with the host's short name lab1: fix_hostname qualifies "
     "the existing name; renaming a host is a different job"),
    ({"domain": "localdomain"}, "domain",
     "lab1.localdomain is a placeholder name relays refuse: give the host's real domain"),
])
def test_a_request_that_would_rename_the_host_is_refused(
        request_data: dict[str, str], field: str, reason: str) -> None:
    host = sendmail_host()
    before = host.snapshot()
    with pytest.raises(ValidationError) as refused:
        fix(host, HostnameRequest(**request_data))
    assert refused.value.errors == {field: [reason]}
    assert host.snapshot() == before


def test_a_host_called_localhost_is_refused() -> None:
    host = debian_sendmail_host(hostname="localhost")
    with pytest.raises(ValidationError, match="the host calls itself 'localhost'"):
        fix(host)


def test_the_agent_answers_422_for_a_rename() -> None:
    host = sendmail_host()
    token = "fix-hostname-token-0123456789"
    config = AgentConfig("127.0.0.1", 8587, hashlib.sha256(token.encode()).hexdigest(),
                         MtaSettings("sendmail", "debian"))
    with create_app(config, executor_factory=lambda: host).test_client() as client:
        auth = {"Authorization": f"Bearer {token}"}
        refused = client.post("/v1/hostname", json={"fqdn": "pbx9.lab.test"}, headers=auth)
        assert refused.status_code == 422
        assert "renaming a host is a different job" in refused.get_json()["message"]
        dry = client.post("/v1/hostname", json={"domain": "lab.test", "dry_run": True},
                          headers=auth)
        assert dry.status_code == 200 and dry.get_json()["dry_run"] is True
        done = client.post("/v1/hostname", json={"domain": "lab.test"}, headers=auth)
        assert done.status_code == 200 and done.get_json()["changed"] is True
    assert host.read_file(HOSTS) == FIXED


# -- Postfix -----------------------------------------------------------------------------


def postfix_host(flavour: str) -> FakePostfixHost:
    host = rhel_postfix_host() if flavour == "rhel" else debian_postfix_host()
    _unknown_to_dns(host, b"127.0.0.1\tlocalhost\n127.0.1.1\t" + host.hostname.encode() + b"\n")
    return host


def test_postfix_without_myhostname_gets_it_set_and_reloaded() -> None:
    host = postfix_host("rhel")  # RHEL's main.cf leaves myhostname to pbx-rhel.localdomain
    main_cf = host.read_file(host.main_cf_path)
    before = host.snapshot()
    dry = fix(host, dry_run=True)
    assert dry.ok and host.snapshot() == before and host.reloads == 0
    diff = document(dry)["diff"]
    assert "+127.0.1.1\tpbx-rhel.lab.test pbx-rhel\n" in diff
    assert "+++ /etc/postfix/main.cf (new)\n" in diff
    assert "+myhostname = pbx-rhel.lab.test\n" in diff

    result = fix(host)
    assert result.ok, result.error
    assert host.read_file(host.main_cf_path) == main_cf + b"myhostname = pbx-rhel.lab.test\n"
    assert host.running_config is not None
    assert host.running_config["myhostname"] == "pbx-rhel.lab.test" and host.reloads == 1
    assert not host.exists("/etc/postfix/.relayfleet-reload-pending")
    assert sorted(host.list_dir(result.data["backup"])) == ["hosts", "main.cf"]
    assert [s.output for s in result.steps if s.name == "verify"] == [
        f"Postfix greets relays as pbx-rhel.lab.test (myhostname); running (master pid "
        f"{host.master_pid})"]

    again = fix(host)
    assert again.ok and not again.changed and host.reloads == 1


def test_postfix_with_myhostname_right_gets_only_etc_hosts() -> None:
    host = postfix_host("debian")  # Debian's main.cf names the FQDN already
    main_cf = host.state(host.main_cf_path)
    result = fix(host, HostnameRequest(fqdn="pbx-deb.lab.test"))
    assert result.ok, result.error
    assert host.state(host.main_cf_path) == main_cf
    assert host.read_file(HOSTS) == (b"127.0.0.1\tlocalhost\n"
                                     b"127.0.1.1\tpbx-deb.lab.test pbx-deb\n")
    assert host.list_dir(result.data["backup"]) == ["hosts"] and host.reloads == 1


def test_postfix_refusing_the_new_main_cf_changes_nothing() -> None:
    host = postfix_host("rhel")
    before = host.snapshot()
    host.script(["postfix", "-c"], exit_code=1, stderr="postfix: fatal: broken", times=1)
    result = fix(host)
    assert not result.ok and not result.rolled_back and result.error_kind == "compile"
    assert outside_backups(host) == {p: s for p, s in before.items()}


def test_postfix_failing_to_reload_rolls_both_files_back() -> None:
    host = postfix_host("rhel")
    main_cf, hosts = host.read_file(host.main_cf_path), host.read_file(HOSTS)
    host.script(["postfix", "reload"], exit_code=1, stderr="postfix: fatal: reload", times=1)
    result = fix(host)
    assert not result.ok and result.rolled_back
    assert sorted(document(result)["restored"]) == [HOSTS, host.main_cf_path]
    assert host.read_file(host.main_cf_path) == main_cf and host.read_file(HOSTS) == hosts
    assert host.running_config is not None
    assert host.running_config["myhostname"] == "pbx-rhel.localdomain"
    assert not host.exists("/etc/postfix/.relayfleet-reload-pending")


# -- controller jobs -----------------------------------------------------------------------


def test_a_job_naming_one_fqdn_over_several_hosts_is_refused(memory_controller: Any) -> None:
    controller = memory_controller
    site = controller.site(controller.tenant("Acme"), "Leeds")
    first = controller.host(site, "pbx-1")
    controller.host(site, "pbx-2")
    refused = controller.post("/v1/jobs", {"action": "fix_hostname", "target": {"all": True},
                                           "params": {"fqdn": "pbx-1.acme.example"}},
                              headers={"Idempotency-Key": "fix-hostname-fqdn-all"})
    assert refused.status == 422, refused
    assert refused.json["errors"] == {"params.fqdn": [
        "names one host, but the target matches 2 hosts: target that host alone, or give "
        "domain to qualify each host's own short name"]}
    # one host by its full name, or every host by the domain: accepted
    controller.start_job({"action": "fix_hostname", "target": {"hosts": [first["id"]]},
                          "params": {"fqdn": "pbx-1.acme.example"}})
    controller.start_job({"action": "fix_hostname", "target": {"sites": [site]},
                          "params": {"domain": "acme.example"}, "options": {"dry_run": True}})
