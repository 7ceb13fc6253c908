"""/metrics under gunicorn with several workers adds up every worker's HTTP figures, the
API's log (gunicorn's lines included) is one JSON object per line with
RELAYFLEET_LOG_FORMAT=json, and gunicorn opens no control socket."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.lab.services import ApiServer

REQUESTS = 120
WORKERS = 3
_HEALTH_COUNT = re.compile(
    r'^relayfleet_http_requests_total\{method="GET",route="/v1/health",status="200"\} '
    r"([0-9.]+)$", re.MULTILINE)


def gunicorn_workers(master: int) -> list[int]:
    """The pids of the gunicorn master's worker processes."""
    found = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True,
                           check=False).stdout.split()
    return sorted(int(pid) for pid in found)


def _server_env(tmp_path: Path) -> dict[str, str]:
    env = {key: os.environ[key] for key in ("RELAYFLEET_DATABASE_URL", "RELAYFLEET_BROKER_URL",
                                            "RELAYFLEET_SECRET_KEY", "RELAYFLEET_DATA_DIR")}
    env.update(RELAYFLEET_LOG_FORMAT="json",
               PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"),
               # where gunicorn would put its control socket (it must not make one)
               HOME=str(tmp_path / "home"), XDG_RUNTIME_DIR=str(tmp_path / "run"))
    for private in ("home", "run"):
        (tmp_path / private).mkdir(mode=0o700)
    return env


@pytest.mark.slow
def test_metrics_add_up_every_gunicorn_worker(memory_controller: Any, tmp_path: Path) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    # A file left by an earlier run: serve must start from an empty directory.
    (metrics_dir / "counter_999999.db").write_bytes(b"stale")
    log = tmp_path / "api.log"
    with ApiServer(_server_env(tmp_path), log, workers=WORKERS, threads=2) as api:
        assert not (metrics_dir / "counter_999999.db").exists()

        def scrape() -> str:
            answer = requests.get(f"{api.url}/metrics", timeout=10, headers={
                "Authorization": f"Bearer {memory_controller.admin}"})
            assert answer.status_code == 200, answer.text
            return answer.text

        def health_count(text: str) -> float:
            (count,) = _HEALTH_COUNT.findall(text)
            return float(count)

        # ApiServer.start's own GET /v1/health counts too: measure from here.
        before = health_count(scrape())
        # No control socket (gunicorn 25.1+ opens one by default, to scale, reload or stop
        # the workers) where it would go; looked for while serving (gunicorn removes its
        # socket when it stops).
        made = [str(path) for private in ("home", "run")
                for path in (tmp_path / private).rglob("*")]
        assert made == [], made

        def health(_: int) -> int:
            # A connection per request (no keep-alive): gunicorn's workers take turns.
            answer = requests.get(f"{api.url}/v1/health", timeout=10,
                                  headers={"Connection": "close"})
            return answer.status_code

        with ThreadPoolExecutor(max_workers=24) as pool:
            statuses = list(pool.map(health, range(REQUESTS)))
        assert statuses == [200] * REQUESTS
        after = scrape()
        assert health_count(after) == before + REQUESTS, after[-3000:]
        # Every worker's histogram too: one observation per request, whoever served it.
        assert (f'relayfleet_http_request_duration_seconds_count{{route="/v1/health"}} '
                f"{before + REQUESTS}") in after

        # A worker that exits (gunicorn starts another) keeps what it counted.
        assert api.proc is not None
        children = gunicorn_workers(api.proc.pid)
        assert len(children) == WORKERS
        os.kill(children[0], signal.SIGTERM)
        deadline = time.monotonic() + 60
        while children[0] in (now := gunicorn_workers(api.proc.pid)) or len(now) < WORKERS:
            assert time.monotonic() < deadline, f"gunicorn did not replace {children[0]}"
            time.sleep(0.2)
        with ThreadPoolExecutor(max_workers=24) as pool:
            statuses = list(pool.map(health, range(REQUESTS)))
        assert statuses == [200] * REQUESTS
        assert health_count(scrape()) == before + 2 * REQUESTS
        total = before + 2 * REQUESTS
    entries = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    served_by = Counter(entry["process"] for entry in entries
                        if entry["logger"] == "relayfleet.controller"
                        and entry["message"].startswith("GET /v1/health 200"))
    # The sum above is only a proof if more than one process answered.
    assert sum(served_by.values()) == total and len(served_by) >= 2, served_by
    assert {"time", "level", "logger", "message", "process"} <= set(entries[0])
    assert any(entry["logger"].startswith("gunicorn") for entry in entries), entries[:5]
    # gunicorn says when it opens its control socket (a moment after its workers start)
    assert not [entry for entry in entries if "control socket" in entry["message"].lower()]
    assert os.environ["RELAYFLEET_SECRET_KEY"] not in log.read_text()
