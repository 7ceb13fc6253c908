"""Record a real agent's answers to the routes the controller calls, for the simulated fleet.

Builds one lab host (real sendmail in its namespaces) running the real agent, calls each
route the controller's jobs use, with mail queued and without, and writes what the agent
answered (status code, the headers that matter, the JSON body) to
``tests/fixtures/agent/answers.json``. :mod:`tests.lab.sim_agent` serves these answers for
thousands of simulated hosts, each with its own name and address put in place of the
recorded host's.

    python -m tests.lab.record_agent [--out tests/fixtures/agent/answers.json]   # root
"""

from __future__ import annotations

import argparse
import json
import secrets
import tempfile
from pathlib import Path
from typing import Any

import requests

from tests.lab.lab import DOMAIN, SINK_PORT, Lab, LabHost

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "agent" / "answers.json"
#: the recorded host's short name: distinctive, so that the simulator's substitution of
#: per-host names cannot hit anything else in an answer
HOST_NAME = "recagent"
#: headers worth replaying (Date, Server, Content-Length and Connection are the server's)
KEPT_HEADERS = ("Content-Type", "X-Relayfleet-Mta", "WWW-Authenticate")
#: deferred at the lab's DNS (mx.ourtest.com refuses): a message that stays queued
DEFERRED_TO = "me@ourtest.com"


class Recorder:
    """Calls one agent and keeps each answer under a name."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"
        self.answers: dict[str, dict[str, Any]] = {}

    def call(self, name: str, method: str, path: str, body: Any = None,
             params: dict[str, Any] | None = None, token: str | None = None) -> Any:
        """Send one request; keep its answer as ``name``; return its JSON body."""
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        answer = self.session.request(method, self.url + path, json=body, params=params,
                                      headers=headers, timeout=240)
        doc = answer.json()
        self.answers[name] = {
            "request": {"method": method, "path": path},
            "status": answer.status_code,
            "headers": {key: answer.headers[key] for key in KEPT_HEADERS
                        if key in answer.headers},
            "body": doc}
        return doc


def record(lab: Lab) -> dict[str, Any]:
    """Build the host, call its agent, return the fixture document."""
    host: LabHost = lab.add_host(HOST_NAME, "debian")
    try:
        token = secrets.token_urlsafe(24)
        rec = Recorder(host.start_agent(token), token)
        rec.call("health", "GET", "/v1/health")
        rec.call("unauthorized", "GET", "/v1/status", token="not-the-token")
        rec.call("status_empty", "GET", "/v1/status")
        rec.call("queue_empty", "GET", "/v1/queue")
        rec.call("flush_queue_empty", "POST", "/v1/queue/flush", {})
        rec.call("read_log", "GET", "/v1/log", params={"lines": 20})
        host.send_mail([DEFERRED_TO])
        host.wait_deferred()
        rec.call("status_queued", "GET", "/v1/status")
        rec.call("queue_queued", "GET", "/v1/queue")
        # No smarthost yet: the run tries the message again and it stays deferred.
        rec.call("flush_queue_queued", "POST", "/v1/queue/flush", {})
        smarthost = {"host": f"smarthost.{DOMAIN}", "port": SINK_PORT, "mx": False}
        rec.call("set_smarthost_dry_run", "PUT", "/v1/smarthost",
                 {**smarthost, "dry_run": True})
        rec.call("set_smarthost", "PUT", "/v1/smarthost", smarthost)
        rec.call("set_smarthost_unchanged", "PUT", "/v1/smarthost", smarthost)
        rec.call("read_smarthost", "GET", "/v1/smarthost")
        rec.call("flush_queue_delivered", "POST", "/v1/queue/flush", {})
        rec.call("remove_smarthost", "DELETE", "/v1/smarthost", {})
        return {"recorded_host": {"name": host.name, "fqdn": host.fqdn,
                                  "address": host.address},
                "recorded_with": "python -m tests.lab.record_agent (debian, sendmail, "
                                 "agent over plain HTTP)",
                "answers": rec.answers}
    finally:
        host.close()


def main() -> None:
    """Record and write the fixture."""
    parser = argparse.ArgumentParser(prog="python -m tests.lab.record_agent")
    parser.add_argument("--out", type=Path, default=FIXTURE)
    args = parser.parse_args()
    with Lab(Path(tempfile.mkdtemp(prefix="relayfleet-record-"))) as lab:
        doc = record(lab)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(doc['answers'])} answers to {args.out}")


if __name__ == "__main__":
    main()
