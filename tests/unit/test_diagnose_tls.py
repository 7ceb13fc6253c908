"""STARTTLS in diagnose: real TLS handshakes with loopback relays in this process.

Each relay here is a small SMTP server on 127.0.0.1 that really does STARTTLS (Python's
ssl, server side) with certificates made for the test by a CA of its own (cryptography).
The probe connects through a local executor whose ``open_tcp`` sends every relay name to
127.0.0.1, so that names (``relay.test``) can be matched against certificates. The EHLO
name hooks run against the shipped fake sendmail and Postfix hosts.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import math
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shared.compat import UTC
from shared.diagnose.check import Check
from shared.diagnose.checklist import run_checks
from shared.diagnose.smtp import probe_smtp
from shared.diagnose.tls import (
    MAX_CA_BUNDLE,
    CaBundle,
    CertInfo,
    TlsFacts,
    name_matches,
    parse_certificate,
    read_ca_bundle,
    recv_before,
    tls_check,
)
from shared.executor import ByteStream, LocalExecutor
from shared.postfix.operations import PostfixOperations
from shared.profile import HostProfile, build_profile
from shared.sendmail.operations import SendmailOperations, sendmail_helo_name
from shared.testing import FakeExecutor, debian_postfix_host, debian_sendmail_host

NOW = dt.datetime.now(UTC)
RELAY = "relay.test"

# -- a CA and certificates ----------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclass
class Pki:
    """A test CA (and a second one nobody trusts) issuing server certificates as files."""

    directory: Path
    name: str = "Relay Test CA"
    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    cert: x509.Certificate | None = None

    def __post_init__(self) -> None:
        self.cert = self._sign(_name(self.name), self.key.public_key(), self.key,
                               _name(self.name), NOW + dt.timedelta(days=365), ca=True)

    @staticmethod
    def _sign(subject: x509.Name, public: ec.EllipticCurvePublicKey,
              signer: ec.EllipticCurvePrivateKey, issuer: x509.Name, not_after: dt.datetime,
              *, ca: bool = False, sans: Sequence[x509.GeneralName] = ()) -> x509.Certificate:
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
                   .public_key(public).serial_number(x509.random_serial_number())
                   .not_valid_before(NOW - dt.timedelta(days=30)).not_valid_after(not_after)
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)),
                                            critical=False)
        return builder.sign(signer, hashes.SHA256())

    @property
    def ca_pem(self) -> bytes:
        assert self.cert is not None
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, label: str, cn: str, sans: Sequence[str] = (),
              days: float = 90) -> tuple[Path, Path]:
        """A server certificate (DNS names, or addresses) and its key, as PEM files."""
        assert self.cert is not None
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = []
        for san in sans:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(san)))
            except ValueError:
                names.append(x509.DNSName(san))
        cert = self._sign(_name(cn), key.public_key(), self.key, self.cert.subject,
                          NOW + dt.timedelta(days=days), sans=names)
        cert_path, key_path = self.directory / f"{label}.crt", self.directory / f"{label}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return cert_path, key_path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA the host does not trust."""
    return Pki(tmp_path_factory.mktemp("stranger"), "Some Other CA")


