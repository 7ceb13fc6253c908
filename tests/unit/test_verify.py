"""Verified delivery: the probe request's grammar, how a probe is followed through the
maillog by its Message-ID (sendmail's MSP hand-off and MTA, Postfix), and what a probe
not delivered does to a smarthost change (rolled back) and to a flush (failed), on the
fake sendmail host."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shared import verify
from shared.actions import action_named
from shared.errors import ConfigError, OperationError, ValidationError
from shared.executor import LocalExecutor
from shared.mta import FlushRequest, operations_for
from shared.postfix.maillog import parse_postfix_line
from shared.profile import build_profile
from shared.results import StepRecorder
from shared.sendmail import operations as sendmail_operations
from shared.sendmail.maillog import parse_maillog_line
from shared.testing import debian_postfix_host, debian_sendmail_host
from shared.testing.executor import FakeExecutor
from shared.validation import VerifyRequest, parse_smarthost_request
from shared.verify import (
    Delivery,
    LogCursor,
    Prober,
    delivery_from,
    expected_relay,
    judge,
    log_check_command,
    log_position,
    relay_name,
)

REMOVE_SCRIPT = sendmail_operations._REMOVE_PROBE_SCRIPT
MID = "<relayfleet-probe.0123456789abcdef@pbx1.lab.test>"
TO = "me@ourtest.com"

#: a probe through sendmail's MSP and MTA, refused by the relay, then bounced locally
#: (captured on a lab host; the Message-ID replaced)
SENDMAIL_REFUSED = f"""\
Dec  3 13:28:39 pbx1 sendmail[11968]: 6B3DSdUp011968: from=relayfleet-probe, size=125, class=0, nrcpts=1, msgid={MID}, relay=root@localhost
Dec  3 13:28:39 pbx1 sm-mta[11969]: 6B3DSdcq011969: from=<relayfleet-probe@pbx1.lab.test>, size=305, class=0, nrcpts=1, msgid={MID}, proto=ESMTP, daemon=MTA-v4, relay=localhost [127.0.0.1]
Dec  3 13:28:39 pbx1 sendmail[11968]: 6B3DSdUp011968: to=me@ourtest.com, delay=00:00:00, xdelay=00:00:00, mailer=relay, pri=30125, relay=[127.0.0.1] [127.0.0.1], dsn=2.0.0, stat=Sent (6B3DSdcq011969 Message accepted for delivery)
Dec  3 13:28:39 pbx1 sm-mta[11971]: STARTTLS=client, relay=vbad.lab.test., version=TLSv1.3, verify=FAIL, cipher=TLS_AES_256_GCM_SHA384, bits=256/256
Dec  3 13:28:39 pbx1 sm-mta[11971]: 6B3DSdcq011969: to=<me@ourtest.com>, delay=00:00:00, xdelay=00:00:00, mailer=relay, pri=30305, relay=vbad.lab.test. [10.201.0.254], dsn=5.0.0, reply=550 5.7.1 Sender address rejected: not owned by a customer domain, stat=Service unavailable
"""  # noqa: E501
SENDMAIL_SENT = f"""\
Dec  3 13:28:55 pbx1 sendmail[12089]: 6B3DStWp012089: from=relayfleet-probe, size=125, class=0, nrcpts=1, msgid={MID}, relay=root@localhost
Dec  3 13:28:55 pbx1 sm-mta[12090]: 6B3DStVX012090: from=<relayfleet-probe@pbx1.lab.test>, size=305, class=0, nrcpts=1, msgid={MID}, proto=ESMTP, daemon=MTA-v4, relay=localhost [127.0.0.1]
Dec  3 13:28:55 pbx1 sendmail[12089]: 6B3DStWp012089: to=me@ourtest.com, delay=00:00:00, xdelay=00:00:00, mailer=relay, pri=30125, relay=[127.0.0.1] [127.0.0.1], dsn=2.0.0, stat=Sent (6B3DStVX012090 Message accepted for delivery)
Dec  3 13:28:55 pbx1 sm-mta[12092]: 6B3DStVX012090: to=<me@ourtest.com>, delay=00:00:00, xdelay=00:00:00, mailer=relay, pri=30305, relay=vgood.lab.test. [10.201.0.253], dsn=2.0.0, stat=Sent (2.0.0 Ok: queued by the lab relay)
"""  # noqa: E501
POSTFIX_REFUSED = f"""\
Dec  3 13:29:11 pbx2 postfix/pickup[13233]: E668620E4A4: uid=0 from=<relayfleet-probe>
Dec  3 13:29:11 pbx2 postfix/cleanup[13241]: E668620E4A4: message-id={MID}
Dec  3 13:29:11 pbx2 postfix/qmgr[13234]: E668620E4A4: from=<relayfleet-probe@pbx2.lab.test>, size=285, nrcpt=1 (queue active)
Dec  3 13:29:11 pbx2 postfix/smtp[13243]: E668620E4A4: to=<me@ourtest.com>, relay=vbad.lab.test[10.201.0.254]:587, delay=0.03, delays=0.01/0.01/0.01/0, dsn=5.7.1, status=bounced (host vbad.lab.test[10.201.0.254] said: 550 5.7.1 Sender address rejected: not owned by a customer domain (in reply to MAIL FROM command))
"""  # noqa: E501
#: an earlier message to the same recipient, and a deferral before the probe's lines
OTHER = """\
Dec  3 13:20:00 pbx2 postfix/cleanup[100]: 1111122222: message-id=<voicemail-1@pbx2.lab.test>
Dec  3 13:20:01 pbx2 postfix/smtp[101]: 1111122222: to=<me@ourtest.com>, relay=none, delay=1, delays=0/0/1/0, dsn=4.4.1, status=deferred (connect to mx.ourtest.com[10.201.0.2]:25: Connection refused)
"""  # noqa: E501


def records(text: str, parse: Any = parse_maillog_line) -> list[Any]:
    return [r for r in (parse(line) for line in text.splitlines()) if r is not None]


# -- the request ------------------------------------------------------------------------------

def test_a_verify_request_is_checked_like_every_other_field() -> None:
    request = parse_smarthost_request({"host": "relay.example.net", "verify": {
        "to": "Probe@OurTest.COM", "from": "pbx1@ourtest.com", "timeout_s": 30}})
    assert request.verify == VerifyRequest("Probe@ourtest.com", "pbx1@ourtest.com", 30)
    assert parse_smarthost_request({"host": "r.example.net", "verify": {
        "to": "a@b.example"}}).verify == VerifyRequest("a@b.example", None, 60)
    with pytest.raises(ValidationError) as refused:
        parse_smarthost_request({"host": "r.example.net", "verify": {
            "to": "a b@x.com", "from": "x@-bad-", "timeout_s": 5, "cc": "y@x.com"}})
    assert set(refused.value.errors) == {"verify.to", "verify.from", "verify.timeout_s",
                                         "verify.cc"}
    for bad in ("nobody", "-f@x.com", "a@b@c", "a;rm@x.com", ".a@x.com", "a@[10.0.0.1]"):
        with pytest.raises(ValidationError):
            VerifyRequest(bad)


@pytest.mark.parametrize("action", ["set_smarthost", "flush_queue"])
def test_verify_travels_and_is_stored_with_the_request(action: str) -> None:
    rules = action_named(action)
    params = {"verify": {"to": TO, "from": None, "timeout_s": 20}}
    if action == "set_smarthost":
        params["host"] = "relay.example.net"  # type: ignore[assignment]
    request = rules.parse(params)
    assert request.verify == VerifyRequest(TO, None, 20)
    assert rules.http_input(request, False)["verify"] == params["verify"]
    assert rules.stored(*rules.split(request)) == request
    with pytest.raises(ValidationError) as refused:
        rules.parse({**params, "verify": {"to": TO, "timeout_s": 301}})
    assert "verify.timeout_s" in refused.value.errors


def test_a_flush_request_built_from_json_gets_a_typed_probe() -> None:
    assert FlushRequest(verify={"to": TO}).verify == VerifyRequest(TO)  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        FlushRequest(verify={"to": "x"})  # type: ignore[arg-type]


# -- following the probe ------------------------------------------------------------------------

def test_relay_names_as_each_mta_logs_them() -> None:
    assert relay_name("vbad.lab.test. [10.201.0.254]") == "vbad.lab.test"
    assert relay_name("vbad.lab.test[10.201.0.254]:587") == "vbad.lab.test"
    assert relay_name("[192.0.2.7] [192.0.2.7]") == "192.0.2.7"
    assert relay_name("192.0.2.7[192.0.2.7]:25") == "192.0.2.7"
    assert expected_relay({"host": "[192.0.2.7]", "mx": False}) == "192.0.2.7"
    assert expected_relay({"host": "Relay.Example.NET", "mx": False}) == "relay.example.net"
    assert expected_relay({"host": "example.net", "mx": True}) is None
    assert expected_relay(None) is None


def test_a_sendmail_probe_is_followed_past_the_msp_hand_off() -> None:
    verdict = judge(records(SENDMAIL_REFUSED), MID, TO)
    assert verdict is not None and verdict.outcome == "bounced"
    delivery = delivery_from(verdict, message_id=MID, want="vbad.lab.test", waited_s=1.0,
                             timeout_s=90)
    assert delivery == Delivery(False, "vbad.lab.test. [10.201.0.254]",
                                "550 5.7.1 Sender address rejected: not owned by a customer "
                                "domain", "6B3DSdcq011969", MID, 1.0)
    assert "vbad.lab.test. [10.201.0.254] answered: 550 5.7.1" in delivery.error().message
    sent = delivery_from(judge(records(SENDMAIL_SENT), MID, TO), message_id=MID,
                         want="vgood.lab.test", waited_s=0.4, timeout_s=90)
    assert sent.verified and sent.queue_id == "6B3DStVX012090"
    assert sent.reply == "Sent (2.0.0 Ok: queued by the lab relay)"


def test_the_msp_hand_off_alone_decides_nothing() -> None:
    handed = "\n".join(SENDMAIL_SENT.splitlines()[:3])
    assert judge(records(handed), MID, TO) is None


def test_a_postfix_probe_quotes_the_relays_reply_and_other_mail_does_not_count() -> None:
    found = records(OTHER + POSTFIX_REFUSED, parse_postfix_line)
    verdict = judge(found, MID, TO)
    assert verdict is not None and verdict.record.queue_id == "E668620E4A4"
    delivery = delivery_from(verdict, message_id=MID, want="vbad.lab.test", waited_s=1,
                             timeout_s=90)
    assert not delivery.verified
    assert delivery.reply == ("host vbad.lab.test[10.201.0.254] said: 550 5.7.1 Sender address "
                              "rejected: not owned by a customer domain (in reply to MAIL FROM "
                              "command)")
    assert judge(records(OTHER, parse_postfix_line), MID, TO) is None


def test_a_relay_postfix_could_not_reach_is_named_by_the_reason_alone() -> None:
    line = OTHER.splitlines()[1].replace("1111122222", "E668620E4A4")
    found = records(POSTFIX_REFUSED.splitlines()[1] + "\n" + line, parse_postfix_line)
    delivery = delivery_from(judge(found, MID, TO), message_id=MID, want="vbad.lab.test",
                             waited_s=1, timeout_s=90)
    assert delivery.relay is None and not delivery.verified
    assert delivery.error().message.startswith(
        "delivery not verified: connect to mx.ourtest.com[10.201.0.2]:25: Connection refused")


def test_mail_sent_by_another_relay_than_the_smarthost_is_not_verified() -> None:
    delivery = delivery_from(judge(records(SENDMAIL_SENT), MID, TO), message_id=MID,
                             want="relay.example.net", waited_s=1, timeout_s=90)
    assert not delivery.verified
    assert delivery.reply.startswith("delivered by vgood.lab.test. [10.201.0.253], not by the "
                                     "smarthost relay.example.net")


class ScriptedLog:
    """An executor whose maillog grows by one chunk per read (for :class:`Prober`): it
    answers the read script as the host would, from the byte the cursor asks for."""

    def __init__(self, chunks: list[str], submit_exit: int = 0, *,
                 resolves: str = "") -> None:
        self.chunks = chunks
        self.reads = 0
        self.submit_exit = submit_exit
        self.submitted: list[bytes] = []
        self.resolves = resolves
        self.bytes_read = 0
        #: every command's timeout, with the clock's time it was asked at
        self.timeouts: list[tuple[float, float | None]] = []
        self.clock: Clock | None = None

    def run(self, argv: list[str], *, input: bytes | None = None,
            timeout: float | None = None) -> Any:
        from shared.executor import CommandResult

        self.timeouts.append((self.clock.now if self.clock else 0.0, timeout))
        if argv[0] == "/usr/sbin/sendmail":
            self.submitted.append(input or b"")
            return CommandResult(list(argv), self.submit_exit, b"",
                                 b"" if not self.submit_exit else b"recipient refused", 0.01)
        if argv[:3] == ["sh", "-c", verify._LOG_READ_SCRIPT]:
            offset, cap = int(argv[6]), int(argv[7])
            text = ("x" * 120 + "".join(self.chunks[:self.reads + 1])).encode()
            self.reads += 1
            data = text[offset:offset + cap]
            self.bytes_read += len(data)
            return CommandResult(list(argv), 0, f"7 {offset} {len(text)}\n".encode() + data,
                                 b"", 0.01)
        if argv[:3] == ["sh", "-c", verify._LOG_CHECK_SCRIPT]:
            return CommandResult(list(argv), 0, b"7 120\n", b"", 0.01)
        if argv[:3] == ["sh", "-c", verify._RESOLVE_SCRIPT]:
            return CommandResult(list(argv), 0 if self.resolves else 2,
                                 self.resolves.encode(), b"", 0.01)
        return CommandResult(list(argv), 0, b"pbx1.lab.test\n", b"", 0.01)

    def run_many(self, commands: list[list[str]], *, timeout: float | None = None) -> list[Any]:
        return [self.run(argv, timeout=timeout) for argv in commands]


class Clock:
    """A clock that only moves when slept on."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def prober(log: ScriptedLog, clock: Clock) -> Prober:
    log.clock = clock
    return Prober(log, "/usr/sbin/sendmail", "/var/log/mail.log",  # type: ignore[arg-type]
                  parse_maillog_line, clock=clock, sleep=clock.sleep)


