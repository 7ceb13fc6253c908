"""Verified delivery: a probe message sent through the host's own MTA, followed in its
maillog until the relay it should use accepts or refuses it.

The probe is submitted the way a PBX submits its voicemail (``sendmail -oi -f SENDER --
TO`` on stdin, with ``-N never`` so that a refused probe bounces to nobody). It carries a
unique Message-ID, and that is what the maillog is searched for: sendmail's submission
goes through its MSP, which hands the message to the MTA on ``[127.0.0.1]`` and logs it
under one queue id, while the MTA relays it under another; both log ``msgid=``, as
Postfix's cleanup logs ``message-id=``. Every queue id carrying the Message-ID is
followed; the first attempt of one of them to the probe's recipient that is not the
local hand-off decides:

- ``sent`` by the expected relay: verified (the relay's reply is its acceptance);
- ``sent`` by another host (mail did not take the smarthost): not verified;
- ``bounced`` or ``deferred``: not verified, with the relay's reply (sendmail's
  ``reply=``, Postfix's ``status=... (REASON)``);
- nothing within the wait: not verified (the probe may still be queued).

The maillog is read on from the byte it had reached before the submission, so that earlier
lines never count; each poll reads on from where the last one stopped (at most
:data:`READ_CAP_BYTES`, at most :data:`TOTAL_CAP_BYTES` for the probe: past that the log is
too busy to follow) and the queue ids that carry the Message-ID are kept from poll to poll.
The log is followed by its inode: when it was rotated meanwhile the rest of the old file
(``MAILLOG.1``) is read first, then the new one from its start.

The whole probe keeps to its ``timeout_s``: each command's timeout is cut to the time left.
"""

from __future__ import annotations

import ipaddress
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.errors import CommandTimeout, ConfigError, OperationError
from shared.executor import CommandResult, Executor
from shared.reasons import clip
from shared.results import OperationResult, StepRecorder
from shared.sendmail.maillog import LogRecord, is_local_handoff, outcome
from shared.validation import VerifyRequest

#: the probe's sender when the request names none: a local name the MTA qualifies (and
#: masquerades) as it does a PBX's own senders
DEFAULT_SENDER = "relayfleet-probe"
PROBE_SUBJECT = "relayfleet delivery probe"
#: how often the maillog is read while waiting (seconds): soon at first (a relay on the
#: same network answers within a second), then every POLL_MAX_S
POLL_FIRST_S, POLL_MAX_S = 0.2, 1.0
#: what one read of the maillog returns at most (bytes): a poll's output stays small
#: whatever the transport (the SSH executor refuses more than 16 MiB)
READ_CAP_BYTES = 1 << 20
#: what all the reads of one probe may return together: a log growing faster than that is
#: too busy to follow the probe in it
TOTAL_CAP_BYTES = 32 << 20
#: the longest any one command of the probe may take (cut further to the time left)
COMMAND_TIMEOUT_S = 30.0
#: the least timeout a command is given, even when the wait is nearly over
MIN_COMMAND_S = 1.0
#: what removing a probe not delivered from the queue may take (part of the job's
#: PROBE_MARGIN_S)
CLEANUP_TIMEOUT_S = 10.0
#: exits when the maillog cannot be read, or is not a text file
_NO_LOG_CODE = 3
_BINARY_LOG_CODE = 4
#: checks that the maillog is a readable text file (no NUL byte in its first 64 KiB: not
#: a binary journal) and prints its inode and size
_LOG_CHECK_SCRIPT = (f'[ -f "$1" ] && [ -r "$1" ] || exit {_NO_LOG_CODE}; '
                     'nul=$(head -c 65536 -- "$1" | tr -dc "\\000" | wc -c); '
                     f'[ "$nul" -eq 0 ] || exit {_BINARY_LOG_CODE}; '
                     'exec stat -L -c "%i %s" -- "$1"')
