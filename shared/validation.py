"""Strict grammars for every caller value that can reach m4, a map file or a shell.

A value is first checked against an allow-list grammar, then quoted for its destination.

Host names: RFC 1123 labels (1-63 of ``[a-z0-9-]``, not starting or ending with ``-``;
253 characters at most; single labels allowed), returned lowercase. One trailing dot (the
absolute form ``relay.example.com.``) is accepted and dropped. Names made only of numeric
(or ``0x`` hex) labels are refused: resolvers read ``1.2.3`` or ``0x7f.1`` as IPv4
addresses. Address literals use sendmail's syntax, ``[192.0.2.1]`` and
``[IPv6:2001:db8::1]``; a bare address is bracketed, an IPv4-mapped IPv6 address becomes
its IPv4 literal, and IPv6 zone ids (``%eth0``) are refused.

m4 quoting: cf/m4/proto.m4 emits ``DS`'ifdef(`SMART_HOST', `SMART_HOST')``, so the
definition of SMART_HOST is rescanned once when it is expanded. With plain quotes a label
that is an m4 builtin runs (``[dnl.example.com]`` gives ``DS[``, ``[divert.example.com]``
gives ``DS[.example.com]``), even inside a label (``x-dnl``, ``0dnl``). :func:`m4_quote`
adds the second level of quotes, which that one rescan removes, so every accepted value
reaches sendmail.cf verbatim (checked with the real m4 by
``tests/integration/test_m4_quoting.py``). Quotes cannot protect m4's own quote characters,
line ends, or the argument references ``$0``-``$9``, ``$#``, ``$*``, ``$@`` (m4 replaces
them in a macro's body even inside quotes): :func:`m4_quote` refuses those.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

from shared.compat import no_leading_zeros
from shared.errors import ValidationError

MAX_HOSTNAME: Final = 253
MAX_LABEL: Final = 63
MAX_CREDENTIAL: Final = 128
MAX_PASSWORD: Final = 256
MAX_PATH: Final = 255
DEFAULT_PORT: Final = 25
#: how the MTA treats TLS to the smarthost: "may" opportunistic, "encrypt" STARTTLS
#: required, "verify" STARTTLS required with a certificate that verifies and names the relay
TLS_MODES: Final = ("may", "encrypt", "verify")
#: where a CA bundle never is: devices, kernel and runtime state (/var/run is /run); a
#: device such as /dev/zero or /dev/urandom would never end
NOT_CA_DIRS: Final = ("/dev", "/proc", "/sys", "/run", "/var/run")
#: mailers SMART_HOST may name; "relay" is sendmail's default and is never written as a prefix
MAILERS: Final = ("relay", "esmtp", "smtp")

_NOT_HOST_CHAR = re.compile(r"[^A-Za-z0-9.:\[\]-]")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
#: labels inet_aton() reads as numbers (decimal, octal or 0x hex)
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")
_NOT_USERNAME_CHAR = re.compile(r"[^A-Za-z0-9._@+=-]")
#: what m4_quote cannot protect: m4's quote characters, line ends and NUL
_M4_UNSAFE = frozenset("`'\n\r\x00")
#: argument references m4 replaces in a macro's body whatever the quoting ($0-$9, $#, $*, $@)
_M4_ARG_REF = re.compile(r"\$[0-9#*@]")
#: an absolute path in a conservative alphabet (it is written into sendmail.mc and main.cf)
_SAFE_PATH = re.compile(r"/[A-Za-z0-9._+-]+(?:/[A-Za-z0-9._+-]+)*")
_SIMPLE_KEY = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_MAX_UNKNOWN_REPORTED = 10

_T = TypeVar("_T")


def _json_type(value: object) -> str:
    """Name a value's type the way a JSON caller knows it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def validate_hostname(value: object, field: str = "host") -> str:
    """Return a lowercase RFC 1123 host name or a bracketed address literal; refuse the rest."""
    if not isinstance(value, str):
        raise ValidationError.for_field(field, f"must be a string, not {_json_type(value)}")
    if not value:
        raise ValidationError.for_field(field, "must not be empty")
    if len(value.removesuffix(".")) > MAX_HOSTNAME:
        raise ValidationError.for_field(field, f"is longer than {MAX_HOSTNAME} characters")
    bad = _NOT_HOST_CHAR.search(value)
    if bad:
        raise ValidationError.for_field(
            field, f"contains a character not allowed in a host name: {bad.group()!r}")
    if value.split(":", 1)[0].lower() in MAILERS and ":" in value:
        raise ValidationError.for_field(
            field, "must not carry a mailer prefix such as 'esmtp:'; set 'mailer' instead")
    if value.startswith("[") or value.endswith("]"):
        return _address_literal(value, field)
    if ":" in value:
        try:
            return _literal(ipaddress.IPv6Address(value))
        except ValueError:
            raise ValidationError.for_field(
                field, "contains ':' but is not an IPv6 address") from None
    if "[" in value or "]" in value:
        raise ValidationError.for_field(
            field, "may use brackets only around a whole address: [192.0.2.1]")
    try:
        return _literal(ipaddress.IPv4Address(no_leading_zeros(value)))
    except ValueError:
        pass
    name = value.lower().removesuffix(".")
    if not name:
        raise ValidationError.for_field(field, "must not be only a dot")
    labels = name.split(".")
    for label in labels:
        if not label:
            raise ValidationError.for_field(field, "has an empty label (a leading dot or '..')")
        if len(label) > MAX_LABEL:
            raise ValidationError.for_field(
                field, f"has a label longer than {MAX_LABEL} characters")
        if not _LABEL.fullmatch(label):
            raise ValidationError.for_field(
                field, f"has a label that starts or ends with '-': {label!r}")
    if len(labels) <= 4 and all(_NUMERIC_LABEL.fullmatch(label) for label in labels):
        raise ValidationError.for_field(
            field, "reads as a numeric IP address but is not a valid one "
                   "(write an address as 192.0.2.1)")
    if labels[-1].isdigit():
        raise ValidationError.for_field(field, "must not end with an all-numeric label")
    return name