def test_the_prober_waits_for_the_verdict_and_names_the_probe(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verify, "new_message_id", lambda domain=None: MID)
    lines = SENDMAIL_SENT.splitlines(keepends=True)
    log, clock = ScriptedLog(["", "".join(lines[:3]), lines[3]]), Clock()
    rec = StepRecorder(log)  # type: ignore[arg-type]
    delivery = prober(log, clock).run(rec, VerifyRequest(TO), {"host": "vgood.lab.test"})
    assert delivery.verified and log.reads == 3 and 0 < delivery.waited_s < 2
    message = log.submitted[0].decode()
    assert f"Message-ID: {MID}\n" in message and f"To: {TO}\n" in message
    assert rec.steps[-1].name == "verify delivery" and rec.steps[-1].ok


def test_a_probe_nothing_happens_to_is_not_verified_once_the_wait_is_over(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verify, "new_message_id", lambda domain=None: MID)
    log, clock = ScriptedLog([""]), Clock()
    delivery = prober(log, clock).run(StepRecorder(log), VerifyRequest(TO, timeout_s=10),  # type: ignore[arg-type]
                                      None)
    assert not delivery.verified and delivery.relay is None
    assert delivery.reply == ("no delivery attempt logged within 10s (the probe may still be "
                              "queued)")
    assert 10 <= clock.now < 11
    assert "delivery not verified: no delivery attempt" in delivery.error().message


