"""The lab's relay-grade smarthosts behave like the relays MSPs use, shown with a plain
smtplib client inside lab hosts (the lab's DNS, the host's CA trust) and from the root
namespace: STARTTLS with lab-CA certificates, AUTH only after STARTTLS and checked, Google's
refusal of unqualified EHLO names, a certificate naming another host, a customer-domain
sender rule, a relay offering AUTH in clear; and what each records."""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.lab.lab import Lab, LabError, LabHost, sh
from tests.lab.relay import Relay

pytestmark = [pytest.mark.lab, pytest.mark.slow]

_numbers = itertools.count(1)

USER = "pbx-0042@customer.example"
#: a relay password as real ones are: blank, quote, backslash, at sign
PASSWORD = 'p@ss "w rd\\x'

#: a plain smtplib client: argv[1] is JSON {host, port, steps}; prints one JSON result per
#: step until a step fails ({step, code, text} or {step, error}), features after each EHLO
CLIENT = r'''
import json, smtplib, ssl, sys
spec = json.loads(sys.argv[1])
out = []
try:
    smtp = smtplib.SMTP(spec["host"], spec["port"], timeout=10)
    for step in spec["steps"]:
        verb, args = step[0], step[1:]
        entry = {"step": verb}
        out.append(entry)
        if verb in ("ehlo", "helo"):
            code, text = getattr(smtp, verb)(args[0])
            entry["features"] = sorted(smtp.esmtp_features) if verb == "ehlo" else []
        elif verb == "starttls":
            opts = args[0]
            context = ssl.create_default_context(cafile=opts.get("cafile"))
            context.check_hostname = opts.get("check_hostname", True)
            code, text = smtp.docmd("STARTTLS")
            if code == 220:
                smtp.sock = context.wrap_socket(smtp.sock, server_hostname=opts["server_hostname"])
                smtp.file = None
                smtp.helo_resp = smtp.ehlo_resp = None
                smtp.esmtp_features = {}
                smtp.does_esmtp = False
                entry["tls"] = smtp.sock.version()
        elif verb == "login":
            smtp.user, smtp.password = args[0], args[1]
            method = smtp.auth_plain if args[2] == "PLAIN" else smtp.auth_login
            try:
                code, text = smtp.auth(args[2], method)
            except smtplib.SMTPAuthenticationError as error:
                code, text = error.smtp_code, error.smtp_error
        elif verb == "mail":
            code, text = smtp.mail(args[0], [a for a in args[1:] if a != "may-fail"])
        elif verb == "rcpt":
            code, text = smtp.rcpt(args[0])
        elif verb == "data":
            code, text = smtp.data(args[0])
        else:
            code, text = smtp.docmd(verb.upper())
        entry.update(code=code, text=text.decode(errors="replace"))
        if code >= 400 and not (len(step) > 1 and step[-1] == "may-fail"):
            break
except Exception as error:
    out.append({"step": "error", "error": f"{type(error).__name__}: {error}"})
print(json.dumps(out))
'''


def converse(relay: Relay, steps: list[list[Any]], host: LabHost | None = None,
             address: bool = False) -> list[dict[str, Any]]:
    """Run the client inside ``host`` (or in the root namespace) against ``relay``: by its
    DNS name through the host's resolver, or by its address (the root namespace has no
    lab DNS)."""
    spec = json.dumps({"host": relay.address if address or host is None else relay.fqdn,
                       "port": relay.port, "steps": steps})
    argv = [sys.executable, "-c", CLIENT, spec]
    ended = len(relay.sessions())
    proc = host.run(argv, timeout=60) if host is not None else sh(argv, timeout=60)
    result: list[dict[str, Any]] = json.loads(proc.stdout)
    relay.wait_sessions(ended + 1)  # the relay has recorded this connection
    return result


