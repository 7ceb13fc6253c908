"""Parse Postfix's syslog lines into the LogRecords sendmail's parser makes.

A line is ``TIME [HOST] postfix[-INSTANCE][/SERVICE...][/DAEMON][PID]: [QUEUE-ID: ]TEXT``
(traditional or RFC 3339 time stamps, read by sendmail's ``split_syslog_line``)::

    Dec  2 09:00:05 pbx1 postfix/smtp[1234]: 4F1C2A0B3C: to=<me@ourtest.com>,
      relay=none, delay=0.05, delays=0.01/0.01/0.03/0, dsn=4.4.1,
      status=deferred (connect to mx.ourtest.com[10.201.0.2]:25: Connection refused)

Queue ids are hex (``4F1C2A0B3C``) or, with ``enable_long_queue_ids``, ten or more
letters and digits, ``z``, more of them (``4cG3kB0bXyz1qW``).

Kinds are sendmail's, so that ``summarize`` reads both MTAs' records in one list:

- ``delivery``: ``to=...``, ``status=...`` (smtp, lmtp, local, virtual, pipe, error,
  retry). ``status`` keeps the word, ``reason`` the text in its parentheses, and ``stat``
  says the same the way sendmail does: ``Sent (2.0.0 Ok: queued as 4NGq3x6Zlbz9tF)``
  (the SMTP reply code dropped, so summary_key groups it with sendmail's ``Sent (Ok:
  queued)``), ``Deferred: connect to mx.ourtest.com[10.201.0.2]:25: Connection refused``,
  ``Bounced: host ... said: 550 5.1.1 ...``; the reason is kept whole, addresses and ports
  included.
- ``received``: qmgr's ``from=<..>, size=N, nrcpt=N (queue active)`` (``(queue active)``
  becomes ``queue=active``) and pickup's ``uid=0 from=<root>``.
- ``dsn``: bounce's ``sender non-delivery notification: NEWID`` (``dsn_queue_id``,
  ``reason``), and qmgr's ``from=<..>, status=expired, returned to sender``.
- ``reject``: ``reject: RCPT from ...: 554 5.7.1 ...; from=<..> to=<..> proto=.. helo=<..>``
  (also ``milter-reject``): ``reject`` holds the text before ``;``, then the envelope.
- ``tls``: ``Trusted TLS connection established to HOST[IP]:PORT: TLSv1.3 with cipher
  ...`` as ``STARTTLS=client`` (``server`` for ``from``), ``relay``, ``verify``,
  ``version``, ``cipher``, ``bits``.
- ``auth``: smtpd's ``client=..., sasl_method=..., sasl_username=...``.
- ``syserr``: ``error:``, ``fatal:``, ``panic:`` (``severity`` says which).
- ``daemon``: ``starting/stopping/refreshing the Postfix mail system``, master's
  ``daemon started -- version V, configuration DIR``, ``reload -- ...``,
  ``terminating on signal N``.
- ``other``: the rest: ``warning:`` lines (``severity=warning``), cleanup's
  ``message-id=<..>``, qmgr's ``removed``, smtpd's ``connect from``, ``host ... said``...

Each record's ``problem`` is read as for sendmail's lines (:func:`shared.sendmail.maillog.
line_problem`), from Postfix's own words: ``Server certificate not verified``, ``certificate
verification failed for ...`` and ``Untrusted TLS connection`` (tls_verify_failed), ``TLS is
required, but was not offered`` (tls_required), ``SASL authentication failed`` (auth_failed),
``Relay access denied`` (relaying_denied), a refused EHLO (ehlo_refused), other ``5.7.x``
answers (policy_rejected).

Lines of other programs give None.
"""

from __future__ import annotations

import re
from datetime import datetime

from shared.sendmail.maillog import LogRecord, parse_fields, parse_maillog_line, split_syslog_line

#: ``postfix`` (the postfix command itself), ``postfix-out`` (multi-instance),
#: ``postfix/submission`` (syslog_name), then the daemon: ``postfix-out/smtp``
_PROGRAM_RE = re.compile(r"^postfix(?:-[\w.-]+)?(?:/[\w.-]+)*$")
#: short (hex) or long (base 52 time, ``z``, base 51 inode number) queue ids
_QID_RE = re.compile(r"^(?P<qid>[0-9A-F]{5,}|[0-9A-Za-y]{10,}z[0-9A-Za-y]+): (?P<rest>.*)$")
_NOQUEUE = "NOQUEUE: "
_SEVERITY_RE = re.compile(r"^(?P<level>warning|error|fatal|panic): ")
_VALUE = r"(?:<[^>]*>|[^\s,<]*)"
#: keys separated by spaces only (``uid=0 from=<root>``, ``message-id=<...>``)
_SPACED_RE = re.compile(rf"^[A-Za-z][\w-]*={_VALUE}(?: [A-Za-z][\w-]*={_VALUE})*$")
_PAIR_RE = re.compile(rf"(?P<key>[A-Za-z][\w-]*)=(?P<value>{_VALUE})")
#: ``status=`` comes last and its reason may hold anything
_STATUS_RE = re.compile(r"(?:^|, )status=(?P<status>[A-Za-z_-]+)"
                        r"(?: \((?P<reason>.*)\))?(?P<tail>.*)$")
_QUEUE_NOTE_RE = re.compile(r"^(?P<value>.*?) \(queue (?P<queue>[\w-]+)\)$")
_REPLY_CODE_RE = re.compile(r"^[245]\d\d[ -]")
_ACTION_RE = re.compile(r"^(?P<action>reject|milter-reject|discard|hold|redirect|filter|"
                        r"replace|prepend|bcc|info): (?P<text>.*)$")
