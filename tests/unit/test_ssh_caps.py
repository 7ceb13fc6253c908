"""What one SSH command prints is capped per stream: a flooding host cannot fill the worker."""

from __future__ import annotations

import threading

import pytest

from shared import ssh
from shared.errors import ExecutorError
from shared.ssh import SshExecutor, SshTarget


class _FloodChannel:
    """A paramiko channel stand-in whose command prints without end on one stream."""

    def __init__(self, flood: str, limit: int | None = None) -> None:
        self.flood = flood
        self.limit = limit  # bytes printed before EOF (None: endless)
        self.sent = {"stdout": 0, "stderr": 0}
        self.closed = False
        self.status_event = threading.Event()
        self.status_event.set()

    def exec_command(self, command: str) -> None:
        self.command = command

    def sendall(self, data: bytes) -> None:
        pass

    def shutdown_write(self) -> None:
        pass

    def settimeout(self, timeout: float | None) -> None:
        pass

    def _read(self, stream: str, size: int) -> bytes:
        assert not self.closed, "read after the channel was closed"
        if stream != self.flood:
            return b""
        if self.limit is not None:
            size = min(size, self.limit - self.sent[stream])
        self.sent[stream] += size
        return b"x" * size

    def recv(self, size: int) -> bytes:
        return self._read("stdout", size)

    def recv_stderr(self, size: int) -> bytes:
        return self._read("stderr", size)

    def exit_status_ready(self) -> bool:
        return True

    def recv_exit_status(self) -> int:
        return 0

    def close(self) -> None:
        self.closed = True


class _FakeTransport:
    def __init__(self, chan: _FloodChannel) -> None:
        self.chan = chan

    def is_active(self) -> bool:
        return True

    def open_session(self, timeout: float | None = None) -> _FloodChannel:
        return self.chan

    def close(self) -> None:
        pass


def _executor(chan: _FloodChannel) -> SshExecutor:
    executor = SshExecutor(SshTarget("mx1.example", "root", None))
    executor._transport = _FakeTransport(chan)
    return executor


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_endless_output_is_cut_at_the_cap(stream: str) -> None:
    """Before, ``_collect`` kept reading for as long as the host printed."""
    chan = _FloodChannel(stream)
    with pytest.raises(ExecutorError, match=rf"mx1.example: cat printed more than 16 MiB "
                                            rf"on {stream}; stopped reading"):
        _executor(chan).run(["cat", "/dev/zero"])
    assert chan.closed
    # memory bounded: never more than the cap and one byte was taken from the host
    assert chan.sent[stream] == ssh.MAX_STREAM_BYTES + 1


def test_output_up_to_the_cap_is_kept_whole() -> None:
    chan = _FloodChannel("stdout", limit=ssh.MAX_STREAM_BYTES)
    result = _executor(chan).run(["cat", "/var/log/maillog"])
    assert len(result.stdout) == ssh.MAX_STREAM_BYTES
    assert result.exit_code == 0
