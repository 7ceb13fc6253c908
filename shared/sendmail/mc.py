"""Read and edit sendmail.mc and read sendmail.cf, as pure text functions.

Every line relayfleet writes into sendmail.mc ends in ``dnl # managed by relayfleet``:
``dnl`` makes m4 drop the rest of the line, so the marker costs nothing in the compiled
sendmail.cf, and it lets a later change find exactly the lines it owns. Besides the
smarthost's own lines (SMART_HOST, the port, SMTP AUTH) those are: the CA settings and
``FEATURE(`check_cert_altnames')`` a TLS policy needs, ``FEATURE(`access_db')`` when the mc
has none (the policy's ``TLS_Srv:`` entry lives in the access map), and the masquerade.

A hand-written ``MASQUERADE_AS`` or ``FEATURE(`masquerade_envelope')`` (no marker) is the
host's own: a change that sets a masquerade comments it out behind ``dnl # disabled by
relayfleet:``, so that exactly the requested one is in force; a change without masquerade
and a removal give the host its own lines back as they were.
"""

from __future__ import annotations

import difflib
import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass

from shared.validation import SmarthostRequest, TlsPolicy, m4_quote

MARK = "dnl # managed by relayfleet"
#: what a host's own masquerade line is commented out behind while relayfleet's is in force
DISABLED = "dnl # disabled by relayfleet: "
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
_MAILER_RE = re.compile(r"^\s*(MAILER\(|MAILER_DEFINITIONS\b)")
_MASQUERADE_RE = re.compile(r"^\s*MASQUERADE_AS\((?P<value>.*?)\)\s*(?:dnl\b.*)?$")
_CA_PATH_RE = _define_re("confCACERT_PATH")
_CA_FILE_RE = _define_re("confCACERT")
#: Debian's TLS include (/etc/mail/tls/starttls.m4) defines confCACERT_PATH and confCACERT
_STARTTLS_INCLUDE_RE = re.compile(r"^\s*s?include\(\s*`?[^)']*starttls\.m4'?\s*\)")
_ACCESS_DB_RE = re.compile(
    r"^\s*FEATURE\(\s*`?access_db'?\s*(?:,\s*(?P<spec>`[^']*'|[^,)`]*))?")
_FIRST_FEATURE_RE = re.compile(r"^\s*FEATURE\(")


def _feature_re(name: str) -> re.Pattern[str]:
    return re.compile(r"^\s*FEATURE\(\s*`?" + re.escape(name) + r"'?\s*[,)]")


_AUTHINFO_FEATURE_RE = _feature_re("authinfo")
_ENVELOPE_FEATURE_RE = _feature_re("masquerade_envelope")
_ALTNAMES_FEATURE_RE = _feature_re("check_cert_altnames")


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
class Masquerading:
    """The domain the host's own sender addresses are rewritten to."""

    domain: str
    #: the envelope sender too (``FEATURE(`masquerade_envelope')``), not only headers
    envelope: bool

    def to_dict(self) -> dict[str, object]:
        """Plain-JSON form."""
        return {"domain": self.domain, "envelope": self.envelope}


@dataclass(frozen=True)
class McState:
    """What sendmail.mc says about the smarthost."""

    smarthost: Smarthost | None
    authinfo_feature: bool
    active_defines: int
    masquerade: Masquerading | None = None
    #: the map spec of an active ``FEATURE(`access_db')`` ("" for the default), else None
    access_db: str | None = None
    #: the CA file sendmail.mc itself names (``confCACERT``), if any
    ca_file: str | None = None
    #: an active ``FEATURE(`check_cert_altnames')``
    altnames: bool = False
    #: the sendmail.cf options relayfleet's own CA lines set (``CACertPath``, ``CACertFile``)
    ca_options: tuple[tuple[str, str], ...] = ()


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
    authinfo = envelope = altnames = False
    masquerade: str | None = None
    access_db: str | None = None
    ca_file: str | None = None
    ca_options: dict[str, str] = {}
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
        authinfo = authinfo or bool(_AUTHINFO_FEATURE_RE.match(line))
        envelope = envelope or bool(_ENVELOPE_FEATURE_RE.match(line))
        altnames = altnames or bool(_ALTNAMES_FEATURE_RE.match(line))
        # m4: the last definition is the one in force
        found = _MASQUERADE_RE.match(line)
        masquerade = unquote_m4(found.group("value")) if found else masquerade
        found = _CA_FILE_RE.match(line)
        ca_file = unquote_m4(found.group("value")) if found else ca_file
        if line.rstrip().endswith(MARK):
            # ours name plain paths and come after the host's own (see _ca_lines): in force
            for option, regex in (("CACertPath", _CA_PATH_RE), ("CACertFile", _CA_FILE_RE)):
                found = regex.match(line)
                if found:
                    ca_options[option] = unquote_m4(found.group("value"))
        found = _ACCESS_DB_RE.match(line)
        if found and access_db is None:
            access_db = unquote_m4(found.group("spec") or "")
    smarthost = None
    if host_value is not None:
        parsed = Smarthost.from_value(host_value)
        if parsed is not None:
            smarthost = Smarthost.from_value(
                host_value, ports.get(f"{parsed.mailer.upper()}_MAILER_ARGS"))
    return McState(smarthost=smarthost, authinfo_feature=authinfo, active_defines=defines,
                   masquerade=Masquerading(masquerade, envelope) if masquerade else None,
                   access_db=access_db, ca_file=ca_file or None, altnames=altnames,
                   ca_options=tuple(sorted(ca_options.items())))


