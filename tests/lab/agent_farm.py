"""Many agent hosts served by one process: the real agent app (:func:`agent.app.create_app`)
once per host, each over its own in-memory sendmail host (:mod:`shared.testing`), with its
own token, behind one cheroot server.

The controller reaches an agent at ``http(s)://HOST[:PORT]`` (no path), so each host gets
an address of its own in 127.0.0.0/8 (all of it is loopback on Linux) and the farm picks
the host's app by the address the request was sent to (the ``Host`` header). Every request
is counted per host, method and path; ``GET /_farm/counts`` (any host) returns the counts.

    python -m tests.lab.agent_farm --port PORT < hosts.json
    # hosts.json: {"hosts": [{"address": "127.0.1.1", "token": "..."}, ...]} (tokens on
    # stdin, never in argv); prints "READY" when it listens, serves until SIGTERM
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import json
import signal
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

COUNTS_PATH = "/_farm/counts"

Wsgi = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class Farm:
    """A WSGI app dispatching to one agent app per host address."""

    def __init__(self, hosts: list[dict[str, str]]) -> None:
        from agent.app import create_app
        from agent.config import AgentConfig, MtaSettings
        from shared.testing import debian_sendmail_host

        self.apps: dict[str, Wsgi] = {}
        for number, host in enumerate(hosts, 1):
            fake = debian_sendmail_host(hostname=f"farm{number}",
                                        fqdn=f"farm{number}.lab.test")
            config = AgentConfig(host["address"], 8587,
                                 hashlib.sha256(host["token"].encode()).hexdigest(),
                                 MtaSettings("sendmail", "debian"), insecure_http=True)
            self.apps[host["address"]] = create_app(
                config, executor_factory=lambda fake=fake: fake).wsgi_app
        self.counts: Counter[tuple[str, str, str]] = Counter()
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]
                 ) -> Iterable[bytes]:
        """Count the request and hand it to its host's agent app."""
        if not ipaddress.ip_address(environ.get("REMOTE_ADDR", "0.0.0.0")).is_loopback:
            start_response("403 Forbidden", [("Content-Type", "text/plain")])
            return [b"the farm serves loopback clients only\n"]
        address = environ.get("HTTP_HOST", "").rsplit(":", 1)[0]
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "")
        if path == COUNTS_PATH:
            with self.lock:
                body = json.dumps([[*key, count] for key, count in self.counts.items()])
            start_response("200 OK", [("Content-Type", "application/json")])
            return [body.encode()]
        app = self.apps.get(address)
        if app is None:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [f"no farm host at {address}\n".encode()]
        with self.lock:
            self.counts[(address, method, path)] += 1
        return app(environ, start_response)


def main() -> None:
    """Serve the hosts described on stdin until SIGTERM."""
    from cheroot import wsgi

    parser = argparse.ArgumentParser(prog="python -m tests.lab.agent_farm")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=128)
    args = parser.parse_args()
    farm = Farm(json.load(sys.stdin)["hosts"])
    # Every farm address is in 127.0.0.0/8; only the wildcard catches them all on one
    # socket, and the app refuses anything but loopback clients.
    # It stands in for hundreds of hosts, each of which would accept its own connections:
    # more threads than a job's concurrency, and a listen queue far above cheroot's 5 (a
    # full queue drops connection attempts, which a worker rightly reports unreachable).
    server = wsgi.Server(("0.0.0.0", args.port), farm, numthreads=args.threads,
                         server_name="relayfleet-agent-farm", request_queue_size=1024)

    def stop(_signum: int, _frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    server.prepare()
    print("READY", flush=True)
    try:
        server.serve()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