_ENVELOPE_RE = re.compile(r"^(?P<text>.*?); (?P<envelope>from=\S*(?: [A-Za-z][\w-]*=\S*)*)"
                          r"(?:: (?P<extra>.*))?$")
_NOTIFICATION_RE = re.compile(
    r"^(?P<reason>(?:sender|postmaster) (?:non-delivery|delivery status|delay|success) "
    r"notification): (?P<dsn_id>\S+)$")
_TLS_RE = re.compile(
    r"^(?P<verify>Anonymous|Untrusted|Trusted|Verified) TLS connection established "
    r"(?P<direction>to|from) (?P<relay>\S+?):? (?P<version>\S+) with cipher (?P<cipher>\S+)"
    r"(?: \((?P<bits>[\d/]+) bits\))?")
_DAEMON_RE = re.compile(r"^(?:(?:starting|stopping|refreshing) the Postfix mail system|"
                        r"daemon started -- |reload -- |terminating on signal )")
_VERSION_RE = re.compile(r"version (?P<version>[^,\s]+), configuration (?P<configuration>\S+)")


def is_postfix_program(program: str) -> bool:
    """True for Postfix's syslog idents: ``postfix/smtp``, ``postfix-out/qmgr``..."""
    return bool(_PROGRAM_RE.match(program))


def _key_values(text: str) -> dict[str, str]:
    """``key=value`` pairs, comma- or space-separated, with ``status=`` read apart."""
    if _SPACED_RE.match(text):
        return {m.group("key"): m.group("value") for m in _PAIR_RE.finditer(text)}
    status = _STATUS_RE.search(text)
    fields = parse_fields(text[: status.start()] if status else text)
    if fields:  # ``nrcpt=1 (queue active)``: the note is a field of its own
        last = next(reversed(fields))
        note = _QUEUE_NOTE_RE.match(fields[last])
        if note:
            fields[last], fields["queue"] = note.group("value"), note.group("queue")
    if status:
        word = status.group("status")
        reason = status.group("reason")
        if reason is None:  # ``status=expired, returned to sender``
            reason = status.group("tail").lstrip(", ").strip()
        fields["status"], fields["reason"] = word, reason
        fields["stat"] = _stat(word, reason)
    return fields


def _stat(status: str, reason: str) -> str:
    """A status and its reason the way sendmail's ``stat=`` says it."""
    if status == "sent":
        reply = _REPLY_CODE_RE.sub("", reason, count=1)
        return f"Sent ({reply})" if reply else "Sent"
    word = status[:1].upper() + status[1:]
    return f"{word}: {reason}" if reason else word


def _read(rest: str) -> tuple[str, dict[str, str]]:
    """The kind and fields of the text after the queue id."""
    severity = _SEVERITY_RE.match(rest)
    if severity:
        level = severity.group("level")
        return ("other" if level == "warning" else "syserr"), {"severity": level}
    action = _ACTION_RE.match(rest)
    if action:
        name, text = action.group("action"), action.group("text")
        envelope: dict[str, str] = {}
        split = _ENVELOPE_RE.match(text)
        if split:  # cleanup's header/body actions add ": text" after the envelope
            text = ": ".join(filter(None, (split.group("text"), split.group("extra"))))
            envelope = {m.group("key"): m.group("value")
                        for m in _PAIR_RE.finditer(split.group("envelope"))}
        if name in ("reject", "milter-reject"):
            return "reject", {"reject": text, **envelope}
        return "other", {"action": name, "text": text, **envelope}
    notice = _NOTIFICATION_RE.match(rest)
    if notice:
        return "dsn", {"dsn_queue_id": notice.group("dsn_id"), "reason": notice.group("reason")}
    tls = _TLS_RE.match(rest)
    if tls:
        fields = {"STARTTLS": "client" if tls.group("direction") == "to" else "server",
                  **{k: v for k, v in tls.groupdict().items() if v and k != "direction"}}
        return "tls", fields
    if _DAEMON_RE.match(rest):
        version = _VERSION_RE.search(rest)
        return "daemon", version.groupdict() if version else {}
    fields = _key_values(rest) if re.match(r"^[A-Za-z][\w-]*=", rest) else {}
    if "status" in fields:
        return ("delivery" if "to" in fields else "dsn"), fields
    if "from" in fields:
        return "received", fields
    if "sasl_method" in fields:
        return "auth", fields
    return "other", fields


def parse_postfix_line(line: str, now: datetime | None = None) -> LogRecord | None:
    """Parse one Postfix syslog line; None for other programs' lines and garbage.

    ``now`` (default: this machine's local time) picks the year of a traditional time
    stamp, as for sendmail's lines.
    """
    parts = split_syslog_line(line, now)
    if parts is None or not is_postfix_program(parts.program):
        return None
    queue_id: str | None = None
    rest = parts.message
    qid = _QID_RE.match(rest)
    if qid:
        queue_id, rest = qid.group("qid"), qid.group("rest")
    elif rest.startswith(_NOQUEUE):
        rest = rest[len(_NOQUEUE):]
    kind, fields = _read(rest)
    return LogRecord(timestamp=parts.timestamp, host=parts.host, program=parts.program,
                     pid=parts.pid, queue_id=queue_id, kind=kind, fields=fields, message=rest)


def parse_any_line(line: str, now: datetime | None = None) -> LogRecord | None:
    """Parse one sendmail or Postfix syslog line; None for other programs' lines.

    Postfix is tried first: its ``postfix/sendmail`` ident would pass for sendmail's.
    """
    return parse_postfix_line(line, now) or parse_maillog_line(line, now)
