"""The agent's systemd unit: a root service, fenced in to what it writes and calls."""

from __future__ import annotations

import configparser
from pathlib import Path

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "agent" / "relayfleet-agent.service"
#: the one writable path every host has (the MTA's and the others may be absent)
REQUIRED = {"/etc"}


def _service() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser["Service"]


def test_only_what_the_agent_writes_is_writable() -> None:
    """Before, all of /run and /var/log were writable, and one absent spool directory
    (mqueue-client is Debian's, clientmqueue RHEL's) kept the unit from starting."""
    paths = _service()["ReadWritePaths"].split()
    bare = {path.lstrip("-") for path in paths}
    assert not bare & {"/run", "/var/run", "/var/log", "/var", "/"}
    assert bare >= REQUIRED
    assert {"/var/spool/mqueue", "/var/spool/clientmqueue", "/var/spool/mqueue-client",
            "/var/spool/postfix", "/var/lib/postfix"} <= bare
    for path in paths:
        assert path in REQUIRED or path.startswith("-"), f"{path} would stop the unit if absent"


def test_etc_is_writable_for_etc_hosts_but_not_what_opens_the_box() -> None:
    """fix_hostname writes /etc/hosts through a temp file in /etc renamed over it (so /etc
    itself is writable); units, sudo, accounts, sshd, cron, the loader and the agent's own
    token and key stay read-only, each optional ("-")."""
    service = _service()
    read_only = {path.lstrip("-") for path in service["ReadOnlyPaths"].split()}
    assert all(path.startswith("-") for path in service["ReadOnlyPaths"].split())
    assert read_only >= {"/etc/relayfleet", "/etc/systemd", "/etc/sudoers", "/etc/sudoers.d",
                         "/etc/passwd", "/etc/shadow", "/etc/ssh", "/etc/cron.d",
                         "/etc/ld.so.preload", "/etc/pam.d"}
    assert not read_only & {"/etc/mail", "/etc/postfix", "/etc/hosts", "/etc"}


def test_system_calls_and_setuid_files_are_restricted() -> None:
    """Before: no SystemCallFilter, and RestrictSUIDSGID=no."""
    service = _service()
    assert service["SystemCallFilter"].split() == ["@system-service"]
    assert service["SystemCallErrorNumber"] == "EPERM"
    assert service["RestrictSUIDSGID"] == "yes"
    assert service["NoNewPrivileges"] == "yes" and service["ProtectSystem"] == "strict"
