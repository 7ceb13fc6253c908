"""Relay-grade sendmail on real lab hosts, driven through relayfleet-ops: the TLS policy
(access map ``TLS_Srv`` entries, CA settings), the base64 AUTH password and masquerading,
against the lab's aiosmtpd relays (:mod:`tests.lab.relay`).

What sendmail 8.17.1.9 does here (and the tests hold it to):

- a relay that offers AUTH without STARTTLS gets the password in clear unless the access
  map's ``TLS_Srv:RELAY ENCR:112`` stops the session after EHLO (``AuthOptions=p`` does not:
  it applies to sendmail as a server only); the maillog says
  ``ruleset=tls_server, arg1=NONE, relay=RELAY, reject=454 4.7.0 encryption too weak 0 less
  than 112``;
- sendmail loads CA certificates only when confCACERT_PATH and confCACERT are both set:
  with both (and ``confCACERT`` a CA file of the host's own), ``VERIFY:112+CN`` delivers
  through a relay whose certificate that CA signed for its name.

That ``VERIFY:112+CN`` keeps mail from a relay whose certificate names another host
(``ruleset=tls_server, arg1=OK, relay=RELAY, reject=454 4.7.0 CN other.lab.test does not
match RELAY``) and ``ENCR:112`` delivers through it, the relay-grade acceptance test shows.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from shared.sendmail.mc import read_cf_masquerade, set_smarthost_mc
from shared.validation import parse_smarthost_request
from tests.integration.test_m4_quoting import CF_M4, compile_mc
from tests.lab.lab import Lab, LabHost
from tests.lab.relay import Relay
from tests.lab.relay_story import header, subject_of

USER = "pbx-0042@customer.example"
PASSWORD = 'p@ss "w rd\\x'
CUSTOMER = "ourtest.com"
VOICEMAIL_TO = "me@ourtest.com"
_names = itertools.count(1)


@pytest.fixture
def start_relay(lab: Lab) -> Iterator[Callable[..., Relay]]:
    """Start lab relays (names of their own) for one test; they stop when it ends."""
    started: list[Relay] = []

    def start(mode: str, **options: Any) -> Relay:
        relay = lab.start_relay(f"smrelay{next(_names)}", mode, credentials=(USER, PASSWORD),
                                **options)
        started.append(relay)
        return relay

    yield start
    for relay in started:
        lab.stop_relay(relay)


def body(relay: Relay, **extra: Any) -> dict[str, Any]:
    return {"host": relay.fqdn, "port": relay.port,
            "auth": {"username": USER, "password": PASSWORD}, **extra}


def set_smarthost(host: LabHost, request: dict[str, Any]) -> dict[str, Any]:
    code, result = host.ops("set-smarthost", body=request)
    assert code == 0 and result["ok"], result
    assert PASSWORD not in repr(result) and PASSWORD not in host.read_maillog()
    return result


def queue(host: LabHost, sender: str, subject: str) -> None:
    """Queue a voicemail from ``sender`` (envelope and From:) without trying it yet."""
    message = (f"From: {sender}\nTo: {VOICEMAIL_TO}\nSubject: {subject}\n\n"
               "You have a new voicemail.\n").encode()
    host.run(["/usr/sbin/sendmail", "-Am", "-odq", "-oi", "-f", sender, VOICEMAIL_TO],
             input=message, timeout=60)


def flush(host: LabHost) -> dict[str, Any]:
    code, flushed = host.ops("flush")
    assert code == 0, flushed
    assert PASSWORD not in repr(flushed)
    return flushed


def delivered(relay: Relay, subject: str) -> list[dict[str, Any]]:
    return [m for m in relay.messages() if subject_of(m) == subject]


def wait_log(host: LabHost, line: str) -> None:
    host.wait_for(lambda: line in host.read_maillog(), 30, f"maillog line {line!r}")


@pytest.mark.lab
@pytest.mark.slow
def test_encrypt_never_sends_the_password_to_a_relay_without_starttls(
        make_host: Callable[..., LabHost], start_relay: Callable[..., Relay]) -> None:
    host = make_host("centos")  # its mc has FEATURE(access_db) with a map spec of its own
    relay = start_relay("cleartext-auth")
    result = set_smarthost(host, body(relay))
    assert result["data"]["smarthost"]["tls"] == {"mode": "encrypt", "ca_file": None}
    access = (host.mail_dir / "access").read_text()
    assert f"TLS_Srv:{relay.fqdn}\tENCR:112\n" in access
    assert f"+TLS_Srv:{relay.fqdn}\tENCR:112\n" in result["data"]["diff"]

    queue(host, f"asterisk@{host.fqdn}", "over a relay without TLS")
    flush(host)
    wait_log(host, f"ruleset=tls_server, arg1=NONE, relay={relay.fqdn}, reject=454 4.7.0 "
                   "encryption too weak 0 less than 112")
    host.wait_for(lambda: bool(relay.sessions()), 30, "the relay's session record")
    # the relay offered AUTH; sendmail said EHLO and left
    assert [s["commands"] for s in relay.sessions()] == [["EHLO", "QUIT"]], relay.sessions()
    assert not relay.received_secret(PASSWORD) and relay.messages() == []
    assert "encryption too weak 0 less than 112" in host.mailq()

    # the entry is what protects it: without it sendmail sends the password in clear
    (host.mail_dir / "access").write_text(access.replace(f"TLS_Srv:{relay.fqdn}\tENCR:112\n", ""))
    host.run(["sh", "-c", "makemap hash /etc/mail/access < /etc/mail/access"])
    flush(host)
    host.wait_for(lambda: relay.received_secret(PASSWORD), 30, "the password at the relay")


@pytest.mark.lab
@pytest.mark.slow
def test_base64_password_and_masquerade_through_a_verified_relay(
        make_host: Callable[..., LabHost], start_relay: Callable[..., Relay]) -> None:
    host = make_host("debian")
    host.trust_lab_ca()
    access_before = (host.mail_dir / "access").read_bytes()
    # like Google's: STARTTLS required, AUTH after it, senders from the customer's domain only
    relay = start_relay("gmail", senders_domain=CUSTOMER)
    tls = {"mode": "verify", "ca_file": host.lab_ca_file}  # the lab CA alone
    request = body(relay, tls=tls, masquerade={"domain": CUSTOMER})
    result = set_smarthost(host, request)
    smarthost = result["data"]["smarthost"]
    assert smarthost["auth"] == {"username": USER}
    assert smarthost["masquerade"] == {"domain": CUSTOMER, "envelope": True}
    assert smarthost["tls"] == tls
    cf_options = set((host.mail_dir / "sendmail.cf").read_text().splitlines())
    assert {"O CACertPath=/etc/ssl/certs", f"O CACertFile={host.lab_ca_file}",
            "O SetCertAltnames=true"} <= cf_options
    authinfo = (host.mail_dir / "authinfo").read_text()
    assert '"P=' in authinfo and PASSWORD not in authinfo

    subject = f"voicemail {time.time_ns()}"
    queue(host, f"asterisk@{host.fqdn}", subject)
    flush(host)
    host.wait_for(lambda: bool(delivered(relay, subject)), 60, "the voicemail at the relay")
    message = delivered(relay, subject)[0]
    # the relay's authenticator compared the password byte for byte
    assert message["auth_user"] == USER and message["tls"], message
    assert message["mail_from"] == f"asterisk@{CUSTOMER}"
    assert header(message, "From") == f"asterisk@{CUSTOMER}"
    assert not relay.received_secret(PASSWORD)  # inside TLS only

    again = set_smarthost(host, request)
    assert again["changed"] is False and again["data"]["diff"] == ""
    code, removed = host.ops("remove-smarthost")
    assert code == 0 and removed["ok"] and removed["changed"], removed
    assert (host.mail_dir / "access").read_bytes() == access_before
    mc = (host.mail_dir / "sendmail.mc").read_text()
    assert "MASQUERADE_AS" not in mc and "confCACERT" not in mc and "altnames" not in mc
    cf = (host.mail_dir / "sendmail.cf").read_text()
    assert read_cf_masquerade(cf) is None
    assert not [ln for ln in cf.splitlines() if ln.startswith(("O CACert", "O SetCertAltnames"))]


# needs GNU m4 and sendmail-cf only, no lab
@pytest.mark.parametrize("domain", ["dnl.example.com", "divert.example.com", "x-dnl.include",
                                    "ifdef.esyscmd.test", "ourtest.com"])
def test_masquerade_compiles_to_exactly_the_domain_with_the_real_m4(domain: str) -> None:
    request = parse_smarthost_request({"host": "relay.example.net",
                                       "masquerade": {"domain": domain}})
    mc = f"include(`{CF_M4}')dnl\nOSTYPE(`debian')dnl\nMAILER(`smtp')dnl\n"
    cf = compile_mc(set_smarthost_mc(mc, request))
    masquerade = read_cf_masquerade(cf)
    assert masquerade is not None and (masquerade.domain, masquerade.envelope) == (domain, True)

