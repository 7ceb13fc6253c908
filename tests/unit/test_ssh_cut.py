"""A time box's cut over SSH is final: nothing more runs on the host in that attempt."""

from __future__ import annotations

import socket

import pytest

from shared.errors import CommandTimeout
from shared.ssh import SshExecutor, SshTarget


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_after_a_cut_no_command_reconnects() -> None:
    """Before, the next command after ``abort()`` silently dialled the host again, so a
    rollback or an unlock ran past the job's time box."""
    executor = SshExecutor(SshTarget("127.0.0.1", "root", None, port=_closed_port(),
                                     connect_timeout_s=1.0))
    executor.abort()
    for attempt in (lambda: executor.run(["true"]), lambda: executor.read_file("/etc/hosts"),
                    lambda: executor.remove_dir("/etc/mail/.relayfleet.lock")):
        with pytest.raises(CommandTimeout, match="cut"):
            attempt()
    executor.close()
    executor.close()  # idempotent
