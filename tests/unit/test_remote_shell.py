"""The persistent remote shell's protocol: framing and parsing as pure logic, then the
same protocol driven against real local shells (dash, busybox sh) through a fake channel."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator

import pytest

from shared.errors import ExecutorError
from shared.remote_shell import (
    BOOT_COMMAND,
    FrameReader,
    OutputCapped,
    RemoteShell,
    Request,
    ShellLost,
    ShellTimeout,
    encode,
    new_token,
)

T = "rf0123456789abcdef01234567"


def frames(token: str, out: bytes, err: bytes, code: int) -> tuple[bytes, bytes]:
    """What the shell prints for one command."""
    return (f"{token}:b\n".encode() + out + f"\n{token}:e:{code}\n".encode(),
            err + f"\n{token}:e\n".encode())


# -- pure logic ------------------------------------------------------------------------
def test_frames_split_answers_exactly_even_byte_by_byte() -> None:
    out, err = frames(T, b"\x00bin\xffno newline", b"warn\n", 3)
    reader = FrameReader(cap=1024)
    answers = []
    for i in range(max(len(out), len(err))):
        reader.feed(out[i:i + 1], err[i:i + 1])
        answer = reader.next_answer(T, "cat")
        if answer is not None:
            answers.append(answer)
    assert answers == [(3, b"\x00bin\xffno newline", b"warn\n")]


def test_several_answers_in_one_chunk_come_out_in_order() -> None:
    t2 = new_token()
    o1, e1 = frames(T, b"one\n", b"", 0)
    o2, e2 = frames(t2, b"", b"two", 1)
    reader = FrameReader(cap=1024)
    reader.feed(o1 + o2, e1 + e2)
    assert reader.next_answer(T, "a") == (0, b"one\n", b"")
    assert reader.next_answer(t2, "b") == (1, b"", b"two")


def test_output_cannot_forge_a_frame_without_the_token() -> None:
    forged = b"\nrf0000:e:0\n\n" + f"{T[:-1]}x:e:0\n".encode()
    out, err = frames(T, forged, b"\nrf0000:e\n", 0)
    reader = FrameReader(cap=1024)
    reader.feed(out, err)
    assert reader.next_answer(T, "cat") == (0, forged, b"\nrf0000:e\n")


@pytest.mark.parametrize("stdout", [b"garbage before\n", f"{T}:b\nx\n{T}:e:zz!\n".encode()])
def test_garbled_frames_are_protocol_errors(stdout: bytes) -> None:
    reader = FrameReader(cap=1024)
    reader.feed(stdout, b"")
    with pytest.raises(ShellLost) as caught:
        reader.next_answer(T, "cat")
    assert caught.value.ran


def test_junk_before_the_first_frame_is_skipped_only_when_asked() -> None:
    out, err = frames(T, b"ok", b"", 0)
    reader = FrameReader(cap=1024)
    reader.feed(b"motd chatter\n" + out, err)
    assert reader.next_answer(T, "sh", skip_junk=True) == (0, b"ok", b"")


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_output_past_the_cap_is_refused_and_up_to_it_kept(stream: str) -> None:
    cap = 4096
    for size, fits in ((cap, True), (cap + 1, False)):
        body = b"x" * size
        out, err = frames(T, body if stream == "stdout" else b"",
                          body if stream == "stderr" else b"", 0)
        reader = FrameReader(cap=cap)
        if fits:
            reader.feed(out, err)
            answer = reader.next_answer(T, "cat")
            assert answer is not None
            assert len(answer[1] if stream == "stdout" else answer[2]) == cap
        else:
            with pytest.raises(OutputCapped, match=f"cat printed more than .* on {stream}"):
                for i in range(0, max(len(out), len(err)), 100):
                    reader.feed(out[i:i + 100], err[i:i + 100])
                    reader.next_answer(T, "cat")


def test_endless_output_is_cut_with_bounded_memory() -> None:
    reader = FrameReader(cap=4096)
    reader.feed(f"{T}:b\n".encode())
    with pytest.raises(OutputCapped):
        for _ in range(100):
            reader.feed(b"y" * 1000)
            reader.next_answer(T, "yes")
    assert len(reader.out) < 4096 + 1000 + len(T) + 2


def test_input_travels_in_a_here_document_and_no_input_reads_dev_null() -> None:
    secret = b"password=hunter2\x00\xff"
    text = encode(Request("sh -c 'cat > f'", secret, "sh"), T).decode()
    assert "hunter2" not in text and f"<<'rf.{T}.' | sh -c 'cat > f'" in text
    assert encode(Request("cat"), T).decode().splitlines()[1] == "cat </dev/null"


# -- the protocol against real shells ----------------------------------------------------
class LocalShellChannel:
    """A paramiko channel stand-in whose "session" is a local shell process: its two
    streams are pumped into buffers, and :meth:`fileno` is readable while either holds
    data or the process's output has ended (like paramiko's)."""

    def __init__(self, shell: str, path: str | None = None) -> None:
        self.shell = shell
        self.path = path
        self.closed = False
        self.eof_received = False
        self._out = bytearray()
        self._err = bytearray()
        self._ended = 0
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self.proc: subprocess.Popen[bytes] | None = None

    def exec_command(self, command: str) -> None:
        env = {**os.environ, "PATH": self.path} if self.path else None
        self.proc = subprocess.Popen([self.shell, "-c", command], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        for pipe, buffer in ((self.proc.stdout, self._out), (self.proc.stderr, self._err)):
            threading.Thread(target=self._pump, args=(pipe, buffer), daemon=True).start()

    def _pump(self, pipe: object, buffer: bytearray) -> None:
        assert hasattr(pipe, "read1")
        while chunk := pipe.read1(65536):
            with self._lock:
                buffer.extend(chunk)
                self._signal()
        with self._lock:
            self._ended += 1
            self.eof_received = self._ended == 2
            self._signal()

    def _signal(self) -> None:
        """Level-triggered readiness (called with the lock held)."""
        with contextlib.suppress(BlockingIOError):
            os.read(self._wake_r, 4096)
        if self._out or self._err or self.eof_received:
            os.write(self._wake_w, b"!")

    def sendall(self, data: bytes) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def settimeout(self, timeout: float | None) -> None:
        pass

    def fileno(self) -> int:
        return self._wake_r

    def _take(self, buffer: bytearray, size: int) -> bytes:
        with self._lock:
            chunk = bytes(buffer[:size])
            del buffer[:size]
            self._signal()
        return chunk

    def recv_ready(self) -> bool:
        return bool(self._out)

    def recv_stderr_ready(self) -> bool:
        return bool(self._err)

    def recv(self, nbytes: int) -> bytes:
        return self._take(self._out, nbytes)

    def recv_stderr(self, nbytes: int) -> bytes:
        return self._take(self._err, nbytes)

    def exit_status_ready(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def close(self) -> None:
        if not self.closed and self.proc is not None:
            self.closed = True
            self.proc.kill()
            self.proc.wait()


# busybox comes with the development set-up (deploy/dev/bootstrap.sh): never skipped
SHELLS = [pytest.param("dash", id="dash"), pytest.param("busybox", id="busybox-sh")]


@pytest.fixture(params=SHELLS)
def shell(request: pytest.FixtureRequest,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[RemoteShell]:
    if request.param == "dash":
        chan = LocalShellChannel(shutil.which("dash") or "/bin/dash")
    else:
        # nothing but busybox: its sh, base64, cat, head... are the only commands on PATH
        applets = tmp_path_factory.mktemp("busybox")
        busybox = shutil.which("busybox") or "busybox"
        subprocess.run([busybox, "--install", "-s", str(applets)], check=True)
        chan = LocalShellChannel(str(applets / "sh"), path=str(applets))
    the_shell = RemoteShell.start(chan, cap=1 << 20, timeout=10)
    yield the_shell
    the_shell.close()


def test_a_real_shell_answers_framed_commands_exactly(shell: RemoteShell) -> None:
    assert shell.can_feed
    binary = bytes(range(256)) * 3
    replies = shell.run([
        Request("printf 'no newline'"),
        Request("cat", binary),
        Request("sh -c 'echo out; echo err >&2; exit 7'"),
        Request("cat"),  # no input: EOF at once, not the shell's stdin
        Request("sh -c 'printf \"%s\" \"$1\"' sh 'multi\nline'"),
    ], deadline=None)
    assert [(r.exit_code, r.stdout, r.stderr) for r in replies] == [
        (0, b"no newline", b""), (0, binary, b""), (7, b"out\n", b"err\n"), (0, b"", b""),
        (0, b"multi\nline", b"")]
    # the shell is still there for the next exchange
    assert shell.run([Request("echo again")], deadline=None)[0].stdout == b"again\n"


def test_a_stuck_command_times_out_and_drops_the_shell(shell: RemoteShell) -> None:
    import time

    with pytest.raises(ShellTimeout, match="sleep"):
        shell.run([Request("sleep 30", name="sleep")], deadline=time.monotonic() + 0.5)
    assert not shell.alive()


def test_a_shell_that_died_idle_is_reported_as_not_started(shell: RemoteShell) -> None:
    with pytest.raises(ShellLost) as caught:
        shell.run([Request("exit 3", name="exit"), Request("echo never")], deadline=None)
    assert caught.value.ran  # the first command ran (and ended the shell)
    with pytest.raises(ShellLost) as again:
        shell.run([Request("echo hi")], deadline=None)
    assert not again.value.ran


def test_capped_output_drops_the_shell(shell: RemoteShell) -> None:
    with pytest.raises(OutputCapped):
        shell.run([Request("head -c 2000000 /dev/zero", name="head")], deadline=None)
    assert not shell.alive()


def test_input_needs_base64_on_the_host() -> None:
    chan = LocalShellChannel(shutil.which("dash") or "dash")
    the_shell = RemoteShell.start(chan, cap=1024, timeout=10)
    try:
        the_shell.can_feed = False
        with pytest.raises(ExecutorError, match="base64"):
            the_shell.run([Request("cat", b"data")], deadline=None)
        assert the_shell.alive()
    finally:
        the_shell.close()


def test_boot_command_is_a_plain_shell() -> None:
    assert BOOT_COMMAND == "exec sh"