@pytest.fixture
def bundle_file(pki: Pki, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    path.write_bytes(pki.ca_pem)
    return path


# -- a relay doing real STARTTLS ----------------------------------------------------------


@dataclass
class RelayScript:
    """How the loopback relay answers."""

    cert: tuple[Path, Path] | None = None
    offer_starttls: bool = True
    ehlo_reply: str | None = None
    starttls_reply: str = "220 2.0.0 Ready to start TLS"
    #: "tls" (a real handshake), "garbage" (not TLS), "silent" (never answers it)
    after_starttls: str = "tls"
    caps_after_tls: tuple[str, ...] = ("AUTH PLAIN LOGIN", "8BITMIME")


class TlsRelay:
    """An SMTP server on 127.0.0.1 that does STARTTLS; remembers every line it heard, per
    connection (decrypted after STARTTLS)."""

    def __init__(self, script: RelayScript) -> None:
        self.script = script
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.sessions: list[list[str]] = []
        self.handshake_errors: list[str] = []
        self.ended = threading.Semaphore(0)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            heard: list[str] = []
            self.sessions.append(heard)
            try:
                with conn:
                    conn.settimeout(10)
                    self._session(conn, heard)
            except (OSError, ssl.SSLError):
                pass
            finally:
                self.ended.release()

    @staticmethod
    def _readline(conn: socket.socket | ssl.SSLSocket) -> str | None:
        data = b""
        while not data.endswith(b"\n"):
            chunk = conn.recv(1)
            if not chunk:
                return None
            data += chunk
        return data.decode().rstrip("\r\n")

    def _session(self, conn: socket.socket, heard: list[str]) -> None:
        script = self.script
        stream: socket.socket | ssl.SSLSocket = conn
        conn.sendall(b"220 relay.test ESMTP\r\n")
        tls = False
        while (line := self._readline(stream)) is not None:
            heard.append(line)
            verb = line.split(" ", 1)[0].upper()
            if verb == "EHLO":
                if script.ehlo_reply and not tls:
                    stream.sendall(f"{script.ehlo_reply}\r\n".encode())
                    return
                caps = list(script.caps_after_tls) if tls else (
                    ["PIPELINING"] + (["STARTTLS"] if script.offer_starttls else []))
                lines = ["relay.test", *caps]
                stream.sendall("".join(f"250{'-' if i < len(lines) - 1 else ' '}{c}\r\n"
                                       for i, c in enumerate(lines)).encode())
            elif verb == "STARTTLS":
                stream.sendall(f"{script.starttls_reply}\r\n".encode())
                if not script.starttls_reply.startswith("220"):
                    continue
                if script.after_starttls == "garbage":
                    conn.recv(4096)  # the ClientHello
                    stream.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                    return
                if script.after_starttls == "silent":
                    while stream.recv(1024):
                        pass
                    return
                if script.cert is None:
                    return
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                context.load_cert_chain(*script.cert)
                try:
                    stream = context.wrap_socket(conn, server_side=True)
                except ssl.SSLError as exc:
                    self.handshake_errors.append(exc.reason or str(exc))
                    return
                tls = True
            elif verb == "QUIT":
                stream.sendall(b"221 2.0.0 Bye\r\n")
                return
            else:
                stream.sendall(b"502 5.5.1 not here\r\n")

    def settled(self) -> list[list[str]]:
        """The sessions, once each connection made so far has ended."""
        for _ in self.sessions:
            assert self.ended.acquire(timeout=10), "a relay session did not end"
        for _ in self.sessions:
            self.ended.release()
        return self.sessions

    @property
    def heard(self) -> list[str]:
        return [line for session in self.settled() for line in session]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept()
        self.sock.close()
        self.thread.join(5)


@pytest.fixture
def relay() -> Iterator[Callable[[RelayScript], TlsRelay]]:
    started: list[TlsRelay] = []

    def start(script: RelayScript) -> TlsRelay:
        server = TlsRelay(script)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


class LoopbackHost(LocalExecutor):
    """The local executor, every relay name served by 127.0.0.1."""

    def open_tcp(self, host: str, port: int, timeout: float) -> ByteStream:
        return super().open_tcp("127.0.0.1", port, timeout)


def probe(server: TlsRelay, bundle: CaBundle | None, name: str = RELAY,
          timeout_s: float = 5.0, helo: str = "pbx.example.com") -> tuple[Check, TlsFacts]:
    result = probe_smtp(LoopbackHost(), name, server.port, timeout_s, helo, bundle=bundle)
    assert result.tls is not None, result.check
    return result.check, result.tls


def trusted(path: Path) -> CaBundle:
    return read_ca_bundle(LocalExecutor(), str(path), "/nonexistent/bundle.crt")


def no_credentials_sent(server: TlsRelay) -> bool:
    return not any(line.split(" ", 1)[0].upper() == "AUTH" for line in server.heard)


# -- the probe ------------------------------------------------------------------------------


def test_a_trusted_relay_is_verified_and_named(pki: Pki, bundle_file: Path,
                                               relay: Callable[[RelayScript], TlsRelay]) -> None:
    server = relay(RelayScript(cert=pki.issue("good", RELAY, [RELAY, "127.0.0.1"])))
    check, facts = probe(server, trusted(bundle_file))
    assert check.ok is True and check.data["ehlo_name"] == "pbx.example.com", check
    assert "AUTH PLAIN LOGIN after TLS" in check.detail
    assert facts.started and facts.version in ("TLSv1.2", "TLSv1.3") and facts.cipher
    assert facts.verified is True and facts.verify_error is None
    assert facts.name_matches is True and facts.cert is not None
    assert facts.cert.names == [RELAY, "127.0.0.1"] and facts.cert.issuer_cn == "Relay Test CA"
    assert facts.auth == ["PLAIN", "LOGIN"] and 88 <= (facts.days_left() or 0) <= 90
    # One connection; STARTTLS, EHLO again over TLS, QUIT; never AUTH.
    assert server.settled() == [["EHLO pbx.example.com", "STARTTLS", "EHLO pbx.example.com",
                                 "QUIT"]]
    verdict = tls_check(facts, f"{RELAY}:{server.port}", "verify")
    assert verdict.ok is True and verdict.name == "smarthost_tls", verdict
    assert f"chain verified against {bundle_file}" in verdict.detail
    assert verdict.data["ca_source"] == "tls.ca_file" and "warnings" not in verdict.data
    assert verdict.data["auth_after_tls"] == ["PLAIN", "LOGIN"]


def test_a_wrong_name_is_a_fact_of_its_own(pki: Pki, bundle_file: Path,
                                          relay: Callable[[RelayScript], TlsRelay]) -> None:
    server = relay(RelayScript(cert=pki.issue("wrong", "other.test", ["other.test"])))
    _check, facts = probe(server, trusted(bundle_file))
    assert facts.verified is True and facts.name_matches is False
    verify = tls_check(facts, "relay.test:587", "verify")
    assert verify.ok is False
    assert "certificate names other.test, not relay.test" in verify.detail
    assert verify.detail.endswith("tls.mode verify: certificate verification failed (wrong "
                                  "name): mail to it stays queued")
    # encrypt needs STARTTLS only; may only informs
    assert tls_check(facts, "relay.test:587", "encrypt").ok is True
    assert tls_check(facts, "relay.test:587", "may").ok is True
    assert no_credentials_sent(server)


def test_an_untrusted_chain_gives_openssls_reason_and_the_rest(
        stranger: Pki, bundle_file: Path, relay: Callable[[RelayScript], TlsRelay]) -> None:
    server = relay(RelayScript(cert=stranger.issue("untrusted", RELAY, [RELAY])))
    check, facts = probe(server, trusted(bundle_file))
    assert check.ok is True, check
    assert facts.verified is False
    assert facts.verify_error == "unable to get local issuer certificate"
    # learnt on a second connection that took the certificate as it is
    assert len(server.sessions) == 2 and facts.started and facts.name_matches is True
    assert facts.auth == ["PLAIN", "LOGIN"] and facts.version
    assert server.handshake_errors  # the first connection was refused by the probe
    verify = tls_check(facts, "relay.test:587", "verify")
    assert verify.ok is False
    assert ("certificate verification failed: unable to get local issuer certificate"
            in verify.detail)
    assert "certificate verification failed (chain): mail to it stays queued" in verify.detail
    assert tls_check(facts, "relay.test:587", "encrypt").ok is True
    assert no_credentials_sent(server)


def test_expiry_warns_under_two_weeks_and_an_expired_one_fails(
        pki: Pki, bundle_file: Path, relay: Callable[[RelayScript], TlsRelay]) -> None:
    soon = relay(RelayScript(cert=pki.issue("soon", RELAY, [RELAY], days=5.5)))
    _check, facts = probe(soon, trusted(bundle_file))
    verdict = tls_check(facts, "relay.test:587", "verify")
    assert verdict.ok is True and facts.days_left() == 5
    assert "certificate expires in 5 days" in verdict.detail
    assert verdict.data["warnings"] == ["certificate expires in 5 days"]
    gone = relay(RelayScript(cert=pki.issue("gone", RELAY, [RELAY], days=-3)))
    _check, facts = probe(gone, trusted(bundle_file))
    assert facts.verified is False and facts.verify_error == "certificate has expired"
    assert facts.cert is not None and (facts.days_left() or 0) < 0
    verdict = tls_check(facts, "relay.test:587", "verify")
    assert verdict.ok is False
    assert f"certificate expired on {facts.cert.not_after.date()}" in verdict.detail


def test_without_starttls_the_mode_decides(relay: Callable[[RelayScript], TlsRelay]) -> None:
    server = relay(RelayScript(offer_starttls=False))
    check, facts = probe(server, None)
    assert check.ok is True and "does not offer STARTTLS" in check.detail
    assert not facts.offered and not facts.started
    assert server.settled() == [["EHLO pbx.example.com", "QUIT"]]
    for mode in ("verify", "encrypt"):
        verdict = tls_check(facts, "relay.test:25", mode)
        assert verdict.ok is False and "does not offer STARTTLS" in verdict.detail
        assert verdict.detail.endswith(f"tls.mode {mode}: mail to it stays queued")
    assert tls_check(facts, "relay.test:25", "may").ok is None
    assert tls_check(facts, "relay.test:25", None).ok is None


@pytest.mark.parametrize("script, said", [
    (RelayScript(starttls_reply="454 4.7.0 TLS not available due to temporary reason"),
     "it answered STARTTLS with 454 4.7.0 TLS not available"),
    (RelayScript(starttls_reply="220 2.0.0 Ready\r\n250 2.0.0 injected"),
     "it sent more after agreeing to STARTTLS; TLS not started"),
    (RelayScript(after_starttls="garbage"), "TLS handshake failed: "),
])
def test_a_failed_starttls_fails_tls_not_smtp(script: RelayScript, said: str,
                                              relay: Callable[[RelayScript], TlsRelay]) -> None:
    server = relay(script)
    check, facts = probe(server, None)
    assert check.ok is True, check
    assert facts.offered and not facts.started and facts.error is not None
    assert facts.error.startswith(said), facts.error
    verdict = tls_check(facts, "relay.test:587", "encrypt")
    assert verdict.ok is False and f"STARTTLS with relay.test:587 failed: {said}" in verdict.detail
    assert tls_check(facts, "relay.test:587", "may").ok is None


def test_a_silent_handshake_is_time_boxed(relay: Callable[[RelayScript], TlsRelay]) -> None:
    server = relay(RelayScript(after_starttls="silent"))
    check, facts = probe(server, None, timeout_s=0.5)
    assert check.ok is True and facts.error == "no TLS handshake within 0.5s", facts


def test_a_refused_ehlo_name_says_run_fix_hostname(
        relay: Callable[[RelayScript], TlsRelay]) -> None:
    server = relay(RelayScript(ehlo_reply="421 4.7.0 Try again later, closing connection. "
                                          "(EHLO) unqualified host name"))
    result = probe_smtp(LoopbackHost(), RELAY, server.port, 5, "localhost")
    assert result.check.ok is False and result.check.data["error"] == "ehlo_refused"
    assert result.tls is None
    assert ("relay.test:" in result.check.detail
            and "refuses this host's EHLO name localhost: 421 4.7.0 Try again later"
            in result.check.detail and "run fix_hostname" in result.check.detail)
    assert server.settled() == [["EHLO localhost"]]  # no HELO after a refusal of the name
    assert "it is not fully qualified: run fix_hostname, then diagnose again" in (
        result.check.detail)
    # a qualified name refused: the name may not resolve to the host
    qualified = probe_smtp(LoopbackHost(), RELAY, server.port, 5, "pbx1.customer.example")
    assert qualified.check.data["error"] == "ehlo_refused"
    assert qualified.check.detail.endswith("relays want the host's fully qualified name, one "
                                           "that resolves to it: check it, or run fix_hostname")


def test_a_missing_ca_file_is_said(pki: Pki, tmp_path: Path,
                                   relay: Callable[[RelayScript], TlsRelay]) -> None:
    server = relay(RelayScript(cert=pki.issue("good2", RELAY, [RELAY])))
    bundle = read_ca_bundle(LocalExecutor(), str(tmp_path / "nope.pem"), "/unused")
    _check, facts = probe(server, bundle)
    assert facts.started and facts.verified is None and len(server.sessions) == 1
    verdict = tls_check(facts, "relay.test:587", "verify")
    assert verdict.ok is False
    assert (f"certificate not verified: the CA bundle {tmp_path / 'nope.pem'} (tls.ca_file) "
            "is not on the host") in verdict.detail
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    _check, facts = probe(server, trusted(garbage))
    assert facts.verified is None and facts.verify_error is not None
    assert facts.verify_error.startswith(f"cannot load the CA bundle {garbage}: ")


def test_the_default_bundle_is_the_profiles() -> None:
    host = FakeExecutor()
    host.add_file("/etc/pki/tls/certs/ca-bundle.crt", "RHEL BUNDLE")
    rhel = read_ca_bundle(host, None, build_profile("postfix", "rhel", {}).ca_bundle)
    assert (rhel.path, rhel.pem, rhel.source) == ("/etc/pki/tls/certs/ca-bundle.crt",
                                                  "RHEL BUNDLE", "mta.ca_bundle")
    debian = read_ca_bundle(host, None, build_profile("sendmail", "debian", {}).ca_bundle)
    assert debian.pem is None and debian.problem == (
        "the CA bundle /etc/ssl/certs/ca-certificates.crt (mta.ca_bundle) is not on the host")
    host.add_dir("/etc/mail/ca.pem")
    unreadable = read_ca_bundle(host, "/etc/mail/ca.pem", "/unused")
    assert unreadable.pem is None and unreadable.source == "tls.ca_file"
    assert unreadable.problem is not None and "/etc/mail/ca.pem" in unreadable.problem


def test_a_bundle_is_read_only_from_a_regular_file_of_a_sane_size(tmp_path: Path) -> None:
    host = FakeExecutor()
    host.add_file("/etc/mail/ca.pem", b"A" * MAX_CA_BUNDLE)
    assert read_ca_bundle(host, "/etc/mail/ca.pem", "/unused").pem == "A" * MAX_CA_BUNDLE
    host.add_file("/etc/mail/ca.pem", b"A" * (MAX_CA_BUNDLE + 1))
    large = read_ca_bundle(host, "/etc/mail/ca.pem", "/unused")
    assert large.pem is None and large.problem == (
        "the CA bundle /etc/mail/ca.pem (tls.ca_file) is too large (over 4 MiB): not a CA "
        "bundle")
    # a device never ends: it is not read at all, even behind a harmless-looking name
    device = tmp_path / "ca.pem"
    device.symlink_to("/dev/zero")
    zero = read_ca_bundle(LocalExecutor(), str(device), "/unused")
    assert zero.pem is None and zero.problem == (
        f"the CA bundle {device} (tls.ca_file) is not a regular file (a device, directory or "
        "pipe)")


# -- certificates and names -----------------------------------------------------------------


def test_the_der_reader_agrees_with_cryptography(pki: Pki) -> None:
    for label, cn, sans in (("a", RELAY, [RELAY, "127.0.0.1", "::1"]),
                            ("b", "cn-only.test", []), ("c", "x", ["*.relay.test"])):
        cert_path, _key = pki.issue(f"der-{label}", cn, sans)
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        info = parse_certificate(cert.public_bytes(serialization.Encoding.DER))
        assert info.subject_cn == cn and info.issuer_cn == "Relay Test CA"
        assert info.not_after == cert.not_valid_after_utc.replace(microsecond=0)
        assert [*info.dns_names, *info.ip_addresses] == [
            s for s in sans if not s[0].isdigit() and ":" not in s] + [
            str(ipaddress.ip_address(s)) for s in sans if s[0].isdigit() or ":" in s]
    with pytest.raises(ValueError):
        parse_certificate(b"\x30\x82\x01")


@pytest.mark.parametrize("host, dns, ips, cn, matches", [
    ("relay.test", ["relay.test"], [], None, True),
    ("RELAY.test.", ["relay.TEST"], [], None, True),
    ("smtp.relay.test", ["*.relay.test"], [], None, True),
    ("a.b.relay.test", ["*.relay.test"], [], None, False),
    ("relay.test", ["*.relay.test"], [], None, False),
    ("relay.com", ["*.com"], [], None, False),
    ("relay.test", ["f*.test"], [], None, False),
    ("relay.test", [], [], "relay.test", True),             # no SAN: the CN
    ("relay.test", ["other.test"], [], "relay.test", False),  # SANs given: the CN is not
    ("192.0.2.5", ["192.0.2.5"], [], None, False),         # an address is no DNS name
    ("192.0.2.5", [], ["192.0.2.5"], None, True),
    ("2001:db8::1", [], ["2001:db8:0::1"], None, True),
    ("relay.test", [], ["192.0.2.5"], None, False),
])
def test_name_matching(host: str, dns: list[str], ips: list[str], cn: str | None,
                       matches: bool) -> None:
    cert = CertInfo(cn, "CA", tuple(dns), tuple(ips), NOW)
    assert name_matches(host, cert) is matches


# -- the checklist and the EHLO name ----------------------------------------------------------


def test_run_checks_adds_smarthost_tls_with_the_mta_ehlo_name(
        pki: Pki, bundle_file: Path, relay: Callable[[RelayScript], TlsRelay]) -> None:
    server = relay(RelayScript(cert=pki.issue("rc", RELAY, [RELAY])))
    checks = run_checks(LoopbackHost(), HostProfile(pid_file="/nonexistent.pid"),
                        smarthost_host="[127.0.0.1]", smarthost_port=server.port, domain=None,
                        public_ip=None, config_check=None, ehlo_name="pbx1.customer.example",
                        tls={"mode": "encrypt", "ca_file": str(bundle_file)}, timeout_s=5)
    names = [c.name for c in checks]
    assert names[-4:] == ["smarthost_resolves", "smarthost_smtp", "smarthost_tls", "spf"]
    smtp, tls = checks[-3], checks[-2]
    assert smtp.ok is True and smtp.data["ehlo_name"] == "pbx1.customer.example"
    assert server.sessions[0][0] == "EHLO pbx1.customer.example"
    # encrypt: the chain verifies, the address is not among the names: still fine
    assert tls.ok is True and tls.data["mode"] == "encrypt" and tls.data["verified"] is True
    assert tls.data["name_matches"] is False and "not 127.0.0.1" in tls.detail


def test_run_checks_without_a_smarthost_skips_tls() -> None:
    checks = run_checks(FakeExecutor(), HostProfile(pid_file="/run/x.pid"),
                        smarthost_host=None, smarthost_port=25, domain=None, public_ip=None,
                        config_check=None)
    tls = next(c for c in checks if c.name == "smarthost_tls")
    assert tls.ok is None and tls.detail == "no smarthost is configured"


#: ``sendmail -d0.1 -bv root`` on a lab host (Debian 12, sendmail 8.17.1.9)
SENDMAIL_IDENTITY = """Version 8.17.1.9
 Compiled with: DNSMAP IPV6_FULL LDAPMAP LDAP_NETWORK_TIMEOUT
\t\tTCPWRAPPERS TLS_EC TLS_VRFY_PER_CTX USERDB USE_LDAP_INIT XDEBUG

============ SYSTEM IDENTITY (after readcf) ============
      (short domain name) $w = smx1
  (canonical domain name) $j = smx1.lab.test
         (subdomain name) $m = lab.test
              (node name) $k = smx1
========================================================

root... deliverable: mailer local, user root
"""


@pytest.mark.parametrize("cf, name", [
    ("O SmtpGreetingMessage=$j Sendmail\n", "smx1.lab.test"),
    ("O HeloName=mail.customer.example\n", "mail.customer.example"),
    ("O HeloName=$w.customer.example\n", "smx1.customer.example"),
    ("O HeloName=$&{helo}\n", "smx1.lab.test"),  # a macro it cannot know: $j
    ("#O HeloName=commented.example\n", "smx1.lab.test"),
])
def test_sendmail_helo_name(cf: str, name: str) -> None:
    assert sendmail_helo_name(SENDMAIL_IDENTITY, cf) == name
    assert sendmail_helo_name("sendmail: cannot open cf", cf.replace("O HeloName", "#")) is None


def test_sendmail_diagnose_greets_with_dollar_j() -> None:
    host = debian_sendmail_host(hostname="pbx7", fqdn="pbx7.customer.example")
    ops = SendmailOperations(host, build_profile("sendmail", "debian", {}))
    assert ops._ehlo_name() == "pbx7.customer.example"
    host.add_file("/etc/mail/sendmail.cf",
                  host.read_text("/etc/mail/sendmail.cf") + "O HeloName=relay-me.example\n")
    assert ops._ehlo_name() == "relay-me.example"
    host.script(["/usr/sbin/sendmail", "-d0.1"], exit_code=75, stdout="")
    assert ops._ehlo_name() == "relay-me.example"  # the cf alone still says it


def test_postfix_greets_with_smtp_helo_name_expanded() -> None:
    host = debian_postfix_host(hostname="pbx8", fqdn="pbx8.customer.example")
    ops = PostfixOperations(host, build_profile("postfix", "debian", {}))
    # the fake postconf has no -x, like Postfix before 2.10: myhostname, the default
    assert ops._ehlo_name() == "pbx8.customer.example"
    host.script(["postconf", "-c", "/etc/postfix", "-xh", "smtp_helo_name"], exit_code=0,
                stdout="mail.customer.example\n")
    assert ops._ehlo_name() == "mail.customer.example"
    host.script(lambda argv: argv[0].endswith("postconf"), exit_code=1, stdout="")
    assert ops._ehlo_name() is None
    assert ops._ehlo_name_or_none() is None


def test_diagnose_probes_with_the_mta_name() -> None:
    host = debian_postfix_host(hostname="pbx9", fqdn="pbx9.customer.example")
    ops = PostfixOperations(host, build_profile("postfix", "debian", {}))
    host.script(["postconf", "-c", "/etc/postfix", "-xh", "smtp_helo_name"], exit_code=0,
                stdout="greets.customer.example\n")
    host.run(["postconf", "-c", "/etc/postfix", "-e", "relayhost=[relay.test]:587"])
    host.listen_smtp("relay.test", 587, address="192.0.2.25")
    checks = {c["name"]: c for c in ops.diagnose().data["checks"]}
    assert checks["smarthost_smtp"]["data"]["ehlo_name"] == "greets.customer.example"
    assert host.streams[0].received[0] == "EHLO greets.customer.example"
    # the fake relay answers STARTTLS with 500: TLS did not start, mode may: informational
    assert checks["smarthost_tls"]["ok"] is None
    assert "it answered STARTTLS with 500" in checks["smarthost_tls"]["detail"]


class _Recorded:
    """A byte stream that hands out one chunk per recv and records the time boxes set."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = list(chunks)
        self.timeouts: list[float | None] = []

    def sendall(self, data: bytes, /) -> None:
        raise AssertionError("nothing is sent")

    def recv(self, size: int, /) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""

    def settimeout(self, timeout: float | None, /) -> None:
        self.timeouts.append(timeout)

    def close(self) -> None:
        pass


def test_recv_before_waits_only_until_the_deadline() -> None:
    stream = _Recorded(b"220 ready\r\n")
    assert recv_before(stream, time.monotonic() + 30, 4096) == b"220 ready\r\n"
    (box,) = stream.timeouts
    assert box is not None and 0 < box <= 30
    # past the deadline: no read at all, however much is waiting
    with pytest.raises(TimeoutError):
        recv_before(stream, time.monotonic() - 1, 4096)
    assert len(stream.timeouts) == 1
    # no deadline (a TLS stream without a time box): the raw stream waits without one
    assert recv_before(stream, math.inf, 4096) == b""
    assert stream.timeouts[-1] is None
