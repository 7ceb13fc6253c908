"""Parse sendmail's syslog lines (traditional or RFC 3339 time stamps) and summarise them.

A line is ``TIME [HOST] PROG[PID]: [QUEUE-ID: ]TEXT``; sendmail's TEXT is mostly
``key=value, key=value, ...`` (``to=``/``from=``/``ruleset=``/``STARTTLS=``...).
``stat=`` (and ``reject=``, ``quarantine=``) come last and keep the rest of the line
whole: their values may hold commas and ``=``.

Record kinds: ``delivery`` (``to=`` with ``stat=``), ``received`` (``from=``), ``dsn``
(a bounce or delay notice was queued: ``ID: NEWID: DSN: reason``), ``reject``
(``reject=``), ``tls`` (``STARTTLS=``), ``auth`` (``AUTH=``), ``syserr`` (``SYSERR``),
``daemon`` (starting/restarting), ``other``. Lines of other programs give None.

Each record names the relay problem it shows, if any (:attr:`LogRecord.problem`, one of
:data:`PROBLEMS`), for sendmail's and Postfix's lines alike: a relay certificate that did
not verify, TLS required but not used, AUTH refused, relaying denied, the EHLO name refused,
another 5.7.x policy refusal.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared.sendmail.mailq import resolve_year

#: syslog idents sendmail uses (``-L`` can set others: ``sm-*`` and ``sendmail*`` count too)
SENDMAIL_PROGRAMS = frozenset({"sendmail", "sm-mta", "sm-msp-queue", "sendmail-mta",
                               "sendmail-msp", "smrsh", "mail.local"})
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_HEAD = r"^(?:<\d{1,3}>)?"  # a raw syslog datagram's <PRI>
_TAIL = r" (?:(?P<host>[\w.-]+) )?(?P<prog>[\w./-]+)(?:\[(?P<pid>\d+)\])?: (?P<msg>.*)$"
_TRADITIONAL_RE = re.compile(
    _HEAD + r"(?P<mon>" + "|".join(_MONTHS) + r") +(?P<day>\d{1,2}) "
    r"(?P<clock>\d\d:\d\d:\d\d)" + _TAIL)
_RFC3339_RE = re.compile(
    _HEAD + r"(?P<ts>\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)?)" + _TAIL)
#: sendmail ids end in the zero-padded pid: "6AP4jQbT009721", old "AAA01234"
_QID_RE = re.compile(r"^(?P<qid>[A-Za-z0-9]{3,26}[0-9]{5}): (?P<rest>.*)$")
_NOQUEUE = "NOQUEUE: "
_KEY_RE = re.compile(r"(?:^|, )(?P<key>[A-Za-z][A-Za-z0-9_]*)=")
#: keys whose value runs to the end of the line
_LAST_KEYS = frozenset({"stat", "reject", "quarantine"})
_DSN_RE = re.compile(r"^(?P<dsn_id>[A-Za-z0-9]{3,26}[0-9]{5}): "
                     r"(?:DSN|postmaster notify|return to sender): "
                     r"(?P<reason>.*)$")
_DAEMON_RE = re.compile(r"^(?:starting daemon|restarting .* due to signal|stopping daemon)")
_ENHANCED_RE = re.compile(r"^\s*[245]\.\d{1,3}\.\d{1,3}\b")
_LOCAL_RELAY_RE = re.compile(r"^(?:\[127\.\d+\.\d+\.\d+\]|localhost\b|\[IPv6:::1\])", re.I)

#: sendmail's texts for mailer exit codes that keep the message queued (sysexits 75, 71, 74)
TEMPORARY_TEXTS = ("Deferred", "Operating system error", "I/O error")
#: and for the ones that bounce it
PERMANENT_TEXTS = ("User unknown", "Host unknown", "Service unavailable", "Data format error",
                   "Remote protocol error", "Insufficient permission", "Command line usage error",
                   "Local configuration error", "Cannot open input", "Can't create output",
                   "System file missing", "Internal error", "Unknown mailer error")

#: the relay problems a line can show, each with what it means in words
PROBLEMS: dict[str, str] = {
    "tls_verify_failed": "certificate verification failed",
    "tls_required": "TLS required but not used (STARTTLS not offered, failed or skipped)",
    "auth_failed": "SMTP AUTH failed (the relay refused the login, or wanted one)",
    "relaying_denied": "relaying denied",
    "ehlo_refused": "the EHLO name was refused (run fix_hostname)",
    "policy_rejected": "refused by policy (5.7.x)",
}
#: what each problem reads like, checked in this order (the first match names the line).
#: sendmail's tls_server ruleset says "454 4.7.0 authentication failed" (and the other
#: texts here) about the relay's certificate, not about SMTP AUTH: checked first.
PROBLEM_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("tls_verify_failed", re.compile(
        r"certificate verification failed|Server certificate not verified"
        r"|\b[45]\.7\.0 (?:authentication failed|not authenticated|authentication required"
        r"|no authentication requested|authentication failure \S+)$"
        r"|\bCN .+ does not match |\bCert (?:Subject|Issuer) .+ (?:does not match"
        r"|not acceptable)")),
    ("tls_required", re.compile(
        r"TLS is required, but|Cannot start TLS|encryption too weak"
        r"|other side does not support STARTTLS|STARTTLS disabled locally"
        r"|TLS handshake failed\.|STARTTLS failed\.|STARTTLS temporarily not possible"
        r"|Must issue a STARTTLS command first")),
    ("auth_failed", re.compile(
        r"SASL authentication failed|AUTH failure|\b535[ -]|Authentication required"
        r"|authentication credentials invalid|Invalid credentials", re.IGNORECASE)),
    ("ehlo_refused", re.compile(
        r"\((?:EHLO|HELO)\)|in reply to (?:EHLO|HELO) command|Helo command rejected"
        r"|HELO/EHLO|unqualified host name")),
    ("relaying_denied", re.compile(
        r"Relaying (?:temporarily )?denied|Relay access denied|relay(?:ing)? not permitted"
        r"|relaying not allowed", re.IGNORECASE)),
    ("policy_rejected", re.compile(r"\b5\.7\.\d{1,3}\b")),
)
#: the fields holding a delivery's or refusal's answer (the rest of a line is addresses)
_ANSWER_KEYS = ("stat", "reply", "reject", "reason")


def line_problem(kind: str, fields: dict[str, str], message: str) -> str | None:
    """The relay problem a parsed line shows (a key of :data:`PROBLEMS`), or None."""
    if kind == "tls":  # sendmail's verify=FAIL, Postfix's "Untrusted TLS connection"
        failed = fields.get("verify") in ("FAIL", "Untrusted")
        return "tls_verify_failed" if failed and fields.get("STARTTLS") == "client" else None
    if kind in ("received", "daemon"):
        return None
    texts = [fields[key] for key in _ANSWER_KEYS if key in fields] or [message]
    for problem, pattern in PROBLEM_PATTERNS:
        if any(pattern.search(text) for text in texts):
            return problem
    return "policy_rejected" if fields.get("dsn", "").startswith("5.7.") else None



@dataclass
class LogRecord:
    """One sendmail syslog line: who logged it, for which queue id, and its key=value fields."""

    timestamp: str
    """ISO-8601; traditional syslog times are host-local with the year inferred"""
    host: str
    """empty when the line carries no host name"""
    program: str
    pid: int | None
    queue_id: str | None
    kind: str
    fields: dict[str, str] = field(default_factory=dict)
    message: str = ""
    """the text after the queue id"""

    @property
    def recipients(self) -> list[str]:
        """The addresses of ``to=`` (several, comma-separated, possible), without ``<>``."""
        return split_addresses(self.fields.get("to", ""))

    @property
    def problem(self) -> str | None:
        """The relay problem the line shows (a key of :data:`PROBLEMS`), or None."""
        return line_problem(self.kind, self.fields, self.message)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form: the fields plus ``recipients`` and ``problem``."""
        return {"timestamp": self.timestamp, "host": self.host, "program": self.program,
                "pid": self.pid, "queue_id": self.queue_id, "kind": self.kind,
                "fields": dict(self.fields), "message": self.message,
                "recipients": self.recipients, "problem": self.problem}


