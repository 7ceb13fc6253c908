"""Shared fixtures: the lab (real sendmail hosts in namespaces) for integration tests."""

from __future__ import annotations

import itertools
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.cli import run as run_ops
from shared.ssh import SshExecutor, SshTarget
from tests.lab.lab import Lab, LabHost

_names = itertools.count(1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Runs against PostgreSQL are slow (a cluster of their own, started as its own
    user, so root): the fast subset keeps their SQLite twins."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and "postgresql" in callspec.params.values():
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """One lab (bridge, DNS, sinks) for the whole session, torn down even on failure."""
    the_lab = Lab(Path(tmp_path_factory.mktemp("lab")))
    try:
        the_lab.start()
        yield the_lab
    finally:
        the_lab.close()


@pytest.fixture
def make_host(lab: Lab) -> Iterator[Callable[..., LabHost]]:
    """Build fresh lab hosts for one test; they are removed when the test ends."""
    made: list[LabHost] = []

    def factory(layout: str = "debian", start: bool = True, mta: str = "sendmail") -> LabHost:
        prefix = layout[:3] if mta == "sendmail" else f"pf{layout[0]}"
        host = lab.add_host(f"{prefix}{next(_names)}", layout, start=start, mta=mta)
        made.append(host)
        return host

    yield factory
    for host in made:
        host.close()


@pytest.fixture(params=["debian", "centos"])
def host(request: pytest.FixtureRequest, make_host: Callable[..., LabHost]) -> LabHost:
    """A fresh, running lab host of each layout."""
    return make_host(request.param)


@pytest.fixture(scope="session")
def client_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, str]]:
    """SSH client keys made with ssh-keygen: name -> (private key text, public key line)."""
    import subprocess

    directory = Path(tmp_path_factory.mktemp("client-keys"))
    keys = {}
    for name, args in (("ed25519", ["-t", "ed25519", "-N", ""]),
                       ("rsa", ["-t", "rsa", "-b", "3072", "-N", ""]),
                       ("ed25519-passphrase", ["-t", "ed25519", "-N", "correct horse"])):
        path = directory / name
        subprocess.run(["ssh-keygen", "-q", *args, "-C", f"relayfleet-test-{name}",
                        "-f", str(path)], check=True)
        keys[name] = (path.read_text(), " ".join(Path(f"{path}.pub").read_text().split()[:2]))
    return keys


def ssh_target_for(host: LabHost, client_keys: dict[str, tuple[str, str]], *,
                   user: str = "root", key: str = "ed25519", sudo: bool = False,
                   password: str | None = None) -> SshTarget:
    """Start the host's sshd if needed, authorise the key, and describe how to log in."""
    if host.sshd is None:
        host.ssh_host_key = host.start_sshd()
    private, public = client_keys[key]
    host.authorize(user, public)
    return SshTarget(host.address, user, host.ssh_host_key, sudo=sudo,
                     private_key=None if password else private,
                     passphrase="correct horse" if key == "ed25519-passphrase" else None,
                     password=password, connect_timeout_s=5, label=host.name)


class OpsRunner:
    """Runs ``relayfleet-ops`` commands on a lab host, locally inside it or over SSH."""

    def __init__(self, host: LabHost, target: SshTarget | None) -> None:
        self.host = host
        self.target = target

    def __call__(self, command: str, *args: str, body: Any = None, timeout: float = 240,
                 profile: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        if self.target is None:
            return self.host.ops(command, *args, body=body, timeout=timeout, profile=profile)
        argv = ["--flavour", self.host.flavour, "--mta", self.host.mta]
        if profile:
            argv += ["--profile-json", json.dumps(profile)]
        argv += [command, *args]
        if body is not None:
            argv += ["--json", json.dumps(body)]
        return run_ops(argv, executor=SshExecutor(self.target))


@pytest.fixture(params=["local", "ssh"])
def ops(request: pytest.FixtureRequest, host: LabHost,
        client_keys: dict[str, tuple[str, str]]) -> OpsRunner:
    """Operations on ``host``: through the local executor inside it, or over SSH to a host
    whose python has been made unavailable."""
    if request.param == "local":
        return OpsRunner(host, None)
    target = ssh_target_for(host, client_keys)
    host.disable_python()
    return OpsRunner(host, target)


# -- controller: real Redis, real databases (SQLite and PostgreSQL) ------------------------

TEST_SECRET_KEY = "relayfleet-test-secret-key-0123456789"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A redis-server of the tests' own."""
    from tests.lab.services import RedisServer

    server = RedisServer(Path(tmp_path_factory.mktemp("redis"))).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    """A PostgreSQL cluster of the tests' own (started on first use)."""
    from tests.lab.services import PostgresServer

    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SQLite file migrated to the newest schema; tests get copies (running every
    migration for each test is most of a fast API test's time)."""
    from controller.migrate import upgrade

    path = tmp_path_factory.mktemp("schema") / "relayfleet.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, migrated database of each kind."""
    from controller.migrate import upgrade

    if request.param == "sqlite":
        path = tmp_path / "relayfleet.db"
        shutil.copyfile(request.getfixturevalue("migrated_sqlite"), path)
        return f"sqlite:///{path}"
    url = request.getfixturevalue("postgres_server").new_database()
    upgrade(url)
    return str(url)


@pytest.fixture
def memory_controller(migrated_sqlite: Path, tmp_path: Path,
                      monkeypatch: pytest.MonkeyPatch) -> Any:
    """A controller on a fresh SQLite file and kombu's in-memory broker: accepting a job
    really queues its lanes, and nothing needs Redis or root."""
    from tests.controller_client import Controller

    path = tmp_path / "relayfleet.db"
    shutil.copyfile(migrated_sqlite, path)
    for key, value in {"RELAYFLEET_DATABASE_URL": f"sqlite:///{path}",
                       "RELAYFLEET_BROKER_URL": "memory://",
                       "RELAYFLEET_SECRET_KEY": TEST_SECRET_KEY,
                       "RELAYFLEET_DATA_DIR": str(tmp_path / "data")}.items():
        monkeypatch.setenv(key, value)
    return Controller.create()


@pytest.fixture
def controller_env(database_url: str, redis_server: Any, tmp_path: Path,
                   monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment a controller process (API or worker) of this test runs with."""
    redis_server.flush()
    env = {"RELAYFLEET_DATABASE_URL": database_url, "RELAYFLEET_BROKER_URL": redis_server.url,
           "RELAYFLEET_SECRET_KEY": TEST_SECRET_KEY,
           "RELAYFLEET_DATA_DIR": str(tmp_path / "data"),
           # Test receivers and agents listen on loopback; everything else keeps the
           # default egress policy (tests of the default override this).
           "RELAYFLEET_EGRESS_ALLOW": "loopback"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture
def controller(controller_env: dict[str, str]) -> Any:
    """The controller app (real database, real Redis) with an MSP-wide admin token."""
    from tests.controller_client import Controller

    return Controller.create()
