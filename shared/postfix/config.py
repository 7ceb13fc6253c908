"""Postfix's smarthost settings as text: ``relayhost`` values, ``postconf`` output, the
SASL password map, and the main.cf edits a smarthost change makes.

``relayhost`` is ``host``, ``host:port``, ``[host]`` or ``[host]:port``: brackets turn MX
lookups off, and (unlike sendmail's SMART_HOST) the port after the colon is honoured.
The SASL map ``sasl_passwd`` has one ``KEY USER:PASSWORD`` line per relay; Postfix looks
the relay up by the relayhost value itself, so the key is that value verbatim. Values
reach this module validated (host names, ports and credentials have strict grammars in
:mod:`shared.validation`): none can hold ``$`` (parameter expansion), ``,`` or blanks
(lists), ``=`` or a line end.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from shared.sendmail.mc import Smarthost
from shared.validation import SmarthostRequest

#: the main.cf parameters a smarthost change reads
SMARTHOST_PARAMETERS = ("relayhost", "smtp_sasl_auth_enable", "smtp_sasl_password_maps",
                        "smtp_sasl_security_options", "smtp_tls_security_level",
                        "default_database_type")
#: the SASL settings a change without credentials takes out again
SASL_PARAMETERS = ("smtp_sasl_auth_enable", "smtp_sasl_password_maps",
                   "smtp_sasl_security_options")
#: TLS levels under which a password never crosses the wire in clear (``may`` and ``dane``
#: fall back to plain text when the relay offers no TLS; ``none`` never encrypts)
ENCRYPTING_LEVELS = frozenset({"encrypt", "dane-only", "fingerprint", "verify", "secure"})
#: the file each indexed map type builds beside its source (``postmap TYPE:FILE``)
MAP_SUFFIXES = {"hash": ".db", "btree": ".db", "lmdb": ".lmdb", "cdb": ".cdb", "dbm": ".db"}

_POSTCONF_LINE = re.compile(r"^(?P<name>[A-Za-z0-9_]+) = ?(?P<value>.*)$")
_RELAYHOST = re.compile(r"^(?:\[(?P<literal>[^\]]+)\]|(?P<name>[^:\[\]\s]+))"
                        r"(?::(?P<port>\d+|[a-z][a-z0-9-]*))?$")
#: service names a relayhost may use for its port (/etc/services)
_SERVICES = {"smtp": 25, "submission": 587, "smtps": 465, "submissions": 465}


@dataclass(frozen=True)
class MainCfEdits:
    """What ``postconf -e`` sets and ``postconf -X`` takes out of main.cf."""

    set: Mapping[str, str]
    remove: tuple[str, ...] = ()

    def postconf_args(self) -> list[list[str]]:
        """The postconf argument lists that make these edits (``-e`` then ``-X``)."""
        out = []
        if self.set:
            out.append(["-e", *(f"{k}={v}" for k, v in self.set.items())])
        if self.remove:
            out.append(["-X", *self.remove])
        return out


def parse_postconf(text: str) -> dict[str, str]:
    """``name = value`` lines (``postconf NAME...``) into a dict."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        match = _POSTCONF_LINE.match(line)
        if match:
            out[match.group("name")] = match.group("value").strip()
    return out


def wanted_smarthost(request: SmarthostRequest) -> Smarthost:
    """What relayhost must say after ``request``: Postfix has no mailers (it always speaks
    ESMTP), so the mailer is left at its default."""
    return replace(Smarthost.from_request(request), mailer="relay")


def relayhost_value(smarthost: Smarthost) -> str:
    """The ``relayhost`` value for a smarthost: ``[host]:port`` without MX lookups."""
    host = smarthost.host
    if host.startswith("["):
        # sendmail writes IPv6 literals [IPv6:addr]; Postfix takes the address in brackets
        inner = host[1:-1]
        target = f"[{inner[5:] if inner.lower().startswith('ipv6:') else inner}]"
    else:
        target = host if smarthost.mx else f"[{host}]"
    return target if smarthost.port == 25 else f"{target}:{smarthost.port}"


