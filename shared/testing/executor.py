"""The in-memory host: filesystem, process table, core programs, command scripting and records."""

from __future__ import annotations

import posixpath
import shlex
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from shared import hostsfile
from shared.errors import CommandTimeout, ExecutorError
from shared.executor import (
    ByteStream,
    CommandResult,
    Executor,
    FileInfo,
    FileMissing,
    LocalExecutor,
)
from shared.testing.smtp import FakeSmtpStream, SmtpScript

if TYPE_CHECKING:
    from typing import TypeAlias  # novermin -- read by type checkers only (3.10+)

#: what a program of the fake returns: exit code, stdout, stderr
Outcome: TypeAlias = "tuple[int, bytes | str, bytes | str]"
#: a program of the fake: (argv, stdin) -> outcome
Program: TypeAlias = "Callable[[tuple[str, ...], bytes | None], Outcome]"

#: how long a scripted ``wait`` blocks at most before the command times out
DEFAULT_WAIT_S = 10.0
#: how long a ``sh -c`` script may take (they are fixed, read-only, and quick)
SH_TIMEOUT_S = 10.0


def _text(data: bytes | str) -> bytes:
    return data.encode() if isinstance(data, str) else data


def norm_path(path: str) -> str:
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


# -- commands: records and scripted answers -----------------------------------------------


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

    def released(self, timeout: float | None) -> bool:
        """Block until ``wait`` is set (no ``wait``: at once); False if it was not in time."""
        if self.wait is None:
            return True
        return self.wait.wait(self.wait_s if timeout is None else min(timeout, self.wait_s))


def command_matches(argv: Sequence[str], prefix: Sequence[str]) -> bool:
    """True if ``argv`` starts with ``prefix``; ``prefix[0]`` may be a program's bare name."""
    if not prefix or len(argv) < len(prefix):
        return False
    program = prefix[0]
    if argv[0] != program and ("/" in program or _basename(argv[0]) != program):
        return False
    return list(argv[1:len(prefix)]) == list(prefix[1:])


# -- the executor ----------------------------------------------------------------------------


