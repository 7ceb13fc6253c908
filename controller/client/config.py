"""Where the CLI finds its controller and token: flags, then the environment, then a profile.

Profiles live in ``$XDG_CONFIG_HOME/relayfleet/config.toml`` (``~/.config/...``), mode
0600, one table per profile::

    default_profile = "acme"

    [profiles.acme]
    api = "https://relayfleet.example.net"
    token = "rf_..."
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from controller.client.errors import UsageProblem

ENV_API = "RELAYFLEET_API_URL"
ENV_TOKEN = "RELAYFLEET_TOKEN"  # noqa: S105 (the variable's name, not a token)
ENV_PROFILE = "RELAYFLEET_PROFILE"
DEFAULT_PROFILE = "default"


def config_path() -> Path:
    """The profiles file (``$XDG_CONFIG_HOME/relayfleet/config.toml``)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "relayfleet" / "config.toml"


@dataclass(frozen=True)
class Connection:
    """The controller to talk to and the token to show it."""

    api: str
    token: str
    #: where each came from, for messages ("flag", "environment", "profile acme")
    source: str


def read_profiles(path: Path | None = None) -> dict[str, Any]:
    """The parsed profiles file (empty when there is none)."""
    path = path or config_path()
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return {}
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        # Like ssh with a private key: a token others can read is not used.
        raise UsageProblem(f"{path} can be read by other users and holds tokens",
                           hint=f"run: chmod 600 {path}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageProblem(f"{path} is not valid TOML: {exc}",
                           hint="fix it by hand, or remove it and run relayfleet login") from None


def _toml_string(value: str) -> str:
    escaped = []
    for char in value:
        if char in '"\\':
            escaped.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            escaped.append(f"\\u{ord(char):04x}")
        else:
            escaped.append(char)
    return '"' + "".join(escaped) + '"'


def _toml_key(key: str) -> str:
    simple = key and all(c.isalnum() or c in "-_" for c in key) and key.isascii()
    return key if simple else _toml_string(key)


def write_profiles(data: dict[str, Any], path: Path | None = None) -> Path:
    """Write the profiles file (0600, its directory 0700), replacing it atomically."""
    path = path or config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # mkdir's mode only applies to a directory it makes: one made before (by hand, by an
    # older version) is tightened too
    path.parent.chmod(0o700)
    lines = []
    if data.get("default_profile"):
        lines.append(f"default_profile = {_toml_string(data['default_profile'])}\n")
    for name, profile in sorted(data.get("profiles", {}).items()):
        lines.append(f"\n[profiles.{_toml_key(name)}]\n")
        for key, value in sorted(profile.items()):
            lines.append(f"{_toml_key(key)} = {_toml_string(str(value))}\n")
    # A fresh file of our own (O_EXCL, a random name): never a stale or planted one whose
    # mode or owner we would inherit, and two logins at once do not write into one file.
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write("".join(lines))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return path


def save_profile(name: str, api: str, token: str, path: Path | None = None) -> Path:
    """Store (or replace) one profile and make it the default."""
    data = read_profiles(path)
    data.setdefault("profiles", {})[name] = {"api": api, "token": token}
    data["default_profile"] = name
    return write_profiles(data, path)


def forget_profile(name: str, path: Path | None = None) -> bool:
    """Remove one profile; whether it existed."""
    data = read_profiles(path)
    profiles = data.get("profiles", {})
    if name not in profiles:
        return False
    del profiles[name]
    if data.get("default_profile") == name:
        data["default_profile"] = next(iter(sorted(profiles)), None)
    write_profiles(data, path)
    return True


def read_token_file(path: str) -> str:
    """The token in ``path`` (its first line; ``-`` reads stdin)."""
    import sys

    try:
        text = sys.stdin.readline() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageProblem(f"cannot read the token file {path}: {exc.strerror}") from None
    token = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not token:
        raise UsageProblem(f"the token file {path} is empty")
    return token


