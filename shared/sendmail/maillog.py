"""Parse sendmail's syslog lines (traditional or RFC 3339 time stamps) and summarise them."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

_TRADITIONAL_RE = re.compile(
    r"^(?P<ts>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d) (?P<host>\S+) "
    r"(?P<prog>[\w./-]+)(?:\[(?P<pid>\d+)\])?: (?P<msg>.*)$")
_RFC3339_RE = re.compile(
    r"^(?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)) (?P<host>\S+) "
    r"(?P<prog>[\w./-]+)(?:\[(?P<pid>\d+)\])?: (?P<msg>.*)$")
_QID_RE = re.compile(r"^(?P<qid>[A-Za-z0-9]{6,32}): (?P<rest>.*)$")
#: keys sendmail writes as "key=value, "; stat= is last and may hold anything
_KEY_RE = re.compile(r"(?:^|, )(?P<key>[a-z_]+)=")
SENDMAIL_PROGRAMS = ("sendmail", "sm-mta", "sm-msp-queue", "sendmail-mta", "sendmail-msp")
_SENT_RE = re.compile(r"^Sent\b")


@dataclass
class LogRecord:
    """One maillog line: who logged it, for which queue id, and its key=value fields."""

    timestamp: str
    host: str
    program: str
    pid: int | None
    queue_id: str | None
    kind: str
    fields: dict[str, str] = field(default_factory=dict)
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return {"timestamp": self.timestamp, "host": self.host, "program": self.program,
                "pid": self.pid, "queue_id": self.queue_id, "kind": self.kind,
                "fields": dict(self.fields), "message": self.message}


def _fields(text: str) -> dict[str, str]:
    matches = list(_KEY_RE.finditer(text))
    out: dict[str, str] = {}
    for i, match in enumerate(matches):
        key = match.group("key")
        if key == "stat":
            out[key] = text[match.end():].strip()
            break
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        out[key] = text[match.end():end].strip()
    return out


def parse_maillog_line(line: str) -> LogRecord | None:
    """Parse one sendmail syslog line; None for other programs' lines and garbage."""
    line = line.rstrip("\n")
    match = _TRADITIONAL_RE.match(line) or _RFC3339_RE.match(line)
    if not match or match.group("prog").rsplit("/", 1)[-1] not in SENDMAIL_PROGRAMS:
        return None
    msg = match.group("msg")
    qid_match = _QID_RE.match(msg)
    queue_id = qid_match.group("qid") if qid_match else None
    rest = qid_match.group("rest") if qid_match else msg
    fields = _fields(rest) if re.match(r"^[a-z_]+=", rest) else {}
    if "to" in fields and "stat" in fields:
        kind = "delivery"
    elif "from" in fields:
        kind = "received"
    else:
        kind = "other"
    pid = match.group("pid")
    return LogRecord(match.group("ts"), match.group("host"), match.group("prog"),
                     int(pid) if pid else None, queue_id, kind, fields, rest)


def outcome(stat: str) -> str:
    """Classify a ``stat=`` value: sent, deferred, bounced or other."""
    if _SENT_RE.match(stat):
        return "sent"
    if stat.startswith("Deferred"):
        return "deferred"
    if stat.startswith(("User unknown", "Host unknown", "Service unavailable", "Data format",
                        "Message too large", "Remote protocol error", "Unknown mailer")) \
            or stat.startswith("5"):
        return "bounced"
    return "other"


def summary_key(stat: str) -> str:
    """Group stats: every ``Sent (<queue reply>)`` counts as ``Sent``; others stay verbatim."""
    return "Sent" if _SENT_RE.match(stat) else stat


def summarize(records: Iterable[LogRecord]) -> dict[str, Any]:
    """Counts per stat (``Sent (...)`` variants grouped) and per outcome, for deliveries."""
    by_stat: Counter[str] = Counter()
    by_outcome: Counter[str] = Counter({"sent": 0, "deferred": 0, "bounced": 0, "other": 0})
    deliveries = 0
    for record in records:
        stat = record.fields.get("stat")
        if record.kind != "delivery" or stat is None:
            continue
        deliveries += 1
        by_stat[summary_key(stat)] += 1
        by_outcome[outcome(stat)] += 1
    return {"deliveries": deliveries, "by_stat": dict(by_stat.most_common()),
            **dict(by_outcome)}
