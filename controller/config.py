"""The controller's settings, read from the environment with embedded defaults.

``RELAYFLEET_DATABASE_URL``   SQLAlchemy URL (default: a SQLite file in the data directory)
``RELAYFLEET_BROKER_URL``     Celery broker (default ``redis://127.0.0.1:6379/0``)
``RELAYFLEET_SECRET_KEY``     encrypts stored secrets and signs callbacks (default: a random
                              key kept in ``secret.key`` in the data directory, mode 0600)
``RELAYFLEET_SECRET_KEY_OLD`` keys secrets were sealed with before a rotation, comma-separated
                              (read until ``relayfleet-controller rotate-secret-key`` has
                              re-sealed every secret with the current key)
``RELAYFLEET_DATA_DIR``       where the defaults live (``~/.local/share/relayfleet``)
``RELAYFLEET_CALLBACK_SECRET`` key for the callbacks' HMAC (default: derived from the secret key)
``RELAYFLEET_VISIBILITY_TIMEOUT_S`` how long Redis keeps a task a dead worker held before it
                              hands it to another worker (default 900)
``RELAYFLEET_LANE_BUDGET_S``  how long one job lane claims new hosts before it hands over to
                              its own continuation (default 30)
``RELAYFLEET_LANE_THREADS``  hosts one job lane works on at once (default 100; at most
                              500): a job of concurrency C runs ceil(C / this) lanes; the
                              API that accepts the job decides (its lanes carry it)
``RELAYFLEET_TENANT_MAX_RUNNING`` how many hosts one tenant's jobs (all of them together;
                              MSP-wide jobs count as one tenant) run at once (default 100),
                              so one tenant's huge job cannot take every worker from the rest
``RELAYFLEET_EGRESS_ALLOW``   narrows where agent calls and callbacks may go: comma-separated
                              CIDRs and host names, plus ``loopback`` to permit loopback (a
                              same-box setup); unset: anything but loopback, link-local,
                              unspecified and multicast (see :mod:`controller.egress`)
``RELAYFLEET_CONSOLE_IDLE_S`` a web console session unused this long ends (default 1800)
``RELAYFLEET_CONSOLE_MAX_S``  a web console session ends this long after sign-in, used or
                              not (default 43200: 12 h)
``RELAYFLEET_CONSOLE_SECURE_COOKIE`` ``always``: the console's cookies are always Secure (for
                              a TLS front that does not send X-Forwarded-Proto); ``auto``
                              (default): Secure when the request came over TLS
``RELAYFLEET_AGENT_BUNDLE_DIR`` where ``relayfleet-controller agent-bundle`` writes the
                              agent's offline bundles and ``install_agent`` jobs take them
                              from (default: ``agent-bundles`` in the data directory)
``RELAYFLEET_SCHEDULER_TICK_S`` how often beat looks for due status collections, schedules,
                              alert rules and remediations (default 30)
``RELAYFLEET_MIN_STATUS_EVERY_S`` the shortest status collection interval a tenant may ask for
                              (default 60)
``RELAYFLEET_STATUS_JOB_RETENTION_DAYS`` how long beat's finished status collection jobs
                              are kept before beat deletes them (default 7)
``RELAYFLEET_SMTP_URL``       the controller's own mail server for alert emails:
                              ``smtp://HOST[:PORT]`` (plain), ``smtp+starttls://HOST[:PORT]``
                              or ``smtps://HOST[:PORT]``; unset: email channels cannot send
``RELAYFLEET_SMTP_FROM``      the sender of alert emails (default ``relayfleet@`` + this host)
``RELAYFLEET_SMTP_USERNAME`` / ``RELAYFLEET_SMTP_PASSWORD_FILE`` AUTH for that server
``RELAYFLEET_INBOUND_WINDOW_S`` how old a signed inbound (ticketing) request may be (default 300)
``RELAYFLEET_PROBE_ALLOW``    the domains a delivery probe (``params.verify``) may be addressed
                              to and from, comma-separated (their subdomains too); unset: any
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from controller.egress import EgressPolicy
from shared.errors import ConfigError

#: the shortest secret key accepted (it is all that protects the stored secrets)
MIN_SECRET_KEY_CHARS = 16
#: room for claiming, recording and the broker round trip on top of a host's own time box
LANE_MARGIN_S = 15


def default_data_dir() -> Path:
    """``$RELAYFLEET_DATA_DIR``, else ``$XDG_DATA_HOME/relayfleet``."""
    explicit = os.environ.get("RELAYFLEET_DATA_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "relayfleet"


@dataclass(frozen=True)
class Settings:
    """Everything the controller (API, worker, CLI) needs to know about its surroundings."""

    database_url: str
    broker_url: str = "redis://127.0.0.1:6379/0"
    secret_key: str = field(default="", repr=False)
    #: keys secrets were sealed with before the last rotation (still read, never written)
    old_secret_keys: tuple[str, ...] = field(default=(), repr=False)
    callback_secret: str = field(default="", repr=False)
    visibility_timeout_s: int = 900
    lane_budget_s: int = 30
    #: a claimed host's lease, renewed while it runs: a dead worker's hosts are free again
    #: within this, and the sweeper (every ``sweep_every_s``) gives their job a lane
    lease_s: int = 30
    sweep_every_s: int = 10
    #: hosts one lane works on at once (a job with concurrency C runs ceil(C / this) lanes)
    lane_threads: int = 100
    #: hosts one tenant's jobs run at once, all together (MSP-wide jobs: one tenant); a lane
    #: of a tenant at its share claims nothing and looks again a moment later
    tenant_max_running: int = 100
    max_body_bytes: int = 4 * 1024 * 1024
    #: ``RELAYFLEET_EGRESS_ALLOW`` as given ("": the default policy)
    egress_allow: str = ""
    #: a web console session ends after this long unused, and this long after sign-in
    console_idle_s: int = 30 * 60
    console_max_s: int = 12 * 3600
    #: the console's cookies are Secure even when the request seems to be plain http
    console_secure_cookie: bool = False
    #: the agent's offline bundles (``relayfleet-agent-VERSION.tar.gz`` and its ``.sha256``)
    agent_bundle_dir: Path = Path("agent-bundles")
    #: beat's fleet-health tick: due status collections, schedules, alerts, remediations
    scheduler_tick_s: int = 30
    #: the shortest status collection interval a tenant may set
    min_status_every_s: int = 60
    #: beat deletes its own finished status collection jobs after this many days
    status_job_retention_days: int = 7
    #: alert emails: the controller's own SMTP server ("" : email channels cannot send)
    smtp_url: str = ""
    smtp_from: str = ""
    smtp_username: str = ""
    smtp_password: str = field(default="", repr=False)
    #: a signed inbound request older (or newer) than this is refused
    inbound_window_s: int = 300
    #: the domains (and their subdomains) delivery probes may be addressed to and from;
    #: empty: any
    probe_allow: tuple[str, ...] = ()

    @property
    def egress_policy(self) -> EgressPolicy:
        """Where agent calls and callbacks may go."""
        return EgressPolicy.parse(self.egress_allow)

    @property
    def max_timeout_s(self) -> int:
        """The longest per-host time box a job may ask for.

        A lane must finish before the broker would hand its task to another worker, or two
        workers would run the same lane at once.
        """
        return max(5, self.visibility_timeout_s - self.lane_budget_s - LANE_MARGIN_S)

    def with_overrides(self, overrides: Mapping[str, Any]) -> Settings:
        """A copy with some fields replaced (unknown names are an error)."""
        known = {f.name for f in fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise ConfigError(f"unknown settings: {', '.join(sorted(unknown))}")
        return replace(self, **overrides)


def _int_env(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, not {raw!r}") from None
    if value <= 0:
        raise ConfigError(f"{name} must be positive")
    return value


#: the most threads one lane may run (each holds a host and its connection)
MAX_LANE_THREADS = 500


def _lane_threads(env: Mapping[str, str]) -> int:
    value = _int_env(env, "RELAYFLEET_LANE_THREADS", Settings.lane_threads)
    if value > MAX_LANE_THREADS:
        raise ConfigError(f"RELAYFLEET_LANE_THREADS must be at most {MAX_LANE_THREADS}")
    return value


def _checked_key(key: str, where: str) -> str:
    """``key`` if it is long enough to protect every stored secret, else a clear error."""
    if len(key) < MIN_SECRET_KEY_CHARS:
        problem = "empty" if not key else "too short"
        raise ConfigError(f"{where} is {problem}: use at least {MIN_SECRET_KEY_CHARS} "
                          "characters (e.g. the output of `openssl rand -base64 32`)")
    return key


def _create_key_file(path: Path) -> None:
    """Put a new random key at ``path`` unless another process already has.

    The API, worker and beat may start together and all find no key: each writes a key to
    a temporary file and hard-links it into place, which fails if the name exists. The
    name therefore only ever holds a complete key, the first link wins, and every starter
    then reads that one.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".secret.key.")  # mode 0600
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    finally:
        os.unlink(temporary)


