"""install.sh from the offline bundle, run as root inside real lab hosts (sendmail, Postfix).

The bundles are built once for the session from this tree (dependency wheels downloaded from
PyPI once, then kept in the lab cache): V1, V2, and two broken ones: an agent whose
``agent.app`` raises at import (``check`` passes, ``serve`` dies: the health check fails) and
one whose ``agent.cli`` raises at import (``check`` itself fails). Lab hosts have no
systemd: install.sh runs the agent as a daemon (pid in /run/relayfleet-agent.pid). Python
3.9 is Debian 11's own, in its debootstrap tree (tests/lab/bullseye.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from controller.agent_bundle import AgentBundle, agent_sources, build_bundle, file_sha256
from controller.egress import EgressPolicy, HttpClient, TlsTrust, normalise_fingerprint
from tests.lab.lab import CACHE_DIR, LabHost

pytestmark = [pytest.mark.lab, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "deploy" / "agent" / "install.sh"
WHEEL_CACHE = CACHE_DIR / "agent-wheels"
TOKEN = "install-test-token-0123456789abcdef"
PORT = 8587
V1, V2, BROKEN_SERVE, BROKEN_CHECK = "7.0.0", "7.0.1", "7.0.2", "7.0.3"
#: the host's own Python (Debian 12: 3.11), not the test run's virtualenv
HOST_PYTHON = "/usr/bin/python3"


def broken(module: str) -> list[tuple[str, bytes]]:
    """This tree's agent with ``module`` replaced by one that raises at import."""
    return [(name, b'raise RuntimeError("this agent cannot start")\n' if name == module
             else data) for name, data in agent_sources()]


@pytest.fixture(scope="session")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, AgentBundle]:
    """The session's bundles by version (built once; dependency wheels cached)."""
    out = tmp_path_factory.mktemp("agent-bundles")
    return {
        V1: build_bundle(out, version=V1, cache_dir=WHEEL_CACHE),
        V2: build_bundle(out, version=V2, cache_dir=WHEEL_CACHE),
        BROKEN_SERVE: build_bundle(out, version=BROKEN_SERVE, cache_dir=WHEEL_CACHE,
                                   agent_sources=broken("agent/app.py")),
        BROKEN_CHECK: build_bundle(out, version=BROKEN_CHECK, cache_dir=WHEEL_CACHE,
                                   agent_sources=broken("agent/cli.py")),
    }


class Run:
    """One install.sh run: exit code, its report (the last stdout line), stderr."""

    def __init__(self, code: int, stdout: str, stderr: str) -> None:
        self.code, self.stdout, self.stderr = code, stdout, stderr
        last = stdout.strip().splitlines()[-1] if stdout.strip() else ""
        self.report: dict[str, Any] = (json.loads(last.removeprefix("RELAYFLEET-INSTALL "))
                                       if last.startswith("RELAYFLEET-INSTALL ") else {})

    def __repr__(self) -> str:
        return f"exit {self.code}\n{self.stdout}\n{self.stderr}"


def install(host: LabHost, bundle: AgentBundle, *extra: str, token: str | None = None,
            sha256: str | None = None, python: str = HOST_PYTHON) -> Run:
    """Run install.sh inside the host as root, the token (if any) on stdin."""
    argv = ["sh", str(INSTALL), "--bundle", str(bundle.path), "--sha256",
            sha256 or bundle.sha256, "--python", python, "--mta", host.mta, "--flavour",
            host.flavour, "--listen", f"{host.address}:{PORT}", *extra]
    if token is not None:
        argv.append("--token-stdin")
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


def agent_pid(host: LabHost) -> int:
    return int((host.root / "run" / "relayfleet-agent.pid").read_text())


def gone(pid: int) -> bool:
    """The process is gone (or a zombie waiting for its reaper)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


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
    pid = agent_pid(host)

    # The same bundle again: nothing to do, nothing restarted.
    again = install(host, bundles[V1], token=TOKEN)
    assert again.code == 0, again
    assert again.report["changed"] is False and again.report["token"] == "kept", again
    assert again.report["previous"] == V1
    assert agent_pid(host) == pid and not gone(pid)

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
    pid = agent_pid(host)
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
    os.kill(agent_pid(host), 15)
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
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    binds = [(bundles[V1].path.parent, "/relayfleet-bundle", False),
             (dirs["opt"], "/opt", True), (dirs["etc"], "/etc/relayfleet", True),
             (dirs["run"], "/run", True), (dirs["log"], "/var/log", True)]

    def run(bundle: AgentBundle) -> Run:
        proc = run_in_tree(tree, ["sh", "/relayfleet-bundle/install.sh", "--bundle",
                                  f"/relayfleet-bundle/{bundle.path.name}", "--sha256",
                                  bundle.sha256, "--listen", f"127.0.0.1:{port}", "--mta",
                                  "sendmail"], binds=binds, timeout=300)
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
