"""The agent over HTTP(S), running inside lab hosts against real sendmail (over TLS with
the installer's self-signed certificate unless a test is about something else)."""

from __future__ import annotations

import json
import secrets
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from agent.config import certificate_fingerprint
from tests.lab.lab import REPO_ROOT, SINK_PORT, LabHost

pytestmark = [pytest.mark.lab, pytest.mark.slow]

SMARTHOST = {"host": "smarthost.lab.test", "port": SINK_PORT, "mx": False}


class Agent:
    """An agent in a lab host, with an authenticated client."""

    def __init__(self, host: LabHost) -> None:
        self.host = host
        self.token = secrets.token_urlsafe(32)
        self.url = host.start_agent(self.token, tls=True)
        # The self-signed certificate is its own CA (the lab address is in its SAN).
        self.verify = str(host.root / "agent.crt")
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {self.token}"

    def call(self, method: str, path: str, **kw: Any) -> requests.Response:
        # verify per request: REQUESTS_CA_BUNDLE in the environment beats session.verify
        return self.session.request(method, self.url + path, timeout=240,
                                    verify=self.verify, **kw)


@pytest.fixture
def agent(host: LabHost) -> Agent:
    return Agent(host)


@pytest.fixture
def debian_agent(make_host: Callable[..., LabHost]) -> Iterator[Agent]:
    yield Agent(make_host("debian"))


def test_seed_story_over_http(agent: Agent) -> None:
    host = agent.host
    assert requests.get(agent.url + "/v1/health", timeout=10,
                        verify=agent.verify).json()["status"] == "ok"
    host.send_mail(["me@ourtest.com"])
    host.wait_deferred()
    queue = agent.call("GET", "/v1/queue").json()
    assert queue["count"] == 1 and queue["messages"][0]["recipients"] == ["me@ourtest.com"]
    assert "Connection refused" in queue["messages"][0]["reason"]

    put = agent.call("PUT", "/v1/smarthost", json=SMARTHOST)
    assert put.status_code == 200, put.text
    body = put.json()
    assert body["ok"] and body["changed"] and not body["rolled_back"]
    assert body["smarthost"]["port"] == SINK_PORT

    flush = agent.call("POST", "/v1/queue/flush", json={})
    assert flush.status_code == 200 and flush.json()["ok"], flush.text
    host.wait_for(lambda: any("<me@ourtest.com>" in m["rcpts"]
                              for m in host.lab.smarthost.messages()), 30, "delivery")
    host.wait_for(lambda: agent.call("GET", "/v1/queue").json()["count"] == 0, 30, "empty queue")

    read = agent.call("GET", "/v1/smarthost").json()
    assert read == {"smarthost": {"host": "smarthost.lab.test", "port": SINK_PORT, "mx": False,
                                  "mailer": "relay", "auth": None,
                                  "tls": {"mode": "may", "ca_file": None}, "masquerade": None},
                    "config_in_sync": True}
    status = agent.call("GET", "/v1/status").json()
    assert status["config_in_sync"] is True and status["mta"]["running"] is True
    assert status["fqdn"] == host.fqdn and status["queue"]["count"] == 0
    assert status["mta"]["version"].startswith("8.")

    log = agent.call("GET", "/v1/log", params={"lines": 500}).json()
    stats = [r["fields"]["stat"] for r in log["records"] if r["kind"] == "delivery"]
    assert "Deferred: Connection refused by mx.ourtest.com." in stats
    assert any(s.startswith("Sent") for s in stats)

    again = agent.call("PUT", "/v1/smarthost", json=SMARTHOST).json()
    assert again["changed"] is False and again["ok"] is True


def test_dry_run_rollback_and_auth_over_http(debian_agent: Agent) -> None:
    agent, host = debian_agent, debian_agent.host
    before = host.file_snapshot("sendmail.mc", "sendmail.cf")
    dry = agent.call("PUT", "/v1/smarthost", json={**SMARTHOST, "dry_run": True}).json()
    assert dry["changed"] and dry["dry_run"] and "+define(`SMART_HOST'" in dry["diff"]
    assert host.file_snapshot("sendmail.mc", "sendmail.cf") == before

    password = "Agent-S3cret!x"
    put = agent.call("PUT", "/v1/smarthost",
                     json={**SMARTHOST, "auth": {"username": "pbx", "password": password}})
    assert put.status_code == 200 and put.json()["ok"], put.text
    assert (host.mail_dir / "authinfo").stat().st_mode & 0o777 == 0o600
    read = agent.call("GET", "/v1/smarthost")
    status = agent.call("GET", "/v1/status")
    removed = agent.call("DELETE", "/v1/smarthost")
    assert removed.status_code == 200 and removed.json()["smarthost"] is None
    texts = [put.text, read.text, status.text, removed.text,
             (host.root / "agent.log").read_text(), host.read_maillog()]
    assert all(password not in t for t in texts)
    assert read.json()["smarthost"]["auth"] == {"username": "pbx"}


