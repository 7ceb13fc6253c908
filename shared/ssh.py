"""The SSH executor: every MTA operation over paramiko, with only a POSIX shell on the host.

Nothing here needs Python on the managed host. Each executor method becomes one remote
command built from an argv with :func:`shlex.join` (file operations are small ``sh -c``
scripts whose paths travel as positional arguments, never inside the script text), run
through ``sudo -n`` when the login is not root, and time-boxed on both ends (coreutils
``timeout`` on the host, a deadline here). Commands go to one persistent ``sh`` per
connection (:mod:`shared.remote_shell`), pooled with it: no sshd session set-up per command.

Host keys are pinned: the key the host offers is compared with the one recorded for it
*before* authenticating, so a host with an unknown or changed key never runs anything.
Connections open lazily, close idempotently, and can be kept warm in an :class:`SshPool`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import os
import shlex
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

import paramiko

from shared.compat import zip_strict
from shared.errors import (
    CommandTimeout,
    ConfigError,
    ExecutorError,
    HostKeyMismatch,
    HostUnreachable,
)
from shared.executor import (
    MISSING_CODE,
    ByteStream,
    CommandResult,
    Executor,
    FileInfo,
    FileMissing,
    read_command,
)
from shared.remote_shell import (
    RemoteShell,
    Reply,
    Request,
    ShellLost,
    ShellTimeout,
)

_EXISTS = 45
# What one command may print per stream (stdout, stderr) before it is cut: the same 16 MiB
# as an agent's answer (controller/transports.py), far beyond any mc, cf, mailq or log tail.
MAX_STREAM_BYTES = 16 * 1024 * 1024
_KEY_CLASSES: tuple[type[paramiko.PKey], ...] = (
    paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey)


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style SHA256 fingerprint of a public key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def public_key_line(key: paramiko.PKey) -> str:
    """The key as ``type base64`` (what :class:`SshTarget.host_key` pins)."""
    return f"{key.get_name()} {key.get_base64()}"


def parse_public_key(line: str) -> paramiko.PKey:
    """Parse a pinned ``type base64 [comment]`` public key."""
    parts = line.split()
    if len(parts) < 2:
        raise ConfigError("a host key must read 'TYPE BASE64' (e.g. 'ssh-ed25519 AAAA...')")
    try:
        # validate=True: a stray character is an error, not silently dropped
        return paramiko.PKey.from_type_string(parts[0], base64.b64decode(parts[1],
                                                                         validate=True))
    except (ValueError, paramiko.SSHException, TypeError,
            paramiko.pkey.UnknownKeyType) as exc:
        raise ConfigError(f"unreadable host key of type {parts[0][:40]!r}") from exc


def load_private_key(text: str, passphrase: str | None = None) -> paramiko.PKey:
    """Load an ed25519, ECDSA or RSA private key from PEM/OpenSSH text."""
    last: Exception | None = None
    for cls in _KEY_CLASSES:
        try:
            return cls.from_private_key(io.StringIO(text), password=passphrase)
        except paramiko.PasswordRequiredException as exc:
            raise ConfigError("the private key is encrypted: give its passphrase") from exc
        except (paramiko.SSHException, ValueError) as exc:
            last = exc
    raise ConfigError("the private key is not an ed25519, ECDSA or RSA key (or the "
                      "passphrase is wrong)") from last


@dataclass(frozen=True)
class SshTarget:
    """How to reach one host over SSH. Secrets stay out of ``repr``."""

    host: str
    username: str
    host_key: str | None
    port: int = 22
    private_key: str | None = field(default=None, repr=False)
    passphrase: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    sudo: bool = False
    connect_timeout_s: float = 10.0
    keepalive_s: int = 15
    label: str | None = None

    @property
    def name(self) -> str:
        """How messages name the host."""
        return self.label or (self.host if self.port == 22 else f"{self.host}:{self.port}")

    def pool_key(self) -> tuple[object, ...]:
        """What makes two targets share a pooled connection (a changed key or secret does not)."""
        secret = hashlib.sha256(f"{self.private_key}\0{self.passphrase}\0{self.password}"
                                .encode()).hexdigest()
        return (self.host, self.port, self.username, self.host_key, secret)


def fetch_host_key(host: str, port: int = 22, timeout_s: float = 10.0) -> tuple[str, str]:
    """Ask a host for its key, for an operator to confirm and pin: (key line, fingerprint)."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout_s)
    except OSError as exc:
        raise HostUnreachable(f"{host}:{port}: cannot connect: {exc}") from exc
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=timeout_s)
        key = transport.get_remote_server_key()
        return public_key_line(key), fingerprint(key)
    except (paramiko.SSHException, EOFError, OSError) as exc:
        raise HostUnreachable(f"{host}:{port}: SSH handshake failed: {exc}") from exc
    finally:
        transport.close()


