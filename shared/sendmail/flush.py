"""Read the transcript of ``sendmail -q -v``: one line per delivery attempt outcome."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

_RUNNING_RE = re.compile(r"^Running (?:\S*/)?(?:qf)?(?P<qid>[A-Za-z0-9]{6,32})\b")
#: "<me@ourtest.com>... Sent (2.0.0 Ok: queued)" / "me@x... Deferred: Connection refused by ..."
_OUTCOME_RE = re.compile(r"^<?(?P<rcpt>[^<>\s]+@?[^<>\s]*)>?\.\.\. (?P<text>.+)$")
_AUTH_CMD_RE = re.compile(r"^>>> AUTH\b", re.I)
_SMTP_LINE_RE = re.compile(r"^(>>> |\d{3}[ -])")


@dataclass
class DeliveryLine:
    """What ``sendmail -v`` said about one recipient of one queued message."""

    queue_id: str | None
    recipient: str
    outcome: str
    text: str

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return asdict(self)


def _classify(text: str) -> str:
    if text.startswith("Sent"):
        return "sent"
    if text.startswith("Deferred"):
        return "deferred"
    if text.startswith("Connecting"):
        return "connecting"
    if "unknown" in text.lower() or text.startswith("5"):
        return "bounced"
    return "other"


def parse_flush_output(text: str) -> list[DeliveryLine]:
    """Per-recipient outcome lines of a queue run transcript (``Connecting`` lines skipped)."""
    out: list[DeliveryLine] = []
    queue_id: str | None = None
    connecting: str | None = None
    for line in text.splitlines():
        running = _RUNNING_RE.match(line)
        if running:
            queue_id, connecting = running.group("qid"), None
            continue
        match = _OUTCOME_RE.match(line.strip())
        if match:
            outcome = _classify(match.group("text"))
            if outcome == "connecting":
                connecting = match.group("rcpt")
            else:
                out.append(DeliveryLine(queue_id, match.group("rcpt"), outcome,
                                        match.group("text")))
                connecting = None
        elif connecting and line.strip() and not _SMTP_LINE_RE.match(line):
            # A mailer that failed before speaking SMTP: its error stands alone on a line.
            out.append(DeliveryLine(queue_id, connecting, _classify(line.strip()), line.strip()))
            connecting = None
    return out


def strip_auth_transcript(text: str) -> str:
    """Drop the SMTP AUTH exchange (``>>> AUTH ...`` and the base64 lines that follow)."""
    kept: list[str] = []
    in_auth = False
    for line in text.splitlines(keepends=True):
        if _AUTH_CMD_RE.match(line):
            in_auth = True
            kept.append(">>> AUTH [exchange hidden]\n")
            continue
        if in_auth:
            # The exchange ends at the server's final 2xx/5xx answer; 334 and the
            # client's base64 answers in between carry the credentials.
            if re.match(r"^[25]\d\d[ -]", line):
                in_auth = False
                kept.append(line)
            continue
        kept.append(line)
    return "".join(kept)
