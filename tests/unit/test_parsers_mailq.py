"""parse_mailq: output captured from Debian's sendmail 8.17, plus hand-written cases for the
formats the captures lack (CentOS's single section, status characters, mailq -v...)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from shared.compat import UTC
from shared.errors import ParseError
from shared.sendmail.mailq import parse_mailq, resolve_year

FIXTURES = Path(__file__).parent.parent / "fixtures" / "sendmail"
#: the captures were taken on Wed Nov 25 2026, around 04:50
NOW = datetime(2026, 11, 25, 12, 0)
COLUMNS = ("-----Q-ID----- --Size-- -----Q-Time----- "
           "------------Sender/Recipient-----------")


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


# -- captured output ----------------------------------------------------------------

def test_deferred_queue_both_sections() -> None:
    report = parse_mailq(fixture("mailq-deferred.txt"), now=NOW)
    assert report.count == 4
    assert report.sections == {"msp": 0, "mta": 4}
    assert [m.id for m in report.messages] == [
        "6AP4mD19010500", "6AP4mDlP010506", "6AP4jQbT009721", "6AP4mD19010498"]
    assert {m.section for m in report.messages} == {"mta"}


def test_deferred_connection_refused() -> None:
    refused = parse_mailq(fixture("mailq-deferred.txt"), now=NOW).messages[2]
    assert refused.id == "6AP4jQbT009721"
    assert refused.size == 6
    assert refused.queued_at == "2026-11-25T04:45:00"
    assert refused.sender == "root@lab1.lab.test"
    assert refused.recipients == ["me@ourtest.com"]
    assert refused.reason == "Deferred: Connection refused by mx.ourtest.com."
    assert refused.flags == "" and not refused.processing and refused.quarantine is None


def test_host_unknown_with_two_recipients() -> None:
    multi = parse_mailq(fixture("mailq-deferred.txt"), now=NOW).messages[3]
    assert multi.recipients == ["b@ourtest.com", "a@ourtest.com"]
    # the reason holds parentheses of its own
    assert multi.reason == "Host unknown (Name server: nowhere.lab.test: host not found)"
    assert multi.size == 4


def test_mailer_daemon_bounces() -> None:
    bounces = parse_mailq(fixture("mailq-deferred.txt"), now=NOW).messages[:2]
    for bounce in bounces:
        assert bounce.sender == "MAILER-DAEMON"
        assert bounce.recipients == ["root@lab1.lab.test"]
        assert bounce.reason == "Operating system error"
        assert bounce.queued_at == "2026-11-25T04:48:00"
    assert [b.size for b in bounces] == [1554, 1519]


def test_after_restart() -> None:
    report = parse_mailq(fixture("mailq-after-restart.txt"), now=NOW)
    assert report.count == 2 and report.sections == {"msp": 0, "mta": 2}
    assert [m.id for m in report.messages] == ["6AP4mD19010500", "6AP4mDlP010506"]


def test_mailq_empty_fixture_as_captured() -> None:
    # Despite its name, this capture still lists the two undeliverable bounces.
    report = parse_mailq(fixture("mailq-empty.txt"), now=NOW)
    assert report.count == 2 and report.sections == {"msp": 0, "mta": 2}


def test_to_dict_is_plain_json() -> None:
    report = parse_mailq(fixture("mailq-deferred.txt"), now=NOW)
    doc = json.loads(json.dumps(report.to_dict()))
    assert set(doc) == {"count", "sections", "messages"}
    assert doc["count"] == 4 and doc["sections"] == {"msp": 0, "mta": 4}
    assert doc["messages"][2] == {
        "id": "6AP4jQbT009721", "size": 6, "queued_at": "2026-11-25T04:45:00",
        "sender": "root@lab1.lab.test", "recipients": ["me@ourtest.com"],
        "reason": "Deferred: Connection refused by mx.ourtest.com.", "flags": "",
        "section": "mta", "quarantine": None,
        "reasons": {"me@ourtest.com": "Deferred: Connection refused by mx.ourtest.com."},
        "processing": False}


# -- hand-written: layouts ----------------------------------------------------------

def test_debian_both_queues_empty() -> None:
    text = ("MSP Queue status...\n/var/spool/mqueue-client is empty\n\t\tTotal requests: 0\n"
            "MTA Queue status...\n/var/spool/mqueue is empty\n\t\tTotal requests: 0\n")
    report = parse_mailq(text, now=NOW)
    assert report.count == 0 and report.messages == []
    assert report.sections == {"msp": 0, "mta": 0}


def test_centos_single_section_with_status_characters() -> None:
    text = f"""\t\t/var/spool/mqueue (4 requests)
{COLUMNS}
u3B84xT9931967*    1234 Tue Apr 12 11:21 <root@sipserver1.ourtest.com>
                 (Deferred: Connection timed out with ourtest.com.)
