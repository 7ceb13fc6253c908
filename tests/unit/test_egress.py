"""The egress policy (SSRF) and whole-request limits of the
controller's outbound HTTP: agent calls and job callbacks.

Refused destinations are proven refused *without connecting*: a guard fails the test if
anything but loopback is dialled. Allowed cases talk to servers on loopback only.
"""

from __future__ import annotations

import contextlib
import http.server
import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from controller import callbacks
from controller.config import Settings
from controller.egress import EgressPolicy, HttpClient
from controller.transports import AgentTransport, HostSpec
from shared.actions import ACTIONS
from shared.errors import CommandTimeout, ConfigError, HostUnreachable, OperationError

REFUSED_BY_DEFAULT = ["127.0.0.1", "127.8.9.10", "::1", "169.254.169.254", "169.254.0.1",
                      "fe80::1", "febf::1", "::ffff:169.254.169.254", "::ffff:127.0.0.1",
                      "0.0.0.0", "::", "224.0.0.1", "239.255.255.250", "ff02::1",
                      "255.255.255.255"]
ALLOWED_BY_DEFAULT = ["10.0.0.5", "172.16.4.4", "192.168.1.1", "203.0.113.5", "fd00::5",
                      "2001:db8::5"]


@pytest.fixture(autouse=True)
def dial_guard(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Record every connect; fail the test on any that is not loopback."""
    dialled: list[Any] = []
    real_connect = socket.socket.connect

    def connect(self: socket.socket, address: Any) -> None:
        dialled.append(address)
        if not ipaddress.ip_address(str(address[0]).split("%")[0]).is_loopback:
            raise AssertionError(f"the test dialled {address}: refused egress must not "
                                 "connect")
        real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    return dialled


class Recorder(http.server.BaseHTTPRequestHandler):
    """Answers JSON to everything and records what it got."""

    seen: list[dict[str, Any]]
    answer: Callable[[Recorder], None] | None = None

    def _any(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.seen.append({"path": self.path, "host": self.headers.get("Host"),
                          "body": self.rfile.read(length)})
        if type(self).answer is not None:
            type(self).answer(self)  # type: ignore[misc]
            return
        body = b'{"hostname": "x"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = _any

    def log_message(self, *args: Any) -> None:
        """Quiet."""


@pytest.fixture
def server() -> Iterator[tuple[int, list[dict[str, Any]], type[Recorder]]]:
    """A loopback HTTP server: (port, requests seen, handler class to script)."""
    handler = type("Handler", (Recorder,), {"seen": [], "answer": None})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd.server_address[1], handler.seen, handler
    httpd.shutdown()
    httpd.server_close()


def agent(url: str, **kwargs: Any) -> HostSpec:
    return HostSpec(1, "pbx1", "x", "agent", agent_url=url, agent_token="t" * 32,
                    agent_insecure_http=True, **kwargs)


def status(transport: AgentTransport, timeout_s: float = 5.0) -> Any:
    return transport.run("collect_status", ACTIONS["collect_status"].parse({}),
                         dry_run=False, timeout_s=timeout_s)


# -- the policy ----------------------------------------------------------------------

@pytest.mark.parametrize("address", REFUSED_BY_DEFAULT)
def test_default_policy_refuses_internal_addresses(address: str) -> None:
    policy = EgressPolicy()
    assert policy.refusal("x", ipaddress.ip_address(address)) is not None
    host = f"[{address}]" if ":" in address else address
    assert policy.check_literal(f"https://{host}:8587") is not None


@pytest.mark.parametrize("address", ALLOWED_BY_DEFAULT)
def test_default_policy_allows_private_and_public(address: str) -> None:
    assert EgressPolicy().refusal("x", ipaddress.ip_address(address)) is None


def test_allow_list_narrows_and_loopback_is_explicit() -> None:
    policy = EgressPolicy.parse("10.8.0.0/16, hooks.example.net, loopback")
    assert policy.refusal("x", ipaddress.ip_address("10.8.3.4")) is None
    assert policy.refusal("x", ipaddress.ip_address("10.9.3.4")) is not None
    assert policy.refusal("x", ipaddress.ip_address("203.0.113.5")) is not None
    assert policy.refusal("hooks.example.net", ipaddress.ip_address("203.0.113.5")) is None
    assert policy.refusal("x", ipaddress.ip_address("127.0.0.1")) is None
    assert policy.check_literal("http://localhost:1") is None
    # Link-local stays refused, even for a listed name or network.
    wide = EgressPolicy.parse("169.254.0.0/16,meta.example")
    assert wide.refusal("meta.example", ipaddress.ip_address("169.254.169.254")) is not None
    assert EgressPolicy().check_literal("http://localhost:1") == "loopback"
    for legacy in ("127.1", "0x7f.1", "2130706433", "017700000001", "0xa9fea9fe"):
        assert EgressPolicy().check_literal(f"http://{legacy}:80/") is not None, legacy
    assert EgressPolicy().check_literal("http://agent.example:1") is None
    with pytest.raises(ConfigError):
        EgressPolicy.parse("10.0.0.0/8,not a host!")


def test_a_name_with_one_refused_address_is_refused(monkeypatch: pytest.MonkeyPatch,
                                                    dial_guard: list[Any]) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: [
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.1.2.3", 80)),
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("169.254.169.254", 80))])
    with pytest.raises(HostUnreachable, match="refused by egress policy"):
        status(AgentTransport(agent("http://rebind.example:80")))
    assert dial_guard == []


# -- agent calls ---------------------------------------------------------------------

def test_agent_on_loopback_is_refused_without_connecting(
        server: tuple[int, list[dict[str, Any]], type[Recorder]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RELAYFLEET_EGRESS_ALLOW", raising=False)
    port, seen, _ = server
    with pytest.raises(HostUnreachable) as caught:
        status(AgentTransport(agent(f"http://127.0.0.1:{port}")))
    assert "refused by egress policy" in caught.value.message
    assert seen == []


@pytest.mark.parametrize("url", ["http://169.254.169.254", "http://[fe80::1]:8587",
                                 "http://[::ffff:169.254.169.254]:80", "http://0.0.0.0:8587",
                                 "http://localhost:8587"])
def test_agent_at_metadata_and_link_local_is_refused_before_connect(
        url: str, dial_guard: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RELAYFLEET_EGRESS_ALLOW", raising=False)
    with pytest.raises(HostUnreachable, match="refused by egress policy"):
        status(AgentTransport(agent(url)))
    assert dial_guard == []


def test_resolved_once_connected_to_the_checked_address_host_header_kept(
        server: tuple[int, list[dict[str, Any]], type[Recorder]],
        monkeypatch: pytest.MonkeyPatch, dial_guard: list[Any]) -> None:
    port, seen, _ = server
    lookups: list[str] = []

    def getaddrinfo(host: str, *args: Any, **kwargs: Any) -> list[Any]:
        lookups.append(host)
        # A rebinding resolver would answer differently the second time: there is none.
        if len(lookups) > 1:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("169.254.169.254", port))]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    client = HttpClient(EgressPolicy.parse("loopback"))
    answer = client.request("GET", f"http://agent.example:{port}/v1/status", deadline_s=5,
                            max_body=1000)
    assert answer.status == 200
    assert lookups == ["agent.example"]
    assert dial_guard == [("127.0.0.1", port)]
    assert seen[0]["host"] == f"agent.example:{port}"


def test_connection_errors_say_unreachable_not_the_socket_detail(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAYFLEET_EGRESS_ALLOW", "loopback")
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(HostUnreachable) as caught:
        status(AgentTransport(agent(f"http://127.0.0.1:{port}")))
    assert "unreachable" in caught.value.message
    assert "refused" not in caught.value.message.replace("refused by egress", "")
    assert "Errno" not in caught.value.message and "111" not in caught.value.message


def test_plain_http_agent_needs_the_hosts_explicit_say_so(
        server: tuple[int, list[dict[str, Any]], type[Recorder]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAYFLEET_EGRESS_ALLOW", "loopback")
    port, seen, _ = server
    spec = HostSpec(1, "pbx1", "x", "agent", agent_url=f"http://127.0.0.1:{port}",
                    agent_token="t" * 32)
    with pytest.raises(HostUnreachable, match="insecure_http"):
        status(AgentTransport(spec))
    assert seen == []
    assert status(AgentTransport(agent(f"http://127.0.0.1:{port}"))).data["hostname"] == "x"


# -- whole-request deadline and body cap ---------------------------------

def drip(handler: Recorder) -> None:
    """Send a valid answer one byte a second (for about 8 s)."""
    payload = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
               b"Content-Length: 2\r\n\r\n{}")
    try:
        for i in range(len(payload)):
            handler.wfile.write(payload[i:i + 1])
            handler.wfile.flush()
            time.sleep(1 if i < 8 else 0)
    except OSError:
        pass


def test_a_dripping_agent_is_cut_at_the_hosts_timeout(
        server: tuple[int, list[dict[str, Any]], type[Recorder]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAYFLEET_EGRESS_ALLOW", "loopback")
    port, _, handler = server
    handler.answer = drip
    started = time.monotonic()
    with pytest.raises(CommandTimeout):
        status(AgentTransport(agent(f"http://127.0.0.1:{port}")), timeout_s=2)
    assert time.monotonic() - started < 6  # the drip alone takes 8 s


def test_an_oversized_agent_answer_is_refused(
        server: tuple[int, list[dict[str, Any]], type[Recorder]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAYFLEET_EGRESS_ALLOW", "loopback")
    port, _, handler = server
    size = 17 * 1024 * 1024

    def huge(h: Recorder) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(size + 13))
        h.end_headers()
        with contextlib.suppress(OSError):
            h.wfile.write(b'{"hostname":"' + b"a" * size)

    handler.answer = huge
    with pytest.raises(OperationError, match="larger than"):
        status(AgentTransport(agent(f"http://127.0.0.1:{port}")), timeout_s=20)


# -- callbacks -----------------------------------------------------------------------

def settings(allow: str = "") -> Settings:
    return Settings(database_url="sqlite://", secret_key="k" * 32, egress_allow=allow)


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data/",
                                 "http://[::ffff:a9fe:a9fe]/", "http://[fe80::1]/x"])
def test_callback_to_link_local_is_refused_before_connect(url: str,
                                                          dial_guard: list[Any]) -> None:
    delivered, outcome = callbacks.post(settings(), url, b"{}", {})
    assert (delivered, outcome) == (False, "refused by egress policy")
    assert dial_guard == []


def test_callback_to_loopback_needs_the_allow_list(
        server: tuple[int, list[dict[str, Any]], type[Recorder]]) -> None:
    port, seen, _ = server
    url = f"http://127.0.0.1:{port}/hook"
    assert callbacks.post(settings(), url, b"{}", {}) == (False, "refused by egress policy")
    assert seen == []
    assert callbacks.post(settings("loopback"), url, b"{}", {}) == (True, "HTTP 200")
    assert seen[0]["path"] == "/hook"


def test_a_dripping_callback_receiver_is_cut_at_the_deadline(
        server: tuple[int, list[dict[str, Any]], type[Recorder]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    port, _, handler = server
    handler.answer = drip
    monkeypatch.setattr(callbacks, "CALLBACK_DEADLINE_S", 2.0)
    started = time.monotonic()
    delivered, outcome = callbacks.post(settings("loopback"), f"http://127.0.0.1:{port}/",
                                        b"{}", {})
    assert not delivered and outcome.startswith("timed out")
    assert time.monotonic() - started < 6  # the drip alone takes 8 s


def test_a_callback_answer_is_read_up_to_its_cap(
        server: tuple[int, list[dict[str, Any]], type[Recorder]]) -> None:
    port, _, handler = server

    def big(h: Recorder) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(10 * 1024 * 1024))
        h.end_headers()
        with contextlib.suppress(OSError):
            h.wfile.write(b"x" * 10 * 1024 * 1024)

    handler.answer = big
    answer = HttpClient(EgressPolicy.parse("loopback")).request(
        "POST", f"http://127.0.0.1:{port}/", deadline_s=5,
        max_body=callbacks.CALLBACK_ANSWER_BYTES, truncate=True)
    assert answer.status == 200 and len(answer.body) == callbacks.CALLBACK_ANSWER_BYTES
    assert callbacks.post(settings("loopback"), f"http://127.0.0.1:{port}/", b"{}",
                          {}) == (True, "HTTP 200")
