"""The agent's configuration file (``agent.toml``)."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import re
import ssl
import stat
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.compat import tomllib
from shared.errors import ConfigError, ExecutorError, NotSupported
from shared.executor import Executor, LocalExecutor
from shared.mta import MtaOperations, detect_kind, operations_for
from shared.mta_kind import resolve_profile
from shared.profile import AUTO_KIND, HostProfile, check_settings

DEFAULT_LISTEN = "0.0.0.0:8587"
_KEYS = {"listen", "token_file", "token_sha256", "tls_cert", "tls_key", "plain_http",
         "insecure_http", "mta", "log_level"}
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
#: ``[mta] kind`` when agent.toml does not say (what agents before Postfix support ran)
DEFAULT_MTA_KIND = "sendmail"
log = logging.getLogger("relayfleet.agent")


class MtaUndetected(NotSupported):
    """``[mta] kind = "auto"`` and this host's MTA could not be told (the agent answers 503)."""

    kind = "mta_undetected"


@dataclass(frozen=True)
class MtaSettings:
    """agent.toml's ``[mta]`` table: the kind (``sendmail``, ``postfix`` or ``auto``), the
    flavour and the profile overrides, checked when made (``auto``: against every kind)."""

    kind: str = DEFAULT_MTA_KIND
    flavour: str = "debian"
    overrides: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Refuse bad settings (a ProfileError names the key)."""
        check_settings(self.kind, self.flavour, self.overrides)

    @property
    def auto(self) -> bool:
        """Whether the kind is detected on the host rather than configured."""
        return self.kind == AUTO_KIND

    def to_dict(self) -> dict[str, Any]:
        """The settings as agent.toml says them (argv tuples as lists)."""
        return {"kind": self.kind, "flavour": self.flavour,
                **{key: list(value) if isinstance(value, tuple) else value
                   for key, value in self.overrides.items()}}


class ProfileResolver:
    """The one place the agent turns its ``[mta]`` settings into a host profile.

    A configured kind gives its profile at once. ``auto`` detects the running MTA at
    first use (:func:`shared.mta.detect_kind`, one shell command through the agent's
    executor) and keeps the answer; concurrent first uses detect once. A failed detection
    is not kept: the next use tries again (the MTA may have been started meanwhile).
    """

    def __init__(self, settings: MtaSettings,
                 executor_factory: Callable[[], Executor] = LocalExecutor) -> None:
        self.settings = settings
        self._executor_factory = executor_factory
        self._lock = threading.Lock()
        self._profile = None if settings.auto else self._resolve()
        #: the kind the last detection found (None until one has)
        self.detected: str | None = None

    @property
    def known_kind(self) -> str | None:
        """The kind operations run as, once resolved (never detects: None until then)."""
        profile = self._profile
        return profile.kind if profile is not None else None

    def profile(self) -> HostProfile:
        """The host profile; MtaUndetected, saying what to fix, when ``auto`` cannot tell."""
        profile = self._profile
        if profile is not None:
            return profile
        with self._lock:
            if self._profile is None:
                self._profile = self._resolve()
                log.info("[mta] kind = \"auto\": this host runs %s", self._profile.kind)
            return self._profile

    def operations(self) -> MtaOperations:
        """The MTA's operations on this host: its profile, through the agent's executor."""
        return operations_for(self._executor_factory(), self.profile())

    def _resolve(self) -> HostProfile:
        settings = self.settings
        return resolve_profile(settings.kind, settings.flavour, settings.overrides,
                               lambda: self.detected or self.detect())

    def detect(self) -> str:
        """Which MTA this host runs, asked now and kept in ``detected`` (MtaUndetected when
        that cannot be told)."""
        try:
            kind = detect_kind(self._executor_factory())
        except (NotSupported, ExecutorError) as exc:
            reason = (exc.message if isinstance(exc, NotSupported)
                      else f"cannot tell which MTA this host runs: {exc.message}")
            fix = ("; agent.toml's [mta] kind is \"auto\": set it to \"sendmail\" or "
                   "\"postfix\", or start the MTA (the agent detects it again on its next "
                   "request)") if self.settings.auto else ""
            raise MtaUndetected(reason + fix) from None
        self.detected = kind
        return kind


@dataclass(frozen=True)
class AgentConfig:
    """What the agent needs: where to listen, the token's hash, TLS, and the ``[mta]``
    settings (:class:`ProfileResolver` makes the host profile of them)."""

    listen_host: str
    listen_port: int
    token_sha256: str
    mta: MtaSettings
    tls_cert: str | None = None
    tls_key: str | None = None
    log_level: str = "INFO"
    insecure_http: bool = False

    def token_matches(self, presented: str) -> bool:
        """Constant-time check of a presented bearer token."""
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).hexdigest()
        return hmac.compare_digest(digest, self.token_sha256)

    def tls_fingerprint(self) -> str | None:
        """SHA-256 of the certificate (DER), as the controller pins it; ``None`` without TLS."""
        if not self.tls_cert:
            return None
        return certificate_fingerprint(Path(self.tls_cert).read_text())

    def refusal_to_serve(self) -> str | None:
        """Why ``serve`` refuses this configuration (plain HTTP off loopback), or ``None``."""
        if self.tls_cert or self.insecure_http or _loopback_only(self.listen_host):
            return None
        # The controller sends the token and SMTP AUTH passwords: never in clear by default.
        return (f"listening on {self.listen_host}:{self.listen_port} without TLS would send "
                "the token and SMTP passwords in clear: set tls_cert and tls_key (install.sh "
                "makes a self-signed pair), listen on loopback only, or say "
                "insecure_http = true")

    def describe(self, executor_factory: Callable[[], Executor] | None = None
                 ) -> dict[str, Any]:
        """The resolved configuration without the token (for ``relayfleet-agent check``).

        With an ``executor_factory`` the host is asked which MTA it runs: ``mta_kind`` says
        the configured kind, the detected one (or why there is none) and the kind the
        agent drives; ``mta`` is the resolved profile (the settings, when ``auto`` could
        not tell).
        """
        described = {"listen": f"{self.listen_host}:{self.listen_port}",
                     "tls": bool(self.tls_cert), "tls_fingerprint": self.tls_fingerprint(),
                     "insecure_http": self.insecure_http, "log_level": self.log_level}
        return {**described, **describe_mta(self.mta, executor_factory)}


def describe_mta(settings: MtaSettings,
                 executor_factory: Callable[[], Executor] | None) -> dict[str, Any]:
    """The ``mta_kind`` and ``mta`` parts of :meth:`AgentConfig.describe`."""
    resolver = ProfileResolver(settings, executor_factory or LocalExecutor)
    kinds: dict[str, Any] = {"configured": settings.kind}
    if executor_factory is not None:
        try:
            resolver.detect()
        except MtaUndetected as exc:
            kinds["detection_error"] = exc.message
    kinds["detected"] = resolver.detected
    if settings.auto and resolver.detected is None:
        return {"mta_kind": {**kinds, "resolved": None}, "mta": settings.to_dict()}
    profile = resolver.profile()
    return {"mta_kind": {**kinds, "resolved": profile.kind}, "mta": profile.to_dict()}


def certificate_fingerprint(pem: str) -> str:
    """``sha256:`` and the SHA-256 of a PEM certificate's DER form, in hex."""
    try:
        der = ssl.PEM_cert_to_DER_cert(pem)
    except ValueError as exc:
        raise ConfigError(f"tls_cert is not a PEM certificate: {exc}") from None
    return "sha256:" + hashlib.sha256(der).hexdigest()