def _secret_key(env: Mapping[str, str], data_dir: Path) -> str:
    key = env.get("RELAYFLEET_SECRET_KEY")
    if key:
        return _checked_key(key, "RELAYFLEET_SECRET_KEY")
    path = data_dir / "secret.key"
    if not path.exists():
        _create_key_file(path)
    return _checked_key(path.read_text().strip(), str(path))


def _old_secret_keys(env: Mapping[str, str]) -> tuple[str, ...]:
    """``RELAYFLEET_SECRET_KEY_OLD``: keys secrets may still be sealed with (comma- or
    space-separated), read until ``rotate-secret-key`` has re-sealed them."""
    keys = [key for key in re.split(r"[,\s]+", env.get("RELAYFLEET_SECRET_KEY_OLD", "")) if key]
    return tuple(_checked_key(key, "a key in RELAYFLEET_SECRET_KEY_OLD") for key in keys)


def _secure_cookie(env: Mapping[str, str]) -> bool:
    raw = (env.get("RELAYFLEET_CONSOLE_SECURE_COOKIE") or "auto").strip().lower()
    if raw not in ("auto", "always"):
        raise ConfigError(f"RELAYFLEET_CONSOLE_SECURE_COOKIE must be auto or always, not "
                          f"{raw!r}")
    return raw == "always"


