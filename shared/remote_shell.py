"""A persistent POSIX shell on one SSH channel: framed commands in, framed answers out.

Opening an exec channel makes sshd fork and set up a session for every command. Instead,
one channel runs the host's ``sh`` (dash, busybox ash...: nothing else is needed) and the
controller writes shell text to its stdin; every command is answered by frames carrying a
fresh random token, so no output can forge one::

    stdout:  TOKEN:b\\n  <the command's stdout>  \\nTOKEN:e:EXIT\\n
    stderr:              <the command's stderr>  \\nTOKEN:e\\n

A command given input reads it from a quoted here-document of base64 lines decoded by
``base64 -d`` (the data never appears in an argv on the host, and any byte goes through);
one given none reads ``/dev/null``, never the shell's own stdin. The begin frame tells a
command that never started (the shell was already gone: safe to run again on a new shell)
from one that was in flight.

Everything here is transport-independent: :class:`RemoteShell` drives any object with
paramiko's channel methods, :class:`FrameReader` is pure parsing.
"""

from __future__ import annotations

import base64
import re
import secrets
import select
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from shared.compat import zip_strict
from shared.errors import CommandTimeout, ExecutorError

#: what the exec channel runs: a plain POSIX shell reading commands from its stdin
BOOT_COMMAND = "exec sh"
#: run on a new shell before anything else: exit 0 when ``base64`` (for input) is there
_HELLO = "command -v base64 >/dev/null 2>&1"
_END = re.compile(rb":e:(\d{1,3})\n")
#: the longest wait between looks at the channel's buffers
_POLL_S = 0.05


class ShellChannel(Protocol):
    """The part of :class:`paramiko.Channel` the shell protocol uses."""

    closed: bool
    eof_received: bool

    def exec_command(self, command: str) -> None: ...
    def sendall(self, data: bytes) -> None: ...
    def settimeout(self, timeout: float | None) -> None: ...
    def fileno(self) -> int: ...
    def recv_ready(self) -> bool: ...
    def recv_stderr_ready(self) -> bool: ...
    def recv(self, nbytes: int) -> bytes: ...
    def recv_stderr(self, nbytes: int) -> bytes: ...
    def exit_status_ready(self) -> bool: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class Request:
    """One command for the shell: its shell-quoted line, its input, a name for messages."""

    line: str
    input: bytes | None = field(default=None, repr=False)
    name: str = "command"


@dataclass(frozen=True)
class Reply:
    """What one command answered (duration as seen by the controller)."""

    exit_code: int
    stdout: bytes
    stderr: bytes
    duration_s: float


class ShellLost(ExecutorError):
    """The shell's channel ended or answered out of protocol; ``ran`` is False only when
    no command of the exchange had started (running it again on a new shell is safe)."""

    def __init__(self, message: str, *, ran: bool) -> None:
        super().__init__(message)
        self.ran = ran


class OutputCapped(ExecutorError):
    """A command printed more than the cap on one stream."""


class ShellTimeout(CommandTimeout):
    """The deadline passed before the answers were in; ``name`` is the command in flight."""

    def __init__(self, name: str) -> None:
        super().__init__(f"{name} did not finish within its time box")
        self.name = name


def new_token() -> str:
    """A fresh boundary: 96 random bits, hex (no byte of it is special to the shell)."""
    return "rf" + secrets.token_hex(12)


def encode(request: Request, token: str) -> bytes:
    """The shell text that runs ``request`` between its frames."""
    if request.input:
        # '.' is not in the base64 alphabet: no line of the data can end the here-document
        delimiter = f"rf.{token}."
        data = base64.encodebytes(request.input).decode("ascii")
        run = f"base64 -d <<'{delimiter}' | {request.line}\n{data}{delimiter}\n"
    else:
        run = f"{request.line} </dev/null\n"
    return (f"printf '{token}:b\\n'\n{run}"
            f"printf '\\n{token}:e:%d\\n' \"$?\"\nprintf '\\n{token}:e\\n' >&2\n").encode()


