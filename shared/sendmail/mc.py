"""Read and edit sendmail.mc and read sendmail.cf, as pure text functions.

Every line relayfleet writes into sendmail.mc ends in ``dnl # managed by relayfleet``:
``dnl`` makes m4 drop the rest of the line, so the marker costs nothing in the compiled
sendmail.cf, and it lets a later change find exactly the lines it owns.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from shared.validation import SmarthostRequest, m4_quote

MARK = "dnl # managed by relayfleet"
#: the mechanisms the client may use with the smarthost unless the mc already sets its own
AUTH_MECHANISMS = "EXTERNAL GSSAPI DIGEST-MD5 CRAM-MD5 LOGIN PLAIN"
MAILER_PREFIXES = ("relay", "esmtp", "smtp", "smtp8", "dsmtp")
#: the port reaches sendmail through the mailer's argv: ``TCP $h PORT``
_PORT_MACROS = ("RELAY_MAILER_ARGS", "ESMTP_MAILER_ARGS", "SMTP_MAILER_ARGS")


def _define_re(name: str) -> re.Pattern[str]:
    return re.compile(
        r"^\s*define\(\s*`" + re.escape(name) + r"'\s*,(?P<value>.*?)\)\s*(?:dnl\b.*)?$")


_SMART_HOST_RE = _define_re("SMART_HOST")
_COMMENTED_SMART_HOST_RE = re.compile(r"^\s*dnl\b\s*#?\s*define\(\s*`SMART_HOST'")
_PORT_RES = {name: _define_re(name) for name in _PORT_MACROS}
_TCP_PORT_RE = re.compile(r"^TCP \$h(?: (?P<port>\d{1,5}))?$")
_AUTH_MECH_RE = _define_re("confAUTH_MECHANISMS")
_AUTHINFO_FEATURE_RE = re.compile(r"^\s*FEATURE\(\s*`authinfo'")
_MAILER_RE = re.compile(r"^\s*(MAILER\(|MAILER_DEFINITIONS\b)")


def unquote_m4(value: str) -> str:
    """Strip m4 quotes and blanks around a macro value as written in an mc file."""
    value = value.strip()
    while value.startswith("`") and value.endswith("'"):
        value = value[1:-1].strip()
    return value


@dataclass(frozen=True)
class Smarthost:
    """A smarthost as configured: where outbound mail goes and how."""

    host: str
    port: int = 25
    mx: bool = False
    mailer: str = "relay"

    @classmethod
    def from_value(cls, value: str, port: int | None = None) -> Smarthost | None:
        """Parse a SMART_HOST / ``DS`` value such as ``esmtp:[relay.example.com]``."""
        value = value.strip()
        if not value:
            return None
        mailer = "relay"
        prefix, sep, rest = value.partition(":")
        if sep and prefix in MAILER_PREFIXES:
            mailer, value = prefix, rest
        mx = True
        if value.startswith("[") and value.endswith("]"):
            inner = value[1:-1]
            # An address literal keeps its brackets: it never had an MX to look up.
            v6 = re.fullmatch(r"(?i)IPv6:(?P<addr>[0-9a-f:.]+)", inner)
            if v6:
                # sendmail's tag is spelled "IPv6:"; the address itself is case-blind.
                return cls(host=f"[IPv6:{v6.group('addr').lower()}]", port=port or 25, mx=False,
                           mailer=mailer)
            value = f"[{inner}]" if re.fullmatch(r"[0-9.]+", inner) else inner
            mx = False
        return cls(host=value.lower(), port=port or 25, mx=mx, mailer=mailer)

    @classmethod
    def from_request(cls, request: SmarthostRequest) -> Smarthost:
        """The smarthost a validated request asks for."""
        literal = request.host.startswith("[")
        return cls(host=request.host, port=request.port or 25, mx=request.mx and not literal,
                   mailer=request.mailer)

    def to_dict(self) -> dict[str, object]:
        """Plain-JSON form."""
        return {"host": self.host, "port": self.port, "mx": self.mx, "mailer": self.mailer}


@dataclass(frozen=True)
class McState:
    """What sendmail.mc says about the smarthost."""

    smarthost: Smarthost | None
    authinfo_feature: bool
    active_defines: int


def _is_active(line: str) -> bool:
    return not line.lstrip().startswith(("dnl", "#"))


def _port_of(value: str) -> int | None:
    match = _TCP_PORT_RE.match(unquote_m4(value))
    if match and match.group("port"):
        return int(match.group("port"))
    return None


def read_mc(text: str) -> McState:
    """Parse the active smarthost settings out of sendmail.mc."""
    host_value: str | None = None
    defines = 0
    ports: dict[str, int | None] = {}
    authinfo = False
    for line in text.splitlines():
        if not _is_active(line):
            continue
        match = _SMART_HOST_RE.match(line)
        if match:
            defines += 1
            if host_value is None:
                host_value = unquote_m4(match.group("value"))
            continue
        for name, regex in _PORT_RES.items():
            port_match = regex.match(line)
            if port_match:
                ports[name] = _port_of(port_match.group("value"))
        if _AUTHINFO_FEATURE_RE.match(line):
            authinfo = True
    smarthost = None
    if host_value is not None:
        parsed = Smarthost.from_value(host_value)
        if parsed is not None:
            smarthost = Smarthost.from_value(
                host_value, ports.get(f"{parsed.mailer.upper()}_MAILER_ARGS"))
    return McState(smarthost=smarthost, authinfo_feature=authinfo, active_defines=defines)


def smarthost_block(request: SmarthostRequest, *, mechanisms: bool, feature: bool) -> list[str]:
    """The mc lines that configure ``request``'s smarthost (each carrying the marker)."""
    lines = [f"define(`SMART_HOST', {m4_quote(request.smart_host_value())}){MARK}\n"]
    if request.port is not None:
        # Not `[host]:port`: sendmail would read that as a list of two hosts.
        # Relay and esmtp always (SPEC); smtp too when the smarthost names that mailer.
        names = [n for n in _PORT_MACROS
                 if n != "SMTP_MAILER_ARGS" or request.mailer == "smtp"]
        lines += [f"define(`{name}', `TCP $h {request.port}'){MARK}\n" for name in names]
    if request.auth is not None:
        if mechanisms:
            lines.append(f"define(`confAUTH_MECHANISMS', `{AUTH_MECHANISMS}'){MARK}\n")
        if feature:
            lines.append(f"FEATURE(`authinfo'){MARK}\n")
    return lines


