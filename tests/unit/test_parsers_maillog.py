"""parse_maillog_line and summarize: the seed's line, a maillog captured from Debian's
sendmail 8.17, and hand-written lines (RFC 3339 time stamps, NOQUEUE, TLS, other programs)."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest

from shared.sendmail.maillog import (
    LogRecord,
    outcome,
    parse_fields,
    parse_maillog_line,
    split_addresses,
    summarize,
    summary_key,
)

FIXTURES = Path(__file__).parent.parent / "fixtures" / "sendmail"
NOW = datetime(2026, 11, 25, 12, 0)
SEED_LINE = ("Apr 12 11:21:36 sipserver1 sendmail[7889]: u3B84xT9931967: to=<me@ourtest.com>, "
             "ctladdr=<root@sipserver1.ourtest.com> (0/0), delay=18:16:37, xdelay=00:00:00, "
             "mailer=esmtp, pri=43710276, relay=ourtest.com., dsn=4.0.0, "
             "stat=Deferred: Connection timed out with ourtest.com.")


def records() -> list[LogRecord]:
    lines = (FIXTURES / "mail.log").read_text().splitlines()
    parsed = [parse_maillog_line(line, now=NOW) for line in lines]
    assert all(r is not None for r in parsed), "every captured line is sendmail's"
    return [r for r in parsed if r is not None]


def parse(line: str) -> LogRecord:
    record = parse_maillog_line(line, now=NOW)
    assert record is not None, line
    return record


# -- the seed's line ----------------------------------------------------------------

def test_seed_line() -> None:
    record = parse(SEED_LINE)
    assert record.kind == "delivery"
    assert (record.host, record.program, record.pid, record.queue_id) == (
        "sipserver1", "sendmail", 7889, "u3B84xT9931967")
    assert record.timestamp == "2026-04-12T11:21:36"
    assert record.fields == {
        "to": "<me@ourtest.com>", "ctladdr": "<root@sipserver1.ourtest.com> (0/0)",
        "delay": "18:16:37", "xdelay": "00:00:00", "mailer": "esmtp", "pri": "43710276",
        "relay": "ourtest.com.", "dsn": "4.0.0",
        "stat": "Deferred: Connection timed out with ourtest.com."}
    assert record.recipients == ["me@ourtest.com"]
    assert outcome(record.fields["stat"], record.fields["dsn"]) == "deferred"


def test_seed_line_summary() -> None:
    summary = summarize([parse(SEED_LINE)] * 3)
    assert summary["by_stat"] == {"Deferred: Connection timed out with ourtest.com.": 3}
    assert (summary["deliveries"], summary["deferred"], summary["sent"]) == (3, 3, 0)


# -- the captured maillog -----------------------------------------------------------

def test_captured_kinds() -> None:
    kinds = Counter(r.kind for r in records())
    assert kinds == {"delivery": 15, "received": 6, "syserr": 6, "other": 6, "dsn": 2,
                     "daemon": 2}


def test_captured_received_lines() -> None:
    msp, mta = [r for r in records() if r.kind == "received"][:2]
    assert (msp.program, msp.queue_id) == ("sendmail", "6AP4jQNn009720")
    assert msp.fields == {"from": "root", "size": "26", "class": "0", "nrcpts": "1",
                          "msgid": "<202611250445.6AP4jQNn009720@lab1.lab.test>",
                          "relay": "root@localhost"}
    assert mta.fields["from"] == "<root@lab1.lab.test>"
    assert (mta.fields["proto"], mta.fields["daemon"]) == ("ESMTP", "MTA-v4")
    assert mta.fields["relay"] == "localhost [127.0.0.1]"
    assert mta.timestamp == "2026-11-25T04:45:26" and mta.host == "lab1"


def test_captured_multi_recipient_lines() -> None:
    by_to: dict[str, LogRecord] = {}
    for record in records():  # the first attempt for each to=
        if record.kind == "delivery":
            by_to.setdefault(record.fields["to"], record)
    msp = by_to["c@nowhere.lab.test,b@ourtest.com,a@ourtest.com"]
    assert msp.recipients == ["c@nowhere.lab.test", "b@ourtest.com", "a@ourtest.com"]
    assert msp.fields["ctladdr"] == "root (0/0)"
    assert msp.fields["relay"] == "[127.0.0.1] [127.0.0.1]"
    assert msp.fields["stat"] == "Sent (6AP4mD19010498 Message accepted for delivery)"
    mta = by_to["<a@ourtest.com>,<b@ourtest.com>"]
    assert mta.recipients == ["a@ourtest.com", "b@ourtest.com"]
    assert mta.fields["relay"] == "mx.ourtest.com. [10.77.0.2]"


def test_captured_dsn_syserr_and_daemon_lines() -> None:
    parsed = records()
    dsn = next(r for r in parsed if r.kind == "dsn")
    assert dsn.queue_id == "6AP4mD19010498"
    assert dsn.fields == {"dsn_queue_id": "6AP4mD19010500",
                          "reason": "Host unknown (Name server: nowhere.lab.test: host not found)"}
    syserr = next(r for r in parsed if r.kind == "syserr")
    assert syserr.message == ("SYSERR(root): Cannot exec /usr/sbin/sensible-mda: "
                              "No such file or directory")
    assert syserr.fields == {}
    daemon = parsed[0]
    assert (daemon.kind, daemon.program, daemon.pid, daemon.queue_id) == (
        "daemon", "sm-mta", 9678, None)
    assert daemon.message == "starting daemon (8.17.1.9): SMTP+queueing@00:10:00"


def test_captured_summary() -> None:
    assert summarize(records()) == {
        "deliveries": 15,
        "by_stat": {
            "Operating system error": 6,
            "Sent (Message accepted for delivery)": 3,
            "Deferred: Connection refused by mx.ourtest.com.": 2,
            "Host unknown (Name server: nowhere.lab.test: host not found)": 2,
            "Sent (Ok: queued)": 2,
        },
        # Operating system error has dsn=4.0.0: the message stays queued
        "sent": 5, "deferred": 8, "bounced": 2, "other": 0,
        # the MSP's hand-offs to the MTA on [127.0.0.1]
        "local_handoffs": 3,
        # none of these lines shows a relay problem
        "problems": [],
    }


def test_to_dict_is_plain_json() -> None:
    parsed = records()
    doc = json.loads(json.dumps([r.to_dict() for r in parsed]))
    delivery = next(d for d in doc if d["fields"].get("to") == "<a@ourtest.com>,<b@ourtest.com>")
    assert set(delivery) == {"timestamp", "host", "program", "pid", "queue_id", "kind",
                             "fields", "message", "recipients", "problem"}
    assert delivery["recipients"] == ["a@ourtest.com", "b@ourtest.com"]
    assert delivery["pid"] == 10500 and delivery["kind"] == "delivery"


# -- hand-written lines -------------------------------------------------------------

def test_rfc3339_time_stamp() -> None:
    record = parse("2026-11-25T04:48:19.123456+00:00 lab1 sm-mta[10661]: 6AP4mD19010498: "
                   "to=<a@ourtest.com>,<b@ourtest.com>, ctladdr=<root@lab1.lab.test> (0/0), "
                   "delay=00:00:06, xdelay=00:00:01, mailer=relay, pri=180277, "
                   "relay=smarthost.lab.test. [10.77.0.3], dsn=2.0.0, stat=Sent (2.0.0 Ok: queued)")
    assert record.timestamp == "2026-11-25T04:48:19.123456+00:00"
    assert (record.host, record.program, record.pid) == ("lab1", "sm-mta", 10661)
    assert record.recipients == ["a@ourtest.com", "b@ourtest.com"]
    assert record.fields["relay"] == "smarthost.lab.test. [10.77.0.3]"
    zulu = parse("2026-11-25T04:48:19Z pbx1 sm-msp-queue[311]: 6AP4mD19010499: to=root, "
                 "delay=00:00:01, mailer=relay, pri=30000, relay=[127.0.0.1], dsn=4.0.0, "
                 "stat=Deferred: Connection refused by [127.0.0.1]")
    assert (zulu.timestamp, zulu.program) == ("2026-11-25T04:48:19Z", "sm-msp-queue")


def test_stat_keeps_commas_and_equals() -> None:
    record = parse("Nov 25 04:48:19 lab1 sm-mta[1]: 6AP4mD19010498: to=<a@x.test>, delay=00:00:06, "
                   "mailer=esmtp, pri=1, relay=mx.x.test. [192.0.2.1], dsn=5.7.1, "
                   "stat=User unknown, see https://x.test/?a=b, code=550")
    assert record.fields["stat"] == "User unknown, see https://x.test/?a=b, code=550"
    assert record.fields["dsn"] == "5.7.1" and "code" not in record.fields


def test_noqueue_reject_line() -> None:
    record = parse("Nov 25 04:50:01 lab1 sm-mta[2001]: NOQUEUE: ruleset=check_rcpt, "
                   "arg1=<x@elsewhere.test>, relay=bad.example [198.51.100.9], "
                   "reject=550 5.7.1 <x@elsewhere.test>... Relaying denied, try again=never")
    assert record.queue_id is None and record.kind == "reject"
    assert record.fields["reject"] == ("550 5.7.1 <x@elsewhere.test>... Relaying denied, "
                                       "try again=never")
    assert record.fields["ruleset"] == "check_rcpt"


def test_starttls_and_auth_lines() -> None:
    tls = parse("Nov 25 04:50:02 lab1 sm-mta[2002]: STARTTLS=client, relay=smtp-relay.gmail.com., "
                "version=TLSv1.3, verify=FAIL, cipher=TLS_AES_256_GCM_SHA384, bits=256/256")
    assert tls.kind == "tls" and tls.fields["verify"] == "FAIL"
    auth = parse("Nov 25 04:50:02 lab1 sm-mta[2002]: 6AP4mD19010498: AUTH=client, "
                 "relay=smtp-relay.gmail.com., mech=PLAIN, bits=0")
    assert auth.kind == "auth" and auth.fields["mech"] == "PLAIN"


def test_line_without_host_and_raw_datagram() -> None:
    bare = parse("Nov 25 04:45:26 sm-mta[9721]: 6AP4jQbT009721: from=<root@lab1.lab.test>, "
                 "size=296, class=0, nrcpts=1")
    assert (bare.host, bare.program, bare.queue_id, bare.kind) == (
        "", "sm-mta", "6AP4jQbT009721", "received")
    raw = parse("<22>Nov 25 04:45:26 sm-mta[9721]: 6AP4jQbT009721: from=<root@lab1.lab.test>, "
                "size=296, class=0, nrcpts=1")
    assert raw.to_dict() == bare.to_dict()


def test_single_digit_day_and_year_boundary() -> None:
    record = parse_maillog_line("Dec 31 23:59:59 lab1 sendmail[5]: starting daemon (8.17.1.9)",
                                now=datetime(2027, 1, 1, 0, 5))
    assert record is not None and record.timestamp == "2026-12-31T23:59:59"
    early = parse("Jan  5 01:02:03 lab1 sendmail[5]: 6AP4jQbT009721: to=a@x.test, "
                  "mailer=relay, stat=queued")
    assert early.timestamp == "2026-01-05T01:02:03" and early.kind == "delivery"


@pytest.mark.parametrize("line", [
    "Nov 25 04:45:26 lab1 sshd[1]: Accepted publickey for root",
    "Nov 25 04:45:26 lab1 su[2]: pam_unix(su:session): session opened for user root",
    "Nov 25 04:45:26 lab1 postfix/smtp[3]: 4F9D3D3D3D: to=<a@b>, status=sent",
    "garbage",
    "",
    "Nov 25 04:45:26",
])
def test_other_programs_and_garbage_give_none(line: str) -> None:
    assert parse_maillog_line(line, now=NOW) is None


# -- helpers ------------------------------------------------------------------------

@pytest.mark.parametrize("stat, expected", [
    ("Sent (2.0.0 Ok: queued)", "Sent (Ok: queued)"),
    ("Sent (2.0.0 Ok: queued as 4NGq3x6Zlbz9tF)", "Sent (Ok: queued)"),
    ("Sent (Ok: queued, id=1)", "Sent (Ok: queued)"),
    ("Sent (6AP4jQbT009721 Message accepted for delivery)",
     "Sent (Message accepted for delivery)"),
    ("Sent (OK  1732501234 d9443c01a7336-2129f3a9b2bsm123456ad.55 - gsmtp)",
     "Sent (OK - gsmtp)"),
    ("Sent (<20261125.6AP4@lab1> [InternalId=123, Hostname=AM0PR01.prod.outlook.com] "
     "Queued mail for delivery)", "Sent (Queued mail for delivery)"),
    ("Sent (6AP4jQbT009721)", "Sent"),
    ("Sent", "Sent"),
    ("Deferred: Connection timed out with ourtest.com.",
     "Deferred: Connection timed out with ourtest.com."),
])
def test_summary_key(stat: str, expected: str) -> None:
    assert summary_key(stat) == expected


@pytest.mark.parametrize("stat, dsn, expected", [
    ("Sent (Ok)", None, "sent"),
    ("Deferred: Connection refused by x.", None, "deferred"),
    ("Operating system error", None, "deferred"),
    ("Operating system error", "4.0.0", "deferred"),
    ("User unknown", None, "bounced"),
    ("Host unknown (Name server: x: host not found)", "5.1.2", "bounced"),
    ("554 5.7.1 Message rejected", None, "bounced"),
    ("Service unavailable", "5.0.0", "bounced"),
    ("queued", None, "other"),
    ("whatever it says", "2.0.0", "sent"),
])
def test_outcome(stat: str, dsn: str | None, expected: str) -> None:
    assert outcome(stat, dsn) == expected


def test_split_addresses() -> None:
    assert split_addresses('<a@x>,"Doe, J" <j@x>, b@x') == ["a@x", '"Doe, J" <j@x>', "b@x"]
    assert split_addresses("") == []


def test_parse_fields_value_with_spaces() -> None:
    assert parse_fields("from=<>, size=10, relay=host. [192.0.2.1] (may be forged)") == {
        "from": "<>", "size": "10", "relay": "host. [192.0.2.1] (may be forged)"}


def test_summary_ignores_what_is_not_a_delivery() -> None:
    summary = summarize([])
    assert summary == {"deliveries": 0, "by_stat": {}, "sent": 0, "deferred": 0,
                       "bounced": 0, "other": 0, "local_handoffs": 0, "problems": []}