#: reads the maillog ``$1`` on from byte ``$3`` of the file whose inode is ``$2``, at most
#: ``$4`` bytes, after a line "INODE OFFSET SIZE" saying what it read: the same file when
#: its inode is unchanged (from its start when it is now shorter: truncated); the rest of
#: the old file when the log was rotated to ``$1.1``; else the new file from its start.
#: A log missing for a moment (being rotated) reads as nothing new.
_LOG_READ_SCRIPT = (
    'f=$1 ino=$2 off=$3; now=$(stat -L -c "%i %s" -- "$f" 2>/dev/null) || now=""; '
    'size=${now#* }; '
    'if [ "${now% *}" = "$ino" ]; then [ "$size" -ge "$off" ] || off=0; '
    'else old=$(stat -L -c "%i %s" -- "$f.1" 2>/dev/null) || old=""; '
    'if [ -n "$old" ] && [ "${old% *}" = "$ino" ] && [ "${old#* }" -gt "$off" ]; then '
    'f=$f.1 size=${old#* }; elif [ -z "$now" ]; then echo "$ino $off $off"; exit 0; '
    'else ino=${now% *} off=0; fi; fi; '
    f'[ -r "$f" ] || exit {_NO_LOG_CODE}; '
    'echo "$ino $off $size"; tail -c +"$((off + 1))" -- "$f" | head -c "$4"')
#: the addresses a name has on the host (nothing, not a failure, when it has none)
_RESOLVE_SCRIPT = 'getent ahosts "$1" 2>/dev/null; exit 0'
_POSITION = re.compile(r"(\d+) (\d+)")
_READ_HEADER = re.compile(r"(\d+) (\d+) (\d+)")
#: ``relay=`` as sendmail (``relay.example.com. [192.0.2.1]``, ``[192.0.2.1] [192.0.2.1]``)
#: and Postfix (``relay.example.com[192.0.2.1]:587``) write it: its name part
_RELAY_NAME = re.compile(r"^\[?(?P<name>[^\s\[\]]+?)\.?\]?(?:\[[^\]]*\])?(?::\d+)?(?:\s|$)")
#: the address in brackets of a ``relay=`` field (the last pair: sendmail's
#: ``name. [ADDR]``, Postfix's ``name[ADDR]:port``)
_RELAY_ADDRESS = re.compile(r"\[(?:IPv6:)?(?P<address>[0-9A-Fa-f:.]+)\][^\[]*$")
#: the id of a line that carries the probe's Message-ID (sendmail: msgid=, Postfix:
#: message-id=)
_MESSAGE_ID_KEYS = ("msgid", "message-id")
#: a qualified host name fit for a Message-ID's right side
_DOMAIN = re.compile(r"[a-z0-9-]+(?:\.[a-z0-9-]+)+")


#: what a queue id the clean-up passes to the host looks like (sendmail's end in a
#: zero-padded pid; Postfix's are hexadecimal, or longer base-52 ones)
SENDMAIL_QUEUE_ID = re.compile(r"[A-Za-z0-9]{3,26}[0-9]{5}")
POSTFIX_QUEUE_ID = re.compile(r"[0-9A-Za-z]{6,24}")


def checked_queue_ids(delivery: Delivery, pattern: re.Pattern[str]) -> list[str]:
    """The probe's queue ids that are fit to pass to a command (``pattern``), in order."""
    return [qid for qid in delivery.queue_ids if pattern.fullmatch(qid)]


def log_position(out: CommandResult, maillog: str) -> tuple[str, int]:
    """The maillog's inode and size from the check script's answer; ConfigError when it is
    missing, unreadable or not text, OperationError when the answer makes no sense."""
    if out.exit_code == _NO_LOG_CODE:
        raise ConfigError(
            f"verify needs the MTA's text maillog, and {maillog} is missing or cannot be read "
            "(a host that logs to the journal only needs rsyslog writing a mail log; or set "
            "mta.maillog in the host's profile to the file its syslog writes); nothing was "
            "changed")
    if out.exit_code == _BINARY_LOG_CODE:
        raise ConfigError(
            f"verify needs the MTA's text maillog, and {maillog} is not a text file (a binary "
            "journal?): set mta.maillog in the host's profile to the file syslog writes mail "
            "lines to; nothing was changed")
    found = _POSITION.fullmatch(out.stdout_text().strip()) if out.ok else None
    if found is None:
        raise OperationError(
            f"cannot tell where {maillog} ends: the check exited {out.exit_code} saying "
            f"{clip(out.output_text(), 200)!r} (it needs stat and head on the host)")
    return found.group(1), int(found.group(2))


