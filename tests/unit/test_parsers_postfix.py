"""Postfix parsers: postqueue -j, mailq text and maillog lines.

Hand-written samples follow Postfix's own printf formats (postqueue/showq_json.c,
postqueue/showq_compat.c: ``%-11s %7ld %20.20s %s`` for short queue ids,
``%-17s %8ld %19.19s %s`` for long ones, reasons right-aligned to column 76) and its
log lines (smtp, qmgr, cleanup, pickup, bounce, master, postfix-script, smtpd).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from shared.compat import UTC, zip_strict
from shared.errors import ParseError
from shared.postfix.maillog import is_postfix_program, parse_any_line, parse_postfix_line
from shared.postfix.queue import (
    MAX_REASON_LINES,
    parse_postfix_mailq,
    parse_postfix_queue,
    parse_postqueue_json,
)
from shared.schemas import LogRecordSchema, QueueSchema
from shared.sendmail.maillog import (
    LogRecord,
    outcome,
    parse_maillog_line,
    split_syslog_line,
    summarize,
    summary_key,
)
from shared.sendmail.mailq import MailqReport, QueuedMessage, listing_time, parse_mailq

#: Wed Dec 2 2026, noon (host-local, like the listings' times)
NOW = datetime(2026, 12, 2, 12, 0)
#: Wed Dec 2 2026 09:00:01 UTC
ARRIVAL = 1796202001
REFUSED = "connect to mx.ourtest.com[10.201.0.2]:25: Connection refused"
TIMED_OUT = "connect to mx.ourtest.com[10.201.0.2]:25: Connection timed out"


# -- helpers that print the way showq_compat.c does ----------------------------------

def heading(long: bool = False) -> str:
    if long:
        return "----Queue ID----- --Size-- ---Arrival Time---- --Sender/Recipient------"
    return "-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------"


def first(qid: str, size: int, when: str, sender: str, long: bool = False) -> str:
    if long:
        return f"{qid:<17} {size:>8} {when:19.19} {sender}"
    return f"{qid:<11} {size:>7} {when + ' ':20.20} {sender}"


def why(text: str) -> str:
    # (not f"{'':{width}}": Python 3.9 reads a width of 0 as the "0" fill flag and fails)
    return " " * max(0, 76 - len(text)) + f"({text})"


def rcpt(address: str, long: bool = False) -> str:
    return f"{'':<17} {'':>8} {'':<19} {address}" if long else f"{'':<41}{address}"


def footer(kbytes: int, requests: int) -> str:
    return f"\n-- {kbytes} Kbytes in {requests} Request{'' if requests == 1 else 's'}."


def listing(*entries: list[str], kbytes: int = 1, long: bool = False) -> str:
    if not entries:
        return "Mail queue is empty\n"
    body = "\n\n".join("\n".join(lines) for lines in entries)
    return f"{heading(long)}\n{body}\n{footer(kbytes, len(entries))}\n"


def postqueue_j(*docs: Mapping[str, object]) -> str:
    # postqueue -j prints ", " and ": " separators, one object per line
    return "".join(json.dumps(doc) + "\n" for doc in docs)


def message(qid: str = "4F1C2A0B3C", queue: str = "deferred", **extra: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "queue_name": queue, "queue_id": qid, "arrival_time": ARRIVAL, "message_size": 1234,
        "forced_expire": False, "sender": "root@pbx1.example.com",
        "recipients": [{"address": "me@ourtest.com", "delay_reason": REFUSED}]}
    doc.update(extra)
    return doc


# -- postqueue -j ---------------------------------------------------------------------

def test_json_one_deferred_message() -> None:
    report = parse_postqueue_json(postqueue_j(message()))
    assert (report.count, report.sections) == (1, {"deferred": 1})
    (msg,) = report.messages
    assert msg == QueuedMessage(
        id="4F1C2A0B3C", size=1234, queued_at="2026-12-02T09:00:01+00:00",
        sender="root@pbx1.example.com", recipients=["me@ourtest.com"], reason=REFUSED,
        flags="", section="deferred", reasons={"me@ourtest.com": REFUSED})
    assert not msg.processing


def test_json_literal_line_as_postqueue_prints_it() -> None:
    line = ('{"queue_name": "deferred", "queue_id": "4F1C2A0B3C", "arrival_time": 1796202001, '
            '"message_size": 1234, "forced_expire": false, "sender": "root@pbx1.example.com", '
            '"recipients": [{"address": "me@ourtest.com", "delay_reason": "connect to '
            'mx.ourtest.com[10.201.0.2]:25: Connection refused"}]}\n')
    assert parse_postqueue_json(line).to_dict() == parse_postqueue_json(
        postqueue_j(message())).to_dict()


def test_json_recipients_with_and_without_reasons() -> None:
    doc = message(recipients=[
        {"address": "a@ourtest.com"},  # being delivered: no reason yet
        {"address": "b@ourtest.com", "delay_reason": TIMED_OUT},
        {"address": "c@ourtest.com", "delay_reason": REFUSED},
    ])
    (msg,) = parse_postqueue_json(postqueue_j(doc)).messages
    assert msg.recipients == ["a@ourtest.com", "b@ourtest.com", "c@ourtest.com"]
    assert msg.reason == TIMED_OUT  # the first recipient that has one
    assert msg.reasons == {"b@ourtest.com": TIMED_OUT, "c@ourtest.com": REFUSED}


def test_json_no_recipient_has_a_reason() -> None:
    doc = message(queue="active", recipients=[{"address": "a@x.test"}, {"address": "b@x.test"}])
    (msg,) = parse_postqueue_json(postqueue_j(doc)).messages
    assert (msg.reason, msg.reasons, msg.recipients) == (None, {}, ["a@x.test", "b@x.test"])


def test_json_status_flags_and_sections() -> None:
    text = postqueue_j(
        message("A1", "active"), message("B2", "hold"), message("C3", "deferred"),
        message("D4", "deferred", forced_expire=True), message("E5", "hold", forced_expire=True),
        message("F6", "incoming"), message("A7", "maildrop"))
    report = parse_postqueue_json(text)
    assert [(m.id, m.flags, m.section) for m in report.messages] == [
        ("A1", "*", "active"), ("B2", "!", "hold"), ("C3", "", "deferred"),
        ("D4", "#", "deferred"), ("E5", "!#", "hold"), ("F6", "", "incoming"),
        ("A7", "", "maildrop")]
    assert [m.processing for m in report.messages] == [True] + [False] * 6
    assert report.sections == {"active": 1, "hold": 2, "deferred": 2, "incoming": 1,
                               "maildrop": 1}
    assert report.count == 7


def test_json_unknown_queue_name_passes_through() -> None:
    report = parse_postqueue_json(postqueue_j(message(queue="corrupt")))
    assert report.sections == {"corrupt": 1} and report.messages[0].flags == ""


def test_json_empty_queue_prints_nothing() -> None:
    for text in ("", "\n", "  \n\n"):
        report = parse_postqueue_json(text)
        assert (report.count, report.sections, report.messages) == (0, {}, [])


def test_json_blank_lines_and_crlf_are_ignored() -> None:
    text = "\r\n" + postqueue_j(message("A1"), message("B2")).replace("\n", "\r\n\r\n")
    assert [m.id for m in parse_postqueue_json(text).messages] == ["A1", "B2"]


def test_json_null_sender() -> None:
    # Postfix prints the null sender as MAILER-DAEMON (empty_address_recipient), like
    # sendmail's mailq; both are kept as printed. A literal "" stays "".
    bounce = parse_postqueue_json(postqueue_j(message(sender="MAILER-DAEMON"))).messages[0]
    assert bounce.sender == "MAILER-DAEMON"
    empty = parse_postqueue_json(postqueue_j(message(sender=""))).messages[0]
    assert empty.sender == ""


def test_json_missing_optional_members() -> None:
    # Postfix 3.1-3.4 print no forced_expire; a hand-made object may lack more
    doc = {"queue_id": "4F1C2A0B3C", "recipients": [{"address": "me@ourtest.com"}]}
    (msg,) = parse_postqueue_json(postqueue_j(doc)).messages
    assert msg == QueuedMessage(id="4F1C2A0B3C", size=-1, queued_at=None, sender="",
                                recipients=["me@ourtest.com"], section="unknown")
    bare = parse_postqueue_json(postqueue_j({"queue_id": "X1", "queue_name": "hold"}))
    assert bare.messages[0].recipients == [] and bare.messages[0].flags == "!"


def test_json_newer_members() -> None:
    # 3.11: orig_address, and bounce_reason / other_reason instead of delay_reason;
    # members not listed in the manual are ignored, as it asks
    doc = message(recipients=[
        {"orig_address": "me", "address": "me@ourtest.com",
         "bounce_reason": "host mx said: 550 5.1.1 unknown user"},
        {"orig_address": "you@ourtest.com", "address": "you@ourtest.com",
         "other_reason": "something else"}], future_member={"x": [1, 2]})
    (msg,) = parse_postqueue_json(postqueue_j(doc)).messages
    assert msg.reason == "host mx said: 550 5.1.1 unknown user"
    assert msg.reasons == {"me@ourtest.com": "host mx said: 550 5.1.1 unknown user",
                           "you@ourtest.com": "something else"}


def test_json_old_force_expired_spelling() -> None:
    (msg,) = parse_postqueue_json(postqueue_j(
        {"queue_name": "deferred", "queue_id": "A1", "force_expired": True})).messages
    assert msg.flags == "#"


def test_json_a_message_listed_twice_is_kept_once() -> None:
    # it moved from active to deferred while showq walked the queues
    text = postqueue_j(message("A1", "active"), message("B2"), message("A1", "deferred"))
    report = parse_postqueue_json(text)
    assert [(m.id, m.section) for m in report.messages] == [("B2", "deferred"),
                                                            ("A1", "deferred")]
    assert report.count == 2 and report.sections == {"deferred": 2}


@pytest.mark.parametrize("seconds", [0, -5, 10**20, None])
def test_json_impossible_arrival_time(seconds: int | None) -> None:
    (msg,) = parse_postqueue_json(postqueue_j(message(arrival_time=seconds))).messages
    assert msg.queued_at is None


def test_json_fractional_numbers() -> None:
    (msg,) = parse_postqueue_json(postqueue_j(message(arrival_time=ARRIVAL + 0.5,
                                                      message_size=12.0))).messages
    assert msg.queued_at == "2026-12-02T09:00:01.500000+00:00" and msg.size == 12


def test_json_truncated_line_names_its_number() -> None:
    text = postqueue_j(message("A1")) + "\n" + postqueue_j(message("B2"))[:60] + "\n"
    with pytest.raises(ParseError, match=r"postqueue -j line 3 is not JSON"):
        parse_postqueue_json(text)


@pytest.mark.parametrize("line, error", [
    ("[1, 2]", "line 1 is not a JSON object"),
    ('"text"', "line 1 is not a JSON object"),
    ("null", "line 1 is not a JSON object"),
    ("Mail queue is empty", "line 1 is not JSON"),
    ("{'queue_id': 'single quotes'}", "line 1 is not JSON"),
    ("[" * 100_000 + "]" * 100_000, "line 1 is (?:not JSON|nested too deeply)"),
    ('{"queue_name": "deferred"}', "line 1: no queue_id"),
    ('{"queue_id": ""}', "line 1: no queue_id"),
    ('{"queue_id": 12345}', "queue_id is not a string: 12345"),
    ('{"queue_id": "A1", "message_size": "1234"}', "message_size is not a number"),
    ('{"queue_id": "A1", "message_size": true}', "message_size is not a number: true"),
    ('{"queue_id": "A1", "arrival_time": [1]}', "arrival_time is not a number"),
    ('{"queue_id": "A1", "sender": 7}', "sender is not a string"),
    ('{"queue_id": "A1", "forced_expire": "yes"}', "forced_expire is not a boolean"),
    ('{"queue_id": "A1", "recipients": {"address": "a@x"}}', "recipients is not a list"),
    ('{"queue_id": "A1", "recipients": ["a@x"]}', "recipient 1: not an object"),
    ('{"queue_id": "A1", "recipients": [{"address": "a@x"}, {"delay_reason": "x"}]}',
     "recipient 2: no address"),
    ('{"queue_id": "A1", "recipients": [{"address": "a@x", "delay_reason": 4}]}',
     "recipient 1: delay_reason is not a string"),
])
def test_json_malformed(line: str, error: str) -> None:
    with pytest.raises(ParseError, match=error):
        parse_postqueue_json(line + "\n")


def test_json_postqueue_diagnostics() -> None:
    warned = "postqueue: warning: Mail system is down -- accessing queue directly\n"
    assert parse_postqueue_json(warned + postqueue_j(message())).count == 1
    with pytest.raises(ParseError, match=r"postqueue failed: .*mail system is down"):
        parse_postqueue_json("postqueue: fatal: Queue report unavailable - mail system is down\n")


def test_json_report_is_plain_json_and_fits_the_schema() -> None:
    text = postqueue_j(message(), message("A1", "active", recipients=[{"address": "x@y"}]))
    doc = json.loads(json.dumps(parse_postqueue_json(text).to_dict()))
    assert QueueSchema().validate(doc) == {}
    assert doc["messages"][0] == {
        "id": "4F1C2A0B3C", "size": 1234, "queued_at": "2026-12-02T09:00:01+00:00",
        "sender": "root@pbx1.example.com", "recipients": ["me@ourtest.com"],
        "reason": REFUSED, "flags": "", "section": "deferred", "quarantine": None,
        "reasons": {"me@ourtest.com": REFUSED}, "processing": False}
    assert doc["messages"][1]["processing"] is True


# -- mailq / postqueue -p text --------------------------------------------------------

LITERAL = """\
-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------
4F1C2A0B3C*    1234 Wed Dec  2 09:00:01  root@pbx1.example.com
                (connect to mx.ourtest.com[10.201.0.2]:25: Connection refused)
                                         me@ourtest.com

