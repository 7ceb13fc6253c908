"""Postfix's smarthost settings as text: ``relayhost`` values, ``postconf`` output, the
SASL password map, and the main.cf edits a smarthost change makes (relay, SMTP AUTH, TLS
policy, sender masquerading).

``relayhost`` is ``host``, ``host:port``, ``[host]`` or ``[host]:port``: brackets turn MX
lookups off, and (unlike sendmail's SMART_HOST) the port after the colon is honoured.
The SASL map ``sasl_passwd`` has one ``KEY USER:PASSWORD`` line per relay; Postfix looks
the relay up by the relayhost value itself, so the key is that value verbatim. Values
reach this module validated (host names, ports, domains, paths and credentials have strict
grammars in :mod:`shared.validation`): no caller value written to main.cf can hold ``$``
(parameter expansion), ``,`` or blanks (lists), ``=``, braces or a line end. A password
never goes into main.cf, only into the map, where any printable character is itself (see
:func:`set_entry`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from shared.errors import ConfigError
from shared.sendmail.mc import Smarthost
from shared.validation import Masquerade, SmarthostRequest, TlsPolicy

#: the main.cf parameters a smarthost change reads
SMARTHOST_PARAMETERS = ("relayhost", "smtp_sasl_auth_enable", "smtp_sasl_password_maps",
                        "smtp_sasl_security_options", "smtp_tls_security_level",
                        "smtp_tls_CAfile", "smtp_tls_verify_cert_match",
                        "smtp_tls_secure_cert_match", "smtp_generic_maps",
                        "sender_canonical_maps", "sender_canonical_classes",
                        "default_database_type")
#: the SASL settings a change without credentials takes out again
SASL_PARAMETERS = ("smtp_sasl_auth_enable", "smtp_sasl_password_maps",
                   "smtp_sasl_security_options")
#: the TLS policy mode each smtp_tls_security_level relayfleet writes stands for
TLS_MODE_OF_LEVEL = {"may": "may", "encrypt": "encrypt", "verify": "verify",
                     "secure": "verify"}
#: the levels that require TLS (what remove_smarthost takes back to ``may``)
REQUIRED_LEVELS = frozenset({"encrypt", "verify", "secure"})
#: how each verifying level matches the certificate to the relay, and Postfix's default
CERT_MATCH = {"verify": ("smtp_tls_verify_cert_match", "hostname"),
              "secure": ("smtp_tls_secure_cert_match", "nexthop, dot-nexthop")}
#: smtp_tls_CAfile as each flavour's stock main.cf sets it (Debian's sets none): what it
#: goes back to when a verify policy ends
STOCK_CA_FILE = {"rhel": "/etc/pki/tls/certs/ca-bundle.crt"}
#: the names Postfix gives the host's own mail (``$myhostname`` is expanded by Postfix
#: when it reads main.cf, so the map follows a later change of the host name)
OWN_NAMES = ("$myhostname", "localhost", "localhost.localdomain")
#: the map parameter a masquerade is written to, by whether it covers the envelope
#: (see masquerade_edits), and what else each one sets
MASQUERADE_MAPS = {True: "smtp_generic_maps", False: "sender_canonical_maps"}
_MASQUERADE_EXTRA = {True: {}, False: {"sender_canonical_classes": "header_sender"}}
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
    return _words(value)


def _words(value: str) -> list[str]:
    """The items of a Postfix list value (comma or blank separated)."""
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


def tls_level(policy: TlsPolicy, smarthost: Smarthost) -> str:
    """The smtp_tls_security_level for ``policy`` towards ``smarthost``.

    ``verify`` needs the certificate chain to verify and the certificate to name the relay.
    For a bracketed relayhost (no MX lookup) Postfix's ``verify`` level does exactly that:
    smtp_tls_verify_cert_match (default ``hostname``) matches the name written in
    relayhost, and it takes an address literal too when the certificate names the address
    (``secure`` refuses those: "hostname mismatch", checked on Postfix 3.7). With MX lookups
    ``verify`` would accept whatever host name unauthenticated DNS returned; ``secure``
    still insists on the relay's own domain (``nexthop, dot-nexthop``).
    """
    if policy.mode != "verify":
        return policy.mode
    return "secure" if smarthost.mx and not smarthost.host.startswith("[") else "verify"


def masquerade_map(domain: str) -> str:
    """An inline table rewriting the host's own names to ``@domain`` (the whole setting
    stays in main.cf: in the diff, backed up and restored with it).

    A result ``@domain`` keeps the local part (canonical(5), generic(5)), so
    ``asterisk@pbx.localdomain`` becomes ``asterisk@domain``; a locally submitted bare
    ``asterisk`` was qualified with myorigin (``$myhostname``, or Debian's /etc/mailname
    naming the same host) when it was queued. Foreign addresses are left alone.
    """
    return "inline:{ " + ", ".join(f"{{@{name}=@{domain}}}" for name in OWN_NAMES) + " }"


#: masquerade_map's value for any domain (the first mention captured, the others the same)
_MASQUERADE_MAP = re.compile(re.escape(masquerade_map("DOMAIN")).replace(
    "DOMAIN", "(?P<domain>[a-z0-9.-]+)", 1).replace("DOMAIN", "(?P=domain)") + "$")


def _our_masquerade(values: Mapping[str, str], envelope: bool) -> str | None:
    """The domain of relayfleet's masquerade in ``envelope``'s map parameter, if any."""
    match = _MASQUERADE_MAP.match(values.get(MASQUERADE_MAPS[envelope], ""))
    return match.group("domain") if match else None


def parse_masquerade(values: Mapping[str, str]) -> dict[str, str | bool] | None:
    """``{domain, envelope}`` of the masquerade relayfleet's map in main.cf says (None: none,
    or a map that is not ours); the domain as written, never validated: main.cf is whatever
    the host holds, and reading it back must not fail."""
    for envelope in (True, False):
        domain = _our_masquerade(values, envelope)
        if domain is not None:
            return {"domain": domain, "envelope": envelope}
    return None


def masquerade_edits(masquerade: Masquerade | None,
                     current: Mapping[str, str]) -> tuple[dict[str, str], tuple[str, ...]]:
    """The main.cf edits for ``masquerade`` (None: relayfleet's masquerade taken out).

    With the envelope: ``smtp_generic_maps``, applied by the SMTP client as each message
    leaves, to the envelope and the headers alike, so the voicemail already queued under
    ``asterisk@pbx.localdomain`` goes out masqueraded too, and mail delivered on the host
    keeps its local names. Headers only: ``sender_canonical_maps`` with
    ``sender_canonical_classes = header_sender`` (applied as a message is queued: mail
    queued before keeps its headers). Not ``myorigin``: it also qualifies unqualified
    *recipients* (cron's ``root`` would leave the host for the customer's domain); not
    ``masquerade_domains``: it only strips subdomains of a listed domain and cannot turn
    pbx.localdomain into another domain. Checked on Postfix 3.7: ``$myhostname`` in the
    inline table is expanded, and a queued message's sender is rewritten by the generic map
    but not by the canonical one. ConfigError when the parameter holds a map that is not
    relayfleet's: a second rewrite of the same senders would fight it.
    """
    wanted: dict[str, str] = {}
    if masquerade is not None:
        name = MASQUERADE_MAPS[masquerade.envelope]
        foreign = current.get(name, "")
        if foreign and _our_masquerade(current, masquerade.envelope) is None:
            raise ConfigError(
                f"masquerade: main.cf already has {name} = {foreign} (not set by relayfleet); "
                "take it out, or leave masquerade out of the request; nothing was changed")
        wanted = {name: masquerade_map(masquerade.domain),
                  **_MASQUERADE_EXTRA[masquerade.envelope]}
    remove = tuple(p for envelope in (True, False)
                   if _our_masquerade(current, envelope) is not None
                   for p in (MASQUERADE_MAPS[envelope], *_MASQUERADE_EXTRA[envelope])
                   if p not in wanted)
    return wanted, remove


def parse_tls(values: Mapping[str, str]) -> dict[str, str | None] | None:
    """``{mode, ca_file}`` of the TLS policy main.cf holds (None: a level relayfleet does not
    write, e.g. none). smtp_tls_CAfile as main.cf says it, never validated: a host's own
    ``${config_directory}/ca.pem`` is fine for Postfix, and reading back must not fail."""
    mode = TLS_MODE_OF_LEVEL.get(values.get("smtp_tls_security_level", ""))
    if mode is None:
        return None
    return {"mode": mode, "ca_file": values.get("smtp_tls_CAfile") or None}


def smarthost_edits(request: SmarthostRequest | None, current: Mapping[str, str],
                    map_type: str, map_path: str, *, ca_file: str | None = None,
                    flavour: str = "debian") -> MainCfEdits:
    """The main.cf edits that point Postfix at ``request`` (None: back to direct delivery).

    A request is the whole relay configuration: credentials (SASL on, the map, no anonymous
    mechanisms) or none (the SASL settings go); its TLS policy's level, and for ``verify``
    ``smtp_tls_CAfile = ca_file`` (the bundle the caller resolved); its masquerade or none
    (relayfleet's map goes; see masquerade_edits). Ending a verify policy puts
    smtp_tls_CAfile back to the flavour's stock value. Removing goes back to ``may``
    (Debian's and RHEL's default; left at ``encrypt``, direct delivery would refuse every MX
    that offers no STARTTLS). ConfigError when main.cf holds settings the request cannot
    coexist with.
    """
    level_now = current.get("smtp_tls_security_level", "")
    if request is None:
        tls_set = {"smtp_tls_security_level": "may"} if level_now in REQUIRED_LEVELS else {}
        ca_set, ca_remove = _ca_edits(None, current, flavour)
        _, masquerade_remove = masquerade_edits(None, current)
        return MainCfEdits({**tls_set, **ca_set},
                           ("relayhost", *SASL_PARAMETERS, *ca_remove, *masquerade_remove))
    smarthost = wanted_smarthost(request)
    policy = request.tls_policy
    level = tls_level(policy, smarthost)
    wanted = {"relayhost": relayhost_value(smarthost), "smtp_tls_security_level": level}
    remove: list[str] = []
    if request.auth is None:
        remove += SASL_PARAMETERS
    else:
        wanted.update({"smtp_sasl_auth_enable": "yes",
                       "smtp_sasl_password_maps": f"{map_type}:{map_path}",
                       "smtp_sasl_security_options": "noanonymous"})
    if level in CERT_MATCH:
        _check_cert_match(level, current)
    ca_set, ca_remove = _ca_edits(ca_file if level in CERT_MATCH else None, current, flavour)
    wanted.update(ca_set)
    remove += ca_remove
    masquerade_set, masquerade_remove = masquerade_edits(request.masquerade, current)
    wanted.update(masquerade_set)
    remove += masquerade_remove
    # postconf -e rewrites a parameter's line even when its value stays (Debian's
    # "smtp_tls_security_level=may" would become "... = may"): set only what differs
    return MainCfEdits({k: v for k, v in wanted.items() if current.get(k) != v}, tuple(remove))


def _check_cert_match(level: str, current: Mapping[str, str]) -> None:
    """Refuse a verifying level whose certificate match someone widened in main.cf."""
    name, default = CERT_MATCH[level]
    value = current.get(name, default)
    if _words(value) != _words(default):
        raise ConfigError(
            f"tls.mode: verify needs Postfix to match the certificate to the relay ({name} = "
            f"{default}, Postfix's default), but main.cf sets {name} = {value}: take it out "
            f"(postconf -X {name}) or ask for encrypt; nothing was changed")


def _ca_edits(ca_file: str | None, current: Mapping[str, str],
              flavour: str) -> tuple[dict[str, str], tuple[str, ...]]:
    """smtp_tls_CAfile for a verify policy (``ca_file``), or back to the flavour's stock
    value when a verify policy ends (a CAfile under other levels is not relayfleet's)."""
    now = current.get("smtp_tls_CAfile", "")
    if ca_file is not None:
        return ({"smtp_tls_CAfile": ca_file} if now != ca_file else {}), ()
    if current.get("smtp_tls_security_level", "") not in CERT_MATCH:
        return {}, ()
    stock = STOCK_CA_FILE.get(flavour)
    if stock is None:
        return {}, (("smtp_tls_CAfile",) if now else ())
    return ({"smtp_tls_CAfile": stock} if now != stock else {}), ()


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
    """The map with ``key``'s entry set to these credentials (other lines kept).

    No quoting: ``postmap`` takes everything after the key's blanks as the value, blanks
    inside, ``"`` and ``\\`` included, byte for byte, and trims only blanks at the line's
    end (checked with ``postmap -q`` on Postfix 3.7; validation refuses a password with a
    blank at either end). Postfix's SMTP client splits the value at its first ``:``, and
    user names hold none, so the password may.
    """
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
