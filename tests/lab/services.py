"""Real Redis and PostgreSQL servers started just for the tests (and benchmarks).

Each runs on a free port in a temporary directory and is stopped afterwards, so the
tests neither need nor disturb any server already running on the machine. PostgreSQL
is an ``initdb`` cluster of its own (trust auth on a private socket and 127.0.0.1),
run as the ``postgres`` user; Debian's ``postgresql`` package provides the binaries.
Set ``RELAYFLEET_TEST_POSTGRES_URL`` to use an existing server instead.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.controller_client import Controller

if TYPE_CHECKING:
    from tests.lab.lab import Lab, LabHost


@contextlib.contextmanager
def ready_process(argv: list[str], document: object, log: Path, what: str, *,
                  env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """A server process fed ``document`` as JSON on stdin (tokens never in argv), waited for
    until it prints READY, and stopped on exit (its whole session if TERM is not enough)."""
    with open(log, "wb") as errors:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=errors, start_new_session=True, env=env)
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(document).encode())
        proc.stdin.close()
        try:
            if proc.stdout.readline().strip() != b"READY":
                raise RuntimeError(f"{what} did not start: {log.read_text()[-2000:]}")
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_tcp(port: int, proc: subprocess.Popen[bytes] | None, what: str,
              timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout} s")


class RedisServer:
    """``redis-server`` on a free port, nothing persisted."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The server's URL (database 0)."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start it and wait until it accepts connections."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / "redis.log", "wb")  # noqa: SIM115 (kept for the process)
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)], stdout=log, stderr=log)
        _wait_tcp(self.port, self.proc, "redis-server")
        return self

    def flush(self) -> None:
        """Empty every database (between tests)."""
        subprocess.run(["redis-cli", "-p", str(self.port), "FLUSHALL"], check=True,
                       capture_output=True)

    def stop(self) -> None:
        """Stop it."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def restart(self, down_s: float = 2.5) -> float:
        """Stop it as an operator's restart does (``SHUTDOWN SAVE``: the queued messages
        are written to ``dump.rdb`` first), stay down ``down_s`` seconds, start it again on
        the same port and directory (it loads the dump). Return the seconds it was down."""
        went_down = time.monotonic()
        subprocess.run(["redis-cli", "-p", str(self.port), "SHUTDOWN", "SAVE"], check=False,
                       capture_output=True)
        if self.proc is not None:
            self.proc.wait(10)
        time.sleep(down_s)
        self.start()
        return time.monotonic() - went_down


class PostgresServer:
    """A private PostgreSQL cluster (or the one ``RELAYFLEET_TEST_POSTGRES_URL`` names)."""

    def __init__(self) -> None:
        # Not under pytest's tmp_path: the postgres user must be able to reach it.
        self.workdir = Path(tempfile.mkdtemp(prefix="relayfleet-pg-", dir="/var/tmp"))
        self.port = free_port()
        self.external = os.environ.get("RELAYFLEET_TEST_POSTGRES_URL")
        self._databases = 0

    @property
    def admin_url(self) -> str:
        """URL of the maintenance database."""
        return self.external or f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> PostgresServer:
        """initdb and start the cluster (as the postgres user); wait until it is up."""
        if self.external:
            shutil.rmtree(self.workdir, ignore_errors=True)
            return self
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not bins:
            raise RuntimeError("PostgreSQL is not installed: run deploy/dev/bootstrap.sh")
        bindir = Path(bins[-1]).parent
        data = self.workdir / "pgdata"
        shutil.chown(self.workdir, "postgres", "postgres")
        self._bindir = bindir
        self._data = data
        as_pg = ["runuser", "-u", "postgres", "--"]
        subprocess.run([*as_pg, str(bindir / "initdb"), "-D", str(data), "--auth=trust",
                        "-U", "postgres", "--no-sync"], check=True, capture_output=True)
        subprocess.run([*as_pg, str(bindir / "pg_ctl"), "-D", str(data), "-w", "-l",
                        str(self.workdir / "postgres.log"), "-o",
                        f"-p {self.port} -k {self.workdir} -c listen_addresses=127.0.0.1 "
                        "-c fsync=off -c max_connections=300", "start"],
                       check=True, capture_output=True)
        _wait_tcp(self.port, None, "postgres")
        return self

    def new_database(self) -> str:
        """Create an empty database; return its SQLAlchemy URL."""
        import psycopg

        self._databases += 1
        name = f"relayfleet_test_{os.getpid()}_{self._databases}"
        dsn = self.admin_url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.admin_url.rsplit("/", 1)[0] + f"/{name}"

    def postmaster_pid(self) -> int | None:
        """The private cluster's postmaster (``None`` for an external server)."""
        if self.external:
            return None
        return int((self._data / "postmaster.pid").read_text().split()[0])

    def restart(self, down_s: float = 2.5) -> float:
        """``pg_ctl stop -m fast`` (clients are disconnected), stay down ``down_s`` seconds,
        start the same cluster on the same port. Return the seconds it was down."""
        if self.external:
            raise RuntimeError("cannot restart an external PostgreSQL server")
        as_pg = ["runuser", "-u", "postgres", "--", str(self._bindir / "pg_ctl"), "-D",
                 str(self._data)]
        went_down = time.monotonic()
        subprocess.run([*as_pg, "-m", "fast", "-w", "stop"], check=True, capture_output=True)
        time.sleep(down_s)
        subprocess.run([*as_pg, "-w", "-l", str(self.workdir / "postgres.log"), "-o",
                        f"-p {self.port} -k {self.workdir} -c listen_addresses=127.0.0.1 "
                        "-c fsync=off -c max_connections=300", "start"],
                       check=True, capture_output=True)
        _wait_tcp(self.port, None, "postgres")
        return time.monotonic() - went_down

    def stop(self) -> None:
        """Stop the private cluster."""
        if self.external:
            return
        subprocess.run(["runuser", "-u", "postgres", "--", str(self._bindir / "pg_ctl"), "-D",
                        str(self._data), "-m", "fast", "stop"], check=False,
                       capture_output=True)
        shutil.rmtree(self.workdir, ignore_errors=True)


