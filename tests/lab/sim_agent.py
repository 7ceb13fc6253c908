"""A simulated fleet: thousands of relayfleet agents answered by one asyncio process from
recorded real answers.

:mod:`tests.lab.record_agent` recorded what a real agent on a real sendmail host answers to
each route the controller calls (``tests/fixtures/agent/answers.json``). This process
serves those answers for ``N`` simulated hosts, each on its own address in 127.0.0.0/8 (all
of it is loopback on Linux): the host is the address a connection was made to, and every
answer carries that host's own name, FQDN and address in place of the recorded host's.
Each host has its own bearer token (derived from a seed given on stdin, see
:func:`host_token`); connections are HTTP/1.1 keep-alive; an operation may be given a
delay that models the time a real host takes. Requests are counted per host, method and
path; ``GET /_sim/counts`` (any address) returns the counts and the connections made.

    python -m tests.lab.sim_agent --port PORT [--scenario queued|empty]
        [--delay flush_queue=0.05] [--tls-cert C --tls-key K] < '{"seed": "...", "hosts": N}'
    # prints "READY" when it listens, serves until SIGTERM

It is far lighter than :mod:`tests.lab.agent_farm` (the real agent app per host): no Flask,
no executor, no threads; a request costs a dictionary look-up and a join of byte strings.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import ipaddress
import json
import os
import re
import resource
import signal
import ssl
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

from shared.actions import ACTIONS

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "agent" / "answers.json"
COUNTS_PATH = "/_sim/counts"
#: the simulated hosts' DNS domain
DOMAIN = "sim.test"
#: hosts per /24 (last octet 1..250) and per /16: addresses never end in .0 or .255
_PER_24, _PER_16 = 250, 250 * 250
#: the largest request head and body read (the agent's own body cap is 64 KiB)
MAX_HEAD, MAX_BODY = 16 * 1024, 64 * 1024

#: which recorded answer each operation gets, per scenario: ``queued`` hosts have a
#: deferred message that a flush tries again (it stays deferred), ``empty`` hosts have none
SCENARIOS: Mapping[str, Mapping[str, str]] = {
    "queued": {"flush_queue": "flush_queue_queued", "collect_status": "status_queued",
               "queue_list": "queue_queued"},
    "empty": {"flush_queue": "flush_queue_empty", "collect_status": "status_empty",
              "queue_list": "queue_empty"},
}
#: the answers every scenario shares (set_smarthost's dry run is chosen by its body)
COMMON_ANSWERS: Mapping[str, str] = {
    "health": "health", "set_smarthost": "set_smarthost", "remove_smarthost":
    "remove_smarthost", "read_smarthost": "read_smarthost", "read_log": "read_log"}
#: (method, path) -> operation: the agent's routes as the action catalogue names them
ROUTES: Mapping[tuple[str, str], str] = {
    ("GET", "/v1/health"): "health",
    **{(action.route.method, action.route.path): name for name, action in ACTIONS.items()}}
OPEN_OPERATIONS = frozenset({"health"})


class BadRequest(ValueError):
    """A request the simulator cannot parse (answered 400, then the connection closes)."""


def host_address(number: int) -> str:
    """Simulated host ``number``'s address (0 -> 127.10.1.1, 249 -> 127.10.1.250, ...)."""
    return (f"127.{10 + number // _PER_16}.{1 + number // _PER_24 % _PER_24}."
            f"{1 + number % _PER_24}")


def host_name(number: int) -> str:
    """Simulated host ``number``'s short name (``sim00042``)."""
    return f"sim{number:05}"


