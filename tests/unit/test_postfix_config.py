"""Postfix's relayhost values, SASL map lines and main.cf edits (pure logic)."""

from __future__ import annotations

import pytest

from shared.errors import ValidationError
from shared.postfix import config as pfconf
from shared.sendmail.mc import Smarthost
from shared.validation import SmarthostRequest, SmtpAuth, parse_smarthost_request


@pytest.mark.parametrize(("request_body", "value"), [
    ({"host": "relay.example.com"}, "[relay.example.com]"),
    ({"host": "relay.example.com", "port": 2525}, "[relay.example.com]:2525"),
    ({"host": "relay.example.com", "port": 587, "mx": True}, "relay.example.com:587"),
    ({"host": "relay.example.com", "mx": True}, "relay.example.com"),
    ({"host": "192.0.2.7", "port": 2525}, "[192.0.2.7]:2525"),
    ({"host": "[192.0.2.7]", "mx": True}, "[192.0.2.7]"),
    ({"host": "2001:db8::1", "port": 587}, "[2001:db8::1]:587"),
])
def test_relayhost_value_brackets_unless_mx_and_keeps_the_port(
        request_body: dict[str, object], value: str) -> None:
    request = parse_smarthost_request(request_body)
    wanted = pfconf.wanted_smarthost(request)
    assert pfconf.relayhost_value(wanted) == value
    assert pfconf.parse_relayhost(value) == wanted


@pytest.mark.parametrize(("value", "parsed"), [
    ("", None),
    ("   ", None),
    ("[Relay.Example.com]:2525", Smarthost("relay.example.com", 2525, mx=False)),
    ("relay.example.com", Smarthost("relay.example.com", 25, mx=True)),
    ("[ipv6:2001:DB8::1]:25", Smarthost("[IPv6:2001:db8::1]", 25, mx=False)),
    ("[a.example]:26, [b.example]:27", Smarthost("a.example", 26, mx=False)),
    ("[smtp.gmail.com]:submission", Smarthost("smtp.gmail.com", 587, mx=False)),
    ("relay.example.com:smtps", Smarthost("relay.example.com", 465, mx=True)),
])
def test_parse_relayhost_reads_what_postconf_prints(value: str, parsed: Smarthost | None) -> None:
    assert pfconf.parse_relayhost(value) == parsed


@pytest.mark.parametrize("host", [
    "relay.example.com\nmydestination=evil", "$myhostname", "relay,other", "a b",
    "relay=x", "${x}", "relay.example.com:25",
])
def test_postfix_hazards_are_refused_before_anything_runs(host: str) -> None:
    with pytest.raises(ValidationError):
        parse_smarthost_request({"host": host})


def test_parse_postconf_lines() -> None:
    text = "relayhost = [smarthost.lab.test]:2525\nsmtp_sasl_auth_enable = no\nempty =\n"
    assert pfconf.parse_postconf(text) == {"relayhost": "[smarthost.lab.test]:2525",
                                           "smtp_sasl_auth_enable": "no", "empty": ""}


def test_edits_with_auth_turn_sasl_on_and_make_tls_encrypt() -> None:
    request = SmarthostRequest("relay.example.com", 587, auth=SmtpAuth("pbx", "S3cret!x"))
    edits = pfconf.smarthost_edits(request, {"smtp_tls_security_level": "may"}, "hash",
                                   "/etc/postfix/sasl_passwd")
    assert dict(edits.set) == {
        "relayhost": "[relay.example.com]:587", "smtp_sasl_auth_enable": "yes",
        "smtp_sasl_password_maps": "hash:/etc/postfix/sasl_passwd",
        "smtp_sasl_security_options": "noanonymous", "smtp_tls_security_level": "encrypt"}
    assert edits.remove == ()
    assert "S3cret" not in repr(edits.postconf_args())


def test_edits_set_the_requested_tls_level_whatever_was_there() -> None:
    request = SmarthostRequest("relay.example.com", auth=SmtpAuth("pbx", "pw"))
    edits = pfconf.smarthost_edits(request, {"smtp_tls_security_level": "verify"}, "lmdb",
                                   "/etc/postfix/sasl_passwd")
    assert edits.set["smtp_tls_security_level"] == "encrypt"
    assert edits.set["smtp_sasl_password_maps"] == "lmdb:/etc/postfix/sasl_passwd"


def test_a_required_tls_level_goes_back_to_may_without_credentials() -> None:
    for level in ("encrypt", "verify", "secure"):
        now = {"smtp_tls_security_level": level}
        for request in (None, SmarthostRequest("relay.example.com")):
            edits = pfconf.smarthost_edits(request, now, "hash", "/etc/postfix/sasl_passwd")
            assert edits.set.get("smtp_tls_security_level") == "may"
    # removing leaves a level relayfleet never writes alone
    for level in ("", "none", "dane"):
        assert "smtp_tls_security_level" not in pfconf.smarthost_edits(
            None, {"smtp_tls_security_level": level}, "hash", "/etc/postfix/sasl_passwd").set


def test_removing_several_keys_from_the_map() -> None:
    text = "[a]:1 u:p\n[b]:2 v:q\n[c]:3 w:r\n"
    assert pfconf.remove_entry(text, "[a]:1", "[c]:3") == "[b]:2 v:q\n"


def test_edits_without_auth_take_sasl_out_and_remove_takes_relayhost_out() -> None:
    plain = pfconf.smarthost_edits(SmarthostRequest("relay.example.com"), {}, "hash", "/x")
    assert dict(plain.set) == {"relayhost": "[relay.example.com]",
                               "smtp_tls_security_level": "may"}
    assert plain.remove == pfconf.SASL_PARAMETERS
    gone = pfconf.smarthost_edits(None, {}, "hash", "/x")
    assert gone.set == {} and gone.remove[0] == "relayhost"
    assert gone.postconf_args() == [["-X", "relayhost", *pfconf.SASL_PARAMETERS]]


def test_sasl_map_entries_are_set_replaced_and_removed() -> None:
    text = "# relays\n[old.example]:587 olduser:oldpw\n"
    once = pfconf.set_entry(text, "[relay.example.com]:2525", "pbx", "pw1")
    twice = pfconf.set_entry(once, "[relay.example.com]:2525", "pbx", "pw2")
    assert twice.count("[relay.example.com]:2525") == 1 and "pw2" in twice and "pw1" not in twice
    assert twice.startswith("# relays\n[old.example]:587 olduser:oldpw\n")
    assert pfconf.username_for(twice, "[relay.example.com]:2525") == "pbx"
    assert pfconf.username_for(twice, "[old.example]:587") == "olduser"
    assert pfconf.username_for(twice, "[missing]") is None
    removed = pfconf.remove_entry(twice, "[relay.example.com]:2525")
    assert removed == text
    assert pfconf.remove_entry("[a]:1 u:p\n", "[a]:1") == ""


def test_a_tab_separated_entry_is_read() -> None:
    assert pfconf.username_for("[relay]:587\tuser:pw\n", "[relay]:587") == "user"
