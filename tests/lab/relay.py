"""Relay-grade smarthosts for the lab: SMTP relays behaving like the ones MSPs use.

Run as ``python -m tests.lab.relay --listen ADDR:PORT --spool DIR [--mode MODE]
[--cert C --key K] [--credentials FILE] [--hostname NAME] [--refuse-unqualified-ehlo]
[--senders-domain DOMAIN]``; FILE holds ``user:password`` (one line; the password may hold
blanks, quotes and backslashes, so it never goes on the command line). MODE:

- ``gmail`` (the default): like Google's smtp-relay on 587. STARTTLS is offered and
  required before anything but EHLO/HELO/NOOP/RSET/QUIT (``530 5.7.0 Must issue a STARTTLS
  command first``); AUTH PLAIN/LOGIN is offered only after STARTTLS, checked against FILE, and
  ``MAIL FROM`` is refused until it succeeded. Without FILE: no AUTH at all (a relay that
  admits clients by address), STARTTLS still required.
- ``wrongname``: the same; the lab gives it a certificate naming another host.
- ``cleartext-auth``: a bad relay offering AUTH PLAIN LOGIN without STARTTLS (none offered),
  AUTH required: a client that would send its password in clear does so here.

``--refuse-unqualified-ehlo`` answers EHLO/HELO ``localhost``, ``localhost.localdomain``,
a name without a dot or ending in ``.localdomain`` with ``421 4.7.0 Try again later,
closing connection. (EHLO) unqualified host name`` and closes, as Google's relay does.
``--senders-domain D`` refuses senders outside ``@D`` with ``550 5.7.1 Sender address
rejected: not owned by a customer domain``.

It is aiosmtpd (a real SMTP server library) behind a recording TCP relay in the same
process. What it keeps in DIR:

- ``wire.bin``: every byte clients sent, as it crossed the wire (after STARTTLS the bytes
  are TLS records), so a test can show that a password never crossed in clear;
- ``<n>.json``: each accepted message: ``mail_from``, ``rcpts``, ``data``, ``auth_user``,
  ``tls`` (the TLS version or null), ``ehlo`` (the name the client gave), ``peer``;
- ``refusals.jsonl``: each refused command: ``command``, ``argument`` (AUTH: the mechanism
  only), ``login`` (AUTH: the user name tried), ``reply``, ``reason`` (``unqualified-ehlo``,
  ``starttls-required``, ``auth-required``, ``auth-failed``, ``sender-domain`` or
  ``other``), ``ehlo``, ``tls``, ``peer``;
- ``sessions.jsonl``: each connection once it ends: ``peer``, ``ehlo`` (every EHLO/HELO
  name, in order), ``commands`` (the verbs, in order), ``tls``, ``tls_error`` (a failed
  handshake's reason, e.g. the client's ``unknown ca`` alert), ``auth_user``, ``messages``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AnyStr

from aiosmtpd.smtp import (
    ALLOWED_BEFORE_STARTTLS,
    SMTP,
    AuthResult,
    Envelope,
    LoginPassword,
    Session,
    TLSSetupException,
)

MODES = ("gmail", "wrongname", "cleartext-auth")
#: the port MSPs' relays take submissions on
RELAY_PORT = 587
EHLO_REFUSAL = "421 4.7.0 Try again later, closing connection. ({verb}) unqualified host name"
SENDER_REFUSAL = "550 5.7.1 Sender address rejected: not owned by a customer domain"
STARTTLS_REFUSAL = "530 5.7.0 Must issue a STARTTLS command first"
_REASONS = (("530 5.7.0 Authentication required", "auth-required"),
            ("535", "auth-failed"))
#: what a client may say before STARTTLS where it is required (RFC 3207's few, and HELO)
_BEFORE_STARTTLS = frozenset({*ALLOWED_BEFORE_STARTTLS, "HELO", "RSET"})
#: RFC 4954's MAIL parameter (sendmail sends ``AUTH=<>``), which aiosmtpd does not know
_MAIL_AUTH_PARAMETER = re.compile(r"\s+AUTH=\S*", re.IGNORECASE)
_BASE64_TOKEN = re.compile(rb"[A-Za-z0-9+/]{4,}={0,2}")


def unqualified(name: str) -> bool:
    """Whether a relay like Google's refuses ``name`` as an EHLO/HELO name."""
    name = name.strip().lower().rstrip(".")
    if name.startswith("[") and name.endswith("]"):  # an address literal is qualified
        return False
    return (name in ("localhost", "localhost.localdomain") or "." not in name
            or name.endswith(".localdomain"))


