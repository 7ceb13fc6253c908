"""The simulated fleet's own logic: request parsing, per-host answers, tokens, keep-alive."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from typing import Any, BinaryIO

import pytest

from tests.lab.sim_agent import (
    FIXTURE,
    BadRequest,
    Server,
    Simulator,
    fleet,
    host_address,
    host_token,
    parse_head,
    render,
    template,
)

SEED = "unit-seed"
RECORDED = {"name": "recagent", "fqdn": "recagent.lab.test", "address": "10.202.0.10"}


def _fixture() -> dict[str, Any]:
    return dict(json.loads(FIXTURE.read_text()))


def _simulator(count: int = 3, **kwargs: Any) -> Simulator:
    return Simulator.from_fixture(_fixture(), fleet(SEED, count), **kwargs)


def _head(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _get(path: str, token: str | None = None, version: str = "HTTP/1.1") -> bytes:
    auth = [f"Authorization: Bearer {token}"] if token else []
    return _head(f"GET {path} {version}", "Host: x", *auth)


def test_addresses_are_distinct_loopback_and_never_end_in_0_or_255() -> None:
    addresses = [host_address(n) for n in range(100_000)]
    assert len(set(addresses)) == len(addresses)
    assert addresses[0] == "127.10.1.1"
    for address in addresses:
        octets = [int(part) for part in address.split(".")]
        assert octets[0] == 127 and all(0 < octet < 255 for octet in octets[1:])


def test_tokens_differ_per_host_and_per_seed() -> None:
    assert host_token(SEED, "127.10.1.1") == host_token(SEED, "127.10.1.1")
    assert host_token(SEED, "127.10.1.1") != host_token(SEED, "127.10.1.2")
    assert host_token(SEED, "127.10.1.1") != host_token("other", "127.10.1.1")


def test_parse_head_reads_method_path_version_and_headers() -> None:
    request = parse_head(_head("POST /v1/queue/flush?x=1 HTTP/1.1", "Host: 127.10.1.1:8587",
                               "Content-Length: 2", "Authorization: Bearer abc"))
    assert (request.method, request.path, request.version) == ("POST", "/v1/queue/flush",
                                                               "HTTP/1.1")
    assert request.headers["authorization"] == "Bearer abc"
    assert request.content_length == 2
    assert request.keep_alive


@pytest.mark.parametrize(("version", "connection", "kept"), [
    ("HTTP/1.1", None, True), ("HTTP/1.1", "close", False),
    ("HTTP/1.0", None, False), ("HTTP/1.0", "keep-alive", True)])
def test_keep_alive_follows_the_version_and_connection_header(
        version: str, connection: str | None, kept: bool) -> None:
    extra = [f"Connection: {connection}"] if connection else []
    assert parse_head(_head(f"GET / {version}", *extra)).keep_alive is kept


@pytest.mark.parametrize("head", [
    _head("GET /"), _head("GET / HTTP/2"), _head("G-T / HTTP/1.1"),
    _head("GET / HTTP/1.1", "no colon here"), _head("GET / HTTP/1.1", " Folded: x")])
def test_malformed_heads_are_refused(head: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_head(head)


@pytest.mark.parametrize("headers", [["Content-Length: -1"], ["Content-Length: 999999999"],
                                     ["Transfer-Encoding: chunked"]])
def test_bodies_the_simulator_does_not_read_are_refused(headers: list[str]) -> None:
    with pytest.raises(BadRequest):
        _ = parse_head(_head("POST / HTTP/1.1", *headers)).content_length


def test_substitution_puts_each_hosts_names_in_place_and_nothing_else() -> None:
    answer = {"status": 200, "headers": {"Content-Type": "application/json"}, "body": {
        "a": "voicemail@recagent.lab.test", "b": "recagent", "c": "10.202.0.10",
        "d": "10.202.0.100 recagentx xrecagent recagent.lab.test.", "e": "mx.recagent-2"}}
    host = fleet(SEED, 8)[host_address(7)]
    body = json.loads(template(RECORDED, answer).body(host))
    assert body == {"a": "voicemail@sim00007.sim.test", "b": "sim00007", "c": "127.10.1.8",
                    "d": "10.202.0.100 recagentx xrecagent sim00007.sim.test.",
                    "e": "mx.recagent-2"}


def test_a_flush_answers_the_recorded_answer_with_the_hosts_own_names() -> None:
    sim = _simulator()
    address = host_address(2)
    request = parse_head(_head("POST /v1/queue/flush HTTP/1.1", "Content-Length: 2",
                               f"Authorization: Bearer {host_token(SEED, address)}"))
    answer, host = sim.answer(address, request, b"{}")
    recorded = _fixture()["answers"]["flush_queue_queued"]
    assert answer.status == 200 and host is not None
    body = json.loads(answer.body(host))
    assert body["remaining"][0]["sender"] == "voicemail@sim00002.sim.test"
    assert body["deliveries"] == recorded["body"]["deliveries"]
    assert "recagent" not in json.dumps(body)
    assert b"X-Relayfleet-Mta: sendmail\r\n" in answer.headers
    assert sim.counts == {(address, "POST", "/v1/queue/flush"): 1}


def test_tokens_are_checked_per_host_but_health_is_open() -> None:
    sim = _simulator()
    one, two = host_address(0), host_address(1)
    status = parse_head(_get("/v1/status", host_token(SEED, two)))
    assert sim.answer(one, status, b"")[0].status == 401
    assert sim.answer(two, status, b"")[0].status == 200
    assert sim.answer(one, parse_head(_get("/v1/health")), b"")[0].status == 200


def test_scenario_dry_run_unknown_routes_and_hosts() -> None:
    sim = _simulator(scenario="empty")
    address = host_address(0)
    token = host_token(SEED, address)

    def status_of(method: str, path: str, body: bytes = b"") -> Any:
        """The answer's dry_run, or its status when it has none."""
        head = _head(f"{method} {path} HTTP/1.1", f"Authorization: Bearer {token}")
        answer, host = sim.answer(address, parse_head(head), body)
        return json.loads(answer.body(host)).get("dry_run", answer.status)

    assert json.loads(sim.answer(address, parse_head(_get("/v1/queue", token)), b"")[0]
                      .body(None)) == _fixture()["answers"]["queue_empty"]["body"]
    assert status_of("PUT", "/v1/smarthost", b'{"host": "x", "dry_run": true}') is True
    assert status_of("PUT", "/v1/smarthost", b'{"host": "x"}') is False
    assert status_of("POST", "/v1/diagnose", b"{}") == 501
    assert status_of("GET", "/v1/nowhere") == 404
    assert sim.answer("127.0.0.1", parse_head(_get("/v1/health")), b"")[0].status == 404


