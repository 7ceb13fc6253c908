"""The agent's systemd unit: a root service, fenced in to what it writes and calls."""

from __future__ import annotations

import configparser
from pathlib import Path

from shared.change import ConfigChangeOperations
from shared.profile import FLAVOURS, PROFILE_KINDS, build_profile, is_under

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "agent" / "relayfleet-agent.service"


def _service() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser["Service"]


def unit_paths(key: str) -> set[str]:
    """A path list of the unit, each path without its "-" (may be absent) prefix."""
    return {path.lstrip("-") for path in _service()[key].split()}


def _written_by_operations() -> set[str]:
    """What the operations write on every default profile: the MTA's directory (its files,
    temp files, backups, change lock), its queues, and the files written in place."""
    written: set[str] = set(ConfigChangeOperations.in_place_files)
    for kind in PROFILE_KINDS:
        for flavour in FLAVOURS:
            profile = build_profile(kind, flavour)
            written |= {profile.home, profile.queue_dir}
            if kind == "sendmail":
                written.add(profile.client_queue_dir)
    return written


def _covered(path: str, by: set[str]) -> bool:
    return any(path == root or is_under(path, root) for root in by)


def test_each_path_the_operations_write_is_writable() -> None:
    writable = unit_paths("ReadWritePaths")
    missing = {path for path in _written_by_operations() if not _covered(path, writable)}
    assert not missing, f"the unit would refuse these writes: {sorted(missing)}"
    for path in _service()["ReadWritePaths"].split():
        assert path.startswith("-"), f"{path} would stop the unit if absent"


def test_etc_itself_is_not_writable() -> None:
    """Before, ReadWritePaths=/etc left cron, apt, profile, tmpfiles.d, udev and more
    writable to root code: now only the MTA's directories and /etc/hosts are."""
    writable = unit_paths("ReadWritePaths")
    assert not _covered("/etc", writable)
    assert not _covered("/etc/cron.daily/x", writable)
    assert {path for path in writable if is_under(path, "/etc")} <= _written_by_operations()
    assert not writable & {"/run", "/var/run", "/var/log", "/var", "/"}


def test_token_keys_and_password_hashes_are_out_of_reach() -> None:
    service = _service()
    assert service["ProtectSystem"] == "strict" and service["ProtectHome"] == "read-only"
    assert "/etc/relayfleet" in unit_paths("ReadOnlyPaths")
    assert unit_paths("InaccessiblePaths") >= {"/etc/shadow", "/etc/gshadow", "/etc/ssh",
                                           "/root/.ssh"}
    assert not unit_paths("ReadWritePaths") & (unit_paths("ReadOnlyPaths")
                                           | unit_paths("InaccessiblePaths"))


def test_system_calls_and_setuid_files_are_restricted() -> None:
    """Before: no SystemCallFilter, and RestrictSUIDSGID=no."""
    service = _service()
    assert service["SystemCallFilter"].split() == ["@system-service"]
    assert service["SystemCallErrorNumber"] == "EPERM"
    assert service["RestrictSUIDSGID"] == "yes"
    assert service["NoNewPrivileges"] == "yes"
