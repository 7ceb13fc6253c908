"""Host profiles: where an MTA keeps its files and how to drive it, per flavour."""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from shared.errors import ConfigError

MTA_KINDS = ("sendmail", "postfix")
FLAVOURS = ("debian", "rhel")


@dataclass(frozen=True)
class HostProfile:
    """Paths and commands for one host. Keys match ``agent.toml``'s ``[mta]`` table."""

    kind: str = "sendmail"
    flavour: str = "debian"
    mail_dir: str = "/etc/mail"
    mc: str = "sendmail.mc"
    cf: str = "sendmail.cf"
    queue_dir: str = "/var/spool/mqueue"
    client_queue_dir: str = "/var/spool/mqueue-client"
    maillog: str = "/var/log/mail.log"
    restart: tuple[str, ...] = ("/etc/init.d/sendmail", "restart")
    pid_file: str = "/run/sendmail/mta/sendmail.pid"
    sendmail: str = "/usr/sbin/sendmail"
    mailq: tuple[str, ...] = ("mailq",)
    m4: str = "m4"
    make: tuple[str, ...] = ("make",)
    makemap: str = "makemap"
    authinfo: str = "authinfo"
    #: seconds a command may take before it is killed (restart, m4, make, validation)
    command_timeout_s: float = 120.0
    validate_timeout_s: float = 20.0
    extra: Mapping[str, Any] = field(default_factory=dict)

    def path(self, name: str) -> str:
        """Absolute path of a file in the mail directory (``mc``, ``cf``, ``authinfo``)."""
        value = getattr(self, name)
        return value if value.startswith("/") else posixpath.join(self.mail_dir, value)

    @property
    def mc_path(self) -> str:
        """Absolute path of sendmail.mc."""
        return self.path("mc")

    @property
    def cf_path(self) -> str:
        """Absolute path of sendmail.cf."""
        return self.path("cf")

    @property
    def authinfo_path(self) -> str:
        """Absolute path of the authinfo map source."""
        return self.path("authinfo")

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (argv tuples as lists)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


_FLAVOUR_DEFAULTS: dict[str, dict[str, Any]] = {
    "debian": {},
    "rhel": {
        "maillog": "/var/log/maillog",
        "restart": ("service", "sendmail", "restart"),
        "pid_file": "/var/run/sendmail.pid",
    },
}

_PATH_KEYS = {"mail_dir", "mc", "cf", "queue_dir", "client_queue_dir", "maillog", "pid_file",
              "sendmail", "m4", "makemap", "authinfo"}
_ARGV_KEYS = {"restart", "mailq", "make"}
_NUMBER_KEYS = {"command_timeout_s", "validate_timeout_s"}


def _check_path(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value or "\x00" in value or "\n" in value:
        raise ConfigError(f"mta.{key} must be a non-empty path string")
    if ".." in value.split("/"):
        raise ConfigError(f"mta.{key} must not contain '..'")
    return value


def _check_argv(key: str, value: Any) -> tuple[str, ...]:
    if (not isinstance(value, list | tuple) or not value
            or not all(isinstance(v, str) and v and "\x00" not in v for v in value)):
        raise ConfigError(f"mta.{key} must be a non-empty list of strings (an argv)")
    return tuple(value)


def build_profile(kind: str = "sendmail", flavour: str = "debian",
                  overrides: Mapping[str, Any] | None = None) -> HostProfile:
    """Build a profile from the flavour's defaults and explicit overrides."""
    if kind not in MTA_KINDS:
        raise ConfigError(f"mta.kind must be one of {', '.join(MTA_KINDS)}, not {kind!r}")
    if flavour not in FLAVOURS:
        raise ConfigError(f"mta.flavour must be one of {', '.join(FLAVOURS)}, not {flavour!r}")
    values: dict[str, Any] = dict(_FLAVOUR_DEFAULTS[flavour])
    for key, value in (overrides or {}).items():
        if key in ("kind", "flavour"):
            continue
        if key in _PATH_KEYS:
            values[key] = _check_path(key, value)
        elif key in _ARGV_KEYS:
            values[key] = _check_argv(key, value)
        elif key in _NUMBER_KEYS:
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"mta.{key} must be a positive number")
            values[key] = float(value)
        else:
            known = ", ".join(sorted(_PATH_KEYS | _ARGV_KEYS | _NUMBER_KEYS))
            raise ConfigError(f"unknown mta setting {key!r}; known settings: {known}")
    if kind != "sendmail":
        values.setdefault("mail_dir", "/etc/postfix")
    return replace(HostProfile(kind=kind, flavour=flavour), **values)