def by_step(transcript: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The last result of each step."""
    return {entry["step"]: entry for entry in transcript}


@pytest.fixture
def start_relay(lab: Lab) -> Iterator[Callable[..., Relay]]:
    """Start relays on the lab for one test (named ``NAME-N``: other tests' relays may hold
    plain names); they are stopped when it ends."""
    started: list[Relay] = []

    def factory(name: str, mode: str = "gmail", **options: Any) -> Relay:
        relay = lab.start_relay(f"{name}-{next(_numbers)}", mode, **options)
        started.append(relay)
        return relay

    yield factory
    for relay in started:
        lab.stop_relay(relay)


def tls(relay: Relay, **options: Any) -> list[Any]:
    """A STARTTLS step verifying the relay's certificate for its DNS name."""
    return ["starttls", {"server_hostname": relay.fqdn, **options}]


def test_a_host_trusts_the_lab_ca_and_the_gmail_relay_takes_auth_only_after_starttls(
        lab: Lab, make_host: Callable[..., LabHost], start_relay: Callable[..., Relay]) -> None:
    # (Postfix hosts trust the lab CA alike: diagnose and the relay-grade tests show it.)
    relay = start_relay("gmail", credentials=(USER, PASSWORD))
    host = make_host("debian", start=False)
    # Not yet trusting the lab CA: the default bundle refuses the relay's certificate.
    before = by_step(converse(relay, [["ehlo", host.fqdn], tls(relay)], host))
    assert "CERTIFICATE_VERIFY_FAILED" in before["error"]["error"], before

    assert host.trust_lab_ca() == "/etc/ssl/certs/ca-certificates.crt"
    assert lab.ca.cert.read_text() in host.fs(host.trust_lab_ca()).read_text()
    # The machine's own bundle stays as it was.
    assert lab.ca.cert.read_text() not in Path("/etc/ssl/certs/ca-certificates.crt").read_text()
    # OpenSSL's hashed directory (sendmail's CACertPath, Postfix's smtp_tls_CApath) too.
    verify = host.run(["openssl", "verify", "-CApath", "/etc/ssl/certs", "-verify_hostname",
                       relay.fqdn, str(relay.cert)], check=False)
    assert verify.returncode == 0, verify.stderr

    subject = f"voicemail via {relay.fqdn}"
    steps: list[list[Any]] = [
        ["ehlo", host.fqdn], ["mail", "voicemail@ourtest.com", "may-fail"], tls(relay),
        ["ehlo", host.fqdn],
        ["mail", "voicemail@ourtest.com", "may-fail"], ["login", USER, "wrong", "PLAIN"],
        # sendmail names the authenticated sender (RFC 4954's AUTH=<>): relays take it.
        ["login", USER, PASSWORD, "LOGIN"], ["mail", "voicemail@ourtest.com", "AUTH=<>"],
        ["rcpt", "me@ourtest.com"], ["data", f"Subject: {subject}\n\nHello.\n"], ["quit"]]
    transcript = converse(relay, steps, host)
    clear_ehlo, after_tls = transcript[0], transcript[3]
    assert "starttls" in clear_ehlo["features"] and "auth" not in clear_ehlo["features"]
    assert transcript[1]["code"] == 530 and "STARTTLS" in transcript[1]["text"]
    # The client stops at the refused wrong password: start again, right password at once.
    assert transcript[2]["tls"] in ("TLSv1.2", "TLSv1.3")
    assert "auth" in after_tls["features"], after_tls
    assert transcript[4]["code"] == 530 and "Authentication required" in transcript[4]["text"]
    assert transcript[5]["code"] == 535 and len(transcript) == 6, transcript
    transcript = converse(relay, [["ehlo", host.fqdn], tls(relay), ["ehlo", host.fqdn],
                                  *steps[6:]], host)
    assert [e.get("code") for e in transcript] == [250, 220, 250, 235, 250, 250, 250, 221]

    message = relay.messages()[-1]
    assert message["auth_user"] == USER and message["tls"] in ("TLSv1.2", "TLSv1.3")
    assert message["ehlo"] == host.fqdn and message["peer"] == host.address
    assert message["mail_from"] == "voicemail@ourtest.com" and f"Subject: {subject}" in (
        message["data"])
    reasons = [(r["command"], r["reason"]) for r in relay.refusals()]
    assert reasons == [("MAIL", "starttls-required"), ("MAIL", "auth-required"),
                       ("AUTH", "auth-failed")], reasons
    assert relay.refusals()[2]["login"] == USER
    sessions = relay.sessions()
    assert "unknown ca" in sessions[0]["tls_error"] and sessions[0]["tls"] is None
    assert [s["auth_user"] for s in sessions] == [None, None, USER]
    assert sessions[2]["commands"] == ["EHLO", "STARTTLS", "EHLO", "AUTH", "MAIL", "RCPT",
                                       "DATA", "QUIT"]
    # After STARTTLS the password crossed only inside TLS records.
    assert relay.wire() and not relay.received_secret(PASSWORD)


def test_unqualified_ehlo_names_are_refused_like_googles_relay(
        start_relay: Callable[..., Relay]) -> None:
    picky = start_relay("picky", credentials=(USER, PASSWORD), refuse_unqualified_ehlo=True)
    lenient = start_relay("lenient", credentials=(USER, PASSWORD))
    names = ["localhost", "localhost.localdomain", "pbx", "pbx.localdomain", "LOCALHOST"]
    for verb in ("ehlo", "helo"):
        for name in names:
            transcript = converse(picky, [[verb, name, "may-fail"], ["noop"]], address=True)
            assert transcript[0]["code"] == 421, transcript
            assert transcript[0]["text"] == (
                f"4.7.0 Try again later, closing connection. ({verb.upper()}) "
                "unqualified host name")
            # The relay closed the connection (the client may see a reset).
            assert transcript[1] == {"step": "noop"} and transcript[2]["error"].startswith(
                "SMTPServerDisconnected: Connection unexpectedly closed"), transcript
            answered = converse(lenient, [[verb, name], ["noop"]], address=True)
            assert [e.get("code") for e in answered] == [250, 250], answered
    refused = [(r["command"], r["argument"], r["reason"]) for r in picky.refusals()]
    assert refused == [(v.upper(), n, "unqualified-ehlo") for v in ("ehlo", "helo")
                       for n in names]
    assert not lenient.refusals()
    # A qualified name (or an address literal) goes on to STARTTLS and AUTH.
    ok = converse(picky, [["ehlo", "pbx.customer.example"], ["ehlo", "[10.0.0.1]"]],
                  address=True)
    assert [e["code"] for e in ok] == [250, 250] and "starttls" in ok[0]["features"]


def test_a_wrong_name_certificate_is_refused_by_name_checks_only(
        lab: Lab, make_host: Callable[..., LabHost],
        start_relay: Callable[..., Relay]) -> None:
    relay = start_relay("wrongname", "wrongname", credentials=(USER, PASSWORD))
    assert relay.cert_names == ["other.lab.test"]
    host = make_host("debian", start=False)
    host.trust_lab_ca()
    checked = converse(relay, [["ehlo", host.fqdn], tls(relay)], host)
    assert "Hostname mismatch" in checked[-1]["error"], checked
    assert relay.sessions()[-1]["tls_error"] and relay.sessions()[-1]["tls"] is None
    # Encryption without the name check (the chain still verified): AUTH and mail go through.
    transcript = converse(relay, [
        ["ehlo", host.fqdn], tls(relay, check_hostname=False), ["ehlo", host.fqdn],
        ["login", USER, PASSWORD, "PLAIN"], ["mail", "voicemail@ourtest.com"],
        ["rcpt", "me@ourtest.com"], ["data", "Subject: encrypted\n\nHello.\n"]], host)
    assert [e.get("code") for e in transcript] == [250, 220, 250, 235, 250, 250, 250]
    assert relay.messages()[-1]["auth_user"] == USER
    # From the root namespace, the lab bundle verifies the chain for the name it carries.
    named = converse(relay, [["ehlo", "pbx.lab.test"],
                             ["starttls", {"server_hostname": "other.lab.test",
                                           "cafile": str(lab.ca.bundle)}]], address=True)
    assert named[-1]["code"] == 220 and named[-1]["tls"], named


def test_only_customer_domain_senders_are_taken(lab: Lab,
                                                start_relay: Callable[..., Relay]) -> None:
    relay = start_relay("customers", credentials=(USER, PASSWORD), senders_domain="ourtest.com")
    base: list[list[Any]] = [["ehlo", "pbx.lab.test"],
                             tls(relay, cafile=str(lab.ca.bundle)),
                             ["ehlo", "pbx.lab.test"], ["login", USER, PASSWORD, "PLAIN"]]
    refused = converse(relay, [*base, ["mail", "asterisk@pbx.localdomain"]], address=True)
    assert refused[-1]["code"] == 550
    assert refused[-1]["text"] == ("5.7.1 Sender address rejected: not owned by a customer "
                                   "domain")
    taken = converse(relay, [*base, ["mail", "voicemail@OurTest.com"], ["rcpt", "me@ourtest.com"],
                             ["data", "Subject: masqueraded\n\nHello.\n"]], address=True)
    assert [e["code"] for e in taken][-3:] == [250, 250, 250], taken
    assert [m["mail_from"] for m in relay.messages()] == ["voicemail@OurTest.com"]
    assert [(r["argument"], r["reason"]) for r in relay.refusals()] == [
        ("FROM:<asterisk@pbx.localdomain>", "sender-domain")]


def test_the_cleartext_relay_records_a_password_sent_in_clear(
        start_relay: Callable[..., Relay]) -> None:
    relay = start_relay("cleartext", "cleartext-auth", credentials=(USER, PASSWORD))
    # A careful client sees no STARTTLS and leaves: the relay never gets the password.
    careful = converse(relay, [["ehlo", "pbx.lab.test"], ["quit"]], address=True)
    features = careful[0]["features"]
    assert "auth" in features and "starttls" not in features, features
    assert relay.wire() and not relay.received_secret(PASSWORD)
    assert relay.sessions()[-1]["commands"] == ["EHLO", "QUIT"]
    # A careless one logs in (either mechanism): the relay shows it got the password.
    for mechanism in ("PLAIN", "LOGIN"):
        careless = converse(relay, [["ehlo", "pbx.lab.test"],
                                    ["login", USER, PASSWORD, mechanism]], address=True)
        assert careless[-1]["code"] == 235, careless
    assert relay.received_secret(PASSWORD)
    assert [s["auth_user"] for s in relay.sessions()][-2:] == [USER, USER]
    assert relay.sessions()[-1]["tls"] is None


def test_relays_leave_no_trace_when_stopped(lab: Lab) -> None:
    name = f"shortlived-{next(_numbers)}"
    relay = lab.start_relay(name, credentials=(USER, PASSWORD))
    with pytest.raises(LabError, match="taken"):
        lab.start_relay(name)
    with pytest.raises(LabError, match="unknown relay mode"):
        lab.start_relay("other-mode", "open")
    assert f"{relay.address} {relay.fqdn}" in (lab.workdir / "dns-hosts").read_text()
    process = relay.process
    assert process is not None and process.poll() is None
    lab.stop_relay(relay)
    assert process.poll() is not None and name not in lab.relays
    assert relay.fqdn not in (lab.workdir / "dns-hosts").read_text()
    addresses = sh(["ip", "-4", "-o", "addr", "show", "dev", lab.bridge]).stdout.decode()
    assert f" {relay.address}/" not in addresses
