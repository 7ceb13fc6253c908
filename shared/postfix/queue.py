"""Parse Postfix's queue listings: ``postqueue -j`` (JSON lines) and ``mailq``/``postqueue -p``.

``postqueue -j`` (Postfix >= 3.1, ``showq_json.c``) prints one JSON object per queue file,
one per line, and nothing at all for an empty queue::

    {"queue_name": "deferred", "queue_id": "4F1C2A0B3C", "arrival_time": 1796202001,
     "message_size": 1234, "forced_expire": false, "sender": "root@pbx1.example.com",
     "recipients": [{"address": "me@ourtest.com",
                     "delay_reason": "connect to mx.ourtest.com[10.201.0.2]:25: ..."}]}

``forced_expire`` came with 3.5; 3.11 added ``orig_address`` and, instead of
``delay_reason``, ``bounce_reason`` (bounced, notice not sent yet) or ``other_reason``.
Members this parser does not know are ignored, as the manual asks.

``mailq`` / ``postqueue -p`` (``showq_compat.c``) prints, with short queue ids::

    -Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------
    4F1C2A0B3C*    1234 Wed Dec  2 09:00:01  root@pbx1.example.com
                   (connect to mx.ourtest.com[10.201.0.2]:25: Connection refused)
                                             me@ourtest.com

    -- 1 Kbytes in 1 Request.

or ``Mail queue is empty``. With ``enable_long_queue_ids`` the columns widen
(``----Queue ID----- --Size-- ---Arrival Time---- --Sender/Recipient------``, ids like
``4cG3kB0bXyz1qW``). After the id: ``*`` active queue, ``!`` hold, ``#`` forced to
expire; no character for the other queues. A ``(reason)`` line, right-aligned to column
76 (or from column 0 when longer), applies to the recipients after it until the next one;
``(reason unavailable)`` means those have none. The arrival time is asctime's, host-local,
without its year.

Both senders and recipients are printed as Postfix externalises them: the null sender is
``MAILER-DAEMON`` (``empty_address_recipient``), in the JSON too, and is kept as printed,
as sendmail's parser keeps its mailq's ``MAILER-DAEMON``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared.compat import UTC
from shared.errors import ParseError
from shared.sendmail.mailq import MailqReport, QueuedMessage, listing_time

#: Postfix's queues, in the order showq reads them; other names are passed through
QUEUE_NAMES = ("maildrop", "active", "incoming", "deferred", "hold")
#: the per-recipient reason members of ``postqueue -j``, most telling first
_REASON_KEYS = ("delay_reason", "bounce_reason", "other_reason")
_REASON_UNAVAILABLE = "reason unavailable"
_JSON_TYPES: dict[type | tuple[type, ...], str] = {
    str: "string", bool: "boolean", list: "list", (int, float): "number"}

#: postqueue's own complaints (stderr, when the caller merged it): warnings are skipped,
#: fatal errors mean there is no listing
_DIAGNOSTIC_RE = re.compile(
    r"^(?:postqueue|postdrop|mailq|sendmail|postfix(?:-[\w.-]+)?(?:/[\w.-]+)*)"
    r"(?:\[\d+\])?: (?P<level>warning|error|fatal|panic): (?P<text>.*)$")
_HEADINGS_RE = re.compile(r"^-+Queue ID-+\s+--Size--\s")
_FOOTER_RE = re.compile(r"^-- \d+ Kbytes in (?P<n>\d+) Requests?\.$")
_EMPTY_RE = re.compile(r"^Mail queue is empty$")
#: asctime without the year, then the sender (absent only if the line was cut)
_ENTRY_RE = re.compile(
    r"^(?P<id>[0-9A-Za-z]+)(?P<flags>[*!#]*)\s+(?P<size>\d+)\s+"
    r"(?P<wday>[A-Z][a-z]{2}) (?P<when>[A-Z][a-z]{2} +\d{1,2} \d\d:\d\d:\d\d)"
    r"(?:\s+(?P<sender>\S.*?))?\s*$")
#: Postfix < 3.1 listed a maildrop file it could not open this way
_MAILDROP_SENDER_RE = re.compile(r"^\(maildrop queue, sender UID \d+\)$")


def _postqueue_warning(line: str) -> bool:
    """True for a postqueue warning (to skip); ParseError for its fatal errors."""
    match = _DIAGNOSTIC_RE.match(line)
    if not match:
        return False
    if match.group("level") == "warning":
        return True
    raise ParseError(f"postqueue failed: {line[:300]}")


# -- postqueue -j ---------------------------------------------------------------------

def _member(doc: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """``doc[key]`` when it is of ``kind``; None when absent or null; else ParseError."""
    value = doc.get(key)
    if value is None:
        return None
    # JSON true/false are Python bools, and bool is an int: not a size or a time.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ParseError(f"{where}: {key} is not a {_JSON_TYPES.get(kind, 'value')}: "
                         f"{json.dumps(value)[:80]}")
    return value


def _epoch_iso(seconds: float | None) -> str | None:
    """Epoch seconds as UTC ISO-8601 (``...+00:00``); None when absent or impossible."""
    if seconds is None or seconds <= 0:
        return None
    try:
        return datetime.fromtimestamp(seconds, UTC).isoformat()
    except (OverflowError, OSError, ValueError):
        return None


def _json_message(doc: dict[str, Any], where: str) -> QueuedMessage:
    """One ``postqueue -j`` object as a QueuedMessage."""
    queue_id = _member(doc, "queue_id", str, where)
    if not queue_id:
        raise ParseError(f"{where}: no queue_id")
    section = _member(doc, "queue_name", str, where) or "unknown"
    size = _member(doc, "message_size", (int, float), where)
    forced = _member(doc, "forced_expire", bool, where) or _member(
        doc, "force_expired", bool, where)  # what some 3.5 snapshots printed
    message = QueuedMessage(
        id=queue_id, size=int(size) if size is not None else -1,
        queued_at=_epoch_iso(_member(doc, "arrival_time", (int, float), where)),
        sender=_member(doc, "sender", str, where) or "",
        flags={"active": "*", "hold": "!"}.get(section, "") + ("#" if forced else ""),
        section=section)
    recipients = _member(doc, "recipients", list, where) or []
    for number, recipient in enumerate(recipients, 1):
        spot = f"{where}, recipient {number}"
        if not isinstance(recipient, dict):
            raise ParseError(f"{spot}: not an object")
        address = _member(recipient, "address", str, spot)
        if address is None:
            raise ParseError(f"{spot}: no address")
        message.recipients.append(address)
        reason = next((text for key in _REASON_KEYS
                       if (text := _member(recipient, key, str, spot))), None)
        if reason:
            message.reasons[address] = reason
            if message.reason is None:
                message.reason = reason
    return message


def _report(messages: list[QueuedMessage], listed: int = 0) -> MailqReport:
    """The report for these messages: one per id (the last listing wins), counted by queue."""
    by_id: dict[str, QueuedMessage] = {}
    for message in messages:
        # A message that moved while showq walked the queues is listed twice.
        by_id.pop(message.id, None)
        by_id[message.id] = message
    report = MailqReport(messages=list(by_id.values()))
    for message in report.messages:
        report.sections[message.section] = report.sections.get(message.section, 0) + 1
    report.count = max(len(report.messages), listed)
    return report


def parse_postqueue_json(text: str, now: datetime | None = None) -> MailqReport:
    """Parse ``postqueue -j`` output; ParseError names the first line that is not a message.

    Empty output is an empty queue. ``queued_at`` is UTC ISO-8601 with ``+00:00``:
    ``arrival_time`` is epoch seconds, so unlike a mailq listing it needs no zone or year
    guess (``now`` is accepted for symmetry with the text parsers and not used). A
    recipient's reason is its ``delay_reason`` (or ``bounce_reason``, ``other_reason``);
    ``reason`` is the first recipient's that has one. A queue id listed twice (the
    message moved while showq walked the queues) is kept once, as last listed.
    """
    del now  # epoch seconds carry their own date
    messages: list[QueuedMessage] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or _postqueue_warning(line):
            continue
        where = f"postqueue -j line {number}"
        try:
            doc = json.loads(line)
        except ValueError as exc:
            raise ParseError(f"{where} is not JSON ({exc}): {line[:200]!r}") from None
        except RecursionError:
            raise ParseError(f"{where} is nested too deeply: {line[:200]!r}") from None
        if not isinstance(doc, dict):
            raise ParseError(f"{where} is not a JSON object: {line[:200]!r}")
        messages.append(_json_message(doc, where))
    return _report(messages)


# -- mailq / postqueue -p -------------------------------------------------------------

#: how many lines a wrapped reason may run over (Postfix prints each on one line; a
#: bound keeps a listing full of unclosed ``(`` lines linear)
MAX_REASON_LINES = 8


def _reason_at(body: list[str], start: int) -> tuple[str, int]:
    """The ``(reason)`` starting at ``body[start]`` and the index of the line after it.

    A reason wrapped over lines runs on until its parentheses balance at the end of a
    line; one that never does is only its own line.
    """
    parts: list[str] = []
    depth = 0
    for index in range(start, min(len(body), start + MAX_REASON_LINES)):
        part = body[index].strip()
        parts.append(part)
        depth += part.count("(") - part.count(")")
        if part.endswith(")") and depth <= 0:
            return " ".join(parts)[1:-1], index + 1
    text = parts[0]
    return (text[1:-1] if text.endswith(")") else text[1:]), start + 1


@dataclass
class _Entry:
    """One listed message and the lines under its first one."""

    message: QueuedMessage
    body: list[str] = field(default_factory=list)

    def finish(self) -> QueuedMessage:
        """Read the reason and recipient lines into the message."""
        message, body = self.message, self.body
        reason: str | None = None
        i = 0
        while i < len(body):
            text = body[i].strip()
            if text.startswith("("):
                inner, i = _reason_at(body, i)
                reason = None if inner.strip() == _REASON_UNAVAILABLE else inner.strip() or None
                if reason is not None and message.reason is None:
                    message.reason = reason
                continue
            if text and body[i][:1] in (" ", "\t"):  # recipients are indented
                message.recipients.append(text)
                if reason is not None:
                    message.reasons[text] = reason
            i += 1
        return message


def parse_postfix_mailq(text: str, now: datetime | None = None) -> MailqReport:
    """Parse Postfix's ``mailq`` / ``postqueue -p`` text; ParseError if it is not that.

    ``now`` (default: this machine's local time) picks each arrival time's year, as for
    sendmail's mailq; ``queued_at`` is host-local, with no zone. The listing does not
    name queues: ``*`` is ``active``, ``!`` is ``hold`` and every other message is
    counted as ``deferred`` (``incoming`` and ``maildrop`` look the same, and are brief).
    """
    now = now or datetime.now()  # showq prints the host's local time
    messages: list[QueuedMessage] = []
    entry: _Entry | None = None
    listed, recognised = 0, False
    for raw in text.splitlines():
        line = raw.rstrip()
        bare = line.strip()
        match = _ENTRY_RE.match(line)
        footer = _FOOTER_RE.match(bare)
        frame = bool(_HEADINGS_RE.match(bare) or _EMPTY_RE.match(bare))
        # A blank line, the next message or any frame line ends the message before.
        if entry is not None and (match or footer or frame or not bare
                                  or _postqueue_warning(bare)):
            messages.append(entry.finish())
            entry = None
        if match:
            entry = _Entry(_text_message(match, now))
        elif footer:
            listed = int(footer.group("n"))
        elif entry is not None and bare:
            entry.body.append(line)
        elif bare:
            _postqueue_warning(bare)  # a fatal error raises; anything else is skipped
        recognised = recognised or bool(match or footer or frame)
    if entry is not None:
        messages.append(entry.finish())
    if not recognised:
        excerpt = text.strip()[:200]
        raise ParseError(f"not Postfix mailq output: {excerpt!r}" if excerpt
                         else "mailq printed nothing")
    return _report(messages, listed)


def _text_message(match: re.Match[str], now: datetime) -> QueuedMessage:
    """The message a listing's first line describes."""
    flags = match.group("flags")
    sender = match.group("sender") or ""
    section = "active" if "*" in flags else "hold" if "!" in flags else "deferred"
    if _MAILDROP_SENDER_RE.match(sender):
        sender, section = "", "maildrop"
    return QueuedMessage(
        id=match.group("id"), size=int(match.group("size")),
        queued_at=listing_time(match.group("when"), match.group("wday"), now),
        sender=sender, flags=flags, section=section)


def parse_postfix_queue(text: str, now: datetime | None = None) -> MailqReport:
    """Parse either listing: ``postqueue -j`` when the first line is ``{``, mailq text if not.

    Output with no line at all is ``postqueue -j``'s empty queue.
    """
    for raw in text.splitlines():
        line = raw.strip()
        if line and not _postqueue_warning(line):
            if line.startswith("{"):
                break
            return parse_postfix_mailq(text, now)
    return parse_postqueue_json(text, now)