#: beat's fleet tick in tests that do not ask for it (FAST_BEAT_ENV does): once a day, so
#: never within a test; its status collections would add jobs that tests counting the jobs
#: they started do not expect
QUIET_TICK_ENV = {"RELAYFLEET_SCHEDULER_TICK_S": "86400"}


class ControllerWorker:
    """``relayfleet-controller worker`` as a real process (its own session, so that a test
    can SIGKILL the whole worker, pool children included)."""

    def __init__(self, env: dict[str, str], log: Path, concurrency: int = 4,
                 beat: bool = False) -> None:
        self.env = env
        self.log = log
        self.concurrency = concurrency
        #: run ``relayfleet-controller beat`` (the scheduler: sweeps, status collections,
        #: schedules) instead of a worker
        self.beat = beat
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> ControllerWorker:
        """Start it and wait until Celery says it is ready."""
        import sys

        offset = self.log.stat().st_size if self.log.exists() else 0
        handle = open(self.log, "ab")  # noqa: SIM115 (kept for the process)
        command = ["beat"] if self.beat else ["worker", f"--concurrency={self.concurrency}"]
        ready = b"beat: Starting" if self.beat else b" ready."
        env = {**os.environ, **self.env}
        if self.beat:
            env = {**QUIET_TICK_ENV, **env}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "controller.cli", *command],
            env=env, stdout=handle, stderr=handle, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited: {self.log.read_text()[-2000:]}")
            with open(self.log, "rb") as text:
                text.seek(offset)
                if ready in text.read():
                    return self
            time.sleep(0.2)
        raise RuntimeError(f"worker not ready within {timeout} s")

    def kill(self) -> None:
        """SIGKILL the worker and its pool processes at once (a crash, not a shutdown)."""
        import signal

        if self.proc and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL if it lingers."""
        import signal

        if self.proc and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


class ApiServer:
    """``relayfleet-controller serve`` (gunicorn) as a real process on a free loopback port,
    with a controller stack's environment: what the ``relayfleet`` CLI and curl talk to."""

    def __init__(self, env: dict[str, str], log: Path, workers: int = 1,
                 threads: int = 8) -> None:
        self.env = env
        self.log = log
        self.workers = workers
        self.threads = threads
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The API's base URL (``http://127.0.0.1:PORT``)."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> ApiServer:
        """Start it (its own session, so that stopping it takes its workers along) and wait
        until ``GET /v1/health`` answers 200."""
        import sys
        import urllib.error
        import urllib.request

        handle = open(self.log, "ab")  # noqa: SIM115 (kept for the process)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "controller.cli", "serve", "--listen",
             f"127.0.0.1:{self.port}", "--workers", str(self.workers), "--threads",
             str(self.threads)],
            env={**os.environ, **self.env}, stdout=handle, stderr=handle,
            start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the API server exited with {self.proc.returncode}: "
                                   f"{self.log.read_text(errors='replace')[-2000:]}")
            with (contextlib.suppress(OSError, urllib.error.URLError),
                  urllib.request.urlopen(f"{self.url}/v1/health", timeout=1) as answer):
                if answer.status == 200:
                    return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the API server did not answer /v1/health within {timeout} s")

    def stop(self) -> None:
        """SIGTERM (gunicorn's graceful stop), then SIGKILL if it lingers."""
        import signal

        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def __enter__(self) -> ApiServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def relayfleet_command() -> str:
    """The installed ``relayfleet`` command of this environment (the venv's, not one on
    PATH): what an operator runs."""
    import sys

    path = Path(sys.prefix) / "bin" / "relayfleet"
    if not path.exists():
        raise RuntimeError(f"{path} is missing: install the package with its cli extra")
    return str(path)


