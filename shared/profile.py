"""Host profiles: where an MTA keeps its files and how to drive it, per kind and flavour.

One dataclass holds both MTAs' keys; a :class:`Layout` per kind says which keys that kind
reads (a sendmail key on a Postfix profile is refused, and the other way round), which
directory is the kind's home (the change lock and backups live there), which files must
stay under which roots, and which files no two keys may share.
"""

from __future__ import annotations

import posixpath
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from shared.errors import ConfigError, ValidationError

#: the MTAs a profile can describe
PROFILE_KINDS = ("sendmail", "postfix")
#: what a configuration may say: a kind, or ``auto`` (detected at first contact)
MTA_KINDS = (*PROFILE_KINDS, "auto")
AUTO_KIND = "auto"
FLAVOURS = ("debian", "rhel")


@dataclass(frozen=True)
class HostProfile:
    """Paths and commands for one host. Keys match ``agent.toml``'s ``[mta]`` table."""

    kind: str = "sendmail"
    flavour: str = "debian"
    # -- sendmail ------------------------------------------------------------------
    mail_dir: str = "/etc/mail"
    mc: str = "sendmail.mc"
    cf: str = "sendmail.cf"
    client_queue_dir: str = "/var/spool/mqueue-client"
    restart: tuple[str, ...] = ("/etc/init.d/sendmail", "restart")
    pid_file: str = "/run/sendmail/mta/sendmail.pid"
    m4: str = "m4"
    make: tuple[str, ...] = ("make",)
    makemap: str = "makemap"
    authinfo: str = "authinfo"
    # -- postfix -------------------------------------------------------------------
    config_dir: str = "/etc/postfix"
    main_cf: str = "main.cf"
    sasl_passwd: str = "sasl_passwd"  # noqa: S105 - a file name, not a password
    reload: tuple[str, ...] = ("postfix", "reload")
    postconf: str = "postconf"
    postfix: str = "postfix"
    postqueue: str = "postqueue"
    postmap: str = "postmap"
    # -- both ----------------------------------------------------------------------
    queue_dir: str = "/var/spool/mqueue"
    maillog: str = "/var/log/mail.log"
    sendmail: str = "/usr/sbin/sendmail"
    mailq: tuple[str, ...] = ("mailq",)
    #: the host's default CA bundle: what verifies a relay's certificate when a TLS policy
    #: asks for verify without its own ca_file (RHEL: /etc/pki/tls/certs/ca-bundle.crt)
    ca_bundle: str = "/etc/ssl/certs/ca-certificates.crt"
    #: seconds a command may take before it is killed (restart, m4, make, validation)
    command_timeout_s: float = 120.0
    validate_timeout_s: float = 20.0
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def layout(self) -> Layout:
        """What this profile's kind reads and where its files may be."""
        return LAYOUTS[self.kind]

    @property
    def home(self) -> str:
        """The kind's configuration directory (``mail_dir`` or ``config_dir``): the change
        lock and the backups live there."""
        return str(getattr(self, self.layout.home_key))

    @property
    def daemon_pid_file(self) -> str:
        """The file holding the pid of the MTA's daemon (Postfix's master keeps it in its
        queue directory)."""
        if self.kind == "postfix":
            return posixpath.join(self.queue_dir, "pid", "master.pid")
        return self.pid_file

    def path(self, name: str) -> str:
        """Absolute path of a file in the home directory (``mc``, ``main_cf``, ...)."""
        value = getattr(self, name)
        return value if value.startswith("/") else posixpath.join(self.home, value)

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

    @property
    def main_cf_path(self) -> str:
        """Absolute path of Postfix's main.cf."""
        return self.path("main_cf")

    @property
    def sasl_passwd_path(self) -> str:
        """Absolute path of Postfix's SASL password map source."""
        return self.path("sasl_passwd")

    def confined_paths(self) -> dict[str, tuple[str, tuple[str, ...]]]:
        """Each confined file of the profile: key -> (absolute path, the roots it must stay
        under). The compiled credentials map (``authinfo.db``, ``sasl_passwd.db``) is its
        source's companion."""
        layout = self.layout
        out: dict[str, tuple[str, tuple[str, ...]]] = {}
        for key, roots in layout.roots.items():
            path = self.path(key) if key in layout.home_files else getattr(self, key)
            out[key] = (path, tuple(self.home if r == HOME else r for r in roots))
        source, roots = out[layout.credentials_key]
        out[f"{layout.credentials_key}.db"] = (f"{source}.db", roots)
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form of the keys this kind reads (argv tuples as lists)."""
        keys = {"kind", "flavour", *self.layout.keys}
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name not in keys:
                continue
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


#: stands for the profile's home directory in :attr:`Layout.roots`
HOME = "<home>"


@dataclass(frozen=True)
class Layout:
    """One MTA kind's keys, home directory, confinement roots and distinct files."""

    #: keys a configuration may set for this kind
    keys: frozenset[str]
    #: the key naming the kind's configuration directory
    home_key: str
    #: keys naming files relative to the home directory (a bare name is taken from there)
    home_files: frozenset[str]
    #: where each file or directory key may point. Operations run as root and read, write
    #: or feed these to m4/postconf: a path is root-level power, so each stays where its key
    #: means it to be. Program keys are not confined: only MSP-wide admins set them.
    roots: Mapping[str, tuple[str, ...]]
    #: the credentials map source (its ``.db`` is confined with it)
    credentials_key: str
    #: files no two keys may share: the compiler must never read the credentials map (it
    #: holds passwords a caller chose) as configuration, nor a compile overwrite the map
    distinct: tuple[str, ...]


