"""Profile paths are confined to what their keys mean.

A tenant admin pointed ``mc`` at the authinfo file, whose password held ``esyscmd(...)``:
the next change ran it through m4 as root. ``pid_file`` at /etc/shadow made diagnose echo
its first line; ``cf`` anywhere made root overwrite that file. Paths are now checked where
every profile is built (agent.toml, relayfleet-ops, the controller) and again on the host,
through symbolic links, before an operation touches them.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from shared.diagnose import check_mta_running
from shared.errors import ConfigError, ValidationError
from shared.executor import LocalExecutor
from shared.mta import MtaOperations, operations_for
from shared.profile import build_profile
from shared.testing import FakeSendmailHost, debian_sendmail_host, rhel_sendmail_host
from shared.validation import parse_smarthost_request

PASSWORD = "x')esyscmd(`id>/tmp/pwned')dnl"
SHADOW = "root:$y$j9T$secret-hash-of-root:19700:0:99999:7:::\nbin:*:19700:0:99999:7:::\n"


def ops_for(host: FakeSendmailHost, **overrides: Any) -> MtaOperations:
    return operations_for(host, build_profile("sendmail", host.flavour, overrides))


@pytest.mark.parametrize("flavour", ["debian", "rhel"])
@pytest.mark.parametrize("kind", ["sendmail", "postfix"])
def test_every_flavours_defaults_stay_valid(kind: str, flavour: str) -> None:
    build_profile(kind, flavour, {})


@pytest.mark.parametrize("overrides", [
    {"mail_dir": "/etc/mail2"}, {"mc": "submit.mc"}, {"mc": "/etc/mail/sendmail.mc"},
    {"cf": "/etc/mail/sendmail.cf"}, {"authinfo": "/etc/mail/auth/client-info"},
    {"queue_dir": "/var/spool/mqueue"}, {"client_queue_dir": "/var/spool/clientmqueue"},
    {"maillog": "/var/log/maillog"}, {"pid_file": "/var/run/sendmail.pid"},
    {"pid_file": "/run/sendmail/mta/sendmail.pid"}, {"pid_file": "/etc/mail/sendmail.pid"},
    {"mail_dir": "/etc/sendmail", "mc": "/etc/sendmail/sendmail.mc"},
])
def test_paths_where_their_keys_belong_are_accepted(overrides: dict[str, str]) -> None:
    build_profile("sendmail", "debian", overrides)


@pytest.mark.parametrize("overrides, key", [
    ({"mc": "/etc/mail/authinfo"}, "mc"),  # the chain: m4 over the password file
    ({"mc": "authinfo"}, "mc"),
    ({"authinfo": "sendmail.mc"}, "authinfo"),
    ({"cf": "authinfo.db"}, "cf"),
    ({"pid_file": "/etc/mail/sendmail.cf"}, "pid_file"),
    ({"pid_file": "/etc/shadow"}, "pid_file"),
    ({"cf": "/etc/cron.d/relayfleet"}, "cf"),
    ({"mc": "/tmp/sendmail.mc"}, "mc"),
    ({"authinfo": "/root/.ssh/authorized_keys"}, "authinfo"),
    ({"mail_dir": "/tmp/mail"}, "mail_dir"),
    ({"mail_dir": "/etc"}, "mail_dir"),
    ({"mail_dir": "/"}, "mail_dir"),
    ({"queue_dir": "/etc/mail/q"}, "queue_dir"),
    ({"maillog": "/etc/shadow"}, "maillog"),
    ({"maillog": "/var/log/../../etc/shadow"}, "maillog"),
    ({"mc": "../shadow"}, "mc"),
    ({"pid_file": "/run//sendmail.pid"}, "pid_file"),
    ({"pid_file": "/run/./sendmail.pid"}, "pid_file"),
    ({"mail_dir": "/etc/mail/"}, "mail_dir"),
    ({"maillog": "var/log/mail.log"}, "maillog"),
    ({"maillog": "/var/log/mail.log\n"}, "maillog"),
    ({"maillog": "/var/log/mail\x00.log"}, "maillog"),
    ({"maillog": "/var/log/mail\r.log"}, "maillog"),
    ({"mc": ""}, "mc"),
    ({"mc": 7}, "mc"),
])
def test_paths_outside_their_keys_meaning_are_refused(overrides: dict[str, Any],
                                                      key: str) -> None:
    with pytest.raises(ValidationError) as caught:
        build_profile("sendmail", "debian", overrides)
    assert list(caught.value.errors) == [key] and f"mta.{key}" in caught.value.message
    # the agent's and relayfleet-ops' loaders catch ConfigError: still a bad setting there
    assert isinstance(caught.value, ConfigError)


def test_a_symlink_out_of_the_mail_dir_is_refused_before_anything_reads_it() -> None:
    host = debian_sendmail_host()
    host.add_file("/etc/shadow", SHADOW, mode=0o640)
    host.add_symlink("/etc/mail/sendmail.mc", "/etc/shadow")
    before = host.snapshot()
    ops = ops_for(host)
    for result in (ops.set_smarthost(parse_smarthost_request({"host": "relay.example.net"})),
                   ops.remove_smarthost(), ops.read_smarthost()):
        assert result.ok is False and result.error_kind == "config", result
        assert "leads to /etc/shadow" in (result.error or "")
        assert "secret-hash" not in json.dumps(result.to_dict())
    for operation in (ops.status, ops.diagnose):
        with pytest.raises(ConfigError, match=r"mta\.mc"):
            operation()
    assert host.snapshot() == before and not host.ran("m4") and host.file_ops == []


def test_a_symlink_that_makes_the_mc_the_authinfo_map_never_reaches_m4() -> None:
    host = debian_sendmail_host()
    ops = ops_for(host)
    auth = {"username": "pbx", "password": PASSWORD}
    assert ops.set_smarthost(parse_smarthost_request(
        {"host": "relay.example.net", "auth": auth})).ok
    host.add_symlink("/etc/mail/sendmail.mc", "authinfo")
    host.m4_inputs.clear()
    result = ops.set_smarthost(parse_smarthost_request({"host": "other.example.net",
                                                        "auth": auth}))
    assert result.ok is False and "is the same file as mta.mc" in (result.error or "")
    assert host.m4_inputs == [] and host.m4_shell_calls == []


def test_a_symlinked_root_is_followed_for_the_file_and_its_root_alike() -> None:
    host = rhel_sendmail_host()  # pid_file /var/run/sendmail.pid, /var/run -> /run
    host.add_symlink("/var/run", "/run")
    assert ops_for(host).status().ok
    host.add_symlink("/var/log/maillog", "/etc/shadow")
    with pytest.raises(ConfigError, match=r"mta\.maillog: /var/log/maillog leads to /etc/shadow"):
        ops_for(host).read_log(5)


def test_m4_reads_exactly_the_new_mc_and_never_the_authinfo_map() -> None:
    host = debian_sendmail_host()
    result = ops_for(host).set_smarthost(parse_smarthost_request(
        {"host": "relay.example.net", "auth": {"username": "pbx", "password": PASSWORD}}))
    assert result.ok, result.error
    (compile_argv,) = host.ran("m4")
    assert len(compile_argv) == 2 and compile_argv[1].startswith("/etc/mail/.sendmail.mc.")
    assert host.m4_inputs == [host.read_text("/etc/mail/sendmail.mc")]
    assert not any("esyscmd" in text or "pbx" in text for text in host.m4_inputs)
    assert host.m4_shell_calls == []


def test_the_pid_file_check_echoes_a_pid_or_nothing(tmp_path: Any) -> None:
    shadow = tmp_path / "shadow"
    shadow.write_text(SHADOW)
    check = check_mta_running(LocalExecutor(), str(shadow))
    assert check.ok is False and check.data["pid"] is None
    assert "root:" not in json.dumps(check.to_dict()) and "secret" not in check.detail
    two_lines = tmp_path / "pid"
    two_lines.write_text("1\nline two is a secret\n")
    assert "secret" not in json.dumps(check_mta_running(LocalExecutor(),
                                                        str(two_lines)).to_dict())


def test_status_steps_never_carry_the_pid_files_content() -> None:
    host = debian_sendmail_host()
    host.add_file("/run/sendmail/mta/sendmail.pid", SHADOW)  # as if it were a pointed file
    status = ops_for(host).status()
    dumped = json.dumps(status.to_dict())
    assert "secret-hash" not in dumped and "root:" not in dumped
    assert status.data["mta"]["running"] is False