def log_check_command(maillog: str) -> list[str]:
    """The argv that checks the maillog is a readable text file and prints where it ends."""
    return ["sh", "-c", _LOG_CHECK_SCRIPT, "sh", maillog]


@dataclass
class LogCursor:
    """Where the reading of a maillog stands: the file (by inode), the byte reached, and
    how much all reads returned."""

    maillog: str
    inode: str
    offset: int
    read_total: int = 0
    #: the last read stopped at :data:`READ_CAP_BYTES`: more is waiting
    behind: bool = False

    def command(self) -> list[str]:
        """The argv that reads the next chunk."""
        return ["sh", "-c", _LOG_READ_SCRIPT, "sh", self.maillog, self.inode, str(self.offset),
                str(READ_CAP_BYTES)]

    def advance(self, out: CommandResult) -> list[str]:
        """The complete lines a read returned; the cursor moves past them (a line still
        being written is read again next time). OperationError on an answer that makes
        no sense."""
        head, _, data = out.stdout.partition(b"\n")
        found = _READ_HEADER.fullmatch(head.decode("ascii", "replace").strip())
        if not out.ok or found is None:
            raise OperationError(
                f"reading {self.maillog} failed: exit {out.exit_code}: "
                f"{clip(out.output_text(), 200)!r}")
        self.inode, self.offset = found.group(1), int(found.group(2))
        size = int(found.group(3))
        capped = len(data) >= READ_CAP_BYTES
        cut = data.rfind(b"\n") + 1
        if cut == 0 and capped:
            cut = len(data)  # one line longer than a read: skipped
        self.offset += cut
        self.read_total += len(data)
        self.behind = capped or self.offset < size
        return data[:cut].decode("utf-8", "replace").splitlines()


_NO_RELAY_HINT = "check the relay's address and that the MTA runs"
_RELAY_HINT = "fix what the relay objects to (sender domain, login, TLS) and try again"


class DeliveryNotVerified(OperationError):
    """The probe was not delivered by the relay the host should use."""

    kind = "delivery_not_verified"


@dataclass
class Delivery:
    """What became of one probe."""

    verified: bool
    relay: str | None
    reply: str | None
    queue_id: str | None
    message_id: str
    waited_s: float
    #: every queue id the probe's Message-ID was logged under (what a clean-up removes)
    queue_ids: tuple[str, ...] = field(default=(), compare=False)
    #: the probe was handed to the host's sendmail (False: there is nothing to clean up)
    submitted: bool = field(default=True, compare=False)
    #: what to do about it, when the relay's answer does not say (None: the default)
    hint: str | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The ``delivery`` document of a result."""
        return {"verified": self.verified, "relay": self.relay, "reply": self.reply,
                "queue_id": self.queue_id, "message_id": self.message_id,
                "waited_s": round(self.waited_s, 3)}

    def error(self) -> DeliveryNotVerified:
        """The host result's error for a probe not verified, quoting the relay."""
        if self.relay is None:
            return DeliveryNotVerified(
                f"delivery not verified: {self.reply or 'no outcome'} (probe "
                f"{self.message_id}); {self.hint or _NO_RELAY_HINT}")
        return DeliveryNotVerified(
            f"delivery not verified: {self.relay} answered: {self.reply or '(no reply)'} "
            f"(probe {self.message_id}); {self.hint or _RELAY_HINT}")


