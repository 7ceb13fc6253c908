"""The SMTP probe: banner, EHLO (HELO as fallback) and the STARTTLS/AUTH offer of a server.

The TCP connection starts *on the host* (``Executor.open_tcp``: a local socket, or an SSH
``direct-tcpip`` channel), so the probe sees what the host's own MTA would see.
"""

from __future__ import annotations

import contextlib
import re
import time
from typing import Any

from shared.diagnose.check import Check, unbracket
from shared.errors import ExecutorError, HostUnreachable
from shared.executor import ByteStream, Executor


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
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                self.stream.settimeout(remaining)
                chunk = self.stream.recv(4096)
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


def _smtp_dialog(reader: _SmtpReader, where: str, helo_name: str,
                 data: dict[str, Any]) -> Check:
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
    return Check("smarthost_smtp", True, f"{where} accepts EHLO {helo_name}, {tls}, {auth}",
                 data)


def check_smtp(executor: Executor, host: str, port: int, timeout_s: float,
               helo_name: str) -> Check:
    """Banner, EHLO and the STARTTLS/AUTH offer of the smarthost, seen from the host."""
    name, _ = unbracket(host)
    where = f"{name}:{port}"
    data: dict[str, Any] = {"host": name, "port": port}
    if not (0 < port < 65536):
        return Check("smarthost_smtp", False, f"port {port} is not a TCP port", data)
    if not re.fullmatch(r"[A-Za-z0-9.:\[\]_-]{1,255}", helo_name):
        helo_name = "localhost.localdomain"
    try:
        stream = executor.open_tcp(name, port, timeout_s)
    except HostUnreachable:
        raise
    except ExecutorError as exc:
        data["error"] = _error_kind(exc.message)
        return Check("smarthost_smtp", False, f"cannot connect to {where}: {exc.message}", data)
    try:
        return _smtp_dialog(_SmtpReader(stream, timeout_s), where, helo_name, data)
    except TimeoutError:
        data["error"] = "timeout"
        waited = {"banner": "greeting", "ehlo": "EHLO", "helo": "HELO"}.get(
            str(data.get("phase")), "reply")
        return Check("smarthost_smtp", False, f"{where} accepted the connection but sent no "
                     f"{waited} within {timeout_s:g}s", data)
    except _SmtpProtocolError as exc:
        data["error"] = "protocol"
        return Check("smarthost_smtp", False, f"{where} does not speak SMTP: {exc}", data)
    except (OSError, ConnectionError) as exc:
        data["error"] = "closed"
        return Check("smarthost_smtp", False, f"{where} dropped the connection during "
                     f"{data.get('phase', 'the dialog')}: {exc}", data)
    finally:
        with contextlib.suppress(Exception):
            stream.close()