def test_a_probe_the_host_refuses_to_take_is_not_verified() -> None:
    log, clock = ScriptedLog([""], submit_exit=67), Clock()
    delivery = prober(log, clock).run(StepRecorder(log), VerifyRequest(TO), None)  # type: ignore[arg-type]
    assert not delivery.verified and log.reads == 0
    assert delivery.reply == "the host's sendmail refused the probe: recipient refused"


# -- a change and a flush with a probe, on the fake sendmail host ---------------------------------

def script_probe(host: FakeExecutor, log_text: str) -> None:
    """The probe's submission taken, and its maillog lines in the log read after it."""
    host.script(["/usr/sbin/sendmail", "-oi", "-N", "never"], exit_code=0)
    host.script(lambda argv: argv[:3] == ("sh", "-c", verify._LOG_READ_SCRIPT),
                exit_code=0, stdout=f"7 0 {len(log_text)}\n{log_text}")
    host.script(lambda argv: argv[:3] == ("sh", "-c", verify._LOG_CHECK_SCRIPT),
                exit_code=0, stdout="7 0\n")
    host.script(lambda argv: argv[:2] == ("sh", "-c") and "hostname -f" in argv[2],
                exit_code=0, stdout="pbx1.lab.test\n")
    host.script(lambda argv: argv[:3] == ("sh", "-c", verify._RESOLVE_SCRIPT), exit_code=0)
    host.script(lambda argv: argv[:3] == ("sh", "-c", REMOVE_SCRIPT), exit_code=0,
                stdout="/var/spool/mqueue/qf6B3DSdcq011969\n")