def new_message_id(domain: str | None = None) -> str:
    """A unique Message-ID for a probe (``<relayfleet-probe.HEX@DOMAIN>``)."""
    return f"<relayfleet-probe.{uuid.uuid4().hex}@{domain or 'relayfleet.invalid'}>"


def probe_message(request: VerifyRequest, message_id: str, sender: str) -> bytes:
    """The probe's text: a few headers naming it, and a line saying what it is."""
    return (f"From: {sender}\nTo: {request.to}\nSubject: {PROBE_SUBJECT}\n"
            f"Message-ID: {message_id}\nX-Relayfleet-Probe: yes\n\n"
            "relayfleet sent this message to check that mail from this host reaches its "
            "relay. It needs no answer.\n").encode()


def relay_name(relay: str) -> str:
    """The host part of a ``relay=`` field, lowercased, without a trailing dot, port or
    address in brackets (an address literal's address itself)."""
    match = _RELAY_NAME.match(relay.strip())
    return (match.group("name") if match else relay.strip()).lower().rstrip(".")


def _address(text: str) -> str | None:
    """``text`` as a normalised IP address (None: not one)."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def relay_address(relay: str) -> str | None:
    """The address in brackets of a ``relay=`` field (None: it shows none)."""
    match = _RELAY_ADDRESS.search(relay.strip())
    return _address(match.group("address")) if match else None


def resolved_addresses(getent_output: str) -> frozenset[str]:
    """The addresses ``getent ahosts NAME`` printed (one per line, first word)."""
    words = (line.split()[0] for line in getent_output.splitlines() if line.split())
    return frozenset(a for a in (_address(w) for w in words) if a is not None)


def expected_relay(smarthost: Mapping[str, Any] | None) -> str | None:
    """The relay name a delivery through ``smarthost`` (its ``host`` and ``mx``) logs;
    None when any relay will do (no smarthost, or MX lookups pick the host)."""
    if not smarthost or smarthost.get("mx"):
        return None
    return relay_name(str(smarthost["host"]))


def _reply(record: LogRecord) -> str:
    """The relay's answer a delivery line quotes (sendmail's reply=, Postfix's reason)."""
    fields = record.fields
    return fields.get("reply") or fields.get("reason") or fields.get("stat", "")


@dataclass
class Verdict:
    """The line that decided a probe, read by :class:`ProbeTrail`."""

    record: LogRecord
    outcome: str


@dataclass
class ProbeTrail:
    """Follows one probe through maillog records fed to it in order, poll after poll: the
    queue ids carrying its Message-ID are kept between feeds."""

    message_id: str
    to: str
    ids: set[str] = field(default_factory=set)

    def feed(self, records: Iterable[LogRecord]) -> Verdict | None:
        """The first attempt to deliver the probe to ``to`` beyond this host (the local
        hand-off and local bounce deliveries do not count), or None while there is none."""
        to = self.to.lower()
        for record in records:
            if record.queue_id is None:
                continue
            if any(record.fields.get(key) == self.message_id for key in _MESSAGE_ID_KEYS):
                self.ids.add(record.queue_id)
                continue
            if (record.queue_id in self.ids and record.kind == "delivery"
                    and to in (r.lower() for r in record.recipients)
                    and not is_local_handoff(record)
                    and record.fields.get("mailer") != "local"
                    and record.fields.get("relay") != "local"):
                result = outcome(record.fields.get("stat", ""), record.fields.get("dsn"))
                if result in ("sent", "bounced", "deferred"):
                    return Verdict(record, result)
        return None


def judge(records: Iterable[LogRecord], message_id: str, to: str) -> Verdict | None:
    """The probe's deciding line among ``records`` (see :meth:`ProbeTrail.feed`)."""
    return ProbeTrail(message_id, to).feed(records)


