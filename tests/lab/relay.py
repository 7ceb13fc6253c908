"""A relay-grade smarthost for the lab: STARTTLS required, then SMTP AUTH required.

Run as ``python -m tests.lab.relay --listen ADDR:PORT --spool DIR --cert C --key K
--credentials FILE``, FILE holding ``user:password``. It is aiosmtpd (a real SMTP server
library) behind a recording TCP relay: every byte a client sends is appended to
``DIR/wire.bin`` as it crossed the wire, so a test can show that a password never did in
clear (after STARTTLS the bytes are TLS records). Each accepted message is written as
``DIR/<n>.json`` with the envelope, the data, the AUTH identity and the TLS version.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session


class Recorder:
    """Stores accepted messages as JSON files, numbered in arrival order."""

    def __init__(self, spool: Path) -> None:
        self.spool = spool
        self.lock = threading.Lock()
        self.count = len(list(spool.glob("*.json")))

    async def handle_DATA(self, server: SMTP, session: Session,
                          envelope: Envelope) -> str:
        """Record the message and accept it."""
        ssl_object = server.transport.get_extra_info("ssl_object") if server.transport else None
        tls = ssl_object.version() if ssl_object is not None else None
        content = envelope.content
        data = content.decode("utf-8", "replace") if isinstance(content, bytes) else str(content)
        doc: dict[str, Any] = {"mail_from": envelope.mail_from, "rcpts": list(envelope.rcpt_tos),
                               "data": data, "auth_user": _login(session), "tls": tls}
        with self.lock:
            self.count += 1
            (self.spool / f"{self.count:06d}.json").write_text(json.dumps(doc))
        return "250 2.0.0 Ok: queued by the lab relay"


def _login(session: Session) -> str | None:
    data = session.auth_data
    if isinstance(data, LoginPassword):
        return data.login.decode("utf-8", "replace")
    return None


def authenticator(user: str, password: str) -> Any:
    """An aiosmtpd authenticator accepting exactly one user name and password."""

    def check(server: SMTP, session: Session, envelope: Envelope, mechanism: str,
              auth_data: Any) -> AuthResult:
        ok = (isinstance(auth_data, LoginPassword) and auth_data.login.decode() == user
              and auth_data.password.decode() == password)
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    return check


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


async def _serve_wire(listen: tuple[str, int], backend: tuple[str, int], wire: Path) -> None:
    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(*backend)
        await asyncio.gather(_pipe(client_r, server_w, wire), _pipe(server_r, client_w, None))

    server = await asyncio.start_server(handle, *listen)
    async with server:
        await server.serve_forever()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def main() -> None:
    """Serve until killed."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", required=True, help="ADDR:PORT clients connect to")
    parser.add_argument("--spool", required=True, type=Path)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--credentials", required=True, type=Path, help="file with user:password")
    args = parser.parse_args()
    host, port = args.listen.rsplit(":", 1)
    user, _, password = args.credentials.read_text().strip().partition(":")
    args.spool.mkdir(parents=True, exist_ok=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.cert, args.key)
    controller = Controller(Recorder(args.spool), hostname="127.0.0.1", port=_free_port(),
                            server_hostname="relay.lab.test", tls_context=context,
                            require_starttls=True, auth_required=True, auth_require_tls=True,
                            authenticator=authenticator(user, password))
    controller.start()
    backend = ("127.0.0.1", controller.port)
    asyncio.run(_serve_wire((host, int(port)), backend, args.spool / "wire.bin"))


if __name__ == "__main__":
    main()
