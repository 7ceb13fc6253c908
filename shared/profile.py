"""Host profiles: where an MTA keeps its files and how to drive it, per flavour."""

from __future__ import annotations

import posixpath
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from shared.errors import ConfigError, ValidationError

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

    def confined_paths(self) -> dict[str, tuple[str, tuple[str, ...]]]:
        """Each confined file of the profile: key -> (absolute path, the roots it must stay
        under). ``authinfo.db`` (the compiled map) is the map source's companion."""
        out: dict[str, tuple[str, tuple[str, ...]]] = {}
        for key, roots in _ROOTS.items():
            path = self.path(key) if key in _MAIL_DIR_FILES else getattr(self, key)
            out[key] = (path, tuple(self.mail_dir if r == MAIL_DIR else r for r in roots))
        out["authinfo.db"] = (f"{self.authinfo_path}.db", out["authinfo"][1])
        return out

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

#: stands for the profile's mail directory in :data:`_ROOTS`
MAIL_DIR = "<mail_dir>"
#: files named relative to the mail directory (a bare name is taken from there)
_MAIL_DIR_FILES = frozenset({"mc", "cf", "authinfo"})
#: where each file or directory key may point. Operations run as root and read, write, or
#: feed these to m4: a path is root-level power, so each stays where its key means it to be.
#: Program keys (sendmail, m4, makemap) are not confined here: only MSP-wide admins set them.
_ROOTS: dict[str, tuple[str, ...]] = {
    "mail_dir": ("/etc",),
    "mc": (MAIL_DIR,),
    "cf": (MAIL_DIR,),
    "authinfo": (MAIL_DIR,),
    "queue_dir": ("/var/spool",),
    "client_queue_dir": ("/var/spool",),
    "maillog": ("/var/log",),
    "pid_file": ("/run", "/var/run", MAIL_DIR),
}
#: files no two keys may share: m4 must never read the authinfo map (it holds passwords a
#: caller chose) as sendmail.mc, nor a compile overwrite the map or the pid file
DISTINCT_FILES = ("mc", "cf", "authinfo", "authinfo.db", "pid_file")


class ProfileError(ValidationError, ConfigError):
    """A profile setting is refused; ``errors`` maps its key (``mc``, ``pid_file``) to why.

    Both a ValidationError (the controller answers 422) and a ConfigError (the agent's and
    relayfleet-ops' configuration loaders report it as a bad setting).
    """


def _refuse(key: str, reason: str) -> ProfileError:
    return ProfileError(f"mta.{key} {reason}", {key: [reason]})


def _check_path(key: str, value: Any) -> str:
    if (not isinstance(value, str) or not value
            or any(ord(ch) < 32 or ord(ch) == 127 for ch in value)):
        raise _refuse(key, "must be a non-empty path string (no NUL, newline or control "
                           "characters)")
    if ".." in value.split("/"):
        raise _refuse(key, "must not contain '..'")
    return value


def is_under(path: str, root: str) -> bool:
    """True if ``path`` is strictly inside the directory ``root`` (both normalised)."""
    return path != root and path.startswith(root.rstrip("/") + "/")


def _confine(profile: HostProfile, overridden: Collection[str] = ()) -> None:
    """Refuse a profile whose files point outside what their keys mean (see _ROOTS);
    a clash between two keys is blamed on the one that was ``overridden``."""
    paths = profile.confined_paths()
    for key, (path, roots) in paths.items():
        if key == "authinfo.db":
            continue  # follows authinfo
        if not path.startswith("/") or path.startswith("//") or posixpath.normpath(path) != path:
            raise _refuse(key, f"must be a normalised absolute path, not {path!r}")
        if not any(is_under(path, root) for root in roots):
            where = " or ".join(roots)
            raise _refuse(key, f"must be under {where} (it is {path})")
    seen: dict[str, str] = {}
    for key in DISTINCT_FILES:
        path = paths[key][0]
        if path in seen:
            blamed, other = ((seen[path], key) if seen[path] in overridden and key not in overridden
                             else (key, seen[path]))
            raise _refuse(blamed, f"must not be the same file as mta.{other} ({path})")
        seen[path] = key


def _check_argv(key: str, value: Any) -> tuple[str, ...]:
    if (not isinstance(value, list | tuple) or not value
            or not all(isinstance(v, str) and v and "\x00" not in v for v in value)):
        raise _refuse(key, "must be a non-empty list of strings (an argv)")
    return tuple(value)


def build_profile(kind: str = "sendmail", flavour: str = "debian",
                  overrides: Mapping[str, Any] | None = None) -> HostProfile:
    """Build a profile from the flavour's defaults and explicit overrides."""
    if kind not in MTA_KINDS:
        raise _refuse("kind", f"must be one of {', '.join(MTA_KINDS)}, not {kind!r}")
    if flavour not in FLAVOURS:
        raise _refuse("flavour", f"must be one of {', '.join(FLAVOURS)}, not {flavour!r}")
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
                raise _refuse(key, "must be a positive number")
            values[key] = float(value)
        else:
            known = ", ".join(sorted(_PATH_KEYS | _ARGV_KEYS | _NUMBER_KEYS))
            raise ProfileError(f"unknown mta setting {key!r}; known settings: {known}",
                               {key: ["unknown setting"]})
    if kind != "sendmail":
        values.setdefault("mail_dir", "/etc/postfix")
    profile = replace(HostProfile(kind=kind, flavour=flavour), **values)
    _confine(profile, values)
    return profile