class Journal:
    """The files a relay keeps in its spool directory (see the module docstring)."""

    def __init__(self, spool: Path) -> None:
        self.spool = spool
        self.lock = threading.Lock()
        spool.mkdir(parents=True, exist_ok=True)
        self.count = len(list(spool.glob("*.json")))

    def message(self, doc: dict[str, Any]) -> None:
        """Store an accepted message as the next ``<n>.json`` (whole, never half written)."""
        with self.lock:
            self.count += 1
            path = self.spool / f"{self.count:06d}.json"
            staging = path.with_suffix(".tmp")
            staging.write_text(json.dumps(doc))
            staging.rename(path)

    def append(self, name: str, doc: dict[str, Any]) -> None:
        """Append one JSON line to ``name`` (``refusals.jsonl``, ``sessions.jsonl``)."""
        with self.lock, (self.spool / name).open("a") as out:
            out.write(json.dumps(doc) + "\n")


class RelayHandler:
    """aiosmtpd hooks: the sender rule, AUTH's place in EHLO, and accepted messages."""

    def __init__(self, journal: Journal, *, senders_domain: str | None,
                 offer_auth: bool) -> None:
        self.journal = journal
        self.senders_domain = senders_domain.lower() if senders_domain else None
        self.offer_auth = offer_auth

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        """Greet; without credentials to check, offer no AUTH at all."""
        session.host_name = hostname
        if self.offer_auth:
            return responses
        return [r for r in responses if not r[4:].upper().startswith("AUTH")]

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        """Take the sender, unless it is outside the only domain allowed."""
        if self.senders_domain and address.rpartition("@")[2].lower() != self.senders_domain:
            if isinstance(server, RelaySMTP):
                server.reason = "sender-domain"
            return SENDER_REFUSAL
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Record the message and accept it."""
        content = envelope.content
        data = content.decode("utf-8", "replace") if isinstance(content, bytes) else str(content)
        doc: dict[str, Any] = {"mail_from": envelope.mail_from, "rcpts": list(envelope.rcpt_tos),
                               "data": data, "auth_user": _login(session),
                               "tls": _tls_version(server), "ehlo": session.host_name}
        if isinstance(server, RelaySMTP):
            doc["peer"] = server.client
            server.accepted += 1
        self.journal.message(doc)
        return "250 2.0.0 Ok: queued by the lab relay"


class RelaySMTP(SMTP):
    """aiosmtpd's SMTP session, plus the relay's rules and its records of each session."""

    def __init__(self, handler: RelayHandler, *, journal: Journal, tls_required: bool,
                 refuse_unqualified_ehlo: bool, peers: dict[int, str], **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.journal = journal
        self.tls_required = tls_required
        self.refuse_unqualified_ehlo = refuse_unqualified_ehlo
        self.peers = peers
        self.proxy_port = 0
        self.verb = ""
        self.argument = ""
        self.reason: str | None = None
        self.login_tried: str | None = None
        self.commands: list[str] = []
        self.ehlo_names: list[str] = []
        self.tls_error: str | None = None
        self.auth_user: str | None = None
        self.accepted = 0
        self._smtp_methods = {verb: self._guarded(verb, method)
                              for verb, method in self._smtp_methods.items()}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Note the recording relay's end of the connection (it knows the real client)."""
        super().connection_made(transport)
        if not self.proxy_port:
            local = transport.get_extra_info("peername")
            self.proxy_port = int(local[1]) if local else 0

    @property
    def client(self) -> str | None:
        """The real client's address."""
        return self.peers.get(self.proxy_port)

    def _guarded(self, verb: str, method: Callable[[str | None], Awaitable[None]]
                 ) -> Callable[[str | None], Awaitable[None]]:
        async def guarded(arg: str | None) -> None:
            self.verb, self.reason, self.commands = verb, None, [*self.commands, verb]
            self.argument = (arg or "").split()[0] if verb == "AUTH" and arg else (arg or "")
            if verb in ("EHLO", "HELO") and arg:
                self.ehlo_names.append(arg)
                if self.refuse_unqualified_ehlo and unqualified(arg):
                    self.reason = "unqualified-ehlo"
                    await self.push(EHLO_REFUSAL.format(verb=verb))
                    self._close()
                    return
            if (self.tls_required and self._tls_protocol is None
                    and verb not in _BEFORE_STARTTLS):
                self.reason = "starttls-required"
                await self.push(STARTTLS_REFUSAL)
                return
            if verb == "MAIL" and arg:
                arg = _MAIL_AUTH_PARAMETER.sub("", arg)  # accepted and ignored, as relays do
            try:
                await method(arg)
            except TLSSetupException as error:
                cause = error.__cause__
                self.tls_error = str(cause or error) or type(cause or error).__name__
                raise
            if verb == "AUTH" and self.session is not None and self.session.authenticated:
                self.auth_user = _login(self.session)

        return guarded

    def _close(self) -> None:
        if self._handler_coroutine is not None:
            self._handler_coroutine.cancel()
        if self.transport is not None:
            self.transport.close()

    async def push(self, status: AnyStr) -> None:
        """Send a reply; a refusal (4xx/5xx) is also recorded."""
        text = status.decode(errors="replace") if isinstance(status, bytes) else status
        if text[:1] in ("4", "5") and self.verb:
            reason = self.reason or next(
                (why for prefix, why in _REASONS if text.startswith(prefix)), "other")
            self.journal.append("refusals.jsonl", {
                "command": self.verb, "argument": self.argument,
                "login": self.login_tried if self.verb == "AUTH" else None, "reply": text,
                "reason": reason, "ehlo": self.ehlo_names[-1] if self.ehlo_names else None,
                "tls": _tls_version(self), "peer": self.client})
        await super().push(status)

    def connection_lost(self, error: Exception | None) -> None:
        """Record the session as it ended."""
        if self.commands or self.tls_error:
            self.journal.append("sessions.jsonl", {
                "peer": self.client, "ehlo": self.ehlo_names, "commands": self.commands,
                "tls": _tls_version(self), "tls_error": self.tls_error,
                "auth_user": self.auth_user, "messages": self.accepted})
        self.peers.pop(self.proxy_port, None)
        super().connection_lost(error)


