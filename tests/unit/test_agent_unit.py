"""The agent's systemd unit: a root service, fenced in to what it writes and calls."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "agent" / "relayfleet-agent.service"
#: the one writable path the agent cannot work without (the others may be absent)
REQUIRED = {"/etc/mail"}


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
    assert not bare & {"/run", "/var/run", "/var/log", "/var", "/etc", "/"}
    assert bare >= REQUIRED
    assert {"/var/spool/mqueue", "/var/spool/clientmqueue", "/var/spool/mqueue-client"} <= bare
    for path in paths:
        assert path in REQUIRED or path.startswith("-"), f"{path} would stop the unit if absent"


def test_system_calls_and_setuid_files_are_restricted() -> None:
    """Before: no SystemCallFilter, and RestrictSUIDSGID=no."""
    service = _service()
    assert service["SystemCallFilter"].split() == ["@system-service"]
    assert service["SystemCallErrorNumber"] == "EPERM"
    assert service["RestrictSUIDSGID"] == "yes"
    assert service["NoNewPrivileges"] == "yes" and service["ProtectSystem"] == "strict"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    unit = tmp_path / UNIT.name  # the agent is not installed here: any executable will do
    unit.write_text(UNIT.read_text().replace("/opt/relayfleet/bin/relayfleet-agent",
                                             "/bin/true"))
    checked = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                             text=True, timeout=60, check=False)
    # (an unknown or misspelt setting is only a warning: look for it too)
    assert checked.returncode == 0 and "Unknown" not in checked.stderr, checked.stderr