def test_failing_restart_rolls_back_over_http(make_host: Callable[..., LabHost]) -> None:
    host = make_host("centos")
    token = secrets.token_urlsafe(32)
    # A restart that fails with the new configuration and works with the old one.
    restart = ["sh", "-c", "if grep -q '^DS.' /etc/mail/sendmail.cf; then exit 1; fi; "
               "exec service sendmail restart"]
    url = host.start_agent(token, mta_config=f"restart = {json.dumps(restart)}\n")
    before = host.file_snapshot("sendmail.mc", "sendmail.cf")
    r = requests.put(url + "/v1/smarthost", json=SMARTHOST, timeout=240,
                     headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ok"] is False and body["rolled_back"] is True and body["smarthost"] is None
    assert host.file_snapshot("sendmail.mc", "sendmail.cf") == before


def test_auth_required(debian_agent: Agent) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"},
                    {"Authorization": f"Basic {debian_agent.token}"}):
        for method, path in (("GET", "/v1/status"), ("PUT", "/v1/smarthost"),
                             ("GET", "/openapi.json")):
            r = requests.request(method, debian_agent.url + path, headers=headers, timeout=10,
                                 json=SMARTHOST, verify=debian_agent.verify)
            assert r.status_code == 401, (method, path, r.text)
            body = r.json()
            assert body["code"] == 401 and body["status"] == "Unauthorized"
            assert "bearer token" in body["message"]


@pytest.mark.parametrize("body, field", [
    ({"host": "x')esyscmd(`touch /tmp/relayfleet-pwned')dnl(`"}, "host"),
    ({"host": "a b"}, "host"),
    ({"host": "smarthost.lab.test", "port": 70000}, "port"),
    ({"host": "smarthost.lab.test", "port": "25"}, "port"),
    ({"host": "smarthost.lab.test", "surprise": 1}, "surprise"),
    ({"host": "smarthost.lab.test", "auth": {"username": "u", "password": "a\nb"}},
     "auth.password"),
    ({}, "host"),
])
def test_bad_input_is_422_and_changes_nothing(debian_agent: Agent, body: dict[str, Any],
                                              field: str) -> None:
    before = debian_agent.host.file_snapshot("sendmail.mc", "sendmail.cf")
    r = debian_agent.call("PUT", "/v1/smarthost", json=body)
    assert r.status_code == 422, r.text
    envelope = r.json()
    assert envelope["code"] == 422 and envelope["status"] == "Unprocessable Entity"
    assert field in envelope["errors"] and envelope["message"]
    assert debian_agent.host.file_snapshot("sendmail.mc", "sendmail.cf") == before


def test_malformed_json_is_400(debian_agent: Agent) -> None:
    r = debian_agent.call("PUT", "/v1/smarthost", data="{not json",
                          headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["code"] == 400
    r = debian_agent.call("GET", "/v1/log", params={"lines": "many"})
    assert r.status_code == 422 and "lines" in r.json()["errors"]


def test_concurrent_changes_get_409(debian_agent: Agent) -> None:
    results: list[requests.Response] = []
    barrier = threading.Barrier(2)

    def change(port: int) -> None:
        barrier.wait()
        results.append(debian_agent.call("PUT", "/v1/smarthost",
                                         json={**SMARTHOST, "port": port}))

    threads = [threading.Thread(target=change, args=(p,)) for p in (2525, 2526)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(r.status_code for r in results)
    assert codes == [200, 409], [r.text for r in results]
    conflict = next(r for r in results if r.status_code == 409).json()
    assert conflict["code"] == 409 and "another configuration change" in conflict["message"]
    winner = next(r for r in results if r.status_code == 200).json()
    cf = (debian_agent.host.mail_dir / "sendmail.cf").read_text()
    assert f"A=TCP $h {winner['smarthost']['port']}" in cf


def test_openapi_document(debian_agent: Agent) -> None:
    doc = debian_agent.call("GET", "/openapi.json").json()
    paths = doc["paths"]
    for path in ("/v1/health", "/v1/status", "/v1/smarthost", "/v1/queue", "/v1/queue/flush",
                 "/v1/log", "/v1/diagnose"):
        assert path in paths
    assert set(paths["/v1/smarthost"]) >= {"get", "put", "delete"}
    schema = doc["components"]["schemas"]["SmarthostRequest"]
    assert schema["additionalProperties"] is False
    assert json.dumps(doc).count("password") >= 1


def _self_signed(tmp_path: Path, address: str) -> tuple[Path, Path]:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, address)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(address))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "agent.crt", tmp_path / "agent.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def test_tls(make_host: Callable[..., LabHost], tmp_path: Path) -> None:
    host = make_host("centos")
    cert, key = _self_signed(tmp_path, host.address)
    token = secrets.token_urlsafe(32)
    url = host.start_agent(token, tls=(cert, key))
    assert url.startswith("https://")
    answer = requests.get(url + "/v1/smarthost", headers={"Authorization": f"Bearer {token}"},
                          verify=str(cert), timeout=30)
    assert answer.status_code == 200 and answer.json()["smarthost"] is None
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(url + "/v1/health", timeout=10)  # not trusted without the pinned cert
    # The certificate served is the one `relayfleet-agent check` fingerprints.
    served = ssl.get_server_certificate((host.address, int(url.rsplit(":", 1)[1])))
    assert certificate_fingerprint(served) == host.agent_fingerprint
    checked = subprocess.run([sys.executable, "-m", "agent.cli", "check", "--config",
                              str(host.root / "agent.toml")], cwd=REPO_ROOT,
                             capture_output=True, text=True, check=True)
    assert f"certificate fingerprint: {host.agent_fingerprint}" in checked.stderr
