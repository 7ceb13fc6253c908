"""A small SMTP server that records every message it accepts: the lab's smarthost.

Run as ``python -m tests.lab.sink --listen ADDR:PORT --spool DIR [--mode MODE]
[--starttls-offer] [--auth]``, MODE one of accept, refuse-mail, tempfail, hang.
Each accepted message is written as ``DIR/<n>.json`` with the envelope, the data and
the AUTH identity used (if any), so tests can read what arrived. ``--mode hang``
accepts TCP connections but never says anything (a smarthost that does not answer).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socketserver
import threading
import time
from pathlib import Path

_counter_lock = threading.Lock()
_counter = [0]


class SinkHandler(socketserver.StreamRequestHandler):
    """One SMTP session."""

    server: SinkServer

    def reply(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")
        self.wfile.flush()

    def readline(self) -> str | None:
        raw = self.rfile.readline(65536)
        if not raw:
            return None
        return raw.decode("utf-8", errors="replace").rstrip("\r\n")

    def handle(self) -> None:
        mode = self.server.mode
        if mode == "hang":
            time.sleep(3600)
            return
        self.reply("220 smarthost.lab.test ESMTP relayfleet-lab-sink")
        mail_from: str | None = None
        rcpts: list[str] = []
        auth_user: str | None = None
        while True:
            line = self.readline()
            if line is None:
                return
            verb = line.split(" ", 1)[0].upper()
            arg = line[len(verb):].strip()
            if verb in ("EHLO", "HELO"):
                if verb == "HELO":
                    self.reply("250 smarthost.lab.test")
                    continue
                lines = ["smarthost.lab.test", "PIPELINING", "8BITMIME", "SIZE 10240000"]
                if self.server.offer_starttls:
                    lines.append("STARTTLS")
                if self.server.offer_auth:
                    lines.append("AUTH PLAIN LOGIN")
                for item in lines[:-1]:
                    self.reply(f"250-{item}")
                self.reply(f"250 {lines[-1]}")
            elif verb == "AUTH" and self.server.offer_auth:
                auth_user = self.auth(arg)
                if auth_user is None:
                    self.reply("535 5.7.8 Authentication failed")
                else:
                    self.reply("235 2.0.0 Authentication successful")
            elif verb == "MAIL":
                if mode == "refuse-mail":
                    self.reply("554 5.7.1 Relaying denied by lab sink")
                    continue
                if mode == "tempfail":
                    self.reply("451 4.3.0 Lab sink is temporarily failing")
                    continue
                mail_from = arg.split(":", 1)[1].strip() if ":" in arg else arg
                rcpts = []
                self.reply("250 2.1.0 Ok")
            elif verb == "RCPT":
                rcpts.append(arg.split(":", 1)[1].strip() if ":" in arg else arg)
                self.reply("250 2.1.5 Ok")
            elif verb == "DATA":
                if mail_from is None or not rcpts:
                    self.reply("503 5.5.1 Need MAIL and RCPT first")
                    continue
                self.reply("354 End data with <CR><LF>.<CR><LF>")
                data_lines = []
                while True:
                    dl = self.readline()
                    if dl is None:
                        return
                    if dl == ".":
                        break
                    data_lines.append(dl[1:] if dl.startswith("..") else dl)
                self.server.store(mail_from, rcpts, "\n".join(data_lines), auth_user,
                                  self.client_address[0])
                self.reply("250 2.0.0 Ok: queued")
                mail_from, rcpts = None, []
            elif verb == "RSET":
                mail_from, rcpts = None, []
                self.reply("250 2.0.0 Ok")
            elif verb == "NOOP":
                self.reply("250 2.0.0 Ok")
            elif verb == "QUIT":
                self.reply("221 2.0.0 Bye")
                return
            else:
                self.reply("502 5.5.2 Command not recognized")

    def auth(self, arg: str) -> str | None:
        parts = arg.split()
        mech = parts[0].upper() if parts else ""
        if mech == "PLAIN":
            blob = parts[1] if len(parts) > 1 else None
            if blob is None:
                self.reply("334 ")
                blob = self.readline() or ""
            try:
                _, user, password = base64.b64decode(blob).decode().split("\x00")
            except ValueError:
                return None
        elif mech == "LOGIN":
            self.reply("334 VXNlcm5hbWU6")
            user = base64.b64decode(self.readline() or "").decode(errors="replace")
            self.reply("334 UGFzc3dvcmQ6")
            password = base64.b64decode(self.readline() or "").decode(errors="replace")
        else:
            return None
        expected = self.server.credentials
        if expected is not None and (user, password) != expected:
            return None
        return user


class SinkServer(socketserver.ThreadingTCPServer):
    """Threaded SMTP sink writing each message to the spool directory as JSON."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], spool: Path, mode: str, offer_starttls: bool,
                 offer_auth: bool, credentials: tuple[str, str] | None) -> None:
        super().__init__(address, SinkHandler)
        self.spool = spool
        self.mode = mode
        self.offer_starttls = offer_starttls
        self.offer_auth = offer_auth
        self.credentials = credentials

    def store(self, mail_from: str, rcpts: list[str], data: str, auth_user: str | None,
              peer: str) -> None:
        with _counter_lock:
            _counter[0] += 1
            n = _counter[0]
        doc = {"mail_from": mail_from, "rcpts": rcpts, "data": data, "auth_user": auth_user,
               "peer": peer, "received_at": time.time()}
        tmp = self.spool / f".{os.getpid()}-{n}.tmp"
        tmp.write_text(json.dumps(doc))
        tmp.rename(self.spool / f"{time.time_ns()}-{n}.json")


def main() -> None:
    """Run the sink until killed."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", required=True, help="ADDR:PORT")
    parser.add_argument("--spool", required=True, type=Path)
    parser.add_argument("--mode", default="accept", choices=["accept", "refuse-mail", "tempfail",
                                                             "hang"])
    parser.add_argument("--starttls-offer", action="store_true")
    parser.add_argument("--auth", action="store_true", help="offer AUTH PLAIN LOGIN")
    parser.add_argument("--credentials", help="USER:PASSWORD the sink insists on")
    args = parser.parse_args()
    host, port = args.listen.rsplit(":", 1)
    args.spool.mkdir(parents=True, exist_ok=True)
    creds = tuple(args.credentials.split(":", 1)) if args.credentials else None
    server = SinkServer((host, int(port)), args.spool, args.mode, args.starttls_offer, args.auth,
                        creds)  # type: ignore[arg-type]
    server.serve_forever()


if __name__ == "__main__":
    main()
