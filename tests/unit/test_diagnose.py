"""Diagnose checks: SPF evaluation (fake DNS), /etc/hosts rules, and real-socket SMTP probes."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.diagnose import (
    check_mta_running,
    check_smtp,
    check_spf,
    hosts_file_problems,
    spf_covers,
    validate_diagnose_input,
)
from shared.errors import ValidationError
from shared.executor import LocalExecutor


class FakeDns:
    """In-memory DNS for SPF logic tests (pure logic: no sockets involved)."""

    def __init__(self, txt: dict[str, list[str]], a: dict[str, list[str]] | None = None,
                 mx: dict[str, list[str]] | None = None) -> None:
        self._txt, self._a, self._mx = txt, a or {}, mx or {}

    def txt(self, name: str) -> list[str]:
        return self._txt.get(name, [])

    def a(self, name: str) -> list[str]:
        return self._a.get(name, [])

    def aaaa(self, name: str) -> list[str]:
        return [x for x in self._a.get(name, []) if ":" in x]

    def mx(self, name: str) -> list[str]:
        return self._mx.get(name, [])


@pytest.mark.parametrize("record, ip, result", [
    ("v=spf1 ip4:192.0.2.0/24 -all", "192.0.2.10", "pass"),
    ("v=spf1 ip4:192.0.2.0/24 -all", "198.51.100.1", "fail"),
    ("v=spf1 ip4:192.0.2.10 ~all", "192.0.2.11", "softfail"),
    ("v=spf1 ip6:2001:db8::/32 -all", "2001:db8::5", "pass"),
    ("v=spf1 a -all", "203.0.113.5", "pass"),
    ("v=spf1 a:other.example/24 -all", "203.0.113.77", "pass"),
    ("v=spf1 mx -all", "203.0.113.9", "pass"),
    ("v=spf1 include:_spf.provider.example -all", "198.51.100.20", "pass"),
    ("v=spf1 redirect=_spf.provider.example", "198.51.100.20", "pass"),
    ("v=spf1 ?all", "192.0.2.1", "neutral"),
    ("v=spf1 ip4:192.0.2.0/24", "198.51.100.1", "neutral"),
    ("v=spf1 bogus:x -all", "192.0.2.1", "permerror"),
    ("v=spf1 include:nospf.example -all", "192.0.2.1", "permerror"),
])
def test_spf(record: str, ip: str, result: str) -> None:
    dns = FakeDns(
        txt={"ourtest.com": [record, "google-site-verification=x"],
             "_spf.provider.example": ["v=spf1 ip4:198.51.100.0/24 -all"]},
        a={"ourtest.com": ["203.0.113.5"], "other.example": ["203.0.113.1"],
           "mx1.ourtest.com": ["203.0.113.9"]},
        mx={"ourtest.com": ["mx1.ourtest.com"]})
    assert spf_covers("ourtest.com", ip, dns).result == result


def test_spf_none_and_duplicate_records_and_lookup_limit() -> None:
    assert spf_covers("ourtest.com", "192.0.2.1", FakeDns({})).result == "none"
    two = FakeDns({"ourtest.com": ["v=spf1 -all", "v=spf1 +all"]})
    assert spf_covers("ourtest.com", "192.0.2.1", two).result == "permerror"
    chain = {f"d{i}.example": [f"v=spf1 include:d{i + 1}.example -all"] for i in range(12)}
    chain["d12.example"] = ["v=spf1 +all"]
    assert spf_covers("d0.example", "192.0.2.1", FakeDns(chain)).result == "permerror"


def test_check_spf_says_what_to_fix() -> None:
    dns = FakeDns({"ourtest.com": ["v=spf1 ip4:192.0.2.0/24 -all"]})
    ok = check_spf("ourtest.com", "192.0.2.7", dns)
    assert ok.ok is True and "authorises" in ok.detail
    bad = check_spf("ourtest.com", "198.51.100.7", dns)
    assert bad.ok is False and "add ip4:198.51.100.7" in bad.detail
    assert check_spf(None, None, dns).ok is None


SEED_HOSTS = """192.168.10.10 sipserver1.ourtest.com sipserver1
127.0.0.1   localhost localhost.localdomain localhost4 localhost4.localdomain4 sipserver1
127.0.1.1   sipserver1
::1         localhost localhost.localdomain localhost6 localhost6.localdomain6
"""


def test_seed_hosts_file_is_fine() -> None:
    assert hosts_file_problems(SEED_HOSTS, "sipserver1", "sipserver1.ourtest.com") == []


@pytest.mark.parametrize("text, fragment", [
    ("127.0.0.1 localhost\n", "has no line for"),
    ("127.0.0.1 sipserver1.ourtest.com sipserver1\n", "loopback"),
    ("192.168.10.10 sipserver1 sipserver1.ourtest.com\n", "put sipserver1.ourtest.com first"),
    ("192.168.10.10 sipserver1.ourtest.com\n", "add the short name"),
])
def test_broken_hosts_files(text: str, fragment: str) -> None:
    problems = hosts_file_problems(text, "sipserver1", "sipserver1.ourtest.com")
    assert any(fragment in p for p in problems), problems


class TinySmtp:
    """A real SMTP listener on loopback for probe tests."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            if self.mode == "silent":
                time.sleep(5)
                return
            if self.mode == "busy":
                conn.sendall(b"421 too busy\r\n")
                return
            conn.sendall(b"220-relay.test ESMTP\r\n220 welcome\r\n")
            conn.recv(1024)
            caps = [b"relay.test", b"PIPELINING", b"AUTH PLAIN LOGIN"]
            if self.mode == "tls":
                caps.append(b"STARTTLS")
            conn.sendall(b"".join(b"250-" + c + b"\r\n" for c in caps[:-1])
                         + b"250 " + caps[-1] + b"\r\n")
            conn.recv(1024)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def smtp_server(request: pytest.FixtureRequest) -> Iterator[TinySmtp]:
    server = TinySmtp(request.param)
    yield server
    server.close()