def mail_files(host: FakeExecutor) -> dict[str, Any]:
    return {p: s for p, s in host.snapshot("/etc/mail").items()
            if not p.startswith("/etc/mail/.relayfleet-backup")}


def test_a_smarthost_change_whose_probe_is_refused_is_rolled_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verify, "new_message_id", lambda domain=None: MID)
    host = debian_sendmail_host()
    ops = operations_for(host, build_profile("sendmail", host.flavour, {}))
    before = mail_files(host)
    script_probe(host, SENDMAIL_REFUSED)
    result = ops.set_smarthost(parse_smarthost_request(
        {"host": "vbad.lab.test", "verify": {"to": TO, "timeout_s": 10}}))
    assert result.ok is False and result.rolled_back is True
    assert result.error_kind == "delivery_not_verified"
    assert result.data["delivery_verified"] is False
    assert result.data["delivery"]["reply"] == ("550 5.7.1 Sender address rejected: not "
                                                "owned by a customer domain")
    assert result.error is not None and result.error.startswith(
        "delivery not verified: vbad.lab.test. [10.201.0.254] answered: 550 5.7.1")
    assert "the previous configuration was restored" in result.error
    assert mail_files(host) == before and result.data["smarthost"] is None
    doc = action_named("set_smarthost").document(result)
    assert doc["delivery_verified"] is False and doc["delivery"]["message_id"] == MID


