"""Kept-alive agent connections (controller.egress.ConnectionPool): reused while allowed,
never past the policy, the deadline or the body cap, sent again once when the server had
closed a kept connection. Servers listen on loopback only."""

from __future__ import annotations

import http.server
import ipaddress
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from controller import egress
from controller.egress import (
    ConnectionPool,
    EgressPolicy,
    EgressRefused,
    HttpClient,
    TlsTrust,
)
from controller.transports import AgentTransport, HostSpec
from shared.actions import ACTIONS
from shared.errors import CommandTimeout

BODY = b'{"hostname": "x"}'


@dataclass
class Seen:
    """What a keep-alive server saw: connections accepted, requests per connection."""

    connections: int = 0
    requests: list[int] = field(default_factory=list)
    #: scripts the n-th request (0-based) of all: returns False to drop the connection
    script: dict[int, Callable[[http.server.BaseHTTPRequestHandler], bool]] = field(
        default_factory=dict)


class KeepAlive(http.server.BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive (as the agent's cheroot server); answers JSON."""

    protocol_version = "HTTP/1.1"
    seen: Seen

    def setup(self) -> None:
        super().setup()
        self.seen.connections += 1
        self.number = self.seen.connections

    def _any(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        index = len(self.seen.requests)
        self.seen.requests.append(self.number)
        script = self.seen.script.get(index)
        if script is not None and not script(self):
            self.close_connection = True
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    do_GET = do_POST = _any

    def log_message(self, *args: Any) -> None:
        """Quiet."""


@pytest.fixture(autouse=True)
def pool(monkeypatch: pytest.MonkeyPatch) -> Iterator[ConnectionPool]:
    """A pool of this test's own (the process's one is left alone)."""
    own = ConnectionPool()
    monkeypatch.setattr(egress, "POOL", own)
    monkeypatch.setenv("RELAYFLEET_EGRESS_ALLOW", "loopback")
    yield own
    own.clear()


@pytest.fixture
def server() -> Iterator[tuple[int, Seen]]:
    """A loopback keep-alive server: (port, what it saw)."""
    seen = Seen()
    handler = type("Handler", (KeepAlive,), {"seen": seen})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd.server_address[1], seen
    httpd.shutdown()
    httpd.server_close()


def transport(port: int) -> AgentTransport:
    return AgentTransport(HostSpec(1, "pbx1", "x", "agent",
                                   agent_url=f"http://127.0.0.1:{port}",
                                   agent_token="t" * 32, agent_insecure_http=True))


def status(port: int, timeout_s: float = 5.0) -> Any:
    return transport(port).run("collect_status", ACTIONS["collect_status"].parse({}),
                               dry_run=False, timeout_s=timeout_s)


def test_calls_to_one_agent_share_a_connection(server: tuple[int, Seen],
                                               pool: ConnectionPool) -> None:
    port, seen = server
    for _ in range(3):
        assert status(port).data["hostname"] == "x"
    assert seen.connections == 1 and seen.requests == [1, 1, 1]
    assert len(pool) == 1


def test_a_client_without_keep_alive_pools_nothing(server: tuple[int, Seen],
                                                   pool: ConnectionPool) -> None:
    port, seen = server
    client = HttpClient(EgressPolicy.parse("loopback"))
    for _ in range(2):
        client.request("GET", f"http://127.0.0.1:{port}/", deadline_s=5, max_body=100)
    assert seen.connections == 2 and len(pool) == 0


def test_a_policy_change_takes_effect_on_a_kept_connection(server: tuple[int, Seen],
                                                           pool: ConnectionPool) -> None:
    port, seen = server
    url = f"http://127.0.0.1:{port}/v1/status"
    HttpClient(EgressPolicy.parse("loopback"), keep_alive=True).request(
        "GET", url, deadline_s=5, max_body=100)
    assert len(pool) == 1
    with pytest.raises(EgressRefused):
        HttpClient(EgressPolicy.parse("10.0.0.0/8"), keep_alive=True).request(
            "GET", url, deadline_s=5, max_body=100)
    assert len(seen.requests) == 1


def test_a_connection_the_server_closed_while_idle_is_not_used(
        server: tuple[int, Seen], pool: ConnectionPool) -> None:
    port, seen = server

    def answer_then_close(handler: http.server.BaseHTTPRequestHandler) -> bool:
        handler.close_connection = True  # (without saying so in a header)
        return True

    seen.script[0] = answer_then_close
    status(port)
    status(port)
    assert seen.connections == 2 and seen.requests == [1, 2]


def test_a_request_dropped_on_a_kept_connection_is_sent_once_more_on_a_new_one(
        server: tuple[int, Seen], pool: ConnectionPool) -> None:
    port, seen = server
    seen.script[1] = lambda h: False  # read, then close without a byte of answer
    assert status(port).data["hostname"] == "x"
    assert status(port).data["hostname"] == "x"
    assert seen.requests == [1, 1, 2]


def test_a_drop_on_a_new_connection_is_not_sent_again(server: tuple[int, Seen]) -> None:
    port, seen = server
    seen.script[0] = lambda h: False
    with pytest.raises(Exception, match="unreachable"):
        status(port)
    assert seen.requests == [1]


def test_idle_connections_expire(server: tuple[int, Seen], pool: ConnectionPool,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    port, seen = server
    monkeypatch.setattr(pool, "idle_s", 0.0)
    status(port)
    time.sleep(0.01)
    status(port)
    assert seen.connections == 2


def test_the_deadline_holds_on_a_kept_connection(server: tuple[int, Seen]) -> None:
    port, seen = server

    def stall(handler: http.server.BaseHTTPRequestHandler) -> bool:
        time.sleep(4)
        return True

    status(port)
    seen.script[1] = stall
    started = time.monotonic()
    with pytest.raises(CommandTimeout):
        status(port, timeout_s=1)
    assert time.monotonic() - started < 3.5
    assert seen.connections == 1


def test_an_answer_over_the_cap_does_not_keep_its_connection(
        server: tuple[int, Seen], pool: ConnectionPool) -> None:
    port, _ = server
    client = HttpClient(EgressPolicy.parse("loopback"), keep_alive=True)
    answer = client.request("GET", f"http://127.0.0.1:{port}/", deadline_s=5, max_body=5,
                            truncate=True)
    assert answer.body == BODY[:5] and len(pool) == 0


def test_the_pool_is_bounded_and_keyed_by_trust() -> None:
    own = ConnectionPool(max_idle=2)

    class Fake:
        sock: Any = object()
        closed = False

        def closed_by_peer(self) -> bool:
            return False

        def close(self) -> None:
            self.closed = True

    address = ipaddress.ip_address("10.0.0.5")
    pinned = TlsTrust(fingerprint="a" * 64)
    fakes = [Fake(), Fake(), Fake()]
    for n, fake in enumerate(fakes):
        own.put(("https", "pbx", 8587 + n, address, pinned), fake)  # type: ignore[arg-type]
    assert len(own) == 2 and fakes[0].closed and not fakes[2].closed
    assert own.take(("https", "pbx", 8589, address, TlsTrust(fingerprint="b" * 64))) is None
    assert own.take(("https", "pbx", 8589, address, TlsTrust(ca_cert="PEM"))) is None
    assert own.take(("https", "pbx", 8589, address, pinned)) is fakes[2]  # type: ignore[comparison-overlap]
    assert len(own) == 1



def test_requests_start_no_thread_of_their_own(server: tuple[int, Seen],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A request's deadline is watched by the process's one deadline thread: the client
    starts no thread per request (only the test server starts one, per connection)."""
    port, seen = server
    status(port)  # (the deadline thread exists from here on)
    started: list[str] = []
    real_start = threading.Thread.start

    def counting_start(thread: threading.Thread) -> None:
        started.append(thread.name)
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", counting_start)
    for _ in range(10):
        status(port)
    assert seen.connections == 1
    assert not [name for name in started if "process_request_thread" not in name]
    assert egress.DEADLINES.pending() == 0