@pytest.fixture
def served() -> Iterator[int]:
    """The simulator's asyncio server for 3 hosts on a free port, in a thread."""
    loop = asyncio.new_event_loop()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = Server(_simulator(), idle_s=5)
    ready = threading.Event()

    async def run() -> None:
        listening = await server.listen(port)
        ready.set()
        async with listening:
            with contextlib.suppress(asyncio.CancelledError):  # (the fixture's stop)
                await listening.serve_forever()

    task = loop.create_task(run())
    thread = threading.Thread(target=loop.run_until_complete, args=(task,), daemon=True)
    thread.start()
    assert ready.wait(10)
    yield port
    loop.call_soon_threadsafe(task.cancel)
    thread.join(10)
    loop.close()


def _read_answer(stream: BinaryIO) -> tuple[bytes, bytes]:
    """One response from a buffered socket file: its head and body."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        line = stream.readline()
        assert line, "the connection closed"
        head += line
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    return head, stream.read(length)


def test_one_connection_carries_several_requests_and_counts_show_them(served: int) -> None:
    address = host_address(1)
    flush = _head("POST /v1/queue/flush HTTP/1.1", "Content-Length: 2",
                  f"Authorization: Bearer {host_token(SEED, address)}") + b"{}"
    with (socket.create_connection((address, served), timeout=10) as sock,
          sock.makefile("rb") as stream):
        # pipelined: three requests on one connection before any answer is read
        sock.sendall(_get("/v1/health") + flush + _get("/_sim/counts"))
        health, _ = _read_answer(stream)
        flushed, body = _read_answer(stream)
        _, counts = _read_answer(stream)
        assert health.startswith(b"HTTP/1.1 200") and b"Connection: keep-alive" in health
        assert flushed.startswith(b"HTTP/1.1 200")
        assert json.loads(body)["remaining"][0]["sender"] == "voicemail@sim00001.sim.test"
        assert json.loads(counts) == {"requests": [[address, "GET", "/v1/health", 1],
                                                   [address, "POST", "/v1/queue/flush", 1]],
                                      "connections": 1}
        sock.sendall(b"BROKEN\r\n\r\n")
        refused, _ = _read_answer(stream)
        assert refused.startswith(b"HTTP/1.1 400") and b"Connection: close" in refused
        assert stream.read(10) == b""


def test_render_sets_length_and_connection() -> None:
    answer = template(RECORDED, {"status": 200, "headers": {}, "body": {"a": 1}})
    assert render(answer, None, keep_alive=False) == (
        b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: close\r\n\r\n{\"a\":1}")


def test_a_head_over_the_limit_closes_the_connection(served: int) -> None:
    with (socket.create_connection((host_address(0), served), timeout=10) as sock,
          sock.makefile("rb") as stream):
        sock.sendall(b"GET /v1/health HTTP/1.1\r\nX-Long: " + b"a" * 20_000)
        assert stream.read(10) == b""
