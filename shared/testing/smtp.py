"""Scripted SMTP peers: what a fake host's ``open_tcp`` connects to."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SmtpScript:
    """How a fake SMTP server answers: banner, EHLO capabilities, or silence."""

    name: str = "smtp.example.test"
    banner: str = "220 {name} ESMTP ready"
    capabilities: tuple[str, ...] = ("PIPELINING", "STARTTLS", "AUTH PLAIN LOGIN", "8BITMIME")
    #: refuse EHLO (an old HELO-only server)
    helo_only: bool = False
    #: accept the connection and never say anything (reads time out at once)
    silent: bool = False


class FakeSmtpStream:
    """A connected :class:`~shared.executor.ByteStream` to a scripted SMTP server."""

    def __init__(self, script: SmtpScript) -> None:
        self.script = script
        self.received: list[str] = []
        self.closed = False
        self.timeout: float | None = None
        self._out = bytearray()
        self._in = b""
        if not script.silent:
            self._reply(script.banner.format(name=script.name))

    def _check_open(self) -> None:
        if self.closed:
            raise OSError("the stream is closed")

    def _reply(self, *lines: str) -> None:
        for line in lines:
            self._out += line.encode() + b"\r\n"

    def _answer(self, line: str) -> None:
        verb = line.split(" ", 1)[0].upper()
        name = self.script.name
        if verb == "EHLO" and not self.script.helo_only:
            caps = [name, *self.script.capabilities]
            self._reply(*[f"250-{c}" for c in caps[:-1]], f"250 {caps[-1]}")
        elif verb == "EHLO":
            self._reply("502 5.5.1 command not implemented")
        elif verb == "HELO":
            self._reply(f"250 {name}")
        elif verb == "QUIT":
            self._reply("221 2.0.0 Bye")
        elif verb in ("MAIL", "RCPT", "NOOP", "RSET"):
            self._reply("250 2.0.0 Ok")
        else:
            self._reply("500 5.5.2 command unrecognized")

    def sendall(self, data: bytes, /) -> None:
        """Take the client's bytes; answer each complete line."""
        self._check_open()
        self._in += data
        while b"\n" in self._in:
            raw, self._in = self._in.split(b"\n", 1)
            line = raw.decode("utf-8", "replace").rstrip("\r")
            self.received.append(line)
            if not self.script.silent:
                self._answer(line)

    def recv(self, size: int, /) -> bytes:
        """What the server has said and the client has not read yet."""
        self._check_open()
        if not self._out:
            if self.script.silent:
                raise TimeoutError("timed out")
            return b""
        chunk = bytes(self._out[:size])
        del self._out[:size]
        return chunk

    def settimeout(self, timeout: float | None, /) -> None:
        """Remember the time box (reads never block here)."""
        self.timeout = timeout

    def close(self) -> None:
        """Close; safe to call twice."""
        self.closed = True