def connect(target: SshTarget) -> paramiko.Transport:
    """Dial, check the pinned host key, then authenticate; raise our errors on failure."""
    pinned = parse_public_key(target.host_key) if target.host_key else None
    try:
        sock = socket.create_connection((target.host, target.port),
                                        timeout=target.connect_timeout_s)
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise HostUnreachable(f"{target.name}: cannot connect to port {target.port}: "
                              f"{reason}") from exc
    # Many small request/answer exchanges: without NODELAY, Nagle and delayed ACKs
    # add tens of milliseconds to every command.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    transport = paramiko.Transport(sock)
    transport.banner_timeout = target.connect_timeout_s
    transport.handshake_timeout = target.connect_timeout_s
    try:
        transport.start_client(timeout=target.connect_timeout_s)
        offered = transport.get_remote_server_key()
        if pinned is None:
            raise HostKeyMismatch(
                f"{target.name}: no host key is pinned for this host; it offers "
                f"{offered.get_name()} {fingerprint(offered)}. Confirm that fingerprint with "
                "the host's administrator, then record the key")
        if offered.asbytes() != pinned.asbytes():
            raise HostKeyMismatch(
                f"{target.name}: HOST KEY CHANGED: expected {pinned.get_name()} "
                f"{fingerprint(pinned)}, offered {offered.get_name()} {fingerprint(offered)}. "
                "Nothing was run. If the host was reinstalled, re-enrol its key")
        _authenticate(transport, target)
        transport.set_keepalive(target.keepalive_s)
        return transport
    except HostUnreachable:
        transport.close()
        raise
    except (paramiko.SSHException, EOFError, OSError) as exc:
        transport.close()
        raise HostUnreachable(f"{target.name}: SSH handshake failed: {exc}") from exc


def _authenticate(transport: paramiko.Transport, target: SshTarget) -> None:
    try:
        if target.private_key:
            key = load_private_key(target.private_key, target.passphrase)
            transport.auth_publickey(target.username, key)
        elif target.password:
            transport.auth_password(target.username, target.password)
        else:
            raise ConfigError(f"{target.name}: give a private key or a password")
    except paramiko.AuthenticationException as exc:
        raise HostUnreachable(f"{target.name}: authentication as {target.username} failed "
                              "(check the key or password and the account)") from exc


class SshPool:
    """Idle SSH connections kept per target between jobs, each with its remote shell (if
    one was started): bounded, expiring, redialled."""

    def __init__(self, max_idle: int = 256, idle_timeout_s: float = 300.0) -> None:
        self.max_idle = max_idle
        self.idle_timeout_s = idle_timeout_s
        self._idle: dict[tuple[object, ...],
                         tuple[paramiko.Transport, float, RemoteShell | None]] = {}
        self._lock = threading.Lock()
        #: how many times a new connection was dialled (tests and metrics read it)
        self.dials = 0

    def acquire(self, target: SshTarget) -> tuple[paramiko.Transport, RemoteShell | None]:
        """A live connection to ``target`` and its shell: pooled ones if fresh, else a new
        connection (and no shell yet)."""
        key = target.pool_key()
        with self._lock:
            entry = self._idle.pop(key, None)
        if entry is not None:
            transport, since, shell = entry
            if transport.is_active() and time.monotonic() - since < self.idle_timeout_s:
                return transport, shell if shell is not None and shell.alive() else None
            _close(transport, shell)
        with self._lock:
            self.dials += 1
        return connect(target), None

    def release(self, target: SshTarget, transport: paramiko.Transport, healthy: bool,
                shell: RemoteShell | None = None) -> None:
        """Give a connection (and its idle shell) back; an unhealthy one, or one past the
        bound, is closed."""
        if not healthy or not transport.is_active():
            _close(transport, shell)
            return
        if shell is not None and not shell.alive():
            shell.close()
            shell = None
        evicted = []
        with self._lock:
            old = self._idle.pop(target.pool_key(), None)
            if old is not None:
                evicted.append(old)
            self._idle[target.pool_key()] = (transport, time.monotonic(), shell)
            now = time.monotonic()
            for key, (_conn, since, _shell) in list(self._idle.items()):
                if now - since >= self.idle_timeout_s:
                    evicted.append(self._idle.pop(key))
            while len(self._idle) > self.max_idle:
                evicted.append(self._idle.pop(next(iter(self._idle))))
        for conn, _since, idle_shell in evicted:
            _close(conn, idle_shell)

    def close(self) -> None:
        """Close every idle connection."""
        with self._lock:
            idle, self._idle = self._idle, {}
        for transport, _, shell in idle.values():
            _close(transport, shell)