def split_addresses(text: str) -> list[str]:
    """Split ``<a@x>,<b@x>`` (or ``a@x,b@x``) on commas outside ``<>`` and quotes."""
    out: list[str] = []
    depth, quoted, start = 0, False, 0
    for i, char in enumerate(text):
        if char == '"':
            quoted = not quoted
        elif not quoted and char == "<":
            depth += 1
        elif not quoted and char == ">":
            depth = max(0, depth - 1)
        elif char == "," and not quoted and depth == 0:
            out.append(text[start:i])
            start = i + 1
    out.append(text[start:])
    addresses = []
    for part in out:
        address = part.strip()
        if address.startswith("<") and address.endswith(">") and len(address) > 2:
            address = address[1:-1]
        if address:
            addresses.append(address)
    return addresses


def parse_fields(text: str) -> dict[str, str]:
    """``key=value, key=value, ...`` into a dict; ``stat=`` and the like keep the rest."""
    matches = list(_KEY_RE.finditer(text))
    out: dict[str, str] = {}
    for i, match in enumerate(matches):
        key = match.group("key")
        if key in _LAST_KEYS:
            out[key] = text[match.end():].strip()
            break
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        out[key] = text[match.end():end].strip()
    return out


def is_sendmail_program(program: str) -> bool:
    """True for sendmail's own syslog idents (sendmail, sm-mta, sm-msp-queue, ...)."""
    name = program.rsplit("/", 1)[-1]
    return name in SENDMAIL_PROGRAMS or name.startswith(("sm-", "sendmail"))


