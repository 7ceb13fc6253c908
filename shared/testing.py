"""In-memory hosts for tests: :class:`FakeExecutor` and a simulated sendmail host.

Shipped with the package (like ``fabric.testing`` or httpx's ``MockTransport``) so that the
operations, the agent and anything built on them can be tested fast, without root and
without lab hosts::

    from shared.mta import operations_for
    from shared.profile import build_profile
    from shared.testing import debian_sendmail_host
    from shared.validation import parse_smarthost_request

    host = debian_sendmail_host()
    ops = operations_for(host, build_profile("sendmail", "debian", {}))
    host.script(["make"], exit_code=2, stderr="make: *** Error 1", times=1)
    result = ops.set_smarthost(parse_smarthost_request({"host": "relay.example.net"}))
    assert result.rolled_back and host.ran("m4")   # compiled, swapped, make failed, restored

:class:`FakeExecutor` is a host with a filesystem in memory (bytes, mode, owner, mtime),
file operations with :class:`~shared.executor.LocalExecutor`'s semantics, a few core
programs (``cat``, ``cp``, ``rm``, ``kill``, ``hostname``, ``uname``, ``getent``,
``tail``), scripted TCP peers (:class:`SmtpScript`) and scripted command failures
(:meth:`FakeExecutor.script`). Every argv it runs is recorded in ``commands``, every file
change in ``file_ops``. ``sh -c`` scripts (the fixed scripts operations and diagnose use)
run through the real ``/bin/sh`` against temporary copies of the files they name, with
``kill`` answering from the fake's process table, so the fake never drifts from them.

:class:`FakeSendmailHost` adds sendmail: ``m4`` (a small m4 that understands what
sendmail.mc files use and writes a sendmail.cf with the ``DS`` line and mailer
definitions real sendmail-cf writes), ``sendmail`` (``-bv`` validation, ``-bp``, queue
runs with ``-q``/``-qI``/``-qR``/``-qS`` and ``-Ac``, ``-d0.1``), ``mailq``, ``make``,
``makemap``, the init script / ``service`` / ``systemctl`` restart, a mail queue of
:class:`FakeMessage` and a maillog that queue runs append to. Its texts come from real
captures (``shared/testing_fixtures``, copies of ``tests/fixtures/sendmail``).
"""

from __future__ import annotations

import base64
import copy
import posixpath
import re
import shlex
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from importlib import resources
from pathlib import Path

from shared.errors import CommandTimeout, ExecutorError
from shared.executor import ByteStream, CommandResult, Executor, FileInfo, FileMissing

#: what a program of the fake returns: exit code, stdout, stderr
Outcome = tuple[int, bytes | str, bytes | str]
#: a program of the fake: (argv, stdin) -> outcome
Program = Callable[[tuple[str, ...], bytes | None], Outcome]

#: how long a scripted ``wait`` blocks at most before the command times out
DEFAULT_WAIT_S = 10.0
#: how long a ``sh -c`` script may take (they are fixed, read-only, and quick)
SH_TIMEOUT_S = 10.0


def fixture_text(name: str) -> str:
    """A capture shipped in ``shared/testing_fixtures`` (``debian-sendmail.mc``, ...)."""
    return (resources.files("shared") / "testing_fixtures" / name).read_text(encoding="utf-8")


def _text(data: bytes | str) -> bytes:
    return data.encode() if isinstance(data, str) else data


def _norm(path: str) -> str:
    """An absolute, normalised path (relative paths are taken from ``/``)."""
    normal = posixpath.normpath(posixpath.join("/", path))
    return "/" + normal.lstrip("/")


def _basename(program: str) -> str:
    return posixpath.basename(program) or program


# -- the filesystem ----------------------------------------------------------------------


@dataclass(frozen=True)
class FileState:
    """One path of the fake filesystem: a file (``data`` set) or a directory (``data`` None)."""

    data: bytes | None
    mode: int
    uid: int
    gid: int
    mtime: float

    @property
    def is_dir(self) -> bool:
        """True for a directory."""
        return self.data is None


@dataclass(frozen=True)
class RanCommand:
    """One argv the fake was asked to run, with its stdin and time box."""

    argv: tuple[str, ...]
    input: bytes | None
    timeout: float | None


@dataclass
class CommandRule:
    """A scripted answer for the commands that match ``match`` (see FakeExecutor.script)."""

    match: tuple[str, ...] | Callable[[tuple[str, ...]], bool]
    exit_code: int | None = None
    stdout: bytes = b""
    stderr: bytes = b""
    timeout: bool = False
    missing: bool = False
    wait: threading.Event | None = None
    wait_s: float = DEFAULT_WAIT_S
    times: int | None = None
    #: set when a matching command starts (and, with ``wait``, is blocked)
    entered: threading.Event = field(default_factory=threading.Event)
    calls: int = 0

    def matches(self, argv: tuple[str, ...]) -> bool:
        """Does ``argv`` match (a prefix, its program compared by path or by name)?"""
        if callable(self.match):
            return bool(self.match(argv))
        return command_matches(argv, self.match)


def command_matches(argv: Sequence[str], prefix: Sequence[str]) -> bool:
    """True if ``argv`` starts with ``prefix``; ``prefix[0]`` may be a program's bare name."""
    if not prefix or len(argv) < len(prefix):
        return False
    program = prefix[0]
    if argv[0] != program and ("/" in program or _basename(argv[0]) != program):
        return False
    return list(argv[1:len(prefix)]) == list(prefix[1:])


# -- scripted TCP peers ----------------------------------------------------------------------


@dataclass
class SmtpScript:
    """How a fake SMTP server answers: banner, EHLO capabilities, or silence."""

    name: str = "smtp.example.test"
    banner: str = "220 {name} ESMTP ready"
    capabilities: tuple[str, ...] = ("PIPELINING", "STARTTLS", "AUTH PLAIN LOGIN", "8BITMIME")
    #: refuse EHLO (an old HELO-only server)
    helo_only: bool = False
    #: accept the connection and never say anything (reads time out at once)
    silent: bool = False


class FakeSmtpStream:
    """A connected :class:`~shared.executor.ByteStream` to a scripted SMTP server."""

    def __init__(self, script: SmtpScript) -> None:
        self.script = script
        self.received: list[str] = []
        self.closed = False
        self.timeout: float | None = None
        self._out = bytearray()
        self._in = b""
        if not script.silent:
            self._reply(script.banner.format(name=script.name))

    def _reply(self, *lines: str) -> None:
        for line in lines:
            self._out += line.encode() + b"\r\n"

    def _answer(self, line: str) -> None:
        verb = line.split(" ", 1)[0].upper()
        name = self.script.name
        if verb == "EHLO" and not self.script.helo_only:
            caps = [name, *self.script.capabilities]
            self._reply(*[f"250-{c}" for c in caps[:-1]], f"250 {caps[-1]}")
        elif verb == "EHLO":
            self._reply("502 5.5.1 command not implemented")
        elif verb == "HELO":
            self._reply(f"250 {name}")
        elif verb == "QUIT":
            self._reply("221 2.0.0 Bye")
        elif verb in ("MAIL", "RCPT", "NOOP", "RSET"):
            self._reply("250 2.0.0 Ok")
        else:
            self._reply("500 5.5.2 command unrecognized")

    def sendall(self, data: bytes, /) -> None:
        """Take the client's bytes; answer each complete line."""
        if self.closed:
            raise OSError("the stream is closed")
        self._in += data
        while b"\n" in self._in:
            raw, self._in = self._in.split(b"\n", 1)
            line = raw.decode("utf-8", "replace").rstrip("\r")
            self.received.append(line)
            if not self.script.silent:
                self._answer(line)

    def recv(self, size: int, /) -> bytes:
        """What the server has said and the client has not read yet."""
        if self.closed:
            raise OSError("the stream is closed")
        if not self._out:
            if self.script.silent:
                raise TimeoutError("timed out")
            return b""
        chunk = bytes(self._out[:size])
        del self._out[:size]
        return chunk

    def settimeout(self, timeout: float | None, /) -> None:
        """Remember the time box (reads never block here)."""
        self.timeout = timeout

    def close(self) -> None:
        """Close; safe to call twice."""
        self.closed = True


# -- the executor ----------------------------------------------------------------------------


