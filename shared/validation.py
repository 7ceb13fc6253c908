"""Strict grammars for every caller value that can reach m4, a map file or a shell.

Values are checked against an allow-list grammar first and only then quoted for their
destination. Host names: RFC 1123 labels, or an address literal (``[192.0.2.1]``,
``[IPv6:2001:db8::1]``). m4 rescans a macro's value when it expands it, so a host whose
label is an m4 builtin (``dnl.example.com``, ``divert.example.com``) compiles to a broken
``DS`` line with plain quoting; :func:`m4_quote` adds the second level of quotes that
makes any accepted name reach sendmail.cf verbatim (checked against the real m4 by
``tests/integration/test_m4_quoting.py``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.errors import ValidationError

MAX_HOSTNAME = 253
MAX_LABEL = 63
MAX_CREDENTIAL = 128
MAILERS = ("relay", "esmtp", "smtp")

_LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_USERNAME_RE = re.compile(r"[A-Za-z0-9._@+=-]{1,128}")
#: printable ASCII but blank, double quote and backslash (they break authinfo's quoting)
_PASSWORD_RE = re.compile(r'[!#-\[\]-~]{1,128}')


def _describe_bad_char(value: str, allowed: re.Pattern[str]) -> str:
    for ch in value:
        if not allowed.fullmatch(ch):
            return repr(ch)
    return "?"


def validate_hostname(value: object, field: str = "host") -> str:
    """Return a normalised host name or bracketed address literal; refuse anything else."""
    if not isinstance(value, str):
        raise ValidationError.for_field(field, "must be a string")
    if not value:
        raise ValidationError.for_field(field, "must not be empty")
    if len(value) > MAX_HOSTNAME + 7:
        raise ValidationError.for_field(field, f"is longer than {MAX_HOSTNAME} characters")
    if value.startswith("[") or ":" in value or re.fullmatch(r"[0-9.]+", value):
        return _address_literal(value, field)
    name = value.lower()
    bad = re.search(r"[^a-z0-9.-]", name)
    if bad:
        shown = repr(value[bad.start()])
        raise ValidationError.for_field(
            field, f"contains a character not allowed in a host name: {shown} "
                   "(letters, digits, '-' and '.' only)")
    if len(name) > MAX_HOSTNAME:
        raise ValidationError.for_field(field, f"is longer than {MAX_HOSTNAME} characters")
    if name.endswith("."):
        raise ValidationError.for_field(field, "must not end with a dot")
    for label in name.split("."):
        if not label:
            raise ValidationError.for_field(field, "has an empty label ('..' or a leading dot)")
        if len(label) > MAX_LABEL:
            raise ValidationError.for_field(field, f"has a label longer than {MAX_LABEL} "
                                                   "characters")
        if not _LABEL_RE.fullmatch(label):
            raise ValidationError.for_field(field, f"label {label!r} must not start or end with "
                                                   "'-'")
    return name


def _address_literal(value: str, field: str) -> str:
    inner = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    if inner.lower().startswith("ipv6:"):
        inner = inner[5:]
    try:
        address = ipaddress.ip_address(inner)
    except ValueError:
        raise ValidationError.for_field(
            field, "is neither a host name nor an IP address literal "
                   "(use [192.0.2.1] or [IPv6:2001:db8::1])") from None
    if address.version == 6:
        return f"[IPv6:{address.compressed}]"
    return f"[{address}]"


def validate_port(value: object, field: str = "port") -> int:
    """Return a TCP port number 1-65535."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError.for_field(field, "must be an integer from 1 to 65535")
    if not 1 <= value <= 65535:
        raise ValidationError.for_field(field, "must be from 1 to 65535")
    return value


def _credential_string(value: object, field: str) -> str:
    """A credential must be a string of 1 to MAX_CREDENTIAL characters."""
    if not isinstance(value, str):
        raise ValidationError.for_field(field, "must be a string")
    if not 1 <= len(value) <= MAX_CREDENTIAL:
        raise ValidationError.for_field(field, f"must be 1 to {MAX_CREDENTIAL} characters")
    return value


