"""Relay-grade smarthosts on real Postfix lab hosts, through relayfleet-ops: verify against
a CA file of the host's own (one it lacks is refused before anything changes), a password
with a blank, a quote and a backslash that authenticates and is never shown, and sender
masquerading (a voicemail already queued goes out under the customer's domain; headers
only). That encrypt keeps the password from a relay offering no STARTTLS, and that verify
refuses a certificate naming another host where encrypt takes it, the relay-grade
acceptance test shows on Postfix and sendmail alike."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.lab.lab import SINK_PORT, Lab, LabHost
from tests.lab.relay import Relay

pytestmark = [pytest.mark.lab, pytest.mark.slow]

USER = "pbx-0042@customer.example"
PASSWORD = 'p@ss "w rd\\x'
VOICEMAIL_TO = "me@ourtest.com"
CUSTOMER = "ourtest.com"


@pytest.fixture
def relays(lab: Lab) -> Iterator[Callable[..., Relay]]:
    """Start lab relays for one test; stopped when it ends."""
    started: list[Relay] = []

    def start(name: str, mode: str = "gmail", **options: Any) -> Relay:
        started.append(lab.start_relay(name, mode, **options))
        return started[-1]

    yield start
    for relay in started:
        lab.stop_relay(relay)


@pytest.fixture
def pf_host(make_host: Callable[..., LabHost]) -> LabHost:
    """A Debian Postfix lab host trusting the lab CA (the default bundle holds it)."""
    host = make_host("debian", mta="postfix")
    host.trust_lab_ca()
    return host


def body(relay: Relay, **extra: Any) -> dict[str, Any]:
    return {"host": relay.fqdn, "port": relay.port, **extra}


def set_smarthost(host: LabHost, request: dict[str, Any]) -> dict[str, Any]:
    code, result = host.ops("set-smarthost", body=request)
    assert code == 0 and result["ok"], result
    return result


def secret_shown(text: str) -> bool:
    """The password as it is, or as JSON writes it (quote and backslash escaped)."""
    return PASSWORD in text or json.dumps(PASSWORD)[1:-1] in text


def delivered(relay: Relay, subject: str) -> Callable[[], list[dict[str, Any]]]:
    return lambda: [m for m in relay.messages() if f"Subject: {subject}" in m["data"]]


def test_verify_delivers_to_a_relay_its_ca_file_vouches_for_and_the_password_stays_hidden(
        pf_host: LabHost, relays: Callable[..., Relay]) -> None:
    host = pf_host
    relay = relays("pf-verified", credentials=(USER, PASSWORD))
    # The lab CA alone: the relay's chain verifies and its certificate names it.
    result = set_smarthost(host, body(relay, auth={"username": USER, "password": PASSWORD},
                                      tls={"mode": "verify", "ca_file": host.lab_ca_file}))
    assert f"+smtp_tls_CAfile = {host.lab_ca_file}" in result["data"]["diff"]
    assert result["data"]["smarthost"]["auth"] == {"username": USER}
    subject = f"verified {time.time_ns()}"
    host.send_mail([VOICEMAIL_TO], subject=subject)
    host.wait_for(delivered(relay, subject), 30, "the voicemail at the relay")
    # The relay's authenticator compared the password byte for byte, inside TLS.
    message = delivered(relay, subject)()[0]
    assert message["auth_user"] == USER and message["tls"] in ("TLSv1.2", "TLSv1.3")
    assert relay.refusals() == [] and not relay.received_secret(PASSWORD)
    read, log = host.ops("read-smarthost")[1], host.ops("log", "--lines", "200")[1]
    assert read["data"]["smarthost"]["auth"] == {"username": USER} and log["ok"]
    for text in (json.dumps(result), json.dumps(read), json.dumps(log), host.read_maillog()):
        assert not secret_shown(text)
    # A CA file the host does not have is refused before anything changes.
    before = host.file_snapshot("main.cf")
    code, refused = host.ops("set-smarthost", body=body(relay, tls={
        "mode": "verify", "ca_file": "/etc/ssl/certs/no-such-ca.pem"}))
    assert code != 0 and refused["error_kind"] == "config", refused
    assert refused["error"].startswith("tls.ca_file: /etc/ssl/certs/no-such-ca.pem")
    assert host.file_snapshot("main.cf") == before


def test_masquerade_rewrites_the_queued_voicemail_and_new_from_headers(
        pf_host: LabHost, relays: Callable[..., Relay]) -> None:
    host = pf_host
    relay = relays("pf-customers", senders_domain=CUSTOMER)
    # Stuck before the smarthost was set: queued as voicemail@HOST.
    subject = f"queued voicemail {time.time_ns()}"
    host.send_mail([VOICEMAIL_TO], subject=subject)
    host.wait_deferred()
    result = set_smarthost(host, body(relay, masquerade={"domain": CUSTOMER}))
    assert result["data"]["smarthost"]["masquerade"] == {"domain": CUSTOMER, "envelope": True}
    assert "+smtp_generic_maps = inline:{ {@$myhostname=@ourtest.com}" in result["data"]["diff"]
    host.ops("flush")
    host.wait_for(delivered(relay, subject), 30, "the masqueraded voicemail")
    message = delivered(relay, subject)()[0]
    assert message["mail_from"] == f"voicemail@{CUSTOMER}"
    assert f"From: voicemail@{CUSTOMER}" in message["data"].splitlines(), message["data"]
    # A bare local sender (Asterisk's) is qualified with the host's name, then rewritten.
    subject = f"bare sender {time.time_ns()}"
    host.run(["/usr/sbin/sendmail", "-oi", "-f", "asterisk", VOICEMAIL_TO],
             input=f"From: Asterisk PBX <asterisk>\nSubject: {subject}\n\nHi.\n".encode())
    host.wait_for(delivered(relay, subject), 30, "the bare sender's voicemail")
    message = delivered(relay, subject)()[0]
    assert message["mail_from"] == f"asterisk@{CUSTOMER}"
    assert f"From: Asterisk PBX <asterisk@{CUSTOMER}>" in message["data"].splitlines(), (
        message["data"])
    assert relay.refusals() == []

    # Headers only: the envelope keeps the host's name (this relay would refuse it, so the
    # lab's accept-all sink takes it); gone with the smarthost.
    sink = host.lab.smarthost
    headers = set_smarthost(host, {"host": "smarthost.lab.test", "port": SINK_PORT,
                                   "masquerade": {"domain": CUSTOMER, "envelope": False}})
    assert headers["data"]["smarthost"]["masquerade"] == {"domain": CUSTOMER, "envelope": False}
    subject = f"headers only {time.time_ns()}"
    host.send_mail([VOICEMAIL_TO], subject=subject)
    host.wait_for(lambda: [m for m in sink.messages() if subject in m["data"]], 30, "the sink")
    [message] = [m for m in sink.messages() if subject in m["data"]]
    assert message["mail_from"].startswith(f"<voicemail@{host.fqdn}>"), message
    assert f"From: voicemail@{CUSTOMER}" in message["data"].splitlines(), message["data"]
    code, removed = host.ops("remove-smarthost")
    assert code == 0 and removed["ok"], removed
    for name in ("smtp_generic_maps", "sender_canonical_maps", "sender_canonical_classes"):
        assert host.postconf("-n", name).strip() == "", name
