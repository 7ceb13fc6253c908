"""What one SSH command prints is capped per stream: a flooding host cannot fill the worker."""

from __future__ import annotations

import os
import re

import pytest

from shared import ssh
from shared.errors import ExecutorError
from shared.ssh import SshExecutor, SshTarget


class _FloodShell:
    """A paramiko channel stand-in for the host's shell: it answers the start-up check,
    then the next command prints on one stream (without end, or ``limit`` bytes then
    its end frames)."""

    def __init__(self, flood: str, limit: int | None = None) -> None:
        self.flood = flood
        self.limit = limit
        self.taken = 0  # flood bytes handed over
        self.closed = False
        self.eof_received = False
        self.out = bytearray()
        self.err = bytearray()
        self.token: str | None = None
        self._r, self._w = os.pipe()
        os.write(self._w, b"!")  # always readable: data is always there

    def exec_command(self, command: str) -> None:
        self.command = command

    def sendall(self, data: bytes) -> None:
        tokens = re.findall(rb"printf '(rf[0-9a-f]+):b", data)
        for token in tokens:
            if self.token is None and b"command -v base64" in data:
                self.out += token + b":b\n\n" + token + b":e:0\n"
                self.err += b"\n" + token + b":e\n"
                self.token = token.decode()
            else:
                self.token = token.decode()
                self.out += token + b":b\n"

    def settimeout(self, timeout: float | None) -> None:
        pass

    def fileno(self) -> int:
        return self._r

    def _flood(self, buffer: bytearray, other: bytearray, size: int) -> bytes:
        assert not self.closed, "read after the channel was closed"
        if buffer:
            chunk = bytes(buffer[:size])
            del buffer[:size]
            return chunk
        left = size if self.limit is None else min(size, self.limit - self.taken)
        self.taken += left
        if self.limit is not None and self.taken == self.limit and self.token:
            token = self.token.encode()
            self.out += b"\n" + token + b":e:0\n"
            self.err += b"\n" + token + b":e\n"
            self.token = None
        return b"x" * left

    def recv_ready(self) -> bool:
        return bool(self.out) or (self.flood == "stdout" and self.token is not None)

    def recv_stderr_ready(self) -> bool:
        return bool(self.err) or (self.flood == "stderr" and self.token is not None)

    def recv(self, size: int) -> bytes:
        if self.flood != "stdout" or self.out:
            return self._take(self.out, size)
        return self._flood(self.out, self.err, size)

    def recv_stderr(self, size: int) -> bytes:
        if self.flood != "stderr" or self.err:
            return self._take(self.err, size)
        return self._flood(self.err, self.out, size)

    def _take(self, buffer: bytearray, size: int) -> bytes:
        chunk = bytes(buffer[:size])
        del buffer[:size]
        return chunk

    def exit_status_ready(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True


class _FakeTransport:
    def __init__(self, chan: _FloodShell) -> None:
        self.chan = chan

    def is_active(self) -> bool:
        return True

    def open_session(self, timeout: float | None = None) -> _FloodShell:
        return self.chan

    def close(self) -> None:
        pass


def _executor(chan: _FloodShell) -> SshExecutor:
    executor = SshExecutor(SshTarget("mx1.example", "root", None))
    executor._transport = _FakeTransport(chan)
    return executor


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_endless_output_is_cut_at_the_cap(stream: str) -> None:
    """Before, ``_collect`` kept reading for as long as the host printed."""
    chan = _FloodShell(stream)
    with pytest.raises(ExecutorError, match=rf"mx1.example: cat printed more than 16 MiB "
                                            rf"on {stream}; stopped reading"):
        _executor(chan).run(["cat", "/dev/zero"])
    assert chan.closed
    # memory bounded: never more than the cap and one read (64 KiB) was taken from the host
    assert chan.taken <= ssh.MAX_STREAM_BYTES + 65536


def test_output_up_to_the_cap_is_kept_whole() -> None:
    chan = _FloodShell("stdout", limit=ssh.MAX_STREAM_BYTES)
    result = _executor(chan).run(["cat", "/var/log/maillog"])
    assert len(result.stdout) == ssh.MAX_STREAM_BYTES
    assert result.exit_code == 0