def test_a_smarthost_change_whose_probe_is_delivered_stays(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verify, "new_message_id", lambda domain=None: MID)
    host = debian_sendmail_host()
    ops = operations_for(host, build_profile("sendmail", host.flavour, {}))
    script_probe(host, SENDMAIL_SENT)
    result = ops.set_smarthost(parse_smarthost_request(
        {"host": "vgood.lab.test", "verify": {"to": TO, "timeout_s": 10}}))
    assert result.ok, result.error
    assert result.data["delivery_verified"] is True
    assert result.data["smarthost"]["host"] == "vgood.lab.test"
    # the same setting again changes nothing, and still probes
    again = ops.set_smarthost(parse_smarthost_request(
        {"host": "vgood.lab.test", "verify": {"to": TO, "timeout_s": 10}}))
    assert again.ok and again.changed is False and again.data["delivery_verified"] is True


def test_a_dry_run_never_probes() -> None:
    host = debian_sendmail_host()
    ops = operations_for(host, build_profile("sendmail", host.flavour, {}))
    result = ops.set_smarthost(parse_smarthost_request(
        {"host": "vgood.lab.test", "verify": {"to": TO}}), dry_run=True)
    assert result.ok and "delivery" not in result.data
    assert host.ran("/usr/sbin/sendmail", "-oi") == []


def test_a_flush_whose_probe_is_refused_fails_quoting_the_relay(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verify, "new_message_id", lambda domain=None: MID)
    host = debian_sendmail_host()
    ops = operations_for(host, build_profile("sendmail", host.flavour, {}))
    script_probe(host, SENDMAIL_REFUSED)
    result = ops.queue_flush(FlushRequest(verify=VerifyRequest(TO, timeout_s=10)))
    assert result.ok is False and result.error_kind == "delivery_not_verified"
    assert "550 5.7.1 Sender address rejected" in (result.error or "")
    doc = action_named("flush_queue").document(result)
    assert doc["delivery_verified"] is False and doc["delivery"]["queue_id"] == "6B3DSdcq011969"
    plain = ops.queue_flush(FlushRequest())
    assert "delivery_verified" not in action_named("flush_queue").document(plain)


