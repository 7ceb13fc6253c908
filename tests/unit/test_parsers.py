"""mailq, maillog and queue-run parsers, on output captured from real sendmail."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from shared.errors import ParseError
from shared.sendmail.flush import parse_flush_output, strip_auth_transcript
from shared.sendmail.maillog import outcome, parse_maillog_line, summarize
from shared.sendmail.mailq import parse_mailq

FIXTURES = Path(__file__).parent.parent / "fixtures" / "sendmail"
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
SEED_LINE = ("Apr 12 11:21:36 sipserver1 sendmail[7889]: u3B84xT9931967: to=<me@ourtest.com>, "
             "ctladdr=<root@sipserver1.ourtest.com> (0/0), delay=18:16:37, xdelay=00:00:00, "
             "mailer=esmtp, pri=43710276, relay=ourtest.com., dsn=4.0.0, "
             "stat=Deferred: Connection timed out with ourtest.com.")


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def test_mailq_debian_two_sections() -> None:
    report = parse_mailq(fixture("mailq-deferred.txt"), now=NOW)
    assert report.count == 4 and report.sections == {"msp": 0, "mta": 4}
    by_id = {m.id: m for m in report.messages}
    refused = by_id["6AP4jQbT009721"]
    assert refused.reason == "Deferred: Connection refused by mx.ourtest.com."
    assert refused.recipients == ["me@ourtest.com"] and refused.sender == "root@lab1.lab.test"
    assert refused.size == 6 and refused.queued_at == "2026-11-25T04:45:00"
    multi = by_id["6AP4mD19010498"]
    assert multi.recipients == ["b@ourtest.com", "a@ourtest.com"]
    assert multi.reason == "Host unknown (Name server: nowhere.lab.test: host not found)"
    assert by_id["6AP4mD19010500"].sender == "MAILER-DAEMON"


def test_mailq_empty_queue() -> None:
    text = ("MSP Queue status...\n/var/spool/mqueue-client is empty\n\t\tTotal requests: 0\n"
            "MTA Queue status...\n/var/spool/mqueue is empty\n\t\tTotal requests: 0\n")
    report = parse_mailq(text)
    assert report.count == 0 and report.sections == {"msp": 0, "mta": 0}


def test_mailq_centos_single_section_and_status_chars() -> None:
    text = """\t\t/var/spool/mqueue (3 requests)
-----Q-ID----- --Size-- -----Q-Time----- ------------Sender/Recipient-----------
u3B84xT9931967*    1234 Tue Apr 12 11:21 <root@sipserver1.ourtest.com>
                 (Deferred: Connection timed out with ourtest.com.)
\t\t\t\t\t <me@ourtest.com>
u3B84xT9931968X     100 Tue Apr 12 11:22 <root@sipserver1.ourtest.com>
\t\t\t\t\t <you@ourtest.com>
u3B84xT9931969-     100 Tue Apr 12 11:23 <root@sipserver1.ourtest.com>
                 QUARANTINE: held for review