@dataclass(frozen=True)
class SyslogLine:
    """The parts of ``TIME [HOST] PROG[PID]: MESSAGE``, whatever program logged it."""

    timestamp: str
    """ISO-8601, as LogRecord.timestamp"""
    host: str
    program: str
    pid: int | None
    message: str


def split_syslog_line(line: str, now: datetime | None = None) -> SyslogLine | None:
    """Split one syslog line (traditional or RFC 3339 time stamp); None if it is not one.

    ``now`` picks the year of a traditional time stamp, as in parse_maillog_line.
    """
    line = line.rstrip("\r\n")
    match = _TRADITIONAL_RE.match(line) or _RFC3339_RE.match(line)
    if not match:
        return None
    pid = match.group("pid")
    return SyslogLine(timestamp=_timestamp(match, now), host=match.group("host") or "",
                      program=match.group("prog"), pid=int(pid) if pid else None,
                      message=match.group("msg"))


def _timestamp(match: re.Match[str], now: datetime | None) -> str:
    if match.re is _RFC3339_RE:
        return match.group("ts").replace(" ", "T", 1)
    hour, minute, second = (int(x) for x in match.group("clock").split(":"))
    when = resolve_year(_MONTHS.index(match.group("mon")) + 1, int(match.group("day")),
                        hour, minute, second,
                        now=now or datetime.now())  # syslog writes the host's local time
    if when is None:  # no such day (Feb 30): keep what was printed
        return f"{match.group('mon')} {match.group('day')} {match.group('clock')}"
    return when.isoformat()


def _kind(rest: str, fields: dict[str, str]) -> str:
    if "to" in fields and "stat" in fields:
        return "delivery"
    if "from" in fields:
        return "received"
    if "reject" in fields:
        return "reject"
    if "STARTTLS" in fields:
        return "tls"
    if "AUTH" in fields:
        return "auth"
    if "SYSERR" in rest:
        return "syserr"
    if _DSN_RE.match(rest):
        return "dsn"
    if _DAEMON_RE.match(rest):
        return "daemon"
    return "other"


def parse_maillog_line(line: str, now: datetime | None = None) -> LogRecord | None:
    """Parse one sendmail syslog line; None for other programs' lines and garbage.

    ``now`` (default: this machine's local time) picks the year of a traditional time
    stamp: the latest one that does not put the line in the future.
    """
    parts = split_syslog_line(line, now)
    if parts is None or not is_sendmail_program(parts.program):
        return None
    msg = parts.message
    queue_id: str | None = None
    rest = msg
    qid_match = _QID_RE.match(msg)
    if qid_match:
        queue_id, rest = qid_match.group("qid"), qid_match.group("rest")
    elif msg.startswith(_NOQUEUE):
        rest = msg[len(_NOQUEUE):]
    fields = parse_fields(rest) if re.match(r"^[A-Za-z][A-Za-z0-9_]*=", rest) else {}
    dsn = _DSN_RE.match(rest)
    if dsn and not fields:
        fields = {"dsn_queue_id": dsn.group("dsn_id"), "reason": dsn.group("reason")}
        kind = "dsn"
    else:
        kind = _kind(rest, fields)
    return LogRecord(timestamp=parts.timestamp, host=parts.host, program=parts.program,
                     pid=parts.pid, queue_id=queue_id, kind=kind, fields=fields, message=rest)