@pytest.mark.parametrize("smtp_server", ["tls"], indirect=True)
def test_smtp_with_starttls(smtp_server: TinySmtp) -> None:
    check = check_smtp(LocalExecutor(), "127.0.0.1", smtp_server.port, 3, "pbx.ourtest.com")
    assert check.ok is True and check.data["starttls"] is True
    assert check.data["auth"] == ["PLAIN", "LOGIN"] and "offers STARTTLS" in check.detail


@pytest.mark.parametrize("smtp_server", ["plain"], indirect=True)
def test_smtp_without_starttls(smtp_server: TinySmtp) -> None:
    check = check_smtp(LocalExecutor(), "127.0.0.1", smtp_server.port, 3, "pbx.ourtest.com")
    assert check.ok is True and check.data["starttls"] is False


@pytest.mark.parametrize("smtp_server", ["silent"], indirect=True)
def test_smtp_silent_server_times_out_in_time(smtp_server: TinySmtp) -> None:
    start = time.monotonic()
    check = check_smtp(LocalExecutor(), "127.0.0.1", smtp_server.port, 1, "x.example")
    assert check.ok is False and "did not answer within 1s" in check.detail
    assert time.monotonic() - start < 4


@pytest.mark.parametrize("smtp_server", ["busy"], indirect=True)
def test_smtp_refusing_banner(smtp_server: TinySmtp) -> None:
    check = check_smtp(LocalExecutor(), "127.0.0.1", smtp_server.port, 3, "x.example")
    assert check.ok is False and "421" in check.detail


def test_smtp_closed_port() -> None:
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    check = check_smtp(LocalExecutor(), "127.0.0.1", port, 2, "x.example")
    assert check.ok is False and "cannot talk SMTP" in check.detail


def test_mta_running(tmp_path: Path) -> None:
    pid_file = tmp_path / "sendmail.pid"
    pid_file.write_text(f"{os.getpid()}\n/usr/sbin/sendmail -bd\n")
    assert check_mta_running(LocalExecutor(), str(pid_file)).ok is True
    pid_file.write_text("999999999\n")
    assert check_mta_running(LocalExecutor(), str(pid_file)).ok is False
    assert check_mta_running(LocalExecutor(), str(tmp_path / "none")).ok is False


@pytest.mark.parametrize("domain, ip, field", [
    ("bad domain", None, "domain"), ("[192.0.2.1]", None, "domain"),
    ("ourtest.com", "300.1.1.1", "public_ip"), (None, "x;id", "public_ip")])
def test_diagnose_input_is_validated(domain: str | None, ip: str | None, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        validate_diagnose_input(domain, ip)
    assert field in caught.value.errors
