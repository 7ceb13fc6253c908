"""The MTA-neutral interface every mail system's operations implement.

Sendmail (:mod:`shared.sendmail.operations`) and Postfix (:mod:`shared.postfix.operations`)
implement the same methods with the same result shapes. :func:`detect_kind` tells which
one a host runs, for hosts configured ``kind = "auto"``.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Mapping
from dataclasses import dataclass

from shared.errors import NotSupported, ValidationError
from shared.executor import Executor
from shared.profile import PROFILE_KINDS, HostProfile
from shared.results import OperationResult
from shared.validation import (
    SmarthostRequest,
    VerifyRequest,
    parse_verify,
    refusal,
    validate_domain,
    validate_fqdn,
    validate_ip_address,
)

#: a flush selector's grammar; the schema publishes the same text as its OpenAPI pattern
_QUEUE_ID = r"[A-Za-z0-9]{6,32}"
#: a -qR/-qS match is a substring of an address: keep it to address characters
_ADDRESS_PART = r"[A-Za-z0-9._%+=@-]{1,254}"
QUEUE_ID_PATTERN = f"^{_QUEUE_ID}$"
ADDRESS_PART_PATTERN = f"^{_ADDRESS_PART}$"
#: the flush request fields that pick part of the queue (sendmail -qI, -qR, -qS)
FLUSH_SELECTORS = ("queue_id", "recipient", "sender")
_SELECTOR_RULES = (("queue_id", re.compile(_QUEUE_ID), "6-32 letters and digits"),
                   ("recipient", re.compile(_ADDRESS_PART), "address characters only"),
                   ("sender", re.compile(_ADDRESS_PART), "address characters only"))
MAX_LOG_LINES = 10000
DEFAULT_LOG_LINES = 200


def flush_selector_errors(values: Mapping[str, object]) -> dict[str, list[str]]:
    """The at-most-one rule of a flush request: every selector given, when more than one is."""
    chosen = [key for key in FLUSH_SELECTORS if values.get(key) is not None]
    if len(chosen) <= 1:
        return {}
    return {key: [f"give at most one of {', '.join(FLUSH_SELECTORS)}"] for key in chosen}


@dataclass(frozen=True)
class FlushRequest:
    """Which part of the queue to run, and whether to forget cached host status first."""

    reset_host_status: bool = True
    queue_id: str | None = None
    recipient: str | None = None
    sender: str | None = None
    #: after the run, probe delivery through the configured relay (None: do not)
    verify: VerifyRequest | None = None

    def __post_init__(self) -> None:
        """Refuse values that break the grammars (they become sendmail arguments)."""
        errors: dict[str, list[str]] = {}
        if self.verify is not None and not isinstance(self.verify, VerifyRequest):
            object.__setattr__(self, "verify", parse_verify(self.verify, errors))
        if not isinstance(self.reset_host_status, bool):
            errors["reset_host_status"] = ["must be true or false"]
        for key, regex, what in _SELECTOR_RULES:
            value = getattr(self, key)
            # fullmatch: a pattern's "$" would let a trailing newline through
            if value is not None and (not isinstance(value, str) or not regex.fullmatch(value)):
                errors[key] = [f"must be {what}"]
        selectors = {key: getattr(self, key) for key in FLUSH_SELECTORS}
        for key, reasons in flush_selector_errors(selectors).items():
            errors.setdefault(key, []).extend(reasons)
        if errors:
            raise refusal("flush request", errors)


@dataclass(frozen=True)
class LogRequest:
    """How many maillog lines to read."""

    lines: int = DEFAULT_LOG_LINES

    def __post_init__(self) -> None:
        """Refuse a count outside 1 to MAX_LOG_LINES."""
        validate_log_lines(self.lines)


@dataclass(frozen=True)
class DiagnoseRequest:
    """What the delivery checklist checks beyond the host itself (SPF needs both)."""

    domain: str | None = None
    public_ip: str | None = None

    def __post_init__(self) -> None:
        """Normalise the domain and the address, refusing bad ones."""
        if self.domain is not None:
            object.__setattr__(self, "domain", validate_domain(self.domain))
        if self.public_ip is not None:
            object.__setattr__(self, "public_ip", validate_ip_address(self.public_ip))


def hostname_choice_errors(values: Mapping[str, object]) -> dict[str, list[str]]:
    """The exactly-one rule of a fix_hostname request."""
    given = [key for key in ("fqdn", "domain") if values.get(key) is not None]
    if len(given) == 1:
        return {}
    reason = ("give fqdn or domain, not both" if given
              else "give fqdn (the host's full name) or domain (to qualify its short name)")
    return {key: [reason] for key in (given or ["fqdn"])}


@dataclass(frozen=True)
class HostnameRequest:
    """Make the host's name fully qualified: ``fqdn`` as given, or ``SHORTNAME.domain``."""

    fqdn: str | None = None
    domain: str | None = None

    def __post_init__(self) -> None:
        """Normalise the names, refusing bad ones and anything but exactly one of them."""
        errors = hostname_choice_errors(vars(self))
        if errors:
            raise refusal("hostname request", errors)
        if self.fqdn is not None:
            object.__setattr__(self, "fqdn", validate_fqdn(self.fqdn))
        if self.domain is not None:
            object.__setattr__(self, "domain", validate_domain(self.domain))

    def fqdn_for(self, short_name: str) -> str:
        """The full name wanted for a host whose short name is ``short_name``."""
        return self.fqdn if self.fqdn is not None else f"{short_name}.{self.domain}"