_COMMON_KEYS = {"queue_dir", "maillog", "sendmail", "mailq", "command_timeout_s",
                "validate_timeout_s", "ca_bundle"}
LAYOUTS: dict[str, Layout] = {
    "sendmail": Layout(
        keys=frozenset(_COMMON_KEYS | {"mail_dir", "mc", "cf", "client_queue_dir", "pid_file",
                                       "m4", "makemap", "authinfo", "restart", "make"}),
        home_key="mail_dir",
        home_files=frozenset({"mc", "cf", "authinfo"}),
        roots={"mail_dir": ("/etc",), "mc": (HOME,), "cf": (HOME,), "authinfo": (HOME,),
               "queue_dir": ("/var/spool",), "client_queue_dir": ("/var/spool",),
               "maillog": ("/var/log",), "pid_file": ("/run", "/var/run", HOME)},
        credentials_key="authinfo",
        distinct=("mc", "cf", "authinfo", "authinfo.db", "pid_file"),
    ),
    "postfix": Layout(
        keys=frozenset(_COMMON_KEYS | {"config_dir", "main_cf", "sasl_passwd", "reload",
                                       "postconf", "postfix", "postqueue", "postmap"}),
        home_key="config_dir",
        home_files=frozenset({"main_cf", "sasl_passwd"}),
        roots={"config_dir": ("/etc",), "main_cf": (HOME,), "sasl_passwd": (HOME,),
               "queue_dir": ("/var/spool",), "maillog": ("/var/log",)},
        credentials_key="sasl_passwd",
        distinct=("main_cf", "sasl_passwd", "sasl_passwd.db"),
    ),
}

_KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    "sendmail": {},
    "postfix": {"queue_dir": "/var/spool/postfix"},
}
_FLAVOUR_DEFAULTS: dict[tuple[str, str], dict[str, Any]] = {
    ("sendmail", "rhel"): {
        "maillog": "/var/log/maillog",
        "restart": ("service", "sendmail", "restart"),
        "pid_file": "/var/run/sendmail.pid",
        "ca_bundle": "/etc/pki/tls/certs/ca-bundle.crt",
    },
    ("postfix", "rhel"): {"maillog": "/var/log/maillog",
                          "ca_bundle": "/etc/pki/tls/certs/ca-bundle.crt"},
}

_PATH_KEYS = {"mail_dir", "mc", "cf", "queue_dir", "client_queue_dir", "maillog", "pid_file",
              "sendmail", "m4", "makemap", "authinfo", "config_dir", "main_cf", "sasl_passwd",
              "postconf", "postfix", "postqueue", "postmap", "ca_bundle"}