def _close(transport: paramiko.Transport, shell: RemoteShell | None) -> None:
    """Close a connection and its shell's channel (which holds a wake-up pipe of its own
    until closed explicitly)."""
    if shell is not None:
        shell.close()
    transport.close()


class SshExecutor(Executor):
    """Runs commands and file operations on one host over SSH (lazy connect)."""

    def __init__(self, target: SshTarget, pool: SshPool | None = None) -> None:
        self.target = target
        self.label = target.name
        self._pool = pool
        self._transport: paramiko.Transport | None = None
        self._shell: RemoteShell | None = None
        #: whether the shell has answered in this executor (a pooled one not yet)
        self._shell_proven = False
        self._broken = False
        self._cut = False

    # -- connection -------------------------------------------------------------------
    def _conn(self) -> paramiko.Transport:
        if self._cut:
            # A cut is final: nothing more runs on this host in this attempt (not even a
            # rollback or an unlock); the next attempt takes over the lock and converges.
            raise CommandTimeout(f"{self.target.name}: the connection was cut when the time "
                                 "box ran out; nothing more runs in this attempt")
        if self._transport is None or not self._transport.is_active():
            self._shell = None  # it lived on the dead connection
            self._shell_proven = False
            if self._pool is not None:
                self._transport, self._shell = self._pool.acquire(self.target)
            else:
                self._transport = connect(self.target)
        return self._transport

    def _remote_shell(self) -> RemoteShell:
        """The connection's shell: the running one, else a new one on a new channel."""
        transport = self._conn()
        if self._shell is not None and self._shell.alive() and self._shell_proven:
            return self._shell
        if self._shell is not None and self._shell.alive():
            # A pooled shell has not answered in this executor yet: a host whose network
            # went away since would swallow the commands and time them out like a slow
            # command. One empty command, held to the connect time-out as opening a channel
            # is, tells an unreachable host (nothing run) from a working one.
            try:
                self._shell.run([Request(":", name="sh")],
                                time.monotonic() + self.target.connect_timeout_s)
                self._shell_proven = True
                return self._shell
            except ShellTimeout as exc:
                self._shell = None
                raise self._lost(RuntimeError(
                    f"the kept connection did not answer within "
                    f"{self.target.connect_timeout_s:g} s")) from exc
            except (ShellLost, paramiko.SSHException, EOFError, OSError):
                pass  # the shell had ended while idle: a new one below
        if self._shell is not None:
            self._shell.close()
            self._shell = None
        try:
            chan = transport.open_session(timeout=self.target.connect_timeout_s)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise self._lost(exc) from exc
        try:
            self._shell = RemoteShell.start(chan, MAX_STREAM_BYTES,
                                            self.target.connect_timeout_s)
            self._shell_proven = True
        except (ShellLost, paramiko.SSHException, EOFError, OSError) as exc:
            chan.close()
            raise self._lost(exc) from exc
        return self._shell

    def close(self) -> None:
        """Return the connection and its shell to the pool (or close it); safe to call
        twice."""
        transport, self._transport = self._transport, None
        shell, self._shell = self._shell, None
        if transport is None:
            return
        if self._pool is not None:
            self._pool.release(self.target, transport, healthy=not self._broken, shell=shell)
        else:
            _close(transport, shell)

    def abort(self) -> None:
        """Cut the connection now (from another thread, when a time box runs out); the
        command in flight fails, every later one fails at once, and the connection is not
        pooled again."""
        self._broken = True
        self._cut = True
        transport = self._transport
        if transport is not None:
            transport.close()

    def _lost(self, exc: BaseException) -> HostUnreachable:
        self._broken = True
        return HostUnreachable(f"{self.target.name}: connection lost: {exc}")

    # -- commands -----------------------------------------------------------------------
    def _command_line(self, argv: Sequence[str], timeout: float | None,
                      env: Mapping[str, str] | None) -> str:
        words = ["env", "LC_ALL=C", *(f"{k}={v}" for k, v in (env or {}).items()), *argv]
        if timeout is not None:
            # The host kills what outlives our deadline too; -k reaps a stubborn one.
            words = ["timeout", "-k", "5", str(int(timeout) + 1), *words]
        if self.target.sudo:
            words = ["sudo", "-n", "--", *words]
        return shlex.join(words)

    def run(
        self,
        argv: Sequence[str],
        *,
        input: bytes | None = None,
        timeout: float | None = 60.0,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult:
        """Run ``argv`` on the host; the argv is shell-quoted word by word."""
        start = time.monotonic()
        [reply] = self._exchange(
            [Request(self._command_line(argv, timeout, env), input, argv[0])], timeout)
        return CommandResult(tuple(argv), reply.exit_code, reply.stdout, reply.stderr,
                             time.monotonic() - start)

    def run_many(self, commands: Sequence[Sequence[str]], *,
                 timeout: float | None = 60.0) -> list[CommandResult]:
        """Run several commands one after the other in one round trip (one write to the
        shell, every answer read back), each with its own exit code, output and duration;
        ``timeout`` bounds the whole batch."""
        if not commands:
            return []
        replies = self._exchange([Request(self._command_line(argv, timeout, None),
                                          name=argv[0]) for argv in commands], timeout)
        return [CommandResult(tuple(argv), r.exit_code, r.stdout, r.stderr, r.duration_s)
                for argv, r in zip_strict(commands, replies)]

    def _exchange(self, requests: Sequence[Request], timeout: float | None) -> list[Reply]:
        """Run ``requests`` on the connection's shell within ``timeout``.

        A shell found gone before anything started is replaced once, in place; any other
        failure drops the shell (the next command starts a new one) and is raised as
        CommandTimeout, ExecutorError (output cap) or HostUnreachable.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        for retry in (False, True):
            shell = self._remote_shell()
            try:
                return shell.run(requests, deadline)
            except ShellTimeout as exc:
                raise CommandTimeout(f"{exc.name} did not finish within {timeout}s on "
                                     f"{self.target.name}") from exc
            except ShellLost as exc:
                if exc.ran or retry or self._cut:
                    raise self._lost(exc) from exc
                # Nothing ran (the shell had ended while idle): a new shell runs it.
            except (paramiko.SSHException, EOFError, OSError) as exc:
                raise self._lost(exc) from exc
            except ExecutorError as exc:
                raise ExecutorError(f"{self.target.name}: {exc.message}") from exc
            finally:
                if not shell.alive():
                    self._shell = None
        raise AssertionError("unreachable: the retry raises")

    def _sh(self, script: str, *args: str, input: bytes | None = None,
            timeout: float = 60.0) -> CommandResult:
        """A fixed script with caller values only as positional parameters ($1, $2...)."""
        return self.run(["sh", "-c", script, "sh", *args], input=input, timeout=timeout)

    def _check(self, result: CommandResult, what: str) -> CommandResult:
        if result.exit_code != 0:
            raise ExecutorError(f"{self.target.name}: cannot {what}: "
                                f"{result.output_text().strip()[:300]}")
        return result

    # -- files --------------------------------------------------------------------------
    def read_file(self, path: str) -> bytes:
        """``cat`` a file; FileMissing when absent."""
        result = self.run(read_command(path))
        if result.exit_code == MISSING_CODE:
            raise FileMissing(f"{path} does not exist on {self.target.name}")
        return self._check(result, f"read {path}").stdout

    def file_info(self, path: str) -> FileInfo | None:
        """``stat -c`` mode, owner, size and mtime."""
        result = self._sh(
            f'[ -e "$1" ] || exit {MISSING_CODE}; exec stat -L -c "%a %u %g %s %Y" -- "$1"',
            path)
        if result.exit_code == MISSING_CODE:
            return None
        mode, uid, gid, size, mtime = self._check(result, f"stat {path}").stdout.split()
        return FileInfo(int(mode, 8), int(uid), int(gid), int(size), float(mtime))

    def write_file(self, path: str, data: bytes, *, mode: int = 0o600) -> None:
        """Write through ``cat >`` with a private umask, then ``chmod``."""
        self._check(self._sh('umask 077; cat > "$1" && chmod "$2" "$1"', path, f"{mode:o}",
                             input=data), f"write {path}")

    def set_owner_mode(self, path: str, *, mode: int, uid: int, gid: int) -> None:
        """``chown`` (when uid/gid are given) and ``chmod``."""
        owner = "" if uid < 0 and gid < 0 else f"{'' if uid < 0 else uid}:{'' if gid < 0 else gid}"
        self._check(self._sh('[ -z "$3" ] || chown "$3" "$1" && chmod "$2" "$1"', path,
                             f"{mode:o}", owner), f"set mode/owner of {path}")

    def rename(self, src: str, dst: str) -> None:
        """``mv -f`` (atomic within one file system)."""
        self._check(self.run(["mv", "-f", "--", src, dst], timeout=30), f"rename {src}")

    def copy_file(self, src: str, dst: str) -> None:
        """``cp -p`` keeps mode, owner and times."""
        self._check(self.run(["cp", "-p", "--", src, dst], timeout=60), f"copy {src}")

    def remove(self, path: str) -> None:
        """``rm -f``."""
        self._check(self.run(["rm", "-f", "--", path], timeout=30), f"remove {path}")

    def make_dir(self, path: str, *, mode: int = 0o700) -> bool:
        """``mkdir -m``; False when it already existed."""
        result = self._sh(f'[ -e "$1" ] && exit {_EXISTS}; exec mkdir -m "$2" -- "$1"', path,
                          f"{mode:o}")
        if result.exit_code == _EXISTS or b"File exists" in result.stderr:
            return False
        self._check(result, f"create {path}")
        return True

    def list_dir(self, path: str) -> list[str]:
        """``ls -1A``, sorted; empty when missing."""
        result = self._sh('[ -d "$1" ] || exit 0; exec ls -1A -- "$1"', path)
        return sorted(self._check(result, f"list {path}").stdout.decode().split("\n")[:-1])

    def remove_dir(self, path: str) -> None:
        """``rm -rf``."""
        self._check(self.run(["rm", "-rf", "--", path], timeout=60), f"remove {path}")

    def real_paths(self, paths: Sequence[str]) -> list[str]:
        """``readlink -m`` of every path by one fixed script (one round trip)."""
        if not paths:
            return []
        # readlink -m allows missing components; -f where it is missing (busybox). Each
        # answer ends with a NUL: a link target may hold any byte but that one.
        script = ('for p; do r=$(readlink -m -- "$p" 2>/dev/null || readlink -f -- "$p") '
                  '|| { echo "cannot resolve $p" >&2; exit 1; }; printf "%s\\0" "$r"; done')
        result = self._check(self._sh(script, *paths, timeout=30),
                             "resolve " + ", ".join(paths))
        answers = result.stdout.split(b"\0")[:-1]
        if len(answers) != len(paths):
            raise ExecutorError(f"{self.target.name}: cannot resolve {', '.join(paths)}: "
                                "unexpected answer")
        return [a.decode("utf-8", "surrogateescape") for a in answers]

    def put_file(self, local: str | os.PathLike[str], remote: str) -> None:
        """Copy a local file to ``remote`` over SFTP, as the login user (never through
        sudo: SFTP has no sudo), with the login's umask."""
        try:
            sftp = paramiko.SFTPClient.from_transport(self._conn())
        except (paramiko.SSHException, EOFError) as exc:
            raise self._lost(exc) from exc
        if sftp is None:
            raise self._lost(RuntimeError("the SFTP subsystem did not open"))
        with contextlib.closing(sftp):
            try:
                sftp.put(os.fspath(local), remote, confirm=True)
            except (paramiko.SSHException, EOFError) as exc:
                raise self._lost(exc) from exc
            except OSError as exc:
                raise ExecutorError(f"{self.target.name}: cannot upload to {remote}: "
                                    f"{exc}") from exc

    # -- network ------------------------------------------------------------------------
    def open_tcp(self, host: str, port: int, timeout: float) -> ByteStream:
        """A direct-tcpip channel: the TCP connection is opened by the host's sshd."""
        try:
            chan = self._conn().open_channel("direct-tcpip", (host, port), ("127.0.0.1", 0),
                                             timeout=timeout)
        except paramiko.ChannelException as exc:
            raise ExecutorError(f"cannot connect to {host}:{port} from {self.target.name}: "
                                f"{exc.text}") from exc
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise ExecutorError(f"cannot connect to {host}:{port} from {self.target.name}: "
                                f"{exc}") from exc
        chan.settimeout(timeout)
        return cast(ByteStream, chan)