def profile_name(flag: str | None, data: dict[str, Any]) -> str:
    """The profile to use: the flag, then RELAYFLEET_PROFILE, then the default one."""
    return (flag or os.environ.get(ENV_PROFILE) or data.get("default_profile")
            or DEFAULT_PROFILE)


def resolve(api: str | None, token: str | None, token_file: str | None,
            profile: str | None) -> Connection:
    """The connection from the flags, then the environment, then a profile; a usage
    problem names what is missing and how to give it.

    ``--profile`` is a flag too: a profile named on the command line beats the
    environment; the default profile only fills in what the environment leaves out.
    """
    if token and token_file:
        raise UsageProblem("give --token or --token-file, not both")
    if token_file:
        token = read_token_file(token_file)
    layers: list[tuple[str, str | None, str | None]] = [("flag", api, token)]
    environment = ("environment", os.environ.get(ENV_API), os.environ.get(ENV_TOKEN))
    data = read_profiles() if profile or not (api and token) else {}
    name = profile_name(profile, data)
    stored = data.get("profiles", {}).get(name)
    if profile and stored is None:
        known = ", ".join(sorted(data.get("profiles", {}))) or "none yet"
        raise UsageProblem(f"no profile named {profile!r} (profiles: {known})",
                           hint=f"relayfleet login --profile {profile}")
    from_profile = (f"profile {name}", (stored or {}).get("api"), (stored or {}).get("token"))
    layers += [from_profile, environment] if profile else [environment, from_profile]
    api_from = next(((where, value) for where, value, _ in layers if value), None)
    token_from = next(((where, value) for where, _, value in layers if value), None)
    if api_from is None:
        raise UsageProblem("no controller to talk to",
                           hint=f"give --api URL, set {ENV_API}, or run relayfleet login")
    api_url = check_api_url(api_from[1], api_from[0])
    if token_from is not None and token_from[0] == from_profile[0] \
            and not same_url(str(from_profile[1] or ""), api_url):
        # A profile's token is for its own controller: sent to another URL (a --api or
        # RELAYFLEET_API_URL pointing elsewhere), it would hand that server the token.
        raise UsageProblem(
            f"no API token for {api_url} (profile {name}'s token is for "
            f"{from_profile[1] or 'no URL'})", hint=_token_hint(api_url, data))
    if token_from is None:
        raise UsageProblem("no API token",
                           hint=f"give --token-file FILE, set {ENV_TOKEN}, or run "
                                "relayfleet login")
    source = " and ".join(dict.fromkeys([api_from[0], token_from[0]]))
    return Connection(api=api_url, token=token_from[1], source=source)


def check_api_url(url: str, where: str = "flag") -> str:
    """``url`` without its trailing ``/``, or a usage problem when it is not an http(s)
    URL (``--api relayfleet.example.net`` would otherwise fail as "unreachable")."""
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        bare = url.split("://", 1)[-1]
        giver = {"flag": "--api", "environment": ENV_API}.get(where, where)
        raise UsageProblem(f"{url!r} ({giver}) is not a controller URL: it needs "
                           "https:// (or http:// on a lab)",
                           hint=f"e.g. --api https://{bare or 'relayfleet.example.net'}")
    return url


def same_url(first: str, second: str) -> bool:
    """Whether two controller URLs are the same (scheme and host in any case, a trailing
    ``/`` or not)."""
    def normal(url: str) -> tuple[str, str, str]:
        parts = urlsplit(url.strip())
        return parts.scheme.lower(), parts.netloc.lower(), parts.path.rstrip("/")

    return bool(first) and normal(first) == normal(second)


def _token_hint(api_url: str, data: dict[str, Any]) -> str:
    """How to give a token for ``api_url``: a stored profile for it, else the ways in."""
    for other, stored in sorted(data.get("profiles", {}).items()):
        if same_url(str(stored.get("api") or ""), api_url) and stored.get("token"):
            return f"use its profile: relayfleet --profile {other} ..."
    return (f"give --token-file FILE or set {ENV_TOKEN} for it, or store one: relayfleet "
            f"login --profile NAME --api {api_url}")
