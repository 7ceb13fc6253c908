"""Health probes for supervisors (compose healthchecks, systemd, Kubernetes):
``python -m controller.healthcheck api|worker|beat|db``; exit 0 healthy, 1 not (why on stderr).

- ``api [--url URL]``: ``GET /v1/health`` answers 200 with status ``ok``
  (default ``http://127.0.0.1:8080/v1/health``).
- ``worker``: this host's Celery worker (``celery@HOSTNAME``) answers a ping through the
  broker: the process is alive *and* consuming from Redis.
- ``beat``: the scheduler ticked recently: :class:`HeartbeatScheduler` (which
  ``relayfleet-controller beat`` runs) touches ``beat-heartbeat`` in the data directory at
  every tick, at least once per sweep interval.
- ``db``: the database answers and its schema is at the newest revision
  (``relayfleet-controller init-db`` ran).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from celery.beat import PersistentScheduler

HEARTBEAT_FILE = "beat-heartbeat"
#: a beat whose last tick is older than this many sweep intervals (and a minute) is stuck
STALE_SWEEPS = 6


def heartbeat_path() -> Path:
    """Where beat's heartbeat file lives (the data directory)."""
    from controller.config import default_data_dir

    return default_data_dir() / HEARTBEAT_FILE


class HeartbeatScheduler(PersistentScheduler):  # type: ignore[misc]
    """Celery's persistent scheduler, touching :func:`heartbeat_path` at every tick."""

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """Touch the heartbeat, then do the scheduler's tick."""
        path = heartbeat_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        return float(super().tick(*args, **kwargs))


def check_api(url: str) -> str:
    """``GET url`` answers 200 with ``{"status": "ok"}``."""
    with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310 (our own URL)
        body = json.loads(answer.read())
    status = body.get("data", body).get("status") if isinstance(body, dict) else None
    if answer.status != 200 or status != "ok":
        raise RuntimeError(f"{url} answered {answer.status}: {str(body)[:200]}")
    return f"{url}: ok"


def check_worker(timeout_s: float = 5.0) -> str:
    """This host's worker answers a ping through the broker."""
    from celery import Celery

    from controller.config import load_settings

    node = f"celery@{socket.gethostname()}"
    app = Celery("relayfleet-healthcheck", broker=load_settings().broker_url)
    try:
        replies = app.control.ping(destination=[node], timeout=timeout_s)
    finally:
        app.close()
    if not any(node in reply for reply in replies):
        raise RuntimeError(f"{node} did not answer a ping within {timeout_s:g} s")
    return f"{node}: pong"


def check_beat() -> str:
    """Beat's heartbeat file is recent."""
    from controller.config import load_settings

    limit = max(60, STALE_SWEEPS * load_settings().sweep_every_s)
    path = heartbeat_path()
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        raise RuntimeError(f"{path} is missing: beat has not ticked yet") from None
    if age > limit:
        raise RuntimeError(f"beat last ticked {age:.0f} s ago (limit {limit} s)")
    return f"beat ticked {age:.0f} s ago"


def check_db() -> str:
    """The database answers and is at the newest schema revision."""
    from alembic.script import ScriptDirectory

    from controller.config import load_settings
    from controller.migrate import alembic_config, current

    url = load_settings().database_url
    now = current(url)
    newest = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    if now != newest:
        raise RuntimeError(f"schema at {now}, newest is {newest}: run relayfleet-controller "
                           "init-db")
    return f"schema at {now}"


#: what ``python -m controller.healthcheck`` can probe, each given the parsed command line
PROBES: Mapping[str, Callable[[argparse.Namespace], str]] = {
    "api": lambda args: check_api(args.url),
    "worker": lambda _args: check_worker(),
    "beat": lambda _args: check_beat(),
    "db": lambda _args: check_db(),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one probe; 0 healthy, 1 not."""
    parser = argparse.ArgumentParser(prog="python -m controller.healthcheck")
    parser.add_argument("what", choices=list(PROBES))
    parser.add_argument("--url", default=os.environ.get(
        "RELAYFLEET_HEALTH_URL", "http://127.0.0.1:8080/v1/health"))
    args = parser.parse_args(argv)
    try:
        print(PROBES[args.what](args))
    except Exception as exc:  # whatever went wrong, the answer is "unhealthy, because"
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
