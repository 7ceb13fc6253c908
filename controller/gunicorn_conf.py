"""Gunicorn's settings for ``relayfleet-controller serve``: workers, logging, metrics.

Prometheus multiprocess mode: every gunicorn worker is a process of its own, so each keeps
its HTTP counters in files under ``PROMETHEUS_MULTIPROC_DIR`` and ``GET /metrics`` (in any
worker) adds up all of them (:mod:`controller.metrics`). The directory must be set before
``prometheus_client`` is first imported (it picks its value store then), must start empty
(files of a previous run would be counted again), and belongs to one server: two servers
sharing it would add up each other's figures and wipe them at start. It must be private:
whoever can write to it can plant figures (or symlinks the server would follow), so one that
is not the server user's own, or that its group or others may write to, is refused
(:class:`MetricsDirError`). :func:`prepare_metrics_dir` does this in the master before the
app is loaded; a worker that exits is marked dead
(:func:`child_exit`), so that its live gauges go while its counters still count.
"""

from __future__ import annotations

import atexit
import os
import shutil
import stat
import tempfile
from collections.abc import Container
from pathlib import Path
from typing import Any

from controller import logs
from controller.errors import ControllerError

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class MetricsDirError(ControllerError):
    """``$PROMETHEUS_MULTIPROC_DIR`` is not a private directory of the server's user."""

    kind = "metrics_dir"


def prepare_metrics_dir() -> Path:
    """Make ``$PROMETHEUS_MULTIPROC_DIR`` an empty directory (a fresh private one, removed
    at exit, when unset) and export it for this process and its workers."""
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        path = Path(given)
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        check_private_dir(path)
        for stale in path.glob("*.db"):
            stale.unlink()
    else:
        path = Path(tempfile.mkdtemp(prefix="relayfleet-metrics-"))
        atexit.register(_remove_if_master, path, os.getpid())
    os.environ[MULTIPROC_ENV] = str(path)
    return path


def check_private_dir(path: Path) -> None:
    """MetricsDirError unless ``path`` is a directory (not a symlink) of this process's user
    that neither its group nor others may write to."""
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode):
        raise MetricsDirError(f"{MULTIPROC_ENV}={path} is not a directory (a symlink?): "
                              "name a directory of the server's own")
    if info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise MetricsDirError(
            f"{MULTIPROC_ENV}={path} belongs to uid {info.st_uid} with mode "
            f"{stat.filemode(info.st_mode)}: it must be the server user's (uid "
            f"{os.geteuid()}) and writable by it alone (chown it, chmod 700), or unset it")


def _remove_if_master(path: Path, master: int) -> None:
    # Forked workers inherit this exit hook: only the master, at its end, may remove the
    # directory the other workers still count into.
    if os.getpid() == master:
        shutil.rmtree(path, ignore_errors=True)


def child_exit(_server: Any, worker: Any) -> None:
    """Gunicorn hook (in the master): a worker exited; drop its live gauges' files."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def settings(bind: str, workers: int, threads: int,
             known: Container[str] = ()) -> dict[str, Any]:
    """Gunicorn settings for the API: gthread workers, the hooks, the log format; and no
    control socket where this gunicorn has one (``known``: the names of its settings)."""
    config: dict[str, Any] = {"bind": bind, "workers": workers, "threads": threads,
                              "worker_class": "gthread", "accesslog": None, "timeout": 60,
                              "child_exit": child_exit}
    if "control_socket_disable" in known:
        # gunicorn 25.1 and later open a control socket (gunicornc: scale, reload or stop the
        # workers) at $XDG_RUNTIME_DIR/gunicorn.ctl or ~/.gunicorn/gunicorn.ctl by default.
        # The service is managed by systemd or compose, not through it; and every server
        # of a user would take over that one path from the one before.
        config["control_socket_disable"] = True
    if logs.log_format() == "json":
        # gunicorn's own lines (start, workers booting and exiting) as JSON too; the text
        # default keeps gunicorn's classic format.
        config["logconfig_dict"] = logs.dict_config()
    return config
