"""Validation grammars: what is accepted, what is refused, and what the refusal says."""

from __future__ import annotations

import pytest
from marshmallow import ValidationError as SchemaError

from shared.actions import ACTIONS
from shared.errors import ValidationError
from shared.mta import HostnameRequest
from shared.schemas import SmarthostRequestSchema
from shared.validation import (
    AUTH_NEEDS_TLS,
    Masquerade,
    SmarthostRequest,
    SmtpAuth,
    TlsPolicy,
    m4_quote,
    parse_smarthost_request,
    validate_ca_file,
    validate_hostname,
    validate_password,
    validate_port,
    validate_username,
)

SECRET = "Zq9!kW#r"


def reasons(exc: pytest.ExceptionInfo[ValidationError], field: str) -> str:
    """All reasons for one field, joined (asserting the field is named)."""
    assert field in exc.value.errors, exc.value.errors
    assert exc.value.message.startswith(f"{field}: ") or f"{field}: " in exc.value.message
    return " | ".join(exc.value.errors[field])


# -- host names ---------------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    ("smtp-relay.gmail.com", "smtp-relay.gmail.com"),
    ("SMARTHOST.Lab.Test", "smarthost.lab.test"),
    ("relay", "relay"),
    ("relay.example.com.", "relay.example.com"),
    ("dnl.example.com", "dnl.example.com"),
    ("x-dnl.0divert.esyscmd", "x-dnl.0divert.esyscmd"),
    ("3com.example", "3com.example"),
    ("host.0x1", "host.0x1"),
    ("a" * 63 + ".example.com", "a" * 63 + ".example.com"),
    (("a" * 63 + ".") * 3 + "a" * 61, ("a" * 63 + ".") * 3 + "a" * 61),  # 253 characters
    (("a" * 63 + ".") * 3 + "a" * 61 + ".", ("a" * 63 + ".") * 3 + "a" * 61),
    ("[192.0.2.1]", "[192.0.2.1]"),
    ("192.0.2.1", "[192.0.2.1]"),
    ("2001:db8::1", "[IPv6:2001:db8::1]"),
    ("[IPv6:2001:DB8:0::1]", "[IPv6:2001:db8::1]"),
    ("[ipv6:2001:db8::1]", "[IPv6:2001:db8::1]"),
    ("[2001:db8::1]", "[IPv6:2001:db8::1]"),
    ("::ffff:192.0.2.1", "[192.0.2.1]"),
])
def test_good_hosts(value: str, expected: str) -> None:
    assert validate_hostname(value) == expected


@pytest.mark.parametrize("value, reason", [
    ("x')esyscmd(`id')dnl(`", "not allowed in a host name: \"'\""),
    ("x`id`", "not allowed in a host name: '`'"),
    ("$(id)", "not allowed in a host name: '$'"),
    ("a;b", "not allowed in a host name: ';'"),
    ("a,b", "not allowed in a host name: ','"),
    ('a"b', "not allowed in a host name: '\"'"),
    ("a b", "not allowed in a host name: ' '"),
    ("a\tb", "not allowed in a host name: '\\t'"),
    ("a\nb", "not allowed in a host name: '\\n'"),
    ("relay\n", "not allowed in a host name: '\\n'"),
    ("\x00", "not allowed in a host name: '\\x00'"),
    ("exämple.com", "not allowed in a host name: 'ä'"),
    ("xn--bcher-kva.example\u200b", "not allowed in a host name: '\\u200b'"),
    ("a_b.example.com", "not allowed in a host name: '_'"),
    ("a#b", "not allowed in a host name: '#'"),
    ("fe80::1%eth0", "not allowed in a host name: '%'"),
    ("[IPv6:fe80::1%x')esyscmd(`id')]", "not allowed in a host name: '%'"),
    ("", "must not be empty"),
    (".", "only a dot"),
    ("a..b", "empty label"),
    (".a", "empty label"),
    ("a..", "empty label"),
    ("-a.example.com", "starts or ends with '-'"),
    ("a-.example.com", "starts or ends with '-'"),
    ("a" * 64 + ".example.com", "label longer than 63"),
    ("a" * 254, "longer than 253"),
    (("a" * 60 + ".") * 4 + "abcdefghijklmn", "longer than 253"),
    ("x" * 100_000, "longer than 253"),
    ("[not-an-ip]", "not a valid address literal"),
    ("[192.0.2.300]", "not a valid address literal"),
    ("[192.0.2.1", "not a valid address literal"),
    ("192.0.2.1]", "not a valid address literal"),
    ("[[192.0.2.1]]", "not a valid address literal"),
    ("[]", "not a valid address literal"),
    ("[IPv6:192.0.2.1]", "IPv6: tag on an IPv4"),
    ("a[b]c", "brackets only around a whole address"),
    ("esmtp:relay.example.com", "mailer prefix"),
    ("relay:[192.0.2.1]", "mailer prefix"),
    ("host:25", "not an IPv6 address"),
    ("1.2.3", "numeric IP address"),
    ("192.0.2.300", "numeric IP address"),
    ("010.0.0.1", "numeric IP address"),
    ("0x7f.1", "numeric IP address"),
    ("2130706433", "numeric IP address"),
    ("host.123", "all-numeric label"),
])
def test_bad_hosts_name_the_field_and_reason(value: str, reason: str) -> None:
    with pytest.raises(ValidationError) as caught:
        validate_hostname(value)
    assert reason in reasons(caught, "host")