class FakeExecutor(Executor):
    """An in-memory host: files, directories, programs, processes, names and TCP peers."""

    def __init__(self, *, label: str = "fakehost", hostname: str = "fakehost",
                 fqdn: str | None = "fakehost.example.test", uid: int = 0, gid: int = 0) -> None:
        self.label = label
        self.hostname = hostname
        #: what ``hostname -f`` prints; None: it fails (the name does not resolve)
        self.fqdn = fqdn
        #: owner of the files the fake creates (the agent runs as root)
        self.uid, self.gid = uid, gid
        #: ``getent hosts``: name -> addresses
        self.names: dict[str, list[str]] = {}
        #: live process ids (``kill -0`` succeeds for these)
        self.processes: set[int] = set()
        #: every argv run, in order (``sh -c`` scripts included)
        self.commands: list[RanCommand] = []
        #: every change to the filesystem: ``(op, path[, path])``
        self.file_ops: list[tuple[str, ...]] = []
        #: every TCP connection asked for, as ``(host, port)``
        self.connections: list[tuple[str, int]] = []
        #: every stream handed out to an SMTP peer
        self.streams: list[FakeSmtpStream] = []
        self.rules: list[CommandRule] = []
        self.programs: dict[str, Program] = {
            "sh": self._sh, "cat": self._cat, "cp": self._cp, "rm": self._rm,
            "kill": self._kill, "hostname": self._hostname, "uname": self._uname,
            "getent": self._getent, "tail": self._tail, "true": lambda _a, _i: (0, b"", b""),
            "false": lambda _a, _i: (1, b"", b""),
        }
        self._tcp: dict[tuple[str, int], SmtpScript | str] = {}
        self._lock = threading.RLock()
        self._last_time = 0.0
        self._next_pid = 4000
        self._nodes: dict[str, FileState] = {"/": FileState(None, 0o755, 0, 0, self.now())}

    # -- clock and processes --------------------------------------------------------------
    def now(self) -> float:
        """The fake's clock: wall time, but strictly increasing (mtimes always differ)."""
        with self._lock:
            self._last_time = max(time.time(), self._last_time + 0.001)
            return self._last_time

    def spawn(self, *, live: bool = True) -> int:
        """A new process id (``live``: it keeps running, ``kill -0`` finds it)."""
        with self._lock:
            self._next_pid += 1
            if live:
                self.processes.add(self._next_pid)
            return self._next_pid

    # -- building the host (tests) ----------------------------------------------------------
    def add_dir(self, path: str, *, mode: int = 0o755, uid: int = 0, gid: int = 0) -> None:
        """Create a directory and its missing parents (``mkdir -p``); set its mode and owner."""
        path = _norm(path)
        with self._lock:
            parent = posixpath.dirname(path)
            if parent != path and parent not in self._nodes:
                self.add_dir(parent)
            old = self._nodes.get(path)
            if old is not None and not old.is_dir:
                raise ExecutorError(f"cannot create {path}: File exists")
            self._nodes[path] = FileState(None, mode, uid, gid,
                                          old.mtime if old else self.now())

    def add_file(self, path: str, data: bytes | str, *, mode: int = 0o644, uid: int = 0,
                 gid: int = 0, mtime: float | None = None) -> None:
        """Create or replace a file, with its missing parent directories."""
        path = _norm(path)
        with self._lock:
            if posixpath.dirname(path) not in self._nodes:
                self.add_dir(posixpath.dirname(path))
            self._nodes[path] = FileState(_text(data), mode, uid, gid,
                                          self.now() if mtime is None else mtime)

    def state(self, path: str) -> FileState | None:
        """The state of one path, or None."""
        with self._lock:
            return self._nodes.get(_norm(path))

    def snapshot(self, under: str = "/") -> dict[str, FileState]:
        """Every path at or below ``under`` and its state (compare two to see what changed)."""
        root = _norm(under)
        prefix = root.rstrip("/") + "/"
        with self._lock:
            return {p: s for p, s in self._nodes.items() if p == root or p.startswith(prefix)}

    def listen_smtp(self, host: str, port: int = 25, *, address: str | None = None,
                    script: SmtpScript | None = None) -> SmtpScript:
        """Put an SMTP server at ``host:port`` (``address``: what ``getent hosts`` says)."""
        script = script or SmtpScript(name=host)
        with self._lock:
            self._tcp[(host.lower(), port)] = script
            if address is not None:
                self.names[host.lower()] = [address]
        return script

    def fail_tcp(self, host: str, port: int, reason: str = "timed out") -> None:
        """Make connections to ``host:port`` fail with ``reason`` (a timeout by default)."""
        with self._lock:
            self._tcp[(host.lower(), port)] = reason

    # -- scripting commands ------------------------------------------------------------------
    def script(self, match: Sequence[str] | Callable[[tuple[str, ...]], bool], *,
               exit_code: int | None = None, stdout: bytes | str = b"",
               stderr: bytes | str = b"", timeout: bool = False, missing: bool = False,
               wait: threading.Event | None = None, wait_s: float = DEFAULT_WAIT_S,
               times: int | None = None) -> CommandRule:
        """Script the next commands matching ``match`` (an argv prefix, or a predicate).

        ``exit_code`` (with ``stdout``/``stderr``) answers instead of the fake's program;
        ``timeout`` raises CommandTimeout; ``missing`` raises ExecutorError as a missing
        program does; ``wait`` blocks until the event is set (then the command runs as
        scripted or as usual; unset after ``wait_s`` or the command's own timeout: timeout).
        ``times`` limits the rule to that many commands (None: every one). The newest rule
        wins. Returns the rule: its ``calls`` and ``entered`` say whether it was used.
        """
        rule = CommandRule(match if callable(match) else tuple(match), exit_code,
                           _text(stdout), _text(stderr), timeout, missing, wait, wait_s, times)
        with self._lock:
            self.rules.insert(0, rule)
        return rule

    def ran(self, *prefix: str) -> list[tuple[str, ...]]:
        """The argvs run that start with ``prefix`` (program by path or name); all if empty."""
        with self._lock:
            return [c.argv for c in self.commands if not prefix or command_matches(c.argv, prefix)]

    def _take_rule(self, argv: tuple[str, ...]) -> CommandRule | None:
        for rule in self.rules:
            if (rule.times is None or rule.calls < rule.times) and rule.matches(argv):
                rule.calls += 1
                return rule
        return None

    # -- Executor: commands --------------------------------------------------------------------
    def run(
        self,
        argv: Sequence[str],
        *,
        input: bytes | None = None,
        timeout: float | None = 60.0,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult:
        """Run ``argv`` on the fake host: a scripted rule if one matches, else its program."""
        args = tuple(argv)
        if not args:
            raise ExecutorError("cannot run an empty command")
        start = time.monotonic()
        with self._lock:
            self.commands.append(RanCommand(args, input, timeout))
            rule = self._take_rule(args)
        if rule is not None:
            rule.entered.set()
            if rule.wait is not None:
                limit = rule.wait_s if timeout is None else min(timeout, rule.wait_s)
                if not rule.wait.wait(limit):
                    raise CommandTimeout(f"{args[0]} did not finish within {timeout}s")
            if rule.timeout:
                raise CommandTimeout(f"{args[0]} did not finish within {timeout}s")
            if rule.missing:
                raise ExecutorError(f"cannot run {args[0]}: No such file or directory")
            if rule.exit_code is not None:
                return CommandResult(args, rule.exit_code, rule.stdout, rule.stderr,
                                     time.monotonic() - start)
        program = self.programs.get(args[0]) or self.programs.get(_basename(args[0]))
        if program is None:
            raise ExecutorError(f"cannot run {args[0]}: No such file or directory")
        with self._lock:
            code, out, err = program(args, input)
        return CommandResult(args, code, _text(out), _text(err), time.monotonic() - start)

    # -- Executor: files ---------------------------------------------------------------------
    def _parent_is_dir(self, path: str) -> bool:
        parent = self._nodes.get(posixpath.dirname(path))
        return parent is not None and parent.is_dir

    def read_file(self, path: str) -> bytes:
        """A file's bytes; FileMissing if absent."""
        with self._lock:
            node = self._nodes.get(_norm(path))
        if node is None:
            raise FileMissing(f"{path} does not exist")
        if node.data is None:
            raise ExecutorError(f"cannot read {path}: Is a directory")
        return node.data

    def file_info(self, path: str) -> FileInfo | None:
        """Mode, owner, size and mtime, or None."""
        with self._lock:
            node = self._nodes.get(_norm(path))
        if node is None:
            return None
        return FileInfo(node.mode, node.uid, node.gid,
                        4096 if node.data is None else len(node.data), node.mtime)

    def write_file(self, path: str, data: bytes, *, mode: int = 0o600) -> None:
        """Create or truncate a file (an existing file keeps its owner)."""
        norm = _norm(path)
        with self._lock:
            old = self._nodes.get(norm)
            if not self._parent_is_dir(norm):
                raise ExecutorError(f"cannot write {path}: No such file or directory")
            if old is not None and old.is_dir:
                raise ExecutorError(f"cannot write {path}: Is a directory")
            uid, gid = (old.uid, old.gid) if old else (self.uid, self.gid)
            self._nodes[norm] = FileState(bytes(data), mode, uid, gid, self.now())
            self.file_ops.append(("write", norm))

    def set_owner_mode(self, path: str, *, mode: int, uid: int, gid: int) -> None:
        """chmod and chown (-1 keeps); the mtime does not change."""
        norm = _norm(path)
        with self._lock:
            old = self._nodes.get(norm)
            if old is None:
                raise ExecutorError(
                    f"cannot set mode/owner of {path}: No such file or directory")
            self._nodes[norm] = replace(old, mode=mode, uid=old.uid if uid == -1 else uid,
                                        gid=old.gid if gid == -1 else gid)
            self.file_ops.append(("chmod", norm))

    def rename(self, src: str, dst: str) -> None:
        """Atomic rename of a file or a directory (over a file, or an empty directory)."""
        s, d = _norm(src), _norm(dst)
        with self._lock:
            node, target = self._nodes.get(s), self._nodes.get(d)
            problem = None
            if node is None or not self._parent_is_dir(d):
                problem = "No such file or directory"
            elif target is not None and target.is_dir and not node.is_dir:
                problem = "Is a directory"
            elif target is not None and node.is_dir and not target.is_dir:
                problem = "Not a directory"
            elif target is not None and target.is_dir and self._children(d):
                problem = "Directory not empty"
            elif node.is_dir and d.startswith(s.rstrip("/") + "/"):
                problem = "Invalid argument"
            if problem:
                raise ExecutorError(f"cannot rename {src} to {dst}: {problem}")
            if s == d:
                return
            moved = {p: n for p, n in self._nodes.items() if p == s or p.startswith(s + "/")}
            for p in moved:
                del self._nodes[p]
            self._nodes.pop(d, None)
            for p, n in moved.items():
                self._nodes[d + p[len(s):]] = n
            self.file_ops.append(("rename", s, d))

    def copy_file(self, src: str, dst: str) -> None:
        """``cp -p``, run as a command as LocalExecutor does (so it can be scripted to fail)."""
        result = self.run(["cp", "-p", src, dst], timeout=30)
        if not result.ok:
            raise ExecutorError(f"cannot copy {src} to {dst}: {result.output_text().strip()}")

    def remove(self, path: str) -> None:
        """Remove a file; missing is fine; a directory is an error."""
        norm = _norm(path)
        with self._lock:
            node = self._nodes.get(norm)
            if node is None:
                return
            if node.is_dir:
                raise ExecutorError(f"cannot remove {path}: Is a directory")
            del self._nodes[norm]
            self.file_ops.append(("remove", norm))

    def make_dir(self, path: str, *, mode: int = 0o700) -> bool:
        """mkdir (one level); False if the path exists."""
        norm = _norm(path)
        with self._lock:
            if norm in self._nodes:
                return False
            if not self._parent_is_dir(norm):
                raise ExecutorError(f"cannot create {path}: No such file or directory")
            self._nodes[norm] = FileState(None, mode, self.uid, self.gid, self.now())
            self.file_ops.append(("mkdir", norm))
            return True

    def _children(self, directory: str) -> list[str]:
        prefix = directory.rstrip("/") + "/"
        return sorted(p[len(prefix):] for p in self._nodes
                      if p.startswith(prefix) and p != prefix and "/" not in p[len(prefix):])

    def list_dir(self, path: str) -> list[str]:
        """Sorted names in a directory; empty if it does not exist."""
        norm = _norm(path)
        with self._lock:
            node = self._nodes.get(norm)
            if node is None:
                return []
            if not node.is_dir:
                raise ExecutorError(f"cannot list {path}: Not a directory")
            return self._children(norm)

    def remove_dir(self, path: str) -> None:
        """``rm -rf``, run as a command as LocalExecutor does."""
        result = self.run(["rm", "-rf", "--", path], timeout=30)
        if not result.ok:
            raise ExecutorError(f"cannot remove {path}: {result.output_text().strip()}")

    # -- Executor: network -------------------------------------------------------------------
    def open_tcp(self, host: str, port: int, timeout: float) -> ByteStream:
        """Connect to a scripted peer; refused (as LocalExecutor says it) when none listens."""
        with self._lock:
            self.connections.append((host, port))
            peer = self._tcp.get((host.lower(), port), "[Errno 111] Connection refused")
        if isinstance(peer, str):
            raise ExecutorError(f"cannot connect to {host}:{port} from {self.label}: {peer}")
        stream = FakeSmtpStream(peer)
        with self._lock:
            self.streams.append(stream)
        return stream

    # -- programs ------------------------------------------------------------------------------
    def _sh(self, argv: tuple[str, ...], _input: bytes | None) -> Outcome:
        """``sh -c SCRIPT NAME ARGS...`` through the real /bin/sh, on copies of the files.

        Arguments naming files of the fake are replaced by temporary copies (absent ones by
        paths that do not exist), and ``kill`` is a shell function answering from
        ``processes``: read-only scripts behave exactly as on a host. Files the script
        changes are not copied back.
        """
        if len(argv) < 3 or argv[1] != "-c":
            raise ExecutorError(f"FakeExecutor runs only 'sh -c SCRIPT': {shlex.join(argv)}")
        pids = " ".join(str(p) for p in sorted(self.processes))
        kill = ('kill() { [ "$1" = -0 ] || { echo "kill: only kill -0 is simulated" >&2; '
                'return 2; }; case " ' + pids + ' " in *" $2 "*) return 0 ;; esac; '
                'echo "sh: kill: ($2) - No such process" >&2; return 1; }\n')
        with tempfile.TemporaryDirectory(prefix="relayfleet-fake-sh-") as tmp:
            params = [self._materialise(arg, Path(tmp)) for arg in argv[3:]]
            try:
                proc = subprocess.run(["/bin/sh", "-c", kill + argv[2], *params],
                                      capture_output=True, timeout=SH_TIMEOUT_S, cwd=tmp,
                                      check=False, env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"})
            except subprocess.TimeoutExpired as exc:
                raise CommandTimeout(f"sh did not finish within {SH_TIMEOUT_S}s") from exc
            except OSError as exc:
                raise ExecutorError(f"cannot run /bin/sh for the fake: {exc.strerror}") from exc
        return proc.returncode, proc.stdout, proc.stderr

    def _materialise(self, arg: str, tmp: Path) -> str:
        """An argument for a real shell: fake paths become temporary copies (or absent paths)."""
        if not arg.startswith("/"):
            return arg
        node = self._nodes.get(_norm(arg))
        local = tmp / "root" / _norm(arg).lstrip("/")
        if node is not None:
            local.parent.mkdir(parents=True, exist_ok=True)
            if node.data is None:
                local.mkdir(exist_ok=True)
            else:
                local.write_bytes(node.data)
        return str(local)

    def _cat(self, argv: tuple[str, ...], input: bytes | None) -> Outcome:
        paths = [a for a in argv[1:] if a != "--"]
        if not paths:
            return 0, input or b"", b""
        out = b""
        for path in paths:
            node = self._nodes.get(_norm(path))
            if node is None or node.data is None:
                why = "No such file or directory" if node is None else "Is a directory"
                return 1, out, f"cat: {path}: {why}\n"
            out += node.data
        return 0, out, b""

    def _cp(self, argv: tuple[str, ...], _input: bytes | None) -> Outcome:
        keep = any(a.startswith("-") and "p" in a for a in argv[1:] if a != "--")
        paths = [a for a in argv[1:] if not a.startswith("-")]
        if len(paths) != 2:
            return 1, b"", "cp: missing file operand\n"
        src, dst = _norm(paths[0]), _norm(paths[1])
        node = self._nodes.get(src)
        if node is None:
            return 1, b"", f"cp: cannot stat '{paths[0]}': No such file or directory\n"
        if node.data is None:
            return 1, b"", f"cp: -r not specified; omitting directory '{paths[0]}'\n"
        target = self._nodes.get(dst)
        if target is not None and target.is_dir:
            dst = posixpath.join(dst, posixpath.basename(src))
            target = self._nodes.get(dst)
        if not self._parent_is_dir(dst) or (target is not None and target.is_dir):
            return 1, b"", (f"cp: cannot create regular file '{paths[1]}': "
                            "No such file or directory\n")
        if keep:
            self._nodes[dst] = node
        else:
            owner = (target.uid, target.gid) if target else (self.uid, self.gid)
            self._nodes[dst] = FileState(node.data, node.mode, *owner, self.now())
        self.file_ops.append(("copy", src, dst))
        return 0, b"", b""

    def _rm(self, argv: tuple[str, ...], _input: bytes | None) -> Outcome:
        flags = "".join(a[1:] for a in argv[1:] if a.startswith("-") and a != "--")
        paths = [a for a in argv[1:] if not a.startswith("-")]
        for path in paths:
            norm = _norm(path)
            node = self._nodes.get(norm)
            if node is None:
                if "f" not in flags:
                    return 1, b"", f"rm: cannot remove '{path}': No such file or directory\n"
                continue
            if node.is_dir and "r" not in flags:
                return 1, b"", f"rm: cannot remove '{path}': Is a directory\n"
            for p in [p for p in self._nodes if p == norm or p.startswith(norm + "/")]:
                del self._nodes[p]
            self.file_ops.append(("remove_dir" if node.is_dir else "remove", norm))
        return 0, b"", b""

    def _kill(self, argv: tuple[str, ...], _input: bytes | None) -> Outcome:
        args = [a for a in argv[1:] if a != "--"]
        if len(args) != 2 or args[0] != "-0":
            return 2, b"", "kill: FakeExecutor simulates only 'kill -0 PID'\n"
        if args[1].isdigit() and int(args[1]) in self.processes:
            return 0, b"", b""
        return 1, b"", f"kill: ({args[1]}) - No such process\n"

    def _hostname(self, argv: tuple[str, ...], _input: bytes | None) -> Outcome:
        if argv[1:] in ((), ("-s",)):
            return 0, f"{self.hostname}\n", b""
        if argv[1:] == ("-f",):
            if self.fqdn is None:
                return 1, b"", "hostname: Name or service not known\n"
            return 0, f"{self.fqdn}\n", b""
        return 1, b"", f"hostname: FakeExecutor does not simulate {shlex.join(argv[1:])}\n"

    def _uname(self, argv: tuple[str, ...], _input: bytes | None) -> Outcome:
        if argv[1:] == ("-n",):
            return 0, f"{self.hostname}\n", b""
        return 0, "Linux\n", b""

    def _getent(self, argv: tuple[str, ...], _input: bytes | None) -> Outcome:
        if len(argv) < 3 or argv[1] not in ("hosts", "ahosts"):
            return 1, b"", "getent: FakeExecutor simulates only 'getent hosts NAME'\n"
        out = ""
        for name in argv[2:]:
            addresses = self.names.get(name.lower().rstrip("."), [])
            out += "".join(f"{a:<15} {name}\n" for a in addresses)
        return (0 if out else 2), out, b""

    def _tail(self, argv: tuple[str, ...], _input: bytes | None) -> Outcome:
        count, paths, args = 10, [], list(argv[1:])
        while args:
            arg = args.pop(0)
            if arg == "-n" and args:
                count = int(args.pop(0).lstrip("+-") or 10)
            elif arg.startswith("-n"):
                count = int(arg[2:].lstrip("+-") or 10)
            elif arg != "--":
                paths.append(arg)
        out = b""
        for path in paths:
            node = self._nodes.get(_norm(path))
            if node is None or node.data is None:
                return 1, out, (f"tail: cannot open '{path}' for reading: "
                                "No such file or directory\n")
            lines = node.data.splitlines(keepends=True)
            out += b"".join(lines[-count:] if count else [])
        return 0, out, b""


# -- a small m4 ------------------------------------------------------------------------------

_WORD_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ARG_REF_RE = re.compile(r"\$([0-9#*@])")
#: builtins that are macros only when called with arguments (``define`` alone is a word)
_ARG_BUILTINS = frozenset({"define", "undefine", "ifdef", "include", "sinclude", "esyscmd",
                           "syscmd", "ifelse"})
_PLAIN_BUILTINS = frozenset({"dnl", "divert"})
#: cf.m4's macros an mc file uses (they exist once cf.m4 is included)
_CF_MACROS = frozenset({
    "VERSIONID", "OSTYPE", "DOMAIN", "FEATURE", "HACK", "MAILER", "MAILER_DEFINITIONS",
    "DAEMON_OPTIONS", "CLIENT_OPTIONS", "EXPOSED_USER", "LOCAL_DOMAIN", "LOCAL_USER",
    "MASQUERADE_AS", "MASQUERADE_DOMAIN", "TRUST_AUTH_MECH", "RELAY_DOMAIN", "LOCAL_CONFIG",
    "GENERICS_DOMAIN", "VIRTUSER_DOMAIN", "CANONIFY_DOMAIN", "SITECONFIG", "QUEUE_GROUP",
    "INPUT_MAIL_FILTER", "MODIFY_MAILER_FLAGS"})
#: sendmail.cf options written for these mc defines
_CONF_OPTIONS = {"confAUTH_MECHANISMS": "AuthMechanisms", "confAUTH_OPTIONS": "AuthOptions",
                 "confPRIVACY_FLAGS": "PrivacyOptions", "confTO_CONNECT": "Timeout.connect",
                 "confDEF_USER_ID": "DefaultUser", "confPID_FILE": "PidFile",
                 "confMAX_DAEMON_CHILDREN": "MaxDaemonChildren",
                 "confCONNECTION_RATE_THROTTLE": "ConnectionRateThrottle"}
#: MAILER(`smtp'): name, its *_MAILER_ARGS prefix, flags, recipient rewriting, line limit
_SMTP_MAILERS = (("smtp", "SMTP", "mDFMuX", "EnvToSMTP", 990),
                 ("esmtp", "ESMTP", "mDFMuXa", "EnvToSMTP", 990),
                 ("smtp8", "SMTP8", "mDFMuX8", "EnvToSMTP", 990),
                 ("dsmtp", "DSMTP", "mDFMuXa%", "EnvToSMTP", 990),
                 ("relay", "RELAY", "mDFMuXa8", "MasqSMTP", 2040))
_LOCAL_MAILERS = (
    "Mlocal,\t\tP=/usr/sbin/sensible-mda, F=lsDFMAw5:/|@qPn9S, S=EnvFromL/HdrFromL, "
    "R=EnvToL/HdrToL,\n\t\tT=DNS/RFC822/X-Unix,\n\t\tA=sensible-mda $g $u $h ${client_addr}\n"
    "Mprog,\t\tP=/bin/sh, F=lsDFMoqeu9, S=EnvFromL/HdrFromL, R=EnvToL/HdrToL, D=$z:/,\n"
    "\t\tT=X-Unix/X-Unix/X-Unix,\n\t\tA=sh -c $u\n")
_EXPANSION_LIMIT = 100_000


class M4Error(Exception):
    """m4 stopped: the message is what GNU m4 prints."""


@dataclass
class M4Result:
    """What the fake m4 printed, and the shell commands the input would have made m4 run."""

    exit_code: int
    output: str
    stderr: str
    shell_calls: list[str]


class FakeM4:
    """Enough of GNU m4 (and of sendmail-cf's cf.m4/proto.m4) to compile a sendmail.mc.

    m4 proper: nested `quotes', ``#`` comments, ``dnl``, ``define``/``undefine``/
    ``ifdef``/``ifelse`` (three arguments), ``divert``, ``include``/``sinclude``,
    user macros with ``$1``... and rescanning of their expansion. ``esyscmd``/``syscmd``
    never run anything: what they would have run is kept in ``shell_calls``. cf.m4: the
    macros an mc file calls; ``MAILER(`smtp')`` captures the ``*_MAILER_ARGS`` defined so
    far (a port defined after it is lost, as with the real files) and the cf's ``DS`` line
    is proto.m4's own ``DS`'ifdef(`SMART_HOST', `SMART_HOST')``, expanded at the end.
    """

    def __init__(self, read: Callable[[str], str | None], *,
                 mail_dir: str = "/etc/mail") -> None:
        self.read = read
        self.mail_dir = mail_dir.rstrip("/")
        self.macros: dict[str, str] = {}
        self.diversion = 0
        self.diversions: dict[int, list[str]] = {}
        self.proto = False
        self.versions: list[str] = []
        self.features: list[str] = []
        self.daemon_options: list[str] = []
        self.mailers: dict[str, str] = {}
        self.shell_calls: list[str] = []
        self.filename = "stdin"
        self._src = ""
        self._pos = 0
        self._line = 1
        self._expansions = 0

    # -- reading -------------------------------------------------------------------------
    def _peek(self) -> str:
        return self._src[self._pos] if self._pos < len(self._src) else ""

    def _advance(self, count: int) -> str:
        text = self._src[self._pos:self._pos + count]
        self._pos += len(text)
        self._line += text.count("\n")
        return text

    def _push_back(self, text: str) -> None:
        self._expansions += 1
        if self._expansions > _EXPANSION_LIMIT:
            raise M4Error(f"m4:{self.filename}:{self._line}: ERROR: recursion limit exceeded")
        self._src = text + self._src[self._pos:]
        self._pos = 0

    def _quoted(self) -> str:
        """The text of a `quoted string' (the ` already read), one level of quotes off."""
        start, depth = self._line, 1
        out: list[str] = []
        while True:
            ch = self._advance(1)
            if not ch:
                raise M4Error(f"m4:{self.filename}:{start}: ERROR: end of file in string")
            depth += (ch == "`") - (ch == "'")
            if depth == 0:
                return "".join(out)
            out.append(ch)

    def _token(self) -> tuple[str, str]:
        """The next token: ("eof"|"quoted"|"comment"|"word"|"char", text)."""
        ch = self._peek()
        if not ch:
            return "eof", ""
        if ch == "`":
            self._advance(1)
            return "quoted", self._quoted()
        if ch == "#":
            end = self._src.find("\n", self._pos)
            return "comment", self._advance((len(self._src) if end < 0 else end + 1) - self._pos)
        word = _WORD_RE.match(self._src, self._pos)
        if word:
            return "word", self._advance(len(word.group()))
        return "char", self._advance(1)

    def _is_macro(self, name: str) -> bool:
        if name in self.macros or name in _PLAIN_BUILTINS:
            return True
        if name in _ARG_BUILTINS:
            return self._peek() == "("
        return self.proto and name in _CF_MACROS

    def _args(self) -> list[str]:
        """The arguments of a call (the ( already read), expanded, one level of quotes off."""
        args: list[str] = []
        current: list[str] = []
        depth = 0
        self._skip_blanks()
        while True:
            kind, text = self._token()
            if kind == "eof":
                raise M4Error(f"m4:{self.filename}:{self._line}: "
                              "ERROR: end of file in argument list")
            if kind == "word" and self._is_macro(text):
                self._call(text)
            elif kind == "char" and text == "(":
                depth += 1
                current.append(text)
            elif kind == "char" and text == ")" and depth:
                depth -= 1
                current.append(text)
            elif kind == "char" and text in "),":
                args.append("".join(current))
                if text == ")":
                    return args
                current = []
                self._skip_blanks()
            else:
                current.append(text)

    def _skip_blanks(self) -> None:
        while self._peek() and self._peek() in " \t\n":
            self._advance(1)

    # -- expanding ------------------------------------------------------------------------
    def _scan(self, emit: Callable[[str], None]) -> None:
        while True:
            kind, text = self._token()
            if kind == "eof":
                return
            if kind == "word" and self._is_macro(text):
                self._call(text)
            else:
                emit(text)

    def _emit(self, text: str) -> None:
        if self.diversion >= 0:
            self.diversions.setdefault(self.diversion, []).append(text)

    def expand(self, text: str) -> str:
        """``text`` expanded with the current definitions (output not diverted)."""
        saved = self._src, self._pos
        self._src, self._pos = text, 0
        out: list[str] = []
        try:
            self._scan(out.append)
        finally:
            self._src, self._pos = saved
        return "".join(out)

    def _call(self, name: str) -> None:
        if name == "dnl":
            end = self._src.find("\n", self._pos)
            self._advance((len(self._src) if end < 0 else end + 1) - self._pos)
            return
        args: list[str] = []
        if self._peek() == "(":
            self._advance(1)
            args = self._args()
        result = self._invoke(name, args)
        if result:
            self._push_back(result)

    def _invoke(self, name: str, args: list[str]) -> str:
        def arg(index: int) -> str:
            return args[index] if len(args) > index else ""

        if name in self.macros:
            return self._substitute(self.macros[name], name, args)
        if name == "define":
            self.macros[arg(0)] = arg(1)
        elif name == "undefine":
            self.macros.pop(arg(0), None)
        elif name == "ifdef":
            return arg(1) if arg(0) in self.macros else arg(2)
        elif name == "ifelse":
            return arg(2) if arg(0) == arg(1) else arg(3)
        elif name == "divert":
            self.diversion = int(arg(0) or 0)
        elif name in ("include", "sinclude"):
            return self._include(arg(0), name == "include")
        elif name in ("esyscmd", "syscmd"):
            self.shell_calls.append(arg(0))
        else:
            self._cf_macro(name, args)
        return ""

    @staticmethod
    def _substitute(body: str, name: str, args: list[str]) -> str:
        def ref(match: re.Match[str]) -> str:
            key = match.group(1)
            if key == "#":
                return str(len(args))
            if key == "*":
                return ",".join(args)
            if key == "@":
                return ",".join(f"`{a}'" for a in args)
            index = int(key)
            return name if index == 0 else (args[index - 1] if index <= len(args) else "")

        return _ARG_REF_RE.sub(ref, body)

    def _include(self, path: str, required: bool) -> str:
        if path.endswith("/m4/cf.m4"):
            self.proto = True
            return ""
        text = self.read(path)
        if text is None:
            if required:
                raise M4Error(f"m4:{self.filename}:{self._line}: cannot open `{path}': "
                              "No such file or directory")
            return ""
        return text

    def _cf_macro(self, name: str, args: list[str]) -> None:
        if name == "VERSIONID":
            self.versions.append(args[0] if args else "")
        elif name == "FEATURE" and args:
            self.features.append(args[0])
        elif name == "DAEMON_OPTIONS" and args:
            self.daemon_options.append(args[0])
        elif name == "MAILER" and args:
            self._mailer(args[0])
        elif name == "LOCAL_CONFIG":
            self.diversion = 6

    def _mailer(self, name: str) -> None:
        if name in self.mailers:
            return
        if name == "local":
            self.mailers[name] = _LOCAL_MAILERS
        elif name == "smtp":
            text = ""
            for mailer, macro, flags, rewrite, limit in _SMTP_MAILERS:
                # As smtp.m4: the args are what is defined when MAILER(`smtp') is read.
                margs = self.expand(f"ifdef(`{macro}_MAILER_ARGS', `{macro}_MAILER_ARGS', "
                                    "``TCP $h'')")
                text += (f"M{mailer},\t\tP=[IPC], F={flags}, S=EnvFromSMTP/HdrFromSMTP, "
                         f"R={rewrite}, E=\\r\\n, L={limit},\n\t\tT=DNS/RFC822/SMTP,\n"
                         f"\t\tA={margs}\n")
            self.mailers[name] = text
        else:
            self.mailers[name] = (f"M{name},\t\tP=/usr/bin/{name}, F=lsDFM, S=EnvFromL, "
                                  f"R=EnvToL,\n\t\tT=X-Unix,\n\t\tA={name} $u\n")

    # -- the whole run ---------------------------------------------------------------------
    def run(self, text: str, filename: str = "stdin") -> str:
        """Expand one input file; return the diverted-0 output so far."""
        self.filename, self._src, self._pos, self._line = filename, text, 0, 1
        self._scan(self._emit)
        return "".join(self.diversions.get(0, []))

    def sendmail_cf(self) -> str:
        """The whole output: the mc's own text, then what cf.m4/proto.m4 would write."""
        out = "".join(self.diversions.get(0, []))
        extra = "".join("".join(self.diversions[n]) for n in sorted(self.diversions) if n > 0)
        if not self.proto:
            return out + extra
        lines = ["#####  built by relayfleet's FakeM4 (shared/testing.py)  #####\n"]
        lines += [f"#####  {v}  #####\n" for v in self.versions]
        lines += ["\nV10/Berkeley\n\n", "# \"Smart\" relay host (may be null)\n",
                  self.expand("DS`'ifdef(`SMART_HOST', `SMART_HOST')") + "\n\n",
                  "# who I send unqualified names to if FEATURE(stickyhost) (null means deliver"
                  " locally)\n", self.expand("DR`'ifdef(`LOCAL_RELAY', `LOCAL_RELAY')") + "\n\n",
                  "# who gets all local email traffic\n",
                  self.expand("DH`'ifdef(`MAIL_HUB', `MAIL_HUB')") + "\n\n"]
        for macro, option in _CONF_OPTIONS.items():
            if macro in self.macros:
                lines.append(f"O {option}={self.expand(macro)}\n")
        lines += [f"O DaemonPortOptions={opts}\n" for opts in self.daemon_options]
        if "access_db" in self.features:
            lines.append(f"Kaccess hash -T<TMPF> -o {self.mail_dir}/access.db\n")
        if "authinfo" in self.features:
            lines.append(f"Kauthinfo hash -o {self.mail_dir}/authinfo.db\n")
        lines += [f"# FEATURE({f})\n" for f in self.features]
        lines += [extra, "\n#####  MAILER DEFINITIONS  #####\n", *self.mailers.values()]
        return out + "".join(lines)


def fake_m4(text: str, *, filename: str = "stdin",
            read: Callable[[str], str | None] = lambda _path: None,
            mail_dir: str = "/etc/mail") -> M4Result:
    """Compile mc ``text`` with :class:`FakeM4`: exit code, sendmail.cf, errors, shell calls."""
    m4 = FakeM4(read, mail_dir=mail_dir)
    try:
        m4.run(text, filename)
    except M4Error as exc:
        return M4Result(1, "".join(m4.diversions.get(0, [])), f"{exc}\n", m4.shell_calls)
    return M4Result(0, m4.sendmail_cf(), "", m4.shell_calls)


# -- sendmail ----------------------------------------------------------------------------------

#: what ``mailq`` prints above the messages
MAILQ_COLUMNS = ("-----Q-ID----- --Size-- -----Q-Time----- "
                 "------------Sender/Recipient-----------")
#: first bytes of a map the fake makemap builds (the rest is the map source)
FAKE_DB_MAGIC = b"relayfleet fake hash map\n"
SENDMAIL_VERSION = "8.17.1.9"
_CF_LINE_STARTS = tuple("VDCFOMSRKHPTELQ#\t ")
#: the group sendmail.mc and sendmail.cf belong to on the fake hosts (Debian's smmsp)
SMMSP_GID = 25
_MAPS = ("access", "authinfo", "mailertable", "virtusertable", "genericstable", "domaintable")


@dataclass
class FakeMessage:
    """A queued message as the fake's sendmail keeps it."""

    id: str
    sender: str
    """the envelope sender without <>; "" (or MAILER-DAEMON) for a bounce"""
    recipients: list[str]
    queued_at: datetime
    size: int = 512
    reason: str | None = None
    """the last delivery error, as mailq shows it"""
    flags: str = ""
    body_type: str = ""


def fixture_queue() -> list[FakeMessage]:
    """The four messages of ``tests/fixtures/sendmail/mailq-deferred.txt`` (fresh copies)."""
    local = "Operating system error"
    return [
        FakeMessage("6AP4mD19010500", "", ["root@lab1.lab.test"],
                    datetime(2026, 11, 25, 4, 48), 1554, local),
        FakeMessage("6AP4mDlP010506", "", ["root@lab1.lab.test"],
                    datetime(2026, 11, 25, 4, 48), 1519, local),
        FakeMessage("6AP4jQbT009721", "root@lab1.lab.test", ["me@ourtest.com"],
                    datetime(2026, 11, 25, 4, 45), 6,
                    "Deferred: Connection refused by mx.ourtest.com."),
        FakeMessage("6AP4mD19010498", "root@lab1.lab.test", ["b@ourtest.com", "a@ourtest.com"],
                    datetime(2026, 11, 25, 4, 48), 4,
                    "Host unknown (Name server: nowhere.lab.test: host not found)"),
    ]


def render_queue(directory: str, messages: Sequence[FakeMessage]) -> str:
    """One queue directory as sendmail's ``-bp`` prints it (``print_single_queue``)."""
    if not messages:
        return f"{directory} is empty\n\t\tTotal requests: 0\n"
    count = len(messages)
    out = [f"\t\t{directory} ({count} request{'s' if count != 1 else ''})\n",
           MAILQ_COLUMNS + "\n"]
    for m in messages:
        t = m.queued_at
        sender = f"<{m.sender}>" if m.sender and m.sender != "MAILER-DAEMON" else "MAILER-DAEMON"
        out.append(f"{m.id}{(m.flags or ' ')[:1]}{m.size:8d} {t:%a %b} {t.day:2d} {t:%H:%M} "
                   f"{sender}\n")
        if m.reason:
            out.append(f"    {m.body_type:>10.10}   ({m.reason[:60]})\n")
        out += [f"\t\t\t\t\t <{r}>\n" for r in m.recipients]
    out.append(f"\t\tTotal requests: {count}\n")
    return "".join(out)


class FakeSendmailHost(FakeExecutor):
    """A fake host running sendmail: its files, tools, daemon, queue and maillog.

    Build one with :func:`debian_sendmail_host` or :func:`rhel_sendmail_host`. Queue runs
    deliver by these rules unless ``outcomes`` (recipient address or ``@domain`` -> the
    text sendmail would log, e.g. "Deferred: Connection timed out") says otherwise:
    a local recipient keeps failing with its message's reason (delivered if it has none);
    with a smarthost in sendmail.cf a remote recipient is sent through it (refused if the
    smarthost is in ``refusing``); without one it is deferred ("Connection refused by
    mx.DOMAIN."). Messages sent through a smarthost with an ``authinfo`` entry show the
    ``>>> AUTH`` exchange in the ``-v`` transcript, as sendmail does.
    """

    def __init__(self, *, flavour: str = "debian", hostname: str = "lab1",
                 fqdn: str | None = "lab1.lab.test", label: str | None = None,
                 mail_dir: str = "/etc/mail", pid_file: str = "/run/sendmail/mta/sendmail.pid",
                 maillog: str = "/var/log/mail.log",
                 queue_dirs: Mapping[str, str] | None = None) -> None:
        super().__init__(label=label or hostname, hostname=hostname, fqdn=fqdn)
        self.flavour = flavour
        self.mail_dir = mail_dir.rstrip("/")
        self.pid_file = pid_file
        self.maillog = maillog
        self.queue_dirs = dict(queue_dirs or {"mta": "/var/spool/mqueue",
                                              "msp": "/var/spool/mqueue-client"})
        #: the queues: "mta" and "msp" (the client queue)
        self.queues: dict[str, list[FakeMessage]] = {"mta": [], "msp": []}
        self.outcomes: dict[str, str] = {}
        self.refusing: set[str] = set()
        #: the running daemon's pid and the sendmail.cf it loaded (None: stopped)
        self.daemon_pid: int | None = None
        self.daemon_cf: bytes | None = None
        self.restarts = 0
        #: each mc text m4 compiled, and the shell commands m4 was asked to run (never run)
        self.m4_inputs: list[str] = []
        self.m4_shell_calls: list[str] = []
        self._queue_seq = 0
        self.programs.update({
            "m4": self._m4, "make": self._make, "makemap": self._makemap,
            "sendmail": self._sendmail, "sendmail-mta": self._sendmail,
            "sm-mta": self._sendmail, "mailq": self._mailq, "service": self._service,
            "systemctl": self._systemctl, "/etc/init.d/sendmail": self._init_script,
            "/etc/rc.d/init.d/sendmail": self._init_script,
        })

    @property
    def mc_path(self) -> str:
        """sendmail.mc."""
        return f"{self.mail_dir}/sendmail.mc"

    @property
    def cf_path(self) -> str:
        """sendmail.cf."""
        return f"{self.mail_dir}/sendmail.cf"

    # -- building the host -------------------------------------------------------------------
    def compile_mc(self, text: str, filename: str = "sendmail.mc") -> M4Result:
        """Compile mc text as this host's m4 does (includes read from the fake's files)."""
        result = fake_m4(text, filename=filename, read=self._read_text_or_none,
                         mail_dir=self.mail_dir)
        self.m4_inputs.append(text)
        self.m4_shell_calls += result.shell_calls
        return result

    def _read_text_or_none(self, path: str) -> str | None:
        node = self._nodes.get(_norm(path))
        return None if node is None or node.data is None else node.data.decode("utf-8", "replace")

    def queue_message(self, recipients: Iterable[str], *, sender: str | None = None,
                      reason: str | None = None, section: str = "mta", size: int = 512,
                      queued_at: datetime | None = None) -> FakeMessage:
        """Queue a message (in ``section`` "mta" or "msp"; from root by default); return it."""
        sender = sender if sender is not None else f"root@{self.fqdn or self.hostname}"
        message = FakeMessage(self._new_queue_id(), sender, list(recipients),
                              queued_at or datetime.now().replace(second=0, microsecond=0),
                              size, reason)
        with self._lock:
            self.queues[section].append(message)
        return message

    def _new_queue_id(self) -> str:
        with self._lock:
            self._queue_seq += 1
            return f"7RF{self._queue_seq:05d}{self._next_pid % 1000000:06d}"

    def start_daemon(self) -> int:
        """Start sendmail (as the init script does): pid file, loaded cf, maillog line."""
        with self._lock:
            self.stop_daemon()
            pid = self.spawn()
            command = ("/usr/sbin/sendmail-mta -Am -L sm-mta -bd -q10m" if self.flavour == "debian"
                       else "sendmail: accepting connections")
            self.add_file(self.pid_file, f"{pid}\n{command}\n", mode=0o644)
            self.daemon_pid, self.daemon_cf = pid, self.read_file(self.cf_path)
            self.restarts += 1
            self.log(pid, f"starting daemon ({SENDMAIL_VERSION}): SMTP+queueing@00:10:00")
            return pid

    def stop_daemon(self, *, keep_pid_file: bool = False) -> None:
        """Stop sendmail (``keep_pid_file``: as a crash would, leaving a stale pid file)."""
        with self._lock:
            if self.daemon_pid is not None:
                self.processes.discard(self.daemon_pid)
            self.daemon_pid = self.daemon_cf = None
            if not keep_pid_file:
                self._nodes.pop(_norm(self.pid_file), None)

    def log(self, pid: int, message: str, program: str = "sm-mta") -> None:
        """Append one syslog line to the maillog."""
        stamp = datetime.now()
        line = (f"{stamp:%b} {stamp.day:2d} {stamp:%H:%M:%S} {self.hostname} "
                f"{program}[{pid}]: {message}\n")
        with self._lock:
            old = self._nodes.get(_norm(self.maillog))
            data = (old.data or b"") if old else b""
            if old is None:
                self.add_file(self.maillog, data + line.encode(), mode=0o640)
            else:
                self._nodes[_norm(self.maillog)] = replace(old, data=data + line.encode(),
                                                           mtime=self.now())

    # -- m4, make, makemap ---------------------------------------------------------------------
    def _m4(self, argv: tuple[str, ...], input: bytes | None) -> Outcome:
        files = [a for a in argv[1:] if not a.startswith("-")]
        sources: list[tuple[str, str]] = []
        for path in files:
            text = self._read_text_or_none(path)
            if text is None:
                return 1, b"", f"m4: cannot open `{path}': No such file or directory\n"
            sources.append((path, text))
        if not files:
            sources.append(("stdin", (input or b"").decode("utf-8", "replace")))
        result = self.compile_mc("".join(t for _, t in sources), sources[0][0])
        return result.exit_code, result.output, result.stderr

    def _write_keeping(self, path: str, data: bytes, mode: int) -> None:
        old = self._nodes.get(path)
        self._nodes[path] = FileState(data, old.mode if old else mode, old.uid if old else 0,
                                      old.gid if old else 0, self.now())
        self.file_ops.append(("write", path))

    def _newer(self, source: str, target: str) -> bool:
        src, dst = self._nodes.get(source), self._nodes.get(target)
        return src is not None and (dst is None or src.mtime > dst.mtime)

    def _make(self, argv: tuple[str, ...], _input: bytes | None) -> Outcome:
        """``make -C /etc/mail``: what sendmail's Makefile does, without a Makefile."""
        args = list(argv[1:])
        directory = self.mail_dir
        if "-C" in args and args.index("-C") + 1 < len(args):
            directory = _norm(args[args.index("-C") + 1])
        node = self._nodes.get(directory)
        if directory != self.mail_dir or node is None:
            return 2, b"", f"make: *** {directory}: No such file or directory.  Stop.\n"
        out = [f"make: Entering directory '{directory}'\n"]
        if self._newer(self.mc_path, self.cf_path):
            result = self.compile_mc(self.read_text(self.mc_path))
            if result.exit_code:
                return 2, "".join(out), (result.stderr +
                                         "make: *** [Makefile: sendmail.cf] Error 1\n")
            self._write_keeping(self.cf_path, result.output.encode(), 0o644)
            out.append("Updating sendmail.cf ...\n")
        for name in _MAPS:
            source = f"{directory}/{name}"
            node = self._nodes.get(source)
            if node is not None and node.data is not None and self._newer(source, f"{source}.db"):
                self._write_keeping(f"{source}.db", FAKE_DB_MAGIC + node.data, 0o640)
                out.append(f"makemap hash {source}.db < {source}\n")
        out.append(f"make: Leaving directory '{directory}'\n")
        return 0, "".join(out), b""

    def _makemap(self, argv: tuple[str, ...], input: bytes | None) -> Outcome:
        args = [a for a in argv[1:] if not a.startswith("-")]
        if len(args) != 2:
            return 64, b"", "usage: makemap [-N] [-c cachesize] [-D commentchar] ... type mapname\n"
        kind, name = args
        if kind not in ("hash", "btree", "dbm"):
            return 1, b"", f"makemap: Unknown database type {kind}\n"
        db = _norm(f"{name}.db")
        if not self._parent_is_dir(db):
            return 1, b"", (f"makemap: error opening type {kind} map {name}: "
                            "No such file or directory\n")
        self._nodes[db] = FileState(FAKE_DB_MAGIC + (input or b""), 0o640, self.uid, self.gid,
                                    self.now())
        self.file_ops.append(("write", db))
        return 0, b"", b""

    # -- the daemon ----------------------------------------------------------------------------
    def _cf_problem(self, path: str) -> tuple[int, str] | None:
        """Why sendmail would refuse the cf at ``path`` (exit code, message), or None."""
        node = self._nodes.get(_norm(path))
        if node is None or node.data is None:
            return 72, f"{path}: line 0: cannot open: No such file or directory\n"
        for number, line in enumerate(node.data.decode("utf-8", "replace").splitlines(), 1):
            if line and not line.startswith(_CF_LINE_STARTS):
                return 70, f'{path}: line {number}: unknown configuration line "{line}"\n'
        return None

    def _control(self, action: str) -> Outcome:
        """What the init script does for ``action``."""
        running = self.daemon_pid is not None and self.daemon_pid in self.processes
        if action == "status":
            return (0, "sendmail is running\n", b"") if running else (3, "sendmail is stopped\n",
                                                                      b"")
        if action == "stop":
            self.stop_daemon()
            return 0, "Stopping Mail Transport Agent (MTA): sm-mta.\n", b""
        if action not in ("start", "restart", "reload", "force-reload"):
            return 2, b"", f"Usage: sendmail {{start|stop|restart|status}} (not {action})\n"
        if action == "start" and running:
            return 0, "sendmail is already running\n", b""
        problem = self._cf_problem(self.cf_path)
        if problem is not None:
            self.stop_daemon()
            return 1, "Starting Mail Transport Agent (MTA): sm-mta failed!\n", problem[1]
        self.start_daemon()
        return 0, "Starting Mail Transport Agent (MTA): sm-mta.\n", b""

    def _init_script(self, argv: tuple[str, ...], _input: bytes | None) -> Outcome:
        return self._control(argv[1] if len(argv) > 1 else "")

    def _service(self, argv: tuple[str, ...], _input: bytes | None) -> Outcome:
        if len(argv) < 3 or argv[1] != "sendmail":
            return 1, b"", f"{shlex.join(argv[1:2])}: unrecognized service\n"
        return self._control(argv[2])

    def _systemctl(self, argv: tuple[str, ...], _input: bytes | None) -> Outcome:
        if len(argv) < 3 or argv[2].removesuffix(".service") != "sendmail":
            return 5, b"", "Unit not found.\n"
        return self._control(argv[1])

    # -- sendmail and mailq --------------------------------------------------------------------
    def _version(self) -> str:
        domain = self.fqdn.partition(".")[2] if self.fqdn else ""
        return (f"Version {SENDMAIL_VERSION}\n Compiled with: DNSMAP IPV6_FULL LOG MAP_REGEX "
                "MILTER NAMED_BIND NETINET NETINET6 NEWDB PIPELINING SASLv2 STARTTLS\n\n"
                "============ SYSTEM IDENTITY (after readcf) ============\n"
                f"      (short domain name) $w = {self.hostname}\n"
                f"  (canonical domain name) $j = {self.fqdn or self.hostname}\n"
                f"         (subdomain name) $m = {domain or '<null>'}\n"
                f"              (node name) $k = {self.hostname}\n"
                "========================================================\n\n")

    def _sendmail(self, argv: tuple[str, ...], _input: bytes | None) -> Outcome:
        conf, mode, select, section, verbose, debug = self.cf_path, "", "", "mta", False, False
        rest: list[str] = []
        args = list(argv[1:])
        while args:
            arg = args.pop(0)
            if arg == "-C" and args:
                conf = args.pop(0)
            elif arg.startswith("-C"):
                conf = arg[2:]
            elif arg.startswith("-d"):
                debug = True
            elif arg.startswith("-b"):
                mode = arg[2:]
            elif arg.startswith("-q"):
                mode, select = "q", arg[2:]
            elif arg in ("-Ac", "-Am"):
                section = "msp" if arg == "-Ac" else "mta"
            elif arg == "-v":
                verbose = True
            elif arg in ("-O", "-o") and args:
                args.pop(0)
            elif not arg.startswith(("-O", "-o", "-L")):
                rest.append(arg)
        if mode == "v":
            head = self._version() if debug else ""
            problem = self._cf_problem(conf)
            if problem is not None:
                return problem[0], head.split("\n\n", 1)[0] + "\n", problem[1]
            return 0, head + "".join(f"{r}... deliverable: mailer local, user {r}\n"
                                     for r in rest), b""
        if mode == "p":
            return 0, self._listing([section]), b""
        if mode == "q":
            return 0, self._queue_run(section, select, verbose), b""
        return 64, b"", f"FakeSendmailHost does not simulate {shlex.join(argv)}\n"

    def _listing(self, sections: Sequence[str]) -> str:
        return "".join(render_queue(self.queue_dirs[s], self.queues[s]) for s in sections)

    def _mailq(self, argv: tuple[str, ...], _input: bytes | None) -> Outcome:
        if "-Ac" in argv:
            return 0, self._listing(["msp"]), b""
        if self.flavour != "debian":
            return 0, self._listing(["mta"]), b""
        # Debian's mailq lists the submission (MSP) queue first, then the MTA's.
        return 0, ("MSP Queue status...\n" + self._listing(["msp"]) +
                   "MTA Queue status...\n" + self._listing(["mta"])), b""

    def _selected(self, message: FakeMessage, select: str) -> bool:
        kind, value = select[:1], select[1:].lower()
        if kind == "I":
            return value in message.id.lower()
        if kind == "R":
            return any(value in r.lower() for r in message.recipients)
        if kind == "S":
            return value in (message.sender or "MAILER-DAEMON").lower()
        return True

    def _smarthost(self) -> tuple[str, str] | None:
        """(host without brackets, mailer) of sendmail.cf's DS line, or None."""
        cf = self._read_text_or_none(self.cf_path) or ""
        value = next((ln[2:].strip() for ln in cf.splitlines() if ln.startswith("DS")), "")
        if not value:
            return None
        prefix, sep, rest = value.partition(":")
        mailer, host = (prefix, rest) if sep and prefix in (
            "relay", "esmtp", "smtp", "smtp8", "dsmtp") else ("relay", value)
        return host.strip("[]"), mailer

    def _credentials(self, host: str) -> tuple[str, str] | None:
        """(user, password) of ``host`` in the compiled authinfo map, when sendmail uses it."""
        cf = self._read_text_or_none(self.cf_path) or ""
        db = self._nodes.get(_norm(f"{self.mail_dir}/authinfo.db"))
        if "\nKauthinfo " not in cf or db is None or db.data is None:
            return None
        for line in db.data.decode("utf-8", "replace").splitlines():
            if line.startswith(f"AuthInfo:{host} "):
                user = re.search(r'"U:([^"]*)"', line)
                password = re.search(r'"P:([^"]*)"', line)
                if user and password:
                    return user.group(1), password.group(1)
        return None

    def _deliver(self, message: FakeMessage, rcpt: str) -> tuple[list[str], str, str, str]:
        """One delivery attempt: transcript lines, the outcome text, mailer and relay."""
        domain = rcpt.rpartition("@")[2].lower()
        scripted = self.outcomes.get(rcpt) or self.outcomes.get(f"@{domain}")
        if not domain or domain in (self.fqdn, self.hostname, "localhost"):
            text = scripted or message.reason or "Sent"
            lines = [f"<{rcpt}>... Connecting to local..."]
            # A local mailer that fails before speaking prints its error on a line alone.
            alone = not text.startswith(("Sent", "Deferred"))
            lines.append(text if alone else f"<{rcpt}>... {text}")
            return lines, text, "local", ""
        smarthost = self._smarthost()
        if smarthost is None:
            mx = f"mx.{domain}."
            text = scripted or f"Deferred: Connection refused by {mx}"
            return ([f"<{rcpt}>... Connecting to {mx} via esmtp...", f"<{rcpt}>... {text}"],
                    text, "esmtp", mx)
        host, mailer = smarthost
        lines = [f"<{rcpt}>... Connecting to {host}. via {mailer}..."]
        address = (self.names.get(host.lower()) or ["192.0.2.25"])[0]
        relay = f"{host}. [{address}]"
        text = scripted or (f"Deferred: Connection refused by {host}." if host in self.refusing
                            else "")
        if text:
            return [*lines, f"<{rcpt}>... {text}"], text, mailer, relay
        credentials = self._credentials(host)
        lines += [f"220 {host} ESMTP", f">>> EHLO {self.fqdn or self.hostname}", f"250-{host}",
                  "250-PIPELINING", *(["250-AUTH PLAIN LOGIN"] if credentials else []),
                  "250 8BITMIME"]
        if credentials:
            token = base64.b64encode(f"\0{credentials[0]}\0{credentials[1]}".encode()).decode()
            lines += [f">>> AUTH PLAIN {token}", "235 2.7.0 Authentication successful"]
        text = "Sent (2.0.0 Ok: queued)"
        lines += [f">>> MAIL From:<{message.sender}> SIZE={message.size}", "250 2.1.0 Ok",
                  f">>> RCPT To:<{rcpt}>", "250 2.1.5 Ok", ">>> DATA",
                  "354 End data with <CR><LF>.<CR><LF>", ">>> .", "250 2.0.0 Ok: queued",
                  f"<{rcpt}>... {text}", f"Closing connection to {host}.", ">>> QUIT",
                  "221 2.0.0 Bye"]
        return lines, text, mailer, relay

    def _attempt(self, message: FakeMessage, pid: int) -> list[str]:
        """Try every recipient of ``message``; keep the ones that failed; log each try."""
        transcript: list[str] = []
        kept: list[str] = []
        for rcpt in message.recipients:
            lines, text, mailer, relay = self._deliver(message, rcpt)
            transcript += lines
            sent = text.startswith("Sent")
            dsn = "2.0.0" if sent else ("4.4.1" if text.startswith("Deferred") else "4.0.0")
            self.log(pid, f"{message.id}: to=<{rcpt}>, delay=00:00:00, xdelay=00:00:00, "
                          f"mailer={mailer}, pri=120000, " + (f"relay={relay}, " if relay else "")
                     + f"dsn={dsn}, stat={text}")
            if not sent:
                kept.append(rcpt)
                message.reason = text
        message.recipients = kept
        return transcript

    def _queue_run(self, section: str, select: str, verbose: bool) -> str:
        """``sendmail -q[ISR]... [-Ac] -v``: run one queue, print the transcript."""
        queue = self.queues[section]
        chosen = [m for m in queue if self._selected(m, select)]
        pid = self.spawn(live=False)
        out: list[str] = []
        for number, message in enumerate(chosen, 1):
            out += ["", f"Running {self.queue_dirs[section]}/{message.id} "
                        f"(sequence {number} of {len(chosen)})"]
            if section == "msp":
                # The submission queue relays to the local MTA, which queues and tries it.
                relayed = replace(message, id=self._new_queue_id(), reason=None,
                                  recipients=list(message.recipients))
                out += [f"<{r}>... Connecting to [127.0.0.1] via relay..." for r in
                        message.recipients[:1]]
                out += [f"<{r}>... Sent ({relayed.id} Message accepted for delivery)"
                        for r in message.recipients]
                message.recipients = []
                self._attempt(relayed, pid)
                if relayed.recipients:
                    self.queues["mta"].append(relayed)
            else:
                out += self._attempt(message, pid)
        self.queues[section] = [m for m in queue if m.recipients]
        return "".join(f"{line}\n" for line in out) if verbose else ""


def _sendmail_host(flavour: str, mc_text: str, *, hostname: str, fqdn: str | None,
                   messages: Iterable[FakeMessage] | None, pid_file: str, maillog: str,
                   queue_dirs: Mapping[str, str], extra_files: Mapping[str, str],
                   running: bool) -> FakeSendmailHost:
    host = FakeSendmailHost(flavour=flavour, hostname=hostname, fqdn=fqdn, pid_file=pid_file,
                            maillog=maillog, queue_dirs=queue_dirs)
    host.add_file("/etc/hosts", f"127.0.0.1\tlocalhost\n10.77.0.11\t"
                  f"{fqdn + ' ' if fqdn else ''}{hostname}\n"
                  "::1\tlocalhost ip6-localhost ip6-loopback\n")
    host.add_file("/etc/resolv.conf", "nameserver 192.0.2.53\n")
    host.add_dir(host.mail_dir, mode=0o755)
    for path, text in extra_files.items():
        host.add_file(path, text)
    host.add_file(f"{host.mail_dir}/access", "localhost\tRELAY\n127.0.0.1\tRELAY\n")
    host.add_file(f"{host.mail_dir}/access.db", FAKE_DB_MAGIC + b"localhost\tRELAY\n",
                  mode=0o640)
    host.add_file(host.mc_path, mc_text, mode=0o644, gid=SMMSP_GID)
    compiled = host.compile_mc(mc_text)
    if compiled.exit_code:
        raise ExecutorError(f"the fake m4 cannot compile this sendmail.mc: {compiled.stderr}")
    host.add_file(host.cf_path, compiled.output, mode=0o644, gid=SMMSP_GID)
    host.m4_inputs.clear()
    for section, directory in queue_dirs.items():
        host.add_dir(directory, mode=0o2750 if section == "mta" else 0o2770)
    host.add_file(maillog, fixture_text("mail.log"), mode=0o640, gid=4)
    host.add_dir(posixpath.dirname(pid_file))
    host.queues["mta"] = list(copy.deepcopy(fixture_queue() if messages is None else messages))
    if running:
        host.start_daemon()
    # What setting the host up did is not part of any test.
    host.file_ops.clear()
    host.commands.clear()
    return host


def debian_sendmail_host(*, hostname: str = "lab1", fqdn: str | None = "lab1.lab.test",
                         mc_text: str | None = None,
                         messages: Iterable[FakeMessage] | None = None,
                         running: bool = True) -> FakeSendmailHost:
    """A Debian 12 sendmail host as the lab builds it: /etc/mail (mc from the package,
    compiled cf, access map, Debian's m4 includes), the mail.log capture, the four deferred
    messages of mailq-deferred.txt (``messages=[]``: empty queue) and a running daemon."""
    empty_m4 = "divert(-1)dnl\n# (fake) Debian's include, empty by default\ndivert(0)dnl\n"
    return _sendmail_host(
        "debian", mc_text if mc_text is not None else fixture_text("debian-sendmail.mc"),
        hostname=hostname, fqdn=fqdn, messages=messages,
        pid_file="/run/sendmail/mta/sendmail.pid", maillog="/var/log/mail.log",
        queue_dirs={"mta": "/var/spool/mqueue", "msp": "/var/spool/mqueue-client"},
        extra_files={"/etc/mail/m4/dialup.m4": empty_m4, "/etc/mail/m4/provider.m4": empty_m4},
        running=running)


def rhel_sendmail_host(*, hostname: str = "pbx1", fqdn: str | None = "pbx1.example.com",
                       mc_text: str | None = None,
                       messages: Iterable[FakeMessage] | None = None,
                       running: bool = True) -> FakeSendmailHost:
    """A CentOS 6-era sendmail host: its sendmail.mc (the commented SMART_HOST template),
    ``service sendmail restart``, /var/run/sendmail.pid, /var/log/maillog, and a mailq
    without section headers."""
    return _sendmail_host(
        "rhel", mc_text if mc_text is not None else fixture_text("centos-sendmail.mc"),
        hostname=hostname, fqdn=fqdn, messages=messages, pid_file="/var/run/sendmail.pid",
        maillog="/var/log/maillog",
        queue_dirs={"mta": "/var/spool/mqueue", "msp": "/var/spool/clientmqueue"},
        extra_files={}, running=running)