# -- reading the maillog: on from where it stopped, bounded, by inode (the real scripts) -------

def read_log(cursor: LogCursor) -> list[str]:
    with LocalExecutor() as local:
        return cursor.advance(local.run(cursor.command(), timeout=10))


def start_cursor(path: Path) -> LogCursor:
    with LocalExecutor() as local:
        inode, size = log_position(local.run(log_check_command(str(path)), timeout=10),
                                   str(path))
    return LogCursor(str(path), inode, size)


def test_each_read_goes_on_from_where_the_last_stopped(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_text("old line\n")
    cursor = start_cursor(log)
    assert cursor.offset == 9
    with log.open("a") as out:
        out.write("one\ntwo\nthr")  # a line still being written
    assert read_log(cursor) == ["one", "two"] and cursor.offset == 17
    with log.open("a") as out:
        out.write("ee\n")
    assert read_log(cursor) == ["three"]
    assert read_log(cursor) == [] and cursor.read_total == len("one\ntwo\nthr") + len("three\n")


def test_a_rotated_log_is_finished_then_followed_from_its_start(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_text("before\n")
    cursor = start_cursor(log)
    with log.open("a") as out:
        out.write("late in the old file\n")
    log.rename(tmp_path / "mail.log.1")
    # the new file is already longer than the old offset: a size check would read it from
    # the wrong byte
    log.write_text("first of the new file\nsecond of the new file\n")
    assert read_log(cursor) == ["late in the old file"]
    assert read_log(cursor) == ["first of the new file", "second of the new file"]
    assert cursor.inode == str(log.stat().st_ino)


def test_a_truncated_log_is_read_from_its_start(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_text("a fairly long line before the truncation\n")
    cursor = start_cursor(log)
    log.write_text("new\n")  # same inode, shorter (copytruncate)
    assert read_log(cursor) == ["new"]


def test_a_read_returns_at_most_the_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verify, "READ_CAP_BYTES", 16)
    log = tmp_path / "mail.log"
    log.write_text("")
    cursor = start_cursor(log)
    log.write_text("short\n" + "x" * 40 + "\nafter\n")
    assert read_log(cursor) == ["short"] and cursor.behind
    # a line longer than a whole read is skipped, never read forever
    lines = []
    while cursor.behind:
        lines += read_log(cursor)
    assert lines[-1] == "after" and cursor.offset == log.stat().st_size


def test_the_maillog_check_refuses_what_cannot_be_followed(tmp_path: Path) -> None:
    binary = tmp_path / "system.journal"
    binary.write_bytes(b"LPKSHHRH\x00\x00\x01")
    with LocalExecutor() as local:
        for path, words in ((tmp_path / "absent.log", "missing or cannot be read"),
                            (binary, "not a text file")):
            with pytest.raises(ConfigError) as refused:
                log_position(local.run(log_check_command(str(path)), timeout=10), str(path))
            assert words in refused.value.message
            assert "nothing was changed" in refused.value.message


def test_odd_answers_are_relayfleet_errors_not_crashes() -> None:
    from shared.executor import CommandResult

    for out in (b"", b"12 lots\n", b"wc: mail.log: Permission denied\n"):
        with pytest.raises(OperationError):
            log_position(CommandResult(("sh",), 0, out, b"", 0.0), "/var/log/mail.log")
    cursor = LogCursor("/var/log/mail.log", "7", 0)
    with pytest.raises(OperationError):
        cursor.advance(CommandResult(("sh",), 0, b"garbage\nline\n", b"", 0.0))


# -- the prober: incremental, bounded in bytes and in time -----------------------------------------

def test_the_prober_reads_each_byte_once_and_keeps_the_probes_queue_ids(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verify, "new_message_id", lambda domain=None: MID)
    lines = SENDMAIL_SENT.splitlines(keepends=True)
    # the lines naming the Message-ID come in reads before the one that decides
    log, clock = ScriptedLog([lines[0], lines[1], "", lines[2], lines[3]]), Clock()
    delivery = prober(log, clock).run(StepRecorder(log), VerifyRequest(TO),  # type: ignore[arg-type]
                                      {"host": "vgood.lab.test"})
    assert delivery.verified and log.reads == 5
    assert log.bytes_read == len(SENDMAIL_SENT)
    assert delivery.queue_ids == ("6B3DStVX012090", "6B3DStWp012089")


def test_a_maillog_too_busy_to_follow_is_said(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verify, "new_message_id", lambda domain=None: MID)
    monkeypatch.setattr(verify, "TOTAL_CAP_BYTES", 4000)
    noise = "Dec  3 13:28:55 pbx1 sm-mta[1]: 6B3DStZZ000001: to=<x@y.z>, stat=Sent\n" * 20
    log, clock = ScriptedLog([noise] * 50), Clock()
    delivery = prober(log, clock).run(StepRecorder(log), VerifyRequest(TO), None)  # type: ignore[arg-type]
    assert not delivery.verified
    assert delivery.reply is not None and "too busy to follow the probe" in delivery.reply
    assert "grep the Message-ID" in delivery.error().message
    assert log.bytes_read < 4000 + len(noise)


def test_no_command_of_the_probe_outlasts_its_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verify, "new_message_id", lambda domain=None: MID)
    log, clock = ScriptedLog([""]), Clock()
    prober(log, clock).run(StepRecorder(log), VerifyRequest(TO, timeout_s=10), None)  # type: ignore[arg-type]
    assert clock.now <= 10
    for asked_at, timeout in log.timeouts:
        assert timeout is not None
        assert timeout <= max(verify.MIN_COMMAND_S, 10 - asked_at), log.timeouts


def test_a_relay_logged_by_its_canonical_name_matches_by_address() -> None:
    verdict = judge(records(SENDMAIL_SENT), MID, TO)  # vgood.lab.test. [10.201.0.253]
    through_cname = delivery_from(verdict, message_id=MID, want="smtp.customer.example",
                                  waited_s=1, timeout_s=60,
                                  addresses=frozenset({"10.201.0.253"}))
    assert through_cname.verified
    elsewhere = delivery_from(verdict, message_id=MID, want="smtp.customer.example",
                              waited_s=1, timeout_s=60, addresses=frozenset({"192.0.2.1"}))
    assert not elsewhere.verified


def test_a_sent_line_without_a_relay_proves_nothing() -> None:
    line = SENDMAIL_SENT.splitlines()[3].replace(" relay=vgood.lab.test. [10.201.0.253],", "")
    text = "\n".join([*SENDMAIL_SENT.splitlines()[:3], line])
    for want in ("vgood.lab.test", None):
        delivery = delivery_from(judge(records(text), MID, TO), message_id=MID, want=want,
                                 waited_s=1, timeout_s=60)
        assert not delivery.verified
        assert delivery.reply is not None and "without naming a relay" in delivery.reply


def test_the_prober_resolves_the_smarthost_on_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verify, "new_message_id", lambda domain=None: MID)
    log = ScriptedLog(["", SENDMAIL_SENT],
                      resolves="10.201.0.253    STREAM smtp.customer.example\n")
    delivery = prober(log, Clock()).run(StepRecorder(log), VerifyRequest(TO),  # type: ignore[arg-type]
                                        {"host": "smtp.customer.example"})
    assert delivery.verified, delivery