def _tls_version(server: SMTP) -> str | None:
    protocol = server._tls_protocol
    if protocol is None:
        return None
    ssl_object = protocol._extra.get("ssl_object")
    return str(ssl_object.version()) if ssl_object is not None else None


def _login(session: Session) -> str | None:
    data = session.auth_data
    if isinstance(data, LoginPassword):
        return data.login.decode("utf-8", "replace")
    return None


def authenticator(user: str, password: str) -> Any:
    """An aiosmtpd authenticator accepting exactly one user name and password."""
    wanted = (user.encode(), password.encode())

    def check(server: SMTP, session: Session, envelope: Envelope, mechanism: str,
              auth_data: Any) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and (auth_data.login,
                                                       auth_data.password) == wanted
        if isinstance(server, RelaySMTP) and isinstance(auth_data, LoginPassword):
            server.login_tried = auth_data.login.decode("utf-8", "replace")
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    return check


def read_credentials(path: Path) -> tuple[str, str]:
    """``user:password`` from a file's first line (the password may hold ``:`` and blanks)."""
    line = path.read_text().split("\n", 1)[0].rstrip("\r")
    user, sep, password = line.partition(":")
    if not sep or not user:
        raise ValueError(f"{path}: expected user:password")
    return user, password


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                wire: Path | None) -> None:
    try:
        while chunk := await reader.read(65536):
            if wire is not None:
                with wire.open("ab") as out:
                    out.write(chunk)
            writer.write(chunk)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def serve(args: argparse.Namespace) -> None:
    """Run the SMTP server on loopback and the recording relay on ``--listen``."""
    host, port = args.listen.rsplit(":", 1)
    journal = Journal(args.spool)
    credentials = read_credentials(args.credentials) if args.credentials else None
    tls = args.mode != "cleartext-auth"
    if tls and not (args.cert and args.key):
        raise SystemExit(f"--mode {args.mode} needs --cert and --key")
    if not tls and credentials is None:
        raise SystemExit("--mode cleartext-auth needs --credentials")
    context = None
    if tls:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.cert, args.key)
    handler = RelayHandler(journal, senders_domain=args.senders_domain,
                           offer_auth=credentials is not None)
    peers: dict[int, str] = {}
    loop = asyncio.get_running_loop()

    def session() -> RelaySMTP:
        return RelaySMTP(
            handler, journal=journal, tls_required=tls,
            refuse_unqualified_ehlo=args.refuse_unqualified_ehlo, peers=peers,
            hostname=args.hostname, tls_context=context, require_starttls=False,
            auth_required=credentials is not None, auth_require_tls=tls,
            authenticator=authenticator(*credentials) if credentials else None, loop=loop)

    backend = await loop.create_server(session, "127.0.0.1", 0)
    backend_port = backend.sockets[0].getsockname()[1]
    wire = args.spool / "wire.bin"
    wire.touch()

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", backend_port)
        peer = client_w.get_extra_info("peername")
        peers[int(server_w.get_extra_info("sockname")[1])] = peer[0] if peer else "?"
        await asyncio.gather(_pipe(client_r, server_w, wire), _pipe(server_r, client_w, None))

    front = await asyncio.start_server(handle, host, int(port))
    async with backend, front:
        await front.serve_forever()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The relay's command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", required=True, help="ADDR:PORT clients connect to")
    parser.add_argument("--spool", required=True, type=Path)
    parser.add_argument("--mode", choices=MODES, default="gmail")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--credentials", type=Path, help="file with user:password")
    parser.add_argument("--hostname", default="relay.lab.test", help="name in the greeting")
    parser.add_argument("--refuse-unqualified-ehlo", action="store_true")
    parser.add_argument("--senders-domain", help="the only sender domain accepted")
    return parser.parse_args(argv)