def _owned(line: str) -> bool:
    """True for active lines that a smarthost change replaces."""
    if not _is_active(line):
        return False
    if line.rstrip().endswith(MARK) or _SMART_HOST_RE.match(line):
        return True
    for regex in _PORT_RES.values():
        match = regex.match(line)
        if match and _TCP_PORT_RE.match(unquote_m4(match.group("value"))):
            return True
    return False


def _first_mailer_index(lines: list[str]) -> int | None:
    return next((i for i, line in enumerate(lines) if _is_active(line) and _MAILER_RE.match(line)),
                None)


def set_smarthost_mc(text: str, request: SmarthostRequest) -> str:
    """Return sendmail.mc with exactly one active smarthost define for ``request``.

    The new lines take the place of the first active define, else of the commented
    template line (``dnl define(`SMART_HOST', ...)dnl``), else go before the first
    ``MAILER``; never after a ``MAILER`` line, since the port must be known by then.
    """
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    anchor: int | None = None
    kept: list[str] = []
    for line in lines:
        if _owned(line):
            if anchor is None and _SMART_HOST_RE.match(line):
                anchor = len(kept)
            continue
        kept.append(line)
    if anchor is None:
        template = next((i for i, line in enumerate(kept) if _COMMENTED_SMART_HOST_RE.match(line)),
                        None)
        if template is not None:
            del kept[template]
            anchor = template
    mailer_at = _first_mailer_index(kept)
    if anchor is None or (mailer_at is not None and anchor > mailer_at):
        anchor = mailer_at if mailer_at is not None else len(kept)
    has_mechanisms = any(_is_active(ln) and _AUTH_MECH_RE.match(ln) for ln in kept)
    has_feature = any(_is_active(ln) and _AUTHINFO_FEATURE_RE.match(ln) for ln in kept)
    block = smarthost_block(request, mechanisms=not has_mechanisms, feature=not has_feature)
    kept[anchor:anchor] = block
    return "".join(kept)


def remove_smarthost_mc(text: str) -> str:
    """Return sendmail.mc with no active smarthost: defines commented out, owned lines gone."""
    out: list[str] = []
    for line in text.splitlines(keepends=True):
        if not _owned(line):
            out.append(line)
        elif _SMART_HOST_RE.match(line) and not line.rstrip().endswith(MARK):
            # Someone else's define: keep it visible, as a comment, like an admin would.
            out.append(f"dnl {line}")
    return "".join(out)


def unified_diff(old: str, new: str, path: str) -> str:
    """A unified diff between two versions of a file, or '' when they are equal."""
    return "".join(difflib.unified_diff(old.splitlines(keepends=True),
                                        new.splitlines(keepends=True),
                                        fromfile=f"{path} (current)", tofile=f"{path} (new)"))


# -- sendmail.cf -------------------------------------------------------------------------

_MAILER_DEF_RE = re.compile(r"^M(?P<name>[A-Za-z0-9_-]+),")
_ARGS_RE = re.compile(r"\bA=(?P<args>.*)$")


def _mailer_args(lines: Iterable[str]) -> dict[str, str]:
    args: dict[str, str] = {}
    current: str | None = None
    for line in lines:
        match = _MAILER_DEF_RE.match(line)
        if match:
            current = match.group("name")
        elif not line.startswith(("\t", " ")):
            current = None
        if current is not None:
            arg_match = _ARGS_RE.search(line)
            if arg_match:
                args[current] = arg_match.group("args").strip()
    return args


def read_cf(text: str) -> Smarthost | None:
    """The smarthost a compiled sendmail.cf uses (its ``DS`` line and mailer port)."""
    lines = text.splitlines()
    value = next((line[2:] for line in lines if line.startswith("DS")), "")
    smarthost = Smarthost.from_value(value)
    if smarthost is None:
        return None
    args = _mailer_args(lines).get(smarthost.mailer, "")
    port = _port_of(args) or 25
    return Smarthost(smarthost.host, port, smarthost.mx, smarthost.mailer)