def delivery_from(verdict: Verdict | None, *, message_id: str, want: str | None,
                  waited_s: float, timeout_s: float,
                  addresses: frozenset[str] = frozenset()) -> Delivery:
    """The probe's outcome from its deciding line (None: nothing within ``timeout_s``).
    ``want``: the relay's name (None: any relay will do); ``addresses``: what that name
    resolves to on the host (a relay reached through a CNAME is logged by its canonical
    name, and matches by its address)."""
    if verdict is None:
        return Delivery(False, None, f"no delivery attempt logged within {timeout_s:g}s "
                        "(the probe may still be queued)", None, message_id, waited_s)
    record = verdict.record
    # Postfix says relay=none when it reached no relay at all (connect failed)
    relay = record.fields.get("relay") or None
    relay = None if relay == "none" else relay
    reply = _reply(record)
    verified = verdict.outcome == "sent"
    if verified and relay is None:
        # a "sent" that names no relay was not handed to one (a local or program mailer):
        # it proves nothing about the relay
        verified = False
        reply = f"logged as sent without naming a relay (no relay=): {reply}"
    elif verified and want is not None and relay is not None and relay_name(relay) != want \
            and relay_address(relay) not in addresses | {want}:
        verified = False
        reply = f"delivered by {relay}, not by the smarthost {want}: {reply}"
    return Delivery(verified, relay, reply, record.queue_id, message_id, waited_s)


def _left(deadline: float, now: float, most: float = COMMAND_TIMEOUT_S) -> float:
    """A command's timeout: ``most``, cut to the time left (never below MIN_COMMAND_S)."""
    return max(MIN_COMMAND_S, min(most, deadline - now))


@dataclass(frozen=True)
class _Probe:
    """One probe in flight: what it was sent for, and its time."""

    request: VerifyRequest
    message_id: str
    #: the relay's name (None: any), and the addresses it resolves to on the host
    want: str | None
    addresses: frozenset[str]
    #: when it was submitted, and when the wait ends (the prober's clock)
    started: float
    deadline: float


