"""Agent footprint: time from start to first healthy answer, and idle RSS.

``python tests/benchmarks/agent_footprint.py [--runs 7]``. Starts ``relayfleet-agent
serve`` on 127.0.0.1 (a throw-away config and token), polls ``/v1/health`` until it
answers, sends a few authenticated requests, waits, and reads the process's VmRSS.
Prints the median and spread over the runs and the ratio to the targets of the agent
issue (start < 1.5 s, idle RSS < 60 MB). Nothing is asserted: this machine is shared.
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

TARGET_START_S = 1.5
TARGET_RSS_MB = 60.0
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    """Resident set size of a process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def one_run(workdir: Path) -> tuple[float, float]:
    """Start, wait for health, exercise, idle; return (seconds to healthy, idle RSS MB)."""
    token = secrets.token_urlsafe(32)
    (workdir / "token").write_text(token)
    (workdir / "token").chmod(0o600)
    port = free_port()
    config = workdir / "agent.toml"
    config.write_text(f'listen = "127.0.0.1:{port}"\ntoken_file = "{workdir / "token"}"\n'
                      'log_level = "WARNING"\n[mta]\nkind = "sendmail"\n')
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "serve", "--config", str(config)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        while True:
            try:
                with urllib.request.urlopen(url + "/v1/health", timeout=1) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError("the agent exited during start-up") from None
                time.sleep(0.01)
        healthy = time.monotonic() - start
        for path in ("/openapi.json", "/v1/smarthost", "/v1/health"):
            req = urllib.request.Request(url + path, headers={"Authorization": f"Bearer {token}"})
            # No sendmail here: the answer does not matter, the code it loads does.
            with contextlib.suppress(OSError), urllib.request.urlopen(req, timeout=10) as answer:
                answer.read()
        time.sleep(1.0)
        return healthy, rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    starts, rsss = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.runs):
            healthy, rss = one_run(Path(tmp))
            starts.append(healthy)
            rsss.append(rss)
    start_med, rss_med = statistics.median(starts), statistics.median(rsss)
    print(f"agent start to first healthy answer: median {start_med:.3f} s "
          f"(min {min(starts):.3f}, max {max(starts):.3f}, {args.runs} runs); "
          f"target {TARGET_START_S} s; ratio {start_med / TARGET_START_S:.2f}")
    print(f"agent idle RSS: median {rss_med:.1f} MB (min {min(rsss):.1f}, max {max(rsss):.1f}); "
          f"target {TARGET_RSS_MB:.0f} MB; ratio {rss_med / TARGET_RSS_MB:.2f}")


if __name__ == "__main__":
    main()
