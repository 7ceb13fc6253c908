"""Executors: how operations run commands and touch files on a host.

Operations never call :mod:`subprocess` or :func:`open` themselves; they go through an
:class:`Executor`. :class:`LocalExecutor` (used by the agent) acts on the machine it runs
on. A remote executor (SSH) implements the same methods with nothing but a POSIX shell
and core utilities on the far side, so every method here must be expressible that way:
``cat``, ``mv``, ``cp -p``, ``chmod``, ``chown``, ``mkdir``, ``rm``.
"""

from __future__ import annotations

import abc
import contextlib
import os
import secrets
import socket
import stat
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

from shared.errors import CommandTimeout, ExecutorError

#: exit code of :func:`read_command` when the file does not exist
MISSING_CODE = 44
#: prints a file, or exits MISSING_CODE when it is absent (the path is ``$1``)
READ_SCRIPT = f'[ -e "$1" ] || exit {MISSING_CODE}; exec cat -- "$1"'


def read_command(path: str) -> list[str]:
    """An argv that prints ``path`` (exit MISSING_CODE if absent), for batched reads."""
    return ["sh", "-c", READ_SCRIPT, "sh", path]


class FileMissing(ExecutorError):
    """The file asked for does not exist on the host."""

    kind = "file_missing"


@dataclass(frozen=True)
class CommandResult:
    """What a command did: its argv, exit code, output and how long it took."""

    argv: tuple[str, ...]
    exit_code: int
    stdout: bytes
    stderr: bytes
    duration_s: float

    @property
    def ok(self) -> bool:
        """True when the command exited 0."""
        return self.exit_code == 0

    def stdout_text(self) -> str:
        """stdout decoded leniently."""
        return self.stdout.decode("utf-8", errors="replace")

    def output_text(self) -> str:
        """stdout and stderr together, decoded leniently."""
        out = self.stdout.decode("utf-8", errors="replace")
        err = self.stderr.decode("utf-8", errors="replace")
        return out + err if not (out and err) else f"{out.rstrip()}\n{err}"


@dataclass(frozen=True)
class FileInfo:
    """Mode, ownership, size and modification time (epoch seconds) of a file on the host."""

    mode: int
    uid: int
    gid: int
    size: int
    mtime: float = 0.0


class ByteStream(Protocol):
    """A connected byte stream (a socket, or an SSH direct-tcpip channel)."""

    def sendall(self, data: bytes, /) -> None: ...

    def recv(self, size: int, /) -> bytes: ...

    def settimeout(self, timeout: float | None, /) -> None: ...

    def close(self) -> None: ...