def test_host_field_name_is_the_callers() -> None:
    with pytest.raises(ValidationError) as caught:
        validate_hostname("a b", "domain")
    assert caught.value.message == (
        "domain: contains a character not allowed in a host name: ' '")
    assert list(caught.value.errors) == ["domain"]


@pytest.mark.parametrize("value, kind", [
    (None, "null"), (25, "integer"), (["a"], "array"), ({"h": 1}, "object"),
    (b"relay", "bytes"), (True, "boolean"),
])
def test_non_string_hosts(value: object, kind: str) -> None:
    with pytest.raises(ValidationError) as caught:
        validate_hostname(value)
    assert reasons(caught, "host") == f"must be a string, not {kind}"


# -- ports --------------------------------------------------------------------------------

@pytest.mark.parametrize("value, reason", [
    (0, "from 1 to 65535"), (65536, "from 1 to 65535"), (-1, "from 1 to 65535"),
    pytest.param(10**5000, "from 1 to 65535", id="huge"), ("25", "not string"),
    (True, "not boolean"),
    (2.5, "not number"), (25.0, "not number"), (None, "not null"),
])
def test_bad_ports(value: object, reason: str) -> None:
    with pytest.raises(ValidationError) as caught:
        validate_port(value)
    assert reason in reasons(caught, "port")


def test_good_ports() -> None:
    assert [validate_port(p) for p in (1, 25, 2525, 65535)] == [1, 25, 2525, 65535]


# -- credentials --------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["relay@ourtest.com", "user.name+tag", "U_1=x-y", "a" * 128])
def test_good_usernames(value: str) -> None:
    assert validate_username(value) == value


@pytest.mark.parametrize("value, reason", [
    ("", "must not be empty"), ("x" * 129, "longer than 128"), (7, "not integer"),
    ("a b", "' '"), ('a"b', "'\"'"), ("a\\b", "'\\\\'"), ("a:b", "':'"), ("a\nb", "'\\n'"),
    ("ü", "'ü'"), ("x')esyscmd(`id')", "\"'\""),
])
def test_bad_usernames(value: object, reason: str) -> None:
    with pytest.raises(ValidationError) as caught:
        validate_username(value)
    assert reason in reasons(caught, "auth.username")


@pytest.mark.parametrize("value", [
    SECRET, "S3cret!#$%&'()*+,-./:;<=>?@[]^_`{|}~", "x" * 256, "x')esyscmd(`id')dnl(`",
    'p@ss "w rd\\x', "pass word", 'a"b', "back\\slash", "Grüße-ünïcödé",
])
def test_good_passwords(value: str) -> None:
    assert validate_password(value) == value


@pytest.mark.parametrize("value, kind", [
    (f"{SECRET} ", "ends with a blank"), (f" {SECRET}", "ends with a blank"),
    (f"{SECRET}\n", "a control character"), (f"{SECRET}\tx", "a control character"),
    (f"{SECRET}\x00x", "a control character"), (f"{SECRET}\x7fx", "a control character"),
    (f"{SECRET}\u2028x", "a control character"),
    (SECRET * 40, "longer than 256"), ("", "must not be empty"),
])
def test_bad_passwords_never_echo_the_value(value: str, kind: str) -> None:
    with pytest.raises(ValidationError) as caught:
        validate_password(value)
    text = str(caught.value) + caught.value.message + repr(caught.value.errors)
    assert kind in reasons(caught, "auth.password")
    assert SECRET not in text
    assert SECRET[:4] not in text


