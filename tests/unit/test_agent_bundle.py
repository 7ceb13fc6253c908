"""The agent bundle's pure parts: versions, requirements, the agent's wheel, find_bundle,
and install.sh's refusals of bad command lines (before it touches anything)."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import subprocess
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

import shared
from controller import agent_bundle
from controller.agent_bundle import (
    AgentBundle,
    BundleError,
    _requirements_file,
    agent_requirements,
    archive_name,
    build_agent_wheel,
    cached_set,
    check_python,
    check_version,
    download_dependencies,
    find_bundle,
    requirements_for,
    wheel_pin,
)
from controller.errors import ControllerError
from shared.errors import ValidationError
from shared.schemas import AGENT_VERSION_PATTERN

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "deploy" / "agent" / "install.sh"
ResolveClosure = Callable[[Sequence[str], str, Path], list[Path]]


# -- versions ---------------------------------------------------------------------------
@pytest.mark.parametrize("version", ["0.1.0", "1", "1.2.3rc1", "2.0a0", "1.0.post2",
                                     "1.0.dev3", "10.20.30b4.post5.dev6"])
def test_normalized_versions_are_accepted(version: str) -> None:
    assert check_version(version) == version


@pytest.mark.parametrize("version", ["", "v1.0", "1.0-rc1", "01.0", "1.0+local", "1..0",
                                     "1.0/../x", "1.0 ", "1.0.RC1", "latest"])
def test_other_versions_are_refused(version: str) -> None:
    with pytest.raises(ValidationError) as caught:
        check_version(version)
    assert caught.value.errors == {"version": [caught.value.message.removeprefix("version: ")]}


def test_the_newest_bundle_is_the_newest_as_pep_440_says(tmp_path: Path) -> None:
    ordered = ["0.9", "1.0.dev1", "1.0a1", "1.0b1.dev2", "1.0b1", "1.0rc2", "1.0",
               "1.0.post1", "1.0.1", "1.10", "2"]
    for newest in range(len(ordered)):
        fake_bundle(tmp_path / str(newest), ordered[newest])
        for older in ordered[:newest]:
            fake_bundle(tmp_path / str(newest), older)
        assert find_bundle(tmp_path / str(newest)).version == ordered[newest]


def test_install_sh_takes_the_same_versions() -> None:
    # install.sh checks MANIFEST.json's version with the API's grammar, verbatim.
    assert f'VERSION = r"{AGENT_VERSION_PATTERN}"' in INSTALL.read_text()


@pytest.mark.parametrize("python", ["3.9", "3.10", "3.13", "3.20"])
def test_pythons_from_3_9(python: str) -> None:
    assert check_python(python) == python


@pytest.mark.parametrize("python", ["3.8", "2.7", "3", "3.9.1", "cp39", "4.0"])
def test_older_or_odd_pythons_are_refused(python: str) -> None:
    with pytest.raises(ValidationError, match=r"3\.9 or newer"):
        check_python(python)


# -- requirements -----------------------------------------------------------------------
def test_the_agent_needs_the_core_and_the_agent_extra_only() -> None:
    names = [line.split("<")[0].split(">")[0].split(";")[0] for line in agent_requirements()]
    assert names == ["marshmallow", "dnspython", "tomli", "flask", "flask-smorest", "cheroot"]
    assert 'tomli<3,>=1.1; python_version < "3.11"' in agent_requirements()
    assert not any("extra" in line for line in agent_requirements())


def test_markers_are_evaluated_for_the_target_python_not_this_one() -> None:
    lines = ['tomli<3,>=1.1; python_version < "3.11"',
             'importlib-metadata>=3.6; python_version < "3.10"', "flask<4,>=3.0",
             'pywin32; sys_platform == "win32"', 'pysocks; extra == "socks"']
    assert requirements_for(lines, "3.9") == {"tomli<3,>=1.1", "importlib-metadata>=3.6",
                                              "flask<4,>=3.0"}
    assert requirements_for(lines, "3.11") == {"flask<4,>=3.0"}
    assert "pysocks" in requirements_for(lines, "3.11", extras=["socks"])


def test_pins_carry_the_extras_asked_for_and_every_file_hash() -> None:
    hashes = {"apispec-6.8.4-py3-none-any.whl": "a" * 64,
              "markupsafe-3.0.4-cp39-cp39-manylinux2014_x86_64.whl": "b" * 64,
              "markupsafe-3.0.4-cp311-cp311-manylinux2014_x86_64.whl": "c" * 64}
    text = _requirements_file(["apispec==6.8.4", "markupsafe==3.0.4"], hashes,
                              {"apispec": {"marshmallow"}})
    assert text.splitlines() == [
        f"apispec[marshmallow]==6.8.4 --hash=sha256:{'a' * 64}",
        f"markupsafe==3.0.4 --hash=sha256:{'b' * 64} --hash=sha256:{'c' * 64}"]
    assert wheel_pin(Path("flask_smorest-0.46.2-py3-none-any.whl")) == ("flask-smorest",
                                                                         "0.46.2")


def test_no_index_reachable_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Nothing listens on port 9 of loopback; no config file, no find-links, no retries.
    for name, value in {"PIP_CONFIG_FILE": "/dev/null", "PIP_FIND_LINKS": "",
                        "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_RETRIES": "0",
                        "PIP_TIMEOUT": "2", "PIP_EXTRA_INDEX_URL": ""}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(BundleError, match=r"Python 3\.9 failed \(is PyPI.*reachable"):
        download_dependencies(["flask<4,>=3.0"], "3.9", tmp_path / "wheels")


# -- the wheel cache ------------------------------------------------------------------
REQUIRES = ["flask<4,>=3.0"]


def fake_closure(made: str, other_build: Path | None = None) -> ResolveClosure:
    """A stand-in for pip download giving the wheel ``made``; with ``other_build``, another
    build completes that cached set (with ``other-1.0``) while this one downloads."""
    def resolve(requirements: Sequence[str], python: str, scratch: Path) -> list[Path]:
        if other_build is not None:
            other_build.mkdir()
            (other_build / "other-1.0-py3-none-any.whl").write_bytes(b"the other build's")
            (other_build / ".complete").touch()
        (scratch / made).write_bytes(made.encode())
        return [scratch / made]
    return resolve


def test_a_set_another_build_completed_meanwhile_stays(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    theirs = cached_set(cache, REQUIRES, "3.11")
    monkeypatch.setattr(agent_bundle, "_resolve_closure",
                        fake_closure("mine-1.0-py3-none-any.whl", other_build=theirs))
    wheels = download_dependencies(REQUIRES, "3.11", tmp_path / "dest", cache)
    # The other build's set stays as it was (others may be copying from it) and is used.
    assert sorted(path.name for path in theirs.iterdir()) == [
        ".complete", "other-1.0-py3-none-any.whl"]
    assert [path.name for path in wheels] == ["other-1.0-py3-none-any.whl"]
    assert [path.name for path in cache.iterdir()] == [theirs.name]  # no staging left


def test_an_incomplete_leftover_is_replaced(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    leftover = cached_set(cache, REQUIRES, "3.11")
    leftover.mkdir(parents=True, mode=0o700)
    cache.chmod(0o700)
    (leftover / "half-1.0-py3-none-any.whl").write_bytes(b"half")
    monkeypatch.setattr(agent_bundle, "_resolve_closure",
                        fake_closure("mine-1.0-py3-none-any.whl"))
    wheels = download_dependencies(REQUIRES, "3.11", tmp_path / "dest", cache)
    assert [path.name for path in wheels] == ["mine-1.0-py3-none-any.whl"]
    assert (leftover / ".complete").is_file()


def test_the_wheel_cache_must_be_private(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent_bundle, "_resolve_closure", fake_closure("a-1.0-py3-none-any.whl"))
    cache = tmp_path / "cache"
    download_dependencies(REQUIRES, "3.11", tmp_path / "a", cache)
    assert cache.stat().st_mode & 0o777 == 0o700

    # writable by its group or by anyone: refused, saying why and what to do
    for mode in (0o770, 0o757):
        cache.chmod(mode)
        with pytest.raises(BundleError, match=r"writable by it alone.*chmod go-w"):
            download_dependencies(REQUIRES, "3.11", tmp_path / "b", cache)
    cache.chmod(0o700)
    # a cached set or a wheel someone else could change: refused too
    wheel = next(cached_set(cache, REQUIRES, "3.11").glob("*.whl"))
    wheel.chmod(0o666)
    with pytest.raises(BundleError, match=re.escape(str(wheel))):
        download_dependencies(REQUIRES, "3.11", tmp_path / "c", cache)
    wheel.chmod(0o644)
    # another user's cache (the tests run as root: they make the lab's hosts)
    os.chown(cache, 65534, 65534)
    with pytest.raises(BundleError, match="belongs to uid 65534"):
        download_dependencies(REQUIRES, "3.11", tmp_path / "d", cache)
    os.chown(cache, os.geteuid(), os.getegid())
    # a symlinked set: refused
    target = cached_set(cache, REQUIRES, "3.11")
    shutil.move(target, tmp_path / "elsewhere")
    target.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(BundleError, match="symlink"):
        download_dependencies(REQUIRES, "3.11", tmp_path / "e", cache)


# -- the agent's wheel ------------------------------------------------------------------
def test_the_agent_wheel(tmp_path: Path) -> None:
    wheel = build_agent_wheel(tmp_path / "a", "7.1.0", ["flask<4,>=3.0",
                                                         'tomli<3; python_version < "3.11"'])
    assert wheel.name == "relayfleet_agent-7.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        info = "relayfleet_agent-7.1.0.dist-info"
        metadata = archive.read(f"{info}/METADATA").decode()
        assert "Name: relayfleet-agent\nVersion: 7.1.0\n" in metadata
        assert "Requires-Python: >=3.9\n" in metadata
        assert 'Requires-Dist: tomli<3; python_version < "3.11"\n' in metadata
        assert archive.read(f"{info}/entry_points.txt").decode() == (
            "[console_scripts]\nrelayfleet-agent = agent.cli:main\n")
        assert "Root-Is-Purelib: true" in archive.read(f"{info}/WHEEL").decode()
        stamped = archive.read("shared/__init__.py").decode()
        assert '__version__ = "7.1.0"' in stamped and shared.__version__ != "7.1.0"
        assert "agent/cli.py" in names and "shared/sendmail/operations.py" in names
        assert not [n for n in names if n.startswith("shared/testing") or ".pyc" in n
                    or "__pycache__" in n or n.startswith(("controller/", "tests/"))]
        # RECORD lists every other file with its urlsafe-base64 SHA-256 and size.
        record = dict(line.split(",", 1) for line in
                      archive.read(f"{info}/RECORD").decode().splitlines())
        assert set(record) == set(names)
        for name in names:
            if name.endswith("RECORD"):
                continue
            data = archive.read(name)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            assert record[name] == f"sha256={digest.decode()},{len(data)}"
    # The same sources give the same bytes.
    twin = build_agent_wheel(tmp_path / "b", "7.1.0", ["flask<4,>=3.0",
                                                        'tomli<3; python_version < "3.11"'])
    assert twin.read_bytes() == wheel.read_bytes()


def test_a_wheel_for_a_bad_version_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError):
        build_agent_wheel(tmp_path, "1.0-evil", [])


# -- find_bundle ------------------------------------------------------------------------
def fake_bundle(directory: Path, version: str, body: bytes | None = None) -> AgentBundle:
    """An archive (any bytes) and its sha256sum line, as build_bundle writes them."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / archive_name(version)
    path.write_bytes(body if body is not None else f"bundle {version}".encode())
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    (directory / f"{path.name}.sha256").write_text(f"{digest}  {path.name}\n")
    return AgentBundle(path, version, digest, path.stat().st_size)