def _loopback_only(host: str) -> bool:
    """Whether ``listen`` binds loopback only (plain HTTP cannot leave the machine)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_listen(value: str) -> tuple[str, int]:
    """Split ``ADDR:PORT`` (``[v6]:PORT`` for IPv6)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535 or not host:
        raise ConfigError(f"listen must be ADDR:PORT, not {value!r}")
    return host.strip("[]"), int(port)


def _read_token_file(path: str) -> str:
    try:
        st = os.stat(path)
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read token_file {path}: {exc.strerror}") from exc
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"token_file {path} must be readable by its owner only (chmod 600)")
    if len(token) < 16:
        raise ConfigError(f"token_file {path} holds a token shorter than 16 characters")
    return hashlib.sha256(token.encode()).hexdigest()


def load_config(path: str | Path, listen: str | None = None) -> AgentConfig:
    """Read and check ``agent.toml``; raise ConfigError saying what to fix."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    unknown = set(data) - _KEYS
    if unknown:
        raise ConfigError(f"unknown setting(s) in {path}: {', '.join(sorted(unknown))}")
    host, port = parse_listen(listen or str(data.get("listen", DEFAULT_LISTEN)))
    if "token_sha256" in data:
        token_sha256 = str(data["token_sha256"]).lower()
        if not _SHA256_RE.fullmatch(token_sha256):
            raise ConfigError("token_sha256 must be 64 hexadecimal digits")
    elif "token_file" in data:
        token_sha256 = _read_token_file(str(data["token_file"]))
    else:
        raise ConfigError(f"{path} needs token_file (or token_sha256)")
    tls_cert, tls_key = data.get("tls_cert"), data.get("tls_key")
    if bool(tls_cert) != bool(tls_key):
        raise ConfigError("tls_cert and tls_key go together")
    for item in (tls_cert, tls_key):
        if item and not os.path.exists(item):
            raise ConfigError(f"{item} does not exist")
    # ``plain_http`` is the contract's name (SPEC); ``insecure_http`` is accepted as well.
    insecure_http = data.get("plain_http", data.get("insecure_http", False))
    if not isinstance(insecure_http, bool):
        raise ConfigError("plain_http must be true or false")
    if not isinstance(data.get("mta", {}), dict):
        raise ConfigError("[mta] must be a table")
    mta = dict(data.get("mta", {}))
    settings = MtaSettings(str(mta.pop("kind", DEFAULT_MTA_KIND)),
                           str(mta.pop("flavour", "debian")), mta)
    level = str(data.get("log_level", "INFO")).upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError("log_level must be DEBUG, INFO, WARNING or ERROR")
    config = AgentConfig(host, port, token_sha256, settings, tls_cert, tls_key, level,
                         insecure_http)
    if tls_cert:
        config.tls_fingerprint()  # a certificate that is not one fails here, not at serve
    return config