class FakeExecutor(Executor):
    """An in-memory host: files, directories, programs, processes, names and TCP peers."""

    def __init__(self, *, label: str = "fakehost", hostname: str = "fakehost",
                 fqdn: str | None = "fakehost.example.test", uid: int = 0, gid: int = 0) -> None:
        self.label = label
        self.hostname = hostname
        self.fqdn = fqdn
        #: ``hostname -f`` and ``getent hosts`` answer from /etc/hosts first, as the C
        #: library's files backend does (the names set here answer what it does not name)
        self.resolve_from_hosts = False
        #: files that are mount points (bind mounts): renaming over one or removing it fails
        #: with EBUSY, writing into it works
        self.mount_points: set[str] = set()
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
        #: symbolic links: path -> target (see add_symlink)
        self.links: dict[str, str] = {}

    @property
    def fqdn(self) -> str | None:
        """What ``hostname -f`` prints (None: it fails, the name does not resolve): with
        ``resolve_from_hosts``, the canonical name /etc/hosts gives the host name."""
        if self.resolve_from_hosts:
            entry = self._hosts_lookup(self.hostname)
            if entry is not None:
                return entry.names[0]
        return self._fqdn

    @fqdn.setter
    def fqdn(self, value: str | None) -> None:
        self._fqdn = value

    def _hosts_lookup(self, name: str) -> hostsfile.HostsEntry | None:
        data = self._file_data("/etc/hosts")
        return hostsfile.lookup(data.decode("utf-8", "replace"), name) if data else None

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
        path = norm_path(path)
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
        path = norm_path(path)
        with self._lock:
            if posixpath.dirname(path) not in self._nodes:
                self.add_dir(posixpath.dirname(path))
            self._nodes[path] = FileState(_text(data), mode, uid, gid,
                                          self.now() if mtime is None else mtime)

    def add_symlink(self, path: str, target: str) -> None:
        """Make ``path`` a symbolic link to ``target`` (relative: from the link's directory).

        Only :meth:`real_paths` follows the fake's links: enough to show that an operation
        refuses a file that leads out of where it belongs before it touches it.
        """
        with self._lock:
            self.links[norm_path(path)] = target

    def state(self, path: str) -> FileState | None:
        """The state of one path, or None."""
        with self._lock:
            return self._nodes.get(norm_path(path))

    def snapshot(self, under: str = "/") -> dict[str, FileState]:
        """Every path at or below ``under`` and its state (compare two to see what changed)."""
        root = norm_path(under)
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
            # Wait first: a rule that both waits and times out times out once released.
            if not rule.released(timeout) or rule.timeout:
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

    def _file_data(self, path: str) -> bytes | None:
        """A file's bytes for the fake's programs; None for a directory or a missing path."""
        node = self._nodes.get(norm_path(path))
        return None if node is None else node.data

    def read_file(self, path: str) -> bytes:
        """A file's bytes; FileMissing if absent."""
        with self._lock:
            node = self._nodes.get(norm_path(path))
        if node is None:
            raise FileMissing(f"{path} does not exist")
        if node.data is None:
            raise ExecutorError(f"cannot read {path}: Is a directory")
        return node.data

    def file_info(self, path: str) -> FileInfo | None:
        """Mode, owner, size and mtime, or None."""
        with self._lock:
            node = self._nodes.get(norm_path(path))
        if node is None:
            return None
        return FileInfo(node.mode, node.uid, node.gid,
                        4096 if node.data is None else len(node.data), node.mtime)

    def write_file(self, path: str, data: bytes, *, mode: int = 0o600) -> None:
        """Create or truncate a file (an existing file keeps its owner)."""
        norm = norm_path(path)
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
        norm = norm_path(path)
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
        s, d = norm_path(src), norm_path(dst)
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
            elif {s, d} & self.mount_points:
                problem = "Device or resource busy"
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

    # ``cp -p`` and ``rm -rf`` run as commands, exactly as on a real host (so a test can
    # script them to fail): LocalExecutor's own methods, over the fake's ``run``.
    copy_file = LocalExecutor.copy_file

    def remove(self, path: str) -> None:
        """Remove a file; missing is fine; a directory is an error."""
        norm = norm_path(path)
        with self._lock:
            node = self._nodes.get(norm)
            if node is None:
                return
            if node.is_dir:
                raise ExecutorError(f"cannot remove {path}: Is a directory")
            if norm in self.mount_points:
                raise ExecutorError(f"cannot remove {path}: Device or resource busy")
            del self._nodes[norm]
            self.file_ops.append(("remove", norm))

    def make_dir(self, path: str, *, mode: int = 0o700) -> bool:
        """mkdir (one level); False if the path exists."""
        norm = norm_path(path)
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
        norm = norm_path(path)
        with self._lock:
            node = self._nodes.get(norm)
            if node is None:
                return []
            if not node.is_dir:
                raise ExecutorError(f"cannot list {path}: Not a directory")
            return self._children(norm)

    remove_dir = LocalExecutor.remove_dir

    def real_paths(self, paths: Sequence[str]) -> list[str]:
        """Each path with the fake's symbolic links resolved (as ``realpath`` does)."""
        with self._lock:
            return [self._resolve(path) for path in paths]

    def _resolve(self, path: str, depth: int = 0) -> str:
        if depth > 40:
            raise ExecutorError(f"cannot resolve {path}: Too many levels of symbolic links")
        done = "/"
        parts = [p for p in norm_path(path).split("/") if p]
        for index, part in enumerate(parts):
            here = posixpath.join(done, part)
            target = self.links.get(here)
            if target is not None:
                rest = "/".join(parts[index + 1:])
                joined = posixpath.join(done, target, rest) if rest else posixpath.join(done,
                                                                                        target)
                return self._resolve(joined, depth + 1)
            done = here
        return done

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
        node = self._nodes.get(norm_path(arg))
        local = tmp / "root" / norm_path(arg).lstrip("/")
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
            node = self._nodes.get(norm_path(path))
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
        src, dst = norm_path(paths[0]), norm_path(paths[1])
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
            norm = norm_path(path)
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
            entry = self._hosts_lookup(name) if self.resolve_from_hosts else None
            if entry is not None:
                out += f"{entry.address:<15} {' '.join(entry.names)}\n"
                continue
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
            data = self._file_data(path)
            if data is None:
                return 1, out, (f"tail: cannot open '{path}' for reading: "
                                "No such file or directory\n")
            lines = data.splitlines(keepends=True)
            out += b"".join(lines[-count:] if count else [])
        return 0, out, b""