def relayhosts(value: str) -> list[str]:
    """The destinations a ``relayhost`` value lists (comma or blank separated)."""
    return [v for v in re.split(r"[\s,]+", value.strip()) if v]


def parse_relayhost(value: str) -> Smarthost | None:
    """The smarthost a ``relayhost`` value names (the first, when it lists several)."""
    listed = relayhosts(value)
    if not listed:
        return None
    first = listed[0]
    match = _RELAYHOST.match(first)
    if match is None:
        return Smarthost(host=first.lower(), port=25, mx=True)
    service = match.group("port") or "smtp"
    port = int(service) if service.isdigit() else _SERVICES.get(service, 25)
    literal = match.group("literal")
    if literal is None:
        return Smarthost(host=match.group("name").lower(), port=port, mx=True)
    if ":" in literal:  # an IPv6 address: keep sendmail's literal spelling in answers
        address = literal[5:] if literal.lower().startswith("ipv6:") else literal
        return Smarthost(host=f"[IPv6:{address.lower()}]", port=port, mx=False)
    if re.fullmatch(r"[0-9.]+", literal):
        return Smarthost(host=f"[{literal}]", port=port, mx=False)
    return Smarthost(host=literal.lower(), port=port, mx=False)


def smarthost_edits(request: SmarthostRequest | None, current: Mapping[str, str],
                    map_type: str, map_path: str) -> MainCfEdits:
    """The main.cf edits that point Postfix at ``request`` (None: back to direct delivery).

    With credentials: SASL on, the map, no anonymous mechanisms, and a TLS level that
    encrypts (kept when it already does). Without: the SASL settings go, and a TLS level
    of ``encrypt`` that came with them (relayfleet's map is configured) goes back to
    ``may``, Debian's and RHEL's default: left at ``encrypt``, direct delivery would refuse
    every MX that offers no STARTTLS.
    """
    ours = (current.get("smtp_sasl_password_maps") == f"{map_type}:{map_path}"
            and current.get("smtp_tls_security_level") == "encrypt")
    relax = {"smtp_tls_security_level": "may"} if ours else {}
    if request is None:
        return MainCfEdits(relax, ("relayhost", *SASL_PARAMETERS))
    wanted = {"relayhost": relayhost_value(wanted_smarthost(request))}
    if request.auth is None:
        return MainCfEdits({**wanted, **relax}, SASL_PARAMETERS)
    wanted.update({"smtp_sasl_auth_enable": "yes",
                   "smtp_sasl_password_maps": f"{map_type}:{map_path}",
                   "smtp_sasl_security_options": "noanonymous"})
    if current.get("smtp_tls_security_level", "") not in ENCRYPTING_LEVELS:
        wanted["smtp_tls_security_level"] = "encrypt"
    return MainCfEdits(wanted)


# -- the SASL password map --------------------------------------------------------------
def _entries(text: str) -> Iterable[tuple[str, str]]:
    """(key, the rest) of each line that is an entry (not blank, not a comment)."""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and not line[:1].isspace():
            key, _, rest = stripped.partition(" ")
            if "\t" in key:
                key, _, tail = key.partition("\t")
                rest = f"{tail} {rest}".strip()
            yield key, rest.strip()


def set_entry(text: str, key: str, username: str, password: str) -> str:
    """The map with ``key``'s entry set to these credentials (other lines kept)."""
    entry = f"{key} {username}:{password}"
    lines = [ln for ln in text.splitlines() if not _is_entry_for(ln, key)]
    return "\n".join([*lines, entry]) + "\n"


def remove_entry(text: str, *keys: str) -> str:
    """The map without these keys' entries."""
    lines = [ln for ln in text.splitlines() if not any(_is_entry_for(ln, k) for k in keys)]
    return "\n".join(lines) + ("\n" if lines else "")


def username_for(text: str, key: str) -> str | None:
    """The user name ``key``'s entry logs in with (never the password)."""
    for entry_key, rest in _entries(text):
        if entry_key == key:
            user, sep, _ = rest.partition(":")
            return user if sep else None
    return None


def _is_entry_for(line: str, key: str) -> bool:
    return any(k == key for k, _ in _entries(line))
