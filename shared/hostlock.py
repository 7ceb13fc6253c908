"""The host-wide change lock: one configuration change at a time on a host, whoever runs it.

The lock is a directory next to the MTA's configuration (``mkdir`` is atomic on every
POSIX host, over SSH too) holding ``since`` (epoch seconds) and ``owner``: who holds it,
in one of two forms —

- ``relayfleet-job-J-host-H-attempt-A``: one attempt of a controller job on this host. A
  later attempt of the same job and host runs only once the earlier one's lease has
  lapsed (its worker died or its time box cut it), so it takes the lock over at once.
- ``process BOOT_ID PID START``: a process on this host (the agent, ``relayfleet-ops``).
  Gone — the host rebooted, the pid is free or is now another process (its start time
  differs) — and the lock is taken over at once: a SIGKILLed agent or a power cut
  mid-change does not block the host.

A lock that names nobody for :data:`OWNERLESS_GRACE_S` (its holder was killed between
making it and naming itself) is taken over too. Anything else (a holder of unknown kind)
is broken only when older than :data:`STALE_LOCK_S`.
A holder releases the lock only while it still owns it, so an attempt that was overtaken
never deletes its successor's lock. The taker then runs its change as usual; the change
converges from whatever files it finds (a change cut between its swap and its restart is
finished: see ``set_smarthost``), after undoing one cut between two of its renames (the
swap's journal: ``shared.change.SWAP_JOURNAL``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import re
import secrets
import time
from collections.abc import Iterator

from shared.errors import ChangeInProgress, ExecutorError
from shared.executor import Executor, LocalExecutor

log = logging.getLogger("relayfleet.lock")

LOCK_NAME = ".relayfleet.lock"
#: an unnamed lock older than this is left over from a crash and may be broken
STALE_LOCK_S = 1800
#: a holder names itself right after making the lock: a lock still naming nobody after this
#: long was left by a holder killed in between
OWNERLESS_GRACE_S = 5
_JOB_OWNER = re.compile(r"(relayfleet-job-\d+-host-\d+)(?:-attempt-(\d+))?")
_BOOT_ID = "/proc/sys/kernel/random/boot_id"


def _read(executor: Executor, path: str) -> str | None:
    try:
        data = executor.read_file_if_exists(path)
    except ExecutorError:
        return None
    return None if data is None else data.decode("utf-8", "replace").strip()


def _start_time(executor: Executor, pid: int) -> str | None:
    """A process's start time in clock ticks since boot (field 22 of /proc/PID/stat)."""
    stat = _read(executor, f"/proc/{pid}/stat")
    if not stat or ")" not in stat:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return fields[19] if len(fields) > 19 else None


def process_owner(executor: Executor, pid: int | None = None) -> str | None:
    """The owner name of process ``pid`` (this one by default) on the executor's host, or
    ``None`` where the host does not say (no /proc)."""
    pid = os.getpid() if pid is None else pid
    boot, start = _read(executor, _BOOT_ID), _start_time(executor, pid)
    if not boot or not start:
        return None
    return f"process {boot} {pid} {start}"


def default_owner(executor: Executor) -> str:
    """Who a change holds the lock as when the caller names no owner: this process when it
    runs on the host itself, else a name of its own that only ages out."""
    if isinstance(executor, LocalExecutor):
        named = process_owner(executor)
        if named:
            return named
    return f"session {secrets.token_hex(8)}"


def holder_gone(executor: Executor, held: str, mine: str) -> str | None:
    """Why the lock's holder ``held`` is known to be gone (so ``mine`` may take over), or
    ``None`` when it may still be working."""
    held_job, mine_job = _JOB_OWNER.fullmatch(held), _JOB_OWNER.fullmatch(mine)
    if held_job and mine_job and held_job.group(1) == mine_job.group(1):
        if int(mine_job.group(2) or 0) >= int(held_job.group(2) or 0):
            return f"an earlier attempt of the same job ({held}) stopped"
        return None
    parts = held.split()
    if len(parts) == 4 and parts[0] == "process" and parts[2].isdigit():
        boot, pid, start = parts[1], int(parts[2]), parts[3]
        now_boot = _read(executor, _BOOT_ID)
        if now_boot and now_boot != boot:
            return "its holder ran before the host restarted"
        if now_boot and _start_time(executor, pid) != start:
            return f"its holder (pid {pid}) is gone"
    return None


class HostLock:
    """The change lock of one host's MTA configuration directory."""

    def __init__(self, executor: Executor, directory: str, owner: str | None = None) -> None:
        self.executor = executor
        self.path = posixpath.join(directory, LOCK_NAME)
        self.owner = owner or default_owner(executor)

    def _held_by(self) -> tuple[str, float]:
        owner = _read(self.executor, posixpath.join(self.path, "owner")) or ""
        since = _read(self.executor, posixpath.join(self.path, "since")) or ""
        return owner, float(since) if since.isdigit() else 0.0

    def _acquire(self) -> None:
        if self.executor.make_dir(self.path):
            return
        held, since = self._held_by()
        why = holder_gone(self.executor, held, self.owner) if held else None
        if why is None and not held:
            info = self.executor.file_info(self.path)
            if info is not None and time.time() - info.mtime > OWNERLESS_GRACE_S:
                why = (f"it has named no holder for over {OWNERLESS_GRACE_S} s (its holder "
                       "was stopped while taking it)")
        if why is None and since and time.time() - since > STALE_LOCK_S:
            why = f"it is older than {STALE_LOCK_S // 60} minutes"
        if why is None:
            raise ChangeInProgress("another configuration change is running on this host; "
                                   "try again when it has finished")
        log.warning("taking over the change lock %s held by %r: %s", self.path, held, why)
        self.executor.remove_dir(self.path)
        if not self.executor.make_dir(self.path):
            raise ChangeInProgress("another configuration change is running on this host")

    def _release(self) -> None:
        held, _ = self._held_by()
        if held != self.owner:
            # Taken over by a later attempt while this one ran: the lock is theirs now.
            log.warning("not releasing %s: it is held by %r now", self.path, held)
            return
        self.executor.remove_dir(self.path)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Hold the lock for the block (:class:`ChangeInProgress` if someone else does)."""
        self._acquire()
        try:
            self.executor.write_file(posixpath.join(self.path, "since"),
                                     str(int(time.time())).encode(), mode=0o600)
            self.executor.write_file(posixpath.join(self.path, "owner"),
                                     self.owner.encode(), mode=0o600)
            yield
        finally:
            self._release()
