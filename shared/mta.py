"""The MTA-neutral interface every mail system's operations implement.

Sendmail is the first implementation (:mod:`shared.sendmail.operations`); Postfix will
be the second behind the same methods and the same result shapes.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Mapping
from dataclasses import dataclass

from shared.errors import NotSupported, ValidationError
from shared.executor import Executor
from shared.profile import HostProfile
from shared.results import OperationResult
from shared.validation import SmarthostRequest

_QUEUE_ID_RE = re.compile(r"[A-Za-z0-9]{6,32}")
#: a -qR/-qS match is a substring of an address: keep it to address characters
_ADDRESS_PART_RE = re.compile(r"[A-Za-z0-9._%+=@-]{1,254}")
MAX_LOG_LINES = 10000


@dataclass(frozen=True)
class FlushRequest:
    """Which part of the queue to run, and whether to forget cached host status first."""

    reset_host_status: bool = True
    queue_id: str | None = None
    recipient: str | None = None
    sender: str | None = None


def parse_flush_request(data: Mapping[str, object] | None) -> FlushRequest:
    """Validate a flush request; at most one of queue_id, recipient, sender."""
    data = dict(data or {})
    errors: dict[str, list[str]] = {}
    allowed = {"reset_host_status", "queue_id", "recipient", "sender"}
    for key in sorted(set(data) - allowed):
        errors[key] = ["unknown field"]
    reset = data.get("reset_host_status", True)
    if not isinstance(reset, bool):
        errors["reset_host_status"] = ["must be true or false"]
    values: dict[str, str | None] = {}
    for key, regex, what in (("queue_id", _QUEUE_ID_RE, "6-32 letters and digits"),
                             ("recipient", _ADDRESS_PART_RE, "address characters only"),
                             ("sender", _ADDRESS_PART_RE, "address characters only")):
        value = data.get(key)
        if value is None:
            values[key] = None
        elif not isinstance(value, str) or not regex.fullmatch(value):
            errors[key] = [f"must be {what}"]
        else:
            values[key] = value
    if sum(v is not None for v in values.values()) > 1:
        errors.setdefault("queue_id", []).append(
            "give at most one of queue_id, recipient, sender")
    if errors:
        raise ValidationError("invalid flush request", errors)
    return FlushRequest(reset_host_status=bool(reset), **values)


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
    def read_log(self, lines: int = 200) -> OperationResult:
        """Parse the last ``lines`` lines of the mail log and summarise them."""

    @abc.abstractmethod
    def diagnose(self, *, domain: str | None = None,
                 public_ip: str | None = None) -> OperationResult:
        """Run the seed story's checklist as machine checks."""

    @abc.abstractmethod
    def status(self) -> OperationResult:
        """Hostname, MTA state, smarthost, config sync, queue size and hosts-file health."""


def operations_for(executor: Executor, profile: HostProfile,
                   lock_owner: str | None = None) -> MtaOperations:
    """The operations for the profile's MTA kind."""
    if profile.kind == "sendmail":
        from shared.sendmail.operations import SendmailOperations

        return SendmailOperations(executor, profile, lock_owner)
    raise NotSupported(f"MTA kind {profile.kind!r} is not supported yet")