def access_source(spec: str, mail_dir: str) -> str | None:
    """The access map source a ``FEATURE(`access_db')`` map spec reads (``""``: the default,
    ``MAIL_DIR/access``), or None for a map relayfleet cannot edit (LDAP, another type)."""
    words = spec.split()
    if not words:
        return posixpath.join(mail_dir, "access")
    if words[0] not in ("hash", "btree"):
        return None
    path = next((w for w in words[1:] if not w.startswith("-")), None)
    # sendmail adds .db to a hash or btree map's name
    return path.removesuffix(".db") if path else posixpath.join(mail_dir, "access")


def _host_ca(lines: Iterable[str]) -> tuple[bool, bool]:
    """Whether the host's own active lines set confCACERT_PATH, and confCACERT."""
    path = file = False
    for line in lines:
        if not _is_active(line) or line.rstrip().endswith(MARK):
            continue
        tls_include = bool(_STARTTLS_INCLUDE_RE.match(line))
        path = path or tls_include or bool(_CA_PATH_RE.match(line))
        file = file or tls_include or bool(_CA_FILE_RE.match(line))
    return path, file


def needs_ca_bundle(text: str, tls: TlsPolicy) -> bool:
    """Whether verifying needs the host's default CA bundle written into sendmail.mc: no
    ca_file is given and the mc does not already name both CA settings (sendmail loads its
    CA certificates only when confCACERT_PATH and confCACERT are both set)."""
    if tls.mode != "verify" or tls.ca_file is not None:
        return False
    return not all(_host_ca(text.splitlines()))


def _ca_lines(kept: list[str], tls: TlsPolicy, bundle: str | None) -> list[str]:
    """Our confCACERT_PATH/confCACERT lines: the policy's ca_file (and its directory, unless
    the host names a CA directory); for verify without one, the host's bundle for whichever
    of the two the host's own lines leave unset."""
    has_path, has_file = _host_ca(kept)
    defines: list[tuple[str, str]] = []
    if tls.ca_file is not None:
        if not has_path:
            defines.append(("confCACERT_PATH", posixpath.dirname(tls.ca_file)))
        defines.append(("confCACERT", tls.ca_file))
    elif tls.mode == "verify" and not (has_path and has_file):
        if bundle is None:
            raise ValueError("verify without ca_file needs the host's CA bundle")
        if not has_path:
            defines.append(("confCACERT_PATH", posixpath.dirname(bundle)))
        if not has_file:
            defines.append(("confCACERT", bundle))
    return [f"define(`{name}', {m4_quote(value)}){MARK}\n" for name, value in defines]


def smarthost_block(request: SmarthostRequest, *, mechanisms: bool, feature: bool,
                    altnames: bool = False, envelope: bool = False) -> list[str]:
    """The mc lines that configure ``request``'s smarthost (each carrying the marker);
    ``mechanisms``, ``feature``, ``altnames``, ``envelope``: which of the optional lines the
    mc still lacks (confAUTH_MECHANISMS, FEATURE(authinfo), FEATURE(check_cert_altnames),
    FEATURE(masquerade_envelope))."""
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
    if altnames and request.tls_policy.mode == "verify":
        # TLS_Srv's CN check then also matches subjectAltNames (and wildcards), not only
        # the certificate's CN
        lines.append(f"FEATURE(`check_cert_altnames'){MARK}\n")
    if request.masquerade is not None:
        # MASQUERADE_AS is define(`MASQUERADE_NAME', $1): one more level of quotes than
        # SMART_HOST, or a name such as dnl.example.com runs as m4 when DM is written
        lines.append(f"MASQUERADE_AS(`{m4_quote(request.masquerade.domain)}'){MARK}\n")
        if request.masquerade.envelope and envelope:
            lines.append(f"FEATURE(`masquerade_envelope'){MARK}\n")
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


def _restored(line: str) -> str:
    """A host's own masquerade line as it was before relayfleet commented it out."""
    return line.removeprefix(DISABLED)


def _first_mailer_index(lines: list[str]) -> int | None:
    return next((i for i, line in enumerate(lines) if _is_active(line) and _MAILER_RE.match(line)),
                None)


