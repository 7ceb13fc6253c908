"""install.sh from the offline bundle, run as root inside real lab hosts (sendmail, Postfix).

The bundles are built once for the session from this tree (dependency wheels downloaded from
PyPI once, then kept in the lab cache): V1, V2, and two broken ones: an agent whose
``agent.app`` raises at import (``check`` passes, ``serve`` dies: the health check fails) and
one whose ``agent.cli`` raises at import (``check`` itself fails). Lab hosts have no
systemd: install.sh runs the agent as a daemon (pid in /run/relayfleet-agent.pid). Python
3.9 is Debian 11's own, in its debootstrap tree (tests/lab/bullseye.py): the bundles carry
wheels for 3.9 and the lab hosts' Python only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from controller.agent_bundle import AgentBundle, agent_sources, build_bundle, file_sha256
from controller.agent_install import parse_report
from controller.egress import EgressPolicy, HttpClient, TlsTrust, normalise_fingerprint
from tests.lab.agent_install import WHEEL_CACHE, agent_pid
from tests.lab.lab import LabHost
from tests.lab.services import free_port

# Each test installs, upgrades and rolls back agents (about 30 s each), and the first one
# builds the session's bundles (wheels downloaded once) and the Debian 11 tree (debootstrap,
# the first time on a machine): more than the suite's 300 s default.
pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "deploy" / "agent" / "install.sh"
TOKEN = "install-test-token-0123456789abcdef"
PORT = 8587
V1, V2, BROKEN_SERVE, BROKEN_CHECK = "7.0.0", "7.0.1", "7.0.2", "7.0.3"
#: the host's own Python (Debian 12: 3.11), not the test run's virtualenv
HOST_PYTHON = "/usr/bin/python3"
#: install.sh's lock and its exit code when another run holds it
LOCK = "/run/relayfleet-install.lock"
EXIT_BUSY = 4


def host_python_version() -> str:
    """X.Y of HOST_PYTHON (the lab hosts' python3)."""
    return subprocess.run([HOST_PYTHON, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                          capture_output=True, text=True, check=True).stdout.strip()


def broken(module: str) -> list[tuple[str, bytes]]:
    """This tree's agent with ``module`` replaced by one that raises at import."""
    return [(name, b'raise RuntimeError("this agent cannot start")\n' if name == module
             else data) for name, data in agent_sources()]


@pytest.fixture(scope="session")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, AgentBundle]:
    """The session's bundles by version (built once; dependency wheels cached), for the
    Pythons the tests run install.sh with: the lab hosts' and Debian 11's 3.9."""
    out = tmp_path_factory.mktemp("agent-bundles")
    pythons = sorted({"3.9", host_python_version()})
    return {
        V1: build_bundle(out, version=V1, cache_dir=WHEEL_CACHE, pythons=pythons),
        V2: build_bundle(out, version=V2, cache_dir=WHEEL_CACHE, pythons=pythons),
        BROKEN_SERVE: build_bundle(out, version=BROKEN_SERVE, cache_dir=WHEEL_CACHE,
                                   pythons=pythons, agent_sources=broken("agent/app.py")),
        BROKEN_CHECK: build_bundle(out, version=BROKEN_CHECK, cache_dir=WHEEL_CACHE,
                                   pythons=pythons, agent_sources=broken("agent/cli.py")),
    }


class Run:
    """One install.sh run: exit code, its report (the RELAYFLEET-INSTALL line, read as the
    controller reads it), stderr."""

    def __init__(self, code: int, stdout: str, stderr: str) -> None:
        self.code, self.stdout, self.stderr = code, stdout, stderr
        parsed = parse_report(stdout)
        self.report: dict[str, Any] = dataclasses.asdict(parsed) if parsed else {}

    def __repr__(self) -> str:
        return f"exit {self.code}\n{self.stdout}\n{self.stderr}"


def install_argv(host: LabHost, bundle: AgentBundle, *extra: str, token: bool = False,
                 sha256: str | None = None, python: str = HOST_PYTHON) -> list[str]:
    """install.sh's command line for the host (--token-stdin when ``token``)."""
    return ["sh", str(INSTALL), "--bundle", str(bundle.path), "--sha256",
            sha256 or bundle.sha256, "--python", python, "--mta", host.mta, "--flavour",
            host.flavour, "--listen", f"{host.address}:{PORT}", *extra,
            *(["--token-stdin"] if token else [])]


def install(host: LabHost, bundle: AgentBundle, *extra: str, token: str | None = None,
            sha256: str | None = None, python: str = HOST_PYTHON) -> Run:
    """Run install.sh inside the host as root, the token (if any) on stdin."""
    argv = install_argv(host, bundle, *extra, token=token is not None, sha256=sha256,
                        python=python)
    proc = host.run(argv, check=False, timeout=300,
                    input=(token + "\n").encode() if token is not None else None)
    return Run(proc.returncode, proc.stdout.decode(), proc.stderr.decode())


def agent_answer(host: LabHost, fingerprint: str, path: str = "/v1/health",
                 token: str | None = None) -> tuple[int, dict[str, Any]]:
    """GET the host's agent over https, its certificate pinned, as the controller does."""
    client = HttpClient(EgressPolicy.parse(host.lab.network))
    pinned = TlsTrust(fingerprint=normalise_fingerprint(fingerprint))
    answer = client.request("GET", f"https://{host.address}:{PORT}{path}", deadline_s=30,
                            max_body=1 << 20, tls=pinned,
                            headers={"Authorization": f"Bearer {token}"} if token else None)
    return answer.status, json.loads(answer.body or b"{}")


def tree(root: Path) -> dict[str, bytes | str]:
    """Every file (bytes) and symlink (target) under ``root``."""
    found: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            found[str(path.relative_to(root))] = os.readlink(path)
        elif path.is_file():
            found[str(path.relative_to(root))] = path.read_bytes()
    return found


def running_agent(host: LabHost) -> int:
    """The pid of the agent daemon install.sh started in the host (it must have one)."""
    pid = agent_pid(host)
    assert pid is not None, "install.sh left no pid file"
    return pid


def gone(pid: int) -> bool:
    """The process is gone (or a zombie waiting for its reaper)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def wait_gone(pid: int, timeout_s: float = 30) -> None:
    """Wait until the process is gone (a SIGTERMed agent takes a moment to stop)."""
    deadline = time.monotonic() + timeout_s
    while not gone(pid):
        assert time.monotonic() < deadline, f"process {pid} still runs after {timeout_s} s"
        time.sleep(0.1)


@pytest.mark.parametrize(("layout", "mta"), [("debian", "sendmail"), ("centos", "postfix")])
def test_install_rerun_upgrade_and_rollback(layout: str, mta: str,
                                            make_host: Callable[..., LabHost],
                                            bundles: dict[str, AgentBundle]) -> None:
    host = make_host(layout, mta=mta)
    opt, etc = host.root / "opt-relayfleet", host.root / "etc-relayfleet"

    # A bundle whose checksum is not the one given: refused before anything changes.
    before = (tree(opt), tree(etc))
    wrong = install(host, bundles[V1], sha256="0" * 64, token=TOKEN)
    assert wrong.code == 1, wrong
    assert "refused" in wrong.stderr and "nothing was changed" in wrong.stderr, wrong
    assert (tree(opt), tree(etc)) == before

    # A fresh install: the agent answers V1 over TLS pinned to the printed fingerprint.
    fresh = install(host, bundles[V1], token=TOKEN)
    assert fresh.code == 0, fresh
    report = fresh.report
    assert report == {"version": V1, "previous": None, "changed": True, "token": "written",
                      "fingerprint": report["fingerprint"], "listen": f"{host.address}:{PORT}",
                      "rolled_back": False, "service": "daemon"}, fresh
    assert report["fingerprint"].startswith("sha256:") and TOKEN not in fresh.stdout
    assert agent_answer(host, report["fingerprint"]) == (200, {"status": "ok",
                                                               "version": V1})
    status, body = agent_answer(host, report["fingerprint"], "/v1/status", token=TOKEN)
    assert status == 200, body
    assert agent_answer(host, report["fingerprint"], "/v1/status",
                        token="not-the-token-0123456789")[0] == 401
    assert (etc / "agent.token").read_text() == TOKEN + "\n"
    assert (etc / "agent.token").stat().st_mode & 0o777 == 0o600
    assert (etc / "agent.key").stat().st_mode & 0o777 == 0o600
    assert os.readlink(opt / "current") == f"versions/{V1}"
    assert (opt / "versions" / V1 / "VERSION").read_text() == V1 + "\n"
    pid = running_agent(host)

    # The same bundle again: nothing to do, nothing restarted.
    again = install(host, bundles[V1], token=TOKEN)
    assert again.code == 0, again
    assert again.report["changed"] is False and again.report["token"] == "kept", again
    assert again.report["previous"] == V1
    assert running_agent(host) == pid and not gone(pid)

    # An upgrade keeps agent.toml, the token and the certificate byte for byte.
    config = tree(etc)
    upgrade = install(host, bundles[V2])
    assert upgrade.code == 0, upgrade
    assert upgrade.report["version"] == V2 and upgrade.report["previous"] == V1, upgrade
    assert upgrade.report["token"] == "kept" and upgrade.report["changed"] is True
    assert upgrade.report["fingerprint"] == report["fingerprint"]
    assert tree(etc) == config
    assert agent_answer(host, report["fingerprint"]) == (200, {"status": "ok",
                                                               "version": V2})
    assert gone(pid)
    assert os.readlink(opt / "current") == f"versions/{V2}"

    # A version whose agent cannot serve: health check fails, V2 runs again.
    failed = install(host, bundles[BROKEN_SERVE])
    assert failed.code == 3, failed
    assert failed.report["rolled_back"] is True and failed.report["previous"] == V2, failed
    assert f"rolled back to {V2}" in failed.stderr, failed
    assert agent_answer(host, report["fingerprint"]) == (200, {"status": "ok",
                                                               "version": V2})
    assert os.readlink(opt / "current") == f"versions/{V2}"
    assert not (opt / "versions" / BROKEN_SERVE).exists()
    assert "this agent cannot start" in (host.root / "log" / "relayfleet-agent.log").read_text()

    # One whose `relayfleet-agent check` fails: never started, V2 runs again.
    refused = install(host, bundles[BROKEN_CHECK])
    assert refused.code == 3, refused
    assert f"rolled back to {V2}" in refused.stderr, refused
    assert agent_answer(host, report["fingerprint"]) == (200, {"status": "ok",
                                                               "version": V2})
    assert tree(etc) == config
    assert sorted(p.name for p in (opt / "versions").iterdir()) == [V1, V2]

    # Closing the lab host stops the daemon install.sh started inside it.
    pid = running_agent(host)
    host.close()
    assert gone(pid)


def test_rotate_token_and_the_same_version_restarted(make_host: Callable[..., LabHost],
                                                     bundles: dict[str, AgentBundle]) -> None:
    host = make_host("debian")
    first = install(host, bundles[V1])
    assert first.code == 0 and first.report["token"] == "written", first
    generated = (host.root / "etc-relayfleet" / "agent.token").read_text().strip()
    assert len(generated) >= 32 and generated not in first.stdout + first.stderr
    fingerprint = first.report["fingerprint"]
    assert agent_answer(host, fingerprint, "/v1/status", token=generated)[0] == 200

    # --token-stdin alone keeps an existing token (and says so) ...
    kept = install(host, bundles[V1], token=TOKEN)
    assert kept.code == 0 and kept.report["token"] == "kept", kept
    assert "kept the existing" in kept.stderr

    # ... --rotate-token replaces it and restarts the agent with it.
    rotated = install(host, bundles[V1], "--rotate-token", token=TOKEN)
    assert rotated.code == 0 and rotated.report["token"] == "rotated", rotated
    assert rotated.report["changed"] is True
    assert agent_answer(host, fingerprint, "/v1/status", token=TOKEN)[0] == 200
    assert agent_answer(host, fingerprint, "/v1/status", token=generated)[0] == 401

    # A stopped agent of the current version is started again, not reinstalled.
    stopped = running_agent(host)
    os.kill(stopped, signal.SIGTERM)
    wait_gone(stopped)
    restarted = install(host, bundles[V1])
    assert restarted.code == 0 and restarted.report["changed"] is True, restarted
    assert agent_answer(host, fingerprint)[1]["version"] == V1

    # A damaged install of the current version is installed again, config and token kept.
    config = tree(host.root / "etc-relayfleet")
    shutil.rmtree(next((host.root / "opt-relayfleet" / "versions" / V1).glob(
        "lib/python3*/site-packages/agent")))
    repaired = install(host, bundles[V1])
    assert repaired.code == 0 and repaired.report["changed"] is True, repaired
    assert "damaged" in repaired.stderr
    assert agent_answer(host, fingerprint)[1]["version"] == V1
    assert tree(host.root / "etc-relayfleet") == config


def test_a_cut_channel_does_not_stop_a_rollback(make_host: Callable[..., LabHost],
                                               bundles: dict[str, AgentBundle]) -> None:
    """install.sh's stdout and stderr are a pipe nobody reads any more (an SSH session cut
    while it runs): an upgrade whose agent fails its health check, with a new token, still
    rolls back to the version before it, with the token before it."""
    host = make_host("debian")
    first = install(host, bundles[V1], token=TOKEN)
    assert first.code == 0, first
    fingerprint = first.report["fingerprint"]

    reader, writer = os.pipe()
    os.close(reader)  # every write to the channel now fails (EPIPE, or SIGPIPE if not ignored)
    try:
        proc = subprocess.run(
            host.nsenter(install_argv(host, bundles[BROKEN_SERVE], "--rotate-token",
                                      token=True)),
            input=b"a-token-that-must-not-stay-0123456789\n", stdout=writer, stderr=writer,
            timeout=300, check=False)
    finally:
        os.close(writer)
    # V1 runs again, with the token it had
    assert os.readlink(host.root / "opt-relayfleet" / "current") == f"versions/{V1}"
    assert (host.root / "etc-relayfleet" / "agent.token").read_text() == TOKEN + "\n"
    assert agent_answer(host, fingerprint) == (200, {"status": "ok", "version": V1})
    assert agent_answer(host, fingerprint, "/v1/status", token=TOKEN)[0] == 200
    # and the run's log says what happened (what the cut session did not see)
    install_log = host.root / "log" / "relayfleet-install.log"
    log = install_log.read_text()
    assert proc.returncode == 3, log
    assert f"rolled back to {V1}" in log and '"rolled_back": true' in log, log
    assert "a-token-that-must-not-stay" not in log
    assert install_log.stat().st_mode & 0o777 == 0o600


def test_a_fresh_install_rolled_back_leaves_nothing(make_host: Callable[..., LabHost],
                                                    bundles: dict[str, AgentBundle]) -> None:
    host = make_host("debian")
    etc, opt = host.root / "etc-relayfleet", host.root / "opt-relayfleet"
    failed = install(host, bundles[BROKEN_SERVE], token=TOKEN)
    assert failed.code == 3, failed
    assert failed.report["rolled_back"] is True and failed.report["token"] == "kept", failed
    # no token (the next run would keep it, and the controller never had it), no config
    assert tree(etc) == {}, sorted(tree(etc))
    assert not (opt / "current").exists() and not list((opt / "versions").iterdir())

    # The next run starts from nothing: a token written, the one given.
    fresh = install(host, bundles[V1], token=TOKEN)
    assert fresh.code == 0 and fresh.report["token"] == "written", fresh
    assert agent_answer(host, fresh.report["fingerprint"], "/v1/status", token=TOKEN)[0] == 200


def test_a_second_install_at_once_is_busy(make_host: Callable[..., LabHost],
                                          bundles: dict[str, AgentBundle]) -> None:
    host = make_host("debian")
    # flock(1) holds install.sh's lock while it runs install.sh: as another run would.
    argv = ["flock", LOCK, *install_argv(host, bundles[V1])]
    proc = host.run(argv, check=False, timeout=300)
    assert proc.returncode == EXIT_BUSY, proc
    assert b"busy: another install.sh runs on this host" in proc.stderr, proc
    assert b"nothing was changed" in proc.stderr and proc.stdout == b""
    assert tree(host.root / "etc-relayfleet") == {}
    assert not list((host.root / "opt-relayfleet").iterdir())

    # The lock is free again afterwards (the daemon install.sh starts does not inherit it).
    done = install(host, bundles[V1])
    assert done.code == 0, done
    again = install(host, bundles[V1])
    assert again.code == 0 and again.report["changed"] is False, again


def test_nothing_of_the_callers_directory_runs_as_root(make_host: Callable[..., LabHost],
                                                      tmp_path: Path,
                                                      bundles: dict[str, AgentBundle]) -> None:
    """Run from a directory the login user writes to, holding a planted json.py: root's
    Pythons never import it (install.sh works from / with python -I), and a relative
    --bundle is still found."""
    host = make_host("debian")
    login_dir = tmp_path / "login-home"
    login_dir.mkdir()
    shutil.copy(bundles[V1].path, login_dir)
    planted = login_dir / "json.py"
    planted.write_text("open(__file__ + '.ran', 'w').close()\n"
                       "raise SystemExit('a planted json.py ran')\n")
    argv = install_argv(host, bundles[V1])
    argv[argv.index("--bundle") + 1] = bundles[V1].path.name
    proc = host.run(["sh", "-c", 'cd "$1" && shift && exec "$@"', "sh", str(login_dir), *argv],
                    check=False, timeout=300)
    run = Run(proc.returncode, proc.stdout.decode(), proc.stderr.decode())
    assert not Path(f"{planted}.ran").exists(), run
    assert run.code == 0 and run.report["version"] == V1, run


def test_a_python_the_bundle_does_not_serve_is_refused(make_host: Callable[..., LabHost],
                                                       tmp_path: Path,
                                                       bundles: dict[str, AgentBundle]) -> None:
    host = make_host("debian", start=False)
    only = build_bundle(tmp_path, version=V1, pythons=["3.12"], cache_dir=WHEEL_CACHE)
    run = install(host, only, token=TOKEN)
    assert run.code == 1, run
    assert "this bundle serves Python 3.12" in run.stderr and "--python" in run.stderr, run
    assert not (host.root / "opt-relayfleet" / "current").exists()


def test_the_same_input_gives_the_same_archive(tmp_path: Path) -> None:
    sources = agent_sources()  # read once: the tree may change while the test runs
    first = build_bundle(tmp_path / "a", version=V1, cache_dir=WHEEL_CACHE,
                         agent_sources=sources)
    again = build_bundle(tmp_path / "b", version=V1, cache_dir=WHEEL_CACHE,
                         agent_sources=sources)
    assert again.sha256 == first.sha256 == file_sha256(again.path)
    assert again.path.read_bytes() == first.path.read_bytes()
    assert (tmp_path / "b" / f"{again.path.name}.sha256").read_text() == (
        f"{again.sha256}  {again.path.name}\n")


def test_an_unpacked_bundle_its_damage_and_an_old_install(make_host: Callable[..., LabHost],
                                                          tmp_path: Path,
                                                          bundles: dict[str, AgentBundle]
                                                          ) -> None:
    host = make_host("debian")
    opt = host.root / "opt-relayfleet"
    with tarfile.open(bundles[V1].path) as archive:
        archive.extractall(tmp_path, filter="data")
    unpacked = tmp_path / f"relayfleet-agent-{V1}"
    argv = ["sh", str(unpacked / "install.sh"), "--python", HOST_PYTHON, "--listen",
            f"{host.address}:{PORT}", "--mta", "sendmail"]

    # An agent installed by the install.sh before bundles: refused, saying what to remove.
    (opt / "bin").mkdir()
    (opt / "bin" / "relayfleet-agent").write_text("#!/bin/sh\n")
    old = host.run(argv, check=False)
    assert old.returncode == 1 and b"older install.sh" in old.stderr, old
    assert sorted(p.name for p in opt.iterdir()) == ["bin"]
    shutil.rmtree(opt / "bin")

    # No openssl to make the certificate with: refused, saying what to install.
    stub = host.root / "no-openssl"
    stub.write_text("")
    host.run(["mount", "--bind", str(stub), "/usr/bin/openssl"])
    try:
        no_openssl = host.run(argv, check=False)
    finally:
        host.run(["umount", "/usr/bin/openssl"])
    assert no_openssl.returncode == 1 and b"apt install openssl" in no_openssl.stderr
    assert not list(opt.iterdir()) and not list((host.root / "etc-relayfleet").iterdir())

    # A file that is not what MANIFEST.json says: refused before anything changes.
    wheel = next((unpacked / "wheels").glob("flask-*.whl"))
    good = wheel.read_bytes()
    wheel.write_bytes(good + b"\0")
    damaged = host.run(argv, check=False)
    assert damaged.returncode == 1, damaged
    assert f"wheels/{wheel.name} does not match MANIFEST.json".encode() in damaged.stderr
    assert not list(opt.iterdir())

    wheel.write_bytes(good)
    run = host.run(argv, check=False)
    report = Run(run.returncode, run.stdout.decode(), run.stderr.decode())
    assert report.code == 0 and report.report["version"] == V1, report
    assert agent_answer(host, report.report["fingerprint"])[1]["version"] == V1


def test_install_sh_on_debian_11(tmp_path: Path, bundles: dict[str, AgentBundle]) -> None:
    """Debian 11's own dash, coreutils, openssl and Python 3.9.2 (a debootstrap tree, run
    chrooted in a mount namespace of its own): install V1, then upgrade to V2."""
    from tests.lab.bullseye import bullseye_tree, mount_point, run_in_tree

    tree = bullseye_tree()
    for point in ("relayfleet-bundle", "etc/relayfleet"):
        mount_point(tree, point)
    dirs = {name: tmp_path / name for name in ("opt", "etc", "run", "log")}
    for directory in dirs.values():
        directory.mkdir()
    port = free_port()
    binds = [(bundles[V1].path.parent, "/relayfleet-bundle", False),
             (dirs["opt"], "/opt", True), (dirs["etc"], "/etc/relayfleet", True),
             (dirs["run"], "/run", True), (dirs["log"], "/var/log", True)]

    def run(bundle: AgentBundle) -> Run:
        proc = run_in_tree(tree, ["sh", "/relayfleet-bundle/install.sh", "--bundle",
                                  f"/relayfleet-bundle/{bundle.path.name}", "--sha256",
                                  bundle.sha256, "--listen", f"127.0.0.1:{port}", "--mta",
                                  "sendmail"], binds=binds, own_pids=False, timeout=300)
        return Run(proc.returncode, proc.stdout, proc.stderr)

    shutil.copy(INSTALL, bundles[V1].path.parent / "install.sh")
    client = HttpClient(EgressPolicy.parse("loopback"))
    try:
        for version in (V1, V2):
            done = run(bundles[version])
            assert done.code == 0, done
            assert done.report["version"] == version and done.report["service"] == "daemon"
            pinned = TlsTrust(fingerprint=normalise_fingerprint(done.report["fingerprint"]))
            answer = client.request("GET", f"https://127.0.0.1:{port}/v1/health",
                                    deadline_s=10, max_body=4096, tls=pinned)
            assert json.loads(answer.body)["version"] == version
            config = dirs["opt"] / "relayfleet" / "versions" / version / "pyvenv.cfg"
            assert "version = 3.9.2" in config.read_text()
        assert done.report["previous"] == V1 and done.report["token"] == "kept"
    finally:
        pidfile = dirs["run"] / "relayfleet-agent.pid"
        if pidfile.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
