"""The host change lock: owners, take-overs of dead holders, release only by the owner."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from shared.errors import ChangeInProgress
from shared.executor import LocalExecutor
from shared.hostlock import LOCK_NAME, HostLock, process_owner
from shared.mta import operations_for
from shared.profile import build_profile
from shared.testing import debian_sendmail_host
from shared.validation import parse_smarthost_request

LOCK = f"/etc/mail/{LOCK_NAME}"
BOOT = "6f1c2a5e-0000-4000-8000-000000000001"


def held_by(owner: str, *, since: float | None = None) -> object:
    """A fake host whose change lock ``owner`` holds, with a /proc that knows pid 4242."""
    host = debian_sendmail_host()
    host.add_file("/proc/sys/kernel/random/boot_id", BOOT + "\n")
    host.add_file("/proc/4242/stat", "4242 (sendmail) S 1 " + " ".join(["0"] * 17) + " 777 0")
    host.add_dir(LOCK, mode=0o700)
    host.add_file(f"{LOCK}/since", str(int(since or time.time())))
    host.add_file(f"{LOCK}/owner", owner)
    return host


@pytest.mark.parametrize(("holder", "taker"), [
    ("relayfleet-job-7-host-3-attempt-1", "relayfleet-job-7-host-3-attempt-2"),
    ("relayfleet-job-7-host-3", "relayfleet-job-7-host-3-attempt-2"),  # before attempts
    (f"process {BOOT} 999 123", "anyone"),  # pid 999 is gone
    (f"process {BOOT} 4242 555", "anyone"),  # pid 4242 is another process now
    ("process 00000000-1111-2222-3333-444444444444 4242 777", "anyone"),  # rebooted since
])
def test_a_dead_holders_lock_is_taken_over_at_once(holder: str, taker: str) -> None:
    host = held_by(holder)
    lock = HostLock(host, "/etc/mail", taker)  # type: ignore[arg-type]
    with lock.held():
        assert host.read_text(f"{LOCK}/owner") == taker  # type: ignore[attr-defined]
    assert not host.exists(LOCK)  # type: ignore[attr-defined]


@pytest.mark.parametrize(("holder", "taker"), [
    ("relayfleet-job-7-host-3-attempt-2", "relayfleet-job-7-host-3-attempt-1"),
    ("relayfleet-job-7-host-3-attempt-1", "relayfleet-job-8-host-3-attempt-1"),
    (f"process {BOOT} 4242 777", "anyone"),  # alive
    ("session 1234abcd", "anyone"),  # unnamed: only age breaks it
])
def test_a_live_holders_lock_is_respected(holder: str, taker: str) -> None:
    host = held_by(holder)
    with pytest.raises(ChangeInProgress), HostLock(host, "/etc/mail", taker).held():  # type: ignore[arg-type]
        pass
    assert host.read_text(f"{LOCK}/owner") == holder  # type: ignore[attr-defined]


def test_an_unnamed_lock_ages_out() -> None:
    host = held_by("session 1234abcd", since=time.time() - 3 * 3600)
    with HostLock(host, "/etc/mail", "anyone").held():  # type: ignore[arg-type]
        pass


def test_an_overtaken_attempt_leaves_its_successors_lock_alone() -> None:
    host = debian_sendmail_host()
    first = HostLock(host, "/etc/mail", "relayfleet-job-7-host-3-attempt-1")
    with first.held():
        # attempt 1's lease lapsed; attempt 2 takes the host over while 1 still runs
        second = HostLock(host, "/etc/mail", "relayfleet-job-7-host-3-attempt-2")
        second._acquire()
        host.write_file(f"{LOCK}/owner", second.owner.encode())
    assert host.read_text(f"{LOCK}/owner") == second.owner  # attempt 1 did not delete it


def test_a_change_after_a_killed_agent_does_not_wait(tmp_path: Path) -> None:
    """A real process takes the lock and is SIGKILLed; the next change takes over at once
    (before, the host answered 'another change is running' for up to 30 minutes)."""
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from shared.executor import LocalExecutor
        from shared.hostlock import HostLock
        lock = HostLock(LocalExecutor(), {str(tmp_path)!r})
        with lock.held():
            print("held", flush=True)
            time.sleep(600)
        """)], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2])
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    owner = (tmp_path / LOCK_NAME / "owner").read_text()
    assert owner == process_owner(LocalExecutor(), holder.pid)
    with pytest.raises(ChangeInProgress), HostLock(LocalExecutor(), str(tmp_path)).held():
        pass  # alive: respected
    holder.kill()
    holder.wait()
    with HostLock(LocalExecutor(), str(tmp_path)).held():
        assert (tmp_path / LOCK_NAME / "owner").read_text() == process_owner(LocalExecutor())
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_retried_job_attempt_takes_over_and_converges() -> None:
    """Attempt 1 died holding the lock mid-change; attempt 2 of the same unit proceeds."""
    host = held_by("relayfleet-job-7-host-3-attempt-1")
    ops = operations_for(host, build_profile("sendmail", "debian", {}),  # type: ignore[arg-type]
                         "relayfleet-job-7-host-3-attempt-2")
    result = ops.set_smarthost(parse_smarthost_request({"host": "relay.example.net"}))
    assert result.ok and result.changed, result.error
    assert not host.exists(LOCK)  # type: ignore[attr-defined]


def test_a_lock_whose_holder_died_before_naming_itself_is_taken_over(tmp_path: Path) -> None:
    """Killed between mkdir and writing its name, a holder left an empty lock that blocked
    the host for ever (found by the agent-kill chaos driver)."""
    lock_dir = tmp_path / LOCK_NAME
    lock_dir.mkdir()
    with pytest.raises(ChangeInProgress), HostLock(LocalExecutor(), str(tmp_path)).held():
        pass  # just made: its holder may be writing its name right now
    old = time.time() - 60
    os.utime(lock_dir, (old, old))
    with HostLock(LocalExecutor(), str(tmp_path)).held():
        assert (lock_dir / "owner").read_text() == process_owner(LocalExecutor())
