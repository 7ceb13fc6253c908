"""Relay problems named on maillog lines, sendmail's and Postfix's.

Every line here was captured from real lab hosts (Debian 12: sendmail 8.17.1.9, Postfix
3.7.11) delivering to the lab's relays (aiosmtpd, STARTTLS with lab-CA certificates, AUTH
after TLS), the lab's sinks, and each other:

- sendmail: no CA configured (verify=FAIL), confCACERT set (verify=OK), the access map's
  ``TLS_Srv:relay VERIFY`` / ``VERIFY+CN`` / ``ENCR:128``, a wrong AUTH password, a relay
  refusing MAIL (relaying), one refusing an unqualified EHLO, and its own check_rcpt
  refusing to relay for a client;
- Postfix: smtp_tls_security_level verify with and without the CA file, encrypt against a
  relay without STARTTLS, none against one requiring it, a wrong SASL password, relays
  refusing the sender domain, MAIL or the EHLO name, and smtpd refusing to relay.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.postfix.maillog import parse_any_line
from shared.schemas import LogSchema
from shared.sendmail.maillog import PROBLEMS, LogRecord, summarize

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"

SENDMAIL = {
    "tls_verify_failed": [
        # STARTTLS without a CA to verify with: logged, mail still goes (encrypt)
        "Dec  2 14:17:14 smx1 sm-mta[22878]: STARTTLS=client, relay=relay.lab.test., "
        "version=TLSv1.3, verify=FAIL, cipher=TLS_AES_256_GCM_SHA384, bits=256/256",
        # TLS_Srv:relay-wrong.lab.test VERIFY+CN, chain fine, name not
        "Dec  2 14:17:52 smx1 sm-mta[24638]: ruleset=tls_server, arg1=OK, "
        "relay=relay-wrong.lab.test, reject=454 4.7.0 CN other.lab.test does not match "
        "relay-wrong.lab.test",
        "Dec  2 14:17:52 smx1 sm-mta[24638]: 6B2EHqWl024629: to=<me@ourtest.com>, "
        "delay=00:00:00, xdelay=00:00:00, mailer=relay, pri=30284, "
        "relay=relay-wrong.lab.test. [10.202.0.6], dsn=4.7.0, stat=Deferred: 454 4.7.0 CN "
        "other.lab.test does not match relay-wrong.lab.test",
        # TLS_Srv:relay.lab.test VERIFY without the CA: "authentication failed" is the
        # certificate's, not SMTP AUTH's
        "Dec  2 14:18:07 smx1 sm-mta[25623]: ruleset=tls_server, arg1=FAIL, "
        "relay=relay.lab.test, reject=454 4.7.0 authentication failed",
        "Dec  2 14:18:07 smx1 sm-mta[25623]: 6B2EI7Lg025621: to=<me@ourtest.com>, "
        "delay=00:00:00, xdelay=00:00:00, mailer=relay, pri=30284, "
        "relay=relay.lab.test. [10.202.0.7], dsn=4.7.0, stat=Deferred: 454 4.7.0 "
        "authentication failed",
    ],
    "tls_required": [
        # TLS_Srv:smarthost.lab.test ENCR:128, the sink offers no STARTTLS
        "Dec  2 14:18:38 smx1 sm-mta[27166]: ruleset=tls_server, arg1=NONE, "
        "relay=smarthost.lab.test, reject=454 4.7.0 encryption too weak 0 less than 128",
        "Dec  2 14:18:38 smx1 sm-mta[27166]: 6B2EIcwb027155: to=<me@ourtest.com>, "
        "delay=00:00:00, xdelay=00:00:00, mailer=relay, pri=30284, "
        "relay=smarthost.lab.test. [10.202.0.3], dsn=4.7.0, stat=Deferred: 454 4.7.0 "
        "encryption too weak 0 less than 128",
    ],
    "auth_failed": [
        # a wrong password: sendmail logs the relay's refusal of MAIL that follows
        "Dec  2 14:18:21 smx1 sm-mta[26078]: 6B2EILbh026076: to=<me@ourtest.com>, "
        "delay=00:00:00, xdelay=00:00:00, mailer=relay, pri=30284, "
        "relay=relay.lab.test. [10.202.0.7], dsn=5.0.0, reply=530 5.7.0 Authentication "
        "required, stat=Service unavailable",
    ],
    "relaying_denied": [
        "Dec  2 14:18:48 smx1 sm-mta[28361]: 6B2EImEW028359: to=<me@ourtest.com>, "
        "delay=00:00:00, xdelay=00:00:00, mailer=relay, pri=30284, "
        "relay=refuse.lab.test. [10.202.0.4], dsn=5.0.0, reply=554 5.7.1 Relaying denied "
        "by lab sink, stat=Service unavailable",
        "Dec  2 14:19:06 smx1 sm-mta[29936]: 6B2EJ5o6029936: ruleset=check_rcpt, "
        "arg1=<victim@example.org>, relay=pfx1.lab.test [10.202.0.11], reject=550 5.7.1 "
        "<victim@example.org>... Relaying denied",
        "Dec  2 14:19:02 smx1 sm-mta[29662]: 6B2EJ1cL029662: ruleset=check_rcpt, "
        "arg1=<victim@example.org>, relay=[10.202.0.1], reject=450 4.4.0 "
        "<victim@example.org>... Relaying temporarily denied. Cannot resolve PTR record for "
        "10.202.0.1",
    ],
    "ehlo_refused": [
        "Dec  2 14:19:25 smx1 sm-mta[31899]: 6B2EJPPZ031895: to=<me@ourtest.com>, "
        "delay=00:00:00, xdelay=00:00:00, mailer=relay, pri=30284, "
        "relay=relay-ehlo.lab.test. [10.202.0.8], dsn=4.5.0, reply=421 4.7.0 Try again "
        "later, closing connection. (EHLO) unqualified host name, stat=Deferred: 421 4.7.0 "
        "Try again later, closing connection. (EHLO) unqualified host name",
    ],
    None: [
        "Dec  2 14:17:39 smx1 sm-mta[24049]: STARTTLS=client, relay=relay.lab.test., "
        "version=TLSv1.3, verify=OK, cipher=TLS_AES_256_GCM_SHA384, bits=256/256",
        "Dec  2 14:17:14 smx1 sm-mta[22876]: 6B2EHENi022876: from=<voicemail@smx1.lab.test>, "
        "size=285, class=0, nrcpts=1, msgid=<202612021417.6B2EHErr022875@smx1.lab.test>, "
        "proto=ESMTP, daemon=MTA-v4, relay=localhost [127.0.0.1]",
        # a relay's answer that is not one of the named problems
        "Dec  2 14:17:39 smx1 sm-mta[24049]: 6B2EHdtT024045: to=<me@ourtest.com>, "
        "delay=00:00:00, xdelay=00:00:00, mailer=relay, pri=30285, "
        "relay=relay.lab.test. [10.202.0.7], dsn=5.0.0, reply=555 MAIL FROM parameters not "
        "recognized or not implemented, stat=Service unavailable",
    ],
}

POSTFIX = {
    "tls_verify_failed": [
        "Dec  2 14:19:53 pfx1 postfix/smtp[1734]: certificate verification failed for "
        "10.202.0.7[10.202.0.7]:587: untrusted issuer /CN=Relayfleet Lab CA",
        "Dec  2 14:19:43 pfx1 postfix/smtp[1098]: server certificate verification failed for "
        "10.202.0.7[10.202.0.7]:587: num=64:IP address mismatch",
        "Dec  2 14:19:53 pfx1 postfix/smtp[1734]: 8C74420C016: to=<me@ourtest.com>, "
        "relay=10.202.0.7[10.202.0.7]:587, delay=0.11, delays=0.05/0.04/0.02/0, dsn=4.7.5, "
        "status=deferred (Server certificate not verified)",
        # smtp_tls_loglevel 1, encrypt without a CA file
        "Dec  2 14:32:39 pfx1 postfix/smtp[20484]: Untrusted TLS connection established to "
        "10.202.0.7[10.202.0.7]:587: TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 "
        "bits) key-exchange X25519 server-signature RSA-PSS (2048 bits) server-digest SHA256",
    ],
    "tls_required": [
        "Dec  2 14:20:18 pfx1 postfix/smtp[7384]: 4271620C06C: to=<me@ourtest.com>, "
        "relay=smarthost.lab.test[10.202.0.3]:2525, delay=0.12, delays=0.03/0.05/0.04/0, "
        "dsn=4.7.4, status=deferred (TLS is required, but was not offered by host "
        "smarthost.lab.test[10.202.0.3])",
        # level none against a relay that requires STARTTLS
        "Dec  2 14:21:03 pfx1 postfix/smtp[20939]: ACED520C351: to=<me@ourtest.com>, "
        "relay=10.202.0.9[10.202.0.9]:587, delay=0.08, delays=0.06/0.02/0.01/0, dsn=5.7.0, "
        "status=bounced (host 10.202.0.9[10.202.0.9] said: 530 5.7.0 Must issue a STARTTLS "
        "command first (in reply to MAIL FROM command))",
    ],
    "auth_failed": [
        "Dec  2 14:20:10 pfx1 postfix/smtp[4802]: 4BEDF20C0E4: to=<me@ourtest.com>, "
        "relay=10.202.0.7[10.202.0.7]:587, delay=0.08, delays=0.03/0.04/0.02/0, dsn=4.7.8, "
        "status=deferred (SASL authentication failed; server 10.202.0.7[10.202.0.7] said: "
        "535 5.7.8 Authentication credentials invalid)",
    ],
    "relaying_denied": [
        "Dec  2 14:20:25 pfx1 postfix/smtp[10961]: 37D8B20C039: to=<me@ourtest.com>, "
        "relay=refuse.lab.test[10.202.0.4]:2525, delay=0.1, delays=0.02/0.03/0.05/0, "
        "dsn=5.7.1, status=bounced (host refuse.lab.test[10.202.0.4] said: 554 5.7.1 "
        "Relaying denied by lab sink (in reply to MAIL FROM command))",
        "Dec  2 14:20:32 pfx1 postfix/smtpd[14904]: NOQUEUE: reject: RCPT from "
        "smx1.lab.test[10.202.0.10]: 454 4.7.1 <victim@example.org>: Relay access denied; "
        "from=<someone@example.net> to=<victim@example.org> proto=ESMTP helo=<smx1.lab.test>",
    ],
    "ehlo_refused": [
        "Dec  2 14:20:39 pfx1 postfix/smtp[18268]: 948FF20C1C3: to=<me@ourtest.com>, "
        "relay=10.202.0.8[10.202.0.8]:587, delay=0.07, delays=0.03/0.05/0/0, dsn=4.7.0, "
        "status=deferred (host 10.202.0.8[10.202.0.8] refused to talk to me: 421 4.7.0 Try "
        "again later, closing connection. (EHLO) unqualified host name)",
    ],
    "policy_rejected": [
        "Dec  2 14:20:56 pfx1 postfix/smtp[20859]: 6989020C022: to=<me@ourtest.com>, "
        "relay=10.202.0.9[10.202.0.9]:587, delay=0.1, delays=0.03/0.04/0.02/0, dsn=5.7.1, "
        "status=bounced (host 10.202.0.9[10.202.0.9] said: 550 5.7.1 Sender address "
        "rejected: not owned by a customer domain (in reply to MAIL FROM command))",
    ],
    None: [
        "Dec  2 14:20:00 pfx1 postfix/smtp[1996]: 7A96C20C0F4: to=<me@ourtest.com>, "
        "relay=10.202.0.7[10.202.0.7]:587, delay=0.11, delays=0.03/0.06/0.02/0, dsn=2.0.0, "
        "status=sent (250 2.0.0 Ok: queued by the lab relay)",
        "Dec  2 14:20:56 pfx1 postfix/local[20862]: 802DF20C036: to=<voicemail@pfx1.lab.test>, "
        "relay=local, delay=0.02, delays=0/0.01/0/0.01, dsn=5.1.1, status=bounced (unknown "
        "user: \"voicemail\")",
        "Dec  2 14:20:32 pfx1 postfix/smtpd[14904]: disconnect from smx1.lab.test[10.202.0.10] "
        "ehlo=1 mail=1 rcpt=0/1 quit=1 commands=3/4",
    ],
}

CASES = [(mta, problem, line) for mta, table in (("sendmail", SENDMAIL), ("postfix", POSTFIX))
         for problem, lines in table.items() for line in lines]


def parse(line: str) -> LogRecord:
    record = parse_any_line(line)
    assert record is not None, line
    return record


@pytest.mark.parametrize("mta, problem, line", CASES,
                         ids=[f"{m}-{p}-{i}" for i, (m, p, _) in enumerate(CASES)])
def test_each_captured_line_names_its_problem(mta: str, problem: str | None,
                                              line: str) -> None:
    record = parse(line)
    assert record.program.startswith("postfix" if mta == "postfix" else "sm-mta")
    assert record.problem == problem, record.to_dict()
    assert record.to_dict()["problem"] == problem


def test_every_problem_is_shown_by_a_real_line() -> None:
    assert {p for _, p, _ in CASES} - {None} == set(PROBLEMS)
    assert {p for p in SENDMAIL if p} | {p for p in POSTFIX if p} == set(PROBLEMS)


def test_the_summary_counts_by_problem_with_labels() -> None:
    records = [parse(line) for _, _, line in CASES]
    summary = summarize(records)
    counts = {p["problem"]: p for p in summary["problems"]}
    assert set(counts) == set(PROBLEMS)
    verify = counts["tls_verify_failed"]
    # five sendmail lines, four Postfix ones; three of them are to= lines
    assert verify == {"problem": "tls_verify_failed",
                      "label": "certificate verification failed", "lines": 9, "deliveries": 3}
    assert counts["relaying_denied"]["lines"] == 5
    assert counts["relaying_denied"]["deliveries"] == 2
    assert [p["lines"] for p in summary["problems"]] == sorted(
        (p["lines"] for p in summary["problems"]), reverse=True)
    assert all(p["label"] == PROBLEMS[p["problem"]] for p in summary["problems"])
    doc = json.loads(json.dumps({"records": [r.to_dict() for r in records],
                                 "summary": summary}))
    assert LogSchema().validate(doc) == {}


def test_captured_logs_without_relay_trouble_name_none() -> None:
    # the seed story's deferrals (MX refusing, unknown hosts, timeouts) are not relay
    # problems: none of those lines is named
    for path in (FIXTURES / "sendmail" / "mail.log", FIXTURES / "postfix" / "debian-mail.log",
                 FIXTURES / "postfix" / "centos-maillog"):
        records = [r for r in map(parse_any_line, path.read_text().splitlines()) if r]
        assert records and summarize(records)["problems"] == [], path
