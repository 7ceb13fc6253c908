"""Helpers for installing the agent into lab hosts with install_agent: the bundle's Python,
a cache of dependency wheels, and stopping the daemon install.sh leaves running."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from tests.lab.lab import CACHE_DIR, LabHost
from tests.lab.services import ControllerStack

#: dependency wheels kept between runs (only the agent's own wheel is built each time)
WHEEL_CACHE = CACHE_DIR / "agent-wheels"
#: where install.sh's daemon keeps its pid (lab hosts have no systemd)
PID_FILE = "/run/relayfleet-agent.pid"


def host_python(host: LabHost) -> str:
    """The X.Y of the python3 ``host`` runs (a bundle for it carries its wheels)."""
    probe = host.run(["python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
    return probe.stdout.decode().strip()


def agent_pid(host: LabHost) -> int | None:
    """The pid of the agent daemon install.sh started in ``host`` (None: no pid file)."""
    try:
        return int(host.fs(PID_FILE).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def stop_daemon(host: LabHost) -> None:
    """Stop the agent install.sh started in ``host`` (not one of the lab's own processes,
    so the lab would not stop it)."""
    pid = agent_pid(host)
    if pid is None:
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


def restart_worker(stack: ControllerStack, **env: str) -> None:
    """Restart the stack's worker with ``env`` set (settings are read when it starts)."""
    stack.worker.stop()
    # (stack.env is the worker's environment too: one dict)
    stack.env.update(env)
    stack.worker.start()


def serve_bundles(stack: ControllerStack, bundle_dir: Path) -> None:
    """Restart the stack's worker so that it finds agent bundles in ``bundle_dir``."""
    restart_worker(stack, RELAYFLEET_AGENT_BUNDLE_DIR=str(bundle_dir))