def test_find_bundle_takes_the_newest_version_or_the_one_asked(tmp_path: Path) -> None:
    for version in ("1.9.0", "1.10.0", "1.10.0rc1", "0.5"):
        fake_bundle(tmp_path, version)
    (tmp_path / "relayfleet-agent-notes.txt").write_text("not a bundle")
    (tmp_path / ".relayfleet-agent-9.0.tar.gz.partial").write_text("half written")
    assert find_bundle(tmp_path) == fake_bundle(tmp_path, "1.10.0")
    assert find_bundle(tmp_path, "1.9.0").version == "1.9.0"


def test_find_bundle_errors_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"no agent bundle directory .* agent-bundle --out"):
        find_bundle(tmp_path / "absent")
    with pytest.raises(BundleError, match="no agent bundle in"):
        find_bundle(tmp_path)
    fake_bundle(tmp_path, "1.0.0")
    with pytest.raises(BundleError, match=r"no agent bundle of version 2\.0\.0"):
        find_bundle(tmp_path, "2.0.0")
    with pytest.raises(ValidationError):
        find_bundle(tmp_path, "../1.0.0")
    assert issubclass(BundleError, ControllerError)


def test_a_corrupt_or_unchecked_bundle_is_not_found(tmp_path: Path) -> None:
    bundle = fake_bundle(tmp_path, "1.0.0")
    bundle.path.write_bytes(b"bundle 1.0.0, damaged")
    with pytest.raises(BundleError, match="does not match its checksum file"):
        find_bundle(tmp_path, "1.0.0")
    checksum = tmp_path / f"{bundle.path.name}.sha256"
    checksum.write_text("not a checksum\n")
    with pytest.raises(BundleError, match="is not a sha256sum line"):
        find_bundle(tmp_path)
    checksum.unlink()
    with pytest.raises(BundleError, match=r"\.sha256 is missing"):
        find_bundle(tmp_path)


