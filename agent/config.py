"""The agent's configuration file (``agent.toml``)."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import re
import ssl
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.errors import ConfigError
from shared.profile import HostProfile, build_profile

DEFAULT_LISTEN = "0.0.0.0:8587"
_KEYS = {"listen", "token_file", "token_sha256", "tls_cert", "tls_key", "plain_http",
         "insecure_http", "mta", "log_level"}
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class AgentConfig:
    """What the agent needs: where to listen, the token's hash, TLS, and the host profile."""

    listen_host: str
    listen_port: int
    token_sha256: str
    profile: HostProfile
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

    def describe(self) -> dict[str, Any]:
        """The resolved configuration without the token (for ``relayfleet-agent check``)."""
        return {"listen": f"{self.listen_host}:{self.listen_port}",
                "tls": bool(self.tls_cert), "tls_fingerprint": self.tls_fingerprint(),
                "insecure_http": self.insecure_http, "log_level": self.log_level,
                "mta": self.profile.to_dict()}


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
    mta = dict(data.get("mta", {}))
    if not isinstance(data.get("mta", {}), dict):
        raise ConfigError("[mta] must be a table")
    profile = build_profile(str(mta.pop("kind", "sendmail")), str(mta.pop("flavour", "debian")),
                            mta)
    level = str(data.get("log_level", "INFO")).upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError("log_level must be DEBUG, INFO, WARNING or ERROR")
    config = AgentConfig(host, port, token_sha256, profile, tls_cert, tls_key, level,
                         insecure_http)
    if tls_cert:
        config.tls_fingerprint()  # a certificate that is not one fails here, not at serve
    return config