def _file_secret(env: Mapping[str, str], name: str) -> str:
    """The secret in the file ``env[name]`` names ("" when unset): secrets are passed as
    files, never as environment values a process listing or a crash report could show."""
    path = env.get(name)
    if not path:
        return ""
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read {path}: {exc.strerror}") from None


def _egress_allow(env: Mapping[str, str]) -> str:
    raw = env.get("RELAYFLEET_EGRESS_ALLOW") or ""
    EgressPolicy.parse(raw)  # a mistake stops the process at start, not at the first job
    return raw


_DOMAIN = re.compile(r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*"
                     r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def _probe_allow(env: Mapping[str, str]) -> tuple[str, ...]:
    """``RELAYFLEET_PROBE_ALLOW``: domains, comma-separated (``@`` before one and case do
    not matter); a mistake stops the process at start, not at the first job."""
    domains = []
    for raw in (env.get("RELAYFLEET_PROBE_ALLOW") or "").split(","):
        domain = raw.strip().lstrip("@").rstrip(".").lower()
        if not domain:
            continue
        if not _DOMAIN.fullmatch(domain):
            raise ConfigError(f"RELAYFLEET_PROBE_ALLOW: {raw.strip()!r} is not a domain "
                              "(give domains separated by commas, e.g. acme.fr,example.net)")
        domains.append(domain)
    return tuple(domains)


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from the environment (``environ`` defaults to ``os.environ``)."""
    env = os.environ if environ is None else environ
    data_dir = default_data_dir()
    database_url = env.get("RELAYFLEET_DATABASE_URL") or ""
    if not database_url:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        database_url = f"sqlite:///{data_dir / 'relayfleet.db'}"
    secret = _secret_key(env, data_dir)
    return Settings(
        database_url=database_url,
        broker_url=env.get("RELAYFLEET_BROKER_URL") or Settings.broker_url,
        secret_key=secret,
        old_secret_keys=_old_secret_keys(env),
        callback_secret=env.get("RELAYFLEET_CALLBACK_SECRET") or "",
        visibility_timeout_s=_int_env(env, "RELAYFLEET_VISIBILITY_TIMEOUT_S", 900),
        lane_budget_s=_int_env(env, "RELAYFLEET_LANE_BUDGET_S", 30),
        lease_s=_int_env(env, "RELAYFLEET_LEASE_S", 30),
        sweep_every_s=_int_env(env, "RELAYFLEET_SWEEP_EVERY_S", 10),
        lane_threads=_lane_threads(env),
        tenant_max_running=_int_env(env, "RELAYFLEET_TENANT_MAX_RUNNING",
                                    Settings.tenant_max_running),
        egress_allow=_egress_allow(env),
        console_idle_s=_int_env(env, "RELAYFLEET_CONSOLE_IDLE_S", Settings.console_idle_s),
        console_max_s=_int_env(env, "RELAYFLEET_CONSOLE_MAX_S", Settings.console_max_s),
        console_secure_cookie=_secure_cookie(env),
        agent_bundle_dir=Path(env.get("RELAYFLEET_AGENT_BUNDLE_DIR")
                              or data_dir / "agent-bundles"),
        scheduler_tick_s=_int_env(env, "RELAYFLEET_SCHEDULER_TICK_S",
                                  Settings.scheduler_tick_s),
        min_status_every_s=_int_env(env, "RELAYFLEET_MIN_STATUS_EVERY_S",
                                    Settings.min_status_every_s),
        status_job_retention_days=_int_env(env, "RELAYFLEET_STATUS_JOB_RETENTION_DAYS",
                                           Settings.status_job_retention_days),
        smtp_url=env.get("RELAYFLEET_SMTP_URL") or "",
        smtp_from=env.get("RELAYFLEET_SMTP_FROM") or "",
        smtp_username=env.get("RELAYFLEET_SMTP_USERNAME") or "",
        smtp_password=_file_secret(env, "RELAYFLEET_SMTP_PASSWORD_FILE"),
        inbound_window_s=_int_env(env, "RELAYFLEET_INBOUND_WINDOW_S",
                                  Settings.inbound_window_s),
        probe_allow=_probe_allow(env),
    )