\t\t\t\t\t <me@ourtest.com>
u3B84xT9931968X     100 Tue Apr 12 11:22 <root@sipserver1.ourtest.com>
\t\t\t\t\t <you@ourtest.com>
u3B84xT9931969-     100 Tue Apr 12 11:23 <root@sipserver1.ourtest.com>
\t\t\t\t\t <them@ourtest.com>
u3B84xT9931970      100 Tue Apr 12 11:24 <root@sipserver1.ourtest.com>
\t\t\t\t\t <us@ourtest.com>
\t\tTotal requests: 4
"""
    report = parse_mailq(text, now=NOW)
    assert report.count == 4 and report.sections == {"mta": 4}
    delivering, overloaded, young, plain = report.messages
    assert (delivering.id, delivering.flags, delivering.processing) == (
        "u3B84xT9931967", "*", True)
    assert delivering.reason == "Deferred: Connection timed out with ourtest.com."
    assert delivering.queued_at == "2026-04-12T11:21:00"
    # "X" is the status, not the last character of the id
    assert (overloaded.id, overloaded.flags, overloaded.processing) == (
        "u3B84xT9931968", "X", False)
    assert overloaded.reason is None and overloaded.recipients == ["you@ourtest.com"]
    assert (young.id, young.flags) == ("u3B84xT9931969", "-")
    assert (plain.id, plain.flags) == ("u3B84xT9931970", "")
    assert {m.section for m in report.messages} == {"mta"}


def test_centos_client_queue_is_the_msp_section() -> None:
    report = parse_mailq("/var/spool/clientmqueue is empty\n", now=NOW)
    assert report.sections == {"msp": 0} and report.count == 0


def test_one_request() -> None:
    text = (f"\t\t/var/spool/mqueue (1 request)\n{COLUMNS}\n"
            "6AP4vDMt013057     512 Wed Nov 25 04:57 <asterisk@pbx1.example.com>\n"
            "                 (Deferred: Connection timed out with ourtest.com.)\n"
            "\t\t\t\t\t <voicemail@ourtest.com>\n")
    report = parse_mailq(text, now=NOW)
    assert report.count == 1 and report.sections == {"mta": 1}
    (message,) = report.messages
    assert message.sender == "asterisk@pbx1.example.com"
    assert message.recipients == ["voicemail@ourtest.com"]


def test_only_some_printed_counts_them_all() -> None:
    text = (f"\t\t/var/spool/mqueue (250 requests, only 1 printed)\n{COLUMNS}\n"
            "6AP4vDMt013057     512 Wed Nov 25 04:57 <a@example.com>\n"
            "\t\t\t\t\t <b@example.com>\n")
    report = parse_mailq(text, now=NOW)
    assert len(report.messages) == 1
    assert report.count == 250 and report.sections == {"mta": 250}


def test_body_type_quarantine_and_truncated_reason() -> None:
    text = (f"\t\t/var/spool/mqueue (2 requests)\n{COLUMNS}\n"
            "6AP4vDMt013057     512 Wed Nov 25 04:57 <a@example.com>\n"
            "     QUARANTINE: held by milter for review\n"
            "      8BITMIME   (Deferred: 421 4.7.0 [TSS04] Messages from 192.0.2.7 tempora)\n"
            "\t\t\t\t\t <b@example.com>\n"
            "6AP4vDMt013058     512 Wed Nov 25 04:58 <a@example.com>\n"
            "          7BIT\n"
            "\t\t\t\t\t <c@example.com>\n")
    first, second = parse_mailq(text, now=NOW).messages
    assert first.quarantine == "held by milter for review"
    assert first.reason == "Deferred: 421 4.7.0 [TSS04] Messages from 192.0.2.7 tempora"
    assert first.recipients == ["b@example.com"]
    # a body type alone is not a recipient
    assert second.reason is None and second.recipients == ["c@example.com"]


def test_verbose_listing() -> None:
    text = """\t\t/var/spool/mqueue (1 request)
-----Q-ID----- --Size-- -Priority- ---Q-Time--- --------Sender/Recipient--------
6AP4jQbT009721*       6      30296+Nov 25 04:45 <root@lab1.lab.test>
                 (Deferred: Connection refused by mx.ourtest.com.)
