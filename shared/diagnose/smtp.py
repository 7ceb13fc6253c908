"""The SMTP probe: banner, EHLO (HELO as fallback), and STARTTLS as the host's MTA does it.

The TCP connection starts *on the host* (``Executor.open_tcp``: a local socket, or an SSH
``direct-tcpip`` channel), so the probe sees what the host's own MTA would see. It greets
with the name the MTA greets with, and when STARTTLS is offered it negotiates TLS over that
stream (:mod:`.tls`) and asks EHLO again, for the AUTH mechanisms offered over TLS. It never
sends AUTH or any credential.
"""

from __future__ import annotations

import contextlib
import re
import ssl
import time
from dataclasses import dataclass
from typing import Any

from shared.compat import timeouts_as_timeout_error
from shared.diagnose.check import Check, unbracket
from shared.diagnose.hosts import not_qualified_reason
from shared.diagnose.tls import (
    CaBundle,
    TlsFacts,
    TlsStream,
    client_context,
    recv_before,
    ssl_reason,
    unverified_context,
)
from shared.errors import ExecutorError, HostUnreachable
from shared.executor import ByteStream, Executor
from shared.sendmail.maillog import PROBLEM_PATTERNS

#: EHLO answers meaning "EHLO is not known here" (an old server: HELO then)
_EHLO_UNKNOWN = frozenset({500, 502})
#: a refusal that is about the EHLO name, as the maillog tells one
#: (Google's smtp-relay: "421 4.7.0 Try again later, closing connection. (EHLO)")
_NAME_REFUSED = dict(PROBLEM_PATTERNS)["ehlo_refused"]
#: what was awaited in each phase, for a timeout's message
_AWAITED = {"banner": "greeting", "ehlo": "EHLO", "helo": "HELO",
            "starttls": "answer to STARTTLS", "tls": "TLS handshake",
            "ehlo_tls": "EHLO answer over TLS"}


class _SmtpProtocolError(Exception):
    """The peer does not speak SMTP as expected."""


class _SmtpReader:
    """Reads SMTP replies; each reply as a whole must arrive within the time box."""

    MAX_LINE = 4096
    MAX_LINES = 200

    def __init__(self, stream: ByteStream, timeout_s: float) -> None:
        self.stream = stream
        self.timeout_s = timeout_s
        self.buffer = b""

    def send(self, line: str) -> None:
        self.stream.settimeout(self.timeout_s)
        with timeouts_as_timeout_error():
            self.stream.sendall(line.encode("ascii") + b"\r\n")

    def reply(self) -> tuple[int, list[str]]:
        """One (possibly multi-line) reply: its code and the text of each line."""
        deadline = time.monotonic() + self.timeout_s
        code: int | None = None
        lines: list[str] = []
        while True:
            while b"\n" not in self.buffer:
                if len(self.buffer) > self.MAX_LINE:
                    raise _SmtpProtocolError("a reply line is too long")
                chunk = recv_before(self.stream, deadline, 4096)
                if not chunk:
                    raise ConnectionError("the server closed the connection")
                self.buffer += chunk
            raw, self.buffer = self.buffer.split(b"\n", 1)
            line = raw.decode("utf-8", "replace").rstrip("\r")
            if not re.fullmatch(r"[2-5][0-9][0-9](?:[ -].*)?", line):
                raise _SmtpProtocolError(f"not an SMTP reply: {line[:80]!r}")
            if code is not None and int(line[:3]) != code:
                raise _SmtpProtocolError("a multi-line reply changed its code")
            code = int(line[:3])
            lines.append(line[4:])
            if line[3:4] != "-":
                return code, lines
            if len(lines) > self.MAX_LINES:
                raise _SmtpProtocolError("a reply has too many lines")


def _auth_mechanisms(capabilities: list[str]) -> list[str]:
    mechanisms: list[str] = []
    for cap in capabilities:
        match = re.match(r"AUTH[ =](.*)", cap, re.IGNORECASE)
        for mech in match.group(1).upper().split() if match else []:
            if mech not in mechanisms:
                mechanisms.append(mech)
    return mechanisms


def _error_kind(message: str) -> str:
    lowered = message.lower()
    if "refused" in lowered:
        return "refused"
    if "timed out" in lowered or "timeout" in lowered:
        return "timeout"
    return "connect"


@dataclass
class SmtpProbe:
    """The ``smarthost_smtp`` check and, once EHLO was answered, the STARTTLS facts."""

    check: Check
    #: ``host:port`` as messages name it
    where: str
    tls: TlsFacts | None = None