def outcome(stat: str, dsn: str | None = None) -> str:
    """Classify a delivery status: ``sent``, ``deferred``, ``bounced`` or ``other``.

    The DSN code decides when there is one (2.x.x sent, 4.x.x deferred, 5.x.x bounced);
    otherwise sendmail's text: ``Sent``; ``Deferred``, ``Operating system error``,
    ``I/O error`` (the exit codes that keep a message queued); the other sysexits texts
    (``User unknown``, ``Host unknown``...) and 5xx replies bounce; anything else is other.
    """
    if dsn and dsn[:1] in "245" and dsn[1:2] == ".":
        return {"2": "sent", "4": "deferred", "5": "bounced"}[dsn[0]]
    text = stat.strip()
    if text.startswith(("Sent", "Successfully delivered")):
        return "sent"
    if text.startswith(TEMPORARY_TEXTS) or re.match(r"^4\d\d[ -]", text):
        return "deferred"
    if text.startswith(PERMANENT_TEXTS) or re.match(r"^5\d\d[ -]", text):
        return "bounced"
    return "other"


def _id_like(token: str) -> bool:
    """A queue id, message id, time stamp or ``key=value`` inside a ``Sent (...)`` reply."""
    bare = token.strip(",;:")
    if not bare:
        return False
    if bare[0] in "<[" or bare[-1] in ">]":
        return True
    has_digit = any(c.isdigit() for c in bare)
    return has_digit and (len(bare) >= 6 or "=" in bare)


def summary_key(stat: str) -> str:
    """The ``by_stat`` key: ``Sent (...)`` without the ids the next hop put in it.

    Rule: inside ``Sent (...)`` drop a leading enhanced status code (``2.0.0``), the word
    after ``queued as``, and every token that looks like an id (``<...>``, ``[...]``, a
    word of 6+ characters with a digit, a ``key=value`` with a digit); what is left names
    the reply: ``Sent (2.0.0 Ok: queued as 4NGq3x6Zlbz9tF)`` -> ``Sent (Ok: queued)``,
    ``Sent (6AP4jQbT009721 Message accepted for delivery)`` -> ``Sent (Message accepted
    for delivery)``, ``Sent (OK  1732501234 d9443c01a7-2129sm.55 - gsmtp)`` ->
    ``Sent (OK - gsmtp)``. Every other stat is its own key, verbatim.
    """
    match = re.match(r"^Sent \((?P<inner>.*)\)\s*$", stat.strip())
    if not match:
        return stat.strip()
    inner = _ENHANCED_RE.sub("", match.group("inner"))
    inner = re.sub(r"\b(queued|accepted) as \S+", r"\1", inner, flags=re.I)
    kept = " ".join(t for t in inner.split() if not _id_like(t)).strip(" ,;:")
    return f"Sent ({kept})" if kept else "Sent"


def is_local_handoff(record: LogRecord) -> bool:
    """True for a delivery to the MTA on this host (the MSP's ``relay=[127.0.0.1]`` hop)."""
    return record.kind == "delivery" and bool(
        _LOCAL_RELAY_RE.match(record.fields.get("relay", "")))


def summarize(records: Iterable[LogRecord]) -> dict[str, Any]:
    """Counts of delivery lines per stat (see summary_key) and per outcome, and of the
    lines naming each relay problem.

    ``{deliveries, by_stat: {stat: n}, sent, deferred, bounced, other, local_handoffs,
    problems}``: one count per ``to=`` line (one attempt, whatever its number of
    recipients), most frequent stat first; ``local_handoffs`` is the part of ``sent`` that
    only passed the message from the submission program to the MTA on the same host.
    ``problems``: ``[{problem, label, lines, deliveries}]``, most lines first: the lines
    showing it, and how many of them are delivery attempts (one failed attempt may log
    more than one line: sendmail's STARTTLS and ruleset lines before its ``to=`` line).
    """
    by_stat: Counter[str] = Counter()
    by_outcome: Counter[str] = Counter({"sent": 0, "deferred": 0, "bounced": 0, "other": 0})
    problem_lines: Counter[str] = Counter()
    problem_deliveries: Counter[str] = Counter()
    deliveries = handoffs = 0
    for record in records:
        problem = record.problem
        if problem is not None:
            problem_lines[problem] += 1
            problem_deliveries[problem] += record.kind == "delivery"
        stat = record.fields.get("stat")
        if record.kind != "delivery" or stat is None:
            continue
        deliveries += 1
        by_stat[summary_key(stat)] += 1
        result = outcome(stat, record.fields.get("dsn"))
        by_outcome[result] += 1
        if result == "sent" and is_local_handoff(record):
            handoffs += 1
    problems = [{"problem": problem, "label": PROBLEMS[problem], "lines": lines,
                 "deliveries": problem_deliveries[problem]}
                for problem, lines in problem_lines.most_common()]
    return {"deliveries": deliveries, "by_stat": dict(by_stat.most_common()),
            **dict(by_outcome), "local_handoffs": handoffs, "problems": problems}