# -- the request's wait: one rule ----------------------------------------------------------------

def test_the_wait_is_checked_by_one_rule_everywhere() -> None:
    from shared.schemas import VerifySchema

    said = "must be an integer from 10 to 300"
    for bad in (5, 301, True, 1.5):
        with pytest.raises(ValidationError) as direct:
            VerifyRequest(TO, timeout_s=bad)  # type: ignore[arg-type]
        assert direct.value.errors == {"verify.timeout_s": [said]}
        with pytest.raises(ValidationError) as parsed:
            parse_smarthost_request({"host": "r.example.net",
                                     "verify": {"to": TO, "timeout_s": bad}})
        assert parsed.value.errors == {"verify.timeout_s": [said]}
    for bad in (5, 301):
        assert VerifySchema().validate({"to": TO, "timeout_s": bad}) == {"timeout_s": [said]}
    assert VerifySchema().load({"to": TO})["timeout_s"] == 60


# -- before and after: the maillog checked first, a failed probe taken out of the queue ------------

def test_a_change_with_verify_on_a_host_without_a_maillog_is_refused_untouched() -> None:
    host = debian_sendmail_host()
    host.remove(host.maillog)
    ops = operations_for(host, build_profile("sendmail", host.flavour, {}))
    before = mail_files(host)
    result = ops.set_smarthost(parse_smarthost_request(
        {"host": "vgood.lab.test", "verify": {"to": TO}}))
    assert result.ok is False and result.error_kind == "config", result.error
    assert "/var/log/mail.log is missing" in (result.error or "")
    assert result.rolled_back is False and mail_files(host) == before
    assert host.ran("/usr/sbin/sendmail", "-oi") == [] and host.ran("make") == []