class Executor(abc.ABC):
    """Runs commands and reads/writes files on one host. Use it as a context manager."""

    #: a name for the host in messages and results
    label: str = "host"

    # -- commands -------------------------------------------------------------------
    @abc.abstractmethod
    def run(
        self,
        argv: Sequence[str],
        *,
        input: bytes | None = None,
        timeout: float | None = 60.0,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult:
        """Run ``argv`` (never through a shell) and return what happened, whatever the exit code."""

    def run_many(self, commands: Sequence[Sequence[str]], *,
                 timeout: float | None = 60.0) -> list[CommandResult]:
        """Run independent commands in order; remote executors do it in one round trip."""
        return [self.run(argv, timeout=timeout) for argv in commands]

    # -- files ----------------------------------------------------------------------
    @abc.abstractmethod
    def read_file(self, path: str) -> bytes:
        """Return a file's bytes; raise :class:`FileMissing` if it is absent."""

    @abc.abstractmethod
    def file_info(self, path: str) -> FileInfo | None:
        """Return a file's mode, owner, size and mtime, or None if it does not exist."""

    @abc.abstractmethod
    def write_file(self, path: str, data: bytes, *, mode: int = 0o600) -> None:
        """Create or truncate ``path`` with ``data`` and ``mode`` (not atomic)."""

    @abc.abstractmethod
    def set_owner_mode(self, path: str, *, mode: int, uid: int, gid: int) -> None:
        """Set a file's mode and owner."""

    @abc.abstractmethod
    def rename(self, src: str, dst: str) -> None:
        """Atomically rename ``src`` over ``dst`` (same filesystem)."""

    @abc.abstractmethod
    def copy_file(self, src: str, dst: str) -> None:
        """Copy ``src`` to ``dst`` keeping mode, owner and times."""

    @abc.abstractmethod
    def remove(self, path: str) -> None:
        """Remove a file; a missing file is not an error."""

    @abc.abstractmethod
    def make_dir(self, path: str, *, mode: int = 0o700) -> bool:
        """Create one directory; return False if it already existed (atomic test-and-set)."""

    @abc.abstractmethod
    def list_dir(self, path: str) -> list[str]:
        """Names in a directory (no dot entries); empty if it does not exist."""

    @abc.abstractmethod
    def remove_dir(self, path: str) -> None:
        """Remove a directory and its content; missing is not an error."""

    @abc.abstractmethod
    def real_paths(self, paths: Sequence[str]) -> list[str]:
        """Each path with every symbolic link resolved (``realpath``), in one round trip;
        missing components are kept as they are, so a file not there yet resolves too."""

    def real_path(self, path: str) -> str:
        """One path with every symbolic link resolved (see :meth:`real_paths`)."""
        return self.real_paths([path])[0]

    # -- network --------------------------------------------------------------------
    @abc.abstractmethod
    def open_tcp(self, host: str, port: int, timeout: float) -> ByteStream:
        """Open a TCP connection *from the host* to ``host:port``."""

    # -- composed helpers -----------------------------------------------------------
    def read_text(self, path: str) -> str:
        """Return a file's text (UTF-8, lenient)."""
        return self.read_file(path).decode("utf-8", errors="replace")

    def read_file_if_exists(self, path: str) -> bytes | None:
        """Return a file's bytes, or None if it is absent."""
        try:
            return self.read_file(path)
        except FileMissing:
            return None

    def exists(self, path: str) -> bool:
        """True if ``path`` exists."""
        return self.file_info(path) is not None

    def temp_path_for(self, path: str, tag: str = "new") -> str:
        """A fresh hidden name next to ``path`` (same directory, so a rename is atomic)."""
        directory, name = os.path.split(path)
        return os.path.join(directory, f".{name}.relayfleet-{tag}-{secrets.token_hex(4)}")

    def write_file_atomic(self, path: str, data: bytes, *, mode: int | None = None) -> None:
        """Replace ``path`` atomically: temp file beside it, old mode and owner kept, rename."""
        old = self.file_info(path)
        tmp = self.temp_path_for(path)
        try:
            self.write_file(tmp, data, mode=0o600)
            if old is not None:
                self.set_owner_mode(tmp, mode=mode if mode is not None else old.mode,
                                    uid=old.uid, gid=old.gid)
            elif mode is not None:
                self.set_owner_mode(tmp, mode=mode, uid=-1, gid=-1)
            self.rename(tmp, path)
        except BaseException:
            self.remove(tmp)
            raise

    def close(self) -> None:  # noqa: B027 - most executors hold nothing to close
        """Release whatever the executor holds; safe to call twice."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class LocalExecutor(Executor):
    """Acts on the machine this process runs on (the agent's executor)."""

    label = "localhost"

    def run(
        self,
        argv: Sequence[str],
        *,
        input: bytes | None = None,
        timeout: float | None = 60.0,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult:
        """Run ``argv`` directly (no shell), killing its whole process group on timeout."""
        start = time.monotonic()
        run_env = {**os.environ, "LC_ALL": "C", **(env or {})}
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=run_env,
                start_new_session=True,
            )
        except OSError as exc:
            raise ExecutorError(f"cannot run {argv[0]}: {exc.strerror}") from exc
        try:
            out, err = proc.communicate(input=input, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            # A daemon started by the command may keep the pipes open: kill the group.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            proc.kill()
            proc.communicate()
            raise CommandTimeout(f"{argv[0]} did not finish within {timeout}s") from exc
        return CommandResult(tuple(argv), proc.returncode, out, err, time.monotonic() - start)

    def read_file(self, path: str) -> bytes:
        """Return a file's bytes."""
        try:
            with open(path, "rb") as fh:
                return fh.read()
        except FileNotFoundError as exc:
            raise FileMissing(f"{path} does not exist") from exc
        except OSError as exc:
            raise ExecutorError(f"cannot read {path}: {exc.strerror}") from exc

    def file_info(self, path: str) -> FileInfo | None:
        """Return mode and owner of ``path``."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        return FileInfo(stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_size,
                        st.st_mtime)

    def write_file(self, path: str, data: bytes, *, mode: int = 0o600) -> None:
        """Write ``data`` to ``path`` with ``mode`` from the first byte on."""
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(path, mode)
        except OSError as exc:
            raise ExecutorError(f"cannot write {path}: {exc.strerror}") from exc

    def set_owner_mode(self, path: str, *, mode: int, uid: int, gid: int) -> None:
        """Set mode and owner (uid/gid -1 leaves them)."""
        try:
            os.chown(path, uid, gid)
            os.chmod(path, mode)
        except OSError as exc:
            raise ExecutorError(f"cannot set mode/owner of {path}: {exc.strerror}") from exc

    def rename(self, src: str, dst: str) -> None:
        """Atomic rename."""
        try:
            os.replace(src, dst)
        except OSError as exc:
            raise ExecutorError(f"cannot rename {src} to {dst}: {exc.strerror}") from exc

    def copy_file(self, src: str, dst: str) -> None:
        """Copy keeping mode, owner and times (``cp -p``)."""
        result = self.run(["cp", "-p", src, dst], timeout=30)
        if not result.ok:
            raise ExecutorError(f"cannot copy {src} to {dst}: {result.output_text().strip()}")

    def remove(self, path: str) -> None:
        """Remove a file if it exists."""
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            # e.g. EROFS even for a missing file in a directory the agent's unit keeps
            # read-only: callers clean up with suppress(ExecutorError), never a bare OSError
            raise ExecutorError(f"cannot remove {path}: {exc.strerror}") from exc

    def make_dir(self, path: str, *, mode: int = 0o700) -> bool:
        """mkdir; False if it already existed."""
        try:
            os.mkdir(path, mode)
        except FileExistsError:
            return False
        except OSError as exc:
            raise ExecutorError(f"cannot create {path}: {exc.strerror}") from exc
        return True

    def list_dir(self, path: str) -> list[str]:
        """os.listdir, sorted; empty if missing."""
        try:
            return sorted(os.listdir(path))
        except FileNotFoundError:
            return []

    def remove_dir(self, path: str) -> None:
        """rm -rf one directory."""
        result = self.run(["rm", "-rf", "--", path], timeout=30)
        if not result.ok:
            raise ExecutorError(f"cannot remove {path}: {result.output_text().strip()}")

    def real_paths(self, paths: Sequence[str]) -> list[str]:
        """os.path.realpath of each."""
        return [os.path.realpath(path) for path in paths]

    def open_tcp(self, host: str, port: int, timeout: float) -> ByteStream:
        """Connect from this machine."""
        try:
            return socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise ExecutorError(
                f"cannot connect to {host}:{port} from {self.label}: {exc}") from exc