_ARGV_KEYS = {"restart", "mailq", "make", "reload"}
_NUMBER_KEYS = {"command_timeout_s", "validate_timeout_s"}
#: every key any kind reads
ALL_KEYS = frozenset(_PATH_KEYS | _ARGV_KEYS | _NUMBER_KEYS)


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
    """Refuse a profile whose files point outside what their keys mean (see Layout.roots);
    a clash between two keys is blamed on the one that was ``overridden``."""
    paths = profile.confined_paths()
    companion = f"{profile.layout.credentials_key}.db"
    for key, (path, roots) in paths.items():
        if key == companion:
            continue  # follows its source
        if not path.startswith("/") or path.startswith("//") or posixpath.normpath(path) != path:
            raise _refuse(key, f"must be a normalised absolute path, not {path!r}")
        if not any(is_under(path, root) for root in roots):
            where = " or ".join(roots)
            raise _refuse(key, f"must be under {where} (it is {path})")
    seen: dict[str, str] = {}
    for key in profile.layout.distinct:
        path = paths[key][0]
        if path in seen:
            blamed, other = ((seen[path], key) if seen[path] in overridden and key not in overridden
                             else (key, seen[path]))
            raise _refuse(blamed, f"must not be the same file as mta.{other} ({path})")
        seen[path] = key


def _check_argv(key: str, value: Any) -> tuple[str, ...]:
    if (not isinstance(value, (list, tuple)) or not value
            or not all(isinstance(v, str) and v and "\x00" not in v for v in value)):
        raise _refuse(key, "must be a non-empty list of strings (an argv)")
    return tuple(value)


def _check_value(key: str, value: Any) -> Any:
    if key in _PATH_KEYS:
        return _check_path(key, value)
    if key in _ARGV_KEYS:
        return _check_argv(key, value)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise _refuse(key, "must be a positive number")
    return float(value)


def build_profile(kind: str = "sendmail", flavour: str = "debian",
                  overrides: Mapping[str, Any] | None = None, *,
                  other_kinds_keys: bool = False) -> HostProfile:
    """Build a profile from the kind's and flavour's defaults and explicit overrides.

    ``other_kinds_keys``: ignore settings that only another kind reads (a host configured
    ``auto`` may carry both kinds' settings; the detected kind takes its own).
    """
    if kind not in PROFILE_KINDS:
        raise _refuse("kind", f"must be one of {', '.join(PROFILE_KINDS)}, not {kind!r}")
    if flavour not in FLAVOURS:
        raise _refuse("flavour", f"must be one of {', '.join(FLAVOURS)}, not {flavour!r}")
    layout = LAYOUTS[kind]
    values: dict[str, Any] = {**_KIND_DEFAULTS[kind], **_FLAVOUR_DEFAULTS.get((kind, flavour), {})}
    overridden: list[str] = []
    for key, value in (overrides or {}).items():
        if key in ("kind", "flavour"):
            continue
        if key not in ALL_KEYS:
            known = ", ".join(sorted(layout.keys))
            raise ProfileError(f"unknown mta setting {key!r}; known {kind} settings: {known}",
                               {key: ["unknown setting"]})
        if key not in layout.keys:
            if other_kinds_keys:
                _check_value(key, value)
                continue
            raise ProfileError(f"mta setting {key!r} is not a {kind} setting; {kind} reads: "
                               f"{', '.join(sorted(layout.keys))}",
                               {key: [f"not a {kind} setting"]})
        values[key] = _check_value(key, value)
        overridden.append(key)
    profile = replace(HostProfile(kind=kind, flavour=flavour), **values)
    _confine(profile, overridden)
    return profile


def check_settings(kind: str, flavour: str, overrides: Mapping[str, Any] | None) -> None:
    """Refuse bad MTA settings (ProfileError); ``auto`` checks them against every kind."""
    if kind != AUTO_KIND:
        build_profile(kind, flavour, overrides)
        return
    for each in PROFILE_KINDS:
        build_profile(each, flavour, overrides, other_kinds_keys=True)