def test_a_refused_probe_is_taken_out_of_the_sendmail_queue(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verify, "new_message_id", lambda domain=None: MID)
    host = debian_sendmail_host()
    ops = operations_for(host, build_profile("sendmail", host.flavour, {}))
    script_probe(host, SENDMAIL_REFUSED)
    result = ops.set_smarthost(parse_smarthost_request(
        {"host": "vbad.lab.test", "verify": {"to": TO, "timeout_s": 10}}))
    assert result.rolled_back is True
    [removal] = host.ran("sh", "-c", REMOVE_SCRIPT)
    assert removal[4:] == (MID, "/var/spool/mqueue", "/var/spool/mqueue-client",
                           "6B3DSdUp011968", "6B3DSdcq011969")
    names = [step.name for step in result.steps]
    # removed before the rollback restarts the MTA (a restart runs the queue)
    assert names.index("remove probe") < names.index("rollback")
    step = result.steps[names.index("remove probe")]
    assert step.ok and "qf6B3DSdcq011969" in step.output


def test_a_deferred_postfix_probe_is_deleted_with_postsuper(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verify, "new_message_id", lambda domain=None: MID)
    host = debian_postfix_host()
    ops = operations_for(host, build_profile("postfix", host.flavour, {}))
    deferred = POSTFIX_REFUSED.replace("status=bounced", "status=deferred").replace(
        "dsn=5.7.1", "dsn=4.7.1")
    script_probe(host, deferred)
    postsuper = host.script(["postsuper"], exit_code=0)
    result = ops.queue_flush(FlushRequest(verify=VerifyRequest(TO, timeout_s=10)))
    assert result.error_kind == "delivery_not_verified"
    assert postsuper.calls == 1
    [call] = [c for c in host.commands if c.argv[0] == "postsuper"]
    assert call.argv == ("postsuper", "-c", "/etc/postfix", "-d", "-")
    assert call.input == b"E668620E4A4\n"
    assert any(s.name == "remove probe" and "postsuper -d E668620E4A4" in s.output
               for s in result.steps)


def test_the_sendmail_removal_script_finds_the_probe_by_its_message_id(tmp_path: Path) -> None:
    queue, client = tmp_path / "mqueue", tmp_path / "mqueue-client"
    queue.mkdir()
    client.mkdir()
    (client / "qf6B3DSdUp011968").write_text(f"H??Message-Id: {MID}\n")
    (client / "df6B3DSdUp011968").write_text("body\n")
    (queue / "qf6B3DSdcq011969").write_text("V8\n")
    (queue / "df6B3DSdcq011969").write_text("body\n")
    (queue / "qf6B3DOther01234").write_text("H??Message-Id: <voicemail-1@pbx1>\n")
    with LocalExecutor() as local:
        out = local.run(["sh", "-c", REMOVE_SCRIPT, "sh", MID, str(queue), str(client),
                         "6B3DSdcq011969", "../etc;x"], timeout=10)
    assert out.ok, out.output_text()
    assert sorted(p.name for p in tmp_path.rglob("*f*") if p.is_file()) == ["qf6B3DOther01234"]
    assert len(out.stdout_text().split()) == 4


def test_a_log_missing_while_it_is_rotated_reads_as_nothing_new(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_text("before\n")
    cursor = start_cursor(log)
    log.rename(tmp_path / "elsewhere")
    assert read_log(cursor) == [] and cursor.offset == 7
    log.write_text("after\n")
    assert read_log(cursor) == ["after"]
