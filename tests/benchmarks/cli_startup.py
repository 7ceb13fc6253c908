"""CLI benchmarks: prints figures, asserts nothing.

``python -m tests.benchmarks.cli_startup [startup|flush|all] [--runs 10] [--hosts 3]`` (root
for ``flush``: it starts its own lab; both start their own Redis, SQLite database, API
server and, for ``flush``, a worker).

- **startup**: the installed ``relayfleet whoami``, process start to its first request's
  bytes arriving at a loopback listener (which answers a canned whoami document), median
  of ``--runs`` (target under 250 ms); also its whole run against that listener and
  against the real API server (``relayfleet-controller serve``). References in the same
  run: ``python -c pass`` (the interpreter's floor) and ``relayfleet --version`` (every
  import, no request).
- **flush**: wall time of ``relayfleet flush --all`` (waits, output to a pipe) on
  ``--hosts`` agent lab hosts against the same job started with curl and polled with curl
  every 0.25 s (the CLI's first poll interval) until ``finished_at`` is set; medians of
  ``--runs`` each, the two interleaved; the ratio and the difference.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.lab.services import (
    ApiServer,
    ControllerWorker,
    RedisServer,
    RelayfleetCli,
    relayfleet_command,
)

SECRET = "relayfleet-benchmark-secret-key-0123456789"
WHOAMI = {"token_id": 1, "name": "benchmark", "role": "admin", "tenant_id": None,
          "tenant": None, "version": "benchmark"}
#: curl's poll interval: the CLI's first one (it then grows by 1.3x up to 2 s)
CURL_POLL_S = 0.25


def median(fn: Callable[[], float], runs: int) -> tuple[float, list[float]]:
    """Median of ``runs`` samples of what ``fn`` returns."""
    samples = [fn() for _ in range(runs)]
    return statistics.median(samples), samples


def ms(seconds: float) -> str:
    """Milliseconds, for printing."""
    return f"{seconds * 1000:.0f} ms"


class FirstRequestListener:
    """A loopback HTTP listener that answers every request with :data:`WHOAMI` and notes
    (``time.perf_counter``) when the first bytes of the first request arrived."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.first: float | None = None
        self._lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            received = b""
            while b"\r\n\r\n" not in received:
                data = conn.recv(65536)
                if not data:
                    return
                with self._lock:
                    if self.first is None:
                        self.first = time.perf_counter()
                received += data
            body = json.dumps(WHOAMI).encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)

    def close(self) -> None:
        """Stop listening."""
        self.sock.close()


def _wall(argv: list[str], env: dict[str, str]) -> float:
    """Seconds ``argv`` takes from start to end."""
    start, end = _timed(argv, env)
    return end - start