class FrameReader:
    """Splits the shell's two streams into per-command answers (pure logic, no I/O).

    Feed it what arrives on stdout and stderr; :meth:`next_answer` returns the oldest
    command's ``(exit code, stdout, stderr)`` once both its frames are in. At most
    ``cap`` bytes per stream and command are kept: past that, :class:`OutputCapped`.
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.out = bytearray()
        self.err = bytearray()
        self._begun = False
        self._out_scan = 0
        self._err_scan = 0
        self._out_end: tuple[int, int, int] | None = None  # (output end, frame end, code)
        self._err_end: tuple[int, int] | None = None  # (output end, frame end)

    def feed(self, stdout: bytes = b"", stderr: bytes = b"") -> None:
        """Add bytes that arrived on each stream."""
        self.out += stdout
        self.err += stderr

    @property
    def begun(self) -> bool:
        """Whether the current command's begin frame has arrived (it started)."""
        return self._begun

    def next_answer(self, token: str, name: str, *,
                    skip_junk: bool = False) -> tuple[int, bytes, bytes] | None:
        """The answer for ``token`` if complete, else None (then feed more).

        ``skip_junk`` drops what precedes the begin frame (a login script's chatter before
        the first command); otherwise anything but the begin frame first is a protocol error.
        """
        begin = f"{token}:b\n".encode()
        if not self._begun:
            at = self.out.find(begin)
            if at < 0:
                if not skip_junk and self.out and not begin.startswith(
                        bytes(self.out[:len(begin)])):
                    raise ShellLost(f"the shell answered out of protocol: "
                                    f"{bytes(self.out[:60])!r}", ran=True)
                if skip_junk and len(self.out) > self.cap:
                    raise ShellLost("the shell printed too much before its first answer",
                                    ran=False)
                return None
            if at and not skip_junk:
                raise ShellLost(f"the shell answered out of protocol: "
                                f"{bytes(self.out[:min(at, 60)])!r}", ran=True)
            del self.out[:at + len(begin)]
            self._begun = True
        if self._out_end is None:
            self._out_end = self._find_out_end(token, name)
        if self._err_end is None:
            self._err_end = self._find_err_end(token, name)
        if self._out_end is None or self._err_end is None:
            return None
        (out_end, out_frame, code), (err_end, err_frame) = self._out_end, self._err_end
        stdout, stderr = bytes(self.out[:out_end]), bytes(self.err[:err_end])
        del self.out[:out_frame]
        del self.err[:err_frame]
        self._begun, self._out_end, self._err_end = False, None, None
        self._out_scan = self._err_scan = 0
        return int(code), stdout, stderr

    def _find_out_end(self, token: str, name: str) -> tuple[int, int, int] | None:
        mark = f"\n{token}".encode()
        at = self.out.find(mark, self._out_scan)
        if at >= 0:
            match = _END.match(self.out, at + len(mark))
            if match is not None:
                self._check_cap(at, "stdout", name)
                return at, match.end(), int(match.group(1))
            if len(self.out) - at >= len(mark) + len(":e:255\n"):
                raise ShellLost("the shell's end-of-command frame is garbled", ran=True)
            self._out_scan = at  # the frame is still arriving
        else:
            # what cannot hold the start of a frame is output: never scan it again
            self._out_scan = max(0, len(self.out) - len(mark) + 1)
        self._check_cap(self._out_scan, "stdout", name)
        return None

    def _find_err_end(self, token: str, name: str) -> tuple[int, int] | None:
        mark = f"\n{token}:e\n".encode()
        at = self.err.find(mark, self._err_scan)
        if at >= 0:
            self._check_cap(at, "stderr", name)
            return at, at + len(mark)
        self._err_scan = max(0, len(self.err) - len(mark) + 1)
        self._check_cap(self._err_scan, "stderr", name)
        return None

    def _check_cap(self, size: int, stream: str, name: str) -> None:
        if size > self.cap:
            raise OutputCapped(f"{name} printed more than {self.cap // (1024 * 1024)} MiB on "
                               f"{stream}; stopped reading and closed its channel")


