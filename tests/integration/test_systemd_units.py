"""The shipped systemd units pass ``systemd-analyze verify``, checked against the layout a
real install makes.

verify resolves everything under ``--root``: a tree holding this systemd's own units (the
targets the units hang off), the units where installs put them (/etc/systemd/system) and
the programs their Exec lines run where installs put them: the agent's as install.sh lays
it out (/opt/relayfleet/versions/V with /opt/relayfleet/current -> versions/V), the
controller's in /opt/relayfleet-controller. The programs are this checkout's own console
scripts. verify runs offline: PID 1 need not be systemd.

A misspelt key or a value systemd cannot parse only makes verify print a warning and exit 0,
so any line it prints about the unit fails the check.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
AGENT_UNIT = ROOT / "deploy" / "agent" / "relayfleet-agent.service"
CONTROLLER_UNITS = sorted((ROOT / "deploy" / "systemd").glob("*.service"))
UNITS = [AGENT_UNIT, *CONTROLLER_UNITS]
#: the controller's venv on a production box (deploy/systemd/*.service run it)
CONTROLLER_PREFIX = "/opt/relayfleet-controller"
SYSTEM_UNITS = Path("/usr/lib/systemd/system")


def _systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None or not SYSTEM_UNITS.is_dir():
        pytest.fail("systemd-analyze is missing: apt-get install systemd "
                    "(deploy/dev/bootstrap.sh installs it)")
    return found


def _installer_prefix() -> str:
    """Where install.sh puts the agent (its PREFIX)."""
    found = re.search(r"^PREFIX=(\S+)$", (ROOT / "deploy/agent/install.sh").read_text(), re.M)
    assert found, "deploy/agent/install.sh sets no PREFIX"
    return found.group(1)


def _console_script(name: str) -> Path:
    script = Path(sys.executable).parent / name
    assert script.is_file(), f"{script} is missing: pip install -e '.[controller,dev]'"
    return script


def installed_tree(root: Path) -> Path:
    """A root holding systemd's units and the agent's and controller's programs as
    installs lay them out (the shipped units not yet in it)."""
    shutil.copytree(SYSTEM_UNITS, root / SYSTEM_UNITS.relative_to("/"), symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    agent = root / _installer_prefix().lstrip("/")
    (agent / "versions/0.1.0/bin").mkdir(parents=True)
    shutil.copy2(_console_script("relayfleet-agent"), agent / "versions/0.1.0/bin")
    (agent / "current").symlink_to("versions/0.1.0")  # as install.sh's switch_to
    controller = root / CONTROLLER_PREFIX.lstrip("/") / "bin"
    controller.mkdir(parents=True)
    shutil.copy2(_console_script("relayfleet-controller"), controller)
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One installed tree for the module: each verify puts its unit in and takes it out."""
    return installed_tree(tmp_path_factory.mktemp("units") / "root")


def verify(root: Path, unit_text: str, name: str) -> tuple[int, list[str]]:
    """Install ``unit_text`` as ``name`` in ``root``, verify it and take it out again:
    (exit code, the lines verify printed about it)."""
    installed = root / "etc/systemd/system" / name
    installed.write_text(unit_text)
    try:
        proc = subprocess.run([_systemd_analyze(), "verify", f"--root={root}",
                               f"/etc/systemd/system/{name}"], capture_output=True, text=True,
                              timeout=120, check=False)
    finally:
        installed.unlink()
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if name in line]
    return proc.returncode, lines


@pytest.mark.parametrize("unit", UNITS, ids=lambda path: path.name)
def test_systemd_analyze_verify_is_clean(unit: Path, tree: Path) -> None:
    code, said = verify(tree, unit.read_text(), unit.name)
    assert code == 0 and not said, "\n".join(said)


def test_the_units_run_what_installs_put_in_place() -> None:
    exec_lines = {unit.name: re.findall(r"^Exec\w+=(\S+)", unit.read_text(), re.M)
                  for unit in UNITS}
    assert exec_lines["relayfleet-agent.service"] == [
        f"{_installer_prefix()}/current/bin/relayfleet-agent"] * 2
    assert {name for name in exec_lines} >= {"relayfleet-api.service",
                                            "relayfleet-worker.service",
                                            "relayfleet-beat.service"}
    commands = {name: re.search(r"^ExecStart=\S+ (\S+)", unit.read_text(), re.M)
                for name, unit in ((u.name, u) for u in CONTROLLER_UNITS)}
    assert {name: found.group(1) for name, found in commands.items() if found} == {
        "relayfleet-api.service": "serve", "relayfleet-worker.service": "worker",
        "relayfleet-beat.service": "beat"}
    for unit in CONTROLLER_UNITS:
        text = unit.read_text()
        assert f"ExecStart={CONTROLLER_PREFIX}/bin/relayfleet-controller " in text
        assert "EnvironmentFile=/etc/relayfleet/controller.env" in text
        assert re.search(r"^User=relayfleet$", text, re.M), unit.name
        assert re.search(r"^After=network-online\.target postgresql\.service redis", text,
                         re.M), unit.name


def _misspelt(text: str) -> str:
    return text.replace("ProtectSystem=", "ProtectSystm=", 1)


def _bad_value(text: str) -> str:
    return text.replace("RestrictNamespaces=yes", "RestrictNamespaces=maybe", 1)


def _no_such_program(text: str) -> str:
    return re.sub(r"^ExecStart=(\S+)", r"ExecStart=\1-missing", text, count=1, flags=re.M)


@pytest.mark.parametrize("unit", UNITS, ids=lambda path: path.name)
@pytest.mark.parametrize("spoil", [_misspelt, _bad_value, _no_such_program],
                         ids=["misspelt key", "bad value", "missing program"])
def test_verify_catches_a_broken_unit(unit: Path, spoil: Callable[[str], str],
                                      tree: Path) -> None:
    text = unit.read_text()
    assert spoil(text) != text
    code, said = verify(tree, spoil(text), unit.name)
    assert code != 0 or said