# -- install.sh's command line ----------------------------------------------------------
def test_install_sh_is_posix_sh() -> None:
    # shellcheck -s sh flags what dash, busybox sh or RHEL's sh would not run the same
    # (bashisms, unquoted expansions), every severity; each exception is a comment in place.
    if shutil.which("shellcheck") is None:
        pytest.fail("shellcheck is missing: apt-get install shellcheck "
                    "(deploy/dev/bootstrap.sh installs it)")
    run = subprocess.run(["shellcheck", "-s", "sh", "-S", "style", str(INSTALL),
                          str(INSTALL.with_name("make-cert.sh"))],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stdout + run.stderr


def test_shellcheck_finds_a_bashism(tmp_path: Path) -> None:
    script = tmp_path / "bashism.sh"
    script.write_text('#!/bin/sh\nif [[ -n "$1" ]]; then echo $1; fi\n')
    run = subprocess.run(["shellcheck", "-s", "sh", str(script)], capture_output=True,
                         text=True, check=False)
    assert run.returncode == 1 and "SC3010" in run.stdout, run.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--bundle", "x.tar.gz"], "--bundle needs --sha256"),
    (["--bundle", "x.tar.gz", "--sha256", "abc"], "64 hex digits"),
    (["--listen", '0.0.0.0:8587"\nevil = "1'], "ADDR:PORT"),
    (["--listen", "0.0.0.0:99999"], "1 to 65535"),
    (["--listen", "0.0.0.0"], "ADDR:PORT"),
    (["--mta", "exim"], "--mta must be"),
    (["--flavour", "arch"], "--flavour must be"),
    (["--cert-name", "a b"], "--cert-name"),
    (["--python"], "--python needs a value"),
    (["--frobnicate"], "unknown option --frobnicate"),
])
def test_install_sh_refuses_a_bad_command_line(args: list[str], message: str) -> None:
    run = subprocess.run(["dash", str(INSTALL), *args], capture_output=True, text=True,
                         check=False)
    assert run.returncode == 2, run
    assert message in run.stderr and run.stdout == ""


def test_install_sh_help_names_every_option() -> None:
    run = subprocess.run(["sh", str(INSTALL), "--help"], capture_output=True, text=True,
                         check=True)
    for option in ("--bundle", "--sha256", "--listen", "--mta", "--flavour", "--python",
                   "--token-stdin", "--rotate-token", "--cert-name"):
        assert option in run.stdout
    assert "4 busy: another install.sh runs on this host" in run.stdout
    assert "/var/log/relayfleet-install.log" in run.stdout
    assert run.stdout.rstrip().endswith("(sudo) anyway."), run.stdout  # the whole header


def test_install_sh_usage_errors_reach_a_closed_stdout_or_none() -> None:
    # stdout closed: the usage error still goes to stderr, and install.sh does not die of it
    run = subprocess.run(["dash", "-c", 'exec 1>&-; exec dash "$0" --mta exim', str(INSTALL)],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 2 and "--mta must be" in run.stderr, run
