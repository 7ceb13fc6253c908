"""Parse ``mailq`` output (sendmail 8.x): Debian's MSP + MTA sections or CentOS's single one.

What sendmail prints (``queue.c``, ``print_single_queue``), one block per queue directory::

    MSP Queue status...                               <- Debian's mailq wrapper only
    /var/spool/mqueue-client is empty
                    Total requests: 0
    MTA Queue status...
                    /var/spool/mqueue (2 requests)    <- "(1 request" / ", only N printed)"
    -----Q-ID----- --Size-- -----Q-Time----- ------------Sender/Recipient-----------
    6AP4jQbT009721*       6 Wed Nov 25 04:45 <root@lab1.lab.test>
         QUARANTINE: held for review                  <- 5 spaces
          8BITMIME   (Deferred: Connection refused by mx.ourtest.com.)
                                             <me@ourtest.com>   <- tabs, one per recipient
                    Total requests: 2

The character after the id is ``*`` (being delivered now), ``X`` (load too high to run
it), ``-`` (too young to run), ``?`` (lost, ``-qL``) or a space. The deferral reason is
cut by mailq to 60 characters (the maillog has it whole), the sender to 39 and each
recipient to 38. ``mailq -v`` adds a priority column and ``(---ctladdr---)`` lines.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from shared.errors import ParseError

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MON = "|".join(_MONTHS)
_DAY = "|".join(_WEEKDAYS)
#: how far past ``now`` a year-less time may lie: the host's clock and zone may differ
#: from the caller's (mailq and syslog print the host's local time, with no zone)
CLOCK_SLACK = timedelta(days=1)

_SECTION_RE = re.compile(r"^\s*(?P<name>MSP|MTA) Queue status\.\.\.\s*$")
_QUEUE_EMPTY_RE = re.compile(r"^\s*(?P<dir>/\S*|Mail queue) is empty\s*$", re.I)
_QUEUE_HEAD_RE = re.compile(
    r"^\s*(?P<dir>/\S*|Mail Queue) \((?P<n>\d+) requests?(?:, only (?P<printed>\d+) printed)?\)")
_TOTAL_RE = re.compile(r"^\s*Total requests: \d+")
_COLUMNS_RE = re.compile(r"^-+Q-?ID-+ ")
#: a sendmail queue id ends in the zero-padded pid, so a trailing ``X`` is the status
_ID = r"(?P<id>[A-Za-z0-9]{3,31}[0-9])(?P<flags>[*X?-]*)"
_WHEN = rf"(?P<wday>{_DAY}) (?P<when>(?:{_MON}) [ \d]\d \d\d:\d\d)"
_MESSAGE_RE = re.compile(rf"^\s*{_ID}\s+(?P<size>-?\d+) {_WHEN}(?: (?P<sender>.*))?$")
#: ``mailq -v``: size, priority, ``+`` when a delay warning was sent, time without weekday
_VERBOSE_RE = re.compile(
    rf"^\s*{_ID}\s+(?P<size>-?\d+)\s+(?P<priority>-?\d+)(?P<warned>[+ ])"
    rf"(?P<when>(?:{_MON}) [ \d]\d \d\d:\d\d) (?P<sender>.*)$")
#: an entry sendmail could not read: "(job completed)", "(permission denied)", ...
_UNREADABLE_RE = re.compile(rf"^\s*{_ID} \((?P<error>[^()]*)\)\s*$")
_QUARANTINE_RE = re.compile(r"^\s*QUARANTINE:\s*(?P<reason>.*)$")
#: "    %10.10s   (reason)": an optional body type, then the reason
_REASON_RE = re.compile(r"^(?:(?P<body>[0-9A-Z][0-9A-Z-]*)\s+)?\((?P<reason>.*)\)$")
_BODY_ONLY_RE = re.compile(r"^ {4}\s*[0-9A-Z][0-9A-Z-]*\s*$")
_CTLADDR_RE = re.compile(r"^\(---.*---\)$")
_NO_CONTROL_FILE = " (no control file)"
_DENIED_RE = re.compile(r"not permitted to see the queue", re.I)


@dataclass
class QueuedMessage:
    """One queued message as mailq (sendmail or Postfix) or ``postqueue -j`` shows it."""

    id: str
    size: int
    """bytes of the body (sendmail's df file; Postfix counts header and body); -1 when
    the MTA could not tell"""
    queued_at: str | None
    """ISO-8601; host-local with no zone when read from a mailq listing (it prints none),
    UTC with ``+00:00`` from ``postqueue -j`` (epoch seconds); None when unknown"""
    sender: str
    recipients: list[str] = field(default_factory=list)
    reason: str | None = None
    """the last delivery error, e.g. "Deferred: Connection refused by mx.ourtest.com."
    (Postfix: the first recipient's that has one)"""
    flags: str = ""
    """status characters. sendmail: ``*`` being delivered, ``X`` load too high, ``-`` too
    young, ``?`` lost, ``+`` delay warning sent (``mailq -v`` only). Postfix: ``*`` in the
    active queue (being delivered), ``!`` on hold, ``#`` forced to expire"""
    section: str = "mta"
    """sendmail: ``msp`` (client queue) or ``mta``; Postfix: the queue's name (``maildrop``,
    ``incoming``, ``active``, ``deferred``, ``hold``)"""
    quarantine: str | None = None
    reasons: dict[str, str] = field(default_factory=dict)
    """recipient address -> its delay reason, for the recipients that have one (sendmail
    gives every recipient the message's one reason; Postfix keeps one per recipient)"""

    @property
    def processing(self) -> bool:
        """True when sendmail is delivering it right now (``*``)."""
        return "*" in self.flags

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form: the fields plus ``processing``."""
        return {**asdict(self), "processing": self.processing}


@dataclass
class MailqReport:
    """Every message in every queue section, with the counts mailq printed."""

    messages: list[QueuedMessage] = field(default_factory=list)
    sections: dict[str, int] = field(default_factory=dict)
    """requests per section as mailq printed them (``is empty`` is 0)"""
    count: int = 0
    """messages queued in all: the listed ones, plus any mailq counted but did not list
    (``, only N printed``)"""

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form: ``{count, sections, messages}``."""
        return {"count": self.count, "sections": dict(self.sections),
                "messages": [m.to_dict() for m in self.messages]}


def resolve_year(month: int, day: int, hour: int, minute: int, second: int = 0, *,
                 now: datetime, weekday: int | None = None) -> datetime | None:
    """The latest such date that is not in the future (allowing CLOCK_SLACK past ``now``).

    For year-less times (mailq, traditional syslog); ``now``'s wall clock is used as is.
    A date that is only "future" by the slack must also fall on ``weekday`` (mailq prints
    one) to win over the year before. Feb 29 goes back to the last leap year.
    """
    naive_now = now.replace(tzinfo=None)
    limit = naive_now + CLOCK_SLACK
    for year in range(limit.year, limit.year - 9, -1):
        try:
            when = datetime(year, month, day, hour, minute, second)
        except ValueError:  # Feb 29 in a common year, or no such date at all
            continue
        if when > limit:
            continue
        if when > naive_now and weekday is not None and when.weekday() != weekday:
            continue
        return when
    return None


def listing_time(when: str, weekday: str | None, now: datetime) -> str | None:
    """``Nov 25 04:48`` or ``Dec  2 09:00:01`` (+ ``Wed``) as ISO-8601, year by resolve_year.

    For the year-less times queue listings print (sendmail's mailq, Postfix's asctime);
    None for a name that is not an English month or weekday, or a date that cannot be.
    """
    try:
        month_name, day, clock = when.split()
        hour, minute, *second = (int(part) for part in clock.split(":"))
        month = _MONTHS.index(month_name) + 1
        day_of_week = _WEEKDAYS.index(weekday) if weekday else None
        resolved = resolve_year(month, int(day), hour, minute, second[0] if second else 0,
                                now=now, weekday=day_of_week)
    except ValueError:  # an unknown name, a clock that is not numbers, hour 25...
        return None
    return resolved.isoformat() if resolved else None


def _address(text: str) -> str:
    """An address as mailq printed it, without its angle brackets."""
    text = text.strip()
    if text.startswith("<") and text.endswith(">") and len(text) > 2:
        return text[1:-1]
    return text


@dataclass
class _Block:
    """One queue directory's listing: its printed count and the entries seen."""

    printed: int
    seen: int = 0


def parse_mailq(text: str, now: datetime | None = None) -> MailqReport:
    """Parse mailq output; raise ParseError if it is not mailq output at all.

    ``now`` (default: this machine's local time) picks the year of each ``Q-Time``:
    the latest year that does not put it in the future.
    """
    now = now or datetime.now()  # mailq prints the host's local time
    report = MailqReport()
    blocks: list[_Block] = []
    explicit_section: str | None = None
    section = "mta"
    current: QueuedMessage | None = None
    recognised = False
    for raw in text.splitlines():
        line = raw.rstrip()
        if not line.strip():
            continue
        if _DENIED_RE.search(line):
            raise ParseError(f"mailq was refused: {line.strip()[:200]}")
        no_control_file = line.endswith(_NO_CONTROL_FILE)
        if no_control_file:
            line = line[: -len(_NO_CONTROL_FILE)]
        match = _SECTION_RE.match(line)
        if match:
            explicit_section = section = match.group("name").lower()
            current, recognised = None, True
            continue
        match = _QUEUE_EMPTY_RE.match(line) or _QUEUE_HEAD_RE.match(line)
        if match:
            if explicit_section is None:
                # CentOS prints no section headers: name the client queue by its directory.
                section = "msp" if "client" in match.group("dir") else "mta"
            printed = int(match.groupdict().get("n") or 0)
            report.sections[section] = report.sections.get(section, 0) + printed
            blocks.append(_Block(printed))
            current, recognised = None, True
            continue
        if _TOTAL_RE.match(line) or _COLUMNS_RE.match(line):
            current, recognised = None, True
            continue
        match = _MESSAGE_RE.match(line) or _VERBOSE_RE.match(line)
        if match:
            fields = match.groupdict()
            flags = fields["flags"] + ("+" if fields.get("warned") == "+" else "")
            current = QueuedMessage(
                id=fields["id"], size=int(fields["size"]),
                queued_at=listing_time(fields["when"], fields.get("wday"), now),
                sender=_address(fields["sender"] or ""), flags=flags, section=section)
            report.messages.append(current)
            if blocks:
                blocks[-1].seen += 1
            recognised = True
            if no_control_file:
                current.queued_at = None
            continue
        match = _UNREADABLE_RE.match(line)
        if match:
            if blocks:
                blocks[-1].seen += 1
            current, recognised = None, True
            if match.group("error") != "job completed":  # delivered while mailq ran
                current = QueuedMessage(
                    id=match.group("id"), size=-1, queued_at=None, sender="",
                    reason=match.group("error"), flags=match.group("flags"), section=section)
                report.messages.append(current)
            continue
        if current is None or line[:1] not in (" ", "\t"):
            continue  # not part of an entry: skip whatever it is
        if no_control_file:
            current.queued_at = None
        body = line.strip()
        match = _QUARANTINE_RE.match(body)
        if match:
            current.quarantine = match.group("reason")
            continue
        if _CTLADDR_RE.match(body):
            continue
        match = _REASON_RE.match(body)
        if match:
            if current.reason is None:
                current.reason = match.group("reason")
            continue
        if _BODY_ONLY_RE.match(line):
            continue  # a body type (7BIT, 8BITMIME) with no reason
        current.recipients.append(_address(body))
    if not recognised:
        excerpt = text.strip()[:200]
        raise ParseError(f"not mailq output: {excerpt!r}" if excerpt else "mailq printed nothing")
    for message in report.messages:
        if message.reason is not None:  # sendmail keeps one reason per message
            message.reasons = dict.fromkeys(message.recipients, message.reason)
    unlisted = sum(max(0, block.printed - block.seen) for block in blocks)
    report.count = len(report.messages) + unlisted
    return report