@dataclass
class RelayfleetCli:
    """Runs the installed ``relayfleet`` command against one API server, as an operator
    would: ``--api URL --token-file F``, a home of its own (no profile, no stray
    ``RELAYFLEET_*`` variables of the test process), output through pipes."""

    api_url: str
    token_file: Path
    home: Path

    def env(self, **extra: str) -> dict[str, str]:
        """The command's environment: this one without RELAYFLEET_* and colour settings,
        HOME and XDG_CONFIG_HOME in :attr:`home`, the venv's bin first on PATH."""
        import sys

        self.home.mkdir(parents=True, exist_ok=True)
        env = {key: value for key, value in os.environ.items()
               if not key.startswith("RELAYFLEET_")
               and key not in ("NO_COLOR", "FORCE_COLOR", "TERM", "COLUMNS", "LINES")}
        env.update(HOME=str(self.home), XDG_CONFIG_HOME=str(self.home / ".config"),
                   XDG_DATA_HOME=str(self.home / ".local" / "share"),
                   PATH=f"{Path(sys.prefix) / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}")
        env.update(extra)
        return env

    def argv(self, *args: str, token_file: Path | None = None,
             api_url: str | None = None) -> list[str]:
        """``relayfleet --api URL --token-file F ARGS...``."""
        return [relayfleet_command(), "--api", api_url or self.api_url, "--token-file",
                str(token_file or self.token_file), *args]

    def __call__(self, *args: str, token_file: Path | None = None, api_url: str | None = None,
                 stdin: str | None = None, timeout: float = 240,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``relayfleet ARGS...`` to its end; its exit code, stdout and stderr."""
        return subprocess.run(self.argv(*args, token_file=token_file, api_url=api_url),
                              env=self.env(**(env or {})), input=stdin, capture_output=True,
                              text=True, timeout=timeout, check=False)


@dataclass
class ControllerStack:
    """One controller (API in-process, worker as a process, beat as a process when asked
    for) over one database."""

    controller: Controller
    worker: ControllerWorker
    env: dict[str, str]
    beat: ControllerWorker | None = None

    def stop(self) -> None:
        """Stop beat (first: it queues work) and the worker."""
        if self.beat is not None:
            self.beat.stop()
        self.worker.stop()


#: beat's settings for tests that run it: a tick every 2 s, status intervals from 10 s (the
#: product's defaults are 30 s and 60 s); a test may override them
FAST_BEAT_ENV = {"RELAYFLEET_SCHEDULER_TICK_S": "2", "RELAYFLEET_MIN_STATUS_EVERY_S": "10"}


def controller_stack(database_url: str, workdir: Path, redis: RedisServer,
                     monkeypatch: pytest.MonkeyPatch, lab_network: str, redis_db: int = 0,
                     beat: bool = False, **extra_env: str) -> ControllerStack:
    """Migrate the database, point this process's controller and a worker process at it and
    at Redis, and let exactly the lab network and loopback (callbacks) through egress.
    ``beat``: run beat too, with :data:`FAST_BEAT_ENV` unless ``extra_env`` says
    otherwise (stop it with :meth:`ControllerStack.stop`)."""
    from controller.migrate import upgrade
    from tests.conftest import TEST_SECRET_KEY

    upgrade(database_url)
    broker = redis.url.rsplit("/", 1)[0] + f"/{redis_db}"
    env = {"RELAYFLEET_DATABASE_URL": database_url, "RELAYFLEET_BROKER_URL": broker,
           "RELAYFLEET_SECRET_KEY": TEST_SECRET_KEY, "RELAYFLEET_DATA_DIR": str(workdir),
           "RELAYFLEET_EGRESS_ALLOW": f"loopback,{lab_network}",
           **(FAST_BEAT_ENV if beat else {}), **extra_env}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    controller = Controller.create()
    worker = ControllerWorker(env, workdir / "worker.log").start()
    stack = ControllerStack(controller, worker, env)
    if beat:
        try:
            stack.beat = ControllerWorker(env, workdir / "beat.log", beat=True).start()
        except BaseException:
            worker.stop()
            raise
    return stack


@contextlib.contextmanager
def lab_controller(lab: Lab, redis: RedisServer, workdir: Path, redis_db: int,
                   beat: bool = False, **extra_env: str
                   ) -> Iterator[tuple[ControllerStack, list[LabHost]]]:
    """A controller stack on SQLite in ``workdir`` for ``lab``'s hosts (``beat``: with beat
    running, see :func:`controller_stack`): yields it with a list the caller fills with the
    hosts it adds; afterwards beat and the worker stop and those hosts close."""
    hosts: list[LabHost] = []
    with pytest.MonkeyPatch.context() as monkeypatch:
        stack = controller_stack(f"sqlite:///{workdir / 'relayfleet.db'}", workdir, redis,
                                 monkeypatch, lab.network, redis_db=redis_db, beat=beat,
                                 **extra_env)
        try:
            yield stack, hosts
        finally:
            stack.stop()
            for host in hosts:
                host.close()