def validate_username(value: object, field: str = "auth.username") -> str:
    """Return an SMTP AUTH user name (letters, digits and . _ @ + = -, 1-128 characters)."""
    value = _credential_string(value, field)
    if not _USERNAME_RE.fullmatch(value):
        shown = _describe_bad_char(value, re.compile(r"[A-Za-z0-9._@+=-]"))
        raise ValidationError.for_field(
            field, f"contains {shown}; allowed: letters, digits and . _ @ + = -")
    return value


def validate_password(value: object, field: str = "auth.password") -> str:
    """Return an SMTP AUTH password; the reason for a refusal never quotes the value."""
    value = _credential_string(value, field)
    if not _PASSWORD_RE.fullmatch(value):
        raise ValidationError.for_field(
            field, "may hold printable ASCII characters only, without blanks, '\"' or '\\'")
    return value


def m4_quote(value: str) -> str:
    """m4 source for ``value`` that reaches sendmail.cf verbatim (two levels of quotes)."""
    if any(ch in value for ch in "`'\n\r\x00"):
        raise ValueError("m4_quote takes validated values only (no quotes or newlines)")
    return f"``{value}''"


@dataclass(frozen=True)
class SmtpAuth:
    """Credentials for the smarthost; ``repr`` never shows the password."""

    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class SmarthostRequest:
    """A validated request to set the smarthost."""

    host: str
    port: int | None = None
    mx: bool = False
    mailer: str = "relay"
    auth: SmtpAuth | None = None

    def smart_host_value(self) -> str:
        """The SMART_HOST value: ``[host]`` without MX lookup, a mailer prefix if not relay."""
        literal = self.host.startswith("[")
        target = self.host if (self.mx or literal) else f"[{self.host}]"
        return target if self.mailer == "relay" else f"{self.mailer}:{target}"


_REQUEST_FIELDS = {"host", "port", "mx", "mailer", "auth"}


def parse_smarthost_request(data: object) -> SmarthostRequest:
    """Validate a set-smarthost body, reporting every bad field at once."""
    if not isinstance(data, Mapping):
        raise ValidationError.for_field("body", "must be a JSON object")
    errors: dict[str, list[str]] = {}
    values: dict[str, Any] = {}

    def check(name: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except ValidationError as exc:
            for key, reasons in exc.errors.items():
                errors.setdefault(key, []).extend(reasons)
            return None

    for key in sorted(set(data) - _REQUEST_FIELDS):
        errors[str(key)[:64]] = ["unknown field"]
    if "host" not in data:
        errors["host"] = ["is required"]
    else:
        values["host"] = check("host", validate_hostname, data["host"])
    port = data.get("port")
    if port is not None:
        values["port"] = check("port", validate_port, port)
        if values["port"] == 25:
            values["port"] = None
    mx = data.get("mx", False)
    if not isinstance(mx, bool):
        errors["mx"] = ["must be true or false"]
    values["mx"] = mx is True
    mailer = data.get("mailer", "relay")
    if mailer not in MAILERS:
        errors["mailer"] = [f"must be one of {', '.join(MAILERS)}"]
    values["mailer"] = mailer
    auth = data.get("auth")
    if auth is not None:
        if not isinstance(auth, Mapping):
            errors["auth"] = ["must be an object with username and password"]
        else:
            for key in sorted(set(auth) - {"username", "password"}):
                errors[f"auth.{str(key)[:64]}"] = ["unknown field"]
            for key in ("username", "password"):
                if key not in auth:
                    errors[f"auth.{key}"] = ["is required"]
            user = check("auth.username", validate_username, auth.get("username")) \
                if "username" in auth else None
            password = check("auth.password", validate_password, auth.get("password")) \
                if "password" in auth else None
            if user is not None and password is not None:
                values["auth"] = SmtpAuth(user, password)
    if errors:
        raise ValidationError("invalid smarthost request: " + "; ".join(
            f"{key}: {', '.join(reasons)}" for key, reasons in sorted(errors.items())), errors)
    return SmarthostRequest(**values)
