"""Relay-grade smarthosts on Postfix, fast: the TLS policy, any printable AUTH password and
sender masquerading, as main.cf edits (pure logic) and through PostfixOperations on the
fake Postfix host. The fake's TLS and rewriting behaviour is what the lab saw Postfix 3.7.11
do (tests/integration/test_lab_postfix_relay.py drives the real thing)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shared.errors import ConfigError
from shared.mta import FlushRequest
from shared.postfix import config as pfconf
from shared.testing import FakePostfixHost, debian_postfix_host, rhel_postfix_host
from shared.testing.postfix import CA_BUNDLES, FakeRelayTls
from shared.validation import Masquerade, SmarthostRequest, SmtpAuth, TlsPolicy
from tests.unit.test_postfix_operations_fake import (
    MAIN_CF,
    SASL,
    answer,
    changed_lines,
    config_state,
    ops_for,
    set_request,
)

SASL_MAP = "/etc/postfix/sasl_passwd"
#: blank, quote, backslash, colon: all kept as they are
PASSWORD = 'p@ss "w rd\\x:y'
RELAY = "smarthost.lab.test"
#: what the lab's real Postfix logged (ids, pids and times aside)
NO_STARTTLS = "TLS is required, but was not offered by host smarthost.lab.test[192.0.2.25]"
NOT_VERIFIED = "Server certificate not verified"
MISMATCH = ("server certificate verification failed for smarthost.lab.test[192.0.2.25]:2525: "
            "num=62:hostname mismatch")
CUSTOMER_MAP = ("inline:{ {@$myhostname=@ourtest.com}, {@localhost=@ourtest.com}, "
                "{@localhost.localdomain=@ourtest.com} }")


def edits(request: SmarthostRequest | None, current: dict[str, str], **kw: Any
          ) -> pfconf.MainCfEdits:
    return pfconf.smarthost_edits(request, current, "hash", SASL_MAP, **kw)


def secret_shown(text: str, secret: str = PASSWORD) -> bool:
    """The secret as it is, or as JSON writes it (quote and backslash escaped)."""
    return secret in text or json.dumps(secret)[1:-1] in text


def main_cf_values(host: FakePostfixHost, *names: str) -> dict[str, str]:
    return pfconf.parse_postconf(host.run(["postconf", *names]).stdout_text())


# -- TLS policy -----------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "level"), [
    ({"host": RELAY}, "may"),
    ({"host": RELAY, "tls": TlsPolicy("encrypt")}, "encrypt"),
    ({"host": RELAY, "auth": SmtpAuth("u", "pw")}, "encrypt"),
    ({"host": RELAY, "tls": TlsPolicy("verify")}, "verify"),
    ({"host": "192.0.2.7", "port": 587, "tls": TlsPolicy("verify")}, "verify"),
    # MX lookups: the certificate must still name the relay's domain, not whatever DNS says
    ({"host": RELAY, "mx": True, "tls": TlsPolicy("verify")}, "secure"),
])
def test_the_policy_picks_the_tls_level(body: dict[str, Any], level: str) -> None:
    request = SmarthostRequest(**body)
    assert pfconf.tls_level(request.tls_policy, pfconf.wanted_smarthost(request)) == level
    assert edits(request, {}).set["smtp_tls_security_level"] == level
    assert pfconf.parse_tls({"smtp_tls_security_level": level}) == {
        "mode": request.tls_policy.mode, "ca_file": None}


def test_verify_sets_the_ca_file_and_ending_it_takes_it_back_to_the_flavours_stock() -> None:
    verify = SmarthostRequest(RELAY, tls=TlsPolicy("verify", "/etc/relay-ca.pem"))
    made = edits(verify, {"smtp_tls_security_level": "may"}, ca_file="/etc/relay-ca.pem")
    assert made.set["smtp_tls_CAfile"] == "/etc/relay-ca.pem"
    assert made.set["smtp_tls_security_level"] == "verify"
    now = {"smtp_tls_security_level": "verify", "smtp_tls_CAfile": "/etc/relay-ca.pem"}
    assert "smtp_tls_CAfile" not in edits(verify, now, ca_file="/etc/relay-ca.pem").set
    # Debian's stock main.cf has no CAfile: it goes; RHEL's names its bundle: back to it.
    for request in (None, SmarthostRequest(RELAY, tls=TlsPolicy("encrypt"))):
        debian = edits(request, now)
        assert "smtp_tls_CAfile" in debian.remove and "smtp_tls_CAfile" not in debian.set
        rhel = edits(request, now, flavour="rhel")
        assert rhel.set["smtp_tls_CAfile"] == "/etc/pki/tls/certs/ca-bundle.crt"
        assert "smtp_tls_CAfile" not in rhel.remove
    # A CAfile under a level that does not verify is not relayfleet's: left alone.
    theirs = {"smtp_tls_security_level": "may", "smtp_tls_CAfile": "/etc/their-ca.pem"}
    for request in (None, SmarthostRequest(RELAY)):
        made = edits(request, theirs)
        assert "smtp_tls_CAfile" not in made.set and "smtp_tls_CAfile" not in made.remove


@pytest.mark.parametrize(("mx", "name", "value"), [
    (False, "smtp_tls_verify_cert_match", "hostname, relay.example.net"),
    (True, "smtp_tls_secure_cert_match", "nexthop"),
])
def test_verify_is_refused_when_main_cf_widened_the_name_check(mx: bool, name: str,
                                                               value: str) -> None:
    request = SmarthostRequest(RELAY, mx=mx, tls=TlsPolicy("verify"))
    with pytest.raises(ConfigError, match=f"tls.mode: .*{name} = {value}"):
        edits(request, {name: value}, ca_file="/etc/ssl/certs/ca-certificates.crt")
    # Postfix's own defaults, as postconf prints them, are fine
    assert edits(request, {name: dict(pfconf.CERT_MATCH.values())[name]},
                 ca_file="/etc/ssl/certs/ca-certificates.crt").set


# -- masquerade -------------------------------------------------------------------------------


def test_masquerade_with_the_envelope_is_a_generic_map_rewriting_the_hosts_own_names() -> None:
    made = edits(SmarthostRequest(RELAY, masquerade=Masquerade("ourtest.com")), {})
    assert made.set["smtp_generic_maps"] == CUSTOMER_MAP
    assert "sender_canonical_maps" not in made.set
    assert pfconf.parse_masquerade(made.set) == {"domain": "ourtest.com", "envelope": True}


def test_masquerade_of_headers_only_is_a_canonical_map_for_header_senders() -> None:
    request = SmarthostRequest(RELAY, masquerade=Masquerade("ourtest.com", envelope=False))
    made = edits(request, {})
    assert made.set["sender_canonical_maps"] == CUSTOMER_MAP
    assert made.set["sender_canonical_classes"] == "header_sender"
    assert "smtp_generic_maps" not in made.set
    assert pfconf.parse_masquerade(made.set) == {"domain": "ourtest.com", "envelope": False}


def test_a_request_without_masquerade_takes_relayfleets_out_and_switching_moves_it() -> None:
    generic = {"smtp_generic_maps": CUSTOMER_MAP}
    canonical = {"sender_canonical_maps": CUSTOMER_MAP,
                 "sender_canonical_classes": "header_sender"}
    for request in (None, SmarthostRequest(RELAY)):
        assert "smtp_generic_maps" in edits(request, generic).remove
        gone = edits(request, canonical).remove
        assert {"sender_canonical_maps", "sender_canonical_classes"} <= set(gone)
    headers = SmarthostRequest(RELAY, masquerade=Masquerade("ourtest.com", envelope=False))
    assert "smtp_generic_maps" in edits(headers, generic).remove
    both = SmarthostRequest(RELAY, masquerade=Masquerade("other.example"))
    moved = edits(both, canonical)
    assert moved.set["smtp_generic_maps"].endswith("{@localhost.localdomain=@other.example} }")
    assert {"sender_canonical_maps", "sender_canonical_classes"} <= set(moved.remove)


def test_someone_elses_rewriting_map_is_refused_for_masquerade_and_otherwise_kept() -> None:
    theirs = {"smtp_generic_maps": "hash:/etc/postfix/generic"}
    request = SmarthostRequest(RELAY, masquerade=Masquerade("ourtest.com"))
    with pytest.raises(ConfigError, match=r"masquerade: main\.cf already has smtp_generic_maps"):
        edits(request, theirs)
    for plain in (None, SmarthostRequest(RELAY)):
        made = edits(plain, theirs)
        assert "smtp_generic_maps" not in made.remove and "smtp_generic_maps" not in made.set
    assert pfconf.parse_masquerade(theirs) is None
    # a map for another set of names is not relayfleet's either
    assert pfconf.parse_masquerade(
        {"smtp_generic_maps": "inline:{ {@$myhostname=@a.example} }"}) is None


# -- passwords --------------------------------------------------------------------------------


@pytest.mark.parametrize("password", [PASSWORD, "a b", '"quoted"', "back\\slash\\", "#hash"])
def test_a_map_entry_holds_any_printable_password_verbatim(password: str) -> None:
    text = pfconf.set_entry("# relays\n", "[relay]:587", "pbx@example.com", password)
    # postmap's value is everything after the key's blanks, as it is (seen with postmap -q)
    assert text == f"# relays\n[relay]:587 pbx@example.com:{password}\n"
    assert pfconf.username_for(text, "[relay]:587") == "pbx@example.com"
    assert pfconf.remove_entry(text, "[relay]:587") == "# relays\n"


# -- through the operations ---------------------------------------------------------------------


def test_a_missing_ca_file_is_refused_before_anything_changes() -> None:
    host = debian_postfix_host()
    before = config_state(host)
    result = ops_for(host).set_smarthost(set_request(tls={"mode": "verify",
                                                          "ca_file": "/etc/ssl/relay-ca.pem"}))
    assert result.ok is False and result.error_kind == "config", result
    assert (result.error or "").startswith("tls.ca_file: /etc/ssl/relay-ca.pem is not on the host")
    assert config_state(host) == before and not host.ran("postfix") and host.reloads == 0
    # Without ca_file the host's bundle is used; a host without one is told which key to set.
    host.remove(CA_BUNDLES["debian"])
    result = ops_for(host).set_smarthost(set_request(tls={"mode": "verify"}))
    assert "mta.ca_bundle" in (result.error or "") and config_state(host) == before


def test_a_ca_file_that_is_no_regular_file_is_refused_before_anything_changes() -> None:
    host = debian_postfix_host()
    host.add_dir("/etc/ssl/relay-ca.pem")
    before = config_state(host)
    result = ops_for(host).set_smarthost(set_request(tls={"mode": "verify",
                                                          "ca_file": "/etc/ssl/relay-ca.pem"}))
    assert result.ok is False and result.error_kind == "config", result
    assert (result.error or "").startswith(
        "tls.ca_file: /etc/ssl/relay-ca.pem is not a regular file")
    assert [s.ok for s in result.steps if s.name == "ca file"] == [False]
    assert config_state(host) == before and host.reloads == 0


@pytest.mark.parametrize(("level", "mode"), [("may", "may"), ("encrypt", "encrypt")])
def test_main_cfs_own_tls_settings_are_read_back_as_they_are(level: str, mode: str) -> None:
    """A host's own main.cf may say what no request can (a $-expansion, a domain the
    grammar refuses): reading it back reports it and never fails, nor does a change."""
    host = debian_postfix_host()
    ops = ops_for(host)
    assert ops.set_smarthost(set_request()).ok
    host.run(["postconf", "-e", f"smtp_tls_security_level={level}",
              "smtp_tls_CAfile=${config_directory}/ca.pem",
              f"smtp_generic_maps={pfconf.masquerade_map('1.2.3')}"])
    mine = {"mode": mode, "ca_file": "${config_directory}/ca.pem"}
    masquerade = {"domain": "1.2.3", "envelope": True}
    for read in (ops.read_smarthost(), ops.status()):
        assert read.ok, read.error
        assert read.data["smarthost"]["tls"] == mine
        assert read.data["smarthost"]["masquerade"] == masquerade
    result = ops.set_smarthost(set_request(tls={"mode": "encrypt"}))
    assert result.ok and result.changed, result.error
    assert result.data["smarthost"]["tls"] == {"mode": "encrypt",
                                               "ca_file": "${config_directory}/ca.pem"}
    assert result.data["smarthost"]["masquerade"] is None  # the request names none
    assert ops.read_smarthost().data["smarthost"]["tls"]["ca_file"] == (
        "${config_directory}/ca.pem")
    assert ops.status().data["smarthost"]["tls"]["mode"] == "encrypt"


@pytest.mark.parametrize("make_host", [debian_postfix_host, rhel_postfix_host])
def test_verify_uses_the_hosts_bundle_and_a_tls_only_change_counts(make_host: Any) -> None:
    host = make_host()
    ops = ops_for(host)
    assert ops.set_smarthost(set_request()).ok
    result = ops.set_smarthost(set_request(tls={"mode": "verify"}))
    assert result.ok and result.changed, result.error
    bundle = CA_BUNDLES[host.flavour]
    assert result.data["smarthost"]["tls"] == {"mode": "verify", "ca_file": bundle}
    lines = changed_lines(result.data["diff"])
    assert "+smtp_tls_security_level = verify" in lines
    # RHEL's stock main.cf already names its bundle: no line for it
    assert (f"+smtp_tls_CAfile = {bundle}" in lines) is (host.flavour == "debian")
    assert ops.read_smarthost().data["smarthost"]["tls"]["mode"] == "verify"
    assert ops.status().data["smarthost"]["tls"] == {"mode": "verify", "ca_file": bundle}
    # Gone with the smarthost: may, and main.cf's CAfile as the flavour ships it.
    removed = ops.remove_smarthost()
    assert removed.ok and removed.changed, removed.error
    assert main_cf_values(host, "smtp_tls_security_level", "smtp_tls_CAfile") == {
        "smtp_tls_security_level": "may",
        "smtp_tls_CAfile": bundle if host.flavour == "rhel" else ""}


def test_tls_decides_what_the_relay_gets() -> None:
    host = debian_postfix_host(messages=[])
    ops = ops_for(host)
    # A relay offering no STARTTLS never gets the credentials: the mail waits.
    host.relay_tls[RELAY] = FakeRelayTls(starttls=False)
    assert ops.set_smarthost(set_request(auth={"username": "pbx", "password": PASSWORD})).ok
    host.queue_message(["me@ourtest.com"])
    assert host.relayed == [] and host.queue[0].recipients == {"me@ourtest.com": NO_STARTTLS}
    # verify against a certificate naming another host: deferred as Postfix says it
    host.relay_tls[RELAY] = FakeRelayTls(cert_name="other.lab.test")
    assert ops.set_smarthost(set_request(tls={"mode": "verify"})).ok
    flushed = ops.queue_flush(FlushRequest())
    assert [d["outcome"] for d in flushed.data["deliveries"]] == ["deferred"]
    assert flushed.data["deliveries"][0]["text"] == f"Deferred: {NOT_VERIFIED}"
    assert MISMATCH in host.read_text("/var/log/mail.log")
    # encrypt takes that certificate; the session ran STARTTLS
    assert ops.set_smarthost(set_request(tls={"mode": "encrypt"})).ok
    ops.queue_flush(FlushRequest())
    assert [(r.recipient, r.tls) for r in host.relayed] == [("me@ourtest.com", True)]


def test_any_printable_password_authenticates_and_is_never_shown() -> None:
    host = debian_postfix_host()
    ops = ops_for(host)
    result = ops.set_smarthost(set_request(auth={"username": "pbx", "password": PASSWORD}))
    assert result.ok, result.error
    assert host.read_text(SASL) == f"[{RELAY}]:2525 pbx:{PASSWORD}\n"
    flushed = ops.queue_flush(FlushRequest())
    assert {r.sasl_username for r in host.relayed} == {"pbx"}
    for text in (answer("set_smarthost", result), answer("flush_queue", flushed),
                 json.dumps(ops.status().to_dict()), host.read_text("/var/log/mail.log"),
                 host.read_text(MAIN_CF)):
        assert not secret_shown(text)
    assert not any(secret_shown(" ".join(argv)) for argv in host.ran())


def test_masquerade_rewrites_queued_voicemail_as_it_leaves_and_goes_with_the_smarthost() -> None:
    host = debian_postfix_host(messages=[])
    ops = ops_for(host)
    host.queue_message(["me@ourtest.com"], sender="asterisk")  # deferred: no smarthost yet
    assert host.queue[0].sender == "asterisk@pbx-deb.lab.test"  # qualified with myorigin
    assert ops.set_smarthost(set_request()).ok
    result = ops.set_smarthost(set_request(masquerade={"domain": "ourtest.com"}))
    assert result.ok and result.changed, result.error
    assert changed_lines(result.data["diff"]) == [f"+smtp_generic_maps = {CUSTOMER_MAP}"]
    assert result.data["smarthost"]["masquerade"] == {"domain": "ourtest.com", "envelope": True}
    ops.queue_flush(FlushRequest())
    assert [(r.sender, r.header_from) for r in host.relayed] == [
        ("asterisk@ourtest.com", "asterisk@ourtest.com")]
    # PUT without masquerade takes it out; so does remove_smarthost.
    again = ops.set_smarthost(set_request())
    assert changed_lines(again.data["diff"]) == [f"-smtp_generic_maps = {CUSTOMER_MAP}"]
    assert again.data["smarthost"]["masquerade"] is None
    assert ops.set_smarthost(set_request(masquerade={"domain": "ourtest.com"})).ok
    assert "smtp_generic_maps" in host.read_text(MAIN_CF)
    removed = ops.remove_smarthost()
    assert removed.ok and f"-smtp_generic_maps = {CUSTOMER_MAP}" in changed_lines(
        removed.data["diff"])
    assert "smtp_generic_maps" not in host.read_text(MAIN_CF)


def test_header_only_masquerade_rewrites_new_mail_from_headers_only() -> None:
    host = rhel_postfix_host(messages=[])
    ops = ops_for(host)
    result = ops.set_smarthost(set_request(masquerade={"domain": "ourtest.com",
                                                       "envelope": False}))
    assert result.ok, result.error
    assert main_cf_values(host, "sender_canonical_classes")["sender_canonical_classes"] == (
        "header_sender")
    host.queue_message(["me@ourtest.com"], sender="asterisk")
    # RHEL's main.cf leaves myhostname to the system: pbx-rhel.localdomain
    assert [(r.sender, r.header_from) for r in host.relayed] == [
        ("asterisk@pbx-rhel.localdomain", "asterisk@ourtest.com")]
    assert ops.read_smarthost().data["smarthost"]["masquerade"] == {"domain": "ourtest.com",
                                                                   "envelope": False}
    removed = ops.remove_smarthost()
    assert removed.ok and "-sender_canonical_classes = header_sender" in changed_lines(
        removed.data["diff"])


def test_a_foreign_rewriting_map_refuses_masquerade_before_anything_changes() -> None:
    host = debian_postfix_host()
    host.run(["postconf", "-e", "smtp_generic_maps=hash:/etc/postfix/generic"])
    before = config_state(host)
    result = ops_for(host).set_smarthost(set_request(masquerade={"domain": "ourtest.com"}))
    assert result.ok is False and result.error_kind == "config"
    assert "smtp_generic_maps = hash:/etc/postfix/generic" in (result.error or "")
    assert config_state(host) == before and host.reloads == 0
