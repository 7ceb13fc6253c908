"""Validation grammars: what is accepted, what is refused, and what the refusal says."""

from __future__ import annotations

import pytest

from shared.errors import ValidationError
from shared.validation import (
    SmtpAuth,
    m4_quote,
    parse_smarthost_request,
    validate_hostname,
    validate_password,
    validate_port,
    validate_username,
)


@pytest.mark.parametrize("value, expected", [
    ("smtp-relay.gmail.com", "smtp-relay.gmail.com"),
    ("SMARTHOST.Lab.Test", "smarthost.lab.test"),
    ("relay", "relay"),
    ("dnl.example.com", "dnl.example.com"),
    ("[192.0.2.1]", "[192.0.2.1]"),
    ("192.0.2.1", "[192.0.2.1]"),
    ("2001:db8::1", "[IPv6:2001:db8::1]"),
    ("[IPv6:2001:DB8:0::1]", "[IPv6:2001:db8::1]"),
    ("a" * 63 + ".example.com", "a" * 63 + ".example.com"),
])
def test_good_hosts(value: str, expected: str) -> None:
    assert validate_hostname(value) == expected


@pytest.mark.parametrize("value, reason", [
    ("x')esyscmd(`id')dnl(`", "not allowed"),
    ("x`id`", "not allowed"),
    ("$(id)", "not allowed"),
    ("a;b", "not allowed"),
    ("a b", "not allowed"),
    ("a\nb", "not allowed"),
    ("a\x00b", "not allowed"),
    ("exämple.com", "not allowed"),
    ("a_b.example.com", "not allowed"),
    ("", "empty"),
    ("a..b", "empty label"),
    (".a", "empty label"),
    ("a.", "dot"),
    ("-a.example.com", "start or end"),
    ("a-.example.com", "start or end"),
    ("a" * 64 + ".example.com", "label longer"),
    (("a" * 60 + ".") * 4 + "abcdefghijklmn", "longer than 253"),
    ("[not-an-ip]", "address literal"),
    ("[192.0.2.300]", "address literal"),
    ("1.2.3", "address literal"),
])
def test_bad_hosts_name_the_field_and_reason(value: str, reason: str) -> None:
    with pytest.raises(ValidationError) as caught:
        validate_hostname(value, "host")
    assert "host" in caught.value.errors
    assert reason in caught.value.errors["host"][0]


@pytest.mark.parametrize("value", [None, 25, ["a"], {"h": 1}])
def test_non_string_hosts(value: object) -> None:
    with pytest.raises(ValidationError, match="must be a string"):
        validate_hostname(value)


@pytest.mark.parametrize("value", [0, 65536, -1, "25", True, 2.5, None])
def test_bad_ports(value: object) -> None:
    with pytest.raises(ValidationError):
        validate_port(value)


def test_good_ports() -> None:
    assert [validate_port(p) for p in (1, 25, 2525, 65535)] == [1, 25, 2525, 65535]


@pytest.mark.parametrize("value", ["relay@ourtest.com", "user.name+tag", "U_1=x-y"])
def test_good_usernames(value: str) -> None:
    assert validate_username(value) == value


@pytest.mark.parametrize("value", ["", "a b", 'a"b', "a\\b", "a:b", "x" * 129, "ü", 7])
def test_bad_usernames(value: object) -> None:
    with pytest.raises(ValidationError):
        validate_username(value)


@pytest.mark.parametrize("value", ['pa"ss', "pa\\ss", "pa ss", "pa\nss", "", "x" * 129, "pässe"])
def test_bad_passwords_never_echo_the_value(value: str) -> None:
    with pytest.raises(ValidationError) as caught:
        validate_password(value)
    text = str(caught.value) + repr(caught.value.errors)
    if value:
        assert value not in text


def test_good_password_and_hidden_repr() -> None:
    assert validate_password("S3cret!#$%&()*+,-./:;<=>?@[]^_`{|}~") is not None
    assert "hunter2" not in repr(SmtpAuth("u", "hunter2"))


def test_request_collects_every_error_at_once() -> None:
    with pytest.raises(ValidationError) as caught:
        parse_smarthost_request({"host": "a b", "port": 0, "mx": "no", "mailer": "uucp",
                                 "auth": {"username": "", "password": 'a"b', "x": 1},
                                 "extra": True})
    assert set(caught.value.errors) == {"host", "port", "mx", "mailer", "auth.username",
                                        "auth.password", "auth.x", "extra"}
    assert 'a"b' not in str(caught.value)


def test_request_defaults_and_smart_host_value() -> None:
    req = parse_smarthost_request({"host": "Relay.Example.net", "port": 25})
    assert (req.host, req.port, req.mx, req.mailer, req.auth) == (
        "relay.example.net", None, False, "relay", None)
    assert req.smart_host_value() == "[relay.example.net]"
    assert parse_smarthost_request({"host": "r.example", "mx": True}).smart_host_value() \
        == "r.example"
    assert parse_smarthost_request({"host": "r.example", "mailer": "esmtp"}).smart_host_value() \
        == "esmtp:[r.example]"
    assert parse_smarthost_request({"host": "192.0.2.1", "mx": True}).smart_host_value() \
        == "[192.0.2.1]"


@pytest.mark.parametrize("body", [None, [], "host", 3])
def test_request_must_be_an_object(body: object) -> None:
    with pytest.raises(ValidationError, match="JSON object"):
        parse_smarthost_request(body)


def test_request_requires_host() -> None:
    with pytest.raises(ValidationError) as caught:
        parse_smarthost_request({})
    assert caught.value.errors == {"host": ["is required"]}


def test_m4_quote_refuses_quotes_and_newlines() -> None:
    assert m4_quote("[dnl.example.com]") == "``[dnl.example.com]''"
    for bad in ("a'b", "a`b", "a\nb"):
        with pytest.raises(ValueError):
            m4_quote(bad)