\t\t\t\t\t <them@ourtest.com>
\t\tTotal requests: 3
"""
    report = parse_mailq(text, now=NOW)
    assert report.count == 3 and report.sections == {"mta": 3}
    first, second, third = report.messages
    assert first.processing and first.flags == "*"
    assert first.reason == "Deferred: Connection timed out with ourtest.com."
    assert second.flags == "X" and second.reason is None
    assert third.flags == "-" and third.quarantine == "held for review"
    assert first.queued_at == "2026-04-12T11:21:00"


def test_mailq_year_is_never_in_the_future() -> None:
    text = ("\t\t/var/spool/mqueue (1 request)\n"
            "AAAAAA1234      10 Thu Dec 31 23:59 <a@b>\n\t\t\t\t\t <c@d>\n")
    assert parse_mailq(text, now=NOW).messages[0].queued_at == "2025-12-31T23:59:00"


def test_not_mailq_output_is_an_error() -> None:
    with pytest.raises(ParseError):
        parse_mailq("sh: mailq: command not found\n")


def test_seed_log_line() -> None:
    record = parse_maillog_line(SEED_LINE)
    assert record is not None and record.kind == "delivery"
    assert (record.host, record.program, record.pid, record.queue_id) == (
        "sipserver1", "sendmail", 7889, "u3B84xT9931967")
    assert record.fields["stat"] == "Deferred: Connection timed out with ourtest.com."
    assert record.fields["ctladdr"] == "<root@sipserver1.ourtest.com> (0/0)"
    assert record.fields["relay"] == "ourtest.com."
    assert record.fields["delay"] == "18:16:37" and record.fields["dsn"] == "4.0.0"


def test_rfc3339_and_multi_recipient_and_received_lines() -> None:
    line = ("2026-11-25T04:48:19.123456+00:00 lab1 sm-mta[10661]: 6AP4mD19010498: "
            "to=<a@ourtest.com>,<b@ourtest.com>, ctladdr=<root@lab1.lab.test> (0/0), "
            "delay=00:00:06, xdelay=00:00:01, mailer=relay, pri=180277, "
            "relay=smarthost.lab.test. [10.201.0.3], dsn=2.0.0, stat=Sent (2.0.0 Ok: queued, id=1)")
    record = parse_maillog_line(line)
    assert record is not None
    assert record.fields["to"] == "<a@ourtest.com>,<b@ourtest.com>"
    assert record.fields["relay"] == "smarthost.lab.test. [10.201.0.3]"
    assert record.fields["stat"] == "Sent (2.0.0 Ok: queued, id=1)"
    received = parse_maillog_line(
        "Nov 25 04:45:26 lab1 sm-mta[9721]: 6AP4jQbT009721: from=<root@lab1.lab.test>, size=296, "
        "class=0, nrcpts=1, msgid=<2026.6AP4jQNn009720@lab1.lab.test>, proto=ESMTP, "
        "daemon=MTA-v4, relay=localhost [127.0.0.1]")
    assert received is not None and received.kind == "received"
    assert received.fields["nrcpts"] == "1" and received.fields["proto"] == "ESMTP"
    assert parse_maillog_line("Nov 25 04:45:26 lab1 sshd[1]: Accepted key") is None
    assert parse_maillog_line("garbage") is None


def test_captured_maillog_summary() -> None:
    records = [r for r in map(parse_maillog_line, fixture("mail.log").splitlines()) if r]
    summary = summarize(records)
    assert summary["by_stat"]["Deferred: Connection refused by mx.ourtest.com."] == 2
    assert summary["by_stat"]["Sent"] == 5
    assert summary["sent"] == 5 and summary["deferred"] == 2 and summary["bounced"] == 2
    assert summary["deliveries"] == sum(summary["by_stat"].values())


@pytest.mark.parametrize("stat, expected", [
    ("Sent (Ok)", "sent"), ("Deferred: Connection refused by x.", "deferred"),
    ("User unknown", "bounced"), ("Operating system error", "other")])
def test_outcome(stat: str, expected: str) -> None:
    assert outcome(stat) == expected


def test_flush_transcript() -> None:
    lines = parse_flush_output(fixture("flush-v.txt"))
    assert [(d.queue_id, d.recipient, d.text) for d in lines] == [
        ("6AP4mD19010500", "root@lab1.lab.test", "Operating system error"),
        ("6AP4mDlP010506", "root@lab1.lab.test", "Operating system error")]
    text = ("Running /var/spool/mqueue/6AP4vDMt013057 (sequence 1 of 1)\n"
            "<me@ourtest.com>... Connecting to [smarthost.lab.test] via relay...\n"
            "220 smarthost.lab.test ESMTP\n>>> EHLO deb1.lab.test\n"
            "<me@ourtest.com>... Sent (2.0.0 Ok: queued)\n")
    (line,) = parse_flush_output(text)
    assert (line.recipient, line.outcome) == ("me@ourtest.com", "sent")


def test_auth_exchange_is_stripped() -> None:
    text = (">>> EHLO a\n250-x\n250 AUTH PLAIN LOGIN\n>>> AUTH PLAIN dXNlcgB1c2VyAHNlY3JldA==\n"
            "235 2.0.0 OK\n>>> AUTH LOGIN\n334 VXNlcm5hbWU6\n>>> dXNlcg==\n334 UGFzc3dvcmQ6\n"
            ">>> c2VjcmV0\n235 ok\n>>> MAIL From:<a@b>\n")
    out = strip_auth_transcript(text)
    assert "dXNlcgB1c2VyAHNlY3JldA==" not in out and "c2VjcmV0" not in out
    assert ">>> MAIL From:<a@b>" in out and out.count(">>> AUTH [exchange hidden]") == 2
