"""STARTTLS as the host would do it: TLS over the host's SMTP byte stream, and the facts.

The TCP connection is the host's own (:meth:`~shared.executor.Executor.open_tcp`); TLS runs
in this process over that stream (:class:`ssl.MemoryBIO`), so nothing is installed on the
host. The relay's certificate chain is verified against the host's CA bundle, read through
the executor: the smarthost's ``tls.ca_file`` when it has one, else the host's default
bundle (the profile's ``ca_bundle``: Debian's /etc/ssl/certs/ca-certificates.crt, RHEL's
/etc/pki/tls/certs/ca-bundle.crt). The handshake verifies the chain only; the relay's name
is matched against the certificate's names here (:func:`name_matches`), so that a wrong
name and an untrusted chain are separate facts. A chain that does not verify aborts the
handshake; the probe then connects once more without verification to learn the rest
(version, names, expiry, AUTH).

The certificate is read from its DER form with the small reader below: ``ssl`` only
decodes certificates it verified, and the agent must not need more than the standard
library.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import ssl
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared.compat import UTC, timeouts_as_timeout_error
from shared.diagnose.check import Check
from shared.errors import ExecutorError, HostUnreachable
from shared.executor import MISSING_CODE, ByteStream, Executor

#: a certificate expiring within this many days is worth a warning
EXPIRY_WARNING_DAYS = 14
#: ``tls.mode`` values and what each requires of the relay
MODE_NEEDS = {"may": "nothing (TLS when offered)", "encrypt": "STARTTLS",
              "verify": "STARTTLS, a verified chain and the relay's name"}

_CN_OID = bytes.fromhex("550403")  # 2.5.4.3
_SAN_OID = bytes.fromhex("551d11")  # 2.5.29.17
_BMP_STRING = 0x1E
#: the largest CA bundle read (Debian's and RHEL's whole bundles are about 200 KiB)
MAX_CA_BUNDLE = 4 * 1024 * 1024
_NOT_REGULAR_CODE = 45
#: prints at most one byte more than MAX_CA_BUNDLE of a regular file ``$1`` (a device such as
#: /dev/zero never ends, a pipe may never answer); MISSING_CODE when it is absent
_READ_BUNDLE_SCRIPT = (f'[ -e "$1" ] || exit {MISSING_CODE}; [ -f "$1" ] || exit '
                       f'{_NOT_REGULAR_CODE}; exec head -c {MAX_CA_BUNDLE + 1} -- "$1"')


# -- the CA bundle --------------------------------------------------------------------------
@dataclass(frozen=True)
class CaBundle:
    """The CA certificates a host trusts, as read from it (``pem`` None: none could be)."""

    path: str | None
    #: ``tls.ca_file`` (the smarthost's own setting) or ``mta.ca_bundle`` (the host's
    #: default bundle, from the host profile)
    source: str
    pem: str | None = None
    #: why there is no bundle to verify with
    problem: str | None = None


def read_ca_bundle(executor: Executor, ca_file: str | None, default: str) -> CaBundle:
    """The smarthost's ``ca_file``, else the host's ``default`` bundle (the profile's
    ``ca_bundle``), read from the host: a regular file of at most MAX_CA_BUNDLE bytes."""
    path, source = (ca_file, "tls.ca_file") if ca_file else (default, "mta.ca_bundle")
    try:
        read = executor.run(["sh", "-c", _READ_BUNDLE_SCRIPT, "sh", path], timeout=30)
    except HostUnreachable:
        raise
    except ExecutorError as exc:
        return CaBundle(path, source, problem=exc.message)
    problem = {MISSING_CODE: "is not on the host",
               _NOT_REGULAR_CODE: "is not a regular file (a device, directory or pipe)"}.get(
        read.exit_code)
    if problem is None and not read.ok:
        problem = f"cannot be read: {read.output_text().strip() or f'exit {read.exit_code}'}"
    if problem is None and len(read.stdout) > MAX_CA_BUNDLE:
        problem = f"is too large (over {MAX_CA_BUNDLE // 2**20} MiB): not a CA bundle"
    if problem is not None:
        return CaBundle(path, source, problem=f"the CA bundle {path} ({source}) {problem}")
    return CaBundle(path, source, read.stdout.decode("ascii", "replace"))


def client_context(bundle: CaBundle | None) -> tuple[ssl.SSLContext, str | None]:
    """A client context verifying chains against ``bundle`` (names are checked apart), or,
    when the bundle is missing or unusable, one that verifies nothing, and why."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # name_matches says it, as a fact of its own
    problem = bundle.problem if bundle is not None else "no CA bundle was given"
    if bundle is not None and bundle.pem is not None:
        try:
            context.load_verify_locations(cadata=bundle.pem)
            return context, None
        except (ssl.SSLError, ValueError) as exc:
            problem = f"cannot load the CA bundle {bundle.path}: {ssl_reason(exc)}"
    return unverified_context(), problem