def test_non_string_password_shows_only_the_type() -> None:
    with pytest.raises(ValidationError) as caught:
        validate_password(123456789)
    assert reasons(caught, "auth.password") == "must be a string, not integer"
    assert "123456789" not in str(caught.value)


def test_smtp_auth_hides_the_password() -> None:
    auth = SmtpAuth("u", SECRET)
    assert SECRET not in repr(auth) and SECRET not in str(auth)
    assert "username='u'" in repr(auth)
    assert SECRET not in repr(SmarthostRequest(host="r.example", auth=auth))
    with pytest.raises(ValidationError):
        SmtpAuth("u", "a\nb")


# -- m4_quote -----------------------------------------------------------------------------

def test_m4_quote_doubles_the_quotes() -> None:
    assert m4_quote("[dnl.example.com]") == "``[dnl.example.com]''"
    assert m4_quote("esmtp:[IPv6:2001:db8::1]") == "``esmtp:[IPv6:2001:db8::1]''"
    assert m4_quote("TCP $h 2525") == "``TCP $h 2525''"


@pytest.mark.parametrize("bad", ["a'b", "a`b", "a\nb", "a\rb", "a\x00b",
                                 "x')esyscmd(`id')dnl(`", "a$1", "$0", "$#", "x$*", "$@"])
def test_m4_quote_refuses_quotes_and_newlines(bad: str) -> None:
    with pytest.raises(ValueError, match="validated values only"):
        m4_quote(bad)


# -- the request ----------------------------------------------------------------------------

def test_request_collects_every_error_at_once() -> None:
    with pytest.raises(ValidationError) as caught:
        parse_smarthost_request({"host": "a b", "port": 0, "mx": "no", "mailer": "uucp",
                                 "auth": {"username": "", "password": f"{SECRET}\n", "x": 1},
                                 "extra": True})
    assert set(caught.value.errors) == {"host", "port", "mx", "mailer", "auth.username",
                                        "auth.password", "auth.x", "extra"}
    assert caught.value.message.startswith("invalid smarthost request: ")
    assert SECRET not in str(caught.value) and SECRET not in repr(caught.value.errors)


def test_request_defaults_and_smart_host_value() -> None:
    req = parse_smarthost_request({"host": "Relay.Example.net", "port": 25})
    assert (req.host, req.port, req.mx, req.mailer, req.auth) == (
        "relay.example.net", None, False, "relay", None)
    assert req.smart_host_value() == "[relay.example.net]"


@pytest.mark.parametrize("body, value", [
    ({"host": "r.example"}, "[r.example]"),
    ({"host": "r.example", "mx": True}, "r.example"),
    ({"host": "r.example", "mailer": "relay"}, "[r.example]"),
    ({"host": "r.example", "mailer": "esmtp"}, "esmtp:[r.example]"),
    ({"host": "r.example", "mailer": "smtp", "mx": True}, "smtp:r.example"),
    ({"host": "192.0.2.1"}, "[192.0.2.1]"),
    ({"host": "192.0.2.1", "mx": True}, "[192.0.2.1]"),
    ({"host": "2001:db8::1", "mailer": "esmtp", "mx": True}, "esmtp:[IPv6:2001:db8::1]"),
])
def test_smart_host_values(body: dict[str, object], value: str) -> None:
    assert parse_smarthost_request(body).smart_host_value() == value


def test_request_with_everything() -> None:
    req = parse_smarthost_request({"host": "smtp.example.com", "port": 587, "mx": False,
                                   "mailer": "esmtp",
                                   "auth": {"username": "pbx@example.com", "password": SECRET}})
    assert req == SmarthostRequest("smtp.example.com", 587, False, "esmtp",
                                   SmtpAuth("pbx@example.com", SECRET))
    assert SECRET not in repr(req)


def test_request_nulls_mean_defaults() -> None:
    req = parse_smarthost_request({"host": "r.example", "port": None, "mx": None,
                                   "mailer": None, "auth": None})
    assert (req.port, req.mx, req.mailer, req.auth) == (None, False, "relay", None)


