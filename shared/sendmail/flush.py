"""Read the transcript of ``sendmail -q -v``: one line per recipient's delivery outcome.

What the transcript looks like::

    Running /var/spool/mqueue/6AP4jQbT009721 (sequence 1 of 2)
    <me@ourtest.com>... Connecting to smarthost.lab.test. via relay...
    220 smarthost.lab.test ESMTP
    >>> EHLO lab1.lab.test
    250-AUTH PLAIN LOGIN
    >>> AUTH PLAIN AHVzZXIAc2VjcmV0          <- base64 credentials: strip_auth_transcript
    235 2.7.0 Authentication successful
    ...
    <me@ourtest.com>... Sent (2.0.0 Ok: queued)
    Running /var/spool/mqueue/6AP4mD19010500 (sequence 2 of 2)
    <root@lab1.lab.test>... Connecting to local...
    Operating system error                   <- a mailer that failed before speaking

Outcomes: ``sent``, ``deferred``, ``bounced``, ``other`` (as maillog.outcome classifies
sendmail's text), ``skipped`` (the run skipped the message or stopped: load, children),
``unknown`` (a connection was announced and nothing said how it ended).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from shared.sendmail.maillog import PERMANENT_TEXTS, TEMPORARY_TEXTS, outcome

_QID = r"(?:\S*/)?(?:qf)?(?P<qid>[A-Za-z0-9]{3,26}[0-9]{5})"
_RUNNING_RE = re.compile(rf"^Running {_QID} \(sequence \d+ of \d+\)")
_SKIPPING_RE = re.compile(rf"^Skipping {_QID}\b")
_RUN_STOPPED_RE = re.compile(r"^(?:\d{3} )?(?:Skipping queue run|Aborting queue run)\b")
#: "<me@ourtest.com>... Sent (2.0.0 Ok: queued)" / "root... Deferred: Connection refused by x."
_RECIPIENT_RE = re.compile(r"^<?(?P<rcpt>[^<>\s]+?)>?\.\.\. (?P<text>.+)$")
_ATTEMPT_PREFIXES = ("Connecting to", "Using cached")
#: "<x>... " lines that report progress, not an outcome
_INFO_PREFIXES = ("aliased to", "expanded to", "relayed; expect", "Deliver-by", "Deliver-By",
                  "openmailer(", "end of deliver(")
_STANDALONE_PREFIXES = ("Sent", "Deferred", *TEMPORARY_TEXTS, *PERMANENT_TEXTS)
#: client lines of the SMTP dialogue, and the server's replies (with or without "<<< ")
_CLIENT_RE = re.compile(r"^>>> ")
_REPLY_RE = re.compile(r"^(?:<<< )?(?P<code>\d{3})(?:[ -]|$)")
_AUTH_RE = re.compile(r"^>>> AUTH\b", re.I)
AUTH_PLACEHOLDER = ">>> AUTH [exchange hidden]"


@dataclass
class DeliveryLine:
    """What ``sendmail -v`` said about one recipient of one queued message."""

    queue_id: str | None
    recipient: str
    """without ``<>``; empty for a ``skipped`` line"""
    outcome: str
    text: str
    """sendmail's words, e.g. "Deferred: Connection refused by mx.ourtest.com." """

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form: ``{queue_id, recipient, outcome, text}``."""
        return asdict(self)


def parse_flush_output(text: str) -> list[DeliveryLine]:
    """The outcome of each recipient in a queue run transcript, in order."""
    out: list[DeliveryLine] = []
    queue_id: str | None = None
    #: the recipient whose connection was announced, and the announcement
    pending: tuple[str, str] | None = None

    def settle() -> None:
        nonlocal pending
        if pending is not None:
            out.append(DeliveryLine(queue_id, pending[0], "unknown", pending[1]))
            pending = None

    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        running = _RUNNING_RE.match(line)
        if running:
            settle()
            queue_id = running.group("qid")
            continue
        skipping = _SKIPPING_RE.match(line)
        if skipping or _RUN_STOPPED_RE.match(line):
            settle()
            out.append(DeliveryLine(skipping.group("qid") if skipping else None, "",
                                    "skipped", line))
            continue
        match = _RECIPIENT_RE.match(line)
        if match:
            rcpt, said = match.group("rcpt"), match.group("text").strip()
            if said.startswith(_ATTEMPT_PREFIXES):
                if pending is not None and pending[0] != rcpt:
                    settle()
                pending = (rcpt, said)
            elif not said.startswith(_INFO_PREFIXES):
                if pending is not None and pending[0] != rcpt:
                    settle()
                pending = None
                out.append(DeliveryLine(queue_id, rcpt, outcome(said), said))
            continue
        if pending is not None and line.startswith(_STANDALONE_PREFIXES):
            # A mailer that failed before speaking SMTP: its error stands alone on a line.
            out.append(DeliveryLine(queue_id, pending[0], outcome(line), line))
            pending = None
    settle()
    return out


def strip_auth_transcript(text: str) -> str:
    """Drop the SMTP AUTH exchange: ``>>> AUTH ...`` and the base64 lines that follow.

    The ``>>> AUTH`` line becomes AUTH_PLACEHOLDER; the server's ``334`` challenges and
    the client's answers after it are dropped up to the server's final reply (235, 535,
    454...), which is kept. Any other line ends the exchange too, so a cut-off dialogue
    never swallows the delivery lines after it.
    """
    kept: list[str] = []
    in_auth = False
    for line in text.splitlines(keepends=True):
        bare = line.rstrip("\r\n")
        ending = line[len(bare):]
        if _AUTH_RE.match(bare):
            in_auth = True
            kept.append(AUTH_PLACEHOLDER + (ending or ""))
            continue
        if in_auth:
            reply = _REPLY_RE.match(bare)
            if _CLIENT_RE.match(bare) or (reply and reply.group("code") == "334"):
                continue
            in_auth = False
        kept.append(line)
    return "".join(kept)
