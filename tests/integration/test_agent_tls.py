"""The agent over TLS by default, its certificate pinned by the controller.

Everything runs on loopback: the installer's certificate script, the agent's configuration
rules, a real ``relayfleet-agent serve`` over https, and a TLS server that records what
reaches it, to show that a refused certificate gets nothing — not the token, not a body.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import load_config
from controller.egress import EgressPolicy, HttpClient, TlsTrust, normalise_fingerprint
from controller.transports import AgentTransport, HostSpec
from shared.actions import ACTIONS
from shared.errors import HostKeyMismatch, HostUnreachable

REPO = Path(__file__).resolve().parents[2]
MAKE_CERT = REPO / "deploy" / "agent" / "make-cert.sh"
TOKEN = "agent-token-for-tls-tests-0123"


def make_cert(directory: Path, name: str = "pbx1.lab.test", *ips: str) -> tuple[Path, Path]:
    """The installer's key and self-signed certificate."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(["sh", str(MAKE_CERT), str(cert), str(key), name, *ips], check=True)
    return cert, key


def fingerprint_of(cert: Path) -> str:
    """What openssl says the certificate's SHA-256 fingerprint is."""
    out = subprocess.run(["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in",
                          str(cert)], capture_output=True, text=True, check=True).stdout
    return normalise_fingerprint(out.strip())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class TlsRecorder:
    """A TLS server on loopback: records the bytes each connection sent after the
    handshake, and answers ``{"hostname": "tls"}`` to a complete request."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.received: list[bytes] = []
        self.handshakes = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(raw,), daemon=True).start()

    def _one(self, raw: socket.socket) -> None:
        raw.settimeout(3)
        data = b""
        try:
            with self.context.wrap_socket(raw, server_side=True) as conn:
                self.handshakes += 1
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                if b"\r\n\r\n" in data:
                    body = b'{"hostname": "tls"}'
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                                 % (len(body), body))
        except (OSError, ssl.SSLError):
            pass
        self.received.append(data)

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def loopback_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAYFLEET_EGRESS_ALLOW", "loopback")


@pytest.fixture
def recorder(tmp_path: Path) -> Iterator[tuple[TlsRecorder, Path]]:
    cert, key = make_cert(tmp_path, "pbx1.lab.test", "127.0.0.1")
    server = TlsRecorder(cert, key)
    yield server, cert
    server.close()


def status(spec: HostSpec) -> Any:
    with AgentTransport(spec) as transport:
        return transport.run("collect_status", ACTIONS["collect_status"].parse({}),
                             dry_run=False, timeout_s=10)


def spec(port: int, **kwargs: Any) -> HostSpec:
    return HostSpec(1, "pbx1", "127.0.0.1", "agent", agent_url=f"https://127.0.0.1:{port}",
                    agent_token=TOKEN, **kwargs)


def wait_received(server: TlsRecorder, count: int) -> None:
    deadline = time.monotonic() + 5
    while len(server.received) < count and time.monotonic() < deadline:
        time.sleep(0.05)


# -- the installer's certificate and the agent's configuration -------------------------

def test_installer_makes_a_private_key_and_a_certificate(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path, "pbx1.lab.test", "10.1.0.5")
    assert os.stat(key).st_mode & 0o777 == 0o600
    text = subprocess.run(["openssl", "x509", "-noout", "-text", "-in", str(cert)],
                          capture_output=True, text=True, check=True).stdout
    assert "DNS:pbx1.lab.test" in text and "IP Address:10.1.0.5" in text
    before = cert.read_bytes()
    make_cert(tmp_path, "pbx1.lab.test", "10.1.0.5")  # a second run keeps the pair
    assert cert.read_bytes() == before
    install = (REPO / "deploy" / "agent" / "install.sh").read_text()
    assert "make-cert.sh" in install and 'tls_cert = "/etc/relayfleet/agent.crt"' in install


def write_config(tmp_path: Path, text: str) -> Path:
    token_file = tmp_path / "agent.token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    config = tmp_path / "agent.toml"
    config.write_text(f'token_file = "{token_file}"\n{text}')
    return config


def agent_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True,
                          text=True, check=False, timeout=30, cwd=REPO)


def test_check_prints_the_certificate_fingerprint(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    config = write_config(tmp_path, f'tls_cert = "{cert}"\ntls_key = "{key}"\n')
    checked = agent_cli("check", "--config", str(config))
    assert checked.returncode == 0, checked.stderr
    expected = fingerprint_of(cert)
    assert json.loads(checked.stdout)["tls_fingerprint"] == f"sha256:{expected}"
    assert f"certificate fingerprint: sha256:{expected}" in checked.stderr


def test_the_agent_will_not_serve_plain_http_off_loopback(tmp_path: Path) -> None:
    config = write_config(tmp_path, 'listen = "0.0.0.0:8587"\n')
    served = agent_cli("serve", "--config", str(config))
    assert served.returncode == 2 and "in clear" in served.stderr
    assert "serve will refuse" in agent_cli("check", "--config", str(config)).stderr
    assert load_config(config).refusal_to_serve() is not None
    for text in ('listen = "127.0.0.1:8587"\n', 'listen = "[::1]:8587"\n',
                 'listen = "0.0.0.0:8587"\ninsecure_http = true\n'):
        assert load_config(write_config(tmp_path, text)).refusal_to_serve() is None, text


def test_a_real_agent_over_https_is_accepted_by_its_pinned_fingerprint(
        tmp_path: Path, loopback_allowed: None) -> None:
    cert, key = make_cert(tmp_path)
    port = free_port()
    config = write_config(tmp_path, f'listen = "127.0.0.1:{port}"\ntls_cert = "{cert}"\n'
                                    f'tls_key = "{key}"\n')
    agent = subprocess.Popen([sys.executable, "-m", "agent.cli", "serve", "--config",
                              str(config)], cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        client = HttpClient(EgressPolicy.from_environ())
        pinned = TlsTrust(fingerprint=fingerprint_of(cert))
        deadline = time.monotonic() + 20
        while True:
            try:
                answer = client.request("GET", f"https://127.0.0.1:{port}/v1/health",
                                        deadline_s=5, max_body=4096, tls=pinned)
                break
            except Exception:
                if time.monotonic() > deadline or agent.poll() is not None:
                    raise
                time.sleep(0.2)
        assert answer.status == 200 and json.loads(answer.body)["status"] == "ok"
        # The system's CAs do not know a self-signed certificate.
        with pytest.raises(Exception, match="not trusted"):
            client.request("GET", f"https://127.0.0.1:{port}/v1/health", deadline_s=5,
                           max_body=4096)
    finally:
        agent.terminate()
        agent.wait(timeout=10)


# -- the controller's pin ----------------------------------------------------------------

def test_the_pinned_certificate_is_accepted(recorder: tuple[TlsRecorder, Path],
                                            loopback_allowed: None) -> None:
    server, cert = recorder
    # as `relayfleet-agent check` prints it (the inventory stores bare hex)
    result = status(spec(server.port, agent_tls_fingerprint=f"sha256:{fingerprint_of(cert)}"))
    assert result.data["hostname"] == "tls"
    wait_received(server, 1)
    assert TOKEN.encode() in server.received[0]


def test_another_certificate_is_refused_with_both_fingerprints_and_nothing_sent(
        recorder: tuple[TlsRecorder, Path], tmp_path: Path, loopback_allowed: None) -> None:
    server, cert = recorder
    other = fingerprint_of(make_cert(tmp_path, "other.lab.test")[0])
    with pytest.raises(HostKeyMismatch) as caught:
        status(spec(server.port, agent_tls_fingerprint=other))
    message = caught.value.message
    assert f"sha256:{fingerprint_of(cert)}" in message and f"sha256:{other}" in message
    assert "nothing was sent" in message
    wait_received(server, 1)
    assert server.handshakes == 1 and server.received == [b""]


def test_ca_cert_still_works_and_an_unknown_certificate_gets_nothing(
        recorder: tuple[TlsRecorder, Path], loopback_allowed: None) -> None:
    server, cert = recorder
    assert status(spec(server.port, agent_ca_cert=cert.read_text())).data["hostname"] == "tls"
    with pytest.raises(HostUnreachable, match="not trusted") as caught:
        status(spec(server.port))
    assert "tls_fingerprint" in caught.value.message
    wait_received(server, 2)
    assert server.received[1] == b""