def main() -> None:
    """Serve until killed."""
    args = parse_args()
    # AUTH without TLS is this mode's whole point: aiosmtpd's warning says so too.
    warnings.simplefilter("ignore")
    asyncio.run(serve(args))


@dataclass
class Relay:
    """A running relay as tests see it: its address, name and records."""

    name: str
    mode: str
    address: str
    port: int
    fqdn: str
    spool: Path
    #: (user, password) it checks AUTH against, or None (no AUTH offered)
    credentials: tuple[str, str] | None = None
    refuse_unqualified_ehlo: bool = False
    senders_domain: str | None = None
    #: the DNS names its certificate carries (empty in cleartext-auth mode)
    cert_names: list[str] = field(default_factory=list)
    cert: Path | None = None
    key: Path | None = None
    process: subprocess.Popen[bytes] | None = None

    def launch(self, log: Path, cwd: Path) -> subprocess.Popen[bytes]:
        """Start the relay process in a session of its own, on an empty spool (credentials
        go to a 0600 file in it); the caller waits for its port."""
        shutil.rmtree(self.spool, ignore_errors=True)  # records of an earlier run are not ours
        self.spool.mkdir(parents=True)
        argv = [sys.executable, "-m", "tests.lab.relay", "--listen",
                f"{self.address}:{self.port}", "--spool", str(self.spool), "--mode", self.mode,
                "--hostname", self.fqdn]
        if self.cert is not None and self.key is not None:
            argv += ["--cert", str(self.cert), "--key", str(self.key)]
        if self.credentials is not None:
            secret = self.spool / "credentials"
            fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(f"{self.credentials[0]}:{self.credentials[1]}\n")
            argv += ["--credentials", str(secret)]
        if self.refuse_unqualified_ehlo:
            argv.append("--refuse-unqualified-ehlo")
        if self.senders_domain:
            argv += ["--senders-domain", self.senders_domain]
        with log.open("ab") as out:
            self.process = subprocess.Popen(argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        return self.process

    def messages(self) -> list[dict[str, Any]]:
        """Every message accepted so far, oldest first."""
        return [json.loads(p.read_text()) for p in sorted(self.spool.glob("*.json"))]

    def refusals(self) -> list[dict[str, Any]]:
        """Every refused command so far, oldest first."""
        return self._lines("refusals.jsonl")

    def sessions(self) -> list[dict[str, Any]]:
        """Every finished connection so far, oldest first."""
        return self._lines("sessions.jsonl")

    def wait_sessions(self, count: int, timeout: float = 30) -> list[dict[str, Any]]:
        """Wait until at least ``count`` connections have ended (a session is recorded when
        the connection closes, a moment after the client is done); return them all."""
        deadline = time.monotonic() + timeout
        while len(sessions := self.sessions()) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.fqdn}: {len(sessions)} of {count} sessions ended "
                                   f"after {timeout}s")
            time.sleep(0.05)
        return sessions

    def _lines(self, name: str) -> list[dict[str, Any]]:
        path = self.spool / name
        if not path.exists():
            return []
        # A line still being written has no line end yet: it is left for the next look.
        return [json.loads(line) for line in path.read_text().splitlines(keepends=True)
                if line.endswith("\n")]

    def wire(self) -> bytes:
        """Every byte clients sent this relay, as it crossed the wire."""
        path = self.spool / "wire.bin"
        return path.read_bytes() if path.exists() else b""

    def received_secret(self, secret: str) -> bool:
        """Whether ``secret`` crossed the wire readable: as is, or inside any base64 token
        (AUTH PLAIN's ``\\0user\\0password``, AUTH LOGIN's password line)."""
        wire, needle = self.wire(), secret.encode()
        if needle in wire:
            return True
        for token in _BASE64_TOKEN.findall(wire):
            with contextlib.suppress(binascii.Error, ValueError):
                if needle in base64.b64decode(token + b"=" * (-len(token) % 4)):
                    return True
        return False


if __name__ == "__main__":
    main()