@dataclass(frozen=True)
class NoParams:
    """The request of an action that takes no input."""


def validate_log_lines(value: object) -> int:
    """Validate how many maillog lines to read."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LOG_LINES:
        raise ValidationError.for_field("lines", f"must be an integer from 1 to {MAX_LOG_LINES}")
    return value


class MtaOperations(abc.ABC):
    """What relayfleet can do with a host's MTA; every method returns an OperationResult."""

    kind: str

    def __init__(self, executor: Executor, profile: HostProfile,
                 lock_owner: str | None = None) -> None:
        self.executor = executor
        self.profile = profile
        #: who holds the host's change lock while we change it (a retry of the same
        #: owner may take over a lock its dead predecessor left)
        self.lock_owner = lock_owner

    @abc.abstractmethod
    def read_smarthost(self) -> OperationResult:
        """Report the configured smarthost and whether source and compiled config agree."""

    @abc.abstractmethod
    def set_smarthost(self, request: SmarthostRequest, *, dry_run: bool = False) -> OperationResult:
        """Point outbound mail at a smarthost, safely (diff, validate, swap, restart, verify)."""

    @abc.abstractmethod
    def remove_smarthost(self, *, dry_run: bool = False) -> OperationResult:
        """Return to direct delivery, with the same safety as set."""

    @abc.abstractmethod
    def queue_list(self) -> OperationResult:
        """List the queued messages."""

    @abc.abstractmethod
    def queue_flush(self, request: FlushRequest) -> OperationResult:
        """Run the queue (or part of it) now and report counts before and after."""

    @abc.abstractmethod
    def read_log(self, lines: int = DEFAULT_LOG_LINES) -> OperationResult:
        """Parse the last ``lines`` lines of the mail log and summarise them."""

    @abc.abstractmethod
    def diagnose(self, *, domain: str | None = None,
                 public_ip: str | None = None) -> OperationResult:
        """Run the seed story's checklist as machine checks."""

    @abc.abstractmethod
    def status(self) -> OperationResult:
        """Hostname, MTA state, smarthost, config sync, queue size and hosts-file health."""

    @abc.abstractmethod
    def fix_hostname(self, request: HostnameRequest, *, dry_run: bool = False) -> OperationResult:
        """Make the host's name fully qualified (/etc/hosts, and the MTA told)."""

    def finish_interrupted_change(self) -> str | None:
        """Undo a configuration change its process was killed in the middle of, if there is
        one and no change runs now: what was put back, or ``None``."""
        return None


def operations_for(executor: Executor, profile: HostProfile,
                   lock_owner: str | None = None) -> MtaOperations:
    """The operations for the profile's MTA kind."""
    if profile.kind == "sendmail":
        from shared.sendmail.operations import SendmailOperations

        return SendmailOperations(executor, profile, lock_owner)
    if profile.kind == "postfix":
        from shared.postfix.operations import PostfixOperations

        return PostfixOperations(executor, profile, lock_owner)
    raise NotSupported(f"MTA kind {profile.kind!r} is not supported")


#: prints one fact per line about each MTA: running (its daemon's pid file names a live
#: process: Postfix's master.pid in its queue directory, sendmail's on Debian's and RHEL's
#: paths), and configured (its main configuration file exists). Only a POSIX shell: it runs
#: over SSH on hosts without Python. (``postfix status`` would log a line per look.)
_DETECT_SCRIPT = r"""
alive() { [ -r "$1" ] && kill -0 $(head -n 1 "$1") 2>/dev/null; }
alive /var/spool/postfix/pid/master.pid && echo postfix-running
for f in /run/sendmail/mta/sendmail.pid /var/run/sendmail.pid; do
  alive "$f" && { echo sendmail-running; break; }
done
[ -f /etc/postfix/main.cf ] && command -v postconf >/dev/null 2>&1 && echo postfix-configured
[ -f /etc/mail/sendmail.mc ] && echo sendmail-configured
exit 0
"""


def detect_command() -> list[str]:
    """The argv that prints what :func:`kind_from_facts` reads."""
    return ["sh", "-c", _DETECT_SCRIPT]


def kind_from_facts(output: str) -> str:
    """The MTA a host runs, from :func:`detect_command`'s output: the running one; when
    none (or both) runs, the only one configured; NotSupported when that cannot tell."""
    facts = set(output.split())
    for evidence in ("running", "configured"):
        found = [kind for kind in PROFILE_KINDS if f"{kind}-{evidence}" in facts]
        if len(found) == 1:
            return found[0]
    raise NotSupported("cannot tell which MTA this host runs (" + (
        ", ".join(sorted(facts)) or "neither sendmail nor Postfix is running or configured")
        + "): set mta.kind to sendmail or postfix")


def detect_kind(executor: Executor, timeout_s: float = 20.0) -> str:
    """Which MTA the host runs (see :func:`kind_from_facts`); one command, one round trip."""
    return kind_from_facts(executor.run(detect_command(), timeout=timeout_s).stdout_text())