class RemoteShell:
    """One host shell on one channel, answering framed commands one after the other."""

    def __init__(self, chan: ShellChannel, cap: int) -> None:
        self.chan = chan
        self.cap = cap
        self.can_feed = False
        self._fresh = True
        self._reader = FrameReader(cap)

    @classmethod
    def start(cls, chan: ShellChannel, cap: int, timeout: float) -> RemoteShell:
        """Run the shell on ``chan`` (a new session channel) and check that it answers."""
        chan.exec_command(BOOT_COMMAND)
        shell = cls(chan, cap)
        try:
            [hello] = shell.run([Request(_HELLO, name="sh")], time.monotonic() + timeout)
        except ShellTimeout as exc:
            raise ShellLost("the host's shell did not answer in time", ran=False) from exc
        shell.can_feed = hello.exit_code == 0
        return shell

    def alive(self) -> bool:
        """Whether the shell can take a command (as far as this side knows)."""
        chan = self.chan
        return not (chan.closed or chan.eof_received or chan.exit_status_ready())

    def close(self) -> None:
        """Drop the shell's channel (the host's sh sees its stdin end)."""
        self.chan.close()

    def run(self, requests: Sequence[Request], deadline: float | None) -> list[Reply]:
        """Send every request in one write and read every answer (one round trip).

        Any failure drops the channel: :class:`ShellTimeout` past ``deadline``,
        :class:`OutputCapped`, or :class:`ShellLost` (``ran`` says if anything started).
        """
        if any(r.input for r in requests) and not self.can_feed:
            raise ExecutorError("the host has no base64 command: cannot pass input to "
                                f"{requests[0].name}")
        try:
            return self._exchange(requests, deadline)
        except BaseException:
            self.close()
            raise

    def _exchange(self, requests: Sequence[Request], deadline: float | None) -> list[Reply]:
        tokens = [new_token() for _ in requests]
        started = time.monotonic()
        self._send(b"".join(encode(r, t) for r, t in zip_strict(requests, tokens)),
                   deadline, requests[0].name)
        replies: list[Reply] = []
        fd = self.chan.fileno()
        for request, token in zip_strict(requests, tokens):
            while True:
                try:
                    answer = self._reader.next_answer(token, request.name,
                                                      skip_junk=self._fresh)
                except ShellLost as exc:
                    exc.ran = exc.ran or bool(replies)
                    raise
                if answer is not None:
                    break
                self._receive(fd, deadline, request.name, ran=bool(replies) or
                              self._reader.begun)
            self._fresh = False
            now = time.monotonic()
            replies.append(Reply(answer[0], answer[1], answer[2], now - started))
            started = now
        return replies

    def _send(self, data: bytes, deadline: float | None, name: str) -> None:
        if not self.alive():
            raise ShellLost("the shell had ended", ran=False)
        try:
            self.chan.settimeout(None if deadline is None
                                 else max(0.01, deadline - time.monotonic()))
            self.chan.sendall(data)
        except TimeoutError as exc:
            raise ShellTimeout(name) from exc
        except OSError as exc:
            raise ShellLost(f"the shell's channel closed: {exc}", ran=False) from exc

    def _receive(self, fd: int, deadline: float | None, name: str, *, ran: bool) -> None:
        """Wait for bytes on either stream (or the end), then take some."""
        wait = _POLL_S if deadline is None else deadline - time.monotonic()
        if wait <= 0:
            raise ShellTimeout(name)
        # paramiko's channel pipe can miss a wake-up when both streams change at once
        # (its two halves are set and cleared under different locks): look again soon.
        select.select([fd], [], [], min(wait, _POLL_S))
        # EOF first: once it is seen, every byte sent before it is already buffered.
        ended = self.chan.eof_received or self.chan.closed
        # One chunk per stream, then the caller parses: the cap is checked at least every
        # 64 KiB however fast the host prints.
        chan, got = self.chan, False
        if chan.recv_ready():
            self._reader.feed(stdout=chan.recv(65536))
            got = True
        if chan.recv_stderr_ready():
            self._reader.feed(stderr=chan.recv_stderr(65536))
            got = True
        if ended and not got:
            raise ShellLost("the shell ended before answering", ran=ran or self._reader.begun)