\t\t\t\t\t\t(---root---)
\t\t\t\t\t\t<me@ourtest.com>
"""
    (message,) = parse_mailq(text, now=NOW).messages
    assert message.flags == "*+" and message.processing
    assert message.queued_at == "2026-11-25T04:45:00"
    assert message.recipients == ["me@ourtest.com"]
    assert message.reason == "Deferred: Connection refused by mx.ourtest.com."


def test_entries_sendmail_could_not_read() -> None:
    text = (f"\t\t/var/spool/mqueue (3 requests)\n{COLUMNS}\n"
            "6AP4vDMt013057 (job completed)\n"
            "6AP4vDMt013058 (permission denied)\n"
            "6AP4vDMt013059?      -1 Wed Nov 25 04:57 <a@example.com>\n"
            "\t\t\t\t\t <b@example.com> (no control file)\n")
    report = parse_mailq(text, now=NOW)
    # delivered while mailq ran: gone, and not counted
    assert [m.id for m in report.messages] == ["6AP4vDMt013058", "6AP4vDMt013059"]
    assert report.count == 2
    denied, lost = report.messages
    assert (denied.size, denied.reason, denied.queued_at) == (-1, "permission denied", None)
    assert (lost.size, lost.flags, lost.queued_at) == (-1, "?", None)
    assert lost.recipients == ["b@example.com"]


def test_short_old_style_id_is_right_aligned() -> None:
    text = (f"\t\t/var/spool/mqueue (1 request)\n{COLUMNS}\n"
            "     AAA01234     100 Wed Nov 25 04:57 <a@example.com>\n"
            "\t\t\t\t\t <b@example.com>\n")
    (message,) = parse_mailq(text, now=NOW).messages
    assert message.id == "AAA01234" and message.recipients == ["b@example.com"]


def test_garbage_lines_are_skipped() -> None:
    text = ("MTA Queue status...\n"
            "WARNING: RunAsUser for MSP ignored, check group ids (egid=8, want=51)\n"
            f"\t\t/var/spool/mqueue (1 request)\n{COLUMNS}\n"
            "6AP4vDMt013057     512 Wed Nov 25 04:57 <a@example.com>\n"
            "\t\t\t\t\t <b@example.com>\n"
            "\x00\x01 random noise\n"
            "\t\tTotal requests: 1\n")
    report = parse_mailq(text, now=NOW)
    assert report.count == 1 and report.messages[0].recipients == ["b@example.com"]


def test_crlf_line_endings() -> None:
    text = fixture("mailq-deferred.txt").replace("\n", "\r\n")
    assert parse_mailq(text, now=NOW).to_dict() == parse_mailq(
        fixture("mailq-deferred.txt"), now=NOW).to_dict()


# -- not mailq at all ---------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "sh: 1: mailq: not found\n",
    "bash: mailq: command not found\n",
    "",
    "   \n",
    # Postfix's mailq: not sendmail's (Postfix is read through postqueue -j)
    "-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------\n"
    "4F9D3D3D3D*     312 Wed Nov 25 04:48:13  root@lab1.lab.test\n"
    "                                         me@ourtest.com\n\n"
    "-- 0 Kbytes in 1 Request.\n",
])
def test_not_mailq_output_is_a_parse_error(text: str) -> None:
    with pytest.raises(ParseError):
        parse_mailq(text, now=NOW)


def test_refused_listing_is_a_parse_error() -> None:
    text = ("MSP Queue status...\n/var/spool/mqueue-client is empty\n"
            "MTA Queue status...\n510 You are not permitted to see the queue\n")
    with pytest.raises(ParseError, match="not permitted"):
        parse_mailq(text, now=NOW)


# -- the year mailq does not print --------------------------------------------------

def _one(when: str) -> str:
    return (f"\t\t/var/spool/mqueue (1 request)\n{COLUMNS}\n"
            f"6AP4vDMt013057     512 {when} <a@example.com>\n\t\t\t\t\t <b@example.com>\n")


def test_year_is_never_in_the_future() -> None:
    new_year = datetime(2027, 1, 2, 9, 0)
    assert parse_mailq(_one("Thu Dec 31 23:59"), now=new_year).messages[
        0].queued_at == "2026-12-31T23:59:00"
    assert parse_mailq(_one("Sat Jan  2 08:00"), now=new_year).messages[
        0].queued_at == "2027-01-02T08:00:00"


def test_host_clock_ahead_of_the_caller_within_a_day() -> None:
    # The host prints local time (UTC+10); the caller's now is UTC.
    utc_now = datetime(2026, 11, 25, 2, 0, tzinfo=UTC)
    queued_at = parse_mailq(_one("Wed Nov 25 11:50"), now=utc_now).messages[0].queued_at
    assert queued_at == "2026-11-25T11:50:00"


def test_weekday_settles_a_date_just_past_now() -> None:
    # Nov 25 2025 was a Tuesday: a year-old message, not one from 20 minutes ahead.
    assert parse_mailq(_one("Tue Nov 25 12:20"), now=NOW).messages[
        0].queued_at == "2025-11-25T12:20:00"


def test_default_now_and_aware_now() -> None:
    recent = datetime.now() - timedelta(minutes=5)
    when = recent.strftime("%a %b ") + f"{recent.day:2d}" + recent.strftime(" %H:%M")
    assert parse_mailq(_one(when)).messages[0].queued_at == recent.strftime("%Y-%m-%dT%H:%M:00")
    aware = datetime(2026, 11, 25, 12, 0, tzinfo=timezone(timedelta(hours=-5)))
    assert parse_mailq(_one("Wed Nov 25 04:45"), now=aware).messages[
        0].queued_at == "2026-11-25T04:45:00"


def test_resolve_year_feb_29_goes_to_the_last_leap_year() -> None:
    assert resolve_year(2, 29, 10, 0, now=datetime(2026, 11, 25)) == datetime(2024, 2, 29, 10)
    assert resolve_year(2, 30, 10, 0, now=datetime(2026, 11, 25)) is None