def host_token(seed: str, address: str) -> str:
    """The bearer token of the host at ``address``: HMAC-SHA256 of the address under the
    fleet's seed, so that the simulator and whoever enrols the hosts agree without a list."""
    digest = hmac.new(seed.encode(), address.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


@dataclass(frozen=True)
class Host:
    """One simulated host: the values put into its answers and the token it expects."""

    name: bytes
    fqdn: bytes
    address: bytes
    token: bytes


def fleet(seed: str, count: int) -> dict[str, Host]:
    """The simulated hosts by address."""
    hosts = {}
    for number in range(count):
        address, name = host_address(number), host_name(number)
        hosts[address] = Host(name.encode(), f"{name}.{DOMAIN}".encode(), address.encode(),
                              host_token(seed, address).encode())
    return hosts


@dataclass(frozen=True)
class Answer:
    """A recorded answer as a template: status, headers, and the body split where the
    recorded host's name, FQDN or address stood (0, 1, 2: :class:`Host`'s fields)."""

    status: int
    headers: bytes
    parts: tuple[bytes | int, ...]

    def body(self, host: Host | None) -> bytes:
        """The body as ``host`` answers it."""
        if host is None:
            return b"".join(p for p in self.parts if isinstance(p, bytes))
        values = (host.name, host.fqdn, host.address)
        return b"".join(values[p] if isinstance(p, int) else p for p in self.parts)


def _substitution(recorded: Mapping[str, str]) -> re.Pattern[str]:
    # The FQDN before the short name; none inside a longer name or address.
    names = [recorded["name"], recorded["fqdn"], recorded["address"]]
    alternatives = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    return re.compile(rf"(?<![A-Za-z0-9.-])({alternatives})(?![A-Za-z0-9-])")


def template(recorded_host: Mapping[str, str], answer: Mapping[str, Any]) -> Answer:
    """One fixture answer as an :class:`Answer` template."""
    text = json.dumps(answer["body"], separators=(",", ":"))
    pattern = _substitution(recorded_host)
    index = {recorded_host["name"]: 0, recorded_host["fqdn"]: 1, recorded_host["address"]: 2}
    parts: list[bytes | int] = []
    for number, piece in enumerate(pattern.split(text)):
        # re.split with one group: literal text at even positions, matches at odd ones
        parts.append(index[piece] if number % 2 else piece.encode())
    headers = b"".join(f"{key}: {value}\r\n".encode()
                       for key, value in sorted(answer["headers"].items())
                       if key.lower() != "content-length")
    return Answer(int(answer["status"]), headers, tuple(parts))


def _error(status: int, message: str) -> Answer:
    """An answer in the agent's error envelope."""
    body = json.dumps({"code": status, "message": message,
                       "status": HTTPStatus(status).phrase}).encode()
    return Answer(status, b"Content-Type: application/json\r\n", (body,))


@dataclass(frozen=True)
class Request:
    """The parts of a request head the simulator uses."""

    method: str
    path: str
    version: str
    headers: Mapping[str, str]

    @property
    def keep_alive(self) -> bool:
        """Whether the connection stays open after the answer (HTTP/1.1 unless ``close``;
        HTTP/1.0 only with ``keep-alive``)."""
        connection = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.1":
            return "close" not in connection
        return "keep-alive" in connection

    @property
    def content_length(self) -> int:
        """The body's length (chunked bodies are refused: the controller never sends one)."""
        if "transfer-encoding" in self.headers:
            raise BadRequest("chunked request bodies are not supported")
        raw = self.headers.get("content-length", "0").strip()
        if not raw.isdigit() or int(raw) > MAX_BODY:
            raise BadRequest(f"bad Content-Length {raw[:20]!r}")
        return int(raw)


def parse_head(head: bytes) -> Request:
    """Parse a request line and headers (``head`` ends with the blank line)."""
    try:
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ")
    except ValueError:
        raise BadRequest("malformed request line") from None
    if version not in ("HTTP/1.0", "HTTP/1.1") or not method.isalpha():
        raise BadRequest("malformed request line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise BadRequest("malformed header line")
        headers[name.lower()] = value.strip()
    return Request(method, target.split("?", 1)[0], version, headers)


@dataclass
class Simulator:
    """Answers requests for the simulated hosts (the HTTP-independent part)."""

    hosts: Mapping[str, Host]
    answers: Mapping[str, Answer]
    scenario: Mapping[str, str]
    delays: Mapping[str, float] = field(default_factory=dict)
    counts: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    connections: int = 0

    @classmethod
    def from_fixture(cls, fixture: Mapping[str, Any], hosts: Mapping[str, Host],
                     scenario: str = "queued", delays: Mapping[str, float] | None = None
                     ) -> Simulator:
        """A simulator serving ``fixture``'s answers (see :mod:`tests.lab.record_agent`)."""
        recorded = fixture["recorded_host"]
        answers = {name: template(recorded, answer)
                   for name, answer in fixture["answers"].items()}
        return cls(hosts, answers, {**COMMON_ANSWERS, **SCENARIOS[scenario]},
                   dict(delays or {}))

    def operation(self, request: Request) -> str | None:
        """The operation a request asks for (None: no such route)."""
        return ROUTES.get((request.method, request.path))

    def answer(self, address: str, request: Request, body: bytes) -> tuple[Answer, Host | None]:
        """The answer of the host at ``address`` to ``request``, and the host it is for."""
        if request.path == COUNTS_PATH:
            return Answer(200, b"Content-Type: application/json\r\n",
                          (self.counts_json(),)), None
        host = self.hosts.get(address)
        if host is None:
            return _error(404, f"no simulated host at {address}"), None
        self.counts[(address, request.method, request.path)] += 1
        operation = self.operation(request)
        if operation is None:
            return _error(404, f"no route {request.method} {request.path}"), host
        if operation not in OPEN_OPERATIONS and not _authorised(request, host):
            return self.answers["unauthorized"], host
        name = self.scenario.get(operation)
        if name == "set_smarthost" and _dry_run(body):
            name = "set_smarthost_dry_run"
        if name is None or name not in self.answers:
            return _error(501, f"no recorded answer for {operation}"), host
        return self.answers[name], host

    def counts_json(self) -> bytes:
        """``GET /_sim/counts``: ``{"requests": [[address, method, path, count], ...],
        "connections": N}``."""
        return json.dumps({"requests": [[*key, count] for key, count in self.counts.items()],
                           "connections": self.connections}).encode()


def _authorised(request: Request, host: Host) -> bool:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(),
                                                              host.token)


def _dry_run(body: bytes) -> bool:
    try:
        doc = json.loads(body or b"{}")
    except ValueError:
        return False
    return isinstance(doc, dict) and doc.get("dry_run") is True


def render(answer: Answer, host: Host | None, keep_alive: bool) -> bytes:
    """The whole HTTP/1.1 response."""
    body = answer.body(host)
    phrase = HTTPStatus(answer.status).phrase
    return (f"HTTP/1.1 {answer.status} {phrase}\r\n".encode() + answer.headers
            + f"Content-Length: {len(body)}\r\nConnection: "
              f"{'keep-alive' if keep_alive else 'close'}\r\n\r\n".encode() + body)


class Server:
    """The simulator over asyncio streams."""

    def __init__(self, simulator: Simulator, idle_s: float) -> None:
        self.simulator = simulator
        self.idle_s = idle_s

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection: requests one after the other until close or idle."""
        peer = writer.get_extra_info("peername")
        address = writer.get_extra_info("sockname")[0]
        try:
            if not ipaddress.ip_address(peer[0]).is_loopback:
                return  # (a simulated fleet serves loopback clients only)
            self.simulator.connections += 1
            while await self._one(reader, writer, address):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError, ssl.SSLError,
                asyncio.LimitOverrunError):
            pass  # the client went away, stayed idle or sent a head over MAX_HEAD: close
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   address: str) -> bool:
        async with asyncio.timeout(self.idle_s):
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    raise
                return False  # closed between requests
        try:
            request = parse_head(head)
            body = await reader.readexactly(request.content_length)
        except BadRequest as exc:
            writer.write(render(_error(400, str(exc)), None, keep_alive=False))
            await writer.drain()
            return False
        answer, host = self.simulator.answer(address, request, body)
        operation = self.simulator.operation(request)
        delay = self.simulator.delays.get(operation or "", 0.0)
        if delay and host is not None and answer.status == 200:
            await asyncio.sleep(delay)
        writer.write(render(answer, host, request.keep_alive))
        await writer.drain()
        return request.keep_alive

    async def listen(self, port: int, tls: ssl.SSLContext | None = None) -> asyncio.Server:
        """Listen on every loopback address (the wildcard)."""
        # One socket on the wildcard catches every address of 127/8; handle() refuses
        # anything but loopback peers. A long listen queue: thousands of hosts connect at
        # once, and a dropped connection attempt reads as an unreachable host.
        return await asyncio.start_server(self.handle, "0.0.0.0", port, ssl=tls,
                                          backlog=4096, limit=MAX_HEAD)

    async def serve(self, port: int, tls: ssl.SSLContext | None) -> None:
        """Listen and answer until cancelled."""
        server = await self.listen(port, tls)
        async with server:
            print("READY", flush=True)
            await server.serve_forever()


def _delays(items: Sequence[str]) -> dict[str, float]:
    delays = {}
    for item in items:
        operation, _, seconds = item.partition("=")
        if operation not in ROUTES.values():
            raise SystemExit(f"--delay: unknown operation {operation!r}")
        delays[operation] = float(seconds)
    return delays


def main() -> None:
    """Serve the fleet described on stdin until SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m tests.lab.sim_agent")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--fixture", type=Path, default=FIXTURE)
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="queued")
    parser.add_argument("--delay", action="append", default=[], metavar="OPERATION=SECONDS",
                        help="answer OPERATION (flush_queue, collect_status...) this late")
    parser.add_argument("--idle-s", type=float, default=30.0,
                        help="close a keep-alive connection idle this long")
    parser.add_argument("--tls-cert", type=Path)
    parser.add_argument("--tls-key", type=Path)
    args = parser.parse_args()
    spec = json.load(sys.stdin)  # the seed never travels in argv
    simulator = Simulator.from_fixture(json.loads(args.fixture.read_text()),
                                       fleet(str(spec["seed"]), int(spec["hosts"])),
                                       args.scenario, _delays(args.delay))
    tls = None
    if args.tls_cert:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(args.tls_cert, args.tls_key)
    # one descriptor per kept-alive connection: thousands
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    def stop(_signum: int, _frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    asyncio.run(Server(simulator, args.idle_s).serve(args.port, tls))


# -- for tests and benchmarks: run a simulated fleet, enrol it ----------------------------------


@dataclass
class SimFleet:
    """A running simulator (see :func:`sim_fleet`)."""

    proc: subprocess.Popen[bytes]
    port: int
    seed: str
    hosts: int
    scheme: str

    def url(self, number: int) -> str:
        """Host ``number``'s agent URL."""
        return f"{self.scheme}://{host_address(number)}:{self.port}"

    def counts(self) -> dict[str, Any]:
        """``GET /_sim/counts`` (over plain HTTP or TLS, unverified: loopback)."""
        import http.client

        connection: http.client.HTTPConnection
        if self.scheme == "https":
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            connection = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=60,
                                                     context=context)
        else:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            connection.request("GET", COUNTS_PATH)
            return dict(json.loads(connection.getresponse().read()))
        finally:
            connection.close()

    def import_row(self, number: int, site: int | str, fingerprint: str | None = None
                   ) -> dict[str, Any]:
        """Host ``number``'s row for ``POST /v1/hosts/import`` (or body for POST /v1/hosts)."""
        address = host_address(number)
        agent: dict[str, Any] = {"url": self.url(number),
                                 "token": host_token(self.seed, address)}
        if fingerprint:
            agent["tls_fingerprint"] = fingerprint
        else:
            agent["insecure_http"] = True
        return {"name": f"{host_name(number)}.{DOMAIN}", "site_id": site, "address": address,
                "transport": "agent", "mta": {"kind": "sendmail", "flavour": "debian",
                                              "overrides": {}}, "agent": agent}


def _with_repo_path() -> dict[str, str]:
    """This environment with the checkout first on PYTHONPATH (``-m tests.lab...`` from
    any working directory)."""
    repo = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{repo}:{path}" if path else repo}


@contextlib.contextmanager
def sim_fleet(hosts: int, log: Path, *, port: int, seed: str, scenario: str = "queued",
              delays: Mapping[str, float] | None = None,
              tls: tuple[Path, Path] | None = None) -> Iterator[SimFleet]:
    """``python -m tests.lab.sim_agent`` serving ``hosts`` simulated hosts on ``port``."""
    argv = [sys.executable, "-m", "tests.lab.sim_agent", "--port", str(port),
            "--scenario", scenario]
    argv += [f"--delay={op}={seconds}" for op, seconds in (delays or {}).items()]
    if tls:
        argv += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
    from tests.lab.services import ready_process

    with ready_process(argv, {"seed": seed, "hosts": hosts}, log, "the simulator",
                       env=_with_repo_path()) as proc:
        yield SimFleet(proc, port, seed, hosts, "https" if tls else "http")


if __name__ == "__main__":
    main()
