"""Parse ``mailq`` output (sendmail 8.x, Debian's two sections or CentOS's one)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from shared.errors import ParseError

_SECTION_RE = re.compile(r"^(?P<name>MSP|MTA) Queue status\.\.\.")
_QUEUE_HEAD_RE = re.compile(
    r"^\s*(?P<dir>/\S+?)(?: is empty| \((?P<n>\d+) requests?\))\s*$")
_TOTAL_RE = re.compile(r"^\s*Total requests: (?P<n>\d+)")
#: "6AP4mD19010498*      4 Wed Nov 25 04:48 <root@lab1.lab.test>": a sendmail queue id ends
#: in the pid's digits, so a trailing ``X`` is the status character, not part of the id

_MESSAGE_RE = re.compile(
    r"^(?P<id>[A-Za-z0-9]{5,31}[0-9])(?P<flags>[*X-]*)\s+(?P<size>\d+)\s+"
    r"(?P<when>[A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d \d\d:\d\d)\s+(?P<sender>.*)$")
_REASON_RE = re.compile(r"^\s+\((?P<reason>.*)\)\s*$")
_QUARANTINE_RE = re.compile(r"^\s+QUARANTINE:\s*(?P<reason>.*)$")
_RECIPIENT_RE = re.compile(r"^\s+(?P<rcpt>\S.*)$")


@dataclass
class QueuedMessage:
    """One queued message as mailq shows it."""

    id: str
    size: int
    queued_at: str | None
    sender: str
    recipients: list[str] = field(default_factory=list)
    reason: str | None = None
    flags: str = ""
    section: str = "mta"
    quarantine: str | None = None

    @property
    def processing(self) -> bool:
        """True when sendmail is delivering it right now (``*``)."""
        return "*" in self.flags

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return {**asdict(self), "processing": self.processing}


@dataclass
class MailqReport:
    """Every message in every queue section, with the counts mailq printed."""

    messages: list[QueuedMessage] = field(default_factory=list)
    sections: dict[str, int] = field(default_factory=dict)

    @property
    def count(self) -> int:
        """How many messages are queued in all."""
        return len(self.messages)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return {"count": self.count, "sections": dict(self.sections),
                "messages": [m.to_dict() for m in self.messages]}


def _queued_at(text: str, now: datetime) -> str | None:
    """ISO time for mailq's year-less ``Wed Nov 25 04:48`` (never in the future)."""
    for year in (now.year, now.year - 1):
        try:
            when = datetime.strptime(f"{year} {text[4:]}", "%Y %b %d %H:%M")
        except ValueError:
            return None
        if when <= now.replace(tzinfo=None) or year < now.year:
            return when.isoformat()
    return None


def parse_mailq(text: str, now: datetime | None = None) -> MailqReport:
    """Parse mailq output; raise ParseError if it is not mailq output at all."""
    now = now or datetime.now(UTC)
    report = MailqReport()
    section = "mta"
    current: QueuedMessage | None = None
    recognised = False
    for line in text.splitlines():
        if not line.strip():
            continue
        match = _SECTION_RE.match(line)
        if match:
            section, current, recognised = match.group("name").lower(), None, True
            continue
        match = _QUEUE_HEAD_RE.match(line)
        if match:
            report.sections[section] = report.sections.get(section, 0) + int(match.group("n") or 0)
            current, recognised = None, True
            continue
        if _TOTAL_RE.match(line) or line.startswith("-----Q-ID"):
            recognised = True
            continue
        match = _MESSAGE_RE.match(line)
        if match:
            current = QueuedMessage(
                id=match.group("id"), size=int(match.group("size")),
                queued_at=_queued_at(match.group("when"), now),
                sender=match.group("sender").strip().strip("<>"), flags=match.group("flags"),
                section=section)
            report.messages.append(current)
            recognised = True
            continue
        if current is None:
            continue
        match = _QUARANTINE_RE.match(line)
        if match:
            current.quarantine = match.group("reason")
            continue
        match = _REASON_RE.match(line)
        if match and not current.recipients and current.reason is None:
            current.reason = match.group("reason")
            continue
        match = _RECIPIENT_RE.match(line)
        if match:
            current.recipients.append(match.group("rcpt").strip().strip("<>"))
    if not recognised:
        raise ParseError(f"not mailq output: {text.strip()[:200]!r}")
    return report
