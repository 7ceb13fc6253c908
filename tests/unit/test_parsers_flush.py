"""parse_flush_output and strip_auth_transcript: the captured ``sendmail -q -v`` run and
hand-written transcripts (SMTP dialogue, AUTH exchanges, skips, cut-off runs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.sendmail.flush import (
    AUTH_PLACEHOLDER,
    DeliveryLine,
    parse_flush_output,
    strip_auth_transcript,
)

FIXTURES = Path(__file__).parent.parent / "fixtures" / "sendmail"
SECRET_B64 = ("AHVzZXIAc2VjcmV0", "dXNlcg==", "c2VjcmV0")

RUN = """Running /var/spool/mqueue/6AP4vDMt013057 (sequence 1 of 3)
<me@ourtest.com>... Connecting to smarthost.lab.test. via relay...
220 smarthost.lab.test ESMTP ready
>>> EHLO deb1.lab.test
250-smarthost.lab.test
250-AUTH PLAIN LOGIN
250 PIPELINING
>>> AUTH LOGIN
334 VXNlcm5hbWU6
>>> dXNlcg==
334 UGFzc3dvcmQ6
>>> c2VjcmV0
235 2.7.0 Authentication successful
>>> MAIL From:<root@deb1.lab.test> SIZE=296
250 2.1.0 Ok
>>> RCPT To:<me@ourtest.com>
>>> RCPT To:<you@ourtest.com>
>>> DATA
250 2.1.5 Ok
550 5.1.1 <you@ourtest.com>... User unknown
354 End data with <CR><LF>.<CR><LF>
>>> .
250 2.0.0 Ok: queued as 4NGq3x6Zlbz9tF
<me@ourtest.com>... Sent (2.0.0 Ok: queued as 4NGq3x6Zlbz9tF)
<you@ourtest.com>... User unknown
Closing connection to smarthost.lab.test.
Running /var/spool/mqueue/6AP4vDMt013058 (sequence 2 of 3)
root... aliased to admin@ourtest.com
<admin@ourtest.com>... Connecting to mx1.ourtest.com. via esmtp...
<admin@ourtest.com>... Connecting to mx2.ourtest.com. via esmtp...
<admin@ourtest.com>... Deferred: Connection refused by mx2.ourtest.com.
Skipping /var/spool/mqueue/6AP4vDMt013059 (sequence 3 of 3)
"""


def lines_of(text: str) -> list[tuple[str | None, str, str, str]]:
    return [(d.queue_id, d.recipient, d.outcome, d.text) for d in parse_flush_output(text)]


# -- the captured run ---------------------------------------------------------------

def test_captured_run() -> None:
    assert lines_of((FIXTURES / "flush-v.txt").read_text()) == [
        ("6AP4mD19010500", "root@lab1.lab.test", "deferred", "Operating system error"),
        ("6AP4mDlP010506", "root@lab1.lab.test", "deferred", "Operating system error")]


def test_to_dict_is_plain_json() -> None:
    (first, _) = parse_flush_output((FIXTURES / "flush-v.txt").read_text())
    assert json.loads(json.dumps(first.to_dict())) == {
        "queue_id": "6AP4mD19010500", "recipient": "root@lab1.lab.test",
        "outcome": "deferred", "text": "Operating system error"}


# -- hand-written transcripts -------------------------------------------------------

def test_full_transcript() -> None:
    assert lines_of(RUN) == [
        ("6AP4vDMt013057", "me@ourtest.com", "sent",
         "Sent (2.0.0 Ok: queued as 4NGq3x6Zlbz9tF)"),
        ("6AP4vDMt013057", "you@ourtest.com", "bounced", "User unknown"),
        ("6AP4vDMt013058", "admin@ourtest.com", "deferred",
         "Deferred: Connection refused by mx2.ourtest.com."),
        ("6AP4vDMt013059", "", "skipped",
         "Skipping /var/spool/mqueue/6AP4vDMt013059 (sequence 3 of 3)"),
    ]


def test_same_result_after_stripping_auth() -> None:
    assert parse_flush_output(strip_auth_transcript(RUN)) == parse_flush_output(RUN)


def test_cut_off_run_reports_unknown() -> None:
    text = ("Running /var/spool/mqueue/6AP4vDMt013057 (sequence 1 of 2)\n"
            "<me@ourtest.com>... Connecting to smarthost.lab.test. via relay...\n"
            "220 smarthost.lab.test ESMTP\n"
            "Running /var/spool/mqueue/6AP4vDMt013058 (sequence 2 of 2)\n"
            "<you@ourtest.com>... Connecting to smarthost.lab.test. via relay...\n")
    assert lines_of(text) == [
        ("6AP4vDMt013057", "me@ourtest.com", "unknown",
         "Connecting to smarthost.lab.test. via relay..."),
        ("6AP4vDMt013058", "you@ourtest.com", "unknown",
         "Connecting to smarthost.lab.test. via relay..."),
    ]


def test_queue_run_refused() -> None:
    text = "458 Skipping queue run -- load average too high\n"
    assert parse_flush_output(text) == [DeliveryLine(None, "", "skipped", text.strip())]


def test_warnings_after_connecting_are_not_outcomes() -> None:
    text = ("Running /var/spool/mqueue/6AP4mD19010500 (sequence 1 of 1)\n"
            "<root@lab1.lab.test>... Connecting to local...\n"
            "Warning: program /usr/sbin/sensible-mda unsafe: No such file or directory\n"
            "I/O error\n")
    assert lines_of(text) == [
        ("6AP4mD19010500", "root@lab1.lab.test", "deferred", "I/O error")]


def test_no_queue_run_no_lines() -> None:
    assert parse_flush_output("") == []
    assert parse_flush_output("garbage\n>>> QUIT\n221 bye\n") == []


# -- AUTH exchange ------------------------------------------------------------------

def test_auth_login_exchange_is_stripped() -> None:
    out = strip_auth_transcript(RUN)
    for secret in SECRET_B64:
        assert secret not in out
    assert "334 " not in out
    assert AUTH_PLACEHOLDER + "\n235 2.7.0 Authentication successful\n" in out
    assert ">>> MAIL From:<root@deb1.lab.test> SIZE=296" in out
    assert "250-AUTH PLAIN LOGIN" in out  # the server's offer stays


def test_auth_plain_initial_response_is_stripped() -> None:
    text = ">>> EHLO a\r\n250 AUTH PLAIN\r\n>>> AUTH PLAIN AHVzZXIAc2VjcmV0\r\n235 OK\r\n"
    assert strip_auth_transcript(text) == (
        f">>> EHLO a\r\n250 AUTH PLAIN\r\n{AUTH_PLACEHOLDER}\r\n235 OK\r\n")


@pytest.mark.parametrize("final", ["535 5.7.8 Authentication failed",
                                   "454 4.7.0 Temporary authentication failure"])
def test_failed_auth_keeps_the_answer_and_what_follows(final: str) -> None:
    text = (f">>> AUTH LOGIN\n334 VXNlcm5hbWU6\n>>> dXNlcg==\n334 UGFzc3dvcmQ6\n>>> c2VjcmV0\n"
            f"{final}\n<me@ourtest.com>... Deferred: {final}\n")
    assert strip_auth_transcript(text) == (
        f"{AUTH_PLACEHOLDER}\n{final}\n<me@ourtest.com>... Deferred: {final}\n")


def test_cut_off_auth_does_not_swallow_delivery_lines() -> None:
    text = (">>> AUTH LOGIN\n334 VXNlcm5hbWU6\n>>> dXNlcg==\n"
            "<me@ourtest.com>... Deferred: Connection reset by smarthost.lab.test.\n")
    out = strip_auth_transcript(text)
    assert "dXNlcg==" not in out
    assert out.endswith("<me@ourtest.com>... Deferred: Connection reset by smarthost.lab.test.\n")


def test_transcript_without_auth_is_unchanged() -> None:
    text = (FIXTURES / "flush-v.txt").read_text()
    assert strip_auth_transcript(text) == text