-- 1 Kbytes in 1 Request.
"""


def test_text_literal_sample() -> None:
    report = parse_postfix_mailq(LITERAL, now=NOW)
    assert (report.count, report.sections) == (1, {"active": 1})
    assert report.messages == [QueuedMessage(
        id="4F1C2A0B3C", size=1234, queued_at="2026-12-02T09:00:01",
        sender="root@pbx1.example.com", recipients=["me@ourtest.com"], reason=REFUSED,
        flags="*", section="active", reasons={"me@ourtest.com": REFUSED})]
    assert report.messages[0].processing


def test_text_helpers_print_the_literal_sample() -> None:
    built = listing([first("4F1C2A0B3C*", 1234, "Wed Dec  2 09:00:01 2026",
                           "root@pbx1.example.com"), why(REFUSED), rcpt("me@ourtest.com")])
    assert built == LITERAL


def test_text_reasons_apply_to_the_recipients_after_them() -> None:
    text = listing([
        first("4F1C2A0B3C", 5120, "Wed Dec  2 09:00:01", "asterisk@pbx1.example.com"),
        why(REFUSED), rcpt("a@ourtest.com"), rcpt("b@ourtest.com"),
        why(TIMED_OUT), rcpt("c@ourtest.com"),
        why("reason unavailable"), rcpt("d@ourtest.com")])
    (msg,) = parse_postfix_mailq(text, now=NOW).messages
    assert msg.recipients == ["a@ourtest.com", "b@ourtest.com", "c@ourtest.com",
                              "d@ourtest.com"]
    assert msg.reasons == {"a@ourtest.com": REFUSED, "b@ourtest.com": REFUSED,
                           "c@ourtest.com": TIMED_OUT}
    assert msg.reason == REFUSED and msg.section == "deferred" and msg.flags == ""


def test_text_recipients_before_any_reason_have_none() -> None:
    # showq prints recipients without a reason first when the defer log lacks them
    text = listing([first("4F1C2A0B3C", 10, "Wed Dec  2 09:00:01", "a@x.test"),
                    rcpt("first@x.test"), why(REFUSED), rcpt("second@x.test")])
    (msg,) = parse_postfix_mailq(text, now=NOW).messages
    assert msg.reasons == {"second@x.test": REFUSED} and msg.reason == REFUSED


def test_text_several_messages_and_status_characters() -> None:
    text = listing(
        [first("4F1C2A0B3C*", 1234, "Wed Dec  2 09:00:01", "a@x.test"), rcpt("b@x.test")],
        [first("5A0B1C2D3E!", 2048, "Tue Dec  1 23:59:59", "MAILER-DAEMON"), rcpt("a@x.test")],
        [first("6B1C2D3E4F#", 100, "Mon Nov 30 07:00:00", "a@x.test"), why(REFUSED),
         rcpt("c@x.test")],
        [first("7C2D3E4F5A!#", 100, "Mon Nov 30 07:00:00", "a@x.test"), rcpt("d@x.test")],
        kbytes=3)
    report = parse_postfix_mailq(text, now=NOW)
    assert [(m.id, m.flags, m.section) for m in report.messages] == [
        ("4F1C2A0B3C", "*", "active"), ("5A0B1C2D3E", "!", "hold"),
        ("6B1C2D3E4F", "#", "deferred"), ("7C2D3E4F5A", "!#", "hold")]
    assert report.sections == {"active": 1, "hold": 2, "deferred": 1} and report.count == 4
    assert [m.queued_at for m in report.messages] == [
        "2026-12-02T09:00:01", "2026-12-01T23:59:59", "2026-11-30T07:00:00",
        "2026-11-30T07:00:00"]
    assert report.messages[1].sender == "MAILER-DAEMON"
    assert [m.recipients for m in report.messages] == [
        ["b@x.test"], ["a@x.test"], ["c@x.test"], ["d@x.test"]]


def test_text_long_queue_ids() -> None:
    text = listing([first("4cG3kB0bXyz1qW*", 1234, "Wed Dec  2 09:00:01 2026", "a@x.test",
                          long=True),
                    why(REFUSED), rcpt("b@x.test", long=True), rcpt("c@x.test", long=True)],
                   [first("4cG3kC1cYbz2rX", 99, "Wed Dec  2 09:05:00 2026", "a@x.test",
                          long=True), rcpt("d@x.test", long=True)], long=True)
    assert text.startswith("----Queue ID----- --Size-- ---Arrival Time---- ")
    assert "\n4cG3kB0bXyz1qW*       1234 Wed Dec  2 09:00:01 a@x.test\n" in text
    report = parse_postfix_mailq(text, now=NOW)
    assert [m.id for m in report.messages] == ["4cG3kB0bXyz1qW", "4cG3kC1cYbz2rX"]
    first_msg = report.messages[0]
    assert first_msg.recipients == ["b@x.test", "c@x.test"]
    assert first_msg.reasons == {"b@x.test": REFUSED, "c@x.test": REFUSED}
    assert first_msg.queued_at == "2026-12-02T09:00:01" and first_msg.section == "active"
    assert report.count == 2


def test_text_long_reason_starts_at_column_zero() -> None:
    long_reason = ("host mx.ourtest.com[10.201.0.2] said: 451 4.7.1 <me@ourtest.com>: "
                   "Recipient address rejected: Greylisted, see "
                   "https://postgrey.example/help (in reply to RCPT TO command)")
    line = why(long_reason)
    assert line.startswith("(host")
    text = listing([first("4F1C2A0B3C", 10, "Wed Dec  2 09:00:01", "a@x.test"), line,
                    rcpt("me@ourtest.com")])
    (msg,) = parse_postfix_mailq(text, now=NOW).messages
    assert msg.reason == long_reason  # its own parentheses included
    assert msg.recipients == ["me@ourtest.com"]


def test_text_wrapped_reason_lines() -> None:
    text = listing([
        first("4F1C2A0B3C", 10, "Wed Dec  2 09:00:01", "a@x.test"),
        "(host mx.ourtest.com[10.201.0.2] said: 451 4.7.1 Greylisted (try again",
        "    in 300 seconds) please (in reply to RCPT TO",
        "    command))",
        rcpt("a@ourtest.com"),
        "     (conversation with mx.ourtest.com[10.201.0.2] timed out",
        "      while receiving the initial server greeting)",
        rcpt("b@ourtest.com")])
    (msg,) = parse_postfix_mailq(text, now=NOW).messages
    greylisted = ("host mx.ourtest.com[10.201.0.2] said: 451 4.7.1 Greylisted (try again "
                  "in 300 seconds) please (in reply to RCPT TO command)")
    timeout = ("conversation with mx.ourtest.com[10.201.0.2] timed out while receiving "
               "the initial server greeting")
    assert msg.recipients == ["a@ourtest.com", "b@ourtest.com"]
    assert msg.reasons == {"a@ourtest.com": greylisted, "b@ourtest.com": timeout}


def test_text_unclosed_reason_does_not_swallow_recipients() -> None:
    text = listing([first("4F1C2A0B3C", 10, "Wed Dec  2 09:00:01", "a@x.test"),
                    why("host said: 550 (oops"), rcpt("a@x.test"), rcpt("b@x.test")])
    (msg,) = parse_postfix_mailq(text, now=NOW).messages
    assert msg.recipients == ["a@x.test", "b@x.test"]
    assert msg.reason == "host said: 550 (oops"
    unbalanced = listing([first("4F1C2A0B3C", 10, "Wed Dec  2 09:00:01", "a@x.test"),
                          why("said: 550 ;-) bye"), rcpt("a@x.test")])
    assert parse_postfix_mailq(unbalanced, now=NOW).messages[0].reasons == {
        "a@x.test": "said: 550 ;-) bye"}


def test_text_reason_wrapped_too_far_is_only_its_line() -> None:
    text = listing([first("4F1C2A0B3C", 10, "Wed Dec  2 09:00:01", "a@x.test"),
                    "(unclosed", *(rcpt(f"r{n}@x.test") for n in range(MAX_REASON_LINES)),
                    "    closed at last)"])
    (msg,) = parse_postfix_mailq(text, now=NOW).messages
    assert msg.reason == "unclosed"
    assert msg.recipients[:MAX_REASON_LINES] == [f"r{n}@x.test" for n in range(MAX_REASON_LINES)]


def test_text_hostile_listing_stays_linear() -> None:
    lines = [first("4F1C2A0B3C", 10, "Wed Dec  2 09:00:01", "a@x.test")]
    text = listing(lines + ["  (never closed"] * 20_000 + [rcpt("a@x.test")] * 20_000)
    started = time.monotonic()
    (msg,) = parse_postfix_mailq(text, now=NOW).messages
    assert time.monotonic() - started < 5
    assert msg.recipients == ["a@x.test"] * 20_000 and msg.reason == "never closed"


def test_text_empty_queue() -> None:
    report = parse_postfix_mailq("Mail queue is empty\n", now=NOW)
    assert (report.count, report.sections, report.messages) == (0, {}, [])


def test_text_message_without_recipients_and_with_odd_senders() -> None:
    text = listing([first("4F1C2A0B3C!", 10, "Wed Dec  2 09:00:01", '"john doe"@x.test')],
                   [first("5A0B1C2D3E", 10, "Wed Dec  2 09:00:01", "MAILER-DAEMON"),
                    rcpt('"a b"@x.test')])
    held, bounce = parse_postfix_mailq(text, now=NOW).messages
    assert (held.sender, held.recipients, held.section) == ('"john doe"@x.test', [], "hold")
    assert bounce.recipients == ['"a b"@x.test']


def test_text_old_maildrop_line() -> None:
    # Postfix < 3.1 listed a maildrop file it could not open with the sender's UID
    text = ("-Queue ID- --Size-- ----Arrival Time---- -Sender/Recipient-------\n"
            "4F1C2A0B3C     312 Wed Dec  2 09:00:01  (maildrop queue, sender UID 1000)\n"
            "\n-- 0 Kbytes in 1 Request.\n")
    (msg,) = parse_postfix_mailq(text, now=NOW).messages
    assert (msg.id, msg.sender, msg.section, msg.size) == ("4F1C2A0B3C", "", "maildrop", 312)


def test_text_year_is_never_in_the_future() -> None:
    text = listing([first("4F1C2A0B3C", 10, "Thu Dec 31 23:59:59", "a@x.test"),
                    rcpt("b@x.test")])
    new_year = datetime(2027, 1, 1, 0, 5)
    assert parse_postfix_mailq(text, now=new_year).messages[0].queued_at == (
        "2026-12-31T23:59:59")
    # Dec 2 2025 was a Tuesday: a year-old message, not one from the future
    old = listing([first("4F1C2A0B3C", 10, "Tue Dec  2 12:30:00", "a@x.test")])
    assert parse_postfix_mailq(old, now=NOW).messages[0].queued_at == "2025-12-02T12:30:00"


def test_text_default_now() -> None:
    recent = datetime.now().replace(microsecond=0)
    when = recent.strftime("%a %b ") + f"{recent.day:2d}" + recent.strftime(" %H:%M:%S")
    text = listing([first("4F1C2A0B3C", 10, when, "a@x.test"), rcpt("b@x.test")])
    assert parse_postfix_mailq(text).messages[0].queued_at == recent.isoformat()


def test_text_footer_counts_what_was_cut_off() -> None:
    text = listing([first("4F1C2A0B3C", 10, "Wed Dec  2 09:00:01", "a@x.test"),
                    rcpt("b@x.test")]).replace("1 Request.", "250 Requests.")
    report = parse_postfix_mailq(text, now=NOW)
    assert len(report.messages) == 1 and report.count == 250


def test_text_output_cut_mid_listing() -> None:
    text = listing([first("4F1C2A0B3C", 10, "Wed Dec  2 09:00:01", "a@x.test"),
                    rcpt("b@x.test")], [first("5A0B1C2D3E", 10, "Wed Dec  2 09:00:01",
                                              "a@x.test"), why(REFUSED)])
    cut = text[: text.index(f"({REFUSED})") + 20]
    report = parse_postfix_mailq(cut, now=NOW)
    assert [m.id for m in report.messages] == ["4F1C2A0B3C", "5A0B1C2D3E"]
    assert report.messages[1].recipients == [] and report.count == 2


def test_text_crlf_and_garbage_lines() -> None:
    text = listing([first("4F1C2A0B3C", 10, "Wed Dec  2 09:00:01", "a@x.test"),
                    why(REFUSED), rcpt("b@x.test")])
    assert parse_postfix_mailq(text.replace("\n", "\r\n"), now=NOW).to_dict() == (
        parse_postfix_mailq(text, now=NOW).to_dict())
    noisy = ("postqueue: warning: Mail system is down -- accessing queue directly\n"
             "\x00\x01 random noise\n" + text)
    assert parse_postfix_mailq(noisy, now=NOW).to_dict() == (
        parse_postfix_mailq(text, now=NOW).to_dict())


@pytest.mark.parametrize("text", [
    "",
    "   \n",
    "sh: 1: mailq: not found\n",
    # sendmail's mailq: its times have no seconds
    "\t\t/var/spool/mqueue (1 request)\n"
    "-----Q-ID----- --Size-- -----Q-Time----- ------------Sender/Recipient-----------\n"
    "6AP4jQbT009721        6 Wed Nov 25 04:45 <root@lab1.lab.test>\n"
    "\t\t\t\t\t <me@ourtest.com>\n\t\tTotal requests: 1\n",
    "MSP Queue status...\n/var/spool/mqueue-client is empty\n",
])
def test_not_postfix_mailq_is_a_parse_error(text: str) -> None:
    with pytest.raises(ParseError):
        parse_postfix_mailq(text, now=NOW)


def test_text_fatal_error_is_a_parse_error() -> None:
    with pytest.raises(ParseError, match=r"postqueue failed: .*Permission denied"):
        parse_postfix_mailq("postqueue: fatal: open /var/spool/postfix/maildrop: "
                            "Permission denied\n", now=NOW)


def test_text_and_json_agree() -> None:
    recipients = [{"address": "a@x.test", "delay_reason": REFUSED}, {"address": "b@x.test"},
                  {"address": "c@x.test", "delay_reason": TIMED_OUT}]
    json_report = parse_postqueue_json(postqueue_j(
        message(recipients=recipients), message("5A0B1C2D3E", "hold", recipients=[]),
        message("6B1C2D3E4F", "active", recipients=[{"address": "d@x.test"}])))
    text_report = parse_postfix_mailq(listing(
        [first("4F1C2A0B3C", 1234, "Wed Dec  2 09:00:01", "root@pbx1.example.com"),
         why(REFUSED), rcpt("a@x.test"), why("reason unavailable"), rcpt("b@x.test"),
         why(TIMED_OUT), rcpt("c@x.test")],
        [first("5A0B1C2D3E!", 1234, "Wed Dec  2 09:00:01", "root@pbx1.example.com")],
        [first("6B1C2D3E4F*", 1234, "Wed Dec  2 09:00:01", "root@pbx1.example.com"),
         rcpt("d@x.test")]), now=NOW)
    for report in (json_report, text_report):
        for msg in report.messages:
            msg.queued_at = None
    assert json_report.to_dict() == text_report.to_dict()


# -- picking the parser ---------------------------------------------------------------

def test_parse_postfix_queue_picks_the_format() -> None:
    assert parse_postfix_queue(postqueue_j(message())).messages[0].queued_at == (
        "2026-12-02T09:00:01+00:00")
    assert parse_postfix_queue(LITERAL, now=NOW).messages[0].queued_at == (
        "2026-12-02T09:00:01")
    assert parse_postfix_queue("\n  \n").count == 0  # postqueue -j's empty queue
    assert parse_postfix_queue("Mail queue is empty\n").count == 0
    warned = "postqueue: warning: Mail system is down -- accessing queue directly\n"
    assert parse_postfix_queue(warned + postqueue_j(message())).count == 1
    assert parse_postfix_queue(warned + LITERAL, now=NOW).count == 1
    with pytest.raises(ParseError):
        parse_postfix_queue("garbage\n")


# -- sendmail's mailq gives the same shape --------------------------------------------

def test_sendmail_mailq_fills_reasons_for_every_recipient() -> None:
    text = ("\t\t/var/spool/mqueue (2 requests)\n"
            "-----Q-ID----- --Size-- -----Q-Time----- ------------Sender/Recipient-----------\n"
            "6AP4mD19010498        4 Wed Nov 25 04:48 <root@lab1.lab.test>\n"
            "                 (Host unknown (Name server: nowhere.lab.test: host not found))\n"
            "\t\t\t\t\t <b@ourtest.com>\n\t\t\t\t\t <a@ourtest.com>\n"
            "6AP4mD19010499        4 Wed Nov 25 04:48 <root@lab1.lab.test>\n"
            "\t\t\t\t\t <c@ourtest.com>\n")
    with_reason, without = parse_mailq(text, now=datetime(2026, 11, 25, 12)).messages
    reason = "Host unknown (Name server: nowhere.lab.test: host not found)"
    assert with_reason.reasons == {"b@ourtest.com": reason, "a@ourtest.com": reason}
    assert without.reasons == {}


def test_listing_time() -> None:
    assert listing_time("Dec  2 09:00:01", "Wed", NOW) == "2026-12-02T09:00:01"
    assert listing_time("Nov 25 04:48", None, NOW) == "2026-11-25T04:48:00"
    assert listing_time("Foo  2 09:00:01", "Wed", NOW) is None
    assert listing_time("Dec  2 09:00:01", "Xyz", NOW) is None
    assert listing_time("Feb 30 09:00:01", None, NOW) is None
    assert listing_time("Dec  2 25:00:01", None, NOW) is None


# -- maillog --------------------------------------------------------------------------

DEFERRED = ("Dec  2 09:00:05 pbx1 postfix/smtp[1234]: 4F1C2A0B3C: to=<me@ourtest.com>, "
            "relay=none, delay=0.05, delays=0.01/0.01/0.03/0, dsn=4.4.1, "
            f"status=deferred ({REFUSED})")
SENT = ("Dec  2 09:10:07 pbx1 postfix/smtp[1240]: 4F1C2A0B3C: to=<me@ourtest.com>, "
        "relay=smarthost.lab.test[10.77.0.3]:587, delay=602, delays=600/0.01/0.5/1.2, "
        "dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as 4NGq3x6Zlbz9tF)")
BOUNCED = ("Dec  2 09:11:00 pbx1 postfix/smtp[1241]: 5A0B1C2D3E: to=<nobody@ourtest.com>, "
           "orig_to=<nobody>, relay=mx.ourtest.com[10.201.0.2]:25, delay=1.2, "
           "delays=0.1/0/0.5/0.6, dsn=5.1.1, status=bounced (host mx.ourtest.com[10.201.0.2] "
           "said: 550 5.1.1 <nobody@ourtest.com>: Recipient address rejected: User unknown "
           "(in reply to RCPT TO command))")
SENDMAIL_DEFERRED = (
    "Dec  2 09:00:05 lab1 sm-mta[7889]: 6AP4jQbT009721: to=<me@ourtest.com>, delay=00:00:01, "
    "xdelay=00:00:00, mailer=esmtp, pri=30296, relay=mx.ourtest.com., dsn=4.0.0, "
    "stat=Deferred: Connection refused by mx.ourtest.com.")
SENDMAIL_SENT = (
    "Dec  2 09:00:06 lab1 sm-mta[7890]: 6AP4jQbT009722: to=<me@ourtest.com>, delay=00:00:01, "
    "xdelay=00:00:01, mailer=relay, pri=30296, relay=smarthost.lab.test. [10.77.0.3], "
    "dsn=2.0.0, stat=Sent (2.0.0 Ok: queued as 4NGq3x6Zlbz9tG)")


def parse(line: str) -> LogRecord:
    record = parse_postfix_line(line, now=NOW)
    assert record is not None, line
    return record


def test_deferred_delivery() -> None:
    record = parse(DEFERRED)
    assert (record.kind, record.host, record.program, record.pid, record.queue_id) == (
        "delivery", "pbx1", "postfix/smtp", 1234, "4F1C2A0B3C")
    assert record.timestamp == "2026-12-02T09:00:05"
    assert record.fields == {
        "to": "<me@ourtest.com>", "relay": "none", "delay": "0.05",
        "delays": "0.01/0.01/0.03/0", "dsn": "4.4.1", "status": "deferred", "reason": REFUSED,
        "stat": f"Deferred: {REFUSED}"}
    assert record.recipients == ["me@ourtest.com"]
    assert record.message.startswith("to=<me@ourtest.com>, relay=none")
    assert summary_key(record.fields["stat"]) == (
        "Deferred: connect to mx.ourtest.com[10.201.0.2]:25: Connection refused")
    assert outcome(record.fields["stat"], record.fields["dsn"]) == "deferred"
    assert outcome(record.fields["stat"]) == "deferred"  # even without its dsn


def test_sent_delivery_groups_with_sendmails() -> None:
    record = parse(SENT)
    assert record.fields["status"] == "sent"
    assert record.fields["reason"] == "250 2.0.0 Ok: queued as 4NGq3x6Zlbz9tF"
    assert record.fields["stat"] == "Sent (2.0.0 Ok: queued as 4NGq3x6Zlbz9tF)"
    assert record.fields["relay"] == "smarthost.lab.test[10.77.0.3]:587"
    sendmail = parse_maillog_line(SENDMAIL_SENT, now=NOW)
    assert sendmail is not None
    assert summary_key(record.fields["stat"]) == summary_key(sendmail.fields["stat"]) == (
        "Sent (Ok: queued)")
    assert outcome(record.fields["stat"], record.fields["dsn"]) == "sent"


def test_bounced_delivery_keeps_the_whole_reason() -> None:
    record = parse(BOUNCED)
    reason = ("host mx.ourtest.com[10.201.0.2] said: 550 5.1.1 <nobody@ourtest.com>: "
              "Recipient address rejected: User unknown (in reply to RCPT TO command)")
    assert record.fields["orig_to"] == "<nobody>"
    assert (record.fields["status"], record.fields["reason"]) == ("bounced", reason)
    assert record.fields["stat"] == f"Bounced: {reason}"
    assert outcome(record.fields["stat"], record.fields["dsn"]) == "bounced"


@pytest.mark.parametrize("status, stat", [
    ("sent (delivered to mailbox)", "Sent (delivered to mailbox)"),
    ("sent (250 OK  1732501234 d9443c01a7-2129sm.55 - gsmtp)",
     "Sent (OK  1732501234 d9443c01a7-2129sm.55 - gsmtp)"),
    ("sent", "Sent"),
    ("deferred (delivery temporarily suspended: connect to x[192.0.2.1]:25: "
     "Connection refused)",
     "Deferred: delivery temporarily suspended: connect to x[192.0.2.1]:25: "
     "Connection refused"),
    ("deferred (SASL authentication failed; server smtp.x[192.0.2.2] said: 535 5.7.8 "
     "Error: authentication failed, see https://x.test/?a=b, code=1)",
     "Deferred: SASL authentication failed; server smtp.x[192.0.2.2] said: 535 5.7.8 "
     "Error: authentication failed, see https://x.test/?a=b, code=1"),
    ("SOFTBOUNCE (host x said: 550 no)", "SOFTBOUNCE: host x said: 550 no"),
    ("undeliverable (unknown user: \"nobody\")", "Undeliverable: unknown user: \"nobody\""),
])
def test_status_as_stat(status: str, stat: str) -> None:
    record = parse("Dec  2 09:00:05 pbx1 postfix/local[9]: 4F1C2A0B3C: to=<a@x.test>, "
                   f"relay=local, delay=0.1, delays=0/0/0/0.1, dsn=2.0.0, status={status}")
    assert record.kind == "delivery" and record.fields["stat"] == stat
    assert "code" not in record.fields  # the reason's commas and = stay in it


def test_qmgr_pickup_cleanup_and_removed() -> None:
    qmgr = parse("Dec  2 09:00:01 pbx1 postfix/qmgr[900]: 4F1C2A0B3C: "
                 "from=<root@pbx1.example.com>, size=1234, nrcpt=2 (queue active)")
    assert qmgr.kind == "received"
    assert qmgr.fields == {"from": "<root@pbx1.example.com>", "size": "1234", "nrcpt": "2",
                           "queue": "active"}
    pickup = parse("Dec  2 09:00:00 pbx1 postfix/pickup[902]: 4F1C2A0B3C: uid=0 from=<root>")
    assert (pickup.kind, pickup.fields) == ("received", {"uid": "0", "from": "<root>"})
    cleanup = parse("Dec  2 09:00:00 pbx1 postfix/cleanup[901]: 4F1C2A0B3C: "
                    "message-id=<20261202090000.4F1C2A0B3C@pbx1.example.com>")
    assert (cleanup.kind, cleanup.fields) == (
        "other", {"message-id": "<20261202090000.4F1C2A0B3C@pbx1.example.com>"})
    removed = parse("Dec  2 09:10:07 pbx1 postfix/qmgr[900]: 4F1C2A0B3C: removed")
    assert (removed.kind, removed.fields, removed.message, removed.queue_id) == (
        "other", {}, "removed", "4F1C2A0B3C")


def test_bounce_notice_and_expiry_are_dsn_records() -> None:
    notice = parse("Dec  2 09:11:00 pbx1 postfix/bounce[1242]: 5A0B1C2D3E: "
                   "sender non-delivery notification: 6B1C2D3E4F")
    assert (notice.kind, notice.fields) == (
        "dsn", {"dsn_queue_id": "6B1C2D3E4F", "reason": "sender non-delivery notification"})
    delay = parse("Dec  2 13:00:00 pbx1 postfix/bounce[1243]: 4F1C2A0B3C: "
                  "sender delay notification: 7C2D3E4F5A")
    assert delay.kind == "dsn" and delay.fields["dsn_queue_id"] == "7C2D3E4F5A"
    expired = parse("Dec  7 09:00:01 pbx1 postfix/qmgr[900]: 4F1C2A0B3C: "
                    "from=<root@pbx1.example.com>, status=expired, returned to sender")
    assert expired.kind == "dsn"
    assert expired.fields == {"from": "<root@pbx1.example.com>", "status": "expired",
                              "reason": "returned to sender",
                              "stat": "Expired: returned to sender"}
    assert expired.timestamp == "2025-12-07T09:00:01"  # Dec 7 2026 is still to come


def test_daemon_lines() -> None:
    start = parse("Dec  2 08:59:00 pbx1 postfix/postfix-script[800]: "
                  "starting the Postfix mail system")
    assert (start.kind, start.fields, start.queue_id) == ("daemon", {}, None)
    for text in ("reload -- version 3.7.11, configuration /etc/postfix",
                 "daemon started -- version 3.7.11, configuration /etc/postfix"):
        record = parse(f"Dec  2 08:59:01 pbx1 postfix/master[801]: {text}")
        assert record.kind == "daemon" and record.message == text
        assert record.fields == {"version": "3.7.11", "configuration": "/etc/postfix"}
    for text in ("terminating on signal 15", "stopping the Postfix mail system",
                 "refreshing the Postfix mail system"):
        assert parse(f"Dec  2 08:59:01 pbx1 postfix/master[801]: {text}").kind == "daemon"


def test_warning_and_fatal_lines() -> None:
    warning = parse("Dec  2 09:00:05 pbx1 postfix/smtp[1234]: warning: "
                    "database /etc/postfix/sasl_passwd.db is older than source file "
                    "/etc/postfix/sasl_passwd")
    assert (warning.kind, warning.fields, warning.queue_id) == (
        "other", {"severity": "warning"}, None)
    assert warning.message.startswith("warning: database /etc/postfix/sasl_passwd.db")
    fatal = parse("Dec  2 09:00:05 pbx1 postfix/smtp[1234]: fatal: "
                  "open database /etc/postfix/sasl_passwd.db: No such file or directory")
    assert (fatal.kind, fatal.fields) == ("syserr", {"severity": "fatal"})
    header = parse("Dec  2 09:00:05 pbx1 postfix/cleanup[1]: 4F1C2A0B3C: warning: "
                   "header Subject: test from local; from=<root@pbx1> to=<me@ourtest.com>")
    assert header.queue_id == "4F1C2A0B3C" and header.fields == {"severity": "warning"}


def test_rfc3339_multi_instance_and_long_ids() -> None:
    record = parse("2026-12-02T09:00:05.123456+00:00 pbx1 postfix-out/smtp[1]: "
                   "4cG3kB0bXyz1qW: to=<me@ourtest.com>, relay=none, delay=300, "
                   f"delays=299/0.01/0.03/0, dsn=4.4.1, status=deferred ({REFUSED})")
    assert record.timestamp == "2026-12-02T09:00:05.123456+00:00"
    assert (record.program, record.queue_id, record.kind) == (
        "postfix-out/smtp", "4cG3kB0bXyz1qW", "delivery")
    zulu = parse("2026-12-02T09:00:05Z mx postfix/submission/smtpd[7]: connect from "
                 "unknown[192.0.2.7]")
    assert (zulu.timestamp, zulu.program, zulu.kind, zulu.queue_id) == (
        "2026-12-02T09:00:05Z", "postfix/submission/smtpd", "other", None)


def test_noqueue_reject_and_cleanup_reject() -> None:
    reject = parse("Dec  2 09:00:05 pbx1 postfix/smtpd[77]: NOQUEUE: reject: RCPT from "
                   "unknown[198.51.100.9]: 554 5.7.1 <x@elsewhere.test>: Relay access denied; "
                   "from=<spam@bad.test> to=<x@elsewhere.test> proto=ESMTP helo=<bad>")
    assert (reject.kind, reject.queue_id) == ("reject", None)
    assert reject.fields == {
        "reject": "RCPT from unknown[198.51.100.9]: 554 5.7.1 <x@elsewhere.test>: "
                  "Relay access denied",
        "from": "<spam@bad.test>", "to": "<x@elsewhere.test>", "proto": "ESMTP",
        "helo": "<bad>"}
    assert reject.recipients == ["x@elsewhere.test"]
    content = parse("Dec  2 09:00:05 pbx1 postfix/cleanup[78]: 4F1C2A0B3C: reject: header "
                    "Subject: buy now from local; from=<root@pbx1> to=<me@ourtest.com>: "
                    "5.7.1 message content rejected")
    assert content.kind == "reject" and content.queue_id == "4F1C2A0B3C"
    assert content.fields["reject"] == ("header Subject: buy now from local: "
                                        "5.7.1 message content rejected")
    hold = parse("Dec  2 09:00:05 pbx1 postfix/cleanup[78]: 4F1C2A0B3C: hold: header "
                 "X-Spam: yes from local; from=<root@pbx1> to=<me@ourtest.com>")
    assert hold.kind == "other" and hold.fields["action"] == "hold"


def test_tls_and_auth_lines() -> None:
    tls = parse("Dec  2 09:00:05 pbx1 postfix/smtp[1234]: Trusted TLS connection established "
                "to smtp-relay.gmail.com[142.250.1.1]:587: TLSv1.3 with cipher "
                "TLS_AES_256_GCM_SHA384 (256/256 bits) key-exchange X25519 "
                "server-signature ECDSA (P-256) server-digest SHA256")
    assert tls.kind == "tls"
    assert tls.fields == {"STARTTLS": "client", "verify": "Trusted",
                          "relay": "smtp-relay.gmail.com[142.250.1.1]:587",
                          "version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384",
                          "bits": "256/256"}
    inbound = parse("Dec  2 09:00:05 mx postfix/smtpd[9]: Anonymous TLS connection "
                    "established from unknown[192.0.2.7]: TLSv1.2 with cipher "
                    "ECDHE-RSA-AES256-GCM-SHA384 (256/256 bits)")
    assert inbound.fields["STARTTLS"] == "server" and inbound.fields["verify"] == "Anonymous"
    auth = parse("Dec  2 09:00:05 mx postfix/smtpd[9]: 4F1C2A0B3C: client=unknown[192.0.2.7], "
                 "sasl_method=PLAIN, sasl_username=pbx")
    assert auth.kind == "auth" and auth.fields["sasl_username"] == "pbx"
    client = parse("Dec  2 09:00:05 mx postfix/smtpd[9]: 4F1C2A0B3C: client=unknown[192.0.2.7]")
    assert (client.kind, client.fields) == ("other", {"client": "unknown[192.0.2.7]"})


@pytest.mark.parametrize("line", [
    "Dec  2 09:00:05 pbx1 sshd[1]: Accepted publickey for root",
    "Dec  2 09:00:05 pbx1 CRON[2]: (root) CMD (run-parts /etc/cron.hourly)",
    "Dec  2 09:00:05 pbx1 postfixadmin[3]: to=<a@b>, status=sent",
    "Dec  2 09:00:05 pbx1 opendkim[4]: 4F1C2A0B3C: DKIM-Signature field added",
    SENDMAIL_DEFERRED,
    "garbage",
    "",
    "Dec  2 09:00:05",
    "Dec  2 09:00:05 pbx1 postfix/smtp[x]: not a pid",
])
def test_other_programs_and_garbage_give_none(line: str) -> None:
    assert parse_postfix_line(line, now=NOW) is None


def test_is_postfix_program() -> None:
    for name in ("postfix/smtp", "postfix-out/qmgr", "postfix/submission/smtpd",
                 "postfix/postfix-script", "postfix/sendmail", "postfix"):
        assert is_postfix_program(name), name
    for name in ("postfixadmin", "sendmail", "sm-mta", "smtp", "postfix/", "xpostfix/smtp"):
        assert not is_postfix_program(name), name


def test_parse_any_line_reads_both() -> None:
    sendmail = parse_any_line(SENDMAIL_DEFERRED, now=NOW)
    postfix = parse_any_line(DEFERRED, now=NOW)
    assert sendmail is not None and sendmail.program == "sm-mta"
    assert postfix is not None and postfix.program == "postfix/smtp"
    # Postfix's sendmail command logs as postfix/sendmail: Postfix's, not sendmail's
    compat = parse_any_line("Dec  2 09:00:05 pbx1 postfix/sendmail[5]: fatal: "
                            "No recipient addresses found in message header", now=NOW)
    assert compat is not None and compat.kind == "syserr"
    assert compat.fields == {"severity": "fatal"}
    assert parse_any_line("Dec  2 09:00:05 pbx1 sshd[1]: hello", now=NOW) is None


def test_summary_over_both_mtas() -> None:
    lines = [DEFERRED, DEFERRED.replace("09:00:05", "09:05:05"), SENT, BOUNCED,
             SENDMAIL_DEFERRED, SENDMAIL_SENT,
             "Dec  2 09:00:01 pbx1 postfix/qmgr[900]: 4F1C2A0B3C: from=<a@b>, size=1, nrcpt=1 "
             "(queue active)",
             "Dec  2 09:10:07 pbx1 postfix/qmgr[900]: 4F1C2A0B3C: removed",
             "Dec  2 09:00:05 pbx1 sshd[1]: Accepted publickey for root"]
    records = [r for r in (parse_any_line(line, now=NOW) for line in lines) if r is not None]
    assert len(records) == 8
    assert summarize(records) == {
        "deliveries": 6,
        "by_stat": {
            f"Deferred: {REFUSED}": 2,
            "Sent (Ok: queued)": 2,
            "Bounced: host mx.ourtest.com[10.201.0.2] said: 550 5.1.1 <nobody@ourtest.com>: "
            "Recipient address rejected: User unknown (in reply to RCPT TO command)": 1,
            "Deferred: Connection refused by mx.ourtest.com.": 1,
        },
        "sent": 2, "deferred": 3, "bounced": 1, "other": 0, "local_handoffs": 0,
        "problems": [],
    }


def test_records_are_plain_json_and_fit_the_schema() -> None:
    for line in (DEFERRED, SENT, BOUNCED):
        doc = json.loads(json.dumps(parse(line).to_dict()))
        assert LogRecordSchema().validate(doc) == {}
        assert set(doc) == {"timestamp", "host", "program", "pid", "queue_id", "kind",
                            "fields", "message", "recipients", "problem"}


def test_split_syslog_line() -> None:
    parts = split_syslog_line(DEFERRED + "\r\n", now=NOW)
    assert parts is not None
    assert (parts.timestamp, parts.host, parts.program, parts.pid) == (
        "2026-12-02T09:00:05", "pbx1", "postfix/smtp", 1234)
    assert parts.message.startswith("4F1C2A0B3C: to=<me@ourtest.com>")
    assert split_syslog_line("garbage") is None


# -- captured output: Postfix 3.7.11 on the lab's Debian and CentOS hosts ----------------
#
# tests/fixtures/postfix/README.md: a new capture changes the queue ids, times, the lab's
# addresses (10.X.0.N) and how many retries the maillog shows. Those are read from the
# raw files (never through the parsers under test) and checked across files: an id in a
# listing is the id the maillog gave that message; everything else is pinned.

FIXTURES = Path(__file__).parent.parent / "fixtures" / "postfix"
LISTINGS = ("empty", "one-deferred", "multi-recipient", "long-reason", "hold", "active",
            "several-deferred", "flushed-deferred")
SENDER = "voicemail@pbx-deb.lab.test"
SHORT_ID = re.compile(r"^[0-9A-F]{10,12}$")


def captured(name: str) -> str:
    return (FIXTURES / name).read_text()


def lab_address(host: str) -> str:
    """The lab address ``host`` had in this capture, as the maillog printed it."""
    match = re.search(rf"{re.escape(host)}\[(10\.\d+\.0\.\d+)\]", captured("debian-mail.log"))
    assert match, host
    return match.group(1)


def refused(host: str = "mx.ourtest.com") -> str:
    return f"connect to {host}[{lab_address(host)}]:25: Connection refused"


def suspended() -> str:
    return f"delivery temporarily suspended: {refused()}"


def capture_now() -> datetime:
    """A little after the capture, in the hosts' time (UTC): picks the listings' year."""
    arrival = json.loads(captured("one-deferred.postqueue-j.jsonl"))["arrival_time"]
    return datetime.fromtimestamp(arrival, UTC).replace(tzinfo=None) + timedelta(hours=1)


def both(stem: str) -> tuple[MailqReport, MailqReport]:
    """The JSON and the text listing of one capture."""
    return (parse_postqueue_json(captured(f"{stem}.postqueue-j.jsonl")),
            parse_postfix_mailq(captured(f"{stem}.mailq.txt"), now=capture_now()))


def log_ids(pattern: str) -> list[str]:
    """Queue ids of the Debian maillog lines matching ``pattern`` after the id, in order."""
    found = re.findall(rf"postfix/\w+\[\d+\]: ([0-9A-F]+): {pattern}",
                       captured("debian-mail.log"), re.MULTILINE)
    return list(dict.fromkeys(found))


@pytest.mark.parametrize("stem", LISTINGS)
def test_captured_json_and_text_agree(stem: str) -> None:
    json_report, text_report = both(stem)
    json_doc, text_doc = json_report.to_dict(), text_report.to_dict()
    # the lab hosts run on UTC: the text's host-local time is the JSON's UTC one
    for json_msg, text_msg in zip_strict(json_doc["messages"], text_doc["messages"]):
        assert json_msg["queued_at"] == text_msg["queued_at"] + "+00:00"
        assert SHORT_ID.match(json_msg["id"])
        json_msg["queued_at"] = text_msg["queued_at"] = None
    assert json_doc == text_doc
    assert QueueSchema().validate(json.loads(json.dumps(json_report.to_dict()))) == {}
    # and the dispatcher picks each one's parser
    assert parse_postfix_queue(captured(f"{stem}.postqueue-j.jsonl")).to_dict() == (
        json_report.to_dict())
    assert parse_postfix_queue(captured(f"{stem}.mailq.txt"), now=capture_now()).to_dict() == (
        text_report.to_dict())


def test_captured_empty() -> None:
    assert captured("empty.postqueue-j.jsonl") == ""  # postqueue -j prints nothing
    assert captured("empty.mailq.txt") == "Mail queue is empty\n"
    for report in both("empty"):
        assert (report.count, report.sections, report.messages) == (0, {}, [])


def test_captured_one_deferred() -> None:
    (queue_id, *_) = log_ids(r"to=<someone@ourtest.com>, .*status=deferred")
    for report in both("one-deferred"):
        assert (report.count, report.sections) == (1, {"deferred": 1})
        (msg,) = report.messages
        assert (msg.id, msg.size, msg.sender, msg.flags, msg.section) == (
            queue_id, 324, SENDER, "", "deferred")
        assert (msg.recipients, msg.reason) == (["someone@ourtest.com"], refused())
        assert msg.reasons == {"someone@ourtest.com": refused()}
        assert not msg.processing and msg.quarantine is None
    json_msg = both("one-deferred")[0].messages[0]
    assert json_msg.queued_at is not None and json_msg.queued_at.endswith("+00:00")


def test_captured_multi_recipient() -> None:
    (queue_id,) = log_ids(r"from=<voicemail@pbx-deb\.lab\.test>, size=\d+, nrcpt=4 ")
    closed = refused("closed.lab.test")
    for report in both("multi-recipient"):
        (msg,) = report.messages
        assert (msg.id, msg.size, msg.sender, report.count) == (queue_id, 381, SENDER, 1)
        assert msg.recipients == ["pager@closed.lab.test", "alice@ourtest.com",
                                  "bob@ourtest.com", "carol@ourtest.com"]
        assert msg.reason == closed
        assert msg.reasons == {"pager@closed.lab.test": closed, "alice@ourtest.com": refused(),
                               "bob@ourtest.com": refused(), "carol@ourtest.com": refused()}


def test_captured_long_reasons_start_at_column_zero() -> None:
    assert "\n(Host or domain name not found." in captured("long-reason.mailq.txt")
    (queue_id,) = log_ids(r"from=<voicemail@pbx-deb\.lab\.test>, size=\d+, nrcpt=3 ")
    # its third recipient bounced: gone from the queue
    assert log_ids(r"to=<nobody@nowhere\.ourtest\.com>, .*status=bounced") == [queue_id]
    not_found = ("Host or domain name not found. Name service error for name={} type=MX: "
                 "Host not found, try again")
    for report in both("long-reason"):
        (msg,) = report.messages
        assert (msg.id, msg.size, report.count) == (queue_id, 389, 1)
        assert msg.recipients == ["someone@example.org", "voicemail@pbx.customer-site.invalid"]
        assert msg.reasons == {
            "someone@example.org": not_found.format("example.org"),
            "voicemail@pbx.customer-site.invalid": not_found.format("pbx.customer-site.invalid")}
        assert msg.reason == not_found.format("example.org")


def test_captured_several_and_flushed_deferred() -> None:
    four = set(log_ids(r"from=<voicemail@pbx-deb\.lab\.test>, size=326, nrcpt=1 "))
    assert len(four) == 4
    # postfix/error deferred those the queue manager held when the destination was dead
    dead = set(log_ids(r"to=<someone@ourtest\.com>, .*delivery temporarily suspended"))
    assert dead and dead < four
    for stem in ("several-deferred", "flushed-deferred"):
        for report in both(stem):
            assert (report.count, report.sections) == (4, {"deferred": 4})
            assert {m.id for m in report.messages} == four
            assert {(m.size, m.sender, m.flags) for m in report.messages} == {(326, SENDER, "")}
            assert {tuple(m.recipients) for m in report.messages} == {("someone@ourtest.com",)}
            for msg in report.messages:
                expected = suspended() if stem == "flushed-deferred" and msg.id in dead else (
                    refused())
                assert msg.reasons == {"someone@ourtest.com": expected} and msg.reason == expected


def test_captured_hold() -> None:
    (held_id,) = log_ids("placed on hold")
    flushed = {m.id: m.reason for m in both("flushed-deferred")[0].messages}
    for report in both("hold"):
        assert (report.count, report.sections) == (4, {"deferred": 3, "hold": 1})
        assert {m.id for m in report.messages} == set(flushed)
        (held,) = [m for m in report.messages if m.section == "hold"]
        assert (held.id, held.flags, held.processing) == (held_id, "!", False)
        assert {m.flags for m in report.messages if m is not held} == {""}
        # holding keeps each message's reason
        assert {m.id: m.reason for m in report.messages} == flushed
    assert f"\n{held_id}!     326 " in captured("hold.mailq.txt")


def test_captured_active_message_has_no_reason_yet() -> None:
    queued = set(log_ids(r"from=<voicemail@pbx-deb\.lab\.test>, size=324, nrcpt=1 "))
    tried = set(log_ids("to=<"))
    for report in both("active"):
        (msg,) = report.messages
        # being delivered to the relay that never greets: the log has no attempt for it
        assert msg.id in queued - tried
        assert (msg.flags, msg.section, msg.processing, msg.size) == ("*", "active", True, 324)
        assert (msg.recipients, msg.reason, msg.reasons) == (["someone@ourtest.com"], None, {})
        assert report.sections == {"active": 1}


@pytest.mark.parametrize("name, text", [
    ("postqueue-s-not-fast-flush.stderr.txt",
     'postqueue: fatal: Flush service is not configured for destination "ourtest.com"'),
    ("sendmail-qS.stderr.txt", "sendmail: fatal: -qS is not implemented"),
])
def test_captured_fatal_errors(name: str, text: str) -> None:
    # as they would read if the caller merged stderr into a listing
    assert captured(name) == text + "\n"
    with pytest.raises(ParseError, match=re.escape(f"postqueue failed: {text}")):
        parse_postfix_queue(captured(name), now=capture_now())
    with pytest.raises(ParseError, match="postqueue failed"):
        parse_postqueue_json(captured(name))


def maillog(name: str) -> list[LogRecord]:
    lines = captured(name).splitlines()
    parsed = [parse_postfix_line(line, now=capture_now()) for line in lines]
    assert all(r is not None for r in parsed), "every captured line is Postfix's"
    return [r for r in parsed if r is not None]


def expected_kind(line: str) -> str:
    """What each captured line is, told from its text alone."""
    if re.search(r": to=<[^>]*>, .*, status=", line):
        return "delivery"
    if "(queue active)" in line or "postfix/pickup[" in line:
        return "received"
    if "sender non-delivery notification: " in line:
        return "dsn"
    if "]: fatal: " in line:
        return "syserr"
    if re.search(r"]: (?:(?:starting|stopping|refreshing) the Postfix mail system|"
                 r"daemon started -- |reload -- |terminating on signal)", line):
        return "daemon"
    return "other"


@pytest.mark.parametrize("name", ["debian-mail.log", "centos-maillog"])
def test_captured_maillog_kinds(name: str) -> None:
    records = maillog(name)
    lines = captured(name).splitlines()
    assert [r.kind for r in records] == [expected_kind(line) for line in lines]
    assert all(r.host == ("pbx-deb" if name.startswith("debian") else "pbx-rhel")
               for r in records)
    for record in records:
        assert LogRecordSchema().validate(json.loads(json.dumps(record.to_dict()))) == {}


def test_captured_debian_maillog_summary() -> None:
    records = maillog("debian-mail.log")
    text = captured("debian-mail.log")
    not_found = "Host or domain name not found. Name service error for name={} type={}: {}"
    summary = summarize(records)
    assert summary["by_stat"] == {
        f"Deferred: {refused()}": text.count(f"status=deferred ({refused()})"),
        f"Deferred: {suspended()}": text.count(f"status=deferred ({suspended()})"),
        f"Deferred: {refused('closed.lab.test')}": 1,
        "Deferred: " + not_found.format("example.org", "MX", "Host not found, try again"): 1,
        "Deferred: " + not_found.format("pbx.customer-site.invalid", "MX",
                                        "Host not found, try again"): 1,
        "Bounced: " + not_found.format("nowhere.ourtest.com", "AAAA", "Host not found"): 1,
        'Bounced: unknown user: "voicemail"': 1,
        "Sent (Ok: queued)": 1,
    }
    deliveries = text.count(", status=")
    assert summary == {"deliveries": deliveries, "by_stat": summary["by_stat"], "sent": 1,
                       "deferred": deliveries - 3, "bounced": 2, "other": 0,
                       "local_handoffs": 0, "problems": []}


def test_captured_debian_maillog_records() -> None:
    records = maillog("debian-mail.log")
    (first_id, *_) = log_ids(r"to=<someone@ourtest.com>, .*status=deferred")
    first_delivery = next(r for r in records if r.kind == "delivery")
    assert (first_delivery.queue_id, first_delivery.program) == (first_id, "postfix/smtp")
    assert first_delivery.recipients == ["someone@ourtest.com"]
    assert first_delivery.timestamp.startswith(capture_now().strftime("%Y-%m-%dT"))
    assert set(first_delivery.fields) == {"to", "relay", "delay", "delays", "dsn", "status",
                                          "reason", "stat"}
    assert (first_delivery.fields["relay"], first_delivery.fields["dsn"]) == ("none", "4.4.1")
    assert first_delivery.fields["stat"] == f"Deferred: {refused()}"
    assert re.fullmatch(r"[\d.]+/[\d.]+/[\d.]+/[\d.]+", first_delivery.fields["delays"])
    (sent,) = [r for r in records if r.fields.get("status") == "sent"]
    assert sent.fields["relay"] == f"smarthost.lab.test[{lab_address('smarthost.lab.test')}]:2525"
    assert (sent.fields["reason"], sent.fields["stat"]) == (
        "250 2.0.0 Ok: queued", "Sent (2.0.0 Ok: queued)")
    assert {r.kind for r in records if r.program == "postfix/error"} == {"delivery"}
    pickup = next(r for r in records if r.program == "postfix/pickup")
    assert (pickup.kind, pickup.fields) == ("received", {"uid": "0", "from": f"<{SENDER}>"})
    (bounce_in,) = [r for r in records if r.fields.get("from") == "<>"]
    assert bounce_in.fields == {"from": "<>", "size": "2481", "nrcpt": "1", "queue": "active"}
    (notice,) = [r for r in records if r.kind == "dsn"]
    (long_id,) = log_ids(r"from=<voicemail@pbx-deb\.lab\.test>, size=\d+, nrcpt=3 ")
    assert (notice.queue_id, notice.fields["dsn_queue_id"]) == (long_id, bounce_in.queue_id)
    assert [(r.program, r.message) for r in records if r.kind == "syserr"] == [
        ("postfix/postqueue",
         'fatal: Flush service is not configured for destination "ourtest.com"'),
        ("postfix/sendmail", "fatal: -qS is not implemented")]
    (held,) = [r for r in records if r.message == "placed on hold"]
    assert (held.kind, held.program) == ("other", "postfix/postsuper")
    daemon = [r for r in records if r.kind == "daemon"]
    assert daemon[1].fields == {"version": "3.7.11", "configuration": "/etc/postfix"}
    # postfix stop, then start
    assert [r.message for r in daemon[-4:]] == [
        "stopping the Postfix mail system", "terminating on signal 15",
        "starting the Postfix mail system",
        "daemon started -- version 3.7.11, configuration /etc/postfix"]


def test_captured_centos_maillog() -> None:
    records = maillog("centos-maillog")
    # the postfix command itself logs as plain "postfix"
    notes = [r for r in records if r.program == "postfix"]
    assert notes and {r.kind for r in notes} == {"other"}
    assert notes[0].message == "Postfix is using backwards-compatible default settings"
    assert summarize(records) == {
        "deliveries": 2, "by_stat": {f"Deferred: {refused()}": 1, "Sent (Ok: queued)": 1},
        "sent": 1, "deferred": 1, "bounced": 0, "other": 0, "local_handoffs": 0,
        "problems": []}
    (sent,) = [r for r in records if r.fields.get("status") == "sent"]
    (deferred,) = [r for r in records if r.fields.get("status") == "deferred"]
    assert sent.queue_id == deferred.queue_id and SHORT_ID.match(sent.queue_id or "")
    assert sent.fields["relay"] == f"smarthost.lab.test[{lab_address('smarthost.lab.test')}]:2525"


def test_captured_logs_of_both_mtas_summarised_together() -> None:
    sendmail_log = (Path(__file__).parent.parent / "fixtures" / "sendmail" / "mail.log")
    lines = [*sendmail_log.read_text().splitlines(), *captured("centos-maillog").splitlines()]
    mixed = [r for r in (parse_any_line(line, now=capture_now()) for line in lines)
             if r is not None]
    assert len(mixed) == len(lines)
    summary = summarize(mixed)
    assert summary["deliveries"] == 15 + 2
    # sendmail's "Sent (2.0.0 Ok: queued)" and Postfix's "sent (250 2.0.0 Ok: queued)"
    assert summary["by_stat"]["Sent (Ok: queued)"] == 2 + 1
    assert summary["by_stat"][f"Deferred: {refused()}"] == 1
    assert (summary["sent"], summary["deferred"], summary["bounced"]) == (5 + 1, 8 + 1, 2)