def unverified_context() -> ssl.SSLContext:
    """A client context that takes any certificate (to learn what the relay presents)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def ssl_reason(exc: BaseException) -> str:
    """OpenSSL's reason for a failure ("unable to get local issuer certificate")."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return str(exc.verify_message)
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str) and reason:
        return reason.replace("_", " ").lower()
    return str(exc) or type(exc).__name__


# -- TLS over a byte stream -----------------------------------------------------------------
def recv_before(stream: ByteStream, deadline: float, size: int) -> bytes:
    """Bytes from ``stream`` (b"" once closed); TimeoutError past ``deadline`` (monotonic)."""
    # one deadline for a whole reply or handshake: a peer trickling bytes cannot stretch it
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError
    stream.settimeout(None if math.isinf(remaining) else remaining)
    with timeouts_as_timeout_error():
        return stream.recv(size)


class TlsStream:
    """A :class:`~shared.executor.ByteStream` carrying TLS over another one (the host's)."""

    def __init__(self, raw: ByteStream, context: ssl.SSLContext, server_name: str) -> None:
        self.raw = raw
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        # SNI names the relay (relays serving several names pick the certificate by it);
        # an address literal sends none.
        self.tls = context.wrap_bio(self._incoming, self._outgoing, server_side=False,
                                    server_hostname=server_name or None)
        self._timeout: float | None = None

    def _flush(self) -> None:
        data = self._outgoing.read()
        if data:
            with timeouts_as_timeout_error():
                self.raw.sendall(data)

    def _fill(self, deadline: float) -> None:
        """Feed the TLS engine the next bytes from the wire (TimeoutError past deadline)."""
        chunk = recv_before(self.raw, deadline, 65536)
        if chunk:
            self._incoming.write(chunk)
        else:
            self._incoming.write_eof()

    def handshake(self, timeout_s: float) -> None:
        """Run the TLS handshake within ``timeout_s`` (ssl.SSLError when it fails)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                self._fill(deadline)
            except ssl.SSLError:
                with contextlib.suppress(OSError):  # the alert telling the relay why
                    self._flush()
                raise
        self._flush()

    def sendall(self, data: bytes, /) -> None:
        """Encrypt and send."""
        self.tls.write(data)
        self._flush()

    def recv(self, size: int, /) -> bytes:
        """Decrypted bytes; b"" when the relay closed; TimeoutError past the time box."""
        deadline = time.monotonic() + (self._timeout if self._timeout is not None else math.inf)
        while True:
            try:
                data = self.tls.read(size)
            except ssl.SSLWantReadError:
                self._flush()
                self._fill(deadline)
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""
            self._flush()  # TLS 1.3 may answer post-handshake messages
            return data

    def settimeout(self, timeout: float | None, /) -> None:
        """The time box of each :meth:`recv`, however many records it takes."""
        self._timeout = timeout

    def close(self) -> None:
        """Close the underlying stream."""
        self.raw.close()


# -- the certificate ------------------------------------------------------------------------
@dataclass(frozen=True)
class CertInfo:
    """What a server certificate says about whom it names and until when."""

    subject_cn: str | None
    issuer_cn: str | None
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    not_after: datetime

    @property
    def names(self) -> list[str]:
        """The names it is valid for: its subjectAltNames, else its subject CN."""
        names = [*self.dns_names, *self.ip_addresses]
        return names or ([self.subject_cn] if self.subject_cn else [])


def _element(der: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, value start, value end) of the DER element at ``pos``."""
    if pos + 2 > len(der):
        raise ValueError("truncated DER")
    tag, length = der[pos], der[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if not 0 < count <= 4 or pos + count > len(der):
            raise ValueError("bad DER length")
        length = int.from_bytes(der[pos:pos + count], "big")
        pos += count
    if pos + length > len(der):
        raise ValueError("truncated DER")
    return tag, pos, pos + length


def _children(der: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    out = []
    while start < end:
        child = _element(der, start)
        out.append(child)
        start = child[2]
    return out


def _common_name(der: bytes, start: int, end: int) -> str | None:
    """The CN of a Name (SEQUENCE OF SET OF AttributeTypeAndValue)."""
    for _set, set_start, set_end in _children(der, start, end):
        for _seq, seq_start, seq_end in _children(der, set_start, set_end):
            parts = _children(der, seq_start, seq_end)
            if len(parts) == 2 and der[parts[0][1]:parts[0][2]] == _CN_OID:
                tag, value_start, value_end = parts[1]
                raw = der[value_start:value_end]
                return raw.decode("utf-16-be" if tag == _BMP_STRING else "utf-8", "replace")
    return None


def _time(der: bytes, tag: int, start: int, end: int) -> datetime:
    text = der[start:end].decode("ascii")
    if tag == 0x17:  # UTCTime: two-digit years, 50-99 meaning 19xx
        text = ("19" if int(text[:2]) >= 50 else "20") + text
    return datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=UTC)


def parse_certificate(der: bytes) -> CertInfo:
    """Subject CN, issuer CN, subjectAltNames and notAfter of a DER certificate."""
    _tag, start, end = _element(der, 0)
    _tag, tbs_start, tbs_end = _children(der, start, end)[0]
    fields_ = _children(der, tbs_start, tbs_end)
    if fields_ and fields_[0][0] == 0xA0:  # [0] version
        fields_ = fields_[1:]
    _serial, _algorithm, issuer, validity, subject, *rest = fields_
    not_after = _children(der, validity[1], validity[2])[1]
    dns: list[str] = []
    ips: list[str] = []
    for tag, ext_start, ext_end in rest:
        if tag != 0xA3:  # [3] extensions
            continue
        (_seq, seq_start, seq_end), = _children(der, ext_start, ext_end)
        for _ext, one_start, one_end in _children(der, seq_start, seq_end):
            parts = _children(der, one_start, one_end)
            if der[parts[0][1]:parts[0][2]] != _SAN_OID:
                continue
            _octets, value_start, value_end = parts[-1]
            (_names, names_start, names_end), = _children(der, value_start, value_end)
            for name_tag, name_start, name_end in _children(der, names_start, names_end):
                value = der[name_start:name_end]
                if name_tag == 0x82:  # dNSName
                    dns.append(value.decode("ascii", "replace"))
                elif name_tag == 0x87 and len(value) in (4, 16):  # iPAddress
                    ips.append(str(ipaddress.ip_address(value)))
    return CertInfo(subject_cn=_common_name(der, subject[1], subject[2]),
                    issuer_cn=_common_name(der, issuer[1], issuer[2]),
                    dns_names=tuple(dns), ip_addresses=tuple(ips),
                    not_after=_time(der, *not_after))


def _dns_name_matches(host: str, pattern: str) -> bool:
    """RFC 6125 matching: a wildcard is a whole left-most label above a registered-ish
    domain (``*.example.com``, never ``*.com`` or ``f*.example.com``)."""
    pattern = pattern.rstrip(".").lower()
    if pattern.startswith("*."):
        suffix = pattern[1:]
        label, dot, rest = host.partition(".")
        return bool(label and dot) and f".{rest}" == suffix and suffix.count(".") >= 2
    return "*" not in pattern and host == pattern


def name_matches(host: str, cert: CertInfo) -> bool:
    """Whether ``cert`` names ``host`` (an address matches its iPAddress names only; a
    name its DNS names, or its CN when it has none, as OpenSSL does)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        wanted = host.rstrip(".").lower()
        patterns = cert.dns_names or ((cert.subject_cn,) if cert.subject_cn else ())
        return any(_dns_name_matches(wanted, p) for p in patterns)
    return any(ipaddress.ip_address(a) == address for a in cert.ip_addresses)


# -- the facts and the check ----------------------------------------------------------------
@dataclass
class TlsFacts:
    """What STARTTLS with the relay showed."""

    #: the name the certificate must carry (the smarthost as configured)
    name: str
    offered: bool = False
    started: bool = False
    #: why TLS did not start (STARTTLS refused, the handshake failed), or, once started,
    #: what went wrong after (EHLO over TLS refused, an unreadable certificate)
    error: str | None = None
    version: str | None = None
    cipher: str | None = None
    bits: int | None = None
    ca_bundle: str | None = None
    ca_source: str | None = None
    #: the chain verified against the bundle (None: there was no bundle to verify with)
    verified: bool | None = None
    verify_error: str | None = None
    name_matches: bool | None = None
    cert: CertInfo | None = None
    #: AUTH mechanisms offered in the EHLO answer over TLS
    auth: list[str] = field(default_factory=list)

    def learn(self, stream: TlsStream) -> None:
        """Version, cipher and certificate of an established TLS session."""
        self.started = True
        self.version = stream.tls.version()
        cipher = stream.tls.cipher()
        if cipher is not None:
            self.cipher, self.bits = cipher[0], cipher[2]
        der = stream.tls.getpeercert(binary_form=True)
        if der:
            try:
                self.cert = parse_certificate(der)
            except (ValueError, IndexError, UnicodeDecodeError) as exc:
                self.error = f"the certificate could not be read: {exc}"
                return
            self.name_matches = name_matches(self.name, self.cert)

    def days_left(self, now: datetime | None = None) -> int | None:
        """Whole days until the certificate expires (negative: expired)."""
        if self.cert is None:
            return None
        return math.floor((self.cert.not_after - (now or datetime.now(UTC))).total_seconds()
                          / 86400)

    def to_dict(self, now: datetime | None = None) -> dict[str, Any]:
        """Plain-JSON form."""
        cert = self.cert
        return {"name": self.name, "starttls": self.offered, "started": self.started,
                "error": self.error, "version": self.version, "cipher": self.cipher,
                "bits": self.bits, "ca_bundle": self.ca_bundle, "ca_source": self.ca_source,
                "verified": self.verified, "verify_error": self.verify_error,
                "name_matches": self.name_matches,
                "names": cert.names if cert else [],
                "subject": cert.subject_cn if cert else None,
                "issuer": cert.issuer_cn if cert else None,
                "not_after": cert.not_after.isoformat() if cert else None,
                "days_left": self.days_left(now), "auth_after_tls": list(self.auth)}


def _chain_words(facts: TlsFacts) -> str:
    if facts.verified:
        return f"chain verified against {facts.ca_bundle}"
    if facts.verified is False:
        return f"certificate verification failed: {facts.verify_error}"
    return f"certificate not verified: {facts.verify_error}"


def _expiry_words(cert: CertInfo | None, days: int | None) -> str | None:
    if cert is None or days is None:
        return None
    if days < 0:
        return f"certificate expired on {cert.not_after.date().isoformat()}"
    if days < EXPIRY_WARNING_DAYS:
        return f"certificate expires in {days} days"
    return None


def tls_check(facts: TlsFacts, where: str, mode: str | None,
              now: datetime | None = None) -> Check:
    """``smarthost_tls``: ok when the configured ``tls.mode`` would succeed (``verify``:
    chain and name; ``encrypt``: STARTTLS; ``may``, or no mode known: informational)."""
    mode = mode if mode in MODE_NEEDS else None
    data = {"mode": mode, **facts.to_dict(now)}
    required = mode in ("encrypt", "verify")
    stake = f"tls.mode {mode}: mail to it stays queued"
    if not facts.offered or not facts.started:
        detail = (f"{where} does not offer STARTTLS" if not facts.offered
                  else f"STARTTLS with {where} failed: {facts.error}")
        if required:
            return Check("smarthost_tls", False, f"{detail}; {stake}", data)
        return Check("smarthost_tls", None, f"{detail}: mail to it goes in clear", data)
    parts = [f"{where}: {facts.version} {facts.cipher}", _chain_words(facts)]
    cert = facts.cert
    if cert is not None and facts.name_matches is False:
        parts.append(f"certificate names {', '.join(cert.names) or 'nothing'}, "
                     f"not {facts.name}")
    elif cert is not None:
        parts.append(f"certificate names {facts.name}")
    days = facts.days_left(now)
    warning = _expiry_words(cert, days)
    if warning is not None:
        parts.append(warning)
        data["warnings"] = [warning]
    elif cert is not None:
        parts.append(f"valid until {cert.not_after.date().isoformat()} ({days} days)")
    parts.append(f"AUTH after TLS: {' '.join(facts.auth)}" if facts.auth
                 else "no AUTH after TLS")
    if facts.error:
        parts.append(facts.error)
    detail = "; ".join(parts)
    if mode == "verify" and not (facts.verified and facts.name_matches):
        why = [w for w, bad in (("chain", not facts.verified),
                                ("wrong name", facts.name_matches is not True)) if bad]
        return Check("smarthost_tls", False, f"{detail}; tls.mode verify: certificate "
                     f"verification failed ({', '.join(why)}): mail to it stays queued", data)
    return Check("smarthost_tls", True, detail, data)