def _timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Run ``argv`` to its end (output to pipes); (start, end) on ``perf_counter``."""
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, check=False)
    end = time.perf_counter()
    if proc.returncode != 0:
        raise SystemExit(f"{argv} exited {proc.returncode}: {proc.stderr.decode()[-500:]}")
    return start, end


def bench_startup(cli: RelayfleetCli, runs: int) -> None:
    """Start-up to first request of ``relayfleet whoami``, and its references."""
    print(f"== startup: relayfleet whoami, process start to its first request (target < 250 "
          f"ms), median of {runs}")
    env = cli.env()
    relayfleet = relayfleet_command()
    floor, _ = median(lambda: _wall([sys.executable, "-c", "pass"], env), runs)
    version, _ = median(lambda: _wall([relayfleet, "--version"], env), runs)
    listener = FirstRequestListener()
    try:
        firsts: list[float] = []
        totals: list[float] = []
        _timed(cli.argv("whoami", api_url=listener.url), env)  # warm the page cache
        for _ in range(runs):
            listener.first = None
            start, end = _timed(cli.argv("whoami", api_url=listener.url), env)
            assert listener.first is not None  # the answer came after it: it is set
            firsts.append(listener.first - start)
            totals.append(end - start)
    finally:
        listener.close()
    real, real_samples = median(lambda: _wall(cli.argv("whoami"), env), runs)
    first = statistics.median(firsts)
    print(f"first request after {ms(first)} (samples {', '.join(ms(s) for s in firsts)}); "
          f"ratio to the 250 ms target {first / 0.25:.2f}")
    print(f"whole run against the canned listener {ms(statistics.median(totals))}; against "
          f"the real API server {ms(real)} (samples "
          f"{', '.join(ms(s) for s in real_samples)})")
    print(f"references: python -c pass {ms(floor)}; relayfleet --version {ms(version)}; "
          f"first request - python floor = {ms(first - floor)}")


def _curl_flush(api_url: str, token: str) -> float:
    """POST the flush job with curl and poll it with curl until it has finished."""
    auth = f"Authorization: Bearer {token}"
    start = time.perf_counter()
    posted = subprocess.run(
        ["curl", "-sS", "--fail-with-body", "-X", "POST", "-H", auth, "-H",
         "Content-Type: application/json", "-H",
         f"Idempotency-Key: bench-curl-{secrets.token_hex(8)}", "--data",
         json.dumps({"action": "flush_queue", "target": {"all": True}}),
         f"{api_url}/v1/jobs"], capture_output=True, check=True)
    job_id = json.loads(posted.stdout)["id"]
    while True:
        polled = subprocess.run(["curl", "-sS", "--fail-with-body", "-H", auth,
                                 f"{api_url}/v1/jobs/{job_id}"], capture_output=True,
                                check=True)
        doc = json.loads(polled.stdout)
        if doc["finished_at"] is not None:
            break
        time.sleep(CURL_POLL_S)
    took = time.perf_counter() - start
    if doc["status"] != "succeeded":
        raise SystemExit(f"job {job_id} ended {doc['status']}")
    return took


def bench_flush(cli: RelayfleetCli, controller: Any, token: str, workdir: Path,
                env: dict[str, str], hosts: int, runs: int) -> None:
    """``relayfleet flush --all`` against the same job driven with curl."""
    from tests.lab.enrol import host_body
    from tests.lab.lab import Lab

    print(f"== flush: relayfleet flush --all vs curl POST + curl poll every {CURL_POLL_S} s, "
          f"{hosts} agent lab hosts, median of {runs} each")
    worker = ControllerWorker(env, workdir / "worker.log").start()
    try:
        with Lab(workdir / "lab") as lab:
            site = controller.site(controller.tenant("Acme"), "Lyon")
            for index in range(hosts):
                host = lab.add_host(f"cb{index}")
                controller.ok("POST", "/v1/hosts", {**host_body(host, "agent"),
                                                    "site_id": site})
            cli_env = cli.env()

            def with_cli() -> float:
                return _wall(cli.argv("flush", "--all"), cli_env)

            with_cli()  # warm-up: worker processes, connections, page cache
            _curl_flush(cli.api_url, token)
            cli_samples: list[float] = []
            curl_samples: list[float] = []
            for _ in range(runs):
                cli_samples.append(with_cli())
                curl_samples.append(_curl_flush(cli.api_url, token))
            by_cli, by_curl = statistics.median(cli_samples), statistics.median(curl_samples)
            print(f"relayfleet flush --all {ms(by_cli)} (samples "
                  f"{', '.join(ms(s) for s in cli_samples)})")
            print(f"curl POST + poll       {ms(by_curl)} (samples "
                  f"{', '.join(ms(s) for s in curl_samples)})")
            print(f"relayfleet / curl = {by_cli / by_curl:.2f}; difference "
                  f"{ms(by_cli - by_curl)}")
    finally:
        worker.stop()


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", nargs="?", default="all", choices=("startup", "flush", "all"))
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--hosts", type=int, default=3)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="relayfleet-bench-cli-"))
    redis = RedisServer(workdir / "redis").start()
    env = {"RELAYFLEET_DATABASE_URL": f"sqlite:///{workdir / 'relayfleet.db'}",
           "RELAYFLEET_BROKER_URL": redis.url, "RELAYFLEET_SECRET_KEY": SECRET,
           "RELAYFLEET_DATA_DIR": str(workdir), "RELAYFLEET_EGRESS_ALLOW": "loopback,10.0.0.0/8"}
    try:
        from controller.migrate import upgrade
        from tests.controller_client import Controller

        os.environ.update(env)
        upgrade(env["RELAYFLEET_DATABASE_URL"])
        controller = Controller.create()
        token_file = workdir / "admin.token"
        token_file.write_text(controller.admin + "\n")
        token_file.chmod(0o600)
        with ApiServer(env, workdir / "serve.log") as server:
            cli = RelayfleetCli(server.url, token_file, workdir / "home")
            if args.which in ("startup", "all"):
                bench_startup(cli, args.runs)
            if args.which in ("flush", "all"):
                bench_flush(cli, controller, controller.admin, workdir, env, args.hosts,
                            args.runs)
    finally:
        redis.stop()


if __name__ == "__main__":
    main()