@pytest.mark.parametrize("body, field, reason", [
    ({}, "host", "is required"),
    ({"host": "r.example", "port": "2525"}, "port", "not string"),
    ({"host": "r.example", "port": 65536}, "port", "from 1 to 65535"),
    ({"host": "r.example", "mx": 1}, "mx", "true or false"),
    ({"host": "r.example", "mailer": "ESMTP"}, "mailer", "one of relay, esmtp, smtp"),
    ({"host": "r.example", "mailer": ["esmtp"]}, "mailer", "one of relay, esmtp, smtp"),
    ({"host": "r.example", "auth": "u:p"}, "auth", "must be an object"),
    ({"host": "r.example", "auth": {"username": "u"}}, "auth.password", "is required"),
    ({"host": "r.example", "auth": {"password": SECRET}}, "auth.username", "is required"),
    ({"host": "r.example", "dry_run": True}, "dry_run", "unknown field"),
    ({"host": "x" * 300}, "host", "longer than 253"),
    ({"host": "r.example", "auth": {"username": "u" * 500, "password": SECRET}},
     "auth.username", "longer than 128"),
])
def test_request_field_errors(body: dict[str, object], field: str, reason: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_smarthost_request(body)
    assert reason in reasons(caught, field)
    assert SECRET not in str(caught.value)


def test_request_bounds_unknown_key_reports() -> None:
    body: dict[object, object] = {"host": "r.example", "\x00" + "k" * 500: 1}
    body.update({f"extra{i}": i for i in range(30)})
    with pytest.raises(ValidationError) as caught:
        parse_smarthost_request(body)
    errors = caught.value.errors
    assert len(errors) == 11 and errors["body"] == ["21 more unknown fields"]
    assert all(len(key) <= 64 and "\x00" not in key for key in errors)


@pytest.mark.parametrize("body, kind", [(None, "null"), ([], "array"), ("host", "string"),
                                        (3, "integer")])
def test_request_must_be_an_object(body: object, kind: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_smarthost_request(body)
    assert reasons(caught, "body") == f"must be a JSON object, not {kind}"


def test_request_dataclass_validates_when_built_directly() -> None:
    assert SmarthostRequest(host="Relay.Example.", port=25).host == "relay.example"
    assert SmarthostRequest(host="relay.example", port=25).port is None
    assert SmarthostRequest(host="192.0.2.1").host == "[192.0.2.1]"
    for bad in ({"host": "x')esyscmd(`id')dnl(`"}, {"host": "[relay.example]"},
                {"host": "r.example", "port": 0}, {"host": "r.example", "mailer": "uucp"},
                {"host": "r.example", "mx": "yes"}):
        with pytest.raises(ValidationError):
            SmarthostRequest(**bad)


# -- TLS, masquerade, host names ---------------------------------------------------------------

def test_tls_defaults_to_may_and_to_encrypt_with_auth() -> None:
    assert parse_smarthost_request({"host": "r.example"}).tls == TlsPolicy("may")
    with_auth = parse_smarthost_request({"host": "r.example",
                                         "auth": {"username": "u", "password": SECRET}})
    assert with_auth.tls == TlsPolicy("encrypt")
    assert SmarthostRequest("r.example", auth=SmtpAuth("u", SECRET)).tls_policy.required


def test_auth_with_opportunistic_tls_is_refused_naming_the_field() -> None:
    with pytest.raises(ValidationError) as caught:
        parse_smarthost_request({"host": "r.example", "tls": {"mode": "may"},
                                 "auth": {"username": "u", "password": SECRET}})
    assert "never cross the network in clear" in reasons(caught, "tls.mode")
    with pytest.raises(ValidationError):
        SmarthostRequest("r.example", auth=SmtpAuth("u", SECRET), tls=TlsPolicy("may"))


AUTH = {"username": "u", "password": SECRET}


@pytest.mark.parametrize("tls, auth, mode", [
    ({"ca_file": "/etc/ssl/x.pem"}, AUTH, "encrypt"),
    ({"mode": None, "ca_file": "/etc/ssl/x.pem"}, AUTH, "encrypt"),
    ({}, AUTH, "encrypt"),
    ({"ca_file": "/etc/ssl/x.pem"}, None, "may"),
    ({"mode": "verify"}, AUTH, "verify"),
])
def test_tls_without_a_mode_takes_the_default_for_the_request(
        tls: dict[str, object], auth: dict[str, str] | None, mode: str) -> None:
    body = {"host": "r.example", "tls": tls, **({"auth": auth} if auth else {})}
    # the parser and the API (its schema, then the parser) agree
    for request in (parse_smarthost_request(body), ACTIONS["set_smarthost"].parse(body)):
        assert isinstance(request, SmarthostRequest)
        assert request.tls_policy == TlsPolicy(mode, tls.get("ca_file"))  # type: ignore[arg-type]
    assert SmarthostRequestSchema().load(body)["tls"]["mode"] == tls.get("mode")


def test_the_api_refuses_auth_with_may_as_the_parser_does() -> None:
    body = {"host": "r.example", "tls": {"mode": "may"}, "auth": AUTH}
    with pytest.raises(SchemaError) as schema:
        SmarthostRequestSchema().load(body)
    assert schema.value.messages == {"tls": {"mode": [AUTH_NEEDS_TLS]}}
    with pytest.raises(ValidationError) as caught:
        ACTIONS["set_smarthost"].parse(body)
    assert reasons(caught, "tls.mode") == AUTH_NEEDS_TLS


@pytest.mark.parametrize("path", ["/dev/zero", "/dev", "/proc/self/environ",
                                  "/sys/kernel/notes", "/run/x.pem", "/var/run/ca.pem"])
def test_a_ca_file_under_devices_or_kernel_state_is_refused(path: str) -> None:
    with pytest.raises(ValidationError) as caught:
        validate_ca_file(path)
    top = "/var/run" if path.startswith("/var/run") else "/" + path.split("/")[1]
    assert reasons(caught, "tls.ca_file").startswith(
        f"must not be under {top}: it holds devices and kernel or runtime state")
    with pytest.raises(ValidationError):
        ACTIONS["set_smarthost"].parse({"host": "r.example", "tls": {"ca_file": path}})
    # names that only start like them are fine
    for fine in ("/devices/ca.pem", "/etc/dev/ca.pem", "/running.pem", "/var/runs/ca.pem"):
        assert validate_ca_file(fine) == fine


def test_tls_and_masquerade_are_parsed_and_normalised() -> None:
    req = parse_smarthost_request({
        "host": "r.example", "tls": {"mode": "verify", "ca_file": "/etc/mail/lab-ca.pem"},
        "masquerade": {"domain": "OurTest.COM", "envelope": False}})
    assert req.tls == TlsPolicy("verify", "/etc/mail/lab-ca.pem")
    assert req.masquerade == Masquerade("ourtest.com", envelope=False)
    assert parse_smarthost_request({"host": "r.example", "masquerade": {
        "domain": "ourtest.com"}}).masquerade == Masquerade("ourtest.com", envelope=True)


@pytest.mark.parametrize("body, field", [
    ({"tls": {"mode": "always"}}, "tls.mode"),
    ({"tls": "encrypt"}, "tls"),
    ({"tls": {"mode": "verify", "ca_file": "relative.pem"}}, "tls.ca_file"),
    ({"tls": {"ca_file": "/etc/ssl/../shadow"}}, "tls.ca_file"),
    ({"tls": {"ca_file": "/etc/ssl/a b.pem"}}, "tls.ca_file"),
    ({"tls": {"ca_file": "/etc/ssl/x`id`.pem"}}, "tls.ca_file"),
    ({"tls": {"mode": "verify", "extra": 1}}, "tls.extra"),
    ({"masquerade": {"domain": "x')esyscmd(`id')dnl(`"}}, "masquerade.domain"),
    ({"masquerade": {"domain": "[192.0.2.1]"}}, "masquerade.domain"),
    ({"masquerade": {"domain": "ourtest.com", "envelope": "yes"}}, "masquerade.envelope"),
    ({"masquerade": {}}, "masquerade.domain"),
])
def test_bad_tls_and_masquerade_values_name_their_field(body: dict[str, object],
                                                        field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_smarthost_request({"host": "r.example", **body})
    assert reasons(caught, field)


def test_hostname_request_takes_exactly_one_of_fqdn_and_domain() -> None:
    assert HostnameRequest(fqdn="PBX1.OurTest.com").fqdn_for("pbx1") == "pbx1.ourtest.com"
    assert HostnameRequest(domain="ourtest.com").fqdn_for("pbx2") == "pbx2.ourtest.com"
    for bad in ({}, {"fqdn": "pbx1.ourtest.com", "domain": "ourtest.com"}, {"fqdn": "pbx1"},
                {"domain": "a b"}):
        with pytest.raises(ValidationError):
            HostnameRequest(**bad)