@dataclass
class Prober:
    """Sends a probe through an MTA and waits for its verdict in the maillog."""

    executor: Executor
    #: the host's sendmail (submission) program and its maillog
    sendmail: str
    maillog: str
    #: one maillog line as the MTA's record (None: not the MTA's line)
    parse_line: Callable[[str], LogRecord | None]
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep

    def run(self, rec: StepRecorder, request: VerifyRequest,
            smarthost: Mapping[str, Any] | None) -> Delivery:
        """Submit a probe and wait for the relay's verdict; the whole probe, from its first
        command to its verdict, keeps to ``request.timeout_s`` (each command's timeout is
        cut to the time left). ConfigError, before anything is sent, when the maillog is
        not a readable text file."""
        begun = self.clock()
        deadline = begun + request.timeout_s
        sender = request.sender or DEFAULT_SENDER
        want = expected_relay(smarthost)
        commands = [("maillog position", log_check_command(self.maillog)),
                    ("host name", ["sh", "-c", "hostname -f 2>/dev/null || uname -n"])]
        if want is not None and _address(want) is None:
            # the addresses the smarthost's name has here: the MTA may log another name
            commands.append(("resolve smarthost", ["sh", "-c", _RESOLVE_SCRIPT, "sh", want]))
        answers = rec.run_many(commands, timeout=_left(deadline, self.clock()))
        inode, offset = log_position(answers[0], self.maillog)
        cursor = LogCursor(self.maillog, inode, offset)
        named = answers[1]
        addresses = resolved_addresses(answers[2].stdout_text()) if len(answers) > 2 \
            else frozenset()
        # the Message-ID names the host (or the sender's domain), as the MTA's own would
        fqdn = named.stdout_text().strip().lower() if named.ok else ""
        domain = (request.sender.rpartition("@")[2] if request.sender
                  else fqdn if _DOMAIN.fullmatch(fqdn) else None)
        message_id = new_message_id(domain)
        started = self.clock()
        try:
            sent = rec.run("submit probe", [self.sendmail, "-oi", "-N", "never", "-f", sender,
                                            "--", request.to],
                           input=probe_message(request, message_id, sender),
                           timeout=_left(deadline, started, 60.0), check=False)
        except CommandTimeout:
            # it may have queued the probe all the same: it is cleaned up like any other
            delivery = Delivery(False, None, "the host's sendmail did not take the probe "
                                "within the wait", None, message_id, self.clock() - started)
            self._note(rec, delivery, started)
            return delivery
        if not sent.ok:
            why = clip(sent.output_text()) or f"exit {sent.exit_code}"
            delivery = Delivery(False, None, f"the host's sendmail refused the probe: {why}",
                                None, message_id, self.clock() - started, submitted=False)
            self._note(rec, delivery, started)
            return delivery
        delivery = self._follow(cursor, _Probe(request, message_id, want, addresses,
                                               started, deadline))
        self._note(rec, delivery, started)
        return delivery

    def _follow(self, cursor: LogCursor, probe: _Probe) -> Delivery:
        """Read the maillog on, poll after poll, until the probe's verdict, the deadline, or
        more log than can be followed."""
        request, message_id, want = probe.request, probe.message_id, probe.want
        addresses, started, deadline = probe.addresses, probe.started, probe.deadline
        trail = ProbeTrail(message_id, request.to)
        pause = POLL_FIRST_S
        while True:
            try:
                log = self.executor.run(cursor.command(),
                                        timeout=_left(deadline, self.clock()))
            except CommandTimeout:
                return self._unknown(trail, message_id, started, f"reading {self.maillog} "
                                     "timed out: the probe's outcome is not known")
            if log.exit_code == _NO_LOG_CODE:
                return self._unknown(trail, message_id, started, f"{self.maillog} cannot "
                                     "be read: the probe's outcome is not known")
            records = [r for r in (self.parse_line(line) for line in cursor.advance(log))
                       if r is not None]
            verdict = trail.feed(records)
            waited = self.clock() - started
            if verdict is not None:
                delivery = delivery_from(verdict, message_id=message_id, want=want,
                                         waited_s=waited, timeout_s=request.timeout_s,
                                         addresses=addresses)
                delivery.queue_ids = tuple(sorted(trail.ids))
                return delivery
            busy = cursor.read_total >= TOTAL_CAP_BYTES
            if busy or self.clock() >= deadline:
                if busy or cursor.behind:
                    return self._unknown(
                        trail, message_id, started,
                        f"the maillog is too busy to follow the probe ({cursor.read_total} "
                        f"bytes read in {waited:.0f}s, more waiting): its outcome is not "
                        "known", hint=f"read the probe's lines in {self.maillog} (grep the "
                        "Message-ID), or verify when the host is quieter")
                delivery = delivery_from(None, message_id=message_id, want=want,
                                         waited_s=waited, timeout_s=request.timeout_s)
                delivery.queue_ids = tuple(sorted(trail.ids))
                return delivery
            if not cursor.behind:  # caught up: wait for the log to grow
                self.sleep(min(pause, max(0.0, deadline - self.clock())))
                pause = min(POLL_MAX_S, pause * 2)

    def _unknown(self, trail: ProbeTrail, message_id: str, started: float, reply: str,
                 hint: str | None = None) -> Delivery:
        return Delivery(False, None, reply, None, message_id, self.clock() - started,
                        queue_ids=tuple(sorted(trail.ids)), hint=hint)

    @staticmethod
    def _note(rec: StepRecorder, delivery: Delivery, started: float) -> None:
        rec.note("verify delivery", ("delivered: " if delivery.verified else "NOT delivered: ")
                 + f"{delivery.relay or 'no relay'}: {delivery.reply}", ok=delivery.verified,
                 started=started)


def record_delivery(result: OperationResult, delivery: Delivery) -> None:
    """Put the probe's outcome in a result's data (``delivery``, ``delivery_verified``)."""
    result.data["delivery"] = delivery.to_dict()
    result.data["delivery_verified"] = delivery.verified