def _address_literal(value: str, field: str) -> str:
    """Check a bracketed literal: ``[192.0.2.1]`` or ``[IPv6:2001:db8::1]``."""
    if not (len(value) > 2 and value.startswith("[") and value.endswith("]")):
        raise ValidationError.for_field(
            field, "is not a valid address literal (use [192.0.2.1] or [IPv6:2001:db8::1])")
    inner = value[1:-1]
    tagged = inner[:5].lower() == "ipv6:"
    try:
        address = ipaddress.ip_address(no_leading_zeros(inner[5:] if tagged else inner))
    except ValueError:
        raise ValidationError.for_field(
            field, "is not a valid address literal (use [192.0.2.1] or [IPv6:2001:db8::1])"
        ) from None
    if tagged and address.version == 4:
        raise ValidationError.for_field(field, "has the IPv6: tag on an IPv4 address")
    return _literal(address)


def _literal(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """Write an address the way sendmail reads an address literal."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return f"[{address.ipv4_mapped}]"
        return f"[IPv6:{address.compressed}]"
    return f"[{address}]"


def validate_port(value: object, field: str = "port") -> int:
    """Return a TCP port number from 1 to 65535 (an int; bool, str and float are refused)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError.for_field(
            field, f"must be an integer from 1 to 65535, not {_json_type(value)}")
    if not 1 <= value <= 65535:
        raise ValidationError.for_field(field, "must be from 1 to 65535")
    return value


def validate_domain(value: object, field: str = "domain") -> str:
    """Return a lowercase RFC 1123 domain name; refuse address literals and bad names."""
    name = validate_hostname(value, field)
    if name.startswith("["):
        raise ValidationError.for_field(field, "must be a domain name, not an address")
    return name


def validate_fqdn(value: object, field: str = "fqdn") -> str:
    """Return a fully qualified host name: a domain name of at least two labels."""
    name = validate_domain(value, field)
    if "." not in name:
        raise ValidationError.for_field(field, "must be fully qualified (name.domain), "
                                               "e.g. pbx1.ourtest.com")
    return name


def validate_ip_address(value: object, field: str = "public_ip") -> str:
    """Return an IPv4 or IPv6 address in its normal form (no zone id such as ``%eth0``)."""
    if not isinstance(value, str) or "%" in value:
        raise ValidationError.for_field(field, "must be an IPv4 or IPv6 address")
    try:
        return str(ipaddress.ip_address(no_leading_zeros(value)))
    except ValueError:
        raise ValidationError.for_field(field, "must be an IPv4 or IPv6 address") from None


#: a probe address's local part: letters, digits and . _ % + = - (it becomes an argument
#: of the host's sendmail and a header line)
_LOCAL_PART = re.compile(r"[A-Za-z0-9._%+=-]{1,64}")
#: how long a delivery probe may wait for its outcome (seconds), and its default: a relay
#: answers within seconds, and the default leaves a job's default 120 s time box the
#: margin its change and rollback need (controller.schemas.PROBE_MARGIN_S)
VERIFY_TIMEOUT_RANGE: Final = (10, 300)
DEFAULT_VERIFY_TIMEOUT_S: Final = 60


def validate_verify_timeout(value: object, field: str = "verify.timeout_s") -> int:
    """Return a probe's wait in seconds: a whole number within :data:`VERIFY_TIMEOUT_RANGE`
    (the one place that range is checked)."""
    low, high = VERIFY_TIMEOUT_RANGE
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValidationError.for_field(field, f"must be an integer from {low} to {high}")
    return value


def validate_address(value: object, field: str = "verify.to") -> str:
    """Return a mail address ``local@domain`` (local part of letters, digits and
    ``._%+=-``; domain as :func:`validate_domain`, lowercased)."""
    if not isinstance(value, str):
        raise ValidationError.for_field(field, f"must be a string, not {_json_type(value)}")
    local, at, domain = value.rpartition("@")
    # (a leading "-" would read as an option to the host's sendmail)
    if not at or not _LOCAL_PART.fullmatch(local) or local.startswith((".", "-")) \
            or local.endswith("."):
        raise ValidationError.for_field(
            field, "must be an address like probe@ourtest.com (local part: letters, digits "
                   "and . _ % + = -, not starting with . or -)")
    return f"{local}@{validate_domain(domain, field)}"


@dataclass(frozen=True)
class VerifyRequest:
    """After a change or a flush, send a probe message to ``to`` through the host's own
    MTA and wait up to ``timeout_s`` for the relay's verdict (``sender`` None: the MTA's
    own local sender, qualified and masqueraded like a PBX's)."""

    to: str
    sender: str | None = None
    timeout_s: int = DEFAULT_VERIFY_TIMEOUT_S

    def __post_init__(self) -> None:
        """Validate and normalise the addresses and the wait."""
        object.__setattr__(self, "to", validate_address(self.to, "verify.to"))
        if self.sender is not None:
            object.__setattr__(self, "sender", validate_address(self.sender, "verify.from"))
        validate_verify_timeout(self.timeout_s)

    def to_json(self) -> dict[str, object]:
        """The request's JSON form (``from``, as the API names the sender)."""
        return {"to": self.to, "from": self.sender, "timeout_s": self.timeout_s}


def parse_verify(raw: object, errors: dict[str, list[str]]) -> VerifyRequest | None:
    """``verify`` of a request (None: absent or null), its problems put in ``errors``."""
    if raw is None:
        return None
    if isinstance(raw, VerifyRequest):
        return raw
    if not isinstance(raw, Mapping):
        errors["verify"] = [f"must be an object with to, from and timeout_s, "
                            f"not {_json_type(raw)}"]
        return None
    _unknown_keys(raw, ("to", "from", "timeout_s"), "verify.", errors)
    if "to" not in raw:
        errors["verify.to"] = ["is required"]
    to = _collect(errors, validate_address, raw.get("to"), "verify.to") if "to" in raw else None
    sender = raw.get("from")
    if sender is not None:
        sender = _collect(errors, validate_address, sender, "verify.from")
    raw_timeout = raw.get("timeout_s")
    timeout = (DEFAULT_VERIFY_TIMEOUT_S if raw_timeout is None else
               _collect(errors, validate_verify_timeout, raw_timeout, "verify.timeout_s"))
    if to is None or timeout is None or any(key.startswith("verify") for key in errors):
        return None
    return VerifyRequest(to, None if sender is None else str(sender), timeout)


def _credential(value: object, field: str, limit: int = MAX_CREDENTIAL) -> str:
    """Check the type and length (1 to ``limit``) shared by user names and passwords."""
    if not isinstance(value, str):
        raise ValidationError.for_field(field, f"must be a string, not {_json_type(value)}")
    if not value:
        raise ValidationError.for_field(field, "must not be empty")
    if len(value) > limit:
        raise ValidationError.for_field(field, f"is longer than {limit} characters")
    return value


def validate_username(value: object, field: str = "auth.username") -> str:
    """Return an SMTP AUTH user name: 1-128 of letters, digits and . _ @ + = -."""
    name = _credential(value, field)
    bad = _NOT_USERNAME_CHAR.search(name)
    if bad:
        raise ValidationError.for_field(
            field, f"contains a character not allowed in a user name: {bad.group()!r} "
                   "(allowed: letters, digits and . _ @ + = -)")
    return name


def validate_password(value: object, field: str = "auth.password") -> str:
    """Return an SMTP AUTH password: 1-256 printable characters (blanks, quotes and
    backslashes included), without a blank at either end."""
    value = _credential(value, field, MAX_PASSWORD)
    if not value.isprintable():
        # never show the character: it is part of a secret
        raise ValidationError.for_field(
            field, "contains a control character (tab, line end or similar); allowed: "
                   "printable characters, blanks included")
    if value != value.strip():
        # Postfix's map source drops blanks at a line's ends, and so do most relays' forms
        raise ValidationError.for_field(
            field, "starts or ends with a blank; a relay password cannot (blanks inside "
                   "are fine)")
    return value


def validate_ca_file(value: object, field: str = "tls.ca_file") -> str:
    """Return an absolute path to a CA bundle on the host (letters, digits, ``._+-/``), not
    under /dev, /proc, /sys or /run."""
    if not isinstance(value, str):
        raise ValidationError.for_field(field, f"must be a string, not {_json_type(value)}")
    if (len(value) > MAX_PATH or not _SAFE_PATH.fullmatch(value)
            or any(part in (".", "..") for part in value.split("/"))):
        raise ValidationError.for_field(
            field, f"must be an absolute path of at most {MAX_PATH} characters made of "
                   "letters, digits and . _ + - / without . or .. parts, e.g. "
                   "/etc/ssl/certs/ca-certificates.crt")
    pseudo = next((top for top in NOT_CA_DIRS if value == top or value.startswith(f"{top}/")),
                  None)
    if pseudo is not None:
        raise ValidationError.for_field(
            field, f"must not be under {pseudo}: it holds devices and kernel or runtime "
                   "state, not CA bundles (a device such as /dev/zero never ends)")
    return value


def m4_quote(value: str) -> str:
    """Return m4 text that, as a SMART_HOST define's value, compiles to exactly ``value``."""
    if not isinstance(value, str):
        raise TypeError("m4_quote takes a str")
    for ch in value:
        if ch in _M4_UNSAFE:
            raise ValueError(f"m4_quote cannot quote {ch!r}; pass validated values only")
    reference = _M4_ARG_REF.search(value)
    if reference:
        raise ValueError(f"m4_quote cannot quote {reference.group()!r} (m4 substitutes it even "
                         "inside quotes); pass validated values only")
    return f"``{value}''"


@dataclass(frozen=True, repr=False)
class SmtpAuth:
    """SMTP AUTH credentials for the smarthost; ``repr`` never shows the password."""

    username: str
    password: str

    def __post_init__(self) -> None:
        """Refuse credentials that break the grammar."""
        validate_username(self.username)
        validate_password(self.password)

    def __repr__(self) -> str:
        """Show the user name only."""
        return f"SmtpAuth(username={self.username!r}, password='********')"


@dataclass(frozen=True)
class TlsPolicy:
    """How the MTA uses TLS towards the smarthost."""

    mode: str = "may"
    #: CA bundle to verify the relay with (None: the host's default bundle)
    ca_file: str | None = None

    def __post_init__(self) -> None:
        """Refuse an unknown mode or a bad path."""
        if self.mode not in TLS_MODES:
            raise ValidationError.for_field("tls.mode", f"must be one of {', '.join(TLS_MODES)}")
        if self.ca_file is not None:
            validate_ca_file(self.ca_file)

    @property
    def required(self) -> bool:
        """Whether mail must not leave without STARTTLS."""
        return self.mode != "may"


@dataclass(frozen=True)
class Masquerade:
    """Rewrite the host's own sender addresses to ``user@domain``."""

    domain: str
    #: the envelope sender too, not only the From:/header addresses
    envelope: bool = True

    def __post_init__(self) -> None:
        """Normalise the domain."""
        object.__setattr__(self, "domain", validate_domain(self.domain, "masquerade.domain"))
        if not isinstance(self.envelope, bool):
            raise ValidationError.for_field("masquerade.envelope", "must be true or false")


def default_tls_mode(with_auth: bool) -> str:
    """The TLS mode a request that names none gets: encrypt with auth, else may."""
    return "encrypt" if with_auth else "may"


#: why a request with auth cannot ask for opportunistic TLS
AUTH_NEEDS_TLS = ("must be encrypt or verify when auth is given: relay credentials never "
                  "cross the network in clear")


@dataclass(frozen=True)
class SmarthostRequest:
    """A validated set-smarthost request (host without brackets unless an address literal)."""

    host: str
    port: int | None = None
    mx: bool = False
    mailer: str = "relay"
    auth: SmtpAuth | None = None
    #: None: "may" without auth, "encrypt" with auth
    tls: TlsPolicy | None = None
    masquerade: Masquerade | None = None
    #: after the change, probe delivery through the new relay (None: do not)
    verify: VerifyRequest | None = None

    def __post_init__(self) -> None:
        """Validate and normalise every field, even when built directly."""
        object.__setattr__(self, "host", validate_hostname(self.host))
        if self.port is not None and validate_port(self.port) == DEFAULT_PORT:
            object.__setattr__(self, "port", None)
        if not isinstance(self.mx, bool):
            raise ValidationError.for_field("mx", "must be true or false")
        if self.mailer not in MAILERS:
            raise ValidationError.for_field("mailer", f"must be one of {', '.join(MAILERS)}")
        if self.auth is not None and not isinstance(self.auth, SmtpAuth):
            raise ValidationError.for_field("auth", "must be SmtpAuth credentials")
        if self.tls is None:
            object.__setattr__(self, "tls", TlsPolicy(default_tls_mode(self.auth is not None)))
        elif not isinstance(self.tls, TlsPolicy):
            raise ValidationError.for_field("tls", "must be a TlsPolicy")
        elif self.auth is not None and not self.tls.required:
            raise ValidationError.for_field("tls.mode", AUTH_NEEDS_TLS)
        if self.masquerade is not None and not isinstance(self.masquerade, Masquerade):
            raise ValidationError.for_field("masquerade", "must be a Masquerade")
        if self.verify is not None and not isinstance(self.verify, VerifyRequest):
            raise ValidationError.for_field("verify", "must be a VerifyRequest")

    @property
    def tls_policy(self) -> TlsPolicy:
        """The TLS policy in force (the default resolved)."""
        assert self.tls is not None  # set by __post_init__
        return self.tls

    def smart_host_value(self) -> str:
        """Return SMART_HOST's value: ``[host]`` (no MX lookup) or ``host``, mailer-prefixed."""
        literal = self.host.startswith("[")
        target = self.host if self.mx or literal else f"[{self.host}]"
        return target if self.mailer == "relay" else f"{self.mailer}:{target}"


def refusal(what: str, errors: Mapping[str, Sequence[str]]) -> ValidationError:
    """One error naming every bad field of a request (``invalid WHAT: field: reason; ...``)."""
    return ValidationError(f"invalid {what}: " + "; ".join(
        f"{key}: {reason}" for key, reasons in errors.items() for reason in reasons), errors)


def _field_name(prefix: str, key: object) -> str:
    """A printable, bounded field name for an unknown key."""
    if isinstance(key, str) and _SIMPLE_KEY.fullmatch(key):
        return prefix + key
    return prefix + repr(key)[:64]


def _unknown_keys(data: Mapping[object, object], known: tuple[str, ...], prefix: str,
                  errors: dict[str, list[str]]) -> None:
    """Report keys outside ``known`` (the first few by name, then a count)."""
    unknown = [key for key in data if key not in known]
    for key in unknown[:_MAX_UNKNOWN_REPORTED]:
        errors.setdefault(_field_name(prefix, key), []).append("unknown field")
    if len(unknown) > _MAX_UNKNOWN_REPORTED:
        errors.setdefault(prefix.rstrip(".") or "body", []).append(
            f"{len(unknown) - _MAX_UNKNOWN_REPORTED} more unknown fields")


def _collect(errors: dict[str, list[str]], check: Callable[[object, str], _T], value: object,
             field: str) -> _T | None:
    """Run one validator, moving its reasons into ``errors``."""
    try:
        return check(value, field)
    except ValidationError as exc:
        for key, reasons in exc.errors.items():
            errors.setdefault(key, []).extend(reasons)
        return None


def parse_smarthost_request(data: object) -> SmarthostRequest:
    """Build a request from a JSON-like dict, reporting every bad field in one error."""
    if not isinstance(data, Mapping):
        raise ValidationError.for_field("body", f"must be a JSON object, not {_json_type(data)}")
    errors: dict[str, list[str]] = {}
    _unknown_keys(data, ("host", "port", "mx", "mailer", "auth", "tls", "masquerade",
                         "verify"), "", errors)

    host = _collect(errors, validate_hostname, data["host"], "host") if "host" in data else None
    if "host" not in data:
        errors["host"] = ["is required"]
    port = None if data.get("port") is None else _collect(errors, validate_port,
                                                          data["port"], "port")
    mx = data.get("mx", False)
    if mx is None:
        mx = False
    elif not isinstance(mx, bool):
        errors["mx"] = [f"must be true or false, not {_json_type(mx)}"]
    mailer = data.get("mailer", "relay")
    if mailer is None:
        mailer = "relay"
    elif not isinstance(mailer, str) or mailer not in MAILERS:
        errors["mailer"] = [f"must be one of {', '.join(MAILERS)}"]

    auth: SmtpAuth | None = None
    raw_auth = data.get("auth")
    if raw_auth is not None:
        if not isinstance(raw_auth, Mapping):
            errors["auth"] = [f"must be an object with username and password, "
                              f"not {_json_type(raw_auth)}"]
        else:
            _unknown_keys(raw_auth, ("username", "password"), "auth.", errors)
            found: dict[str, str | None] = {}
            for key, check in (("username", validate_username), ("password", validate_password)):
                if key in raw_auth:
                    found[key] = _collect(errors, check, raw_auth[key], f"auth.{key}")
                else:
                    errors[f"auth.{key}"] = ["is required"]
            user, password = found.get("username"), found.get("password")
            if user is not None and password is not None:
                auth = SmtpAuth(user, password)

    tls = _parse_tls(data.get("tls"), raw_auth is not None, errors)
    masquerade = _parse_masquerade(data.get("masquerade"), errors)
    verify = parse_verify(data.get("verify"), errors)
    if tls is not None and raw_auth is not None and not tls.required:
        errors.setdefault("tls.mode", []).append(AUTH_NEEDS_TLS)
    if errors or host is None:
        raise refusal("smarthost request", errors)
    return SmarthostRequest(host=host, port=port, mx=mx is True, mailer=str(mailer), auth=auth,
                            tls=tls, masquerade=masquerade, verify=verify)


def _object_fields(raw: object, name: str, keys: tuple[str, ...],
                   errors: dict[str, list[str]]) -> Mapping[object, object] | None:
    """``raw`` as an object holding only ``keys`` (None: absent or not an object)."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        errors[name] = [f"must be an object, not {_json_type(raw)}"]
        return None
    _unknown_keys(raw, keys, f"{name}.", errors)
    return raw


def _parse_tls(raw: object, with_auth: bool, errors: dict[str, list[str]]) -> TlsPolicy | None:
    found = _object_fields(raw, "tls", ("mode", "ca_file"), errors)
    if found is None:
        return None
    mode = found.get("mode")
    if mode is None:  # absent or null: the same default as a request without tls
        mode = default_tls_mode(with_auth)
    if not isinstance(mode, str) or mode not in TLS_MODES:
        errors["tls.mode"] = [f"must be one of {', '.join(TLS_MODES)}"]
    ca_file = found.get("ca_file")
    if ca_file is not None and _collect(errors, validate_ca_file, ca_file, "tls.ca_file") is None:
        return None
    if "tls.mode" in errors:
        return None
    return TlsPolicy(str(mode), None if ca_file is None else str(ca_file))


def _parse_masquerade(raw: object, errors: dict[str, list[str]]) -> Masquerade | None:
    found = _object_fields(raw, "masquerade", ("domain", "envelope"), errors)
    if found is None:
        return None
    if "domain" not in found:
        errors["masquerade.domain"] = ["is required"]
        return None
    domain = _collect(errors, validate_domain, found["domain"], "masquerade.domain")
    envelope = found.get("envelope", True)
    if envelope is None:
        envelope = True
    if not isinstance(envelope, bool):
        errors["masquerade.envelope"] = [f"must be true or false, not {_json_type(envelope)}"]
        return None
    return None if domain is None else Masquerade(domain, envelope)