class _VerifyFailed(Exception):
    """The relay's chain did not verify: the handshake was aborted."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _greet(reader: _SmtpReader, where: str, helo_name: str, data: dict[str, Any]) -> Check | None:
    """Banner and EHLO (HELO when EHLO is unknown); the failed check, or None when greeted."""
    data["phase"] = "banner"
    code, banner = reader.reply()
    data["banner"] = "\n".join(banner)
    if code != 220:
        data["error"] = "rejected"
        return Check("smarthost_smtp", False, f"{where} refused the connection from this host: "
                     f"{code} {banner[0] if banner else ''}".rstrip(), data)
    data["phase"] = "ehlo"
    reader.send(f"EHLO {helo_name}")
    code, ehlo = reader.reply()
    if code != 250:
        data["ehlo_reply"] = f"{code} {' '.join(ehlo)}".rstrip()
        if code not in _EHLO_UNKNOWN:
            return _ehlo_refused(where, helo_name, data)
        data["phase"] = "helo"
        reader.send(f"HELO {helo_name}")
        code, helo = reader.reply()
        if code != 250:
            data["error"] = "rejected"
            return Check("smarthost_smtp", False, f"{where} refused EHLO and HELO "
                         f"{helo_name}: {code} {' '.join(helo)}".rstrip(), data)
        ehlo = helo[:1]
        data["esmtp"] = False
    else:
        data["esmtp"] = True
    capabilities = [c.strip() for c in ehlo[1:] if c.strip()]
    data["capabilities"] = capabilities
    data["starttls"] = any(c.upper() == "STARTTLS" for c in capabilities)
    data["auth"] = _auth_mechanisms(capabilities)
    return None


def _ehlo_refused(where: str, helo_name: str, data: dict[str, Any]) -> Check:
    """The check for a refused EHLO, blaming the name only when unqualified or named."""
    # any other refusal (too many connections, a blocked address) is not fix_hostname's
    reply = data["ehlo_reply"]
    unqualified = not_qualified_reason(helo_name.lower()) is not None
    if not unqualified and not _NAME_REFUSED.search(reply):
        data["error"] = "rejected"
        return Check("smarthost_smtp", False, f"{where} refused EHLO {helo_name}: {reply}",
                     data)
    data["error"] = "ehlo_refused"
    todo = ("it is not fully qualified: run fix_hostname, then diagnose again" if unqualified
            else "relays want the host's fully qualified name, one that resolves to it: "
                 "check it, or run fix_hostname")
    return Check("smarthost_smtp", False, f"{where} refuses this host's EHLO name "
                 f"{helo_name}: {reply}; {todo}", data)


def _starttls(reader: _SmtpReader, helo_name: str, facts: TlsFacts, context: ssl.SSLContext,
              data: dict[str, Any]) -> bool:
    """STARTTLS, the handshake, EHLO over TLS; whether the connection can still say QUIT."""
    data["phase"] = "starttls"
    reader.send("STARTTLS")
    code, answer = reader.reply()
    if code != 220:
        facts.error = f"it answered STARTTLS with {code} {' '.join(answer)}".rstrip()
        return True
    if reader.buffer:
        # bytes sent before the handshake would pass for ones sent over TLS
        raise _SmtpProtocolError("it sent more after agreeing to STARTTLS; TLS not started")
    data["phase"] = "tls"
    stream = TlsStream(reader.stream, context, facts.name)
    try:
        stream.handshake(reader.timeout_s)
    except ssl.SSLCertVerificationError as exc:
        raise _VerifyFailed(ssl_reason(exc)) from exc
    except ssl.SSLError as exc:
        facts.error = f"TLS handshake failed: {ssl_reason(exc)}"
        return False
    facts.learn(stream)
    reader.stream = stream
    data["phase"] = "ehlo_tls"
    reader.send(f"EHLO {helo_name}")
    code, ehlo = reader.reply()
    if code == 250:
        facts.auth = _auth_mechanisms([c.strip() for c in ehlo[1:]])
    else:
        facts.error = f"it answered EHLO over TLS with {code} {' '.join(ehlo)}".rstrip()
    return True


def _tls_failure(exc: Exception, phase: str, timeout_s: float) -> str:
    """What went wrong in a TLS phase, in words."""
    if isinstance(exc, TimeoutError):
        return f"no {_AWAITED.get(phase, 'reply')} within {timeout_s:g}s"
    if isinstance(exc, _SmtpProtocolError):
        return str(exc)
    return f"the connection dropped during {_AWAITED.get(phase, phase)}: {exc}"


def _dialog(reader: _SmtpReader, where: str, helo_name: str, data: dict[str, Any], *,
            facts: TlsFacts, context: ssl.SSLContext) -> Check:
    refused = _greet(reader, where, helo_name, data)
    if refused is not None:
        return refused
    facts.offered = bool(data["starttls"])
    usable = True
    if facts.offered:
        try:
            usable = _starttls(reader, helo_name, facts, context, data)
        except (TimeoutError, _SmtpProtocolError, OSError, ConnectionError) as exc:
            # the relay greeted this host: what failed is TLS, which smarthost_tls reports
            facts.error = _tls_failure(exc, str(data.get("phase")), reader.timeout_s)
            usable = False
    if usable:
        data["phase"] = "quit"
        with contextlib.suppress(OSError, ConnectionError):
            reader.send("QUIT")
    data.pop("phase")
    if not data["esmtp"]:
        return Check("smarthost_smtp", True, f"{where} accepts HELO but not EHLO: it offers "
                     "no STARTTLS and no AUTH", data)
    tls = "offers STARTTLS" if data["starttls"] else "does not offer STARTTLS"
    if data["auth"]:
        auth = f"AUTH {' '.join(data['auth'])}"
    else:
        auth = "no AUTH before STARTTLS" if data["starttls"] else "no AUTH"
    if facts.started:
        auth += (f", AUTH {' '.join(facts.auth)} after TLS" if facts.auth
                 else ", no AUTH after TLS")
    return Check("smarthost_smtp", True, f"{where} accepts EHLO {helo_name}, {tls}, {auth}",
                 data)


def _session(executor: Executor, name: str, port: int, timeout_s: float, helo_name: str, *,
             facts: TlsFacts, context: ssl.SSLContext) -> Check:
    """One connection from the host: the dialog, or the check saying why it failed."""
    where = f"{name}:{port}"
    data: dict[str, Any] = {"host": name, "port": port, "ehlo_name": helo_name}
    try:
        stream: ByteStream = executor.open_tcp(name, port, timeout_s)
    except HostUnreachable:
        raise
    except ExecutorError as exc:
        data["error"] = _error_kind(exc.message)
        return Check("smarthost_smtp", False, f"cannot connect to {where}: {exc.message}", data)
    reader = _SmtpReader(stream, timeout_s)
    try:
        return _dialog(reader, where, helo_name, data, facts=facts, context=context)
    except TimeoutError:
        data["error"] = "timeout"
        return Check("smarthost_smtp", False, f"{where} accepted the connection but sent no "
                     f"{_AWAITED.get(str(data.get('phase')), 'reply')} within {timeout_s:g}s",
                     data)
    except _SmtpProtocolError as exc:
        data["error"] = "protocol"
        return Check("smarthost_smtp", False, f"{where} does not speak SMTP: {exc}", data)
    except (OSError, ConnectionError) as exc:
        data["error"] = "closed"
        return Check("smarthost_smtp", False, f"{where} dropped the connection during "
                     f"{data.get('phase', 'the dialog')}: {exc}", data)
    finally:
        with contextlib.suppress(Exception):
            reader.stream.close()


def probe_smtp(executor: Executor, host: str, port: int, timeout_s: float, helo_name: str, *,
               bundle: CaBundle | None = None) -> SmtpProbe:
    """Banner, EHLO, STARTTLS (verified against ``bundle``) and AUTH offers, from the host."""
    name, _ = unbracket(host)
    where = f"{name}:{port}"
    if not (0 < port < 65536):
        return SmtpProbe(Check("smarthost_smtp", False, f"port {port} is not a TCP port",
                               {"host": name, "port": port}), where)
    if not re.fullmatch(r"[A-Za-z0-9.:\[\]_-]{1,255}", helo_name):
        helo_name = "localhost.localdomain"
    facts = TlsFacts(name, ca_bundle=bundle.path if bundle else None,
                     ca_source=bundle.source if bundle else None)
    context, problem = client_context(bundle)
    try:
        check = _session(executor, name, port, timeout_s, helo_name, facts=facts,
                         context=context)
        if facts.started:
            facts.verified = True if problem is None else None
            facts.verify_error = problem
    except _VerifyFailed as failed:
        # Learn the rest (version, names, expiry, AUTH over TLS) on a connection that
        # takes the certificate as it is.
        facts = TlsFacts(name, ca_bundle=facts.ca_bundle, ca_source=facts.ca_source)
        check = _session(executor, name, port, timeout_s, helo_name, facts=facts,
                         context=unverified_context())
        facts.verified, facts.verify_error = False, failed.reason
    answered = "esmtp" in check.data
    return SmtpProbe(check, where, facts if answered else None)


def check_smtp(executor: Executor, host: str, port: int, timeout_s: float,
               helo_name: str, *, bundle: CaBundle | None = None) -> Check:
    """Banner, EHLO, STARTTLS and the AUTH offer of the smarthost, seen from the host."""
    return probe_smtp(executor, host, port, timeout_s, helo_name, bundle=bundle).check