def set_smarthost_mc(text: str, request: SmarthostRequest, ca_bundle: str | None = None) -> str:
    """Return sendmail.mc with exactly one active smarthost define for ``request``, and the
    TLS and masquerade lines it asks for (``ca_bundle``: the host's default CA bundle, for a
    verify policy without ca_file; see :func:`needs_ca_bundle`).

    The new lines take the place of the first active define, else of the commented
    template line (``dnl define(`SMART_HOST', ...)dnl``), else go before the first
    ``MAILER``; never after a ``MAILER`` line, since the port must be known by then. CA
    settings go after the last line of the host's own that sets them (a later definition
    wins in m4), and a ``FEATURE(`access_db')`` the mc lacks before its first ``FEATURE``
    (greet_pause and the like only use the access map when it comes first).
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
        if request.masquerade is None:
            kept.append(_restored(line))
            continue
        replaced = _is_active(line) and bool(
            _MASQUERADE_RE.match(line) or _ENVELOPE_FEATURE_RE.match(line))
        # the requested masquerade replaces the host's own: kept visible, as a comment that
        # a change without masquerade (or a removal) turns back into the line it was
        kept.append(DISABLED + line if replaced else line)
    if anchor is None:
        template = next((i for i, line in enumerate(kept) if _COMMENTED_SMART_HOST_RE.match(line)),
                        None)
        if template is not None:
            del kept[template]
            anchor = template
    mailer_at = _first_mailer_index(kept)
    if anchor is None or (mailer_at is not None and anchor > mailer_at):
        anchor = mailer_at if mailer_at is not None else len(kept)

    def lacks(regex: re.Pattern[str]) -> bool:
        return not any(_is_active(ln) and regex.match(ln) for ln in kept)

    block = smarthost_block(request, mechanisms=lacks(_AUTH_MECH_RE),
                            feature=lacks(_AUTHINFO_FEATURE_RE),
                            altnames=lacks(_ALTNAMES_FEATURE_RE),
                            envelope=lacks(_ENVELOPE_FEATURE_RE))
    ca = _ca_lines(kept, request.tls_policy, ca_bundle)
    host_ca = [i for i, ln in enumerate(kept) if _is_active(ln) and (
        _STARTTLS_INCLUDE_RE.match(ln) or _CA_PATH_RE.match(ln) or _CA_FILE_RE.match(ln))]
    if ca and host_ca and host_ca[-1] >= anchor:
        kept[host_ca[-1] + 1:host_ca[-1] + 1] = ca
    else:
        block += ca
    kept[anchor:anchor] = block
    # a required TLS level is the access map's TLS_Srv entry (opportunistic is the default)
    if request.tls_policy.required and lacks(_ACCESS_DB_RE):
        first = next((i for i, ln in enumerate(kept) if _is_active(ln)
                      and _FIRST_FEATURE_RE.match(ln)), None)
        kept.insert(first if first is not None else anchor, f"FEATURE(`access_db'){MARK}\n")
    return "".join(kept)


def remove_smarthost_mc(text: str) -> str:
    """Return sendmail.mc with no active smarthost: defines commented out, owned lines gone
    (relayfleet's TLS, access_db and masquerade lines with them), the host's own masquerade
    lines back."""
    out: list[str] = []
    for line in text.splitlines(keepends=True):
        if not _owned(line):
            out.append(_restored(line))
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


def read_cf_masquerade(text: str) -> Masquerading | None:
    """The masquerade a compiled sendmail.cf applies: its ``DM`` line, and whether ruleset
    MasqEnv masquerades envelope senders (``FEATURE(`masquerade_envelope')``)."""
    lines = text.splitlines()
    domain = next((line[2:].strip() for line in lines if line.startswith("DM")), "")
    if not domain:
        return None
    at = next((i for i, line in enumerate(lines) if line.startswith("SMasqEnv")), None)
    rule = next((line for line in lines[at + 1:] if line.startswith("R")), "") if at is not None \
        else ""
    return Masquerading(domain, "$>MasqHdr" in rule)


_CF_OPTION_RE = re.compile(r"^O (?P<name>[A-Za-z.]+)=(?P<value>.*)$")
_CF_MAP_RE = re.compile(r"^K(?P<name>\w+)\s")


def in_sync(state: McState, cf_text: str) -> bool:
    """Whether a compiled sendmail.cf has what sendmail.mc asks for: its smarthost and
    masquerade, the access and authinfo maps its features declare, relayfleet's CA settings
    and the certificate name check. A cf compiled from an older mc (a change cut short
    between the mc's and the cf's rename, m4 run by hand) lacks some of them.

    Only what the mc's own lines say is asked for: a map or option the cf has beyond them
    may come from an include (Debian's sasl.m4, starttls.m4)."""
    lines = cf_text.splitlines()
    options = {m.group("name"): m.group("value").strip()
               for line in lines if (m := _CF_OPTION_RE.match(line))}
    maps = {m.group("name") for line in lines if (m := _CF_MAP_RE.match(line))}
    return (state.smarthost == read_cf(cf_text)
            and state.masquerade == read_cf_masquerade(cf_text)
            and (state.access_db is None or "access" in maps)
            and (not state.authinfo_feature or "authinfo" in maps)
            and (not state.altnames or options.get("SetCertAltnames") == "true")
            and all(options.get(name) == value for name, value in state.ca_options))


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
